//! Typed inputs: the Kubernetes-style resources the controller reads, shaped exactly as Aeraki
//! and Istio users write them (camelCase fields, `apiVersion`/`kind`/`metadata`/`spec`).
//!
//! Aeraki's kinds are modelled completely and refuse unknown fields, so a typo (`subsets:` for
//! `subset:`) is an error naming the field instead of a silently different route. Of Istio's
//! much larger kinds only the fields the translation uses are modelled; the others are
//! accepted and ignored, so YAML written for Istio loads unchanged.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Aeraki's API group and version for `ApplicationProtocol` and `MetaRouter`.
pub const AERAKI_API: &str = "metaprotocol.aeraki.io/v1alpha1";

/// `metadata` of any resource.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Resource name.
    #[serde(default)]
    pub name: String,
    /// Namespace (`default` when absent, as kubectl does).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Labels (unused by translation, kept for messages).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A resource of kind `T` with its metadata and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Object<T> {
    /// `metadata`.
    pub meta: ObjectMeta,
    /// `spec`.
    pub spec: T,
    /// File (and document index) it was read from, for error messages.
    pub source: Source,
}

/// Where a document was read from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Source {
    /// File path as given.
    pub file: String,
    /// 1-based index of the document inside the file; 0 for the file as a whole or for an
    /// object of the Kubernetes source.
    pub document: usize,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Document 0: the whole file, or an object that did not come from a file.
        if self.document == 0 {
            f.write_str(&self.file)
        } else {
            write!(f, "{} (document {})", self.file, self.document)
        }
    }
}

impl<T> Object<T> {
    /// `default` when the namespace is absent.
    pub fn namespace(&self) -> &str {
        self.meta.namespace.as_deref().unwrap_or("default")
    }

    /// `Kind namespace/name` for messages.
    pub fn id(&self, kind: &str) -> String {
        format!("{kind} {}/{}", self.namespace(), self.meta.name)
    }
}

/// `ApplicationProtocol.spec`: declares a protocol name usable in port names.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct ApplicationProtocolSpec {
    /// Protocol name as used in `tcp-metaprotocol-<protocol>-…` port names.
    #[serde(default)]
    pub protocol: String,
    /// Aeraki's codec library name; Meltemi takes the module from `--module` instead.
    #[serde(default)]
    pub codec: String,
}

/// A string match on one metadata attribute; all three absent = "present" match.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    /// Exact value.
    pub exact: Option<String>,
    /// Value prefix.
    pub prefix: Option<String>,
    /// RE2 regular expression (`*` alone means "present", as in Aeraki).
    pub regex: Option<String>,
}

/// `match` of a route: every attribute must match.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct MetaRouteMatch {
    /// Metadata key → match. Ordered so that translation output is deterministic.
    #[serde(default)]
    pub attributes: BTreeMap<String, Option<StringMatch>>,
}

/// `port` of a destination.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    /// Port number; 0 or absent = the service port the request arrived on.
    #[serde(default)]
    pub number: u32,
}

/// A destination: host, optional subset and port.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Service host (a ServiceEntry host).
    #[serde(default)]
    pub host: String,
    /// DestinationRule subset name.
    #[serde(default)]
    pub subset: Option<String>,
    /// Port of the host.
    #[serde(default)]
    pub port: Option<PortSelector>,
}

/// One weighted destination of a route.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct RouteDestination {
    /// Where to.
    #[serde(default)]
    pub destination: Destination,
    /// Weight (percent) when the route has several destinations.
    #[serde(default)]
    pub weight: u32,
}

/// `mirrorPercentage`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    /// 0..=100.
    #[serde(default)]
    pub value: f64,
}

/// One `key`/`value` of a mutation.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyValue {
    /// Metadata key written into the message.
    #[serde(default)]
    pub key: String,
    /// Its value.
    #[serde(default)]
    pub value: String,
}

/// One route of a MetaRouter.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct MetaRoute {
    /// Route name (optional).
    #[serde(default)]
    pub name: Option<String>,
    /// Match; absent = every request.
    #[serde(default, rename = "match")]
    pub matches: Option<MetaRouteMatch>,
    /// Destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
    /// Mirror destination.
    #[serde(default)]
    pub mirror: Option<Destination>,
    /// Share of requests mirrored (100 when absent).
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    /// Keys written into requests.
    #[serde(default)]
    pub request_mutation: Vec<KeyValue>,
    /// Keys written into responses.
    #[serde(default)]
    pub response_mutation: Vec<KeyValue>,
}

