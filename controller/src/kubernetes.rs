//! The Kubernetes source: the same kinds as the directory source ([`KINDS`]: Aeraki's
//! `ApplicationProtocol`, `MetaRouter` and `DubboAuthorizationPolicy`, Meltemi's
//! `MetaTrafficPolicy`, `MetaAuthorizationPolicy` and `RateLimitConfig`, Istio's
//! `ServiceEntry`, `DestinationRule`, `WorkloadEntry`, `Gateway`, `Telemetry` and mesh
//! ConfigMap, core `Service` and `Pod`), read from the API server with kube-rs's watcher (list, then watch; a relist
//! when the watch expires or breaks, with backoff) and fed into the same [`Pipeline`]: the
//! same loading, validation and translation, problems naming `Kind namespace/name` and the
//! field. The client's configuration is kube's default: `$KUBECONFIG` or `~/.kube/config`,
//! else the in-cluster service account.
//!
//! A kind whose resource the API server does not serve (its CRD is not installed: no Meltemi
//! CRDs, no Istio telemetry) is read as having no objects, so the first configuration is not
//! held back by it; its watch keeps retrying and picks the objects up once the CRD appears.
//!
//! Objects are read as untyped JSON (`DynamicObject`) and loaded by the same code as files, so
//! the two sources cannot disagree on what a resource means.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde_json::Value;
use tokio::sync::watch;

use crate::source::{publish, Pipeline};
use crate::xds::Snapshot;

/// How problems name this source (`kubernetes: MetaRouter ns/name: field …`).
pub const SOURCE_NAME: &str = "kubernetes";

/// Where a kind's objects are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Cluster-wide objects (`ApplicationProtocol`).
    Cluster,
    /// The watched namespace (`-n`), or every namespace.
    Watched,
    /// Istio's root namespace only (the mesh ConfigMap).
    Root,
    /// Istio's root namespace besides the watched one: its objects apply mesh-wide (a
    /// root `Telemetry`). Not watched when every namespace, or the root, already is.
    AlsoRoot,
}

/// One watched kind.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Version served.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Resource (URL) name.
    pub plural: &'static str,
    /// Which namespaces.
    pub scope: Scope,
    /// Only the object of this name (a field selector: the mesh ConfigMap `istio`).
    pub name: Option<&'static str>,
    /// Served only where an optional CRD is installed; not served reads as no objects.
    pub optional: bool,
}

impl Kind {
    const fn new(
        group: &'static str,
        version: &'static str,
        kind: &'static str,
        plural: &'static str,
        scope: Scope,
    ) -> Kind {
        Kind {
            group,
            version,
            kind,
            plural,
            scope,
            name: None,
            optional: true,
        }
    }

    const fn required(self) -> Kind {
        Kind {
            optional: false,
            ..self
        }
    }

    const fn scoped(self, scope: Scope) -> Kind {
        Kind { scope, ..self }
    }

