//! The filter configuration: the JSON string Envoy passes as the plugin `configuration`.
//!
//! ```json
//! {"role": "front", "service": "orders.default.svc", "limits": {"max_frame_bytes": 1048576},
//!  "hcm_protocol": "http1", "codec": { ...codec-specific... }}
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

/// The HTTP version the front speaks to the HTTP connection manager that follows it; the
/// listener's HCM must be configured with the same (`codec_type: HTTP1` or `HTTP2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HcmProtocol {
    /// HTTP/1.1: HCM serves one request of a client connection at a time, in order.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c): every call of a client connection is its own stream,
    /// proxied concurrently.
    Http2,
}

/// Limits. Every refusal is counted in `meltemi_refused_total{reason}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest frame accepted; a bigger one closes the connection (reason `frame_too_large`).
    pub max_frame_bytes: usize,
    /// Requests handed to the HTTP connection manager and not answered yet, per client
    /// connection. Past it the front stops reading that client (back-pressure): later requests
    /// wait in order, none is refused.
    pub max_pending_requests: usize,
    /// Under HTTP/2 toward HCM (`hcm_protocol: http2`): calls of one client connection
    /// proxied at once, one stream each; more wait in order in the VM, as behind
    /// `max_pending_requests`. Every open stream can hold an upstream connection and a share
    /// of the cluster's circuit breakers until its answer is read, so this bounds what one
    /// client connection takes from all others (over HTTP/1.1 a connection holds one call at
    /// a time). Default 32.
    pub max_concurrent_streams: usize,
    /// Metadata entries per message; more are refused with a bad-request error reply (a
    /// one-way call is dropped instead: it must never be answered).
    pub max_metadata_entries: usize,
    /// Total key+value bytes of a message's metadata; more are refused likewise.
    pub max_metadata_bytes: usize,
    /// Client bytes one connection may hold in the VM (a partial frame plus requests waiting
    /// behind `max_pending_requests`); past it the connection is closed (reason
    /// `connection_buffer_limit`). Default: twice `max_frame_bytes`.
    pub max_connection_buffer_bytes: Option<usize>,
    /// Bytes all connections of one VM (one Envoy worker) may hold between callbacks; a
    /// connection whose buffer would pass it is closed alone (reason `vm_buffer_budget`).
    /// Far below the VM's own limit (about 1 GiB), so that the VM never runs out of memory.
    /// When several filters share a VM, the smallest value wins.
    pub vm_buffer_budget_bytes: usize,
    /// Distinct `service` label values with metrics of their own, beyond those named in
    /// `known_services`; later ones are counted as `other` (and in
    /// `meltemi_label_overflow_total{label="service"}`).
    pub max_service_labels: usize,
    /// The same for `method` label values.
    pub max_method_labels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 << 20,
            max_pending_requests: 1024,
            max_concurrent_streams: 32,
            max_metadata_entries: 64,
            max_metadata_bytes: 16 << 10,
            max_connection_buffer_bytes: None,
            vm_buffer_budget_bytes: 256 << 20,
            max_service_labels: 256,
            max_method_labels: 1024,
        }
    }
}

impl Limits {
    /// [`Limits::max_connection_buffer_bytes`] with its default applied.
    pub fn connection_buffer_bytes(&self) -> usize {
        self.max_connection_buffer_bytes
            .unwrap_or_else(|| self.max_frame_bytes.saturating_mul(2))
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
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// HTTP version toward HCM (front only): `"http1"` (the default) or `"http2"`.
    #[serde(default)]
    pub hcm_protocol: HcmProtocol,
    /// Services and methods whose label values always get metrics of their own (the ones
    /// routes name); the controller fills these in.
    #[serde(default)]
    pub known_services: Vec<String>,
    /// See [`FilterConfig::known_services`].
    #[serde(default)]
    pub known_methods: Vec<String>,
    /// Request headers the back copies from the router's request into the frame as metadata
    /// (the codec writes them like a mutation: Dubbo attachments, THeader headers), so that
    /// the trace context Envoy's tracer injects (`x-b3-traceid`, …) reaches the server. Lower
    /// case; the controller fills it in when tracing is on.
    #[serde(default)]
    pub propagate_headers: Vec<String>,
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
        let l = &config.limits;
        for (name, value) in [
            ("max_frame_bytes", l.max_frame_bytes),
            ("max_pending_requests", l.max_pending_requests),
            ("max_concurrent_streams", l.max_concurrent_streams),
            ("vm_buffer_budget_bytes", l.vm_buffer_budget_bytes),
            ("max_connection_buffer_bytes", l.connection_buffer_bytes()),
        ] {
            if value == 0 {
                return Err(format!(
                    "meltemi filter configuration: field `limits.{name}`: must be positive"
                ));
            }
        }
        if l.connection_buffer_bytes() < l.max_frame_bytes {
            return Err(format!(
                "meltemi filter configuration: field `limits.max_connection_buffer_bytes`: {} is below limits.max_frame_bytes ({}): no frame of the maximum size could arrive",
                l.connection_buffer_bytes(),
                l.max_frame_bytes
            ));
        }
        if let Some(bad) = config
            .propagate_headers
            .iter()
            .find(|h| !crate::http1::is_header_name(h) || h.bytes().any(|b| b.is_ascii_uppercase()))
        {
            return Err(format!(
                "meltemi filter configuration: field `propagate_headers`: {bad:?} is not a lower-case header name"
            ));
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
        assert_eq!(c.hcm_protocol, HcmProtocol::Http1);
        let c =
            FilterConfig::<NoCodec>::parse(br#"{"role":"front","hcm_protocol":"http2"}"#).unwrap();
        assert_eq!(c.hcm_protocol, HcmProtocol::Http2);
        let e =
            FilterConfig::<NoCodec>::parse(br#"{"role":"front","hcm_protocol":"h3"}"#).unwrap_err();
        assert!(e.contains("field `hcm_protocol`"), "{e}");
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
        let c = FilterConfig::<NoCodec>::parse(
            br#"{"role":"back","propagate_headers":["x-b3-traceid"]}"#,
        )
        .unwrap();
        assert_eq!(c.propagate_headers, ["x-b3-traceid"]);
        let e = FilterConfig::<NoCodec>::parse(
            br#"{"role":"back","propagate_headers":["X-B3-TraceId"]}"#,
        )
        .unwrap_err();
        assert!(e.contains("field `propagate_headers`"), "{e}");
    }
}
