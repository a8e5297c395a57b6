//! The ADS server (state of the world): listeners, routes, clusters and endpoints over one gRPC
//! stream per Envoy, any number of Envoys at once.
//!
//! Versions are content hashes per resource type, so two controller replicas reading the same
//! files serve identical versions (an Envoy moving between them sees no spurious update), and a
//! route change pushes only RDS: listeners and clusters keep their version, Envoy keeps them,
//! and existing client connections are untouched. A NACK is logged with Envoy's message and
//! nothing is resent: Envoy keeps running its last accepted version, and the next good change
//! gets a new version.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::{
    RouteDiscoveryService, RouteDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto;
use crate::translate::Resources;

/// One resource: its JSON (to recognise it unchanged next time), hash and encoding.
#[derive(Debug, Clone)]
pub struct Encoded {
    json: crate::translate::Json,
    hash: String,
    /// The protobuf `Any` sent to Envoy.
    pub any: Any,
}

/// The resources of one type, encoded, with their content version.
#[derive(Debug, Clone, Default)]
pub struct TypeSnapshot {
    /// Hash over the resources' names and content hashes.
    pub version: String,
    /// Name → encoded resource (shared with the snapshots that have it unchanged).
    pub resources: BTreeMap<String, Arc<Encoded>>,
}

/// Everything served, by type URL.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Type URL → resources.
    pub types: BTreeMap<&'static str, TypeSnapshot>,
    /// When the change that produced it was first seen (for change → ACK latency).
    pub changed_at: Instant,
}

