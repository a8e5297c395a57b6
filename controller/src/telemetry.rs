//! Observability through the controller: Istio's `Telemetry` resources
//! (`telemetry.istio.io`) and the mesh's `extensionProviders` (the `istio` ConfigMap's `mesh`
//! key, as istiod reads it) become, on every front listener they apply to:
//! - HCM access logs: one JSON line per call (protocol, service, method, request id, outcome,
//!   response code and flags, upstream host, duration, trace id) to a file or `/dev/stdout`;
//! - Zipkin tracing (the tracer compiled into stock Envoy): a span per call, named by the
//!   route's `decorator` (`<service>/<method>`), reported to the provider's collector;
//! - the back's `propagate_headers` (B3 headers), so that the trace context the router injects
//!   reaches the server inside the protocol (Dubbo attachments, THeader headers).
//!
//! Scope, as Istio applies Telemetry: one in the root namespace (`istio-system`) is mesh-wide,
//! one in a service's namespace overrides it for that namespace's ports (field by field:
//! `accessLogging`, `tracing`). Workload selectors are refused (the plain-Envoy output has no
//! workloads to select). Metrics need no Telemetry: the fronts always report them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::load::Problem;
use crate::model::{Inputs, Object, ObjectMeta, Shared, Source};

/// Istio's root namespace: a Telemetry there applies to the whole mesh.
pub const ROOT_NAMESPACE: &str = "istio-system";
/// The built-in access-log provider (Istio's name for Envoy's own logger): JSON lines on stdout.
pub const BUILTIN_LOG_PROVIDER: &str = "envoy";
/// The trace context Envoy's Zipkin tracer injects into the upstream request; the back
/// writes these into the frame.
pub const B3_HEADERS: [&str; 4] = [
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
];
/// The W3C trace context, injected too when a provider asks for
/// `USE_B3_WITH_W3C_PROPAGATION`.
pub const W3C_HEADERS: [&str; 2] = ["traceparent", "tracestate"];
/// Istio's (and Envoy's) name for B3 extraction with a W3C fallback and both injected.
pub const B3_WITH_W3C: &str = "USE_B3_WITH_W3C_PROPAGATION";
/// Istio's (and Envoy's) default: B3 only.
pub const B3_ONLY: &str = "USE_B3";
/// Where Zipkin collectors take spans (JSON, v2) unless the provider names another path.
pub const ZIPKIN_PATH: &str = "/api/v2/spans";

/// A provider named by a Telemetry.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderRef {
    /// Name of an `extensionProviders` entry (or `envoy`).
    #[serde(default)]
    pub name: String,
}

/// `spec.accessLogging[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogging {
    /// Loggers.
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    /// `true` turns access logging off (overriding a mesh-wide Telemetry).
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// `literal` custom tag.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Literal {
    /// The tag's value.
    #[serde(default)]
    pub value: String,
}

/// `header` custom tag: the value of a request header (a metadata key, as the front writes it).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderTag {
    /// Header name.
    #[serde(default)]
    pub name: String,
    /// Value when the header is absent.
    #[serde(default)]
    pub default_value: Option<String>,
}

/// One of `spec.tracing[].customTags`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CustomTag {
    /// A fixed value.
    #[serde(default)]
    pub literal: Option<Literal>,
    /// A request header's value.
    #[serde(default)]
    pub header: Option<HeaderTag>,
}

/// `spec.tracing[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// The tracer (one zipkin provider).
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    /// Share of calls traced, 0–100 (Istio's default: 1).
    #[serde(default)]
    pub random_sampling_percentage: Option<f64>,
    /// Extra span tags.
    #[serde(default)]
    pub custom_tags: BTreeMap<String, CustomTag>,
}

/// `Telemetry.spec` (telemetry.istio.io v1 / v1alpha1), the part Meltemi translates.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    /// Workload selector: refused by validation (see the module doc).
    #[serde(default)]
    pub selector: Option<Value>,
    /// Refused likewise.
    #[serde(default)]
    pub target_ref: Option<Value>,
    /// Refused likewise.
    #[serde(default)]
    pub target_refs: Vec<Value>,
    /// Access logging.
    #[serde(default)]
    pub access_logging: Vec<AccessLogging>,
    /// Tracing.
    #[serde(default)]
    pub tracing: Vec<Tracing>,
    /// Istio's metric overrides: accepted and not translated (the fronts define Meltemi's
    /// metrics themselves).
    #[serde(default)]
    pub metrics: Vec<Value>,
}

/// `extensionProviders[].zipkin`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZipkinProvider {
    /// Collector host: a ServiceEntry host (its endpoints are used) or a DNS name.
    #[serde(default)]
    pub service: String,
    /// Collector port.
    #[serde(default)]
    pub port: u32,
    /// Longest tag value kept (Envoy's `max_path_tag_length`).
    #[serde(default)]
    pub max_tag_length: Option<u32>,
    /// 64-bit trace ids instead of 128-bit.
    #[serde(default, rename = "enable64bitTraceId")]
    pub enable_64bit_trace_id: Option<bool>,
    /// Collector path (default `/api/v2/spans`).
    #[serde(default)]
    pub path: Option<String>,
    /// `USE_B3` (the default) or `USE_B3_WITH_W3C_PROPAGATION` (Istio 1.28): extract B3,
    /// else a W3C `traceparent`, and inject both, so that servers on OpenTelemetry's default
    /// propagation see the trace too.
    #[serde(default, alias = "trace_context_option")]
    pub trace_context_option: Option<String>,
}

/// `envoyFileAccessLog.logFormat`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogFormat {
    /// JSON fields added to (or replacing) Meltemi's, as Envoy command operators.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `extensionProviders[].envoyFileAccessLog`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileProvider {
    /// File (`/dev/stdout` for the container log).
    #[serde(default)]
    pub path: String,
    /// JSON fields (`labels`); Meltemi's lines are always JSON.
    #[serde(default)]
    pub log_format: Option<LogFormat>,
}

