//! Request policies: Aeraki's `MetaRouter.localRateLimit` and Meltemi's own
//! `MetaTrafficPolicy` kind (timeouts, retries, fault injection), validated and translated
//! into Envoy's route features.
//!
//! Aeraki has no kind for timeouts, retries or faults, so Meltemi adds a protocol-neutral one
//! that attaches to MetaRouter hosts (and optionally to named routes of them):
//!
//! ```yaml
//! apiVersion: meltemi.io/v1alpha1
//! kind: MetaTrafficPolicy
//! metadata: {name: echo-slow, namespace: meta}
//! spec:
//!   hosts: [echo]                 # ServiceEntry / MetaRouter hosts
//!   routes: [slow]                # MetaRouter route names; absent = every route of the hosts
//!   timeout: 500ms
//!   retries: {attempts: 2, perTryTimeout: 200ms, retryOn: [connect-failure, reset]}
//!   fault:
//!     abort: {percentage: {value: 100}, errorKind: unavailable}   # or httpStatus: 503
//!     delay: {fixedDelay: 300ms, percentage: {value: 50}}
//! ```
//!
//! Translation: `timeout` and `retries` become the route action's `timeout` and
//! `retry_policy`; `fault` becomes the route's `typed_per_filter_config` for HCM's
//! `envoy.filters.http.fault`; `localRateLimit` becomes the virtual host's
//! `typed_per_filter_config` for `envoy.filters.http.local_ratelimit` (one bucket per host,
//! shared by its routes, as Aeraki's filter keeps one per MetaRouter). Both filters are in every
//! front HCM with a configuration that does nothing, so only the routes' configuration changes
//! when a policy does: an RDS push, no listener change.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::load::Problem;
use crate::model::{
    port_protocol, Inputs, MetaRouteMatch, MetaRouterSpec, Object, Percent, Shared,
};
use crate::translate::duration;
use crate::validate::header_name;

pub use crate::model::MELTEMI_API;
/// The kind of [`MetaTrafficPolicySpec`].
pub const KIND: &str = "MetaTrafficPolicy";

/// HCM filter name of fault injection.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// HCM filter name of the local rate limit.
pub const LOCAL_RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const LRL_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
/// Descriptor key of the Aeraki condition a request matched.
const CONDITION_KEY: &str = "meltemi_condition";

/// `MetaTrafficPolicy.spec`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct MetaTrafficPolicySpec {
    /// Hosts (MetaRouter / ServiceEntry hosts) whose routes the policy applies to.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Names of MetaRouter routes; empty = every route of the hosts (without a MetaRouter the
    /// host's only route is `default`). A policy naming a route wins over one for the host.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Whole-call timeout (`500ms`, `2s`); Envoy's default is 15 s.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Retries.
    #[serde(default)]
    pub retries: Option<Retries>,
    /// Fault injection.
    #[serde(default)]
    pub fault: Option<Fault>,
}

/// `retries`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first try (Istio's meaning).
    #[serde(default)]
    pub attempts: u32,
    /// Timeout of each try.
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// Conditions: see [`RETRY_ON`].
    #[serde(default)]
    pub retry_on: Vec<String>,
}

/// `retryOn` values and what Envoy retries on for them.
pub const RETRY_ON: &[(&str, &str)] = &[
    // The server could not be connected to (native back: the router's own connection).
    ("connect-failure", "connect-failure"),
    // The connection broke before an answer (also how a connect failure behind the wasm
    // back's internal listener shows).
    ("reset", "reset"),
    // The local replies Envoy or the back give when no server could answer (502, 503, 504).
    ("gateway-error", "gateway-error"),
    // 503: no healthy upstream, circuit breaker overflow.
    ("unavailable", "retriable-status-codes"),
    // Any 5xx local reply.
    ("5xx", "5xx"),
];

/// `fault`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Answer with an error instead of calling the server.
    #[serde(default)]
    pub abort: Option<Abort>,
    /// Wait before calling the server.
    #[serde(default)]
    pub delay: Option<Delay>,
}

/// `fault.abort`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct Abort {
    /// Share of calls aborted (100 when absent).
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// The protocol error the client gets: see [`ERROR_KINDS`].
    #[serde(default)]
    pub error_kind: Option<String>,
    /// Or the HTTP status of Envoy's local reply, which the codec turns into its error.
    #[serde(default)]
    pub http_status: Option<u32>,
}

/// `errorKind` values and the local-reply status the codecs turn into that error.
pub const ERROR_KINDS: &[(&str, u32)] = &[
    ("unavailable", 503),
    ("timeout", 504),
    ("over-limit", 429),
    ("unauthorized", 403),
    ("route-not-found", 404),
    ("bad-request", 400),
    ("internal", 500),
];

