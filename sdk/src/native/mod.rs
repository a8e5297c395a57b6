//! Native glue: the same codec and the same transcoders as the wasm build, bound to Envoy's
//! dynamic-module ABI (`v0.2.0`, Envoy 1.40) so that a codec crate also builds as a `.so`.
//!
//! - [`front`]: `envoy.filters.network.dynamic_modules` before HCM (filter name `front`);
//! - [`back`]: `envoy.upstreams.http.dynamic_modules` on a destination cluster (bridge name
//!   `back`), the router's HTTP→TCP bridge — no internal listener hop;
//! - [`metrics`]: the wasm build's metrics, exported through the front's configuration.
//!
//! A native module has no sandbox: a panic would unwind into Envoy. Every hook runs inside
//! [`contain`], which catches a panic and closes only the affected connection or request (the
//! native profile builds with `panic = "unwind"` for that reason; the strict lints of the crate
//! make a panic a bug, this is the second line). Memory limits are per worker thread, as the
//! wasm build's are per VM (one VM per worker).

pub mod abi;
pub mod back;
pub mod front;
pub mod metrics;

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crate::config::{FilterConfig, Limits, Role};
use crate::vm::VmShared;
use crate::Codec;

/// `envoy_dynamic_module_on_program_init`: the ABI version (Envoy logs "matched").
pub fn program_init() -> *const u8 {
    abi::ABI_VERSION.as_ptr()
}

/// Monotonic nanoseconds for latency metrics.
pub fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs a hook body; a panic is logged and `recover` runs instead of unwinding into Envoy.
pub fn contain(body: impl FnOnce(), recover: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(body)).is_err() {
        abi::log(
            abi::LOG_ERROR,
            "meltemi: a bug panicked inside the module; only this connection is affected",
        );
        let _ = catch_unwind(AssertUnwindSafe(recover));
    }
}

/// One filter or bridge configuration as Envoy loaded it (main thread). Workers parse their
/// own copy of the JSON once (the parsed form is not `Send`: codec configurations are free to
/// use any type).
pub struct ModuleConfig<C: Codec> {
    /// Distinguishes configurations in the workers' caches (addresses are reused).
    id: u64,
    json: Vec<u8>,
    /// Envoy's configuration pointer, as an address.
    envoy: usize,
    /// The `service` and `method` label values with metrics of their own (the front defines
    /// them when it loads; every other value is reported as `other`).
    pub(crate) services: Vec<String>,
    pub(crate) methods: Vec<String>,
    _codec: std::marker::PhantomData<fn() -> C>,
}

impl<C: Codec> ModuleConfig<C> {
    /// Validates `json` for `role` (so that a bad configuration fails Envoy's load).
    pub fn new(json: &[u8], role: Role) -> Result<Self, String> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let json = if json.is_empty() {
            format!(r#"{{"role":"{}"}}"#, role_name(role)).into_bytes()
        } else {
            json.to_vec()
        };
        let config = FilterConfig::<C::Config>::parse(&json)?;
        if config.role != role {
            return Err(format!(
                "meltemi filter configuration: field `role`: this hook runs the {} side, the configuration says {}",
                role_name(role),
                role_name(config.role)
            ));
        }
        let mut named_services = config.known_services.clone();
        named_services.extend(config.service.iter().cloned());
        let (services, methods) = metrics::label_values(&named_services, &config.known_methods);
        Ok(Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            json,
            envoy: 0,
            services,
            methods,
            _codec: std::marker::PhantomData,
        })
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Front => "front",
        Role::Back => "back",
    }
}

/// Most configurations one worker keeps parsed.
const WORKER_CACHE: usize = 64;

thread_local! {
    /// Parsed configurations of this worker, by [`ModuleConfig`] id, newest last. The values
    /// are `Rc<FilterConfig<_>>` of different codec types, hence `Any`.
    static CONFIGS: RefCell<Vec<(u64, Rc<dyn std::any::Any>)>> = const { RefCell::new(Vec::new()) };
    /// The worker's limits shared by its connections (the wasm build's per-VM state).
    static SHARED: Rc<VmShared> = {
        let d = Limits::default();
        VmShared::new(d.vm_buffer_budget_bytes, d.max_service_labels, d.max_method_labels)
    };
}

/// This worker's parsed copy of `module` (parsed on first use).
pub fn worker_config<C: Codec>(module: &ModuleConfig<C>) -> Option<Rc<FilterConfig<C::Config>>> {
    let cached = CONFIGS.with(|c| {
        c.borrow()
            .iter()
            .find(|(id, _)| *id == module.id)
            .map(|(_, any)| Rc::clone(any))
    });
    if let Some(any) = cached {
        return any.downcast::<FilterConfig<C::Config>>().ok();
    }
    let config = Rc::new(FilterConfig::<C::Config>::parse(&module.json).ok()?);
    SHARED.with(|shared| {
        let l = &config.limits;
        shared.budget.restrict(l.vm_buffer_budget_bytes);
        // Only the values the front defined metrics for get their own (see `metrics`).
        shared.services.restrict(0);
        shared.methods.restrict(0);
        shared.services.name(module.services.iter().cloned());
        shared.methods.name(module.methods.iter().cloned());
        let _ = l;
    });
    CONFIGS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= WORKER_CACHE {
            c.remove(0);
        }
        c.push((module.id, Rc::clone(&config) as Rc<dyn std::any::Any>));
    });
    Some(config)
}

/// This worker's shared limits.
pub fn worker_shared<C: Codec>(_module: &ModuleConfig<C>) -> Rc<VmShared> {
    SHARED.with(Rc::clone)
}

