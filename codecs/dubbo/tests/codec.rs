//! The codec through the SDK trait: kinds, metadata, replies, mutation, configuration.

mod support;

use meltemi_dubbo::hessian::Reader;
use meltemi_dubbo::{DubboCodec, DubboConfig};
use meltemi_sdk::{Codec, CodecErrorKind, ErrorKind, Message, MessageKind, Metadata};
use support::*;

fn codec() -> DubboCodec {
    DubboCodec::new(&DubboConfig::default())
}

fn decode(f: &[u8]) -> Message {
    let m = codec().decode(f).unwrap().unwrap();
    assert_eq!(m.len, f.len());
    m
}

fn echo_request(flags: u8, id: u64, att: &[(&str, &str)]) -> Vec<u8> {
    let body = request_body(
        "org.meltemi.demo.EchoService",
        "echo",
        "Ljava/lang/String;",
        &[V::Str("hi".into(), 0x8000)],
        Some(&strs(att)),
    );
    frame(flags, 0, id, &body)
}

#[test]
fn request_kinds_and_metadata() {
    let att = [
        ("interface", "org.meltemi.demo.Api"),
        ("version", "2.0.0"),
        ("group", "g1"),
        ("timeout", "1000"),
        ("path", "org.meltemi.demo.EchoService"),
        ("trace-id", "abc"),
    ];
    let m = decode(&echo_request(REQ_TWOWAY, 77, &att));
    assert_eq!((m.kind, m.request_id), (MessageKind::Request, 77));
    let md: Vec<_> = m.metadata.iter().collect();
    assert_eq!(
        md,
        [
            ("service", "org.meltemi.demo.Api"),
            ("interface", "org.meltemi.demo.Api"),
            ("method", "echo"),
            ("version", "2.0.0"),
            ("group", "g1"),
            ("path", "org.meltemi.demo.EchoService"),
            ("timeout", "1000"),
            ("dubbo", "2.0.2"),
            ("trace-id", "abc"),
        ]
    );
    let m = decode(&echo_request(REQ_ONEWAY, 78, &[]));
    assert_eq!(m.kind, MessageKind::OneWay);
    // Without an interface attachment the service is the path; the body version is used.
    assert_eq!(
        m.metadata.get("service"),
        Some("org.meltemi.demo.EchoService")
    );
    assert_eq!(m.metadata.get("version"), Some("1.0.0"));
    assert_eq!(m.metadata.get("group"), None);
}

#[test]
fn heartbeats_and_events() {
    let hb = [
        0xda, 0xbb, 0xe2, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, b'N',
    ];
    let m = decode(&hb);
    assert_eq!((m.kind, m.request_id), (MessageKind::Heartbeat, 9));
    let reply = codec().heartbeat_reply(&m).unwrap();
    assert_eq!(
        reply,
        [0xda, 0xbb, 0x22, 20, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, b'N']
    );
    let r = decode(&reply);
    assert_eq!((r.kind, r.request_id), (MessageKind::HeartbeatReply, 9));
    // A one-way event ("R": provider going read-only) is a notice, not a heartbeat.
    let ro = [
        0xda, 0xbb, 0xa2, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 2, 0x01, b'R',
    ];
    let m = decode(&ro);
    assert_eq!(
        (m.kind, m.metadata.get("event")),
        (MessageKind::OneWay, Some("R"))
    );
}

#[test]
fn going_away_is_the_java_providers_readonly_event() {
    // Exactly the frame a Java provider's `sendChannelReadOnlyEvent` writes (flags 0xa2:
    // request, event, one-way, Hessian2; body the Hessian string "R"), id 0.
    let notice = codec().going_away().unwrap();
    assert_eq!(
        notice,
        [0xda, 0xbb, 0xa2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0x01, b'R']
    );
    let m = decode(&notice);
    assert_eq!(
        (m.kind, m.metadata.get("event")),
        (MessageKind::OneWay, Some("R"))
    );
}

