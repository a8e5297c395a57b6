//! Meltemi Thrift codec: Apache Thrift / fbthrift RPC as a Meltemi [`Codec`].
//!
//! Supports every combination real Thrift stacks speak:
//! - transports: framed, unframed (buffered), THeader; detected per connection when `auto`;
//! - protocols: binary strict (`0x8001`) and old non-strict, compact; detected when `auto`,
//!   named by the frame itself under THeader;
//! - TMultiplexedProtocol names (`Service:method`).
//!
//! # Why hand-written
//! Thrift libraries (the `thrift` crate, `thrift_codec`, ...) deserialize into owned values of a
//! generated or generic type, need the whole message, and panic or allocate per field. A proxy
//! needs the opposite: find the message end without materialising anything, read only the
//! header (and for a reply, the first field id), survive hostile input in a wasm VM, and tell
//! "need more bytes" from "corrupt". None fits, so the readers here are small and zero-copy.
//!
//! # Metadata
//! `service` (only for `Service:method` names; `method` is then the part after the first colon),
//! `method`, `message_type` (`call`, `reply`, `exception`, `oneway`), `dialect`
//! (`<transport>-<protocol>`, e.g. `framed-compact`: deployments pool server connections per
//! dialect with it, so a server sees one dialect per connection), then every THeader info
//! header verbatim (both INFO_KEYVALUE and INFO_PKEYVALUE, in wire order; bytes that are not
//! UTF-8 are replaced with U+FFFD). The codec's own keys come first, so `Metadata::get` returns
//! them even if an info header reuses a name.
//!
//! `request_id` is the message seqid: the i32's bit pattern as u32, widened to u64 (seqid -1 is
//! `0xffff_ffff`), so a response matches its request whatever the sign.
//!
//! # Kinds
//! CALL → Request, ONEWAY → OneWay, EXCEPTION (TApplicationException) → Exception, REPLY →
//! Response unless the result struct's first field is not field 0 (the success slot), which is
//! a declared exception → Exception. An empty result struct (a `void` method) is a Response.
//! A THeader frame without a message (C++ clients send one when they close) is a Heartbeat
//! with `message_type` `empty_frame`, answered with nothing.
//!
//! # Resumable decoding
//! An unframed message has no length: its end is found by skipping its whole body, and until
//! the last byte has arrived every call answers `Ok(None)`. Re-skipping from the message start
//! on each call would make a slow sender (a message of megabytes trickling in, a few bytes per
//! read; the framework's default limit is 16 MiB) cost quadratic CPU on Envoy's worker: a 4 MiB
//! message in 1 KiB reads walked ~8.9 GB. [`Codec::decode`] promises that after `Ok(None)` the
//! next call sees the same bytes followed by more, so the codec keeps its progress instead (the
//! private `Progress`): for unframed streams the skip walk itself (offset and explicit stack,
//! see `skip.rs`), which carries on where it ran short; for framed and THeader the frame length,
//! once every check possible on a prefix passed, so that further calls only compare lengths.
//! A call therefore costs O(1) plus the bytes that are new, whatever the read sizes. Resuming
//! never changes a result: each step of the walk depends only on bytes already buffered and
//! commits only once complete, so the messages, lengths and errors are exactly those of a fresh
//! codec given the whole buffer (the `chunked_*` property tests and the fuzz target check this).
//! The progress is dropped whenever a call returns a message or an error, and also if a buffer
//! is ever shorter than the last one (not a grown prefix: the contract was broken, so nothing
//! is trusted).

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

mod binary;
mod compact;
pub mod config;
mod cursor;
mod header;
mod message;
pub mod reply;
mod skip;
pub mod transport;

use meltemi_sdk::{Codec, CodecError, ErrorKind, Message, MessageKind, Metadata};

pub use config::{Config, OnewayAck, ProtocolConfig, TransportConfig};
pub use message::Protocol;
pub use transport::Transport;

use cursor::{malformed, Cursor, DecodeError, Res};
use message::{MessageHead, MessageType};

