//! `globalRateLimit` → Envoy: what one port's listener and routes get.
//!
//! - The HCM gets one `envoy.filters.http.ratelimit` per distinct (domain, service cluster,
//!   timeout, deny on fail) among the port's MetaRouters, each on its own `stage`, inserted
//!   before the router. Most ports have one service and so one filter.
//! - Each route of a host with a `globalRateLimit` gets `rate_limits` on that stage: one
//!   `request_headers` action per Aeraki descriptor, each its own descriptor (Aeraki sends one
//!   descriptor per entry), reading the metadata header the front writes for `property`.
//! - `match` cannot be a rate limit action without adding an entry of its own to the
//!   descriptor (`header_value_match` does), which would change what the service sees from
//!   Aeraki's `[(descriptorKey, value)]`. So a limited route with a `match` is split in two:
//!   first a copy that also requires the match and carries the `rate_limits`, then the route
//!   as it was, without them. Calls that do not match are routed as before and never reach
//!   the rate limit service.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::GlobalRateLimit;
use crate::model::MetaRouteMatch;
use crate::validate::header_name;

/// The cluster Envoy reaches the controller through: every bootstrap the controller renders
/// (`bootstrap --xds`, Istio's `envoyfilter`) has it, so the controller's own rate limit
/// service needs no cluster of its own and each Envoy asks the replica it gets xDS from.
pub const CONTROLLER_CLUSTER: &str = "meltemi_xds";

/// Envoy's largest rate limit `stage` is 10: eleven distinct filters per port at most.
pub const MAX_FILTERS: usize = 11;

/// The `rateLimitService` values that mean "the controller".
pub fn names_controller(service: Option<&str>) -> bool {
    matches!(
        service.map(str::trim),
        None | Some("" | "meltemi-controller" | CONTROLLER_CLUSTER)
    )
}

/// The cluster of the rate limit service a `globalRateLimit` calls.
pub fn service_cluster(rl: &GlobalRateLimit) -> String {
    match rl.rate_limit_service.as_deref() {
        s if names_controller(s) => CONTROLLER_CLUSTER.to_owned(),
        Some(s) => s.trim().to_owned(),
        None => CONTROLLER_CLUSTER.to_owned(),
    }
}

/// What one HCM rate limit filter carries (the rest is per route).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FilterKey {
    /// Domain.
    pub domain: String,
    /// gRPC cluster of the service.
    pub cluster: String,
    /// Envoy duration of the call's timeout (Envoy's default, 20 ms, when `None`).
    pub timeout: Option<String>,
    /// `failure_mode_deny`.
    pub deny: bool,
}

impl FilterKey {
    /// The filter settings of `rl`.
    pub fn of(rl: &GlobalRateLimit) -> FilterKey {
        FilterKey {
            domain: rl.domain.clone(),
            cluster: service_cluster(rl),
            timeout: rl
                .request_timeout
                .as_deref()
                .and_then(super::request_timeout),
            deny: rl.deny_on_fail,
        }
    }
}

/// One port's rate limit filters and which host uses which stage.
#[derive(Debug, Default)]
pub struct PortPlan<'a> {
    filters: Vec<FilterKey>,
    hosts: BTreeMap<&'a str, (usize, &'a GlobalRateLimit)>,
}

/// Plans a port from its services' hosts and their MetaRouters' `globalRateLimit`s.
pub fn plan<'a>(
    services: impl IntoIterator<Item = (&'a str, Option<&'a GlobalRateLimit>)>,
) -> PortPlan<'a> {
    let mut p = PortPlan::default();
    for (host, rl) in services {
        let Some(rl) = rl else { continue };
        let key = FilterKey::of(rl);
        let stage = match p.filters.iter().position(|f| *f == key) {
            Some(i) => i,
            None => {
                p.filters.push(key);
                p.filters.len() - 1
            }
        };
        p.hosts.insert(host, (stage, rl));
    }
    p
}

