//! Fuzz the Thrift codec: any bytes, under any configuration, must decode to a message, a
//! "need more", or an error — never a panic — and what the codec writes itself (mutated THeader
//! frames, error replies, delivery probes) must decode again.
//!
//! Decoding must also be the same however the stream is cut into reads: one codec value fed
//! growing chunks (each call sees everything buffered since the last message, as the framework
//! does) must find the same messages and end the same way as a fresh codec given it all at once.
//!
//! The first input byte picks the configuration, the second the chunk sizes; the rest is the
//! connection's byte stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meltemi_sdk::{Codec, CodecError, ErrorKind, Message, MessageKind, Metadata};
use meltemi_thrift::{Config, ProtocolConfig, ThriftCodec, Transport, TransportConfig};

/// At most this many messages are decoded per input.
const MAX_MESSAGES: usize = 64;

/// The messages a fresh codec finds in `buf` at once, then the error that ended it if any.
fn one_shot(config: &Config, mut buf: &[u8]) -> (Vec<Message>, Option<CodecError>) {
    let mut codec = ThriftCodec::new(config);
    let mut messages = Vec::new();
    while messages.len() < MAX_MESSAGES {
        match codec.decode(buf) {
            Ok(Some(m)) => {
                assert!(m.len > 0 && m.len <= buf.len());
                buf = &buf[m.len..];
                messages.push(m);
            }
            Ok(None) => break,
            Err(e) => return (messages, Some(e)),
        }
    }
    (messages, None)
}

/// Feed `stream` to one codec in chunks cycling through `sizes`; compare with [`one_shot`] on
/// the prefix buffered when an error ends the stream, or on the whole stream.
fn check_chunked(config: &Config, stream: &[u8], sizes: &[usize]) {
    let mut codec = ThriftCodec::new(config);
    let mut messages = Vec::new();
    let (mut start, mut end) = (0, 0);
    for size in sizes.iter().cycle() {
        end = (end + size).min(stream.len());
        while messages.len() < MAX_MESSAGES {
            match codec.decode(&stream[start..end]) {
                Ok(Some(m)) => {
                    assert!(m.len > 0 && start + m.len <= end);
                    start += m.len;
                    messages.push(m);
                }
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(
                        one_shot(config, &stream[..end]),
                        (messages, Some(e)),
                        "chunked decode failed differently at {end}"
                    );
                    return;
                }
            }
        }
        if end == stream.len() || messages.len() == MAX_MESSAGES {
            break;
        }
    }
    assert_eq!(
        one_shot(config, &stream[..end]),
        (messages, None),
        "chunked decode differs"
    );
}

fuzz_target!(|data: &[u8]| {
    let [sel, chunk, ref stream @ ..] = *data else {
        return;
    };
    let mut buf = stream;
    let config = Config {
        transport: [
            TransportConfig::Auto,
            TransportConfig::Framed,
            TransportConfig::Unframed,
            TransportConfig::Header,
        ][usize::from(sel & 3)],
        protocol: [
            ProtocolConfig::Auto,
            ProtocolConfig::Binary,
            ProtocolConfig::Compact,
        ][usize::from((sel >> 2) % 3)],
        max_depth: 1 + u32::from(sel >> 4) * 4,
    };
    // 0: byte by byte; otherwise alternating small and larger reads.
    let sizes = [
        1 + usize::from(chunk % 16),
        1 + usize::from(chunk / 16) * 61,
    ];
    check_chunked(&config, stream, &sizes);

    let mut codec = ThriftCodec::new(&config);
    let mut mutation = Metadata::new();
    mutation.push("x-fuzz", "1");
    for _ in 0..MAX_MESSAGES {
        let Ok(Some(msg)) = codec.decode(buf) else {
            break;
        };
        assert!(msg.len > 0 && msg.len <= buf.len());
        let frame = &buf[..msg.len];
        // What the codec writes is read back on the same connection, whose transport is known:
        // auto-detection of a second stream could legitimately differ for garbage method names
        // (a non-strict name starting with NUL bytes reads like a frame).
        let same_conn = Config {
            transport: match codec.transport() {
                Some(Transport::Framed) => TransportConfig::Framed,
                Some(Transport::Unframed) => TransportConfig::Unframed,
                _ => TransportConfig::Header,
            },
            ..config.clone()
        };

        let mut out = Vec::new();
        if codec.encode(frame, &msg, &mutation, &mut out).is_ok() {
            let again = ThriftCodec::new(&same_conn)
                .decode(&out)
                .expect("mutated frame decodes");
            let again = again.expect("mutated frame is complete");
            assert_eq!(again.len, out.len());
            assert_eq!(again.request_id, msg.request_id);
            assert_eq!(again.metadata.get("x-fuzz"), Some("1"));
        }
        if msg.kind.is_request() {
            if let Some(reply) = codec.error_reply(&msg, ErrorKind::Timeout, "fuzz") {
                let r = ThriftCodec::new(&same_conn)
                    .decode(&reply)
                    .expect("error reply decodes")
                    .expect("complete");
                assert_eq!(
                    (r.len, r.kind, r.request_id),
                    (reply.len(), MessageKind::Exception, msg.request_id)
                );
            }
            if let Some(probe) = codec.delivery_probe(&msg) {
                let p = ThriftCodec::new(&same_conn)
                    .decode(&probe)
                    .expect("probe decodes")
                    .expect("complete");
                assert_eq!(
                    (p.len, p.kind, p.request_id),
                    (probe.len(), MessageKind::Request, msg.request_id)
                );
            }
        }
        buf = &buf[msg.len..];
    }
});
