//! THeader transport (fbthrift / Apache Thrift `THeaderTransport`): parse a frame, expose its
//! info headers, rewrite them for a mutation, and write fresh frames for replies and probes.
//!
//! ```text
//! length:i32   (bytes after this field)
//! magic:u16 = 0x0FFF   flags:u16   seqid:i32   header_size:u16 (in 4-byte words)
//! header:  protocol_id:varint  transform_count:varint  transform_id:varint*
//!          info blocks: (info_id:varint  count:varint  (key:vstr value:vstr)*)*  zero padding
//! payload: one message in the protocol named by protocol_id (0 binary, 2 compact)
//! ```
//! Info id 1 is INFO_KEYVALUE and 2 INFO_PKEYVALUE (persistent headers); both carry string
//! pairs. Readers stop at id 0 (padding) or at an id they do not know, since blocks carry no
//! length. Transforms (zlib, snappy, ...) would make the payload opaque: such frames are refused.

use meltemi_sdk::{CodecError, Metadata};

use crate::compact::write_varint;
use crate::cursor::{malformed, Cursor, DecodeError, Res};

/// THeader magic, the two bytes after the length.
pub(crate) const MAGIC: u16 = 0x0fff;
/// Apache Thrift's hard limit for a THeader frame (`HARD_MAX_FRAME_SIZE`).
pub(crate) const MAX_FRAME: usize = 0x3fff_ffff;
/// magic + flags + seqid + header size.
const FIXED: usize = 10;
const INFO_PADDING: i32 = 0;
const INFO_KEYVALUE: i32 = 1;
const INFO_PKEYVALUE: i32 = 2;

/// One info header, borrowed from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InfoHeader<'a> {
    /// From an INFO_PKEYVALUE block rather than INFO_KEYVALUE.
    pub persistent: bool,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// A parsed THeader frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderFrame<'a> {
    /// Whole frame length, the 4 length bytes included.
    pub total_len: usize,
    pub seqid: i32,
    pub protocol_id: u32,
    pub headers: Vec<InfoHeader<'a>>,
    /// Header bytes from an unknown info id to the header end, kept verbatim when rewriting.
    pub unknown_tail: &'a [u8],
    /// The message bytes.
    pub payload: &'a [u8],
}

/// Frame length from the first four bytes; only meaningful after detection chose THeader.
fn frame_len(buf: &[u8]) -> Res<usize> {
    let len = Cursor::open(buf).i32("header transport frame size")?;
    if len < 0 || len as usize > MAX_FRAME {
        return malformed(format!("invalid thrift header transport frame size {len}"));
    }
    if (len as usize) < FIXED {
        return malformed(format!(
            "thrift header transport frame size {len} is below the fixed header"
        ));
    }
    Ok(len as usize)
}

/// The whole length (length field included) of the THeader frame starting `buf`, once the
/// fixed fields that can be checked before the frame is complete (length, magic) are valid.
pub(crate) fn frame_total(buf: &[u8]) -> Res<usize> {
    let len = frame_len(buf)?;
    let mut early = Cursor::open(buf.get(4..).unwrap_or_default());
    let magic = early.u16("header transport magic")?;
    if magic != MAGIC {
        return malformed(format!("invalid thrift header transport magic {magic:04x}"));
    }
    // len <= MAX_FRAME (2^30 - 1): adding the length field fits even a 32-bit usize.
    len.checked_add(4)
        .ok_or_else(|| DecodeError::Malformed(format!("thrift header frame size {len} overflows")))
}