/// The dynamic-module entry points for `$codec`. Used by [`crate::export_codec!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __export_native {
    ($codec:ty) => {
        /// Dynamic-module entry points (hand-written ABI, see `meltemi_sdk::native::abi`).
        #[allow(clippy::missing_safety_doc, non_snake_case)]
        mod __meltemi_native {
            use super::*;
            use ::std::ffi::c_void;
            use $crate::native::abi::{EnvoyBuffer, EnvoyPtr};
            use $crate::native::{back, front};

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
                $crate::native::program_init()
            }

            #[no_mangle]
            pub unsafe extern "C" fn envoy_dynamic_module_on_network_filter_config_new(
                config_envoy: EnvoyPtr,
                name: EnvoyBuffer,
                config: EnvoyBuffer,
            ) -> *const c_void {
                unsafe { front::config_new::<$codec>(config_envoy, name, config) }
            }

            #[no_mangle]
            pub unsafe extern "C" fn envoy_dynamic_module_on_network_filter_config_destroy(
                config: *const c_void,
            ) {
                unsafe { front::config_destroy::<$codec>(config) }
            }

            #[no_mangle]
            pub unsafe extern "C" fn envoy_dynamic_module_on_network_filter_new(
                config: *const c_void,
                envoy: EnvoyPtr,
            ) -> *mut c_void {
                unsafe { front::filter_new::<$codec>(config, envoy) }
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_network_filter_new_connection(
                envoy: EnvoyPtr,
                _filter: *mut c_void,
            ) -> u32 {
                front::on_new_connection(envoy)
            }

            #[no_mangle]
            pub unsafe extern "C" fn envoy_dynamic_module_on_network_filter_read(
                envoy: EnvoyPtr,
                filter: *mut c_void,
                _buffered: usize,
                end_stream: bool,
            ) -> u32 {
                unsafe { front::on_read::<$codec>(envoy, filter, end_stream) }
            }

            #[no_mangle]
            pub unsafe extern "C" fn envoy_dynamic_module_on_network_filter_write(
                envoy: EnvoyPtr,
                filter: *mut c_void,
                _buffered: usize,
                _end_stream: bool,
            ) -> u32 {
                unsafe { front::on_write::<$codec>(envoy, filter) }
            }

            #[no_mangle]
            pub unsafe extern "C" fn envoy_dynamic_module_on_network_filter_scheduled(
                envoy: EnvoyPtr,
                filter: *mut c_void,
                _event: u64,
            ) {
                unsafe { front::on_scheduled::<$codec>(envoy, filter) }
            }

            #[no_mangle]
            pub unsafe extern "C" fn envoy_dynamic_module_on_network_filter_event(
                _envoy: EnvoyPtr,
                filter: *mut c_void,
                event: u32,
            ) {
                unsafe { front::on_event::<$codec>(filter, event) }
            }

            #[no_mangle]
            pub unsafe extern "C" fn envoy_dynamic_module_on_network_filter_destroy(
                filter: *mut c_void,
            ) {
                unsafe { front::filter_destroy::<$codec>(filter) }
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_network_filter_above_write_buffer_high_watermark(
                _envoy: EnvoyPtr,
                _filter: *mut c_void,
            ) {
            }

            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_network_filter_below_write_buffer_low_watermark(
                _envoy: EnvoyPtr,
                _filter: *mut c_void,
            ) {
            }

            #[no_mangle]
            pub unsafe extern "C" fn envoy_dynamic_module_on_upstream_http_tcp_bridge_config_new(
                config_envoy: EnvoyPtr,
                name: EnvoyBuffer,
                config: EnvoyBuffer,
            ) -> *const c_void {
                unsafe { back::config_new::<$codec>(config_envoy, name, config) }
            }

            #[no_mangle]
            pub unsafe extern "C" fn envoy_dynamic_module_on_upstream_http_tcp_bridge_config_destroy(
                config: *const c_void,
            ) {
                unsafe { back::config_destroy::<$codec>(config) }
            }

            #[no_mangle]
            pub unsafe extern "C" fn envoy_dynamic_module_on_upstream_http_tcp_bridge_new(
                config: *const c_void,
                envoy: EnvoyPtr,
            ) -> *mut c_void {
                unsafe { back::bridge_new::<$codec>(config, envoy) }
            }

            #[no_mangle]
            pub unsafe extern "C" fn envoy_dynamic_module_on_upstream_http_tcp_bridge_encode_headers(
                envoy: EnvoyPtr,
                bridge: *mut c_void,
                end_stream: bool,
            ) {
                unsafe { back::encode_headers::<$codec>(envoy, bridge, end_stream) }
            }

            #[no_mangle]
            pub unsafe extern "C" fn envoy_dynamic_module_on_upstream_http_tcp_bridge_encode_data(
                envoy: EnvoyPtr,
                bridge: *mut c_void,
                end_stream: bool,
            ) {
                unsafe { back::encode_data::<$codec>(envoy, bridge, end_stream) }
            }

            #[no_mangle]
            pub unsafe extern "C" fn envoy_dynamic_module_on_upstream_http_tcp_bridge_encode_trailers(
                envoy: EnvoyPtr,
                bridge: *mut c_void,
            ) {
                unsafe { back::encode_trailers::<$codec>(envoy, bridge) }
            }

            #[no_mangle]
            pub unsafe extern "C" fn envoy_dynamic_module_on_upstream_http_tcp_bridge_on_upstream_data(
                envoy: EnvoyPtr,
                bridge: *mut c_void,
                end_stream: bool,
            ) {
                unsafe { back::on_upstream_data::<$codec>(envoy, bridge, end_stream) }
            }

            #[no_mangle]
            pub unsafe extern "C" fn envoy_dynamic_module_on_upstream_http_tcp_bridge_destroy(
                bridge: *mut c_void,
            ) {
                unsafe { back::bridge_destroy::<$codec>(bridge) }
            }
        }
    };
}
