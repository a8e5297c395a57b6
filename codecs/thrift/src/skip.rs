//! Skipping a whole Thrift struct without materialising it: how an unframed (buffered) stream
//! finds where a message ends, and how a reply's result struct reveals a declared exception.
//!
//! The walk is iterative with an explicit stack, so nesting depth costs heap, not call stack,
//! and is bounded by `max_depth` (a hostile `[[[[...` can never overflow the wasm stack). Every
//! value consumes at least one byte in both protocols, so the number of loop iterations is
//! bounded by the buffer length whatever the declared container sizes say.

use crate::binary;
use crate::compact;
use crate::cursor::{malformed, Cursor, Res};
use crate::message::{Protocol, TType};

/// One open container on the skip stack.
#[derive(Debug)]
enum Frame {
    /// Inside a struct; `last_id` drives compact field-id deltas.
    Struct { last_id: i16 },
    /// Inside a list or set with `left` elements still to skip.
    Seq { elem: TType, left: u32 },
    /// Inside a map; `value_next` is true between a key and its value.
    Map {
        key: TType,
        val: TType,
        left: u32,
        value_next: bool,
    },
}

/// Skip one struct starting at the cursor (which must be just after the message header).
///
/// Returns the id of the struct's first field, or `None` for an empty struct: a reply's result
/// struct sets field 0 on success and a declared exception's id otherwise.
pub(crate) fn skip_struct(
    cur: &mut Cursor<'_>,
    proto: Protocol,
    max_depth: usize,
) -> Res<Option<i16>> {
    let mut stack: Vec<Frame> = Vec::with_capacity(8);
    stack.push(Frame::Struct { last_id: 0 });
    let mut first_field = None;
    while let Some(top) = stack.last_mut() {
        let ty = match top {
            Frame::Struct { last_id } => {
                let field = match proto {
                    Protocol::Binary { .. } => {
                        binary::read_field_begin(cur)?.map(|(t, id)| (t, id, false))
                    }
                    Protocol::Compact => compact::read_field_begin(cur, last_id)?,
                };
                let Some((ty, id, value_read)) = field else {
                    stack.pop();
                    continue;
                };
                if stack.len() == 1 && first_field.is_none() {
                    first_field = Some(id);
                }
                if value_read {
                    continue;
                }
                ty
            }
            Frame::Seq { elem, left } => {
                if *left == 0 {
                    stack.pop();
                    continue;
                }
                *left -= 1;
                *elem
            }
            Frame::Map {
                key,
                val,
                left,
                value_next,
            } => {
                if *value_next {
                    *value_next = false;
                    *left -= 1;
                    *val
                } else {
                    if *left == 0 {
                        stack.pop();
                        continue;
                    }
                    *value_next = true;
                    *key
                }
            }
        };
        let opened = match ty {
            TType::Struct => Frame::Struct { last_id: 0 },
            TType::List | TType::Set => {
                let (elem, left) = match proto {
                    Protocol::Binary { .. } => binary::read_list_begin(cur)?,
                    Protocol::Compact => compact::read_list_begin(cur)?,
                };
                container_fits(cur, left)?;
                match elem {
                    Some(elem) => Frame::Seq { elem, left },
                    // Empty container with a meaningless element type: nothing to skip.
                    None => continue,
                }
            }
            TType::Map => {
                let (key, val, left) = match proto {
                    Protocol::Binary { .. } => binary::read_map_begin(cur)?,
                    Protocol::Compact => compact::read_map_begin(cur)?,
                };
                container_fits(cur, left.saturating_mul(2))?;
                match (key, val) {
                    (Some(key), Some(val)) => Frame::Map {
                        key,
                        val,
                        left,
                        value_next: false,
                    },
                    _ => continue,
                }
            }
            simple => {
                match proto {
                    Protocol::Binary { .. } => binary::skip_simple(cur, simple)?,
                    Protocol::Compact => compact::skip_simple(cur, simple)?,
                }
                continue;
            }
        };
        if stack.len() >= max_depth {
            return malformed(format!(
                "thrift value nested deeper than max_depth {max_depth}"
            ));
        }
        stack.push(opened);
    }
    Ok(first_field)
}

/// Every element takes at least one byte: a container declaring more elements than there are
/// bytes left cannot complete here. Inside a declared frame that is corruption; in an open
/// stream it just needs more bytes, and saying so now spares walking the elements first.
fn container_fits(cur: &Cursor<'_>, elements: u32) -> Res<()> {
    if elements as usize > cur.remaining() {
        return cur.short("container");
    }
    Ok(())
}

