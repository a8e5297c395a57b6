//! Endpoints from workload selectors: a Kubernetes `Service`'s `selector` or a ServiceEntry's
//! `workloadSelector` names workloads by label instead of listing endpoints, as Istio users
//! write them. The workloads are the namespace's `Pod`s (ready ones, at their pod IP, the
//! service's `targetPort` looked up by name among the pod's container ports) and Istio
//! `WorkloadEntry`s (their `address`, `ports` by service port name, and `labels`). Resolved
//! endpoints carry the workload's labels, so DestinationRule subsets select on pod labels
//! (`version: v1`) as they do in Istio.
//!
//! Only the plain-Envoy target needs this: on the Istio target istiod owns the endpoints. A
//! service that lists endpoints of its own keeps them (a selector is then ignored, as Istio
//! does). Resolution runs on every change over the whole input set, so a pod that becomes
//! ready, changes labels or goes away moves the endpoints with the next snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::load::Problem;
use crate::model::{Inputs, Object, ObjectMeta, ServiceEntrySpec, Shared, Source, WorkloadEntry};

/// A workload a selector can pick: a Pod or a WorkloadEntry, reduced to what endpoints need.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Workload {
    /// Pod IP or the WorkloadEntry's address.
    pub address: String,
    /// Labels selectors and subsets match.
    pub labels: BTreeMap<String, String>,
    /// Pod: container port name → number (for named `targetPort`s). WorkloadEntry: service
    /// port name → number.
    pub ports: BTreeMap<String, u32>,
    /// A Pod that is not running and ready (or has no IP yet) serves nothing, as Kubernetes
    /// keeps it out of a Service's ready endpoints.
    pub ready: bool,
    /// Pod or WorkloadEntry: a Pod's named ports are container ports, a WorkloadEntry's are
    /// the service's port names.
    pub kind: WorkloadKind,
    /// A WorkloadEntry's load-balancing weight.
    pub weight: Option<u32>,
}

/// Where a [`Workload`] came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WorkloadKind {
    /// A core `Pod`.
    #[default]
    Pod,
    /// Istio's `WorkloadEntry`.
    Entry,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    containers: Vec<Container>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Container {
    #[serde(default)]
    ports: Vec<ContainerPort>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ContainerPort {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    container_port: u32,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default)]
    phase: String,
    #[serde(default, rename = "podIP")]
    pod_ip: String,
    #[serde(default)]
    conditions: Vec<Condition>,
}

#[derive(Deserialize, Default)]
struct Condition {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    status: String,
}

/// `WorkloadEntry.spec` (Istio networking v1beta1): the fields endpoints use.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WorkloadEntrySpec {
    #[serde(default)]
    address: String,
    #[serde(default)]
    ports: BTreeMap<String, u32>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    weight: Option<u32>,
}

fn resource(kind: &str, meta: &ObjectMeta) -> String {
    format!(
        "{kind} {}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name
    )
}

/// Loads a `Pod` document (its labels, IP, readiness and named container ports).
pub fn load_pod(
    doc: &Value,
    meta: ObjectMeta,
    source: Source,
    out: &mut Vec<Shared<Workload>>,
    problems: &mut Vec<Problem>,
) {
    let field = |name: &str, e: serde_json::Error| Problem {
        source: source.clone(),
        resource: resource("Pod", &meta),
        field: name.into(),
        message: e.to_string(),
    };
    let spec: PodSpec = match serde_json::from_value(doc["spec"].clone()) {
        Ok(s) => s,
        Err(e) if doc["spec"].is_null() => {
            let _ = e;
            PodSpec::default()
        }
        Err(e) => return problems.push(field("spec", e)),
    };
    let status: PodStatus = if doc["status"].is_null() {
        PodStatus::default()
    } else {
        match serde_json::from_value(doc["status"].clone()) {
            Ok(s) => s,
            Err(e) => return problems.push(field("status", e)),
        }
    };
    let ready = status.phase == "Running"
        && !status.pod_ip.is_empty()
        && doc["metadata"]["deletionTimestamp"].is_null()
        && status
            .conditions
            .iter()
            .any(|c| c.kind == "Ready" && c.status == "True");
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter_map(|p| Some((p.name.clone()?, p.container_port)))
        .collect();
    out.push(Arc::new(Object {
        spec: Workload {
            address: status.pod_ip,
            labels: meta.labels.clone(),
            ports,
            ready,
            kind: WorkloadKind::Pod,
            weight: None,
        },
        meta,
        source,
    }));
}