/// `extensionProviders[]`: the kinds Meltemi translates.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// Name Telemetries refer to.
    #[serde(default)]
    pub name: String,
    /// A Zipkin collector.
    #[serde(default)]
    pub zipkin: Option<ZipkinProvider>,
    /// A file logger.
    #[serde(default)]
    pub envoy_file_access_log: Option<FileProvider>,
}

/// The mesh configuration (the `mesh` key of ConfigMap `istio`): only `extensionProviders`
/// is read; the other MeshConfig fields are istiod's business and ignored.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    /// Providers.
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
}

/// Loads ConfigMap `istio`'s `data.mesh` (a YAML document in a string) into `out`.
pub fn load_mesh(
    doc: &Value,
    meta: ObjectMeta,
    source: Source,
    out: &mut Vec<Shared<MeshConfig>>,
    problems: &mut Vec<Problem>,
) {
    let resource = format!(
        "ConfigMap {}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name
    );
    let text = doc["data"]["mesh"].as_str().unwrap_or("");
    let value: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        match serde_saphyr::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                problems.push(Problem {
                    source,
                    resource,
                    field: "data.mesh".into(),
                    message: format!("not valid YAML: {e}"),
                });
                return;
            }
        }
    };
    let spec = if value.is_null() {
        MeshConfig::default()
    } else {
        match serde_path_to_error::deserialize(value) {
            Ok(spec) => spec,
            Err(e) => {
                problems.push(Problem {
                    source,
                    resource,
                    field: format!("data.mesh.{}", e.path()),
                    message: e.inner().to_string(),
                });
                return;
            }
        }
    };
    out.push(std::sync::Arc::new(Object { meta, spec, source }));
}

/// A resolved file access log.
#[derive(Debug, Clone, PartialEq)]
pub struct FileLog {
    /// Path.
    pub path: String,
    /// Extra JSON fields.
    pub labels: BTreeMap<String, String>,
}

/// Resolved Zipkin tracing.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Collector host and port.
    pub service: String,
    /// Collector port.
    pub port: u32,
    /// Collector path.
    pub path: String,
    /// 0–100.
    pub sampling: f64,
    /// Custom tags.
    pub tags: BTreeMap<String, CustomTag>,
    /// Longest tag value.
    pub max_tag_length: Option<u32>,
    /// 128-bit trace ids.
    pub trace_id_128bit: bool,
    /// Also the W3C trace context (`traceparent`), extracted when B3 is absent and injected.
    pub w3c: bool,
    /// Collector addresses from a ServiceEntry for `service` (none: DNS).
    pub endpoints: Vec<(String, u32)>,
}

impl Trace {
    /// The collector cluster's name.
    pub fn cluster_name(&self) -> String {
        format!("meltemi_zipkin|{}|{}", self.service, self.port)
    }

    /// The collector cluster.
    pub fn cluster(&self) -> Value {
        let name = self.cluster_name();
        let (kind, addresses) = if self.endpoints.is_empty() {
            ("STRICT_DNS", vec![(self.service.clone(), self.port)])
        } else {
            ("STATIC", self.endpoints.clone())
        };
        let lb: Vec<Value> = addresses
            .iter()
            .map(|(a, p)| json!({"endpoint": {"address": {"socket_address": {"address": a, "port_value": p}}}}))
            .collect();
        json!({
            "name": name,
            "type": kind,
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb}]}
        })
    }
}

/// What applies to one port: part of the port's translation key, so that a Telemetry or
/// provider change re-translates exactly the ports it applies to.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PortTelemetry {
    /// Namespace of the port's services (Istio's `destination_service_namespace`).
    pub namespace: String,
    /// Access logs (empty: none).
    pub access_logs: Vec<FileLog>,
    /// Tracing.
    pub tracing: Option<Trace>,
}

fn provider<'a>(inputs: &'a Inputs, name: &str) -> Option<&'a ExtensionProvider> {
    inputs
        .meshes
        .first()?
        .spec
        .extension_providers
        .iter()
        .find(|p| p.name == name)
}

/// The Telemetry of `namespace` (if any) and the root namespace's, most specific first.
fn scopes<'a>(inputs: &'a Inputs, namespace: &str) -> Vec<&'a TelemetrySpec> {
    let mut out: Vec<&'a TelemetrySpec> = Vec::new();
    for ns in [namespace, ROOT_NAMESPACE] {
        if let Some(t) = inputs
            .telemetries
            .iter()
            .find(|t| t.namespace() == ns && t.spec.selector.is_none())
        {
            if !out.iter().any(|o| std::ptr::eq(*o, &t.spec)) {
                out.push(&t.spec);
            }
        }
    }
    out
}

