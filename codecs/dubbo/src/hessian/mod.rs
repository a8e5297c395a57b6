//! Hessian 2.0, written by hand for this codec: a bounded reader/skipper ([`reader`]) and a tiny
//! writer ([`writer`]) for the few values the codec emits (strings, null, compact ints, untyped
//! maps).
//!
//! Why hand-written: the codec only needs to *walk* a body (find where the arguments end and read
//! the attachments map), never to materialise Java objects, and it must stay panic-free and small
//! for wasm. The only maintained Rust Hessian crate (`hessian_rs`) is GPL and must never be a
//! dependency of this Apache-2.0 project.
//!
//! Grammar reference: the Hessian 2.0 serialization specification (caucho.com), as implemented
//! by Caucho's `Hessian2Input`/`Hessian2Output` and Dubbo's `hessian-lite` fork.

pub mod reader;
pub mod writer;

pub use reader::{HessianError, Reader};