/// Loads an Istio `WorkloadEntry` document.
pub fn load_entry(
    doc: &Value,
    meta: ObjectMeta,
    source: Source,
    out: &mut Vec<Shared<Workload>>,
    problems: &mut Vec<Problem>,
) {
    let spec: WorkloadEntrySpec = match serde_path_to_error::deserialize(doc["spec"].clone()) {
        Ok(s) => s,
        Err(e) => {
            return problems.push(Problem {
                resource: resource("WorkloadEntry", &meta),
                field: format!("spec.{}", e.path()),
                message: e.inner().to_string(),
                source,
            })
        }
    };
    if spec.address.is_empty() {
        return problems.push(Problem {
            resource: resource("WorkloadEntry", &meta),
            field: "spec.address".into(),
            message: "a WorkloadEntry needs an address".into(),
            source,
        });
    }
    out.push(Arc::new(Object {
        spec: Workload {
            address: spec.address,
            labels: spec.labels,
            ports: spec.ports,
            ready: true,
            kind: WorkloadKind::Entry,
            weight: spec.weight,
        },
        meta,
        source,
    }));
}

/// The endpoints `workload` gives `service` (one port entry per service port it serves), or
/// `None` when it serves none of them.
fn endpoint(service: &ServiceEntrySpec, workload: &Workload) -> Option<WorkloadEntry> {
    let mut ports = BTreeMap::new();
    for p in &service.ports {
        let port = match (workload.kind, &p.target_port_name) {
            // A named targetPort the pod does not declare: Kubernetes leaves the pod out.
            (WorkloadKind::Pod, Some(name)) => workload.ports.get(name).copied(),
            (WorkloadKind::Pod, None) => Some(p.target_port.unwrap_or(p.number)),
            (WorkloadKind::Entry, _) => workload.ports.get(&p.name).copied().or(p.target_port),
        };
        if let Some(port) = port {
            ports.insert(p.name.clone(), port);
        }
    }
    (!ports.is_empty()).then(|| WorkloadEntry {
        address: workload.address.clone(),
        ports,
        labels: workload.labels.clone(),
        weight: workload.weight,
    })
}

