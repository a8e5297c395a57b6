//! TCompactProtocol: message headers, field/container headers for the skipper, and writers.
//!
//! Wire format: `0x82`, then `type << 5 | version(1)`, then the seqid as a varint (the u32 bit
//! pattern, not zigzag), then a varint-length name. Integers are zigzag varints, doubles are
//! 8 little-endian bytes, field ids are deltas from the previous field in the high nibble of the
//! field header (0 = a zigzag i16 id follows), and a boolean field carries its value in the type
//! nibble (1 true, 2 false) with no payload.

use crate::cursor::{checked_len, malformed, Cursor, Res};
use crate::message::{MessageHead, MessageType, Protocol, TType, MAX_NAME_LEN};

/// First byte of every compact message.
pub(crate) const PROTOCOL_ID: u8 = 0x82;
const VERSION: u8 = 1;
const VERSION_MASK: u8 = 0x1f;

/// Compact type nibble → type. `None` for STOP (0).
pub(crate) fn ttype(code: u8) -> Res<Option<TType>> {
    Ok(Some(match code {
        0 => return Ok(None),
        // 1 = BOOLEAN_TRUE, 2 = BOOLEAN_FALSE; in container headers either means "bool".
        1 | 2 => TType::Bool,
        3 => TType::Byte,
        4 => TType::I16,
        5 => TType::I32,
        6 => TType::I64,
        7 => TType::Double,
        8 => TType::Binary,
        9 => TType::List,
        10 => TType::Set,
        11 => TType::Map,
        12 => TType::Struct,
        13 => TType::Uuid,
        _ => return malformed(format!("unknown compact protocol field type {code}")),
    }))
}

/// Read a message header.
pub(crate) fn read_message_begin<'a>(cur: &mut Cursor<'a>) -> Res<MessageHead<'a>> {
    let id = cur.u8("compact protocol id")?;
    let vt = cur.u8("compact version and type")?;
    if id != PROTOCOL_ID || vt & VERSION_MASK != VERSION {
        return malformed(format!(
            "invalid compact protocol version {id:#04x}{vt:02x} != 0x8201"
        ));
    }
    let mtype = MessageType::from_wire(vt >> 5)?;
    let seqid = cur.varint32("compact message seqid")?;
    let len = cur.varint32("compact message name length")?;
    let len = checked_len(cur, len, "compact message name length")?;
    if len > MAX_NAME_LEN {
        return malformed(format!(
            "compact message name length {len} exceeds {MAX_NAME_LEN}"
        ));
    }
    let name = cur.bytes(len, "compact message name")?;
    Ok(MessageHead {
        name,
        mtype,
        seqid,
        protocol: Protocol::Compact,
    })
}

/// Zigzag-decode a 64-bit varint value.
fn unzigzag(v: u64) -> i64 {
    // `-(v & 1)` is 0 or -1: the negation cannot overflow.
    ((v >> 1) as i64) ^ ((v & 1) as i64).wrapping_neg()
}

/// A field header: `None` at STOP; otherwise type, id, and whether the value is already read
/// (a boolean field carries it in the header). `last_id` is the previous field id of this struct.
pub(crate) fn read_field_begin(
    cur: &mut Cursor<'_>,
    last_id: &mut i16,
) -> Res<Option<(TType, i16, bool)>> {
    let b = cur.u8("compact field header")?;
    let Some(ty) = ttype(b & 0x0f)? else {
        return Ok(None);
    };
    let delta = b >> 4;
    let id = if delta == 0 {
        let raw = unzigzag(cur.varint(5, "compact field id")?);
        match i16::try_from(raw) {
            Ok(id) => id,
            Err(_) => return malformed(format!("invalid compact protocol field id {raw}")),
        }
    } else {
        // Writers only use a delta when the id grows by 1..=15, so this cannot wrap for valid
        // input; wrapping keeps hostile input from panicking in debug builds.
        last_id.wrapping_add(i16::from(delta))
    };
    *last_id = id;
    Ok(Some((ty, id, ty == TType::Bool)))
}

/// A container size varint, which must fit a non-negative i32.
fn read_size(cur: &mut Cursor<'_>, what: &str) -> Res<u32> {
    let size = cur.varint32(what)?;
    if size < 0 {
        return malformed(format!("negative {what} {size}"));
    }
    Ok(size as u32)
}

/// List/set header: size in the high nibble (15 = a varint size follows), type in the low one.
pub(crate) fn read_list_begin(cur: &mut Cursor<'_>) -> Res<(Option<TType>, u32)> {
    let b = cur.u8("compact list header")?;
    let size = match b >> 4 {
        15 => read_size(cur, "compact list/set size")?,
        n => u32::from(n),
    };
    Ok((elem_type(b & 0x0f, size)?, size))
}

