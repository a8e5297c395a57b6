//! The real, built `minirpc.wasm` (release, `wasm32-wasip1`) driven through both roles of the
//! bridge on the deterministic proxy-wasm host, with `meltemi_wasm_host::envoy_emulation` and
//! this file playing Envoy's parts: HCM (parsing and consuming the front's HTTP/1.1 requests,
//! writing responses and local replies), the router (re-writing a request toward the back's
//! internal listener) and tcp_proxy (consuming everything the back hands on, relaying server
//! bytes).
//!
//! It proves, asserting exact bytes and counters:
//! - front: frames become exactly the expected HTTP requests, whatever the chunking (never a
//!   partial frame in the read buffer), pipelined or left unconsumed by HCM; marked responses
//!   become the server frame byte-for-byte (or the mutated frame); Envoy local replies, plain or
//!   chunked and split anywhere, become MiniRPC error frames; heartbeats and one-way calls;
//! - back: HTTP requests become frames (mutated where asked), one-way calls get a delivery probe
//!   whose answer acknowledges them, server frames become HTTP responses only once complete, and
//!   server pings are dropped and counted;
//! - limits, garbage, random and mutated inputs (no trap, ever), configuration errors, metrics.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use meltemi_wasm_host::abi::log_level;
use meltemi_wasm_host::envoy_emulation::{
    back_response, bridged_request, chunked_response, counter, hcm_consume, http_response,
    local_request, ok, parse_all, parse_request, rb, relay, router_request, send, stat,
    tcp_proxy_take, DECODE_ERRORS, EXTREME_LENGTHS,
};
use meltemi_wasm_host::rng::Rng;
use meltemi_wasm_host::{build_wasm, Action, ConnId, Host, Module};

// ---------------------------------------------------------------------------------------------
// MiniRPC wire format, written independently of the codec (see examples/minirpc/src/lib.rs).

const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;
const ONEWAY: u8 = 3;
const PING: u8 = 4;
const PONG: u8 = 5;
const ERROR: u8 = 6;

fn frame(kind: u8, id: u64, headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(headers.len() as u16).to_be_bytes());
    for (k, v) in headers {
        for s in [k, v] {
            body.extend_from_slice(&(s.len() as u16).to_be_bytes());
            body.extend_from_slice(s.as_bytes());
        }
    }
    body.extend_from_slice(payload);
    let mut out = b"MR".to_vec();
    out.push(kind);
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// A two-way request to service `demo`.
fn request(id: u64, method: &str, payload: &[u8]) -> Vec<u8> {
    frame(
        REQUEST,
        id,
        &[("service", "demo"), ("method", method)],
        payload,
    )
}

/// The error frame the codec builds for a failed request.
fn error_frame(id: u64, error: &str, detail: &str) -> Vec<u8> {
    frame(ERROR, id, &[("error", error)], detail.as_bytes())
}

/// A decoded MiniRPC frame (for checks on frames the filter rewrote).
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    kind: u8,
    id: u64,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
}

fn decode(bytes: &[u8]) -> Decoded {
    assert!(
        bytes.len() >= 18 && &bytes[..2] == b"MR",
        "not a frame: {bytes:?}"
    );
    let len = u32::from_be_bytes(bytes[12..16].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), 16 + len, "exactly one frame");
    let body = &bytes[16..];
    let u16_at = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]) as usize;
    let mut at = 2;
    let mut headers = Vec::new();
    for _ in 0..u16_at(0) {
        let mut pair = Vec::new();
        for _ in 0..2 {
            let n = u16_at(at);
            pair.push(String::from_utf8(body[at + 2..at + 2 + n].to_vec()).unwrap());
            at += 2 + n;
        }
        headers.push((pair[0].clone(), pair[1].clone()));
    }
    Decoded {
        kind: bytes[2],
        id: u64::from_be_bytes(bytes[4..12].try_into().unwrap()),
        headers,
        payload: body[at..].to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
// The module and hosts.

fn minirpc() -> Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE
        .get_or_init(|| {
            let wasm = build_wasm(Path::new(env!("CARGO_MANIFEST_DIR")), "minirpc");
            Module::load(wasm).unwrap()
        })
        .clone()
}

fn host(config: &str) -> Host {
    let mut host = Host::new(&minirpc(), "").unwrap();
    assert!(host.configure(config).unwrap(), "{:?}", host.logs());
    host
}

