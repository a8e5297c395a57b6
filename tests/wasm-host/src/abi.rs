//! proxy-wasm ABI 0.2.1 constants, as the Rust `proxy-wasm` crate 0.2.5 (`src/types.rs`) and
//! proxy-wasm-cpp-host (`WasmResult`) number them.

/// `Status` / `WasmResult` codes returned by host functions.
pub mod status {
    /// The call succeeded.
    pub const OK: u32 = 0;
    /// The requested thing (buffer, property, metric, context) does not exist.
    pub const NOT_FOUND: u32 = 1;
    /// An argument is out of range (e.g. a middle range in `proxy_set_buffer_bytes`).
    pub const BAD_ARGUMENT: u32 = 2;
    /// A pointer/length pair given by the module lies outside its memory.
    pub const INVALID_MEMORY_ACCESS: u32 = 6;
    /// The host does not implement this operation (Envoy: `continue_stream(Upstream)`).
    pub const UNIMPLEMENTED: u32 = 12;
}

/// `BufferType` values of `proxy_get_buffer_bytes` / `proxy_set_buffer_bytes`.
pub mod buffer_type {
    /// HTTP request body (never present for a network filter).
    pub const HTTP_REQUEST_BODY: u32 = 0;
    /// HTTP response body (never present for a network filter).
    pub const HTTP_RESPONSE_BODY: u32 = 1;
    /// The connection's read buffer (client → upstream direction).
    pub const DOWNSTREAM_DATA: u32 = 2;
    /// The buffer being written to the client (upstream → client direction).
    pub const UPSTREAM_DATA: u32 = 3;
    /// Body of an HTTP call response (root context only; never present here).
    pub const HTTP_CALL_RESPONSE_BODY: u32 = 4;
    /// gRPC receive buffer (never present here).
    pub const GRPC_RECEIVE_BUFFER: u32 = 5;
    /// The VM configuration string given to [`crate::Host::new`].
    pub const VM_CONFIGURATION: u32 = 6;
    /// The plugin configuration string given to [`crate::Host::configure`].
    pub const PLUGIN_CONFIGURATION: u32 = 7;
    /// Call data of a foreign function callback (always empty here).
    pub const CALL_DATA: u32 = 8;
}

/// `MetricType` values of `proxy_define_metric`.
pub mod metric_type {
    /// A monotonically increasing counter.
    pub const COUNTER: u32 = 0;
    /// A gauge that can go up and down.
    pub const GAUGE: u32 = 1;
    /// A histogram of recorded values.
    pub const HISTOGRAM: u32 = 2;
}

/// `StreamType` values of `proxy_continue_stream` / `proxy_close_stream`.
pub mod stream_type {
    /// HTTP request (not used by network filters).
    pub const HTTP_REQUEST: u32 = 0;
    /// HTTP response (not used by network filters).
    pub const HTTP_RESPONSE: u32 = 1;
    /// The downstream (client) connection.
    pub const DOWNSTREAM: u32 = 2;
    /// The upstream (server) connection.
    pub const UPSTREAM: u32 = 3;
}

/// `PeerType` values passed to `proxy_on_*_connection_close`.
pub mod peer_type {
    /// Unknown peer (Envoy uses it when the write path sees end of stream).
    pub const UNKNOWN: u32 = 0;
    /// This side (Envoy) closed the connection.
    pub const LOCAL: u32 = 1;
    /// The remote peer closed the connection.
    pub const REMOTE: u32 = 2;
}

/// Log levels of `proxy_log` (Envoy maps them to spdlog levels).
pub mod log_level {
    /// Trace.
    pub const TRACE: u32 = 0;
    /// Debug.
    pub const DEBUG: u32 = 1;
    /// Info (Envoy logs WASI stdout at this level).
    pub const INFO: u32 = 2;
    /// Warn.
    pub const WARN: u32 = 3;
    /// Error (Envoy logs WASI stderr at this level).
    pub const ERROR: u32 = 4;
    /// Critical (the Rust SDK's panic hook logs the panic message at this level).
    pub const CRITICAL: u32 = 5;
}

/// What a network-filter callback asked Envoy to do with the filter chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Hand the buffer to the next filter (Envoy `FilterStatus::Continue`).
    Continue,
    /// Stop iteration; Envoy keeps the buffer (`FilterStatus::StopIteration`).
    Pause,
}

impl Action {
    /// Converts a callback's raw return value: like Envoy, 0 is Continue and anything else Pause.
    pub fn from_raw(raw: i32) -> Action {
        if raw == 0 {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}
