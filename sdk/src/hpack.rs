//! HPACK (RFC 7541) for the HTTP/2 framing toward HCM: a complete decoder (static and dynamic
//! table, size updates, Huffman) and the small encoder the front needs (literals without
//! indexing, so the encoder keeps no state and HCM's decoder table stays empty).
//!
//! Written here rather than taken from a crate: the HPACK code of the maintained HTTP/2 stacks is
//! private to them (`h2`), and the stand-alone crates are either unmaintained or std-only with
//! logging dependencies and panicking paths on hostile input. This module follows the SDK's
//! lints (no indexing, unchecked arithmetic or panics) and bounds every allocation: the dynamic
//! table by the size the peer may use, a decoded header list by the caller's limit.

use std::collections::VecDeque;

/// Why a header block could not be decoded (an HTTP/2 COMPRESSION_ERROR: the connection is lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HpackError(pub &'static str);

impl std::fmt::Display for HpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hpack: {}", self.0)
    }
}

/// The static table (RFC 7541 Appendix A), index 1 first.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The Huffman code (RFC 7541 Appendix B): `(code, bit length)` per symbol, EOS (256) last.
/// The code is canonical (codes of one length are consecutive, in symbol order), which the
/// decoder relies on and a test checks.
#[rustfmt::skip]
const HUFFMAN: [(u32, u8); 257] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28),
    (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28),
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28),
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28),
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28),
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28),
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28),
    (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28),
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11),
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11),
    (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6),
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6),
    (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6),
    (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8),
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10),
    (0x1ffa, 13), (0x21, 6), (0x5d, 7), (0x5e, 7),
    (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7),
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7),
    (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7),
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7),
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7),
    (0xfc, 8), (0x73, 7), (0xfd, 8), (0x1ffb, 13),
    (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6),
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5),
    (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6),
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7),
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5),
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5),
    (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15),
    (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28),
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20),
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23),
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23),
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23),
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23),
    (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23),
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23),
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24),
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22),
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21),
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24),
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23),
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21),
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23),
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22),
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19),
    (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25),
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27),
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25),
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27),
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24),
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26),
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27),
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21),
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23),
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25),
    (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26),
    (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27),
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27),
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26),
    (0x3fffffff, 30),
];

/// Longest Huffman code, in bits.
const HUFFMAN_MAX_LEN: usize = 30;
/// The EOS symbol, which must never appear in a string.
const EOS: u16 = 256;

/// Per code length: the first code of that length, how many codes have it, and where its
/// symbols start in [`Canonical::symbols`].
struct Canonical {
    first: [u32; HUFFMAN_MAX_LEN + 1],
    count: [u32; HUFFMAN_MAX_LEN + 1],
    offset: [u16; HUFFMAN_MAX_LEN + 1],
    symbols: [u16; 257],
}

/// Builds the canonical decoding tables from [`HUFFMAN`] at compile time.
const fn canonical() -> Canonical {
    let mut c = Canonical {
        first: [0; HUFFMAN_MAX_LEN + 1],
        count: [0; HUFFMAN_MAX_LEN + 1],
        offset: [0; HUFFMAN_MAX_LEN + 1],
        symbols: [0; 257],
    };
    // Constant evaluation: an out-of-range index or overflow here fails the build, not Envoy.
    #[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
    {
        let mut len = 1;
        let mut next = 0u16;
        while len <= HUFFMAN_MAX_LEN {
            c.offset[len] = next;
            let mut sym = 0;
            let mut first_set = false;
            while sym < 257 {
                let (code, l) = HUFFMAN[sym];
                if l as usize == len {
                    if !first_set {
                        c.first[len] = code;
                        first_set = true;
                    }
                    c.count[len] += 1;
                    c.symbols[next as usize] = sym as u16;
                    next += 1;
                }
                sym += 1;
            }
            len += 1;
        }
    }
    c
}

static CANONICAL: Canonical = canonical();