/// What applies to a port whose services live in `namespace`; `None` when nothing does.
/// Call after validation (unknown providers are skipped here).
pub fn for_port(inputs: &Inputs, namespace: &str) -> Option<PortTelemetry> {
    let scopes = scopes(inputs, namespace);
    let logging = scopes.iter().find(|t| !t.access_logging.is_empty());
    let tracing = scopes.iter().find(|t| !t.tracing.is_empty());
    if scopes.is_empty() {
        return None;
    }
    let mut out = PortTelemetry {
        namespace: namespace.to_owned(),
        ..PortTelemetry::default()
    };
    for entry in logging.into_iter().flat_map(|t| &t.access_logging) {
        if entry.disabled == Some(true) {
            continue;
        }
        for p in &entry.providers {
            if p.name == BUILTIN_LOG_PROVIDER && provider(inputs, &p.name).is_none() {
                out.access_logs.push(FileLog {
                    path: "/dev/stdout".into(),
                    labels: BTreeMap::new(),
                });
            } else if let Some(f) =
                provider(inputs, &p.name).and_then(|p| p.envoy_file_access_log.as_ref())
            {
                out.access_logs.push(FileLog {
                    path: f.path.clone(),
                    labels: f
                        .log_format
                        .as_ref()
                        .map(|l| l.labels.clone())
                        .unwrap_or_default(),
                });
            }
        }
    }
    if let Some(t) = tracing.and_then(|t| t.tracing.first()) {
        let zipkin = t
            .providers
            .first()
            .and_then(|p| provider(inputs, &p.name))
            .and_then(|p| p.zipkin.as_ref());
        if let Some(z) = zipkin {
            let endpoints = inputs
                .service_entries
                .iter()
                .filter(|se| se.spec.hosts.contains(&z.service))
                .flat_map(|se| {
                    let port = se.spec.ports.iter().find(|p| p.number == z.port);
                    se.spec.endpoints.iter().map(move |e| {
                        let target = port
                            .and_then(|p| e.ports.get(&p.name).copied().or(p.target_port))
                            .unwrap_or(z.port);
                        (e.address.clone(), target)
                    })
                })
                .collect();
            out.tracing = Some(Trace {
                service: z.service.clone(),
                port: z.port,
                path: z.path.clone().unwrap_or_else(|| ZIPKIN_PATH.into()),
                sampling: t.random_sampling_percentage.unwrap_or(1.0),
                tags: t.custom_tags.clone(),
                max_tag_length: z.max_tag_length,
                trace_id_128bit: z.enable_64bit_trace_id != Some(true),
                w3c: z.trace_context_option.as_deref() == Some(B3_WITH_W3C),
                endpoints,
            });
        }
    }
    Some(out)
}

/// The module for one port: the back's `propagate_headers` set when the port is traced, and
/// the methods its routes name as `known_methods` (unless the operator set them with
/// `--filter-config`).
pub fn module<'a>(
    module: &'a crate::template::Module,
    t: Option<&PortTelemetry>,
    methods: &std::collections::BTreeSet<&str>,
    native_front: bool,
) -> std::borrow::Cow<'a, crate::template::Module> {
    let trace = t.and_then(|t| t.tracing.as_ref());
    let traced = trace.is_some();
    // Only the native front needs the method labels up front (Envoy refuses metrics defined
    // after its configuration is loaded); the wasm front admits them as they come. Naming
    // them puts the routes' methods into the listener, so a route change that changes them
    // modifies the listener: keep that to the build that needs it.
    let name_methods =
        native_front && !methods.is_empty() && !module.config.contains_key("known_methods");
    if !traced && !name_methods {
        return std::borrow::Cow::Borrowed(module);
    }
    let mut m = module.clone();
    if let Some(trace) = trace {
        let mut headers = B3_HEADERS.to_vec();
        if trace.w3c {
            headers.extend(W3C_HEADERS);
        }
        m.config.insert("propagate_headers".into(), json!(headers));
    }
    if name_methods {
        m.config.insert("known_methods".into(), json!(methods));
    }
    std::borrow::Cow::Owned(m)
}

/// A CEL expression mapping the answer to the protocol outcome the front reports in
/// `meltemi_responses_total{outcome}` (the back marks server answers with
/// `x-meltemi-response`; an answer without it is an Envoy local reply). Envoy's command
/// parser ends an argument at the first `)`, so the expression has no parentheses.
fn outcome_cel() -> String {
    let marker = meltemi_sdk::bridge::RESPONSE_HEADER;
    let has = format!("'{marker}' in response.headers");
    let is = |v: &str| format!("{has} && response.headers['{marker}'] == '{v}'");
    format!(
        "%CEL({} ? 'oneway' : {} ? 'business_error' : {has} ? 'success' : 'local_reply')%",
        is(meltemi_sdk::bridge::ONEWAY_ACK),
        is(meltemi_sdk::MessageKind::Exception.as_str()),
    )
}

/// A CEL expression naming the error kind of a local reply (what the protocol's error reply
/// says), from Envoy's status code as the front maps it; `-` for server answers.
fn error_kind_cel() -> String {
    let marker = meltemi_sdk::bridge::RESPONSE_HEADER;
    let mut expr = format!("'{marker}' in response.headers ? '-' : ");
    for status in [404u16, 403, 401, 429, 503, 502, 504, 408, 400, 413, 431] {
        let kind = meltemi_sdk::bridge::error_kind_for_status(status);
        expr.push_str(&format!(
            "response.code == {status} ? '{}' : ",
            kind.as_str()
        ));
    }
    expr.push_str(&format!(
        "'{}'",
        meltemi_sdk::bridge::error_kind_for_status(500).as_str()
    ));
    format!("%CEL({expr})%")
}

/// The JSON fields of an access-log line (before the provider's `labels`).
pub fn log_fields(protocol: &str) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        f.insert(k.to_owned(), v);
    };
    put("start_time", "%START_TIME%".into());
    put("protocol", protocol.to_owned());
    put("service", "%REQ(:AUTHORITY)%".into());
    put("method", "%REQ(METHOD)%".into());
    put("path", "%REQ(:PATH)%".into());
    put(
        "request_id",
        format!("%REQ({})%", meltemi_sdk::bridge::RID_HEADER),
    );
    put(
        "kind",
        format!("%REQ({})%", meltemi_sdk::bridge::KIND_HEADER),
    );
    put("outcome", outcome_cel());
    put("error_kind", error_kind_cel());
    put("response_code", "%RESPONSE_CODE%".into());
    put("response_flags", "%RESPONSE_FLAGS%".into());
    put("upstream_cluster", "%UPSTREAM_CLUSTER%".into());
    put("upstream_host", "%UPSTREAM_HOST%".into());
    put("duration_ms", "%DURATION%".into());
    put("bytes_received", "%BYTES_RECEIVED%".into());
    put("bytes_sent", "%BYTES_SENT%".into());
    put("x_request_id", "%REQ(X-REQUEST-ID)%".into());
    put("trace_id", "%TRACE_ID%".into());
    f
}

