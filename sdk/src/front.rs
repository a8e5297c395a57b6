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
//!
//! With `"hcm_protocol": "http2"` the same requests travel as HTTP/2 streams instead
//! ([`crate::http2`]): HCM consumes every byte it is given, so nothing is recognised again, every
//! call is handed at once (up to `max_pending_requests`), and each answer is returned as soon
//! as it is complete, or in request order for codecs that need it.

use std::collections::VecDeque;
use std::rc::Rc;

use crate::bridge::{self, KIND_HEADER, RESPONSE_HEADER, RID_HEADER};
use crate::config::{FilterConfig, HcmProtocol, Limits};
use crate::stats::{self, Sink};
use crate::vm::{HeldBytes, OverLimit, VmShared};
use crate::{http1, http2, Codec, CodecErrorKind, ErrorKind, Message, MessageKind};

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
    /// The request's service and method, for error details.
    service: String,
    method: String,
    /// The same as metric label values (bounded, see [`crate::vm::LabelLimiter`]).
    service_label: String,
    method_label: String,
    started_ns: u64,
    /// Answered by the front itself, without a request to HCM (see [`Front::answer_locally`]).
    direct: bool,
}

impl InFlight {
    /// A request of `names` = [service, method, service label, method label].
    fn new(
        seq: u64,
        message: Message,
        local: Option<LocalAnswer>,
        names: [String; 4],
        started_ns: u64,
        direct: bool,
    ) -> Self {
        let [service, method, service_label, method_label] = names;
        Self {
            seq,
            message,
            local,
            service,
            method,
            service_label,
            method_label,
            started_ns,
            direct,
        }
    }
}

/// An HTTP request written into the read buffer: its sequence number, its length, and how many
/// leading bytes identify it (request line and sequence header).
#[derive(Debug, Clone, Copy)]
struct Handed {
    seq: u64,
    len: usize,
    id_len: usize,
}

/// Most bytes of requests handed to HCM ahead of what it consumed (at least one request is
/// always handed). HCM parses one HTTP/1.1 request at a time and shows the rest to the front
/// again on every read, so a small bound keeps the cost of each read small (a deep pipeline
/// costs linear CPU) and leaves the rest of the pipeline in the backlog, in order.
const HAND_AHEAD_BYTES: usize = 256 << 10;

/// Front-side state of one client connection.
pub struct Front<C: Codec> {
    /// Decodes the client's stream and builds replies to its requests.
    codec: C,
    /// Decodes whole frames from HTTP bodies (response mutation), so that `codec`'s view of
    /// the stream is never interrupted (see [`Codec::decode`]).
    frame_codec: C,
    config: Rc<FilterConfig<C::Config>>,
    shared: Rc<VmShared>,
    /// Client bytes not transcoded yet: a partial frame, and whole requests waiting behind
    /// `max_pending_requests` (back-pressure).
    backlog: HeldBytes,
    /// Whether the backlog stopped at a limit rather than at a partial frame: more requests
    /// can be handed as soon as HCM answers (see [`Front::wants_kick`]).
    stopped_at_limit: bool,
    /// Requests written into Envoy's read buffer that HCM may not have consumed yet.
    handed: VecDeque<Handed>,
    in_flight: VecDeque<InFlight>,
    /// HCM bytes not yet forming a complete HTTP response.
    response_partial: HeldBytes,
    /// Body bytes of the current answer still to pass through to the client as they arrive
    /// (large answers are not held whole).
    passing: usize,
    next_seq: u64,
    /// Secret of this connection in every request's sequence header (see [`http1::write_request`]).
    token: u64,
    /// Most requests handed ahead at once (see [`Front::hand_one`]).
    hand_cap: usize,
    /// Heartbeats and refusals are answered here instead of through HCM's `meltemi.local`
    /// virtual host (a glue that can write to the client: the native front).
    direct: bool,
    /// Such answers due to the client now, from the read path (see [`Front::take_direct`]).
    direct_out: Vec<u8>,
    /// HTTP/2 toward HCM (`"hcm_protocol": "http2"`); `None` for HTTP/1.1, whose state is the
    /// fields above.
    h2: Option<Box<H2>>,
    /// HCM marked an answer `connection: close` (it drains the connection: hot restart,
    /// listener update, `max_requests_per_connection`) and closes the connection once that
    /// answer is written: nothing more is handed, and the calls it will never answer get the
    /// protocol's error reply in the same write instead of a silent close.
    hcm_closing: bool,
    /// The codec's going-away notice ([`Codec::going_away`]) was written to the client.
    notice_sent: bool,
    /// The client half-closed (a glue with half-close enabled: the native front): the
    /// connection is closed once every call it sent is answered.
    client_eof: bool,
}

/// The HTTP/2 side of a front: one stream per request, answers as soon as they are ready.
/// A request's [`InFlight::seq`] is its stream id.
struct H2 {
    client: http2::Client,
    /// Every request not delivered yet, in request order, with its answer once it is
    /// finished: for codecs whose clients need answers in request order
    /// ([`Codec::ANSWERS_IN_ANY_ORDER`] false); empty otherwise.
    order: VecDeque<(u64, Option<HeldBytes>)>,
    /// One-way calls forwarded and not acknowledged yet. While there is one, no later call is
    /// handed: a client cannot wait for a one-way call, so "sent before" must stay "delivered
    /// before" (as on HTTP/1.1, where HCM serves one call at a time), or a call that depends
    /// on it could overtake it on another upstream connection.
    oneway_in_flight: usize,
    /// HCM said GOAWAY and every call it kept is answered: the client connection is closed
    /// at the glue's next read or timer (closing from the write path would drop the answers
    /// being written).
    closing: bool,
}

