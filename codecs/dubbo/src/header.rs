//! The fixed 16-byte Dubbo frame header.
//!
//! ```text
//! 0-1   magic 0xdabb
//! 2     flags: 0x80 request, 0x40 two-way, 0x20 event, low 5 bits serialization id
//! 3     status (responses; 20 = OK)
//! 4-11  request id (big-endian 64-bit)
//! 12-15 body length (big-endian 32-bit)
//! ```

use meltemi_sdk::CodecError;

/// Header length in bytes.
pub const HEADER_LEN: usize = 16;
/// The two magic bytes.
pub const MAGIC: [u8; 2] = [0xda, 0xbb];
/// Flag bit: the frame is a request (else a response).
pub const FLAG_REQUEST: u8 = 0x80;
/// Flag bit: the request expects a response.
pub const FLAG_TWO_WAY: u8 = 0x40;
/// Flag bit: the frame is an event (heartbeat, read-only notice) rather than an invocation.
pub const FLAG_EVENT: u8 = 0x20;
/// Mask of the serialization id in the flag byte.
pub const SERIALIZATION_MASK: u8 = 0x1f;
/// Serialization id of Hessian2, Dubbo's default and the only one this codec reads.
pub const HESSIAN2: u8 = 2;

/// Response status codes (`org.apache.dubbo.remoting.exchange.Response`).
pub mod status {
    /// Success: the body holds a result flag and a value or exception.
    pub const OK: u8 = 20;
    /// Set by a consumer on itself when its own timer fires; never sent by a provider.
    pub const CLIENT_TIMEOUT: u8 = 30;
    /// The provider side gave up waiting.
    pub const SERVER_TIMEOUT: u8 = 31;
    /// The request could not be decoded.
    pub const BAD_REQUEST: u8 = 40;
    /// The response could not be encoded.
    pub const BAD_RESPONSE: u8 = 50;
    /// No such service.
    pub const SERVICE_NOT_FOUND: u8 = 60;
    /// The invocation failed on the provider (unknown invoker, filter refusal, ...).
    pub const SERVICE_ERROR: u8 = 70;
    /// Internal failure of the server.
    pub const SERVER_ERROR: u8 = 80;
    /// Client-side failure.
    pub const CLIENT_ERROR: u8 = 90;
    /// The provider's thread pool refused the request.
    pub const SERVER_THREADPOOL_EXHAUSTED_ERROR: u8 = 100;
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The raw flag byte.
    pub flags: u8,
    /// The status byte (meaningful for responses only).
    pub status: u8,
    /// Request id; a response carries its request's id.
    pub request_id: u64,
    /// Body length announced by the header.
    pub body_len: usize,
}

impl Header {
    /// True for requests.
    pub fn is_request(&self) -> bool {
        self.flags & FLAG_REQUEST != 0
    }
    /// True for requests that expect a response.
    pub fn is_two_way(&self) -> bool {
        self.flags & FLAG_TWO_WAY != 0
    }
    /// True for events (heartbeats and their replies).
    pub fn is_event(&self) -> bool {
        self.flags & FLAG_EVENT != 0
    }
    /// Whole frame length. [`Header::parse`] bounds `body_len` by `i32::MAX`, so this fits a
    /// 32-bit `usize` (wasm32); a hand-built header announcing more saturates, and
    /// `buf.get(HEADER_LEN..frame_len)` then simply finds too few bytes instead of panicking.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN.saturating_add(self.body_len)
    }

    /// Parses the header at the start of `buf`: `Ok(None)` while fewer than 16 bytes are
    /// there. The magic is checked on whatever prefix is available, so garbage is refused on
    /// its first byte instead of after 16.
    pub fn parse(buf: &[u8], max_body: usize) -> Result<Option<Header>, CodecError> {
        for (i, (got, want)) in buf.iter().zip(MAGIC).enumerate() {
            if *got != want {
                return Err(CodecError::malformed(format!(
                    "not a dubbo frame: magic byte {i} is 0x{got:02x}, expected 0x{want:02x}"
                )));
            }
        }
        let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let [_, _, flags, status, id @ .., l0, l1, l2, l3] = *h;
        let serialization = flags & SERIALIZATION_MASK;
        if serialization != HESSIAN2 {
            return Err(CodecError::malformed(format!(
                "serialization id {serialization} not supported, only hessian2 ({HESSIAN2})"
            )));
        }
        // A u32 always fits the usize of the 32- and 64-bit targets this runs on; if it did not,
        // the length is refused below like any other oversize one.
        let body_len = usize::try_from(u32::from_be_bytes([l0, l1, l2, l3])).unwrap_or(usize::MAX);
        // Java reads the length as a signed int: anything past i32::MAX is corrupt whatever
        // the configured limit.
        if body_len > max_body || body_len > i32::MAX as usize {
            return Err(CodecError::malformed(format!(
                "dubbo body of {body_len} bytes exceeds max_body_bytes ({max_body})"
            )));
        }
        Ok(Some(Header {
            flags,
            status,
            request_id: u64::from_be_bytes(id),
            body_len,
        }))
    }

    /// Appends the 16 header bytes.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(self.flags);
        out.push(self.status);
        out.extend_from_slice(&self.request_id.to_be_bytes());
        // Callers keep bodies within i32::MAX; should one not, announce a length every reader
        // refuses rather than a truncated one that would cut the stream in the wrong place.
        let len = u32::try_from(self.body_len).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
    }
}
