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
//!
//! ---
//!
//! The codec authoring guide (`README.md`) follows; its Rust snippets run as doctests.
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
// A panic traps the wasm VM for every connection of the worker: keep panicking constructs out of
// the codec itself (tests may use them).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo
    )
)]

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
        // Reject garbage as early as possible instead of waiting for 16 bytes of it.
        if !MAGIC.starts_with(buf.get(..2).unwrap_or(buf)) {
            return Err(CodecError::malformed("bad magic"));
        }
        let Some(fixed) = buf.get(..FIXED) else {
            return Ok(None);
        };
        let header = Header::parse(fixed)?;
        let kind = match header.kind {
            kind::REQUEST => MessageKind::Request,
            kind::RESPONSE => MessageKind::Response,
            kind::ONEWAY => MessageKind::OneWay,
            kind::PING => MessageKind::Heartbeat,
            kind::PONG => MessageKind::HeartbeatReply,
            kind::ERROR => MessageKind::Exception,
            other => return Err(CodecError::malformed(format!("unknown kind {other}"))),
        };
        let len = header.frame_len()?;
        // `len > buf.len()` also covers frames larger than this platform can address.
        let Some(body) = buf.get(FIXED..len) else {
            return Ok(None);
        };
        let (metadata, _payload_at) = read_headers(body)?;
        Ok(Some(
            Message::new(len, kind, header.id).with_metadata(metadata),
        ))
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
        let header = Header::parse(frame)?;
        let payload = body
            .get(payload_at..)
            .ok_or_else(|| CodecError::malformed("header block past the frame"))?;
        frame::write(out, header.kind, header.id, &headers, payload)
            .map_err(CodecError::unsupported)
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

/// The fixed part of a frame, read without trusting any of it.
struct Header {
    kind: u8,
    id: u64,
    /// Bytes after the fixed part, as announced (not yet known to be there).
    body_len: u32,
}

impl Header {
    /// Reads the first [`FIXED`] bytes of `frame` (the magic is the caller's business).
    fn parse(frame: &[u8]) -> Result<Header, CodecError> {
        let short = || CodecError::malformed("short frame");
        let kind = *frame.get(2).ok_or_else(short)?;
        let id = u64::from_be_bytes(array(frame.get(4..12).ok_or_else(short)?)?);
        let body_len = u32::from_be_bytes(array(frame.get(12..FIXED).ok_or_else(short)?)?);
        Ok(Header { kind, id, body_len })
    }

    /// The whole frame length. The wire format caps a frame at `u32::MAX` bytes in total, so
    /// the answer is the same on every platform; a header announcing more is corrupt. On
    /// wasm32 (`usize` is 32 bits) `FIXED + body_len` would otherwise wrap around.
    fn frame_len(&self) -> Result<usize, CodecError> {
        u32::try_from(FIXED)
            .ok()
            .and_then(|fixed| self.body_len.checked_add(fixed))
            .and_then(|len| usize::try_from(len).ok())
            .ok_or_else(|| {
                CodecError::malformed(format!(
                    "frame length {} + {FIXED} exceeds the 4 GiB format limit",
                    self.body_len
                ))
            })
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

/// The `n` bytes at `*at`, advancing `*at`; `what` names the field in the error.
fn take<'a>(buf: &'a [u8], at: &mut usize, n: usize, what: &str) -> Result<&'a [u8], CodecError> {
    let end = at
        .checked_add(n)
        .ok_or_else(|| CodecError::malformed(format!("{what} truncated")))?;
    let bytes = buf
        .get(*at..end)
        .ok_or_else(|| CodecError::malformed(format!("{what} truncated")))?;
    *at = end;
    Ok(bytes)
}

fn read_u16(buf: &[u8], at: &mut usize) -> Result<u16, CodecError> {
    let bytes = take(buf, at, 2, "header block")?;
    Ok(u16::from_be_bytes(array(bytes)?))
}

fn read_str<'a>(buf: &'a [u8], at: &mut usize) -> Result<&'a str, CodecError> {
    let len = usize::from(read_u16(buf, at)?);
    let bytes = take(buf, at, len, "header")?;
    std::str::from_utf8(bytes).map_err(|_| CodecError::malformed("header is not UTF-8"))
}

/// `bytes` as an array: a length mismatch is an error, never a panic.
fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], CodecError> {
    bytes
        .try_into()
        .map_err(|_| CodecError::malformed(format!("expected {N} bytes, got {}", bytes.len())))
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

    /// A frame header announcing `len` body bytes, followed by `extra` bytes of body.
    fn header_announcing(len: u32, extra: usize) -> Vec<u8> {
        let mut f = request(1, "m");
        f.truncate(12);
        f.extend_from_slice(&len.to_be_bytes());
        f.extend(std::iter::repeat_n(0u8, extra));
        f
    }

    #[test]
    fn length_fields_near_u32_max_are_refused_or_awaited_never_a_panic() {
        for len in [
            u32::MAX,
            0xFFFF_FFF0,
            0xFFFF_FFEF,
            0x7FFF_FFFF,
            0x8000_0000,
            u32::MAX - 15,
        ] {
            // The whole frame must fit in u32, whatever the platform's usize.
            let fits = len.checked_add(FIXED as u32).is_some();
            for extra in [0, 1, 2, 7, 64] {
                let bytes = header_announcing(len, extra);
                match MiniRpc.decode(&bytes) {
                    Ok(None) => assert!(fits, "{len:#x} must be refused at once"),
                    Err(e) => assert!(!fits, "{len:#x} fits the format but failed: {e}"),
                    Ok(Some(m)) => panic!("{len:#x}: a frame of {} bytes from {extra}", m.len),
                }
            }
        }
    }

    #[test]
    fn a_header_block_longer_than_the_frame_is_malformed() {
        // count = 0xFFFF headers in a 2-byte body, and a key length past the body.
        for body in [&[0xff, 0xff][..], &[0, 1, 0xff, 0xff, b'k']] {
            let mut f = header_announcing(body.len() as u32, 0);
            f.extend_from_slice(body);
            assert!(MiniRpc.decode(&f).is_err(), "{body:?}");
        }
    }

    #[test]
    fn encode_refuses_a_frame_shorter_than_its_fixed_part() {
        let m = MiniRpc.decode(&request(1, "m")).unwrap().unwrap();
        let mutation: Metadata = [("k", "v")].into_iter().collect();
        for cut in [0, 3, 15] {
            let mut out = Vec::new();
            let frame = &request(1, "m")[..cut];
            assert!(MiniRpc.encode(frame, &m, &mutation, &mut out).is_err());
        }
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