/// Our HTTP/2 receive window per stream: small answers never wait for a WINDOW_UPDATE, large
/// ones wait for one per mebibyte (sent from the glue's next read or timer).
const H2_STREAM_WINDOW: u32 = 1 << 20;
/// Our HTTP/2 receive window for the connection.
const H2_CONNECTION_WINDOW: u32 = 16 << 20;

impl<C: Codec> Front<C> {
    /// State for a new client connection, with no VM-wide limits (tests, tools).
    pub fn new(config: Rc<FilterConfig<C::Config>>) -> Self {
        Self::with_shared(config, VmShared::unbounded())
    }

    /// State for a new client connection sharing `shared` with the VM's other connections.
    pub fn with_shared(config: Rc<FilterConfig<C::Config>>, shared: Rc<VmShared>) -> Self {
        let mut front = Self {
            codec: C::new(&config.codec),
            frame_codec: C::new(&config.codec),
            config,
            backlog: HeldBytes::new(Rc::clone(&shared)),
            response_partial: HeldBytes::new(Rc::clone(&shared)),
            shared,
            stopped_at_limit: false,
            passing: 0,
            handed: VecDeque::new(),
            in_flight: VecDeque::new(),
            next_seq: 1,
            token: connection_token(),
            hand_cap: usize::MAX,
            direct: false,
            direct_out: Vec::new(),
            h2: None,
            hcm_closing: false,
            notice_sent: false,
            client_eof: false,
        };
        if front.config.hcm_protocol == HcmProtocol::Http2 {
            let limits = &front.config.limits;
            let settings = http2::Settings {
                stream_window: H2_STREAM_WINDOW,
                connection_window: H2_CONNECTION_WINDOW,
                max_body: limits.max_frame_bytes.saturating_add(1 << 16),
                max_pending_body: limits.connection_buffer_bytes(),
            };
            front.h2 = Some(Box::new(H2 {
                client: http2::Client::new(Rc::clone(&front.shared), settings),
                order: VecDeque::new(),
                oneway_in_flight: 0,
                closing: false,
            }));
        }
        front
    }

    fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// Requests awaiting an answer.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Client bytes held in the VM for this connection.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// True while whole requests wait in the backlog behind a limit: the glue must keep Envoy's
    /// read buffer reachable (Pause, then continue the chain itself) so that it can hand them
    /// later from a timer.
    pub fn has_waiting(&self) -> bool {
        // HTTP/2: HCM may need a SETTINGS ACK, PING ACK or WINDOW_UPDATE at any time, and the
        // glue can only write toward HCM while the read buffer stays reachable.
        self.h2.is_some() || (self.stopped_at_limit && !self.backlog.is_empty())
    }

    /// From now on the front answers heartbeats and refusals itself, in request order, instead
    /// of sending them to HCM's `meltemi.local` virtual host: for a glue that can write to the
    /// client directly (the native front). HTTP/1.1 only; over HTTP/2 they stay streams.
    pub fn answer_locally(&mut self) {
        self.direct = self.h2.is_none();
    }

