//! A bounds-checked reader over a byte slice, and the decoder's internal error type.
//!
//! Every read in the codec goes through [`Cursor`], so no input can index out of bounds. Running
//! out of bytes means two different things depending on whether the frame end is known: in an
//! unframed stream more bytes may still arrive ([`DecodeError::Incomplete`]), inside a frame whose
//! length was declared they never will ([`DecodeError::Malformed`]). The cursor carries that
//! distinction so the protocol readers do not have to.

/// Why a decode step could not produce a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Not enough bytes yet: ask the framework for more.
    Incomplete,
    /// The bytes can never form a valid message.
    Malformed(String),
}

/// Shorthand for decoder results.
pub(crate) type Res<T> = Result<T, DecodeError>;

/// Build a [`DecodeError::Malformed`].
pub(crate) fn malformed<T>(msg: impl Into<String>) -> Res<T> {
    Err(DecodeError::Malformed(msg.into()))
}

// Bytes moved over by every cursor on this thread (reads and skips alike): the unit tests use
// it to prove that resumed decoding does linear work. Test builds only.
#[cfg(test)]
thread_local! {
    static ADVANCED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The [`ADVANCED`] counter's current value.
#[cfg(test)]
pub(crate) fn advanced() -> u64 {
    ADVANCED.with(|c| c.get())
}

#[cfg(test)]
fn count(n: usize) {
    ADVANCED.with(|c| c.set(c.get() + n as u64));
}

#[cfg(not(test))]
#[inline(always)]
fn count(_: usize) {}

/// A forward-only reader over `buf`.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// True when `buf` ends at a declared frame end: a short read is then corruption.
    bounded: bool,
}

impl<'a> Cursor<'a> {
    /// A reader over a prefix of a stream that may still grow.
    pub(crate) fn open(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            bounded: false,
        }
    }

    /// A reader over a stream prefix like [`Cursor::open`], starting at offset `pos` (clamped
    /// to the end): where a resumed walk left off.
    pub(crate) fn open_at(buf: &'a [u8], pos: usize) -> Self {
        Self {
            buf,
            pos: pos.min(buf.len()),
            bounded: false,
        }
    }

    /// A reader over a whole frame whose length the transport declared.
    pub(crate) fn bounded(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            bounded: true,
        }
    }

    /// Bytes consumed so far.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Move the read position back to `mark`, an earlier [`Cursor::pos`].
    pub(crate) fn rewind(&mut self, mark: usize) {
        self.pos = mark.min(self.pos);
    }

    /// Bytes left after the read position.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The error for "the next `what` does not fit in what we have".
    pub(crate) fn short<T>(&self, what: &str) -> Res<T> {
        if self.bounded {
            malformed(format!("truncated {what}: frame ends too early"))
        } else {
            Err(DecodeError::Incomplete)
        }
    }

    /// Take the next `n` bytes without copying.
    pub(crate) fn bytes(&mut self, n: usize, what: &str) -> Res<&'a [u8]> {
        let end = match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => end,
            _ => return self.short(what),
        };
        let out = self.buf.get(self.pos..end);
        match out {
            Some(out) => {
                count(n);
                self.pos = end;
                Ok(out)
            }
            None => self.short(what),
        }
    }

    /// Skip `n` bytes.
    pub(crate) fn skip(&mut self, n: usize, what: &str) -> Res<()> {
        self.bytes(n, what).map(|_| ())
    }

    /// The next byte, without consuming it.
    pub(crate) fn peek(&self, what: &str) -> Res<u8> {
        match self.buf.get(self.pos) {
            Some(b) => Ok(*b),
            None => self.short(what),
        }
    }

    /// One byte.
    pub(crate) fn u8(&mut self, what: &str) -> Res<u8> {
        let b = self.peek(what)?;
        count(1);
        // `peek` found a byte at `pos`, so `pos + 1 <= len`: cannot saturate.
        self.pos = self.pos.saturating_add(1);
        Ok(b)
    }

    /// A big-endian i16.
    pub(crate) fn i16(&mut self, what: &str) -> Res<i16> {
        let b = self.bytes(2, what)?;
        Ok(i16::from_be_bytes([
            b.first().copied().unwrap_or(0),
            b.get(1).copied().unwrap_or(0),
        ]))
    }

    /// A big-endian u16.
    pub(crate) fn u16(&mut self, what: &str) -> Res<u16> {
        self.i16(what).map(|v| v as u16)
    }

    /// A big-endian i32.
    pub(crate) fn i32(&mut self, what: &str) -> Res<i32> {
        let b = self.bytes(4, what)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        Ok(i32::from_be_bytes(a))
    }

    /// An unsigned LEB128 varint of at most `max_bytes` bytes (5 for 32-bit, 10 for 64-bit
    /// values). Bits beyond 64 are dropped, like Apache Thrift's readers do; a longer encoding is
    /// corrupt.
    pub(crate) fn varint(&mut self, max_bytes: usize, what: &str) -> Res<u64> {
        let mut value: u64 = 0;
        for i in 0..max_bytes {
            let b = self.u8(what)?;
            // i < max_bytes (at most 10): the product is at most 63 + 7.
            let shift = u32::try_from(i).unwrap_or(u32::MAX).saturating_mul(7);
            if shift < 64 {
                value |= u64::from(b & 0x7f) << shift;
            }
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        malformed(format!("{what}: varint longer than {max_bytes} bytes"))
    }

    /// A 32-bit varint, truncated to 32 bits (Thrift writes i32 values as their u32 pattern).
    pub(crate) fn varint32(&mut self, what: &str) -> Res<i32> {
        self.varint(5, what).map(|v| v as u32 as i32)
    }

    /// Skip a varint of at most `max_bytes` bytes without decoding it.
    pub(crate) fn skip_varint(&mut self, max_bytes: usize, what: &str) -> Res<()> {
        self.varint(max_bytes, what).map(|_| ())
    }
}

