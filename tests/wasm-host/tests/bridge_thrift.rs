//! The real, built `meltemi_thrift.wasm` (release, `wasm32-wasip1`) driven through both roles of
//! the bridge on the deterministic proxy-wasm host, fed with byte streams captured from real
//! third-party Thrift peers (`codecs/thrift/tests/vectors`: Apache Thrift Python 0.25 and
//! thriftpy2 clients and servers, buffered / framed / THeader × binary strict / non-strict /
//! compact, TMultiplexedProtocol, THeader info headers). Envoy's parts (HCM, the router and
//! tcp_proxy) are played by `meltemi_wasm_host::envoy_emulation`, as in `bridge_minirpc.rs`.
//!
//! What it proves, asserting exact bytes and counters (expected frames are the captured ones;
//! Thrift headers are read by the small independent parser below, never by the codec):
//! - front: every captured request stream, whole, split at every offset or fed one byte at a
//!   time, becomes the same HTTP requests (`/echo/<method>`, `method`, `message_type`,
//!   `service` for multiplexed names, THeader info headers), each body the original frame
//!   byte-for-byte, and the read buffer never holds a partial frame;
//! - round trip front → HCM → router → back → server → back → HCM → front with the captured
//!   server frames: every frame reaches the server and comes back to the client byte-for-byte;
//!   the back answers only once a server frame is complete;
//! - Envoy local replies (404, 503, 429, 504, 403) become a TApplicationException in the
//!   client's own transport and protocol (strictness included), with the request's method name
//!   and seqid, the THeader seqid, the right exception type and Envoy's reason as message;
//! - one-way `notify`: forwarded, followed by the `__meltemi_probe` delivery probe; the UNKNOWN_METHOD
//!   answers of real Apache Thrift and thriftpy2 servers (captured, see [`probe_answer`])
//!   become `x-meltemi-response: oneway-ack`; the front swallows the acknowledgement;
//! - back mutation: THeader frames gain / replace the info header, payload untouched; framed
//!   and buffered frames are forwarded unchanged and `meltemi_mutation_unsupported_total` counts;
//! - garbage and every single-byte corruption of captured frames never trap the VM; a corrupt
//!   stream closes only its connection and counts `meltemi_decode_errors_total`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use meltemi_sdk::bridge::mutation_header_value;
use meltemi_sdk::{Codec, MessageKind};
use meltemi_thrift::ThriftCodec;
use meltemi_wasm_host::abi::log_level;
use meltemi_wasm_host::envoy_emulation::{
    back_response, bridged_request, counter, hcm_consume, http_response, local_request, ok,
    parse_all, parse_request, rb, relay, router_request, send, stat, tcp_proxy_take, write,
    DECODE_ERRORS, EXTREME_LENGTHS, ONEWAY_ACK,
};
use meltemi_wasm_host::rng::Rng;
use meltemi_wasm_host::{build_wasm, ConnId, Host, Module};

// ---------------------------------------------------------------------------------------------
// Captured vectors.

/// Transport of a captured stream (from its file name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tr {
    Buffered,
    Framed,
    Header,
}

/// Protocol of a message, as its first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pr {
    Strict,
    NonStrict,
    Compact,
}

impl Pr {
    fn family(self) -> &'static str {
        match self {
            Pr::Strict | Pr::NonStrict => "binary",
            Pr::Compact => "compact",
        }
    }
}

/// One captured client/server conversation.
#[derive(Debug, Clone)]
struct Vector {
    stem: String,
    tr: Tr,
    /// The client's protocol.
    pr: Pr,
    /// `py` (Apache Thrift) or `tp2` (thriftpy2): the server implementation.
    server: &'static str,
    mux: bool,
    req: Vec<u8>,
    resp: Vec<u8>,
}

impl Vector {
    /// The filter configuration naming this vector's transport and protocol, or `auto`.
    fn config(&self, role: &str, explicit: bool) -> String {
        let (t, p) = if explicit {
            let t = match self.tr {
                Tr::Buffered => "unframed",
                Tr::Framed => "framed",
                Tr::Header => "header",
            };
            (t, self.pr.family())
        } else {
            ("auto", "auto")
        };
        format!(
            r#"{{"role":"{role}","service":"echo","codec":{{"transport":"{t}","protocol":"{p}","oneway_ack":"probe"}}}}"#
        )
    }
}

/// The scenario every capture runs (`tests/peers/thrift/peer_common.run_full`).
const METHODS: [&str; 8] = [
    "echo", "add", "blob", "fail", "fail", "notify", "mirror", "ping",
];
/// What the servers answer, per request (the one-way `notify` gets nothing).
const ANSWERS: [Option<&str>; 8] = [
    Some("response"),
    Some("response"),
    Some("response"),
    Some("exception"), // declared EchoError: result field 1
    Some("exception"), // TApplicationException INTERNAL_ERROR
    None,
    Some("response"),
    Some("response"),
];

