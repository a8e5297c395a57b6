//! The codec contract: the one trait a protocol author implements.
//!
//! A codec is pure Rust: it never touches proxy-wasm, never allocates connection buffers and never
//! decides routing. The framework calls it to cut a byte stream into messages, to rewrite a message
//! with a mutation, and to build the protocol's own replies (errors, heartbeats).
//!
//! # Two values per connection
//! The framework keeps **two** codec values for each side of a connection, both made by
//! [`Codec::new`] from the same configuration:
//! - the *stream* value decodes the peer's byte stream (client requests on the front, server
//!   answers on the back) and builds replies to what it decoded: [`Codec::decode`] on the
//!   stream, [`Codec::error_reply`], [`Codec::heartbeat_reply`], [`Codec::is_probe_answer`];
//! - the *frame* value decodes whole frames carried in HTTP bodies (the request on the back, an
//!   answer on the front) and rewrites or follows them: [`Codec::decode`] on one whole frame,
//!   [`Codec::encode`], [`Codec::delivery_probe`].
//!
//! Keeping them apart means a resumable stream decoder is never interrupted by a frame from
//! elsewhere. So a codec must not rely on state learned by one value being visible in the
//! other: whatever a reply or a probe needs about a request travels in that request's
//! [`Message`] (its `metadata` and `context`), and `delivery_probe` must work from the one-way
//! call's `Message` alone (the frame value decoded that call just before). Within one value,
//! state learned from earlier messages (a detected transport or protocol version) is fine.

use std::any::Any;
use std::fmt;

use serde::de::DeserializeOwned;

use crate::metadata::Metadata;

/// What a decoded message is, as far as the bridge cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A call that expects exactly one response.
    Request,
    /// A call that never gets a response (Thrift `oneway`, Dubbo two-way flag unset).
    OneWay,
    /// A successful response.
    Response,
    /// A response that carries an application-level error (declared exception, non-OK status).
    /// It is forwarded like any response, but counted as a business error.
    Exception,
    /// A keep-alive that expects a [`MessageKind::HeartbeatReply`]; the bridge answers it
    /// without reaching the server.
    Heartbeat,
    /// The answer to a heartbeat.
    HeartbeatReply,
}

impl MessageKind {
    /// True for messages a client sends (requests, one-way calls, heartbeats).
    pub fn is_request(self) -> bool {
        matches!(self, Self::Request | Self::OneWay | Self::Heartbeat)
    }

    /// Lower-case name used on the bridge wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::OneWay => "oneway",
            Self::Response => "response",
            Self::Exception => "exception",
            Self::Heartbeat => "heartbeat",
            Self::HeartbeatReply => "heartbeat-reply",
        }
    }

    /// Inverse of [`MessageKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "request" => Self::Request,
            "oneway" => Self::OneWay,
            "response" => Self::Response,
            "exception" => Self::Exception,
            "heartbeat" => Self::Heartbeat,
            "heartbeat-reply" => Self::HeartbeatReply,
            _ => return None,
        })
    }
}

/// One complete message found at the start of a buffer by [`Codec::decode`].
///
/// Built with [`Message::new`] (fields may be added in later versions, so codecs outside this
/// crate cannot use a struct literal); every field is public to read and to set.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// Length in bytes of the whole frame, headers included. The framework forwards exactly
    /// these bytes and hands the rest of the buffer to the next `decode` call.
    pub len: usize,
    /// What the message is.
    pub kind: MessageKind,
    /// The protocol's request id (Dubbo request id, Thrift seqid, ...): a response carries the id
    /// of its request. Protocols without ids use 0.
    pub request_id: u64,
    /// Ordered key/values routes can match on. Conventional keys: `service` (the interface or
    /// service name, if the frame carries one) and `method`. Everything else is protocol-specific
    /// (`version`, `group`, attachments, THeader info headers, ...).
    pub metadata: Metadata,
    /// Codec-private facts about this message that replies to it need later, of the codec's
    /// own type (Thrift keeps the THeader sequence id and the exact protocol here; a JSON-RPC
    /// codec could keep its string request id). The framework carries it untouched from
    /// `decode` to `error_reply`, `heartbeat_reply` and `delivery_probe`; empty when unused.
    pub context: Context,
}

