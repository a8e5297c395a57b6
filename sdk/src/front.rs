//! The front transcoder: client protocol bytes → HTTP/1.1 requests for Envoy's HTTP connection
//! manager (HCM), and HCM's HTTP responses → protocol frames for the client.
//!
//! Pure state machine, one per client connection; the wasm glue feeds it Envoy's buffers.
//! Two Envoy behaviours shape it:
//! - HCM consumes one HTTP/1.1 request at a time and leaves the rest in the connection's read
//!   buffer, which Envoy shows to this filter again with the next bytes. Every request we emit
//!   starts with a sequence header, so the unconsumed prefix is recognised and kept as it is.
//! - A network filter can only write to the client when HCM writes. Requests the bridge answers
//!   itself (heartbeats, refusals) therefore still go to HCM as tiny requests to
//!   [`bridge::LOCAL_AUTHORITY`]; whatever HCM answers is replaced by the codec's reply.

use std::collections::VecDeque;
use std::rc::Rc;

use crate::bridge::{self, KIND_HEADER, RESPONSE_HEADER, RID_HEADER};
use crate::config::{FilterConfig, Limits};
use crate::stats::{self, Sink};
use crate::{http1, Codec, CodecErrorKind, ErrorKind, Message, MessageKind};

/// Why a connection must be closed. The glue closes it and logs the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal(pub String);

/// What the bridge answers itself for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalAnswer {
    Heartbeat,
    Error(ErrorKind),
}

/// A request handed to HCM and not answered yet.
#[derive(Debug)]
struct InFlight {
    seq: u64,
    message: Message,
    local: Option<LocalAnswer>,
    service: String,
    method: String,
    started_ns: u64,
}

/// An HTTP request written into the read buffer: its sequence number and length.
#[derive(Debug, Clone, Copy)]
struct Handed {
    seq: u64,
    len: usize,
}

/// Front-side state of one client connection.
pub struct Front<C: Codec> {
    /// Decodes the client's stream and builds replies to its requests.
    codec: C,
    /// Decodes whole frames from HTTP bodies (response mutation), so that `codec`'s view of
    /// the stream is never interrupted (see [`Codec::decode`]).
    frame_codec: C,
    config: Rc<FilterConfig<C::Config>>,
    /// Client bytes not yet forming a complete frame.
    partial: Vec<u8>,
    /// Requests written into Envoy's read buffer that HCM may not have consumed yet.
    handed: VecDeque<Handed>,
    in_flight: VecDeque<InFlight>,
    /// HCM bytes not yet forming a complete HTTP response.
    response_partial: Vec<u8>,
    next_seq: u64,
    /// Secret of this connection in every request's sequence header (see [`http1::write_request`]).
    token: u64,
}

impl<C: Codec> Front<C> {
    /// State for a new client connection.
    pub fn new(config: Rc<FilterConfig<C::Config>>) -> Self {
        Self {
            codec: C::new(&config.codec),
            frame_codec: C::new(&config.codec),
            config,
            partial: Vec::new(),
            handed: VecDeque::new(),
            in_flight: VecDeque::new(),
            response_partial: Vec::new(),
            next_seq: 1,
            token: connection_token(),
        }
    }

    fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// Requests awaiting an answer.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Envoy's whole read buffer for this connection. Returns its new content, or `None` to
    /// leave it unchanged. Complete frames become HTTP requests; partial ones stay here.
    pub fn on_client_data(
        &mut self,
        buffer: &[u8],
        now_ns: u64,
        sink: &mut dyn Sink,
    ) -> Result<Option<Vec<u8>>, Fatal> {
        let kept = self.unconsumed_prefix(buffer)?;
        if kept == buffer.len() {
            return Ok(None);
        }
        self.partial.extend_from_slice(&buffer[kept..]);
        let mut out = Vec::with_capacity(kept + self.partial.len() + 256);
        out.extend_from_slice(&buffer[..kept]);
        let mut offset = 0;
        let result = self.decode_requests(&mut offset, &mut out, now_ns, sink);
        self.partial.drain(..offset);
        result.map(|()| Some(out))
    }

