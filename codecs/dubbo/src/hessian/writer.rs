//! The few Hessian 2.0 encodings the codec writes: strings (attachment keys and values, error
//! messages), null (heartbeat bodies), compact ints (result flags) and untyped maps.
//!
//! Strings are written the way Java's `Hessian2Output` writes them, because Java readers are the
//! strictest peers: lengths count UTF-16 units, chunks hold at most 0x8000 units and never split
//! a surrogate pair, and a supplementary character is written as two 3-byte surrogates (Caucho's
//! `Hessian2Input` rejects 4-byte UTF-8 sequences).

/// Largest chunk Java writers emit; longer strings are sent as `'R'` chunks then a final one.
const CHUNK_UNITS: usize = 0x8000;

/// Appends Hessian null.
pub fn write_null(out: &mut Vec<u8>) {
    out.push(b'N');
}

/// Appends an int in its shortest encoding. Each arm's additions stay within `i32` for the
/// arm's range of `v` (and within a byte once shifted), so `wrapping_add` is exact there.
pub fn write_int(out: &mut Vec<u8>, v: i32) {
    match v {
        -16..=47 => out.push(v.wrapping_add(0x90) as u8),
        -2048..=2047 => out.extend_from_slice(&[(v >> 8).wrapping_add(0xc8) as u8, v as u8]),
        -262_144..=262_143 => {
            out.extend_from_slice(&[(v >> 16).wrapping_add(0xd4) as u8, (v >> 8) as u8, v as u8])
        }
        _ => {
            out.push(b'I');
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// Appends a string (see the module docs for the exact encoding).
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    let units: Vec<u16> = s.encode_utf16().collect();
    let mut rest = &units[..];
    while let Some((chunk, after)) = rest.split_at_checked(CHUNK_UNITS) {
        if after.is_empty() {
            // Exactly one chunk's worth left: it is the final chunk.
            break;
        }
        // Keep a surrogate pair inside one chunk, as Java's writer does.
        let (chunk, after) = match chunk.split_last() {
            Some((&last, head)) if (0xd800..0xdc00).contains(&last) => {
                (head, rest.get(head.len()..).unwrap_or_default())
            }
            _ => (chunk, after),
        };
        out.push(b'R');
        out.extend_from_slice(&chunk_len(chunk).to_be_bytes());
        push_units(out, chunk);
        rest = after;
    }
    let n = rest.len();
    if n <= 0x1f {
        out.push(n as u8);
    } else if n <= 0x3ff {
        out.extend_from_slice(&[0x30 | (n >> 8) as u8, n as u8]);
    } else {
        out.push(b'S');
        out.extend_from_slice(&chunk_len(rest).to_be_bytes());
    }
    push_units(out, rest);
}

/// A chunk's length field: chunks hold at most [`CHUNK_UNITS`] (0x8000) units, so it fits.
fn chunk_len(chunk: &[u16]) -> u16 {
    u16::try_from(chunk.len()).unwrap_or(u16::MAX)
}

/// UTF-16 units as Java's modified UTF-8: 1 to 3 bytes per unit, surrogates included.
fn push_units(out: &mut Vec<u8>, units: &[u16]) {
    for &u in units {
        let u = u32::from(u);
        if u < 0x80 {
            out.push(u as u8);
        } else if u < 0x800 {
            out.extend_from_slice(&[0xc0 | (u >> 6) as u8, 0x80 | (u & 0x3f) as u8]);
        } else {
            out.extend_from_slice(&[
                0xe0 | (u >> 12) as u8,
                0x80 | ((u >> 6) & 0x3f) as u8,
                0x80 | (u & 0x3f) as u8,
            ]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hessian::Reader;

    #[test]
    fn ints_round_trip() {
        for v in [
            0,
            -16,
            47,
            48,
            -17,
            2047,
            -2048,
            2048,
            262_143,
            -262_144,
            262_144,
            i32::MIN,
            i32::MAX,
        ] {
            let mut out = Vec::new();
            write_int(&mut out, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.read_int(), Ok(v));
            assert!(r.at_end());
        }
    }

    #[test]
    fn strings_match_java_encodings() {
        let mut out = Vec::new();
        write_string(&mut out, "hello");
        assert_eq!(out, b"\x05hello");

        let s = "t".repeat(32);
        out.clear();
        write_string(&mut out, &s);
        assert_eq!(&out[..2], &[0x30, 0x20]);

        let s = "t".repeat(1024);
        out.clear();
        write_string(&mut out, &s);
        assert_eq!(&out[..3], &[b'S', 0x04, 0x00]);

        // 65536 units: one non-final 0x8000 chunk, then a final 0x8000 chunk.
        let s = "t".repeat(65536);
        out.clear();
        write_string(&mut out, &s);
        assert_eq!(&out[..3], &[b'R', 0x80, 0x00]);
        assert_eq!(&out[3 + 0x8000..3 + 0x8000 + 3], &[b'S', 0x80, 0x00]);
        assert_eq!(out.len(), 65542);

        for s in ["", "中文", "\u{1f923}x", &"\u{1f923}".repeat(20000)] {
            out.clear();
            write_string(&mut out, s);
            let mut r = Reader::new(&out);
            assert_eq!(r.read_string().unwrap().as_deref(), Some(s));
            assert!(r.at_end());
        }
    }
}
