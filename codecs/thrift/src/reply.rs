//! Messages the codec writes itself: TApplicationException error replies and the delivery probe
//! (an empty CALL to a method no server implements), framed like the client's own traffic.

use meltemi_sdk::ErrorKind;

use crate::binary;
use crate::compact;
use crate::header;
use crate::message::{MessageType, Protocol};
use crate::transport::Transport;

/// Method name of the delivery probe. Servers answer an unknown method with
/// TApplicationException UNKNOWN_METHOD, which acknowledges the one-way call before it.
pub const PROBE_METHOD: &str = "__meltemi_probe";

/// TApplicationException type codes (Apache Thrift `TApplicationException.h`).
pub mod app_exception {
    /// UNKNOWN.
    pub const UNKNOWN: i32 = 0;
    /// UNKNOWN_METHOD: no such method (or no route for it).
    pub const UNKNOWN_METHOD: i32 = 1;
    /// MISSING_RESULT: the reply carried no usable result.
    pub const MISSING_RESULT: i32 = 5;
    /// INTERNAL_ERROR.
    pub const INTERNAL_ERROR: i32 = 6;
    /// PROTOCOL_ERROR: the request could not be processed as sent.
    pub const PROTOCOL_ERROR: i32 = 7;
}

/// The TApplicationException type for a framework error.
///
/// - RouteNotFound → UNKNOWN_METHOD: to the client, a call nobody serves is an unknown method.
/// - BadRequest → PROTOCOL_ERROR: the request itself was refused.
/// - BadResponse → MISSING_RESULT: what a client library raises itself when a reply has no
///   usable result; INVALID_PROTOCOL means "protocol not supported" in THeader negotiation.
/// - everything else → INTERNAL_ERROR. fbthrift's LOADSHEDDING(11)/TIMEOUT(12) would be more
///   precise for OverLimit/Timeout, but Apache Thrift clients (Python, Java, Go, Node) know only
///   0..=10 and some print unknown types badly; the detail text carries the reason instead.
pub fn app_exception_type(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::RouteNotFound => app_exception::UNKNOWN_METHOD,
        ErrorKind::BadRequest => app_exception::PROTOCOL_ERROR,
        ErrorKind::BadResponse => app_exception::MISSING_RESULT,
        // Unavailable, OverLimit, Unauthorized, Timeout, Internal, and kinds a later SDK adds.
        _ => app_exception::INTERNAL_ERROR,
    }
}

/// Longest detail text embedded in an exception; longer ones are cut at a char boundary.
const MAX_DETAIL: usize = 4096;

fn truncate(s: &str) -> &str {
    if s.len() <= MAX_DETAIL {
        return s;
    }
    let mut end = MAX_DETAIL;
    while !s.is_char_boundary(end) {
        // Index 0 is always a char boundary, so the loop stops before 0 - 1.
        end = end.saturating_sub(1);
    }
    s.get(..end).unwrap_or_default()
}

/// An EXCEPTION message whose body is `TApplicationException { 1: message, 2: type }`.
pub(crate) fn app_exception_message(
    proto: Protocol,
    name: &[u8],
    seqid: i32,
    message: &str,
    ty: i32,
) -> Vec<u8> {
    let message = truncate(message).as_bytes();
    let mut out = Vec::with_capacity(name.len().saturating_add(message.len()).saturating_add(32));
    match proto {
        Protocol::Binary { strict } => {
            binary::write_message_begin(&mut out, name, MessageType::Exception, seqid, strict);
            binary::write_field_begin(&mut out, binary::T_STRING, 1);
            binary::write_binary(&mut out, message);
            binary::write_field_begin(&mut out, binary::T_I32, 2);
            out.extend_from_slice(&ty.to_be_bytes());
            out.push(0);
        }
        Protocol::Compact => {
            compact::write_message_begin(&mut out, name, MessageType::Exception, seqid);
            out.push((1 << 4) | compact::T_BINARY);
            compact::write_binary(&mut out, message);
            out.push((1 << 4) | compact::T_I32);
            compact::write_zigzag(&mut out, i64::from(ty));
            out.push(0);
        }
    }
    out
}

/// A CALL message with an empty argument struct.
pub(crate) fn empty_call(proto: Protocol, name: &[u8], seqid: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len().saturating_add(16));
    match proto {
        Protocol::Binary { strict } => {
            binary::write_message_begin(&mut out, name, MessageType::Call, seqid, strict)
        }
        Protocol::Compact => compact::write_message_begin(&mut out, name, MessageType::Call, seqid),
    }
    out.push(0);
    out
}

/// Wrap a message for `transport`; `header_seqid` is the THeader frame's seqid.
pub(crate) fn frame(
    transport: Transport,
    proto: Protocol,
    header_seqid: i32,
    msg: Vec<u8>,
) -> Option<Vec<u8>> {
    match transport {
        Transport::Unframed => Some(msg),
        Transport::Framed => {
            let len = i32::try_from(msg.len()).ok()?;
            let mut out = Vec::with_capacity(msg.len().saturating_add(4));
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&msg);
            Some(out)
        }
        Transport::Header => {
            let mut out = Vec::new();
            header::write_plain(&mut out, header_seqid, proto.header_id(), &msg).ok()?;
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_exception_bytes() {
        let m = app_exception_message(Protocol::Binary { strict: true }, b"m", 7, "no", 1);
        let expected: &[u8] =
            b"\x80\x01\0\x03\0\0\0\x01m\0\0\0\x07\x0b\0\x01\0\0\0\x02no\x08\0\x02\0\0\0\x01\0";
        assert_eq!(m, expected);
        let m = app_exception_message(Protocol::Binary { strict: false }, b"m", 7, "", 6);
        assert_eq!(
            m,
            b"\0\0\0\x01m\x03\0\0\0\x07\x0b\0\x01\0\0\0\0\x08\0\x02\0\0\0\x06\0"
        );
    }

    #[test]
    fn compact_exception_bytes() {
        let m = app_exception_message(Protocol::Compact, b"m", 300, "no", 7);
        assert_eq!(m, b"\x82\x61\xac\x02\x01m\x18\x02no\x15\x0e\0");
    }

    #[test]
    fn long_detail_is_cut_on_a_char_boundary() {
        let s = "é".repeat(MAX_DETAIL);
        let t = truncate(&s);
        assert!(t.len() <= MAX_DETAIL && t.len() >= MAX_DETAIL - 1);
    }

    #[test]
    fn every_kind_has_a_type() {
        for k in ErrorKind::ALL {
            assert!((0..=10).contains(&app_exception_type(k)));
        }
        assert_eq!(app_exception::UNKNOWN, 0);
    }
}
