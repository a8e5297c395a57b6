//! The real, built `meltemi_dubbo.wasm` (release, `wasm32-wasip1`) driven through both roles of
//! the bridge on the deterministic proxy-wasm host, fed with byte streams captured between real
//! third-party Dubbo peers (`codecs/dubbo/tests/vectors`: Caucho Hessian2 Java, dubbo2.js,
//! sofa-rpc-node and dubbo-ssl-python consumers against a Java and a sofa-rpc-node provider).
//! Envoy's parts (HCM, the router and tcp_proxy) are played by
//! `meltemi_wasm_host::envoy_emulation`, as in `bridge_minirpc.rs`.
//!
//! What it proves, asserting exact bytes and counters (expected frames are the captured ones;
//! Dubbo frame headers are cut by this file, the codec crate only reads the replies the filter
//! built and the Hessian2 strings in them):
//! - front: every captured consumer stream, whole, split at every offset or fed one byte at a
//!   time, becomes the same HTTP requests (`/<interface>/<method>`, `interface`, `version`,
//!   `group`, `method`, `dubbo`, attachments), each body the original frame byte-for-byte, and
//!   the read buffer never holds a partial frame;
//! - round trip front → HCM → router → back → provider → back → HCM → front with the captured
//!   provider frames: every frame reaches the provider and comes back byte-for-byte, with its
//!   status and response attachments as headers;
//! - Envoy local replies (404, 429, 504, 503, 403, 500) become a Dubbo response with the
//!   request id, status 60 / 100 / 31 / 70 / 70 / 80 and Envoy's reason as a Hessian2 string;
//! - heartbeats: a consumer heartbeat becomes a local request to `meltemi.local` and, whatever
//!   HCM answers, the heartbeat response `da bb 22 14 <id> 00000001 4e` (what the Java provider
//!   sent in the capture);
//! - one-way calls: forwarded and followed by a heartbeat probe (byte-identical to the Java
//!   consumer's own heartbeat in the capture); the provider's heartbeat reply acknowledges the
//!   call, and the stray response dubbo-remoting sends for a one-way call is dropped and counted
//!   in `meltemi_unexpected_messages_total`;
//! - back mutation: request attachments gain / replace the key, the body length is fixed and
//!   everything before the attachments (the arguments) is byte-identical;
//! - garbage and every single-byte corruption of captured frames never trap the VM; corrupt
//!   streams, bodies over `max_body_bytes` and non-Hessian2 serialization ids close only their
//!   connection and count `meltemi_decode_errors_total`.

use std::path::Path;
use std::sync::OnceLock;

use meltemi_dubbo::hessian::Reader;
use meltemi_dubbo::{DubboCodec, DubboConfig};
use meltemi_sdk::bridge::mutation_header_value;
use meltemi_sdk::{Codec, MessageKind};
use meltemi_wasm_host::envoy_emulation::{
    back_response, bridged_request, counter, hcm_consume, http_response, local_request, ok,
    parse_all, parse_request, rb, relay, router_request, send, stat, tcp_proxy_take, write,
    DECODE_ERRORS, EXTREME_LENGTHS, ONEWAY_ACK,
};
use meltemi_wasm_host::rng::Rng;
use meltemi_wasm_host::{build_wasm, ConnId, Host, Module};

// ---------------------------------------------------------------------------------------------
// Captured vectors.

const SERVICE: &str = "org.meltemi.demo.EchoService";
const CONSUMERS: [&str; 4] = ["java", "dubbo2js", "sofa", "python"];
const PROVIDERS: [&str; 2] = ["java", "sofa"];

fn vector(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../codecs/dubbo/tests/vectors")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// The frames of a stream, cut by their 16-byte headers.
fn frames(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        assert_eq!(&rest[..2], [0xda, 0xbb], "magic");
        let len = 16 + u32::from_be_bytes(rest[12..16].try_into().unwrap()) as usize;
        out.push(rest[..len].to_vec());
        rest = &rest[len..];
    }
    out
}

fn request_id(frame: &[u8]) -> u64 {
    u64::from_be_bytes(frame[4..12].try_into().unwrap())
}

/// What each consumer sends, as its README and peers describe it: (dubbo version, timeout
/// attachment, application attachment, `x-caller`).
fn consumer(
    name: &str,
) -> (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
) {
    match name {
        "java" => ("2.0.2", Some("3000"), None, "java-consumer"),
        "dubbo2js" => ("2.0.2", Some("3000"), Some("dubbo2.js"), "dubbo2.js"),
        "sofa" => ("5.3.0", None, None, "sofa-rpc-node"),
        "python" => ("2.4.10", None, None, "dubbo-ssl-python"),
        other => panic!("{other}"),
    }
}

