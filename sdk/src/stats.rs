//! Request-level metrics: names, labels and the sink the transcoders report to.
//!
//! Labels are encoded into the stat name the way Istio's stats plugin does it
//! (`name;.;label=.=value`), and Envoy's bootstrap `stats_config.stats_tags` turns them back
//! into tags, so Prometheus sees `meltemi_requests_total{protocol="thrift",service=...}`.
//! [`STATS_TAGS`] lists the regexes the bootstrap needs.

use std::fmt::Write as _;

/// Requests (two-way and one-way) received from clients.
pub const REQUESTS: &str = "meltemi_requests_total";
/// Answers delivered to clients, by `outcome`: success, business_error, local_reply, oneway.
pub const RESPONSES: &str = "meltemi_responses_total";
/// Replies built by the bridge itself, by `kind` (an [`crate::ErrorKind`] name).
pub const LOCAL_REPLIES: &str = "meltemi_local_replies_total";
/// Request-to-answer latency in microseconds (sub-millisecond calls are the common case).
pub const DURATION: &str = "meltemi_request_duration_us";
/// Requests in flight (gauge).
pub const ACTIVE: &str = "meltemi_active_requests";
/// Corrupt streams; each closed one connection. Label `role` (front/back).
pub const DECODE_ERRORS: &str = "meltemi_decode_errors_total";
/// Refusals by `reason`: frame_too_large, metadata_limit, connection_buffer_limit,
/// vm_buffer_budget (and `role`: front/back).
pub const REFUSED: &str = "meltemi_refused_total";
/// Label values replaced by `other` because their label had reached its limit, by `label`
/// (service, method).
pub const LABEL_OVERFLOW: &str = "meltemi_label_overflow_total";
/// Metric updates lost because the VM reached its cap on distinct metric names.
pub const METRICS_DROPPED: &str = "meltemi_metrics_dropped_total";
/// Server answers dropped because they answer nothing that is awaited (a duplicate, a late
/// answer, a wrong request id); the upstream connection is closed with each.
pub const STRAY_ANSWERS: &str = "meltemi_stray_answers_total";
/// Mutations the codec could not represent (frame forwarded unchanged).
pub const MUTATION_UNSUPPORTED: &str = "meltemi_mutation_unsupported_total";
/// Messages nobody waits for (a server answering a one-way call, a client sending a
/// response), dropped. Label `role`.
pub const UNEXPECTED: &str = "meltemi_unexpected_messages_total";
/// Heartbeats answered (front) or dropped (back, server-initiated), by `role`.
pub const HEARTBEATS: &str = "meltemi_heartbeats_total";

/// `stats_config.stats_tags` entries for the Envoy bootstrap: (tag_name, regex).
pub const STATS_TAGS: [(&str, &str); 8] = [
    ("protocol", r"(;\.;protocol=\.=(.*?))(?:;\.;|$)"),
    ("role", r"(;\.;role=\.=(.*?))(?:;\.;|$)"),
    ("service", r"(;\.;service=\.=(.*?))(?:;\.;|$)"),
    ("method", r"(;\.;method=\.=(.*?))(?:;\.;|$)"),
    ("outcome", r"(;\.;outcome=\.=(.*?))(?:;\.;|$)"),
    ("kind", r"(;\.;kind=\.=(.*?))(?:;\.;|$)"),
    ("reason", r"(;\.;reason=\.=(.*?))(?:;\.;|$)"),
    ("label", r"(;\.;label=\.=(.*?))(?:;\.;|$)"),
];

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

/// Values of `outcome` in [`RESPONSES`].
pub const OUTCOMES: [&str; 5] = [
    "success",
    "business_error",
    "local_reply",
    "oneway",
    "dropped",
];
/// Values of `reason` in [`REFUSED`].
pub const REASONS: [&str; 4] = [
    "frame_too_large",
    "metadata_limit",
    "connection_buffer_limit",
    "vm_buffer_budget",
];
const ROLES: [&str; 2] = ["front", "back"];