/// What an error reply or a probe needs about a request beyond its metadata and seqid: the
/// exact protocol it used and its THeader frame seqid. Kept in [`Message::context`], so it
/// travels with the request however many others are pipelined behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReplyContext {
    protocol: Protocol,
    header_seqid: Option<i32>,
}

/// An empty THeader frame (header, no message) as a message of its own: a
/// [`MessageKind::Heartbeat`] that nothing answers.
///
/// The C++ `THeaderTransport` (libthriftz) writes such a frame whenever it is flushed with
/// nothing buffered, and `close()` always flushes: every C++ THeader client ends its connection
/// with one (bytes `0000000e 0fff 0000 <seqid> 0001 02000000`, captured from libthrift 0.17).
/// It is not corrupt, so it must not close the connection or count as a decode error, and it
/// must be consumed so that a frame after it (a flush in the middle of a connection) is not
/// held back. The framework answers a heartbeat locally without reaching a server, and writes
/// nothing to the client because the codec has no heartbeat reply: the C++ client expects no
/// answer to an empty frame.
fn empty_header_frame(frame: &header::HeaderFrame<'_>) -> Message {
    let protocol = match frame.protocol_id {
        2 => Protocol::Compact,
        _ => Protocol::Binary { strict: true },
    };
    let mut metadata = Metadata::new();
    metadata.push("message_type", "empty_frame");
    Message::new(
        frame.total_len,
        MessageKind::Heartbeat,
        u64::from(frame.seqid as u32),
    )
    .with_metadata(metadata)
    .with_context(ReplyContext {
        protocol,
        header_seqid: Some(frame.seqid),
    })
}

/// The Thrift codec: one value per connection side. It remembers the detected transport and
/// protocol and how far it got into an incomplete message.
#[derive(Debug, Clone)]
pub struct ThriftCodec {
    config: Config,
    transport: Option<Transport>,
    protocol: Option<Protocol>,
    progress: Progress,
}

/// What is already known about the incomplete message at the start of the buffer after an
/// `Ok(None)`, so that the next call (the same bytes plus more) carries on instead of starting
/// over. See "Resumable decoding" in the crate docs. Cleared whenever a call returns a message
/// or an error.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// Buffer length at the last `Ok(None)`. A shorter buffer cannot be the same stream grown
    /// (the framework never does that); the progress is then dropped rather than trusted.
    seen: usize,
    /// Framed or THeader: the whole frame length, set once every check that can be made on a
    /// prefix (length, magic, message header) passed. Until that many bytes are buffered there
    /// is nothing new to look at.
    frame_len: Option<usize>,
    /// Unframed: the skip walk over the message body (its header already checked).
    walk: skip::Walk,
}

impl Progress {
    fn reset(&mut self) {
        self.seen = 0;
        self.frame_len = None;
        self.walk.reset();
    }
}

impl ThriftCodec {
    /// The transport in use on this connection, once detected.
    pub fn transport(&self) -> Option<Transport> {
        self.transport
    }

    /// The protocol of the last decoded message.
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    fn max_depth(&self) -> usize {
        self.config.max_depth.max(1) as usize
    }

    /// The protocol of a body outside THeader: configured, or sniffed and then locked to the
    /// family first seen on the connection.
    fn body_protocol(&self, body: &[u8]) -> Res<Protocol> {
        let proto = match self.config.protocol {
            ProtocolConfig::Binary => Protocol::Binary { strict: true },
            ProtocolConfig::Compact => Protocol::Compact,
            ProtocolConfig::Auto => transport::sniff_protocol(body)?,
        };
        if let Some(seen) = self.protocol {
            if !seen.same_family(proto) {
                return malformed("thrift protocol changed mid-connection");
            }
        }
        Ok(proto)
    }