/// (kind, request id, method) of each captured consumer frame.
fn calls(name: &str) -> Vec<(&'static str, u64, &'static str)> {
    match name {
        "java" => vec![
            ("request", 1, "echo"),
            ("request", 2, "greet"),
            ("request", 3, "fail"),
            ("request", 4, "nosuch"),
            ("oneway", 5, "notify"),
            ("heartbeat", 5, ""),
        ],
        "python" => vec![
            ("request", 0, "echo"),
            ("request", 1, "greet"),
            ("request", 2, "fail"),
        ],
        _ => vec![
            ("request", 1, "echo"),
            ("request", 2, "greet"),
            ("request", 3, "fail"),
        ],
    }
}

/// Request metadata as headers, in the codec's documented order: well-known keys, then the
/// other attachments (`path` is reserved in HTTP and travels prefixed).
fn request_headers(consumer_name: &str, method: &str) -> Vec<(&'static str, String)> {
    let (dubbo, timeout, application, caller) = consumer(consumer_name);
    let mut h = vec![
        ("service", SERVICE.to_owned()),
        ("interface", SERVICE.to_owned()),
        ("method", method.to_owned()),
        ("version", "1.0.0".to_owned()),
        ("group", "demo".to_owned()),
        ("x-meltemi-md-path", SERVICE.to_owned()),
    ];
    if let Some(t) = timeout {
        h.push(("timeout", t.to_owned()));
    }
    h.push(("dubbo", dubbo.to_owned()));
    if let Some(a) = application {
        h.push(("application", a.to_owned()));
    }
    h.push(("x-caller", caller.to_owned()));
    h
}

/// The HTTP requests the front must write for a consumer stream, and each frame's end offset.
fn expected_requests(consumer_name: &str, stream: &[u8]) -> Vec<(Vec<u8>, usize)> {
    let frames = frames(stream);
    let calls = calls(consumer_name);
    assert_eq!(frames.len(), calls.len(), "{consumer_name}");
    let mut end = 0;
    frames
        .iter()
        .zip(calls)
        .enumerate()
        .map(|(i, (frame, (kind, id, method)))| {
            end += frame.len();
            assert_eq!(request_id(frame), id);
            let http = if kind == "heartbeat" {
                local_request(i + 1, "heartbeat")
            } else {
                front_request(
                    i + 1,
                    kind,
                    id,
                    &request_headers(consumer_name, method),
                    frame,
                )
            };
            (http, end)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The module, hosts and the bridged requests.

fn module() -> Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE
        .get_or_init(|| {
            let wasm = build_wasm(Path::new(env!("CARGO_MANIFEST_DIR")), "meltemi-dubbo");
            Module::load(wasm).unwrap()
        })
        .clone()
}

fn host(config: &str) -> Host {
    let mut host = Host::new(&module(), "").unwrap();
    assert!(host.configure(config).unwrap(), "{:?}", host.logs());
    host
}

fn front() -> Host {
    host(r#"{"role":"front"}"#)
}

fn back() -> Host {
    host(r#"{"role":"back"}"#)
}

const P: (&str, &str) = ("protocol", "dubbo");
fn front_request(seq: usize, kind: &str, rid: u64, md: &[(&str, String)], frame: &[u8]) -> Vec<u8> {
    let method = &md.iter().find(|(k, _)| *k == "method").unwrap().1;
    bridged_request(seq, SERVICE, method, kind, rid, md, frame)
}

/// The heartbeat response the codec documents: event flag + Hessian2, status OK, body `N`.
fn heartbeat_response(id: u64) -> Vec<u8> {
    let mut f = vec![0xda, 0xbb, 0x22, 0x14];
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, b'N']);
    f
}

/// A two-way heartbeat request: request + two-way + event + Hessian2, body `N`.
fn heartbeat_request(id: u64) -> Vec<u8> {
    let mut f = vec![0xda, 0xbb, 0xe2, 0x00];
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, b'N']);
    f
}

// ---------------------------------------------------------------------------------------------
// Front: consumer → HCM.

#[test]
fn front_bridges_every_captured_consumer_stream_exactly() {
    for c_name in CONSUMERS {
        for p_name in PROVIDERS {
            let name = format!("{c_name}-to-{p_name}.c2s.bin");
            let stream = vector(&name);
            let expected: Vec<u8> = expected_requests(c_name, &stream)
                .into_iter()
                .flat_map(|e| e.0)
                .collect();
            for config in [
                r#"{"role":"front"}"#,
                r#"{"role":"front","codec":{"max_body_bytes":1024}}"#,
            ] {
                let mut h = host(config);
                let c = ok(h.new_connection());
                send(&mut h, c, &stream);
                assert_eq!(
                    String::from_utf8_lossy(&rb(&h, c)),
                    String::from_utf8_lossy(&expected),
                    "{name} {config}"
                );
                assert_eq!(rb(&h, c), expected, "{name}");
                assert!(!h.closed(c));
                let labels = [P, ("service", SERVICE), ("method", "greet")];
                assert_eq!(counter(&h, "meltemi_requests_total", &labels), 1);
            }
        }
    }
}

