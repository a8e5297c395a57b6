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
use crate::vm::{HeldBytes, OverLimit, VmShared};
use crate::{http1, Codec, CodecErrorKind, Message, MessageKind, Metadata};

/// What the server owes us next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Awaiting {
    /// The response to a forwarded request: its request id (when the front sent it) and its
    /// method (when the frame names it; only a response that names a method is checked).
    Response {
        id: Option<u64>,
        method: Option<String>,
    },
    /// The server's answer to the delivery probe sent after a one-way call with this id.
    ProbeAnswer(u64),
}

/// Back-side state of one internal connection.
pub struct Back<C: Codec> {
    /// Decodes the server's stream.
    codec: C,
    /// Decodes, mutates and probes the whole frames arriving in HTTP bodies, so that `codec`'s
    /// view of the stream is never interrupted (see [`Codec::decode`]).
    frame_codec: C,
    config: Rc<FilterConfig<C::Config>>,
    shared: Rc<VmShared>,
    /// Router bytes not yet forming a complete HTTP request.
    request_partial: HeldBytes,
    /// Server bytes not yet forming a complete frame.
    response_partial: HeldBytes,
    awaiting: VecDeque<Awaiting>,
    /// Request ids of the last one-way calls whose probe was answered. Some servers answer a
    /// one-way call anyway, after the probe; such a late answer carries one of these ids.
    acknowledged_oneways: VecDeque<u64>,
    /// Replies to heartbeats the server sent. The back can only write toward the server while
    /// forwarding a request, so they go out in front of the next one.
    heartbeat_replies: Vec<u8>,
    /// A one-way call was forwarded to a server that cannot be probed: the glue closes this
    /// connection once tcp_proxy has passed the call on (Envoy's router then sees the end of
    /// the call; a reset before the next request was written is retried by the route).
    close_after_forward: bool,
    /// Body bytes of the current request still to pass through to the server as they arrive
    /// (large requests are not held whole, see [`STREAM_MIN`]).
    passing: usize,
}

/// Bodies larger than this pass through as they arrive when nothing needs the whole frame (no
/// mutation, not a one-way call), so a large call never holds its whole request in the VM.
pub const STREAM_MIN: usize = 64 << 10;

/// Most bytes of queued heartbeat replies; an idle connection gets no more than this many.
const MAX_QUEUED_HEARTBEAT_REPLIES: usize = 4096;

/// How many acknowledged one-way ids are remembered for recognising late answers.
const ONEWAY_MEMORY: usize = 32;

impl<C: Codec> Back<C> {
    /// State for a new internal connection, with no VM-wide limits (tests, tools).
    pub fn new(config: Rc<FilterConfig<C::Config>>) -> Self {
        Self::with_shared(config, VmShared::unbounded())
    }

    /// State for a new internal connection sharing `shared` with the VM's other connections.
    pub fn with_shared(config: Rc<FilterConfig<C::Config>>, shared: Rc<VmShared>) -> Self {
        Self {
            codec: C::new(&config.codec),
            frame_codec: C::new(&config.codec),
            config,
            request_partial: HeldBytes::new(Rc::clone(&shared)),
            response_partial: HeldBytes::new(Rc::clone(&shared)),
            shared,
            awaiting: VecDeque::new(),
            acknowledged_oneways: VecDeque::new(),
            heartbeat_replies: Vec::new(),
            close_after_forward: false,
            passing: 0,
        }
    }

    /// True once a one-way call was forwarded without a delivery probe: the connection must be
    /// closed as soon as the call has reached tcp_proxy (see [`Codec::delivery_probe`]).
    pub fn close_after_forward(&self) -> bool {
        self.close_after_forward
    }

    /// Most bytes one buffer of this connection may hold: a whole frame plus an HTTP head.
    fn buffer_limit(&self) -> usize {
        self.config.limits.max_frame_bytes.saturating_add(1 << 16)
    }

