//! Fuzz the Thrift codec: any bytes, under any configuration, must decode to a message, a
//! "need more", or an error — never a panic — and what the codec writes itself (mutated THeader
//! frames, error replies, delivery probes) must decode again.
//!
//! The first input byte picks the configuration; the rest is the connection's byte stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meltemi_sdk::{Codec, ErrorKind, MessageKind, Metadata};
use meltemi_thrift::{Config, ProtocolConfig, ThriftCodec, Transport, TransportConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut buf)) = data.split_first() else {
        return;
    };
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
    let mut codec = ThriftCodec::new(&config);
    let mut mutation = Metadata::new();
    mutation.push("x-fuzz", "1");
    for _ in 0..64 {
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
