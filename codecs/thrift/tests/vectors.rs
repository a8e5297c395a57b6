//! Decoding byte streams captured from real Thrift clients and servers.
//!
//! `tests/vectors/*.bin` were recorded by `tests/peers/thrift/capture_vectors.py` through a
//! relay between the Apache Thrift (PyPI `thrift` 0.25) and thriftpy2 peers running the scenario
//! in `peer_common.run_full`: echo, add, blob, fail (declared EchoError), fail (server-raised
//! TApplicationException), notify (oneway), mirror (nested struct), ping (void). File names are
//! `<client impl>_<transport>_<protocol>[_<variant>]`.

use std::path::{Path, PathBuf};

use meltemi_sdk::{Codec, ErrorKind, Message, MessageKind, Metadata};
use meltemi_thrift::{Config, Protocol, ProtocolConfig, ThriftCodec, Transport, TransportConfig};

const METHODS: [&str; 8] = [
    "echo", "add", "blob", "fail", "fail", "notify", "mirror", "ping",
];

fn vectors() -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".req.bin"))
        .collect();
    names.sort();
    assert!(names.len() >= 20, "missing vectors in {dir:?}");
    names
        .into_iter()
        .map(|req| {
            let stem = req
                .file_name()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches(".req.bin")
                .to_owned();
            let resp = dir.join(format!("{stem}.resp.bin"));
            (
                stem,
                std::fs::read(&req).unwrap(),
                std::fs::read(resp).unwrap(),
            )
        })
        .collect()
}

/// Decode a whole stream; every message must be complete and the stream consumed exactly.
fn decode_all(codec: &mut ThriftCodec, mut buf: &[u8]) -> Vec<(Message, Vec<u8>)> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let m = codec
            .decode(buf)
            .unwrap_or_else(|e| panic!("decode error {e}"))
            .expect("incomplete stream");
        assert!(m.len > 0 && m.len <= buf.len());
        out.push((m.clone(), buf[..m.len].to_vec()));
        buf = &buf[m.len..];
    }
    out
}

fn expected(stem: &str) -> (Transport, Protocol) {
    let transport = if stem.contains("_buffered_") {
        Transport::Unframed
    } else if stem.contains("_framed_") {
        Transport::Framed
    } else {
        Transport::Header
    };
    let protocol = if stem.contains("_compact") {
        Protocol::Compact
    } else {
        Protocol::Binary {
            strict: !stem.contains("nonstrict"),
        }
    };
    (transport, protocol)
}

fn explicit_config(stem: &str) -> Config {
    let (t, p) = expected(stem);
    Config {
        transport: match t {
            Transport::Framed => TransportConfig::Framed,
            Transport::Unframed => TransportConfig::Unframed,
            Transport::Header => TransportConfig::Header,
        },
        protocol: match p {
            Protocol::Compact => ProtocolConfig::Compact,
            Protocol::Binary { .. } => ProtocolConfig::Binary,
        },
        ..Config::default()
    }
}

#[test]
fn real_client_requests_decode() {
    for (stem, req, _) in vectors() {
        for config in [Config::default(), explicit_config(&stem)] {
            let mut codec = ThriftCodec::new(&config);
            let msgs = decode_all(&mut codec, &req);
            let methods: Vec<_> = msgs
                .iter()
                .map(|(m, _)| m.metadata.get("method").unwrap().to_owned())
                .collect();
            assert_eq!(methods, METHODS, "{stem}");
            for (m, _) in &msgs {
                let want = if m.metadata.get("method") == Some("notify") {
                    MessageKind::OneWay
                } else {
                    MessageKind::Request
                };
                assert_eq!(m.kind, want, "{stem}");
                let mt = if want == MessageKind::OneWay {
                    "oneway"
                } else {
                    "call"
                };
                assert_eq!(m.metadata.get("message_type"), Some(mt), "{stem}");
                assert_eq!(
                    m.metadata.get("service"),
                    stem.contains("mux").then_some("Echo"),
                    "{stem}"
                );
                if stem.ends_with("_kv") {
                    assert_eq!(m.metadata.get("x-version"), Some("v2"), "{stem}");
                    assert_eq!(m.metadata.get("tenant"), Some("blue"), "{stem}");
                }
            }
            let (t, p) = expected(&stem);
            assert_eq!(
                (codec.transport(), codec.protocol()),
                (Some(t), Some(p)),
                "{stem}"
            );
        }
    }
}