fn access_log(protocol: &str, log: &FileLog) -> Value {
    let mut fields = log_fields(protocol);
    fields.extend(log.labels.clone());
    json!({
        "name": "envoy.access_loggers.file",
        "filter": not_local(),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": log.path,
            "log_format": {
                // `%CEL(...)%` needs no formatter extension: Envoy 1.40 always enables it.
                "json_format": fields
            }
        }
    })
}

fn tracing(t: &Trace) -> Value {
    let mut tags: Vec<Value> = vec![
        json!({"tag": "rpc.method", "request_header": {"name": "method", "default_value": "-"}}),
        json!({"tag": "rpc.service", "request_header": {"name": ":authority"}}),
    ];
    for (name, tag) in &t.tags {
        if let Some(l) = &tag.literal {
            tags.push(json!({"tag": name, "literal": {"value": l.value}}));
        } else if let Some(h) = &tag.header {
            let mut rh = json!({"name": h.name});
            if let Some(d) = &h.default_value {
                rh["default_value"] = json!(d);
            }
            tags.push(json!({"tag": name, "request_header": rh}));
        }
    }
    let mut out = json!({
        "random_sampling": {"value": t.sampling},
        "custom_tags": tags,
        "provider": {
            "name": "envoy.tracers.zipkin",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                "collector_cluster": t.cluster_name(),
                "collector_endpoint": t.path,
                "collector_endpoint_version": "HTTP_JSON",
                "collector_hostname": t.service,
                "trace_id_128bit": t.trace_id_128bit,
                "trace_context_option": if t.w3c { B3_WITH_W3C } else { B3_ONLY }
            }
        }
    });
    if let Some(max) = t.max_tag_length {
        out["max_path_tag_length"] = json!(max);
    }
    out
}

/// Envoy's stats namespace for the wasm build's own metrics; Envoy's Prometheus output drops
/// it (only once a wasm filter registered it).
pub const WASM_STATS_NAMESPACE: &str = "wasmcustom";

/// Envoy's stats namespace for dynamic modules' metrics; Envoy 1.40's Prometheus output keeps
/// it (`envoy_dynamicmodulescustom_…`).
pub const NATIVE_STATS_NAMESPACE: &str = "dynamicmodulescustom";

/// Istio's standard request metrics, emitted per call by Envoy's `stats` access logger with
/// the subset of Istio's labels the bridge knows (see `docs/issue11/telemetry.md`). With a
/// wasm front they live in the `wasmcustom` namespace, so Prometheus sees Istio's exact
/// names; the native build has no namespace Envoy strips: they join its own metrics in
/// `dynamicmodulescustom` (Prometheus: `envoy_dynamicmodulescustom_istio_*`).
pub fn istio_metrics(build: crate::template::Build, protocol: &str, namespace: &str) -> Value {
    let tags = |with_code: bool| -> Value {
        let mut t = vec![
            json!({"name": "reporter", "value_format": "source"}),
            json!({"name": "source_workload", "value_format": "unknown"}),
            json!({"name": "destination_service", "value_format": "%REQ(:AUTHORITY)%"}),
            json!({"name": "destination_service_namespace", "value_format": namespace}),
            json!({"name": "request_protocol", "value_format": protocol}),
        ];
        if with_code {
            t.push(json!({"name": "response_code", "value_format": "%RESPONSE_CODE%"}));
            t.push(json!({"name": "response_flags", "value_format": "%RESPONSE_FLAGS%"}));
        }
        Value::Array(t)
    };
    let histogram = |name: &str, unit: &str, value: &str| json!({"stat": {"name": name, "tags": tags(true)}, "unit": unit, "value_format": value});
    let mut config = json!({
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stats.v3.Config",
        "counters": [{"stat": {"name": "istio_requests_total", "tags": tags(true)}, "value_fixed": 1}],
        "histograms": [
            histogram("istio_request_duration_milliseconds", "Milliseconds", "%DURATION%"),
            histogram("istio_request_bytes", "Bytes", "%BYTES_RECEIVED%"),
            histogram("istio_response_bytes", "Bytes", "%BYTES_SENT%")
        ]
    });
    // Envoy requires a scope. The native build's own metrics live in the dynamic modules'
    // namespace: Istio's go there too, so one scrape rule renames both.
    let scope = if build.wasm_front() {
        WASM_STATS_NAMESPACE
    } else {
        NATIVE_STATS_NAMESPACE
    };
    config["stats_scope"] = json!({"prefix": scope});
    json!({
        "name": "envoy.access_loggers.stats",
        "filter": not_local(),
        "typed_config": config
    })
}

/// Requests the front answers itself (heartbeats, refusals) are not calls of a service.
fn not_local() -> Value {
    json!({"header_filter": {"header": {
        "name": ":authority",
        "string_match": {"exact": meltemi_sdk::bridge::LOCAL_AUTHORITY},
        "invert_match": true
    }}})
}

/// Adds access logs, Istio's standard metrics and tracing to the front listener's HCM.
pub fn apply_listener(
    listener: &mut Value,
    build: crate::template::Build,
    protocol: &str,
    t: &PortTelemetry,
) {
    let Some(filters) = listener["filter_chains"][0]["filters"].as_array_mut() else {
        return;
    };
    for f in filters {
        if f["name"] != "envoy.filters.network.http_connection_manager" {
            continue;
        }
        let hcm = &mut f["typed_config"];
        let mut logs: Vec<Value> = t
            .access_logs
            .iter()
            .map(|l| access_log(protocol, l))
            .collect();
        logs.push(istio_metrics(build, protocol, &t.namespace));
        hcm["access_log"] = Value::Array(logs);
        if let Some(tr) = &t.tracing {
            hcm["tracing"] = tracing(tr);
            // Envoy decides sampling from the request id: without one nothing is traced.
            hcm["generate_request_id"] = json!(true);
        }
    }
}

