//! The host side of one VM: contexts, buffers, metrics, logs, clock and properties. It lives in
//! the wasmtime `Store`, so host functions reach it through `Caller::data`.

use std::collections::{BTreeMap, HashMap};

use crate::abi::{buffer_type, metric_type, status, Action};

/// Context id of the single root context (Envoy gives the first root context id 1).
pub(crate) const ROOT_CONTEXT_ID: u32 = 1;

/// Fixed start of the fake clock: 2023-11-14T22:13:20Z, in nanoseconds since the Unix epoch.
pub(crate) const EPOCH_NANOS: u64 = 1_700_000_000_000_000_000;

/// One network-filter context (a downstream connection).
#[derive(Debug, Default)]
pub(crate) struct Conn {
    /// The connection's persistent read buffer (what the next filter sees).
    pub read: Vec<u8>,
    /// Envoy still points at `read`: the last `on_downstream_data` returned Pause.
    pub read_attached: bool,
    /// The write buffer of the `on_upstream_data` call in progress.
    pub write: Vec<u8>,
    /// `write` is visible to the module (only during `on_upstream_data`).
    pub write_attached: bool,
    /// The module called `proxy_close_stream(Downstream | Upstream)` for this context.
    pub closed_by_module: bool,
    /// How many times the module called `proxy_continue_stream(Downstream)` for this context.
    pub continued: usize,
    /// The action of the last `on_new_connection` / `on_downstream_data`.
    pub last_action: Option<Action>,
    /// `proxy_on_downstream_connection_close` was delivered.
    pub downstream_closed: bool,
    /// `proxy_on_upstream_connection_close` was delivered.
    pub upstream_closed: bool,
    /// `proxy_on_delete` was delivered; the context no longer exists in the VM.
    pub deleted: bool,
}

/// A metric defined by the module.
#[derive(Debug)]
pub(crate) struct Metric {
    pub kind: u32,
    pub name: String,
    /// Counter or gauge value (a gauge is an Envoy `uint64`, read back as `i64`).
    pub value: u64,
    /// Every value recorded in a histogram.
    pub samples: Vec<u64>,
}

/// A call the module made to `proxy_call_foreign_function`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignCall {
    /// The context that was current (or effective) during the call.
    pub context_id: u32,
    /// The foreign function's name, e.g. `set_envoy_filter_state`.
    pub name: String,
    /// The raw argument bytes.
    pub args: Vec<u8>,
}

/// Where a buffer type resolves for the context of a host call (Envoy `Context::getBuffer`).
pub(crate) enum BufferRef<'a> {
    /// `getBuffer` returns null: `NotFound` for both get and set.
    Missing,
    /// Envoy's wrapper with no buffer behind it: reads as empty, writes are `BadArgument`.
    Detached,
    /// Read-only bytes (configuration): writes are `BadArgument`.
    ReadOnly(&'a [u8]),
    /// A connection's read (`false`) or write (`true`) buffer.
    Conn { id: u32, write: bool },
}

/// Mutable state of one VM.
#[derive(Debug)]
pub(crate) struct HostState {
    pub vm_config: Vec<u8>,
    pub plugin_config: Vec<u8>,
    /// `proxy_on_configure` is running (Envoy only exposes the plugin configuration then).
    pub in_configure: bool,
    /// Context of the callback being run.
    pub current: u32,
    /// Context chosen by `proxy_set_effective_context` during this callback (0 = none).
    pub effective: u32,
    pub conns: BTreeMap<u32, Conn>,
    pub metrics: Vec<Metric>,
    pub logs: Vec<(u32, String)>,
    pub log_level: u32,
    pub now_nanos: u64,
    pub tick_period_ms: u32,
    /// Bytes `proxy_get_buffer_bytes` copied into the module so far.
    pub copied_in: u64,
    /// Properties keyed by their NUL-joined path.
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    pub foreign_calls: Vec<ForeignCall>,
    /// State of the deterministic generator behind WASI `random_get`.
    pub rng: u64,
}