#[test]
fn real_server_responses_decode() {
    let kinds = [
        MessageKind::Response,  // echo
        MessageKind::Response,  // add
        MessageKind::Response,  // blob
        MessageKind::Exception, // fail: declared EchoError (result field 1)
        MessageKind::Exception, // fail: TApplicationException (message type EXCEPTION)
        MessageKind::Response,  // mirror
        MessageKind::Response,  // ping (void: empty result struct)
    ];
    for (stem, req, resp) in vectors() {
        let mut codec = ThriftCodec::new(&Config::default());
        let msgs = decode_all(&mut codec, &resp);
        let got: Vec<_> = msgs.iter().map(|(m, _)| m.kind).collect();
        assert_eq!(got, kinds, "{stem}");
        let types: Vec<_> = msgs
            .iter()
            .map(|(m, _)| m.metadata.get("message_type").unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "reply",
                "reply",
                "reply",
                "reply",
                "exception",
                "reply",
                "reply"
            ],
            "{stem}"
        );
        // Each response carries its request's seqid.
        let mut reqc = ThriftCodec::new(&Config::default());
        let req_ids: Vec<_> = decode_all(&mut reqc, &req)
            .into_iter()
            .filter(|(m, _)| m.kind == MessageKind::Request)
            .map(|(m, _)| m.request_id)
            .collect();
        let resp_ids: Vec<_> = msgs.iter().map(|(m, _)| m.request_id).collect();
        assert_eq!(req_ids, resp_ids, "{stem}");
    }
}

#[test]
fn every_prefix_of_a_real_message_waits() {
    for (stem, req, resp) in vectors() {
        for stream in [&req, &resp] {
            let first = ThriftCodec::new(&Config::default())
                .decode(stream)
                .unwrap()
                .unwrap();
            // A fresh codec per prefix, and one codec fed a growing buffer as the framework does.
            let mut growing = ThriftCodec::new(&Config::default());
            for n in 0..first.len {
                assert_eq!(
                    ThriftCodec::new(&Config::default()).decode(&stream[..n]),
                    Ok(None),
                    "{stem} {n}"
                );
                assert_eq!(growing.decode(&stream[..n]), Ok(None), "{stem} {n}");
            }
            assert_eq!(growing.decode(stream).unwrap().unwrap(), first);
        }
    }
}

#[test]
fn mutation_goes_into_theader_info_headers_only() {
    let mut mutation = Metadata::new();
    mutation.push("x-version", "v3");
    mutation.push("x-added", "1");
    for (stem, req, _) in vectors() {
        let mut codec = ThriftCodec::new(&Config::default());
        for (m, frame) in decode_all(&mut codec, &req) {
            let mut out = Vec::new();
            let r = codec.encode(&frame, &m, &mutation, &mut out);
            if expected(&stem).0 != Transport::Header {
                assert_eq!(
                    r.unwrap_err().kind(),
                    meltemi_sdk::CodecErrorKind::Unsupported,
                    "{stem}"
                );
                assert!(out.is_empty());
                continue;
            }
            r.unwrap();
            let again = ThriftCodec::new(&Config::default())
                .decode(&out)
                .unwrap()
                .unwrap();
            assert_eq!(again.len, out.len());
            assert_eq!(again.metadata.get("x-version"), Some("v3"), "{stem}");
            assert_eq!(again.metadata.get("x-added"), Some("1"));
            if stem.ends_with("_kv") {
                assert_eq!(again.metadata.get("tenant"), Some("blue"));
            }
            assert_eq!((again.kind, again.request_id), (m.kind, m.request_id));
            // The message bytes after the header are untouched.
            let tail = frame.len() - frame_header_len(&frame);
            assert_eq!(out[out.len() - tail..], frame[frame.len() - tail..]);
        }
    }
}

