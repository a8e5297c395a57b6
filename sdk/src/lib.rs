//! Meltemi SDK: write one [`Codec`] for a protocol and get a proxy-wasm network filter that
//! bridges it through Envoy's HTTP connection manager (routing, rate limits, faults, RBAC, ...).
//!
//! The crate has two halves. The pure half (codec contract, transcoders, HTTP/1.1 framing,
//! metrics naming) is plain Rust, tested natively. The glue half ([`wasm`], compiled only for
//! `wasm32`) binds it to the proxy-wasm ABI; [`export_codec!`] is the one line a codec crate
//! needs.
//!
//! Everything here runs inside Envoy (a wasm VM shared by a worker's connections): no
//! arithmetic, indexing, `unwrap` or `panic` that input could trigger is allowed outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

// The framework's internals: public for the wasm glue, the test host, the fuzz targets and the
// benchmarks, hidden from a codec author's documentation (a codec needs only `Codec`, its
// types and `export_codec!`). They may change without notice.
#[doc(hidden)]
pub mod back;
#[doc(hidden)]
pub mod bridge;
pub mod codec;
pub mod config;
#[doc(hidden)]
pub mod exchange;
#[doc(hidden)]
pub mod front;
#[doc(hidden)]
pub mod hpack;
#[doc(hidden)]
pub mod http1;
#[doc(hidden)]
pub mod http2;
pub mod metadata;
#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
#[doc(hidden)]
pub mod native;
#[doc(hidden)]
pub mod stats;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
#[doc(hidden)]
pub mod vm;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use codec::{Codec, CodecError, CodecErrorKind, Context, ErrorKind, Message, MessageKind};
pub use metadata::Metadata;

/// Exports `$codec` as the Envoy filter of this module: the proxy-wasm network filter when
/// built for `wasm32-wasip1`, and the dynamic-module front and back when built natively with
/// the SDK's `native` feature (`scripts/build-modules.sh` does both).
///
/// ```ignore
/// meltemi_sdk::export_codec!(my_codec::MyCodec);
/// ```
/// Otherwise it expands to nothing, so the crate still builds and tests natively.
#[macro_export]
macro_rules! export_codec {
    ($codec:ty) => {
        #[cfg(target_arch = "wasm32")]
        $crate::wasm::proxy_wasm::main! {{
            $crate::wasm::start::<$codec>();
        }}
        #[cfg(not(target_arch = "wasm32"))]
        $crate::__export_native!($codec);
    };
}

/// Without the `native` feature a native build exports nothing.
#[cfg(not(all(feature = "native", not(target_arch = "wasm32"))))]
#[doc(hidden)]
#[macro_export]
macro_rules! __export_native {
    ($codec:ty) => {};
}
