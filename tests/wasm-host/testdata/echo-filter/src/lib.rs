//! `echo-filter`: a tiny proxy-wasm network filter that exercises the test host.
//!
//! Downstream bytes are accumulated until a `\n` (or end of stream), then upper-cased in place.
//! Special inputs drive the host's features:
//! - `PANIC` anywhere: the module panics (the host must report a trap).
//! - `WAIT` in an incomplete line: besides pausing, the connection is remembered; the next tick
//!   switches to it with `set_effective_context`, upper-cases its buffer (if the host still
//!   exposes it) and calls `continue_stream`.
//! - `SETRAW <start> <size> <data>\n`: calls `proxy_set_buffer_bytes` directly and logs the status.
//! - `GETRAW <start> <max>\n`: calls `proxy_get_buffer_bytes` directly and logs the result.
//! - `CLOSE`: asks the host to close the downstream connection.
//! - `HTTPCALL`: calls `proxy_http_call`, which the test host does not implement.
//!
//! Upstream bytes get the plugin configuration (default `>> `) prepended.

use std::cell::RefCell;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MetricType, PeerType};

#[link(wasm_import_module = "env")]
extern "C" {
    #[link_name = "proxy_set_buffer_bytes"]
    fn raw_set_buffer_bytes(kind: u32, start: u32, size: u32, data: *const u8, len: u32) -> u32;
    #[link_name = "proxy_get_buffer_bytes"]
    fn raw_get_buffer_bytes(
        kind: u32,
        start: u32,
        max: u32,
        ret_data: *mut *mut u8,
        ret_size: *mut u32,
    ) -> u32;
}

thread_local! {
    static PAUSED: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

#[derive(Clone, Copy, Default)]
struct Metrics {
    bytes_in: u32,
    active: u32,
    chunk: u32,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(EchoRoot { prefix: b">> ".to_vec(), metrics: Metrics::default() })
    });
}}

struct EchoRoot {
    prefix: Vec<u8>,
    metrics: Metrics,
}

impl Context for EchoRoot {}

impl RootContext for EchoRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        let vm = self.get_vm_configuration().unwrap_or_default();
        println!("stdout: vm config is {}", String::from_utf8_lossy(&vm));
        eprintln!("stderr: vm starting");
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        if config == b"reject" {
            return false;
        }
        if !config.is_empty() {
            self.prefix = config;
        }
        let define = |kind, name| hostcalls::define_metric(kind, name).unwrap_or(0);
        self.metrics = Metrics {
            bytes_in: define(MetricType::Counter, "echo.bytes_in"),
            active: define(MetricType::Gauge, "echo.active"),
            chunk: define(MetricType::Histogram, "echo.chunk_size"),
        };
        self.set_tick_period(Duration::from_millis(250));
        log::info!("configured");
        true
    }

    fn on_tick(&mut self) {
        let now = self.get_current_time();
        let nanos = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        log::info!("tick at {nanos}");
        for id in PAUSED.with(|p| std::mem::take(&mut *p.borrow_mut())) {
            if hostcalls::set_effective_context(id).is_err() {
                log::warn!("context {id} is gone");
                continue;
            }
            let data = hostcalls::get_buffer(BufferType::DownstreamData, 0, usize::MAX)
                .ok()
                .flatten()
                .unwrap_or_default();
            log::info!("tick resumes {id} with {} bytes", data.len());
            if !data.is_empty() {
                let upper = data.to_ascii_uppercase();
                hostcalls::set_buffer(BufferType::DownstreamData, 0, data.len(), &upper).ok();
            }
            hostcalls::resume_downstream().ok();
        }
    }

    fn create_stream_context(&self, context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(EchoStream {
            id: context_id,
            prefix: self.prefix.clone(),
            metrics: self.metrics,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }
}

struct EchoStream {
    id: u32,
    prefix: Vec<u8>,
    metrics: Metrics,
}

impl Context for EchoStream {
    fn on_done(&mut self) -> bool {
        log::info!("done {}", self.id);
        true
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn words(line: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(line)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

impl EchoStream {
    fn set_raw(&self, line: &[u8]) {
        let w = words(line);
        let start = w.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let size = w.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
        let data = w.get(3).cloned().unwrap_or_default();
        let status =
            unsafe { raw_set_buffer_bytes(2, start, size, data.as_ptr(), data.len() as u32) };
        log::info!("setraw status={status}");
    }

    fn get_raw(&self, line: &[u8]) {
        let w = words(line);
        let start = w.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let max = w.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut ptr: *mut u8 = std::ptr::null_mut();
        let mut len: u32 = 0;
        let status = unsafe { raw_get_buffer_bytes(2, start, max, &mut ptr, &mut len) };
        let data = if ptr.is_null() {
            "<null>".to_owned()
        } else {
            let bytes = unsafe { Vec::from_raw_parts(ptr, len as usize, len as usize) };
            String::from_utf8_lossy(&bytes).into_owned()
        };
        log::info!("getraw status={status} len={len} data={data}");
    }
}

impl StreamContext for EchoStream {
    fn on_new_connection(&mut self) -> Action {
        hostcalls::increment_metric(self.metrics.active, 1).ok();
        let peer = self.get_property(vec!["source", "address"]);
        let peer = peer.map(|p| String::from_utf8_lossy(&p).into_owned());
        log::info!(
            "new connection {} from {}",
            self.id,
            peer.as_deref().unwrap_or("<none>")
        );
        Action::Continue
    }

    fn on_downstream_data(&mut self, size: usize, end_of_stream: bool) -> Action {
        let data = self.get_downstream_data(0, size).unwrap_or_default();
        if contains(&data, b"PANIC") {
            panic!("echo-filter was asked to panic");
        }
        if data.starts_with(b"SETRAW") {
            self.set_raw(&data);
            return Action::Continue;
        }
        if data.starts_with(b"GETRAW") {
            self.get_raw(&data);
            return Action::Continue;
        }
        if contains(&data, b"HTTPCALL") {
            // Not implemented by the test host: its import is linked as a trap.
            let call =
                self.dispatch_http_call("cluster", vec![], None, vec![], Duration::from_secs(1));
            log::info!("http call returned {:?}", call.is_ok());
            return Action::Continue;
        }
        if contains(&data, b"CLOSE") {
            self.close_downstream();
            return Action::Continue;
        }
        if !data.contains(&b'\n') && !end_of_stream {
            if contains(&data, b"WAIT") {
                PAUSED.with(|p| p.borrow_mut().push(self.id));
            }
            return Action::Pause;
        }
        hostcalls::increment_metric(self.metrics.bytes_in, data.len() as i64).ok();
        hostcalls::record_metric(self.metrics.chunk, data.len() as u64).ok();
        self.set_downstream_data(0, size, &data.to_ascii_uppercase());
        Action::Continue
    }

    fn on_downstream_close(&mut self, peer: PeerType) {
        hostcalls::increment_metric(self.metrics.active, -1).ok();
        log::info!("downstream close {} peer={}", self.id, peer as u32);
    }

    fn on_upstream_data(&mut self, _size: usize, _end_of_stream: bool) -> Action {
        self.set_upstream_data(0, 0, &self.prefix);
        Action::Continue
    }

    fn on_upstream_close(&mut self, peer: PeerType) {
        log::info!("upstream close {} peer={}", self.id, peer as u32);
    }
}
