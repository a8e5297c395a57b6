//! Renderings of translated resources for plain Envoy: a bootstrap that is either fully static
//! (routes and endpoints inlined, no controller needed at run time) or dynamic (an ADS cluster
//! pointing at `meltemi-controller serve`, everything else over xDS).

use serde_json::{json, Value};

use crate::translate::Resources;

/// What differs between bootstraps.
#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    /// Admin listener port on 127.0.0.1 (0 = none).
    pub admin_port: u16,
    /// `node.id` (xDS identifies the Envoy by it).
    pub node_id: String,
    /// `node.cluster`.
    pub node_cluster: String,
    /// `host:port` of the controller's xDS server; `None` = static bootstrap.
    pub xds: Option<String>,
    /// TLS towards the xDS server.
    pub tls: Option<XdsTls>,
}

/// How Envoy authenticates the xDS server (and itself, for mutual TLS). Paths are on the
/// Envoy host.
#[derive(Debug, Clone)]
pub struct XdsTls {
    /// PEM CA bundle the server certificate must chain to.
    pub ca: String,
    /// Server name to send and verify (default: the `--xds` host).
    pub sni: Option<String>,
    /// Client certificate and key PEM paths.
    pub client: Option<(String, String)>,
}

fn xds_transport_socket(tls: &XdsTls, host: &str) -> Value {
    let sni = tls.sni.clone().unwrap_or_else(|| host.to_owned());
    let mut common = json!({
        "alpn_protocols": ["h2"],
        "validation_context": {
            "trusted_ca": {"filename": tls.ca},
            "match_typed_subject_alt_names": [{
                "san_type": if sni.parse::<std::net::IpAddr>().is_ok() { "IP_ADDRESS" } else { "DNS" },
                "matcher": {"exact": sni}
            }]
        }
    });
    if let Some((cert, key)) = &tls.client {
        common["tls_certificates"] = json!([{
            "certificate_chain": {"filename": cert},
            "private_key": {"filename": key}
        }]);
    }
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": sni,
            "common_tls_context": common
        }
    })
}

/// The `stats_config.stats_tags` turning Meltemi's encoded labels into tags.
pub fn stats_tags() -> Value {
    meltemi_sdk::stats::STATS_TAGS
        .iter()
        .map(|(name, regex)| json!({"tag_name": name, "regex": regex}))
        .collect()
}

fn common(options: &BootstrapOptions) -> serde_json::Map<String, Value> {
    let mut b = serde_json::Map::new();
    b.insert(
        "node".into(),
        json!({"id": options.node_id, "cluster": options.node_cluster}),
    );
    if options.admin_port != 0 {
        b.insert(
            "admin".into(),
            json!({"address": {"socket_address": {"address": "127.0.0.1", "port_value": options.admin_port}}}),
        );
    }
    // Stats are flushed when the admin endpoint (or Prometheus through it) reads them, not on
    // a timer: each flush copies every stat on Envoy's main thread, the thread that applies
    // xDS, and with 1,000 services (~1 M stats) a 1 s flush timer delayed route updates by
    // 100–300 ms. The bootstrap has no stats sinks, so nothing else needs the timer.
    b.insert("stats_flush_on_admin".into(), json!(true));
    b.insert(
        "stats_config".into(),
        json!({"use_all_default_tags": true, "stats_tags": stats_tags()}),
    );
    b.insert(
        "bootstrap_extensions".into(),
        json!([{
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
                "buffer_size_kb": 4096
            }
        }]),
    );
    b
}

