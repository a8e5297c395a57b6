//! Gateways for the plain-Envoy output: Istio `Gateway` resources and the `gateways:` of a
//! MetaRouter, with Istio's VirtualService semantics (which Aeraki follows):
//!
//! - a MetaRouter without `gateways` applies to the mesh (the service's own front listener);
//!   one naming gateways (`namespace/name`, or `name` in the router's namespace) applies to
//!   those gateways only, plus the mesh if it also lists the keyword `mesh`;
//! - every Gateway server whose port is named `tcp-metaprotocol-<protocol>[-…]` becomes a front
//!   listener of its own on that port (`<bind>_<port>`, RDS `meltemi_<port>`), the ingress a
//!   client outside the mesh connects to; its route configuration has one virtual host per
//!   service of that protocol the server's `hosts` select (`*`, `ns/*`, `host`, `ns/host`,
//!   `*.suffix`) AND a MetaRouter bound to this gateway routes: a gateway exposes only what is
//!   bound to it, as in Istio. The routes name the services' own destination clusters, so a
//!   gateway adds listeners and routes, never clusters.
//!
//! Gateways are few: they are translated again on every change (the per-port cache is for the
//! thousands of services).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::load::Problem;
use crate::model::{port_protocol, DestinationRuleSpec, Inputs, MetaRouterSpec, Object};
use crate::translate::{
    front_listener, meta_route, route_config_name, Error, Options, Service, Target,
};

/// `port` of a Gateway server.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayPort {
    /// Port the gateway listens on.
    #[serde(default)]
    pub number: u32,
    /// `tcp-metaprotocol-<protocol>-…` for Meltemi servers.
    #[serde(default)]
    pub name: String,
    /// Istio protocol (`TCP`).
    #[serde(default)]
    pub protocol: Option<String>,
}

/// A Gateway server.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayServer {
    /// The port.
    #[serde(default)]
    pub port: GatewayPort,
    /// Hosts exposed (`*`, `ns/host`, `*.suffix`).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Server name (optional).
    #[serde(default)]
    pub name: Option<String>,
}

/// `Gateway.spec` (`networking.istio.io`); fields Meltemi does not use are accepted.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Gateway workload labels (Istio picks the proxy; plain Envoy: every Envoy of this
    /// controller gets the gateway listeners).
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Servers.
    #[serde(default)]
    pub servers: Vec<GatewayServer>,
}

/// The keyword for sidecars in `gateways:`.
pub const MESH: &str = "mesh";

/// `namespace/name` of a `gateways:` entry of a router in `namespace`.
fn resolve(entry: &str, namespace: &str) -> String {
    if entry.contains('/') {
        entry.to_owned()
    } else {
        format!("{namespace}/{entry}")
    }
}

/// Where a MetaRouter applies: `mesh` and/or gateways as `namespace/name`.
pub fn scopes(router: &Object<MetaRouterSpec>) -> Vec<String> {
    if router.spec.gateways.is_empty() {
        return vec![MESH.to_owned()];
    }
    router
        .spec
        .gateways
        .iter()
        .map(|g| {
            if g == MESH {
                MESH.to_owned()
            } else {
                resolve(g, router.namespace())
            }
        })
        .collect()
}

/// Whether a MetaRouter applies to the mesh (the services' own listeners).
pub fn applies_to_mesh(router: &Object<MetaRouterSpec>) -> bool {
    router.spec.gateways.is_empty() || router.spec.gateways.iter().any(|g| g == MESH)
}

/// Whether a server's `hosts` entry selects `host` (of a resource in `namespace`).
fn selects(pattern: &str, host: &str, namespace: &str) -> bool {
    let (ns, pat) = match pattern.split_once('/') {
        Some((ns, pat)) => (Some(ns), pat),
        None => (None, pattern),
    };
    if ns.is_some_and(|ns| ns != "*" && ns != "." && ns != namespace) {
        return false;
    }
    let host = host.to_ascii_lowercase();
    let pat = pat.to_ascii_lowercase();
    pat == "*"
        || pat == host
        || pat
            .strip_prefix('*')
            .is_some_and(|suffix| suffix.starts_with('.') && host.ends_with(suffix))
}

