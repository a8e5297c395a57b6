//! Authorization: Aeraki's `DubboAuthorizationPolicy` (`dubbo.aeraki.io/v1alpha1`) and
//! Meltemi's protocol-neutral `MetaAuthorizationPolicy` (`meltemi.io/v1alpha1`, the same shape
//! plus attribute matches and `hosts`), validated and translated into Envoy's HTTP RBAC filter,
//! with Istio's semantics:
//!
//! - a policy applies to the services of its own namespace (Aeraki lists the policies of the
//!   workload's namespace); `DubboAuthorizationPolicy` to the Dubbo ones, a
//!   `MetaAuthorizationPolicy` to every Meltemi service of the namespace, or only to its `hosts`;
//! - DENY policies are evaluated first; then, if any ALLOW policy applies, the call must match
//!   one of its rules (an ALLOW policy without rules allows nothing; a rule `{}` matches all);
//! - a rule matches when one of its `from` sources and one of its `to` operations match; the
//!   fields of a source or operation must all match; `*`, `prefix*` and `*suffix` as in Istio.
//!
//! The HCM of every front listener carries two RBAC filters ([`http_filters`]) that enforce
//! nothing by themselves; a service's policies travel as `typed_per_filter_config` of its
//! virtual host, so a policy change is an RDS update that reaches open client connections.
//! Source identity is the downstream TLS peer certificate's URI SAN
//! (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`), available when the front listener terminates
//! mutual TLS ([`FrontTls`], `--front-tls-*`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::load::Problem;
use crate::model::{port_protocol, Inputs, Object, ServiceEntrySpec, Shared, StringMatch};
use crate::validate::header_name;

/// `apiVersion` of Aeraki's Dubbo policy.
pub const DUBBO_API: &str = "dubbo.aeraki.io/v1alpha1";
pub use crate::model::MELTEMI_API;
/// Kind names, as written and as shown in problems.
pub const DUBBO_KIND: &str = "DubboAuthorizationPolicy";
/// See [`DUBBO_KIND`].
pub const META_KIND: &str = "MetaAuthorizationPolicy";

/// Name of the HCM filter holding the DENY policies of a virtual host.
pub const DENY_FILTER: &str = "meltemi.authz.deny";
/// Name of the HCM filter holding the ALLOW policies of a virtual host.
pub const ALLOW_FILTER: &str = "meltemi.authz.allow";

const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const RBAC_PER_ROUTE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";

/// `source` of a rule's `from`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// Peer identities, `<trust-domain>/ns/<ns>/sa/<sa>` (Istio's form, without `spiffe://`).
    #[serde(default)]
    pub principals: Vec<String>,
    /// Peer identities that must not match.
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// Namespaces of the peer identity.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Namespaces that must not match.
    #[serde(default)]
    pub not_namespaces: Vec<String>,
}

/// One entry of `from`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct From {
    /// The source (required, as in Istio).
    #[serde(default)]
    pub source: Option<SourceSpec>,
}

/// `operation` of a Dubbo rule's `to`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DubboOperation {
    /// Java interfaces (the `interface` attachment).
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Interfaces that must not match.
    #[serde(default)]
    pub not_interfaces: Vec<String>,
    /// Method names.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Methods that must not match.
    #[serde(default)]
    pub not_methods: Vec<String>,
}

/// `operation` of a Meltemi rule's `to`: any protocol's service, method and metadata.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetaOperation {
    /// Values of the `service` metadata (Dubbo: the interface; Thrift: the multiplexed name).
    #[serde(default)]
    pub services: Vec<String>,
    /// Services that must not match.
    #[serde(default)]
    pub not_services: Vec<String>,
    /// Method names (`method` metadata).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Methods that must not match.
    #[serde(default)]
    pub not_methods: Vec<String>,
    /// Metadata key → match, as MetaRouter matches (no match or regex `*`: present). All
    /// must match.
    #[serde(default)]
    pub attributes: BTreeMap<String, Option<StringMatch>>,
}

/// One entry of `to`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct To<O> {
    /// The operation (required, as in Istio).
    #[serde(default)]
    pub operation: Option<O>,
}

/// One rule.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule<O> {
    /// Sources; absent = any source.
    #[serde(default)]
    pub from: Vec<From>,
    /// Operations; absent = any operation.
    #[serde(default)]
    pub to: Vec<To<O>>,
}

/// `DubboAuthorizationPolicy.spec`, as Aeraki defines it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DubboAuthorizationPolicySpec {
    /// `ALLOW` (default) or `DENY`.
    #[serde(default)]
    pub action: Option<String>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<Rule<DubboOperation>>,
}

/// `MetaAuthorizationPolicy.spec`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetaAuthorizationPolicySpec {
    /// Service hosts of the policy's namespace it applies to; absent = all of them.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// `ALLOW` (default) or `DENY`.
    #[serde(default)]
    pub action: Option<String>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<Rule<MetaOperation>>,
}