fn vectors() -> &'static [Vector] {
    static V: OnceLock<Vec<Vector>> = OnceLock::new();
    V.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../codecs/thrift/tests/vectors");
        let mut reqs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".req.bin"))
            .collect();
        reqs.sort();
        assert_eq!(reqs.len(), 20, "captured vectors in {dir:?}");
        reqs.into_iter()
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                let stem = name.trim_end_matches(".req.bin").to_owned();
                let tr = if stem.contains("_buffered_") {
                    Tr::Buffered
                } else if stem.contains("_framed_") {
                    Tr::Framed
                } else {
                    Tr::Header
                };
                let pr = if stem.contains("_compact") {
                    Pr::Compact
                } else if stem.contains("nonstrict") {
                    Pr::NonStrict
                } else {
                    Pr::Strict
                };
                let server = if stem.starts_with("tp2") || stem.contains("xsrv") {
                    "tp2"
                } else {
                    "py"
                };
                Vector {
                    tr,
                    pr,
                    server,
                    mux: stem.contains("mux"),
                    req: std::fs::read(&p).unwrap(),
                    resp: std::fs::read(dir.join(format!("{stem}.resp.bin"))).unwrap(),
                    stem,
                }
            })
            .collect()
    })
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The answer of the real server to the delivery probe the back sends after `notify` (seqid 0,
/// as every captured client uses), captured from `tests/peers/thrift/{py,tp2}_server.py` with
/// the probe bytes the codec writes. Apache Thrift answers UNKNOWN_METHOD with a message (and,
/// behind TMultiplexedProcessor, with the bare `__meltemi_probe` name); thriftpy2 without one.
/// thriftpy2's TMultiplexedProcessor does not answer at all: it raises `AttributeError: type
/// object 'Echo' has no attribute '__meltemi_probe_args'` and drops the connection (`None`).
fn probe_answer(v: &Vector) -> Option<Vec<u8>> {
    const PY_BINARY: &str = "800100030000000f5f5f6d656c74656d695f70726f6265000000000b000100000020556e6b6e6f776e2066756e6374696f6e205f5f6d656c74656d695f70726f62650800020000000100";
    const PY_COMPACT: &str = "8261000f5f5f6d656c74656d695f70726f62651820556e6b6e6f776e2066756e6374696f6e205f5f6d656c74656d695f70726f6265150200";
    const TP2_BINARY: &str =
        "800100030000000f5f5f6d656c74656d695f70726f6265000000000800020000000100";
    const TP2_COMPACT: &str = "8261000f5f5f6d656c74656d695f70726f6265250200";
    let s = match (v.server, v.tr, v.pr.family()) {
        ("tp2", _, _) if v.mux => return None,
        ("py", Tr::Buffered, "binary") => PY_BINARY.to_owned(),
        ("py", Tr::Buffered, _) => PY_COMPACT.to_owned(),
        ("py", Tr::Framed, "binary") => format!("0000004a{PY_BINARY}"),
        ("py", Tr::Framed, _) => format!("00000038{PY_COMPACT}"),
        ("py", Tr::Header, "binary") => format!("000000580fff000000000000000100000000{PY_BINARY}"),
        ("py", Tr::Header, _) => format!("000000460fff000000000000000102000000{PY_COMPACT}"),
        ("tp2", Tr::Buffered, "binary") => TP2_BINARY.to_owned(),
        ("tp2", Tr::Buffered, _) => TP2_COMPACT.to_owned(),
        ("tp2", Tr::Framed, "binary") => format!("00000023{TP2_BINARY}"),
        ("tp2", Tr::Framed, _) => format!("00000016{TP2_COMPACT}"),
        other => panic!("no captured probe answer for {other:?}"),
    };
    Some(hex(&s))
}

// ---------------------------------------------------------------------------------------------
// An independent reader for the Thrift bytes this suite checks (not the codec's).

/// A THeader frame's fixed fields and info headers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct THeader {
    seqid: i32,
    protocol_id: u64,
    /// (persistent, key, value) in wire order.
    info: Vec<(bool, String, String)>,
}

/// A message header (`writeMessageBegin`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    pr: Pr,
    name: String,
    mtype: u8,
    seqid: i32,
    /// Offset of the argument/result struct in the message.
    body_at: usize,
}

fn varint(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*at];
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
    }
    panic!("varint too long");
}

fn be32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// Splits one whole frame of transport `tr` into its THeader (if any) and its message.
fn unwrap_frame(frame: &[u8], tr: Tr) -> (Option<THeader>, &[u8]) {
    match tr {
        Tr::Buffered => (None, frame),
        Tr::Framed => {
            assert_eq!(be32(frame, 0) as usize, frame.len() - 4, "frame length");
            (None, &frame[4..])
        }
        Tr::Header => {
            assert_eq!(be32(frame, 0) as usize, frame.len() - 4, "frame length");
            assert_eq!(&frame[4..6], [0x0f, 0xff], "THeader magic");
            let seqid = be32(frame, 8);
            let words = u16::from_be_bytes([frame[12], frame[13]]) as usize;
            let header = &frame[14..14 + 4 * words];
            let mut at = 0;
            let protocol_id = varint(header, &mut at);
            assert_eq!(varint(header, &mut at), 0, "no transforms");
            let mut info = Vec::new();
            while at < header.len() {
                let id = varint(header, &mut at);
                if id == 0 {
                    assert!(header[at..].iter().all(|b| *b == 0), "zero padding");
                    break;
                }
                assert!(id == 1 || id == 2, "info id {id}");
                for _ in 0..varint(header, &mut at) {
                    let mut s = || {
                        let n = varint(header, &mut at) as usize;
                        let v = String::from_utf8(header[at..at + n].to_vec()).unwrap();
                        at += n;
                        v
                    };
                    let (k, v) = (s(), s());
                    info.push((id == 2, k, v));
                }
            }
            let h = THeader {
                seqid,
                protocol_id,
                info,
            };
            (Some(h), &frame[14 + 4 * words..])
        }
    }
}

fn read_head(msg: &[u8]) -> Head {
    if msg[0] == 0x82 {
        assert_eq!(msg[1] & 0x1f, 1, "compact version");
        let mut at = 2;
        let seqid = varint(msg, &mut at) as u32 as i32;
        let n = varint(msg, &mut at) as usize;
        let name = String::from_utf8(msg[at..at + n].to_vec()).unwrap();
        return Head {
            pr: Pr::Compact,
            name,
            mtype: msg[1] >> 5,
            seqid,
            body_at: at + n,
        };
    }
    if msg[0] == 0x80 {
        assert_eq!(msg[1], 0x01, "binary version");
        let n = be32(msg, 4) as usize;
        return Head {
            pr: Pr::Strict,
            name: String::from_utf8(msg[8..8 + n].to_vec()).unwrap(),
            mtype: msg[3],
            seqid: be32(msg, 8 + n),
            body_at: 12 + n,
        };
    }
    let n = be32(msg, 0) as usize;
    Head {
        pr: Pr::NonStrict,
        name: String::from_utf8(msg[4..4 + n].to_vec()).unwrap(),
        mtype: msg[4 + n],
        seqid: be32(msg, 5 + n),
        body_at: 9 + n,
    }
}