#[test]
fn front_output_is_the_same_for_every_split_and_never_holds_a_partial_frame() {
    for c_name in CONSUMERS {
        let name = format!("{c_name}-to-java.c2s.bin");
        let stream = vector(&name);
        let expected = expected_requests(c_name, &stream);
        let whole: Vec<u8> = expected.iter().flat_map(|e| e.0.clone()).collect();
        let upto = |n: usize| -> Vec<u8> {
            expected
                .iter()
                .take_while(|(_, end)| *end <= n)
                .flat_map(|e| e.0.clone())
                .collect()
        };
        let mut h = front();
        for cut in 1..stream.len() {
            let c = ok(h.new_connection());
            send(&mut h, c, &stream[..cut]);
            assert_eq!(rb(&h, c), upto(cut), "{name} cut at {cut}");
            send(&mut h, c, &stream[cut..]);
            assert_eq!(rb(&h, c), whole, "{name} cut at {cut}");
            ok(h.downstream_close(c));
        }
        let c = ok(h.new_connection());
        for i in 0..stream.len() {
            send(&mut h, c, &stream[i..=i]);
            assert_eq!(rb(&h, c), upto(i + 1), "{name} after byte {i}");
        }
        ok(h.downstream_close(c));
        assert_eq!(counter(&h, DECODE_ERRORS, &[P, ("role", "front")]), 0);
        assert_eq!(h.gauge(&stat("meltemi_active_requests", &[P])), Some(0));
    }
}

// ---------------------------------------------------------------------------------------------
// Both halves, with the captured provider frames.