/// Where the front listeners terminate TLS (`--front-tls-cert`, `--front-tls-key`,
/// `--front-tls-client-ca`): what gives policies a source identity on plain Envoy. In an Istio
/// sidecar inbound mTLS is Istio's and this stays unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrontTls {
    /// PEM certificate chain the listener presents.
    pub cert: String,
    /// Its PEM private key.
    pub key: String,
    /// CA bundle client certificates must chain to; set = a client certificate is required.
    pub client_ca: Option<String>,
}

/// The `transport_socket` of a front listener's filter chain.
pub fn transport_socket(tls: &FrontTls) -> Value {
    let mut common = json!({
        "tls_certificates": [{
            "certificate_chain": {"filename": tls.cert},
            "private_key": {"filename": tls.key}
        }]
    });
    if let Some(ca) = &tls.client_ca {
        common["validation_context"] = json!({"trusted_ca": {"filename": ca}});
    }
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": tls.client_ca.is_some(),
            "common_tls_context": common
        }
    })
}

/// The two RBAC filters every front HCM carries (before the router): without a virtual
/// host's configuration they enforce nothing, so adding the first policy changes no listener.
pub fn http_filters() -> [Value; 2] {
    let filter = |name: &str, prefix: &str| {
        json!({
            "name": name,
            "typed_config": {"@type": RBAC_TYPE, "rules_stat_prefix": prefix}
        })
    };
    [
        filter(DENY_FILTER, "meltemi_deny."),
        filter(ALLOW_FILTER, "meltemi_allow."),
    ]
}

/// The policies that apply to one port's services, held for the translation cache: a port is
/// re-translated when this changes.
#[derive(Debug, Default, Clone)]
pub struct PortPolicies {
    dubbo: Vec<Shared<DubboAuthorizationPolicySpec>>,
    meta: Vec<Shared<MetaAuthorizationPolicySpec>>,
}

fn same_list<T: PartialEq>(a: &[Shared<T>], b: &[Shared<T>]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(a, b)| std::sync::Arc::ptr_eq(a, b) || (a.spec == b.spec && a.meta == b.meta))
}

impl PartialEq for PortPolicies {
    fn eq(&self, other: &Self) -> bool {
        same_list(&self.dubbo, &other.dubbo) && same_list(&self.meta, &other.meta)
    }
}

fn dubbo_applies(p: &Object<DubboAuthorizationPolicySpec>, ns: &str, protocol: &str) -> bool {
    protocol == "dubbo" && p.namespace() == ns
}

fn meta_applies(p: &Object<MetaAuthorizationPolicySpec>, ns: &str, host: &str) -> bool {
    p.namespace() == ns && (p.spec.hosts.is_empty() || p.spec.hosts.iter().any(|h| h == host))
}

impl PortPolicies {
    /// The policies of `inputs` that apply to a port of `protocol` serving `services`
    /// (host, namespace of its ServiceEntry).
    pub fn for_port(inputs: &Inputs, protocol: &str, services: &[(&str, &str)]) -> PortPolicies {
        PortPolicies {
            dubbo: inputs
                .dubbo_authz
                .iter()
                .filter(|p| {
                    services
                        .iter()
                        .any(|(_, ns)| dubbo_applies(p, ns, protocol))
                })
                .cloned()
                .collect(),
            meta: inputs
                .meta_authz
                .iter()
                .filter(|p| services.iter().any(|(h, ns)| meta_applies(p, ns, h)))
                .cloned()
                .collect(),
        }
    }

    /// Sets the virtual host's RBAC configuration for the service `host` of namespace `ns`.
    pub fn apply(&self, vhost: &mut Value, protocol: &str, host: &str, ns: &str) {
        let mut deny = BTreeMap::new();
        let mut allow = BTreeMap::new();
        let mut any_allow = false;
        for p in self.dubbo.iter().filter(|p| dubbo_applies(p, ns, protocol)) {
            let into = if is_deny(&p.spec.action) {
                &mut deny
            } else {
                any_allow = true;
                &mut allow
            };
            for (i, rule) in p.spec.rules.iter().enumerate() {
                into.insert(
                    rule_name(p, i),
                    policy(
                        &rule.from,
                        rule.to.iter().map(|t| t.operation.as_ref()),
                        dubbo_op,
                    ),
                );
            }
        }
        for p in self.meta.iter().filter(|p| meta_applies(p, ns, host)) {
            let into = if is_deny(&p.spec.action) {
                &mut deny
            } else {
                any_allow = true;
                &mut allow
            };
            for (i, rule) in p.spec.rules.iter().enumerate() {
                into.insert(
                    rule_name(p, i),
                    policy(
                        &rule.from,
                        rule.to.iter().map(|t| t.operation.as_ref()),
                        meta_op,
                    ),
                );
            }
        }
        let mut per_filter = serde_json::Map::new();
        // A DENY policy without rules denies nothing: no configuration needed.
        if !deny.is_empty() {
            per_filter.insert(DENY_FILTER.into(), per_route("DENY", deny));
        }
        // Any ALLOW policy makes the service deny-by-default, even one without rules.
        if any_allow {
            per_filter.insert(ALLOW_FILTER.into(), per_route("ALLOW", allow));
        }
        if !per_filter.is_empty() {
            vhost["typed_per_filter_config"] = Value::Object(per_filter);
        }
    }
}

