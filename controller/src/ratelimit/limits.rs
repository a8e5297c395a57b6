//! The rate limit service's decisions, without I/O: which configured limit a request's
//! descriptor hits (envoyproxy/ratelimit's matching), the fixed window it counts in, the key
//! of its counter, and the answer once the counters are known. The counters themselves live
//! in [`super::service`] (Redis or memory).
//!
//! Matching, level by level along the descriptor's entries: a node with the entry's key and
//! exactly its value wins over one whose value is a prefix ending in `*`, which wins over one
//! with the key and no value (the key's default). The limit is that of the node the last entry
//! reached; a descriptor that stops matching, or ends on a node without a limit, is not limited.
//! Nodes without a value count each value on its own, because the counter key is made of the
//! request's own entries.

use std::collections::BTreeMap;

use super::{unit_seconds, LimitDescriptor, RateLimitConfigSpec};
use crate::model::Shared;

/// One configured limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Calls per window.
    pub requests_per_unit: u32,
    /// Window length in seconds.
    pub window_secs: u64,
    /// Envoy's `RateLimit.Unit` number of the unit.
    pub unit: i32,
    /// Matched but never refused.
    pub unlimited: bool,
    /// Count and report, never refuse.
    pub shadow: bool,
    /// Reported name.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    key: String,
    value: Option<String>,
    limit: Option<Limit>,
    children: Vec<Node>,
}

/// Every domain's descriptor tree, as the last valid configuration has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    domains: BTreeMap<String, Vec<Node>>,
}

fn unit_number(unit: &str) -> i32 {
    match unit.to_ascii_lowercase().as_str() {
        "second" => 1,
        "minute" => 2,
        "hour" => 3,
        "day" => 4,
        "week" => 7,
        _ => 0,
    }
}

fn node(d: &LimitDescriptor, inherited_shadow: bool) -> Node {
    let shadow = inherited_shadow || d.shadow_mode;
    Node {
        key: d.key.clone(),
        value: d.value.clone(),
        limit: d.rate_limit.as_ref().map(|r| Limit {
            requests_per_unit: r.requests_per_unit.unwrap_or(0),
            window_secs: unit_seconds(&r.unit).unwrap_or(1),
            unit: unit_number(&r.unit),
            unlimited: r.unlimited,
            shadow,
            name: r.name.clone().unwrap_or_default(),
        }),
        children: d.descriptors.iter().map(|c| node(c, shadow)).collect(),
    }
}

/// What a request's descriptor hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit<'a> {
    /// The limit.
    pub limit: &'a Limit,
    /// Its counter in window `window` (the same text in every replica).
    pub key: String,
}

impl Limits {
    /// Compiles validated `RateLimitConfig`s.
    pub fn new(configs: &[Shared<RateLimitConfigSpec>]) -> Limits {
        let mut domains = BTreeMap::new();
        for c in configs {
            domains.insert(
                c.spec.domain.clone(),
                c.spec.descriptors.iter().map(|d| node(d, false)).collect(),
            );
        }
        Limits { domains }
    }

    /// The number of domains configured.
    pub fn domains(&self) -> usize {
        self.domains.len()
    }

    /// The limit `entries` (key, value pairs) hit in `domain`, with its counter key for the
    /// window containing `now_secs` (Unix time), if any.
    pub fn hit(&self, domain: &str, entries: &[(&str, &str)], now_secs: u64) -> Option<Hit<'_>> {
        let mut level = self.domains.get(domain)?;
        let mut found: Option<&Node> = None;
        for (key, value) in entries {
            let best = level
                .iter()
                .filter(|n| n.key == *key)
                .filter_map(|n| {
                    let rank = match n.value.as_deref() {
                        Some(v) if v == *value => 0,
                        Some(v) => match v.strip_suffix('*') {
                            Some(prefix) if value.starts_with(prefix) => 1,
                            _ => return None,
                        },
                        None => 2,
                    };
                    Some((rank, n))
                })
                .min_by_key(|(rank, _)| *rank)
                .map(|(_, n)| n)?;
            found = Some(best);
            level = &best.children;
        }
        let limit = found?.limit.as_ref()?;
        let window = now_secs / limit.window_secs.max(1);
        Some(Hit {
            limit,
            key: counter_key(domain, entries, limit.window_secs, window),
        })
    }
}

/// The counter of a descriptor in one window: JSON-encoded parts, so that no key or value can
/// make two descriptors share a counter.
pub fn counter_key(
    domain: &str,
    entries: &[(&str, &str)],
    window_secs: u64,
    window: u64,
) -> String {
    let mut parts: Vec<&str> = vec![domain];
    for (k, v) in entries {
        parts.push(k);
        parts.push(v);
    }
    let parts = serde_json::to_string(&parts).unwrap_or_default();
    format!("meltemi_rl|{window_secs}|{window}|{parts}")
}