    const fn named(self, name: &'static str) -> Kind {
        Kind {
            name: Some(name),
            ..self
        }
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Where this watch's objects sort among the pipeline's origins (a root watch of a kind
    /// also watched elsewhere keeps its own prefix, so that a relist replaces only its own).
    fn prefix(&self) -> String {
        match self.scope {
            Scope::AlsoRoot => format!("k8s {}@root ", self.kind),
            _ => format!("k8s {} ", self.kind),
        }
    }

    /// Whether this kind is watched when `namespace` (or every namespace) is.
    fn watched_with(&self, namespace: Option<&str>) -> bool {
        self.scope != Scope::AlsoRoot
            || namespace.is_some_and(|ns| ns != crate::telemetry::ROOT_NAMESPACE)
    }
}

/// The kinds read. Istio's networking kinds are read at `v1beta1`, which every Istio since
/// 1.6 serves (`v1` only since 1.22), `Telemetry` at `v1alpha1` (1.12 on). Aeraki's routing
/// kinds, `ServiceEntry`, `DestinationRule` and `Service` are required: without them there
/// is nothing to serve, and a cluster that lacks them fails loudly (the watch's errors).
pub const KINDS: [Kind; 15] = [
    Kind::new(
        "metaprotocol.aeraki.io",
        "v1alpha1",
        "ApplicationProtocol",
        "applicationprotocols",
        Scope::Cluster,
    )
    .required(),
    Kind::new(
        "metaprotocol.aeraki.io",
        "v1alpha1",
        "MetaRouter",
        "metarouters",
        Scope::Watched,
    )
    .required(),
    Kind::new(
        "networking.istio.io",
        "v1beta1",
        "ServiceEntry",
        "serviceentries",
        Scope::Watched,
    )
    .required(),
    Kind::new(
        "networking.istio.io",
        "v1beta1",
        "DestinationRule",
        "destinationrules",
        Scope::Watched,
    )
    .required(),
    Kind::new("", "v1", "Service", "services", Scope::Watched).required(),
    // What Services and ServiceEntries select (`crate::workloads`).
    Kind::new("", "v1", "Pod", "pods", Scope::Watched),
    Kind::new(
        "networking.istio.io",
        "v1beta1",
        "WorkloadEntry",
        "workloadentries",
        Scope::Watched,
    ),
    Kind::new(
        "dubbo.aeraki.io",
        "v1alpha1",
        crate::authz::DUBBO_KIND,
        "dubboauthorizationpolicies",
        Scope::Watched,
    ),
    Kind::new(
        "meltemi.io",
        "v1alpha1",
        crate::authz::META_KIND,
        "metaauthorizationpolicies",
        Scope::Watched,
    ),
    Kind::new(
        "meltemi.io",
        "v1alpha1",
        crate::policy::KIND,
        "metatrafficpolicies",
        Scope::Watched,
    ),
    Kind::new(
        "meltemi.io",
        "v1alpha1",
        crate::ratelimit::KIND,
        "ratelimitconfigs",
        Scope::Watched,
    ),
    Kind::new(
        "networking.istio.io",
        "v1beta1",
        "Gateway",
        "gateways",
        Scope::Watched,
    ),
    TELEMETRY,
    TELEMETRY.scoped(Scope::AlsoRoot),
    Kind::new("", "v1", "ConfigMap", "configmaps", Scope::Root).named("istio"),
];

/// Istio's `Telemetry`, watched in two places (see [`Scope::AlsoRoot`]).
const TELEMETRY: Kind = Kind::new(
    "telemetry.istio.io",
    "v1alpha1",
    "Telemetry",
    "telemetries",
    Scope::Watched,
);

/// Whether a watch failed because the API server does not serve the resource at all.
fn not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

/// The pipeline origin of one object.
fn origin(kind: &Kind, obj: &DynamicObject) -> String {
    format!(
        "{}{}/{}",
        kind.prefix(),
        obj.metadata.namespace.as_deref().unwrap_or(""),
        obj.metadata.name.as_deref().unwrap_or("")
    )
}

/// The object as the loader reads documents. List responses may leave `apiVersion` and
/// `kind` out of their items: they are set from what was watched.
fn document(kind: &Kind, obj: DynamicObject) -> Value {
    let mut doc = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Some(map) = doc.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(kind.api_version()));
        map.insert("kind".into(), Value::String(kind.kind.into()));
    }
    doc
}

type Events = BoxStream<'static, (usize, Result<Event<DynamicObject>, watcher::Error>)>;

/// The watches of every kind, merged, and what a relist in progress has gathered so far.
pub struct Source {
    /// The watched kinds (of [`KINDS`], those that apply to the namespace given).
    kinds: Vec<Kind>,
    events: Events,
    /// Per kind: objects of a relist in progress (`Some` between `Init` and `InitDone`).
    relisting: Vec<Option<BTreeMap<String, Value>>>,
    /// Per kind: listed at least once (or found not served).
    listed: Vec<bool>,
    /// Per kind: the API server answered that it does not serve it (logged once).
    unserved: Vec<bool>,
}

/// A client from kube's default configuration (kubeconfig, else in-cluster).
pub async fn client() -> Result<kube::Client, String> {
    kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot configure the Kubernetes client: {e}"))
}

/// When a burst of watch events is over (several objects applied together, a relist).
const QUIET: Duration = Duration::from_millis(2);
const MAX_BURST: Duration = Duration::from_millis(250);