/// The bootstrap as JSON (Envoy reads JSON as YAML).
pub fn bootstrap(resources: &Resources, options: &BootstrapOptions) -> Result<Value, String> {
    let mut b = common(options);
    match &options.xds {
        Some(addr) => {
            let (host, port) = addr
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .ok_or_else(|| format!("--xds {addr}: expected HOST:PORT"))?;
            let kind = if host.parse::<std::net::IpAddr>().is_ok() {
                "STATIC"
            } else {
                "STRICT_DNS"
            };
            b.insert(
                "dynamic_resources".into(),
                json!({
                    "ads_config": {
                        "api_type": "GRPC",
                        "transport_api_version": "V3",
                        "grpc_services": [{"envoy_grpc": {"cluster_name": "meltemi_xds"}}],
                        "set_node_on_first_message_only": true
                    },
                    "cds_config": {"ads": {}, "resource_api_version": "V3"},
                    "lds_config": {"ads": {}, "resource_api_version": "V3"}
                }),
            );
            let mut xds_cluster = json!({
                    "name": "meltemi_xds",
                    "type": kind,
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}}
                        }
                    },
                    "load_assignment": {"cluster_name": "meltemi_xds", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}]}
            });
            if let Some(tls) = &options.tls {
                xds_cluster["transport_socket"] = xds_transport_socket(tls, host);
            }
            b.insert(
                "static_resources".into(),
                json!({"clusters": [xds_cluster]}),
            );
        }
        None => {
            let listeners: Vec<Value> = resources
                .listeners
                .values()
                .map(|l| inline_routes(l, resources))
                .collect::<Result<_, _>>()?;
            let clusters: Vec<Value> = resources
                .clusters
                .values()
                .map(|c| inline_endpoints(c, resources))
                .collect();
            b.insert(
                "static_resources".into(),
                json!({"listeners": listeners, "clusters": clusters}),
            );
        }
    }
    Ok(Value::Object(b))
}

fn inline_routes(listener: &Value, resources: &Resources) -> Result<Value, String> {
    let mut l = listener.clone();
    if let Some(chains) = l["filter_chains"].as_array_mut() {
        for chain in chains {
            if let Some(filters) = chain["filters"].as_array_mut() {
                for f in filters {
                    let tc = &mut f["typed_config"];
                    let Some(rds) = tc.get("rds").cloned() else {
                        continue;
                    };
                    let name = rds["route_config_name"].as_str().unwrap_or_default();
                    let rc = resources
                        .routes
                        .get(name)
                        .ok_or_else(|| format!("route configuration {name} missing"))?;
                    if let Some(obj) = tc.as_object_mut() {
                        obj.remove("rds");
                        obj.insert("route_config".into(), Value::clone(rc));
                    }
                }
            }
        }
    }
    Ok(l)
}

fn inline_endpoints(cluster: &Value, resources: &Resources) -> Value {
    let mut c = cluster.clone();
    if c["type"] == "EDS" {
        let name = c["name"].as_str().unwrap_or_default().to_owned();
        if let Some(obj) = c.as_object_mut() {
            obj.remove("eds_cluster_config");
            obj.insert("type".into(), json!("STATIC"));
            let la = resources
                .endpoints
                .get(&name)
                .map(|la| Value::clone(la))
                .unwrap_or_else(|| json!({"cluster_name": name}));
            obj.insert("load_assignment".into(), la);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::tests::{inputs, options, DEMO};

    fn opts(xds: Option<&str>) -> BootstrapOptions {
        BootstrapOptions {
            admin_port: 9901,
            node_id: "n".into(),
            node_cluster: "meltemi".into(),
            xds: xds.map(str::to_owned),
            tls: Some(XdsTls {
                ca: "/ca.pem".into(),
                sni: None,
                client: Some(("/c.pem".into(), "/k.pem".into())),
            }),
        }
    }

    #[test]
    fn both_bootstraps_fit_envoys_schema() {
        let r = crate::translate::translate(&inputs(DEMO), &options()).unwrap();
        for xds in [None, Some("127.0.0.1:18000")] {
            let b = bootstrap(&r, &opts(xds)).unwrap();
            crate::proto::parse(crate::proto::BOOTSTRAP, &b).unwrap();
        }
        let s = bootstrap(&r, &opts(None)).unwrap();
        let text = s.to_string();
        assert!(!text.contains("\"rds\"") && !text.contains("EDS"), "{text}");
        assert!(bootstrap(&r, &opts(Some("nope"))).is_err());
    }
}
