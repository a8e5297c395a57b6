//! The per-build listener and cluster templates: the only place that knows how a codec module is
//! plugged into Envoy. Translation decides *what* exists (listeners, destinations, routes);
//! these functions decide *how* the bridge runs it, per [`Build`], without touching routes:
//! - wasm: proxy-wasm network filters on the front listener and on one internal listener per
//!   destination (`back_listener`, reached through `bridge_cluster`);
//! - native: the dynamic module's network filter `front` before HCM, and its upstream HTTP→TCP
//!   bridge `back` as the destination cluster's `upstream_config` (no internal listener hop);
//! - mix: the wasm front with the native back.

use serde_json::{json, Value};

/// Envoy's per-connection buffer limit on listeners and clusters: above the framework's
/// default largest frame (16 MiB), so that a whole frame can be buffered.
pub const BUFFER_LIMIT: u64 = 32 << 20;

/// Which data path the rendered resources use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Build {
    /// proxy-wasm front and back (runs on any Envoy with V8).
    #[default]
    Wasm,
    /// Dynamic-module (`.so`, built per Envoy version) front and back.
    Native,
    /// wasm front, dynamic-module back.
    Mix,
}

impl Build {
    /// Whether the front is the wasm filter.
    pub fn wasm_front(self) -> bool {
        matches!(self, Build::Wasm | Build::Mix)
    }

    /// Whether the back is the wasm filter on an internal listener (else the native
    /// upstream bridge on the destination cluster).
    pub fn wasm_back(self) -> bool {
        self == Build::Wasm
    }
}

/// Where a codec module comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSource {
    /// A file on the Envoy host.
    Local(String),
    /// Fetched by Envoy over HTTP(S) and checked against its sha256.
    Remote {
        /// `http(s)://host[:port]/path`.
        url: String,
        /// Hex sha256 of the module.
        sha256: String,
    },
}

/// What Envoy does when the module fails (VM start or crash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Connections are refused while the module is broken (safe default for routing).
    #[default]
    Closed,
    /// Traffic bypasses the filter; for a bridge this means no routing, so use with care.
    Open,
    /// The VM is reloaded.
    Reload,
}

impl FailurePolicy {
    fn envoy(self) -> &'static str {
        match self {
            FailurePolicy::Closed => "FAIL_CLOSED",
            FailurePolicy::Open => "FAIL_OPEN",
            FailurePolicy::Reload => "FAIL_RELOAD",
        }
    }
}

/// A codec module for one protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Where the `.wasm` comes from (wasm and mix builds).
    pub source: ModuleSource,
    /// The dynamic module (native and mix builds): a name Envoy looks up as
    /// `$ENVOY_DYNAMIC_MODULES_SEARCH_PATH/lib<name>.so`, a path (`Local` with a `/`), or a URL
    /// with its sha256.
    pub native: Option<ModuleSource>,
    /// On failure.
    pub failure_policy: FailurePolicy,
    /// Extra filter configuration (`limits`, `codec`) merged into both roles' JSON
    /// (`meltemi_sdk::config::FilterConfig`); must be an object.
    pub config: serde_json::Map<String, Value>,
}

impl Module {
    /// Whether the front speaks HTTP/2 to HCM: the controller's default, so that the calls of
    /// one client connection are proxied concurrently; `--filter-config
    /// P='{"hcm_protocol": "http1"}'` keeps HTTP/1.1 (one call at a time per connection).
    pub fn hcm_http2(&self) -> bool {
        self.config.get("hcm_protocol").and_then(Value::as_str) != Some("http1")
    }

    /// The plugin configuration for `role`, with `service` for a front naming its host.
    fn plugin_config(&self, role: &str, service: Option<&str>) -> Value {
        let mut config = self.config.clone();
        if role == "front" && self.hcm_http2() {
            // The SDK's own default is HTTP/1.1 (hand-written configurations): say it.
            config.insert("hcm_protocol".into(), json!("http2"));
        }
        config.insert("role".into(), json!(role));
        if let Some(s) = service {
            config.insert("service".into(), json!(s));
        }
        Value::Object(config)
    }
}