/// `MetaRouter.spec`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct MetaRouterSpec {
    /// Exactly one service host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Namespaces the routes are visible in (accepted; the plain-Envoy output has one scope).
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Gateways the routes apply to (not used by the plain-Envoy output yet).
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Routes, first match wins.
    #[serde(default)]
    pub routes: Vec<MetaRoute>,
    /// Local rate limit (accepted, not translated yet).
    #[serde(default)]
    pub local_rate_limit: Option<serde_json::Value>,
    /// Global rate limit (`crate::ratelimit`).
    #[serde(default)]
    pub global_rate_limit: Option<crate::ratelimit::GlobalRateLimit>,
}

/// A ServiceEntry port.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port number.
    #[serde(default)]
    pub number: u32,
    /// Istio protocol (`TCP` for meta protocols).
    #[serde(default)]
    pub protocol: Option<String>,
    /// `tcp-metaprotocol-<protocol>-…` for Meltemi ports.
    #[serde(default)]
    pub name: String,
    /// Port on the endpoints (same as `number` when absent).
    #[serde(default)]
    pub target_port: Option<u32>,
    /// A Kubernetes Service's named `targetPort`: looked up among each selected pod's
    /// container ports (`crate::workloads`). ServiceEntries have none.
    #[serde(skip)]
    pub target_port_name: Option<String>,
}

/// A static ServiceEntry endpoint.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntry {
    /// IP address (or host name).
    #[serde(default)]
    pub address: String,
    /// Port name → port number on this endpoint.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Labels that subsets select on.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Load-balancing weight.
    #[serde(default)]
    pub weight: Option<u32>,
}

/// `workloadSelector` of a ServiceEntry.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels of the selected workloads.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `ServiceEntry.spec`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    /// Service hosts.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs (unused by the plain-Envoy output: it listens on `--bind`).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Static endpoints.
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    /// Selected workloads: Pods and WorkloadEntries of the namespace (`crate::workloads`).
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
}

/// `consistentHash` of a load balancer.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHash {
    /// Hash on this request header (= metadata key).
    #[serde(default)]
    pub http_header_name: Option<String>,
}

/// `loadBalancer`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    /// `ROUND_ROBIN`, `LEAST_REQUEST`, `RANDOM`, …
    #[serde(default)]
    pub simple: Option<String>,
    /// Consistent hash.
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHash>,
}

/// `connectionPool.tcp`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    /// Connections to the service.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Connect timeout (`"1s"`).
    #[serde(default)]
    pub connect_timeout: Option<String>,
}

/// `connectionPool.http`: the limits of the bridge's HTTP hop.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpSettings {
    /// Pending requests.
    #[serde(default)]
    pub http1_max_pending_requests: Option<u32>,
    /// Concurrent requests.
    #[serde(default)]
    pub http2_max_requests: Option<u32>,
    /// Concurrent retries.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Calls per server connection before it is replaced (0 or absent: unlimited).
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
}

/// `connectionPool`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ConnectionPool {
    /// TCP limits (server connections).
    #[serde(default)]
    pub tcp: Option<TcpSettings>,
    /// HTTP limits (requests).
    #[serde(default)]
    pub http: Option<HttpSettings>,
}

/// `outlierDetection`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx (error replies) before ejection.
    #[serde(default)]
    pub consecutive_5xx_errors: Option<u32>,
    /// Consecutive gateway errors (connect failures, resets).
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    /// Analysis interval (`"10s"`).
    #[serde(default)]
    pub interval: Option<String>,
    /// Base ejection time (`"30s"`).
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    /// Max ejected percent.
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
}

/// `trafficPolicy`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Load balancer.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    /// Connection pool limits.
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
    /// Outlier detection.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
}

/// A DestinationRule subset.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    /// Subset name (`v1`).
    #[serde(default)]
    pub name: String,
    /// Endpoint labels that select it.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Overrides of the rule's policy.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// `DestinationRule.spec`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// Service host.
    #[serde(default)]
    pub host: String,
    /// Policy for every subset.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Subsets.
    #[serde(default)]
    pub subsets: Vec<Subset>,
}

/// A Kubernetes `Service` port.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubeServicePort {
    /// Port name (`tcp-metaprotocol-<protocol>-…` for Meltemi ports).
    #[serde(default)]
    pub name: String,
    /// Service port.
    #[serde(default)]
    pub port: u32,
    /// Container port: a number or a named port (looked up among the selected pods' ports).
    #[serde(default)]
    pub target_port: Option<serde_json::Value>,
    /// `TCP`.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// `Service.spec` (Kubernetes core v1), read as a ServiceEntry for
