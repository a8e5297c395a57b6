//! A conformance kit for codec authors: drives a [`Codec`] through the framework natively, with
//! the checks every codec must pass before it goes into a wasm VM.
//!
//! ```
//! # use meltemi_sdk::testing;
//! # fn stream() -> Vec<u8> { Vec::new() }
//! // In a codec crate's tests, with a captured stream of requests from a real client:
//! // testing::conformance::<MyCodec>(&MyConfig::default(), &stream()).unwrap();
//! ```
//!
//! [`conformance`] checks, on a stream of whole requests (as one real client sent them):
//! - **splits**: the stream cut at every offset into two reads gives the front exactly the HTTP
//!   requests it gives for the stream in one read, and a partial frame never reaches HCM;
//! - **pipelining**: the stream twice in one read gives twice the requests;
//! - **replies**: for every request and every [`ErrorKind`], [`Codec::error_reply`] is one
//!   whole frame that the codec decodes as an answer (`Response` or `Exception`) with the
//!   request's id, or `None`; one-way calls get no reply from the framework; heartbeats get a
//!   `HeartbeatReply` with their id;
//! - **extreme lengths**: every 4-byte window of every frame overwritten with lengths near
//!   `u32::MAX` and negative `i32`s decodes to an error, "need more" or a frame within the
//!   buffer, and never panics (run the same under wasm32 through the test host for the 32-bit
//!   `usize` case).
//!
//! It returns what it saw, so a test can assert more (how many requests, which kinds).

// Test tooling, compiled natively only (never into a filter): indexing its own buffers is fine.
#![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use crate::config::{FilterConfig, Limits, Role};
use crate::front::Front;
use crate::stats::Recorder;
use crate::{Codec, ErrorKind, Message, MessageKind};

/// What [`conformance`] found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Kinds of the messages in the stream, in order.
    pub kinds: Vec<MessageKind>,
    /// Error replies checked (requests × kinds that got one).
    pub error_replies: usize,
    /// Corrupted frames decoded without panic.
    pub extreme_cases: usize,
}

/// Length-field values that overflow careless arithmetic, on 32-bit `usize` above all (the one
/// list every extreme-length test uses: this kit, the codecs' window sweeps, the wasm host).
pub const EXTREME_LENGTHS: [u32; 7] = [
    0xFFFF_FFFF,
    0xFFFF_FFF0,
    0xFFFF_FFEF,
    0xFFFF_FF00,
    0x8000_0000,
    0x7FFF_FFFF,
    0x7FFF_FFF0,
];

/// Runs every check on `stream` (whole requests, back to back); the error names the first
/// check that failed.
pub fn conformance<C: Codec>(config: &C::Config, stream: &[u8]) -> Result<Report, String> {
    let messages = decode_all::<C>(config, stream)?;
    if messages.is_empty() {
        return Err("the stream holds no message".into());
    }
    let whole = front_http::<C>(config, &[stream])?;
    for cut in 1..stream.len() {
        let (a, b) = stream.split_at(cut);
        let split = front_http::<C>(config, &[a, b])?;
        if split != whole {
            return Err(format!(
                "cut at byte {cut}: the front's HTTP differs from one read"
            ));
        }
    }
    let twice = [stream, stream].concat();
    let doubled = decode_all::<C>(config, &twice)?;
    if doubled.len() != 2 * messages.len() {
        return Err(format!(
            "pipelining: {} messages twice gave {}",
            messages.len(),
            doubled.len()
        ));
    }
    // Replies are built by the value that decoded the stream (it knows the connection's
    // transport), as the framework does.
    let mut stream_codec = C::new(config);
    let mut rest = stream;
    let mut error_replies = 0;
    while let Ok(Some(m)) = stream_codec.decode(rest) {
        error_replies += check_replies::<C>(config, &mut stream_codec, &m)?;
        rest = rest.get(m.len..).unwrap_or(&[]);
    }
    let mut extreme_cases = 0;
    for (_, frame) in &messages {
        extreme_cases += check_extreme_lengths::<C>(config, frame)?;
    }
    Ok(Report {
        kinds: messages.iter().map(|(m, _)| m.kind).collect(),
        error_replies,
        extreme_cases,
    })
}

/// Decodes a stream of whole messages with one codec value.
fn decode_all<C: Codec>(
    config: &C::Config,
    stream: &[u8],
) -> Result<Vec<(Message, Vec<u8>)>, String> {
    let mut codec = C::new(config);
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let m = match codec.decode(rest) {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err(format!(
                    "{} bytes left that never form a message",
                    rest.len()
                ))
            }
            Err(e) => return Err(format!("decode failed after {} messages: {e}", out.len())),
        };
        if m.len == 0 || m.len > rest.len() {
            return Err(format!("impossible frame length {}", m.len));
        }
        let (frame, tail) = rest.split_at(m.len);
        out.push((m, frame.to_vec()));
        rest = tail;
    }
    Ok(out)
}