/// Parses `--filter-config` JSON: an object of filter-configuration fields other than `role`
/// and `service` (which the controller sets), checked with the SDK's own parser so that a
/// field the filter would refuse is refused here, naming it. The `codec` object is the codec's
/// business and is passed through.
pub fn parse_filter_config(text: &str) -> Result<serde_json::Map<String, Value>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("must be a JSON object".into());
    };
    for reserved in ["role", "service"] {
        if map.contains_key(reserved) {
            return Err(format!("`{reserved}` is set by the controller"));
        }
    }
    let mut probe = map.clone();
    probe.insert("role".into(), json!("front"));
    meltemi_sdk::config::FilterConfig::<Value>::parse(Value::Object(probe).to_string().as_bytes())?;
    Ok(map)
}

/// `scheme`, `host`, `port` of a URL (enough for the module-fetch cluster).
pub fn url_parts(url: &str) -> Option<(bool, String, u16)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        (false, url.strip_prefix("http://")?)
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    if authority.is_empty() {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (authority, if tls { 443 } else { 80 }),
    };
    Some((tls, host.to_owned(), port))
}

/// Name of the cluster Envoy fetches a remote module through.
pub fn module_cluster_name(url: &str) -> Option<String> {
    url_parts(url).map(|(_, host, port)| format!("meltemi_module|{host}|{port}"))
}

/// The cluster that fetches remote modules from `url`'s host.
pub fn module_cluster(url: &str) -> Option<Value> {
    let (tls, host, port) = url_parts(url)?;
    let name = module_cluster_name(url)?;
    let mut cluster = json!({
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "5s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}]}
    });
    if tls {
        cluster["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": host
            }
        });
    }
    Some(cluster)
}

fn wasm_code(module: &Module) -> Value {
    match &module.source {
        ModuleSource::Local(path) => json!({"local": {"filename": path}}),
        ModuleSource::Remote { url, sha256 } => json!({"remote": {
            "http_uri": {
                "uri": url,
                "cluster": module_cluster_name(url).unwrap_or_default(),
                "timeout": "30s"
            },
            "sha256": sha256
        }}),
    }
}

fn wasm_filter(name: &str, protocol: &str, module: &Module, config: &Value) -> Value {
    json!({
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": "meltemi",
                // One VM per protocol, shared by front and back filters of every listener.
                "vm_config": {
                    "vm_id": format!("meltemi_{protocol}"),
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": wasm_code(module)
                },
                "failure_policy": module.failure_policy.envoy(),
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config.to_string()
                }
            }
        }
    })
}

/// `DynamicModuleConfig` of a native module.
fn dynamic_module_config(native: &ModuleSource) -> Value {
    match native {
        ModuleSource::Local(path) if path.contains('/') => {
            json!({"module": {"local": {"filename": path}}})
        }
        ModuleSource::Local(name) => json!({"name": name}),
        ModuleSource::Remote { url, sha256 } => json!({"module": {"remote": {
            "http_uri": {
                "uri": url,
                "cluster": module_cluster_name(url).unwrap_or_default(),
                "timeout": "30s"
            },
            "sha256": sha256
        }}}),
    }
}

fn string_value(config: &Value) -> Value {
    json!({
        "@type": "type.googleapis.com/google.protobuf.StringValue",
        "value": config.to_string()
    })
}

/// The front network filter (before HCM) of a listener. `service` fixes the virtual host;
/// `None` lets each message's `service` metadata name it.
pub fn front_filter(build: Build, protocol: &str, module: &Module, service: Option<&str>) -> Value {
    let config = module.plugin_config("front", service);
    match (build.wasm_front(), &module.native) {
        (false, Some(native)) => json!({
            "name": "meltemi_front",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.dynamic_modules.v3.DynamicModuleNetworkFilter",
                "dynamic_module_config": dynamic_module_config(native),
                "filter_name": "front",
                // The same FilterConfig JSON the wasm front gets, passed as bytes.
                "filter_config": string_value(&config)
            }
        }),
        _ => wasm_filter("meltemi_front", protocol, module, &config),
    }
}