    /// Decode with [`Progress`] kept across `Incomplete` and dropped otherwise.
    fn decode_inner(&mut self, buf: &[u8]) -> Res<Message> {
        if buf.len() < self.progress.seen {
            self.progress.reset();
        }
        let result = match self.progress.frame_len {
            Some(total) if buf.len() < total => Err(DecodeError::Incomplete),
            _ => self.decode_message(buf),
        };
        match result {
            Err(DecodeError::Incomplete) => self.progress.seen = buf.len(),
            _ => self.progress.reset(),
        }
        result
    }

    fn decode_message(&mut self, buf: &[u8]) -> Res<Message> {
        let transport = match (self.transport, self.config.transport) {
            (Some(t), _) => t,
            (None, TransportConfig::Auto) => transport::detect(buf)?,
            (None, TransportConfig::Framed) => Transport::Framed,
            (None, TransportConfig::Unframed) => Transport::Unframed,
            (None, TransportConfig::Header) => Transport::Header,
        };
        self.transport = Some(transport);

        let mut metadata = Metadata::new();
        let (len, head, first_field, header_seqid) = match transport {
            Transport::Framed => {
                let body_len = transport::framed_len(buf)?;
                // body_len <= MAX_FRAME (2^30 - 1), so this fits a 32-bit usize (wasm32).
                let total = body_len.checked_add(4).ok_or_else(|| {
                    DecodeError::Malformed(format!("thrift frame size {body_len} overflows"))
                })?;
                let avail = buf.get(4..).unwrap_or_default();
                let Some(body) = avail.get(..body_len) else {
                    // Fail fast on garbage: check the message header as far as it has arrived.
                    let proto = self.body_protocol(avail)?;
                    read_head(&mut Cursor::open(avail), proto)?;
                    // Nothing else can be checked before the whole frame is here.
                    self.progress.frame_len = Some(total);
                    return Err(DecodeError::Incomplete);
                };
                let mut cur = Cursor::bounded(body);
                let head = read_head(&mut cur, self.body_protocol(body)?)?;
                let first = reply_first_field(&mut cur, &head)?;
                (total, head, first, None)
            }
            Transport::Unframed => {
                let max_depth = self.max_depth();
                let mut fresh = None;
                if !self.progress.walk.active() {
                    let mut cur = Cursor::open(buf);
                    let head = read_head(&mut cur, self.body_protocol(buf)?)?;
                    self.progress.walk.begin(cur.pos(), head.protocol);
                    fresh = Some(head);
                }
                let (end, first) = self.progress.walk.resume(buf, max_depth)?;
                let head = match fresh {
                    Some(head) => head,
                    // Checked by the call that began the walk; read again (once per message)
                    // only for the name it borrows from this buffer.
                    None => read_head(&mut Cursor::open(buf), self.body_protocol(buf)?)?,
                };
                (end, head, first, None)
            }
            Transport::Header => {
                let total = header::frame_total(buf)?;
                if buf.len() < total {
                    self.progress.frame_len = Some(total);
                    return Err(DecodeError::Incomplete);
                }
                let frame = header::parse(buf)?;
                if frame.payload.is_empty() {
                    return Ok(empty_header_frame(&frame));
                }
                let proto = match frame.protocol_id {
                    2 => Protocol::Compact,
                    _ => Protocol::Binary { strict: true },
                };
                let mut cur = Cursor::bounded(frame.payload);
                let head = read_head(&mut cur, proto)?;
                let first = reply_first_field(&mut cur, &head)?;
                for h in &frame.headers {
                    metadata.push(
                        String::from_utf8_lossy(h.key),
                        String::from_utf8_lossy(h.value),
                    );
                }
                (frame.total_len, head, first, Some(frame.seqid))
            }
        };

        let kind = match head.mtype {
            MessageType::Call => MessageKind::Request,
            MessageType::Oneway => MessageKind::OneWay,
            MessageType::Exception => MessageKind::Exception,
            MessageType::Reply => match first_field {
                Some(id) if id != 0 => MessageKind::Exception,
                _ => MessageKind::Response,
            },
        };

        let mut own = Metadata::new();
        let name = String::from_utf8_lossy(head.name);
        match name.split_once(':') {
            Some((service, method)) => {
                own.push("service", service);
                own.push("method", method);
            }
            None => own.push("method", name.as_ref()),
        }
        own.push("message_type", head.mtype.as_str());
        // The client's dialect, so that a deployment can keep pooled server connections apart
        // per dialect (a server must see one dialect per connection).
        own.push("dialect", dialect(transport, head.protocol));
        for (k, v) in metadata.iter() {
            own.push(k, v);
        }

        self.protocol = Some(head.protocol);
        Ok(Message::new(len, kind, u64::from(head.seqid as u32))
            .with_metadata(own)
            .with_context(ReplyContext {
                protocol: head.protocol,
                header_seqid,
            }))
    }