fn is_deny(action: &Option<String>) -> bool {
    action.as_deref() == Some("DENY")
}

/// Istio's and Aeraki's rule names: `ns[<ns>]-policy[<name>]-rule[<i>]`.
fn rule_name<T>(p: &Object<T>, i: usize) -> String {
    format!("ns[{}]-policy[{}]-rule[{i}]", p.namespace(), p.meta.name)
}

fn per_route(action: &str, policies: BTreeMap<String, Value>) -> Value {
    json!({
        "@type": RBAC_PER_ROUTE_TYPE,
        "rbac": {"rules": {"action": action, "policies": policies}}
    })
}

/// One rule as an Envoy RBAC policy: any source (principals, OR) and any operation
/// (permissions, OR).
fn policy<'a, O: 'a>(
    from: &[From],
    to: impl Iterator<Item = Option<&'a O>>,
    op: fn(&O) -> Vec<Value>,
) -> Value {
    let mut permissions: Vec<Value> = to
        .map(|o| and_permissions(o.map(op).unwrap_or_default()))
        .collect();
    if permissions.is_empty() {
        permissions.push(json!({"any": true}));
    }
    let mut principals: Vec<Value> = from
        .iter()
        .map(|f| and_principals(f.source.as_ref().map(source).unwrap_or_default()))
        .collect();
    if principals.is_empty() {
        principals.push(json!({"any": true}));
    }
    json!({"permissions": permissions, "principals": principals})
}

fn and_permissions(mut all: Vec<Value>) -> Value {
    match all.len() {
        0 => json!({"any": true}),
        1 => all.remove(0),
        _ => json!({"and_rules": {"rules": all}}),
    }
}

fn and_principals(mut all: Vec<Value>) -> Value {
    match all.len() {
        0 => json!({"any": true}),
        1 => all.remove(0),
        _ => json!({"and_ids": {"ids": all}}),
    }
}

/// Istio's string forms: `*` = present, `x*` = prefix, `*x` = suffix, else exact.
fn string_matcher(value: &str) -> Value {
    if value == "*" {
        json!({"safe_regex": {"regex": ".+"}})
    } else if let Some(p) = value.strip_suffix('*') {
        json!({"prefix": p})
    } else if let Some(s) = value.strip_prefix('*') {
        json!({"suffix": s})
    } else {
        json!({"exact": value})
    }
}

/// Header permissions for `values` of the metadata `key` (OR), or their negation.
fn header_any(key: &str, values: &[String], negate: bool) -> Option<Value> {
    if values.is_empty() {
        return None;
    }
    let name = header_name(key)?;
    let rules: Vec<Value> = values
        .iter()
        .map(|v| {
            if v == "*" {
                json!({"header": {"name": name, "present_match": true}})
            } else {
                json!({"header": {"name": name, "string_match": string_matcher(v)}})
            }
        })
        .collect();
    let any = if rules.len() == 1 {
        rules.into_iter().next().unwrap_or_default()
    } else {
        json!({"or_rules": {"rules": rules}})
    };
    Some(if negate {
        json!({"not_rule": any})
    } else {
        any
    })
}

