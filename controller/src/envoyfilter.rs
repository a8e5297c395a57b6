//! Istio rendering: `EnvoyFilter` resources that put the Meltemi bridge into the proxies istiod
//! configures, the way Aeraki patches its MetaProtocol proxy in, but with stock Envoy filters.
//!
//! For every Meltemi port, per context (sidecar outbound, sidecar inbound, gateway): the codec's
//! front filter is inserted before the `tcp_proxy` istiod generated for the port, and that
//! `tcp_proxy` is replaced by HCM. Outbound and gateway HCMs take their routes over RDS from the
//! controller (`meltemi_xds` cluster); inbound HCMs get an inline route sending everything to
//! the local workload. One more EnvoyFilter adds what the bridge needs everywhere: the back
//! internal listeners (back filter → `tcp_proxy` into istiod's `outbound|…` / `inbound|…`
//! cluster, so Istio keeps load balancing and mTLS), the `meltemi|…` clusters routes name,
//! and the `meltemi_xds` cluster. The proxies need the `envoy.bootstrap.internal_listener`
//! bootstrap extension (a bootstrap override; EnvoyFilter cannot add bootstrap extensions).
//!
//! [`apply`] applies such patches to an Envoy bootstrap as istiod would, for the subset of
//! EnvoyFilter semantics used here, so tests can check the composed result with
//! `envoy --mode validate`.

use serde_json::{json, Value};

use crate::template::{self, Build, Module};
use crate::translate::{Resources, ISTIO_XDS_CLUSTER};

/// Where the patches apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// The client side: the outbound listener istiod makes for the service port.
    SidecarOutbound,
    /// The server side: the inbound filter chain for the port on `virtualInbound`.
    SidecarInbound,
    /// An Istio gateway listener on the port.
    Gateway,
}

impl Context {
    fn istio(self) -> &'static str {
        match self {
            Context::SidecarOutbound => "SIDECAR_OUTBOUND",
            Context::SidecarInbound => "SIDECAR_INBOUND",
            Context::Gateway => "GATEWAY",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Context::SidecarOutbound => "outbound",
            Context::SidecarInbound => "inbound",
            Context::Gateway => "gateway",
        }
    }
}

/// What the EnvoyFilters need besides the translated resources.
#[derive(Debug, Clone)]
pub struct IstioOptions {
    /// Namespace of the EnvoyFilters (the Istio root namespace applies them mesh-wide).
    pub namespace: String,
    /// `host:port` of the controller's xDS server as the proxies reach it.
    pub xds: String,
    /// Contexts to patch.
    pub contexts: Vec<Context>,
    /// Port of istiod's `virtualInbound` listener (15006).
    pub inbound_port: u16,
}

/// One Meltemi port of the translation: its protocol and module, read back from the front
/// listener (so that EnvoyFilters and plain-Envoy listeners can never disagree).
struct Port {
    number: u64,
    front: Value,
    hcm: Value,
}

fn ports(resources: &Resources) -> Vec<Port> {
    resources
        .listeners
        .values()
        .filter_map(|l| {
            let number = l["address"]["socket_address"]["port_value"].as_u64()?;
            let filters = l["filter_chains"][0]["filters"].as_array()?;
            Some(Port {
                number,
                front: filters.first()?.clone(),
                hcm: filters.get(1)?.clone(),
            })
        })
        .collect()
}

