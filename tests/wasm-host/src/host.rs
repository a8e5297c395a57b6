//! [`Module`] (a compiled `.wasm`) and [`Host`] (one VM driven like an Envoy worker drives a
//! proxy-wasm network filter).

use std::fmt;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::{
    Config, Engine, Instance, Linker, Store, WasmBacktraceDetails, WasmParams, WasmResults,
};

use crate::abi::{log_level, metric_type, peer_type, Action};
use crate::state::{Conn, ForeignCall, HostState, ROOT_CONTEXT_ID};
use crate::{imports, wasi};

/// Why the host could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// The VM trapped (a panic inside the module, an unexpected import, `proc_exit`...): the
    /// message carries wasmtime's trap message, the wasm backtrace and the module's last
    /// error/critical log lines (where the Rust SDK's panic hook writes the panic message).
    /// The [`Host`] is poisoned afterwards.
    Trap(String),
    /// The module could not be read, compiled or instantiated.
    Load(String),
    /// The module or the caller broke the proxy-wasm contract (wrong export signature,
    /// `proxy_on_vm_start` returned false, a closed connection was used...).
    Abi(String),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Trap(msg) => write!(f, "{msg}"),
            HostError::Load(msg) => write!(f, "cannot load wasm module: {msg}"),
            HostError::Abi(msg) => write!(f, "proxy-wasm ABI violation: {msg}"),
        }
    }
}

impl std::error::Error for HostError {}

/// The root context id as a wasm argument.
const ROOT: i32 = ROOT_CONTEXT_ID as i32;

/// The process-wide engine: compiling once and sharing it keeps tests fast.
fn engine() -> Result<&'static Engine, HostError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            // Rust panics are ~15 frames deep before reaching the filter's own code.
            config.wasm_backtrace_max_frames(NonZeroUsize::new(64));
            config.wasm_backtrace_details(WasmBacktraceDetails::Disable);
            Engine::new(&config).map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| HostError::Load(e.clone()))
}

struct ModuleInner {
    module: wasmtime::Module,
    linker: Linker<HostState>,
}

/// A compiled proxy-wasm module with its imports linked. Cheap to clone; load it once and
/// create a [`Host`] per test.
#[derive(Clone)]
pub struct Module {
    inner: Arc<ModuleInner>,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module").finish_non_exhaustive()
    }
}

impl Module {
    /// Reads and compiles the `.wasm` file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Module, HostError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| HostError::Load(format!("reading {}: {e}", path.display())))?;
        Module::from_bytes(&bytes)
    }

    /// Compiles a module from its binary.
    pub fn from_bytes(bytes: &[u8]) -> Result<Module, HostError> {
        let engine = engine()?;
        let load = |e: wasmtime::Error| HostError::Load(format!("{e:#}"));
        let module = wasmtime::Module::new(engine, bytes).map_err(load)?;
        let abi = ["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"];
        if !module.exports().any(|e| abi.contains(&e.name())) {
            return Err(HostError::Load(
                "module exports no proxy_abi_version_0_2_x marker".to_owned(),
            ));
        }
        let mut linker = Linker::new(engine);
        imports::add_to_linker(&mut linker).map_err(load)?;
        wasi::add_to_linker(&mut linker).map_err(load)?;
        linker
            .define_unknown_imports_as_traps(&module)
            .map_err(load)?;
        Ok(Module {
            inner: Arc::new(ModuleInner { module, linker }),
        })
    }
}

/// A connection (network-filter context) of a [`Host`]; its value is the proxy-wasm context id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u32);

impl ConnId {
    /// The proxy-wasm context id the module sees for this connection.
    pub fn context_id(self) -> u32 {
        self.0
    }
}

/// One VM, like one Envoy worker's: a root context (id 1) plus one context per connection.
///
/// Callbacks run with their own context current; `proxy_set_effective_context` switches it until
/// the callback returns. A trap poisons the host: every later call into the VM returns
/// [`HostError::Trap`].
pub struct Host {
    store: Store<HostState>,
    instance: Instance,
    next_context_id: u32,
    poisoned: Option<String>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("state", self.store.data())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// Instantiates `module`, runs its WASI initialisation (`_initialize`, then `main` or
    /// `__main_void` if exported, else `_start`), then `proxy_on_context_create(1, 0)` and
    /// `proxy_on_vm_start(1, vm_config.len())`, as proxy-wasm-cpp-host does.
    pub fn new(module: &Module, vm_config: &str) -> Result<Host, HostError> {
        let inner = &module.inner;
        let mut store = Store::new(inner.module.engine(), HostState::new(vm_config));
        let instance = inner
            .linker
            .instantiate(&mut store, &inner.module)
            .map_err(|e| HostError::Load(format!("{e:#}")))?;
        let mut host = Host {
            store,
            instance,
            next_context_id: ROOT_CONTEXT_ID + 1,
            poisoned: None,
        };
        host.initialize()?;
        host.call::<(i32, i32), ()>(ROOT_CONTEXT_ID, "proxy_on_context_create", (ROOT, 0))?;
        let size = vm_config.len() as i32;
        let started =
            host.call::<(i32, i32), i32>(ROOT_CONTEXT_ID, "proxy_on_vm_start", (ROOT, size))?;
        if started == Some(0) {
            let message = "proxy_on_vm_start returned false".to_owned();
            return Err(HostError::Abi(message));
        }
        Ok(host)
    }

