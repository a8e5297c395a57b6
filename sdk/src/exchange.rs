//! The native back's transcoder: one request from Envoy's router → one protocol exchange on a
//! pooled server connection (Envoy's upstream HTTP→TCP bridge, `envoy.upstreams.http.dynamic_modules`).
//!
//! Pure state machine, one per upstream request attempt. Envoy gives the bridge the request's
//! headers and body, lends it a pooled TCP connection exclusively for the request, and takes
//! one HTTP response back. Unlike the wasm back ([`crate::back`]), which sits on an internal
//! listener and sees HTTP/1.1 bytes, this one is driven by decoded headers and body chunks, and
//! it can answer the router itself: a one-way call is acknowledged by the bridge, once the
//! server has answered the codec's delivery probe written after it (so the server has read the
//! call before any later call is sent, possibly on another pooled connection), or right after
//! writing it when the codec has no probe. The rules are the same: the request's mutation is written
//! into the frame here, every server frame is checked against the awaited request id, server
//! heartbeats are answered, and a stray answer never reaches the caller.

use std::rc::Rc;

use crate::back::{answers, count_refusal, write_mutated};
use crate::bridge::{self, KIND_HEADER, RESPONSE_HEADER, RID_HEADER};
use crate::config::FilterConfig;
use crate::stats::{self, Sink};
use crate::vm::{HeldBytes, OverLimit, VmShared};
use crate::{Codec, MessageKind, Metadata};

/// The HTTP response the bridge gives the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A response the bridge makes up itself (no server frame): `status` and why.
    fn local(status: u32, why: &str) -> Self {
        Self {
            status,
            headers: vec![("x-meltemi-bridge-error".into(), why.into())],
            body: Vec::new(),
        }
    }
}

/// What the glue does after a callback.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Pass the callback's own input chunks to the server as they are (a large request body
    /// passing through, nothing copied into the module).
    pub forward_input: bool,
    /// Bytes to write to the server (after the input chunks, when those are forwarded too).
    pub to_server: Vec<u8>,
    /// Half-close the server connection after writing: nothing on it can be trusted any more,
    /// so Envoy's pool must not hand it to another request.
    pub close_server: bool,
    /// The router's answer; the exchange is over once it is given.
    pub response: Option<Response>,
}

impl Step {
    fn respond(response: Response) -> Self {
        Self {
            response: Some(response),
            ..Self::default()
        }
    }
}

/// What the request headers said.
#[derive(Debug)]
struct Head {
    kind: MessageKind,
    id: Option<u64>,
    method: Option<String>,
    mutation: Metadata,
}

/// Adds to `mutation` the value of every header in `names` the router's request carries (the
/// trace context its tracer injected): the codec writes them into the frame like the route's
/// own mutation. A value that is not a valid header value never arrives here (HTTP parsing).
pub(crate) fn propagate(
    mutation: &mut Metadata,
    names: &[String],
    header: impl Fn(&str) -> Option<String>,
) {
    for name in names {
        if let Some(value) = header(name) {
            mutation.set(name, value);
        }
    }
}

/// One upstream request attempt.
pub struct Exchange<C: Codec> {
    /// Decodes the server's stream.
    codec: C,
    /// Decodes and rewrites the request frame (mutation).
    frame_codec: C,
    config: Rc<FilterConfig<C::Config>>,
    shared: Rc<VmShared>,
    head: Option<Head>,
    /// The request frame, held only when it must be whole (a mutation to apply).
    request: HeldBytes,
    /// Server bytes not yet forming a complete frame.
    response: HeldBytes,
    /// Set once the request went to the server: server bytes before that are strays.
    written: bool,
    /// A stray answer was dropped: the connection is closed once this request is answered.
    tainted: bool,
    /// A one-way call was written with a delivery probe behind it: the probe's answer (this
    /// request id) acknowledges the call.
    probe: Option<u64>,
    /// A one-way call was written and the connection half-closed behind it (a codec without a
    /// probe): the server's close acknowledges the call.
    close_ack: bool,
    done: bool,
}

impl<C: Codec> Exchange<C> {
    pub fn new(config: Rc<FilterConfig<C::Config>>, shared: Rc<VmShared>) -> Self {
        Self {
            codec: C::new(&config.codec),
            frame_codec: C::new(&config.codec),
            request: HeldBytes::new(Rc::clone(&shared)),
            response: HeldBytes::new(Rc::clone(&shared)),
            config,
            shared,
            head: None,
            written: false,
            tainted: false,
            probe: None,
            close_ack: false,
            done: false,
        }
    }