/// The `TApplicationException { 1: string message, 2: i32 type }` struct at `body`.
fn app_exception(body: &[u8], pr: Pr) -> (Option<String>, Option<i32>) {
    let (mut message, mut ty) = (None, None);
    let mut at = 0;
    let mut last_id = 0i64;
    loop {
        let b = body[at];
        at += 1;
        if b == 0 {
            assert_eq!(at, body.len(), "nothing after the struct");
            return (message, ty);
        }
        if pr == Pr::Compact {
            let delta = i64::from(b >> 4);
            assert_ne!(delta, 0, "short field headers only");
            last_id += delta;
            match (last_id, b & 0x0f) {
                (1, 8) => {
                    let n = varint(body, &mut at) as usize;
                    message = Some(String::from_utf8(body[at..at + n].to_vec()).unwrap());
                    at += n;
                }
                (2, 5) => {
                    let z = varint(body, &mut at);
                    ty = Some(((z >> 1) as i64 ^ -((z & 1) as i64)) as i32);
                }
                other => panic!("unexpected compact field {other:?}"),
            }
        } else {
            let id = i16::from_be_bytes([body[at], body[at + 1]]);
            at += 2;
            match (id, b) {
                (1, 11) => {
                    let n = be32(body, at) as usize;
                    message = Some(String::from_utf8(body[at + 4..at + 4 + n].to_vec()).unwrap());
                    at += 4 + n;
                }
                (2, 8) => {
                    ty = Some(be32(body, at));
                    at += 4;
                }
                other => panic!("unexpected binary field {other:?}"),
            }
        }
    }
}

/// Routing metadata of a frame as the bridge must expose it: `service` (multiplexed names
/// only), `method`, `message_type`, `dialect`, then every THeader info header.
fn frame_metadata(frame: &[u8], tr: Tr) -> (Head, Vec<(String, String)>) {
    let (th, msg) = unwrap_frame(frame, tr);
    let head = read_head(msg);
    let mut md = Vec::new();
    match head.name.split_once(':') {
        Some((s, m)) => {
            md.push(("service".to_owned(), s.to_owned()));
            md.push(("method".to_owned(), m.to_owned()));
        }
        None => md.push(("method".to_owned(), head.name.clone())),
    }
    let mt = ["", "call", "reply", "exception", "oneway"][head.mtype as usize];
    md.push(("message_type".to_owned(), mt.to_owned()));
    let transport = match tr {
        Tr::Buffered => "unframed",
        Tr::Framed => "framed",
        Tr::Header => "header",
    };
    let protocol = match (tr, head.pr) {
        (Tr::Header, Pr::Strict | Pr::NonStrict) | (_, Pr::Strict) => "binary",
        (_, Pr::NonStrict) => "binary_nonstrict",
        (_, Pr::Compact) => "compact",
    };
    md.push(("dialect".to_owned(), format!("{transport}-{protocol}")));
    for (_, k, v) in th.into_iter().flat_map(|h| h.info) {
        md.push((k, v));
    }
    (head, md)
}

// ---------------------------------------------------------------------------------------------
// The module, hosts and the bridged requests.

fn module() -> Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE
        .get_or_init(|| {
            let wasm = build_wasm(Path::new(env!("CARGO_MANIFEST_DIR")), "meltemi-thrift");
            Module::load(wasm).unwrap()
        })
        .clone()
}

fn host(config: &str) -> Host {
    let mut host = Host::new(&module(), "").unwrap();
    assert!(host.configure(config).unwrap(), "{:?}", host.logs());
    host
}

const FRONT: &str = r#"{"role":"front","service":"echo"}"#;
const BACK: &str = r#"{"role":"back","service":"echo","codec":{"oneway_ack":"probe"}}"#;

const P: (&str, &str) = ("protocol", "thrift");
/// The request the front must write for a frame, service `echo` from the configuration.
fn front_request(
    seq: usize,
    kind: &str,
    rid: u64,
    md: &[(String, String)],
    frame: &[u8],
) -> Vec<u8> {
    let method = &md.iter().find(|(k, _)| k == "method").unwrap().1;
    bridged_request(seq, "echo", method, kind, rid, md, frame)
}

/// The HTTP requests the front must write for a whole captured request stream, checked on the
/// way: the front's bodies are frames that tile the stream exactly, their headers (read
/// independently) name the scenario's methods. Returns (request, frame end offset) pairs.
fn expected_requests(v: &Vector) -> Vec<(Vec<u8>, usize)> {
    let mut h = host(&v.config("front", false));
    let c = ok(h.new_connection());
    send(&mut h, c, &v.req);
    let reqs = parse_all(h.read_buffer(c));
    assert_eq!(reqs.len(), METHODS.len(), "{}", v.stem);
    let mut out = Vec::new();
    let mut at = 0;
    for (i, r) in reqs.iter().enumerate() {
        let frame = &v.req[at..at + r.body.len()];
        assert_eq!(
            r.body, frame,
            "{}: body {i} is the frame byte for byte",
            v.stem
        );
        at += frame.len();
        let (head, md) = frame_metadata(frame, v.tr);
        assert_eq!(head.pr, v.pr, "{}", v.stem);
        assert_eq!(md[usize::from(v.mux)].1, METHODS[i], "{}", v.stem);
        assert_eq!(v.mux, md[0].0 == "service", "{}", v.stem);
        if v.stem.ends_with("_kv") {
            let kv: Vec<_> = md[3..]
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(kv, [("x-version", "v2"), ("tenant", "blue")], "{}", v.stem);
        }
        let kind = if METHODS[i] == "notify" {
            "oneway"
        } else {
            "request"
        };
        let rid = u64::from(head.seqid as u32);
        out.push((front_request(i + 1, kind, rid, &md, frame), at));
    }
    assert_eq!(at, v.req.len(), "{}: the frames tile the stream", v.stem);
    assert!(!h.closed(c));
    out
}

