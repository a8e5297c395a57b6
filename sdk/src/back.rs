//! The back transcoder: HTTP/1.1 requests from Envoy's router (arriving on an internal
//! listener) → protocol frames for the real server, and the server's frames → HTTP responses.
//!
//! Pure state machine, one per internal connection. Mutations the route added travel as
//! [`bridge::MUTATION_HEADER`] lines and are written into the frame by the codec here, at the
//! last hop, so every route decision (including retries and mirrors) sees the original frame.

use std::collections::VecDeque;
use std::rc::Rc;

use crate::bridge::{self, KIND_HEADER, RESPONSE_HEADER, RID_HEADER};
use crate::config::FilterConfig;
use crate::front::Fatal;
use crate::stats::{self, Sink};
use crate::{http1, Codec, CodecErrorKind, Message, MessageKind};

/// What the server owes us next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    /// The response to a forwarded request with this request id (when the front sent it).
    Response(Option<u64>),
    /// The server's answer to the delivery probe sent after a one-way call with this id.
    ProbeAnswer(u64),
    /// A one-way call without a probe: nothing will come; Envoy's route timeout ends it.
    Nothing,
}

/// Back-side state of one internal connection.
pub struct Back<C: Codec> {
    /// Decodes the server's stream.
    codec: C,
    /// Decodes, mutates and probes the whole frames arriving in HTTP bodies, so that `codec`'s
    /// view of the stream is never interrupted (see [`Codec::decode`]).
    frame_codec: C,
    config: Rc<FilterConfig<C::Config>>,
    /// Router bytes not yet forming a complete HTTP request.
    request_partial: Vec<u8>,
    /// Server bytes not yet forming a complete frame.
    response_partial: Vec<u8>,
    awaiting: VecDeque<Awaiting>,
    /// Request ids of the last one-way calls whose probe was answered. Some servers answer a
    /// one-way call anyway, after the probe; such a late answer carries one of these ids.
    acknowledged_oneways: VecDeque<u64>,
    /// Replies to heartbeats the server sent. The back can only write toward the server while
    /// forwarding a request, so they go out in front of the next one.
    heartbeat_replies: Vec<u8>,
}

/// Most bytes of queued heartbeat replies; an idle connection gets no more than this many.
const MAX_QUEUED_HEARTBEAT_REPLIES: usize = 4096;

/// How many acknowledged one-way ids are remembered for recognising late answers.
const ONEWAY_MEMORY: usize = 32;

impl<C: Codec> Back<C> {
    /// State for a new internal connection.
    pub fn new(config: Rc<FilterConfig<C::Config>>) -> Self {
        Self {
            codec: C::new(&config.codec),
            frame_codec: C::new(&config.codec),
            config,
            request_partial: Vec::new(),
            response_partial: Vec::new(),
            awaiting: VecDeque::new(),
            acknowledged_oneways: VecDeque::new(),
            heartbeat_replies: Vec::new(),
        }
    }

    /// Bytes from the router. Returns the protocol bytes to send to the server in their place.
    pub fn on_router_data(&mut self, data: &[u8], sink: &mut dyn Sink) -> Result<Vec<u8>, Fatal> {
        self.request_partial.extend_from_slice(data);
        let mut out = std::mem::take(&mut self.heartbeat_replies);
        let mut offset = 0;
        let result = loop {
            let max_body = self.config.limits.max_frame_bytes;
            let parsed = match http1::parse_request(&self.request_partial[offset..], max_body) {
                Ok(Some(p)) => p,
                Ok(None) => break Ok(()),
                Err(e) => {
                    if matches!(e, http1::HttpError::TooLarge(_)) {
                        stats::bump(
                            sink,
                            stats::REFUSED,
                            &[("protocol", C::PROTOCOL), ("reason", "frame_too_large")],
                        );
                    }
                    break Err(Fatal(format!("unreadable request from the router: {e}")));
                }
            };
            offset += parsed.len;
            if let Err(e) = self.forward(&parsed, &mut out, sink) {
                break Err(e);
            }
        };
        self.request_partial.drain(..offset);
        result.map(|()| out)
    }

    fn forward(
        &mut self,
        parsed: &http1::Parsed,
        out: &mut Vec<u8>,
        sink: &mut dyn Sink,
    ) -> Result<(), Fatal> {
        let protocol = C::PROTOCOL;
        let kind = parsed
            .header(KIND_HEADER)
            .and_then(MessageKind::parse)
            .ok_or_else(|| {
                Fatal(format!(
                    "request {} did not come from a meltemi front (no {KIND_HEADER})",
                    parsed.path
                ))
            })?;
        let frame = parsed.body.as_slice();
        let mutation = bridge::mutation_from_headers(parsed.header_all(bridge::MUTATION_HEADER));
        let needs_message = !mutation.is_empty() || kind == MessageKind::OneWay;
        let message = if needs_message {
            match self.frame_codec.decode(frame) {
                Ok(Some(m)) if m.len == frame.len() => Some(m),
                _ => {
                    stats::bump(
                        sink,
                        stats::DECODE_ERRORS,
                        &[("protocol", protocol), ("role", "back")],
                    );
                    return Err(Fatal(
                        "bridged request body is not exactly one frame".into(),
                    ));
                }
            }
        } else {
            None
        };
        match &message {
            Some(m) if !mutation.is_empty() => {
                let start = out.len();
                if let Err(e) = self.frame_codec.encode(frame, m, &mutation, out) {
                    out.truncate(start);
                    let name = if e.kind() == CodecErrorKind::Unsupported {
                        stats::name(stats::MUTATION_UNSUPPORTED, &[("protocol", protocol)])
                    } else {
                        stats::name(
                            stats::DECODE_ERRORS,
                            &[("protocol", protocol), ("role", "back")],
                        )
                    };
                    sink.count(&name, 1);
                    out.extend_from_slice(frame);
                }
            }
            _ => out.extend_from_slice(frame),
        }
        let awaiting = match (kind, &message) {
            (MessageKind::OneWay, Some(m)) => match self.frame_codec.delivery_probe(m) {
                Some(probe) => {
                    out.extend_from_slice(&probe);
                    Awaiting::ProbeAnswer(m.request_id)
                }
                None => Awaiting::Nothing,
            },
            _ => Awaiting::Response(parsed.header(RID_HEADER).and_then(|v| v.parse().ok())),
        };
        self.awaiting.push_back(awaiting);
        Ok(())
    }