/// Parse the THeader frame at the start of `buf`. The fixed fields are validated as soon as
/// they arrive, so a corrupt stream fails before its whole (possibly bogus) length is buffered.
pub(crate) fn parse(buf: &[u8]) -> Res<HeaderFrame<'_>> {
    let total_len = frame_total(buf)?;
    let Some(frame) = buf.get(4..total_len) else {
        return Err(DecodeError::Incomplete);
    };
    let mut cur = Cursor::bounded(frame);
    cur.skip(2, "magic")?;
    let _flags = cur.u16("header flags")?;
    let seqid = cur.i32("header seqid")?;
    let words = cur.u16("header size")?;
    let header_size = usize::from(words) * 4;
    if header_size == 0 {
        return malformed("no header data");
    }
    let header = cur.bytes(header_size, "header transport header")?;
    let payload = FIXED
        .checked_add(header_size)
        .and_then(|at| frame.get(at..))
        .unwrap_or_default();
    // An empty payload is a valid frame that carries no message: the caller decides (see
    // `ThriftCodec::decode`, which treats it as a keep-alive).

    let mut h = Cursor::bounded(header);
    let protocol_id = h.varint32("header transport protocol id")?;
    match protocol_id {
        0 | 2 => {}
        1 => return malformed("thrift header transport JSON protocol (id 1) is not supported"),
        other => return malformed(format!("unknown thrift header transport protocol {other}")),
    }
    let transforms = h.varint32("header transport transform count")?;
    if transforms < 0 {
        return malformed(format!(
            "invalid header transport transform count {transforms}"
        ));
    }
    if transforms > 0 {
        let id = h.varint32("header transport transform id")?;
        return malformed(format!(
            "thrift header transport transforms are not supported (transform id {id}): the payload is opaque"
        ));
    }

    let mut headers = Vec::new();
    let mut unknown_tail: &[u8] = &[];
    while h.remaining() > 0 {
        let at = h.pos();
        let info = h.varint32("header transport info id")?;
        let persistent = match info {
            INFO_PADDING => break,
            INFO_KEYVALUE => false,
            INFO_PKEYVALUE => true,
            _ => {
                unknown_tail = header.get(at..).unwrap_or_default();
                break;
            }
        };
        let count = h.varint32("header transport header count")?;
        // Each pair takes at least two bytes: a count beyond that is a lie.
        if count < 0 || count as usize > h.remaining() / 2 {
            return malformed(format!("invalid header transport header count {count}"));
        }
        for _ in 0..count {
            let key = read_vstr(&mut h, "header transport header key")?;
            let value = read_vstr(&mut h, "header transport header value")?;
            headers.push(InfoHeader {
                persistent,
                key,
                value,
            });
        }
    }
    Ok(HeaderFrame {
        total_len,
        seqid,
        protocol_id: protocol_id as u32,
        headers,
        unknown_tail,
        payload,
    })
}

fn read_vstr<'a>(h: &mut Cursor<'a>, what: &str) -> Res<&'a [u8]> {
    let len = h.varint32(what)?;
    if len < 0 {
        return malformed(format!("negative {what} length {len}"));
    }
    h.bytes(len as usize, what)
}