/// Validation of Gateways and of the `gateways:` of MetaRouters.
pub fn validate(inputs: &Inputs, known: &BTreeSet<String>, out: &mut Vec<Problem>) {
    let problem =
        |source: &crate::model::Source, resource: String, field: String, msg: String| Problem {
            source: source.clone(),
            resource,
            field,
            message: msg,
        };
    // Meltemi ports of the services: a gateway cannot listen on one of them.
    let mut service_ports: BTreeMap<u32, String> = BTreeMap::new();
    for se in &inputs.service_entries {
        for p in &se.spec.ports {
            if port_protocol(&p.name).is_some() {
                service_ports
                    .entry(p.number)
                    .or_insert_with(|| se.id("ServiceEntry"));
            }
        }
    }
    let mut names = BTreeSet::new();
    let mut gateway_ports: BTreeMap<u32, String> = BTreeMap::new();
    for gw in &inputs.gateways {
        const K: &str = "Gateway";
        names.insert(format!("{}/{}", gw.namespace(), gw.meta.name));
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let Some(protocol) = port_protocol(&server.port.name) else {
                continue; // not a Meltemi server (HTTP, TLS…): Istio's business
            };
            let field = format!("spec.servers[{i}]");
            if !known.contains(protocol) {
                out.push(problem(
                    &gw.source,
                    gw.id(K),
                    format!("{field}.port.name"),
                    format!(
                        "protocol `{protocol}` is unknown; declare it with an ApplicationProtocol"
                    ),
                ));
            }
            let number = server.port.number;
            if number == 0 || number > 65535 {
                out.push(problem(
                    &gw.source,
                    gw.id(K),
                    format!("{field}.port.number"),
                    format!("{number} is not a port"),
                ));
            } else if let Some(se) = service_ports.get(&number) {
                out.push(problem(
                    &gw.source,
                    gw.id(K),
                    format!("{field}.port.number"),
                    format!("port {number} is already the Meltemi port of {se}"),
                ));
            } else if let Some(other) = gateway_ports.get(&number) {
                out.push(problem(
                    &gw.source,
                    gw.id(K),
                    format!("{field}.port.number"),
                    format!("port {number} is already a server port of {other}"),
                ));
            } else {
                gateway_ports.insert(number, gw.id(K));
            }
            if server.hosts.is_empty() {
                out.push(problem(
                    &gw.source,
                    gw.id(K),
                    format!("{field}.hosts"),
                    "at least one host is required (`*` for every service)".into(),
                ));
            }
        }
    }
    for mr in &inputs.routers {
        for (i, g) in mr.spec.gateways.iter().enumerate() {
            if g == MESH {
                continue;
            }
            let name = resolve(g, mr.namespace());
            if !names.contains(&name) {
                out.push(problem(
                    &mr.source,
                    mr.id("MetaRouter"),
                    format!("spec.gateways[{i}]"),
                    format!("Gateway {name} is not defined"),
                ));
            }
        }
    }
}

/// One Meltemi server of a Gateway: where it listens and which hosts it exposes.
pub struct Listener<'a> {
    /// The gateway's `namespace/name` (what routers name).
    pub gateway: String,
    /// Its namespace (for `hosts` entries without one).
    pub namespace: &'a str,
    /// Port the listener binds.
    pub port: u32,
    /// Protocol from the port name.
    pub protocol: &'a str,
    /// `hosts` of the server.
    pub hosts: &'a [String],
}

/// Every Meltemi server of every Gateway.
pub fn listeners(inputs: &Inputs) -> Vec<Listener<'_>> {
    let mut out = Vec::new();
    for gw in &inputs.gateways {
        for server in &gw.spec.servers {
            if let Some(protocol) = port_protocol(&server.port.name) {
                out.push(Listener {
                    gateway: format!("{}/{}", gw.namespace(), gw.meta.name),
                    namespace: gw.namespace(),
                    port: server.port.number,
                    protocol,
                    hosts: &server.hosts,
                });
            }
        }
    }
    out
}

impl Listener<'_> {
    /// Whether this server exposes `host` (of a ServiceEntry in `namespace`). A bare host
    /// matches in any namespace (plain Envoy has one scope); `./host` only in the gateway's.
    pub fn exposes(&self, host: &str, namespace: &str) -> bool {
        self.hosts.iter().any(|p| match p.strip_prefix("./") {
            Some(h) => selects(&format!("{}/{h}", self.namespace), host, namespace),
            None => selects(p, host, namespace),
        })
    }

    /// The MetaRouter bound to this gateway for `host`, if any.
    pub fn router<'r>(&self, inputs: &'r Inputs, host: &str) -> Option<&'r Object<MetaRouterSpec>> {
        inputs
            .routers
            .iter()
            .filter(|r| r.spec.hosts.first().is_some_and(|h| h == host))
            .find(|r| scopes(r).contains(&self.gateway))
            .map(|r| &**r)
    }
}

/// The listeners and route configurations of every gateway server.
#[derive(Debug, Default)]
pub struct Rendered {
    /// Front listeners, one per gateway server port.
    pub listeners: Vec<(String, Value)>,
    /// Their route configurations.
    pub routes: Vec<(String, Value)>,
}

