//! The codec's configuration: the `codec` object of the filter configuration.

use serde::Deserialize;

/// Default body limit: 16 MiB, the cap Envoy's native `dubbo_proxy` enforces. (Java Dubbo's own
/// `payload` default is 8 MiB; providers configured higher still fit under this.)
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Dubbo codec settings. Unknown fields are rejected so that Envoy refuses a misspelt option
/// instead of running without it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DubboConfig {
    /// Largest body a frame header may announce; a header announcing more is a malformed
    /// stream (the frame would never be accepted, so waiting for it is pointless).
    pub max_body_bytes: usize,
}

impl Default for DubboConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}
