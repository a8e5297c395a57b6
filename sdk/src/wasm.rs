//! proxy-wasm glue: binds [`Front`] and [`Back`] to Envoy's network-filter callbacks.
//!
//! Host calls are declared here rather than taken from the `proxy-wasm` crate's wrappers,
//! because those wrappers panic on any non-Ok status and a panic traps the VM for every
//! connection of the worker. Every status is handled instead.
//!
//! Three Envoy behaviours shape this module (see `ARCHITECTURE.md`):
//! - Envoy shows the front its whole read buffer on every read, including requests HCM has not
//!   consumed yet. Only the few bytes that identify them and the new client bytes are copied
//!   into the VM ([`pump_front`]), so a deep pipeline costs linear time.
//! - After a Continue the read buffer is out of reach; after a Pause it stays reachable, also
//!   from the root context's timer. A front whose requests wait behind a limit therefore
//!   answers Pause and resumes the filter chain itself (`proxy_continue_stream`, which Envoy
//!   runs right after the callback), and its timer hands the waiting requests once HCM has
//!   answered some — even when HCM answered everything at once and no read will follow.
//! - A back whose codec cannot probe one-way delivery closes its connection once tcp_proxy has
//!   the call; the timer does that too, because closing inside the callback would discard the
//!   bytes before tcp_proxy saw them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};

pub use proxy_wasm;
use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, PeerType};

