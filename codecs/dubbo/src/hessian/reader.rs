//! A bounded Hessian 2.0 reader: reads the scalars the codec needs (strings, ints) and skips any
//! other value without building it.
//!
//! Every read is bounds-checked and returns [`HessianError`] instead of panicking. Work stays
//! linear in the input: each value consumes at least one byte, element counts announced by the
//! input are checked against the bytes that remain, and container nesting is capped at
//! [`MAX_DEPTH`] so hostile input cannot exhaust the (small) wasm stack.
//!
//! The reader keeps the two stream-wide tables Hessian values refer to: class definitions
//! (`'C'`, needed to know how many fields an object instance has) and a count of the values
//! that take a back-reference slot (lists, maps, objects), so callers can tell whether moving a
//! value would renumber later `'Q'` references.

use std::fmt;

/// Deepest container nesting accepted. Real Dubbo payloads (POJOs holding lists of POJOs) stay
/// far below it; a hostile body cannot recurse past it.
pub const MAX_DEPTH: u32 = 64;

/// Longest string (in UTF-16 units) collected into memory by [`Reader::read_string`]; longer
/// strings are still skipped correctly but truncated in the returned value, because metadata
/// values that long are useless for routing and would only cost memory.
const MAX_COLLECTED_UNITS: usize = 64 * 1024;

/// Why a Hessian value could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HessianError(pub String);

impl fmt::Display for HessianError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, HessianError>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(HessianError(msg.into()))
}

/// A cursor over one Hessian stream (for Dubbo: one message body).
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Field count of every class definition seen so far, in definition order.
    class_fields: Vec<usize>,
    /// Number of values that took a reference slot (lists, maps, objects).
    refs: usize,
    depth: u32,
}