/// Renders every gateway server: `services` are the mesh's services by port (their
/// destination clusters exist already), `drs` the DestinationRules by host.
pub(crate) fn render(
    inputs: &Inputs,
    options: &Options,
    services: &BTreeMap<u32, (&str, Vec<Service<'_>>)>,
    drs: &BTreeMap<&str, &DestinationRuleSpec>,
) -> Result<Rendered, Error> {
    let mut out = Rendered::default();
    if options.target == Target::Istio {
        // istiod owns the gateways' listeners (the `envoyfilter` gateway patches).
        return Ok(out);
    }
    for l in listeners(inputs) {
        let module = options.modules.get(l.protocol).ok_or_else(|| {
            Error(format!(
                "no module for protocol `{}` (gateway {} port {}): pass --module {}=PATH",
                l.protocol, l.gateway, l.port, l.protocol
            ))
        })?;
        let mut vhosts = vec![json!({
            "name": "meltemi_local",
            "domains": [meltemi_sdk::bridge::LOCAL_AUTHORITY],
            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]
        })];
        let mut exposed = Vec::new();
        for svc in services
            .values()
            .filter(|(p, _)| *p == l.protocol)
            .flat_map(|(_, s)| s)
        {
            if !l.exposes(svc.host, svc.se.namespace()) {
                continue;
            }
            // Only what a router binds to this gateway is exposed (Istio's semantics).
            let Some(router) = l.router(inputs, svc.host) else {
                continue;
            };
            let routes: Vec<Value> = router
                .spec
                .routes
                .iter()
                .map(|r| meta_route(r, svc, drs))
                .collect();
            vhosts.push(json!({
                "name": format!("{}:{}@{}", svc.host, svc.port, l.gateway),
                "domains": [svc.host],
                "routes": routes
            }));
            exposed.push(svc.host);
        }
        // One exposed host: the front names it (Thrift has no service in its messages);
        // several: each message's `service` metadata does, as on a shared mesh port.
        let fixed = (exposed.len() == 1).then(|| exposed[0]);
        let listener = front_listener(options, l.port, l.protocol, module, fixed);
        let name = listener["name"].as_str().unwrap_or_default().to_owned();
        out.listeners.push((name, listener));
        let rc = route_config_name(l.port);
        out.routes.push((
            rc.clone(),
            json!({"name": rc, "virtual_hosts": vhosts, "validate_clusters": false}),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::load::{load_text, Loaded};
    use crate::translate::tests::{options, DEMO};
    use crate::translate::{translate, translate_cached, Cache};

    const GATEWAY: &str = r#"
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: ingress, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 19000, name: tcp-metaprotocol-minirpc, protocol: TCP}
    hosts: ["*"]
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {name: demo-gw, namespace: meta}
spec:
  hosts: [demo]
  gateways: [istio-system/ingress]
  routes:
  - name: gw-v2
    route: [{destination: {host: demo, subset: v2}}]
"#;

    fn load(text: &str) -> (crate::model::Inputs, Vec<String>) {
        let mut loaded = Loaded::default();
        load_text("gw.yaml", text, &mut loaded);
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let problems = crate::validate::validate(&loaded.inputs)
            .iter()
            .map(|p| p.to_string())
            .collect();
        (loaded.inputs, problems)
    }

    #[test]
    fn a_gateway_router_routes_the_gateway_listener_only() {
        let text = format!("{DEMO}{GATEWAY}");
        let (inputs, problems) = load(&text);
        assert!(problems.is_empty(), "{problems:?}");
        let r = translate(&inputs, &options()).unwrap();
        // A listener of its own on the server's port; the HTTP server is not Meltemi's.
        let l = &r.listeners["127.0.0.1_19000"];
        assert_eq!(l["address"]["socket_address"]["port_value"], 19000);
        assert!(!r.listeners.contains_key("127.0.0.1_8080"));
        let vhosts = r.routes["meltemi_19000"]["virtual_hosts"]
            .as_array()
            .unwrap();
        assert_eq!(vhosts.len(), 2);
        assert_eq!(vhosts[1]["domains"][0], "demo");
        assert_eq!(vhosts[1]["routes"][0]["name"], "gw-v2");
        assert_eq!(
            vhosts[1]["routes"][0]["route"]["cluster"],
            "outbound|9000|v2|demo"
        );
        // The mesh keeps the mesh router's routes (the demo's), untouched by the gateway's.
        let mesh = &r.routes["meltemi_9000"]["virtual_hosts"][1]["routes"];
        assert!(mesh
            .as_array()
            .unwrap()
            .iter()
            .all(|route| route["name"] != "gw-v2"));
        crate::xds::Snapshot::new(&r, std::time::Instant::now()).unwrap();
        // Istio: istiod owns the gateway's listeners.
        let mut o = options();
        o.target = crate::translate::Target::Istio;
        let r = translate(&inputs, &o).unwrap();
        assert!(!r.listeners.contains_key("127.0.0.1_19000"));
    }

    #[test]
    fn mesh_keyword_and_bare_names() {
        // Without the demo's own router: the gateway router names `mesh` too.
        let base: String = DEMO.split("---").take(3).collect::<Vec<_>>().join("---");
        let text = format!("{base}{GATEWAY}").replace(
            "gateways: [istio-system/ingress]",
            "gateways: [mesh, istio-system/ingress]",
        );
        let (inputs, problems) = load(&text);
        assert!(problems.is_empty(), "{problems:?}");
        let r = translate(&inputs, &options()).unwrap();
        assert_eq!(
            r.routes["meltemi_9000"]["virtual_hosts"][1]["routes"][0]["name"],
            "gw-v2"
        );
        assert_eq!(
            r.routes["meltemi_19000"]["virtual_hosts"][1]["routes"][0]["name"],
            "gw-v2"
        );
        // Only the gateway: the mesh falls back to the default route.
        let only = format!("{base}{GATEWAY}");
        let (inputs, _) = load(&only);
        let r = translate(&inputs, &options()).unwrap();
        assert_eq!(
            r.routes["meltemi_9000"]["virtual_hosts"][1]["routes"][0]["name"],
            "default"
        );
    }

    #[test]
    fn bad_gateways_are_rejected_naming_the_field() {
        let text = format!("{DEMO}{GATEWAY}")
            .replace("gateways: [istio-system/ingress]", "gateways: [ingress]")
            .replace("number: 19000", "number: 9000");
        let (_, problems) = load(&text);
        let joined = problems.join("\n");
        assert!(
            joined.contains("Gateway istio-system/ingress: field `spec.servers[0].port.number`: port 9000 is already the Meltemi port of ServiceEntry meta/demo"),
            "{joined}"
        );
        assert!(
            joined.contains("MetaRouter meta/demo-gw: field `spec.gateways[0]`: Gateway meta/ingress is not defined"),
            "{joined}"
        );
        // Two routers for one host conflict only where both apply.
        let text = format!("{DEMO}{GATEWAY}")
            .replace("gateways: [istio-system/ingress]", "gateways: [mesh]");
        let (_, problems) = load(&text);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("already routed by MetaRouter meta/demo")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_gateway_router_change_reaches_the_gateway_routes() {
        let text = format!("{DEMO}{GATEWAY}");
        let (inputs, _) = load(&text);
        let mut cache = Cache::default();
        let o = options();
        translate_cached(&inputs, &o, &mut cache).unwrap();
        let (changed, _) = load(&text.replace(
            "  - name: gw-v2\n    route: [{destination: {host: demo, subset: v2}}]",
            "  - name: gw-v1\n    route: [{destination: {host: demo, subset: v1}}]",
        ));
        let r = translate_cached(&changed, &o, &mut cache).unwrap().clone();
        assert_eq!(
            r.routes["meltemi_19000"]["virtual_hosts"][1]["routes"][0]["name"],
            "gw-v1"
        );
        // The mesh port's inputs did not change (a gateway router is not the mesh's).
        assert_eq!(cache.translated, 0);
        assert_eq!(r, translate(&changed, &o).unwrap());
        // The Gateway removed: its listener and routes go.
        let (none, _) = load(DEMO);
        let r = translate_cached(&none, &o, &mut cache).unwrap();
        assert!(!r.listeners.contains_key("127.0.0.1_19000"));
        assert!(!r.routes.contains_key("meltemi_19000"));
    }

    /// The directory pipeline (what `serve` runs) carries Gateways from their own file.
    #[test]
    fn the_pipeline_reads_gateways_from_files() {
        let dir = std::env::temp_dir().join(format!("meltemi-gw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("demo.yaml"), DEMO).unwrap();
        let mut p = crate::source::Pipeline::new(options());
        assert!(p.refresh_dir(&dir, None).unwrap());
        let t = std::time::Instant::now();
        let (first, _) = p.snapshot(t, None).unwrap();
        std::fs::write(dir.join("gateway.yaml"), GATEWAY).unwrap();
        assert!(p.refresh_dir(&dir, None).unwrap());
        let (second, _) = p.snapshot(t, Some(&first)).unwrap();
        assert_ne!(
            first.types[crate::proto::LISTENER].version,
            second.types[crate::proto::LISTENER].version
        );
        assert_eq!(p.inputs().0.gateways.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
