//! The filter configuration: the JSON string Envoy passes as the plugin `configuration`.
//!
//! ```json
//! {"role": "front", "service": "orders.default.svc", "limits": {"max_frame_bytes": 1048576},
//!  "codec": { ...codec-specific... }}
//! ```
//! Unknown fields are rejected so that a typo fails the Envoy configuration load instead of
//! silently running with defaults.

use serde::Deserialize;

/// Which side of the bridge a filter instance runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// On the client-facing listener, before the HTTP connection manager.
    Front,
    /// On the internal listener, before `tcp_proxy` to the real server.
    Back,
}

/// Per-connection limits. Every refusal is counted in `meltemi_refused_total{reason}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest frame accepted; a bigger one closes the connection (reason `frame_too_large`).
    pub max_frame_bytes: usize,
    /// Requests awaiting an answer on one client connection; more are refused with an
    /// over-limit error reply (reason `too_many_pending`).
    pub max_pending_requests: usize,
    /// Metadata entries per message; more are refused with a bad-request error reply.
    pub max_metadata_entries: usize,
    /// Total key+value bytes of a message's metadata; more are refused likewise.
    pub max_metadata_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 << 20,
            max_pending_requests: 1024,
            max_metadata_entries: 64,
            max_metadata_bytes: 16 << 10,
        }
    }
}

/// The whole filter configuration for codec configuration type `C`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig<C> {
    /// Front or back.
    pub role: Role,
    /// Virtual host (HTTP authority) for every request of this listener. When absent, the
    /// message's `service` metadata names it (e.g. Dubbo interface-level governance).
    #[serde(default)]
    pub service: Option<String>,
    /// Connection limits.
    #[serde(default)]
    pub limits: Limits,
    /// The codec's own configuration.
    #[serde(default)]
    pub codec: C,
}

impl<C: serde::de::DeserializeOwned + Default> FilterConfig<C> {
    /// Parses the plugin configuration; the error names the offending field and position.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        // serde_path_to_error names the field (`role`, `limits.max_frame_bytes`, `codec.x`)
        // even where serde_json's own message would not (unknown enum variants).
        let de = &mut serde_json::Deserializer::from_slice(json);
        let config: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                format!("meltemi filter configuration: {}", e.inner())
            } else {
                format!(
                    "meltemi filter configuration: field `{path}`: {}",
                    e.inner()
                )
            }
        })?;
        if config.limits.max_frame_bytes == 0 || config.limits.max_pending_requests == 0 {
            return Err("meltemi filter configuration: limits.max_frame_bytes and limits.max_pending_requests must be positive".into());
        }
        if let Some(service) = &config.service {
            if !crate::http1::is_header_value(service) || service.is_empty() {
                return Err(format!(
                    "meltemi filter configuration: service {service:?} is not a valid host name"
                ));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NoCodec {}

    #[test]
    fn defaults_and_errors_name_the_field() {
        let c = FilterConfig::<NoCodec>::parse(br#"{"role":"front"}"#).unwrap();
        assert_eq!(c.role, Role::Front);
        assert_eq!(c.limits, Limits::default());
        let e = FilterConfig::<NoCodec>::parse(br#"{"role":"front","limits":{"max_frame":1}}"#)
            .unwrap_err();
        assert!(e.contains("max_frame"), "{e}");
        let e = FilterConfig::<NoCodec>::parse(br#"{"role":"sideways"}"#).unwrap_err();
        assert!(e.contains("field `role`") && e.contains("sideways"), "{e}");
        let e =
            FilterConfig::<NoCodec>::parse(br#"{"role":"front","limits":{"max_frame_bytes":"x"}}"#)
                .unwrap_err();
        assert!(e.contains("field `limits.max_frame_bytes`"), "{e}");
        let e =
            FilterConfig::<NoCodec>::parse(br#"{"role":"back","limits":{"max_frame_bytes":0}}"#)
                .unwrap_err();
        assert!(e.contains("max_frame_bytes"), "{e}");
    }
}