#[test]
fn delivery_probe_is_a_heartbeat_with_the_oneway_id() {
    let oneway = decode(&echo_request(REQ_ONEWAY, 0x0102_0304_0506_0708, &[]));
    let probe = codec().delivery_probe(&oneway).unwrap();
    assert_eq!(
        probe,
        [0xda, 0xbb, 0xe2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 1, b'N']
    );
    let m = decode(&probe);
    assert_eq!(
        (m.kind, m.request_id),
        (MessageKind::Heartbeat, oneway.request_id)
    );
}

#[test]
fn error_replies_are_dubbo_error_responses() {
    let req = decode(&echo_request(REQ_TWOWAY, 5, &[]));
    let want = [
        (ErrorKind::RouteNotFound, 60),
        (ErrorKind::Unavailable, 70),
        (ErrorKind::OverLimit, 100),
        (ErrorKind::Unauthorized, 70),
        (ErrorKind::Timeout, 31),
        (ErrorKind::BadResponse, 50),
        (ErrorKind::BadRequest, 40),
        (ErrorKind::Internal, 80),
    ];
    assert_eq!(want.len(), ErrorKind::ALL.len());
    for (kind, status) in want {
        let f = codec()
            .error_reply(&req, kind, "no route to org.meltemi.demo.EchoService")
            .unwrap();
        assert_eq!(&f[..4], [0xda, 0xbb, 0x02, status], "{kind:?}");
        let m = decode(&f);
        assert_eq!((m.kind, m.request_id), (MessageKind::Exception, 5));
        assert_eq!(m.metadata.get("status"), Some(status.to_string().as_str()));
        // The body is exactly one Hessian string, as Java consumers readUTF() it.
        let mut r = Reader::new(&f[16..]);
        assert_eq!(
            r.read_string().unwrap().as_deref(),
            Some("no route to org.meltemi.demo.EchoService")
        );
        assert!(r.at_end());
    }
    // No detail: a default message; non-ASCII detail: Java-style string.
    let f = codec().error_reply(&req, ErrorKind::Timeout, "").unwrap();
    assert_eq!(
        Reader::new(&f[16..]).read_string().unwrap().as_deref(),
        Some("request timed out")
    );
    let f = codec()
        .error_reply(&req, ErrorKind::Internal, "échec 🤣")
        .unwrap();
    assert_eq!(
        Reader::new(&f[16..]).read_string().unwrap().as_deref(),
        Some("échec 🤣")
    );
}

#[test]
fn mutation_replaces_and_appends_with_set_semantics() {
    let f = echo_request(REQ_TWOWAY, 1, &[("a", "1"), ("b", "2")]);
    let m = decode(&f);
    let mutation: Metadata = [("b", "two"), ("c", "3"), ("c", "three")]
        .into_iter()
        .collect();
    let mut out = Vec::new();
    codec().encode(&f, &m, &mutation, &mut out).unwrap();
    let got = decode(&out);
    let att: Vec<_> = got
        .metadata
        .iter()
        .skip_while(|(k, _)| *k != "dubbo")
        .skip(1)
        .collect();
    assert_eq!(att, [("a", "1"), ("b", "two"), ("c", "three")]);
    // The length field is fixed up and untouched bytes before the map are identical.
    assert_eq!(
        u32::from_be_bytes(out[12..16].try_into().unwrap()) as usize,
        out.len() - 16
    );
    let map_at = f.len() - 1 - (1 + 1 + 1 + 1) * 2; // H 'a' '1' 'b' '2' ... 'Z'
    assert_eq!(f[16..map_at - 1], out[16..map_at - 1]);
}

#[test]
fn mutation_adds_a_map_where_none_was_sent() {
    for att in [None, Some(V::Null)] {
        let mut body = request_body("svc", "m", "", &[], None);
        if let Some(v) = &att {
            let mut w = W::default();
            w.value(v);
            body.extend(w.out);
        }
        let f = frame(REQ_TWOWAY, 0, 1, &body);
        let m = decode(&f);
        let mutation: Metadata = [("k", "v")].into_iter().collect();
        let mut out = Vec::new();
        codec().encode(&f, &m, &mutation, &mut out).unwrap();
        assert_eq!(
            &out[16..16 + body.len() - usize::from(att.is_some())],
            &body[..body.len() - usize::from(att.is_some())]
        );
        assert_eq!(decode(&out).metadata.get("k"), Some("v"));
    }
}