/// `fault.delay`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct Delay {
    /// How long (`300ms`).
    #[serde(default)]
    pub fixed_delay: Option<String>,
    /// Share of calls delayed (100 when absent).
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// Aeraki's `MetaRouter.localRateLimit`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct LocalRateLimit {
    /// Bucket for the calls that match no condition (none: they are not limited).
    #[serde(default)]
    pub token_bucket: Option<TokenBucket>,
    /// Conditions, the first match is used; each has its own bucket.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A token bucket.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// How often tokens are added (`60s`; at least 50 ms, as Envoy requires).
    #[serde(default)]
    pub fill_interval: Option<String>,
    /// Bucket size (and the tokens it starts with).
    #[serde(default)]
    pub max_tokens: u32,
    /// Tokens added each interval (1 when absent, Envoy's default).
    #[serde(default)]
    pub tokens_per_fill: Option<u32>,
}

/// One `localRateLimit.conditions[]` entry.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Which calls (every attribute must match).
    #[serde(default, rename = "match")]
    pub matches: Option<MetaRouteMatch>,
    /// Their bucket.
    #[serde(default)]
    pub token_bucket: Option<TokenBucket>,
}

/// The typed `localRateLimit` of a MetaRouter, or the error naming the field inside it.
pub fn local_rate_limit(spec: &MetaRouterSpec) -> Result<Option<LocalRateLimit>, (String, String)> {
    let Some(v) = spec.local_rate_limit.as_ref().filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    serde_path_to_error::deserialize(v.clone())
        .map(Some)
        .map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "spec.localRateLimit".to_owned()
            } else {
                format!("spec.localRateLimit.{path}")
            };
            (field, e.inner().to_string())
        })
}

/// The HTTP filters the front HCM runs for these policies, before the router: each with a
/// configuration that does nothing until a route or virtual host configures it.
pub fn http_filters() -> [Value; 2] {
    [
        json!({
            "name": LOCAL_RATE_LIMIT_FILTER,
            "typed_config": {"@type": LRL_TYPE, "stat_prefix": "meltemi_rate_limit"}
        }),
        json!({"name": FAULT_FILTER, "typed_config": {"@type": FAULT_TYPE}}),
    ]
}

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

fn percent_ok(p: &Option<Percent>) -> bool {
    p.as_ref()
        .is_none_or(|p| p.value.is_finite() && (0.0..=100.0).contains(&p.value))
}