    /// The name, seqid, protocol and THeader seqid to answer `request` with: from its
    /// metadata and context, or (for a message this codec did not decode) from the
    /// connection's state.
    fn reply_target(&self, request: &Message) -> Option<(Vec<u8>, i32, Protocol, Option<i32>)> {
        let seqid = request.request_id as u32 as i32;
        let method = request.metadata.get("method")?;
        // Decoding split the name at its first colon; joining restores it as sent.
        let name = match request.metadata.get("service") {
            Some(service) => format!("{service}:{method}"),
            None => method.to_owned(),
        };
        let (protocol, header_seqid) = match request.context.get::<ReplyContext>() {
            Some(ctx) => (ctx.protocol, ctx.header_seqid),
            None => (
                self.protocol?,
                (self.transport == Some(Transport::Header)).then_some(seqid),
            ),
        };
        Some((name.into_bytes(), seqid, protocol, header_seqid))
    }
}

fn read_head<'a>(cur: &mut Cursor<'a>, proto: Protocol) -> Res<MessageHead<'a>> {
    match proto {
        Protocol::Binary { .. } => binary::read_message_begin(cur),
        Protocol::Compact => compact::read_message_begin(cur),
    }
}

/// For a REPLY inside a known frame, only the result struct's first field header is read.
fn reply_first_field(cur: &mut Cursor<'_>, head: &MessageHead<'_>) -> Res<Option<i16>> {
    if head.mtype == MessageType::Reply {
        skip::first_field_id(cur, head.protocol)
    } else {
        Ok(None)
    }
}

impl Codec for ThriftCodec {
    const PROTOCOL: &'static str = "thrift";
    type Config = Config;

    fn new(config: &Config) -> Self {
        Self {
            config: config.clone(),
            transport: None,
            protocol: None,
            progress: Progress::default(),
        }
    }

    fn decode(&mut self, buf: &[u8]) -> Result<Option<Message>, CodecError> {
        match self.decode_inner(buf) {
            Ok(m) => Ok(Some(m)),
            Err(DecodeError::Incomplete) => Ok(None),
            Err(DecodeError::Malformed(m)) => Err(CodecError::malformed(m)),
        }
    }

    /// Only THeader frames have somewhere to put key/values (info headers); other transports
    /// refuse rather than touch the frame.
    fn encode(
        &mut self,
        frame: &[u8],
        _message: &Message,
        mutation: &Metadata,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let transport = match self.transport {
            Some(t) => t,
            None => transport::detect(frame).unwrap_or(Transport::Unframed),
        };
        if transport != Transport::Header {
            return Err(CodecError::unsupported(format!(
                "thrift {} transport has no headers to carry a mutation",
                transport.as_str()
            )));
        }
        header::rewrite(frame, mutation, out)
    }

    fn error_reply(&mut self, request: &Message, kind: ErrorKind, detail: &str) -> Option<Vec<u8>> {
        let transport = self.transport?;
        let (name, seqid, protocol, header_seqid) = self.reply_target(request)?;
        let msg = reply::app_exception_message(
            protocol,
            &name,
            seqid,
            detail,
            reply::app_exception_type(kind),
        );
        reply::frame(transport, protocol, header_seqid.unwrap_or(seqid), msg)
    }