/// Whether a call making the counter `count` (after its own hits) is refused.
pub fn over_limit(limit: &Limit, count: u64) -> bool {
    !limit.unlimited && count > u64::from(limit.requests_per_unit)
}

/// Seconds from `now_secs` to the end of its window.
pub fn until_reset(limit: &Limit, now_secs: u64) -> u64 {
    let w = limit.window_secs.max(1);
    w - now_secs % w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{load_text, Loaded};

    fn limits(text: &str) -> Limits {
        let mut loaded = Loaded::default();
        load_text("l.yaml", text, &mut loaded);
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        Limits::new(&loaded.inputs.rate_limit_configs)
    }

    const CONFIG: &str = r#"
apiVersion: meltemi.io/v1alpha1
kind: RateLimitConfig
metadata: {name: prod}
spec:
  domain: production
  descriptors:
  - key: method
    value: sayHello
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: method
    value: "say*"
    rate_limit: {unit: second, requests_per_unit: 3}
  - key: method
    rate_limit: {unit: hour, requests_per_unit: 100}
  - key: interface
    value: org.Echo
    descriptors:
    - key: method
      value: echo
      rate_limit: {unit: day, requests_per_unit: 5, name: echo-daily}
    - key: method
      shadow_mode: true
      rate_limit: {unit: Minute, requests_per_unit: 1}
  - key: user
    rate_limit: {unlimited: true}
"#;

    #[test]
    fn exact_beats_prefix_beats_default() {
        let l = limits(CONFIG);
        let now = 1_000_000;
        let h = l.hit("production", &[("method", "sayHello")], now).unwrap();
        assert_eq!((h.limit.requests_per_unit, h.limit.window_secs), (10, 60));
        let h = l.hit("production", &[("method", "sayBye")], now).unwrap();
        assert_eq!((h.limit.requests_per_unit, h.limit.window_secs), (3, 1));
        let h = l.hit("production", &[("method", "add")], now).unwrap();
        assert_eq!((h.limit.requests_per_unit, h.limit.unit), (100, 3));
        assert!(l.hit("staging", &[("method", "sayHello")], now).is_none());
        assert!(l.hit("production", &[("nope", "x")], now).is_none());
    }

    #[test]
    fn nested_entries_and_nodes_without_limits() {
        let l = limits(CONFIG);
        let now = 86_400 * 3 + 5;
        // The first level has no limit of its own: only the nested one applies.
        assert!(l
            .hit("production", &[("interface", "org.Echo")], now)
            .is_none());
        let h = l
            .hit(
                "production",
                &[("interface", "org.Echo"), ("method", "echo")],
                now,
            )
            .unwrap();
        assert_eq!(h.limit.name, "echo-daily");
        assert_eq!(h.limit.unit, 4);
        assert!(!h.limit.shadow);
        let h = l
            .hit(
                "production",
                &[("interface", "org.Echo"), ("method", "other")],
                now,
            )
            .unwrap();
        assert!(h.limit.shadow);
        assert_eq!(h.limit.unit, 2, "units are read in any case");
        // More entries than the tree has levels: no limit.
        assert!(l
            .hit(
                "production",
                &[("interface", "org.Echo"), ("method", "echo"), ("x", "y")],
                now
            )
            .is_none());
        let h = l.hit("production", &[("user", "ann")], now).unwrap();
        assert!(h.limit.unlimited && !over_limit(h.limit, 1_000_000));
    }

    #[test]
    fn counter_keys_per_value_and_window() {
        let l = limits(CONFIG);
        let a = l
            .hit("production", &[("method", "add")], 3600 * 7)
            .unwrap()
            .key;
        let b = l
            .hit("production", &[("method", "sub")], 3600 * 7)
            .unwrap()
            .key;
        let a_later = l
            .hit("production", &[("method", "add")], 3600 * 7 + 3599)
            .unwrap()
            .key;
        let a_next = l
            .hit("production", &[("method", "add")], 3600 * 8)
            .unwrap()
            .key;
        assert_ne!(a, b, "a key without a value counts each value on its own");
        assert_eq!(a, a_later, "one window");
        assert_ne!(a, a_next, "the next window is a new counter");
        // Separators inside keys or values cannot make two descriptors collide.
        assert_ne!(
            counter_key("d", &[("a|b", "c")], 60, 1),
            counter_key("d", &[("a", "b|c")], 60, 1)
        );
    }

    #[test]
    fn over_limit_and_reset() {
        let limit = Limit {
            requests_per_unit: 10,
            window_secs: 60,
            unit: 2,
            unlimited: false,
            shadow: false,
            name: String::new(),
        };
        assert!(!over_limit(&limit, 10));
        assert!(over_limit(&limit, 11));
        assert_eq!(until_reset(&limit, 120), 60);
        assert_eq!(until_reset(&limit, 179), 1);
    }
}
