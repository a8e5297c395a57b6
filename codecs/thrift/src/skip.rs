//! Skipping a whole Thrift struct without materialising it: how an unframed (buffered) stream
//! finds where a message ends, and how a reply's result struct reveals a declared exception.
//!
//! The walk is iterative with an explicit stack, so nesting depth costs heap, not call stack,
//! and is bounded by `max_depth` (a hostile `[[[[...` can never overflow the wasm stack). Every
//! value consumes at least one byte in both protocols, so the number of loop iterations is
//! bounded by the buffer length whatever the declared container sizes say.
//!
//! # Resuming
//! An unframed message's length is only known once its last byte is skipped. Restarting the walk
//! from the message start on every `decode` call would make a slow sender (a large message
//! trickling in, a few bytes per read) cost quadratic CPU on Envoy's worker. So the walk is a
//! value, [`Walk`], that the codec keeps between calls: its stack and the offset where the next
//! step starts. Each loop iteration is one *step* (a field header with its scalar value or
//! container header, one container element, or closing a container) and is transactional: it
//! reads into locals and commits to the stack only once all of its reads succeeded. A step that
//! runs out of bytes rewinds to its start and leaves the stack untouched, so the walk can carry
//! on from exactly there once more bytes arrived. A step re-read that way is a few bytes (a
//! string's bytes are skipped, never read), so resuming costs O(1) beyond the new bytes.
//!
//! Resuming gives the same answer as a fresh walk over the longer buffer: a step's outcome
//! depends only on bytes before its end and, through the "container cannot fit" shortcut, on how
//! many bytes are buffered, which only grows, so every committed step would commit identically
//! and the first failing step is retried unchanged.

use crate::binary;
use crate::compact;
use crate::cursor::{malformed, Cursor, DecodeError, Res};
use crate::message::{Protocol, TType};

/// One open container on the skip stack.
#[derive(Debug, Clone, Copy)]
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

/// A resumable walk over one struct (see the module docs). Inactive until [`Walk::begin`];
/// back to inactive once it returns a result or an error.
#[derive(Debug, Clone, Default)]
pub(crate) struct Walk {
    /// Open containers, outermost first; empty when inactive. The allocation is reused.
    stack: Vec<Frame>,
    /// Offset in the buffer where the next step starts.
    pos: usize,
    protocol: Option<Protocol>,
    /// The outermost struct's first field id, once read.
    first_field: Option<i16>,
}

impl Walk {
    /// Whether a walk is under way (begun and not finished).
    pub(crate) fn active(&self) -> bool {
        !self.stack.is_empty()
    }

    /// Start walking a struct at offset `at`, forgetting any walk under way.
    pub(crate) fn begin(&mut self, at: usize, proto: Protocol) {
        self.reset();
        self.stack.push(Frame::Struct { last_id: 0 });
        self.pos = at;
        self.protocol = Some(proto);
    }

    /// Forget the walk under way, if any.
    pub(crate) fn reset(&mut self) {
        self.stack.clear();
        self.pos = 0;
        self.protocol = None;
        self.first_field = None;
    }

    /// Walk on over `buf`, an open stream prefix that starts with the bytes this walk saw
    /// before. Returns where the struct ends and its first field id; `Incomplete` keeps the
    /// progress for the next call, anything else ends the walk.
    pub(crate) fn resume(&mut self, buf: &[u8], max_depth: usize) -> Res<(usize, Option<i16>)> {
        let mut cur = Cursor::open_at(buf, self.pos);
        if cur.pos() != self.pos {
            // Shorter than what was already walked: not the same stream. Never expected from
            // the framework; refuse rather than guess.
            self.reset();
            return malformed("internal: thrift decode resumed on a shorter buffer");
        }
        let first = self.run(&mut cur, max_depth)?;
        Ok((cur.pos(), first))
    }