// ---------------------------------------------------------------------------------------------
// Front: client → HCM.

#[test]
fn front_bridges_every_captured_request_stream_exactly() {
    for v in vectors() {
        let expected: Vec<u8> = expected_requests(v).into_iter().flat_map(|e| e.0).collect();
        for explicit in [false, true] {
            let mut h = host(&v.config("front", explicit));
            let c = ok(h.new_connection());
            send(&mut h, c, &v.req);
            assert_eq!(
                String::from_utf8_lossy(&rb(&h, c)),
                String::from_utf8_lossy(&expected),
                "{} explicit={explicit}",
                v.stem
            );
            assert_eq!(rb(&h, c), expected);
            let requests = [P, ("service", "echo"), ("method", "fail")];
            assert_eq!(counter(&h, "meltemi_requests_total", &requests), 2);
            assert_eq!(h.gauge(&stat("meltemi_active_requests", &[P])), Some(8));
        }
    }
}

#[test]
fn front_output_is_the_same_for_every_split_and_never_holds_a_partial_frame() {
    for v in vectors() {
        let expected = expected_requests(v);
        let whole: Vec<u8> = expected.iter().flat_map(|e| e.0.clone()).collect();
        // The requests for the frames complete within the first `n` bytes.
        let upto = |n: usize| -> Vec<u8> {
            expected
                .iter()
                .take_while(|(_, end)| *end <= n)
                .flat_map(|e| e.0.clone())
                .collect()
        };
        let mut h = host(&v.config("front", false));
        for cut in 1..v.req.len() {
            let c = ok(h.new_connection());
            send(&mut h, c, &v.req[..cut]);
            assert_eq!(rb(&h, c), upto(cut), "{} cut at {cut}", v.stem);
            send(&mut h, c, &v.req[cut..]);
            assert_eq!(rb(&h, c), whole, "{} cut at {cut}", v.stem);
            ok(h.downstream_close(c));
        }
        let c = ok(h.new_connection());
        for i in 0..v.req.len() {
            send(&mut h, c, &v.req[i..=i]);
            assert_eq!(rb(&h, c), upto(i + 1), "{} after byte {i}", v.stem);
        }
        assert_eq!(counter(&h, DECODE_ERRORS, &[P, ("role", "front")]), 0);
        assert_eq!(h.gauge(&stat("meltemi_active_requests", &[P])), Some(8));
    }
}

#[test]
fn front_relays_a_captured_server_frame_byte_for_byte_at_every_split() {
    for v in vectors() {
        // The first answer (echo): found as the frame the back cuts off the response stream.
        let mut b = host(&v.config("back", false));
        let bc = ok(b.new_connection());
        let first = parse_request(&expected_requests(v)[0].0).unwrap();
        send(&mut b, bc, &router_request(&first, &[]));
        assert_eq!(tcp_proxy_take(&mut b, bc), first.body);
        let (frame, http) = next_server_frame(&mut b, bc, &v.resp, &v.stem);
        let resp = relay(&http);
        let mut f = host(&v.config("front", false));
        for cut in 0..resp.len() {
            let c = ok(f.new_connection());
            send(&mut f, c, &first.body);
            hcm_consume(&mut f, c, 1);
            assert_eq!(write(&mut f, c, &resp[..cut]), b"", "{} cut {cut}", v.stem);
            assert_eq!(
                write(&mut f, c, &resp[cut..]),
                frame,
                "{} cut {cut}",
                v.stem
            );
            ok(f.downstream_close(c));
        }
    }
}

/// Feeds the server's bytes to the back one at a time until it answers: returns the frame it
/// consumed (checked to be exactly the HTTP body) and the HTTP response.
fn next_server_frame(b: &mut Host, c: ConnId, stream: &[u8], stem: &str) -> (Vec<u8>, Vec<u8>) {
    for n in 1..=stream.len() {
        let out = write(b, c, &stream[n - 1..n]);
        if !out.is_empty() {
            let frame = &stream[..n];
            let resp = parse_response_body(&out);
            assert_eq!(resp, frame, "{stem}: the back answers with the whole frame");
            return (frame.to_vec(), out);
        }
    }
    panic!("{stem}: the back never answered");
}

fn parse_response_body(http: &[u8]) -> Vec<u8> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(http).unwrap() {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => panic!("partial response {http:?}"),
    };
    assert_eq!(resp.code, Some(200));
    http[n..].to_vec()
}

// ---------------------------------------------------------------------------------------------
// Both halves, with the captured server frames.