#[test]
fn round_trip_of_every_capture_through_front_router_back_and_provider() {
    for c_name in CONSUMERS {
        for p_name in PROVIDERS {
            let name = format!("{c_name}-to-{p_name}");
            let consumer_frames = frames(&vector(&format!("{name}.c2s.bin")));
            let mut provider = frames(&vector(&format!("{name}.s2c.bin"))).into_iter();
            let (mut f, mut b) = (front(), back());
            let (fc, bc) = (ok(f.new_connection()), ok(b.new_connection()));
            send(&mut f, fc, &consumer_frames.concat());
            let reqs = hcm_consume(&mut f, fc, usize::MAX);
            assert_eq!(reqs.len(), consumer_frames.len());
            let mut index = 0;
            for req in &reqs {
                match req.header("x-meltemi-kind") {
                    Some("heartbeat") => {
                        // Answered by a `direct_response` route for meltemi.local.
                        let id = request_id(consumer_frames.last().unwrap());
                        let out = write(&mut f, fc, &http_response("200 OK", &[], b"ok"));
                        assert_eq!(out, heartbeat_response(id), "{name}");
                    }
                    Some("oneway") => {
                        send(&mut b, bc, &router_request(req, &[]));
                        let id = request_id(&req.body);
                        let probe = heartbeat_request(id);
                        // The probe is the very frame the Java consumer sends as heartbeat.
                        assert_eq!(probe, *consumer_frames.last().unwrap());
                        assert_eq!(
                            tcp_proxy_take(&mut b, bc),
                            [req.body.clone(), probe].concat()
                        );
                        let unexpected =
                            stat("meltemi_unexpected_messages_total", &[P, ("role", "back")]);
                        if p_name == "sofa" {
                            // dubbo-remoting answers the one-way call itself: dropped.
                            let stray = provider.next().unwrap();
                            assert_eq!((request_id(&stray), stray[3]), (id, 20));
                            assert_eq!(write(&mut b, bc, &stray), b"", "{name}");
                            assert_eq!(b.counter(&unexpected), Some(1));
                        }
                        let answer = provider.next().unwrap();
                        assert_eq!(answer, heartbeat_response(id), "the provider's own");
                        let ack = write(&mut b, bc, &answer);
                        assert_eq!(ack, ONEWAY_ACK, "{name}");
                        assert_eq!(write(&mut f, fc, &relay(&ack)), b"");
                        let strays = u64::from(p_name == "sofa");
                        assert_eq!(b.counter(&unexpected).unwrap_or(0), strays);
                    }
                    kind => {
                        assert_eq!(kind, Some("request"));
                        send(&mut b, bc, &router_request(req, &[]));
                        assert_eq!(tcp_proxy_take(&mut b, bc), req.body, "{name}");
                        let frame = provider.next().unwrap();
                        assert_eq!(request_id(&frame), request_id(&req.body));
                        let last = frame.len() - 1;
                        assert_eq!(write(&mut b, bc, &frame[..last]), b"", "whole frames only");
                        let http = write(&mut b, bc, &frame[last..]);
                        let status = frame[3].to_string();
                        let (_, _, _, caller) = consumer(c_name);
                        let mut md = vec![("status", status.as_str())];
                        // The Java provider answers dubbo 2.0.2 callers with attachments.
                        if p_name == "java" && consumer(c_name).0 == "2.0.2" && frame[3] == 20 {
                            md.extend([("x-caller", caller), ("served-by", "v1")]);
                        }
                        let kind = if index < 2 { "response" } else { "exception" };
                        let rid = request_id(&frame);
                        assert_eq!(http, back_response(kind, rid, &md, &frame), "{name}");
                        assert_eq!(write(&mut f, fc, &relay(&http)), frame, "{name}");
                        index += 1;
                    }
                }
            }
            assert!(
                provider.next().is_none(),
                "{name}: every provider frame used"
            );
            assert!(!f.closed(fc) && !b.closed(bc));
            assert_eq!(f.gauge(&stat("meltemi_active_requests", &[P])), Some(0));
            let fail = [P, ("service", SERVICE), ("method", "fail")];
            let outcome = |o| {
                stat(
                    "meltemi_responses_total",
                    &[fail[0], fail[1], fail[2], ("outcome", o)],
                )
            };
            assert_eq!(f.counter(&outcome("business_error")), Some(1), "{name}");
            for h in [&f, &b] {
                for role in ["front", "back"] {
                    assert_eq!(counter(h, DECODE_ERRORS, &[P, ("role", role)]), 0);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Envoy local replies, heartbeats.

#[test]
fn local_replies_become_dubbo_error_responses() {
    // (status line, body, Dubbo status, message)
    let cases: [(&str, &[u8], u8, &str); 6] = [
        ("404 Not Found", b"", 60, "envoy 404"),
        (
            "429 Too Many Requests",
            b"local_rate_limited",
            100,
            "envoy 429: local_rate_limited",
        ),
        (
            "504 Gateway Timeout",
            b"upstream request timeout",
            31,
            "envoy 504: upstream request timeout",
        ),
        (
            "503 Service Unavailable",
            b"no healthy upstream",
            70,
            "envoy 503: no healthy upstream",
        ),
        (
            "403 Forbidden",
            b"RBAC: access denied",
            70,
            "envoy 403: RBAC: access denied",
        ),
        ("500 Internal Server Error", b"", 80, "envoy 500"),
    ];
    for c_name in CONSUMERS {
        let stream = vector(&format!("{c_name}-to-java.c2s.bin"));
        let mut h = front();
        for (status, body, dubbo_status, message) in cases {
            let c = ok(h.new_connection());
            send(&mut h, c, &stream);
            for req in hcm_consume(&mut h, c, usize::MAX) {
                let out = write(&mut h, c, &http_response(status, &[], body));
                match req.header("x-meltemi-kind") {
                    Some("oneway") => assert_eq!(out, b"", "swallowed"),
                    Some("heartbeat") => assert_eq!(out, heartbeat_response(5)),
                    _ => {
                        let id = request_id(&req.body);
                        let what = format!("{c_name} {status} id {id}");
                        // Response, Hessian2, not an event; the status; the request id.
                        assert_eq!(out[..4], [0xda, 0xbb, 0x02, dubbo_status], "{what}");
                        assert_eq!(request_id(&out), id, "{what}");
                        let len = u32::from_be_bytes(out[12..16].try_into().unwrap());
                        assert_eq!(len as usize, out.len() - 16, "{what}");
                        let mut r = Reader::new(&out[16..]);
                        // The detail names the call: `<interface>/<method>: <envoy's reply>`.
                        let call = format!(
                            "{}/{}",
                            req.header("interface").unwrap_or("unknown"),
                            req.header("method").unwrap_or("unknown")
                        );
                        assert_eq!(
                            r.read_string().unwrap(),
                            Some(format!("{call}: {message}")),
                            "{what}"
                        );
                        assert!(r.at_end(), "{what}: one string, nothing else");
                        let m = DubboCodec::new(&DubboConfig::default())
                            .decode(&out)
                            .unwrap()
                            .unwrap();
                        assert_eq!(
                            (m.kind, m.request_id, m.len),
                            (MessageKind::Exception, id, out.len())
                        );
                        let st = dubbo_status.to_string();
                        assert_eq!(m.metadata.get("status"), Some(st.as_str()));
                    }
                }
            }
            assert!(!h.closed(c));
            ok(h.downstream_close(c));
        }
        let labels = [
            P,
            ("service", SERVICE),
            ("method", "greet"),
            ("kind", "over_limit"),
        ];
        assert_eq!(counter(&h, "meltemi_local_replies_total", &labels), 1);
    }
}

#[test]
fn a_consumer_heartbeat_is_answered_locally_whatever_hcm_answers() {
    let heartbeat = frames(&vector("java-to-java.c2s.bin")).pop().unwrap();
    let provider_reply = frames(&vector("java-to-java.s2c.bin")).pop().unwrap();
    assert_eq!(
        heartbeat,
        heartbeat_request(5),
        "the captured Java heartbeat"
    );
    assert_eq!(
        provider_reply,
        heartbeat_response(5),
        "the captured Java reply"
    );
    let mut h = front();
    let answers = [
        http_response("200 OK", &[], b""),
        http_response("404 Not Found", &[], b""),
        http_response("503 Service Unavailable", &[], b"no healthy upstream"),
    ];
    for (i, answer) in answers.iter().enumerate() {
        let c = ok(h.new_connection());
        let mut hb = heartbeat.clone();
        let id = 0x0102_0304_0506_0700 + i as u64;
        hb[4..12].copy_from_slice(&id.to_be_bytes());
        send(&mut h, c, &hb);
        assert_eq!(rb(&h, c), local_request(1, "heartbeat"));
        hcm_consume(&mut h, c, 1);
        assert_eq!(write(&mut h, c, answer), heartbeat_response(id));
    }
    let c = ok(h.new_connection());
    send(&mut h, c, &heartbeat);
    hcm_consume(&mut h, c, 1);
    assert_eq!(write(&mut h, c, &answers[0]), provider_reply);
    let heartbeats = stat("meltemi_heartbeats_total", &[P, ("role", "front")]);
    assert_eq!(h.counter(&heartbeats), Some(4));
    assert_eq!(h.gauge(&stat("meltemi_active_requests", &[P])), None);
}

// ---------------------------------------------------------------------------------------------
// Back: mutation.

/// A provider's heartbeat never reaches the router; the back answers it (the codec's heartbeat
/// response with the provider's id) in front of the next call it forwards on that connection.
#[test]
fn provider_heartbeats_are_answered_ahead_of_the_next_call() {
    let java = frames(&vector("java-to-java.c2s.bin"));
    let calls: Vec<Vec<u8>> = expected_requests("java", &java.concat())
        .into_iter()
        .map(|(http, _)| router_request(&parse_request(&http).unwrap(), &[]))
        .collect();
    let replies = frames(&vector("java-to-java.s2c.bin"));
    let mut b = back();
    let c = ok(b.new_connection());
    send(&mut b, c, &calls[0]);
    let first_call = tcp_proxy_take(&mut b, c);
    assert_eq!(request_id(&first_call), request_id(&replies[0]));
    let relayed = write(
        &mut b,
        c,
        &[heartbeat_request(0x7001), replies[0].clone()].concat(),
    );
    assert!(relayed.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(
        relayed.ends_with(&replies[0]),
        "only the call's answer is relayed"
    );
    send(&mut b, c, &calls[1]);
    let out = tcp_proxy_take(&mut b, c);
    let answer = heartbeat_response(0x7001);
    assert_eq!(
        &out[..answer.len()],
        &answer[..],
        "the heartbeat answer goes first"
    );
    assert_eq!(request_id(&out[answer.len()..]), request_id(&replies[1]));
    assert_eq!(
        counter(&b, "meltemi_heartbeats_total", &[P, ("role", "back")]),
        1
    );
    assert!(!b.closed(c));
}

#[test]
fn back_writes_a_mutation_into_the_request_attachments() {
    let caller = mutation_header_value("x-caller", "meltemi");
    let added = mutation_header_value("x-route", "v2=canary,1");
    let mutation = [
        ("x-meltemi-mutation", caller.as_str()),
        ("x-meltemi-mutation", added.as_str()),
    ];
    let mut b = back();
    let mut checked = 0;
    for c_name in CONSUMERS {
        let stream = vector(&format!("{c_name}-to-sofa.c2s.bin"));
        for (http, _) in expected_requests(c_name, &stream) {
            let req = parse_request(&http).unwrap();
            if req.header("x-meltemi-kind") == Some("heartbeat") {
                continue;
            }
            let c = ok(b.new_connection());
            send(&mut b, c, &router_request(&req, &mutation));
            let mut out = tcp_proxy_take(&mut b, c);
            if req.header("x-meltemi-kind") == Some("oneway") {
                let probe = out.split_off(out.len() - 17);
                assert_eq!(probe, heartbeat_request(request_id(&req.body)));
            }
            let frame = &req.body;
            // Same magic, flags, status and id; the length announces the new body.
            assert_eq!(out[..12], frame[..12], "{c_name}");
            assert_eq!(
                u32::from_be_bytes(out[12..16].try_into().unwrap()) as usize,
                out.len() - 16
            );
            // Everything before the attachments map is byte-identical.
            let old = meltemi_dubbo::body::parse_invocation(&frame[16..]).unwrap();
            let new = meltemi_dubbo::body::parse_invocation(&out[16..]).unwrap();
            let args_end = 16 + old.attachments.span.start;
            assert_eq!(
                out[16..args_end],
                frame[16..args_end],
                "{c_name}: arguments"
            );
            assert_eq!(new.attachments.span.start, old.attachments.span.start);
            assert_eq!(
                new.attachments.span.end,
                out.len() - 16,
                "map ends the body"
            );
            // x-caller replaced where it was, x-route appended, the rest untouched.
            let pairs = |a: &meltemi_dubbo::body::Attachments| -> Vec<(String, String)> {
                a.entries
                    .iter()
                    .map(|e| (e.key.clone().unwrap(), e.value.clone().unwrap_or_default()))
                    .collect()
            };
            let mut want = pairs(&old.attachments);
            for e in &mut want {
                if e.0 == "x-caller" {
                    e.1 = "meltemi".into();
                }
            }
            want.push(("x-route".into(), "v2=canary,1".into()));
            assert_eq!(pairs(&new.attachments), want, "{c_name}");
            let m = DubboCodec::new(&DubboConfig::default())
                .decode(&out)
                .unwrap()
                .unwrap();
            assert_eq!(m.len, out.len());
            assert_eq!(m.metadata.get("x-caller"), Some("meltemi"));
            assert_eq!(m.metadata.get("x-route"), Some("v2=canary,1"));
            assert_eq!(m.metadata.get("method"), req.header("method"));
            checked += 1;
        }
    }
    assert_eq!(checked, 5 + 3 * 3);
    assert_eq!(counter(&b, "meltemi_mutation_unsupported_total", &[P]), 0);
    assert_eq!(counter(&b, DECODE_ERRORS, &[P, ("role", "back")]), 0);
}

// ---------------------------------------------------------------------------------------------
// Limits, serialization ids, garbage and corruption.

#[test]
fn a_body_over_max_body_bytes_closes_the_connection_as_a_decode_error() {
    let java = frames(&vector("java-to-java.c2s.bin"));
    let (echo, heartbeat) = (&java[0], java.last().unwrap());
    assert!(echo.len() - 16 > 100);
    let mut h = host(r#"{"role":"front","codec":{"max_body_bytes":100}}"#);
    let c = ok(h.new_connection());
    send(&mut h, c, heartbeat);
    assert_eq!(rb(&h, c), local_request(1, "heartbeat"));
    hcm_consume(&mut h, c, 1);
    // The header alone announces too much: closed before the body arrives.
    send(&mut h, c, &echo[..16]);
    assert!(h.closed(c));
    assert_eq!(h.read_buffer(c), b"");
    assert_eq!(counter(&h, DECODE_ERRORS, &[P, ("role", "front")]), 1);
    // A provider frame announcing more closes the back's connection the same way.
    let mut b = host(r#"{"role":"back","codec":{"max_body_bytes":100}}"#);
    let bc = ok(b.new_connection());
    let req = parse_request(&expected_requests("java", &java.concat())[0].0).unwrap();
    send(&mut b, bc, &router_request(&req, &[]));
    assert_eq!(tcp_proxy_take(&mut b, bc), *echo);
    let resp = frames(&vector("java-to-java.s2c.bin"));
    let big = resp.iter().find(|f| f.len() - 16 > 100).unwrap();
    assert_eq!(write(&mut b, bc, &big[..16]), b"");
    assert!(b.closed(bc));
    assert_eq!(counter(&b, DECODE_ERRORS, &[P, ("role", "back")]), 1);
}

#[test]
fn a_non_hessian2_serialization_id_closes_and_counts() {
    let sofa = frames(&vector("sofa-to-java.c2s.bin"));
    for id in [0u8, 3, 4, 6, 21, 0x1f] {
        let mut h = front();
        let good = ok(h.new_connection());
        send(&mut h, good, &sofa[0]);
        let c = ok(h.new_connection());
        send(&mut h, c, &sofa[0]);
        hcm_consume(&mut h, c, 1);
        let mut bad = sofa[1].clone();
        bad[2] = (bad[2] & 0xe0) | id;
        send(&mut h, c, &bad);
        assert!(h.closed(c), "serialization {id}");
        assert_eq!(h.read_buffer(c), b"");
        assert_eq!(counter(&h, DECODE_ERRORS, &[P, ("role", "front")]), 1);
        assert!(!h.closed(good), "only that connection");
        // A provider answering in another serialization: the back closes and counts.
        let mut b = back();
        let bc = ok(b.new_connection());
        let req = parse_request(&rb(&h, good)).unwrap();
        send(&mut b, bc, &router_request(&req, &[]));
        tcp_proxy_take(&mut b, bc);
        let mut resp = frames(&vector("sofa-to-java.s2c.bin"))[0].clone();
        resp[2] = (resp[2] & 0xe0) | id;
        assert_eq!(write(&mut b, bc, &resp), b"");
        assert!(b.closed(bc));
        assert_eq!(counter(&b, DECODE_ERRORS, &[P, ("role", "back")]), 1);
    }
}

/// After any input: HCM sees only complete HTTP requests whose bodies (local requests aside)
/// are consecutive frames of `input` from its start, and a closed connection was counted.
/// Returns 0 closed, 1 waiting, 2 forwarded.
fn check_front_after(h: &Host, c: ConnId, input: &[u8], errors_before: u64, what: &str) -> usize {
    let reqs = parse_all(h.read_buffer(c));
    let errors = counter(h, DECODE_ERRORS, &[P, ("role", "front")]);
    if h.closed(c) {
        assert!(reqs.is_empty(), "{what}: closed, nothing reaches HCM");
        assert_eq!(errors, errors_before + 1, "{what}: closed and counted");
        return 0;
    }
    assert_eq!(errors, errors_before, "{what}");
    let mut at = 0;
    let frame_len =
        |at: usize| 16 + u32::from_be_bytes(input[at + 12..at + 16].try_into().unwrap()) as usize;
    for r in &reqs {
        // Responses from a client are dropped (counted as unexpected), not forwarded.
        while input[at + 2] & 0x80 == 0 {
            at += frame_len(at);
        }
        let len = 16 + u32::from_be_bytes(input[at + 12..at + 16].try_into().unwrap()) as usize;
        if r.header("host") != Some("meltemi.local") {
            assert_eq!(r.body, input[at..at + len], "{what}");
        }
        at += len;
    }
    if reqs.is_empty() {
        1
    } else {
        2
    }
}

#[test]
fn length_fields_near_u32_max_never_trap_the_vm_and_healthy_clients_go_on() {
    let stream = vector("java-to-java.c2s.bin");
    let java = frames(&stream);
    let expected = expected_requests("java", &stream);
    let echo = &java[0];
    // Every 4-byte window (the body length, Hessian string, binary, list and class-field
    // lengths) of a Caucho request holding a POJO, with the largest limit a config allows.
    let mut f = host(&format!(
        r#"{{"role":"front","codec":{{"max_body_bytes":{}}}}}"#,
        u32::MAX
    ));
    for at in 0..echo.len() {
        for len in EXTREME_LENGTHS {
            let mut m = echo.clone();
            let end = (at + 4).min(m.len());
            m[at..end].copy_from_slice(&len.to_be_bytes()[..end - at]);
            let before = counter(&f, DECODE_ERRORS, &[P, ("role", "front")]);
            let c = ok(f.new_connection());
            let r = f.downstream_data(c, &m, false);
            let what = format!("echo @{at} = {len:#x}");
            assert!(r.is_ok(), "{what} trapped the VM: {r:?}");
            if at == 12 && len > i32::MAX as u32 {
                assert!(f.closed(c), "{what}: Java reads the length as an i32");
            }
            if m[..2] == [0xda, 0xbb] && at >= 16 {
                check_front_after(&f, c, &m, before, &what);
            }
            ok(f.downstream_close(c));
        }
    }
    assert!(f.poisoned().is_none());
    let c = ok(f.new_connection());
    send(&mut f, c, echo);
    assert_eq!(
        rb(&f, c),
        expected[0].0,
        "a healthy consumer is still served"
    );

    // A provider frame announcing such a body closes only its connection.
    let resp = frames(&vector("java-to-java.s2c.bin"));
    let routed = router_request(&parse_request(&expected[0].0).unwrap(), &[]);
    let mut b = back();
    for len in EXTREME_LENGTHS {
        let c = ok(b.new_connection());
        send(&mut b, c, &routed);
        assert_eq!(tcp_proxy_take(&mut b, c), *echo);
        let mut bad = resp[0].clone();
        bad[12..16].copy_from_slice(&len.to_be_bytes());
        let r = b.upstream_data(c, &bad, false);
        assert!(r.is_ok(), "provider {len:#x} trapped the VM: {r:?}");
        assert!(b.closed(c), "provider {len:#x}: closed");
        let good = ok(b.new_connection());
        send(&mut b, good, &routed);
        assert_eq!(tcp_proxy_take(&mut b, good), *echo);
        let http = write(&mut b, good, &resp[0]);
        assert!(
            http.ends_with(&resp[0]),
            "the healthy provider answer is relayed"
        );
    }
}

#[test]
fn every_single_byte_corruption_of_a_captured_frame_is_handled_without_trap() {
    // A Caucho request with a class definition and a POJO, a sofa-rpc-node request; a Java
    // response with attachments and a dubbo-remoting status-80 response.
    let java = frames(&vector("java-to-java.c2s.bin"));
    let sofa = frames(&vector("sofa-to-sofa.c2s.bin"));
    let requests = [
        (java[1].clone(), "java greet"),
        (sofa[0].clone(), "sofa echo"),
    ];
    let mut f = front();
    let mut outcomes = [0usize; 3];
    for (frame, what) in &requests {
        for i in 0..frame.len() {
            for x in 0..=255u8 {
                if x == frame[i] {
                    continue;
                }
                let mut m = frame.clone();
                m[i] = x;
                let before = counter(&f, DECODE_ERRORS, &[P, ("role", "front")]);
                let c = ok(f.new_connection());
                send(&mut f, c, &m);
                let what = format!("{what} byte {i} = {x:#04x}");
                outcomes[check_front_after(&f, c, &m, before, &what)] += 1;
                ok(f.downstream_close(c));
            }
        }
    }
    assert!(
        outcomes.iter().all(|n| *n > 0),
        "closed / waiting / forwarded: {outcomes:?}"
    );
    let mut b = back();
    let routed_java = router_request(
        &parse_all(&expected_requests("java", &java.concat())[1].0)[0],
        &[],
    );
    let routed_sofa = router_request(
        &parse_all(&expected_requests("sofa", &sofa.concat())[2].0)[0],
        &[],
    );
    let responses = [
        (
            frames(&vector("java-to-java.s2c.bin"))[1].clone(),
            &routed_java,
        ),
        (
            frames(&vector("sofa-to-sofa.s2c.bin"))[2].clone(),
            &routed_sofa,
        ),
    ];
    for (frame, routed) in &responses {
        for i in 0..frame.len() {
            for x in 0..=255u8 {
                if x == frame[i] {
                    continue;
                }
                let mut m = frame.clone();
                m[i] = x;
                let c = ok(b.new_connection());
                send(&mut b, c, routed);
                tcp_proxy_take(&mut b, c);
                // Corrupt bytes either break the frame (a decode error) or change its request
                // id (an answer to nobody: a stray answer); both close the connection.
                let refusals = |b: &Host| {
                    counter(b, DECODE_ERRORS, &[P, ("role", "back")])
                        + counter(b, "meltemi_stray_answers_total", &[P, ("role", "back")])
                };
                let before = refusals(&b);
                let out = write(&mut b, c, &m);
                let after = refusals(&b);
                let what = format!("byte {i} = {x:#04x}");
                if b.closed(c) {
                    assert_eq!((out.as_slice(), after), (&b""[..], before + 1), "{what}");
                } else if !out.is_empty() {
                    // A corrupt length can make a shorter frame: still a whole frame only.
                    let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let body = &out[end..];
                    assert_eq!(body, &m[..body.len()], "{what}");
                    assert_eq!(
                        body.len(),
                        16 + u32::from_be_bytes(m[12..16].try_into().unwrap()) as usize
                    );
                }
                ok(b.downstream_close(c));
            }
        }
    }
    assert!(f.poisoned().is_none() && b.poisoned().is_none());
}

#[test]
fn garbage_and_random_streams_never_trap_and_close_only_their_connection() {
    let mut rng = Rng(0xd0bb0);
    let streams: Vec<Vec<u8>> = CONSUMERS
        .iter()
        .map(|c| vector(&format!("{c}-to-java.c2s.bin")))
        .collect();
    let mut f = front();
    let good = ok(f.new_connection());
    send(&mut f, good, &streams[0][..300]);
    let good_before = rb(&f, good);
    let mut closed = 0;
    for round in 0..3000 {
        let c = ok(f.new_connection());
        let s = &streams[rng.below(streams.len())];
        let n = rng.below(300);
        let input: Vec<u8> = match rng.below(4) {
            0 => rng.bytes(n),
            1 => [&[0xda, 0xbb][..], &rng.bytes(n)].concat(),
            2 => {
                let mut m = s.clone();
                for _ in 0..=rng.below(4) {
                    let i = rng.below(m.len());
                    m[i] = rng.next() as u8;
                }
                m
            }
            _ => [&s[..rng.below(s.len())], &rng.bytes(n)[..]].concat(),
        };
        let before = counter(&f, DECODE_ERRORS, &[P, ("role", "front")]);
        let mut rest = &input[..];
        while !rest.is_empty() {
            let k = 1 + rng.below(rest.len());
            if let Err(e) = f.downstream_data(c, &rest[..k], false) {
                panic!("round {round}: {input:?} broke the VM: {e}");
            }
            rest = &rest[k..];
        }
        if check_front_after(&f, c, &input, before, &format!("round {round}")) == 0 {
            closed += 1;
        }
        ok(f.downstream_close(c));
    }
    assert!(closed > 100, "garbage was refused: {closed}");
    assert!(!f.closed(good));
    assert_eq!(rb(&f, good), good_before);
    send(&mut f, good, &streams[0][300..]);
    assert_eq!(parse_all(f.read_buffer(good)).len(), 6);
    assert!(f.poisoned().is_none());

    let java = frames(&streams[0]);
    let routed = router_request(
        &parse_all(&expected_requests("java", &streams[0])[0].0)[0],
        &[],
    );
    let resp = vector("java-to-java.s2c.bin");
    let mut b = back();
    for _ in 0..1000 {
        let c = ok(b.new_connection());
        send(&mut b, c, &routed);
        assert_eq!(tcp_proxy_take(&mut b, c), java[0]);
        let n = rng.below(300);
        let junk = [&resp[..rng.below(resp.len())], &rng.bytes(n)[..]].concat();
        ok(b.upstream_data(c, &junk, false));
        ok(b.downstream_close(c));
        let c = ok(b.new_connection());
        let junk = [&routed[..rng.below(routed.len())], &rng.bytes(n)[..]].concat();
        ok(b.downstream_data(c, &junk, false));
        ok(b.downstream_close(c));
    }
    assert!(b.poisoned().is_none());
    assert!(counter(&b, DECODE_ERRORS, &[P, ("role", "back")]) > 0);
}