    /// Calls `proxy_on_configure(1, plugin_config.len())`; the plugin configuration buffer holds
    /// `plugin_config` during the call (Envoy exposes it only then). Returns the module's answer
    /// (`true` if it does not export the callback).
    pub fn configure(&mut self, plugin_config: &str) -> Result<bool, HostError> {
        let state = self.store.data_mut();
        state.plugin_config = plugin_config.as_bytes().to_vec();
        state.in_configure = true;
        let size = plugin_config.len() as i32;
        let result =
            self.call::<(i32, i32), i32>(ROOT_CONTEXT_ID, "proxy_on_configure", (ROOT, size));
        self.store.data_mut().in_configure = false;
        Ok(result?.is_none_or(|ok| ok != 0))
    }

    /// Opens a connection: `proxy_on_context_create(id, 1)` then `proxy_on_new_connection(id)`.
    /// The callback's [`Action`] is available from [`Host::last_action`].
    pub fn new_connection(&mut self) -> Result<ConnId, HostError> {
        let id = self.next_context_id;
        self.next_context_id += 1;
        self.store.data_mut().conns.insert(id, Conn::default());
        self.call::<(i32, i32), ()>(id, "proxy_on_context_create", (id as i32, ROOT))?;
        let raw = self.call::<i32, i32>(id, "proxy_on_new_connection", id as i32)?;
        let action = raw.map_or(Action::Continue, Action::from_raw);
        self.conn_mut(ConnId(id))?.last_action = Some(action);
        Ok(ConnId(id))
    }

    /// Envoy `onData`: appends `new_bytes` to the connection's persistent read buffer and calls
    /// `proxy_on_downstream_data(id, buffer_len, end_stream)`. The module sees and edits the
    /// buffer as `DownstreamData`; after a Pause it stays reachable (e.g. from `on_tick` through
    /// `proxy_set_effective_context`), after a Continue it does not.
    pub fn downstream_data(
        &mut self,
        c: ConnId,
        new_bytes: &[u8],
        end_stream: bool,
    ) -> Result<Action, HostError> {
        let conn = self.open_conn_mut(c)?;
        conn.read.extend_from_slice(new_bytes);
        conn.read_attached = true;
        let size = conn.read.len() as i32;
        let raw = self.call::<(i32, i32, i32), i32>(
            c.0,
            "proxy_on_downstream_data",
            (c.0 as i32, size, end_stream as i32),
        )?;
        let action = raw.map_or(Action::Continue, Action::from_raw);
        let conn = self.conn_mut(c)?;
        conn.read_attached = action == Action::Pause;
        conn.last_action = Some(action);
        Ok(action)
    }

    /// The connection's read buffer: what the next filter (HCM, tcp_proxy) would see.
    pub fn read_buffer(&self, c: ConnId) -> &[u8] {
        self.conn(c).map_or(&[], |conn| &conn.read)
    }

    /// The next filter consumed the first `n` bytes of the read buffer (all of it if `n` is
    /// larger), like HCM leaving pipelined bytes it has not parsed yet.
    pub fn drain_read(&mut self, c: ConnId, n: usize) {
        if let Some(conn) = self.store.data_mut().conns.get_mut(&c.0) {
            let n = n.min(conn.read.len());
            conn.read.drain(..n);
        }
    }

    /// Envoy `onWrite`: a fresh `UpstreamData` buffer holding `bytes` is visible to the module
    /// during `proxy_on_upstream_data(id, len, end_stream)`; returns the action and the buffer's
    /// final content (what would be written to the client). With `end_stream`, Envoy then calls
    /// `proxy_on_upstream_connection_close(id, Unknown)`, and so does this host.
    pub fn upstream_data(
        &mut self,
        c: ConnId,
        bytes: &[u8],
        end_stream: bool,
    ) -> Result<(Action, Vec<u8>), HostError> {
        let conn = self.open_conn_mut(c)?;
        conn.write = bytes.to_vec();
        conn.write_attached = true;
        let size = bytes.len() as i32;
        let raw = self.call::<(i32, i32, i32), i32>(
            c.0,
            "proxy_on_upstream_data",
            (c.0 as i32, size, end_stream as i32),
        );
        let conn = self.conn_mut(c)?;
        conn.write_attached = false;
        let written = std::mem::take(&mut conn.write);
        let action = raw?.map_or(Action::Continue, Action::from_raw);
        if end_stream {
            self.upstream_close(c)?;
        }
        Ok((action, written))
    }