    /// Bytes from the server. Returns the HTTP bytes for the router in their place.
    pub fn on_server_data(&mut self, data: &[u8], sink: &mut dyn Sink) -> Result<Vec<u8>, Fatal> {
        let protocol = C::PROTOCOL;
        self.response_partial.extend_from_slice(data);
        let mut out = Vec::new();
        let mut offset = 0;
        let result = loop {
            let rest = &self.response_partial[offset..];
            if rest.is_empty() {
                break Ok(());
            }
            let message = match self.codec.decode(rest) {
                Ok(Some(m))
                    if m.len > self.config.limits.max_frame_bytes && m.len <= rest.len() =>
                {
                    stats::bump(
                        sink,
                        stats::REFUSED,
                        &[("protocol", protocol), ("reason", "frame_too_large")],
                    );
                    break Err(Fatal(
                        "server frame larger than limits.max_frame_bytes".into(),
                    ));
                }
                Ok(Some(m)) if m.len > 0 && m.len <= rest.len() => m,
                Ok(Some(m)) => {
                    break Err(Fatal(format!(
                        "{protocol} codec returned an impossible frame length {}",
                        m.len
                    )))
                }
                Ok(None) => {
                    if rest.len() > self.config.limits.max_frame_bytes {
                        stats::bump(
                            sink,
                            stats::REFUSED,
                            &[("protocol", protocol), ("reason", "frame_too_large")],
                        );
                        break Err(Fatal(
                            "server frame larger than limits.max_frame_bytes".into(),
                        ));
                    }
                    break Ok(());
                }
                Err(e) => {
                    stats::bump(
                        sink,
                        stats::DECODE_ERRORS,
                        &[("protocol", protocol), ("role", "back")],
                    );
                    break Err(Fatal(format!(
                        "server sent a corrupt {protocol} stream: {e}"
                    )));
                }
            };
            let frame = offset..offset + message.len;
            offset += message.len;
            if message.kind == MessageKind::Heartbeat {
                // A server-initiated keep-alive: the router has no use for it; the server gets
                // its answer with the next request forwarded on this connection.
                if let Some(reply) = self.codec.heartbeat_reply(&message) {
                    if self.heartbeat_replies.len() + reply.len() <= MAX_QUEUED_HEARTBEAT_REPLIES {
                        self.heartbeat_replies.extend_from_slice(&reply);
                    }
                }
                stats::bump(
                    sink,
                    stats::HEARTBEATS,
                    &[("protocol", protocol), ("role", "back")],
                );
                continue;
            }
            while self.awaiting.front() == Some(&Awaiting::Nothing) {
                self.awaiting.pop_front();
            }
            if self.is_stray(&message) {
                // The server answered a one-way call itself; nobody is waiting for that.
                stats::bump(
                    sink,
                    stats::UNEXPECTED,
                    &[("protocol", protocol), ("role", "back")],
                );
                continue;
            }
            match self.awaiting.pop_front() {
                Some(Awaiting::ProbeAnswer(id)) if id == message.request_id => {
                    if self.acknowledged_oneways.len() == ONEWAY_MEMORY {
                        self.acknowledged_oneways.pop_front();
                    }
                    self.acknowledged_oneways.push_back(id);
                    http1::write_response(&mut out, [(RESPONSE_HEADER, bridge::ONEWAY_ACK)], &[]);
                }
                Some(Awaiting::Response(_)) => {
                    let rid = message.request_id.to_string();
                    let md = bridge::metadata_headers(&message.metadata);
                    let headers = [
                        (RESPONSE_HEADER, message.kind.as_str()),
                        (RID_HEADER, rid.as_str()),
                    ]
                    .into_iter()
                    .chain(md.iter().map(|(k, v)| (k.as_str(), *v)));
                    http1::write_response(&mut out, headers, &self.response_partial[frame]);
                }
                other => {
                    break Err(Fatal(format!(
                        "server sent {} {} while the bridge awaited {other:?}",
                        message.kind.as_str(),
                        message.request_id
                    )));
                }
            }
        };
        self.response_partial.drain(..offset);
        result.map(|()| out)
    }

    /// A server's own answer to a one-way call: it carries the call's id and is neither the
    /// probe's answer (before the probe is answered) nor the awaited response (after).
    /// A late answer whose id equals the awaited request's id cannot be told apart and is
    /// taken as the response; ids differ on a connection unless the client reuses them.
    fn is_stray(&self, message: &Message) -> bool {
        let id = message.request_id;
        match self.awaiting.front() {
            Some(Awaiting::ProbeAnswer(probe)) if *probe == id => {
                !self.codec.is_probe_answer(message)
            }
            Some(Awaiting::ProbeAnswer(_)) | None => self.acknowledged_oneways.contains(&id),
            Some(Awaiting::Response(Some(awaited))) => {
                *awaited != id && self.acknowledged_oneways.contains(&id)
            }
            Some(Awaiting::Response(None)) | Some(Awaiting::Nothing) => false,
        }
    }
}