fn network_patches(
    context: Context,
    port: &Port,
    inbound_target_port: u64,
    options: &IstioOptions,
) -> Vec<Value> {
    let listener = match context {
        Context::SidecarInbound => json!({
            "portNumber": options.inbound_port,
            "filterChain": {"destinationPort": inbound_target_port, "filter": {"name": "envoy.filters.network.tcp_proxy"}}
        }),
        _ => json!({
            "portNumber": port.number,
            "filterChain": {"filter": {"name": "envoy.filters.network.tcp_proxy"}}
        }),
    };
    let mut hcm = port.hcm.clone();
    if context == Context::SidecarInbound {
        // Inbound: every request goes to the local workload, no routes to fetch.
        let name = format!("meltemi_inbound_{inbound_target_port}");
        let tc = &mut hcm["typed_config"];
        if let Some(obj) = tc.as_object_mut() {
            obj.remove("rds");
            obj.insert(
                "route_config".into(),
                json!({
                    "name": name,
                    "virtual_hosts": [
                        {"name": "meltemi_local", "domains": [meltemi_sdk::bridge::LOCAL_AUTHORITY],
                         "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]},
                        {"name": "inbound", "domains": ["*"],
                         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": inbound_bridge(inbound_target_port)}}]}
                    ],
                    "validate_clusters": false
                }),
            );
            obj.insert(
                "stat_prefix".into(),
                json!(format!("meltemi_inbound_{inbound_target_port}")),
            );
        }
    }
    vec![
        json!({
            "applyTo": "NETWORK_FILTER",
            "match": {"context": context.istio(), "listener": listener},
            "patch": {"operation": "INSERT_BEFORE", "value": port.front}
        }),
        json!({
            "applyTo": "NETWORK_FILTER",
            "match": {"context": context.istio(), "listener": listener},
            "patch": {"operation": "REPLACE", "value": hcm}
        }),
    ]
}

fn inbound_bridge(port: u64) -> String {
    format!("meltemi|inbound|{port}")
}

fn metadata(name: String, namespace: &str) -> Value {
    json!({"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "meltemi-controller"}})
}

/// The EnvoyFilter resources for `resources` (translated with `Target::Istio`).
/// `inbound` maps a service port to its workload's target port and the module of its protocol
/// (inbound bridges forward to `inbound|<targetPort>||`).
pub fn envoy_filters(
    resources: &Resources,
    options: &IstioOptions,
    inbound: &[(u64, u64, String, Module)],
) -> Result<Vec<Value>, String> {
    let (host, port) = options
        .xds
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("--xds {}: expected HOST:PORT", options.xds))?;
    let mut out = Vec::new();
    for p in ports(resources) {
        for &context in &options.contexts {
            let target_ports: Vec<u64> = if context == Context::SidecarInbound {
                inbound
                    .iter()
                    .filter(|(svc, ..)| *svc == p.number)
                    .map(|(_, t, ..)| *t)
                    .collect()
            } else {
                vec![p.number]
            };
            for t in target_ports {
                out.push(json!({
                    "apiVersion": "networking.istio.io/v1alpha3",
                    "kind": "EnvoyFilter",
                    "metadata": metadata(format!("meltemi-{}-{}", context.short(), if context == Context::SidecarInbound { t } else { p.number }), &options.namespace),
                    "spec": {"configPatches": network_patches(context, &p, t, options)}
                }));
            }
        }
    }
    let mut patches = Vec::new();
    let add_cluster = |patches: &mut Vec<Value>, c: &Value| {
        patches.push(json!({
            "applyTo": "CLUSTER",
            "match": {"context": "ANY"},
            "patch": {"operation": "ADD", "value": c}
        }));
    };
    let xds_cluster = json!({
        "name": ISTIO_XDS_CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        },
        "load_assignment": {"cluster_name": ISTIO_XDS_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}]}
    });
    add_cluster(&mut patches, &xds_cluster);
    for c in resources.clusters.values() {
        add_cluster(&mut patches, c);
    }
    let mut listeners: Vec<Value> = resources
        .listeners
        .values()
        .filter(|l| l.get("internal_listener").is_some())
        .map(|l| Value::clone(l))
        .collect();
    if options.contexts.contains(&Context::SidecarInbound) {
        for (_, t, protocol, module) in inbound {
            let back = format!("meltemi_back|inbound|{t}");
            let inbound_cluster = format!("inbound|{t}||");
            listeners.push(template::back_listener(
                Build::Wasm,
                &back,
                protocol,
                module,
                &inbound_cluster,
            ));
            add_cluster(
                &mut patches,
                &template::bridge_cluster(Build::Wasm, &inbound_bridge(*t), &back),
            );
        }
    }
    for l in listeners {
        patches.push(json!({
            "applyTo": "LISTENER",
            "match": {"context": "ANY"},
            "patch": {"operation": "ADD", "value": l}
        }));
    }
    out.push(json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": metadata("meltemi-bridge".into(), &options.namespace),
        "spec": {"configPatches": patches}
    }));
    Ok(out)
}

