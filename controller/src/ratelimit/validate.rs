//! Validation of global rate limits: MetaRouters' `globalRateLimit` (what Envoy would refuse or
//! silently never apply) and `RateLimitConfig`s (what envoyproxy/ratelimit refuses when it
//! loads its files). Every problem names the file, the resource and the field.

use std::collections::{BTreeMap, BTreeSet};

use super::envoy::{FilterKey, MAX_FILTERS};
use super::{request_timeout, unit_seconds, LimitDescriptor, KIND};
use crate::load::Problem;
use crate::model::{port_protocol, Inputs, Object};
use crate::validate::header_name;

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

/// Every rate limit problem of `inputs`.
pub fn validate(inputs: &Inputs) -> Vec<Problem> {
    let mut out = Vec::new();
    for mr in &inputs.routers {
        const K: &str = "MetaRouter";
        let Some(rl) = &mr.spec.global_rate_limit else {
            continue;
        };
        let f = "spec.globalRateLimit";
        if rl.domain.trim().is_empty() {
            out.push(problem(mr, K, format!("{f}.domain"), "missing"));
        }
        if rl.descriptors.is_empty() {
            out.push(problem(
                mr,
                K,
                format!("{f}.descriptors"),
                "at least one descriptor is required: without one no call is ever counted",
            ));
        }
        for (i, d) in rl.descriptors.iter().enumerate() {
            if d.property.is_empty() {
                out.push(problem(
                    mr,
                    K,
                    format!("{f}.descriptors[{i}].property"),
                    "missing",
                ));
            } else if header_name(&d.property).is_none() {
                out.push(problem(
                    mr,
                    K,
                    format!("{f}.descriptors[{i}].property"),
                    format!("`{}` cannot be read: not a valid header name", d.property),
                ));
            }
            if d.descriptor_key.is_empty() {
                out.push(problem(
                    mr,
                    K,
                    format!("{f}.descriptors[{i}].descriptorKey"),
                    "missing",
                ));
            }
        }
        if let Some(m) = &rl.matches {
            for (key, sm) in &m.attributes {
                let field = format!("{f}.match.attributes.{key}");
                if header_name(key).is_none() {
                    out.push(problem(
                        mr,
                        K,
                        &field,
                        format!("`{key}` cannot be matched: not a valid header name"),
                    ));
                }
                let Some(sm) = sm else { continue };
                let set = [sm.exact.is_some(), sm.prefix.is_some(), sm.regex.is_some()]
                    .iter()
                    .filter(|b| **b)
                    .count();
                if set > 1 {
                    out.push(problem(mr, K, &field, "give one of exact, prefix, regex"));
                }
                if let Some(re) = sm.regex.as_deref().filter(|r| *r != "*") {
                    if let Err(e) = regex::Regex::new(re) {
                        out.push(problem(
                            mr,
                            K,
                            format!("{field}.regex"),
                            format!("invalid regex: {e}"),
                        ));
                    }
                }
            }
        }
        if let Some(t) = &rl.request_timeout {
            if request_timeout(t).is_none() {
                out.push(problem(
                    mr,
                    K,
                    format!("{f}.requestTimeout"),
                    format!("`{t}` is not a duration like `100ms` or `1s`, nor a number of milliseconds"),
                ));
            }
        }
        if let Some(s) = &rl.rate_limit_service {
            if s.chars().any(char::is_whitespace) {
                out.push(problem(
                    mr,
                    K,
                    format!("{f}.rateLimitService"),
                    format!("`{s}` is not a cluster name"),
                ));
            }
        }
    }
    out.extend(filters_per_port(inputs));
    out.extend(configs(inputs));
    out
}

/// Envoy has eleven rate limit stages: a port's MetaRouters may use eleven distinct
/// (domain, service, timeout, denyOnFail) settings at most.
fn filters_per_port(inputs: &Inputs) -> Vec<Problem> {
    let routers: BTreeMap<&str, _> = inputs
        .routers
        .iter()
        .filter_map(|r| Some((r.spec.hosts.first()?.as_str(), r)))
        .collect();
    let mut ports: BTreeMap<u32, BTreeSet<FilterKey>> = BTreeMap::new();
    let mut out = Vec::new();
    for se in &inputs.service_entries {
        for port in se
            .spec
            .ports
            .iter()
            .filter(|p| port_protocol(&p.name).is_some())
        {
            for host in &se.spec.hosts {
                let Some(mr) = routers.get(host.as_str()) else {
                    continue;
                };
                let Some(rl) = &mr.spec.global_rate_limit else {
                    continue;
                };
                let keys = ports.entry(port.number).or_default();
                keys.insert(FilterKey::of(rl));
                if keys.len() > MAX_FILTERS {
                    out.push(problem(
                        mr,
                        "MetaRouter",
                        "spec.globalRateLimit",
                        format!(
                            "port {} already has {MAX_FILTERS} distinct global rate limit settings (domain, rateLimitService, requestTimeout, denyOnFail), Envoy's most; share one domain and service",
                            port.number
                        ),
                    ));
                }
            }
        }
    }
    out
}

fn configs(inputs: &Inputs) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut owners: BTreeMap<&str, String> = BTreeMap::new();
    for c in &inputs.rate_limit_configs {
        if c.spec.domain.trim().is_empty() {
            out.push(problem(c, KIND, "spec.domain", "missing"));
        } else if let Some(other) = owners.get(c.spec.domain.as_str()) {
            out.push(problem(
                c,
                KIND,
                "spec.domain",
                format!(
                    "domain {} is already configured by {other}; merge the two",
                    c.spec.domain
                ),
            ));
        } else {
            owners.insert(&c.spec.domain, c.id(KIND));
        }
        descriptors(&mut out, c, "spec.descriptors", &c.spec.descriptors);
    }
    out
}

fn descriptors<T>(out: &mut Vec<Problem>, c: &Object<T>, field: &str, list: &[LimitDescriptor]) {
    let mut seen = BTreeSet::new();
    for (i, d) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if d.key.is_empty() {
            out.push(problem(c, KIND, format!("{f}.key"), "missing"));
        }
        if !seen.insert((d.key.as_str(), d.value.as_deref())) {
            out.push(problem(
                c,
                KIND,
                &f,
                format!(
                    "key `{}`{} is configured twice at this level",
                    d.key,
                    d.value
                        .as_deref()
                        .map(|v| format!(" value `{v}`"))
                        .unwrap_or_default()
                ),
            ));
        }
        if let Some(r) = &d.rate_limit {
            if !r.unlimited {
                if unit_seconds(&r.unit).is_none() {
                    out.push(problem(
                        c,
                        KIND,
                        format!("{f}.rate_limit.unit"),
                        format!("`{}` is not one of second, minute, hour, day, week", r.unit),
                    ));
                }
                if r.requests_per_unit.is_none() {
                    out.push(problem(
                        c,
                        KIND,
                        format!("{f}.rate_limit.requests_per_unit"),
                        "missing (or set `unlimited: true`)",
                    ));
                }
            }
        }
        descriptors(out, c, &format!("{f}.descriptors"), &d.descriptors);
    }
}
