//! Native front: binds [`Front`] to Envoy's dynamic-module network filter hooks
//! (`envoy.filters.network.dynamic_modules`, placed before the HTTP connection manager).
//!
//! The transcoding is the wasm front's, byte for byte; only the buffer access differs. Envoy
//! shows the filter its whole read buffer on every read, including requests HCM has not
//! consumed yet; only the bytes that identify them and the new client bytes are read, and the
//! buffer is left holding our HTTP requests and nothing else. Requests held back by
//! `max_pending_requests` are handed from the filter's scheduler once HCM has answered
//! everything, one at a time (data injected outside a read event reaches HCM in a buffer of its
//! own, so nothing may be left unconsumed in it).
//!
//! Heartbeats and refusals are answered by the front itself and written to the client directly
//! (no detour through HCM's `meltemi.local` virtual host), in request order.
//!
//! Envoy runs this filter's write hook synchronously inside our own calls that write or inject
//! (HCM may answer at once). State lives in a `RefCell` reached through a shared reference, and
//! no borrow is held across those calls.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::c_void;

use super::abi::{self, Connection, EnvoyBuffer, EnvoyPtr, NETWORK_CONTINUE};
use super::metrics::{self, NativeSink};
use super::{contain, now_ns, worker_config, worker_shared, ModuleConfig};
use crate::config::Role;
use crate::front::{Fatal, Front};
use crate::Codec;

enum State<C: Codec> {
    Open(Box<Front<C>>),
    /// Failed or closed: every byte is dropped.
    Closed,
}

/// One client connection.
pub struct Filter<C: Codec> {
    state: RefCell<State<C>>,
    /// Created on first use, deleted with the filter.
    scheduler: Cell<EnvoyPtr>,
    /// Set while the glue writes the front's own answers to the client: Envoy runs this
    /// filter's write hook inside that write, which must pass them on untouched.
    writing_direct: Cell<bool>,
    /// HTTP/1.1 requests taken back out of the read buffer when the client half-closed: once
    /// Envoy has raised the end of the stream it never shows the filter chain its read buffer
    /// again, so HCM would never parse requests left pipelined there. They are injected one
    /// at a time, each when HCM has answered everything before it.
    reinject: RefCell<VecDeque<Vec<u8>>>,
}

/// `config_new`: parses the same JSON as the wasm front's plugin configuration.
///
/// # Safety
/// Called by Envoy on the main thread with buffers valid for the call.
pub unsafe fn config_new<C: Codec>(
    config_envoy: EnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    // SAFETY: valid for this call.
    let raw = unsafe { config.as_slice() };
    match ModuleConfig::<C>::new(raw, Role::Front) {
        Ok(config) => {
            metrics::register(config_envoy, C::PROTOCOL, &config.services, &config.methods);
            let config = Box::new(ModuleConfig::<C> {
                envoy: config_envoy as usize,
                ..config
            });
            Box::into_raw(config) as *const c_void
        }
        Err(e) => {
            abi::log(abi::LOG_ERROR, &format!("{} front: {e}", C::PROTOCOL));
            std::ptr::null()
        }
    }
}

/// # Safety
/// `config` came from [`config_new`], destroyed once.
pub unsafe fn config_destroy<C: Codec>(config: *const c_void) {
    if config.is_null() {
        return;
    }
    // SAFETY: made by `Box::into_raw` in `config_new`.
    let config = unsafe { Box::from_raw(config as *mut ModuleConfig<C>) };
    metrics::unregister(config.envoy as EnvoyPtr);
}

/// `filter_new`: the state of one client connection, on its worker thread.
///
/// # Safety
/// `config` came from [`config_new`] and outlives the filter.
pub unsafe fn filter_new<C: Codec>(config: *const c_void, _envoy: EnvoyPtr) -> *mut c_void {
    // SAFETY: guaranteed by the caller.
    let module = unsafe { &*(config as *const ModuleConfig<C>) };
    let state = match worker_config(module) {
        Some(config) => {
            let mut front = Front::with_shared(config, worker_shared(module));
            // This glue can write to the client: no detour through HCM's `meltemi.local`.
            front.answer_locally();
            State::Open(Box::new(front))
        }
        None => State::Closed,
    };
    Box::into_raw(Box::new(Filter::<C> {
        state: RefCell::new(state),
        scheduler: Cell::new(std::ptr::null_mut()),
        writing_direct: Cell::new(false),
        reinject: RefCell::new(VecDeque::new()),
    })) as *mut c_void
}