impl PortPlan<'_> {
    /// The HTTP filters, in stage order.
    pub fn filters(&self) -> Vec<Value> {
        self.filters
            .iter()
            .enumerate()
            .map(|(stage, f)| {
                let mut config = json!({
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                    "domain": f.domain,
                    "stage": stage,
                    "failure_mode_deny": f.deny,
                    // Aeraki answers a call refused because the service failed with the
                    // protocol's over-limit error; 429 is what the front turns into it.
                    "status_on_error": {"code": "TooManyRequests"},
                    "rate_limit_service": {
                        "grpc_service": {"envoy_grpc": {"cluster_name": f.cluster}},
                        "transport_api_version": "V3"
                    }
                });
                if let Some(t) = &f.timeout {
                    config["timeout"] = json!(t);
                }
                json!({"name": format!("meltemi.ratelimit.{stage}"), "typed_config": config})
            })
            .collect()
    }

    /// Puts the filters into `listener`'s HCM, right before the router (the last filter).
    pub fn add_filters(&self, listener: &mut Value) {
        if self.filters.is_empty() {
            return;
        }
        // `get_mut`, not indexing: indexing a JSON object inserts the key it looks for.
        let chains = listener
            .get_mut("filter_chains")
            .and_then(Value::as_array_mut);
        for chain in chains.into_iter().flatten() {
            let filters = chain.get_mut("filters").and_then(Value::as_array_mut);
            for filter in filters.into_iter().flatten() {
                let Some(http) = filter
                    .get_mut("typed_config")
                    .and_then(|c| c.get_mut("http_filters"))
                    .and_then(Value::as_array_mut)
                else {
                    continue;
                };
                let at = http
                    .iter()
                    .position(|f| f["name"] == "envoy.filters.http.router")
                    .unwrap_or(http.len());
                for (i, f) in self.filters().into_iter().enumerate() {
                    http.insert(at + i, f);
                }
            }
        }
    }

    /// `host`'s routes with their rate limits (unchanged when the host has none).
    pub fn routes(&self, host: &str, routes: Vec<Value>) -> Vec<Value> {
        let Some((stage, rl)) = self.hosts.get(host) else {
            return routes;
        };
        let limits = rate_limits(*stage, rl);
        let matchers = rl.matches.as_ref().map(header_matchers).unwrap_or_default();
        let mut out = Vec::with_capacity(routes.len() * 2);
        for route in routes {
            if route.get("route").is_none() {
                out.push(route); // not a forwarding route: nothing is limited there
                continue;
            }
            let mut limited = route.clone();
            limited["route"]["rate_limits"] = limits.clone();
            if matchers.is_empty() {
                out.push(limited);
                continue;
            }
            let mut headers = limited["match"]["headers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            headers.extend(matchers.iter().cloned());
            limited["match"]["headers"] = Value::Array(headers);
            if let Some(name) = route["name"].as_str() {
                limited["name"] = json!(format!("{name}/ratelimit"));
            }
            out.push(limited);
            out.push(route);
        }
        out
    }
}

/// The route's `rate_limits`: one per descriptor, so that each is its own descriptor.
fn rate_limits(stage: usize, rl: &GlobalRateLimit) -> Value {
    rl.descriptors
        .iter()
        .filter_map(|d| {
            let header = header_name(&d.property)?;
            Some(json!({
                "stage": stage,
                "actions": [{"request_headers": {"header_name": header, "descriptor_key": d.descriptor_key}}]
            }))
        })
        .collect()
}

/// A MetaRouter `match` as HCM header matchers (the same rules as routes: exact, prefix,
/// regex, present for no value or regex `*`).
pub fn header_matchers(m: &MetaRouteMatch) -> Vec<Value> {
    m.attributes
        .iter()
        .filter_map(|(key, sm)| {
            let name = header_name(key)?;
            let mut h = json!({"name": name});
            match sm {
                Some(sm) if sm.exact.is_some() => h["string_match"] = json!({"exact": sm.exact}),
                Some(sm) if sm.prefix.is_some() => h["string_match"] = json!({"prefix": sm.prefix}),
                Some(sm) if sm.regex.as_deref().is_some_and(|r| r != "*") => {
                    h["string_match"] = json!({"safe_regex": {"regex": sm.regex}})
                }
                _ => h["present_match"] = json!(true),
            }
            Some(h)
        })
        .collect()
}