/// Decodes a Huffman-coded string (RFC 7541 §5.2): padding must be fewer than 8 one-bits
/// (a prefix of EOS), and EOS itself is an error.
pub fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let mut code: u32 = 0;
    let mut len: usize = 0;
    for byte in src {
        for shift in (0..8u32).rev() {
            let bit = u32::from((byte >> shift) & 1);
            code = (code << 1) | bit;
            len = len.saturating_add(1);
            if len > HUFFMAN_MAX_LEN {
                return Err(HpackError("bad Huffman code"));
            }
            let (Some(first), Some(count), Some(offset)) = (
                CANONICAL.first.get(len),
                CANONICAL.count.get(len),
                CANONICAL.offset.get(len),
            ) else {
                return Err(HpackError("bad Huffman code"));
            };
            let rank = code.checked_sub(*first).filter(|r| r < count);
            if let Some(rank) = rank {
                let index = usize::from(*offset).saturating_add(rank as usize);
                match CANONICAL.symbols.get(index) {
                    Some(&EOS) | None => return Err(HpackError("EOS in a Huffman string")),
                    Some(&sym) => out.push(u8::try_from(sym).unwrap_or(0)),
                }
                code = 0;
                len = 0;
            }
        }
    }
    // What is left must be padding: at most 7 bits, all ones (the most significant bits of EOS).
    let all_ones = len == 0 || code == (1u32 << len).wrapping_sub(1);
    if len > 7 || !all_ones {
        return Err(HpackError("bad Huffman padding"));
    }
    Ok(())
}

/// Huffman-encodes `src` (for tests and for peers that want it; the front sends raw strings).
pub fn huffman_encode(src: &[u8], out: &mut Vec<u8>) {
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &b in src {
        let (code, len) = HUFFMAN.get(usize::from(b)).copied().unwrap_or((0, 0));
        acc = (acc << len) | u64::from(code);
        bits = bits.saturating_add(u32::from(len));
        while bits >= 8 {
            bits = bits.saturating_sub(8);
            out.push(u8::try_from((acc >> bits) & 0xff).unwrap_or(0));
        }
        acc &= (1u64 << bits).wrapping_sub(1);
    }
    if bits > 0 {
        let pad = 8u32.saturating_sub(bits);
        let last = (acc << pad) | ((1u64 << pad).wrapping_sub(1));
        out.push(u8::try_from(last & 0xff).unwrap_or(0));
    }
}

/// Reads an integer with an `n`-bit prefix (RFC 7541 §5.1) from `src` at `*pos`, moving `*pos`
/// past it. Values past `u32::MAX` are refused (no header field or table is that large).
fn read_int(src: &[u8], pos: &mut usize, n: u32) -> Result<u32, HpackError> {
    let truncated = HpackError("truncated integer");
    let first = *src.get(*pos).ok_or_else(|| truncated.clone())?;
    *pos = pos.saturating_add(1);
    let max_prefix = (1u32 << n).wrapping_sub(1);
    let mut value = u32::from(first) & max_prefix;
    if value < max_prefix {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let b = *src.get(*pos).ok_or_else(|| truncated.clone())?;
        *pos = pos.saturating_add(1);
        let part = u32::from(b & 0x7f)
            .checked_shl(shift)
            .filter(|p| shift < 32 && p >> shift == u32::from(b & 0x7f))
            .ok_or(HpackError("integer too large"))?;
        value = value
            .checked_add(part)
            .ok_or(HpackError("integer too large"))?;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift = shift.saturating_add(7);
    }
}

/// Writes `value` with an `n`-bit prefix whose other bits are `flags`.
fn write_int(out: &mut Vec<u8>, flags: u8, n: u32, value: usize) {
    let max_prefix = (1usize << n).wrapping_sub(1);
    if value < max_prefix {
        out.push(flags | u8::try_from(value).unwrap_or(0));
        return;
    }
    out.push(flags | u8::try_from(max_prefix).unwrap_or(0));
    let mut rest = value.saturating_sub(max_prefix);
    while rest >= 0x80 {
        out.push(u8::try_from(rest & 0x7f).unwrap_or(0) | 0x80);
        rest >>= 7;
    }
    out.push(u8::try_from(rest).unwrap_or(0));
}

