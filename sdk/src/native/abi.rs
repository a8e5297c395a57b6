//! Envoy's dynamic-module C ABI, version `v0.2.0` (Envoy 1.40): the callbacks Meltemi calls,
//! declared by hand, each behind a small safe wrapper.
//!
//! Written by hand because Envoy's own Rust SDK for dynamic modules is not published on
//! crates.io and generating bindings would pull a C toolchain and Envoy's headers into every
//! codec build. Only the calls the glue needs are declared; the shapes were checked against the
//! 1.40 binary (see `shared/reference/dm-probe/notes/facts.md`).
//!
//! Envoy owns every pointer passed here. The wrappers take the pointers exactly as Envoy handed
//! them to the current hook and must only be called from within that hook (or, for the
//! scheduler and metrics, as documented on each).

use std::ffi::c_void;

/// An opaque Envoy-side object (filter, bridge, configuration, scheduler).
pub type EnvoyPtr = *mut c_void;

/// Bytes owned by Envoy, valid for the duration of the hook that exposed them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub len: usize,
}

impl EnvoyBuffer {
    const EMPTY: Self = Self {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// The bytes.
    ///
    /// # Safety
    /// Envoy must have filled this buffer during the current hook.
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: Envoy guarantees `len` readable bytes at `ptr` for the hook's duration.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// Bytes owned by the module, lent to Envoy for one call (Envoy copies what it keeps).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub len: usize,
}

impl ModuleBuffer {
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }
}

/// One HTTP header lent to Envoy.
#[repr(C)]
pub struct ModuleHttpHeader {
    pub key_ptr: *const u8,
    pub key_len: usize,
    pub value_ptr: *const u8,
    pub value_len: usize,
}

impl ModuleHttpHeader {
    pub fn of(key: &str, value: &str) -> Self {
        Self {
            key_ptr: key.as_ptr(),
            key_len: key.len(),
            value_ptr: value.as_ptr(),
            value_len: value.len(),
        }
    }
}