/// Map header: a varint size, then (only when non-empty) a key/value type byte.
pub(crate) fn read_map_begin(cur: &mut Cursor<'_>) -> Res<(Option<TType>, Option<TType>, u32)> {
    let size = read_size(cur, "compact map size")?;
    if size == 0 {
        return Ok((None, None, 0));
    }
    let kv = cur.u8("compact map types")?;
    Ok((elem_type(kv >> 4, size)?, elem_type(kv & 0x0f, size)?, size))
}

fn elem_type(code: u8, size: u32) -> Res<Option<TType>> {
    if size == 0 {
        return Ok(ttype(code).ok().flatten());
    }
    match ttype(code)? {
        Some(t) => Ok(Some(t)),
        None => malformed("compact container element type STOP"),
    }
}

/// Skip one scalar or string value that is not a field-header boolean.
pub(crate) fn skip_simple(cur: &mut Cursor<'_>, ty: TType) -> Res<()> {
    match ty {
        // A boolean inside a container is one byte.
        TType::Bool | TType::Byte => cur.skip(1, "compact byte"),
        TType::I16 | TType::I32 => cur.skip_varint(5, "compact varint"),
        TType::I64 => cur.skip_varint(10, "compact varint"),
        TType::Double => cur.skip(8, "compact double"),
        TType::Uuid => cur.skip(16, "compact uuid"),
        TType::Binary => {
            let len = cur.varint32("compact string length")?;
            let len = checked_len(cur, len, "compact string/binary length")?;
            cur.skip(len, "compact string")
        }
        TType::Struct | TType::Map | TType::Set | TType::List => {
            malformed("internal: container passed to skip_simple")
        }
    }
}