/// Reads a string literal (RFC 7541 §5.2) of at most `max` bytes once decoded.
fn read_string(src: &[u8], pos: &mut usize, max: usize) -> Result<Vec<u8>, HpackError> {
    let huffman = src.get(*pos).is_some_and(|b| b & 0x80 != 0);
    let len = usize::try_from(read_int(src, pos, 7)?).map_err(|_| HpackError("string too long"))?;
    let end = pos.checked_add(len).ok_or(HpackError("string too long"))?;
    let raw = src.get(*pos..end).ok_or(HpackError("truncated string"))?;
    *pos = end;
    // A Huffman string decodes to at most 8/5 of its length: refuse before decoding.
    let decoded_max = if huffman {
        len.saturating_mul(8) / 5
    } else {
        len
    };
    if decoded_max > max && len > max {
        return Err(HpackError("header list too large"));
    }
    if huffman {
        let mut out = Vec::with_capacity(len.saturating_add(len / 2));
        huffman_decode(raw, &mut out)?;
        if out.len() > max {
            return Err(HpackError("header list too large"));
        }
        Ok(out)
    } else {
        Ok(raw.to_vec())
    }
}

/// Bytes an entry takes in the dynamic table (RFC 7541 §4.1).
fn entry_size(name: &str, value: &str) -> usize {
    name.len().saturating_add(value.len()).saturating_add(32)
}

