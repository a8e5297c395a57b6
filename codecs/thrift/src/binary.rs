//! TBinaryProtocol: message headers (strict `0x8001` and old non-strict), field and container
//! headers for the skipper, and the few writers replies need.
//!
//! Wire format: big-endian fixed-width integers; strings are an i32 length plus bytes; a struct
//! is a run of `type:i8 id:i16 value` fields closed by a 0 type byte.

use crate::cursor::{checked_len, malformed, Cursor, Res};
use crate::message::{MessageHead, MessageType, Protocol, TType, MAX_NAME_LEN};

/// High half of the strict version word.
const VERSION_1: u32 = 0x8001_0000;
const VERSION_MASK: u32 = 0xffff_0000;

/// Binary type code → type. `None` for STOP (0).
pub(crate) fn ttype(code: u8) -> Res<Option<TType>> {
    Ok(Some(match code {
        0 => return Ok(None),
        2 => TType::Bool,
        3 => TType::Byte,
        4 => TType::Double,
        6 => TType::I16,
        8 => TType::I32,
        10 => TType::I64,
        11 => TType::Binary,
        12 => TType::Struct,
        13 => TType::Map,
        14 => TType::Set,
        15 => TType::List,
        16 => TType::Uuid,
        _ => return malformed(format!("unknown binary protocol type {code}")),
    }))
}

/// Read a message header; strictness is decided by the sign of the first word.
pub(crate) fn read_message_begin<'a>(cur: &mut Cursor<'a>) -> Res<MessageHead<'a>> {
    let first = cur.i32("binary message header")?;
    if first < 0 {
        let word = first as u32;
        if word & VERSION_MASK != VERSION_1 {
            return malformed(format!(
                "invalid binary protocol version {:#06x} != 0x8001",
                word >> 16
            ));
        }
        let mtype = MessageType::from_wire((word & 0xff) as u8)?;
        let name = read_name(cur, None)?;
        let seqid = cur.i32("binary message seqid")?;
        Ok(MessageHead {
            name,
            mtype,
            seqid,
            protocol: Protocol::Binary { strict: true },
        })
    } else {
        let name = read_name(cur, Some(first))?;
        let mtype = MessageType::from_wire(cur.u8("binary message type")?)?;
        let seqid = cur.i32("binary message seqid")?;
        Ok(MessageHead {
            name,
            mtype,
            seqid,
            protocol: Protocol::Binary { strict: false },
        })
    }
}

fn read_name<'a>(cur: &mut Cursor<'a>, len: Option<i32>) -> Res<&'a [u8]> {
    let len = match len {
        Some(len) => len,
        None => cur.i32("binary message name length")?,
    };
    let len = checked_len(cur, len, "binary message name length")?;
    if len > MAX_NAME_LEN {
        return malformed(format!(
            "binary message name length {len} exceeds {MAX_NAME_LEN}"
        ));
    }
    cur.bytes(len, "binary message name")
}

/// A field header; `None` at the STOP byte.
pub(crate) fn read_field_begin(cur: &mut Cursor<'_>) -> Res<Option<(TType, i16)>> {
    let Some(ty) = ttype(cur.u8("binary field type")?)? else {
        return Ok(None);
    };
    // Negative ids are legal: the IDL compiler assigns them to fields declared without one.
    let id = cur.i16("binary field id")?;
    Ok(Some((ty, id)))
}

/// A container size: an i32 that must not be negative.
fn read_size(cur: &mut Cursor<'_>, what: &str) -> Res<u32> {
    let size = cur.i32(what)?;
    if size < 0 {
        return malformed(format!("negative {what} {size}"));
    }
    Ok(size as u32)
}

/// List/set header. An empty container may carry any element type byte: nothing is read with it.
pub(crate) fn read_list_begin(cur: &mut Cursor<'_>) -> Res<(Option<TType>, u32)> {
    let code = cur.u8("binary list element type")?;
    let size = read_size(cur, "binary list/set size")?;
    Ok((elem_type(code, size)?, size))
}

/// Map header.
pub(crate) fn read_map_begin(cur: &mut Cursor<'_>) -> Res<(Option<TType>, Option<TType>, u32)> {
    let k = cur.u8("binary map key type")?;
    let v = cur.u8("binary map value type")?;
    let size = read_size(cur, "binary map size")?;
    Ok((elem_type(k, size)?, elem_type(v, size)?, size))
}

fn elem_type(code: u8, size: u32) -> Res<Option<TType>> {
    if size == 0 {
        return Ok(ttype(code).ok().flatten());
    }
    match ttype(code)? {
        Some(t) => Ok(Some(t)),
        None => malformed("binary container element type STOP"),
    }
}

/// Skip one scalar or string value.
pub(crate) fn skip_simple(cur: &mut Cursor<'_>, ty: TType) -> Res<()> {
    let n = match ty {
        TType::Bool | TType::Byte => 1,
        TType::I16 => 2,
        TType::I32 => 4,
        TType::I64 | TType::Double => 8,
        TType::Uuid => 16,
        TType::Binary => {
            let len = cur.i32("binary string length")?;
            checked_len(cur, len, "binary string/binary length")?
        }
        TType::Struct | TType::Map | TType::Set | TType::List => {
            return malformed("internal: container passed to skip_simple")
        }
    };
    cur.skip(n, "binary value")
}

/// Append a message header.
pub(crate) fn write_message_begin(
    out: &mut Vec<u8>,
    name: &[u8],
    mtype: MessageType,
    seqid: i32,
    strict: bool,
) {
    if strict {
        out.extend_from_slice(&(VERSION_1 | mtype as u32).to_be_bytes());
        write_binary(out, name);
    } else {
        write_binary(out, name);
        out.push(mtype as u8);
    }
    out.extend_from_slice(&seqid.to_be_bytes());
}