/// Fills the endpoints of every service that selects workloads and lists none of its own.
/// Services without a selector are shared unchanged (no copy).
pub fn resolve(inputs: &mut Inputs) {
    if inputs.workloads.is_empty() {
        return;
    }
    // Namespace → its ready workloads, so each service scans only its own namespace.
    let mut by_namespace: BTreeMap<&str, Vec<&Workload>> = BTreeMap::new();
    for w in inputs.workloads.iter().filter(|w| w.spec.ready) {
        by_namespace.entry(w.namespace()).or_default().push(&w.spec);
    }
    let resolved: Vec<Shared<ServiceEntrySpec>> = inputs
        .service_entries
        .iter()
        .map(|se| {
            let Some(selector) = se.spec.workload_selector.as_ref() else {
                return Arc::clone(se);
            };
            if !se.spec.endpoints.is_empty() {
                return Arc::clone(se);
            }
            let endpoints: Vec<WorkloadEntry> = by_namespace
                .get(se.namespace())
                .into_iter()
                .flatten()
                .filter(|w| {
                    selector
                        .labels
                        .iter()
                        .all(|(k, v)| w.labels.get(k) == Some(v))
                })
                .filter_map(|w| endpoint(&se.spec, w))
                .collect();
            let mut spec = se.spec.clone();
            spec.endpoints = endpoints;
            Arc::new(Object {
                meta: se.meta.clone(),
                spec,
                source: se.source.clone(),
            })
        })
        .collect();
    inputs.service_entries = resolved;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{load_object, Loaded};
    use serde_json::json;

    fn load(docs: &[Value]) -> Inputs {
        let mut loaded = Loaded::default();
        for (i, d) in docs.iter().enumerate() {
            load_object(&format!("doc{i}"), d.clone(), &mut loaded);
        }
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let mut inputs = loaded.inputs;
        resolve(&mut inputs);
        inputs
    }

    fn pod(name: &str, labels: Value, ip: &str, ready: bool, rpc_port: u32) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "meta", "labels": labels},
            "spec": {"containers": [{"name": "app", "ports": [{"name": "rpc", "containerPort": rpc_port}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        })
    }

    fn service(target_port: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "echo", "namespace": "meta"},
            "spec": {"selector": {"app": "echo"},
                     "ports": [{"name": "tcp-metaprotocol-dubbo-echo", "port": 20880, "targetPort": target_port}]}
        })
    }

    fn endpoints(inputs: &Inputs) -> Vec<(String, u32, Option<String>)> {
        inputs.service_entries[0]
            .spec
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.address.clone(),
                    e.ports
                        .get("tcp-metaprotocol-dubbo-echo")
                        .copied()
                        .unwrap_or(0),
                    e.labels.get("version").cloned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_service_selects_ready_pods_of_its_namespace_at_their_named_port() {
        let mut other_ns = pod("x", json!({"app": "echo"}), "10.0.9.9", true, 7);
        other_ns["metadata"]["namespace"] = json!("other");
        let inputs = load(&[
            service(json!("rpc")),
            pod(
                "a",
                json!({"app": "echo", "version": "v1"}),
                "10.0.0.1",
                true,
                20001,
            ),
            pod(
                "b",
                json!({"app": "echo", "version": "v2"}),
                "10.0.0.2",
                true,
                20002,
            ),
            pod(
                "c",
                json!({"app": "echo", "version": "v2"}),
                "10.0.0.3",
                false,
                20003,
            ),
            pod("d", json!({"app": "web"}), "10.0.0.4", true, 20004),
            other_ns,
        ]);
        assert_eq!(
            endpoints(&inputs),
            [
                ("10.0.0.1".into(), 20001, Some("v1".into())),
                ("10.0.0.2".into(), 20002, Some("v2".into())),
            ]
        );
    }

    #[test]
    fn a_numeric_target_port_or_none_and_a_pod_without_the_named_port() {
        let inputs = load(&[
            service(json!(30000)),
            pod("a", json!({"app": "echo"}), "10.0.0.1", true, 1),
        ]);
        assert_eq!(endpoints(&inputs), [("10.0.0.1".into(), 30000, None)]);
        let mut svc = service(json!("missing"));
        let inputs = load(&[
            svc.clone(),
            pod("a", json!({"app": "echo"}), "10.0.0.1", true, 1),
        ]);
        assert!(endpoints(&inputs).is_empty(), "no such container port");
        svc["spec"]["ports"][0]
            .as_object_mut()
            .expect("port")
            .remove("targetPort");
        let inputs = load(&[svc, pod("a", json!({"app": "echo"}), "10.0.0.1", true, 1)]);
        assert_eq!(endpoints(&inputs), [("10.0.0.1".into(), 20880, None)]);
    }

    #[test]
    fn a_service_entry_selects_workload_entries_and_keeps_its_own_endpoints() {
        let entry = json!({
            "apiVersion": "networking.istio.io/v1beta1", "kind": "WorkloadEntry",
            "metadata": {"name": "vm1", "namespace": "meta"},
            "spec": {"address": "192.168.1.5", "labels": {"app": "echo", "version": "v3"},
                     "ports": {"tcp-metaprotocol-dubbo-echo": 20990}, "weight": 3}
        });
        let se = |endpoints: Value| {
            json!({
                "apiVersion": "networking.istio.io/v1beta1", "kind": "ServiceEntry",
                "metadata": {"name": "echo", "namespace": "meta"},
                "spec": {"hosts": ["echo"], "workloadSelector": {"labels": {"app": "echo"}},
                         "ports": [{"number": 20880, "name": "tcp-metaprotocol-dubbo-echo", "protocol": "TCP"}],
                         "endpoints": endpoints}
            })
        };
        let inputs = load(&[se(json!([])), entry.clone()]);
        assert_eq!(
            endpoints(&inputs),
            [("192.168.1.5".into(), 20990, Some("v3".into()))]
        );
        assert_eq!(inputs.service_entries[0].spec.endpoints[0].weight, Some(3));
        let own = json!([{"address": "127.0.0.1", "labels": {"version": "v1"}}]);
        let inputs = load(&[se(own), entry]);
        assert_eq!(
            endpoints(&inputs),
            [("127.0.0.1".into(), 0, Some("v1".into()))]
        );
    }

    #[test]
    fn a_workload_entry_without_an_address_is_rejected_naming_the_field() {
        let mut loaded = Loaded::default();
        load_object(
            "f.yaml",
            json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "WorkloadEntry",
                   "metadata": {"name": "vm1", "namespace": "meta"}, "spec": {"ports": {"a": "x"}}}),
            &mut loaded,
        );
        let p = &loaded.problems[0];
        assert_eq!(
            (p.resource.as_str(), p.field.as_str()),
            ("WorkloadEntry meta/vm1", "spec.ports.a"),
            "{p:?}"
        );
    }
}