    /// Length of the prefix of `buffer` that is our own HTTP, written earlier and not consumed.
    fn unconsumed_prefix(&mut self, buffer: &[u8]) -> Result<usize, Fatal> {
        if self.handed.is_empty() {
            return Ok(0);
        }
        match http1::leading_seq(buffer, self.token) {
            Some(seq) if self.handed.iter().any(|h| h.seq == seq) => {
                while self.handed.front().is_some_and(|h| h.seq != seq) {
                    self.handed.pop_front();
                }
                let kept: usize = self.handed.iter().map(|h| h.len).sum();
                if kept > buffer.len() {
                    return Err(Fatal("read buffer lost part of a bridged request".into()));
                }
                Ok(kept)
            }
            _ => {
                self.handed.clear();
                Ok(0)
            }
        }
    }

    fn decode_requests(
        &mut self,
        offset: &mut usize,
        out: &mut Vec<u8>,
        now_ns: u64,
        sink: &mut dyn Sink,
    ) -> Result<(), Fatal> {
        let protocol = C::PROTOCOL;
        loop {
            let rest = &self.partial[*offset..];
            if rest.is_empty() {
                return Ok(());
            }
            let message = match self.codec.decode(rest) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    if rest.len() > self.limits().max_frame_bytes {
                        return Err(self.refuse_frame(sink));
                    }
                    return Ok(());
                }
                Err(e) => {
                    stats::bump(
                        sink,
                        stats::DECODE_ERRORS,
                        &[("protocol", protocol), ("role", "front")],
                    );
                    return Err(Fatal(format!(
                        "client sent a corrupt {protocol} stream: {e}"
                    )));
                }
            };
            if message.len == 0 || message.len > rest.len() {
                return Err(Fatal(format!(
                    "{protocol} codec returned an impossible frame length {}",
                    message.len
                )));
            }
            if message.len > self.limits().max_frame_bytes {
                return Err(self.refuse_frame(sink));
            }
            let frame_range = *offset..*offset + message.len;
            *offset += message.len;
            if !message.kind.is_request() {
                // A client answering a server-initiated message: nothing in the bridge expects it.
                stats::bump(
                    sink,
                    stats::UNEXPECTED,
                    &[("protocol", protocol), ("role", "front")],
                );
                continue;
            }
            let local = self.local_answer(&message, sink);
            let service = match &self.config.service {
                Some(s) => s.clone(),
                None => message
                    .metadata
                    .get("service")
                    .unwrap_or("unknown")
                    .to_owned(),
            };
            let method = message
                .metadata
                .get("method")
                .unwrap_or("unknown")
                .to_owned();
            let seq = self.next_seq;
            self.next_seq += 1;
            let start = out.len();
            match local {
                Some(answer) => {
                    let kind = match answer {
                        LocalAnswer::Heartbeat => "heartbeat",
                        LocalAnswer::Error(_) => "refused",
                    };
                    http1::write_request(
                        out,
                        self.token,
                        seq,
                        bridge::LOCAL_AUTHORITY,
                        bridge::LOCAL_PATH,
                        [(KIND_HEADER, kind)],
                        &[],
                    );
                }
                None => {
                    let mut path = String::with_capacity(service.len() + method.len() + 2);
                    path.push('/');
                    http1::encode_path_segment(&mut path, &service);
                    path.push('/');
                    http1::encode_path_segment(&mut path, &method);
                    let rid = message.request_id.to_string();
                    let md = bridge::metadata_headers(&message.metadata);
                    let headers = [
                        (KIND_HEADER, message.kind.as_str()),
                        (RID_HEADER, rid.as_str()),
                    ]
                    .into_iter()
                    .chain(md.iter().map(|(k, v)| (k.as_str(), *v)));
                    let authority = if http1::is_header_value(&service) {
                        service.as_str()
                    } else {
                        "unknown"
                    };
                    http1::write_request(
                        out,
                        self.token,
                        seq,
                        authority,
                        &path,
                        headers,
                        &self.partial[frame_range],
                    );
                    let labels = [
                        ("protocol", protocol),
                        ("service", service.as_str()),
                        ("method", method.as_str()),
                    ];
                    stats::bump(sink, stats::REQUESTS, &labels);
                    sink.gauge(&stats::name(stats::ACTIVE, &[("protocol", protocol)]), 1);
                }
            }
            self.handed.push_back(Handed {
                seq,
                len: out.len() - start,
            });
            self.in_flight.push_back(InFlight {
                seq,
                message,
                local,
                service,
                method,
                started_ns: now_ns,
            });
        }
    }

    fn refuse_frame(&self, sink: &mut dyn Sink) -> Fatal {
        stats::bump(
            sink,
            stats::REFUSED,
            &[("protocol", C::PROTOCOL), ("reason", "frame_too_large")],
        );
        Fatal(format!(
            "frame larger than limits.max_frame_bytes ({})",
            self.limits().max_frame_bytes
        ))
    }

    /// Whether the bridge answers this request itself, and with what.
    fn local_answer(&self, message: &Message, sink: &mut dyn Sink) -> Option<LocalAnswer> {
        let refuse = |reason: &str, sink: &mut dyn Sink| {
            stats::bump(
                sink,
                stats::REFUSED,
                &[("protocol", C::PROTOCOL), ("reason", reason)],
            );
        };
        if self.in_flight.len() >= self.limits().max_pending_requests {
            refuse("too_many_pending", sink);
            return Some(LocalAnswer::Error(ErrorKind::OverLimit));
        }
        if message.metadata.len() > self.limits().max_metadata_entries
            || message.metadata.byte_len() > self.limits().max_metadata_bytes
        {
            refuse("metadata_limit", sink);
            return Some(LocalAnswer::Error(ErrorKind::BadRequest));
        }
        if message.kind == MessageKind::Heartbeat {
            return Some(LocalAnswer::Heartbeat);
        }
        None
    }

    /// Bytes HCM writes to the client. Returns what the client must receive instead.
    pub fn on_hcm_data(
        &mut self,
        data: &[u8],
        now_ns: u64,
        sink: &mut dyn Sink,
    ) -> Result<Vec<u8>, Fatal> {
        self.response_partial.extend_from_slice(data);
        let mut out = Vec::new();
        let mut offset = 0;
        let max_body = self.limits().max_frame_bytes.saturating_add(1 << 16);
        let result = loop {
            let parsed = match http1::parse_response(&self.response_partial[offset..], max_body) {
                Ok(Some(p)) => p,
                Ok(None) => break Ok(()),
                Err(e) => {
                    break Err(Fatal(format!(
                        "unreadable answer from the HTTP connection manager: {e}"
                    )))
                }
            };
            offset += parsed.len;
            if parsed.status < 200 {
                continue;
            }
            let Some(request) = self.in_flight.pop_front() else {
                break Err(Fatal(
                    "the HTTP connection manager answered a request that was never sent".into(),
                ));
            };
            // HCM answers in order, so this request and every one before it were consumed.
            while self.handed.front().is_some_and(|h| h.seq <= request.seq) {
                self.handed.pop_front();
            }
            if let Err(e) = self.answer(request, &parsed, now_ns, &mut out, sink) {
                break Err(e);
            }
        };
        self.response_partial.drain(..offset);
        result.map(|()| out)
    }

    fn answer(
        &mut self,
        request: InFlight,
        parsed: &http1::Parsed,
        now_ns: u64,
        out: &mut Vec<u8>,
        sink: &mut dyn Sink,
    ) -> Result<(), Fatal> {
        let protocol = C::PROTOCOL;
        match request.local {
            Some(LocalAnswer::Heartbeat) => {
                stats::bump(
                    sink,
                    stats::HEARTBEATS,
                    &[("protocol", protocol), ("role", "front")],
                );
                if let Some(reply) = self.codec.heartbeat_reply(&request.message) {
                    out.extend_from_slice(&reply);
                }
                return Ok(());
            }
            Some(LocalAnswer::Error(kind)) => {
                let detail = match kind {
                    ErrorKind::OverLimit => "too many pending requests on this connection",
                    _ => "request metadata over the configured limit",
                };
                self.local_reply(&request, kind, detail, out, sink)?;
                return Ok(());
            }
            None => {}
        }
        let labels = [
            ("protocol", protocol),
            ("service", request.service.as_str()),
            ("method", request.method.as_str()),
        ];
        sink.gauge(&stats::name(stats::ACTIVE, &[("protocol", protocol)]), -1);
        sink.record(
            &stats::name(stats::DURATION, &labels),
            now_ns.saturating_sub(request.started_ns) / 1_000_000,
        );
        let marker = parsed.header(RESPONSE_HEADER);
        if request.message.kind == MessageKind::OneWay {
            let outcome = if marker.is_some() {
                "oneway"
            } else {
                "local_reply"
            };
            count_outcome(sink, &labels, outcome);
            return Ok(());
        }
        let Some(marker) = marker else {
            let kind = bridge::error_kind_for_status(parsed.status);
            // Name what failed: the client's error shows which call had no route or failed.
            let detail = format!(
                "{}/{}: {}",
                request.service,
                request.method,
                local_reply_detail(parsed)
            );
            return self.local_reply(&request, kind, &detail, out, sink);
        };
        let outcome = match MessageKind::parse(marker) {
            Some(MessageKind::Exception) => "business_error",
            _ => "success",
        };
        count_outcome(sink, &labels, outcome);
        let mutation = bridge::mutation_from_headers(parsed.header_all(bridge::MUTATION_HEADER));
        if mutation.is_empty() {
            out.extend_from_slice(&parsed.body);
            return Ok(());
        }
        match self.frame_codec.decode(&parsed.body) {
            Ok(Some(message)) if message.len == parsed.body.len() => {
                let start = out.len();
                match self
                    .frame_codec
                    .encode(&parsed.body, &message, &mutation, out)
                {
                    Ok(()) => {}
                    Err(e) => {
                        out.truncate(start);
                        if e.kind() == CodecErrorKind::Unsupported {
                            stats::bump(
                                sink,
                                stats::MUTATION_UNSUPPORTED,
                                &[("protocol", protocol)],
                            );
                        } else {
                            stats::bump(
                                sink,
                                stats::DECODE_ERRORS,
                                &[("protocol", protocol), ("role", "front")],
                            );
                        }
                        out.extend_from_slice(&parsed.body);
                    }
                }
                Ok(())
            }
            _ => {
                stats::bump(
                    sink,
                    stats::DECODE_ERRORS,
                    &[("protocol", protocol), ("role", "front")],
                );
                out.extend_from_slice(&parsed.body);
                Ok(())
            }
        }
    }

    fn local_reply(
        &mut self,
        request: &InFlight,
        kind: ErrorKind,
        detail: &str,
        out: &mut Vec<u8>,
        sink: &mut dyn Sink,
    ) -> Result<(), Fatal> {
        let labels = [
            ("protocol", C::PROTOCOL),
            ("service", request.service.as_str()),
            ("method", request.method.as_str()),
            ("kind", kind.as_str()),
        ];
        stats::bump(sink, stats::LOCAL_REPLIES, &labels);
        count_outcome(sink, &labels[..3], "local_reply");
        match self.codec.error_reply(&request.message, kind, detail) {
            Some(reply) => {
                out.extend_from_slice(&reply);
                Ok(())
            }
            None => Err(Fatal(format!(
                "{} has no error reply for {}: {detail}",
                C::PROTOCOL,
                kind.as_str()
            ))),
        }
    }

    /// The connection is gone: release the in-flight gauge.
    pub fn on_close(&mut self, sink: &mut dyn Sink) {
        let active = self.in_flight.iter().filter(|r| r.local.is_none()).count() as i64;
        if active > 0 {
            sink.gauge(
                &stats::name(stats::ACTIVE, &[("protocol", C::PROTOCOL)]),
                -active,
            );
        }
        self.in_flight.clear();
    }
}

/// A fresh unpredictable value: `RandomState` is seeded from the platform's randomness
/// (WASI `random_get` under Envoy) and gives every instance new keys.
fn connection_token() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x6d656c74656d69u64)
}

fn count_outcome(sink: &mut dyn Sink, labels: &[(&str, &str)], outcome: &str) {
    let mut l = labels.to_vec();
    l.push(("outcome", outcome));
    stats::bump(sink, stats::RESPONSES, &l);
}

/// A short reason for an Envoy local reply: its body when it is short text, else the status.
fn local_reply_detail(parsed: &http1::Parsed) -> String {
    let body = std::str::from_utf8(&parsed.body).unwrap_or("").trim();
    if !body.is_empty() && body.len() <= 200 {
        format!("envoy {}: {body}", parsed.status)
    } else {
        format!("envoy {}", parsed.status)
    }
}