/// # Safety
/// `filter` came from [`filter_new`], destroyed once.
pub unsafe fn filter_destroy<C: Codec>(filter: *mut c_void) {
    // SAFETY: made by `Box::into_raw` in `filter_new`.
    let filter = unsafe { Box::from_raw(filter as *mut Filter<C>) };
    let scheduler = filter.scheduler.get();
    if !scheduler.is_null() {
        // SAFETY: created by `new_scheduler` for this filter, deleted once.
        unsafe { abi::delete_scheduler(scheduler) };
    }
    if let State::Open(mut front) = filter.state.into_inner() {
        front.on_close(&mut NativeSink::default());
    }
}

/// # Safety
/// `filter` came from [`filter_new`] and is alive.
unsafe fn filter_ref<'a, C: Codec>(filter: *mut c_void) -> &'a Filter<C> {
    // SAFETY: guaranteed by the caller; only shared references are ever made.
    unsafe { &*(filter as *const Filter<C>) }
}

/// Bytes of `chunks` from `start`, at most `len`: borrowed when one chunk holds them.
fn gather(chunks: &[EnvoyBuffer], start: usize, len: usize) -> Cow<'_, [u8]> {
    let mut skip = start;
    let mut want = len;
    let mut out: Option<Vec<u8>> = None;
    for chunk in chunks {
        if want == 0 {
            break;
        }
        // SAFETY: the chunks were filled by Envoy during the current hook.
        let bytes = unsafe { chunk.as_slice() };
        if skip >= bytes.len() {
            skip = skip.saturating_sub(bytes.len());
            continue;
        }
        let part = bytes.get(skip..).unwrap_or(&[]);
        skip = 0;
        let take = part.get(..want.min(part.len())).unwrap_or(&[]);
        want = want.saturating_sub(take.len());
        match &mut out {
            None if want == 0 => return Cow::Borrowed(take),
            None => out = Some(take.to_vec()),
            Some(v) => v.extend_from_slice(take),
        }
    }
    out.map_or(Cow::Borrowed(&[][..]), Cow::Owned)
}

fn total(chunks: &[EnvoyBuffer]) -> usize {
    chunks.iter().fold(0usize, |n, c| n.saturating_add(c.len))
}

/// Hands new client bytes to HCM: reads only the bytes identifying our unconsumed requests
/// and the new bytes after them, and leaves the read buffer holding our requests only.
fn pump<C: Codec>(
    front: &mut Front<C>,
    conn: Connection,
    sink: &mut NativeSink,
) -> Result<(), Fatal> {
    let chunks = conn.read_chunks();
    let size = total(&chunks);
    let head = gather(&chunks, 0, front.peek_len().min(size));
    let kept = front.kept(&head, size)?;
    let raw = gather(&chunks, kept, size.saturating_sub(kept));
    let http = front.on_client_bytes(&raw, now_ns(), sink)?;
    let broken = || Fatal("cannot rewrite the read buffer".into());
    if !raw.is_empty() {
        // The client's bytes must leave the buffer: keep our earlier requests, then the new ones.
        let prefix = gather(&chunks, 0, kept).into_owned();
        drop(raw);
        if !(conn.drain_read(size) && conn.append_read(&prefix) && conn.append_read(&http)) {
            return Err(broken());
        }
    } else if !conn.append_read(&http) {
        return Err(broken());
    }
    Ok(())
}

/// At the client's FIN (HTTP/1.1): moves the requests HCM has not consumed out of the read
/// buffer into `reinject`, one entry each (the buffer holds exactly those, see [`pump`]).
fn take_back_unconsumed<C: Codec>(
    front: &Front<C>,
    conn: Connection,
    reinject: &mut VecDeque<Vec<u8>>,
) -> Result<(), Fatal> {
    let lengths = front.unconsumed_lengths();
    let chunks = conn.read_chunks();
    let size = total(&chunks);
    let expected = lengths.iter().fold(0usize, |n, l| n.saturating_add(*l));
    if size != expected || size == 0 {
        return if size == expected {
            Ok(())
        } else {
            Err(Fatal(
                "read buffer does not hold the requests handed to HCM".into(),
            ))
        };
    }
    let mut at = 0usize;
    for len in lengths {
        reinject.push_back(gather(&chunks, at, len).into_owned());
        at = at.saturating_add(len);
    }
    if conn.drain_read(size) {
        Ok(())
    } else {
        Err(Fatal("cannot rewrite the read buffer".into()))
    }
}

