//! Frames the codec writes itself: error responses, heartbeat replies, delivery probes and the
//! read-only notice.
//!
//! Error responses are exactly what a Java provider sends for a non-OK status: a response
//! header with that status, Hessian2 serialization, and a body holding one Hessian string (the
//! error message, read by Java consumers with `readUTF`). Every consumer checked turns it into
//! an RPC failure: Java's `DefaultFuture` raises `RemotingException`/`TimeoutException`
//! (wrapped in `RpcException`, so cluster failover applies), dubbo-remoting (sofa-rpc-node)
//! reads the string into an `Error`, dubbo2.js rejects with a `DubboDecodeError` carrying the
//! raw body text, and dubbo-ssl-python raises `DubboResponseException` with the message.

use meltemi_sdk::ErrorKind;

use crate::header::{status, Header, FLAG_EVENT, FLAG_REQUEST, FLAG_TWO_WAY, HEADER_LEN, HESSIAN2};
use crate::hessian::writer::{write_null, write_string};

/// The response status sent for a framework error.
///
/// - `Timeout` → 31 SERVER_TIMEOUT, not 30: CLIENT_TIMEOUT is what a consumer records for
///   itself when its own timer fires and is never sent on the wire; from the consumer's side
///   the proxy is the server, and a server-side timeout is 31. Java consumers raise
///   `TimeoutException` for both, so the difference is only in the truth of the message.
/// - `Unavailable` and `Unauthorized` → 70 SERVICE_ERROR: that is what a Java provider sends
///   when it cannot run the invocation (no exported invoker for the service, or a provider
///   filter such as `TokenFilter` refusing it: the exception escapes `reply()` and
///   `HeaderExchangeHandler` answers SERVICE_ERROR).
/// - `Internal` → 80 SERVER_ERROR: a failure of the server side itself, not of the service.
pub fn status_for(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::RouteNotFound => status::SERVICE_NOT_FOUND,
        ErrorKind::OverLimit => status::SERVER_THREADPOOL_EXHAUSTED_ERROR,
        ErrorKind::Timeout => status::SERVER_TIMEOUT,
        ErrorKind::BadResponse => status::BAD_RESPONSE,
        ErrorKind::BadRequest => status::BAD_REQUEST,
        ErrorKind::Unavailable | ErrorKind::Unauthorized => status::SERVICE_ERROR,
        // Internal, and kinds a later SDK adds.
        _ => status::SERVER_ERROR,
    }
}

/// Default message when the framework gives no detail.
fn default_message(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::RouteNotFound => "no route for this service",
        ErrorKind::Unavailable => "no healthy upstream for this service",
        ErrorKind::OverLimit => "request refused: over limit",
        ErrorKind::Unauthorized => "request refused: unauthorized",
        ErrorKind::Timeout => "request timed out",
        ErrorKind::BadResponse => "upstream sent an invalid response",
        ErrorKind::BadRequest => "request refused: bad request",
        _ => "internal proxy error",
    }
}

fn frame(flags: u8, status: u8, request_id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN.saturating_add(body.len()));
    Header {
        flags,
        status,
        request_id,
        body_len: body.len(),
    }
    .write(&mut out);
    out.extend_from_slice(body);
    out
}

/// A non-OK response to `request_id` with the error message as body.
pub fn error_reply(request_id: u64, kind: ErrorKind, detail: &str) -> Vec<u8> {
    let msg = if detail.is_empty() {
        default_message(kind)
    } else {
        detail
    };
    let mut body = Vec::with_capacity(msg.len().saturating_add(3));
    write_string(&mut body, msg);
    frame(HESSIAN2, status_for(kind), request_id, &body)
}

/// The heartbeat response: event flag, status OK, body Hessian null.
pub fn heartbeat_reply(request_id: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(1);
    write_null(&mut body);
    frame(FLAG_EVENT | HESSIAN2, status::OK, request_id, &body)
}

/// A two-way heartbeat request with `request_id`: every Dubbo provider answers it at once.
pub fn heartbeat_request(request_id: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(1);
    write_null(&mut body);
    frame(
        FLAG_REQUEST | FLAG_TWO_WAY | FLAG_EVENT | HESSIAN2,
        0,
        request_id,
        &body,
    )
}

/// The read-only event a Java provider sends to its consumers when it shuts down
/// (`HeaderExchangeServer.sendChannelReadOnlyEvent`): a one-way event request whose body is the
/// Hessian string `"R"`. Consumers that honour it (Apache Dubbo's `HeaderExchangeHandler`) mark
/// the channel read-only and send their next calls elsewhere. Nothing answers it, so its
/// request id is never matched: 0.
pub fn readonly_event() -> Vec<u8> {
    let mut body = Vec::with_capacity(2);
    write_string(&mut body, "R");
    frame(FLAG_REQUEST | FLAG_EVENT | HESSIAN2, 0, 0, &body)
}
