//! A small, deterministic proxy-wasm host on wasmtime for testing Meltemi filters as the real,
//! built `.wasm` modules, byte for byte.
//!
//! It loads a proxy-wasm ABI 0.2.1 network filter (as the Rust `proxy-wasm` crate 0.2.5 builds
//! it for `wasm32-wasip1`) and drives the network-filter callbacks the way Envoy 1.40 does:
//! a persistent read buffer per connection, a fresh write buffer per upstream write, Envoy's
//! `set_buffer` rules, effective contexts from `on_tick`, metrics, logs, a fake clock and
//! fixed-seed randomness. Any import it does not implement is linked as a trap, so an
//! unexpected host call fails loudly.
//!
//! ```no_run
//! use meltemi_wasm_host::{build_wasm, Host, Module};
//!
//! let wasm = build_wasm(env!("CARGO_MANIFEST_DIR").as_ref(), "minirpc");
//! let module = Module::load(wasm).unwrap(); // compile once, clone freely
//! let mut host = Host::new(&module, "").unwrap();
//! assert!(host.configure(r#"{"role": "front"}"#).unwrap());
//! let conn = host.new_connection().unwrap();
//! let action = host.downstream_data(conn, b"...", false).unwrap();
//! println!("{action:?}, next filter sees {:?}", host.read_buffer(conn));
//! ```
//!
//! For bridge filters, [`envoy_emulation`] plays Envoy's HCM, router and tcp_proxy around the
//! front and back roles; [`rng`] gives suites the same deterministic randomness as the host.
//!
//! Semantics and where they come from (proxy-wasm-cpp-host `src/exports.cc`, Envoy
//! `source/extensions/common/wasm/context.cc`):
//! - `proxy_set_buffer_bytes(DownstreamData | UpstreamData, start, size, data)`: `start == 0`
//!   removes the first `size` bytes (all if larger) and prepends `data` — so `(0, 0)` prepends
//!   and `(0, >= len)` replaces; `start >= len` appends; `0 < start < len` is `BadArgument`.
//! - `proxy_get_buffer_bytes`: the range is clipped to the buffer; an empty range is `Ok` with a
//!   null pointer and size 0 (the SDK reads that as `None`). The bytes are copied into memory
//!   from the module's `proxy_on_memory_allocate`.
//! - Outside the callback that owns it, `DownstreamData` is the connection's read buffer only
//!   while its last `on_downstream_data` returned Pause; otherwise (and for `UpstreamData`
//!   outside `on_upstream_data`) Envoy's buffer wrapper is empty: reads give `Ok` + nothing,
//!   writes give `BadArgument`.
//! - `PluginConfiguration` exists only during `proxy_on_configure` (`NotFound` elsewhere);
//!   `VmConfiguration` always.
//! - Counters accept only positive increments (`BadArgument` otherwise), gauges add/subtract,
//!   `record` adds to counters, sets gauges and records histogram values; `get` on a histogram
//!   is `BadArgument`.
//! - `proxy_continue_stream(Upstream)` is `Unimplemented`; `proxy_done` is `NotFound`.

#![warn(missing_docs)]

pub mod abi;
pub mod envoy_emulation;
mod host;
mod imports;
mod memory;
pub mod rng;
mod state;
mod wasi;
mod wasm_build;

pub use abi::Action;
pub use host::{ConnId, Host, HostError, Module};
pub use state::ForeignCall;
pub use wasm_build::{build_wasm, try_build_wasm_in, WASM_TARGET};