impl<C: Codec> Filter<C> {
    /// Closes the connection after a fatal error; nothing unbridged may reach HCM or the client.
    fn fail(&self, conn: Connection, fatal: Fatal, read_side: bool) {
        abi::log(
            abi::LOG_WARN,
            &format!("meltemi {}: closing connection: {}", C::PROTOCOL, fatal.0),
        );
        if let Ok(mut state) = self.state.try_borrow_mut() {
            if let State::Open(front) = &mut *state {
                front.on_close(&mut NativeSink::default());
            }
            *state = State::Closed;
        }
        if read_side {
            conn.drain_read(total(&conn.read_chunks()));
        } else {
            conn.drain_write(total(&conn.write_chunks()));
        }
        conn.close();
    }

    /// Asks for [`on_scheduled`] when waiting requests can only be handed from there: HCM
    /// answered everything it had, so no further read event will come.
    fn kick_if_idle(&self, conn: Connection) {
        // HTTP/1.1: only an idle HCM may be handed a request outside a read (it must consume
        // the injected buffer whole). HTTP/2: HCM consumes everything, and frames it needs
        // (SETTINGS/PING ACK, WINDOW_UPDATE) may be owed while calls are in flight.
        let held = self.reinject.borrow().len();
        let idle = match &*self.state.borrow() {
            State::Open(front) if held > 0 => front.awaiting_hcm() == held,
            State::Open(front) => {
                front.wants_kick() && (front.is_http2() || front.in_flight() == 0)
            }
            State::Closed => false,
        };
        if !idle {
            return;
        }
        let mut scheduler = self.scheduler.get();
        if scheduler.is_null() {
            scheduler = conn.new_scheduler();
            self.scheduler.set(scheduler);
        }
        if !scheduler.is_null() {
            // SAFETY: created above for this filter, alive until `filter_destroy`.
            unsafe { abi::schedule(scheduler, 1) };
        }
    }
}

/// Runs `body` on the open front of a read (`read_side`) or write hook; a fatal error closes
/// the connection, and waiting requests are kicked when HCM is idle.
///
/// # Safety
/// Envoy's filter pointer and our filter state for the current hook.
unsafe fn hook<C: Codec>(
    envoy: EnvoyPtr,
    filter: *mut c_void,
    read_side: bool,
    body: impl FnOnce(&mut Front<C>, Connection, &mut NativeSink) -> Result<(), Fatal>,
) -> u32 {
    let conn = Connection(envoy);
    // SAFETY: guaranteed by the caller.
    let filter = unsafe { filter_ref::<C>(filter) };
    if !read_side && filter.writing_direct.get() {
        return NETWORK_CONTINUE;
    }
    contain(
        || {
            let mut sink = NativeSink::default();
            let mut direct = Vec::new();
            let result = match filter.state.try_borrow_mut() {
                Ok(mut state) => match &mut *state {
                    State::Open(front) => {
                        let r = body(front, conn, &mut sink);
                        direct = front.take_direct();
                        r
                    }
                    State::Closed if read_side => {
                        conn.drain_read(total(&conn.read_chunks()));
                        Ok(())
                    }
                    State::Closed => Ok(()),
                },
                Err(_) if read_side => Err(Fatal("read hook re-entered".into())),
                // A write of our own from inside another hook (none today) passes unchanged.
                Err(_) => Ok(()),
            };
            match result {
                Ok(()) => {
                    if !direct.is_empty() {
                        // No borrow is held: Envoy runs our write hook inside the write.
                        filter.writing_direct.set(true);
                        conn.write(&direct);
                        filter.writing_direct.set(false);
                    }
                    filter.kick_if_idle(conn);
                }
                Err(fatal) => filter.fail(conn, fatal, read_side),
            }
        },
        || {
            filter.writing_direct.set(false);
            conn.close()
        },
    );
    NETWORK_CONTINUE
}

/// `on_network_filter_new_connection`: half-close is enabled, so that a client that sends
/// its calls and then shuts down its sending side still gets every answer (Envoy would
/// otherwise close the connection on the FIN). The front closes the connection once the last
/// answer is written ([`Front::finished_after_eof`]).
pub fn on_new_connection(envoy: EnvoyPtr) -> u32 {
    Connection(envoy).enable_half_close();
    NETWORK_CONTINUE
}