/// The native back: the dynamic module's HTTP→TCP bridge as the cluster's upstream, so the
/// router's own load balancer picks the server host per request.
pub fn native_upstream(module: &Module) -> Option<Value> {
    let native = module.native.as_ref()?;
    Some(json!({
        "name": "envoy.upstreams.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.dynamic_modules.v3.Config",
            "dynamic_module_config": dynamic_module_config(native),
            "bridge_name": "back",
            "bridge_config": string_value(&module.plugin_config("back", None))
        }
    }))
}

/// The internal listener that turns the bridge's HTTP requests back into the protocol and
/// forwards them to `server_cluster`.
pub fn back_listener(
    _build: Build,
    name: &str,
    protocol: &str,
    module: &Module,
    server_cluster: &str,
) -> Value {
    json!({
        "name": name,
        "internal_listener": {},
        "filter_chains": [{"filters": [
            wasm_filter("meltemi_back", protocol, module, &module.plugin_config("back", None)),
            {
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": server_cluster,
                    "cluster": server_cluster
                }
            }
        ]}]
    })
}

/// The cluster routes name: the bridge's hop into the back listener `back_listener`.
pub fn bridge_cluster(_build: Build, name: &str, back_listener: &str) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"envoy_internal_address": {"server_listener_name": back_listener}}}}]}]}
    })
}

/// HCM's HTTP/2 options for a front with `"hcm_protocol": "http2"` (h2c from the front): windows
/// far above any call (16 MiB per stream, 256 MiB per connection), so that the front's DATA
/// does not wait for HCM's WINDOW_UPDATE, and outbound frame limits for thousands of answers
/// queued toward one client.
pub fn http2_options() -> Value {
    json!({
        "initial_stream_window_size": 16 << 20,
        "initial_connection_window_size": 256 << 20,
        "max_outbound_frames": 100000,
        "max_outbound_control_frames": 10000
    })
}

/// The HTTP filters of the front HCM: buffer first (a local reply before the body is read
/// would close the client connection), router last.
pub fn http_filters() -> Value {
    let authz_filters = crate::authz::http_filters();
    let [rate_limit, fault] = crate::policy::http_filters();
    json!([
        {
            "name": "envoy.filters.http.buffer",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": BUFFER_LIMIT}
        },
        // A server sees one dialect per connection: requests whose codec names a `dialect`
        // (Thrift: transport and protocol) get pooled upstream connections of their own
        // (filter state shared with the upstream is part of the pool's key).
        {
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
        },
        // Authorization (`crate::authz`): enforces what each virtual host configures.
        authz_filters[0],
        authz_filters[1],
        // Route policies (`policy.rs`): a refused call never waits for an injected delay.
        rate_limit,
        fault,
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                // The back ignores x-envoy-* request headers: don't spend time writing them.
                "suppress_envoy_headers": true
            }
        }
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_config_is_checked_by_the_sdk() {
        let m = parse_filter_config(
            r#"{"limits": {"max_frame_bytes": 4096}, "codec": {"transport": "framed"}}"#,
        )
        .unwrap();
        assert_eq!(m["limits"]["max_frame_bytes"], 4096);
        let e = parse_filter_config(r#"{"limits": {"max_frame": 1}}"#).unwrap_err();
        assert!(e.contains("max_frame"), "{e}");
        assert!(parse_filter_config(r#"{"role": "back"}"#)
            .unwrap_err()
            .contains("role"));
        assert!(parse_filter_config("[1]").is_err());
        let module = Module {
            source: ModuleSource::Local("/m.wasm".into()),
            native: None,
            failure_policy: FailurePolicy::Closed,
            config: m,
        };
        let front = front_filter(Build::Wasm, "thrift", &module, Some("echo"));
        let text = front["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .unwrap();
        let parsed: Value = serde_json::from_str(text).unwrap();
        assert_eq!(parsed["role"], "front");
        assert_eq!(parsed["service"], "echo");
        assert_eq!(parsed["codec"]["transport"], "framed");
    }

    #[test]
    fn urls() {
        assert_eq!(
            url_parts("https://m.example/a/b.wasm"),
            Some((true, "m.example".into(), 443))
        );
        assert_eq!(
            url_parts("http://127.0.0.1:8080/x.wasm"),
            Some((false, "127.0.0.1".into(), 8080))
        );
        assert_eq!(url_parts("ftp://x"), None);
    }
}