    /// An empty CALL to [`reply::PROBE_METHOD`] (prefixed with the one-way call's service when
    /// it was multiplexed, so a TMultiplexedProcessor routes it to a known service) with the
    /// one-way call's seqid. The server's UNKNOWN_METHOD exception acknowledges the call.
    fn delivery_probe(&mut self, oneway: &Message) -> Option<Vec<u8>> {
        if self.config.oneway_ack == OnewayAck::Close {
            return None;
        }
        let transport = self.transport?;
        let (name, seqid, protocol, header_seqid) = self.reply_target(oneway)?;
        let name = match name.iter().position(|b| *b == b':') {
            Some(i) => {
                let mut n = name.get(..=i)?.to_vec();
                n.extend_from_slice(reply::PROBE_METHOD.as_bytes());
                n
            }
            None => reply::PROBE_METHOD.as_bytes().to_vec(),
        };
        let msg = reply::empty_call(protocol, &name, seqid);
        reply::frame(transport, protocol, header_seqid.unwrap_or(seqid), msg)
    }

    /// Real servers answer the probe call with an UNKNOWN_METHOD exception naming it.
    fn is_probe_answer(&self, message: &Message) -> bool {
        message.metadata.get("method") == Some(reply::PROBE_METHOD)
    }
}

/// `<transport>-<protocol>` as in `framed-binary`, `unframed-compact`, `header-binary`; the
/// old non-strict binary is `binary_nonstrict`.
fn dialect(transport: Transport, protocol: Protocol) -> &'static str {
    match (transport, protocol) {
        (Transport::Framed, Protocol::Binary { strict: true }) => "framed-binary",
        (Transport::Framed, Protocol::Binary { strict: false }) => "framed-binary_nonstrict",
        (Transport::Framed, Protocol::Compact) => "framed-compact",
        (Transport::Unframed, Protocol::Binary { strict: true }) => "unframed-binary",
        (Transport::Unframed, Protocol::Binary { strict: false }) => "unframed-binary_nonstrict",
        (Transport::Unframed, Protocol::Compact) => "unframed-compact",
        (Transport::Header, Protocol::Binary { .. }) => "header-binary",
        (Transport::Header, Protocol::Compact) => "header-compact",
    }
}

// The one line that makes this crate a proxy-wasm network filter (`meltemi_thrift.wasm`).
meltemi_sdk::export_codec!(ThriftCodec);

#[cfg(test)]
mod tests {
    use super::*;

    fn strict_call(name: &str, seqid: i32) -> Vec<u8> {
        let mut m = Vec::new();
        binary::write_message_begin(&mut m, name.as_bytes(), MessageType::Call, seqid, true);
        m.push(0);
        m
    }

    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut f = (msg.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(msg);
        f
    }

    #[test]
    fn reply_context_travels_in_the_message() {
        let ctx = ReplyContext {
            protocol: Protocol::Compact,
            header_seqid: Some(-1),
        };
        let m = Message::new(1, MessageKind::Request, 0).with_context(ctx);
        assert_eq!(m.context.get::<ReplyContext>(), Some(&ctx));
        assert_eq!(m.clone(), m, "a cloned message keeps its context");
        assert!(Message::new(1, MessageKind::Request, 0).context.is_empty());
    }

    /// Pipelined THeader calls with the same name and message seqid (Apache's Python client
    /// sends seqid 0 every time) but different frame seqids: each error reply carries its own
    /// request's frame seqid, in whatever order the replies are built.
    #[test]
    fn error_replies_follow_each_request_not_the_latest_one() {
        let proto = Protocol::Binary { strict: true };
        let mut c = ThriftCodec::new(&Config::default());
        let mut requests = Vec::new();
        for frame_seqid in [5, 6] {
            let frame = reply::frame(
                Transport::Header,
                proto,
                frame_seqid,
                strict_call("fail", 0),
            )
            .unwrap();
            let m = c.decode(&frame).unwrap().unwrap();
            assert_eq!(m.len, frame.len());
            requests.push(m);
        }
        for (request, frame_seqid) in requests.iter().zip([5, 6]).rev() {
            let reply = c
                .error_reply(request, ErrorKind::RouteNotFound, "no route")
                .unwrap();
            let parsed = header::parse(&reply).unwrap();
            assert_eq!(parsed.seqid, frame_seqid);
        }
    }