fn context_matches(want: &str, listener: &Value) -> bool {
    // Istio knows which listeners are outbound, inbound or gateway; the composed test
    // bootstrap marks them in `metadata.filter_metadata.meltemi.context`.
    let have = listener["metadata"]["filter_metadata"]["meltemi"]["context"]
        .as_str()
        .unwrap_or("");
    want == "ANY" || want == have
}

/// Applies `filters` to `bootstrap.static_resources` as istiod applies EnvoyFilter patches,
/// for the operations used by [`envoy_filters`]: `NETWORK_FILTER` `INSERT_BEFORE`/`REPLACE`
/// matched by listener port, filter-chain destination port and filter name; `LISTENER` and
/// `CLUSTER` `ADD`. Errors name a patch that matched nothing.
pub fn apply(bootstrap: &mut Value, filters: &[Value]) -> Result<(), String> {
    for f in filters {
        let name = f["metadata"]["name"].as_str().unwrap_or("").to_owned();
        for (i, patch) in f["spec"]["configPatches"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let op = patch["patch"]["operation"].as_str().unwrap_or("");
            let value = patch["patch"]["value"].clone();
            let context = patch["match"]["context"].as_str().unwrap_or("ANY");
            let res = &mut bootstrap["static_resources"];
            let applied = match (patch["applyTo"].as_str().unwrap_or(""), op) {
                ("CLUSTER", "ADD") => push(&mut res["clusters"], value),
                ("LISTENER", "ADD") => push(&mut res["listeners"], value),
                ("NETWORK_FILTER", "INSERT_BEFORE" | "REPLACE") => {
                    let m = &patch["match"]["listener"];
                    let mut hits = 0;
                    for l in res["listeners"].as_array_mut().into_iter().flatten() {
                        let port = l["address"]["socket_address"]["port_value"].as_u64();
                        if port != m["portNumber"].as_u64() || !context_matches(context, l) {
                            continue;
                        }
                        for chain in l["filter_chains"].as_array_mut().into_iter().flatten() {
                            let dport = chain["filter_chain_match"]["destination_port"].as_u64();
                            if let Some(want) = m["filterChain"]["destinationPort"].as_u64() {
                                if dport != Some(want) {
                                    continue;
                                }
                            }
                            let want = m["filterChain"]["filter"]["name"].as_str();
                            let Some(filters) = chain["filters"].as_array_mut() else {
                                continue;
                            };
                            if let Some(at) =
                                filters.iter().position(|x| x["name"].as_str() == want)
                            {
                                if op == "REPLACE" {
                                    filters[at] = value.clone();
                                } else {
                                    filters.insert(at, value.clone());
                                }
                                hits += 1;
                            }
                        }
                    }
                    hits > 0
                }
                (what, op) => {
                    return Err(format!(
                        "EnvoyFilter {name} patch {i}: {what} {op} is not supported"
                    ))
                }
            };
            if !applied {
                return Err(format!("EnvoyFilter {name} patch {i}: matched nothing"));
            }
        }
    }
    Ok(())
}

