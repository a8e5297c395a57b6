//! The built `meltemi_dubbo.wasm` front with `"hcm_protocol": "http2"` on the deterministic
//! proxy-wasm host, HCM played here as an HTTP/2 server (frames cut and the front's header
//! blocks read by this file, written from RFC 9113 / RFC 7541, never with the SDK).
//!
//! What it proves, through the real module and its proxy-wasm glue:
//! - the first read puts the connection preface, our SETTINGS and one stream per captured
//!   consumer call (HEADERS with `:authority` = interface, `:path` = `/<interface>/<method>`,
//!   the metadata headers; DATA = the frame byte-for-byte) into the read buffer at once, and
//!   the front answers Pause and continues the chain itself (the buffer stays reachable);
//! - HCM's SETTINGS and PING are acknowledged from the root timer (no client read needed);
//! - answers are returned as each arrives (Dubbo matches by id), out of request order;
//! - a 404 local reply and a RST_STREAM become Dubbo error responses (60, 70) for that id;
//! - garbage from HCM closes the connection without trapping the VM.

use std::path::Path;
use std::sync::OnceLock;

use meltemi_wasm_host::envoy_emulation::{ok, send, write};
use meltemi_wasm_host::{build_wasm, ConnId, Host, Module};

const SERVICE: &str = "org.meltemi.demo.EchoService";
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const P: (&str, &str) = ("protocol", "dubbo");

fn module() -> Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE
        .get_or_init(|| {
            let wasm = build_wasm(Path::new(env!("CARGO_MANIFEST_DIR")), "meltemi-dubbo");
            Module::load(wasm).unwrap()
        })
        .clone()
}

fn front() -> Host {
    let mut host = Host::new(&module(), "").unwrap();
    assert!(
        host.configure(r#"{"role":"front","hcm_protocol":"http2"}"#)
            .unwrap(),
        "{:?}",
        host.logs()
    );
    host
}

/// The two-way calls of a captured dubbo2.js stream (flags: request + two-way, not an event).
fn calls() -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../codecs/dubbo/tests/vectors/dubbo2js-to-java.c2s.bin");
    let stream = std::fs::read(&path).unwrap();
    let mut out = Vec::new();
    let mut rest = &stream[..];
    while !rest.is_empty() {
        let len = 16 + u32::from_be_bytes(rest[12..16].try_into().unwrap()) as usize;
        if rest[2] & 0xe0 == 0xc0 {
            out.push(rest[..len].to_vec());
        }
        rest = &rest[len..];
    }
    assert!(out.len() >= 3, "the capture has calls");
    out
}

fn id(frame: &[u8]) -> u64 {
    u64::from_be_bytes(frame[4..12].try_into().unwrap())
}

/// One HTTP/2 frame.
#[derive(Debug, Clone)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn cut(mut bytes: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        out.push(Frame {
            kind: bytes[3],
            flags: bytes[4],
            stream: u32::from_be_bytes(bytes[5..9].try_into().unwrap()),
            payload: bytes[9..9 + len].to_vec(),
        });
        bytes = &bytes[9 + len..];
    }
    out
}

fn int(b: &[u8], pos: &mut usize, bits: u32) -> usize {
    let max = (1usize << bits) - 1;
    let mut v = b[*pos] as usize & max;
    *pos += 1;
    if v < max {
        return v;
    }
    let mut shift = 0;
    loop {
        let x = b[*pos];
        *pos += 1;
        v += ((x & 0x7f) as usize) << shift;
        shift += 7;
        if x & 0x80 == 0 {
            return v;
        }
    }
}

fn string(b: &[u8], pos: &mut usize) -> String {
    assert_eq!(b[*pos] & 0x80, 0, "the front writes raw strings");
    let len = int(b, pos, 7);
    let s = String::from_utf8(b[*pos..*pos + len].to_vec()).unwrap();
    *pos += len;
    s
}

/// The front's header block: static-table fields and literals without indexing only (it keeps
/// no encoder state); the few static entries it uses.
fn fields(block: &[u8]) -> Vec<(String, String)> {
    let name_of = |i: usize| match i {
        1 => ":authority",
        4 => ":path",
        28 => "content-length",
        other => panic!("static name {other}"),
    };
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < block.len() {
        let b = block[pos];
        if b & 0x80 != 0 {
            let (n, v) = match int(block, &mut pos, 7) {
                3 => (":method", "POST"),
                6 => (":scheme", "http"),
                other => panic!("static field {other}"),
            };
            out.push((n.to_owned(), v.to_owned()));
        } else {
            assert_eq!(b & 0xf0, 0, "literal without indexing");
            let index = int(block, &mut pos, 4);
            let name = if index == 0 {
                string(block, &mut pos)
            } else {
                name_of(index).to_owned()
            };
            out.push((name, string(block, &mut pos)));
        }
    }
    out
}

fn header<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// HCM reads (and drains) the read buffer: the frames after the preface.
fn hcm_read(h: &mut Host, c: ConnId, first: bool) -> Vec<Frame> {
    let buf = h.read_buffer(c).to_vec();
    h.drain_read(c, buf.len());
    let rest = if first {
        buf.strip_prefix(PREFACE).expect("the preface first")
    } else {
        &buf[..]
    };
    cut(rest)
}