    #[test]
    fn error_reply_needs_a_known_connection() {
        let mut c = ThriftCodec::new(&Config::default());
        let m = Message::new(1, MessageKind::Request, 1);
        assert_eq!(c.error_reply(&m, ErrorKind::Internal, "x"), None);
        assert_eq!(c.delivery_probe(&m), None);
    }

    #[test]
    fn protocol_family_is_locked_per_connection() {
        let mut c = ThriftCodec::new(&Config::default());
        assert!(c.decode(&framed(&strict_call("a", 1))).unwrap().is_some());
        let mut compact_msg = Vec::new();
        compact::write_message_begin(&mut compact_msg, b"a", MessageType::Call, 2);
        compact_msg.push(0);
        let err = c.decode(&framed(&compact_msg)).unwrap_err();
        assert!(err.message().contains("changed"));
    }

    #[test]
    fn configured_transport_is_trusted() {
        // A framed stream read as unframed never yields a message: the length is taken as a
        // non-strict name length.
        let cfg = Config {
            transport: TransportConfig::Unframed,
            ..Config::default()
        };
        let mut c = ThriftCodec::new(&cfg);
        assert!(!matches!(
            c.decode(&framed(&strict_call("echo", 1))),
            Ok(Some(_))
        ));
        let cfg = Config {
            protocol: ProtocolConfig::Compact,
            ..Config::default()
        };
        assert!(ThriftCodec::new(&cfg)
            .decode(&strict_call("echo", 1))
            .is_err());
    }

    #[test]
    fn theader_reply_keeps_header_seqid_and_protocol() {
        // THeader seqid 77 around a compact message with seqid 5.
        let mut msg = Vec::new();
        compact::write_message_begin(&mut msg, b"Svc:m", MessageType::Call, 5);
        msg.push(0);
        let mut frame = Vec::new();
        header::write_plain(&mut frame, 77, 2, &msg).unwrap();
        let mut c = ThriftCodec::new(&Config::default());
        let req = c.decode(&frame).unwrap().unwrap();
        assert_eq!(
            (
                req.request_id,
                req.metadata.get("service"),
                req.metadata.get("method")
            ),
            (5, Some("Svc"), Some("m"))
        );
        let reply = c
            .error_reply(&req, ErrorKind::OverLimit, "slow down")
            .unwrap();
        let parsed = header::parse(&reply).unwrap();
        assert_eq!((parsed.seqid, parsed.protocol_id), (77, 2));
        let head = compact::read_message_begin(&mut Cursor::bounded(parsed.payload)).unwrap();
        assert_eq!(
            (head.name, head.seqid, head.mtype),
            (&b"Svc:m"[..], 5, MessageType::Exception)
        );
        // Replies are built from the request itself: asking again gives the same frame.
        let again = c
            .error_reply(&req, ErrorKind::OverLimit, "slow down")
            .unwrap();
        assert_eq!(again, reply);
    }

    #[test]
    fn probe_keeps_the_service_prefix_and_seqid() {
        let mut msg = Vec::new();
        binary::write_message_begin(&mut msg, b"Echo:notify", MessageType::Oneway, -2, false);
        msg.push(0);
        let mut c = ThriftCodec::new(&Config {
            oneway_ack: OnewayAck::Probe,
            ..Config::default()
        });
        let ow = c.decode(&msg).unwrap().unwrap();
        assert_eq!((ow.kind, ow.request_id), (MessageKind::OneWay, 0xffff_fffe));
        assert_eq!(
            ThriftCodec::new(&Config::default()).delivery_probe(&ow),
            None,
            "closing is the default acknowledgement"
        );
        let probe = c.delivery_probe(&ow).unwrap();
        let mut expected = Vec::new();
        binary::write_message_begin(
            &mut expected,
            b"Echo:__meltemi_probe",
            MessageType::Call,
            -2,
            false,
        );
        expected.push(0);
        assert_eq!(probe, expected);
    }

