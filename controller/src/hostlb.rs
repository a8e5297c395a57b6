//! Host-level load balancing for the wasm back: the router picks the server host per call.
//!
//! The wasm back runs on an internal listener behind the cluster routes name, so the router's
//! load balancer only ever sees that one internal address, and the back's tcp_proxy picks a
//! server once per bridge connection. That is enough for plain round robin, but not for what
//! must choose or judge a host per call:
//! - a consistent hash (`hash_policy` would pick the hop, not the server);
//! - retries (a retry with `previous_hosts` must land on another server, and a server that
//!   refuses connections must be tried at all — pooled bridge connections stick to live ones);
//! - outlier detection (the router's per-call results must be charged to the server host that
//!   gave them, and ejecting it must steer the next calls).
//!
//! For such destinations the hop is therefore made per host: the route's cluster has one
//! internal endpoint per server host (its own back listener `…|<ip>:<port>`, whose tcp_proxy
//! forwards to a one-host server cluster), and takes the load balancer and the outlier
//! detection the server cluster would have had, so the router's own choice and ejection apply
//! to servers. Other destinations keep the single hop (fewer listeners).

use serde_json::{json, Value};

use crate::template::{self, Build, Module};

/// The load balancer a consistent hash needs: Envoy ignores a route's `hash_policy` unless
/// the cluster's load balancer is hash-based.
pub const HASH_LB: &str = "RING_HASH";

/// The resources of one per-host destination.
#[derive(Debug, Default)]
pub struct PerHost {
    /// Back listeners, one per host.
    pub listeners: Vec<(String, Value)>,
    /// The route's cluster (internal endpoints, one per host) and one server cluster per host.
    pub clusters: Vec<(String, Value)>,
    /// One assignment per host server cluster.
    pub endpoints: Vec<(String, Value)>,
}

/// `ip:port` of an EDS `lb_endpoint`, naming its hop.
fn host_of(lb_endpoint: &Value) -> Option<String> {
    let sa = &lb_endpoint["endpoint"]["address"]["socket_address"];
    Some(format!(
        "{}:{}",
        sa["address"].as_str()?,
        sa["port_value"].as_u64()?
    ))
}

/// Per-host hop for the destination whose route cluster is `cluster`: `back` and `server` are
/// the single-hop names (suffixed here with `|<ip>:<port>`), `server_template` the server
/// cluster as the single hop would have it (policy, circuit breakers, outlier detection: its
/// load balancer and outlier detection move to the route's cluster), `bridge_limits` the HTTP
/// hop's circuit breakers, `lb_endpoints` the subset's servers.
#[allow(clippy::too_many_arguments)]
pub fn per_host(
    build: Build,
    protocol: &str,
    module: &Module,
    cluster: &str,
    back: &str,
    server: &str,
    server_template: &Value,
    bridge_limits: Option<Value>,
    lb_endpoints: &[Value],
) -> PerHost {
    let mut out = PerHost::default();
    let mut hops = Vec::new();
    // What chooses and judges hosts moves to the route's cluster, whose endpoints are hosts.
    let mut server_template = server_template.clone();
    let (lb_policy, outlier) = match server_template.as_object_mut() {
        Some(o) => (o.remove("lb_policy"), o.remove("outlier_detection")),
        None => (None, None),
    };
    for e in lb_endpoints {
        let Some(host) = host_of(e) else { continue };
        let (back, server) = (format!("{back}|{host}"), format!("{server}|{host}"));
        let mut c = server_template.clone();
        // One host: nothing to balance or eject; the route's cluster did both.
        c["name"] = json!(server);
        let mut one = e.clone();
        if let Some(o) = one.as_object_mut() {
            o.remove("load_balancing_weight");
        }
        out.endpoints.push((
            server.clone(),
            json!({"cluster_name": server, "endpoints": [{"lb_endpoints": [one]}]}),
        ));
        out.clusters.push((server.clone(), c));
        out.listeners.push((
            back.clone(),
            template::back_listener(build, &back, protocol, module, &server),
        ));
        let mut hop = json!({"endpoint": {"address": {"envoy_internal_address": {"server_listener_name": back}}}});
        if let Some(w) = e.get("load_balancing_weight") {
            hop["load_balancing_weight"] = w.clone();
        }
        hops.push(hop);
    }
    let mut bridge = template::bridge_cluster(build, cluster, "");
    if let Some(lb) = lb_policy {
        bridge["lb_policy"] = lb;
    }
    if let Some(od) = outlier {
        bridge["outlier_detection"] = od;
    }
    bridge["load_assignment"] = if hops.is_empty() {
        json!({"cluster_name": cluster})
    } else {
        json!({"cluster_name": cluster, "endpoints": [{"lb_endpoints": hops}]})
    };
    if let Some(limits) = bridge_limits {
        bridge["circuit_breakers"] = json!({"thresholds": [limits]});
    }
    out.clusters.push((cluster.to_owned(), bridge));
    out
}