/// A relayed answer on `stream`: `:status 200` (static 8), the back's marker, the frame.
fn relayed(stream: u32, dubbo: &[u8]) -> Vec<u8> {
    // `:status 200` indexed, then a literal without indexing with a new name.
    let mut block = vec![0x88, 0x00];
    for s in ["x-meltemi-response", "response"] {
        block.push(s.len() as u8);
        block.extend_from_slice(s.as_bytes());
    }
    let mut out = frame(1, 0x4, stream, &block);
    out.extend(frame(0, 0x1, stream, dubbo));
    out
}

fn dubbo_response(id: u64, value: &str) -> Vec<u8> {
    let mut body = vec![0x91, value.len() as u8];
    body.extend_from_slice(value.as_bytes());
    let mut f = vec![0xda, 0xbb, 0x02, 20];
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(&body);
    f
}

#[test]
fn calls_become_concurrent_streams_and_answers_return_as_they_arrive() {
    let calls = calls();
    let mut h = front();
    let c = ok(h.new_connection());
    let action = send(&mut h, c, &calls.concat());
    assert_eq!(
        format!("{action:?}"),
        "Pause",
        "the read buffer stays reachable"
    );
    assert_eq!(h.continued(c), 1, "the front continued the chain itself");
    let frames = hcm_read(&mut h, c, true);
    assert_eq!(frames[0].kind, 4, "SETTINGS first");
    let headers: Vec<&Frame> = frames.iter().filter(|f| f.kind == 1).collect();
    assert_eq!(headers.len(), calls.len(), "every call at once");
    for (i, (hf, call)) in headers.iter().zip(&calls).enumerate() {
        assert_eq!(hf.stream, 2 * i as u32 + 1);
        let f = fields(&hf.payload);
        assert_eq!(header(&f, ":authority"), Some(SERVICE));
        assert!(header(&f, ":path")
            .unwrap()
            .starts_with(&format!("/{SERVICE}/")));
        assert_eq!(
            header(&f, "x-meltemi-rid"),
            Some(id(call).to_string().as_str())
        );
        let data: Vec<u8> = frames
            .iter()
            .filter(|d| d.kind == 0 && d.stream == hf.stream)
            .flat_map(|d| d.payload.clone())
            .collect();
        assert_eq!(&data, call, "the frame byte-for-byte");
    }
    // HCM's SETTINGS and a PING: acknowledged from the timer, no client read needed.
    let mut control = frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]);
    control.extend(frame(6, 0, 0, b"pingpong"));
    assert_eq!(write(&mut h, c, &control), b"");
    assert!(h.tick_period_ms() > 0, "the front asked for the timer");
    ok(h.tick());
    let acks = hcm_read(&mut h, c, false);
    assert_eq!(
        acks.iter().map(|f| (f.kind, f.flags)).collect::<Vec<_>>(),
        [(4, 1), (6, 1)]
    );
    assert_eq!(acks[1].payload, b"pingpong");
    // Answers in reverse order: each reaches the client as it arrives.
    for (i, call) in calls.iter().enumerate().rev() {
        let answer = dubbo_response(id(call), "ok");
        let out = write(&mut h, c, &relayed(2 * i as u32 + 1, &answer));
        assert_eq!(out, answer, "answer {i} at once");
    }
    let successes: u64 = h
        .metric_names()
        .iter()
        .filter(|n| n.starts_with("meltemi_responses_total") && n.contains("outcome=.=success"))
        .map(|n| h.counter(n).unwrap_or(0))
        .sum();
    assert_eq!(successes as usize, calls.len());
    assert_eq!(
        h.gauge(&meltemi_wasm_host::envoy_emulation::stat(
            "meltemi_active_requests",
            &[P]
        )),
        Some(0)
    );
    assert!(!h.closed(c));
}

#[test]
fn a_local_reply_and_a_reset_become_dubbo_errors_for_their_call() {
    let calls = calls();
    let mut h = front();
    let c = ok(h.new_connection());
    send(&mut h, c, &calls[..2].concat());
    hcm_read(&mut h, c, true);
    // Stream 3: Envoy's 404 (no route), `:status` as a literal with the static name 8.
    let mut block = vec![0x08, 3];
    block.extend_from_slice(b"404");
    let out = write(&mut h, c, &frame(1, 0x5, 3, &block));
    assert_eq!(out[..4], [0xda, 0xbb, 0x02, 60], "no route → status 60");
    assert_eq!(id(&out), id(&calls[1]));
    // Stream 1: reset with REFUSED_STREAM.
    let out = write(&mut h, c, &frame(3, 0, 1, &7u32.to_be_bytes()));
    assert_eq!(out[..4], [0xda, 0xbb, 0x02, 70], "unavailable → status 70");
    assert_eq!(id(&out), id(&calls[0]));
    assert!(!h.closed(c));
}

#[test]
fn garbage_from_hcm_closes_only_that_connection() {
    let calls = calls();
    let mut h = front();
    let c = ok(h.new_connection());
    send(&mut h, c, &calls[0]);
    hcm_read(&mut h, c, true);
    // A PUSH_PROMISE although push is disabled.
    let r = h.upstream_data(c, &frame(5, 0x4, 1, &[0, 0, 0, 2]), false);
    assert!(r.is_ok(), "no trap: {r:?}");
    assert!(h.closed(c));
    assert!(h.poisoned().is_none());
    let d = ok(h.new_connection());
    send(&mut h, d, &calls[0]);
    assert!(hcm_read(&mut h, d, true).iter().any(|f| f.kind == 1));
}