    fn refuse_buffer(&self, over: OverLimit, sink: &mut dyn Sink) -> Fatal {
        count_refusal::<C>(over, sink);
        Fatal(format!(
            "back buffer over its limit ({}; VM budget {})",
            over.reason(),
            self.shared.budget.limit()
        ))
    }

    /// Bytes from the router. Returns the protocol bytes to send to the server in their place.
    pub fn on_router_data(&mut self, data: &[u8], sink: &mut dyn Sink) -> Result<Vec<u8>, Fatal> {
        let mut partial = std::mem::replace(
            &mut self.request_partial,
            HeldBytes::new(Rc::clone(&self.shared)),
        );
        let held = !partial.is_empty();
        if held {
            if let Err(over) = partial.try_extend(data, self.buffer_limit()) {
                return Err(self.refuse_buffer(over, sink));
            }
        }
        let src: &[u8] = if held { partial.as_slice() } else { data };
        // Replies to server heartbeats go out between frames, never inside a passing body.
        let mut out = if self.passing == 0 {
            std::mem::take(&mut self.heartbeat_replies)
        } else {
            Vec::new()
        };
        let mut offset = 0usize;
        let result = loop {
            let max_body = self.config.limits.max_frame_bytes;
            let rest = src.get(offset..).unwrap_or(&[]);
            if self.passing > 0 {
                offset = offset.saturating_add(http1::pass_body(&mut self.passing, rest, &mut out));
                if self.passing > 0 {
                    break Ok(());
                }
                continue;
            }
            if rest.is_empty() {
                break Ok(());
            }
            if let Some(head) = self.streamable_head(rest) {
                self.awaiting.push_back(Awaiting::Response {
                    id: head.header(RID_HEADER).and_then(|v| v.parse().ok()),
                    method: head.header("method").map(str::to_owned),
                });
                offset = offset.saturating_add(head.len);
                self.passing = head.body_len.unwrap_or(0);
                continue;
            }
            let parsed = match http1::parse_request(rest, max_body) {
                Ok(Some(p)) => p,
                Ok(None) => break Ok(()),
                Err(e) => {
                    if matches!(e, http1::HttpError::TooLarge(_)) {
                        stats::bump(
                            sink,
                            stats::REFUSED,
                            &[
                                ("protocol", C::PROTOCOL),
                                ("reason", "frame_too_large"),
                                ("role", "back"),
                            ],
                        );
                    }
                    break Err(Fatal(format!("unreadable request from the router: {e}")));
                }
            };
            offset = offset.saturating_add(parsed.len);
            if let Err(e) = self.forward(&parsed, &mut out, sink) {
                break Err(e);
            }
        };
        if held {
            partial.consume(offset);
        } else if let Err(over) =
            partial.try_extend(data.get(offset..).unwrap_or(&[]), self.buffer_limit())
        {
            return Err(self.refuse_buffer(over, sink));
        }
        self.request_partial = partial;
        result.map(|()| out)
    }