    #[test]
    fn encode_refuses_non_header_transports() {
        let frame = framed(&strict_call("a", 1));
        let mut c = ThriftCodec::new(&Config::default());
        let m = c.decode(&frame).unwrap().unwrap();
        let mut out = Vec::new();
        let mutation: Metadata = [("k", "v")].into_iter().collect();
        let err = c.encode(&frame, &m, &mutation, &mut out).unwrap_err();
        assert_eq!(err.kind(), meltemi_sdk::CodecErrorKind::Unsupported);
        assert!(out.is_empty());
    }

    #[test]
    fn reply_with_declared_exception_and_void_success() {
        let mut c = ThriftCodec::new(&Config::default());
        for (body, kind) in [
            (&[0u8][..], MessageKind::Response), // void success
            (&[11, 0, 0, 0, 0, 0, 0, 0][..], MessageKind::Response), // field 0 = success
            (&[12, 0, 1, 0, 0][..], MessageKind::Exception), // field 1 = declared exception
        ] {
            let mut msg = Vec::new();
            binary::write_message_begin(&mut msg, b"m", MessageType::Reply, 3, true);
            msg.extend_from_slice(body);
            assert_eq!(c.decode(&framed(&msg)).unwrap().unwrap().kind, kind);
        }
    }

    /// A ~`target`-byte unframed CALL whose body is many small nested values (the shape that
    /// made re-skipping quadratic), followed by a large string and a nested struct.
    fn big_unframed(proto: Protocol, target: usize) -> Vec<u8> {
        let mut m = Vec::new();
        let mut elem = Vec::new();
        match proto {
            Protocol::Binary { strict } => {
                binary::write_message_begin(&mut m, b"Svc:bulk", MessageType::Call, 9, strict);
                // struct { 1: i32, 2: string, 3: map<i16, bool>{1: true}, 4: list<i64>[3] }
                elem.extend_from_slice(&[8, 0, 1, 0, 0, 0, 7]);
                elem.extend_from_slice(&[11, 0, 2, 0, 0, 0, 10]);
                elem.extend_from_slice(b"payload-xx");
                elem.extend_from_slice(&[13, 0, 3, 6, 2, 0, 0, 0, 1, 0, 1, 1]);
                elem.extend_from_slice(&[15, 0, 4, 10, 0, 0, 0, 3]);
                elem.extend_from_slice(&[0x55; 24]);
                elem.push(0);
                let n = target / elem.len();
                m.extend_from_slice(&[15, 0, 1, 12]);
                m.extend_from_slice(&(n as i32).to_be_bytes());
                for _ in 0..n {
                    m.extend_from_slice(&elem);
                }
                m.extend_from_slice(&[11, 0, 2]);
                m.extend_from_slice(&(64 * 1024i32).to_be_bytes());
                m.resize(m.len() + 64 * 1024, b's');
                m.extend_from_slice(&[12, 0, 3, 12, 0, 1, 8, 0, 1, 0, 0, 0, 1, 0, 0]);
            }
            Protocol::Compact => {
                compact::write_message_begin(&mut m, b"Svc:bulk", MessageType::Call, 9);
                elem.extend_from_slice(&[0x15, 0x0e, 0x18, 10]);
                elem.extend_from_slice(b"payload-xx");
                elem.extend_from_slice(&[0x1b, 1, 0x41, 2, 1]);
                elem.extend_from_slice(&[0x19, 0x36, 0xfe, 0xff, 0x01, 2, 4]);
                elem.push(0);
                let n = target / elem.len();
                m.push(0x19);
                m.push(0xfc);
                compact::write_varint(&mut m, n as u64);
                for _ in 0..n {
                    m.extend_from_slice(&elem);
                }
                m.push(0x18);
                compact::write_varint(&mut m, 64 * 1024);
                m.resize(m.len() + 64 * 1024, b's');
                m.extend_from_slice(&[0x1c, 0x1c, 0x15, 2, 0, 0]);
            }
        }
        m.push(0);
        m
    }

