//! The per-build listener and cluster templates: the only place that knows how a codec module is
//! plugged into Envoy. Translation decides *what* exists (listeners, destinations, routes);
//! these functions decide *how* the bridge runs it. Today there is the wasm build (proxy-wasm
//! network filters on the front listener and on one internal listener per destination); a
//! native (dynamic-module) build adds its variant of [`front_filter`], [`back_listener`] and
//! [`bridge_cluster`] here, selected by [`Build`], without touching routes.

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
    /// Where from.
    pub source: ModuleSource,
    /// On failure.
    pub failure_policy: FailurePolicy,
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

/// The front network filter (before HCM) of a listener. `service` fixes the virtual host;
/// `None` lets each message's `service` metadata name it.
pub fn front_filter(
    _build: Build,
    protocol: &str,
    module: &Module,
    service: Option<&str>,
) -> Value {
    let mut config = json!({"role": "front"});
    if let Some(s) = service {
        config["service"] = json!(s);
    }
    wasm_filter("meltemi_front", protocol, module, &config)
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
            wasm_filter("meltemi_back", protocol, module, &json!({"role": "back"})),
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

/// The HTTP filters of the front HCM: buffer first (a local reply before the body is read
/// would close the client connection), router last.
pub fn http_filters() -> Value {
    json!([
        {
            "name": "envoy.filters.http.buffer",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": BUFFER_LIMIT}
        },
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