/// Short content hash of `v` (serde_json maps are sorted, so equal content = equal text).
pub fn content_hash(v: &impl serde::Serialize) -> String {
    let text = serde_json::to_vec(v).unwrap_or_default();
    hex(&Sha256::digest(&text))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl Snapshot {
    /// Encodes `resources`; the error names the resource Envoy's schema refuses.
    pub fn new(resources: &Resources, changed_at: Instant) -> Result<Snapshot, String> {
        Snapshot::update(resources, changed_at, None)
    }

    /// Like [`Snapshot::new`], re-using the encoding of every resource `previous` already has
    /// with the same content: a change to one service re-encodes that service only. The
    /// versions do not depend on `previous`, so replicas agree whatever their history.
    pub fn update(
        resources: &Resources,
        changed_at: Instant,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, String> {
        let mut types = BTreeMap::new();
        for (type_url, map) in [
            (proto::LISTENER, &resources.listeners),
            (proto::ROUTE, &resources.routes),
            (proto::CLUSTER, &resources.clusters),
            (proto::ENDPOINT, &resources.endpoints),
        ] {
            // Both maps are sorted by name: walk the previous one alongside instead of
            // looking every name up (thousands of long names sharing their prefixes).
            let mut old = previous
                .and_then(|p| p.types.get(type_url))
                .map(|o| o.resources.iter().peekable());
            let mut encoded = Vec::with_capacity(map.len());
            let mut version = Sha256::new();
            for (name, json) in map {
                let mut reused = None;
                if let Some(old) = old.as_mut() {
                    while old.next_if(|(k, _)| k.as_str() < name.as_str()).is_some() {}
                    // The same allocation (translation re-used it) is the same resource;
                    // equal content from a fresh translation is too, found by comparing.
                    if let Some((_, e)) = old.next_if(|(k, e)| {
                        *k == name && (Arc::ptr_eq(&e.json, json) || e.json == *json)
                    }) {
                        reused = Some(Arc::clone(e));
                    }
                }
                let e = match reused {
                    Some(e) => e,
                    None => Arc::new(Encoded {
                        json: Arc::clone(json),
                        hash: content_hash(&**json),
                        any: proto::to_any(type_url, json).map_err(|e| format!("{name}: {e}"))?,
                    }),
                };
                version.update(name.as_bytes());
                version.update([0]);
                version.update(e.hash.as_bytes());
                encoded.push((name.clone(), e));
            }
            // Sorted already: collecting builds the map in one pass.
            let encoded: BTreeMap<String, Arc<Encoded>> = encoded.into_iter().collect();
            types.insert(
                type_url,
                TypeSnapshot {
                    version: hex(&version.finalize()),
                    resources: encoded,
                },
            );
        }
        Ok(Snapshot { types, changed_at })
    }

    /// `type → version` for logs.
    pub fn versions(&self) -> String {
        self.types
            .iter()
            .map(|(t, s)| format!("{}={}", short_type(t), s.version))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn short_type(type_url: &str) -> &str {
    match type_url {
        proto::LISTENER => "lds",
        proto::ROUTE => "rds",
        proto::CLUSTER => "cds",
        proto::ENDPOINT => "eds",
        other => other,
    }
}

/// The gRPC service; clone-cheap.
#[derive(Clone)]
pub struct Ads {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    control_plane: String,
}

impl Ads {
    /// A server following `snapshots`.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>) -> Ads {
        Ads {
            snapshots,
            control_plane: format!("meltemi-controller/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// The tonic service.
    pub fn service(self) -> AggregatedDiscoveryServiceServer<Ads> {
        AggregatedDiscoveryServiceServer::new(self)
    }

    /// The same snapshots as a plain RDS service: what Istio proxies use, their HCMs naming
    /// the `meltemi_xds` cluster in an `api_config_source` (istiod keeps their ADS).
    pub fn rds_service(self) -> RouteDiscoveryServiceServer<Ads> {
        RouteDiscoveryServiceServer::new(self)
    }

    fn open(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
        only: Option<&'static str>,
    ) -> AdsStream {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let session = Session {
            inbound,
            tx,
            snapshots: self.snapshots.clone(),
            subs: BTreeMap::new(),
            node: String::new(),
            peer,
            nonce: 0,
            control_plane: self.control_plane.clone(),
            only,
        };
        tokio::spawn(session.run());
        Box::pin(ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl RouteDiscoveryService for Ads {
    type StreamRoutesStream = AdsStream;
    type DeltaRoutesStream = DeltaStream;

    async fn stream_routes(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<AdsStream>, Status> {
        Ok(Response::new(self.open(request, Some(proto::ROUTE))))
    }

    async fn delta_routes(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented(
            "meltemi-controller serves state-of-the-world RDS",
        ))
    }

    async fn fetch_routes(
        &self,
        _request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented("use the RDS stream"))
    }
}

#[derive(Default)]
struct Subscription {
    /// Names asked for (empty = all; LDS and CDS are wildcard).
    names: Vec<String>,
    /// Version and nonce of the last response sent.
    sent_version: Option<String>,
    nonce: String,
    /// Last version Envoy accepted.
    acked: Option<String>,
    /// RDS: name → content hash of what this stream was last sent of each route
    /// configuration. State-of-the-world RDS (unlike LDS and CDS) lets a response carry only
    /// some of the subscribed resources, and Envoy updates only the ones it carries: a route
    /// change among thousands of listeners sends that listener's routes alone.
    sent: BTreeMap<String, String>,
}

type AdsStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = AdsStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<AdsStream>, Status> {
        Ok(Response::new(self.open(request, None)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented(
            "meltemi-controller serves state-of-the-world ADS; set api_type: GRPC",
        ))
    }
}

struct Session {
    inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    subs: BTreeMap<String, Subscription>,
    node: String,
    peer: String,
    nonce: u64,
    control_plane: String,
    /// The one type a non-aggregated stream serves (`None` for ADS).
    only: Option<&'static str>,
}

impl Session {
    async fn run(mut self) {
        loop {
            tokio::select! {
                msg = self.inbound.message() => match msg {
                    Ok(Some(req)) => {
                        if self.on_request(req).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(node = %self.node, peer = %self.peer, error = %e, "xds stream ended");
                        break;
                    }
                },
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        break; // the controller is shutting down
                    }
                    let types: Vec<String> = self.subs.keys().cloned().collect();
                    for t in types {
                        if self.push(&t).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        tracing::info!(node = %self.node, peer = %self.peer, "envoy disconnected");
    }

    async fn on_request(&mut self, req: DiscoveryRequest) -> Result<(), ()> {
        if let Some(node) = &req.node {
            if self.node.is_empty() {
                self.node = node.id.clone();
                tracing::info!(node = %self.node, peer = %self.peer, "envoy connected");
            }
        }
        let type_url = match self.only {
            Some(only) => only.to_owned(),
            None => req.type_url.clone(),
        };
        let sub = self.subs.entry(type_url.clone()).or_default();
        if !req.response_nonce.is_empty() && req.response_nonce != sub.nonce {
            return Ok(()); // answers a response that a newer one superseded
        }
        let names_changed = sub.names != req.resource_names;
        sub.names = req.resource_names.clone();
        if let Some(err) = &req.error_detail {
            tracing::warn!(
                node = %self.node,
                xds = short_type(&type_url),
                rejected = sub.sent_version.as_deref().unwrap_or(""),
                serving = sub.acked.as_deref().unwrap_or("none"),
                error = %err.message,
                "envoy rejected configuration (NACK); it keeps its last accepted version"
            );
            if !names_changed {
                return Ok(());
            }
        } else if !req.response_nonce.is_empty() {
            if sub.acked.as_deref() != Some(req.version_info.as_str()) {
                let since = self.snapshots.borrow().changed_at.elapsed();
                tracing::info!(
                    node = %self.node,
                    xds = short_type(&type_url),
                    version = %req.version_info,
                    change_to_ack_ms = since.as_secs_f64() * 1000.0,
                    "envoy applied configuration (ACK)"
                );
            }
            sub.acked = Some(req.version_info.clone());
        }
        if names_changed || req.response_nonce.is_empty() {
            return self.send(&type_url).await;
        }
        self.push(&type_url).await
    }

    /// Sends `type_url` if the snapshot has a version Envoy was not sent yet.
    async fn push(&mut self, type_url: &str) -> Result<(), ()> {
        let current = self
            .snapshots
            .borrow()
            .types
            .get(type_url)
            .map(|t| t.version.clone());
        let sent = self.subs.get(type_url).and_then(|s| s.sent_version.clone());
        if current.is_some() && current != sent {
            return self.send(type_url).await;
        }
        Ok(())
    }

    async fn send(&mut self, type_url: &str) -> Result<(), ()> {
        let snapshot = Arc::clone(&self.snapshots.borrow());
        let Some(ts) = snapshot.types.get(type_url) else {
            tracing::warn!(node = %self.node, xds = type_url, "envoy asked for a type this controller does not serve");
            return Ok(());
        };
        let Some(sub) = self.subs.get_mut(type_url) else {
            return Ok(());
        };
        let wildcard = sub.names.is_empty() || sub.names.iter().any(|n| n == "*");
        let resources: Vec<Any> = if wildcard {
            ts.resources.values().map(|e| e.any.clone()).collect()
        } else if type_url == proto::ROUTE {
            sub.sent.retain(|n, _| sub.names.contains(n));
            let mut changed = Vec::new();
            for n in &sub.names {
                if let Some(e) = ts.resources.get(n) {
                    if sub.sent.get(n) != Some(&e.hash) {
                        sub.sent.insert(n.clone(), e.hash.clone());
                        changed.push(e.any.clone());
                    }
                }
            }
            if changed.is_empty() && sub.sent_version.is_some() {
                // None of this Envoy's route configurations changed.
                sub.sent_version = Some(ts.version.clone());
                return Ok(());
            }
            changed
        } else {
            sub.names
                .iter()
                .filter_map(|n| ts.resources.get(n).map(|e| e.any.clone()))
                .collect()
        };
        self.nonce += 1;
        sub.nonce = self.nonce.to_string();
        sub.sent_version = Some(ts.version.clone());
        tracing::debug!(node = %self.node, xds = short_type(type_url), version = %ts.version, count = resources.len(), "sending");
        let response = DiscoveryResponse {
            version_info: ts.version.clone(),
            resources,
            type_url: type_url.to_owned(),
            nonce: sub.nonce.clone(),
            control_plane: Some(envoy_types::pb::envoy::config::core::v3::ControlPlane {
                identifier: self.control_plane.clone(),
            }),
            ..Default::default()
        };
        self.tx.send(Ok(response)).await.map_err(|_| ())
    }
}
