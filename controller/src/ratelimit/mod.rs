//! Global rate limits, both halves:
//!
//! - **Envoy side** ([`envoy`]): Aeraki's `MetaRouter.spec.globalRateLimit` (domain, match,
//!   descriptors built from the call's metadata, rate limit service, timeout, deny on fail)
//!   becomes HCM's `envoy.filters.http.ratelimit` on the port's listener and `rate_limits` on
//!   the host's routes, whose `request_headers` actions read the metadata headers the front
//!   writes.
//! - **Service side** ([`limits`], [`service`]): `meltemi-controller serve` is Envoy's rate
//!   limit service (`envoy.service.ratelimit.v3.RateLimitService`) when a MetaRouter names no
//!   other. Its limits are `RateLimitConfig` resources in the watched directory, shaped like
//!   envoyproxy/ratelimit's configuration files; counters are fixed windows, in Redis when
//!   `--redis` is given (so that several replicas count together), in memory otherwise.
//!
//! The resource types of both live here; [`validate`] checks them (every problem names the file,
//! the resource and the field), as the rest of the controller does.

pub mod envoy;
pub mod limits;
pub mod service;
pub mod validate;

#[cfg(test)]
mod tests;

use serde::Deserialize;

use crate::model::MetaRouteMatch;

/// Kind of the rate limit service's limits.
pub const KIND: &str = "RateLimitConfig";

/// `MetaRouter.spec.globalRateLimit`, as Aeraki defines it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct GlobalRateLimit {
    /// Rate limit domain sent to the service (a `RateLimitConfig`'s `domain`).
    #[serde(default)]
    pub domain: String,
    /// Calls the limit applies to (every attribute must match); absent = every call.
    #[serde(default, rename = "match")]
    pub matches: Option<MetaRouteMatch>,
    /// One descriptor per entry: `descriptorKey` = the value of the call's metadata `property`.
    #[serde(default)]
    pub descriptors: Vec<DescriptorSource>,
    /// Cluster of the rate limit service; absent, empty, `meltemi-controller` or
    /// `meltemi_xds`: the controller itself.
    #[serde(default)]
    pub rate_limit_service: Option<String>,
    /// Timeout of the call to the service: `100ms`, `1s`, or a number of milliseconds
    /// (written as a string, as Aeraki's schema has it, or as a YAML number).
    #[serde(default, deserialize_with = "string_or_number")]
    pub request_timeout: Option<String>,
    /// Refuse calls when the service fails or times out (else they pass).
    #[serde(default)]
    pub deny_on_fail: bool,
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Number(u64),
    }
    Ok(Option::<Either>::deserialize(d)?.map(|e| match e {
        Either::Text(t) => t,
        Either::Number(n) => n.to_string(),
    }))
}

/// One descriptor of a [`GlobalRateLimit`].
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct DescriptorSource {
    /// Metadata key of the call whose value is sent (`method`, `interface`, an attachment).
    #[serde(default)]
    pub property: String,
    /// Key of the descriptor entry.
    #[serde(default)]
    pub descriptor_key: String,
}

/// `RateLimitConfig.spec`: one domain's limits, written as envoyproxy/ratelimit's
/// configuration files are (snake_case).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfigSpec {
    /// The domain a MetaRouter's `globalRateLimit.domain` names.
    #[serde(default)]
    pub domain: String,
    /// Descriptor tree.
    #[serde(default)]
    pub descriptors: Vec<LimitDescriptor>,
}

/// One node of the descriptor tree: matches an entry `key` (and `value`, when given).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitDescriptor {
    /// Entry key.
    #[serde(default)]
    pub key: String,
    /// Entry value: exact, or a prefix ending in `*`; absent = any value, each value counted
    /// on its own.
    #[serde(default)]
    pub value: Option<String>,
    /// The limit of a descriptor that ends here.
    #[serde(default)]
    pub rate_limit: Option<RateLimitValue>,
    /// Count and report, never refuse.
    #[serde(default)]
    pub shadow_mode: bool,
    /// Nested entries (the descriptor's next entry).
    #[serde(default)]
    pub descriptors: Vec<LimitDescriptor>,
}

/// `rate_limit` of a [`LimitDescriptor`].
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitValue {
    /// `second`, `minute`, `hour`, `day` or `week` (any case).
    #[serde(default)]
    pub unit: String,
    /// Calls allowed per window.
    #[serde(default)]
    pub requests_per_unit: Option<u32>,
    /// No limit (the descriptor is matched but never refused).
    #[serde(default)]
    pub unlimited: bool,
    /// Name reported to Envoy with the limit.
    #[serde(default)]
    pub name: Option<String>,
}

/// The window length, in seconds, of a unit name.
pub fn unit_seconds(unit: &str) -> Option<u64> {
    match unit.to_ascii_lowercase().as_str() {
        "second" => Some(1),
        "minute" => Some(60),
        "hour" => Some(3600),
        "day" => Some(86_400),
        "week" => Some(7 * 86_400),
        _ => None,
    }
}

/// `requestTimeout` as Envoy's JSON duration: an Istio duration, or a bare number of
/// milliseconds (Aeraki's field documents milliseconds).
pub fn request_timeout(t: &str) -> Option<String> {
    let t = t.trim();
    if let Ok(ms) = t.parse::<u64>() {
        return Some(format!("{}s", ms as f64 / 1000.0));
    }
    crate::translate::duration(t)
}