    /// Bytes for the client that the read path produced (answers of [`Front::answer_locally`]
    /// with nothing before them in flight); the glue writes them to the client.
    pub fn take_direct(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.direct_out)
    }

    /// True when the front speaks HTTP/2 to HCM (which then consumes every byte it is given).
    pub fn is_http2(&self) -> bool {
        self.h2.is_some()
    }

    /// True when requests wait and the limit that held them back has room again: the glue
    /// should run [`Front::on_client_bytes`] (with no new bytes) soon, from its timer, because
    /// HCM may have answered everything it had without any further read event.
    pub fn wants_kick(&self) -> bool {
        if self.finished_after_eof() {
            return true;
        }
        if let Some(h2) = &self.h2 {
            return h2.closing
                || h2.client.has_output()
                || (self.stopped_at_limit && !self.backlog.is_empty() && self.has_room());
        }
        !self.hcm_closing && self.has_waiting() && self.has_room()
    }

    /// HTTP/1.1: the lengths of the requests handed to HCM and not consumed by it, in order:
    /// what Envoy's read buffer holds after a read (see [`Front::kept`]).
    pub fn unconsumed_lengths(&self) -> Vec<usize> {
        self.handed.iter().map(|h| h.len).collect()
    }

    /// Calls waiting for an answer from HCM (not those the front answers itself).
    pub fn awaiting_hcm(&self) -> usize {
        self.in_flight.iter().filter(|r| !r.direct).count()
    }

    /// The client shut down its sending side: no more calls come.
    pub fn on_client_eof(&mut self) {
        self.client_eof = true;
    }

    /// True once a client that half-closed has every answer it is owed (a partial frame it
    /// left can never complete): the glue closes the connection.
    pub fn finished_after_eof(&self) -> bool {
        let waiting = self.stopped_at_limit && !self.backlog.is_empty();
        let h2_held = self.h2.as_ref().is_some_and(|h2| !h2.order.is_empty());
        self.client_eof
            && self.in_flight.is_empty()
            && !waiting
            && !h2_held
            && self.direct_out.is_empty()
            && self.passing == 0
    }

    fn has_room(&self) -> bool {
        if let Some(h2) = &self.h2 {
            // Answers held for request order count: they are buffers in the VM.
            let pending = self.in_flight.len().max(h2.order.len());
            return pending < self.limits().max_pending_requests
                && h2.client.streams() < self.limits().max_concurrent_streams
                && h2.oneway_in_flight == 0
                && h2.client.can_open();
        }
        self.in_flight.len() < self.limits().max_pending_requests
            && self.handed.len() < self.hand_cap
            && (self.handed.is_empty() || self.handed_bytes() < HAND_AHEAD_BYTES)
    }

    fn handed_bytes(&self) -> usize {
        self.handed
            .iter()
            .fold(0usize, |n, h| n.saturating_add(h.len))
    }

    /// How many leading bytes of Envoy's read buffer [`Front::kept`] needs to see.
    pub fn peek_len(&self) -> usize {
        self.handed.iter().map(|h| h.id_len).max().unwrap_or(0)
    }

    /// Of a read buffer of `size` bytes that starts with `head` (at least [`Front::peek_len`]
    /// bytes of it, or all), the length of the prefix that is our own HTTP, written earlier and
    /// not consumed by HCM yet. Everything after it is new client bytes.
    pub fn kept(&mut self, head: &[u8], size: usize) -> Result<usize, Fatal> {
        if self.handed.is_empty() {
            return Ok(0);
        }
        match http1::leading_seq(head, self.token) {
            Some(seq) if self.handed.iter().any(|h| h.seq == seq) => {
                while self.handed.front().is_some_and(|h| h.seq != seq) {
                    self.handed.pop_front();
                }
                let kept = self.handed_bytes();
                if kept > size {
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

    /// Envoy's whole read buffer for this connection. Returns its new content, or `None` to
    /// leave it unchanged. Complete frames become HTTP requests; partial ones stay here.
    /// (The wasm glue reads only the bytes it needs instead, through [`Front::kept`] and
    /// [`Front::on_client_bytes`].)
    pub fn on_client_data(
        &mut self,
        buffer: &[u8],
        now_ns: u64,
        sink: &mut dyn Sink,
    ) -> Result<Option<Vec<u8>>, Fatal> {
        let kept = self.kept(buffer, buffer.len())?;
        let (prefix, raw) = buffer.split_at(kept);
        let http = self.on_client_bytes(raw, now_ns, sink)?;
        if raw.is_empty() && http.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(kept.saturating_add(http.len()));
        out.extend_from_slice(prefix);
        out.extend_from_slice(&http);
        Ok(Some(out))
    }

    /// New client bytes (`raw`, possibly empty: a timer asking for requests held back to be
    /// handed). Returns the HTTP requests to place after the kept prefix of the read buffer,
    /// which from then on holds no client bytes.
    pub fn on_client_bytes(
        &mut self,
        raw: &[u8],
        now_ns: u64,
        sink: &mut dyn Sink,
    ) -> Result<Vec<u8>, Fatal> {
        if self.h2.as_ref().is_some_and(|h2| h2.closing) {
            return Err(Fatal(
                "the HTTP connection manager is draining the connection (HTTP/2 GOAWAY); every call it kept was answered".into(),
            ));
        }
        let mut out = Vec::new();
        if self.hcm_closing {
            // HCM closes the connection after the answer it marked: what the client sends now
            // can never be served here (a client honouring the going-away notice sends none).
            return Ok(out);
        }
        if self.backlog.is_empty() {
            // The common case: decode straight from Envoy's bytes, keep only what is left.
            let used = self.decode_requests(raw, &mut out, now_ns, sink)?;
            let rest = raw.get(used..).unwrap_or(&[]);
            self.hold(rest, sink)?;
        } else {
            self.hold(raw, sink)?;
            let backlog =
                std::mem::replace(&mut self.backlog, HeldBytes::new(Rc::clone(&self.shared)));
            let result = self.decode_requests(backlog.as_slice(), &mut out, now_ns, sink);
            self.backlog = backlog;
            self.backlog.consume(result?);
        }
        if let Some(h2) = &mut self.h2 {
            // Our frames, and whatever HCM's frames asked for, in the order they were queued.
            h2.client.take_output(&mut out);
        }
        Ok(out)
    }

    /// Hands at most one request waiting behind a limit. The native glue injects it into an
    /// idle HCM outside a read event, in a buffer of its own that HCM must consume whole.
    pub fn hand_one(&mut self, now_ns: u64, sink: &mut dyn Sink) -> Result<Vec<u8>, Fatal> {
        self.hand_cap = 1;
        let out = self.on_client_bytes(&[], now_ns, sink);
        self.hand_cap = usize::MAX;
        out
    }

    /// Keeps `bytes` in the backlog, or refuses the connection when it would pass a limit.
    fn hold(&mut self, bytes: &[u8], sink: &mut dyn Sink) -> Result<(), Fatal> {
        let limit = self.limits().connection_buffer_bytes();
        self.backlog
            .try_extend(bytes, limit)
            .map_err(|over| self.refuse_buffer(over, sink))
    }

    fn refuse_buffer(&self, over: OverLimit, sink: &mut dyn Sink) -> Fatal {
        stats::bump(
            sink,
            stats::REFUSED,
            &[
                ("protocol", C::PROTOCOL),
                ("reason", over.reason()),
                ("role", "front"),
            ],
        );
        match over {
            OverLimit::Connection => Fatal(format!(
                "client holds more than limits.max_connection_buffer_bytes ({}) of unanswered requests",
                self.limits().connection_buffer_bytes()
            )),
            OverLimit::Vm => Fatal(format!(
                "the VM's buffered bytes would pass limits.vm_buffer_budget_bytes ({})",
                self.shared.budget.limit()
            )),
        }
    }

    /// Transcodes the frames at the start of `src` while the limits allow; returns how many
    /// bytes of `src` they used.
    fn decode_requests(
        &mut self,
        src: &[u8],
        out: &mut Vec<u8>,
        now_ns: u64,
        sink: &mut dyn Sink,
    ) -> Result<usize, Fatal> {
        let protocol = C::PROTOCOL;
        let mut offset = 0usize;
        self.stopped_at_limit = false;
        loop {
            let rest = src.get(offset..).unwrap_or(&[]);
            if rest.is_empty() {
                return Ok(offset);
            }
            if !self.has_room() {
                // Back-pressure: the rest waits here, in order, until HCM answers.
                self.stopped_at_limit = true;
                return Ok(offset);
            }
            let message = match self.codec.decode(rest) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    if rest.len() > self.limits().max_frame_bytes {
                        return Err(self.refuse_frame(sink));
                    }
                    return Ok(offset);
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
            let frame = rest.get(..message.len).unwrap_or(&[]);
            offset = offset.saturating_add(message.len);
            if !message.kind.is_request() {
                // A client answering a server-initiated message: nothing in the bridge expects it.
                stats::bump(
                    sink,
                    stats::UNEXPECTED,
                    &[("protocol", protocol), ("role", "front")],
                );
                continue;
            }
            self.hand(message, frame, out, now_ns, sink)?;
        }
    }

    /// Writes one request for HCM into `out` and remembers it.
    fn hand(
        &mut self,
        message: Message,
        frame: &[u8],
        out: &mut Vec<u8>,
        now_ns: u64,
        sink: &mut dyn Sink,
    ) -> Result<(), Fatal> {
        let protocol = C::PROTOCOL;
        let [service, method, service_label, method_label] = self.names(&message, sink);
        let labels = [
            ("protocol", protocol),
            ("service", service_label.as_str()),
            ("method", method_label.as_str()),
        ];
        let local = self.local_answer(&message, sink);
        if local != Some(LocalAnswer::Heartbeat) {
            // Refused requests too: every request counted has one response outcome.
            stats::bump(sink, stats::REQUESTS, &labels);
        }
        if local.is_some() && message.kind == MessageKind::OneWay {
            // A refused one-way call: answering it would desynchronise the client, which
            // expects nothing. Dropped, and counted as such.
            count_outcome(sink, &labels, "dropped");
            return Ok(());
        }
        if self.h2.is_some() {
            return self.hand_h2(
                message,
                frame,
                local,
                now_ns,
                sink,
                [service, method, service_label, method_label],
            );
        }
        if let (true, Some(answer)) = (self.direct, local) {
            let names = [service, method, service_label, method_label];
            let request = InFlight::new(0, message, local, names, now_ns, true);
            if self.in_flight.is_empty() {
                // Nothing before it: answered now.
                let mut reply = std::mem::take(&mut self.direct_out);
                let done = self.answer_local(&request, answer, &mut reply, sink);
                self.direct_out = reply;
                return done;
            }
            // Answered right after the requests before it (see `Front::drain_direct`).
            self.in_flight.push_back(request);
            return Ok(());
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
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
                let target = Target::of(&service, &method, &message);
                http1::write_request(
                    out,
                    self.token,
                    seq,
                    &target.authority,
                    &target.path,
                    target.headers(&message),
                    frame,
                );
                sink.gauge(&stats::name(stats::ACTIVE, &[("protocol", protocol)]), 1);
            }
        }
        let written = out.get(start..).unwrap_or(&[]);
        let id_len = written
            .windows(2)
            .enumerate()
            .filter(|(_, w)| *w == b"\r\n")
            .nth(1)
            .map_or(written.len(), |(i, _)| i.saturating_add(2));
        self.handed.push_back(Handed {
            seq,
            len: written.len(),
            id_len,
        });
        let names = [service, method, service_label, method_label];
        self.in_flight
            .push_back(InFlight::new(seq, message, local, names, now_ns, false));
        Ok(())
    }

    /// [`Front::hand`] for HTTP/2: the same request as one stream.
    fn hand_h2(
        &mut self,
        message: Message,
        frame: &[u8],
        local: Option<LocalAnswer>,
        now_ns: u64,
        sink: &mut dyn Sink,
        [service, method, service_label, method_label]: [String; 4],
    ) -> Result<(), Fatal> {
        let Some(h2) = self.h2.as_mut() else {
            return Ok(());
        };
        let opened = match local {
            Some(answer) => {
                let kind = match answer {
                    LocalAnswer::Heartbeat => "heartbeat",
                    LocalAnswer::Error(_) => "refused",
                };
                h2.client.open(
                    bridge::LOCAL_AUTHORITY,
                    bridge::LOCAL_PATH,
                    [(KIND_HEADER, kind)],
                    &[],
                )
            }
            None => {
                let target = Target::of(&service, &method, &message);
                h2.client.open(
                    &target.authority,
                    &target.path,
                    target.headers(&message),
                    frame,
                )
            }
        };
        let stream = match opened {
            Ok(stream) => u64::from(stream),
            Err(e) => return Err(self.h2_fatal(e, sink)),
        };
        if local.is_none() {
            sink.gauge(&stats::name(stats::ACTIVE, &[("protocol", C::PROTOCOL)]), 1);
        }
        if !C::ANSWERS_IN_ANY_ORDER {
            h2.order.push_back((stream, None));
        }
        if local.is_none() && message.kind == MessageKind::OneWay {
            h2.oneway_in_flight = h2.oneway_in_flight.saturating_add(1);
        }
        let names = [service, method, service_label, method_label];
        self.in_flight
            .push_back(InFlight::new(stream, message, local, names, now_ns, false));
        Ok(())
    }

    fn h2_fatal(&self, e: http2::H2Error, sink: &mut dyn Sink) -> Fatal {
        match e {
            http2::H2Error::Over(over) => self.refuse_buffer(over, sink),
            http2::H2Error::Protocol(m) => {
                Fatal(format!("the HTTP connection manager broke HTTP/2: {m}"))
            }
        }
    }

    /// [`Front::on_hcm_data`] for HTTP/2: every answer finished by these frames is returned
    /// (in request order unless the codec's clients match by id).
    fn on_hcm_h2(
        &mut self,
        data: &[u8],
        now_ns: u64,
        sink: &mut dyn Sink,
    ) -> Result<Vec<u8>, Fatal> {
        let mut events = Vec::new();
        let received = match self.h2.as_mut() {
            Some(h2) => h2.client.receive(data, &mut events),
            None => Ok(()),
        };
        let mut out = Vec::new();
        for event in events {
            let (stream, parsed) = match event {
                http2::Event::Answer {
                    stream,
                    status,
                    headers,
                    body,
                } => (
                    stream,
                    http1::Parsed {
                        status,
                        path: String::new(),
                        headers,
                        body,
                        len: 0,
                    },
                ),
                http2::Event::Reset { stream, code } => {
                    // As Envoy would have answered: the codec's error reply for that request.
                    let status = match code {
                        http2::ENHANCE_YOUR_CALM => 429,
                        http2::REFUSED_STREAM | 8 => 503,
                        _ => 500,
                    };
                    (
                        stream,
                        http1::Parsed {
                            status,
                            path: String::new(),
                            headers: Vec::new(),
                            body: format!("http/2 stream reset by envoy (code {code})")
                                .into_bytes(),
                            len: 0,
                        },
                    )
                }
                // New calls wait (the client cannot be told); HCM closes the connection
                // once the streams it kept are answered.
                http2::Event::GoAway { .. } => continue,
            };
            let seq = u64::from(stream);
            let Some(pos) = self.in_flight.iter().position(|r| r.seq == seq) else {
                continue;
            };
            let Some(request) = self.in_flight.remove(pos) else {
                continue;
            };
            if request.local.is_none() && request.message.kind == MessageKind::OneWay {
                if let Some(h2) = self.h2.as_mut() {
                    h2.oneway_in_flight = h2.oneway_in_flight.saturating_sub(1);
                }
            }
            let mut answer = Vec::new();
            self.answer(request, &parsed, now_ns, &mut answer, sink)?;
            self.deliver(seq, answer, &mut out, sink)?;
        }
        received.map_err(|e| self.h2_fatal(e, sink))?;
        let drained = self
            .h2
            .as_ref()
            .is_some_and(|h2| h2.client.going_away() && !h2.closing);
        if drained && self.in_flight.is_empty() {
            // Everything HCM kept is answered (in this write): the calls still waiting can
            // never be served on this connection, so they get the protocol's error reply now,
            // the only moment the front can write to the client, and the connection closes.
            self.refuse_waiting(H2_DRAINING, now_ns, &mut out, sink)?;
            // Last, once nothing else will be written (see `Front::going_away_notice`): a
            // notice at the GOAWAY itself could be followed by answers in the same read.
            self.going_away_notice(&mut out);
            if let Some(h2) = self.h2.as_mut() {
                h2.closing = true;
            }
        }
        Ok(out)
    }

    /// Answers every whole request in the backlog with an `Unavailable` error reply (one-way
    /// calls are dropped, heartbeats answered), as if Envoy had refused them.
    fn refuse_waiting(
        &mut self,
        reason: &str,
        now_ns: u64,
        out: &mut Vec<u8>,
        sink: &mut dyn Sink,
    ) -> Result<(), Fatal> {
        let backlog = std::mem::replace(&mut self.backlog, HeldBytes::new(Rc::clone(&self.shared)));
        let mut offset = 0usize;
        let result = loop {
            let rest = backlog.as_slice().get(offset..).unwrap_or(&[]);
            let message = match self.codec.decode(rest) {
                Ok(Some(m)) if m.len > 0 && m.len <= rest.len() => m,
                // A partial frame, or a corrupt stream: nothing more to answer.
                _ => break Ok(()),
            };
            offset = offset.saturating_add(message.len);
            let parsed = unavailable(reason);
            let request = match message.kind {
                MessageKind::Request | MessageKind::OneWay | MessageKind::Heartbeat => {
                    self.refused_in_flight(message, now_ns, sink)
                }
                _ => continue,
            };
            if let Err(e) = self.answer(request, &parsed, now_ns, out, sink) {
                break Err(e);
            }
        };
        self.backlog = backlog;
        self.backlog.consume(offset);
        result
    }

    /// Writes the codec's going-away notice once per connection, after every answer in the
    /// same write: some clients stop decoding a read at an event frame (dubbo2.js drops the
    /// rest of the chunk until more bytes arrive, which never come on a closing connection),
    /// so nothing may follow it.
    fn going_away_notice(&mut self, out: &mut Vec<u8>) {
        if self.notice_sent {
            return;
        }
        self.notice_sent = true;
        if let Some(notice) = self.codec.going_away() {
            out.extend_from_slice(&notice);
        }
    }

    /// HTTP/1.1, HCM closing: every call handed to it after the marked answer (HCM serves one
    /// at a time, so it never started them) and every call still in the backlog gets the
    /// protocol's `Unavailable` reply — the client learns at once that they did not run,
    /// instead of losing them to the close. One-way calls are dropped, heartbeats answered.
    fn refuse_unanswered(
        &mut self,
        now_ns: u64,
        out: &mut Vec<u8>,
        sink: &mut dyn Sink,
    ) -> Result<(), Fatal> {
        self.handed.clear();
        let parsed = unavailable(HTTP1_CLOSING);
        while let Some(request) = self.in_flight.pop_front() {
            match (request.direct, request.local) {
                (true, Some(answer)) => self.answer_local(&request, answer, out, sink)?,
                (true, None) => {}
                (false, _) => self.answer(request, &parsed, now_ns, out, sink)?,
            }
        }
        self.refuse_waiting(HTTP1_CLOSING, now_ns, out, sink)
    }

    /// The in-flight record of a request that is answered without reaching HCM, counted as a
    /// request like any other.
    fn refused_in_flight(
        &mut self,
        message: Message,
        now_ns: u64,
        sink: &mut dyn Sink,
    ) -> InFlight {
        let [service, method, service_label, method_label] = self.names(&message, sink);
        let local = (message.kind == MessageKind::Heartbeat).then_some(LocalAnswer::Heartbeat);
        if local.is_none() {
            let labels = [
                ("protocol", C::PROTOCOL),
                ("service", service_label.as_str()),
                ("method", method_label.as_str()),
            ];
            stats::bump(sink, stats::REQUESTS, &labels);
            sink.gauge(&stats::name(stats::ACTIVE, &[("protocol", C::PROTOCOL)]), 1);
        }
        let names = [service, method, service_label, method_label];
        InFlight::new(0, message, local, names, now_ns, false)
    }

    /// Writes the answer to request `seq` to `out` now, or holds it until every earlier
    /// request is answered (codecs whose clients need request order).
    fn deliver(
        &mut self,
        seq: u64,
        answer: Vec<u8>,
        out: &mut Vec<u8>,
        sink: &mut dyn Sink,
    ) -> Result<(), Fatal> {
        let limit = self.limits().connection_buffer_bytes();
        let Some(h2) = self.h2.as_mut() else {
            return Ok(());
        };
        if C::ANSWERS_IN_ANY_ORDER {
            out.extend_from_slice(&answer);
            return Ok(());
        }
        if h2.order.front().is_some_and(|(s, _)| *s == seq) {
            h2.order.pop_front();
            out.extend_from_slice(&answer);
        } else if let Some((_, slot)) = h2.order.iter_mut().find(|(s, _)| *s == seq) {
            let mut held = HeldBytes::new(Rc::clone(&self.shared));
            if let Err(over) = held.try_extend(&answer, limit) {
                return Err(self.refuse_buffer(over, sink));
            }
            *slot = Some(held);
            return Ok(());
        } else {
            // Not awaited in order (cannot happen: every stream is queued when opened); the
            // client still gets it rather than nothing.
            out.extend_from_slice(&answer);
        }
        while let Some((_, Some(_))) = h2.order.front() {
            if let Some((_, Some(held))) = h2.order.pop_front() {
                out.extend_from_slice(held.as_slice());
            }
        }
        Ok(())
    }

    /// A request's service and method (the configured service, or the message's metadata) and
    /// their metric label values.
    fn names(&self, message: &Message, sink: &mut dyn Sink) -> [String; 4] {
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
        let service_label = self.label(&service, "service", sink);
        let method_label = self.label(&method, "method", sink);
        [service, method, service_label, method_label]
    }

    /// The label value for `value` of label `label` (`other` past the limit, counted).
    fn label(&self, value: &str, label: &str, sink: &mut dyn Sink) -> String {
        let limiter = if label == "service" {
            &self.shared.services
        } else {
            &self.shared.methods
        };
        let (admitted, overflow) = limiter.admit(value);
        if overflow {
            stats::bump(
                sink,
                stats::LABEL_OVERFLOW,
                &[("protocol", C::PROTOCOL), ("label", label)],
            );
        }
        admitted.to_owned()
    }

    fn refuse_frame(&self, sink: &mut dyn Sink) -> Fatal {
        stats::bump(
            sink,
            stats::REFUSED,
            &[
                ("protocol", C::PROTOCOL),
                ("reason", "frame_too_large"),
                ("role", "front"),
            ],
        );
        Fatal(format!(
            "frame larger than limits.max_frame_bytes ({})",
            self.limits().max_frame_bytes
        ))
    }

    /// Whether the bridge answers this request itself, and with what.
    fn local_answer(&self, message: &Message, sink: &mut dyn Sink) -> Option<LocalAnswer> {
        if message.metadata.len() > self.limits().max_metadata_entries
            || message.metadata.byte_len() > self.limits().max_metadata_bytes
        {
            stats::bump(
                sink,
                stats::REFUSED,
                &[
                    ("protocol", C::PROTOCOL),
                    ("reason", "metadata_limit"),
                    ("role", "front"),
                ],
            );
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
        if self.h2.is_some() {
            return self.on_hcm_h2(data, now_ns, sink);
        }
        let max_body = self.limits().max_frame_bytes.saturating_add(1 << 16);
        let limit = self.limits().connection_buffer_bytes();
        let mut out = Vec::new();
        let mut partial = std::mem::replace(
            &mut self.response_partial,
            HeldBytes::new(Rc::clone(&self.shared)),
        );
        let (src, held): (&[u8], bool) = if partial.is_empty() {
            (data, false)
        } else {
            if let Err(over) = partial.try_extend(data, limit) {
                return Err(self.refuse_buffer(over, sink));
            }
            (partial.as_slice(), true)
        };
        let mut offset = 0usize;
        let result = loop {
            let rest = src.get(offset..).unwrap_or(&[]);
            if self.passing > 0 {
                offset = offset.saturating_add(http1::pass_body(&mut self.passing, rest, &mut out));
                if self.passing > 0 {
                    break Ok(());
                }
                continue;
            }
            // Direct answers whose turn has come follow the answer before them.
            if let Err(e) = self.drain_direct(&mut out, sink) {
                break Err(e);
            }
            if rest.is_empty() {
                break Ok(());
            }
            if let Some(head) = self.streamable_answer(rest, max_body) {
                let Some(request) = self.in_flight.pop_front() else {
                    break Err(Fatal("an answer without a request".into()));
                };
                while self.handed.front().is_some_and(|h| h.seq <= request.seq) {
                    self.handed.pop_front();
                }
                self.passing = head.body_len.unwrap_or(0);
                offset = offset.saturating_add(head.len);
                self.hcm_closing |= closes_connection(&head.headers);
                let parsed = http1::Parsed {
                    status: head.status,
                    path: String::new(),
                    headers: head.headers,
                    body: Vec::new(),
                    len: head.len,
                };
                // The server's frame, unchanged: counted now, its bytes passed on as they come.
                if let Err(e) = self.answer(request, &parsed, now_ns, &mut out, sink) {
                    break Err(e);
                }
                continue;
            }
            let parsed = match http1::parse_response(rest, max_body) {
                Ok(Some(p)) => p,
                Ok(None) => break Ok(()),
                Err(e) => {
                    break Err(Fatal(format!(
                        "unreadable answer from the HTTP connection manager: {e}"
                    )))
                }
            };
            offset = offset.saturating_add(parsed.len);
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
            self.hcm_closing |= closes_connection(&parsed.headers);
            if let Err(e) = self.answer(request, &parsed, now_ns, &mut out, sink) {
                break Err(e);
            }
        };
        let result = match result {
            Ok(()) if self.hcm_closing && self.passing == 0 => {
                // The marked answer is complete: HCM answers nothing after it. The client is
                // told (where the protocol can say so) before the close.
                let refused = self.refuse_unanswered(now_ns, &mut out, sink);
                self.going_away_notice(&mut out);
                refused
            }
            other => other,
        };
        if held {
            partial.consume(offset);
        } else if let Err(over) = partial.try_extend(data.get(offset..).unwrap_or(&[]), limit) {
            self.response_partial = partial;
            return Err(self.refuse_buffer(over, sink));
        }
        self.response_partial = partial;
        result.map(|()| out)
    }

    /// The head of a large, incomplete answer relaying a server frame unchanged (no response
    /// mutation) to a two-way call.
    fn streamable_answer(&self, rest: &[u8], max_body: usize) -> Option<http1::Head> {
        let request = self.in_flight.front()?;
        if request.local.is_some() || request.message.kind != MessageKind::Request {
            return None;
        }
        let head = http1::response_head(rest).ok()??;
        let body = head.body_len?;
        let complete = rest.len() >= head.len.saturating_add(body);
        let relayed = head.status == 200
            && head
                .header(RESPONSE_HEADER)
                .is_some_and(|k| k != bridge::ONEWAY_ACK)
            && head.header(bridge::MUTATION_HEADER).is_none();
        (relayed && body > crate::back::STREAM_MIN && body <= max_body && !complete).then_some(head)
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
        if let Some(answer) = request.local {
            return self.answer_local(&request, answer, out, sink);
        }
        let labels = [
            ("protocol", protocol),
            ("service", request.service_label.as_str()),
            ("method", request.method_label.as_str()),
        ];
        sink.gauge(&stats::name(stats::ACTIVE, &[("protocol", protocol)]), -1);
        sink.record(
            &stats::name(stats::DURATION, &labels),
            now_ns.saturating_sub(request.started_ns) / 1_000,
        );
        let marker = parsed.header(RESPONSE_HEADER);
        if request.message.kind == MessageKind::OneWay {
            // Delivered: acknowledged by the back, or written to the server before the back
            // closed the connection on purpose (codecs without a delivery probe), which Envoy
            // reports as a reset by connection termination.
            let closed_after_write = parsed.status == 503
                && std::str::from_utf8(&parsed.body)
                    .is_ok_and(|b| b.contains("reset reason: connection termination"));
            let outcome = if marker.is_some() || closed_after_write {
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

    /// The bridge's own answer to a heartbeat or a refused request.
    fn answer_local(
        &mut self,
        request: &InFlight,
        answer: LocalAnswer,
        out: &mut Vec<u8>,
        sink: &mut dyn Sink,
    ) -> Result<(), Fatal> {
        match answer {
            LocalAnswer::Heartbeat => {
                stats::bump(
                    sink,
                    stats::HEARTBEATS,
                    &[("protocol", C::PROTOCOL), ("role", "front")],
                );
                if let Some(reply) = self.codec.heartbeat_reply(&request.message) {
                    out.extend_from_slice(&reply);
                }
                Ok(())
            }
            LocalAnswer::Error(kind) => {
                let detail = "request metadata over the configured limit";
                self.local_reply(request, kind, detail, out, sink)
            }
        }
    }

    /// Answers the direct requests now at the head of the queue (their turn has come).
    fn drain_direct(&mut self, out: &mut Vec<u8>, sink: &mut dyn Sink) -> Result<(), Fatal> {
        while self.in_flight.front().is_some_and(|r| r.direct) {
            let Some(request) = self.in_flight.pop_front() else {
                break;
            };
            if let Some(answer) = request.local {
                self.answer_local(&request, answer, out, sink)?;
            }
        }
        Ok(())
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
            ("service", request.service_label.as_str()),
            ("method", request.method_label.as_str()),
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
        let active = self.in_flight.iter().filter(|r| r.local.is_none()).count();
        if active > 0 {
            let active = i64::try_from(active).unwrap_or(i64::MAX);
            sink.gauge(
                &stats::name(stats::ACTIVE, &[("protocol", C::PROTOCOL)]),
                active.saturating_neg(),
            );
        }
        self.in_flight.clear();
        self.handed.clear();
        self.backlog.clear();
        self.response_partial.clear();
        self.stopped_at_limit = false;
        self.passing = 0;
        if let Some(h2) = &mut self.h2 {
            h2.order.clear();
            h2.oneway_in_flight = 0;
        }
    }
}

/// Where a request goes in HTTP terms: `POST /<service>/<method>`, authority = the service
/// (percent-encoded so any name is a valid authority), and its headers.
struct Target<'m> {
    path: String,
    authority: String,
    rid: String,
    metadata: Vec<(String, &'m str)>,
}

impl<'m> Target<'m> {
    fn of(service: &str, method: &str, message: &'m Message) -> Self {
        let mut path =
            String::with_capacity(service.len().saturating_add(method.len()).saturating_add(2));
        path.push('/');
        http1::encode_path_segment(&mut path, service);
        path.push('/');
        http1::encode_path_segment(&mut path, method);
        let mut authority = String::with_capacity(service.len());
        http1::encode_authority(&mut authority, service);
        Self {
            path,
            authority,
            rid: message.request_id.to_string(),
            metadata: bridge::metadata_headers(&message.metadata),
        }
    }

    /// The kind, the request id and the metadata as headers.
    fn headers<'a>(&'a self, message: &Message) -> impl Iterator<Item = (&'a str, &'a str)> {
        [
            (KIND_HEADER, message.kind.as_str()),
            (RID_HEADER, self.rid.as_str()),
        ]
        .into_iter()
        .chain(self.metadata.iter().map(|(k, v)| (k.as_str(), *v)))
    }
}

/// A fresh unpredictable value: `RandomState` is seeded from the platform's randomness
/// (WASI `random_get` under Envoy) and gives every instance new keys.
/// Why calls are refused when HCM drains an HTTP/2 connection.
const H2_DRAINING: &str = "envoy is draining this connection (HTTP/2 GOAWAY)";
/// Why calls are refused when HCM closes an HTTP/1.1 connection after an answer.
const HTTP1_CLOSING: &str = "envoy is closing this connection (draining); the call did not run";

/// The answer Envoy would give a call it refuses for lack of a connection: 503.
fn unavailable(reason: &str) -> http1::Parsed {
    http1::Parsed {
        status: 503,
        path: String::new(),
        headers: Vec::new(),
        body: reason.as_bytes().to_vec(),
        len: 0,
    }
}

/// Whether HCM's answer says it closes the connection after it (HTTP/1.1 `connection: close`;
/// header names are lower-cased by the parser, values compared without case).
fn closes_connection(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(name, value)| {
        name == "connection"
            && value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("close"))
    })
}

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