fn frame_header_len(frame: &[u8]) -> usize {
    14 + 4 * u16::from_be_bytes([frame[12], frame[13]]) as usize
}

#[test]
fn error_replies_and_probes_use_the_clients_framing() {
    let probing = Config {
        oneway_ack: meltemi_thrift::OnewayAck::Probe,
        ..Config::default()
    };
    for (stem, req, _) in vectors() {
        let mut codec = ThriftCodec::new(&probing);
        let msgs = decode_all(&mut codec, &req);
        for (m, _) in &msgs {
            let mut reader = ThriftCodec::new(&Config::default());
            let bytes = if m.kind == MessageKind::OneWay {
                codec.delivery_probe(m).unwrap()
            } else {
                codec
                    .error_reply(m, ErrorKind::RouteNotFound, "no route")
                    .unwrap()
            };
            let got = reader.decode(&bytes).unwrap().unwrap();
            assert_eq!(got.len, bytes.len(), "{stem}");
            assert_eq!(got.request_id, m.request_id);
            assert_eq!(
                (reader.transport(), reader.protocol()),
                (codec.transport(), codec.protocol()),
                "{stem}"
            );
            assert_eq!(got.metadata.get("service"), m.metadata.get("service"));
            if m.kind == MessageKind::OneWay {
                assert_eq!(got.kind, MessageKind::Request);
                assert_eq!(got.metadata.get("method"), Some("__meltemi_probe"));
            } else {
                assert_eq!(got.kind, MessageKind::Exception);
                assert_eq!(got.metadata.get("method"), m.metadata.get("method"));
                assert_eq!(got.metadata.get("message_type"), Some("exception"));
            }
        }
    }
}

/// What the C++ THeader client (libthriftz 0.17, `tests/peers/thrift/cpp_header_client.cpp`)
/// sends for one `echo("hello")` call and then `close()`: the call, then an empty THeader frame
/// (header, no message), which `THeaderTransport::close` flushes. The empty frame is a
/// heartbeat nothing answers, not a corrupt stream, for the auto-detecting codec and for one
/// configured for THeader, and also when it comes first or between two calls.
#[test]
fn the_cpp_theader_clients_empty_frame_at_close_is_a_silent_heartbeat() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let stream = std::fs::read(dir.join("cpp_header_compact_close.bin")).unwrap();
    let call_len = 4 + u32::from_be_bytes(stream[..4].try_into().unwrap()) as usize;
    let (call, empty) = stream.split_at(call_len);
    assert_eq!(empty.len(), 18, "the captured empty frame");
    let header = Config {
        transport: TransportConfig::Header,
        ..Config::default()
    };
    for config in [Config::default(), header] {
        for input in [
            stream.clone(),
            [empty, call].concat(),
            [call, empty, call].concat(),
        ] {
            let mut codec = ThriftCodec::new(&config);
            let messages = decode_all(&mut codec, &input);
            let kinds: Vec<MessageKind> = messages.iter().map(|(m, _)| m.kind).collect();
            for (m, bytes) in &messages {
                if bytes[..] == *empty {
                    assert_eq!(m.kind, MessageKind::Heartbeat);
                    assert_eq!(m.metadata.get("message_type"), Some("empty_frame"));
                    assert_eq!(m.request_id, 1, "the THeader seqid");
                    assert_eq!(codec.heartbeat_reply(m), None, "nothing answers it");
                } else {
                    assert_eq!(bytes[..], *call);
                    assert_eq!(m.kind, MessageKind::Request);
                    assert_eq!(m.metadata.get("method"), Some("echo"));
                }
            }
            assert_eq!(
                kinds
                    .iter()
                    .filter(|k| **k == MessageKind::Heartbeat)
                    .count(),
                1,
                "{kinds:?}"
            );
            // A prefix of the empty frame is awaited, never an error.
            for cut in 0..empty.len() {
                let mut fresh = ThriftCodec::new(&config);
                let mut buf = call.to_vec();
                buf.extend_from_slice(&empty[..cut]);
                let first = fresh.decode(&buf).unwrap().unwrap();
                assert_eq!(fresh.decode(&buf[first.len..]).unwrap(), None, "cut {cut}");
            }
        }
    }
}