fn front() -> Host {
    host(r#"{"role": "front"}"#)
}

fn back() -> Host {
    host(r#"{"role": "back"}"#)
}

/// HCM (front) or the back's router-side peer writes `bytes`; returns what reaches the other end
/// (unlike `envoy_emulation::write`, the filter must also answer `Continue`).
fn write(host: &mut Host, c: ConnId, bytes: &[u8]) -> Vec<u8> {
    let (action, out) = ok(host.upstream_data(c, bytes, false));
    assert_eq!(action, Action::Continue);
    out
}

const REFUSED: &str = "meltemi_refused_total";
const P: (&str, &str) = ("protocol", "minirpc");

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 as HCM, the router and Envoy's local replies see and write it (the shapes shared by
// every protocol are in `meltemi_wasm_host::envoy_emulation`).

/// The request the front must write for a frame (service and method from its metadata).
fn front_request(seq: u64, kind: &str, rid: u64, md: &[(&str, &str)], frame: &[u8]) -> Vec<u8> {
    let get = |key: &str| {
        md.iter()
            .find(|(k, _)| *k == key)
            .map_or("unknown", |e| e.1)
    };
    bridged_request(seq, get("service"), get("method"), kind, rid, md, frame)
}

fn demo_request(seq: u64, id: u64, method: &str, frame: &[u8]) -> Vec<u8> {
    front_request(
        seq,
        "request",
        id,
        &[("service", "demo"), ("method", method)],
        frame,
    )
}

/// What HCM relays from the back: the back's marker headers plus Envoy's own.
fn relayed(kind: &str, rid: u64, frame: &[u8]) -> Vec<u8> {
    let rid = rid.to_string();
    http_response(
        "200 OK",
        &[
            ("x-meltemi-response", kind),
            ("x-meltemi-rid", &rid),
            ("x-envoy-upstream-service-time", "2"),
        ],
        frame,
    )
}

// ---------------------------------------------------------------------------------------------
// Front: client → HCM.

#[test]
fn front_turns_a_request_frame_into_the_exact_http_request() {
    let mut h = front();
    let c = ok(h.new_connection());
    let f = frame(
        REQUEST,
        7,
        &[
            ("service", "demo"),
            ("method", "sayHello"),
            ("Version", "v2"),
            ("host", "evil"),
            ("x-envoy-retry-on", "5xx"),
        ],
        b"\x00\x01payload\xff",
    );
    assert_eq!(send(&mut h, c, &f), Action::Continue);
    let mut expected = b"POST /demo/sayHello HTTP/1.1\r\nx-meltemi-seq: 1\r\nhost: demo\r\nx-meltemi-kind: request\r\nx-meltemi-rid: 7\r\nservice: demo\r\nmethod: sayHello\r\nversion: v2\r\nx-meltemi-md-host: evil\r\nx-meltemi-md-x-envoy-retry-on: 5xx\r\n".to_vec();
    expected.extend_from_slice(format!("content-length: {}\r\n\r\n", f.len()).as_bytes());
    expected.extend_from_slice(&f);
    assert_eq!(
        String::from_utf8_lossy(&rb(&h, c)[..]),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(&rb(&h, c)[..], &expected[..]);
    assert!(!h.closed(c));
}

#[test]
fn front_output_is_the_same_for_every_split_and_never_holds_a_partial_frame() {
    let f = frame(
        REQUEST,
        0x0102_0304_0506_0708,
        &[("service", "demo"), ("method", "echo"), ("k", "v")],
        b"split me anywhere",
    );
    let expected = front_request(
        1,
        "request",
        0x0102_0304_0506_0708,
        &[("service", "demo"), ("method", "echo"), ("k", "v")],
        &f,
    );
    let mut h = front();
    for cut in 1..f.len() {
        let c = ok(h.new_connection());
        assert_eq!(send(&mut h, c, &f[..cut]), Action::Continue);
        assert_eq!(
            &rb(&h, c)[..],
            b"",
            "cut at {cut}: nothing before the frame is whole"
        );
        send(&mut h, c, &f[cut..]);
        assert_eq!(&rb(&h, c)[..], &expected[..], "cut at {cut}");
    }
    // One byte at a time.
    let c = ok(h.new_connection());
    for (i, b) in f.iter().enumerate() {
        send(&mut h, c, &[*b]);
        if i + 1 < f.len() {
            assert_eq!(&rb(&h, c)[..], b"", "after byte {i}");
        }
    }
    assert_eq!(&rb(&h, c)[..], &expected[..]);
    assert_eq!(counter(&h, DECODE_ERRORS, &[P, ("role", "front")]), 0);
}

#[test]
fn front_pipelined_frames_in_one_chunk_and_a_trailing_partial() {
    let (a, b, d) = (
        request(1, "a", b"1"),
        request(2, "b", b"22"),
        request(3, "d", b"333"),
    );
    let mut chunk = [a.clone(), b.clone()].concat();
    chunk.extend_from_slice(&d[..5]);
    let mut h = front();
    let c = ok(h.new_connection());
    send(&mut h, c, &chunk);
    let expected = [demo_request(1, 1, "a", &a), demo_request(2, 2, "b", &b)].concat();
    assert_eq!(&rb(&h, c)[..], &expected[..]);
    let reqs = parse_all(&rb(&h, c)[..]);
    assert_eq!(reqs.len(), 2);
    assert_eq!((reqs[0].body.clone(), reqs[1].body.clone()), (a, b));
    hcm_consume(&mut h, c, 2);
    send(&mut h, c, &d[5..]);
    assert_eq!(&rb(&h, c)[..], &demo_request(3, 3, "d", &d)[..]);
}

#[test]
fn front_keeps_requests_hcm_left_unconsumed_byte_identical() {
    let frames: Vec<Vec<u8>> = (1..=6)
        .map(|i| request(i, &format!("m{i}"), &vec![b'x'; i as usize]))
        .collect();
    let http: Vec<Vec<u8>> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| demo_request(i as u64 + 1, i as u64 + 1, &format!("m{}", i + 1), f))
        .collect();
    let mut h = front();
    let c = ok(h.new_connection());
    send(&mut h, c, &[frames[0].clone(), frames[1].clone()].concat());
    assert_eq!(
        &rb(&h, c)[..],
        &[http[0].clone(), http[1].clone()].concat()[..]
    );

    // HCM consumes only the first request: the second is shown again with new bytes.
    hcm_consume(&mut h, c, 1);
    send(&mut h, c, &frames[2]);
    assert_eq!(
        &rb(&h, c)[..],
        &[http[1].clone(), http[2].clone()].concat()[..]
    );

    // New bytes that do not complete a frame leave the unconsumed prefix as it is.
    send(&mut h, c, &frames[3][..10]);
    assert_eq!(
        &rb(&h, c)[..],
        &[http[1].clone(), http[2].clone()].concat()[..]
    );

    // HCM answers request 1 meanwhile (that does not disturb what it left in the buffer).
    let out = write(
        &mut h,
        c,
        &relayed("response", 1, &frame(RESPONSE, 1, &[], b"r1")),
    );
    assert_eq!(out, frame(RESPONSE, 1, &[], b"r1"));

    // Consumes request 2, and 3 stays; frame 4 completes and 5 arrives whole.
    hcm_consume(&mut h, c, 1);
    send(&mut h, c, &[&frames[3][10..], &frames[4][..]].concat());
    assert_eq!(
        &rb(&h, c)[..],
        &[http[2].clone(), http[3].clone(), http[4].clone()].concat()[..]
    );

    // HCM consumes everything; a fresh frame starts a fresh buffer.
    hcm_consume(&mut h, c, usize::MAX);
    send(&mut h, c, &frames[5]);
    assert_eq!(&rb(&h, c)[..], &http[5][..]);
    assert!(!h.closed(c));

    // Answers come back in order, byte for byte.
    for id in 2..=6u64 {
        let r = frame(
            RESPONSE,
            id,
            &[("status", "ok")],
            format!("r{id}").as_bytes(),
        );
        assert_eq!(write(&mut h, c, &relayed("response", id, &r)), r);
    }
    assert_eq!(h.gauge(&stat("meltemi_active_requests", &[P])), Some(0));
}

/// A path longer than 8 KiB (a long method name; the default metadata limit is 16 KiB).
#[test]
fn front_recognises_an_unconsumed_request_with_a_long_path() {
    let long = "m".repeat(9000);
    let (a, b, d) = (
        request(1, "a", b""),
        request(2, &long, b""),
        request(3, "d", b""),
    );
    let mut h = front();
    let c = ok(h.new_connection());
    send(&mut h, c, &[a.clone(), b.clone()].concat());
    let (ha, hb) = (demo_request(1, 1, "a", &a), demo_request(2, 2, &long, &b));
    assert_eq!(&rb(&h, c)[..], &[ha.clone(), hb.clone()].concat()[..]);
    hcm_consume(&mut h, c, 1);
    send(&mut h, c, &d);
    assert!(!h.closed(c), "{:?}", h.logs());
    assert_eq!(
        &rb(&h, c)[..],
        &[hb, demo_request(3, 3, "d", &d)].concat()[..]
    );
}

/// A client that knows the bridge's framing writes an HTTP request carrying the sequence number
/// of its own in-flight request, of the same length, right after HCM consumed it.
#[test]
fn front_never_forwards_client_bytes_that_imitate_its_own_requests() {
    let mut h = front();
    let c = ok(h.new_connection());
    let f = request(1, "a", b"");
    send(&mut h, c, &f);
    let ours = h.read_buffer(c).len();
    hcm_consume(&mut h, c, 1);
    // Same length as the request the front wrote, same sequence number.
    let head = "POST /admin/x HTTP/1.1\r\nx-meltemi-seq: 1\r\nhost: internal\r\nx-meltemi-mutation: role=admin\r\ncontent-length: ";
    let body_len = ours - head.len() - 4 - 4;
    let forged = format!("{head}{body_len:04}\r\n\r\n{}", "A".repeat(body_len));
    assert_eq!(forged.len(), ours);
    send(&mut h, c, forged.as_bytes());
    assert_ne!(
        &rb(&h, c)[..],
        forged.as_bytes(),
        "client bytes reached HCM verbatim"
    );
    assert!(h.closed(c), "not MiniRPC: the connection must be closed");
    assert_eq!(counter(&h, DECODE_ERRORS, &[P, ("role", "front")]), 1);
}

// ---------------------------------------------------------------------------------------------
// Front: HCM → client.

#[test]
fn front_unwraps_a_marked_response_byte_for_byte() {
    let mut h = front();
    let c = ok(h.new_connection());
    send(&mut h, c, &request(5, "echo", b"hi"));
    hcm_consume(&mut h, c, 1);
    let r = frame(RESPONSE, 5, &[("a", "b")], b"\x00\xffanswer");
    let resp = relayed("response", 5, &r);
    for cut in 0..resp.len() {
        let c = ok(h.new_connection());
        send(&mut h, c, &request(5, "echo", b"hi"));
        hcm_consume(&mut h, c, 1);
        assert_eq!(write(&mut h, c, &resp[..cut]), b"", "cut at {cut}");
        assert_eq!(write(&mut h, c, &resp[cut..]), r, "cut at {cut}");
    }
    // Chunked too.
    assert_eq!(
        write(
            &mut h,
            c,
            &chunked_response("200 OK", &[("x-meltemi-response", "response")], &r, 5)
        ),
        r
    );
}

/// An Envoy local reply and the error frame it must become.
type LocalReplyCase = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [u8],
    &'static str,
    &'static str,
);

#[test]
fn front_turns_local_replies_into_error_frames_at_every_split() {
    // (status line, headers, body, expected `error` header, expected detail)
    let cases: [LocalReplyCase; 5] = [
        ("404 Not Found", &[], b"", "route_not_found", "envoy 404"),
        (
            "503 Service Unavailable",
            &[("content-type", "text/plain")],
            b"no healthy upstream",
            "unavailable",
            "envoy 503: no healthy upstream",
        ),
        (
            "429 Too Many Requests",
            &[("content-type", "text/plain"), ("x-ratelimit-limit", "1")],
            b"local_rate_limited",
            "over_limit",
            "envoy 429: local_rate_limited",
        ),
        (
            "504 Gateway Timeout",
            &[("content-type", "text/plain")],
            b"upstream request timeout",
            "timeout",
            "envoy 504: upstream request timeout",
        ),
        (
            "403 Forbidden",
            &[],
            b"RBAC: access denied",
            "unauthorized",
            "envoy 403: RBAC: access denied",
        ),
    ];
    let mut h = front();
    for (i, (status, headers, body, error, detail)) in cases.into_iter().enumerate() {
        let id = 1000 + i as u64;
        // The detail names the call (`request(.., "nope", ..)` goes to service `demo`).
        let expected = error_frame(id, error, &format!("demo/nope: {detail}"));
        let plain = http_response(status, headers, body);
        let chunked = chunked_response(status, headers, body, 4);
        for resp in [plain, chunked] {
            for cut in 0..resp.len() {
                let c = ok(h.new_connection());
                send(&mut h, c, &request(id, "nope", b"x"));
                hcm_consume(&mut h, c, 1);
                assert_eq!(write(&mut h, c, &resp[..cut]), b"", "{status} cut at {cut}");
                let out = write(&mut h, c, &resp[cut..]);
                assert_eq!(out, expected, "{status} cut at {cut}: {:?}", decode(&out));
                assert!(!h.closed(c));
            }
        }
    }
    let labels = [
        P,
        ("service", "demo"),
        ("method", "nope"),
        ("kind", "unavailable"),
    ];
    assert!(counter(&h, "meltemi_local_replies_total", &labels) > 0);
}

#[test]
fn front_applies_the_response_mutation() {
    let mut h = front();
    let c = ok(h.new_connection());
    send(&mut h, c, &request(9, "echo", b"q"));
    hcm_consume(&mut h, c, 1);
    let r = frame(RESPONSE, 9, &[("a", "1"), ("env", "prod")], b"body");
    let resp = http_response(
        "200 OK",
        &[
            ("x-meltemi-response", "response"),
            ("x-meltemi-rid", "9"),
            ("x-meltemi-mutation", "env=canary"),
            ("x-meltemi-mutation", "trace%3Did=a%2Cb"),
        ],
        &r,
    );
    let out = write(&mut h, c, &resp);
    assert_eq!(
        out,
        frame(
            RESPONSE,
            9,
            &[("a", "1"), ("env", "canary"), ("trace=id", "a,b")],
            b"body"
        )
    );
}

#[test]
fn front_answers_heartbeats_with_a_pong_whatever_hcm_answers() {
    let mut h = front();
    for (i, answer) in [
        http_response("200 OK", &[], b""),
        http_response("404 Not Found", &[], b""),
        http_response("503 Service Unavailable", &[], b"no healthy upstream"),
    ]
    .into_iter()
    .enumerate()
    {
        let c = ok(h.new_connection());
        let id = 42 + i as u64;
        send(&mut h, c, &frame(PING, id, &[], b""));
        assert_eq!(&rb(&h, c)[..], &local_request(1, "heartbeat")[..]);
        hcm_consume(&mut h, c, 1);
        assert_eq!(write(&mut h, c, &answer), frame(PONG, id, &[], b""));
    }
    assert_eq!(
        counter(&h, "meltemi_heartbeats_total", &[P, ("role", "front")]),
        3
    );
    assert_eq!(h.gauge(&stat("meltemi_active_requests", &[P])), None);
}

#[test]
fn front_forwards_one_way_calls_and_swallows_their_answer() {
    let mut h = front();
    let c = ok(h.new_connection());
    let ow = frame(
        ONEWAY,
        10,
        &[("service", "demo"), ("method", "notify")],
        b"fire",
    );
    let r = request(11, "echo", b"after");
    send(&mut h, c, &[ow.clone(), r.clone()].concat());
    let expected = [
        front_request(
            1,
            "oneway",
            10,
            &[("service", "demo"), ("method", "notify")],
            &ow,
        ),
        demo_request(2, 11, "echo", &r),
    ]
    .concat();
    assert_eq!(&rb(&h, c)[..], &expected[..]);
    hcm_consume(&mut h, c, 2);
    let ack = http_response("200 OK", &[("x-meltemi-response", "oneway-ack")], b"");
    assert_eq!(
        write(&mut h, c, &ack),
        b"",
        "no bytes to the client for a one-way call"
    );
    let answer = frame(RESPONSE, 11, &[], b"ok");
    assert_eq!(write(&mut h, c, &relayed("response", 11, &answer)), answer);
    // A failed one-way call is swallowed too.
    send(&mut h, c, &ow);
    hcm_consume(&mut h, c, 1);
    assert_eq!(
        write(
            &mut h,
            c,
            &http_response("503 Service Unavailable", &[], b"")
        ),
        b""
    );
    let notify = [P, ("service", "demo"), ("method", "notify")];
    assert_eq!(
        counter(
            &h,
            "meltemi_responses_total",
            &[notify[0], notify[1], notify[2], ("outcome", "oneway")]
        ),
        1
    );
    assert_eq!(
        counter(
            &h,
            "meltemi_responses_total",
            &[notify[0], notify[1], notify[2], ("outcome", "local_reply")]
        ),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Back: router → server and back.

#[test]
fn back_turns_the_router_request_into_the_frame() {
    let f = frame(
        REQUEST,
        77,
        &[("service", "demo"), ("method", "echo"), ("k", "v")],
        b"\x00payload",
    );
    let http = front_request(
        3,
        "request",
        77,
        &[("service", "demo"), ("method", "echo"), ("k", "v")],
        &f,
    );
    let routed = router_request(&parse_request(&http).unwrap(), &[]);
    let mut h = back();
    for cut in 0..routed.len() {
        let c = ok(h.new_connection());
        send(&mut h, c, &routed[..cut]);
        assert_eq!(tcp_proxy_take(&mut h, c), b"", "cut at {cut}");
        send(&mut h, c, &routed[cut..]);
        assert_eq!(tcp_proxy_take(&mut h, c), f, "cut at {cut}");
        assert!(!h.closed(c));
    }
}

#[test]
fn back_writes_the_route_mutation_into_the_frame() {
    let f = frame(
        REQUEST,
        8,
        &[("service", "demo"), ("method", "echo")],
        b"pl",
    );
    let http = demo_request(1, 8, "echo", &f);
    let routed = router_request(
        &parse_request(&http).unwrap(),
        &[
            ("x-meltemi-mutation", "env=canary"),
            ("x-meltemi-mutation", "method=echo2, a%3Db=c%25d"),
        ],
    );
    let mut h = back();
    let c = ok(h.new_connection());
    send(&mut h, c, &routed);
    let out = tcp_proxy_take(&mut h, c);
    assert_eq!(
        out,
        frame(
            REQUEST,
            8,
            &[
                ("service", "demo"),
                ("method", "echo2"),
                ("env", "canary"),
                ("a=b", "c%d")
            ],
            b"pl"
        )
    );
    let d = decode(&out);
    assert_eq!(
        (d.kind, d.id, d.payload.as_slice()),
        (REQUEST, 8, &b"pl"[..])
    );
}

#[test]
fn back_acknowledges_one_way_calls_through_a_ping_probe() {
    let ow = frame(
        ONEWAY,
        12,
        &[("service", "demo"), ("method", "notify")],
        b"fire",
    );
    let http = front_request(
        1,
        "oneway",
        12,
        &[("service", "demo"), ("method", "notify")],
        &ow,
    );
    let mut h = back();
    let c = ok(h.new_connection());
    send(
        &mut h,
        c,
        &router_request(&parse_request(&http).unwrap(), &[]),
    );
    assert_eq!(
        tcp_proxy_take(&mut h, c),
        [ow.clone(), frame(PING, 12, &[], b"")].concat()
    );
    let ack = write(&mut h, c, &frame(PONG, 12, &[], b""));
    assert_eq!(
        ack,
        b"HTTP/1.1 200 OK\r\nx-meltemi-response: oneway-ack\r\ncontent-length: 0\r\n\r\n"
    );
    // A normal request on the same connection afterwards.
    let r = request(13, "echo", b"x");
    send(
        &mut h,
        c,
        &router_request(
            &parse_request(&demo_request(2, 13, "echo", &r)).unwrap(),
            &[],
        ),
    );
    assert_eq!(tcp_proxy_take(&mut h, c), r);
    let resp = frame(RESPONSE, 13, &[("status", "ok")], b"y");
    assert_eq!(
        write(&mut h, c, &resp),
        back_response("response", 13, &[("status", "ok")], &resp)
    );
}

#[test]
fn back_answers_only_once_the_server_frame_is_complete_and_keeps_server_pings_from_the_router() {
    let f = request(21, "echo", b"x");
    let routed = router_request(
        &parse_request(&demo_request(1, 21, "echo", &f)).unwrap(),
        &[],
    );
    let resp = frame(
        RESPONSE,
        21,
        &[("Version", "v1"), ("host", "h")],
        b"\x00\x01 done",
    );
    let expected = back_response(
        "response",
        21,
        &[("version", "v1"), ("x-meltemi-md-host", "h")],
        &resp,
    );
    let ping = frame(PING, 99, &[], b"");
    let stream = [ping.clone(), resp.clone()].concat();
    let mut h = back();
    for cut in 0..stream.len() {
        let c = ok(h.new_connection());
        send(&mut h, c, &routed);
        assert_eq!(tcp_proxy_take(&mut h, c), f);
        assert_eq!(write(&mut h, c, &stream[..cut]), b"", "cut at {cut}");
        assert_eq!(write(&mut h, c, &stream[cut..]), expected, "cut at {cut}");
        assert!(!h.closed(c));
    }
    assert_eq!(
        counter(&h, "meltemi_heartbeats_total", &[P, ("role", "back")]),
        stream.len() as u64
    );
    // An application error is relayed with its kind.
    let c = ok(h.new_connection());
    send(&mut h, c, &routed);
    tcp_proxy_take(&mut h, c);
    let err = frame(ERROR, 21, &[("error", "boom")], b"");
    assert_eq!(
        write(&mut h, c, &err),
        back_response("exception", 21, &[("error", "boom")], &err)
    );
}

/// The back cannot write toward the server on its own: a server's ping is answered in front of
/// the next request forwarded on that connection, never relayed to the router.
#[test]
fn back_answers_server_pings_ahead_of_the_next_request() {
    let first = request(31, "echo", b"1");
    let second = request(32, "echo", b"2");
    let routed = |f: &[u8], id: u64| {
        router_request(
            &parse_request(&demo_request(1, id, "echo", f)).unwrap(),
            &[],
        )
    };
    let mut h = back();
    let c = ok(h.new_connection());
    send(&mut h, c, &routed(&first, 31));
    assert_eq!(tcp_proxy_take(&mut h, c), first);
    let resp = frame(RESPONSE, 31, &[], b"r");
    let pings = [frame(PING, 7, &[], b""), frame(PING, 8, &[], b"")].concat();
    assert_eq!(
        write(&mut h, c, &[pings, resp.clone()].concat()),
        back_response("response", 31, &[], &resp),
        "pings never reach the router"
    );
    send(&mut h, c, &routed(&second, 32));
    assert_eq!(
        tcp_proxy_take(&mut h, c),
        [frame(PONG, 7, &[], b""), frame(PONG, 8, &[], b""), second].concat(),
        "both pongs go out first, then the request"
    );
    // Answered once only.
    let resp2 = frame(RESPONSE, 32, &[], b"r2");
    write(&mut h, c, &resp2);
    send(&mut h, c, &routed(&first, 31));
    assert_eq!(tcp_proxy_take(&mut h, c), first);
    assert!(!h.closed(c));
}

// ---------------------------------------------------------------------------------------------
// Both halves, as Envoy chains them.

#[test]
fn round_trip_through_front_hcm_router_back_and_server() {
    let (mut fh, mut bh) = (front(), back());
    let (fc, bc) = (ok(fh.new_connection()), ok(bh.new_connection()));
    for id in 1..=3u64 {
        let f = request(id, "sayHello", format!("p{id}").as_bytes());
        send(&mut fh, fc, &f);
        let req = hcm_consume(&mut fh, fc, 1).remove(0);
        assert_eq!(
            (req.path.as_str(), req.header("host")),
            ("/demo/sayHello", Some("demo"))
        );
        send(
            &mut bh,
            bc,
            &router_request(&req, &[("x-meltemi-mutation", "env=canary")]),
        );
        let to_server = decode(&tcp_proxy_take(&mut bh, bc));
        assert_eq!(to_server.id, id);
        assert_eq!(
            to_server.headers.last().unwrap(),
            &("env".to_owned(), "canary".to_owned())
        );
        let answer = frame(RESPONSE, id, &[], format!("v1:p{id}").as_bytes());
        let http = write(&mut bh, bc, &answer);
        assert_eq!(http, back_response("response", id, &[], &answer));
        // HCM relays it with its own headers added.
        assert_eq!(write(&mut fh, fc, &relay(&http)), answer);
    }
}

// ---------------------------------------------------------------------------------------------
// Limits.

#[test]
fn oversize_frames_close_the_connection_and_are_counted() {
    let mut h = host(r#"{"role": "front", "limits": {"max_frame_bytes": 64}}"#);
    let small = request(1, "a", &[b'x'; 20]);
    assert!(small.len() <= 64);
    let big = request(2, "a", &[b'x'; 60]);
    assert!(big.len() > 64);
    let c = ok(h.new_connection());
    send(&mut h, c, &small);
    assert_eq!(&rb(&h, c)[..], &demo_request(1, 1, "a", &small)[..]);
    hcm_consume(&mut h, c, 1);
    send(&mut h, c, &big);
    assert!(h.closed(c));
    assert_eq!(
        &rb(&h, c)[..],
        b"",
        "nothing of the refused frame reaches HCM"
    );
    let too_large = [P, ("reason", "frame_too_large"), ("role", "front")];
    assert_eq!(counter(&h, REFUSED, &too_large), 1);
    // A frame announcing 1 GiB is refused once more than the limit has arrived.
    let c2 = ok(h.new_connection());
    let mut huge = request(3, "a", b"");
    huge[12..16].copy_from_slice(&(1u32 << 30).to_be_bytes());
    send(&mut h, c2, &huge);
    assert!(!h.closed(c2));
    send(&mut h, c2, &[0u8; 64]);
    assert!(h.closed(c2));
    assert_eq!(&rb(&h, c2)[..], b"");
    assert_eq!(counter(&h, REFUSED, &too_large), 2);
}

#[test]
fn the_back_refuses_an_oversize_partial_server_frame() {
    let mut b = host(r#"{"role": "back", "limits": {"max_frame_bytes": 64}}"#);
    let small = request(1, "a", b"");
    let c = ok(b.new_connection());
    send(
        &mut b,
        c,
        &router_request(
            &parse_request(&demo_request(1, 1, "a", &small)).unwrap(),
            &[],
        ),
    );
    assert_eq!(tcp_proxy_take(&mut b, c), small);
    let big = frame(RESPONSE, 1, &[], &[b'y'; 80]);
    assert_eq!(write(&mut b, c, &big[..70]), b"");
    assert!(b.closed(c));
    assert_eq!(
        counter(
            &b,
            REFUSED,
            &[P, ("reason", "frame_too_large"), ("role", "back")]
        ),
        1
    );
}

#[test]
fn the_back_refuses_an_oversize_complete_server_frame() {
    let too_large = [P, ("reason", "frame_too_large"), ("role", "back")];
    let small = request(1, "a", b"");
    let mut b = host(r#"{"role": "back", "limits": {"max_frame_bytes": 64}}"#);
    let c = ok(b.new_connection());
    send(
        &mut b,
        c,
        &router_request(
            &parse_request(&demo_request(1, 1, "a", &small)).unwrap(),
            &[],
        ),
    );
    assert_eq!(tcp_proxy_take(&mut b, c), small);
    let out = write(&mut b, c, &frame(RESPONSE, 1, &[], &[b'y'; 80]));
    assert_eq!(out, b"");
    assert!(b.closed(c));
    assert_eq!(counter(&b, REFUSED, &too_large), 1);
}

/// A 16-byte frame header announcing `len` body bytes (nothing of the body follows).
fn header_only(kind: u8, id: u64, len: u32) -> Vec<u8> {
    let mut f = frame(kind, id, &[], b"");
    f.truncate(12);
    f.extend_from_slice(&len.to_be_bytes());
    f
}

/// Once the frame limit is passed the connection must be closed, whatever the header announced:
/// either the codec refused the header at once, or the framework refuses the frame's bytes.
fn assert_refused_without_trap(h: &mut Host, c: ConnId, upstream: bool, len: u32) {
    let more = [0u8; 80];
    if !h.closed(c) {
        let r = if upstream {
            h.upstream_data(c, &more, false).map(|_| ())
        } else {
            h.downstream_data(c, &more, false).map(|_| ())
        };
        assert!(r.is_ok(), "length {len:#x} trapped the VM: {r:?}");
    }
    assert!(h.poisoned().is_none(), "length {len:#x} trapped the VM");
    assert!(
        h.closed(c),
        "length {len:#x}: the connection must be closed"
    );
}

#[test]
fn length_fields_near_u32_max_close_the_connection_without_trapping_the_front() {
    let mut h = host(r#"{"role": "front", "limits": {"max_frame_bytes": 64}}"#);
    for len in EXTREME_LENGTHS {
        let c = ok(h.new_connection());
        let r = h.downstream_data(c, &header_only(REQUEST, 1, len), false);
        assert!(r.is_ok(), "length {len:#x} trapped the VM: {r:?}");
        assert_refused_without_trap(&mut h, c, false, len);
        assert_eq!(&rb(&h, c)[..], b"", "nothing of the frame reaches HCM");
        // The VM is shared by every connection of the worker: a new client is still served.
        let good = ok(h.new_connection());
        let f = request(2, "echo", b"after");
        send(&mut h, good, &f);
        assert_eq!(&rb(&h, good)[..], &demo_request(1, 2, "echo", &f)[..]);
        assert!(!h.closed(good));
    }
}

#[test]
fn length_fields_near_u32_max_close_the_connection_without_trapping_the_back() {
    let mut b = host(r#"{"role": "back", "limits": {"max_frame_bytes": 64}}"#);
    let small = request(1, "a", b"");
    let routed = router_request(
        &parse_request(&demo_request(1, 1, "a", &small)).unwrap(),
        &[],
    );
    for len in EXTREME_LENGTHS {
        let c = ok(b.new_connection());
        send(&mut b, c, &routed);
        assert_eq!(tcp_proxy_take(&mut b, c), small);
        let r = b.upstream_data(c, &header_only(RESPONSE, 1, len), false);
        assert!(r.is_ok(), "length {len:#x} trapped the VM: {r:?}");
        assert_refused_without_trap(&mut b, c, true, len);
        // A healthy server connection still gets its answer through.
        let good = ok(b.new_connection());
        send(&mut b, good, &routed);
        assert_eq!(tcp_proxy_take(&mut b, good), small);
        let answer = frame(RESPONSE, 1, &[], b"ok");
        let http = write(&mut b, good, &answer);
        assert!(
            http.ends_with(&answer),
            "the back wraps the healthy answer: {http:?}"
        );
        assert!(!b.closed(good));
    }
}

#[test]
fn past_max_pending_requests_the_front_holds_requests_back_in_order() {
    let mut h = host(r#"{"role": "front", "limits": {"max_pending_requests": 1}}"#);
    let c = ok(h.new_connection());
    let (a, b, d) = (
        request(1, "a", b""),
        request(2, "b", b""),
        request(3, "d", b""),
    );
    // Two requests in one read: only the first reaches HCM, none is refused.
    let action = send(&mut h, c, &[a.clone(), b.clone()].concat());
    assert_eq!(&rb(&h, c)[..], &demo_request(1, 1, "a", &a)[..]);
    assert_eq!(
        action,
        Action::Pause,
        "the read buffer stays reachable for the timer"
    );
    assert_eq!(h.continued(c), 1, "HCM still reads the first request now");
    hcm_consume(&mut h, c, 1);
    // HCM answers the first; nothing reads again, the timer hands the next one.
    let ra = frame(RESPONSE, 1, &[], b"ra");
    assert_eq!(write(&mut h, c, &relayed("response", 1, &ra)), ra);
    assert!(h.tick_period_ms() > 0, "the front asked for the timer");
    ok(h.tick());
    assert_eq!(&rb(&h, c)[..], &demo_request(2, 2, "b", &b)[..]);
    assert_eq!(h.continued(c), 2);
    hcm_consume(&mut h, c, 1);
    let rb_ = frame(RESPONSE, 2, &[], b"rb");
    assert_eq!(write(&mut h, c, &relayed("response", 2, &rb_)), rb_);
    ok(h.tick());
    assert_eq!(h.tick_period_ms(), 0, "nothing waits: the timer stops");
    assert_eq!(
        counter(&h, REFUSED, &[P, ("reason", "too_many_pending")]),
        0
    );
    // Nothing waits any more: the next request goes straight through.
    let action = send(&mut h, c, &d);
    assert_eq!(action, Action::Continue);
    assert_eq!(&rb(&h, c)[..], &demo_request(3, 3, "d", &d)[..]);
}

#[test]
fn a_deep_pipeline_is_copied_into_the_vm_once() {
    // 2000 requests in one read with room for 4 at a time: every byte of the pipeline is read
    // from Envoy once, and each later read copies only the few bytes that identify the
    // requests HCM has not consumed (not the whole buffer again).
    let mut h = host(r#"{"role": "front", "limits": {"max_pending_requests": 4}}"#);
    let c = ok(h.new_connection());
    let n = 2000u64;
    let stream: Vec<u8> = (1..=n)
        .flat_map(|i| request(i, "echo", &[b'p'; 300]))
        .collect();
    h.reset_copied();
    send(&mut h, c, &stream);
    let mut answered = 0u64;
    while answered < n {
        let reqs = hcm_consume(&mut h, c, 1);
        assert_eq!(
            reqs.len(),
            1,
            "HCM always has the next request ({answered} answered)"
        );
        answered += 1;
        let r = frame(RESPONSE, answered, &[], b"ok");
        assert_eq!(write(&mut h, c, &relayed("response", answered, &r)), r);
        // Envoy shows the front its buffer again (HCM re-enabled reading), or the timer runs.
        send(&mut h, c, b"");
        ok(h.tick());
    }
    let copied = h.copied_in();
    assert!(
        copied < stream.len() as u64 * 2,
        "{copied} bytes copied into the VM for a {} byte pipeline",
        stream.len()
    );
    assert_eq!(
        counter(&h, REFUSED, &[P, ("reason", "too_many_pending")]),
        0
    );
}

#[test]
fn metadata_over_the_limit_gets_a_bad_request_error_frame() {
    let mut h = host(
        r#"{"role": "front", "limits": {"max_metadata_entries": 2, "max_metadata_bytes": 40}}"#,
    );
    let c = ok(h.new_connection());
    let three = frame(
        REQUEST,
        5,
        &[("service", "demo"), ("method", "m"), ("x", "y")],
        b"",
    );
    let fat = frame(
        REQUEST,
        6,
        &[("service", "demo"), ("method", &"m".repeat(40))],
        b"",
    );
    let fine = request(7, "m", b"");
    send(&mut h, c, &[three, fat, fine.clone()].concat());
    assert_eq!(
        &rb(&h, c)[..],
        &[
            local_request(1, "refused"),
            local_request(2, "refused"),
            demo_request(3, 7, "m", &fine)
        ]
        .concat()[..]
    );
    hcm_consume(&mut h, c, 3);
    let detail = "request metadata over the configured limit";
    // Whatever HCM answers the local requests (here: no route for meltemi.local).
    assert_eq!(
        write(&mut h, c, &http_response("404 Not Found", &[], b"")),
        error_frame(5, "bad_request", detail)
    );
    assert_eq!(
        write(&mut h, c, &http_response("200 OK", &[], b"")),
        error_frame(6, "bad_request", detail)
    );
    let r = frame(RESPONSE, 7, &[], b"");
    assert_eq!(write(&mut h, c, &relayed("response", 7, &r)), r);
    assert_eq!(
        counter(
            &h,
            REFUSED,
            &[P, ("reason", "metadata_limit"), ("role", "front")]
        ),
        2
    );
}

// ---------------------------------------------------------------------------------------------
// Garbage, random and mutated input.

#[test]
fn garbage_closes_only_its_connection() {
    let mut h = front();
    let good = ok(h.new_connection());
    let f = request(1, "echo", b"before");
    send(&mut h, good, &f);
    assert_eq!(&rb(&h, good)[..], &demo_request(1, 1, "echo", &f)[..]);
    hcm_consume(&mut h, good, 1);

    let bad = ok(h.new_connection());
    send(&mut h, bad, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    assert!(h.closed(bad));
    assert_eq!(&rb(&h, bad)[..], b"", "garbage never reaches HCM");
    assert_eq!(counter(&h, DECODE_ERRORS, &[P, ("role", "front")]), 1);
    // Later bytes on the dead connection are dropped too.
    send(&mut h, bad, &request(2, "echo", b""));
    assert_eq!(&rb(&h, bad)[..], b"");

    let r = frame(RESPONSE, 1, &[], b"v1:before");
    assert_eq!(write(&mut h, good, &relayed("response", 1, &r)), r);
    let f2 = request(2, "echo", b"after");
    send(&mut h, good, &f2);
    assert_eq!(&rb(&h, good)[..], &demo_request(2, 2, "echo", &f2)[..]);
    assert!(!h.closed(good));
    assert_eq!(counter(&h, DECODE_ERRORS, &[P, ("role", "front")]), 1);
    h.downstream_close(bad).unwrap();
    h.downstream_close(good).unwrap();
    assert_eq!(h.gauge(&stat("meltemi_active_requests", &[P])), Some(0));
}

/// Random bytes, often shaped like the input the filter expects so that deep paths run.
fn random_input(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    let n = rng.below(300);
    match rng.below(4) {
        0 => rng.bytes(n),
        1 => [&b"MR"[..], &rng.bytes(n)].concat(),
        2 => {
            let mut v = valid.to_vec();
            for _ in 0..=rng.below(4) {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            v
        }
        _ => [valid, &rng.bytes(n)[..]].concat(),
    }
}

/// Feeds `input` in random pieces; a trap (or any host error) fails the test.
fn feed(h: &mut Host, c: ConnId, rng: &mut Rng, input: &[u8], upstream: bool) {
    let mut rest = input;
    while !rest.is_empty() {
        let n = 1 + rng.below(rest.len());
        let r = if upstream {
            h.upstream_data(c, &rest[..n], false).map(|_| ())
        } else {
            h.downstream_data(c, &rest[..n], false).map(|_| ())
        };
        if let Err(e) = r {
            panic!("input {input:?} broke the VM: {e}");
        }
        rest = &rest[n..];
    }
}

#[test]
fn random_inputs_never_trap_the_vm() {
    let mut rng = Rng(0x5eed);
    let valid_req = request(1, "echo", b"payload");
    let routed = router_request(
        &parse_request(&demo_request(1, 1, "echo", &valid_req)).unwrap(),
        &[],
    );
    let valid_resp = relayed("response", 1, &frame(RESPONSE, 1, &[], b"r"));
    let server_resp = frame(RESPONSE, 1, &[("a", "b")], b"r");
    let (mut f, mut b) = (front(), back());
    for _ in 0..2000 {
        // Front, client side.
        let c = ok(f.new_connection());
        let input = random_input(&mut rng, &valid_req);
        feed(&mut f, c, &mut rng, &input, false);
        // Front, HCM side, with a request in flight.
        let c = ok(f.new_connection());
        send(&mut f, c, &valid_req);
        hcm_consume(&mut f, c, 1);
        let input = random_input(&mut rng, &valid_resp);
        feed(&mut f, c, &mut rng, &input, true);
        // Back, router side.
        let c = ok(b.new_connection());
        let input = random_input(&mut rng, &routed);
        feed(&mut b, c, &mut rng, &input, false);
        // Back, server side, with a request forwarded.
        let c = ok(b.new_connection());
        send(&mut b, c, &routed);
        tcp_proxy_take(&mut b, c);
        let input = random_input(&mut rng, &server_resp);
        feed(&mut b, c, &mut rng, &input, true);
    }
    assert!(f.poisoned().is_none() && b.poisoned().is_none());
    assert!(
        counter(&f, DECODE_ERRORS, &[P, ("role", "front")]) > 0,
        "garbage was seen"
    );
}

#[test]
fn every_one_byte_mutation_of_a_valid_frame_is_handled_without_trap() {
    let valid = frame(
        REQUEST,
        3,
        &[("service", "demo"), ("method", "echo")],
        b"pay",
    );
    let routed = router_request(
        &parse_request(&demo_request(1, 3, "echo", &valid)).unwrap(),
        &[],
    );
    let resp = frame(RESPONSE, 3, &[("k", "v")], b"pay");
    let (mut f, mut b) = (front(), back());
    let mut outcomes = [0usize; 3];
    for i in 0..valid.len() {
        for v in 0..=255u8 {
            if v == valid[i] {
                continue;
            }
            let mut m = valid.clone();
            m[i] = v;
            let c = ok(f.new_connection());
            send(&mut f, c, &m);
            // Whatever happened, HCM sees only complete HTTP requests.
            let reqs = parse_all(f.read_buffer(c));
            outcomes[if f.closed(c) {
                0
            } else if reqs.is_empty() {
                1
            } else {
                2
            }] += 1;
            for r in &reqs {
                if matches!(r.header("x-meltemi-kind"), Some("request" | "oneway")) {
                    assert_eq!(r.body, m, "the body is the frame byte for byte");
                }
            }
            let mut r = resp.clone();
            let at = i.min(r.len() - 1);
            r[at] = v;
            let c = ok(b.new_connection());
            send(&mut b, c, &routed);
            tcp_proxy_take(&mut b, c);
            ok(b.upstream_data(c, &r, false));
        }
    }
    assert!(
        outcomes.iter().all(|n| *n > 0),
        "closed / waiting / forwarded: {outcomes:?}"
    );
    assert!(f.poisoned().is_none() && b.poisoned().is_none());
}

// ---------------------------------------------------------------------------------------------
// Configuration and metrics.

#[test]
fn invalid_configurations_are_refused_with_an_error_naming_the_field() {
    let cases = [
        (r#"{"role": "front", "bogus": 1}"#, "bogus"),
        (
            r#"{"role": "front", "limits": {"max_frame": 1}}"#,
            "max_frame",
        ),
        (
            r#"{"role": "front", "codec": {"transport": "x"}}"#,
            "transport",
        ),
        (r#"{"role": "middle"}"#, "middle"),
        (
            r#"{"role": "front", "limits": {"max_frame_bytes": 0}}"#,
            "max_frame_bytes",
        ),
        (
            r#"{"role": "back", "limits": {"max_pending_requests": 0}}"#,
            "max_pending_requests",
        ),
        (r#"{"limits": {}}"#, "role"),
        ("", "role"),
        (r#"{"role": "front", "service": "bad host\n"}"#, "service"),
        ("not json", "expected"),
    ];
    for (config, field) in cases {
        let mut h = Host::new(&minirpc(), "").unwrap();
        assert!(!h.configure(config).unwrap(), "{config} was accepted");
        let errors: Vec<&str> = h
            .logs()
            .iter()
            .filter(|(level, _)| *level == log_level::ERROR)
            .map(|(_, line)| line.as_str())
            .collect();
        assert!(
            errors
                .iter()
                .any(|l| l.contains(field) && l.contains("minirpc")),
            "{config}: {errors:?}"
        );
        // An unconfigured filter lets nothing through.
        let c = ok(h.new_connection());
        send(&mut h, c, &request(1, "a", b""));
        assert!(h.closed(c));
        assert_eq!(&rb(&h, c)[..], b"");
    }
}

#[test]
fn a_bad_role_error_names_the_role_field() {
    let mut h = Host::new(&minirpc(), "").unwrap();
    assert!(!h.configure(r#"{"role": "middle"}"#).unwrap());
    assert!(
        h.logs().iter().any(|(_, l)| l.contains("role")),
        "{:?}",
        h.logs()
    );
}

#[test]
fn metrics_after_a_few_requests() {
    let mut h = front();
    let c = ok(h.new_connection());
    let frames = [
        request(1, "sayHello", b""),
        request(2, "sayHello", b""),
        request(3, "sayBye", b""),
    ];
    send(&mut h, c, &frames.concat());
    let active = stat("meltemi_active_requests", &[P]);
    assert_eq!(h.gauge(&active), Some(3));
    hcm_consume(&mut h, c, 3);
    h.advance_time(Duration::from_millis(7));
    let r1 = frame(RESPONSE, 1, &[], b"");
    assert_eq!(write(&mut h, c, &relayed("response", 1, &r1)), r1);
    h.advance_time(Duration::from_millis(5));
    let r2 = frame(ERROR, 2, &[("error", "app")], b"");
    assert_eq!(write(&mut h, c, &relayed("exception", 2, &r2)), r2);
    assert_eq!(h.gauge(&active), Some(1));
    let r3 = frame(RESPONSE, 3, &[], b"");
    assert_eq!(write(&mut h, c, &relayed("response", 3, &r3)), r3);
    assert_eq!(h.gauge(&active), Some(0));

    let hello = [P, ("service", "demo"), ("method", "sayHello")];
    let bye = [P, ("service", "demo"), ("method", "sayBye")];
    let with = |l: &[(&'static str, &'static str); 3], o: &'static str| {
        stat(
            "meltemi_responses_total",
            &[l[0], l[1], l[2], ("outcome", o)],
        )
    };
    assert_eq!(h.counter(&stat("meltemi_requests_total", &hello)), Some(2));
    assert_eq!(h.counter(&stat("meltemi_requests_total", &bye)), Some(1));
    assert_eq!(h.counter(&with(&hello, "success")), Some(1));
    assert_eq!(h.counter(&with(&hello, "business_error")), Some(1));
    assert_eq!(h.counter(&with(&bye, "success")), Some(1));
    assert_eq!(
        h.histogram(&stat("meltemi_request_duration_us", &hello)),
        [7000, 12000],
        "microseconds"
    );
    assert_eq!(
        h.histogram(&stat("meltemi_request_duration_us", &bye)),
        [12000]
    );
    let mut expected = vec![
        active,
        "meltemi_metrics_dropped_total".to_owned(),
        stat("meltemi_request_duration_us", &bye),
        stat("meltemi_request_duration_us", &hello),
        stat("meltemi_requests_total", &bye),
        stat("meltemi_requests_total", &hello),
        with(&bye, "success"),
        with(&hello, "business_error"),
        with(&hello, "success"),
    ];
    expected.sort();
    assert_eq!(h.metric_names(), expected);

    // A connection closed with requests in flight releases the gauge.
    let c2 = ok(h.new_connection());
    send(&mut h, c2, &frames[..2].concat());
    assert_eq!(h.gauge(&stat("meltemi_active_requests", &[P])), Some(2));
    ok(h.downstream_close(c2));
    assert_eq!(h.gauge(&stat("meltemi_active_requests", &[P])), Some(0));
}

#[test]
fn large_bodies_pass_through_as_they_arrive_instead_of_being_held() {
    // A 300 kB call: the back passes the request body to the server as the router sends it,
    // and the front passes the server's answer to the client as HCM writes it, so neither
    // holds a whole large frame in the VM.
    let payload = vec![b'L'; 300_000];
    let req = request(1, "echo", &payload);
    let mut f = front();
    let fc = ok(f.new_connection());
    send(&mut f, fc, &req);
    let parsed = hcm_consume(&mut f, fc, 1).remove(0);
    let routed = router_request(&parsed, &[]);

    let mut b = back();
    let bc = ok(b.new_connection());
    let cut = routed.len() / 3;
    send(&mut b, bc, &routed[..cut]);
    let first = tcp_proxy_take(&mut b, bc);
    assert!(
        !first.is_empty() && req.starts_with(&first),
        "the first part of the frame goes out before the rest arrived ({} bytes)",
        first.len()
    );
    send(&mut b, bc, &routed[cut..]);
    let rest = tcp_proxy_take(&mut b, bc);
    assert_eq!(
        [first, rest].concat(),
        req,
        "the whole frame, byte for byte"
    );

    let answer = frame(RESPONSE, 1, &[], &payload);
    let http = relayed("response", 1, &answer);
    let cut = http.len() / 2;
    let first = write(&mut f, fc, &http[..cut]);
    assert!(
        !first.is_empty() && answer.starts_with(&first),
        "the client gets the start of the answer early"
    );
    let rest = write(&mut f, fc, &http[cut..]);
    assert_eq!([first, rest].concat(), answer);
    let ok_ = [
        P,
        ("service", "demo"),
        ("method", "echo"),
        ("outcome", "success"),
    ];
    assert_eq!(counter(&f, "meltemi_responses_total", &ok_), 1);
    assert_eq!(f.gauge(&stat("meltemi_active_requests", &[P])), Some(0));
    // The connection goes on with the next, small call.
    let small = request(2, "echo", b"s");
    send(&mut f, fc, &small);
    assert_eq!(&rb(&f, fc)[..], &demo_request(2, 2, "echo", &small)[..]);
}