#[test]
fn mutation_refuses_structured_values_and_events() {
    let att = vec![(
        "obj".to_string(),
        V::List {
            ty: None,
            fixed: true,
            items: vec![V::Int(1)],
        },
    )];
    let f = frame(
        REQ_TWOWAY,
        0,
        1,
        &request_body("svc", "m", "", &[], Some(&att)),
    );
    let m = decode(&f);
    let mutation: Metadata = [("obj", "x")].into_iter().collect();
    let e = codec()
        .encode(&f, &m, &mutation, &mut Vec::new())
        .unwrap_err();
    assert_eq!(e.kind(), CodecErrorKind::Unsupported);
    // Other keys are fine: the structured value is kept byte for byte.
    let mutation: Metadata = [("k", "v")].into_iter().collect();
    let mut out = Vec::new();
    codec().encode(&f, &m, &mutation, &mut out).unwrap();
    assert_eq!(decode(&out).metadata.get("k"), Some("v"));

    let hb = [
        0xda, 0xbb, 0xe2, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, b'N',
    ];
    let e = codec()
        .encode(&hb, &decode(&hb), &mutation, &mut Vec::new())
        .unwrap_err();
    assert_eq!(e.kind(), CodecErrorKind::Unsupported);
}

#[test]
fn response_attachments_and_mutation() {
    // flag 5 (null value with attachments) and flag 2 (null value).
    let f = frame(RESPONSE, 20, 4, &[0x95, b'H', 0x01, b'k', 0x01, b'v', b'Z']);
    let m = decode(&f);
    assert_eq!(m.kind, MessageKind::Response);
    assert_eq!(
        m.metadata.iter().collect::<Vec<_>>(),
        [("status", "20"), ("k", "v")]
    );
    let mutation: Metadata = [("k", "w"), ("n", "1")].into_iter().collect();
    let mut out = Vec::new();
    codec().encode(&f, &m, &mutation, &mut out).unwrap();
    assert_eq!(
        decode(&out).metadata.iter().collect::<Vec<_>>(),
        [("status", "20"), ("k", "w"), ("n", "1")]
    );
    let f = frame(RESPONSE, 20, 4, &[0x92]);
    let e = codec()
        .encode(&f, &decode(&f), &mutation, &mut Vec::new())
        .unwrap_err();
    assert_eq!(e.kind(), CodecErrorKind::Unsupported);
}

#[test]
fn config_defaults_limits_and_rejects_unknown_fields() {
    let c: DubboConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(c.max_body_bytes, 16 * 1024 * 1024);
    let c: DubboConfig = serde_json::from_str(r#"{"max_body_bytes": 64}"#).unwrap();
    assert!(serde_json::from_str::<DubboConfig>(r#"{"max_body_byte": 64}"#).is_err());
    assert!(serde_json::from_str::<DubboConfig>(r#"{"max_body_bytes": "big"}"#).is_err());
    let mut small = DubboCodec::new(&c);
    let f = echo_request(REQ_TWOWAY, 1, &[]);
    let e = small.decode(&f[..16]).unwrap_err();
    assert_eq!(e.kind(), CodecErrorKind::Malformed);
    assert!(e.message().contains("exceeds max_body_bytes (64)"), "{e}");
}

#[test]
fn malformed_bodies_are_errors_not_panics() {
    // Complete frames whose body is garbage.
    for body in [
        &[][..],
        &[0x40],
        &[0x05, b'2'],
        &[0x00, 0x00, 0x00, 0x00, 0x01, b'Q'],
    ] {
        let e = codec().decode(&frame(REQ_TWOWAY, 0, 1, body)).unwrap_err();
        assert_eq!(e.kind(), CodecErrorKind::Malformed);
    }
    let e = codec()
        .decode(&frame(
            REQ_TWOWAY,
            0,
            1,
            &request_body("s", "m", "Lx;", &[], None),
        ))
        .unwrap_err();
    assert!(e.message().contains("argument 0"), "{e}");
    assert!(codec().decode(&frame(RESPONSE, 20, 1, &[])).is_err());
}