    /// Feed `msg` to one codec as growing prefixes, `step` bytes more each call, as the
    /// framework does. Returns the bytes the cursors moved over in total, the number of calls
    /// and the message.
    fn feed(msg: &[u8], step: usize) -> (u64, u64, Message) {
        let mut c = ThriftCodec::new(&Config::default());
        let before = cursor::advanced();
        let mut calls = 0;
        let mut n = 0;
        loop {
            n = (n + step).min(msg.len());
            calls += 1;
            match c.decode(&msg[..n]) {
                Ok(None) => assert!(n < msg.len(), "complete message refused"),
                Ok(Some(m)) => {
                    assert_eq!(n, msg.len(), "message decided on a prefix");
                    return (cursor::advanced() - before, calls, m);
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn slow_unframed_sender_costs_linear_work() {
        for proto in [
            Protocol::Binary { strict: true },
            Protocol::Binary { strict: false },
            Protocol::Compact,
        ] {
            let msg = big_unframed(proto, 4 << 20);
            let t = std::time::Instant::now();
            let (once, _, one_shot) = feed(&msg, msg.len());
            let t_once = t.elapsed();
            assert_eq!(one_shot.len, msg.len());
            assert_eq!(one_shot.metadata.get("method"), Some("bulk"));
            let t = std::time::Instant::now();
            let (slow, calls, m) = feed(&msg, 1024);
            let t_slow = t.elapsed();
            assert_eq!(m, one_shot);
            eprintln!(
                "{proto:?}: {} bytes; one shot moved over {once} bytes in {t_once:?}; \
                 1 KiB steps: {calls} calls, {slow} bytes ({:.2}x) in {t_slow:?}",
                msg.len(),
                slow as f64 / once as f64
            );
            // Each call re-reads at most one partial value header (a few bytes): linear.
            assert!(slow <= once + 64 * calls, "{slow} > {once} + 64 * {calls}");
        }
    }

    #[test]
    fn tiny_reads_cost_constant_work_each() {
        for proto in [Protocol::Binary { strict: true }, Protocol::Compact] {
            let msg = big_unframed(proto, 256 << 10);
            let (once, _, one_shot) = feed(&msg, msg.len());
            let (slow, calls, m) = feed(&msg, 1);
            assert_eq!(m, one_shot);
            eprintln!(
                "{proto:?} unframed, 1-byte steps: {calls} calls, {slow} bytes (one shot {once})"
            );
            // A call re-reads at most the header of the value it stopped in.
            assert!(slow <= once + 16 * calls, "{slow} > {once} + 16 * {calls}");

            // Framed and THeader know their length once the headers are in: after that a call
            // looks at nothing.
            let mut header_frame = Vec::new();
            header::write_plain(&mut header_frame, 9, proto.header_id(), &msg).unwrap();
            for frame in [framed(&msg), header_frame] {
                let (once, _, one_shot) = feed(&frame, frame.len());
                let (slow, calls, m) = feed(&frame, 1);
                assert_eq!(m, one_shot);
                eprintln!(
                    "{proto:?} frame, 1-byte steps: {calls} calls, {slow} bytes (one shot {once})"
                );
                assert!(slow <= 1024, "{slow} bytes for {calls} calls");
            }
        }
    }

    #[test]
    fn max_depth_applies_to_unframed_messages() {
        // struct { 1: struct { 1: struct {} } }: depth 3.
        let mut msg = Vec::new();
        binary::write_message_begin(&mut msg, b"m", MessageType::Call, 1, true);
        msg.extend_from_slice(&[12, 0, 1, 12, 0, 1, 0, 0, 0]);
        let ok = Config {
            max_depth: 3,
            ..Config::default()
        };
        assert!(ThriftCodec::new(&ok).decode(&msg).unwrap().is_some());
        let tight = Config {
            max_depth: 2,
            ..Config::default()
        };
        assert!(ThriftCodec::new(&tight).decode(&msg).is_err());
    }
}
