//! Validation before translation: what Aeraki's admission webhook checks (one host per
//! MetaRouter, weights summing to 100, only the last route without a match) and what it leaves
//! to runtime surprises (known protocols, referenced hosts, ports and subsets exist, conflicting
//! resources for one host or port, regexes that compile, endpoints Envoy can use). Every problem
//! names the file, the resource and the field, so that the person editing YAML can fix it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::load::Problem;
use crate::model::{port_protocol, Destination, Inputs, Object, StringMatch};

/// Protocols with a Meltemi codec in this repository; others need an `ApplicationProtocol`.
pub const BUILTIN_PROTOCOLS: &[&str] = &["dubbo", "thrift"];

fn problem<T>(
    obj: &Object<T>,
    kind: &str,
    field: impl Into<String>,
    msg: impl Into<String>,
) -> Problem {
    Problem {
        source: obj.source.clone(),
        resource: obj.id(kind),
        field: field.into(),
        message: msg.into(),
    }
}

/// The header a metadata key travels in (as the front writes it), or `None` if the key cannot
/// be an HTTP header name (such metadata is never visible to routes).
pub fn header_name(key: &str) -> Option<String> {
    let md: meltemi_sdk::Metadata = [(key, "x")].into_iter().collect();
    meltemi_sdk::bridge::metadata_headers(&md)
        .into_iter()
        .next()
        .map(|(name, _)| name)
}

/// The protocols the inputs may use: built-ins plus every `ApplicationProtocol`.
pub fn known_protocols(inputs: &Inputs) -> BTreeSet<String> {
    let mut known: BTreeSet<String> = BUILTIN_PROTOCOLS.iter().map(|s| s.to_string()).collect();
    for p in &inputs.protocols {
        if !p.spec.protocol.is_empty() {
            known.insert(p.spec.protocol.clone());
        }
        known.insert(p.meta.name.clone());
    }
    known
}

