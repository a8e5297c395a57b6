//! proxy-wasm glue: binds [`Front`] and [`Back`] to Envoy's network-filter callbacks.
//!
//! Buffer, close and metric host calls are declared here rather than taken from the
//! `proxy-wasm` crate's wrappers, because those wrappers panic on any non-Ok status and a
//! panic traps the VM for every connection of the worker. Every status is handled instead.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

pub use proxy_wasm;
use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, PeerType};

use crate::back::Back;
use crate::config::{FilterConfig, Role};
use crate::front::{Fatal, Front};
use crate::stats::Sink;
use crate::Codec;

mod abi {
    //! Raw proxy-wasm 0.2.1 imports, status-returning.
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_buffer_bytes(
            kind: u32,
            start: usize,
            max: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_set_buffer_bytes(
            kind: u32,
            start: usize,
            size: usize,
            data: *const u8,
            len: usize,
        ) -> u32;
        pub fn proxy_close_stream(stream: u32) -> u32;
        pub fn proxy_define_metric(
            kind: u32,
            name: *const u8,
            name_len: usize,
            id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        pub fn proxy_record_metric(id: u32, value: u64) -> u32;
        pub fn proxy_log(level: u32, message: *const u8, len: usize) -> u32;
        pub fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    }
    pub const OK: u32 = 0;
    pub const DOWNSTREAM_DATA: u32 = 2;
    pub const UPSTREAM_DATA: u32 = 3;
    pub const PLUGIN_CONFIGURATION: u32 = 7;
    pub const STREAM_DOWNSTREAM: u32 = 2;
    pub const COUNTER: u32 = 0;
    pub const GAUGE: u32 = 1;
    pub const HISTOGRAM: u32 = 2;
    pub const LOG_WARN: u32 = 3;
    pub const LOG_ERROR: u32 = 4;
}

fn get_buffer(kind: u32, size: usize) -> Result<Vec<u8>, u32> {
    if size == 0 {
        return Ok(Vec::new());
    }
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: the host writes a pointer it obtained from `proxy_on_memory_allocate` (a boxed
    // slice of exactly `len` bytes from our allocator) or leaves it null.
    unsafe {
        match abi::proxy_get_buffer_bytes(kind, 0, size, &mut data, &mut len) {
            abi::OK if !data.is_null() => Ok(Vec::from_raw_parts(data, len, len)),
            abi::OK | 1 => Ok(Vec::new()),
            status => Err(status),
        }
    }
}

fn replace_buffer(kind: u32, old_len: usize, bytes: &[u8]) -> Result<(), u32> {
    // SAFETY: pointer and length describe a live slice for the duration of the call.
    match unsafe { abi::proxy_set_buffer_bytes(kind, 0, old_len, bytes.as_ptr(), bytes.len()) } {
        abi::OK => Ok(()),
        status => Err(status),
    }
}

fn log(level: u32, message: &str) {
    // SAFETY: pointer and length describe a live str.
    unsafe {
        abi::proxy_log(level, message.as_ptr(), message.len());
    }
}

fn now_ns() -> u64 {
    let mut t = 0u64;
    // SAFETY: the host writes one u64.
    unsafe {
        abi::proxy_get_current_time_nanoseconds(&mut t);
    }
    t
}

/// Most distinct metric names one VM defines; label values come from the network, so an
/// attacker must not be able to grow Envoy's stats without bound.
const MAX_METRICS: usize = 4096;

thread_local! {
    static METRIC_IDS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
}

/// [`Sink`] on proxy-wasm metrics; ids are cached per VM.
struct HostSink;

impl HostSink {
    fn id(kind: u32, name: &str) -> Option<u32> {
        METRIC_IDS.with(|ids| {
            let mut ids = ids.borrow_mut();
            if let Some(id) = ids.get(name) {
                return Some(*id);
            }
            if ids.len() >= MAX_METRICS {
                return None;
            }
            let mut id = 0u32;
            // SAFETY: pointer and length describe a live str; the host writes one u32.
            let status =
                unsafe { abi::proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
            if status != abi::OK {
                return None;
            }
            ids.insert(name.to_owned(), id);
            Some(id)
        })
    }
}

impl Sink for HostSink {
    fn count(&mut self, name: &str, n: u64) {
        if let Some(id) = Self::id(abi::COUNTER, name) {
            // SAFETY: plain values.
            unsafe { abi::proxy_increment_metric(id, n as i64) };
        }
    }
    fn gauge(&mut self, name: &str, delta: i64) {
        if let Some(id) = Self::id(abi::GAUGE, name) {
            // SAFETY: plain values.
            unsafe { abi::proxy_increment_metric(id, delta) };
        }
    }
    fn record(&mut self, name: &str, value: u64) {
        if let Some(id) = Self::id(abi::HISTOGRAM, name) {
            // SAFETY: plain values.
            unsafe { abi::proxy_record_metric(id, value) };
        }
    }
}

/// Registers codec `C` as this module's root context. Called by [`crate::export_codec!`].
pub fn start<C: Codec>() {
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(Root::<C> { config: None }));
}

struct Root<C: Codec> {
    config: Option<Rc<FilterConfig<C::Config>>>,
}

impl<C: Codec> Context for Root<C> {}

impl<C: Codec> RootContext for Root<C> {
    fn on_configure(&mut self, size: usize) -> bool {
        let raw = match get_buffer(abi::PLUGIN_CONFIGURATION, size) {
            Ok(raw) => raw,
            Err(status) => {
                log(
                    abi::LOG_ERROR,
                    &format!("meltemi: cannot read the plugin configuration (status {status})"),
                );
                return false;
            }
        };
        let raw = if raw.is_empty() { b"{}".to_vec() } else { raw };
        match FilterConfig::<C::Config>::parse(&raw) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                log(abi::LOG_ERROR, &format!("{} codec: {e}", C::PROTOCOL));
                false
            }
        }
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        let side = match &self.config {
            Some(config) if config.role == Role::Front => {
                Side::<C>::Front(Front::new(Rc::clone(config)))
            }
            Some(config) => Side::Back(Back::new(Rc::clone(config))),
            None => Side::Closed,
        };
        Some(Box::new(Stream { side }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }
}

enum Side<C: Codec> {
    Front(Front<C>),
    Back(Back<C>),
    /// Unconfigured or failed: every byte is dropped and the connection closed.
    Closed,
}

struct Stream<C: Codec> {
    side: Side<C>,
}

impl<C: Codec> Stream<C> {
    fn fail(&mut self, buffer: u32, old_len: usize, fatal: Fatal) -> Action {
        log(
            abi::LOG_WARN,
            &format!("meltemi {}: closing connection: {}", C::PROTOCOL, fatal.0),
        );
        if let Side::Front(front) = &mut self.side {
            front.on_close(&mut HostSink);
        }
        self.side = Side::Closed;
        self.close(buffer, old_len)
    }

    fn close(&mut self, buffer: u32, old_len: usize) -> Action {
        // Nothing unbridged may reach HCM or tcp_proxy, so the buffer is emptied first.
        let _ = replace_buffer(buffer, old_len, &[]);
        // SAFETY: plain value.
        unsafe { abi::proxy_close_stream(abi::STREAM_DOWNSTREAM) };
        Action::Continue
    }

    fn on_data(&mut self, buffer: u32, size: usize) -> Action {
        if matches!(self.side, Side::Closed) {
            return self.close(buffer, size);
        }
        let data = match get_buffer(buffer, size) {
            Ok(d) => d,
            Err(status) => {
                return self.fail(
                    buffer,
                    size,
                    Fatal(format!("cannot read buffer (status {status})")),
                )
            }
        };
        let mut sink = HostSink;
        let result = match (&mut self.side, buffer) {
            (Side::Front(f), abi::DOWNSTREAM_DATA) => f.on_client_data(&data, now_ns(), &mut sink),
            (Side::Front(f), _) => f.on_hcm_data(&data, now_ns(), &mut sink).map(Some),
            (Side::Back(b), abi::DOWNSTREAM_DATA) => b.on_router_data(&data, &mut sink).map(Some),
            (Side::Back(b), _) => b.on_server_data(&data, &mut sink).map(Some),
            (Side::Closed, _) => Ok(None),
        };
        match result {
            Ok(None) => Action::Continue,
            Ok(Some(bytes)) => match replace_buffer(buffer, size, &bytes) {
                Ok(()) => Action::Continue,
                Err(status) => self.fail(
                    buffer,
                    size,
                    Fatal(format!("cannot replace buffer (status {status})")),
                ),
            },
            Err(fatal) => self.fail(buffer, size, fatal),
        }
    }
}

impl<C: Codec> Context for Stream<C> {}

impl<C: Codec> StreamContext for Stream<C> {
    fn on_downstream_data(&mut self, size: usize, _end_of_stream: bool) -> Action {
        self.on_data(abi::DOWNSTREAM_DATA, size)
    }

    fn on_upstream_data(&mut self, size: usize, _end_of_stream: bool) -> Action {
        self.on_data(abi::UPSTREAM_DATA, size)
    }

    fn on_downstream_close(&mut self, _peer: PeerType) {
        if let Side::Front(front) = &mut self.side {
            front.on_close(&mut HostSink);
        }
    }
}