/// An HPACK decoder for one connection (HCM's answers).
#[derive(Debug)]
pub struct Decoder {
    /// Newest entry first.
    table: VecDeque<(String, String)>,
    size: usize,
    /// The size the encoder chose (by a size update), at most `allowed`.
    max_size: usize,
    /// The most the encoder may choose: the protocol's initial 4,096 bytes, which stays
    /// allowed until our smaller SETTINGS_HEADER_TABLE_SIZE is acknowledged.
    allowed: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with the protocol's initial table size (4,096 bytes).
    pub fn new() -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max_size: 4096,
            allowed: 4096,
        }
    }

    /// A decoder whose table size (and most the encoder may choose) is `size` bytes.
    pub fn with_table_size(size: usize) -> Self {
        Self {
            max_size: size,
            allowed: size,
            ..Self::new()
        }
    }

    /// Our SETTINGS_HEADER_TABLE_SIZE of `size` was acknowledged: the encoder may use no more.
    /// (It must say so with a size update at the start of its next block; until then the
    /// table keeps its entries, as RFC 7541 §4.2 has it.)
    pub fn set_allowed(&mut self, size: usize) {
        self.allowed = size;
    }

    /// Bytes in the dynamic table now.
    pub fn table_size(&self) -> usize {
        self.size
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            let Some((n, v)) = self.table.pop_back() else {
                self.size = 0;
                break;
            };
            self.size = self.size.saturating_sub(entry_size(&n, &v));
        }
    }

    fn insert(&mut self, name: String, value: String) {
        let size = entry_size(&name, &value);
        if size > self.max_size {
            // RFC 7541 §4.4: an entry larger than the table empties it and is not added.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size.saturating_sub(size));
        self.size = self.size.saturating_add(size);
        self.table.push_front((name, value));
    }

    fn lookup(&self, index: u32) -> Result<(String, String), HpackError> {
        let index = usize::try_from(index).map_err(|_| HpackError("bad index"))?;
        if index == 0 {
            return Err(HpackError("index 0"));
        }
        if let Some((n, v)) = STATIC.get(index.saturating_sub(1)) {
            return Ok(((*n).to_owned(), (*v).to_owned()));
        }
        self.table
            .get(index.saturating_sub(STATIC.len().saturating_add(1)))
            .cloned()
            .ok_or(HpackError("index past the dynamic table"))
    }

    /// Decodes one complete header block into `(name, value)` pairs (values that are not UTF-8
    /// are replaced lossily: the bridge's own headers are ASCII). `max_list` bounds the
    /// decoded bytes (names + values).
    pub fn decode(
        &mut self,
        block: &[u8],
        max_list: usize,
    ) -> Result<Vec<(String, String)>, HpackError> {
        let mut out = Vec::new();
        let mut pos = 0usize;
        let mut total = 0usize;
        let mut fields_seen = false;
        while let Some(&b) = block.get(pos) {
            let (name, value, index) = if b & 0x80 != 0 {
                // Indexed field.
                let (n, v) = self.lookup(read_int(block, &mut pos, 7)?)?;
                (n, v, false)
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update: only before the block's first field.
                if fields_seen {
                    return Err(HpackError("table size update after a field"));
                }
                let size = usize::try_from(read_int(block, &mut pos, 5)?)
                    .map_err(|_| HpackError("table size too large"))?;
                if size > self.allowed {
                    return Err(HpackError("table size update past the allowed size"));
                }
                self.max_size = size;
                self.evict_to(size);
                continue;
            } else {
                // Literal: with incremental indexing (01), without (0000) or never indexed (0001).
                let (prefix, index) = if b & 0xc0 == 0x40 {
                    (6, true)
                } else {
                    (4, false)
                };
                let name_index = read_int(block, &mut pos, prefix)?;
                let room = max_list.saturating_sub(total);
                let name = if name_index == 0 {
                    lossy(read_string(block, &mut pos, room)?)
                } else {
                    self.lookup(name_index)?.0
                };
                let value = lossy(read_string(block, &mut pos, room)?);
                (name, value, index)
            };
            fields_seen = true;
            total = total.saturating_add(name.len()).saturating_add(value.len());
            if total > max_list {
                return Err(HpackError("header list too large"));
            }
            if index {
                self.insert(name.clone(), value.clone());
            }
            out.push((name, value));
        }
        Ok(out)
    }
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Writes one header field as a literal without indexing, raw (not Huffman-coded) strings:
/// the name by static index when `name_index` is not 0, else spelled out. Stateless, so the
/// block is valid whatever the peer's table size.
pub fn encode_literal(out: &mut Vec<u8>, name_index: usize, name: &str, value: &str) {
    if name_index == 0 {
        out.push(0);
        write_int(out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
    } else {
        write_int(out, 0, 4, name_index);
    }
    write_int(out, 0, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// Writes a header field the static table holds whole (e.g. `:method: POST` is 3).
pub fn encode_indexed(out: &mut Vec<u8>, index: usize) {
    write_int(out, 0x80, 7, index);
}

/// The static index of `name` (its first entry), or 0.
pub fn static_name_index(name: &str) -> usize {
    STATIC
        .iter()
        .position(|(n, _)| *n == name)
        .map_or(0, |i| i.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn pairs(fields: &[(String, String)]) -> Vec<(&str, &str)> {
        fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn the_huffman_code_is_canonical_and_complete() {
        let mut order: Vec<usize> = (0..257).collect();
        order.sort_by_key(|&s| (HUFFMAN[s].1, s));
        let mut expected = 0u64;
        let mut prev_len = HUFFMAN[order[0]].1;
        for (i, &sym) in order.iter().enumerate() {
            let (code, len) = HUFFMAN[sym];
            if i > 0 {
                expected = (expected + 1) << (len - prev_len);
            }
            assert_eq!(u64::from(code), expected, "symbol {sym}");
            prev_len = len;
        }
        // Kraft: a complete prefix code.
        let kraft: u64 = HUFFMAN.iter().map(|(_, l)| 1u64 << (30 - l)).sum();
        assert_eq!(kraft, 1 << 30);
        assert_eq!(HUFFMAN[256], (0x3fff_ffff, 30), "EOS");
    }

    #[test]
    fn rfc7541_c4_huffman_strings() {
        for (text, code) in [
            ("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"),
            ("no-cache", "a8eb 1064 9cbf"),
            ("custom-key", "25a8 49e9 5ba9 7d7f"),
            ("custom-value", "25a8 49e9 5bb8 e8b4 bf"),
            ("302", "6402"),
            ("private", "aec3 771a 4b"),
            (
                "Mon, 21 Oct 2013 20:13:21 GMT",
                "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
            ),
            (
                "https://www.example.com",
                "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3",
            ),
        ] {
            let mut enc = Vec::new();
            huffman_encode(text.as_bytes(), &mut enc);
            assert_eq!(enc, hex(code), "{text}");
            let mut dec = Vec::new();
            huffman_decode(&hex(code), &mut dec).unwrap();
            assert_eq!(dec, text.as_bytes());
        }
    }

    #[test]
    fn rfc7541_c3_and_c4_requests_share_one_table() {
        for blocks in [
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        ] {
            let mut d = Decoder::new();
            let first = d.decode(&hex(blocks[0]), 1 << 16).unwrap();
            assert_eq!(
                pairs(&first),
                [
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "www.example.com")
                ]
            );
            assert_eq!(d.table_size(), 57);
            let second = d.decode(&hex(blocks[1]), 1 << 16).unwrap();
            assert_eq!(pairs(&second)[4], ("cache-control", "no-cache"));
            assert_eq!(pairs(&second)[3], (":authority", "www.example.com"));
            assert_eq!(d.table_size(), 110);
            let third = d.decode(&hex(blocks[2]), 1 << 16).unwrap();
            assert_eq!(
                pairs(&third),
                [
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    (":authority", "www.example.com"),
                    ("custom-key", "custom-value")
                ]
            );
            assert_eq!(d.table_size(), 164);
        }
    }

    #[test]
    fn rfc7541_c6_responses_evict_with_a_256_byte_table() {
        let mut d = Decoder::with_table_size(256);
        let first = d
            .decode(
                &hex("4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3"),
                1 << 16,
            )
            .unwrap();
        assert_eq!(
            pairs(&first),
            [
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com")
            ]
        );
        assert_eq!(d.table_size(), 222);
        let second = d.decode(&hex("4883 640e ff c1 c0 bf"), 1 << 16).unwrap();
        assert_eq!(pairs(&second)[0], (":status", "307"));
        assert_eq!(pairs(&second)[3], ("location", "https://www.example.com"));
        assert_eq!(d.table_size(), 222);
        let third = d
            .decode(
                &hex("88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07"),
                1 << 16,
            )
            .unwrap();
        assert_eq!(
            pairs(&third),
            [
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", "https://www.example.com"),
                ("content-encoding", "gzip"),
                (
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
                )
            ]
        );
        assert_eq!(d.table_size(), 215);
    }

    #[test]
    fn table_size_updates() {
        let mut d = Decoder::new();
        // Literal with indexing "a: b", then a size update to 0 empties the table.
        d.decode(&[0x40, 1, b'a', 1, b'b'], 100).unwrap();
        assert_eq!(d.table_size(), 34);
        d.decode(&[0x20], 100).unwrap();
        assert_eq!(d.table_size(), 0);
        assert!(d.decode(&[0xbe], 100).is_err(), "index 62 is gone");
        // Back to 4096 is allowed; past what we allowed is not; after a field is not.
        d.decode(&[0x3f, 0xe1, 0x1f], 100).unwrap();
        assert!(d.decode(&[0x3f, 0xe2, 0x1f], 100).is_err());
        assert!(d.decode(&[0x88, 0x20], 100).is_err());
        d.set_allowed(0);
        assert!(d.decode(&[0x3f, 0x01], 100).is_err(), "32 > 0 allowed");
        d.decode(&[0x20, 0x88], 100).unwrap();
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut d = Decoder::new();
        for bad in [
            &[0x80][..],                                 // index 0
            &[0xff, 0x80, 0x80, 0x80, 0x80, 0x10],       // integer past u32
            &[0xc0],                                     // index 64: empty dynamic table
            &[0x00, 0x05, b'a'],                         // truncated string
            &[0x00, 0x81, 0x00, 0x00],                   // Huffman padding of zeros
            &[0x00, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00], // EOS inside a string
            &[0x7f],                                     // truncated integer
        ] {
            assert!(d.decode(bad, 1 << 16).is_err(), "{bad:02x?}");
        }
        // More than 7 bits of padding.
        let mut out = Vec::new();
        assert!(huffman_decode(&[0xff], &mut out).is_err());
        assert!(
            d.decode(&[0x00, 0x01, b'a', 0x01, b'b'], 1).is_err(),
            "list limit"
        );
    }

    #[test]
    fn encoded_literals_decode() {
        let mut block = Vec::new();
        encode_indexed(&mut block, 3);
        encode_literal(&mut block, 4, ":path", "/svc/method");
        encode_literal(&mut block, 0, "x-meltemi-kind", "request");
        let long = "v".repeat(300);
        encode_literal(&mut block, 0, "long", &long);
        let fields = Decoder::new().decode(&block, 1 << 16).unwrap();
        assert_eq!(
            pairs(&fields),
            [
                (":method", "POST"),
                (":path", "/svc/method"),
                ("x-meltemi-kind", "request"),
                ("long", long.as_str())
            ]
        );
        assert_eq!(static_name_index("content-length"), 28);
        assert_eq!(static_name_index("x-meltemi-kind"), 0);
    }

    proptest! {
        #[test]
        fn huffman_round_trips(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut enc = Vec::new();
            huffman_encode(&data, &mut enc);
            let mut dec = Vec::new();
            huffman_decode(&enc, &mut dec).unwrap();
            prop_assert_eq!(dec, data);
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panic(
            blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8)
        ) {
            let mut d = Decoder::new();
            for b in blocks {
                let _ = d.decode(&b, 1 << 12);
                prop_assert!(d.table_size() <= 4096);
            }
        }
    }
}