/// `on_network_filter_read`: client bytes become HTTP requests for HCM; `end_stream`, the
/// client's FIN.
///
/// # Safety
/// As [`hook`].
pub unsafe fn on_read<C: Codec>(envoy: EnvoyPtr, filter: *mut c_void, end_stream: bool) -> u32 {
    // SAFETY: guaranteed by the caller.
    unsafe {
        hook::<C>(envoy, filter, true, |front, conn, sink| {
            pump(front, conn, sink)?;
            if end_stream {
                front.on_client_eof();
                if !front.is_http2() {
                    // SAFETY: guaranteed by the caller.
                    let filter = filter_ref::<C>(filter);
                    take_back_unconsumed(front, conn, &mut filter.reinject.borrow_mut())?;
                }
            }
            Ok(())
        })
    }
}

/// `on_network_filter_write`: HCM's answers become protocol frames.
///
/// # Safety
/// As [`hook`].
pub unsafe fn on_write<C: Codec>(envoy: EnvoyPtr, filter: *mut c_void) -> u32 {
    // SAFETY: guaranteed by the caller.
    unsafe {
        hook::<C>(envoy, filter, false, |front, conn, sink| {
            let chunks = conn.write_chunks();
            let size = total(&chunks);
            let out = front.on_hcm_data(&gather(&chunks, 0, size), now_ns(), sink)?;
            if conn.drain_write(size) && conn.append_write(&out) {
                Ok(())
            } else {
                Err(Fatal("cannot rewrite the write buffer".into()))
            }
        })
    }
}

/// `on_network_filter_scheduled`: hands one waiting request to an idle HCM (HTTP/1.1), or
/// whatever the front owes HCM (HTTP/2).
///
/// # Safety
/// As [`on_read`].
pub unsafe fn on_scheduled<C: Codec>(envoy: EnvoyPtr, filter: *mut c_void) {
    let conn = Connection(envoy);
    // SAFETY: guaranteed by the caller.
    let filter = unsafe { filter_ref::<C>(filter) };
    contain(
        || {
            let mut sink = NativeSink::default();
            let mut direct = Vec::new();
            let handed = match filter.state.try_borrow_mut() {
                Ok(mut state) => match &mut *state {
                    State::Open(front) if !filter.reinject.borrow().is_empty() => {
                        let held = filter.reinject.borrow().len();
                        let next = if front.awaiting_hcm() == held {
                            filter.reinject.borrow_mut().pop_front()
                        } else {
                            None
                        };
                        Ok(next.unwrap_or_default())
                    }
                    State::Open(front) if front.finished_after_eof() => {
                        // The client half-closed and has every answer: close (after the
                        // write hook, which must not close a write it is still running).
                        front.on_close(&mut sink);
                        *state = State::Closed;
                        drop(state);
                        conn.close();
                        return;
                    }
                    State::Open(front) if front.wants_kick() && front.is_http2() => {
                        front.on_client_bytes(&[], now_ns(), &mut sink)
                    }
                    State::Open(front) if front.wants_kick() && front.in_flight() == 0 => {
                        let handed = front.hand_one(now_ns(), &mut sink);
                        direct = front.take_direct();
                        handed
                    }
                    _ => Ok(Vec::new()),
                },
                Err(_) => Ok(Vec::new()),
            };
            drop(sink);
            match handed {
                // No borrow is held: HCM may answer inside these calls.
                Ok(http) => {
                    if !direct.is_empty() {
                        filter.writing_direct.set(true);
                        conn.write(&direct);
                        filter.writing_direct.set(false);
                    }
                    if !http.is_empty() {
                        conn.inject_read(&http);
                    }
                    // A request answered here leaves the next waiting ones to the next turn.
                    filter.kick_if_idle(conn);
                }
                Err(fatal) => filter.fail(conn, fatal, true),
            }
        },
        || conn.close(),
    );
}

/// `on_network_filter_event`: the connection closed (0 remote, 1 local) or connected.
///
/// # Safety
/// As [`on_read`].
pub unsafe fn on_event<C: Codec>(filter: *mut c_void, event: u32) {
    // SAFETY: guaranteed by the caller.
    let filter = unsafe { filter_ref::<C>(filter) };
    contain(
        || {
            if event > 1 {
                return;
            }
            if let Ok(mut state) = filter.state.try_borrow_mut() {
                if let State::Open(front) = &mut *state {
                    front.on_close(&mut NativeSink::default());
                }
                *state = State::Closed;
            }
        },
        || {},
    );
}
