//! Renders a bridge bootstrap for any codec and either build: one front listener (front →
//! HCM), one destination cluster per server, the `meltemi.local` virtual host, and the stats
//! tags. Routes are given as Envoy route JSON.
//!
//! - [`Engine::Wasm`]: wasm front; each destination is an internal listener (wasm back →
//!   tcp_proxy → server) plus the cluster pointing at it.
//! - [`Engine::Native`]: dynamic-module front; each destination cluster points at the server
//!   and runs the dynamic-module back as its upstream (the router's HTTP→TCP bridge).
//! - [`Engine::Mix`]: wasm front, dynamic-module back.
//!
//! The MiniRPC example keeps its hand-written YAML (it documents the shape); suites for other
//! protocols render theirs here. Envoy reads JSON as YAML.

use std::path::Path;

use serde_json::{json, Value};

/// A destination: routes name `cluster`, the back forwards to 127.0.0.1:`port`.
pub struct Destination {
    /// Cluster name used in routes.
    pub cluster: String,
    /// The real server's port.
    pub port: u16,
}

/// Which build runs each side of the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// proxy-wasm front and back.
    Wasm,
    /// Dynamic-module front and back.
    Native,
    /// proxy-wasm front, dynamic-module back.
    Mix,
}

impl Engine {
    /// Every engine, for suites that run on all of them.
    pub const ALL: [Engine; 3] = [Engine::Wasm, Engine::Native, Engine::Mix];

    /// Lower-case name (test and directory names).
    pub fn name(self) -> &'static str {
        match self {
            Engine::Wasm => "wasm",
            Engine::Native => "native",
            Engine::Mix => "mix",
        }
    }

    fn native_front(self) -> bool {
        self == Engine::Native
    }

    fn native_back(self) -> bool {
        self != Engine::Wasm
    }
}

/// Everything that differs between bridge deployments.
pub struct Bridge<'a> {
    /// Protocol name (listener and VM names).
    pub protocol: &'a str,
    /// The codec's `.wasm`.
    pub wasm: &'a Path,
    /// Which build runs the front and the back; the dynamic module is `module` (the codec
    /// crate's library name, found on Envoy's `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`).
    pub engine: Engine,
    /// Dynamic module name, e.g. `meltemi_thrift` for `libmeltemi_thrift.so`.
    pub module: &'a str,
    /// Front plugin configuration (JSON object; `role` is added).
    pub front: Value,
    /// Back plugin configuration (JSON object; `role` is added).
    pub back: Value,
    /// Envoy's listener port on 127.0.0.1.
    pub listen_port: u16,
    /// Admin port.
    pub admin_port: u16,
    /// Where routes can send requests.
    pub destinations: Vec<Destination>,
    /// The protocol's virtual hosts (Envoy `VirtualHost` JSON).
    pub virtual_hosts: Vec<Value>,
    /// Extra HTTP filters placed between the buffer filter and the router.
    pub http_filters: Vec<Value>,
}

const BUFFER_LIMIT: u64 = 32 << 20;

/// Read and write buffer limit of the client listener: Envoy stops reading a client whose
/// unprocessed bytes pass it (the front holds the rest of a pipeline in the VM, bounded by its
/// own limits), and the router stops reading a server while the client does not read.
const FRONT_BUFFER_LIMIT: u64 = 1 << 20;

fn wasm_filter(name: &str, protocol: &str, wasm: &Path, mut config: Value, role: &str) -> Value {
    config["role"] = json!(role);
    wasm_plugin(
        name,
        &format!("meltemi_{protocol}"),
        wasm,
        &config.to_string(),
    )
}

/// A proxy-wasm network filter running `wasm` with plugin `configuration`, configured as every
/// Meltemi filter is (V8, a failed VM reloaded).
fn wasm_plugin(name: &str, vm_id: &str, wasm: &Path, configuration: &str) -> Value {
    json!({
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": "meltemi",
                // A VM that fails (a trap) is replaced by a fresh one for new connections
                // instead of resetting every later connection of its worker.
                "failure_policy": "FAIL_RELOAD",
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.display().to_string()}}
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration
                }
            }
        }
    })
}