fn push(list: &mut Value, value: Value) -> bool {
    if !list.is_array() {
        *list = json!([]);
    }
    list.as_array_mut().map(|a| a.push(value)).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::tests::{inputs, options, DEMO};
    use crate::translate::{translate, Target};

    /// A stand-in for the sidecar istiod would configure for the demo service: the outbound
    /// listener and the inbound chain with `tcp_proxy`, istiod's clusters.
    pub(crate) fn istio_sidecar() -> Value {
        let tcp = |cluster: &str| json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": cluster, "cluster": cluster}});
        let cluster = |name: &str, port: u16| json!({"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}});
        json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
            "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}}],
            "static_resources": {
                "listeners": [
                    {"name": "0.0.0.0_9000", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 9000}},
                     "metadata": {"filter_metadata": {"meltemi": {"context": "SIDECAR_OUTBOUND"}}},
                     "filter_chains": [{"filters": [tcp("outbound|9000||demo")]}]},
                    {"name": "virtualInbound", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15006}},
                     "metadata": {"filter_metadata": {"meltemi": {"context": "SIDECAR_INBOUND"}}},
                     "filter_chains": [{"filter_chain_match": {"destination_port": 9101}, "filters": [tcp("inbound|9101||")]}]}
                ],
                "clusters": [
                    cluster("outbound|9000||demo", 9101),
                    cluster("outbound|9000|v1|demo", 9101),
                    cluster("outbound|9000|v2|demo", 9102),
                    cluster("inbound|9101||", 9101)
                ]
            }
        })
    }

    pub(crate) fn filters() -> (Vec<Value>, Resources) {
        let mut o = options();
        o.target = Target::Istio;
        let r = translate(&inputs(DEMO), &o).unwrap();
        let module = o.modules["minirpc"].clone();
        let f = envoy_filters(
            &r,
            &IstioOptions {
                namespace: "istio-system".into(),
                xds: "meltemi.istio-system.svc:18000".into(),
                contexts: vec![
                    Context::SidecarOutbound,
                    Context::SidecarInbound,
                    Context::Gateway,
                ],
                inbound_port: 15006,
            },
            &[(9000, 9101, "minirpc".into(), module)],
        )
        .unwrap();
        (f, r)
    }

    #[test]
    fn istio_translation_routes_to_bridge_clusters_in_front_of_istios() {
        let (f, r) = filters();
        assert!(
            !r.clusters.keys().any(|k| k.starts_with("outbound|")),
            "istiod owns outbound|…"
        );
        assert!(r.clusters.contains_key("meltemi|9000|v1|demo"));
        let back = &r.listeners["meltemi_back|9000|v1|demo"];
        assert_eq!(
            back["filter_chains"][0]["filters"][1]["typed_config"]["cluster"],
            "outbound|9000|v1|demo"
        );
        assert!(r.endpoints.is_empty());
        let names: Vec<&str> = f
            .iter()
            .filter_map(|x| x["metadata"]["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "meltemi-outbound-9000",
                "meltemi-inbound-9101",
                "meltemi-gateway-9000",
                "meltemi-bridge"
            ]
        );
        let hcm = &f[0]["spec"]["configPatches"][1]["patch"]["value"]["typed_config"];
        assert_eq!(
            hcm["rds"]["config_source"]["api_config_source"]["grpc_services"][0]["envoy_grpc"]
                ["cluster_name"],
            "meltemi_xds"
        );
    }

    #[test]
    fn patches_compose_into_a_bootstrap_envoys_schema_accepts() {
        let (f, _) = filters();
        let mut b = istio_sidecar();
        // No gateway listener in the sidecar: leave the gateway patch out.
        let sidecar: Vec<Value> = f
            .into_iter()
            .filter(|x| x["metadata"]["name"] != "meltemi-gateway-9000")
            .collect();
        apply(&mut b, &sidecar).unwrap();
        crate::proto::parse(crate::proto::BOOTSTRAP, &b).unwrap();
        let out = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"];
        assert_eq!(out[0]["name"], "meltemi_front");
        assert_eq!(
            out[1]["name"],
            "envoy.filters.network.http_connection_manager"
        );
        assert_eq!(out.as_array().map(Vec::len), Some(2));
        let inbound = &b["static_resources"]["listeners"][1]["filter_chains"][0]["filters"][1]
            ["typed_config"];
        assert_eq!(
            inbound["route_config"]["virtual_hosts"][1]["routes"][0]["route"]["cluster"],
            "meltemi|inbound|9101"
        );
        let e = apply(&mut istio_sidecar(), &[json!({"metadata": {"name": "x"}, "spec": {"configPatches": [
            {"applyTo": "NETWORK_FILTER", "match": {"context": "GATEWAY", "listener": {"portNumber": 9000, "filterChain": {"filter": {"name": "envoy.filters.network.tcp_proxy"}}}}, "patch": {"operation": "REPLACE", "value": {}}}
        ]}})]).unwrap_err();
        assert!(e.contains("matched nothing"), "{e}");
    }
}