    /// Run steps until the struct closes. On `Incomplete` the cursor and the walk are left at
    /// the start of the step that ran short; on success or `Malformed` the walk is reset.
    fn run(&mut self, cur: &mut Cursor<'_>, max_depth: usize) -> Res<Option<i16>> {
        let Some(proto) = self.protocol else {
            return malformed("internal: thrift skip walk not begun");
        };
        while self.active() {
            let mark = cur.pos();
            match self.step(cur, proto, max_depth) {
                Ok(()) => self.pos = cur.pos(),
                Err(e) => {
                    cur.rewind(mark);
                    if e != DecodeError::Incomplete {
                        self.reset();
                    }
                    return Err(e);
                }
            }
        }
        let first = self.first_field;
        self.reset();
        Ok(first)
    }

    /// One step; changes `self` only when every read succeeded.
    fn step(&mut self, cur: &mut Cursor<'_>, proto: Protocol, max_depth: usize) -> Res<()> {
        let depth = self.stack.len();
        let Some(&top) = self.stack.last() else {
            return Ok(());
        };
        let mut first_field = None;
        // What comes next in the innermost container, and that container once it has come.
        let (next, top) = match top {
            Frame::Struct { mut last_id } => {
                let field = match proto {
                    Protocol::Binary { .. } => {
                        binary::read_field_begin(cur)?.map(|(t, id)| (t, id, false))
                    }
                    Protocol::Compact => compact::read_field_begin(cur, &mut last_id)?,
                };
                let Some((ty, id, value_read)) = field else {
                    self.stack.pop();
                    return Ok(());
                };
                if depth == 1 && self.first_field.is_none() {
                    first_field = Some(id);
                }
                // A compact boolean field carries its value in the header.
                let next = if value_read { None } else { Some(ty) };
                (next, Frame::Struct { last_id })
            }
            Frame::Seq { elem, left } => {
                if left == 0 {
                    self.stack.pop();
                    return Ok(());
                }
                let left = left.saturating_sub(1);
                (Some(elem), Frame::Seq { elem, left })
            }
            Frame::Map {
                key,
                val,
                left,
                value_next,
            } => {
                if value_next {
                    let left = left.saturating_sub(1);
                    let value_next = false;
                    (
                        Some(val),
                        Frame::Map {
                            key,
                            val,
                            left,
                            value_next,
                        },
                    )
                } else {
                    if left == 0 {
                        self.stack.pop();
                        return Ok(());
                    }
                    let value_next = true;
                    (
                        Some(key),
                        Frame::Map {
                            key,
                            val,
                            left,
                            value_next,
                        },
                    )
                }
            }
        };
        let opened = match next {
            Some(ty) => open_value(cur, ty, proto)?,
            None => None,
        };
        if opened.is_some() && depth >= max_depth {
            return malformed(format!(
                "thrift value nested deeper than max_depth {max_depth}"
            ));
        }
        // Commit.
        if let Some(slot) = self.stack.last_mut() {
            *slot = top;
        }
        if first_field.is_some() {
            self.first_field = first_field;
        }
        if let Some(frame) = opened {
            self.stack.push(frame);
        }
        Ok(())
    }
}

/// Read a value of type `ty`: a scalar or string is skipped whole; a container's header is read
/// and its frame returned (`None` for an empty one, which has nothing left to skip).
fn open_value(cur: &mut Cursor<'_>, ty: TType, proto: Protocol) -> Res<Option<Frame>> {
    Ok(match ty {
        TType::Struct => Some(Frame::Struct { last_id: 0 }),
        TType::List | TType::Set => {
            let (elem, left) = match proto {
                Protocol::Binary { .. } => binary::read_list_begin(cur)?,
                Protocol::Compact => compact::read_list_begin(cur)?,
            };
            container_fits(cur, left)?;
            // Empty container with a meaningless element type: nothing to skip.
            elem.map(|elem| Frame::Seq { elem, left })
        }
        TType::Map => {
            let (key, val, left) = match proto {
                Protocol::Binary { .. } => binary::read_map_begin(cur)?,
                Protocol::Compact => compact::read_map_begin(cur)?,
            };
            container_fits(cur, left.saturating_mul(2))?;
            match (key, val) {
                (Some(key), Some(val)) => Some(Frame::Map {
                    key,
                    val,
                    left,
                    value_next: false,
                }),
                _ => None,
            }
        }
        simple => {
            match proto {
                Protocol::Binary { .. } => binary::skip_simple(cur, simple)?,
                Protocol::Compact => compact::skip_simple(cur, simple)?,
            }
            None
        }
    })
}