/// Read only the first field header of the struct at the cursor (for framed replies, where the
/// frame length already delimits the message and skipping the body would be wasted work).
pub(crate) fn first_field_id(cur: &mut Cursor<'_>, proto: Protocol) -> Res<Option<i16>> {
    Ok(match proto {
        Protocol::Binary { .. } => binary::read_field_begin(cur)?.map(|(_, id)| id),
        Protocol::Compact => compact::read_field_begin(cur, &mut 0)?.map(|(_, id, _)| id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::DecodeError;

    const BIN: Protocol = Protocol::Binary { strict: true };

    #[test]
    fn binary_nested_struct() {
        // struct { 1: list<map<string, list<i32>>> = [{"k": [7]}], 2: bool, 3: uuid }
        let mut v = vec![15, 0, 1, 13, 0, 0, 0, 1, 11, 15, 0, 0, 0, 1];
        v.extend_from_slice(&[0, 0, 0, 1, b'k', 8, 0, 0, 0, 1, 0, 0, 0, 7]);
        v.extend_from_slice(&[2, 0, 2, 1, 16, 0, 3]);
        v.extend_from_slice(&[0xaa; 16]);
        v.push(0);
        v.extend_from_slice(b"trailing");
        let mut c = Cursor::open(&v);
        assert_eq!(skip_struct(&mut c, BIN, 64), Ok(Some(1)));
        assert_eq!(c.pos(), v.len() - 8);
        // Every strict prefix is incomplete.
        for n in 0..v.len() - 8 {
            assert_eq!(
                skip_struct(&mut Cursor::open(&v[..n]), BIN, 64),
                Err(DecodeError::Incomplete),
                "{n}"
            );
        }
        // Inside a declared frame the same prefixes are corrupt.
        assert!(matches!(
            skip_struct(&mut Cursor::bounded(&v[..10]), BIN, 64),
            Err(DecodeError::Malformed(_))
        ));
        // Depth 4 (struct > list > map > list) fits 4, not 3.
        assert!(skip_struct(&mut Cursor::open(&v), BIN, 4).is_ok());
        assert!(matches!(
            skip_struct(&mut Cursor::open(&v), BIN, 3),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn compact_bools_and_deltas() {
        // struct { 1: bool true (inline), 3: i64 -1, 20: list<bool> [t, f], 21: map<i16,double>{} }
        let v = [
            0x11, 0x26, 0x01, 0x09, 0x28, 0x21, 0x01, 0x02, 0x1b, 0x00, 0x00,
        ];
        let mut c = Cursor::open(&v);
        assert_eq!(skip_struct(&mut c, Protocol::Compact, 64), Ok(Some(1)));
        assert_eq!(c.pos(), v.len());
    }

    #[test]
    fn deep_nesting_is_bounded() {
        // 10_000 nested lists of lists: must fail cleanly, not overflow anything.
        let mut v = vec![15, 0, 1];
        for _ in 0..10_000 {
            v.extend_from_slice(&[15, 0, 0, 0, 1]);
        }
        let r = skip_struct(&mut Cursor::open(&v), BIN, 64);
        assert!(matches!(r, Err(DecodeError::Malformed(m)) if m.contains("max_depth")));
    }

    #[test]
    fn huge_declared_sizes() {
        // list<i64> of 2^31-1 elements with 3 bytes behind it: incomplete in a stream, corrupt
        // in a frame, and answered without walking.
        let v = [15, 0, 1, 10, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0];
        assert_eq!(
            skip_struct(&mut Cursor::open(&v), BIN, 64),
            Err(DecodeError::Incomplete)
        );
        assert!(matches!(
            skip_struct(&mut Cursor::bounded(&v), BIN, 64),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn first_field() {
        assert_eq!(first_field_id(&mut Cursor::open(&[0]), BIN), Ok(None));
        assert_eq!(
            first_field_id(&mut Cursor::open(&[12, 0, 1]), BIN),
            Ok(Some(1))
        );
        assert_eq!(
            first_field_id(&mut Cursor::open(&[0x08]), Protocol::Compact),
            Err(DecodeError::Incomplete)
        );
        assert_eq!(
            first_field_id(&mut Cursor::open(&[0x1c]), Protocol::Compact),
            Ok(Some(1))
        );
        // Success field 0 in compact uses the long form: type byte then zigzag(0).
        assert_eq!(
            first_field_id(&mut Cursor::open(&[0x08, 0x00]), Protocol::Compact),
            Ok(Some(0))
        );
    }
}