/// Names every routed call's span `<service>/<method>` (the route's `decorator`): the
/// method a route matches exactly, else `*`, as Istio names spans `<host>:<port>/*`.
pub fn decorate_routes(route_config: &mut Value) {
    let Some(vhosts) = route_config["virtual_hosts"].as_array_mut() else {
        return;
    };
    for vh in vhosts {
        let host = vh["domains"][0].as_str().unwrap_or("").to_owned();
        if host == meltemi_sdk::bridge::LOCAL_AUTHORITY {
            continue;
        }
        let Some(routes) = vh["routes"].as_array_mut() else {
            continue;
        };
        for r in routes {
            if r.get("route").is_none() {
                continue;
            }
            let method = r["match"]["headers"]
                .as_array()
                .and_then(|hs| {
                    hs.iter()
                        .find(|h| h["name"] == "method")
                        .and_then(|h| h["string_match"]["exact"].as_str())
                })
                .unwrap_or("*")
                .to_owned();
            r["decorator"] = json!({"operation": format!("{host}/{method}")});
        }
    }
}

/// Every problem with Telemetries and providers, naming file, resource and field.
pub fn validate(inputs: &Inputs) -> Vec<Problem> {
    let mut out = Vec::new();
    let problem = |source: &Source, resource: String, field: String, message: String| Problem {
        source: source.clone(),
        resource,
        field,
        message,
    };
    for (i, mesh) in inputs.meshes.iter().enumerate() {
        let id = mesh.id("ConfigMap");
        if i > 0 {
            out.push(problem(
                &mesh.source,
                id.clone(),
                "metadata.name".into(),
                format!(
                    "a second mesh configuration; {} is already read",
                    inputs.meshes[0].id("ConfigMap")
                ),
            ));
        }
        for (j, p) in mesh.spec.extension_providers.iter().enumerate() {
            let field = |f: &str| format!("data.mesh.extensionProviders[{j}]{f}");
            if p.name.is_empty() {
                out.push(problem(
                    &mesh.source,
                    id.clone(),
                    field(".name"),
                    "missing".into(),
                ));
            }
            if mesh.spec.extension_providers[..j]
                .iter()
                .any(|q| q.name == p.name)
            {
                out.push(problem(
                    &mesh.source,
                    id.clone(),
                    field(".name"),
                    format!("provider {:?} is defined twice", p.name),
                ));
            }
            match (&p.zipkin, &p.envoy_file_access_log) {
                (Some(z), None) => {
                    if z.service.is_empty() {
                        out.push(problem(&mesh.source, id.clone(), field(".zipkin.service"), "missing".into()));
                    }
                    if z.port == 0 || z.port > 65535 {
                        out.push(problem(
                            &mesh.source,
                            id.clone(),
                            field(".zipkin.port"),
                            format!("{} is not a port (1–65535)", z.port),
                        ));
                    }
                    if let Some(path) = &z.path {
                        if !path.starts_with('/') {
                            out.push(problem(&mesh.source, id.clone(), field(".zipkin.path"), format!("{path:?} must start with /")));
                        }
                    }
                    if let Some(option) = &z.trace_context_option {
                        if option != B3_ONLY && option != B3_WITH_W3C {
                            out.push(problem(
                                &mesh.source,
                                id.clone(),
                                field(".zipkin.traceContextOption"),
                                format!("{option:?} is not {B3_ONLY} or {B3_WITH_W3C}"),
                            ));
                        }
                    }
                }
                (None, Some(f)) => {
                    if f.path.is_empty() {
                        out.push(problem(&mesh.source, id.clone(), field(".envoyFileAccessLog.path"), "missing".into()));
                    }
                }
                _ => out.push(problem(
                    &mesh.source,
                    id.clone(),
                    field(""),
                    "must define exactly one of zipkin, envoyFileAccessLog (the provider kinds Meltemi translates)".into(),
                )),
            }
        }
    }
    for (i, t) in inputs.telemetries.iter().enumerate() {
        let id = t.id("Telemetry");
        let src = &t.source;
        if t.spec.selector.is_some()
            || t.spec.target_ref.is_some()
            || !t.spec.target_refs.is_empty()
        {
            let field = if t.spec.selector.is_some() {
                "spec.selector"
            } else if t.spec.target_ref.is_some() {
                "spec.targetRef"
            } else {
                "spec.targetRefs"
            };
            out.push(problem(
                src,
                id.clone(),
                field.into(),
                format!("workload selection is not supported: a Telemetry applies to its namespace's services ({ROOT_NAMESPACE}: the whole mesh)"),
            ));
        }
        if let Some(first) = inputs.telemetries[..i].iter().find(|o| {
            o.namespace() == t.namespace() && o.spec.selector.is_none() && t.spec.selector.is_none()
        }) {
            out.push(problem(
                src,
                id.clone(),
                "metadata.namespace".into(),
                format!(
                    "conflicts with {}: one Telemetry per namespace",
                    first.id("Telemetry")
                ),
            ));
        }
        for (j, a) in t.spec.access_logging.iter().enumerate() {
            for (k, p) in a.providers.iter().enumerate() {
                let field = format!("spec.accessLogging[{j}].providers[{k}].name");
                match provider(inputs, &p.name) {
                    Some(ep) if ep.envoy_file_access_log.is_none() => out.push(problem(
                        src,
                        id.clone(),
                        field,
                        format!("provider {:?} is not an envoyFileAccessLog provider", p.name),
                    )),
                    None if p.name != BUILTIN_LOG_PROVIDER => out.push(problem(
                        src,
                        id.clone(),
                        field,
                        format!("no extensionProvider named {:?} in the mesh configuration (ConfigMap {ROOT_NAMESPACE}/istio, data.mesh); built in: {BUILTIN_LOG_PROVIDER}", p.name),
                    )),
                    _ => {}
                }
            }
        }
        if t.spec.tracing.len() > 1 {
            out.push(problem(
                src,
                id.clone(),
                "spec.tracing[1]".into(),
                "one tracing entry is supported".into(),
            ));
        }
        for (j, tr) in t.spec.tracing.iter().enumerate() {
            if tr.providers.len() != 1 {
                out.push(problem(
                    src,
                    id.clone(),
                    format!("spec.tracing[{j}].providers"),
                    format!(
                        "name exactly one zipkin provider ({} named)",
                        tr.providers.len()
                    ),
                ));
            }
            for (k, p) in tr.providers.iter().enumerate() {
                let field = format!("spec.tracing[{j}].providers[{k}].name");
                match provider(inputs, &p.name) {
                    Some(ep) if ep.zipkin.is_none() => out.push(problem(
                        src,
                        id.clone(),
                        field,
                        format!("provider {:?} is not a zipkin provider", p.name),
                    )),
                    None => out.push(problem(
                        src,
                        id.clone(),
                        field,
                        format!("no extensionProvider named {:?} in the mesh configuration (ConfigMap {ROOT_NAMESPACE}/istio, data.mesh)", p.name),
                    )),
                    _ => {}
                }
            }
            if let Some(pct) = tr.random_sampling_percentage {
                if !(0.0..=100.0).contains(&pct) {
                    out.push(problem(
                        src,
                        id.clone(),
                        format!("spec.tracing[{j}].randomSamplingPercentage"),
                        format!("{pct} is not a percentage (0–100)"),
                    ));
                }
            }
            for (name, tag) in &tr.custom_tags {
                let field = format!("spec.tracing[{j}].customTags.{name}");
                match (&tag.literal, &tag.header) {
                    (Some(_), None) => {}
                    (None, Some(h)) if crate::validate::header_name(&h.name).is_some() => {}
                    (None, Some(h)) => out.push(problem(
                        src,
                        id.clone(),
                        format!("{field}.header.name"),
                        format!("{:?} is not a header name", h.name),
                    )),
                    _ => out.push(problem(
                        src,
                        id.clone(),
                        field,
                        "must define exactly one of literal, header".into(),
                    )),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{load_text, Loaded};

    pub(crate) const MESH: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    defaultConfig: {discoveryAddress: istiod.istio-system.svc:15012}
    extensionProviders:
    - name: zipkin
      zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
    - name: json-log
      envoyFileAccessLog:
        path: /tmp/calls.log
        logFormat: {labels: {cluster: east}}
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: zipkin, namespace: istio-system}
spec:
  hosts: [zipkin.istio-system.svc.cluster.local]
  ports: [{number: 9411, name: http-zipkin, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http-zipkin: 19411}}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging: [{providers: [{name: json-log}]}]
  tracing:
  - providers: [{name: zipkin}]
    randomSamplingPercentage: 100
    customTags: {team: {literal: {value: payments}}, caller: {header: {name: x-caller, defaultValue: none}}}
"#;

    fn load(text: &str) -> Loaded {
        let mut loaded = Loaded::default();
        load_text("t.yaml", text, &mut loaded);
        loaded
    }

    #[test]
    fn mesh_providers_and_a_root_telemetry_resolve_for_every_namespace() {
        let l = load(MESH);
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert!(validate(&l.inputs).is_empty(), "{:?}", validate(&l.inputs));
        let t = for_port(&l.inputs, "meta").expect("mesh-wide");
        assert_eq!(t.access_logs.len(), 1);
        assert_eq!(t.access_logs[0].path, "/tmp/calls.log");
        assert_eq!(t.access_logs[0].labels["cluster"], "east");
        let tr = t.tracing.expect("tracing");
        assert_eq!(tr.sampling, 100.0);
        assert_eq!(tr.endpoints, vec![("127.0.0.1".to_owned(), 19411)]);
        assert_eq!(tr.cluster()["type"], "STATIC");
        assert!(tr.trace_id_128bit);
    }

    #[test]
    fn a_namespace_telemetry_overrides_the_root_field_by_field() {
        let text = format!(
            "{MESH}---\napiVersion: telemetry.istio.io/v1alpha1\nkind: Telemetry\nmetadata: {{name: quiet, namespace: meta}}\nspec:\n  accessLogging: [{{disabled: true}}]\n"
        );
        let l = load(&text);
        assert!(validate(&l.inputs).is_empty(), "{:?}", validate(&l.inputs));
        let t = for_port(&l.inputs, "meta").expect("tracing stays");
        assert!(t.access_logs.is_empty());
        assert!(t.tracing.is_some());
        assert_eq!(for_port(&l.inputs, "other").unwrap().access_logs.len(), 1);
        // No Telemetry at all: nothing applies.
        let l = load("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: x, namespace: a}\nspec: {accessLogging: [{providers: [{name: envoy}]}]}\n");
        assert!(for_port(&l.inputs, "b").is_none());
        assert_eq!(
            for_port(&l.inputs, "a").unwrap().access_logs[0].path,
            "/dev/stdout"
        );
    }

    #[test]
    fn rejections_name_file_resource_and_field() {
        let bad = MESH
            .replace("port: 9411}", "port: 0}")
            .replace(
                "randomSamplingPercentage: 100",
                "randomSamplingPercentage: 150",
            )
            .replace("[{name: json-log}]", "[{name: nope}]");
        let l = load(&bad);
        let p: Vec<String> = validate(&l.inputs).iter().map(|p| p.to_string()).collect();
        let has = |s: &str| p.iter().any(|x| x.contains(s));
        assert!(
            has(
                "ConfigMap istio-system/istio: field `data.mesh.extensionProviders[0].zipkin.port`"
            ),
            "{p:?}"
        );
        assert!(has("Telemetry istio-system/mesh-default: field `spec.tracing[0].randomSamplingPercentage`"), "{p:?}");
        assert!(has("field `spec.accessLogging[0].providers[0].name`: no extensionProvider named \"nope\""), "{p:?}");
        assert!(p.iter().all(|x| x.starts_with("t.yaml (document")), "{p:?}");
        // A tracing provider that is a logger, a selector, an unknown field.
        let l = load(&MESH.replace(
            "providers: [{name: zipkin}]",
            "providers: [{name: json-log}]",
        ));
        let p: Vec<String> = validate(&l.inputs).iter().map(|p| p.to_string()).collect();
        assert!(
            p.iter()
                .any(|x| x.contains("spec.tracing[0].providers[0].name")
                    && x.contains("not a zipkin provider")),
            "{p:?}"
        );
        let l = load("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: x}\nspec: {selector: {matchLabels: {app: a}}}\n");
        let p: Vec<String> = validate(&l.inputs).iter().map(|p| p.to_string()).collect();
        assert!(
            p.iter().any(|x| x.contains("field `spec.selector`")),
            "{p:?}"
        );
        let l = load("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: x}\nspec: {tracing: [{providers: [{name: z}], sampling: 3}]}\n");
        assert!(
            l.problems
                .iter()
                .any(|p| p.to_string().contains("field `spec.tracing[0].sampling`")),
            "{:?}",
            l.problems
        );
        let l = load(&MESH.replace("port: 9411}", "port: 9411, traceContextOption: W3C}"));
        let p: Vec<String> = validate(&l.inputs).iter().map(|p| p.to_string()).collect();
        assert!(p.iter().any(|x| x.contains("field `data.mesh.extensionProviders[0].zipkin.traceContextOption`: \"W3C\" is not USE_B3 or USE_B3_WITH_W3C_PROPAGATION")), "{p:?}");
        let l = load(&MESH.replace(
            "port: 9411}",
            "port: 9411, traceContextOption: USE_B3_WITH_W3C_PROPAGATION}",
        ));
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert!(validate(&l.inputs).is_empty());
        let t = for_port(&l.inputs, "meta").unwrap();
        assert!(t.tracing.is_some_and(|t| t.w3c));
        let l = load(&MESH.replace("zipkin: {service", "opentelemetry: {service"));
        assert!(l.problems.iter().any(|p| p.to_string().contains("ConfigMap istio-system/istio: field `data.mesh.extensionProviders[0].opentelemetry`")), "{:?}", l.problems);
    }

    #[test]
    fn hcm_gets_json_access_logs_and_zipkin_and_routes_get_span_names() {
        let l = load(MESH);
        let t = for_port(&l.inputs, "meta").unwrap();
        let mut listener = json!({"filter_chains": [{"filters": [
            {"name": "meltemi_front"},
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": {"generate_request_id": false}}
        ]}]});
        apply_listener(&mut listener, crate::template::Build::Wasm, "dubbo", &t);
        let hcm = &listener["filter_chains"][0]["filters"][1]["typed_config"];
        assert_eq!(hcm["generate_request_id"], true);
        let log = &hcm["access_log"][0]["typed_config"];
        assert_eq!(log["path"], "/tmp/calls.log");
        let fields = &log["log_format"]["json_format"];
        assert_eq!(fields["protocol"], "dubbo");
        assert_eq!(fields["cluster"], "east");
        let outcome = fields["outcome"].as_str().unwrap();
        assert!(
            outcome.starts_with("%CEL(") && !outcome[5..outcome.len() - 2].contains(')'),
            "{outcome}"
        );
        assert!(fields["error_kind"]
            .as_str()
            .unwrap()
            .contains("response.code == 404 ? 'route_not_found'"));
        let zipkin = &hcm["tracing"]["provider"]["typed_config"];
        assert_eq!(
            zipkin["collector_cluster"],
            "meltemi_zipkin|zipkin.istio-system.svc.cluster.local|9411"
        );
        assert_eq!(zipkin["collector_endpoint"], ZIPKIN_PATH);
        assert_eq!(zipkin["trace_context_option"], B3_ONLY);
        let tags = hcm["tracing"]["custom_tags"].as_array().unwrap();
        assert!(tags
            .iter()
            .any(|t| t["tag"] == "team" && t["literal"]["value"] == "payments"));
        let mut rc = json!({"virtual_hosts": [
            {"domains": ["meltemi.local"], "routes": [{"direct_response": {"status": 200}}]},
            {"domains": ["echo"], "routes": [
                {"match": {"prefix": "/", "headers": [{"name": "method", "string_match": {"exact": "sayHello"}}]}, "route": {"cluster": "a"}},
                {"match": {"prefix": "/"}, "route": {"cluster": "b"}}
            ]}
        ]});
        decorate_routes(&mut rc);
        assert_eq!(
            rc["virtual_hosts"][1]["routes"][0]["decorator"]["operation"],
            "echo/sayHello"
        );
        assert_eq!(
            rc["virtual_hosts"][1]["routes"][1]["decorator"]["operation"],
            "echo/*"
        );
        assert!(rc["virtual_hosts"][0]["routes"][0]
            .get("decorator")
            .is_none());
        let m = crate::template::Module {
            source: crate::template::ModuleSource::Local("/m.wasm".into()),
            native: None,
            failure_policy: Default::default(),
            config: Default::default(),
        };
        let none = std::collections::BTreeSet::new();
        assert_eq!(
            module(&m, Some(&t), &none, false).config["propagate_headers"],
            json!(B3_HEADERS)
        );
        assert!(module(&m, None, &none, true).config.is_empty());
        let mut w3c = t.clone();
        if let Some(trace) = w3c.tracing.as_mut() {
            trace.w3c = true;
        }
        assert_eq!(
            module(&m, Some(&w3c), &none, false).config["propagate_headers"],
            json!([
                "x-b3-traceid",
                "x-b3-spanid",
                "x-b3-parentspanid",
                "x-b3-sampled",
                "traceparent",
                "tracestate"
            ])
        );
        let methods = ["echo", "add"].into_iter().collect();
        assert_eq!(
            module(&m, None, &methods, true).config["known_methods"],
            json!(["add", "echo"])
        );
        // The wasm front admits labels as they come: no methods in its listener.
        assert!(module(&m, None, &methods, false).config.is_empty());
    }

    #[test]
    fn translated_resources_pass_envoy_schema_and_changes_retranslate_only_their_ports() {
        use crate::translate::{translate_cached, Cache};
        let base = crate::translate::tests::DEMO;
        let with = crate::translate::tests::inputs(&format!("{base}---{MESH}"));
        let o = crate::translate::tests::options();
        let mut cache = Cache::default();
        let r = translate_cached(&with, &o, &mut cache).unwrap().clone();
        let collector = "meltemi_zipkin|zipkin.istio-system.svc.cluster.local|9411";
        assert!(
            r.clusters.contains_key(collector),
            "{:?}",
            r.clusters.keys()
        );
        for (kind, map) in [
            (crate::proto::LISTENER, &r.listeners),
            (crate::proto::ROUTE, &r.routes),
            (crate::proto::CLUSTER, &r.clusters),
        ] {
            for (name, v) in map {
                crate::proto::parse(kind, v).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
        let front = &r.listeners["127.0.0.1_9000"];
        let hcm = &front["filter_chains"][0]["filters"][1]["typed_config"];
        assert!(hcm["tracing"].is_object() && hcm["access_log"].is_array());
        let istio = &hcm["access_log"][1]["typed_config"];
        assert_eq!(istio["counters"][0]["stat"]["name"], "istio_requests_total");
        assert_eq!(istio["stats_scope"]["prefix"], WASM_STATS_NAMESPACE);
        let native = istio_metrics(crate::template::Build::Native, "dubbo", "meta");
        assert_eq!(
            native["typed_config"]["stats_scope"]["prefix"],
            NATIVE_STATS_NAMESPACE
        );
        let back = r
            .listeners
            .values()
            .find(|l| l.get("internal_listener").is_some())
            .unwrap();
        let cfg = back["filter_chains"][0]["filters"][0]["typed_config"]["config"]["configuration"]
            ["value"]
            .as_str()
            .unwrap();
        assert!(
            cfg.contains("propagate_headers") && cfg.contains("x-b3-traceid"),
            "{cfg}"
        );
        let routes = r.routes["meltemi_9000"]["virtual_hosts"][1]["routes"]
            .as_array()
            .unwrap();
        assert!(routes.iter().all(|r| r["decorator"]["operation"]
            .as_str()
            .unwrap()
            .starts_with("demo/")));
        // Unchanged: nothing re-translated. A Telemetry change: its port, and the collector
        // follows the provider. Telemetry removed: the port is as without it.
        translate_cached(&with, &o, &mut cache).unwrap();
        assert_eq!(cache.translated, 0);
        let sampled = crate::translate::tests::inputs(&format!(
            "{base}---{}",
            MESH.replace(
                "randomSamplingPercentage: 100",
                "randomSamplingPercentage: 5"
            )
        ));
        let r2 = translate_cached(&sampled, &o, &mut cache).unwrap().clone();
        assert_eq!(cache.translated, 1);
        assert_eq!(
            r2.listeners["127.0.0.1_9000"]["filter_chains"][0]["filters"][1]["typed_config"]
                ["tracing"]["random_sampling"]["value"],
            5.0
        );
        let moved = crate::translate::tests::inputs(&format!(
            "{base}---{}",
            MESH.replace("19411", "19412")
        ));
        let r3 = translate_cached(&moved, &o, &mut cache).unwrap().clone();
        assert_eq!(
            cache.translated, 1,
            "the collector's ServiceEntry is part of the port's key"
        );
        assert_eq!(
            r3.clusters[collector]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
                ["endpoint"]["address"]["socket_address"]["port_value"],
            19412
        );
        let without = crate::translate::tests::inputs(base);
        let r4 = translate_cached(&without, &o, &mut cache).unwrap().clone();
        assert_eq!(cache.translated, 1);
        assert!(!r4.clusters.contains_key(collector));
        assert_eq!(r4, crate::translate::translate(&without, &o).unwrap());
    }

    /// The serving pipeline (what `serve` runs on the watched directory): a Telemetry file
    /// reaches the front listener, a change to it re-translates its port, a bad rewrite is
    /// rejected naming file, resource and field and the last good configuration stays.
    #[test]
    fn the_watched_directory_pipeline_serves_and_rejects_telemetry() {
        use crate::source::{Pipeline, Rejected};
        let dir = std::env::temp_dir().join(format!("meltemi-telemetry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("demo.yaml"), crate::translate::tests::DEMO).unwrap();
        let file = dir.join("telemetry.yaml");
        std::fs::write(&file, MESH).unwrap();
        let mut p = Pipeline::new(crate::translate::tests::options());
        let t = std::time::Instant::now();
        p.refresh_dir(&dir, None).unwrap();
        let (first, _) = p.snapshot(t, None).unwrap();
        // Without the Telemetry reaching translation nothing would be re-translated below.
        let touched: std::collections::BTreeSet<_> = [file.clone()].into();
        std::fs::write(
            &file,
            MESH.replace(
                "randomSamplingPercentage: 100",
                "randomSamplingPercentage: 7",
            ),
        )
        .unwrap();
        p.refresh_dir(&dir, Some(&touched)).unwrap();
        let (second, stats) = p.snapshot(t, Some(&first)).unwrap();
        assert_eq!(stats.ports_translated, 1);
        assert_ne!(second.versions(), first.versions());
        std::fs::write(
            &file,
            MESH.replace(
                "randomSamplingPercentage: 100",
                "randomSamplingPercentage: 700",
            ),
        )
        .unwrap();
        p.refresh_dir(&dir, Some(&touched)).unwrap();
        let Err(Rejected::Problems(ps)) = p.snapshot(t, Some(&second)) else {
            panic!("a sampling of 700 % accepted");
        };
        let msg = ps[0].to_string();
        assert!(msg.contains("telemetry.yaml (document 3): Telemetry istio-system/mesh-default: field `spec.tracing[0].randomSamplingPercentage`"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