/// `on_network_filter_read/write` results.
pub const NETWORK_CONTINUE: u32 = 0;
/// Connection close type: flush what was written, then close.
const CLOSE_FLUSH_WRITE: u32 = 0;
/// Log levels (spdlog order).
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;
/// The ABI version this module was written against, NUL-terminated for Envoy.
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);

    // Network filter (source/extensions/filters/network/dynamic_modules).
    fn envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks_size(
        f: EnvoyPtr,
    ) -> usize;
    fn envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks(
        f: EnvoyPtr,
        out: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_network_filter_drain_read_buffer(
        f: EnvoyPtr,
        len: usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_network_filter_append_read_buffer(
        f: EnvoyPtr,
        data: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks_size(
        f: EnvoyPtr,
    ) -> usize;
    fn envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks(
        f: EnvoyPtr,
        out: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_network_filter_drain_write_buffer(
        f: EnvoyPtr,
        len: usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_network_filter_append_write_buffer(
        f: EnvoyPtr,
        data: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_network_filter_write(
        f: EnvoyPtr,
        data: ModuleBuffer,
        end_stream: bool,
    );
    fn envoy_dynamic_module_callback_network_filter_inject_read_data(
        f: EnvoyPtr,
        data: ModuleBuffer,
        end_stream: bool,
    );
    fn envoy_dynamic_module_callback_network_filter_close(f: EnvoyPtr, close_type: u32);
    fn envoy_dynamic_module_callback_network_filter_enable_half_close(f: EnvoyPtr, enabled: bool);
    fn envoy_dynamic_module_callback_network_filter_scheduler_new(f: EnvoyPtr) -> EnvoyPtr;
    fn envoy_dynamic_module_callback_network_filter_scheduler_commit(s: EnvoyPtr, event: u64);
    fn envoy_dynamic_module_callback_network_filter_scheduler_delete(s: EnvoyPtr);

    // Network filter configuration: metrics.
    fn envoy_dynamic_module_callback_network_filter_config_define_counter(
        c: EnvoyPtr,
        name: ModuleBuffer,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_network_filter_config_define_gauge(
        c: EnvoyPtr,
        name: ModuleBuffer,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_network_filter_config_define_histogram(
        c: EnvoyPtr,
        name: ModuleBuffer,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_network_filter_config_increment_counter(
        c: EnvoyPtr,
        id: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_network_filter_config_increment_gauge(
        c: EnvoyPtr,
        id: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_network_filter_config_decrement_gauge(
        c: EnvoyPtr,
        id: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_network_filter_config_record_histogram_value(
        c: EnvoyPtr,
        id: usize,
        value: u64,
    ) -> u32;

    // Upstream HTTP→TCP bridge (source/extensions/upstreams/http/dynamic_modules).
    fn envoy_dynamic_module_callback_upstream_http_tcp_bridge_get_request_header(
        b: EnvoyPtr,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        total: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_upstream_http_tcp_bridge_get_request_buffer_chunks_size(
        b: EnvoyPtr,
    ) -> usize;
    fn envoy_dynamic_module_callback_upstream_http_tcp_bridge_get_request_buffer(
        b: EnvoyPtr,
        out: *mut EnvoyBuffer,
        n: *mut usize,
    );
    fn envoy_dynamic_module_callback_upstream_http_tcp_bridge_get_response_buffer_chunks_size(
        b: EnvoyPtr,
    ) -> usize;
    fn envoy_dynamic_module_callback_upstream_http_tcp_bridge_get_response_buffer(
        b: EnvoyPtr,
        out: *mut EnvoyBuffer,
        n: *mut usize,
    );
    fn envoy_dynamic_module_callback_upstream_http_tcp_bridge_send_upstream_data(
        b: EnvoyPtr,
        data: ModuleBuffer,
        end_stream: bool,
    );
    fn envoy_dynamic_module_callback_upstream_http_tcp_bridge_send_response(
        b: EnvoyPtr,
        status: u32,
        headers: *mut ModuleHttpHeader,
        n: usize,
        body: ModuleBuffer,
    );
}

/// Logs to Envoy's `dynamic_modules` logger. Any thread.
pub fn log(level: u32, message: &str) {
    // SAFETY: the buffer describes a live str; Envoy copies it before returning.
    unsafe { envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message.as_bytes())) }
}

/// Reads `n` chunk descriptors with `fill`, which Envoy writes into our array.
fn chunks(n: usize, fill: impl FnOnce(*mut EnvoyBuffer) -> bool) -> Vec<EnvoyBuffer> {
    if n == 0 {
        return Vec::new();
    }
    let mut out = vec![EnvoyBuffer::EMPTY; n];
    if fill(out.as_mut_ptr()) {
        out
    } else {
        Vec::new()
    }
}

/// A network filter's connection, valid within one hook of that filter.
#[derive(Clone, Copy)]
pub struct Connection(pub EnvoyPtr);

impl Connection {
    /// The read buffer's chunks (bytes from the client not yet consumed by the filters after us).
    pub fn read_chunks(self) -> Vec<EnvoyBuffer> {
        // SAFETY: `self.0` is the filter pointer of the current hook; Envoy writes exactly as
        // many descriptors as it reported.
        unsafe {
            let n =
                envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks_size(self.0);
            chunks(n, |p| {
                envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks(self.0, p)
            })
        }
    }

    /// The write buffer's chunks (what the filters after us wrote toward the client).
    pub fn write_chunks(self) -> Vec<EnvoyBuffer> {
        // SAFETY: as in `read_chunks`.
        unsafe {
            let n =
                envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks_size(self.0);
            chunks(n, |p| {
                envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks(self.0, p)
            })
        }
    }

    pub fn drain_read(self, len: usize) -> bool {
        // SAFETY: filter pointer of the current hook; Envoy clips `len` to the buffer.
        len == 0
            || unsafe {
                envoy_dynamic_module_callback_network_filter_drain_read_buffer(self.0, len)
            }
    }

    pub fn append_read(self, data: &[u8]) -> bool {
        // SAFETY: filter pointer of the current hook; Envoy copies `data`.
        data.is_empty()
            || unsafe {
                envoy_dynamic_module_callback_network_filter_append_read_buffer(
                    self.0,
                    ModuleBuffer::of(data),
                )
            }
    }

    pub fn drain_write(self, len: usize) -> bool {
        // SAFETY: as in `drain_read`.
        len == 0
            || unsafe {
                envoy_dynamic_module_callback_network_filter_drain_write_buffer(self.0, len)
            }
    }

    pub fn append_write(self, data: &[u8]) -> bool {
        // SAFETY: as in `append_read`.
        data.is_empty()
            || unsafe {
                envoy_dynamic_module_callback_network_filter_append_write_buffer(
                    self.0,
                    ModuleBuffer::of(data),
                )
            }
    }

    /// Writes to the client directly. Envoy runs the connection's write filters, this one
    /// included, synchronously inside this call: the caller must hold no borrow of the
    /// filter's state across it.
    pub fn write(self, data: &[u8]) {
        // SAFETY: filter pointer of the current hook; Envoy copies `data`.
        unsafe {
            envoy_dynamic_module_callback_network_filter_write(
                self.0,
                ModuleBuffer::of(data),
                false,
            )
        }
    }

    /// Hands `data` to the read filters after this one (HCM), outside a read event. HCM may
    /// answer synchronously, which runs this filter's write hook inside the call.
    pub fn inject_read(self, data: &[u8]) {
        // SAFETY: filter pointer of the current hook (a scheduled event); Envoy copies `data`.
        unsafe {
            envoy_dynamic_module_callback_network_filter_inject_read_data(
                self.0,
                ModuleBuffer::of(data),
                false,
            )
        }
    }

    /// Closes the connection after flushing what was written.
    pub fn close(self) {
        // SAFETY: filter pointer of the current hook.
        unsafe { envoy_dynamic_module_callback_network_filter_close(self.0, CLOSE_FLUSH_WRITE) }
    }

    /// Lets the client half-close: its FIN reaches the filters as the end of the stream
    /// instead of closing the connection, so the answers still owed can be written.
    pub fn enable_half_close(self) {
        // SAFETY: filter pointer of the current hook (the new-connection hook).
        unsafe { envoy_dynamic_module_callback_network_filter_enable_half_close(self.0, true) }
    }

    /// A scheduler that runs this filter's `scheduled` hook on its worker thread.
    pub fn new_scheduler(self) -> EnvoyPtr {
        // SAFETY: filter pointer of the current hook; the scheduler lives until deleted.
        unsafe { envoy_dynamic_module_callback_network_filter_scheduler_new(self.0) }
    }
}

/// Asks for the filter's `scheduled` hook to run soon on its worker.
///
/// # Safety
/// `scheduler` must come from [`Connection::new_scheduler`] and not be deleted.
pub unsafe fn schedule(scheduler: EnvoyPtr, event: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { envoy_dynamic_module_callback_network_filter_scheduler_commit(scheduler, event) }
}

/// # Safety
/// `scheduler` must come from [`Connection::new_scheduler`], deleted once.
pub unsafe fn delete_scheduler(scheduler: EnvoyPtr) {
    // SAFETY: guaranteed by the caller.
    unsafe { envoy_dynamic_module_callback_network_filter_scheduler_delete(scheduler) }
}

/// A network filter configuration (created and destroyed on Envoy's main thread).
#[derive(Clone, Copy)]
pub struct FilterConfigPtr(pub EnvoyPtr);

/// Metric kinds as the configuration defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl FilterConfigPtr {
    /// Defines a metric: only inside `config_new` (Envoy refuses definitions afterwards, and
    /// its table of ids is not synchronised).
    pub fn define(self, kind: MetricKind, name: &str) -> Option<usize> {
        let mut id = 0usize;
        let name = ModuleBuffer::of(name.as_bytes());
        // SAFETY: live configuration pointer, main thread; Envoy writes one usize.
        let status = unsafe {
            match kind {
                MetricKind::Counter => {
                    envoy_dynamic_module_callback_network_filter_config_define_counter(
                        self.0, name, &mut id,
                    )
                }
                MetricKind::Gauge => {
                    envoy_dynamic_module_callback_network_filter_config_define_gauge(
                        self.0, name, &mut id,
                    )
                }
                MetricKind::Histogram => {
                    envoy_dynamic_module_callback_network_filter_config_define_histogram(
                        self.0, name, &mut id,
                    )
                }
            }
        };
        (status == 0).then_some(id)
    }

    /// Updates a metric defined by [`FilterConfigPtr::define`]. Any thread: the metrics are
    /// Envoy's atomic counters, gauges and thread-aware histograms, and the table of ids is
    /// frozen once the configuration has loaded.
    pub fn update(self, kind: MetricKind, id: usize, delta: i64) {
        let magnitude = delta.unsigned_abs();
        // SAFETY: live configuration pointer, main thread, an id it defined.
        unsafe {
            match kind {
                MetricKind::Counter => {
                    envoy_dynamic_module_callback_network_filter_config_increment_counter(
                        self.0, id, magnitude,
                    );
                }
                MetricKind::Gauge if delta >= 0 => {
                    envoy_dynamic_module_callback_network_filter_config_increment_gauge(
                        self.0, id, magnitude,
                    );
                }
                MetricKind::Gauge => {
                    envoy_dynamic_module_callback_network_filter_config_decrement_gauge(
                        self.0, id, magnitude,
                    );
                }
                MetricKind::Histogram => {
                    envoy_dynamic_module_callback_network_filter_config_record_histogram_value(
                        self.0, id, magnitude,
                    );
                }
            }
        }
    }
}

/// One upstream request attempt of the HTTP→TCP bridge, valid within one of its hooks.
#[derive(Clone, Copy)]
pub struct Upstream(pub EnvoyPtr);

impl Upstream {
    /// Every value of request header `key`.
    pub fn request_header(self, key: &str) -> Vec<String> {
        let mut values = Vec::new();
        let mut index = 0usize;
        loop {
            let mut out = EnvoyBuffer::EMPTY;
            let mut total = 0usize;
            // SAFETY: bridge pointer of the current hook; Envoy writes one buffer and a count.
            let found = unsafe {
                envoy_dynamic_module_callback_upstream_http_tcp_bridge_get_request_header(
                    self.0,
                    ModuleBuffer::of(key.as_bytes()),
                    &mut out,
                    index,
                    &mut total,
                )
            };
            if !found {
                return values;
            }
            // SAFETY: filled by Envoy in this hook.
            values.push(String::from_utf8_lossy(unsafe { out.as_slice() }).into_owned());
            index = index.saturating_add(1);
            if index >= total || index >= 64 {
                return values;
            }
        }
    }

    /// The request body chunks of the current `encode_data`.
    pub fn request_chunks(self) -> Vec<EnvoyBuffer> {
        // SAFETY: bridge pointer of the current hook; Envoy writes at most the reported count.
        unsafe {
            let n = envoy_dynamic_module_callback_upstream_http_tcp_bridge_get_request_buffer_chunks_size(self.0);
            let mut got = 0usize;
            let mut out = chunks(n, |p| {
                envoy_dynamic_module_callback_upstream_http_tcp_bridge_get_request_buffer(
                    self.0, p, &mut got,
                );
                true
            });
            out.truncate(got);
            out
        }
    }

    /// The server bytes of the current `on_upstream_data`.
    pub fn response_chunks(self) -> Vec<EnvoyBuffer> {
        // SAFETY: as in `request_chunks`.
        unsafe {
            let n = envoy_dynamic_module_callback_upstream_http_tcp_bridge_get_response_buffer_chunks_size(self.0);
            let mut got = 0usize;
            let mut out = chunks(n, |p| {
                envoy_dynamic_module_callback_upstream_http_tcp_bridge_get_response_buffer(
                    self.0, p, &mut got,
                );
                true
            });
            out.truncate(got);
            out
        }
    }

    /// Writes to the server (`end_stream` half-closes the connection).
    pub fn send(self, data: &[u8], end_stream: bool) {
        // SAFETY: bridge pointer of the current hook; Envoy copies `data`.
        unsafe {
            envoy_dynamic_module_callback_upstream_http_tcp_bridge_send_upstream_data(
                self.0,
                ModuleBuffer::of(data),
                end_stream,
            )
        }
    }

    /// Answers the router; ends the request.
    pub fn respond(self, status: u32, headers: &[(String, String)], body: &[u8]) {
        let mut raw: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(k, v)| ModuleHttpHeader::of(k, v))
            .collect();
        // SAFETY: bridge pointer of the current hook; the headers and body outlive the call
        // and Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_upstream_http_tcp_bridge_send_response(
                self.0,
                status,
                raw.as_mut_ptr(),
                raw.len(),
                ModuleBuffer::of(body),
            )
        }
    }
}