#[test]
fn round_trip_of_every_capture_through_front_router_back_and_server() {
    for v in vectors() {
        let (mut f, mut b) = (
            host(&v.config("front", false)),
            host(&v.config("back", false)),
        );
        let fc = ok(f.new_connection());
        let mut bc = ok(b.new_connection());
        send(&mut f, fc, &v.req);
        // HCM takes the pipelined requests and answers them in order.
        let reqs = hcm_consume(&mut f, fc, usize::MAX);
        assert_eq!(reqs.len(), 8);
        let mut server = &v.resp[..];
        let mut acks = 0;
        for (i, req) in reqs.iter().enumerate() {
            send(&mut b, bc, &router_request(req, &[]));
            let to_server = tcp_proxy_take(&mut b, bc);
            let (head, _) = frame_metadata(&req.body, v.tr);
            let Some(kind) = ANSWERS[i] else {
                // One-way: the call, then the probe in the same framing.
                assert_eq!(&to_server[..req.body.len()], req.body, "{}", v.stem);
                check_probe(v, &req.body, &to_server[req.body.len()..]);
                match probe_answer(v) {
                    Some(answer) => {
                        for cut in 1..answer.len() {
                            assert_eq!(write(&mut b, bc, &answer[cut - 1..cut]), b"");
                        }
                        let ack = write(&mut b, bc, &answer[answer.len() - 1..]);
                        assert_eq!(ack, ONEWAY_ACK, "{}", v.stem);
                        acks += 1;
                        assert_eq!(write(&mut f, fc, &relay(&ack)), b"", "swallowed");
                    }
                    None => {
                        // The server drops the connection; Envoy answers 503 and the router
                        // uses a new upstream connection.
                        let reset = http_response("503 Service Unavailable", &[], b"");
                        assert_eq!(write(&mut f, fc, &reset), b"", "swallowed");
                        bc = ok(b.new_connection());
                    }
                }
                continue;
            };
            assert_eq!(to_server, req.body, "{}: request {i}", v.stem);
            let (frame, http) = next_server_frame(&mut b, bc, server, &v.stem);
            server = &server[frame.len()..];
            let (rhead, md) = frame_metadata(&frame, v.tr);
            assert_eq!(rhead.seqid, head.seqid);
            assert_eq!(
                rhead.name.rsplit(':').next(),
                head.name.rsplit(':').next(),
                "{}",
                v.stem
            );
            let rid = u64::from(rhead.seqid as u32);
            let md: Vec<_> = md.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(http, back_response(kind, rid, &md, &frame), "{}", v.stem);
            assert_eq!(write(&mut f, fc, &relay(&http)), frame, "{}", v.stem);
        }
        assert!(server.is_empty(), "{}: every captured answer used", v.stem);
        assert_eq!(acks, usize::from(probe_answer(v).is_some()));
        assert!(!f.closed(fc) && !b.closed(bc), "{}", v.stem);
        assert_eq!(f.gauge(&stat("meltemi_active_requests", &[P])), Some(0));
        let labels = |m: &'static str, o: &'static str| {
            stat(
                "meltemi_responses_total",
                &[P, ("service", "echo"), ("method", m), ("outcome", o)],
            )
        };
        assert_eq!(f.counter(&labels("fail", "business_error")), Some(2));
        assert_eq!(f.counter(&labels("echo", "success")), Some(1));
        let notify = if probe_answer(v).is_some() {
            "oneway"
        } else {
            "local_reply"
        };
        assert_eq!(f.counter(&labels("notify", notify)), Some(1), "{}", v.stem);
        for h in [&f, &b] {
            assert_eq!(counter(h, DECODE_ERRORS, &[P, ("role", "front")]), 0);
            assert_eq!(counter(h, DECODE_ERRORS, &[P, ("role", "back")]), 0);
        }
    }
}