impl Source {
    /// Watches every kind, in `namespace` only when given (cluster-wide kinds always).
    pub fn new(client: kube::Client, namespace: Option<&str>) -> Source {
        let kinds: Vec<Kind> = KINDS
            .into_iter()
            .filter(|k| k.watched_with(namespace))
            .collect();
        let streams: Vec<Events> = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                let gvk = GroupVersionKind::gvk(kind.group, kind.version, kind.kind);
                let ar = ApiResource::from_gvk_with_plural(&gvk, kind.plural);
                let root = crate::telemetry::ROOT_NAMESPACE;
                let api: Api<DynamicObject> = match (kind.scope, namespace) {
                    (Scope::Root | Scope::AlsoRoot, _) => {
                        Api::namespaced_with(client.clone(), root, &ar)
                    }
                    (Scope::Watched, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
                    (Scope::Watched, None) | (Scope::Cluster, _) => {
                        Api::all_with(client.clone(), &ar)
                    }
                };
                let mut config = watcher::Config::default();
                if let Some(name) = kind.name {
                    config = config.fields(&format!("metadata.name={name}"));
                }
                watcher::watcher(api, config)
                    .default_backoff()
                    .map(move |e| (i, e))
                    .boxed()
            })
            .collect();
        let n = kinds.len();
        Source {
            kinds,
            events: futures::stream::select_all(streams).boxed(),
            relisting: vec![None; n],
            listed: vec![false; n],
            unserved: vec![false; n],
        }
    }

    /// Applies one event to `pipeline`; returns whether the served inputs changed.
    fn apply(
        &mut self,
        pipeline: &mut Pipeline,
        i: usize,
        event: Result<Event<DynamicObject>, watcher::Error>,
    ) -> bool {
        let Some(kind) = self.kinds.get(i).copied() else {
            return false;
        };
        let kind = &kind;
        if event.is_err() {
            // A failed list abandons the relist in progress (kube's watcher starts over with
            // a new `Init`); left open, it would hold every later burst open too.
            if let Some(r) = self.relisting.get_mut(i) {
                *r = None;
            }
        }
        match event {
            Err(e) if kind.optional && not_served(&e) => {
                if !self.unserved.get(i).copied().unwrap_or(true) {
                    tracing::info!(
                        kind = kind.kind,
                        api = %kind.api_version(),
                        "not served by the API server (its CRD is not installed): read as none; \
                         watching for it"
                    );
                }
                self.mark(i, true);
                // A CRD removed with its objects: they are gone too.
                pipeline.replace_objects(&kind.prefix(), BTreeMap::new())
            }
            Err(e) => {
                tracing::warn!(
                    kind = kind.kind,
                    api = %kind.api_version(),
                    error = %e,
                    "cannot watch; retrying (the last good configuration stays in force)"
                );
                false
            }
            Ok(Event::Init) => {
                if let Some(r) = self.relisting.get_mut(i) {
                    *r = Some(BTreeMap::new());
                }
                false
            }
            Ok(Event::InitApply(obj)) => {
                let key = origin(kind, &obj);
                if let Some(r) = self.relisting.get_mut(i) {
                    r.get_or_insert_with(BTreeMap::new)
                        .insert(key, document(kind, obj));
                }
                false
            }
            Ok(Event::InitDone) => {
                let objects = self
                    .relisting
                    .get_mut(i)
                    .and_then(Option::take)
                    .unwrap_or_default();
                tracing::info!(kind = kind.kind, objects = objects.len(), "listed");
                self.mark(i, false);
                pipeline.replace_objects(&kind.prefix(), objects)
            }
            Ok(Event::Apply(obj)) => {
                let key = origin(kind, &obj);
                pipeline.set_object(&key, Some(document(kind, obj)))
            }
            Ok(Event::Delete(obj)) => {
                let key = origin(kind, &obj);
                pipeline.set_object(&key, None)
            }
        }
    }

    /// Kind `i` has been listed, or found not served.
    fn mark(&mut self, i: usize, unserved: bool) {
        if let Some(l) = self.listed.get_mut(i) {
            *l = true;
        }
        if let Some(u) = self.unserved.get_mut(i) {
            *u = unserved;
        }
    }

    fn relisting(&self) -> bool {
        self.relisting.iter().any(Option::is_some)
    }

    /// Applies events until every kind has been listed once (the first configuration is
    /// never built from part of the cluster).
    pub async fn initial(&mut self, pipeline: &mut Pipeline) -> Result<(), String> {
        while !self.listed.iter().all(|l| *l) {
            let Some((i, event)) = self.events.next().await else {
                return Err("the Kubernetes watches ended".into());
            };
            self.apply(pipeline, i, event);
        }
        Ok(())
    }

    /// Follows the watches, publishing a snapshot after every burst of events that changed
    /// the inputs. Runs until the watches end.
    pub async fn follow(
        mut self,
        mut pipeline: Pipeline,
        tx: watch::Sender<Arc<Snapshot>>,
    ) -> Result<(), String> {
        while let Some((i, event)) = self.events.next().await {
            let first = Instant::now();
            let mut changed = self.apply(&mut pipeline, i, event);
            // Take the rest of the burst, and the whole of a relist, before translating.
            loop {
                let next = if self.relisting() {
                    Ok(self.events.next().await)
                } else {
                    let until = (Instant::now() + QUIET).min(first + MAX_BURST);
                    tokio::time::timeout_at(until.into(), self.events.next()).await
                };
                match next {
                    Ok(Some((i, event))) => changed |= self.apply(&mut pipeline, i, event),
                    Ok(None) => return Err("the Kubernetes watches ended".into()),
                    Err(_) => break,
                }
            }
            if changed {
                publish(&mut pipeline, first, &tx);
            }
        }
        Err("the Kubernetes watches ended".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Loaded;
    use serde_json::json;

    /// An object of `kind` as the API server lists it (items carry no kind of their own).
    fn listed(kind: &Kind) -> DynamicObject {
        let ns = match kind.scope {
            Scope::Cluster => None,
            Scope::Root | Scope::AlsoRoot => Some(crate::telemetry::ROOT_NAMESPACE),
            Scope::Watched => Some("meta"),
        };
        let mut object = json!({
            "metadata": {"name": kind.name.unwrap_or("x"), "namespace": ns},
            "spec": {},
        });
        match kind.kind {
            "ConfigMap" => object["data"] = json!({"mesh": "{}"}),
            "WorkloadEntry" => object["spec"] = json!({"address": "10.0.0.1"}),
            // A Service without a Meltemi port is skipped by design.
            "Service" => {
                object["spec"] =
                    json!({"ports": [{"name": "tcp-metaprotocol-minirpc-x", "port": 9000}]})
            }
            _ => {}
        }
        serde_json::from_value(object).expect("a DynamicObject")
    }

    #[test]
    fn every_watched_kind_is_one_the_loader_reads() {
        for kind in &KINDS {
            let mut loaded = Loaded::default();
            let obj = listed(kind);
            crate::load::load_object(&origin(kind, &obj), document(kind, obj), &mut loaded);
            assert!(
                loaded.skipped.is_empty(),
                "{} {}: the loader skips it: {:?}",
                kind.api_version(),
                kind.kind,
                loaded.skipped
            );
        }
    }

    #[test]
    fn the_root_telemetry_is_watched_only_besides_another_namespace() {
        let root = |ns| {
            KINDS
                .iter()
                .filter(|k| k.watched_with(ns) && k.kind == "Telemetry")
                .count()
        };
        assert_eq!(root(Some("meta")), 2);
        assert_eq!(root(Some(crate::telemetry::ROOT_NAMESPACE)), 1);
        assert_eq!(root(None), 1);
    }

    #[test]
    fn only_a_missing_resource_reads_as_not_served() {
        let status = |code| {
            kube::Error::Api(
                serde_json::from_value(
                    json!({"status": "Failure", "message": "", "reason": "NotFound", "code": code}),
                )
                .expect("a Status"),
            )
        };
        assert!(not_served(&watcher::Error::InitialListFailed(status(404))));
        assert!(not_served(&watcher::Error::WatchStartFailed(status(404))));
        assert!(!not_served(&watcher::Error::InitialListFailed(status(403))));
        assert!(!not_served(&watcher::Error::InitialListFailed(status(500))));
    }

    #[test]
    fn the_deployed_cluster_role_reads_every_watched_kind_and_writes_nothing() {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(include_str!("../deploy/rbac.yaml")).expect("YAML");
        let role = docs
            .iter()
            .find(|d| d["kind"] == "ClusterRole")
            .expect("a ClusterRole");
        let rules = role["rules"].as_array().expect("rules");
        for kind in &KINDS {
            let granted = rules.iter().any(|r| {
                let has = |field: &str, want: &str| {
                    r[field]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|v| v == want))
                };
                has("apiGroups", kind.group)
                    && has("resources", kind.plural)
                    && ["get", "list", "watch"].iter().all(|v| has("verbs", v))
            });
            assert!(
                granted,
                "rbac.yaml does not let the controller watch {}.{}",
                kind.plural, kind.group
            );
        }
        for r in rules {
            for verb in r["verbs"].as_array().expect("verbs") {
                assert!(["get", "list", "watch"].iter().any(|v| verb == v), "{verb}");
            }
        }
    }
}