/// Problems of the MetaRouters' `localRateLimit` and of every `MetaTrafficPolicy`.
pub fn validate(inputs: &Inputs) -> Vec<Problem> {
    let mut out = Vec::new();
    for mr in &inputs.routers {
        let lrl = match local_rate_limit(&mr.spec) {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err((field, msg)) => {
                out.push(problem(mr, "MetaRouter", field, msg));
                continue;
            }
        };
        let bucket = |field: String, b: &TokenBucket, out: &mut Vec<Problem>| {
            if b.max_tokens == 0 {
                out.push(problem(
                    mr,
                    "MetaRouter",
                    format!("{field}.maxTokens"),
                    "must be at least 1",
                ));
            }
            if b.tokens_per_fill == Some(0) {
                out.push(problem(
                    mr,
                    "MetaRouter",
                    format!("{field}.tokensPerFill"),
                    "must be at least 1",
                ));
            }
            match b.fill_interval.as_deref() {
                None => out.push(problem(
                    mr,
                    "MetaRouter",
                    format!("{field}.fillInterval"),
                    "missing",
                )),
                Some(d) => match duration_secs(d) {
                    Some(s) if s >= 0.05 => {}
                    Some(_) => out.push(problem(
                        mr,
                        "MetaRouter",
                        format!("{field}.fillInterval"),
                        "must be at least 50ms (Envoy's minimum)",
                    )),
                    None => out.push(problem(
                        mr,
                        "MetaRouter",
                        format!("{field}.fillInterval"),
                        format!("`{d}` is not a duration like `1s` or `250ms`"),
                    )),
                },
            }
        };
        if let Some(b) = &lrl.token_bucket {
            bucket("spec.localRateLimit.tokenBucket".into(), b, &mut out);
        }
        if lrl.token_bucket.is_none() && lrl.conditions.is_empty() {
            out.push(problem(
                mr,
                "MetaRouter",
                "spec.localRateLimit",
                "give a tokenBucket, conditions, or both",
            ));
        }
        for (i, c) in lrl.conditions.iter().enumerate() {
            let field = format!("spec.localRateLimit.conditions[{i}]");
            match &c.token_bucket {
                Some(b) => bucket(format!("{field}.tokenBucket"), b, &mut out),
                None => out.push(problem(
                    mr,
                    "MetaRouter",
                    format!("{field}.tokenBucket"),
                    "missing",
                )),
            }
            let attrs = c.matches.as_ref().map(|m| &m.attributes);
            if attrs.is_none_or(|a| a.is_empty()) {
                out.push(problem(
                    mr,
                    "MetaRouter",
                    format!("{field}.match"),
                    "a condition needs at least one attribute (the top-level tokenBucket limits every call)",
                ));
            }
            for (key, sm) in attrs.into_iter().flatten() {
                let f = format!("{field}.match.attributes.{key}");
                if header_name(key).is_none() {
                    out.push(problem(
                        mr,
                        "MetaRouter",
                        &f,
                        format!("`{key}` cannot be matched: not a valid header name"),
                    ));
                }
                if let Some(sm) = sm {
                    let set = [sm.exact.is_some(), sm.prefix.is_some(), sm.regex.is_some()];
                    if set.iter().filter(|b| **b).count() > 1 {
                        out.push(problem(
                            mr,
                            "MetaRouter",
                            &f,
                            "give one of exact, prefix, regex",
                        ));
                    }
                    if let Some(re) = sm.regex.as_deref().filter(|r| *r != "*") {
                        if let Err(e) = regex::Regex::new(re) {
                            out.push(problem(
                                mr,
                                "MetaRouter",
                                format!("{f}.regex"),
                                format!("invalid regex: {e}"),
                            ));
                        }
                    }
                }
            }
        }
    }

    // host → route names (None: no MetaRouter, only `default`).
    let mut hosts: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for se in &inputs.service_entries {
        if se
            .spec
            .ports
            .iter()
            .any(|p| port_protocol(&p.name).is_some())
        {
            for h in &se.spec.hosts {
                hosts.entry(h).or_insert_with(|| ["default"].into());
            }
        }
    }
    for mr in &inputs.routers {
        if let Some(h) = mr.spec.hosts.first() {
            if let Some(names) = hosts.get_mut(h.as_str()) {
                *names = mr
                    .spec
                    .routes
                    .iter()
                    .filter_map(|r| r.name.as_deref())
                    .collect();
            }
        }
    }
    // (host, route or "" for the host) → first policy claiming it.
    let mut owner: BTreeMap<(&str, &str), String> = BTreeMap::new();
    for p in &inputs.traffic_policies {
        let s = &p.spec;
        if s.hosts.is_empty() {
            out.push(problem(
                p,
                KIND,
                "spec.hosts",
                "at least one host is required",
            ));
        }
        for (i, h) in s.hosts.iter().enumerate() {
            let Some(names) = hosts.get(h.as_str()) else {
                out.push(problem(
                    p,
                    KIND,
                    format!("spec.hosts[{i}]"),
                    format!("host `{h}` is not a host of any ServiceEntry with a tcp-metaprotocol-* port"),
                ));
                continue;
            };
            for (r, name) in s.routes.iter().enumerate() {
                if !names.contains(name.as_str()) {
                    out.push(problem(
                        p,
                        KIND,
                        format!("spec.routes[{r}]"),
                        format!(
                            "host {h} has no route named `{name}` (its routes: {})",
                            names.iter().copied().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
            let scopes: Vec<&str> = if s.routes.is_empty() {
                vec![""]
            } else {
                s.routes.iter().map(String::as_str).collect()
            };
            for scope in scopes {
                if let Some(other) = owner.get(&(h.as_str(), scope)) {
                    let what = if scope.is_empty() {
                        format!("host {h}")
                    } else {
                        format!("route {scope} of host {h}")
                    };
                    out.push(problem(
                        p,
                        KIND,
                        if scope.is_empty() {
                            "spec.hosts".to_owned()
                        } else {
                            "spec.routes".to_owned()
                        },
                        format!("{what} already has {other}; merge the two policies"),
                    ));
                } else {
                    owner.insert((h.as_str(), scope), p.id(KIND));
                }
            }
        }
        let check_duration = |field: &str, d: &Option<String>, out: &mut Vec<Problem>| {
            if let Some(d) = d {
                if !duration_secs(d).is_some_and(|s| s > 0.0) {
                    out.push(problem(
                        p,
                        KIND,
                        field,
                        format!("`{d}` is not a positive duration like `1s` or `250ms`"),
                    ));
                }
            }
        };
        check_duration("spec.timeout", &s.timeout, &mut out);
        if let Some(r) = &s.retries {
            check_duration("spec.retries.perTryTimeout", &r.per_try_timeout, &mut out);
            if r.attempts == 0 {
                out.push(problem(
                    p,
                    KIND,
                    "spec.retries.attempts",
                    "must be at least 1",
                ));
            }
            if r.retry_on.is_empty() {
                out.push(problem(
                    p,
                    KIND,
                    "spec.retries.retryOn",
                    "give at least one condition",
                ));
            }
            for (i, on) in r.retry_on.iter().enumerate() {
                if !RETRY_ON.iter().any(|(k, _)| k == on) {
                    out.push(problem(
                        p,
                        KIND,
                        format!("spec.retries.retryOn[{i}]"),
                        format!(
                            "`{on}` is unknown: known are {}",
                            RETRY_ON
                                .iter()
                                .map(|(k, _)| *k)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
        if let Some(f) = &s.fault {
            if f.abort.is_none() && f.delay.is_none() {
                out.push(problem(p, KIND, "spec.fault", "give abort, delay, or both"));
            }
            if let Some(a) = &f.abort {
                if !percent_ok(&a.percentage) {
                    out.push(problem(
                        p,
                        KIND,
                        "spec.fault.abort.percentage.value",
                        "must be 0..=100",
                    ));
                }
                match (&a.error_kind, a.http_status) {
                    (Some(_), Some(_)) | (None, None) => out.push(problem(
                        p,
                        KIND,
                        "spec.fault.abort",
                        "give one of errorKind, httpStatus",
                    )),
                    (Some(k), None) if !ERROR_KINDS.iter().any(|(n, _)| n == k) => {
                        out.push(problem(
                            p,
                            KIND,
                            "spec.fault.abort.errorKind",
                            format!(
                                "`{k}` is unknown: known are {}",
                                ERROR_KINDS
                                    .iter()
                                    .map(|(n, _)| *n)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ))
                    }
                    (None, Some(st)) if !(200..600).contains(&st) => out.push(problem(
                        p,
                        KIND,
                        "spec.fault.abort.httpStatus",
                        "must be 200..599",
                    )),
                    _ => {}
                }
            }
            if let Some(d) = &f.delay {
                if !percent_ok(&d.percentage) {
                    out.push(problem(
                        p,
                        KIND,
                        "spec.fault.delay.percentage.value",
                        "must be 0..=100",
                    ));
                }
                if d.fixed_delay.is_none() {
                    out.push(problem(p, KIND, "spec.fault.delay.fixedDelay", "missing"));
                }
                check_duration("spec.fault.delay.fixedDelay", &d.fixed_delay, &mut out);
            }
        }
    }
    out
}

fn duration_secs(d: &str) -> Option<f64> {
    duration(d)?.strip_suffix('s')?.parse().ok()
}

/// The policies that may apply to `host`'s routes.
pub fn for_host<'a>(
    policies: &'a [Shared<MetaTrafficPolicySpec>],
    host: &str,
) -> Vec<&'a Shared<MetaTrafficPolicySpec>> {
    policies
        .iter()
        .filter(|p| p.spec.hosts.iter().any(|h| h == host))
        .collect()
}

/// Applies the policies and the MetaRouter's local rate limit to one virtual host as
/// translation built it (`routes` carrying the MetaRouter route names).
pub fn decorate_vhost(
    vhost: &mut Value,
    host: &str,
    router: Option<&MetaRouterSpec>,
    policies: &[&Shared<MetaTrafficPolicySpec>],
) {
    if let Some(Ok(Some(lrl))) = router.map(local_rate_limit) {
        vhost["typed_per_filter_config"] =
            json!({ LOCAL_RATE_LIMIT_FILTER: rate_limit_config(host, &lrl) });
    }
    let Some(routes) = vhost["routes"].as_array_mut() else {
        return;
    };
    for route in routes {
        let name = route["name"].as_str().unwrap_or("").to_owned();
        // A policy naming the route wins over one for the whole host.
        let named = policies.iter().find(|p| p.spec.routes.contains(&name));
        let host_wide = policies.iter().find(|p| p.spec.routes.is_empty());
        if let Some(p) = named.or(host_wide) {
            apply_route(route, &p.spec);
        }
    }
}

fn fraction(p: &Option<Percent>) -> Value {
    let v = p.as_ref().map_or(100.0, |p| p.value);
    json!({"numerator": (v * 10_000.0).round() as u64, "denominator": "MILLION"})
}

/// Writes one policy into a route.
fn apply_route(route: &mut Value, p: &MetaTrafficPolicySpec) {
    if route.get("route").is_none() {
        return; // a direct response: nothing to time out, retry or fault
    }
    if let Some(t) = p.timeout.as_deref().and_then(duration) {
        route["route"]["timeout"] = json!(t);
    }
    if let Some(r) = &p.retries {
        let mut on: Vec<&str> = Vec::new();
        for c in &r.retry_on {
            if let Some((_, e)) = RETRY_ON.iter().find(|(k, _)| k == c) {
                if !on.contains(e) {
                    on.push(e);
                }
            }
        }
        let mut policy = json!({
            "retry_on": on.join(","),
            "num_retries": r.attempts,
            // Another host for each retry when there is one (a dead endpoint is skipped).
            "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}
            }],
            "host_selection_retry_max_attempts": 5,
            // Never a one-way call: the client cannot tell a duplicate, and a reset after the
            // server read it would deliver it twice.
            "retriable_request_headers": [{
                "name": meltemi_sdk::bridge::KIND_HEADER,
                "string_match": {"exact": "oneway"},
                "invert_match": true
            }]
        });
        if on.contains(&"retriable-status-codes") {
            policy["retriable_status_codes"] = json!([503]);
        }
        if let Some(t) = r.per_try_timeout.as_deref().and_then(duration) {
            policy["per_try_timeout"] = json!(t);
        }
        route["route"]["retry_policy"] = policy;
    }
    if let Some(f) = &p.fault {
        let mut fault = json!({"@type": FAULT_TYPE});
        if let Some(a) = &f.abort {
            let status = a.http_status.or_else(|| {
                let k = a.error_kind.as_deref()?;
                ERROR_KINDS.iter().find(|(n, _)| *n == k).map(|(_, s)| *s)
            });
            fault["abort"] = json!({"http_status": status.unwrap_or(503), "percentage": fraction(&a.percentage)});
        }
        if let Some(d) = &f.delay {
            if let Some(t) = d.fixed_delay.as_deref().and_then(duration) {
                fault["delay"] = json!({"fixed_delay": t, "percentage": fraction(&d.percentage)});
            }
        }
        route["typed_per_filter_config"] = json!({ FAULT_FILTER: fault });
    }
}

/// `connectionPool.http.maxRequestsPerConnection` on the cluster the router uses: HTTP/1.1
/// toward the back, as before, with Envoy's per-connection request limit.
pub fn max_requests_per_connection(cluster: &mut Value, n: u32) {
    cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": {"max_requests_per_connection": n},
            "explicit_http_config": {"http_protocol_options": {}}
        }
    });
}

fn bucket(b: &TokenBucket) -> Value {
    json!({
        "max_tokens": b.max_tokens,
        "tokens_per_fill": b.tokens_per_fill.unwrap_or(1),
        "fill_interval": b.fill_interval.as_deref().and_then(duration).unwrap_or_else(|| "1s".into())
    })
}

/// Header matchers of a condition (as routes match metadata).
fn matchers(m: &MetaRouteMatch) -> Vec<Value> {
    m.attributes
        .iter()
        .filter_map(|(key, sm)| {
            let mut h = json!({"name": header_name(key)?});
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

/// The local rate limit of one host with Aeraki's semantics: the first matching condition's
/// bucket, else the top-level bucket, else no limit. Envoy consumes every matching
/// descriptor, so condition `i`'s descriptor also requires that conditions `0..i` did not
/// match (a `header_value_match` with `expect_match: false` per earlier condition).
fn rate_limit_config(host: &str, lrl: &LocalRateLimit) -> Value {
    let stat: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    // Calls matching no condition are not limited without a top-level bucket: a bucket that
    // never runs dry (Envoy requires one).
    let default = lrl.token_bucket.as_ref().map_or_else(
        || json!({"max_tokens": u32::MAX, "tokens_per_fill": u32::MAX, "fill_interval": "1s"}),
        bucket,
    );
    let mut descriptors = Vec::new();
    let mut rate_limits = Vec::new();
    for (i, c) in lrl.conditions.iter().enumerate() {
        let (Some(m), Some(b)) = (&c.matches, &c.token_bucket) else {
            continue;
        };
        let mut entries = vec![json!({"key": CONDITION_KEY, "value": i.to_string()})];
        let mut actions = vec![json!({"header_value_match": {
            "descriptor_key": CONDITION_KEY,
            "descriptor_value": i.to_string(),
            "headers": matchers(m)
        }})];
        for (j, earlier) in lrl.conditions.iter().enumerate().take(i) {
            let Some(em) = &earlier.matches else { continue };
            let key = format!("meltemi_not_{j}");
            entries.push(json!({"key": key, "value": "1"}));
            actions.push(json!({"header_value_match": {
                "descriptor_key": key,
                "descriptor_value": "1",
                "expect_match": false,
                "headers": matchers(em)
            }}));
        }
        descriptors.push(json!({"entries": entries, "token_bucket": bucket(b)}));
        rate_limits.push(json!({"actions": actions}));
    }
    let hundred = |key: &str| json!({"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": key});
    let mut config = json!({
        "@type": LRL_TYPE,
        "stat_prefix": format!("meltemi_rate_limit_{stat}"),
        "token_bucket": default,
        "filter_enabled": hundred("meltemi_rate_limit_enabled"),
        "filter_enforced": hundred("meltemi_rate_limit_enforced"),
        // Aeraki: a call that matched a condition is charged to that condition's bucket only.
        "always_consume_default_token_bucket": false
    });
    if !descriptors.is_empty() {
        config["descriptors"] = Value::Array(descriptors);
        config["rate_limits"] = Value::Array(rate_limits);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::tests::{inputs, options, DEMO};
    use crate::translate::{translate, translate_cached, Cache};

    const POLICY: &str = r#"
---
apiVersion: meltemi.io/v1alpha1
kind: MetaTrafficPolicy
metadata: {name: split, namespace: meta}
spec:
  hosts: [demo]
  routes: [split]
  timeout: 500ms
  retries: {attempts: 2, perTryTimeout: 200ms, retryOn: [connect-failure, reset, unavailable]}
  fault:
    abort: {percentage: {value: 25}, errorKind: over-limit}
    delay: {fixedDelay: 1.5s}
---
apiVersion: meltemi.io/v1alpha1
kind: MetaTrafficPolicy
metadata: {name: all, namespace: meta}
spec:
  hosts: [demo]
  timeout: 3s
"#;

    fn with_rate_limit(lrl: &str) -> String {
        DEMO.replacen(
            "  hosts: [demo]\n  routes:\n",
            &format!("  hosts: [demo]\n  localRateLimit:\n{lrl}  routes:\n"),
            1,
        )
    }

    fn problems(text: &str) -> Vec<String> {
        let mut loaded = crate::load::Loaded::default();
        crate::load::load_text("p.yaml", text, &mut loaded);
        let mut out: Vec<String> = loaded.problems.iter().map(|p| p.to_string()).collect();
        out.extend(
            crate::validate::validate(&loaded.inputs)
                .iter()
                .map(|p| p.to_string()),
        );
        out
    }

    #[test]
    fn policies_become_route_timeouts_retries_and_faults() {
        let r = translate(&inputs(&format!("{DEMO}{POLICY}")), &options()).unwrap();
        let routes = &r.routes["meltemi_9000"]["virtual_hosts"][1]["routes"];
        // The host-wide policy: only a timeout.
        let by_method = &routes[0];
        assert_eq!(by_method["route"]["timeout"], "3s");
        assert!(by_method["route"].get("retry_policy").is_none());
        assert!(by_method.get("typed_per_filter_config").is_none());
        // The route's own policy wins.
        let split = &routes[1];
        assert_eq!(split["route"]["timeout"], "0.5s");
        let retry = &split["route"]["retry_policy"];
        assert_eq!(
            retry["retry_on"],
            "connect-failure,reset,retriable-status-codes"
        );
        assert_eq!(retry["num_retries"], 2);
        assert_eq!(retry["per_try_timeout"], "0.2s");
        assert_eq!(retry["retriable_status_codes"][0], 503);
        assert_eq!(
            retry["retriable_request_headers"][0]["name"],
            "x-meltemi-kind"
        );
        assert_eq!(retry["retriable_request_headers"][0]["invert_match"], true);
        let fault = &split["typed_per_filter_config"][FAULT_FILTER];
        assert_eq!(fault["abort"]["http_status"], 429);
        assert_eq!(fault["abort"]["percentage"]["numerator"], 250_000);
        assert_eq!(fault["delay"]["fixed_delay"], "1.5s");
        assert_eq!(fault["delay"]["percentage"]["numerator"], 1_000_000);
        // Every front HCM has both filters, doing nothing by themselves, before the router.
        let hcm = &r.listeners["127.0.0.1_9000"]["filter_chains"][0]["filters"][1]["typed_config"];
        let names: Vec<&str> = hcm["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "envoy.filters.http.buffer",
                "envoy.filters.http.set_filter_state",
                "meltemi.authz.deny",
                "meltemi.authz.allow",
                "envoy.filters.http.local_ratelimit",
                "envoy.filters.http.fault",
                "envoy.filters.http.router"
            ]
        );
        crate::xds::Snapshot::new(&r, std::time::Instant::now()).unwrap();
    }

    #[test]
    fn local_rate_limit_with_aeraki_first_match_conditions() {
        let text = with_rate_limit(
            "    tokenBucket: {fillInterval: 60s, maxTokens: 5, tokensPerFill: 5}\n    conditions:\n    - match: {attributes: {method: {exact: sayHello}}}\n      tokenBucket: {fillInterval: 10s, maxTokens: 2}\n    - match: {attributes: {user: {prefix: u}}}\n      tokenBucket: {fillInterval: 1m, maxTokens: 3, tokensPerFill: 3}\n",
        );
        let r = translate(&inputs(&text), &options()).unwrap();
        let vhost = &r.routes["meltemi_9000"]["virtual_hosts"][1];
        let c = &vhost["typed_per_filter_config"][LOCAL_RATE_LIMIT_FILTER];
        assert_eq!(c["stat_prefix"], "meltemi_rate_limit_demo");
        assert_eq!(c["token_bucket"]["max_tokens"], 5);
        assert_eq!(c["token_bucket"]["fill_interval"], "60s");
        assert_eq!(c["descriptors"][0]["token_bucket"]["tokens_per_fill"], 1);
        assert_eq!(c["descriptors"][1]["token_bucket"]["fill_interval"], "60s");
        let first = &c["rate_limits"][0]["actions"];
        assert_eq!(first.as_array().map(Vec::len), Some(1));
        assert_eq!(
            first[0]["header_value_match"]["headers"][0]["name"],
            "method"
        );
        // The second condition applies only where the first did not match.
        let second = &c["rate_limits"][1]["actions"];
        assert_eq!(
            second[0]["header_value_match"]["headers"][0]["string_match"]["prefix"],
            "u"
        );
        assert_eq!(second[1]["header_value_match"]["expect_match"], false);
        assert_eq!(
            second[1]["header_value_match"]["headers"][0]["string_match"]["exact"],
            "sayHello"
        );
        assert_eq!(
            c["descriptors"][1]["entries"],
            json!([{"key": CONDITION_KEY, "value": "1"}, {"key": "meltemi_not_0", "value": "1"}])
        );
        // Conditions only: calls matching none are not limited.
        let text = with_rate_limit(
            "    conditions:\n    - match: {attributes: {method: {exact: sayHello}}}\n      tokenBucket: {fillInterval: 10s, maxTokens: 2}\n",
        );
        let r = translate(&inputs(&text), &options()).unwrap();
        let c = &r.routes["meltemi_9000"]["virtual_hosts"][1]["typed_per_filter_config"]
            [LOCAL_RATE_LIMIT_FILTER];
        assert_eq!(c["token_bucket"]["max_tokens"], u32::MAX);
        crate::xds::Snapshot::new(&r, std::time::Instant::now()).unwrap();
    }

    #[test]
    fn rejections_name_file_resource_and_field() {
        let bad = format!(
            "{}{}",
            with_rate_limit("    tokenBucket: {fillInterval: 10ms, maxTokens: 0}\n    conditions:\n    - tokenBucket: {fillInterval: 1s, maxTokens: 1, burst: 2}\n"),
            r#"
---
apiVersion: meltemi.io/v1alpha1
kind: MetaTrafficPolicy
metadata: {name: bad, namespace: meta}
spec:
  hosts: [demo, nowhere]
  routes: [split, missing]
  timeout: soon
  retries: {attempts: 0, retryOn: [connect-failure, 5xx, sometimes]}
  fault: {abort: {errorKind: boom, percentage: {value: 120}}, delay: {}}
---
apiVersion: meltemi.io/v1alpha1
kind: MetaTrafficPolicy
metadata: {name: twice, namespace: meta}
spec: {hosts: [demo], routes: [split], timeout: 1s}
---
apiVersion: meltemi.io/v1alpha1
kind: MetaTrafficPolicy
metadata: {name: typo, namespace: meta}
spec: {hosts: [demo], timeuot: 1s}
---
apiVersion: meltemi.io/v2
kind: MetaTrafficPolicy
metadata: {name: v2, namespace: meta}
spec: {hosts: [demo]}
"#
        );
        let got = problems(&bad);
        for want in [
            "MetaRouter meta/demo: field `spec.localRateLimit.conditions[0].tokenBucket.burst`: unknown field `burst`",
            "p.yaml (document 7): MetaTrafficPolicy meta/typo: field `spec.timeuot`: unknown field `timeuot`",
            "p.yaml (document 8): MetaTrafficPolicy meta/v2: field `apiVersion`: meltemi.io/v2 is not supported; use meltemi.io/v1alpha1",
            "MetaTrafficPolicy meta/bad: field `spec.hosts[1]`: host `nowhere` is not a host",
            "MetaTrafficPolicy meta/bad: field `spec.routes[1]`: host demo has no route named `missing` (its routes: by-method, split)",
            "MetaTrafficPolicy meta/bad: field `spec.timeout`: `soon` is not a positive duration",
            "MetaTrafficPolicy meta/bad: field `spec.retries.attempts`: must be at least 1",
            "MetaTrafficPolicy meta/bad: field `spec.retries.retryOn[2]`: `sometimes` is unknown",
            "MetaTrafficPolicy meta/bad: field `spec.fault.abort.percentage.value`: must be 0..=100",
            "MetaTrafficPolicy meta/bad: field `spec.fault.abort.errorKind`: `boom` is unknown",
            "MetaTrafficPolicy meta/bad: field `spec.fault.delay.fixedDelay`: missing",
            "MetaTrafficPolicy meta/twice: field `spec.routes`: route split of host demo already has MetaTrafficPolicy meta/bad",
        ] {
            assert!(got.iter().any(|g| g.contains(want)), "missing {want:?} in {got:#?}");
        }
        // The field path inside localRateLimit once the schema fits.
        let got = problems(&with_rate_limit(
            "    tokenBucket: {fillInterval: 10ms, maxTokens: 0}\n    conditions:\n    - tokenBucket: {fillInterval: 1s, maxTokens: 1}\n",
        ));
        for want in [
            "MetaRouter meta/demo: field `spec.localRateLimit.tokenBucket.maxTokens`: must be at least 1",
            "MetaRouter meta/demo: field `spec.localRateLimit.tokenBucket.fillInterval`: must be at least 50ms",
            "MetaRouter meta/demo: field `spec.localRateLimit.conditions[0].match`: a condition needs at least one attribute",
        ] {
            assert!(got.iter().any(|g| g.contains(want)), "missing {want:?} in {got:#?}");
        }
    }

    /// The v1 route's cluster: with the wasm back its endpoints are one hop per server host
    /// when the destination has outlier detection (`hostlb`), and it judges them.
    fn route_v1(r: &crate::translate::Resources) -> &serde_json::Value {
        &r.clusters["outbound|9000|v1|demo"]
    }

    #[test]
    fn destination_rule_pool_and_outlier_settings() {
        let text = DEMO.replace(
            "http: {http1MaxPendingRequests: 5}}",
            "http: {http1MaxPendingRequests: 5, maxRequestsPerConnection: 2}}",
        );
        let mut o = options();
        for build in [crate::template::Build::Wasm, crate::template::Build::Native] {
            o.build = build;
            if let Some(m) = o.modules.get_mut("minirpc") {
                m.native = Some(crate::template::ModuleSource::Local(
                    "meltemi_minirpc".into(),
                ));
            }
            let r = translate(&inputs(&text), &o).unwrap();
            let c = &r.clusters["outbound|9000|v1|demo"];
            assert_eq!(
                c["typed_extension_protocol_options"]
                    ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                    ["common_http_protocol_options"]["max_requests_per_connection"],
                2
            );
            // The route's cluster carries the connection limit on both backs, so that
            // requests queue (and overflow) as pending there.
            let t = &c["circuit_breakers"]["thresholds"][0];
            assert_eq!(
                (
                    t["max_connections"].as_u64(),
                    t["max_pending_requests"].as_u64()
                ),
                (Some(10), Some(5))
            );
            crate::xds::Snapshot::new(&r, std::time::Instant::now()).unwrap();
        }
        // Istio: an unset consecutive5xxErrors disables Envoy's default 5xx detector.
        o.build = crate::template::Build::Wasm;
        let r = translate(&inputs(&text), &o).unwrap();
        let od = &route_v1(&r)["outlier_detection"];
        assert_eq!(od["enforcing_consecutive_5xx"], 0);
        assert_eq!(od["consecutive_gateway_failure"], 3);
        let r = translate(
            &inputs(&text.replace("consecutiveGatewayErrors: 3", "consecutive5xxErrors: 4")),
            &o,
        )
        .unwrap();
        let od = &route_v1(&r)["outlier_detection"];
        assert_eq!(
            (
                od["consecutive_5xx"].as_u64(),
                od["enforcing_consecutive_5xx"].as_u64()
            ),
            (Some(4), Some(100))
        );
    }

    #[test]
    fn a_policy_change_retranslates_its_port() {
        let mut cache = Cache::default();
        let o = options();
        let base = inputs(&format!("{DEMO}{POLICY}"));
        translate_cached(&base, &o, &mut cache).unwrap();
        assert_eq!(cache.translated, 1);
        translate_cached(&base, &o, &mut cache).unwrap();
        assert_eq!(cache.translated, 0, "nothing changed");
        let changed = inputs(&format!(
            "{DEMO}{}",
            POLICY.replace("timeout: 3s", "timeout: 4s")
        ));
        let r = translate_cached(&changed, &o, &mut cache).unwrap().clone();
        assert_eq!(cache.translated, 1, "the policy's port");
        assert_eq!(
            r.routes["meltemi_9000"]["virtual_hosts"][1]["routes"][0]["route"]["timeout"],
            "4s"
        );
        assert_eq!(r, translate(&changed, &o).unwrap());
        // A policy removed: the routes lose it.
        let none = inputs(DEMO);
        let r = translate_cached(&none, &o, &mut cache).unwrap().clone();
        assert_eq!(cache.translated, 1);
        assert!(
            r.routes["meltemi_9000"]["virtual_hosts"][1]["routes"][0]["route"]
                .get("timeout")
                .is_none()
        );
        // The rate limit lives in the MetaRouter: its change re-translates too.
        let limited = inputs(&with_rate_limit(
            "    tokenBucket: {fillInterval: 60s, maxTokens: 5}\n",
        ));
        let r = translate_cached(&limited, &o, &mut cache).unwrap().clone();
        assert_eq!(cache.translated, 1);
        assert!(r.routes["meltemi_9000"]["virtual_hosts"][1]
            .get("typed_per_filter_config")
            .is_some());
    }
}