/// Append an unsigned varint.
pub(crate) fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Append a zigzag varint.
pub(crate) fn write_zigzag(out: &mut Vec<u8>, v: i64) {
    write_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Append a message header.
pub(crate) fn write_message_begin(out: &mut Vec<u8>, name: &[u8], mtype: MessageType, seqid: i32) {
    out.push(PROTOCOL_ID);
    out.push(((mtype as u8) << 5) | VERSION);
    write_varint(out, u64::from(seqid as u32));
    write_binary(out, name);
}

/// Append a varint-length-prefixed byte string.
pub(crate) fn write_binary(out: &mut Vec<u8>, bytes: &[u8]) {
    write_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Type nibbles the writers use.
pub(crate) const T_I32: u8 = 5;
pub(crate) const T_BINARY: u8 = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::DecodeError;

    fn head(bytes: &[u8]) -> Res<MessageHead<'_>> {
        read_message_begin(&mut Cursor::open(bytes))
    }

    fn is_malformed<T: std::fmt::Debug>(r: Res<T>, needle: &str) -> bool {
        matches!(r, Err(DecodeError::Malformed(m)) if m.contains(needle))
    }

    // Vectors from Envoy's compact_protocol_impl_test.cc.
    #[test]
    fn envoy_message_begin_vectors() {
        assert_eq!(head(&[0x82, 0x21, 0x81]), Err(DecodeError::Incomplete));
        assert!(is_malformed(head(b"xxx"), "version"));
        assert!(is_malformed(head(&[0x01, 0x02, b'x', b'x']), "version"));
        // Message type 5 (one past ONEWAY) in the top three bits.
        assert!(is_malformed(
            head(&[0x82, 0x01 | (5 << 5), b'x', b'x']),
            "message type 5"
        ));
        assert_eq!(
            head(&[0x82, 0x21, 0x81, 0x81]),
            Err(DecodeError::Incomplete)
        );
        assert!(is_malformed(
            head(&[0x82, 0x21, 0x81, 0x81, 0x81, 0x81, 0x81, 0, 0]),
            "varint"
        ));
        assert_eq!(head(&[0x82, 0x21, 32, 0x81]), Err(DecodeError::Incomplete));
        assert_eq!(
            head(b"\x82\x21\x20\x0apartial"),
            Err(DecodeError::Incomplete)
        );
        let h = head(&[0x82, 0x21, 32, 0]).unwrap();
        assert_eq!(
            (h.name, h.mtype, h.seqid),
            (&b""[..], MessageType::Call, 32)
        );
        assert!(is_malformed(
            head(&[0x82, 0x21, 32, 0xff, 0xff, 0xff, 0xff, 0x1f]),
            "negative"
        ));
        let h = head(b"\x82\x21\x82\x02\x08the_name").unwrap();
        assert_eq!((h.name, h.seqid), (&b"the_name"[..], 0x0102));
    }

    #[test]
    fn envoy_field_header_vectors() {
        let mut last = 0i16;
        assert_eq!(
            read_field_begin(&mut Cursor::open(&[]), &mut last),
            Err(DecodeError::Incomplete)
        );
        assert_eq!(
            read_field_begin(&mut Cursor::open(&[0xf0]), &mut last),
            Ok(None)
        );
        assert_eq!(
            read_field_begin(&mut Cursor::open(&[0x05]), &mut last),
            Err(DecodeError::Incomplete)
        );
        assert_eq!(
            read_field_begin(&mut Cursor::open(&[0x05, 0x81]), &mut last),
            Err(DecodeError::Incomplete)
        );
        let r = read_field_begin(
            &mut Cursor::open(&[0x05, 0x81, 0x81, 0x81, 0x81, 0x81]),
            &mut last,
        );
        assert!(is_malformed(r, "varint"));
        let r = read_field_begin(&mut Cursor::open(&[0x05, 0x80, 0x80, 0x04]), &mut last);
        assert!(is_malformed(r, "field id 32768"));
        // zigzag(1) = -1: a legal (compiler-assigned) negative id, which Envoy refuses.
        assert_eq!(
            read_field_begin(&mut Cursor::open(&[0x05, 0x01]), &mut last),
            Ok(Some((TType::I32, -1, false)))
        );
        // Envoy rejects type 13; since Thrift 0.19 it is UUID.
        assert_eq!(
            read_field_begin(&mut Cursor::open(&[0x0d, 0x04]), &mut last),
            Ok(Some((TType::Uuid, 2, false)))
        );
        let r = read_field_begin(&mut Cursor::open(&[0x0e, 0x04]), &mut last);
        assert!(is_malformed(r, "field type 14"));
        last = 0;
        assert_eq!(
            read_field_begin(&mut Cursor::open(&[0x05, 0x04]), &mut last),
            Ok(Some((TType::I32, 2, false)))
        );
        // Short form after id 2: delta 15 → 17.
        assert_eq!(
            read_field_begin(&mut Cursor::open(&[0xf5]), &mut last),
            Ok(Some((TType::I32, 17, false)))
        );
        // Booleans carry their value in the header.
        assert_eq!(
            read_field_begin(&mut Cursor::open(&[0x11]), &mut last),
            Ok(Some((TType::Bool, 18, true)))
        );
    }

    #[test]
    fn envoy_container_vectors() {
        assert_eq!(
            read_map_begin(&mut Cursor::open(&[0x81])),
            Err(DecodeError::Incomplete)
        );
        assert!(is_malformed(
            read_map_begin(&mut Cursor::open(&[0x81, 0x81, 0x81, 0x81, 0x81, 0])),
            "varint"
        ));
        assert!(is_malformed(
            read_map_begin(&mut Cursor::open(&[0xff, 0xff, 0xff, 0xff, 0x1f])),
            "negative"
        ));
        assert_eq!(
            read_map_begin(&mut Cursor::open(&[2])),
            Err(DecodeError::Incomplete)
        );
        assert_eq!(read_map_begin(&mut Cursor::open(&[0])), Ok((None, None, 0)));
        assert_eq!(
            read_map_begin(&mut Cursor::open(&[0x80, 0x01, 0x57])),
            Ok((Some(TType::I32), Some(TType::Double), 128))
        );
        assert!(is_malformed(
            read_map_begin(&mut Cursor::open(&[0x02, 0xe7])),
            "field type 14"
        ));
        assert!(is_malformed(
            read_map_begin(&mut Cursor::open(&[0x02, 0x5e])),
            "field type 14"
        ));
        assert_eq!(
            read_list_begin(&mut Cursor::open(&[0x35])),
            Ok((Some(TType::I32), 3))
        );
        assert_eq!(
            read_list_begin(&mut Cursor::open(&[0xf5, 0x80, 0x01])),
            Ok((Some(TType::I32), 128))
        );
        assert!(is_malformed(
            read_list_begin(&mut Cursor::open(&[0xf5, 0xff, 0xff, 0xff, 0xff, 0x0f])),
            "negative"
        ));
    }

    #[test]
    fn writer_round_trip() {
        let mut out = Vec::new();
        write_message_begin(&mut out, b"the_name", MessageType::Call, 0x0102);
        assert_eq!(out, b"\x82\x21\x82\x02\x08the_name");
        let mut out = Vec::new();
        write_message_begin(&mut out, b"m", MessageType::Exception, -1);
        let h = head(&out).unwrap();
        assert_eq!((h.mtype, h.seqid), (MessageType::Exception, -1));
        let mut z = Vec::new();
        write_zigzag(&mut z, -1);
        assert_eq!(z, [1]);
    }
}