/// The dynamic-module front: the same JSON configuration as the wasm front's.
fn native_front(module: &str, mut config: Value) -> Value {
    config["role"] = json!("front");
    json!({
        "name": "meltemi_front",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.dynamic_modules.v3.DynamicModuleNetworkFilter",
            "dynamic_module_config": {"name": module},
            "filter_name": "front",
            "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config.to_string()}
        }
    })
}

/// The dynamic-module back as a cluster's upstream: the router's HTTP→TCP bridge.
fn native_back(module: &str, mut config: Value) -> Value {
    config["role"] = json!("back");
    json!({
        "name": "envoy.upstreams.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.dynamic_modules.v3.Config",
            "dynamic_module_config": {"name": module},
            "bridge_name": "back",
            "bridge_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config.to_string()}
        }
    })
}

fn cluster(name: &str, address: Value) -> Value {
    json!({
        "name": name,
        "connect_timeout": "1s",
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]}
    })
}

/// The `stats_config.stats_tags` entries for Meltemi's labels.
pub fn stats_tags() -> Value {
    meltemi_sdk::stats::STATS_TAGS
        .iter()
        .map(|(name, regex)| json!({"tag_name": name, "regex": regex}))
        .collect()
}

impl Bridge<'_> {
    /// The bootstrap as a JSON string.
    pub fn render(&self) -> String {
        let mut virtual_hosts = vec![json!({
            "name": "meltemi_local",
            "domains": ["meltemi.local"],
            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]
        })];
        virtual_hosts.extend(self.virtual_hosts.iter().cloned());
        let mut http_filters = vec![
            json!({
                "name": "envoy.filters.http.buffer",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": BUFFER_LIMIT}
            }),
            // A server sees one dialect per connection: requests whose codec names a
            // `dialect` (Thrift: transport and protocol) get pooled connections of their own.
            json!({
                "name": "envoy.filters.http.set_filter_state",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
                    "on_request_headers": [{
                        "object_key": "meltemi.dialect",
                        "factory_key": "envoy.hashable_string",
                        "format_string": {"text_format_source": {"inline_string": "%REQ(dialect)%"}},
                        "shared_with_upstream": "ONCE"
                    }]
                }
            }),
        ];
        http_filters.extend(self.http_filters.iter().cloned());
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                // The back ignores x-envoy-* request headers: don't spend time writing them.
                "suppress_envoy_headers": true
            }
        }));
        let p = self.protocol;
        let mut front = self.front.clone();
        if let Some(forced) = crate::workspace::hcm_protocol_override() {
            if front.get("hcm_protocol").is_none() {
                front["hcm_protocol"] = json!(forced);
            }
        }
        let http2 = front.get("hcm_protocol").and_then(Value::as_str) == Some("http2");
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": p,
            "codec_type": if http2 { "HTTP2" } else { "HTTP1" },
            "generate_request_id": false,
            "route_config": {"name": format!("{p}_routes"), "virtual_hosts": virtual_hosts},
            "http_filters": http_filters
        });
        if http2 {
            hcm["http2_protocol_options"] = http2_options();
        }
        let mut listeners = vec![json!({
            "name": format!("{p}_front"),
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.listen_port}},
            "per_connection_buffer_limit_bytes": FRONT_BUFFER_LIMIT,
            "filter_chains": [{"filters": [
                if self.engine.native_front() {
                    native_front(self.module, front)
                } else {
                    wasm_filter("meltemi_front", p, self.wasm, front, "front")
                },
                {
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm
                }
            ]}]
        })];
        let mut clusters = Vec::new();
        for d in &self.destinations {
            if self.engine.native_back() {
                let mut c = cluster(
                    &d.cluster,
                    json!({"socket_address": {"address": "127.0.0.1", "port_value": d.port}}),
                );
                c["upstream_config"] = native_back(self.module, self.back.clone());
                clusters.push(c);
                continue;
            }
            let back = format!("{}_back", d.cluster);
            let server = format!("{}_server", d.cluster);
            listeners.push(json!({
                "name": back,
                "internal_listener": {},
                "filter_chains": [{"filters": [
                    wasm_filter(&format!("meltemi_back_{}", d.cluster), p, self.wasm, self.back.clone(), "back"),
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                            "stat_prefix": server,
                            "cluster": server
                        }
                    }
                ]}]
            }));
            clusters.push(cluster(
                &d.cluster,
                json!({"envoy_internal_address": {"server_listener_name": back}}),
            ));
            clusters.push(cluster(
                &server,
                json!({"socket_address": {"address": "127.0.0.1", "port_value": d.port}}),
            ));
        }
        json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
            "stats_flush_interval": "1s",
            "stats_config": {"use_all_default_tags": true, "stats_tags": stats_tags()},
            "bootstrap_extensions": [{
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
                    "buffer_size_kb": 4096
                }
            }],
            "static_resources": {"listeners": listeners, "clusters": clusters}
        })
        .to_string()
    }
}

