//! Metrics of the native build: the same names and labels as the wasm build, defined on the
//! network filter configuration of the front.
//!
//! Envoy lets a dynamic module define metrics only while its configuration loads (later
//! definitions are refused: the set is frozen), and Meltemi's names carry label values. So the
//! front's configuration defines the whole [`stats::catalogue`] for the services and methods it
//! names (`service`, `known_services`, `known_methods`, which the controller fills in from the
//! routes) plus `other`; at run time every other value is reported as `other` (counted in
//! `meltemi_label_overflow_total`). Updates then go straight to Envoy's atomic counters from any
//! worker: the table of ids never changes after the load, so reading it needs no coordination
//! with Envoy. The upstream bridge has no metric API of its own; its updates go through the
//! front configurations loaded in the same Envoy (with a wasm front, the native back's metrics
//! are not exported).

use std::collections::HashMap;
use std::sync::RwLock;

use super::abi::{EnvoyPtr, FilterConfigPtr, MetricKind};
use crate::stats::{self, MetricType, Sink};
use crate::vm::OTHER;

/// Most metrics one configuration defines. Past it the `method` label is collapsed to
/// `other`, then the `service` label too.
const MAX_METRICS: usize = 4096;

/// The label value of a message without that metadata (see [`crate::front`]).
const UNKNOWN: &str = "unknown";

/// A loaded front configuration and the metrics it defined.
struct Exporter {
    /// Envoy's configuration pointer, as an address.
    config: usize,
    ids: HashMap<String, (MetricKind, usize)>,
}

static EXPORTERS: RwLock<Vec<Exporter>> = RwLock::new(Vec::new());

fn kind(t: MetricType) -> MetricKind {
    match t {
        MetricType::Counter => MetricKind::Counter,
        MetricType::Gauge => MetricKind::Gauge,
        MetricType::Histogram => MetricKind::Histogram,
    }
}

/// The label values a configuration defines metrics for, collapsed to fit [`MAX_METRICS`].
pub fn label_values(
    named_services: &[String],
    named_methods: &[String],
) -> (Vec<String>, Vec<String>) {
    let with_other = |named: &[String]| {
        let mut v: Vec<String> = named.to_vec();
        v.sort();
        v.dedup();
        v.retain(|s| s != OTHER && s != UNKNOWN);
        v.push(OTHER.to_owned());
        // What the front reports for a message that names no service or method (heartbeats).
        v.push(UNKNOWN.to_owned());
        v
    };
    let services = with_other(named_services);
    let methods = with_other(named_methods);
    // Per (service, method) pair: requests, duration, responses by outcome, local replies by kind.
    let per_pair = 2usize
        .saturating_add(stats::OUTCOMES.len())
        .saturating_add(crate::ErrorKind::ALL.len());
    let fits = |s: usize, m: usize| s.saturating_mul(m).saturating_mul(per_pair) <= MAX_METRICS;
    if fits(services.len(), methods.len()) {
        (services, methods)
    } else if fits(services.len(), 1) {
        (services, vec![OTHER.to_owned()])
    } else {
        (vec![OTHER.to_owned()], vec![OTHER.to_owned()])
    }
}

/// Defines the catalogue of `protocol` on a front configuration (main thread, in
/// `config_new`, the only time Envoy accepts definitions) and starts exporting through it.
pub fn register(config: EnvoyPtr, protocol: &str, services: &[String], methods: &[String]) {
    let envoy = FilterConfigPtr(config);
    let s: Vec<&str> = services.iter().map(String::as_str).collect();
    let m: Vec<&str> = methods.iter().map(String::as_str).collect();
    let mut ids = HashMap::new();
    for (t, name) in stats::catalogue(protocol, &s, &m) {
        if let Some(id) = envoy.define(kind(t), &name) {
            ids.insert(name, (kind(t), id));
        }
    }
    let mut exporters = EXPORTERS.write().unwrap_or_else(|e| e.into_inner());
    exporters.push(Exporter {
        config: config as usize,
        ids,
    });
}

/// Stops exporting through a configuration (main thread, in `config_destroy`).
pub fn unregister(config: EnvoyPtr) {
    let mut exporters = EXPORTERS.write().unwrap_or_else(|e| e.into_inner());
    exporters.retain(|e| e.config != config as usize);
}

/// Applies one update through the newest configuration that defined `name`.
fn apply(exporters: &[Exporter], name: &str, delta: i64) -> bool {
    for e in exporters.iter().rev() {
        if let Some(&(k, id)) = e.ids.get(name) {
            FilterConfigPtr(e.config as EnvoyPtr).update(k, id, delta);
            return true;
        }
    }
    false
}

/// The [`Sink`] of one hook: collects its updates and applies them when dropped.
#[derive(Default)]
pub struct NativeSink {
    updates: Vec<(String, i64)>,
}

impl Sink for NativeSink {
    fn count(&mut self, name: &str, n: u64) {
        self.updates
            .push((name.to_owned(), i64::try_from(n).unwrap_or(i64::MAX)));
    }
    fn gauge(&mut self, name: &str, delta: i64) {
        self.updates.push((name.to_owned(), delta));
    }
    fn record(&mut self, name: &str, value: u64) {
        self.updates
            .push((name.to_owned(), i64::try_from(value).unwrap_or(i64::MAX)));
    }
}

impl Drop for NativeSink {
    fn drop(&mut self) {
        if self.updates.is_empty() {
            return;
        }
        let exporters = EXPORTERS.read().unwrap_or_else(|e| e.into_inner());
        let mut dropped = 0i64;
        for (name, delta) in self.updates.drain(..) {
            if !apply(&exporters, &name, delta) {
                dropped = dropped.saturating_add(1);
            }
        }
        if dropped > 0 {
            apply(&exporters, stats::METRICS_DROPPED, dropped);
        }
    }
}