    /// The head of a large, incomplete request whose body can pass through unchanged: a
    /// two-way call without mutation, within the frame limit.
    fn streamable_head(&self, rest: &[u8]) -> Option<http1::Head> {
        let head = http1::request_head(rest).ok()??;
        let body = head.body_len?;
        let complete = rest.len() >= head.len.saturating_add(body);
        let plain = head.header(KIND_HEADER) == Some(MessageKind::Request.as_str())
            && head.header(bridge::MUTATION_HEADER).is_none()
            && self
                .config
                .propagate_headers
                .iter()
                .all(|h| head.header(h).is_none());
        (body > STREAM_MIN && body <= self.config.limits.max_frame_bytes && !complete && plain)
            .then_some(head)
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
        let mut mutation =
            bridge::mutation_from_headers(parsed.header_all(bridge::MUTATION_HEADER));
        crate::exchange::propagate(&mut mutation, &self.config.propagate_headers, |name| {
            parsed.header(name).map(str::to_owned)
        });
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
                write_mutated(&mut self.frame_codec, frame, m, &mutation, out, sink)
            }
            _ => out.extend_from_slice(frame),
        }
        match (kind, &message) {
            (MessageKind::OneWay, Some(m)) => match self.frame_codec.delivery_probe(m) {
                Some(probe) => {
                    out.extend_from_slice(&probe);
                    self.awaiting.push_back(Awaiting::ProbeAnswer(m.request_id));
                }
                None => self.close_after_forward = true,
            },
            _ => self.awaiting.push_back(Awaiting::Response {
                id: parsed.header(RID_HEADER).and_then(|v| v.parse().ok()),
                method: parsed.header("method").map(str::to_owned),
            }),
        }
        Ok(())
    }

    /// Bytes from the server. Returns the HTTP bytes for the router in their place.
    pub fn on_server_data(&mut self, data: &[u8], sink: &mut dyn Sink) -> Result<Vec<u8>, Fatal> {
        let mut partial = std::mem::replace(
            &mut self.response_partial,
            HeldBytes::new(Rc::clone(&self.shared)),
        );
        let held = !partial.is_empty();
        if held {
            if let Err(over) = partial.try_extend(data, self.buffer_limit()) {
                return Err(self.refuse_buffer(over, sink));
            }
        }
        let src: &[u8] = if held { partial.as_slice() } else { data };
        let mut out = Vec::new();
        let mut offset = 0usize;
        let result = self.relay_frames(src, &mut offset, &mut out, sink);
        if held {
            partial.consume(offset);
        } else if result.is_ok() {
            if let Err(over) =
                partial.try_extend(data.get(offset..).unwrap_or(&[]), self.buffer_limit())
            {
                return Err(self.refuse_buffer(over, sink));
            }
        }
        self.response_partial = partial;
        result.map(|()| out)
    }

    /// Turns the whole server frames at the start of `src` into HTTP responses.
    fn relay_frames(
        &mut self,
        src: &[u8],
        offset: &mut usize,
        out: &mut Vec<u8>,
        sink: &mut dyn Sink,
    ) -> Result<(), Fatal> {
        let protocol = C::PROTOCOL;
        loop {
            let rest = src.get(*offset..).unwrap_or(&[]);
            if rest.is_empty() {
                return Ok(());
            }
            let max = self.config.limits.max_frame_bytes;
            let message = match self.codec.decode(rest) {
                Ok(Some(m)) if m.len > max && m.len <= rest.len() => {
                    return Err(self.refuse_server_frame(sink));
                }
                Ok(Some(m)) if m.len > 0 && m.len <= rest.len() => m,
                Ok(Some(m)) => {
                    return Err(Fatal(format!(
                        "{protocol} codec returned an impossible frame length {}",
                        m.len
                    )))
                }
                Ok(None) => {
                    if rest.len() > max {
                        return Err(self.refuse_server_frame(sink));
                    }
                    return Ok(());
                }
                Err(e) => {
                    stats::bump(
                        sink,
                        stats::DECODE_ERRORS,
                        &[("protocol", protocol), ("role", "back")],
                    );
                    return Err(Fatal(format!(
                        "server sent a corrupt {protocol} stream: {e}"
                    )));
                }
            };
            let frame = rest.get(..message.len).unwrap_or(&[]);
            *offset = offset.saturating_add(message.len);
            if message.kind == MessageKind::Heartbeat {
                // A server-initiated keep-alive: the router has no use for it; the server gets
                // its answer with the next request forwarded on this connection.
                if let Some(reply) = self.codec.heartbeat_reply(&message) {
                    if self.heartbeat_replies.len().saturating_add(reply.len())
                        <= MAX_QUEUED_HEARTBEAT_REPLIES
                    {
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
            if self.is_late_oneway_answer(&message) {
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
                    http1::write_response(out, [(RESPONSE_HEADER, bridge::ONEWAY_ACK)], &[]);
                }
                Some(Awaiting::Response { id, method }) if answers(&message, id, &method) => {
                    let rid = message.request_id.to_string();
                    let md = bridge::metadata_headers(&message.metadata);
                    let headers = [
                        (RESPONSE_HEADER, message.kind.as_str()),
                        (RID_HEADER, rid.as_str()),
                    ]
                    .into_iter()
                    .chain(md.iter().map(|(k, v)| (k.as_str(), *v)));
                    http1::write_response(out, headers, frame);
                }
                other => {
                    // A duplicate, a late answer or another request's answer: relaying it
                    // would hand it to whichever caller is waiting now. Nothing on this
                    // connection can be trusted any more; closing it fails only the request
                    // in progress, which Envoy sees as a reset.
                    stats::bump(
                        sink,
                        stats::STRAY_ANSWERS,
                        &[("protocol", protocol), ("role", "back")],
                    );
                    return Err(Fatal(format!(
                        "server sent {} {} while the bridge awaited {}",
                        message.kind.as_str(),
                        message.request_id,
                        match other {
                            None => "nothing".to_owned(),
                            Some(a) => format!("{a:?}"),
                        }
                    )));
                }
            }
        }
    }

    fn refuse_server_frame(&self, sink: &mut dyn Sink) -> Fatal {
        stats::bump(
            sink,
            stats::REFUSED,
            &[
                ("protocol", C::PROTOCOL),
                ("reason", "frame_too_large"),
                ("role", "back"),
            ],
        );
        Fatal("server frame larger than limits.max_frame_bytes".into())
    }

    /// A server's own answer to a one-way call: it carries the call's id and is neither the
    /// probe's answer (before the probe is answered) nor the awaited response (after).
    fn is_late_oneway_answer(&self, message: &Message) -> bool {
        let id = message.request_id;
        match self.awaiting.front() {
            Some(Awaiting::ProbeAnswer(probe)) if *probe == id => {
                !self.codec.is_probe_answer(message)
            }
            Some(Awaiting::ProbeAnswer(_)) | None => self.acknowledged_oneways.contains(&id),
            Some(Awaiting::Response {
                id: Some(awaited), ..
            }) => *awaited != id && self.acknowledged_oneways.contains(&id),
            Some(Awaiting::Response { id: None, .. }) => false,
        }
    }
}

/// Counts a back buffer refused at a limit.
pub(crate) fn count_refusal<C: Codec>(over: OverLimit, sink: &mut dyn Sink) {
    stats::bump(
        sink,
        stats::REFUSED,
        &[
            ("protocol", C::PROTOCOL),
            ("reason", over.reason()),
            ("role", "back"),
        ],
    );
}

/// Writes `frame` (whose decoded form is `message`) into `out` with `mutation` applied; when
/// the codec cannot apply it the frame goes unchanged and the failure is counted.
pub(crate) fn write_mutated<C: Codec>(
    frame_codec: &mut C,
    frame: &[u8],
    message: &Message,
    mutation: &Metadata,
    out: &mut Vec<u8>,
    sink: &mut dyn Sink,
) {
    let start = out.len();
    if let Err(e) = frame_codec.encode(frame, message, mutation, out) {
        out.truncate(start);
        let protocol = C::PROTOCOL;
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

/// Whether `message` can be the answer to the awaited request: same request id (when the
/// front sent one) and, when both name a method, the same method. Clients that give every call
/// the same id (Apache Thrift's Python client uses 0) are still checked by method.
pub(crate) fn answers(message: &Message, id: Option<u64>, method: &Option<String>) -> bool {
    if id.is_some_and(|id| id != message.request_id) {
        return false;
    }
    match (method, message.metadata.get("method")) {
        (Some(asked), Some(answered)) => asked == answered,
        _ => true,
    }
}