/// A scalar attachment value rendered as text, or nothing for values metadata cannot carry.
pub type Scalar = Option<String>;

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            class_fields: Vec::new(),
            refs: 0,
            depth: 0,
        }
    }

    /// Offset of the next unread byte.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// True when every byte has been read.
    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Number of values read so far that took a back-reference slot.
    pub fn ref_count(&self) -> usize {
        self.refs
    }

    /// Number of class definitions read so far.
    pub fn class_count(&self) -> usize {
        self.class_fields.len()
    }

    /// The next byte, not consumed.
    pub fn peek(&self) -> Result<u8> {
        match self.buf.get(self.pos) {
            Some(b) => Ok(*b),
            None => err(format!(
                "unexpected end of hessian data at offset {}",
                self.pos
            )),
        }
    }

    fn byte(&mut self) -> Result<u8> {
        let b = self.peek()?;
        self.skip_peeked();
        Ok(b)
    }

    /// Consumes the byte [`Reader::peek`] just returned. `pos < buf.len()` then, so the
    /// addition cannot saturate; saturating keeps it panic-free if a caller ever breaks that.
    fn skip_peeked(&mut self) {
        self.pos = self.pos.saturating_add(1);
    }

    /// One more value holding a back-reference slot. Saturating: a body has fewer values than
    /// bytes, so the count cannot reach `usize::MAX`.
    fn count_ref(&mut self) {
        self.refs = self.refs.saturating_add(1);
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| Some((end, self.buf.get(self.pos..end)?))) {
            Some((end, s)) => {
                self.pos = end;
                Ok(s)
            }
            None => err(format!(
                "hessian value needs {n} bytes at offset {}, only {} left",
                self.pos,
                self.remaining()
            )),
        }
    }

    fn be(&mut self, n: usize) -> Result<u64> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// Refuses a count announced by the input that cannot possibly fit in what remains
    /// (every element takes at least `min_bytes`): this bounds loops by the input size.
    fn check_count(&self, count: usize, min_bytes: usize, what: &str) -> Result<()> {
        if count.saturating_mul(min_bytes) > self.remaining() {
            return err(format!(
                "{what} announces {count} elements but only {} bytes remain",
                self.remaining()
            ));
        }
        Ok(())
    }

    // ---- scalars -------------------------------------------------------------------------

    /// True when the next value is an int (any of its encodings).
    pub fn next_is_int(&self) -> bool {
        matches!(self.peek(), Ok(b'I' | 0x80..=0xd7))
    }

    /// True when the next value is a string (any of its encodings, first chunk).
    pub fn next_is_string(&self) -> bool {
        matches!(self.peek(), Ok(0x00..=0x1f | 0x30..=0x33 | b'S' | b'R'))
    }

    /// Reads an `int` in any of its encodings.
    pub fn read_int(&mut self) -> Result<i32> {
        let at = self.pos;
        let b = self.byte()?;
        Ok(match b {
            b'I' => self.be(4)? as u32 as i32,
            0x80..=0xbf => i32::from(b).wrapping_sub(0x90),
            0xc0..=0xcf => (i32::from(b).wrapping_sub(0xc8) << 8) | i32::from(self.byte()?),
            0xd0..=0xd7 => {
                let rest = self.be(2)? as i32;
                (i32::from(b).wrapping_sub(0xd4) << 16) | rest
            }
            other => {
                return err(format!(
                    "expected a hessian int at offset {at}, found byte 0x{other:02x}"
                ))
            }
        })
    }

    /// Reads a `long` in any of its encodings (callers have already checked the tag).
    fn read_long(&mut self) -> Result<i64> {
        let at = self.pos;
        let b = self.byte()?;
        Ok(match b {
            b'L' => self.be(8)? as i64,
            0xd8..=0xef => i64::from(b).wrapping_sub(0xe0),
            0xf0..=0xff => (i64::from(b).wrapping_sub(0xf8) << 8) | i64::from(self.byte()?),
            0x38..=0x3f => (i64::from(b).wrapping_sub(0x3c) << 16) | self.be(2)? as i64,
            0x59 => i64::from(self.be(4)? as u32 as i32),
            other => {
                return err(format!(
                    "expected a hessian long at offset {at}, found byte 0x{other:02x}"
                ))
            }
        })
    }

    /// Reads a string, or `None` for a Hessian null (Dubbo writes null for absent versions).
    pub fn read_string(&mut self) -> Result<Option<String>> {
        if self.peek()? == b'N' {
            self.skip_peeked();
            return Ok(None);
        }
        let mut units = Vec::new();
        self.string_chunks(Some(&mut units))?;
        Ok(Some(String::from_utf16_lossy(&units)))
    }

    /// Reads a string value that must be present (null is read as the empty string).
    pub fn read_str(&mut self) -> Result<String> {
        Ok(self.read_string()?.unwrap_or_default())
    }

    /// Reads the chunks of one string. Lengths count UTF-16 units (Java `char`s), not bytes,
    /// so the characters have to be walked; `out` collects them when the caller wants the text.
    fn string_chunks(&mut self, mut out: Option<&mut Vec<u16>>) -> Result<()> {
        loop {
            let at = self.pos;
            let tag = self.byte()?;
            let (len, last) = match tag {
                0x00..=0x1f => (usize::from(tag), true),
                0x30..=0x33 => (
                    (usize::from(tag & 0x03) << 8) | usize::from(self.byte()?),
                    true,
                ),
                b'S' => (self.be(2)? as usize, true),
                b'R' => (self.be(2)? as usize, false),
                other => {
                    return err(format!(
                        "expected a hessian string at offset {at}, found byte 0x{other:02x}"
                    ))
                }
            };
            self.check_count(len, 1, "string chunk")?;
            self.utf8_units(len, out.as_deref_mut())?;
            if last {
                return Ok(());
            }
        }
    }

    /// Walks `units` UTF-16 units of Hessian "UTF-8". Java writers emit supplementary
    /// characters as two 3-byte surrogates (CESU-8); other writers emit one 4-byte sequence
    /// that counts as two units. Both are accepted.
    fn utf8_units(&mut self, units: usize, mut out: Option<&mut Vec<u16>>) -> Result<()> {
        let mut left = units;
        while left > 0 {
            let at = self.pos;
            let lead = self.byte()?;
            let (extra, init) = match lead {
                0x00..=0x7f => (0, u32::from(lead)),
                0xc0..=0xdf => (1, u32::from(lead & 0x1f)),
                0xe0..=0xef => (2, u32::from(lead & 0x0f)),
                0xf0..=0xf7 => (3, u32::from(lead & 0x07)),
                other => {
                    return err(format!(
                        "invalid utf-8 lead byte 0x{other:02x} at offset {at}"
                    ))
                }
            };
            let mut cp = init;
            for _ in 0..extra {
                let c = self.byte()?;
                if c & 0xc0 != 0x80 {
                    return err(format!(
                        "invalid utf-8 continuation byte 0x{c:02x} at offset {}",
                        self.pos.saturating_sub(1)
                    ));
                }
                cp = (cp << 6) | u32::from(c & 0x3f);
            }
            if extra == 3 {
                // One 4-byte sequence is two Java chars.
                if left < 2 {
                    return err(format!(
                        "4-byte utf-8 sequence at offset {at} splits a string chunk"
                    ));
                }
                left = left.saturating_sub(2);
                if let Some(v) = out.as_deref_mut() {
                    if v.len().saturating_add(2) <= MAX_COLLECTED_UNITS {
                        let c = cp.saturating_sub(0x10000);
                        v.push(0xd800 | ((c >> 10) & 0x3ff) as u16);
                        v.push(0xdc00 | (c & 0x3ff) as u16);
                    }
                }
            } else {
                left = left.saturating_sub(1);
                if let Some(v) = out.as_deref_mut() {
                    if v.len() < MAX_COLLECTED_UNITS {
                        v.push((cp & 0xffff) as u16);
                    }
                }
            }
        }
        Ok(())
    }

    fn skip_binary(&mut self) -> Result<()> {
        loop {
            let at = self.pos;
            let tag = self.byte()?;
            let (len, last) = match tag {
                0x20..=0x2f => (usize::from(tag & 0x0f), true),
                0x34..=0x37 => (
                    (usize::from(tag & 0x03) << 8) | usize::from(self.byte()?),
                    true,
                ),
                b'B' => (self.be(2)? as usize, true),
                b'A' => (self.be(2)? as usize, false),
                other => {
                    return err(format!(
                        "expected a hessian binary chunk at offset {at}, found byte 0x{other:02x}"
                    ))
                }
            };
            self.take(len)?;
            if last {
                return Ok(());
            }
        }
    }

    /// A list or map type: a type name (string) or a reference to an earlier type (int).
    fn skip_type(&mut self) -> Result<()> {
        if self.next_is_string() {
            self.string_chunks(None)
        } else {
            self.read_int().map(drop)
        }
    }

    /// A non-negative length or index written as a Hessian int.
    fn read_len(&mut self, what: &str) -> Result<usize> {
        let n = self.read_int()?;
        usize::try_from(n).or_else(|_| err(format!("negative {what} {n}")))
    }

    /// `'C' name field-count field-name*`: remembers the field count for later instances.
    fn class_def(&mut self) -> Result<()> {
        self.skip_peeked(); // the 'C'
        self.string_chunks(None)?;
        let fields = self.read_len("class field count")?;
        self.check_count(fields, 1, "class definition")?;
        for _ in 0..fields {
            self.string_chunks(None)?;
        }
        self.class_fields.push(fields);
        Ok(())
    }

    fn instance(&mut self, def: usize) -> Result<()> {
        let Some(&fields) = self.class_fields.get(def) else {
            return err(format!(
                "object instance refers to class definition {def}, only {} defined",
                self.class_fields.len()
            ));
        };
        self.count_ref();
        self.nested(|r| {
            for _ in 0..fields {
                r.skip_value()?;
            }
            Ok(())
        })
    }

    fn nested(&mut self, f: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        if self.depth >= MAX_DEPTH {
            return err(format!("hessian values nested deeper than {MAX_DEPTH}"));
        }
        // Below MAX_DEPTH here, and every increment is undone: neither end can be reached.
        self.depth = self.depth.saturating_add(1);
        let r = f(self);
        self.depth = self.depth.saturating_sub(1);
        r
    }

    fn fixed_values(&mut self, count: usize) -> Result<()> {
        self.check_count(count, 1, "list")?;
        self.count_ref();
        self.nested(|r| {
            for _ in 0..count {
                r.skip_value()?;
            }
            Ok(())
        })
    }

    /// Values up to (and including) the closing `'Z'`; `pairs` for maps.
    fn values_until_end(&mut self, pairs: bool) -> Result<()> {
        self.count_ref();
        self.nested(|r| {
            while r.peek()? != b'Z' {
                r.skip_value()?;
                if pairs {
                    r.skip_value()?;
                }
            }
            r.skip_peeked();
            Ok(())
        })
    }

    /// Skips exactly one value of any type.
    pub fn skip_value(&mut self) -> Result<()> {
        // Class definitions prefix the value that uses them; loop instead of recursing so a
        // run of definitions cannot deepen the stack.
        while self.peek()? == b'C' {
            self.class_def()?;
        }
        let at = self.pos;
        let tag = self.peek()?;
        match tag {
            b'N' | b'T' | b'F' => {
                self.skip_peeked();
                Ok(())
            }
            // int
            b'I' | 0x80..=0xd7 => self.read_int().map(drop),
            // long
            b'L' | 0xd8..=0xff | 0x38..=0x3f | 0x59 => self.read_long().map(drop),
            // double
            b'D' => self.skip_n(9),
            0x5b | 0x5c => self.skip_n(1),
            0x5d => self.skip_n(2),
            0x5e => self.skip_n(3),
            0x5f => self.skip_n(5),
            // date: milliseconds (8 bytes) or minutes (4 bytes)
            0x4a => self.skip_n(9),
            0x4b => self.skip_n(5),
            // string / binary
            0x00..=0x1f | 0x30..=0x33 | b'S' | b'R' => self.string_chunks(None),
            0x20..=0x2f | 0x34..=0x37 | b'A' | b'B' => self.skip_binary(),
            // lists
            0x55 => {
                self.skip_peeked();
                self.skip_type()?;
                self.values_until_end(false)
            }
            b'W' => {
                self.skip_peeked();
                self.values_until_end(false)
            }
            b'V' => {
                self.skip_peeked();
                self.skip_type()?;
                let n = self.read_len("list length")?;
                self.fixed_values(n)
            }
            b'X' => {
                self.skip_peeked();
                let n = self.read_len("list length")?;
                self.fixed_values(n)
            }
            0x70..=0x77 => {
                self.skip_peeked();
                self.skip_type()?;
                self.fixed_values(usize::from(tag & 0x07))
            }
            0x78..=0x7f => {
                self.skip_peeked();
                self.fixed_values(usize::from(tag & 0x07))
            }
            // maps
            b'M' => {
                self.skip_peeked();
                self.skip_type()?;
                self.values_until_end(true)
            }
            b'H' => {
                self.skip_peeked();
                self.values_until_end(true)
            }
            // objects
            b'O' => {
                self.skip_peeked();
                let def = self.read_len("class definition reference")?;
                self.instance(def)
            }
            0x60..=0x6f => {
                self.skip_peeked();
                self.instance(usize::from(tag & 0x0f))
            }
            // back-reference to an earlier list/map/object
            b'Q' => {
                self.skip_peeked();
                self.read_len("reference").map(drop)
            }
            other => err(format!("invalid hessian tag 0x{other:02x} at offset {at}")),
        }
    }

    fn skip_n(&mut self, n: usize) -> Result<()> {
        self.take(n).map(drop)
    }

    /// Consumes the start of a map (`'H'`, or `'M'` and its type); errors on anything else.
    pub fn begin_map(&mut self) -> Result<()> {
        let at = self.pos;
        match self.byte()? {
            b'H' => {}
            b'M' => self.skip_type()?,
            other => {
                return err(format!(
                    "expected a hessian map at offset {at}, found byte 0x{other:02x}"
                ))
            }
        }
        self.count_ref();
        Ok(())
    }

    /// True (and consumed) when the next byte closes a map or variable-length list.
    pub fn end_of_map(&mut self) -> Result<bool> {
        if self.peek()? == b'Z' {
            self.skip_peeked();
            return Ok(true);
        }
        Ok(false)
    }

    /// Reads a value as text when it is a scalar metadata can carry (string, int, long,
    /// boolean); skips anything else (null, maps, objects, ...) and returns `None`.
    pub fn read_scalar(&mut self) -> Result<Scalar> {
        match self.peek()? {
            0x00..=0x1f | 0x30..=0x33 | b'S' | b'R' => self.read_string(),
            b'I' | 0x80..=0xd7 => Ok(Some(self.read_int()?.to_string())),
            b'L' | 0xd8..=0xff | 0x38..=0x3f | 0x59 => Ok(Some(self.read_long()?.to_string())),
            b'T' => {
                self.skip_peeked();
                Ok(Some("true".into()))
            }
            b'F' => {
                self.skip_peeked();
                Ok(Some("false".into()))
            }
            _ => self.skip_value().map(|()| None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip_all(bytes: &[u8]) -> Result<usize> {
        let mut r = Reader::new(bytes);
        r.skip_value()?;
        Ok(r.pos())
    }

    #[test]
    fn ints_in_every_form() {
        for (bytes, v) in [
            (&[0x90][..], 0),
            (&[0x80], -16),
            (&[0xbf], 47),
            (&[0xc8, 0x30], 48),
            (&[0xc0, 0x00], -2048),
            (&[0xd4, 0x08, 0x00], 2048),
            (&[0xd0, 0x00, 0x00], -262144),
            (&[b'I', 0x00, 0x04, 0x00, 0x00], 262144),
            (&[b'I', 0xff, 0xff, 0xff, 0xff], -1),
        ] {
            assert_eq!(Reader::new(bytes).read_int(), Ok(v), "{bytes:02x?}");
            assert_eq!(skip_all(bytes), Ok(bytes.len()));
        }
    }

    #[test]
    fn strings_count_utf16_units() {
        // "中文": two chars, six bytes.
        let b = [0x02, 0xe4, 0xb8, 0xad, 0xe6, 0x96, 0x87];
        assert_eq!(Reader::new(&b).read_string(), Ok(Some("中文".into())));
        // U+1F923 as a 4-byte sequence counts two units ...
        let b = [0x02, 0xf0, 0x9f, 0xa4, 0xa3];
        assert_eq!(Reader::new(&b).read_string(), Ok(Some("\u{1f923}".into())));
        // ... and as Java's CESU-8 surrogate pair, also two units.
        let b = [0x02, 0xed, 0xa0, 0xbe, 0xed, 0xb4, 0xa3];
        assert_eq!(Reader::new(&b).read_string(), Ok(Some("\u{1f923}".into())));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bytes in [
            &[0x40][..],
            b"Z",
            &[b'O', 0x90],
            &[0x60],
            &[0x72],
            &[b'S', 0x00],
        ] {
            assert!(skip_all(bytes).is_err(), "{bytes:02x?}");
        }
        let deep = vec![0x79u8; 200];
        assert!(skip_all(&deep).unwrap_err().0.contains("nested deeper"));
    }
}