fn dubbo_op(o: &DubboOperation) -> Vec<Value> {
    [
        header_any("interface", &o.interfaces, false),
        header_any("interface", &o.not_interfaces, true),
        header_any("method", &o.methods, false),
        header_any("method", &o.not_methods, true),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn meta_op(o: &MetaOperation) -> Vec<Value> {
    let mut out: Vec<Value> = [
        header_any("service", &o.services, false),
        header_any("service", &o.not_services, true),
        header_any("method", &o.methods, false),
        header_any("method", &o.not_methods, true),
    ]
    .into_iter()
    .flatten()
    .collect();
    for (key, sm) in &o.attributes {
        let Some(name) = header_name(key) else {
            continue; // validation refuses it
        };
        let m = match sm {
            Some(sm) if sm.exact.is_some() => {
                json!({"name": name, "string_match": {"exact": sm.exact}})
            }
            Some(sm) if sm.prefix.is_some() => {
                json!({"name": name, "string_match": {"prefix": sm.prefix}})
            }
            Some(sm) if sm.regex.as_deref().is_some_and(|r| r != "*") => {
                json!({"name": name, "string_match": {"safe_regex": {"regex": sm.regex}}})
            }
            _ => json!({"name": name, "present_match": true}),
        };
        out.push(json!({"header": m}));
    }
    out
}

/// The principal matcher of an Istio principal (`cluster.local/ns/a/sa/b`, with `*` forms).
fn principal(p: &str) -> Value {
    let m = if p == "*" {
        json!({"safe_regex": {"regex": ".+"}})
    } else if let Some(prefix) = p.strip_suffix('*') {
        json!({"prefix": format!("spiffe://{prefix}")})
    } else if let Some(suffix) = p.strip_prefix('*') {
        json!({"suffix": suffix})
    } else {
        json!({"exact": format!("spiffe://{p}")})
    };
    json!({"authenticated": {"principal_name": m}})
}

/// The principal matcher of a namespace: the `/ns/<ns>/` part of the SPIFFE identity.
fn namespace(ns: &str) -> Value {
    let regex = if ns == "*" {
        ".*/ns/[^/]+/.*".to_owned()
    } else if let Some(prefix) = ns.strip_suffix('*') {
        format!(".*/ns/{}[^/]*/.*", regex::escape(prefix))
    } else if let Some(suffix) = ns.strip_prefix('*') {
        format!(".*/ns/[^/]*{}/.*", regex::escape(suffix))
    } else {
        format!(".*/ns/{}/.*", regex::escape(ns))
    };
    json!({"authenticated": {"principal_name": {"safe_regex": {"regex": regex}}}})
}

fn or_ids(ids: Vec<Value>, negate: bool) -> Option<Value> {
    let any = match ids.len() {
        0 => return None,
        1 => ids.into_iter().next().unwrap_or_default(),
        _ => json!({"or_ids": {"ids": ids}}),
    };
    Some(if negate { json!({"not_id": any}) } else { any })
}

fn source(s: &SourceSpec) -> Vec<Value> {
    let ids = |v: &[String], f: fn(&str) -> Value| v.iter().map(|x| f(x)).collect::<Vec<_>>();
    [
        or_ids(ids(&s.principals, principal), false),
        or_ids(ids(&s.not_principals, principal), true),
        or_ids(ids(&s.namespaces, namespace), false),
        or_ids(ids(&s.not_namespaces, namespace), true),
    ]
    .into_iter()
    .flatten()
    .collect()
}

// ---------------------------------------------------------------------------------------
// Validation

fn problem<T>(obj: &Object<T>, kind: &str, field: String, msg: impl Into<String>) -> Problem {
    Problem {
        source: obj.source.clone(),
        resource: obj.id(kind),
        field,
        message: msg.into(),
    }
}

/// A value with `*` anywhere but alone, first or last is not an Istio string form.
fn check_wildcards<T>(
    out: &mut Vec<Problem>,
    obj: &Object<T>,
    kind: &str,
    field: &str,
    values: &[String],
) {
    for (i, v) in values.iter().enumerate() {
        let inner = v.len() > 1 && v[1..v.len() - 1].contains('*');
        let both = v.len() > 1 && v.starts_with('*') && v.ends_with('*');
        if v.is_empty() {
            out.push(problem(obj, kind, format!("{field}[{i}]"), "empty"));
        } else if inner || both {
            out.push(problem(
                obj,
                kind,
                format!("{field}[{i}]"),
                format!("`{v}`: `*` may stand alone, or begin or end the value (prefix/suffix), not both or inside"),
            ));
        }
    }
}

fn check_action<T>(out: &mut Vec<Problem>, obj: &Object<T>, kind: &str, action: &Option<String>) {
    if let Some(a) = action {
        if a != "ALLOW" && a != "DENY" {
            out.push(problem(
                obj,
                kind,
                "spec.action".into(),
                format!("`{a}`: must be ALLOW or DENY"),
            ));
        }
    }
}

fn check_from<T>(out: &mut Vec<Problem>, obj: &Object<T>, kind: &str, r: usize, from: &[From]) {
    for (f, from) in from.iter().enumerate() {
        let field = format!("spec.rules[{r}].from[{f}].source");
        let Some(s) = &from.source else {
            out.push(problem(obj, kind, field, "missing"));
            continue;
        };
        check_wildcards(
            out,
            obj,
            kind,
            &format!("{field}.principals"),
            &s.principals,
        );
        check_wildcards(
            out,
            obj,
            kind,
            &format!("{field}.notPrincipals"),
            &s.not_principals,
        );
        check_wildcards(
            out,
            obj,
            kind,
            &format!("{field}.namespaces"),
            &s.namespaces,
        );
        check_wildcards(
            out,
            obj,
            kind,
            &format!("{field}.notNamespaces"),
            &s.not_namespaces,
        );
    }
}

/// Every problem of the authorization policies in `inputs`.
pub fn validate(inputs: &Inputs, out: &mut Vec<Problem>) {
    for p in &inputs.dubbo_authz {
        let k = DUBBO_KIND;
        check_action(out, p, k, &p.spec.action);
        for (r, rule) in p.spec.rules.iter().enumerate() {
            check_from(out, p, k, r, &rule.from);
            for (t, to) in rule.to.iter().enumerate() {
                let field = format!("spec.rules[{r}].to[{t}].operation");
                let Some(o) = &to.operation else {
                    out.push(problem(p, k, field, "missing"));
                    continue;
                };
                check_wildcards(out, p, k, &format!("{field}.interfaces"), &o.interfaces);
                check_wildcards(
                    out,
                    p,
                    k,
                    &format!("{field}.notInterfaces"),
                    &o.not_interfaces,
                );
                check_wildcards(out, p, k, &format!("{field}.methods"), &o.methods);
                check_wildcards(out, p, k, &format!("{field}.notMethods"), &o.not_methods);
            }
        }
    }
    // (namespace, host) of every Meltemi service, for `hosts`.
    let mut hosts = std::collections::BTreeSet::new();
    for se in &inputs.service_entries {
        if meltemi_service(se) {
            for h in &se.spec.hosts {
                hosts.insert((se.namespace().to_owned(), h.clone()));
            }
        }
    }
    for p in &inputs.meta_authz {
        let k = META_KIND;
        check_action(out, p, k, &p.spec.action);
        for (h, host) in p.spec.hosts.iter().enumerate() {
            if !hosts.contains(&(p.namespace().to_owned(), host.clone())) {
                out.push(problem(
                    p,
                    k,
                    format!("spec.hosts[{h}]"),
                    format!(
                        "`{host}` is not a Meltemi service of namespace {} (a policy applies to its own namespace's services)",
                        p.namespace()
                    ),
                ));
            }
        }
        for (r, rule) in p.spec.rules.iter().enumerate() {
            check_from(out, p, k, r, &rule.from);
            for (t, to) in rule.to.iter().enumerate() {
                let field = format!("spec.rules[{r}].to[{t}].operation");
                let Some(o) = &to.operation else {
                    out.push(problem(p, k, field, "missing"));
                    continue;
                };
                check_wildcards(out, p, k, &format!("{field}.services"), &o.services);
                check_wildcards(out, p, k, &format!("{field}.notServices"), &o.not_services);
                check_wildcards(out, p, k, &format!("{field}.methods"), &o.methods);
                check_wildcards(out, p, k, &format!("{field}.notMethods"), &o.not_methods);
                for (key, sm) in &o.attributes {
                    let af = format!("{field}.attributes.{key}");
                    if header_name(key).is_none() {
                        out.push(problem(
                            p,
                            k,
                            af.clone(),
                            "not a metadata key the front can pass on (it must be a valid header name)",
                        ));
                    }
                    if let Some(sm) = sm {
                        let set = [sm.exact.is_some(), sm.prefix.is_some(), sm.regex.is_some()]
                            .iter()
                            .filter(|b| **b)
                            .count();
                        if set > 1 {
                            out.push(problem(
                                p,
                                k,
                                af.clone(),
                                "give one of exact, prefix, regex",
                            ));
                        }
                        if let Some(re) = sm.regex.as_deref().filter(|r| *r != "*") {
                            if let Err(e) = regex::Regex::new(re) {
                                out.push(problem(
                                    p,
                                    k,
                                    format!("{af}.regex"),
                                    format!("invalid regex: {e}"),
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
}

fn meltemi_service(se: &Object<ServiceEntrySpec>) -> bool {
    se.spec
        .ports
        .iter()
        .any(|p| port_protocol(&p.name).is_some())
}

/// Whether the loader should read this document as one of the authorization kinds; `Err`
/// names an unsupported version.
pub fn kind_of(api: &str, kind: &str) -> Option<Result<Which, String>> {
    let group = api.split('/').next().unwrap_or("");
    let (which, want) = match (group, kind) {
        ("dubbo.aeraki.io", DUBBO_KIND) => (Which::Dubbo, DUBBO_API),
        ("meltemi.io", META_KIND) => (Which::Meta, MELTEMI_API),
        _ => return None,
    };
    Some(if api == want {
        Ok(which)
    } else {
        Err(format!("{api} is not supported; use {want}"))
    })
}

/// Which authorization kind a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// `DubboAuthorizationPolicy`.
    Dubbo,
    /// `MetaAuthorizationPolicy`.
    Meta,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{load_text, Loaded};
    use crate::template::{FailurePolicy, Module, ModuleSource};
    use crate::translate::{translate, translate_cached, Cache, Options};

    const SERVICES: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: echo, namespace: meta}
spec:
  hosts: [org.meltemi.demo.echoservice, org.meltemi.demo.otherservice]
  ports: [{number: 20880, name: tcp-metaprotocol-dubbo}]
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: thrift, namespace: meta}
spec:
  hosts: [echo]
  ports: [{number: 9090, name: tcp-metaprotocol-thrift-echo}]
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: elsewhere, namespace: other}
spec:
  hosts: [elsewhere]
  ports: [{number: 9091, name: tcp-metaprotocol-thrift}]
  endpoints: [{address: 127.0.0.1}]
"#;

    const POLICIES: &str = r#"
apiVersion: dubbo.aeraki.io/v1alpha1
kind: DubboAuthorizationPolicy
metadata: {name: deny-other, namespace: meta}
spec:
  action: DENY
  rules:
  - to: [{operation: {interfaces: [org.meltemi.demo.OtherService]}}]
---
apiVersion: dubbo.aeraki.io/v1alpha1
kind: DubboAuthorizationPolicy
metadata: {name: allow-web, namespace: meta}
spec:
  rules:
  - from:
    - source: {principals: [cluster.local/ns/front/sa/web], notNamespaces: [batch]}
    - source: {namespaces: [ops]}
    to:
    - operation: {methods: [echo, "get*"], notMethods: [secret]}
---
apiVersion: meltemi.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {name: thrift-tenants, namespace: meta}
spec:
  hosts: [echo]
  action: DENY
  rules:
  - to:
    - operation:
        methods: [add]
        attributes: {x-tenant: {exact: blocked}, x-region: {regex: "eu-.*"}, x-any: {}}
"#;

    fn options() -> Options {
        let module = |name: &str| Module {
            source: ModuleSource::Local(format!("/m/{name}.wasm")),
            native: None,
            failure_policy: FailurePolicy::Closed,
            config: Default::default(),
        };
        Options {
            modules: [
                ("dubbo".to_owned(), module("dubbo")),
                ("thrift".to_owned(), module("thrift")),
            ]
            .into(),
            bind: "127.0.0.1".into(),
            ..Default::default()
        }
    }

    fn load(files: &[(&str, &str)]) -> Loaded {
        let mut loaded = Loaded::default();
        for (file, text) in files {
            load_text(file, text, &mut loaded);
        }
        loaded
    }

    fn valid(files: &[(&str, &str)]) -> Inputs {
        let loaded = load(files);
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let problems = crate::validate::validate(&loaded.inputs);
        assert!(problems.is_empty(), "{problems:?}");
        loaded.inputs
    }

    fn problems(policy: &str) -> Vec<String> {
        let loaded = load(&[("se.yaml", SERVICES), ("p.yaml", policy)]);
        let mut out: Vec<String> = loaded.problems.iter().map(|p| p.to_string()).collect();
        out.extend(
            crate::validate::validate(&loaded.inputs)
                .iter()
                .map(|p| p.to_string()),
        );
        out
    }

    fn vhost<'a>(r: &'a crate::translate::Resources, port: u32, host: &str) -> &'a Value {
        r.routes[&format!("meltemi_{port}")]["virtual_hosts"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["domains"][0] == host))
            .unwrap_or_else(|| panic!("no virtual host {host}"))
    }

    #[test]
    fn policies_become_rbac_on_the_virtual_hosts_they_apply_to() {
        let inputs = valid(&[("se.yaml", SERVICES), ("p.yaml", POLICIES)]);
        assert_eq!((inputs.dubbo_authz.len(), inputs.meta_authz.len()), (2, 1));
        let r = translate(&inputs, &options()).unwrap();
        // Every front HCM carries both filters, before the router, enforcing nothing alone.
        let filters = &r.listeners["127.0.0.1_9091"]["filter_chains"][0]["filters"][1]
            ["typed_config"]["http_filters"];
        let names: Vec<&str> = filters
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["name"].as_str())
            .collect();
        assert_eq!(
            names,
            vec![
                "envoy.filters.http.buffer",
                "envoy.filters.http.set_filter_state",
                "meltemi.authz.deny",
                "meltemi.authz.allow",
                "envoy.filters.http.local_ratelimit",
                "envoy.filters.http.fault",
                "envoy.filters.http.router"
            ]
        );
        assert!(filters[1]["typed_config"].get("rules").is_none());

        // Dubbo: both Dubbo policies of namespace `meta` on both interfaces.
        for host in [
            "org.meltemi.demo.echoservice",
            "org.meltemi.demo.otherservice",
        ] {
            let cfg = &vhost(&r, 20880, host)["typed_per_filter_config"];
            let deny = &cfg[DENY_FILTER]["rbac"]["rules"];
            assert_eq!(deny["action"], "DENY");
            let rule = &deny["policies"]["ns[meta]-policy[deny-other]-rule[0]"];
            assert_eq!(
                rule["permissions"][0],
                json!({"header": {"name": "interface", "string_match": {"exact": "org.meltemi.demo.OtherService"}}})
            );
            assert_eq!(rule["principals"][0], json!({"any": true}));
            let allow = &cfg[ALLOW_FILTER]["rbac"]["rules"];
            assert_eq!(allow["action"], "ALLOW");
            let rule = &allow["policies"]["ns[meta]-policy[allow-web]-rule[0]"];
            assert_eq!(
                rule["principals"][0],
                json!({"and_ids": {"ids": [
                    {"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/front/sa/web"}}},
                    {"not_id": {"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/batch/.*"}}}}}
                ]}})
            );
            assert_eq!(
                rule["principals"][1],
                json!({"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/ops/.*"}}}})
            );
            assert_eq!(
                rule["permissions"][0],
                json!({"and_rules": {"rules": [
                    {"or_rules": {"rules": [
                        {"header": {"name": "method", "string_match": {"exact": "echo"}}},
                        {"header": {"name": "method", "string_match": {"prefix": "get"}}}
                    ]}},
                    {"not_rule": {"header": {"name": "method", "string_match": {"exact": "secret"}}}}
                ]}})
            );
        }
        // Thrift: only the Meta policy (Dubbo policies are for Dubbo services), DENY only.
        let cfg = &vhost(&r, 9090, "echo")["typed_per_filter_config"];
        assert!(cfg.get(ALLOW_FILTER).is_none(), "{cfg}");
        let rule = &cfg[DENY_FILTER]["rbac"]["rules"]["policies"]
            ["ns[meta]-policy[thrift-tenants]-rule[0]"];
        let rules = rule["permissions"][0]["and_rules"]["rules"]
            .as_array()
            .unwrap();
        assert_eq!(rules.len(), 4);
        assert_eq!(
            rules[1],
            json!({"header": {"name": "x-any", "present_match": true}})
        );
        assert_eq!(
            rules[2]["header"]["string_match"]["safe_regex"]["regex"],
            "eu-.*"
        );
        // Another namespace's service and the local virtual host have none.
        assert!(vhost(&r, 9091, "elsewhere")
            .get("typed_per_filter_config")
            .is_none());
        assert!(vhost(&r, 9090, "meltemi.local")
            .get("typed_per_filter_config")
            .is_none());
        // Envoy's schema accepts it all (listeners, RBAC per route).
        crate::xds::Snapshot::new(&r, std::time::Instant::now()).unwrap();
    }

    #[test]
    fn allow_without_rules_allows_nothing_and_empty_rule_allows_all() {
        let text = r#"
apiVersion: meltemi.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {name: nothing, namespace: meta}
spec: {hosts: [echo]}
---
apiVersion: meltemi.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {name: everything, namespace: other}
spec:
  rules: [{}]
"#;
        let r = translate(
            &valid(&[("se.yaml", SERVICES), ("p.yaml", text)]),
            &options(),
        )
        .unwrap();
        let allow = &vhost(&r, 9090, "echo")["typed_per_filter_config"][ALLOW_FILTER];
        assert_eq!(
            allow["rbac"]["rules"],
            json!({"action": "ALLOW", "policies": {}})
        );
        let all = &vhost(&r, 9091, "elsewhere")["typed_per_filter_config"][ALLOW_FILTER];
        assert_eq!(
            all["rbac"]["rules"]["policies"]["ns[other]-policy[everything]-rule[0]"],
            json!({"permissions": [{"any": true}], "principals": [{"any": true}]})
        );
        crate::xds::Snapshot::new(&r, std::time::Instant::now()).unwrap();
    }

    #[test]
    fn invalid_policies_name_file_resource_and_field() {
        let cases = [
            (
                "apiVersion: dubbo.aeraki.io/v1alpha1\nkind: DubboAuthorizationPolicy\nmetadata: {name: a, namespace: meta}\nspec: {action: REJECT}\n",
                "p.yaml (document 1): DubboAuthorizationPolicy meta/a: field `spec.action`: `REJECT`: must be ALLOW or DENY",
            ),
            (
                "apiVersion: dubbo.aeraki.io/v1alpha1\nkind: DubboAuthorizationPolicy\nmetadata: {name: a, namespace: meta}\nspec:\n  rules: [{to: [{operation: {interface: [x]}}]}]\n",
                "p.yaml (document 1): DubboAuthorizationPolicy meta/a: field `spec.rules[0].to[0].operation.interface`: unknown field",
            ),
            (
                "apiVersion: dubbo.aeraki.io/v1beta1\nkind: DubboAuthorizationPolicy\nmetadata: {name: a}\n",
                "p.yaml (document 1): DubboAuthorizationPolicy default/a: field `apiVersion`: dubbo.aeraki.io/v1beta1 is not supported; use dubbo.aeraki.io/v1alpha1",
            ),
            (
                "apiVersion: dubbo.aeraki.io/v1alpha1\nkind: DubboAuthorizationPolicy\nmetadata: {name: a, namespace: meta}\nspec:\n  rules: [{from: [{source: {principals: [\"a*b\"]}}, {}]}]\n",
                "field `spec.rules[0].from[0].source.principals[0]`: `a*b`: `*` may stand alone",
            ),
            (
                "apiVersion: dubbo.aeraki.io/v1alpha1\nkind: DubboAuthorizationPolicy\nmetadata: {name: a, namespace: meta}\nspec:\n  rules: [{from: [{}]}]\n",
                "field `spec.rules[0].from[0].source`: missing",
            ),
            (
                "apiVersion: meltemi.io/v1alpha1\nkind: MetaAuthorizationPolicy\nmetadata: {name: m, namespace: meta}\nspec: {hosts: [elsewhere]}\n",
                "p.yaml (document 1): MetaAuthorizationPolicy meta/m: field `spec.hosts[0]`: `elsewhere` is not a Meltemi service of namespace meta",
            ),
            (
                "apiVersion: meltemi.io/v1alpha1\nkind: MetaAuthorizationPolicy\nmetadata: {name: m, namespace: meta}\nspec:\n  rules: [{to: [{operation: {attributes: {x: {regex: \"(\"}}}}]}]\n",
                "MetaAuthorizationPolicy meta/m: field `spec.rules[0].to[0].operation.attributes.x.regex`: invalid regex",
            ),
            (
                "apiVersion: meltemi.io/v1alpha1\nkind: MetaAuthorizationPolicy\nmetadata: {name: m, namespace: meta}\nspec:\n  rules: [{to: [{operation: {attributes: {\"a b\": {exact: x, prefix: p}}}}]}]\n",
                "field `spec.rules[0].to[0].operation.attributes.a b`: give one of exact, prefix, regex",
            ),
            (
                "apiVersion: meltemi.io/v1alpha1\nkind: MetaAuthorizationPolicy\nmetadata: {name: m, namespace: meta}\nspec:\n  rules: [{to: [{operation: {attributes: {\"a b\": {exact: x}}}}]}]\n",
                "field `spec.rules[0].to[0].operation.attributes.a b`: not a metadata key",
            ),
        ];
        for (text, want) in cases {
            let got = problems(text);
            assert!(
                got.iter().any(|p| p.contains(want)),
                "want {want:?} in {got:#?}"
            );
        }
    }

    #[test]
    fn a_policy_change_retranslates_only_the_ports_it_applies_to() {
        let mut cache = Cache::default();
        let o = options();
        let base = valid(&[("se.yaml", SERVICES)]);
        translate_cached(&base, &o, &mut cache).unwrap();
        assert_eq!(cache.translated, 3);
        // A Thrift policy of namespace `meta`: the Thrift port of `meta` only.
        let deny = |method: &str| {
            format!("apiVersion: meltemi.io/v1alpha1\nkind: MetaAuthorizationPolicy\nmetadata: {{name: m, namespace: meta}}\nspec:\n  hosts: [echo]\n  action: DENY\n  rules: [{{to: [{{operation: {{methods: [{method}]}}}}]}}]\n")
        };
        let one = valid(&[("se.yaml", SERVICES), ("p.yaml", &deny("add"))]);
        let r = translate_cached(&one, &o, &mut cache).unwrap().clone();
        assert_eq!(cache.translated, 1);
        assert_eq!(r, translate(&one, &o).unwrap(), "the cache changes nothing");
        assert!(vhost(&r, 9090, "echo")["typed_per_filter_config"][DENY_FILTER].is_object());
        // The same policy re-read (a new allocation, equal): nothing to do.
        let again = valid(&[("se.yaml", SERVICES), ("p.yaml", &deny("add"))]);
        translate_cached(&again, &o, &mut cache).unwrap();
        assert_eq!(cache.translated, 0);
        // Its rules change: that port again, with the new method.
        let two = valid(&[("se.yaml", SERVICES), ("p.yaml", &deny("echo"))]);
        let r = translate_cached(&two, &o, &mut cache).unwrap().clone();
        assert_eq!(cache.translated, 1);
        assert_eq!(r, translate(&two, &o).unwrap());
        let rule = &vhost(&r, 9090, "echo")["typed_per_filter_config"][DENY_FILTER]["rbac"]
            ["rules"]["policies"]["ns[meta]-policy[m]-rule[0]"];
        assert_eq!(
            rule["permissions"][0]["header"]["string_match"]["exact"],
            "echo"
        );
        // Only RDS changes: the listeners are the same.
        assert_eq!(
            r.listeners,
            translate(&base, &o).unwrap().listeners,
            "a policy never changes a listener"
        );
        // A Dubbo policy touches the Dubbo port; removing everything restores the first output.
        let dubbo = "apiVersion: dubbo.aeraki.io/v1alpha1\nkind: DubboAuthorizationPolicy\nmetadata: {name: d, namespace: meta}\nspec: {action: DENY, rules: [{}]}\n";
        let three = valid(&[
            ("se.yaml", SERVICES),
            ("p.yaml", &deny("echo")),
            ("d.yaml", dubbo),
        ]);
        translate_cached(&three, &o, &mut cache).unwrap();
        assert_eq!(cache.translated, 1);
        let r = translate_cached(&base, &o, &mut cache).unwrap().clone();
        assert_eq!(cache.translated, 2);
        assert_eq!(r, translate(&base, &o).unwrap());
    }

    #[test]
    fn front_tls_terminates_mutual_tls_on_every_front_listener() {
        let mut o = options();
        o.front_tls = Some(FrontTls {
            cert: "/c/server.pem".into(),
            key: "/c/server.key".into(),
            client_ca: Some("/c/ca.pem".into()),
        });
        let r = translate(&valid(&[("se.yaml", SERVICES)]), &o).unwrap();
        for l in r.listeners.values().filter(|l| l.get("address").is_some()) {
            let ts = &l["filter_chains"][0]["transport_socket"]["typed_config"];
            assert_eq!(ts["require_client_certificate"], true);
            assert_eq!(
                ts["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
                "/c/ca.pem"
            );
        }
        crate::xds::Snapshot::new(&r, std::time::Instant::now()).unwrap();
        assert!(translate(&valid(&[("se.yaml", SERVICES)]), &options())
            .unwrap()
            .listeners
            .values()
            .filter(|l| l.get("address").is_some())
            .all(|l| l["filter_chains"][0].get("transport_socket").is_none()));
    }
}
