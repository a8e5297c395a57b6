//! Native back: binds [`Exchange`] to the router's upstream HTTP→TCP bridge
//! (`envoy.upstreams.http.dynamic_modules` on a destination cluster, bridge name `back`).
//!
//! Envoy creates one bridge per upstream request attempt and lends it a pooled TCP connection
//! to the chosen host for that request alone; the connection goes back to the pool when the
//! bridge is destroyed. So the router's own load balancing (subsets, consistent hash on a
//! header, outlier detection) picks the server host for every request.

use std::cell::RefCell;
use std::ffi::c_void;

use super::abi::{self, EnvoyBuffer, EnvoyPtr, Upstream};
use super::metrics::NativeSink;
use super::{contain, worker_config, worker_shared, ModuleConfig};
use crate::config::Role;
use crate::exchange::{Exchange, Step};
use crate::Codec;

/// One upstream request attempt (`None` when the configuration could not be read).
pub struct Bridge<C: Codec> {
    exchange: RefCell<Option<Exchange<C>>>,
}

/// `config_new`: the same JSON as the wasm back's plugin configuration.
///
/// # Safety
/// Called by Envoy with buffers valid for the call.
pub unsafe fn config_new<C: Codec>(
    _config_envoy: EnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    // SAFETY: valid for this call.
    let raw = unsafe { config.as_slice() };
    match ModuleConfig::<C>::new(raw, Role::Back) {
        Ok(config) => Box::into_raw(Box::new(config)) as *const c_void,
        Err(e) => {
            abi::log(abi::LOG_ERROR, &format!("{} back: {e}", C::PROTOCOL));
            std::ptr::null()
        }
    }
}

/// # Safety
/// `config` came from [`config_new`], destroyed once.
pub unsafe fn config_destroy<C: Codec>(config: *const c_void) {
    if !config.is_null() {
        // SAFETY: made by `Box::into_raw` in `config_new`.
        drop(unsafe { Box::from_raw(config as *mut ModuleConfig<C>) });
    }
}

/// # Safety
/// `config` came from [`config_new`] and outlives the bridge.
pub unsafe fn bridge_new<C: Codec>(config: *const c_void, _envoy: EnvoyPtr) -> *mut c_void {
    let exchange = if config.is_null() {
        None
    } else {
        // SAFETY: guaranteed by the caller.
        let module = unsafe { &*(config as *const ModuleConfig<C>) };
        worker_config(module).map(|c| Exchange::<C>::new(c, worker_shared(module)))
    };
    Box::into_raw(Box::new(Bridge {
        exchange: RefCell::new(exchange),
    })) as *mut c_void
}

/// # Safety
/// `bridge` came from [`bridge_new`], destroyed once.
pub unsafe fn bridge_destroy<C: Codec>(bridge: *mut c_void) {
    // SAFETY: made by `Box::into_raw` in `bridge_new`.
    drop(unsafe { Box::from_raw(bridge as *mut Bridge<C>) });
}

/// Runs `f` on the exchange and carries out the step it returns.
///
/// # Safety
/// `bridge` came from [`bridge_new`] and is alive; `envoy` is the current hook's pointer.
unsafe fn drive<C: Codec>(
    envoy: EnvoyPtr,
    bridge: *mut c_void,
    input: &[EnvoyBuffer],
    f: impl FnOnce(&mut Exchange<C>, &[&[u8]], &mut NativeSink) -> Step,
) {
    let up = Upstream(envoy);
    // SAFETY: guaranteed by the caller; only shared references are made.
    let bridge = unsafe { &*(bridge as *const Bridge<C>) };
    contain(
        || {
            // SAFETY: the chunks were filled by Envoy during this hook.
            let slices: Vec<&[u8]> = input.iter().map(|c| unsafe { c.as_slice() }).collect();
            let mut sink = NativeSink::default();
            let step = match bridge.exchange.try_borrow_mut() {
                Ok(mut exchange) => match exchange.as_mut() {
                    Some(exchange) if !exchange.is_done() => f(exchange, &slices, &mut sink),
                    Some(_) => return,
                    None => {
                        drop(exchange);
                        up.respond(500, &[], b"meltemi: bridge configuration unavailable");
                        return;
                    }
                },
                Err(_) => return,
            };
            drop(sink);
            if step.forward_input {
                for chunk in &slices {
                    if !chunk.is_empty() {
                        up.send(chunk, false);
                    }
                }
            }
            if !step.to_server.is_empty() {
                up.send(&step.to_server, false);
            }
            if step.close_server {
                up.send(&[], true);
            }
            if let Some(r) = step.response {
                up.respond(r.status, &r.headers, &r.body);
            }
        },
        || {
            if let Ok(mut exchange) = bridge.exchange.try_borrow_mut() {
                *exchange = None;
            }
            up.send(&[], true);
            up.respond(500, &[], b"meltemi: internal error");
        },
    );
}

/// # Safety
/// As [`drive`].
pub unsafe fn encode_headers<C: Codec>(envoy: EnvoyPtr, bridge: *mut c_void, end_stream: bool) {
    let up = Upstream(envoy);
    // SAFETY: guaranteed by the caller.
    unsafe {
        drive::<C>(envoy, bridge, &[], |exchange, _, _| {
            exchange.on_headers(&|name| up.request_header(name), end_stream)
        })
    }
}

/// # Safety
/// As [`drive`].
pub unsafe fn encode_data<C: Codec>(envoy: EnvoyPtr, bridge: *mut c_void, end_stream: bool) {
    let chunks = Upstream(envoy).request_chunks();
    // SAFETY: guaranteed by the caller.
    unsafe {
        drive::<C>(envoy, bridge, &chunks, |exchange, slices, sink| {
            exchange.on_body(slices, end_stream, sink)
        })
    }
}

/// Trailers end the request body.
///
/// # Safety
/// As [`drive`].
pub unsafe fn encode_trailers<C: Codec>(envoy: EnvoyPtr, bridge: *mut c_void) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        drive::<C>(envoy, bridge, &[], |exchange, _, sink| {
            exchange.on_body(&[], true, sink)
        })
    }
}

/// Server bytes. A close before the answer needs nothing here: Envoy resets the request and
/// the router answers 503, which the front turns into the protocol's error reply.
///
/// # Safety
/// As [`drive`].
pub unsafe fn on_upstream_data<C: Codec>(envoy: EnvoyPtr, bridge: *mut c_void, end: bool) {
    let chunks = Upstream(envoy).response_chunks();
    // SAFETY: guaranteed by the caller.
    unsafe {
        drive::<C>(envoy, bridge, &chunks, |exchange, slices, sink| {
            let step = exchange.on_server_data(slices, sink);
            if end && step.response.is_none() {
                return exchange.on_server_closed();
            }
            step
        })
    }
}
