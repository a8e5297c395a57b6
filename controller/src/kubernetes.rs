//! The Kubernetes source: the same kinds as the directory source (Aeraki's
//! `ApplicationProtocol` and `MetaRouter`, Istio's `ServiceEntry` and `DestinationRule`, core
//! `Service`), read from the API server with kube-rs's watcher (list, then watch; a relist
//! when the watch expires or breaks, with backoff) and fed into the same [`Pipeline`]: the
//! same loading, validation and translation, problems naming `Kind namespace/name` and the
//! field. The client's configuration is kube's default: `$KUBECONFIG` or `~/.kube/config`,
//! else the in-cluster service account.
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
    /// Whether objects live in namespaces (`ApplicationProtocol` is cluster-wide).
    pub namespaced: bool,
}

impl Kind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Where this kind's objects sort among the pipeline's origins.
    fn prefix(&self) -> String {
        format!("k8s {} ", self.kind)
    }
}

/// The kinds read. Istio's are read at `v1beta1`, which every Istio since 1.6 serves (`v1`
/// only since 1.22).
pub const KINDS: [Kind; 5] = [
    Kind {
        group: "metaprotocol.aeraki.io",
        version: "v1alpha1",
        kind: "ApplicationProtocol",
        plural: "applicationprotocols",
        namespaced: false,
    },
    Kind {
        group: "metaprotocol.aeraki.io",
        version: "v1alpha1",
        kind: "MetaRouter",
        plural: "metarouters",
        namespaced: true,
    },
    Kind {
        group: "networking.istio.io",
        version: "v1beta1",
        kind: "ServiceEntry",
        plural: "serviceentries",
        namespaced: true,
    },
    Kind {
        group: "networking.istio.io",
        version: "v1beta1",
        kind: "DestinationRule",
        plural: "destinationrules",
        namespaced: true,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        namespaced: true,
    },
];

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
    events: Events,
    /// Per kind: objects of a relist in progress (`Some` between `Init` and `InitDone`).
    relisting: Vec<Option<BTreeMap<String, Value>>>,
    /// Per kind: listed at least once.
    listed: Vec<bool>,
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
        let streams: Vec<Events> = KINDS
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                let gvk = GroupVersionKind::gvk(kind.group, kind.version, kind.kind);
                let ar = ApiResource::from_gvk_with_plural(&gvk, kind.plural);
                let api: Api<DynamicObject> = match namespace {
                    Some(ns) if kind.namespaced => Api::namespaced_with(client.clone(), ns, &ar),
                    _ => Api::all_with(client.clone(), &ar),
                };
                watcher::watcher(api, watcher::Config::default())
                    .default_backoff()
                    .map(move |e| (i, e))
                    .boxed()
            })
            .collect();
        Source {
            events: futures::stream::select_all(streams).boxed(),
            relisting: vec![None; KINDS.len()],
            listed: vec![false; KINDS.len()],
        }
    }

    /// Applies one event to `pipeline`; returns whether the served inputs changed.
    fn apply(
        &mut self,
        pipeline: &mut Pipeline,
        i: usize,
        event: Result<Event<DynamicObject>, watcher::Error>,
    ) -> bool {
        let kind = &KINDS[i];
        match event {
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
                self.relisting[i] = Some(BTreeMap::new());
                false
            }
            Ok(Event::InitApply(obj)) => {
                let key = origin(kind, &obj);
                self.relisting[i]
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key, document(kind, obj));
                false
            }
            Ok(Event::InitDone) => {
                let objects = self.relisting[i].take().unwrap_or_default();
                tracing::info!(kind = kind.kind, objects = objects.len(), "listed");
                self.listed[i] = true;
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