/// A codec's own per-message value (see [`Message::context`]): any type with `Debug` and
/// `PartialEq`, set with [`Message::with_context`] and read back with [`Context::get`].
///
/// ```
/// use meltemi_sdk::{Message, MessageKind};
///
/// #[derive(Debug, PartialEq)]
/// struct JsonRpcId(String);
///
/// let m = Message::new(10, MessageKind::Request, 0).with_context(JsonRpcId("a-7".into()));
/// assert_eq!(m.context.get::<JsonRpcId>(), Some(&JsonRpcId("a-7".into())));
/// assert_eq!(m.context.get::<u64>(), None);
/// ```
#[derive(Clone, Default)]
pub struct Context(Option<std::rc::Rc<dyn ContextValue>>);

impl Context {
    /// A context holding `value`.
    pub fn new<T: Any + fmt::Debug + PartialEq>(value: T) -> Self {
        Self(Some(std::rc::Rc::new(value)))
    }

    /// The value, if one of type `T` is held.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.as_deref()?.as_any().downcast_ref()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => f.debug_tuple("Context").field(v).finish(),
            None => f.write_str("Context(empty)"),
        }
    }
}

impl PartialEq for Context {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => a.eq_dyn(b.as_ref()),
            _ => false,
        }
    }
}

impl Eq for Context {}

/// What a context value must be: comparable and printable behind `dyn`.
trait ContextValue: fmt::Debug {
    fn as_any(&self) -> &dyn Any;
    fn eq_dyn(&self, other: &dyn ContextValue) -> bool;
}

impl<T: Any + fmt::Debug + PartialEq> ContextValue for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn eq_dyn(&self, other: &dyn ContextValue) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
}

impl Message {
    /// A message of `len` bytes, of `kind`, with `request_id`, no metadata and no context.
    pub fn new(len: usize, kind: MessageKind, request_id: u64) -> Self {
        Self {
            len,
            kind,
            request_id,
            metadata: Metadata::new(),
            context: Context::default(),
        }
    }

    /// The same with `metadata`.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// The same with codec-private `context`, a value of the codec's own type.
    pub fn with_context<T: Any + fmt::Debug + PartialEq>(mut self, context: T) -> Self {
        self.context = Context::new(context);
        self
    }
}

/// Why the framework answers a request itself instead of relaying a server response.
///
/// New kinds may be added: a codec's `match` needs a catch-all arm (usually its generic
/// "internal error" reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No route matched the request (HTTP 404 from Envoy's router).
    RouteNotFound,
    /// No healthy upstream, connection failure or upstream reset (HTTP 503).
    Unavailable,
    /// A rate limit or a connection limit refused the request (HTTP 429, pending-request limit).
    OverLimit,
    /// An authorization policy denied the request (HTTP 403).
    Unauthorized,
    /// The route's timeout expired (HTTP 504).
    Timeout,
    /// The server answered with something that is not a valid response.
    BadResponse,
    /// The request was refused before routing (too many metadata entries, malformed for the bridge).
    BadRequest,
    /// Anything else (HTTP 500, unexpected status codes, fault-injected aborts with other codes).
    Internal,
}

impl ErrorKind {
    /// Every kind, in a stable order (for metrics and tests).
    pub const ALL: [ErrorKind; 8] = [
        Self::RouteNotFound,
        Self::Unavailable,
        Self::OverLimit,
        Self::Unauthorized,
        Self::Timeout,
        Self::BadResponse,
        Self::BadRequest,
        Self::Internal,
    ];

    /// Snake-case name used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RouteNotFound => "route_not_found",
            Self::Unavailable => "unavailable",
            Self::OverLimit => "over_limit",
            Self::Unauthorized => "unauthorized",
            Self::Timeout => "timeout",
            Self::BadResponse => "bad_response",
            Self::BadRequest => "bad_request",
            Self::Internal => "internal",
        }
    }
}

/// Whether a [`CodecError`] means the stream is unusable or only that an operation is not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecErrorKind {
    /// The bytes are not valid for the protocol; the connection cannot continue.
    Malformed,
    /// The codec cannot do what was asked for this message (e.g. a mutation on a transport with
    /// nowhere to put it). The framework forwards the message unchanged and counts it.
    Unsupported,
}

/// The error type of every codec operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError {
    kind: CodecErrorKind,
    message: String,
}

impl CodecError {
    /// The stream is corrupt: the connection will be closed and `decode_errors` incremented.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self {
            kind: CodecErrorKind::Malformed,
            message: message.into(),
        }
    }

    /// The operation is not available for this message; nothing is lost.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self {
            kind: CodecErrorKind::Unsupported,
            message: message.into(),
        }
    }

    /// Which of the two it is.
    pub fn kind(&self) -> CodecErrorKind {
        self.kind
    }

    /// Human-readable detail.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            CodecErrorKind::Malformed => "malformed",
            CodecErrorKind::Unsupported => "unsupported",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

