//! Meltemi codec for Dubbo2 (the `dubbo://` TCP protocol) with Hessian2 serialization.
//!
//! [`DubboCodec`] cuts a byte stream into Dubbo frames, classifies them (request, one-way,
//! response, exception, heartbeat, heartbeat reply), extracts routing metadata from requests
//! (service/interface, method, version, group, path, timeout, dubbo version, every attachment)
//! and from responses (status, response attachments), rewrites attachment maps for mutations,
//! and writes Dubbo's own error responses, heartbeat replies and delivery probes.
//!
//! Pure Rust, no I/O, no panics: it runs natively in tests and inside the proxy-wasm filter.
//! Hessian2 is read and written by the hand-written [`hessian`] module (see there for why).
//!
//! Modules: [`header`] (16-byte frame header), [`hessian`] (reader/skipper, writer), [`body`]
//! (request invocation and response result layouts), [`mutate`] (attachment rewriting),
//! [`reply`] (frames the codec builds), [`config`].

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

pub mod body;
pub mod config;
pub mod header;
pub mod hessian;
pub mod mutate;
pub mod reply;

use meltemi_sdk::{Codec, CodecError, ErrorKind, Message, MessageKind, Metadata};

pub use config::DubboConfig;
use header::{status, Header, HEADER_LEN};

/// The Dubbo2/Hessian2 codec. Stateless between frames: every Dubbo frame is self-describing.
#[derive(Debug, Clone)]
pub struct DubboCodec {
    config: DubboConfig,
}

impl DubboCodec {
    /// The header and body of one complete frame (`frame` holds at least that frame).
    fn split<'a>(
        &self,
        frame: &'a [u8],
        max_body: usize,
    ) -> Result<(Header, &'a [u8]), CodecError> {
        let h = Header::parse(frame, max_body)?
            .ok_or_else(|| CodecError::malformed("frame shorter than the dubbo header"))?;
        let body = frame
            .get(HEADER_LEN..h.frame_len())
            .ok_or_else(|| CodecError::malformed("frame shorter than its announced body"))?;
        Ok((h, body))
    }
}

/// Kind and metadata of one complete frame.
fn classify(h: &Header, body: &[u8]) -> Result<(MessageKind, Metadata), CodecError> {
    let mut md = Metadata::new();
    if h.is_request() {
        if h.is_event() {
            if h.is_two_way() {
                return Ok((MessageKind::Heartbeat, md));
            }
            // A one-way event is a notice (Java providers send "R", read-only, when shutting
            // down), not a heartbeat: nothing answers it.
            let mut r = hessian::Reader::new(body);
            if let Ok(Some(ev)) = r.read_string() {
                md.push("event", ev);
            }
            return Ok((MessageKind::OneWay, md));
        }
        let inv = body::parse_invocation(body).map_err(CodecError::malformed)?;
        let kind = if h.is_two_way() {
            MessageKind::Request
        } else {
            MessageKind::OneWay
        };
        return Ok((kind, inv.metadata()));
    }
    md.push("status", h.status.to_string());
    if h.is_event() {
        return Ok((MessageKind::HeartbeatReply, md));
    }
    if h.status != status::OK {
        // The body is the provider's error message; the frame is forwarded untouched.
        return Ok((MessageKind::Exception, md));
    }
    let res = body::parse_result(body).map_err(CodecError::malformed)?;
    if let Some(att) = &res.attachments {
        att.push_into(&mut md);
    }
    let kind = if res.is_exception() {
        MessageKind::Exception
    } else {
        MessageKind::Response
    };
    Ok((kind, md))
}

impl Codec for DubboCodec {
    const PROTOCOL: &'static str = "dubbo";
    /// Dubbo consumers match answers to calls by request id (they multiplex one connection).
    const ANSWERS_IN_ANY_ORDER: bool = true;
    type Config = DubboConfig;

    fn new(config: &Self::Config) -> Self {
        Self {
            config: config.clone(),
        }
    }

    fn decode(&mut self, buf: &[u8]) -> Result<Option<Message>, CodecError> {
        let Some(h) = Header::parse(buf, self.config.max_body_bytes)? else {
            return Ok(None);
        };
        let Some(body) = buf.get(HEADER_LEN..h.frame_len()) else {
            return Ok(None);
        };
        let (kind, metadata) = classify(&h, body)?;
        Ok(Some(
            Message::new(h.frame_len(), kind, h.request_id).with_metadata(metadata),
        ))
    }

    fn encode(
        &mut self,
        frame: &[u8],
        _message: &Message,
        mutation: &Metadata,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let (h, body) = self.split(frame, self.config.max_body_bytes)?;
        let attachments = if h.is_event() {
            return Err(CodecError::unsupported("dubbo events carry no attachments"));
        } else if h.is_request() {
            body::parse_invocation(body)
                .map_err(CodecError::malformed)?
                .attachments
        } else if h.status != status::OK {
            return Err(CodecError::unsupported(format!(
                "dubbo response with status {} carries no attachments",
                h.status
            )));
        } else {
            let res = body::parse_result(body).map_err(CodecError::malformed)?;
            res.attachments.ok_or_else(|| {
                CodecError::unsupported(format!(
                    "dubbo response with result flag {:?} carries no attachments \
                     (only flags 3/4/5 from dubbo 2.0.2+ peers do)",
                    res.flag
                ))
            })?
        };
        let new_body = mutate::rewrite(body, &attachments, mutation)?;
        if new_body.len() > self.config.max_body_bytes || new_body.len() > i32::MAX as usize {
            return Err(CodecError::unsupported(format!(
                "mutated body of {} bytes would exceed max_body_bytes ({})",
                new_body.len(),
                self.config.max_body_bytes
            )));
        }
        out.reserve(HEADER_LEN.saturating_add(new_body.len()));
        Header {
            body_len: new_body.len(),
            ..h
        }
        .write(out);
        out.extend_from_slice(&new_body);
        Ok(())
    }

    fn error_reply(&mut self, request: &Message, kind: ErrorKind, detail: &str) -> Option<Vec<u8>> {
        Some(reply::error_reply(request.request_id, kind, detail))
    }

    fn heartbeat_reply(&mut self, request: &Message) -> Option<Vec<u8>> {
        Some(reply::heartbeat_reply(request.request_id))
    }

    fn delivery_probe(&mut self, oneway: &Message) -> Option<Vec<u8>> {
        Some(reply::heartbeat_request(oneway.request_id))
    }

    /// Dubbo's going-away signal is the provider's read-only event.
    fn going_away(&mut self) -> Option<Vec<u8>> {
        Some(reply::readonly_event())
    }
}

// The one line that makes this crate a proxy-wasm network filter (`meltemi_dubbo.wasm`).
meltemi_sdk::export_codec!(DubboCodec);