use crate::back::Back;
use crate::config::{FilterConfig, Role};
use crate::front::{Fatal, Front};
use crate::stats::{self, Sink};
use crate::vm::VmShared;
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
        pub fn proxy_get_buffer_status(kind: u32, size: *mut usize, flags: *mut u32) -> u32;
        pub fn proxy_set_buffer_bytes(
            kind: u32,
            start: usize,
            size: usize,
            data: *const u8,
            len: usize,
        ) -> u32;
        pub fn proxy_close_stream(stream: u32) -> u32;
        pub fn proxy_continue_stream(stream: u32) -> u32;
        pub fn proxy_set_effective_context(context: u32) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_get_property(
            path: *const u8,
            path_len: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
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
    pub const NOT_FOUND: u32 = 1;
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

/// A host call failed with this status.
type Status = u32;

/// Up to `max` bytes of buffer `kind` from `start` (clipped to the buffer by the host).
fn get_buffer(kind: u32, start: usize, max: usize) -> Result<Vec<u8>, Status> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: the host writes a pointer it obtained from `proxy_on_memory_allocate` (a boxed
    // slice of exactly `len` bytes from our allocator) or leaves it null.
    unsafe {
        match abi::proxy_get_buffer_bytes(kind, start, max, &mut data, &mut len) {
            abi::OK if !data.is_null() => Ok(Vec::from_raw_parts(data, len, len)),
            abi::OK | abi::NOT_FOUND => Ok(Vec::new()),
            status => Err(status),
        }
    }
}

fn buffer_len(kind: u32) -> Result<usize, Status> {
    let mut size: usize = 0;
    let mut flags: u32 = 0;
    // SAFETY: the host writes one usize and one u32.
    match unsafe { abi::proxy_get_buffer_status(kind, &mut size, &mut flags) } {
        abi::OK => Ok(size),
        status => Err(status),
    }
}

/// Replaces the first `old_len` bytes (the whole buffer when that is its length) with `bytes`.
fn replace_buffer(kind: u32, old_len: usize, bytes: &[u8]) -> Result<(), Status> {
    // SAFETY: pointer and length describe a live slice for the duration of the call.
    match unsafe { abi::proxy_set_buffer_bytes(kind, 0, old_len, bytes.as_ptr(), bytes.len()) } {
        abi::OK => Ok(()),
        status => Err(status),
    }
}

/// Appends `bytes` to a buffer of `len` bytes.
fn append_buffer(kind: u32, len: usize, bytes: &[u8]) -> Result<(), Status> {
    // SAFETY: pointer and length describe a live slice for the duration of the call.
    match unsafe { abi::proxy_set_buffer_bytes(kind, len, 0, bytes.as_ptr(), bytes.len()) } {
        abi::OK => Ok(()),
        status => Err(status),
    }
}

fn property(path: &[&str]) -> Option<Vec<u8>> {
    let serialized = path.join("\0");
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: as in `get_buffer`; the path is a live str.
    unsafe {
        match abi::proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut len) {
            abi::OK if !data.is_null() => Some(Vec::from_raw_parts(data, len, len)),
            _ => None,
        }
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

fn set_tick_period(ms: u32) {
    // SAFETY: plain value.
    unsafe { abi::proxy_set_tick_period_milliseconds(ms) };
}

/// Most distinct metric names one VM defines; label values come from the network (and are
/// bounded by `limits.max_*_labels`), so Envoy's stats never grow without bound. Past it,
/// updates are counted in `meltemi_metrics_dropped_total`.
const MAX_METRICS: usize = 4096;

/// Timer period while a connection waits for it.
const TICK_MS: u32 = 1;

/// How long a back waits for tcp_proxy's upstream connection before closing anyway.
const CLOSE_AFTER_FORWARD_DEADLINE_NS: u64 = 1_000_000_000;

thread_local! {
    static METRIC_IDS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
    static DROPPED_ID: RefCell<Option<u32>> = const { RefCell::new(None) };
    /// The VM's shared limits; created with the defaults, restricted by each configuration.
    static SHARED: Rc<VmShared> = {
        let d = crate::config::Limits::default();
        VmShared::new(d.vm_buffer_budget_bytes, d.max_service_labels, d.max_method_labels)
    };
    /// Connections waiting for the timer, by context id.
    static WAITING: RefCell<Vec<(u32, Weak<dyn Waiting>)>> = const { RefCell::new(Vec::new()) };
}

/// [`Sink`] on proxy-wasm metrics; ids are cached per VM.
struct HostSink;

impl HostSink {
    fn id(kind: u32, name: &str) -> Option<u32> {
        METRIC_IDS
            .with(|ids| {
                let mut ids = ids.borrow_mut();
                if let Some(id) = ids.get(name) {
                    return Some(*id);
                }
                if ids.len() >= MAX_METRICS {
                    return None;
                }
                let id = define(kind, name)?;
                ids.insert(name.to_owned(), id);
                Some(id)
            })
            .or_else(|| {
                DROPPED_ID.with(|d| {
                    if let Some(id) = *d.borrow() {
                        // SAFETY: plain values.
                        unsafe { abi::proxy_increment_metric(id, 1) };
                    }
                });
                None
            })
    }
}

fn define(kind: u32, name: &str) -> Option<u32> {
    let mut id = 0u32;
    // SAFETY: pointer and length describe a live str; the host writes one u32.
    let status = unsafe { abi::proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    (status == abi::OK).then_some(id)
}

impl Sink for HostSink {
    fn count(&mut self, name: &str, n: u64) {
        if let Some(id) = Self::id(abi::COUNTER, name) {
            // SAFETY: plain values.
            unsafe { abi::proxy_increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX)) };
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
        let raw = match get_buffer(abi::PLUGIN_CONFIGURATION, 0, size) {
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
                SHARED.with(|shared| {
                    let l = &config.limits;
                    shared.budget.restrict(l.vm_buffer_budget_bytes);
                    shared.services.restrict(l.max_service_labels);
                    shared.methods.restrict(l.max_method_labels);
                    shared.services.name(config.known_services.iter().cloned());
                    shared.methods.name(config.known_methods.iter().cloned());
                });
                DROPPED_ID.with(|d| {
                    if d.borrow().is_none() {
                        *d.borrow_mut() = define(abi::COUNTER, stats::METRICS_DROPPED);
                    }
                });
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                log(abi::LOG_ERROR, &format!("{} codec: {e}", C::PROTOCOL));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let due = WAITING.with(|w| std::mem::take(&mut *w.borrow_mut()));
        for (context, weak) in due {
            let Some(stream) = weak.upgrade() else {
                continue;
            };
            // SAFETY: plain value; the context is alive (its state is).
            let again = unsafe { abi::proxy_set_effective_context(context) } == abi::OK
                && stream.on_timer();
            if again {
                WAITING.with(|w| w.borrow_mut().push((context, weak)));
            }
        }
        if WAITING.with(|w| w.borrow().is_empty()) {
            set_tick_period(0);
        }
    }

    fn create_stream_context(&self, context_id: u32) -> Option<Box<dyn StreamContext>> {
        let shared = SHARED.with(Rc::clone);
        let side = match &self.config {
            Some(config) if config.role == Role::Front => {
                Side::<C>::Front(Front::with_shared(Rc::clone(config), shared))
            }
            Some(config) => Side::Back {
                back: Back::with_shared(Rc::clone(config), shared),
                close_deadline_ns: None,
            },
            None => Side::Closed,
        };
        Some(Box::new(Stream {
            context_id,
            state: Rc::new(RefCell::new(State { side })),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }
}

/// A connection the timer can act on.
trait Waiting {
    /// Runs with the connection's context effective; `true` to be called again.
    fn on_timer(&self) -> bool;
}

fn wait_for_timer(context: u32, state: &Rc<RefCell<State<impl Codec>>>) {
    let weak: Weak<dyn Waiting> = Rc::downgrade(state) as Weak<dyn Waiting>;
    WAITING.with(|w| {
        let mut w = w.borrow_mut();
        if !w.iter().any(|(id, _)| *id == context) {
            w.push((context, weak));
        }
    });
    set_tick_period(TICK_MS);
}

enum Side<C: Codec> {
    Front(Front<C>),
    Back {
        back: Back<C>,
        /// Set once a one-way call without a probe was forwarded: close by then at the latest.
        close_deadline_ns: Option<u64>,
    },
    /// Unconfigured or failed: every byte is dropped and the connection closed.
    Closed,
}

struct State<C: Codec> {
    side: Side<C>,
}

struct Stream<C: Codec> {
    context_id: u32,
    state: Rc<RefCell<State<C>>>,
}

impl<C: Codec> State<C> {
    fn fail(&mut self, buffer: u32, fatal: Fatal) {
        log(
            abi::LOG_WARN,
            &format!("meltemi {}: closing connection: {}", C::PROTOCOL, fatal.0),
        );
        if let Side::Front(front) = &mut self.side {
            front.on_close(&mut HostSink);
        }
        self.side = Side::Closed;
        close(buffer);
    }
}

/// Empties `buffer` (nothing unbridged may reach HCM or tcp_proxy) and closes the connection.
fn close(buffer: u32) {
    if let Ok(len) = buffer_len(buffer) {
        let _ = replace_buffer(buffer, len, &[]);
    }
    // SAFETY: plain value.
    unsafe { abi::proxy_close_stream(abi::STREAM_DOWNSTREAM) };
}

/// Hands new client bytes (and requests waiting behind a limit) to HCM: reads only the bytes
/// that identify our unconsumed requests and the bytes after them, then leaves the read buffer
/// holding our HTTP requests and nothing else.
fn pump_front<C: Codec>(front: &mut Front<C>, size: usize) -> Result<(), Fatal> {
    let status =
        |what: &str, s: Status| Fatal(format!("cannot {what} the read buffer (status {s})"));
    let head = get_buffer(abi::DOWNSTREAM_DATA, 0, front.peek_len().min(size))
        .map_err(|s| status("read", s))?;
    let kept = front.kept(&head, size)?;
    let raw = get_buffer(abi::DOWNSTREAM_DATA, kept, size.saturating_sub(kept))
        .map_err(|s| status("read", s))?;
    let http = front.on_client_bytes(&raw, now_ns(), &mut HostSink)?;
    if !raw.is_empty() {
        // The client's bytes must leave the buffer: rewrite it as our requests only.
        let mut content =
            get_buffer(abi::DOWNSTREAM_DATA, 0, kept).map_err(|s| status("read", s))?;
        content.extend_from_slice(&http);
        replace_buffer(abi::DOWNSTREAM_DATA, size, &content).map_err(|s| status("replace", s))
    } else if !http.is_empty() {
        append_buffer(abi::DOWNSTREAM_DATA, size, &http).map_err(|s| status("append to", s))
    } else {
        Ok(())
    }
}

impl<C: Codec> Stream<C> {
    fn on_read(&mut self, size: usize) -> Action {
        let mut state = self.state.borrow_mut();
        let result = match &mut state.side {
            Side::Closed => {
                close(abi::DOWNSTREAM_DATA);
                return Action::Continue;
            }
            Side::Front(front) => pump_front(front, size).map(|()| front.has_waiting()),
            Side::Back { back, .. } => match get_buffer(abi::DOWNSTREAM_DATA, 0, size) {
                Err(s) => Err(Fatal(format!("cannot read buffer (status {s})"))),
                Ok(data) => back.on_router_data(&data, &mut HostSink).and_then(|bytes| {
                    replace_buffer(abi::DOWNSTREAM_DATA, size, &bytes)
                        .map_err(|s| Fatal(format!("cannot replace buffer (status {s})")))
                }),
            }
            .map(|()| false),
        };
        let waiting = match result {
            Ok(waiting) => waiting,
            Err(fatal) => {
                state.fail(abi::DOWNSTREAM_DATA, fatal);
                return Action::Continue;
            }
        };
        if let Side::Back {
            back,
            close_deadline_ns,
        } = &mut state.side
        {
            if back.close_after_forward() && close_deadline_ns.is_none() {
                *close_deadline_ns = Some(now_ns().saturating_add(CLOSE_AFTER_FORWARD_DEADLINE_NS));
                drop(state);
                wait_for_timer(self.context_id, &self.state);
            }
            return Action::Continue;
        }
        if waiting {
            // Keep the read buffer reachable for the timer; HCM still reads it right away.
            // SAFETY: plain value.
            unsafe { abi::proxy_continue_stream(abi::STREAM_DOWNSTREAM) };
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_write(&mut self, size: usize) -> Action {
        let mut state = self.state.borrow_mut();
        let data = match &state.side {
            Side::Closed => return Action::Continue,
            _ => get_buffer(abi::UPSTREAM_DATA, 0, size),
        };
        let data = match data {
            Ok(d) => d,
            Err(s) => {
                state.fail(
                    abi::UPSTREAM_DATA,
                    Fatal(format!("cannot read buffer (status {s})")),
                );
                return Action::Continue;
            }
        };
        let mut kick = false;
        let result = match &mut state.side {
            Side::Front(f) => {
                let out = f.on_hcm_data(&data, now_ns(), &mut HostSink);
                kick = f.wants_kick();
                out
            }
            Side::Back { back, .. } => back.on_server_data(&data, &mut HostSink),
            Side::Closed => return Action::Continue,
        };
        match result.and_then(|bytes| {
            replace_buffer(abi::UPSTREAM_DATA, size, &bytes)
                .map_err(|s| Fatal(format!("cannot replace buffer (status {s})")))
        }) {
            Ok(()) => {
                drop(state);
                if kick {
                    wait_for_timer(self.context_id, &self.state);
                }
            }
            Err(fatal) => state.fail(abi::UPSTREAM_DATA, fatal),
        }
        Action::Continue
    }
}

impl<C: Codec> Waiting for RefCell<State<C>> {
    fn on_timer(&self) -> bool {
        let Ok(mut state) = self.try_borrow_mut() else {
            return true;
        };
        match &mut state.side {
            Side::Front(front) => {
                if !front.wants_kick() {
                    return false;
                }
                let pumped = buffer_len(abi::DOWNSTREAM_DATA)
                    .map_err(|s| Fatal(format!("read buffer out of reach (status {s})")))
                    .and_then(|size| pump_front(front, size));
                match pumped {
                    // SAFETY: plain value; Envoy continues the chain after this call.
                    Ok(()) => unsafe {
                        abi::proxy_continue_stream(abi::STREAM_DOWNSTREAM);
                    },
                    Err(fatal) => state.fail(abi::DOWNSTREAM_DATA, fatal),
                }
                false
            }
            Side::Back {
                close_deadline_ns, ..
            } => {
                // tcp_proxy has passed the call on once its upstream connection exists.
                let connected = property(&["upstream", "local_address"]).is_some();
                let late = close_deadline_ns.is_some_and(|d| now_ns() >= d);
                if !(connected || late) {
                    return true;
                }
                state.side = Side::Closed;
                // SAFETY: plain value.
                unsafe { abi::proxy_close_stream(abi::STREAM_DOWNSTREAM) };
                false
            }
            Side::Closed => false,
        }
    }
}

impl<C: Codec> Context for Stream<C> {}

impl<C: Codec> StreamContext for Stream<C> {
    fn on_downstream_data(&mut self, size: usize, _end_of_stream: bool) -> Action {
        self.on_read(size)
    }

    fn on_upstream_data(&mut self, size: usize, _end_of_stream: bool) -> Action {
        self.on_write(size)
    }

    fn on_downstream_close(&mut self, _peer: PeerType) {
        if let Ok(mut state) = self.state.try_borrow_mut() {
            if let Side::Front(front) = &mut state.side {
                front.on_close(&mut HostSink);
            }
        }
    }
}
