//! MiniRPC: a codec for a small private request/response protocol, written the way a Meltemi
//! user writes one. Everything protocol-specific lives here; buffering, limits, metrics and the
//! Envoy bridge come from `meltemi-sdk`.
//!
//! Wire format (all integers big-endian):
//! ```text
//! magic  u16  0x4D52 ("MR")
//! kind   u8   1 request, 2 response, 3 one-way, 4 ping, 5 pong, 6 error
//! flags  u8   0
//! id     u64  request id (a response carries its request's id)
//! len    u32  bytes that follow: the headers and the payload
//! count  u16  number of headers, then per header: u16 key length, key, u16 value length, value
//! payload     the rest
//! ```
//! Requests carry `service` and `method` headers; an error frame carries an `error` header.

use meltemi_sdk::{Codec, CodecError, ErrorKind, Message, MessageKind, Metadata};
use serde::Deserialize;

pub mod frame;

/// Fixed part of every frame: magic, kind, flags, id, len.
const FIXED: usize = 16;
const MAGIC: [u8; 2] = *b"MR";

/// MiniRPC has nothing to configure; unknown fields are still refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MiniRpcConfig {}

/// The codec: stateless, so one value per connection costs nothing.
pub struct MiniRpc;

/// Frame kinds on the wire.
pub mod kind {
    /// Two-way call.
    pub const REQUEST: u8 = 1;
    /// Successful answer.
    pub const RESPONSE: u8 = 2;
    /// Call without answer.
    pub const ONEWAY: u8 = 3;
    /// Keep-alive.
    pub const PING: u8 = 4;
    /// Keep-alive answer.
    pub const PONG: u8 = 5;
    /// Failed answer; `error` header names the failure, payload is the message.
    pub const ERROR: u8 = 6;
}

impl Codec for MiniRpc {
    const PROTOCOL: &'static str = "minirpc";
    type Config = MiniRpcConfig;

    fn new(_config: &MiniRpcConfig) -> Self {
        MiniRpc
    }

    fn decode(&mut self, buf: &[u8]) -> Result<Option<Message>, CodecError> {
        if buf.len() < FIXED {
            // Reject garbage as early as possible instead of waiting for 16 bytes of it.
            let n = buf.len().min(2);
            if buf[..n] != MAGIC[..n] {
                return Err(CodecError::malformed("bad magic"));
            }
            return Ok(None);
        }
        if buf[..2] != MAGIC {
            return Err(CodecError::malformed("bad magic"));
        }
        let kind = match buf[2] {
            kind::REQUEST => MessageKind::Request,
            kind::RESPONSE => MessageKind::Response,
            kind::ONEWAY => MessageKind::OneWay,
            kind::PING => MessageKind::Heartbeat,
            kind::PONG => MessageKind::HeartbeatReply,
            kind::ERROR => MessageKind::Exception,
            other => return Err(CodecError::malformed(format!("unknown kind {other}"))),
        };
        let request_id = u64::from_be_bytes(array(&buf[4..12]));
        let body_len = u32::from_be_bytes(array(&buf[12..16])) as usize;
        let len = FIXED + body_len;
        if buf.len() < len {
            return Ok(None);
        }
        let (metadata, _payload_at) = read_headers(&buf[FIXED..len])?;
        Ok(Some(Message {
            len,
            kind,
            request_id,
            metadata,
            context: 0,
        }))
    }

    fn encode(
        &mut self,
        frame: &[u8],
        _message: &Message,
        mutation: &Metadata,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let body = frame
            .get(FIXED..)
            .ok_or_else(|| CodecError::malformed("short frame"))?;
        let (mut headers, payload_at) = read_headers(body)?;
        for (k, v) in mutation.iter() {
            headers.set(k, v);
        }
        let kind = frame[2];
        let id = u64::from_be_bytes(array(&frame[4..12]));
        frame::write(out, kind, id, &headers, &body[payload_at..]).map_err(CodecError::unsupported)
    }

    fn error_reply(&mut self, request: &Message, kind: ErrorKind, detail: &str) -> Option<Vec<u8>> {
        let headers: Metadata = [("error", kind.as_str())].into_iter().collect();
        let mut out = Vec::new();
        frame::write(
            &mut out,
            kind::ERROR,
            request.request_id,
            &headers,
            detail.as_bytes(),
        )
        .ok()?;
        Some(out)
    }