impl HostState {
    pub(crate) fn new(vm_config: &str) -> HostState {
        HostState {
            vm_config: vm_config.as_bytes().to_vec(),
            plugin_config: Vec::new(),
            in_configure: false,
            current: ROOT_CONTEXT_ID,
            effective: 0,
            conns: BTreeMap::new(),
            metrics: Vec::new(),
            logs: Vec::new(),
            log_level: 0,
            now_nanos: EPOCH_NANOS,
            tick_period_ms: 0,
            copied_in: 0,
            properties: HashMap::new(),
            foreign_calls: Vec::new(),
            rng: 0x6d65_6c74_656d_6921,
        }
    }

    /// Whether `id` names a context that currently exists in the VM.
    pub(crate) fn context_exists(&self, id: u32) -> bool {
        id == ROOT_CONTEXT_ID || self.conns.get(&id).is_some_and(|c| !c.deleted)
    }

    /// The context host calls act on: the effective context if set and alive, else the current
    /// one (proxy-wasm-cpp-host `contextOrEffectiveContext`).
    pub(crate) fn active_context(&self) -> u32 {
        if self.effective != 0 && self.context_exists(self.effective) {
            self.effective
        } else {
            self.current
        }
    }

    /// Resolves a buffer type for the active context; `Err` is the status for unknown types.
    pub(crate) fn buffer(&self, kind: u32) -> Result<BufferRef<'_>, u32> {
        let id = self.active_context();
        let conn = self.conns.get(&id);
        Ok(match kind {
            buffer_type::DOWNSTREAM_DATA => match conn {
                Some(c) if c.read_attached => BufferRef::Conn { id, write: false },
                _ => BufferRef::Detached,
            },
            buffer_type::UPSTREAM_DATA => match conn {
                Some(c) if c.write_attached => BufferRef::Conn { id, write: true },
                _ => BufferRef::Detached,
            },
            buffer_type::HTTP_REQUEST_BODY
            | buffer_type::HTTP_RESPONSE_BODY
            | buffer_type::GRPC_RECEIVE_BUFFER
            | buffer_type::CALL_DATA => BufferRef::Detached,
            buffer_type::HTTP_CALL_RESPONSE_BODY => BufferRef::Missing,
            buffer_type::VM_CONFIGURATION => BufferRef::ReadOnly(&self.vm_config),
            buffer_type::PLUGIN_CONFIGURATION if self.in_configure => {
                BufferRef::ReadOnly(&self.plugin_config)
            }
            buffer_type::PLUGIN_CONFIGURATION => BufferRef::Missing,
            _ => return Err(status::BAD_ARGUMENT),
        })
    }

    /// The bytes of a resolved buffer (empty when detached or missing).
    pub(crate) fn buffer_bytes<'a>(&'a self, buffer: &BufferRef<'a>) -> &'a [u8] {
        match buffer {
            BufferRef::Missing | BufferRef::Detached => &[],
            BufferRef::ReadOnly(bytes) => bytes,
            BufferRef::Conn { id, write } => match self.conns.get(id) {
                Some(c) if *write => &c.write,
                Some(c) => &c.read,
                None => &[],
            },
        }
    }

    /// Envoy `Buffer::copyFrom` on a connection buffer: `start == 0` drains `size` bytes (all of
    /// them if `size` is larger) and prepends `data`; `start >= len` appends; anything else is
    /// `BadArgument`.
    pub(crate) fn splice(
        &mut self,
        id: u32,
        write: bool,
        start: u32,
        size: u32,
        data: &[u8],
    ) -> u32 {
        let Some(conn) = self.conns.get_mut(&id) else {
            return status::NOT_FOUND;
        };
        let buf = if write {
            &mut conn.write
        } else {
            &mut conn.read
        };
        let (start, size) = (start as usize, size as usize);
        if start == 0 {
            buf.splice(..size.min(buf.len()), data.iter().copied());
            status::OK
        } else if start >= buf.len() {
            buf.extend_from_slice(data);
            status::OK
        } else {
            status::BAD_ARGUMENT
        }
    }

    /// `proxy_define_metric`: the same (type, name) gets the same id. Like Envoy, the id carries
    /// the metric type in its two low bits.
    pub(crate) fn define_metric(&mut self, kind: u32, name: String) -> u32 {
        let index = match self
            .metrics
            .iter()
            .position(|m| m.kind == kind && m.name == name)
        {
            Some(index) => index,
            None => {
                self.metrics.push(Metric {
                    kind,
                    name,
                    value: 0,
                    samples: Vec::new(),
                });
                self.metrics.len() - 1
            }
        };
        ((index as u32 + 1) << 2) | kind
    }

    /// The metric behind an id, if the id is valid.
    pub(crate) fn metric_mut(&mut self, id: u32) -> Option<&mut Metric> {
        let index = (id >> 2).checked_sub(1)? as usize;
        self.metrics.get_mut(index).filter(|m| m.kind == id & 0b11)
    }

    /// `proxy_increment_metric`, with Envoy's rules: counters only accept a positive offset
    /// (0 or negative is `BadArgument`), gauges add or subtract, histograms are `BadArgument`.
    pub(crate) fn increment_metric(&mut self, id: u32, offset: i64) -> u32 {
        let Some(metric) = self.metric_mut(id) else {
            return if id & 0b11 == metric_type::HISTOGRAM {
                status::BAD_ARGUMENT
            } else {
                status::NOT_FOUND
            };
        };
        match metric.kind {
            metric_type::COUNTER if offset > 0 => {
                metric.value = metric.value.wrapping_add(offset as u64);
                status::OK
            }
            metric_type::GAUGE => {
                metric.value = metric.value.wrapping_add(offset as u64);
                status::OK
            }
            _ => status::BAD_ARGUMENT,
        }
    }

    /// `proxy_record_metric`: counter add, gauge set, histogram record.
    pub(crate) fn record_metric(&mut self, id: u32, value: u64) -> u32 {
        let Some(metric) = self.metric_mut(id) else {
            return status::NOT_FOUND;
        };
        match metric.kind {
            metric_type::COUNTER => metric.value = metric.value.wrapping_add(value),
            metric_type::GAUGE => metric.value = value,
            _ => metric.samples.push(value),
        }
        status::OK
    }

    /// `proxy_get_metric`: counters and gauges; histograms are `BadArgument` (as in Envoy).
    pub(crate) fn get_metric(&mut self, id: u32) -> Result<u64, u32> {
        match self.metric_mut(id) {
            Some(m) if m.kind == metric_type::HISTOGRAM => Err(status::BAD_ARGUMENT),
            Some(m) => Ok(m.value),
            None if id & 0b11 == metric_type::HISTOGRAM => Err(status::BAD_ARGUMENT),
            None => Err(status::NOT_FOUND),
        }
    }

    /// Next output of the deterministic generator (splitmix64).
    pub(crate) fn next_random(&mut self) -> u64 {
        crate::rng::splitmix64(&mut self.rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_read(bytes: &[u8]) -> HostState {
        let mut state = HostState::new("");
        let conn = Conn {
            read: bytes.to_vec(),
            read_attached: true,
            ..Conn::default()
        };
        state.conns.insert(2, conn);
        state
    }

    fn attach(state: &mut HostState, attached: bool) {
        if let Some(conn) = state.conns.get_mut(&2) {
            conn.read_attached = attached;
        }
    }

    fn splice(bytes: &[u8], start: u32, size: u32, data: &[u8]) -> (u32, Vec<u8>) {
        let mut state = with_read(bytes);
        let status = state.splice(2, false, start, size, data);
        (status, state.conns[&2].read.clone())
    }

    #[test]
    fn splice_follows_envoy_copy_from() {
        assert_eq!(splice(b"abc", 0, 0, b"x"), (status::OK, b"xabc".to_vec()));
        assert_eq!(splice(b"abc", 0, 3, b"x"), (status::OK, b"x".to_vec()));
        assert_eq!(splice(b"abc", 0, 9, b""), (status::OK, b"".to_vec()));
        assert_eq!(splice(b"abc", 0, 1, b"x"), (status::OK, b"xbc".to_vec()));
        assert_eq!(splice(b"abc", 3, 0, b"x"), (status::OK, b"abcx".to_vec()));
        assert_eq!(splice(b"abc", 7, 2, b"x"), (status::OK, b"abcx".to_vec()));
        assert_eq!(
            splice(b"abc", 1, 1, b"x"),
            (status::BAD_ARGUMENT, b"abc".to_vec())
        );
        assert_eq!(splice(b"", 0, 0, b"x"), (status::OK, b"x".to_vec()));
    }

    #[test]
    fn downstream_buffer_is_reachable_only_while_attached() {
        let mut state = with_read(b"abc");
        state.current = 2;
        assert!(matches!(
            state.buffer(buffer_type::DOWNSTREAM_DATA),
            Ok(BufferRef::Conn {
                id: 2,
                write: false
            })
        ));
        attach(&mut state, false);
        assert!(matches!(
            state.buffer(buffer_type::DOWNSTREAM_DATA),
            Ok(BufferRef::Detached)
        ));
        // From the root context, through the effective context.
        state.current = ROOT_CONTEXT_ID;
        state.effective = 2;
        attach(&mut state, true);
        assert!(matches!(
            state.buffer(buffer_type::DOWNSTREAM_DATA),
            Ok(BufferRef::Conn { id: 2, .. })
        ));
        assert!(matches!(
            state.buffer(buffer_type::PLUGIN_CONFIGURATION),
            Ok(BufferRef::Missing)
        ));
        assert!(matches!(
            state.buffer(buffer_type::HTTP_CALL_RESPONSE_BODY),
            Ok(BufferRef::Missing)
        ));
        assert!(matches!(state.buffer(9), Err(status::BAD_ARGUMENT)));
    }

    #[test]
    fn metrics_follow_envoy_rules() {
        let mut state = HostState::new("");
        let counter = state.define_metric(metric_type::COUNTER, "c".into());
        let gauge = state.define_metric(metric_type::GAUGE, "g".into());
        let histogram = state.define_metric(metric_type::HISTOGRAM, "h".into());
        assert_eq!(
            state.define_metric(metric_type::COUNTER, "c".into()),
            counter
        );
        assert_ne!(state.define_metric(metric_type::GAUGE, "c".into()), counter);

        assert_eq!(state.increment_metric(counter, 5), status::OK);
        assert_eq!(state.increment_metric(counter, 0), status::BAD_ARGUMENT);
        assert_eq!(state.increment_metric(counter, -1), status::BAD_ARGUMENT);
        assert_eq!(state.record_metric(counter, 2), status::OK);
        assert_eq!(state.get_metric(counter), Ok(7));

        assert_eq!(state.increment_metric(gauge, -3), status::OK);
        assert_eq!(state.get_metric(gauge).map(|v| v as i64), Ok(-3));
        assert_eq!(state.record_metric(gauge, 9), status::OK);
        assert_eq!(state.get_metric(gauge), Ok(9));

        assert_eq!(state.record_metric(histogram, 4), status::OK);
        assert_eq!(state.increment_metric(histogram, 1), status::BAD_ARGUMENT);
        assert_eq!(state.get_metric(histogram), Err(status::BAD_ARGUMENT));
        assert_eq!(state.get_metric(1000 << 2), Err(status::NOT_FOUND));
        assert_eq!(state.record_metric(1000 << 2, 1), status::NOT_FOUND);
    }
}