/// All problems in `inputs`; empty means translation will succeed.
pub fn validate(inputs: &Inputs) -> Vec<Problem> {
    let mut out = Vec::new();
    let known = known_protocols(inputs);
    // host → (ServiceEntry id, its Meltemi port numbers)
    let mut hosts: BTreeMap<&str, (&Object<_>, BTreeSet<u32>)> = BTreeMap::new();
    // port → (protocol, first ServiceEntry using it)
    let mut ports: BTreeMap<u32, (&str, String)> = BTreeMap::new();

    for p in &inputs.protocols {
        if p.spec.protocol.is_empty() {
            out.push(problem(
                p,
                "ApplicationProtocol",
                "spec.protocol",
                "missing",
            ));
        }
    }

    for se in &inputs.service_entries {
        const K: &str = "ServiceEntry";
        let meltemi_ports: Vec<_> = se
            .spec
            .ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| port_protocol(&p.name).map(|proto| (i, p, proto)))
            .collect();
        if meltemi_ports.is_empty() {
            continue; // not a Meltemi service: Istio's business
        }
        if se.spec.hosts.is_empty() {
            out.push(problem(
                se,
                K,
                "spec.hosts",
                "at least one host is required",
            ));
        }
        let mut numbers = BTreeSet::new();
        for (i, port, proto) in &meltemi_ports {
            let field = format!("spec.ports[{i}]");
            if !known.contains(*proto) {
                out.push(problem(
                    se,
                    K,
                    format!("{field}.name"),
                    format!(
                        "protocol `{proto}` is unknown: known are {}; declare others with an ApplicationProtocol",
                        known.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            if port.number == 0 || port.number > 65535 {
                out.push(problem(
                    se,
                    K,
                    format!("{field}.number"),
                    "must be 1..65535",
                ));
                continue;
            }
            match ports.get(&port.number) {
                Some((other, who)) if other != proto => out.push(problem(
                    se,
                    K,
                    format!("{field}.number"),
                    format!(
                        "port {} carries `{proto}` here but `{other}` in {who}: one listener per port serves one protocol",
                        port.number
                    ),
                )),
                Some(_) => {}
                None => {
                    ports.insert(port.number, (proto, se.id(K)));
                }
            }
            numbers.insert(port.number);
        }
        for (h, host) in se.spec.hosts.iter().enumerate() {
            let valid = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if !valid {
                out.push(problem(
                    se,
                    K,
                    format!("spec.hosts[{h}]"),
                    "not a valid host name",
                ));
            }
            if let Some((other, _)) = hosts.get(host.as_str()) {
                out.push(problem(
                    se,
                    K,
                    format!("spec.hosts[{h}]"),
                    format!("host {host} is already defined by {}", other.id(K)),
                ));
            } else {
                hosts.insert(host, (se, numbers.clone()));
            }
        }
        for (e, ep) in se.spec.endpoints.iter().enumerate() {
            if ep.address.parse::<IpAddr>().is_err() {
                out.push(problem(
                    se,
                    K,
                    format!("spec.endpoints[{e}].address"),
                    format!(
                        "`{}` is not an IP address (endpoints are served over EDS, which takes addresses only)",
                        ep.address
                    ),
                ));
            }
            for (name, number) in &ep.ports {
                if *number == 0 || *number > 65535 {
                    out.push(problem(
                        se,
                        K,
                        format!("spec.endpoints[{e}].ports.{name}"),
                        "must be 1..65535",
                    ));
                }
            }
        }
    }

    // host → subset names
    let mut subsets: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut dr_owner: BTreeMap<&str, String> = BTreeMap::new();
    for dr in &inputs.destination_rules {
        const K: &str = "DestinationRule";
        if dr.spec.host.is_empty() {
            out.push(problem(dr, K, "spec.host", "missing"));
            continue;
        }
        if !hosts.contains_key(dr.spec.host.as_str()) {
            continue; // a rule for a non-Meltemi service is Istio's business
        }
        if let Some(other) = dr_owner.get(dr.spec.host.as_str()) {
            out.push(problem(
                dr,
                K,
                "spec.host",
                format!("host {} already has {other}", dr.spec.host),
            ));
            continue;
        }
        dr_owner.insert(&dr.spec.host, dr.id(K));
        let names = subsets.entry(&dr.spec.host).or_default();
        for (s, subset) in dr.spec.subsets.iter().enumerate() {
            if subset.name.is_empty() || subset.name.contains('|') {
                out.push(problem(
                    dr,
                    K,
                    format!("spec.subsets[{s}].name"),
                    "must be a non-empty name without `|`",
                ));
            } else if !names.insert(&subset.name) {
                out.push(problem(
                    dr,
                    K,
                    format!("spec.subsets[{s}].name"),
                    format!("subset {} is defined twice", subset.name),
                ));
            }
        }
        let policies = std::iter::once(("spec.trafficPolicy".to_owned(), &dr.spec.traffic_policy))
            .chain(dr.spec.subsets.iter().enumerate().map(|(s, sub)| {
                (
                    format!("spec.subsets[{s}].trafficPolicy"),
                    &sub.traffic_policy,
                )
            }));
        for (field, policy) in policies {
            let header = policy
                .as_ref()
                .and_then(|p| p.load_balancer.as_ref())
                .and_then(|lb| lb.consistent_hash.as_ref())
                .and_then(|ch| ch.http_header_name.as_deref());
            if let Some(h) = header {
                if header_name(h).is_none() {
                    out.push(problem(
                        dr,
                        K,
                        format!("{field}.loadBalancer.consistentHash.httpHeaderName"),
                        format!("`{h}` is not a valid header name"),
                    ));
                }
            }
            for (name, d) in durations(policy) {
                if crate::translate::duration(d).is_none() {
                    out.push(problem(
                        dr,
                        K,
                        format!("{field}.{name}"),
                        format!("`{d}` is not a duration like `1s` or `250ms`"),
                    ));
                }
            }
        }
    }

    let mut router_owner: BTreeMap<(&str, String), String> = BTreeMap::new();
    for mr in &inputs.routers {
        const K: &str = "MetaRouter";
        let check_dest = |out: &mut Vec<Problem>, field: String, d: &Destination| {
            let Some((_, host_ports)) = hosts.get(d.host.as_str()) else {
                out.push(problem(
                    mr,
                    K,
                    format!("{field}.host"),
                    format!(
                        "host `{}` is not a host of any ServiceEntry with a tcp-metaprotocol-* port",
                        d.host
                    ),
                ));
                return;
            };
            if let Some(port) = d.port.as_ref().filter(|p| p.number != 0) {
                if !host_ports.contains(&port.number) {
                    out.push(problem(
                        mr,
                        K,
                        format!("{field}.port.number"),
                        format!("{} has no Meltemi port {}", d.host, port.number),
                    ));
                }
            }
            if let Some(subset) = d.subset.as_deref().filter(|s| !s.is_empty()) {
                let found = subsets
                    .get(d.host.as_str())
                    .is_some_and(|s| s.contains(subset));
                if !found {
                    out.push(problem(
                        mr,
                        K,
                        format!("{field}.subset"),
                        format!(
                            "subset `{subset}` is not defined by a DestinationRule for {}",
                            d.host
                        ),
                    ));
                }
            }
        };
        if mr.spec.hosts.len() != 1 {
            out.push(problem(
                mr,
                K,
                "spec.hosts",
                format!(
                    "exactly one host is required, found {}",
                    mr.spec.hosts.len()
                ),
            ));
            continue;
        }
        let host = mr.spec.hosts[0].as_str();
        if !hosts.contains_key(host) {
            out.push(problem(
                mr,
                K,
                "spec.hosts[0]",
                format!("host `{host}` is not a host of any ServiceEntry with a tcp-metaprotocol-* port"),
            ));
        }
        // One router per host and scope (the mesh, each gateway: `gateway::scopes`).
        for scope in crate::gateway::scopes(mr) {
            if let Some(other) = router_owner.get(&(host, scope.clone())) {
                out.push(problem(
                    mr,
                    K,
                    "spec.hosts[0]",
                    format!("host {host} is already routed by {other}; merge the two MetaRouters"),
                ));
                break;
            }
            router_owner.insert((host, scope), mr.id(K));
        }
        if mr.spec.routes.is_empty() {
            out.push(problem(
                mr,
                K,
                "spec.routes",
                "at least one route is required",
            ));
        }
        let last = mr.spec.routes.len().saturating_sub(1);
        for (r, route) in mr.spec.routes.iter().enumerate() {
            let field = format!("spec.routes[{r}]");
            let has_match = route
                .matches
                .as_ref()
                .is_some_and(|m| !m.attributes.is_empty());
            if !has_match && r != last {
                out.push(problem(
                    mr,
                    K,
                    format!("{field}.match"),
                    "only the last route may match every request: the routes after it would never be used",
                ));
            }
            if let Some(m) = &route.matches {
                for (key, sm) in &m.attributes {
                    let f = format!("{field}.match.attributes.{key}");
                    if header_name(key).is_none() {
                        out.push(problem(
                            mr,
                            K,
                            &f,
                            format!("`{key}` cannot be matched: not a valid header name"),
                        ));
                    }
                    if let Some(sm) = sm {
                        check_string_match(&mut out, mr, &f, sm);
                    }
                }
            }
            if route.route.is_empty() {
                out.push(problem(
                    mr,
                    K,
                    format!("{field}.route"),
                    "at least one destination is required",
                ));
            }
            if route.route.len() > 1 {
                let sum: u64 = route.route.iter().map(|d| u64::from(d.weight)).sum();
                if sum != 100 {
                    out.push(problem(
                        mr,
                        K,
                        format!("{field}.route"),
                        format!("weights sum to {sum}, they must sum to 100"),
                    ));
                }
            }
            for (d, dest) in route.route.iter().enumerate() {
                check_dest(
                    &mut out,
                    format!("{field}.route[{d}].destination"),
                    &dest.destination,
                );
            }
            if let Some(m) = &route.mirror {
                check_dest(&mut out, format!("{field}.mirror"), m);
            }
            if let Some(p) = &route.mirror_percentage {
                if !(0.0..=100.0).contains(&p.value) {
                    out.push(problem(
                        mr,
                        K,
                        format!("{field}.mirrorPercentage.value"),
                        "must be 0..100",
                    ));
                }
            }
            for (list, name) in [
                (&route.request_mutation, "requestMutation"),
                (&route.response_mutation, "responseMutation"),
            ] {
                for (k, kv) in list.iter().enumerate() {
                    if kv.key.is_empty() {
                        out.push(problem(
                            mr,
                            K,
                            format!("{field}.{name}[{k}].key"),
                            "missing",
                        ));
                    }
                }
            }
        }
    }
    crate::authz::validate(inputs, &mut out);
    out.extend(crate::policy::validate(inputs));
    crate::gateway::validate(inputs, &known, &mut out);
    out.extend(crate::telemetry::validate(inputs));
    out.extend(crate::ratelimit::validate::validate(inputs));
    out
}

fn check_string_match<T>(out: &mut Vec<Problem>, mr: &Object<T>, field: &str, sm: &StringMatch) {
    let set = [sm.exact.is_some(), sm.prefix.is_some(), sm.regex.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set > 1 {
        out.push(problem(
            mr,
            "MetaRouter",
            field,
            "give one of exact, prefix, regex",
        ));
    }
    if let Some(re) = sm.regex.as_deref().filter(|r| *r != "*") {
        if let Err(e) = regex::Regex::new(re) {
            out.push(problem(
                mr,
                "MetaRouter",
                format!("{field}.regex"),
                format!("invalid regex: {e}"),
            ));
        }
    }
}

fn durations(policy: &Option<crate::model::TrafficPolicy>) -> Vec<(&'static str, &str)> {
    let mut out = Vec::new();
    let Some(p) = policy else { return out };
    if let Some(t) = p.connection_pool.as_ref().and_then(|c| c.tcp.as_ref()) {
        if let Some(d) = &t.connect_timeout {
            out.push(("connectionPool.tcp.connectTimeout", d.as_str()));
        }
    }
    if let Some(o) = &p.outlier_detection {
        if let Some(d) = &o.interval {
            out.push(("outlierDetection.interval", d.as_str()));
        }
        if let Some(d) = &o.base_ejection_time {
            out.push(("outlierDetection.baseEjectionTime", d.as_str()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{load_text, Loaded};
    use crate::translate::tests::DEMO;

    fn problems(extra: &str) -> Vec<String> {
        let mut loaded = Loaded::default();
        load_text("d.yaml", &format!("{DEMO}\n---\n{extra}"), &mut loaded);
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        validate(&loaded.inputs)
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn the_demo_is_valid() {
        assert_eq!(problems(""), Vec::<String>::new());
    }

    #[test]
    fn rejections_name_resource_and_field() {
        let p = problems(
            r#"
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {name: second, namespace: meta}
spec:
  hosts: [demo]
  routes:
  - route: [{destination: {host: demo}}]
  - match: {attributes: {method: {exact: a, prefix: b}, user: {regex: "("}}}
    route:
    - {destination: {host: nowhere}, weight: 50}
    - {destination: {host: demo, subset: v9, port: {number: 1}}, weight: 40}
    mirror: {host: demo}
    mirrorPercentage: {value: 120}
    requestMutation: [{key: "", value: x}]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: other, namespace: meta}
spec:
  hosts: [demo, other]
  ports:
  - {number: 9000, name: tcp-metaprotocol-thrift-x}
  - {number: 9001, name: tcp-metaprotocol-kafka}
  endpoints: [{address: db.example}]
"#,
        );
        let want = [
            "MetaRouter meta/second: field `spec.hosts[0]`: host demo is already routed by MetaRouter meta/demo",
            "MetaRouter meta/second: field `spec.routes[0].match`: only the last route",
            "field `spec.routes[1].match.attributes.method`: give one of exact, prefix, regex",
            "field `spec.routes[1].match.attributes.user.regex`: invalid regex",
            "field `spec.routes[1].route`: weights sum to 90",
            "field `spec.routes[1].route[0].destination.host`: host `nowhere` is not a host",
            "field `spec.routes[1].route[1].destination.port.number`: demo has no Meltemi port 1",
            "field `spec.routes[1].route[1].destination.subset`: subset `v9` is not defined",
            "field `spec.routes[1].mirrorPercentage.value`: must be 0..100",
            "field `spec.routes[1].requestMutation[0].key`: missing",
            "ServiceEntry meta/other: field `spec.ports[0].number`: port 9000 carries `thrift` here but `minirpc`",
            "ServiceEntry meta/other: field `spec.ports[1].name`: protocol `kafka` is unknown",
            "ServiceEntry meta/other: field `spec.hosts[0]`: host demo is already defined by ServiceEntry meta/demo",
            "ServiceEntry meta/other: field `spec.endpoints[0].address`: `db.example` is not an IP address",
        ];
        for w in want {
            assert!(
                p.iter().any(|p| p.contains(w)),
                "missing {w:?} in:\n{}",
                p.join("\n")
            );
        }
        assert!(
            p.iter().all(|p| p.starts_with("d.yaml (document ")),
            "{p:?}"
        );
        assert_eq!(p.len(), want.len(), "{}", p.join("\n"));
    }

    #[test]
    fn one_host_per_router() {
        let p = problems(
            "apiVersion: metaprotocol.aeraki.io/v1alpha1\nkind: MetaRouter\nmetadata: {name: two}\nspec:\n  hosts: [a, b]\n  routes: []\n",
        );
        assert!(
            p.iter().any(|p| p.contains(
                "MetaRouter default/two: field `spec.hosts`: exactly one host is required, found 2"
            )),
            "{p:?}"
        );
    }
}