/// The front's HTTP for the stream arriving in `reads`, HCM consuming nothing in between.
fn front_http<C: Codec>(config: &C::Config, reads: &[&[u8]]) -> Result<Vec<u8>, String> {
    let filter = Rc::new(FilterConfig {
        role: Role::Front,
        service: None,
        limits: Limits::default(),
        known_services: Vec::new(),
        known_methods: Vec::new(),
        propagate_headers: Vec::new(),
        hcm_protocol: crate::config::HcmProtocol::Http1,
        codec: config.clone(),
    });
    let mut front = Front::<C>::new(filter);
    let mut sink = Recorder::default();
    let mut buffer: Vec<u8> = Vec::new();
    for read in reads {
        buffer.extend_from_slice(read);
        if let Some(new) = front
            .on_client_data(&buffer, 0, &mut sink)
            .map_err(|f| format!("the front closed the connection: {}", f.0))?
        {
            buffer = new;
        }
    }
    let mut http = Vec::new();
    let mut rest = buffer.as_slice();
    while !rest.is_empty() {
        match crate::http1::parse_request(rest, usize::MAX) {
            Ok(Some(p)) => {
                http.extend_from_slice(rest.get(..p.len).unwrap_or(&[]));
                rest = rest.get(p.len..).unwrap_or(&[]);
            }
            _ => return Err("a partial frame or raw bytes reached HCM".into()),
        }
    }
    // The sequence tokens are random per connection; compare what follows them.
    Ok(strip_tokens(&http))
}

fn strip_tokens(http: &[u8]) -> Vec<u8> {
    let name = b"x-meltemi-seq: ";
    let mut out = Vec::with_capacity(http.len());
    let mut i = 0;
    while let Some(rest) = http.get(i..) {
        if rest.is_empty() {
            break;
        }
        if rest.starts_with(name) {
            out.extend_from_slice(name);
            i += name.len() + 17;
        } else {
            out.push(rest[0]);
            i += 1;
        }
    }
    out
}

fn check_replies<C: Codec>(
    config: &C::Config,
    codec: &mut C,
    request: &Message,
) -> Result<usize, String> {
    let mut checked = 0;
    match request.kind {
        MessageKind::OneWay => return Ok(0),
        MessageKind::Heartbeat => {
            let Some(reply) = codec.heartbeat_reply(request) else {
                return Ok(0);
            };
            let m = decode_one::<C>(config, &reply, "heartbeat reply")?;
            if m.kind != MessageKind::HeartbeatReply || m.request_id != request.request_id {
                return Err(format!(
                    "heartbeat reply is {:?} {} for heartbeat {}",
                    m.kind, m.request_id, request.request_id
                ));
            }
            return Ok(1);
        }
        _ => {}
    }
    for kind in ErrorKind::ALL {
        let Some(reply) = codec.error_reply(request, kind, "conformance check") else {
            continue;
        };
        let m = decode_one::<C>(config, &reply, kind.as_str())?;
        if !matches!(m.kind, MessageKind::Response | MessageKind::Exception)
            || m.request_id != request.request_id
        {
            return Err(format!(
                "{} reply is {:?} {} for request {}",
                kind.as_str(),
                m.kind,
                m.request_id,
                request.request_id
            ));
        }
        checked += 1;
    }
    Ok(checked)
}

fn decode_one<C: Codec>(config: &C::Config, frame: &[u8], what: &str) -> Result<Message, String> {
    match C::new(config).decode(frame) {
        Ok(Some(m)) if m.len == frame.len() => Ok(m),
        Ok(Some(m)) => Err(format!(
            "{what}: {} bytes, decoded as {}",
            frame.len(),
            m.len
        )),
        Ok(None) => Err(format!("{what}: incomplete")),
        Err(e) => Err(format!("{what}: does not decode: {e}")),
    }
}

fn check_extreme_lengths<C: Codec>(config: &C::Config, frame: &[u8]) -> Result<usize, String> {
    let mut cases = 0;
    for at in 0..frame.len().saturating_sub(3) {
        for value in EXTREME_LENGTHS {
            let mut m = frame.to_vec();
            m[at..at + 4].copy_from_slice(&value.to_be_bytes());
            let outcome = catch_unwind(AssertUnwindSafe(|| C::new(config).decode(&m)));
            match outcome {
                Err(_) => return Err(format!("decode panicked with {value:#010x} at byte {at}")),
                Ok(Ok(Some(msg))) if msg.len == 0 || msg.len > m.len() => {
                    return Err(format!(
                        "{value:#010x} at byte {at}: frame length {} outside the buffer",
                        msg.len
                    ))
                }
                Ok(_) => cases += 1,
            }
        }
    }
    Ok(cases)
}