/// A length read from the wire, checked: negative is corrupt, and so is anything larger than
/// the bytes a bounded frame has left.
pub(crate) fn checked_len(cur: &Cursor<'_>, len: i32, what: &str) -> Res<usize> {
    if len < 0 {
        return malformed(format!("negative {what} {len}"));
    }
    let len = len as usize;
    if cur.bounded && len > cur.remaining() {
        return malformed(format!(
            "{what} {len} exceeds the {} bytes left in the frame",
            cur.remaining()
        ));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_cursor_short_read_is_incomplete_bounded_is_malformed() {
        assert_eq!(Cursor::open(&[1]).i32("x"), Err(DecodeError::Incomplete));
        assert!(matches!(
            Cursor::bounded(&[1]).i32("x"),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn varints() {
        assert_eq!(Cursor::open(&[0x80, 0x01]).varint32("v"), Ok(128));
        // Envoy's "-1 as a 5-byte varint" vector.
        assert_eq!(
            Cursor::open(&[0xff, 0xff, 0xff, 0xff, 0x1f]).varint32("v"),
            Ok(-1)
        );
        // Envoy's "more than 32 bits" vector: six bytes is corrupt.
        let r = Cursor::open(&[0x81, 0x81, 0x81, 0x81, 0x81, 0]).varint32("v");
        assert!(matches!(r, Err(DecodeError::Malformed(_))));
        // An unterminated varint may still complete.
        assert_eq!(
            Cursor::open(&[0x81]).varint32("v"),
            Err(DecodeError::Incomplete)
        );
    }

    #[test]
    fn lengths() {
        let c = Cursor::bounded(&[0; 4]);
        assert!(checked_len(&c, -1, "len").is_err());
        assert!(checked_len(&c, 5, "len").is_err());
        assert_eq!(checked_len(&c, 4, "len"), Ok(4));
        assert_eq!(checked_len(&Cursor::open(&[]), 1000, "len"), Ok(1000));
    }
}