    fn heartbeat_reply(&mut self, request: &Message) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        frame::write(
            &mut out,
            kind::PONG,
            request.request_id,
            &Metadata::new(),
            &[],
        )
        .ok()?;
        Some(out)
    }

    fn delivery_probe(&mut self, oneway: &Message) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        frame::write(
            &mut out,
            kind::PING,
            oneway.request_id,
            &Metadata::new(),
            &[],
        )
        .ok()?;
        Some(out)
    }
}

/// Reads the header block at the start of `body`; returns the headers and where the payload starts.
fn read_headers(body: &[u8]) -> Result<(Metadata, usize), CodecError> {
    let mut at = 0;
    let count = read_u16(body, &mut at)?;
    let mut headers = Metadata::new();
    for _ in 0..count {
        let key = read_str(body, &mut at)?;
        let value = read_str(body, &mut at)?;
        headers.push(key, value);
    }
    Ok((headers, at))
}

fn read_u16(buf: &[u8], at: &mut usize) -> Result<u16, CodecError> {
    let bytes = buf
        .get(*at..*at + 2)
        .ok_or_else(|| CodecError::malformed("header block truncated"))?;
    *at += 2;
    Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
}

fn read_str<'a>(buf: &'a [u8], at: &mut usize) -> Result<&'a str, CodecError> {
    let len = read_u16(buf, at)? as usize;
    let bytes = buf
        .get(*at..*at + len)
        .ok_or_else(|| CodecError::malformed("header truncated"))?;
    *at += len;
    std::str::from_utf8(bytes).map_err(|_| CodecError::malformed("header is not UTF-8"))
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&bytes[..N]);
    a
}

meltemi_sdk::export_codec!(MiniRpc);

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u64, method: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let headers: Metadata = [("service", "demo"), ("method", method)]
            .into_iter()
            .collect();
        frame::write(&mut out, kind::REQUEST, id, &headers, b"payload").unwrap();
        out
    }

    #[test]
    fn decodes_request_and_waits_for_every_prefix() {
        let bytes = request(7, "hello");
        let mut codec = MiniRpc;
        let m = codec.decode(&bytes).unwrap().unwrap();
        assert_eq!(
            (m.len, m.kind, m.request_id),
            (bytes.len(), MessageKind::Request, 7)
        );
        assert_eq!(m.metadata.get("method"), Some("hello"));
        for cut in 0..bytes.len() {
            assert_eq!(codec.decode(&bytes[..cut]).unwrap(), None);
        }
    }

    #[test]
    fn garbage_is_malformed_at_once() {
        assert!(MiniRpc.decode(b"GET / HTTP/1.1").is_err());
        assert!(MiniRpc.decode(b"X").is_err());
    }

    #[test]
    fn mutation_sets_headers_and_keeps_payload() {
        let bytes = request(9, "m");
        let mut codec = MiniRpc;
        let m = codec.decode(&bytes).unwrap().unwrap();
        let mutation: Metadata = [("method", "m2"), ("env", "canary")].into_iter().collect();
        let mut out = Vec::new();
        codec.encode(&bytes, &m, &mutation, &mut out).unwrap();
        let m2 = codec.decode(&out).unwrap().unwrap();
        assert_eq!(m2.len, out.len());
        assert_eq!(
            m2.metadata.iter().collect::<Vec<_>>(),
            vec![("service", "demo"), ("method", "m2"), ("env", "canary")]
        );
        assert!(out.ends_with(b"payload"));
    }

    #[test]
    fn error_reply_keeps_request_id() {
        let bytes = request(11, "m");
        let m = MiniRpc.decode(&bytes).unwrap().unwrap();
        let reply = MiniRpc
            .error_reply(&m, ErrorKind::RouteNotFound, "no route")
            .unwrap();
        let r = MiniRpc.decode(&reply).unwrap().unwrap();
        assert_eq!((r.kind, r.request_id), (MessageKind::Exception, 11));
        assert_eq!(r.metadata.get("error"), Some("route_not_found"));
        assert!(reply.ends_with(b"no route"));
    }
}