/// Append an i32-length-prefixed byte string (callers keep it below 2 GiB).
pub(crate) fn write_binary(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Append a field header (type code, id).
pub(crate) fn write_field_begin(out: &mut Vec<u8>, code: u8, id: i16) {
    out.push(code);
    out.extend_from_slice(&id.to_be_bytes());
}

/// Type codes the writers use.
pub(crate) const T_I32: u8 = 8;
pub(crate) const T_STRING: u8 = 11;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::DecodeError;

    fn head(bytes: &[u8]) -> Res<MessageHead<'_>> {
        read_message_begin(&mut Cursor::open(bytes))
    }

    // Vectors from Envoy's binary_protocol_impl_test.cc (ReadMessageBegin and friends).
    #[test]
    fn envoy_message_begin_vectors() {
        // Envoy checks only the length (11 'x'); we also check what has arrived, so the short
        // buffer is a valid prefix here and 'x' garbage is refused at once.
        assert_eq!(
            head(&[0x80, 0x01, 0, 1, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::Incomplete)
        );
        assert!(matches!(
            head(b"xxxxxxxxxxx"),
            Err(DecodeError::Malformed(_))
        ));
        // Envoy calls this a wrong version; to us a positive first word is a non-strict name
        // length, and 0x01027878 is far beyond any method name.
        let bad = head(&[0x01, 0x02, b'x', b'x', 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(bad, Err(DecodeError::Malformed(m)) if m.contains("name length")));
        let wrong_version = head(&[0x81, 0x02, b'x', b'x', 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(wrong_version, Err(DecodeError::Malformed(m)) if m.contains("version")));
        let bad_type = head(&[0x80, 0x01, b'x', 5, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(bad_type, Err(DecodeError::Malformed(m)) if m.contains("message type 5")));
        // Empty name, seqid 1234 (the 'x' byte in the version word is ignored).
        let h = head(&[0x80, 0x01, b'x', 1, 0, 0, 0, 0, 0, 0, 0x04, 0xd2]).unwrap();
        assert_eq!(
            (h.name, h.mtype, h.seqid),
            (&b""[..], MessageType::Call, 1234)
        );
        // Name length 4 with no seqid yet.
        assert_eq!(
            head(&[0x80, 0x01, 0, 1, 0, 0, 0, 4, b'a', b'b', b'c', b'd']),
            Err(DecodeError::Incomplete)
        );
        let mut v = vec![0x80, 0x01, 0, 1, 0, 0, 0, 8];
        v.extend_from_slice(b"the_name");
        v.extend_from_slice(&5678i32.to_be_bytes());
        let h = head(&v).unwrap();
        assert_eq!(
            (h.name, h.seqid, h.protocol),
            (&b"the_name"[..], 5678, Protocol::Binary { strict: true })
        );
    }

    #[test]
    fn non_strict_header() {
        let mut v = vec![0, 0, 0, 4];
        v.extend_from_slice(b"ping");
        v.push(4);
        v.extend_from_slice(&(-7i32).to_be_bytes());
        let h = head(&v).unwrap();
        assert_eq!(
            (h.name, h.mtype, h.seqid),
            (&b"ping"[..], MessageType::Oneway, -7)
        );
        assert_eq!(h.protocol, Protocol::Binary { strict: false });
        let mut w = Vec::new();
        write_message_begin(&mut w, b"ping", MessageType::Oneway, -7, false);
        assert_eq!(w, v);
    }

    #[test]
    fn envoy_container_vectors() {
        // Negative map and list sizes are corrupt.
        assert!(read_map_begin(&mut Cursor::open(&[8, 8, 0xff, 0xff, 0xff, 0xff])).is_err());
        assert!(read_list_begin(&mut Cursor::open(&[8, 0xff, 0xff, 0xff, 0xff])).is_err());
        assert_eq!(
            read_map_begin(&mut Cursor::open(&[8, 4, 0, 0, 0, 10])),
            Ok((Some(TType::I32), Some(TType::Double), 10))
        );
        assert_eq!(
            read_list_begin(&mut Cursor::open(&[8, 0, 0, 0, 10])),
            Ok((Some(TType::I32), 10))
        );
        assert_eq!(
            read_list_begin(&mut Cursor::open(&[8, 0, 0, 0])),
            Err(DecodeError::Incomplete)
        );
        // Field headers: STOP, I32 id 99, negative id accepted (Envoy rejects it; Thrift allows it).
        assert_eq!(read_field_begin(&mut Cursor::open(&[0])), Ok(None));
        assert_eq!(
            read_field_begin(&mut Cursor::open(&[8, 0, 99])),
            Ok(Some((TType::I32, 99)))
        );
        assert_eq!(
            read_field_begin(&mut Cursor::open(&[8, 0xff, 0xff])),
            Ok(Some((TType::I32, -1)))
        );
        assert_eq!(
            read_field_begin(&mut Cursor::open(&[8])),
            Err(DecodeError::Incomplete)
        );
        // Strings: negative length corrupt, short body incomplete.
        assert!(skip_simple(&mut Cursor::open(&[0xff, 0xff, 0xff, 0xff]), TType::Binary).is_err());
        assert_eq!(
            skip_simple(&mut Cursor::open(&[0, 0, 0, 1]), TType::Binary),
            Err(DecodeError::Incomplete)
        );
    }
}