/// HCM's HTTP/2 options for a front with `"hcm_protocol": "http2"`: windows far above any
/// call (16 MiB per stream, 256 MiB per connection), so that the front's DATA does not wait
/// for HCM's WINDOW_UPDATE, and outbound frame limits for thousands of answers queued toward
/// one client.
pub fn http2_options() -> Value {
    json!({
        "initial_stream_window_size": 16 << 20,
        "initial_connection_window_size": 256 << 20,
        "max_outbound_frames": 100000,
        "max_outbound_control_frames": 10000
    })
}

/// A plain TCP proxy on 127.0.0.1:`port` to 127.0.0.1:`upstream` behind the proxy-wasm
/// network filter `wasm` (empty plugin configuration), set up like Meltemi's filters: for
/// tests of Envoy's handling of the module itself (a VM that fails).
pub fn plain_wasm_proxy(wasm: &Path, port: u16, admin_port: u16, upstream: u16) -> String {
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "plain",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [
                    wasm_plugin("plain_wasm", "plain", wasm, ""),
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                            "stat_prefix": "plain",
                            "cluster": "upstream"
                        }
                    }
                ]}]
            }],
            "clusters": [cluster(
                "upstream",
                json!({"socket_address": {"address": "127.0.0.1", "port_value": upstream}}),
            )]
        }
    })
    .to_string()
}

/// A route sending exactly `/<service>/<method>` to `cluster`.
pub fn method_route(service: &str, method: &str, cluster: &str) -> Value {
    json!({"match": {"path": format!("/{service}/{method}")}, "route": route_action(cluster)})
}

/// A route action to `cluster` as every suite uses it: a 5 s timeout, and a retry when the
/// pooled connection was reset before the request was written (a server that closes its
/// connection, a back that closed after a one-way call): the request never left, so it is safe.
pub fn route_action(cluster: &str) -> Value {
    json!({
        "cluster": cluster,
        "timeout": "5s",
        "retry_policy": {"retry_on": "reset-before-request", "num_retries": 3}
    })
}

/// One deployment per engine shared by the tests of a file: started by the first test that
/// needs it, stopped when the last test holding it finishes; the tests take turns (each holds
/// the returned guard), so counter deltas and peer logs are not blurred by another test.
pub struct SharedPerEngine<T> {
    shared: std::sync::Mutex<[std::sync::Weak<T>; 3]>,
    turn: std::sync::Mutex<()>,
}

impl<T> SharedPerEngine<T> {
    /// Nothing started yet.
    pub const fn new() -> Self {
        Self {
            shared: std::sync::Mutex::new([
                std::sync::Weak::new(),
                std::sync::Weak::new(),
                std::sync::Weak::new(),
            ]),
            turn: std::sync::Mutex::new(()),
        }
    }

    /// `engine`'s deployment (started with `start` if none is running) and this test's turn.
    pub fn get(
        &self,
        engine: Engine,
        start: impl FnOnce() -> T,
    ) -> (std::sync::Arc<T>, std::sync::MutexGuard<'_, ()>) {
        let index = Engine::ALL.iter().position(|e| *e == engine).unwrap_or(0);
        let deployment = {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            match shared[index].upgrade() {
                Some(s) => s,
                None => {
                    let s = std::sync::Arc::new(start());
                    shared[index] = std::sync::Arc::downgrade(&s);
                    s
                }
            }
        };
        // A failed test poisons the lock; the next one may still run.
        let turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        (deployment, turn)
    }
}

impl<T> Default for SharedPerEngine<T> {
    fn default() -> Self {
        Self::new()
    }
}