/// The probe after one-way `call`: an empty CALL to `__meltemi_probe` (service-prefixed when
/// the call was), same seqid, same transport, protocol and strictness, same THeader seqid.
fn check_probe(v: &Vector, call: &[u8], probe: &[u8]) {
    let (ch, cmsg) = unwrap_frame(call, v.tr);
    let (ph, pmsg) = unwrap_frame(probe, v.tr);
    let (c, p) = (read_head(cmsg), read_head(pmsg));
    let name = if v.mux {
        "Echo:__meltemi_probe"
    } else {
        "__meltemi_probe"
    };
    assert_eq!(
        (p.pr, p.name.as_str(), p.mtype, p.seqid),
        (c.pr, name, 1, c.seqid),
        "{}",
        v.stem
    );
    assert_eq!(&pmsg[p.body_at..], [0], "empty argument struct");
    if let (Some(ch), Some(ph)) = (ch, ph) {
        assert_eq!((ph.seqid, ph.protocol_id), (ch.seqid, ch.protocol_id));
        assert!(ph.info.is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Envoy local replies → TApplicationException.

#[test]
fn local_replies_become_tapplicationexceptions_in_the_clients_framing() {
    // (status line, body, TApplicationException type, message)
    let cases: [(&str, &[u8], i32, &str); 5] = [
        ("404 Not Found", b"", 1, "envoy 404"),
        (
            "503 Service Unavailable",
            b"no healthy upstream",
            6,
            "envoy 503: no healthy upstream",
        ),
        (
            "429 Too Many Requests",
            b"local_rate_limited",
            6,
            "envoy 429: local_rate_limited",
        ),
        (
            "504 Gateway Timeout",
            b"upstream request timeout",
            6,
            "envoy 504: upstream request timeout",
        ),
        (
            "403 Forbidden",
            b"RBAC: access denied",
            6,
            "envoy 403: RBAC: access denied",
        ),
    ];
    for v in vectors() {
        let mut h = host(&v.config("front", false));
        for (status, body, ty, message) in cases {
            let c = ok(h.new_connection());
            send(&mut h, c, &v.req);
            let reqs = hcm_consume(&mut h, c, usize::MAX);
            for req in &reqs {
                let headers = [("content-type", "text/plain")];
                let out = write(&mut h, c, &http_response(status, &headers, body));
                if req.header("x-meltemi-kind") == Some("oneway") {
                    assert_eq!(out, b"", "{}: a one-way call gets nothing", v.stem);
                    continue;
                }
                let what = format!("{} {status} {:?}", v.stem, req.header("method"));
                let (rh, rmsg) = unwrap_frame(&out, v.tr);
                let (qh, qmsg) = unwrap_frame(&req.body, v.tr);
                let (r, q) = (read_head(rmsg), read_head(qmsg));
                assert_eq!(
                    (r.pr, r.name.as_str(), r.mtype, r.seqid),
                    (q.pr, q.name.as_str(), 3, q.seqid),
                    "{what}"
                );
                if let (Some(rh), Some(qh)) = (rh, qh) {
                    assert_eq!((rh.seqid, rh.protocol_id), (qh.seqid, qh.protocol_id));
                }
                // The detail names the call: the fixed service `echo` and the request's method.
                let method = req.header("method").unwrap_or("unknown");
                assert_eq!(
                    app_exception(&rmsg[r.body_at..], r.pr),
                    (Some(format!("echo/{method}: {message}")), Some(ty)),
                    "{what}"
                );
                // And the codec reads it as one whole exception for that request.
                let mut codec = ThriftCodec::new(&Default::default());
                let m = codec.decode(&out).unwrap().unwrap();
                assert_eq!((m.len, m.kind), (out.len(), MessageKind::Exception));
                assert_eq!(m.request_id, u64::from(q.seqid as u32));
            }
            assert!(!h.closed(c), "{}", v.stem);
            ok(h.downstream_close(c));
        }
        let kinds = [
            "route_not_found",
            "unavailable",
            "over_limit",
            "timeout",
            "unauthorized",
        ];
        for kind in kinds {
            let labels = [P, ("service", "echo"), ("method", "fail"), ("kind", kind)];
            assert_eq!(counter(&h, "meltemi_local_replies_total", &labels), 2);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Back: mutation.

#[test]
fn back_writes_a_mutation_into_theader_info_headers_only() {
    let added = mutation_header_value("x-added", "a=1,b");
    let version = mutation_header_value("x-version", "v3");
    let mutation = [
        ("x-meltemi-mutation", added.as_str()),
        ("x-meltemi-mutation", version.as_str()),
    ];
    let mut seen_header = 0;
    for v in vectors() {
        let mut b = host(&v.config("back", false));
        for (http, _) in expected_requests(v) {
            let req = parse_request(&http).unwrap();
            let c = ok(b.new_connection());
            send(&mut b, c, &router_request(&req, &mutation));
            let out = tcp_proxy_take(&mut b, c);
            let out = if req.header("x-meltemi-kind") == Some("oneway") {
                // The (possibly mutated) call, then the probe.
                let call_len = match v.tr {
                    Tr::Header => be32(&out, 0) as usize + 4,
                    _ => req.body.len(),
                };
                check_probe(v, &req.body, &out[call_len..]);
                out[..call_len].to_vec()
            } else {
                out
            };
            if v.tr != Tr::Header {
                assert_eq!(out, req.body, "{}: forwarded unchanged", v.stem);
                continue;
            }
            seen_header += 1;
            let (qh, qmsg) = unwrap_frame(&req.body, v.tr);
            let (oh, omsg) = unwrap_frame(&out, v.tr);
            let (qh, oh) = (qh.unwrap(), oh.unwrap());
            assert_eq!(omsg, qmsg, "{}: the message is untouched", v.stem);
            assert_eq!((oh.seqid, oh.protocol_id), (qh.seqid, qh.protocol_id));
            // Existing entries keep their place and block; new ones join INFO_KEYVALUE, which
            // is written before INFO_PKEYVALUE.
            let mut want = qh.info.clone();
            for (k, val) in [("x-added", "a=1,b"), ("x-version", "v3")] {
                match want.iter_mut().find(|e| e.1 == k) {
                    Some(e) => e.2 = val.into(),
                    None => want.push((false, k.into(), val.into())),
                }
            }
            want.sort_by_key(|e| e.0);
            if v.stem.ends_with("_kv") {
                let kv: Vec<_> = want.iter().map(|e| (e.1.as_str(), e.2.as_str())).collect();
                assert_eq!(
                    kv,
                    [
                        ("x-version", "v3"),
                        ("tenant", "blue"),
                        ("x-added", "a=1,b")
                    ]
                );
            }
            assert_eq!(oh.info, want, "{}", v.stem);
            // The codec reads the mutated frame as the same call.
            let m = ThriftCodec::new(&Default::default())
                .decode(&out)
                .unwrap()
                .unwrap();
            assert_eq!(
                (m.len, m.metadata.get("x-added")),
                (out.len(), Some("a=1,b"))
            );
        }
        let unsupported = counter(&b, "meltemi_mutation_unsupported_total", &[P]);
        let expected = if v.tr == Tr::Header { 0 } else { 8 };
        assert_eq!(unsupported, expected, "{}", v.stem);
        assert_eq!(counter(&b, DECODE_ERRORS, &[P, ("role", "back")]), 0);
    }
    assert_eq!(seen_header, 4 * 8);
}

// ---------------------------------------------------------------------------------------------
// Garbage and corruption.

/// After any input: HCM sees only complete HTTP requests whose bodies are consecutive pieces
/// of `input` from its start, and a closed connection was counted as a decode error.
fn check_front_after(h: &Host, c: ConnId, input: &[u8], errors_before: u64, what: &str) -> usize {
    let reqs = parse_all(h.read_buffer(c));
    let mut at = 0;
    for r in &reqs {
        assert_eq!(&input[at..at + r.body.len()], r.body, "{what}");
        at += r.body.len();
    }
    let errors = counter(h, DECODE_ERRORS, &[P, ("role", "front")]);
    if h.closed(c) {
        assert!(reqs.is_empty(), "{what}: closed, nothing reaches HCM");
        assert_eq!(errors, errors_before + 1, "{what}: closed and counted");
        0
    } else {
        assert_eq!(errors, errors_before, "{what}");
        if reqs.is_empty() {
            1
        } else {
            2
        }
    }
}

#[test]
fn every_single_byte_corruption_of_a_captured_frame_is_handled_without_trap() {
    // One vector per transport × protocol (strictness included); first request and response.
    let picks = [
        "py_buffered_binary",
        "py_buffered_binary_nonstrict",
        "py_buffered_compact",
        "py_framed_binary",
        "tp2_framed_binary_nonstrict",
        "py_framed_compact",
        "py_header_binary",
        "py_header_compact_kv",
    ];
    let mut outcomes = [0usize; 3];
    for v in vectors()
        .iter()
        .filter(|v| picks.contains(&v.stem.as_str()))
    {
        let expected = expected_requests(v);
        let first = &v.req[..expected[0].1];
        let routed = router_request(&parse_request(&expected[0].0).unwrap(), &[]);
        let mut b = host(&v.config("back", false));
        let c = ok(b.new_connection());
        send(&mut b, c, &routed);
        tcp_proxy_take(&mut b, c);
        let (resp, _) = next_server_frame(&mut b, c, &v.resp, &v.stem);
        let mut f = host(&v.config("front", false));
        let mut b = host(&v.config("back", false));
        for i in 0..first.len().max(resp.len()) {
            for x in 0..=255u8 {
                if i < first.len() && x != first[i] {
                    let mut m = first.to_vec();
                    m[i] = x;
                    let before = counter(&f, DECODE_ERRORS, &[P, ("role", "front")]);
                    let c = ok(f.new_connection());
                    send(&mut f, c, &m);
                    let what = format!("{} byte {i} = {x:#04x}", v.stem);
                    outcomes[check_front_after(&f, c, &m, before, &what)] += 1;
                    ok(f.downstream_close(c));
                }
                if i < resp.len() && x != resp[i] {
                    let mut m = resp.clone();
                    m[i] = x;
                    let c = ok(b.new_connection());
                    send(&mut b, c, &routed);
                    assert_eq!(tcp_proxy_take(&mut b, c), first);
                    // A corrupt frame is a decode error; a corrupt seqid or name answers
                    // nobody (a stray answer); both close the connection.
                    let refusals = |b: &Host| {
                        counter(b, DECODE_ERRORS, &[P, ("role", "back")])
                            + counter(b, "meltemi_stray_answers_total", &[P, ("role", "back")])
                    };
                    let before = refusals(&b);
                    let out = write(&mut b, c, &m);
                    let after = refusals(&b);
                    if b.closed(c) {
                        assert_eq!((out.as_slice(), after), (&b""[..], before + 1));
                    } else if !out.is_empty() {
                        // A corrupt length can make a shorter (unframed) message: the back
                        // still answers with whole frames only, cut from the start.
                        let body = parse_response_body(&out);
                        assert_eq!(body, m[..body.len()], "{} resp byte {i}", v.stem);
                    }
                    ok(b.downstream_close(c));
                }
            }
        }
        assert!(f.poisoned().is_none() && b.poisoned().is_none());
    }
    assert!(
        outcomes.iter().all(|n| *n > 0),
        "closed / waiting / forwarded: {outcomes:?}"
    );
}

/// Unsigned LEB128, as compact writes lengths.
fn leb128(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

#[test]
fn length_fields_near_u32_max_never_trap_the_vm_and_healthy_clients_go_on() {
    // Every 4-byte window of the first request of each transport × protocol overwritten with
    // each extreme length (and a varint of it spliced in, for compact): this hits the frame
    // size, THeader sizes, name, string, binary and container lengths. On wasm32 a `usize` is
    // 32 bits, so `header + length` must never be computed unchecked.
    for v in vectors()
        .iter()
        .filter(|v| !v.mux && !v.stem.contains("xsrv"))
    {
        let expected = expected_requests(v);
        let first = &v.req[..expected[0].1];
        let mut f = host(&v.config("front", false));
        for at in 0..first.len() {
            for len in EXTREME_LENGTHS {
                let mut be = first.to_vec();
                let end = (at + 4).min(be.len());
                be[at..end].copy_from_slice(&len.to_be_bytes()[..end - at]);
                let mut vi = first[..at].to_vec();
                vi.extend(leb128(u64::from(len)));
                vi.extend_from_slice(&first[at + 1..]);
                for m in [be, vi] {
                    let before = counter(&f, DECODE_ERRORS, &[P, ("role", "front")]);
                    let c = ok(f.new_connection());
                    let r = f.downstream_data(c, &m, false);
                    let what = format!("{} @{at} = {len:#x}", v.stem);
                    assert!(r.is_ok(), "{what} trapped the VM: {r:?}");
                    check_front_after(&f, c, &m, before, &what);
                    if at == 0 && v.tr != Tr::Buffered {
                        assert!(f.closed(c), "{what}: a frame size is refused at once");
                    }
                    ok(f.downstream_close(c));
                }
            }
        }
        assert!(f.poisoned().is_none(), "{}", v.stem);
        let c = ok(f.new_connection());
        send(&mut f, c, first);
        assert_eq!(rb(&f, c), expected[0].0, "{}: a healthy client", v.stem);

        // The back: a server frame announcing such a length closes only its connection.
        if v.tr == Tr::Buffered {
            continue;
        }
        let routed = router_request(&parse_request(&expected[0].0).unwrap(), &[]);
        let mut b = host(&v.config("back", false));
        for len in EXTREME_LENGTHS {
            let c = ok(b.new_connection());
            send(&mut b, c, &routed);
            assert_eq!(tcp_proxy_take(&mut b, c), first);
            let mut resp = v.resp.clone();
            resp[..4].copy_from_slice(&len.to_be_bytes());
            let r = b.upstream_data(c, &resp, false);
            assert!(r.is_ok(), "{} back {len:#x} trapped the VM: {r:?}", v.stem);
            assert!(b.closed(c), "{} back {len:#x}: closed", v.stem);
            let good = ok(b.new_connection());
            send(&mut b, good, &routed);
            assert_eq!(tcp_proxy_take(&mut b, good), first);
            let (answer, http) = next_server_frame(&mut b, good, &v.resp, &v.stem);
            assert_eq!(parse_response_body(&http), answer, "{}", v.stem);
            assert!(!b.closed(good));
        }
    }
}

/// The C++ THeader client (libthriftz 0.17) ends its connection with an empty THeader frame
/// (`THeaderTransport::close` flushes even with nothing buffered; captured by
/// `tests/peers/thrift/cpp_header_client.cpp`). It is a heartbeat answered with nothing: no
/// decode error, the connection stays open, the call before it is bridged as usual.
#[test]
fn the_cpp_theader_clients_empty_frame_at_close_is_no_decode_error() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../codecs/thrift/tests/vectors/cpp_header_compact_close.bin");
    let stream = std::fs::read(&path).unwrap();
    let call_len = 4 + u32::from_be_bytes(stream[..4].try_into().unwrap()) as usize;
    let call = &stream[..call_len];
    assert_eq!(
        stream.len() - call_len,
        18,
        "the empty frame follows the call"
    );
    for config in [
        FRONT,
        r#"{"role":"front","service":"echo","codec":{"transport":"header"}}"#,
    ] {
        let mut h = host(config);
        let c = ok(h.new_connection());
        send(&mut h, c, &stream);
        let (_, md) = frame_metadata(call, Tr::Header);
        let want = [
            front_request(1, "request", 1, &md, call),
            local_request(2, "heartbeat"),
        ];
        assert_eq!(rb(&h, c), want.concat(), "{config}");
        assert!(!h.closed(c));
        assert_eq!(counter(&h, DECODE_ERRORS, &[P, ("role", "front")]), 0);
        hcm_consume(&mut h, c, 2);
        let answer = [0u8; 4];
        let relayed = http_response(
            "200 OK",
            &[("x-meltemi-response", "response"), ("x-meltemi-rid", "1")],
            &answer,
        );
        // The call's answer reaches the client; the empty frame's local answer does not.
        let out = write(&mut h, c, &relayed);
        assert_eq!(out, answer);
        let out = write(&mut h, c, &http_response("200 OK", &[], b""));
        assert_eq!(out, b"", "nothing answers the empty frame");
        assert!(!h.closed(c));
        // The client closes right after it: nothing is left in flight, nothing counted.
        ok(h.downstream_close(c));
        assert_eq!(counter(&h, DECODE_ERRORS, &[P, ("role", "front")]), 0);
    }
}

#[test]
fn garbage_and_random_streams_never_trap_and_close_only_their_connection() {
    let mut rng = Rng(0x7412);
    let mut f = host(FRONT);
    let good = ok(f.new_connection());
    let v = &vectors()[0];
    send(&mut f, good, &v.req[..v.req.len() / 2]);
    let good_before = rb(&f, good);
    let mut closed = 0;
    for round in 0..3000 {
        let c = ok(f.new_connection());
        let v = &vectors()[rng.below(vectors().len())];
        let n = rng.below(200);
        let input: Vec<u8> = match rng.below(4) {
            0 => (0..n).map(|_| rng.next() as u8).collect(),
            1 => b"GET / HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
            2 => {
                // A captured stream with a few random bytes changed.
                let mut m = v.req.clone();
                for _ in 0..=rng.below(4) {
                    let i = rng.below(m.len());
                    m[i] = rng.next() as u8;
                }
                m
            }
            _ => [&v.req[..rng.below(v.req.len())], &rng.bytes(n)[..]].concat(),
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
    assert_eq!(
        counter(&f, DECODE_ERRORS, &[P, ("role", "front")]),
        closed as u64
    );
    // The good connection saw none of it and carries on.
    assert!(!f.closed(good));
    assert_eq!(rb(&f, good), good_before);
    send(&mut f, good, &v.req[v.req.len() / 2..]);
    assert_eq!(parse_all(f.read_buffer(good)).len(), 8);
    assert!(f.poisoned().is_none());

    // The back: random server bytes after a forwarded request, and random router bytes.
    let mut b = host(BACK);
    let routed = router_request(&parse_request(&expected_requests(v)[0].0).unwrap(), &[]);
    for _ in 0..1000 {
        let c = ok(b.new_connection());
        send(&mut b, c, &routed);
        tcp_proxy_take(&mut b, c);
        let n = rng.below(300);
        let junk = [&v.resp[..rng.below(v.resp.len())], &rng.bytes(n)[..]].concat();
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

#[test]
fn a_protocol_change_mid_connection_closes_it_and_counts() {
    // A binary client connection that suddenly speaks compact: corrupt for the codec.
    let bin = vectors()
        .iter()
        .find(|v| v.stem == "py_framed_binary")
        .unwrap();
    let compact = vectors()
        .iter()
        .find(|v| v.stem == "py_framed_compact")
        .unwrap();
    let mut h = host(FRONT);
    let c = ok(h.new_connection());
    let first_len = expected_requests(bin)[0].1;
    send(&mut h, c, &bin.req[..first_len]);
    assert_eq!(parse_all(h.read_buffer(c)).len(), 1);
    hcm_consume(&mut h, c, 1);
    send(&mut h, c, &compact.req);
    assert!(h.closed(c));
    assert_eq!(h.read_buffer(c), b"");
    assert_eq!(counter(&h, DECODE_ERRORS, &[P, ("role", "front")]), 1);
}

// ---------------------------------------------------------------------------------------------
// Configuration.

#[test]
fn invalid_codec_configurations_are_refused_naming_the_field() {
    for (config, field) in [
        (
            r#"{"role":"front","codec":{"transport":"http"}}"#,
            "transport",
        ),
        (
            r#"{"role":"front","codec":{"protocol":"json"}}"#,
            "protocol",
        ),
        (r#"{"role":"back","codec":{"max_depth":0}}"#, "max_depth"),
        (r#"{"role":"back","codec":{"framed":true}}"#, "framed"),
    ] {
        let mut h = Host::new(&module(), "").unwrap();
        assert!(!h.configure(config).unwrap(), "{config} was accepted");
        assert!(
            h.logs()
                .iter()
                .any(|(l, m)| *l == log_level::ERROR && m.contains(field) && m.contains("thrift")),
            "{config}: {:?}",
            h.logs()
        );
        let c = ok(h.new_connection());
        send(&mut h, c, &vectors()[0].req);
        assert!(h.closed(c));
        assert_eq!(h.read_buffer(c), b"");
    }
}