#[cfg(test)]
mod tests {
    use crate::template::Build;
    use crate::translate::{
        tests::{inputs, options},
        translate,
    };

    const HASHED: &str = r#"
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: ApplicationProtocol
metadata: {name: minirpc}
spec: {protocol: minirpc, codec: meltemi.minirpc}
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: echo, namespace: meta}
spec:
  hosts: [echo]
  ports: [{number: 9000, name: tcp-metaprotocol-minirpc}]
  endpoints:
  - {address: 127.0.0.1, ports: {tcp-metaprotocol-minirpc: 9101}, labels: {version: v1}}
  - {address: 127.0.0.1, ports: {tcp-metaprotocol-minirpc: 9201}, labels: {version: v2}}
  - {address: 127.0.0.1, ports: {tcp-metaprotocol-minirpc: 9202}, labels: {version: v2}, weight: 3}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: echo, namespace: meta}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
"#;

    #[test]
    fn wasm_consistent_hash_gets_one_hop_per_host() {
        let r = translate(&inputs(HASHED), &options()).unwrap();
        let c = &r.clusters["outbound|9000|v2|echo"];
        assert_eq!(c["lb_policy"], "RING_HASH");
        let hops = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
            .as_array()
            .unwrap();
        let names: Vec<&str> = hops
            .iter()
            .map(|h| {
                h["endpoint"]["address"]["envoy_internal_address"]["server_listener_name"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            names,
            [
                "meltemi_back|9000|v2|echo|127.0.0.1:9201",
                "meltemi_back|9000|v2|echo|127.0.0.1:9202"
            ]
        );
        assert_eq!(hops[1]["load_balancing_weight"], 3);
        for (name, port) in [(names[0], 9201), (names[1], 9202)] {
            let l = &r.listeners[name];
            let server = l["filter_chains"][0]["filters"][1]["typed_config"]["cluster"]
                .as_str()
                .unwrap();
            assert_eq!(
                server,
                format!("meltemi_server|9000|v2|echo|127.0.0.1:{port}")
            );
            let e = &r.endpoints[server]["endpoints"][0]["lb_endpoints"];
            assert_eq!(e.as_array().map(Vec::len), Some(1));
            assert_eq!(
                e[0]["endpoint"]["address"]["socket_address"]["port_value"],
                port
            );
            assert!(r.clusters[server].get("lb_policy").is_none());
        }
        // Without a consistent hash: the single hop, as before.
        assert!(r.listeners.contains_key("meltemi_back|9000|v1|echo"));
        assert!(r.clusters["outbound|9000|v1|echo"]
            .get("lb_policy")
            .is_none());
        assert!(!r.listeners.contains_key("meltemi_back|9000|v2|echo"));
        crate::xds::Snapshot::new(&r, std::time::Instant::now()).unwrap();
    }

    #[test]
    fn native_consistent_hash_is_the_server_clusters_ring_hash() {
        let mut o = options();
        if let Some(m) = o.modules.get_mut("minirpc") {
            m.native = Some(crate::template::ModuleSource::Local(
                "meltemi_minirpc".into(),
            ));
        }
        for build in [Build::Native, Build::Mix] {
            o.build = build;
            let r = translate(&inputs(HASHED), &o).unwrap();
            assert_eq!(
                r.clusters["outbound|9000|v2|echo"]["lb_policy"],
                "RING_HASH"
            );
            assert!(r.clusters["outbound|9000|v1|echo"]
                .get("lb_policy")
                .is_none());
            assert_eq!(
                r.endpoints["outbound|9000|v2|echo"]["endpoints"][0]["lb_endpoints"]
                    .as_array()
                    .map(Vec::len),
                Some(2)
            );
        }
    }

    #[test]
    fn a_new_host_retranslates_the_port() {
        let mut cache = crate::translate::Cache::default();
        let o = options();
        let before = crate::translate::translate_cached(&inputs(HASHED), &o, &mut cache)
            .unwrap()
            .clone();
        let more = HASHED.replace(
            "  - {address: 127.0.0.1, ports: {tcp-metaprotocol-minirpc: 9101}",
            "  - {address: 127.0.0.1, ports: {tcp-metaprotocol-minirpc: 9203}, labels: {version: v2}}\n  - {address: 127.0.0.1, ports: {tcp-metaprotocol-minirpc: 9101}",
        );
        let after = crate::translate::translate_cached(&inputs(&more), &o, &mut cache)
            .unwrap()
            .clone();
        assert_eq!(cache.translated, 1);
        assert!(!before
            .listeners
            .contains_key("meltemi_back|9000|v2|echo|127.0.0.1:9203"));
        assert!(after
            .listeners
            .contains_key("meltemi_back|9000|v2|echo|127.0.0.1:9203"));
    }

    /// The hops of `cluster`: their back listener names.
    fn hop_names(r: &crate::translate::Resources, cluster: &str) -> Vec<String> {
        r.clusters[cluster]["load_assignment"]["endpoints"][0]["lb_endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| {
                h["endpoint"]["address"]["envoy_internal_address"]["server_listener_name"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    #[test]
    fn wasm_outlier_detection_judges_hosts_on_the_routes_cluster() {
        let text = HASHED.replacen(
            "  host: echo\n  subsets:\n",
            "  host: echo\n  trafficPolicy:\n    outlierDetection: {consecutiveGatewayErrors: 2, interval: 1s}\n    loadBalancer: {simple: LEAST_REQUEST}\n  subsets:\n",
            1,
        );
        assert_ne!(text, HASHED);
        let r = translate(&inputs(&text), &options()).unwrap();
        // The default destination (three servers): one hop per host.
        assert_eq!(
            hop_names(&r, "outbound|9000||echo"),
            [
                "meltemi_back|9000||echo|127.0.0.1:9101",
                "meltemi_back|9000||echo|127.0.0.1:9201",
                "meltemi_back|9000||echo|127.0.0.1:9202"
            ]
        );
        let c = &r.clusters["outbound|9000||echo"];
        assert_eq!(c["outlier_detection"]["consecutive_gateway_failure"], 2);
        assert_eq!(c["lb_policy"], "LEAST_REQUEST");
        let server = &r.clusters["meltemi_server|9000||echo|127.0.0.1:9201"];
        assert!(server.get("outlier_detection").is_none(), "{server}");
        assert!(server.get("lb_policy").is_none(), "{server}");
        // The hashed subset keeps its ring hash, and gets the rule's outlier detection too.
        let v2 = &r.clusters["outbound|9000|v2|echo"];
        assert_eq!(v2["lb_policy"], "RING_HASH");
        assert_eq!(v2["outlier_detection"]["consecutive_gateway_failure"], 2);
        assert!(!r.listeners.contains_key("meltemi_back|9000||echo"));
        crate::xds::Snapshot::new(&r, std::time::Instant::now()).unwrap();
    }

    #[test]
    fn wasm_retries_get_one_hop_per_host_with_round_robin() {
        let text = format!(
            "{HASHED}---
apiVersion: meltemi.io/v1alpha1
kind: MetaTrafficPolicy
metadata: {{name: retries, namespace: meta}}
spec:
  hosts: [echo]
  retries: {{attempts: 2, retryOn: [connect-failure, reset]}}
"
        );
        let r = translate(&inputs(&text), &options()).unwrap();
        assert_eq!(
            hop_names(&r, "outbound|9000|v1|echo"),
            ["meltemi_back|9000|v1|echo|127.0.0.1:9101"]
        );
        let c = &r.clusters["outbound|9000||echo"];
        assert!(c.get("lb_policy").is_none(), "round robin: {c}");
        assert_eq!(hop_names(&r, "outbound|9000||echo").len(), 3);
        // Without retries, outlier detection or a hash: the single hop.
        let r = translate(&inputs(HASHED), &options()).unwrap();
        assert!(r.listeners.contains_key("meltemi_back|9000||echo"));
    }
}