/// Skip one struct starting at the cursor (which must be just after the message header), in one
/// go: a fresh [`Walk`] that is not kept.
///
/// Returns the id of the struct's first field, or `None` for an empty struct: a reply's result
/// struct sets field 0 on success and a declared exception's id otherwise.
#[cfg(test)]
pub(crate) fn skip_struct(
    cur: &mut Cursor<'_>,
    proto: Protocol,
    max_depth: usize,
) -> Res<Option<i16>> {
    let mut walk = Walk::default();
    walk.begin(cur.pos(), proto);
    walk.run(cur, max_depth)
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
    fn resumed_walk_matches_one_walk() {
        // The nested vector above, then a compact one with deltas, inline booleans and a map.
        let mut bin = vec![15, 0, 1, 13, 0, 0, 0, 1, 11, 15, 0, 0, 0, 1];
        bin.extend_from_slice(&[0, 0, 0, 1, b'k', 8, 0, 0, 0, 1, 0, 0, 0, 7]);
        bin.extend_from_slice(&[2, 0, 2, 1, 16, 0, 3]);
        bin.extend_from_slice(&[0xaa; 16]);
        bin.extend_from_slice(&[0, b't']);
        let compact = [
            0x11, 0x26, 0x01, 0x09, 0x28, 0x21, 0x01, 0x02, 0x1b, 0x02, 0x48, 0x02, 0x01, 0x61,
            0x04, 0x01, 0x62, 0x00, b't',
        ];
        for (v, proto) in [(&bin[..], BIN), (&compact[..], Protocol::Compact)] {
            let mut one = Cursor::open(v);
            let want = skip_struct(&mut one, proto, 64).map(|first| (one.pos(), first));
            assert_eq!(want.as_ref().map(|w| w.0), Ok(v.len() - 1));
            // Grown one byte at a time, and in two pieces split anywhere.
            let mut walk = Walk::default();
            walk.begin(0, proto);
            let mut got = Err(DecodeError::Incomplete);
            for n in 0..=v.len() {
                got = walk.resume(&v[..n], 64);
                if got != Err(DecodeError::Incomplete) {
                    assert_eq!(n, v.len() - 1, "decided at {n}");
                    break;
                }
            }
            assert_eq!(got, want);
            assert!(!walk.active());
            for cut in 0..v.len() {
                walk.begin(0, proto);
                if walk.resume(&v[..cut], 64) == Err(DecodeError::Incomplete) {
                    assert_eq!(walk.resume(v, 64), want, "cut {cut}");
                }
            }
        }
        // A resumed walk fails exactly like a whole one, and forgets its progress.
        let mut deep = vec![15, 0, 1];
        for _ in 0..8 {
            deep.extend_from_slice(&[15, 0, 0, 0, 1]);
        }
        let mut walk = Walk::default();
        walk.begin(0, BIN);
        assert_eq!(walk.resume(&deep[..9], 4), Err(DecodeError::Incomplete));
        assert!(walk.active());
        let whole = skip_struct(&mut Cursor::open(&deep), BIN, 4);
        assert!(matches!(&whole, Err(DecodeError::Malformed(m)) if m.contains("max_depth")));
        assert_eq!(walk.resume(&deep, 4).map(|(_, first)| first), whole);
        assert!(!walk.active());
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
