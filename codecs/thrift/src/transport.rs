//! Transports: telling framed, unframed and THeader streams apart from their first bytes, and
//! reading a framed length.
//!
//! Detection (like Envoy's AUTO_TRANSPORT, extended to old non-strict binary clients):
//! - `0x82` or `0x80 0x01` first: an unframed compact or strict-binary message.
//! - otherwise the first four bytes are a positive length; bytes 4..6 then say `0x0FFF` for
//!   THeader, `0x82` or `0x80 0x01` for a framed compact or strict-binary message.
//! - otherwise it is non-strict binary (`name_len:i32 name type:i8 seqid:i32`), framed or not.
//!   Framed is tried first: its name length (bytes 4..8) must fit the frame and be followed by a
//!   valid message type. In an unframed stream bytes 4..8 are name characters, which as an i32
//!   are far larger than any frame. Only then is the unframed reading checked.
//!
//! Detection never decides on a prefix that could still turn out otherwise: it returns
//! `Incomplete` until the deciding byte has arrived, so remembering its answer is safe.

use crate::cursor::{malformed, Cursor, DecodeError, Res};
use crate::header;
use crate::message::{Protocol, MAX_NAME_LEN};

/// How messages are delimited on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// 4-byte big-endian length, then the message.
    Framed,
    /// Messages back to back; the end is found by skipping the message.
    Unframed,
    /// THeader frames.
    Header,
}

impl Transport {
    /// Lower-case name for errors and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Framed => "framed",
            Self::Unframed => "unframed",
            Self::Header => "header",
        }
    }
}

fn byte(buf: &[u8], i: usize) -> Res<u8> {
    buf.get(i).copied().ok_or(DecodeError::Incomplete)
}

fn is_message_type(b: u8) -> bool {
    (1..=4).contains(&b)
}

/// Decide the transport of a stream from its first bytes.
pub(crate) fn detect(buf: &[u8]) -> Res<Transport> {
    let b0 = byte(buf, 0)?;
    if b0 == crate::compact::PROTOCOL_ID {
        return Ok(Transport::Unframed);
    }
    if b0 == 0x80 {
        return match byte(buf, 1)? {
            0x01 => Ok(Transport::Unframed),
            b1 => malformed(format!("not a thrift stream: starts with 0x80{b1:02x}")),
        };
    }
    if b0 & 0x80 != 0 {
        return malformed(format!("not a thrift stream: starts with {b0:#04x}"));
    }
    let len = Cursor::open(buf).i32("frame size")? as usize;
    if len == 0 {
        // An unframed non-strict message with an empty name (a zero-length frame is invalid).
        return Ok(Transport::Unframed);
    }
    let (b4, b5) = (byte(buf, 4)?, byte(buf, 5)?);
    if u16::from_be_bytes([b4, b5]) == header::MAGIC {
        return Ok(Transport::Header);
    }
    if b4 == crate::compact::PROTOCOL_ID || (b4, b5) == (0x80, 0x01) {
        return Ok(Transport::Framed);
    }
    // Non-strict binary. Framed: [len][name_len][name][type][seqid] with 9 + name_len <= len.
    let inner = Cursor::open(buf.get(4..).unwrap_or_default()).i32("name length")?;
    if inner >= 0
        && (inner as usize).saturating_add(9) <= len
        && is_message_type(byte(buf, (inner as usize).saturating_add(8))?)
    {
        return Ok(Transport::Framed);
    }
    // Unframed: [name_len = len][name][type][seqid].
    if len > MAX_NAME_LEN {
        return malformed(format!(
            "not a thrift stream: first word {len:#x} is neither a frame nor a name length"
        ));
    }
    // len <= MAX_NAME_LEN here.
    if is_message_type(byte(buf, len.saturating_add(4))?) {
        return Ok(Transport::Unframed);
    }
    malformed("not a thrift stream: no message header found in the first bytes")
}

/// Largest framed message accepted: Apache Thrift's THeader hard limit, applied to plain frames
/// too (the framework's own size limit usually refuses much earlier).
pub(crate) const MAX_FRAME: usize = header::MAX_FRAME;

/// The declared length of a framed message (not counting the 4 length bytes).
pub(crate) fn framed_len(buf: &[u8]) -> Res<usize> {
    let len = Cursor::open(buf).i32("frame size")?;
    if len <= 0 || len as usize > MAX_FRAME {
        return malformed(format!("invalid thrift frame size {len}"));
    }
    Ok(len as usize)
}

/// The protocol of a message body from its first byte, when the configuration says `auto`.
pub(crate) fn sniff_protocol(body: &[u8]) -> Res<Protocol> {
    Ok(match byte(body, 0)? {
        crate::compact::PROTOCOL_ID => Protocol::Compact,
        b if b & 0x80 != 0 => Protocol::Binary { strict: true },
        _ => Protocol::Binary { strict: false },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        assert_eq!(detect(&[]), Err(DecodeError::Incomplete));
        assert_eq!(detect(&[0x82]), Ok(Transport::Unframed));
        assert_eq!(detect(&[0x80, 0x01]), Ok(Transport::Unframed));
        assert!(detect(&[0x80, 0x02]).is_err());
        assert!(detect(&[0xff]).is_err());
        assert_eq!(detect(&[0, 0, 0, 20, 0x0f]), Err(DecodeError::Incomplete));
        assert_eq!(detect(&[0, 0, 0, 20, 0x0f, 0xff]), Ok(Transport::Header));
        assert_eq!(detect(&[0, 0, 0, 20, 0x82, 0x21]), Ok(Transport::Framed));
        assert_eq!(detect(&[0, 0, 0, 20, 0x80, 0x01]), Ok(Transport::Framed));
        // Framed non-strict: len 17, name "ping", type 1, seqid.
        let framed = b"\0\0\0\x11\0\0\0\x04ping\x01\0\0\0\x01\0";
        for n in 0..12 {
            assert_eq!(detect(&framed[..n]), Err(DecodeError::Incomplete), "{n}");
        }
        assert_eq!(detect(framed), Ok(Transport::Framed));
        // Unframed non-strict.
        let unframed = b"\0\0\0\x04ping\x01\0\0\0\x01\0";
        for n in 0..8 {
            assert_eq!(detect(&unframed[..n]), Err(DecodeError::Incomplete), "{n}");
        }
        assert_eq!(detect(unframed), Ok(Transport::Unframed));
        assert_eq!(detect(b"\0\0\0\0\x01\0\0\0\x01"), Ok(Transport::Unframed));
        assert!(detect(b"\0\0\0\x04ping\x09").is_err());
        assert!(detect(b"\x7f\0\0\0\0\0\0\0\0").is_err());
    }

    #[test]
    fn frame_sizes() {
        assert!(framed_len(&[0, 0, 0, 0]).is_err());
        assert!(framed_len(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(framed_len(&[0x7f, 0xff, 0xff, 0xff]).is_err());
        assert_eq!(framed_len(&[0, 0, 1, 0]), Ok(256));
        assert_eq!(framed_len(&[0, 0, 1]), Err(DecodeError::Incomplete));
    }
}