    /// True once the router got its answer.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn finish(&mut self, step: Step) -> Step {
        if step.response.is_some() {
            self.done = true;
            self.request.clear();
            self.response.clear();
        }
        step
    }

    fn limit(&self) -> usize {
        self.config.limits.max_frame_bytes
    }

    /// The request headers; `header(name)` returns every value of `name`.
    pub fn on_headers(&mut self, header: &dyn Fn(&str) -> Vec<String>, end_stream: bool) -> Step {
        let first = |name: &str| header(name).into_iter().next();
        let Some(kind) = first(KIND_HEADER).as_deref().and_then(MessageKind::parse) else {
            return self.finish(Step::respond(Response::local(
                400,
                "request did not come from a meltemi front",
            )));
        };
        let mutation_values = header(bridge::MUTATION_HEADER);
        let mut mutation =
            bridge::mutation_from_headers(mutation_values.iter().map(String::as_str));
        propagate(&mut mutation, &self.config.propagate_headers, |name| {
            first(name)
        });
        self.head = Some(Head {
            kind,
            id: first(RID_HEADER).and_then(|v| v.parse().ok()),
            method: first("method"),
            mutation,
        });
        if end_stream {
            return self.finish(Step::respond(Response::local(400, "empty request body")));
        }
        Step::default()
    }

    /// Request body chunks of one callback.
    pub fn on_body(&mut self, chunks: &[&[u8]], end_stream: bool, sink: &mut dyn Sink) -> Step {
        if self.done {
            return Step::default();
        }
        let Some(head) = &self.head else {
            return self.finish(Step::respond(Response::local(400, "body before headers")));
        };
        let oneway = head.kind == MessageKind::OneWay;
        if head.mutation.is_empty() && !oneway {
            // Nothing needs the whole frame: pass it through as it arrives.
            let step = Step {
                forward_input: true,
                ..Step::default()
            };
            if end_stream {
                self.written = true;
            }
            return self.finish(step);
        }
        let limit = self.limit();
        for chunk in chunks {
            if let Err(over) = self.request.try_extend(chunk, limit) {
                let why = self.refused(over, sink);
                return self.finish(Step::respond(Response::local(503, &why)));
            }
        }
        if !end_stream {
            return Step::default();
        }
        let mut step = Step::default();
        self.mutate(&mut step.to_server, sink);
        if oneway {
            let probe = match self.frame_codec.decode(self.request.as_slice()) {
                Ok(Some(m)) => self
                    .frame_codec
                    .delivery_probe(&m)
                    .map(|p| (p, m.request_id)),
                _ => None,
            };
            match probe {
                Some((bytes, id)) => {
                    step.to_server.extend_from_slice(&bytes);
                    self.probe = Some(id);
                }
                // Without a probe the connection is half-closed behind the call: the server reads
                // the call, then the end of stream, and closes; that close acknowledges the call
                // (see `Exchange::on_server_closed`). Acknowledging at once would let a later
                // call on another pooled connection reach the server first.
                None => {
                    step.close_server = true;
                    self.close_ack = true;
                }
            }
        }
        self.request.clear();
        self.written = true;
        self.finish(step)
    }

    /// Writes the held request frame with the route's mutation applied into `out`.
    fn mutate(&mut self, out: &mut Vec<u8>, sink: &mut dyn Sink) {
        let protocol = C::PROTOCOL;
        let frame = self.request.as_slice();
        let Some(head) = &self.head else {
            out.extend_from_slice(frame);
            return;
        };
        match self.frame_codec.decode(frame) {
            Ok(Some(m)) if m.len == frame.len() => {
                write_mutated(&mut self.frame_codec, frame, &m, &head.mutation, out, sink)
            }
            _ => {
                // Not exactly one frame: the front made it, so pass it on untouched.
                stats::bump(
                    sink,
                    stats::DECODE_ERRORS,
                    &[("protocol", protocol), ("role", "back")],
                );
                out.extend_from_slice(frame);
            }
        }
    }

    fn refused(&self, over: OverLimit, sink: &mut dyn Sink) -> String {
        count_refusal::<C>(over, sink);
        format!(
            "back buffer over its limit ({}; budget {})",
            over.reason(),
            self.shared.budget.limit()
        )
    }

    /// The server closed the connection. Envoy then resets the request (the router answers
    /// 503, which the front counts as a delivered one-way call) unless the bridge answers first:
    /// a one-way call acknowledged by the close is answered here.
    pub fn on_server_closed(&mut self) -> Step {
        if self.done || !self.close_ack {
            return Step::default();
        }
        self.finish(Step::respond(oneway_ack()))
    }

    /// Server bytes of one read.
    pub fn on_server_data(&mut self, chunks: &[&[u8]], sink: &mut dyn Sink) -> Step {
        if self.done {
            // Bytes after the answer: this connection carries something nobody awaits.
            return Step {
                close_server: true,
                ..Step::default()
            };
        }
        let limit = self.limit().saturating_add(1 << 16);
        for chunk in chunks {
            if let Err(over) = self.response.try_extend(chunk, limit) {
                let why = self.refused(over, sink);
                let mut step = Step::respond(Response::local(503, &why));
                step.close_server = true;
                return self.finish(step);
            }
        }
        let mut step = Step::default();
        let protocol = C::PROTOCOL;
        let mut offset = 0usize;
        loop {
            let rest = self.response.as_slice().get(offset..).unwrap_or(&[]);
            if rest.is_empty() {
                break;
            }
            let max = self.limit();
            let message = match self.codec.decode(rest) {
                Ok(Some(m)) if m.len > 0 && m.len <= rest.len() && m.len <= max => m,
                Ok(Some(m)) if m.len > max => {
                    stats::bump(
                        sink,
                        stats::REFUSED,
                        &[
                            ("protocol", protocol),
                            ("reason", "frame_too_large"),
                            ("role", "back"),
                        ],
                    );
                    step.close_server = true;
                    step.response = Some(Response::local(502, "server frame too large"));
                    break;
                }
                Ok(None) if rest.len() <= max => break,
                Ok(_) | Err(_) => {
                    stats::bump(
                        sink,
                        stats::DECODE_ERRORS,
                        &[("protocol", protocol), ("role", "back")],
                    );
                    step.close_server = true;
                    step.response = Some(Response::local(502, "server sent a corrupt stream"));
                    break;
                }
            };
            let frame = rest.get(..message.len).unwrap_or(&[]);
            offset = offset.saturating_add(message.len);
            if message.kind == MessageKind::Heartbeat {
                // A provider's keep-alive: answered on the spot, the router never sees it.
                if let Some(reply) = self.codec.heartbeat_reply(&message) {
                    step.to_server.extend_from_slice(&reply);
                }
                stats::bump(
                    sink,
                    stats::HEARTBEATS,
                    &[("protocol", protocol), ("role", "back")],
                );
                continue;
            }
            if self
                .probe
                .is_some_and(|id| id == message.request_id && self.codec.is_probe_answer(&message))
            {
                // The server read the one-way call: acknowledged.
                step.response = Some(oneway_ack());
                step.close_server |= self.tainted;
                break;
            }
            let awaited = self.head.as_ref().filter(|h| {
                self.written && h.kind != MessageKind::OneWay && answers(&message, h.id, &h.method)
            });
            if awaited.is_none() {
                // A duplicate, a late answer to an earlier request of this pooled connection
                // (a one-way call some providers answer anyway) or another request's answer:
                // never relayed. The request in progress keeps waiting for its own answer,
                // and the connection is closed after it, so no later request sees its bytes.
                stats::bump(
                    sink,
                    stats::STRAY_ANSWERS,
                    &[("protocol", protocol), ("role", "back")],
                );
                self.tainted = true;
                continue;
            }
            let md = bridge::metadata_headers(&message.metadata);
            let mut headers = Vec::with_capacity(md.len().saturating_add(3));
            headers.push((RESPONSE_HEADER.to_owned(), message.kind.as_str().to_owned()));
            headers.push((RID_HEADER.to_owned(), message.request_id.to_string()));
            headers.extend(md.into_iter().map(|(k, v)| (k, v.to_owned())));
            // Envoy adds none, and the front reads HTTP/1.1.
            headers.push(("content-length".to_owned(), frame.len().to_string()));
            step.response = Some(Response {
                status: 200,
                headers,
                body: frame.to_vec(),
            });
            step.close_server |= self.tainted;
            if offset < self.response.len() {
                // Bytes after the answer within the same read: nobody awaits them.
                stats::bump(
                    sink,
                    stats::STRAY_ANSWERS,
                    &[("protocol", protocol), ("role", "back")],
                );
                step.close_server = true;
            }
            break;
        }
        self.response.consume(offset);
        self.finish(step)
    }
}

fn oneway_ack() -> Response {
    Response {
        status: 200,
        headers: vec![
            (RESPONSE_HEADER.to_owned(), bridge::ONEWAY_ACK.to_owned()),
            ("content-length".to_owned(), "0".to_owned()),
        ],
        body: Vec::new(),
    }
}
