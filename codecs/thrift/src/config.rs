//! The codec's configuration: the `codec` object of the filter configuration.
//!
//! Mirrors Envoy thrift_proxy's `transport` / `protocol` settings: `auto` (the default) detects
//! both from a connection's first bytes and remembers them for the rest of the connection.

use serde::{Deserialize, Deserializer};

/// Which transport frames messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportConfig {
    /// Detect framed, unframed or THeader from the first bytes (Envoy AUTO_TRANSPORT).
    #[default]
    Auto,
    /// TFramedTransport: a 4-byte big-endian length before each message.
    Framed,
    /// TBufferedTransport and raw sockets: messages back to back, no length.
    Unframed,
    /// THeaderTransport.
    Header,
}

/// Which protocol encodes message bodies. THeader frames name their own protocol and ignore this.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolConfig {
    /// Detect binary or compact from the first message (Envoy AUTO_PROTOCOL).
    #[default]
    Auto,
    /// TBinaryProtocol, strict or not (decided per message from its first word).
    Binary,
    /// TCompactProtocol.
    Compact,
}

/// How the bridge tells Envoy that a one-way call was delivered (a network filter cannot answer
/// Envoy's router itself, and a one-way call gets no answer from the server).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnewayAck {
    /// Close the server connection once the call is written (Envoy opens a new one for the
    /// next call). Works with every server.
    #[default]
    Close,
    /// Follow the call with a call to an unknown method and take the server's
    /// UNKNOWN_METHOD exception as the acknowledgement; keeps the connection. Apache Thrift
    /// and thriftpy2 servers answer it; the Rust `thrift` crate's server closes the connection
    /// instead (it does not skip an unknown call's arguments).
    Probe,
}

/// Default nesting limit for skipped values, as deep as any real IDL goes.
pub const DEFAULT_MAX_DEPTH: u32 = 64;

/// `codec` configuration of the Thrift filter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Transport; `auto` by default.
    pub transport: TransportConfig,
    /// Protocol; `auto` by default.
    pub protocol: ProtocolConfig,
    /// Deepest nesting of structs, lists, sets and maps accepted while skipping an unframed
    /// message (the message's own struct counts as 1). Deeper values are refused as malformed.
    #[serde(deserialize_with = "positive")]
    pub max_depth: u32,
    /// One-way acknowledgement; `close` by default.
    pub oneway_ack: OnewayAck,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            transport: TransportConfig::Auto,
            protocol: ProtocolConfig::Auto,
            max_depth: DEFAULT_MAX_DEPTH,
            oneway_ack: OnewayAck::Close,
        }
    }
}

/// `max_depth: 0` would refuse every message: reject it when the configuration is loaded.
fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if v == 0 {
        return Err(serde::de::Error::custom("max_depth must be at least 1"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let c: Config = serde_json::from_str("{}").unwrap();
        assert_eq!(c, Config::default());
        let c: Config =
            serde_json::from_str(r#"{"transport":"header","protocol":"compact","max_depth":8}"#)
                .unwrap();
        assert_eq!(
            (c.transport, c.protocol, c.max_depth),
            (TransportConfig::Header, ProtocolConfig::Compact, 8)
        );
        assert!(serde_json::from_str::<Config>(r#"{"transport":"http"}"#).is_err());
        assert!(serde_json::from_str::<Config>(r#"{"framed":true}"#).is_err());
        assert!(serde_json::from_str::<Config>(r#"{"max_depth":0}"#).is_err());
        assert!(serde_json::from_str::<Config>(r#"{"max_depth":-1}"#).is_err());
    }
}