fn write_vstr(out: &mut Vec<u8>, s: &[u8]) {
    write_varint(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// Append a whole frame: fixed fields, `header` padded to 4 bytes, then `payload`.
fn write_frame(
    out: &mut Vec<u8>,
    seqid: i32,
    header: &[u8],
    payload: &[u8],
) -> Result<(), CodecError> {
    let too_big = || CodecError::unsupported("THeader frame is too large");
    let words = u16::try_from(header.len().div_ceil(4)).map_err(|_| {
        CodecError::unsupported(format!(
            "THeader header of {} bytes exceeds 262140",
            header.len()
        ))
    })?;
    // At most 65535 * 4: no overflow, and never below `header.len()`.
    let padded = usize::from(words).saturating_mul(4);
    let len = FIXED
        .checked_add(padded)
        .and_then(|n| n.checked_add(payload.len()))
        .ok_or_else(too_big)?;
    if len > MAX_FRAME {
        return Err(CodecError::unsupported(format!(
            "THeader frame of {len} bytes is too large"
        )));
    }
    let len32 = u32::try_from(len).map_err(|_| too_big())?;
    out.reserve(len.saturating_add(4));
    out.extend_from_slice(&len32.to_be_bytes());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    // Flags: none of the optional features (out-of-order, ...) are claimed by a reply.
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&seqid.to_be_bytes());
    out.extend_from_slice(&words.to_be_bytes());
    out.extend_from_slice(header);
    let padding = padded.saturating_sub(header.len());
    out.resize(out.len().saturating_add(padding), 0);
    out.extend_from_slice(payload);
    Ok(())
}

/// A frame with no transforms and no info headers, as replies and probes use.
pub(crate) fn write_plain(
    out: &mut Vec<u8>,
    seqid: i32,
    protocol_id: u32,
    payload: &[u8],
) -> Result<(), CodecError> {
    let mut header = Vec::with_capacity(4);
    write_varint(&mut header, u64::from(protocol_id));
    write_varint(&mut header, 0);
    write_frame(out, seqid, &header, payload)
}

/// Re-emit `frame` (exactly one THeader frame) with `mutation` applied to its info headers:
/// a key already present (either block) gets the new value, others are added as INFO_KEYVALUE.
/// The payload, seqid and protocol are copied; the header size and frame length are recomputed.
pub(crate) fn rewrite(
    frame: &[u8],
    mutation: &Metadata,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let parsed = match parse(frame) {
        Ok(p) if p.total_len == frame.len() => p,
        Ok(_) => {
            return Err(CodecError::unsupported(
                "encode expects exactly one THeader frame",
            ))
        }
        Err(DecodeError::Incomplete) => {
            return Err(CodecError::unsupported(
                "encode got a partial THeader frame",
            ))
        }
        Err(DecodeError::Malformed(m)) => return Err(CodecError::malformed(m)),
    };
    let mut headers: Vec<(bool, &[u8], &[u8])> = parsed
        .headers
        .iter()
        .map(|h| (h.persistent, h.key, h.value))
        .collect();
    for (k, v) in mutation.iter() {
        match headers.iter_mut().find(|(_, key, _)| *key == k.as_bytes()) {
            Some(entry) => entry.2 = v.as_bytes(),
            None => headers.push((false, k.as_bytes(), v.as_bytes())),
        }
    }
    let mut header = Vec::with_capacity(64);
    write_varint(&mut header, u64::from(parsed.protocol_id));
    write_varint(&mut header, 0);
    for (persistent, info_id) in [(false, INFO_KEYVALUE), (true, INFO_PKEYVALUE)] {
        let count = headers.iter().filter(|h| h.0 == persistent).count();
        if count == 0 {
            continue;
        }
        write_varint(&mut header, info_id as u64);
        write_varint(&mut header, count as u64);
        for (_, k, v) in headers.iter().filter(|h| h.0 == persistent) {
            write_vstr(&mut header, k);
            write_vstr(&mut header, v);
        }
    }
    header.extend_from_slice(parsed.unknown_tail);
    write_frame(out, parsed.seqid, &header, parsed.payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed part of a frame: length, magic, flags, seqid, header words.
    fn fixed(len: i32, flags: u16, seqid: i32, words: i16) -> Vec<u8> {
        let mut v = len.to_be_bytes().to_vec();
        v.extend_from_slice(&MAGIC.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&seqid.to_be_bytes());
        v.extend_from_slice(&words.to_be_bytes());
        v
    }

    fn err(buf: &[u8]) -> String {
        match parse(buf) {
            Err(DecodeError::Malformed(m)) => m,
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    // Vectors from Envoy's header_transport_impl_test.cc.
    #[test]
    fn envoy_not_enough_data() {
        assert_eq!(parse(&[]), Err(DecodeError::Incomplete));
        let mut v = fixed(100, 0, 1, 1);
        v.extend_from_slice(&[0, 0, 0]);
        assert_eq!(parse(&v), Err(DecodeError::Incomplete));
    }

    #[test]
    fn envoy_invalid_sizes_and_magic() {
        let mut v = (-1i32).to_be_bytes().to_vec();
        v.extend_from_slice(&[0; 10]);
        assert!(err(&v).contains("frame size -1"));
        let mut v = 0x7fff_ffffi32.to_be_bytes().to_vec();
        v.extend_from_slice(&[0; 10]);
        assert!(err(&v).contains("frame size 2147483647"));
        let mut v = 0x100i32.to_be_bytes().to_vec();
        v.extend_from_slice(&[0x01, 0x23]);
        assert!(err(&v).contains("magic 0123"));
        let mut v = fixed(14, 0, 1, 0);
        v.extend_from_slice(&[0; 4]);
        assert!(err(&v).contains("no header data"));
        // Header size 0xffff words is past the frame end.
        let mut v = fixed(14, 0, 1, -1);
        v.extend_from_slice(&[0; 4]);
        assert!(err(&v).contains("truncated"));
    }

    #[test]
    fn envoy_header_content_errors() {
        // -1 as a varint needs 5 bytes; the header is 4.
        let mut v = fixed(15, 0, 1, 1);
        v.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x1f]);
        assert!(err(&v).contains("protocol id"));
        for (proto, needle) in [
            (1u8, "JSON"),
            (3, "unknown thrift header transport protocol 3"),
        ] {
            let mut v = fixed(15, 0, 1, 1);
            v.extend_from_slice(&[proto, 0, 0, 0, b'x']);
            assert!(err(&v).contains(needle));
        }
        let mut v = fixed(19, 0, 1, 2);
        v.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x1f, 0, 0, 0, b'x']);
        assert!(err(&v).contains("protocol -1"));
        // Transform count -1, and each known transform id.
        let mut v = fixed(19, 0, 1, 2);
        v.extend_from_slice(&[0, 0xff, 0xff, 0xff, 0xff, 0x1f, 0, 0, b'x']);
        assert!(err(&v).contains("transform count -1"));
        for id in 1..5u8 {
            let mut v = fixed(15, 0, 1, 1);
            v.extend_from_slice(&[0, 1, id, 0, b'x']);
            assert!(err(&v).contains(&format!("transform id {id}")));
        }
        // Header count -1.
        let mut v = fixed(23, 0, 1, 3);
        v.extend_from_slice(&[0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x1f, 0, 0, 0, 0, b'x']);
        assert!(err(&v).contains("header count -1"));
        // Key length 0x100000 past the header.
        let mut v = fixed(19, 0, 1, 2);
        v.extend_from_slice(&[0, 0, 1, 1, 0x80, 0x80, 0x40, 0, b'x']);
        assert!(err(&v).contains("header key"));
        // Key runs past the header; key ends at the header end with no value.
        let mut v = fixed(19, 0, 1, 2);
        v.extend_from_slice(&[0, 0, 1, 1, 4, b'k', b'e', b'y', b'x']);
        assert!(err(&v).contains("header key"));
        let mut v = fixed(19, 0, 1, 2);
        v.extend_from_slice(&[0, 0, 1, 1, 3, b'a', b'b', b'c', b'x']);
        assert!(err(&v).contains("header value"));
    }

    #[test]
    fn envoy_no_transforms_or_info() {
        for (proto, flags, seqid) in [(0u8, 1u16, 1i32), (2, 2, 2)] {
            let mut v = fixed(100, flags, seqid, 1);
            v.extend_from_slice(&[proto, 0, 0, 0]);
            v.resize(104, b'm');
            let f = parse(&v).unwrap();
            assert_eq!(
                (f.total_len, f.seqid, f.protocol_id),
                (104, seqid, u32::from(proto))
            );
            assert!(f.headers.is_empty());
            assert_eq!(f.payload.len(), 86);
        }
        // Unknown info id 3 stops header parsing and is kept as the tail.
        let mut v = fixed(15, 1, 1, 1);
        v.extend_from_slice(&[0, 0, 3, 0, b'x']);
        let f = parse(&v).unwrap();
        assert_eq!(f.unknown_tail, &[3, 0]);
    }

    #[test]
    fn envoy_info_block() {
        let mut hdr = vec![0, 0, 1, 3, 3];
        hdr.extend_from_slice(b"Key");
        hdr.push(5);
        hdr.extend_from_slice(b"Value");
        hdr.push(4);
        hdr.extend_from_slice(b"key2");
        hdr.extend_from_slice(&[0x80, 0x01]);
        hdr.extend_from_slice(&[b'x'; 128]);
        hdr.extend_from_slice(&[0, 0, 0]);
        assert_eq!(hdr.len(), 152);
        let mut v = fixed(10 + 152 + 1, 0, 1, 38);
        v.extend_from_slice(&hdr);
        v.push(b'm');
        let f = parse(&v).unwrap();
        let got: Vec<_> = f.headers.iter().map(|h| (h.key, h.value.len())).collect();
        assert_eq!(
            got,
            vec![(&b"Key"[..], 5), (&b"key2"[..], 128), (&b""[..], 0)]
        );
    }

    #[test]
    fn envoy_encode_vectors() {
        let mut out = Vec::new();
        write_plain(&mut out, 0, 0, b"fake message").unwrap();
        assert_eq!(
            out,
            b"\0\0\0\x1a\x0f\xff\0\0\0\0\0\0\0\x01\0\0\0\0fake message"
        );
        let mut out = Vec::new();
        write_plain(&mut out, 10, 2, b"fake message").unwrap();
        assert_eq!(
            out,
            b"\0\0\0\x1a\x0f\xff\0\0\0\0\0\x0a\0\x01\x02\0\0\0fake message"
        );
        // Envoy's "frame with headers" vector, produced by a mutation on a plain frame. Envoy
        // appends 4 padding bytes even when the header is already aligned; we do not.
        let mut m = Metadata::new();
        m.set("key", "value");
        m.set("", "");
        let mut rewritten = Vec::new();
        rewrite(&out, &m, &mut rewritten).unwrap();
        let expected: &[u8] =
            b"\0\0\0\x26\x0f\xff\0\0\0\0\0\x0a\0\x04\x02\0\x01\x02\x03key\x05value\0\0fake message";
        assert_eq!(rewritten, expected);
    }

    #[test]
    fn rewrite_replaces_in_either_block_and_keeps_unknown_tail() {
        let mut hdr = vec![0, 0, 1, 1, 1, b'a', 1, b'1', 2, 1, 1, b'p', 1, b'2', 9, 9];
        hdr.resize(16, 0);
        let mut v = fixed(10 + 16 + 3, 0, 7, 4);
        v.extend_from_slice(&hdr);
        v.extend_from_slice(b"msg");
        let m: Metadata = [("p", "new"), ("a", "A"), ("z", "zz")]
            .into_iter()
            .collect();
        let mut out = Vec::new();
        rewrite(&v, &m, &mut out).unwrap();
        let f = parse(&out).unwrap();
        let got: Vec<_> = f
            .headers
            .iter()
            .map(|h| (h.persistent, h.key, h.value))
            .collect();
        assert_eq!(
            got,
            vec![
                (false, &b"a"[..], &b"A"[..]),
                (false, b"z", b"zz"),
                (true, b"p", b"new")
            ]
        );
        assert_eq!(f.unknown_tail.first(), Some(&9));
        assert_eq!(
            (f.seqid, f.payload, f.total_len),
            (7, &b"msg"[..], out.len())
        );
    }
}