/// Every metric name the transcoders of `protocol` can report when the `service` and `method`
/// label values are limited to `services` and `methods` (include [`crate::vm::OTHER`]). The
/// native build must define its metrics when its configuration loads (Envoy freezes the set
/// afterwards), so it defines exactly these.
pub fn catalogue(protocol: &str, services: &[&str], methods: &[&str]) -> Vec<(MetricType, String)> {
    use MetricType::{Counter, Gauge, Histogram};
    let p = ("protocol", protocol);
    let mut out = vec![
        (Counter, METRICS_DROPPED.to_owned()),
        (Gauge, name(ACTIVE, &[p])),
        (Counter, name(MUTATION_UNSUPPORTED, &[p])),
    ];
    for role in ROLES {
        let r = ("role", role);
        for base in [DECODE_ERRORS, STRAY_ANSWERS, UNEXPECTED, HEARTBEATS] {
            out.push((Counter, name(base, &[p, r])));
        }
        for reason in REASONS {
            out.push((Counter, name(REFUSED, &[p, ("reason", reason), r])));
        }
    }
    for label in ["service", "method"] {
        out.push((Counter, name(LABEL_OVERFLOW, &[p, ("label", label)])));
    }
    for service in services {
        for method in methods {
            let sm = [p, ("service", *service), ("method", *method)];
            out.push((Counter, name(REQUESTS, &sm)));
            out.push((Histogram, name(DURATION, &sm)));
            for outcome in OUTCOMES {
                let l = [sm[0], sm[1], sm[2], ("outcome", outcome)];
                out.push((Counter, name(RESPONSES, &l)));
            }
            for kind in crate::ErrorKind::ALL {
                let l = [sm[0], sm[1], sm[2], ("kind", kind.as_str())];
                out.push((Counter, name(LOCAL_REPLIES, &l)));
            }
        }
    }
    out
}

/// Where transcoders report. The wasm glue maps it onto proxy-wasm metrics; tests record.
pub trait Sink {
    /// Adds `n` to a counter.
    fn count(&mut self, name: &str, n: u64);
    /// Adds `delta` to a gauge.
    fn gauge(&mut self, name: &str, delta: i64);
    /// Records one histogram sample.
    fn record(&mut self, name: &str, value: u64);
}

/// Adds one to the counter `base` with `labels`.
pub fn bump(sink: &mut dyn Sink, base: &str, labels: &[(&str, &str)]) {
    sink.count(&name(base, labels), 1);
}

/// Builds a stat name with labels. Values are sanitised so they cannot break the encoding.
pub fn name(base: &str, labels: &[(&str, &str)]) -> String {
    let mut s = String::with_capacity(base.len().saturating_add(64));
    s.push_str(base);
    for (label, value) in labels {
        let _ = write!(s, ";.;{label}=.=");
        push_sanitized(&mut s, value);
    }
    s
}

/// Longest label value kept; longer ones are cut (they come from the network).
const MAX_VALUE: usize = 96;

fn push_sanitized(s: &mut String, value: &str) {
    if value.is_empty() {
        s.push('-');
        return;
    }
    for c in value.chars().take(MAX_VALUE) {
        if c.is_ascii_alphanumeric() || "_-.:/$".contains(c) {
            s.push(c);
        } else {
            s.push('_');
        }
    }
}

/// A sink that keeps everything in memory (tests, fuzzing).
#[derive(Debug, Default)]
pub struct Recorder {
    /// Counter values by full stat name.
    pub counters: std::collections::BTreeMap<String, u64>,
    /// Gauge values by full stat name.
    pub gauges: std::collections::BTreeMap<String, i64>,
    /// Histogram samples by full stat name.
    pub samples: std::collections::BTreeMap<String, Vec<u64>>,
}

impl Recorder {
    /// Sum of every counter whose name starts with `base` and contains all `labels`.
    pub fn total(&self, base: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .iter()
            .filter(|(k, _)| matches(k, base, labels))
            .map(|(_, v)| *v)
            .sum()
    }

    /// Sum of every gauge matching like [`Recorder::total`].
    pub fn gauge_total(&self, base: &str, labels: &[(&str, &str)]) -> i64 {
        self.gauges
            .iter()
            .filter(|(k, _)| matches(k, base, labels))
            .map(|(_, v)| *v)
            .sum()
    }
}

fn matches(name: &str, base: &str, labels: &[(&str, &str)]) -> bool {
    name.starts_with(base)
        && name[base.len()..].is_empty() | name[base.len()..].starts_with(";.;")
        && labels
            .iter()
            .all(|(l, v)| name.contains(&format!(";.;{l}=.={v}")))
}

impl Sink for Recorder {
    fn count(&mut self, name: &str, n: u64) {
        let c = self.counters.entry(name.to_owned()).or_default();
        *c = c.saturating_add(n);
    }
    fn gauge(&mut self, name: &str, delta: i64) {
        let g = self.gauges.entry(name.to_owned()).or_default();
        *g = g.saturating_add(delta);
    }
    fn record(&mut self, name: &str, value: u64) {
        self.samples.entry(name.to_owned()).or_default().push(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_labels_and_sanitise() {
        let n = name(
            REQUESTS,
            &[
                ("protocol", "thrift"),
                ("service", "a.b;.;x=.=y"),
                ("method", ""),
            ],
        );
        assert_eq!(
            n,
            "meltemi_requests_total;.;protocol=.=thrift;.;service=.=a.b_._x_._y;.;method=.=-"
        );
    }
}