    /// The client closed the connection: `proxy_on_downstream_connection_close(id, Remote)`, then
    /// Envoy's `onCloseTCP`: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    pub fn downstream_close(&mut self, c: ConnId) -> Result<(), HostError> {
        let conn = self.open_conn_mut(c)?;
        conn.downstream_closed = true;
        conn.read_attached = false;
        let args = (c.0 as i32, peer_type::REMOTE as i32);
        self.call::<(i32, i32), ()>(c.0, "proxy_on_downstream_connection_close", args)?;
        self.call::<i32, i32>(c.0, "proxy_on_done", c.0 as i32)?;
        self.call::<i32, ()>(c.0, "proxy_on_log", c.0 as i32)?;
        self.call::<i32, ()>(c.0, "proxy_on_delete", c.0 as i32)?;
        self.conn_mut(c)?.deleted = true;
        Ok(())
    }

    /// The upstream side ended: `proxy_on_upstream_connection_close(id, Unknown)` (Envoy only
    /// knows the peer as Unknown on this path).
    pub fn upstream_close(&mut self, c: ConnId) -> Result<(), HostError> {
        self.open_conn_mut(c)?.upstream_closed = true;
        let args = (c.0 as i32, peer_type::UNKNOWN as i32);
        self.call::<(i32, i32), ()>(c.0, "proxy_on_upstream_connection_close", args)?;
        Ok(())
    }

    /// Fires the root context's timer: `proxy_on_tick(1)` (whatever the tick period).
    pub fn tick(&mut self) -> Result<(), HostError> {
        self.call::<i32, ()>(ROOT_CONTEXT_ID, "proxy_on_tick", ROOT)?;
        Ok(())
    }

    /// Bytes of host buffers the module copied in with `proxy_get_buffer_bytes` since the last
    /// [`Host::reset_copied`]: what a bridge costs per byte Envoy shows it.
    pub fn copied_in(&self) -> u64 {
        self.store.data().copied_in
    }

    /// Restarts the count of [`Host::copied_in`].
    pub fn reset_copied(&mut self) {
        self.store.data_mut().copied_in = 0;
    }

    /// The period last set with `proxy_set_tick_period_milliseconds` (0 = no timer).
    pub fn tick_period_ms(&self) -> u32 {
        self.store.data().tick_period_ms
    }

    /// Moves the fake clock forward. It starts at 2023-11-14T22:13:20Z and serves
    /// `proxy_get_current_time_nanoseconds` and WASI `clock_time_get`.
    pub fn advance_time(&mut self, d: Duration) {
        let state = self.store.data_mut();
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        state.now_nanos = state.now_nanos.saturating_add(nanos);
    }

    /// The fake clock, in nanoseconds since the Unix epoch.
    pub fn now_nanos(&self) -> u64 {
        self.store.data().now_nanos
    }

    /// Whether the module called `proxy_close_stream(Downstream | Upstream)` for `c`.
    pub fn closed(&self, c: ConnId) -> bool {
        self.conn(c).is_some_and(|conn| conn.closed_by_module)
    }

    /// How many times the module called `proxy_continue_stream(Downstream)` for `c`.
    pub fn continued(&self, c: ConnId) -> usize {
        self.conn(c).map_or(0, |conn| conn.continued)
    }

    /// The action of the last `proxy_on_new_connection` / `proxy_on_downstream_data` for `c`.
    pub fn last_action(&self, c: ConnId) -> Option<Action> {
        self.conn(c).and_then(|conn| conn.last_action)
    }

    /// Value of the counter the module defined as `name` (Envoy shows it as
    /// `wasmcustom.<name>`).
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.metric(metric_type::COUNTER, name).map(|m| m.value)
    }

    /// Value of the gauge `name` (Envoy gauges are unsigned; read back as `i64`).
    pub fn gauge(&self, name: &str) -> Option<i64> {
        self.metric(metric_type::GAUGE, name)
            .map(|m| m.value as i64)
    }

    /// Every value recorded in the histogram `name`, in order (empty if undefined).
    pub fn histogram(&self, name: &str) -> Vec<u64> {
        self.metric(metric_type::HISTOGRAM, name)
            .map(|m| m.samples.clone())
            .unwrap_or_default()
    }

    /// Names of all metrics the module defined, sorted, without duplicates.
    pub fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .store
            .data()
            .metrics
            .iter()
            .map(|m| m.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Every `(level, message)` logged so far: `proxy_log`, WASI stdout (level 2) and stderr
    /// (level 4), one entry per write with one trailing newline removed.
    pub fn logs(&self) -> &[(u32, String)] {
        &self.store.data().logs
    }

    /// Forgets the logs collected so far.
    pub fn clear_logs(&mut self) {
        self.store.data_mut().logs.clear();
    }

    /// Sets the level `proxy_get_log_level` reports (default 0, trace).
    pub fn set_log_level(&mut self, level: u32) {
        self.store.data_mut().log_level = level;
    }

    /// Sets a property for `proxy_get_property`; `path` is the SDK's path (`["source",
    /// "address"]`), NUL-joined on the wire. Unset paths answer `NotFound`.
    pub fn set_property(&mut self, path: &[&str], value: &[u8]) {
        let key = path.join("\0").into_bytes();
        self.store.data_mut().properties.insert(key, value.to_vec());
    }

    /// A property as last set by the test or by the module (`proxy_set_property`).
    pub fn property(&self, path: &[&str]) -> Option<&[u8]> {
        let key = path.join("\0").into_bytes();
        self.store.data().properties.get(&key).map(Vec::as_slice)
    }

    /// Every `proxy_call_foreign_function` call so far.
    pub fn foreign_calls(&self) -> &[ForeignCall] {
        &self.store.data().foreign_calls
    }

    /// The trap that poisoned this host, if any.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// WASI initialisation as proxy-wasm-cpp-host `startVm` does it: a reactor's `_initialize`
    /// followed by `main(0, 0)` or `__main_void()` if exported, else a command's `_start`.
    fn initialize(&mut self) -> Result<(), HostError> {
        if self
            .call::<(), ()>(ROOT_CONTEXT_ID, "_initialize", ())?
            .is_none()
        {
            self.call::<(), ()>(ROOT_CONTEXT_ID, "_start", ())?;
        } else if self
            .call::<(i32, i32), i32>(ROOT_CONTEXT_ID, "main", (0, 0))?
            .is_none()
        {
            self.call::<(), ()>(ROOT_CONTEXT_ID, "__main_void", ())?;
        }
        Ok(())
    }

    fn metric(&self, kind: u32, name: &str) -> Option<&crate::state::Metric> {
        self.store
            .data()
            .metrics
            .iter()
            .find(|m| m.kind == kind && m.name == name)
    }

    fn conn(&self, c: ConnId) -> Option<&Conn> {
        self.store.data().conns.get(&c.0)
    }

    fn conn_mut(&mut self, c: ConnId) -> Result<&mut Conn, HostError> {
        self.store
            .data_mut()
            .conns
            .get_mut(&c.0)
            .ok_or_else(|| HostError::Abi(format!("unknown connection {}", c.0)))
    }

    /// The connection, which must still exist in the VM and be open downstream.
    fn open_conn_mut(&mut self, c: ConnId) -> Result<&mut Conn, HostError> {
        let conn = self.conn_mut(c)?;
        if conn.deleted || conn.downstream_closed {
            return Err(HostError::Abi(format!(
                "connection {} is already closed",
                c.0
            )));
        }
        Ok(conn)
    }

    /// Calls export `name` with `context` current. `Ok(None)` if the module does not export it
    /// (Envoy then skips the callback). A trap poisons the host.
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        context: u32,
        name: &str,
        params: P,
    ) -> Result<Option<R>, HostError> {
        if let Some(trap) = &self.poisoned {
            return Err(HostError::Trap(format!(
                "the VM trapped earlier and is unusable: {trap}"
            )));
        }
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            return Ok(None);
        };
        let func = func.typed::<P, R>(&self.store).map_err(|e| {
            HostError::Abi(format!("export `{name}` has an unexpected signature: {e}"))
        })?;
        let state = self.store.data_mut();
        state.current = context;
        state.effective = 0;
        let logs_before = state.logs.len();
        let result = func.call(&mut self.store, params);
        let state = self.store.data_mut();
        state.current = ROOT_CONTEXT_ID;
        state.effective = 0;
        match result {
            Ok(value) => Ok(Some(value)),
            Err(err) => {
                // Root cause first (the trap or the failing host call), then the wasm backtrace;
                // the host's own native backtrace is left out.
                let mut chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
                let cause = chain.pop().unwrap_or_default();
                let mut message = format!("`{name}` (context {context}) trapped: {cause}");
                for frame in chain {
                    message.push('\n');
                    message.push_str(&frame);
                }
                let errors: Vec<&str> = state.logs[logs_before..]
                    .iter()
                    .filter(|(level, _)| *level >= log_level::ERROR)
                    .map(|(_, line)| line.as_str())
                    .collect();
                if !errors.is_empty() {
                    message.push_str("\nmodule error log during the call:\n");
                    message.push_str(&errors.join("\n"));
                }
                self.poisoned = Some(message.clone());
                Err(HostError::Trap(message))
            }
        }
    }
}