/// `<name>.<namespace>.svc.cluster.local` whose endpoints are the pods its selector picks
/// (`crate::workloads`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubeServiceSpec {
    /// Pod selector.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<KubeServicePort>,
}

impl KubeServiceSpec {
    /// The equivalent ServiceEntry spec for a Service `name` in `namespace`.
    pub fn to_service_entry(&self, name: &str, namespace: &str) -> ServiceEntrySpec {
        ServiceEntrySpec {
            hosts: vec![format!("{name}.{namespace}.svc.cluster.local")],
            ports: self
                .ports
                .iter()
                .map(|p| ServicePort {
                    number: p.port,
                    protocol: p.protocol.clone(),
                    name: p.name.clone(),
                    target_port: p
                        .target_port
                        .as_ref()
                        .and_then(|t| t.as_u64())
                        .and_then(|t| u32::try_from(t).ok()),
                    target_port_name: p
                        .target_port
                        .as_ref()
                        .and_then(|t| t.as_str())
                        .map(str::to_owned),
                })
                .collect(),
            workload_selector: (!self.selector.is_empty()).then(|| WorkloadSelector {
                labels: self.selector.clone(),
            }),
            ..Default::default()
        }
    }
}

/// A loaded resource, shared: the pipeline assembles every change's inputs from the
/// unchanged origins' objects without copying them.
pub type Shared<T> = std::sync::Arc<Object<T>>;

/// `apiVersion` of Meltemi's own kinds (`MetaTrafficPolicy`, `MetaAuthorizationPolicy`,
/// `RateLimitConfig`).
pub const MELTEMI_API: &str = "meltemi.io/v1alpha1";

/// Everything loaded from a source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    /// `ApplicationProtocol`s.
    pub protocols: Vec<Shared<ApplicationProtocolSpec>>,
    /// `MetaRouter`s.
    pub routers: Vec<Shared<MetaRouterSpec>>,
    /// `ServiceEntry`s.
    pub service_entries: Vec<Shared<ServiceEntrySpec>>,
    /// `DestinationRule`s.
    pub destination_rules: Vec<Shared<DestinationRuleSpec>>,
    /// Aeraki `DubboAuthorizationPolicy`s (`crate::authz`).
    pub dubbo_authz: Vec<Shared<crate::authz::DubboAuthorizationPolicySpec>>,
    /// Meltemi `MetaAuthorizationPolicy`s (`crate::authz`).
    pub meta_authz: Vec<Shared<crate::authz::MetaAuthorizationPolicySpec>>,
    /// Meltemi `MetaTrafficPolicy`s (timeouts, retries, faults).
    pub traffic_policies: Vec<Shared<crate::policy::MetaTrafficPolicySpec>>,
    /// Istio `Gateway`s (their Meltemi servers become gateway listeners).
    pub gateways: Vec<Shared<crate::gateway::GatewaySpec>>,
    /// Istio `Telemetry`s (see [`crate::telemetry`]).
    pub telemetries: Vec<Shared<crate::telemetry::TelemetrySpec>>,
    /// The mesh configuration's providers (ConfigMap `istio`, `data.mesh`).
    pub meshes: Vec<Shared<crate::telemetry::MeshConfig>>,
    /// Meltemi `RateLimitConfig`s: the limits of the controller's rate limit service.
    pub rate_limit_configs: Vec<Shared<crate::ratelimit::RateLimitConfigSpec>>,
    /// `Pod`s and Istio `WorkloadEntry`s, the endpoints of services that select workloads.
    pub workloads: Vec<Shared<crate::workloads::Workload>>,
}

/// The protocol of a Meltemi port name `tcp-metaprotocol-<protocol>[-…]`, if it is one.
pub fn port_protocol(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("tcp-metaprotocol-")?;
    let protocol = rest.split('-').next().unwrap_or(rest);
    (!protocol.is_empty()).then_some(protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names() {
        assert_eq!(port_protocol("tcp-metaprotocol-dubbo"), Some("dubbo"));
        assert_eq!(
            port_protocol("tcp-metaprotocol-thrift-hello"),
            Some("thrift")
        );
        assert_eq!(port_protocol("tcp-metaprotocol-"), None);
        assert_eq!(port_protocol("tcp-dubbo"), None);
    }
}