impl std::error::Error for CodecError {}

/// A protocol, as the Meltemi framework sees it.
///
/// Four methods are required; two have defaults. All of them must be total: any input, however
/// hostile, returns a value or an error and never panics (a panic traps the wasm VM for every
/// connection of that Envoy worker).
pub trait Codec: Sized + 'static {
    /// Protocol name: the `protocol` label of every metric.
    const PROTOCOL: &'static str;

    /// Whether the protocol's clients match answers to requests by request id, so that the
    /// bridge may return each answer as soon as it is ready even when an earlier call is still
    /// running (HTTP/2 toward HCM, `"hcm_protocol": "http2"`). `false` (the default): answers
    /// are returned in request order, a finished answer held until the earlier ones are written.
    const ANSWERS_IN_ANY_ORDER: bool = false;

    /// Codec-specific configuration: the `codec` object of the filter configuration.
    /// Unknown or ill-typed fields must be rejected by its `Deserialize` impl so that Envoy
    /// refuses the configuration instead of running with a surprise.
    type Config: DeserializeOwned + Default + Clone + 'static;

    /// A fresh codec for one side of one connection.
    fn new(config: &Self::Config) -> Self;

    /// Look at the bytes buffered so far (the start of the buffer is always a frame boundary).
    ///
    /// - `Ok(None)`: not enough bytes yet; the framework waits for more (and refuses the frame
    ///   once it would exceed the configured size limit).
    /// - `Ok(Some(message))`: one complete message of `message.len` bytes starts the buffer.
    /// - `Err(malformed)`: the stream is corrupt; the framework closes this connection only.
    ///
    /// After `Ok(None)`, the next call on the same codec value sees the same bytes followed by
    /// more (until a message is returned), so a codec may remember how far it got and resume
    /// instead of re-reading the prefix: protocols whose frame length is only known at its end
    /// (unframed Thrift) must, or a slow sender makes decoding quadratic.
    fn decode(&mut self, buf: &[u8]) -> Result<Option<Message>, CodecError>;

    /// Write `frame` (exactly one message, as decoded into `message`) to `out` with `mutation`
    /// applied: each key/value is set on the message (replacing an existing key), lengths fixed
    /// up. Called only when `mutation` is not empty; untouched messages are never re-encoded.
    ///
    /// Return `Err(unsupported)` when the message has nowhere to carry the mutation: the frame
    /// is then forwarded unchanged and the refusal counted.
    fn encode(
        &mut self,
        frame: &[u8],
        message: &Message,
        mutation: &Metadata,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError>;

    /// The protocol's own error response to `request` (same request id, same framing as the
    /// client used), for a failure the framework or Envoy detected. `detail` is a short
    /// human-readable reason to embed where the protocol has room for one. `None` when the
    /// protocol has no way to express an error: the framework then closes the connection.
    fn error_reply(&mut self, request: &Message, kind: ErrorKind, detail: &str) -> Option<Vec<u8>>;

    /// The reply to a [`MessageKind::Heartbeat`] request, built without reaching the server.
    fn heartbeat_reply(&mut self, _request: &Message) -> Option<Vec<u8>> {
        None
    }

    /// A request the server answers at once, with request id `oneway.request_id`, sent right
    /// after the one-way call `oneway` (a heartbeat where the protocol has one).
    ///
    /// Envoy's router needs an answer for every request it forwards, but a one-way call never
    /// gets one and a network filter cannot write toward Envoy on its own. The server's answer
    /// to this probe is swallowed and acknowledges the one-way call instead. `None`: the bridge
    /// closes the upstream connection after forwarding the call, which Envoy sees as a reset.
    fn delivery_probe(&mut self, _oneway: &Message) -> Option<Vec<u8>> {
        None
    }

    /// A notice telling the client to send no more calls on this connection (the protocol's
    /// going-away signal), written to it just before Envoy closes the connection while it
    /// drains (hot restart, listener update): a client that honours it moves its next calls to
    /// another connection instead of losing them to the close. `None` (the default): the
    /// protocol has no such signal. Dubbo's is the read-only event.
    fn going_away(&mut self) -> Option<Vec<u8>> {
        None
    }

    /// Whether `message` (carrying a one-way call's request id) is the server's answer to the
    /// [`Codec::delivery_probe`]. Anything else with that id — some servers answer one-way
    /// calls anyway — is dropped. The default fits heartbeat probes.
    fn is_probe_answer(&self, message: &Message) -> bool {
        message.kind == MessageKind::HeartbeatReply
    }
}
