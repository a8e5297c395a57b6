//! Native property tests of the pure bridge transcoders ([`Front`], [`Back`]) with a tiny
//! length-prefixed codec defined here (the SDK must not depend on a real protocol crate).
//!
//! What they prove:
//! - however the client's byte stream is chunked, and wherever HCM stops consuming whole
//!   requests (leaving the rest in the read buffer, shown again with new bytes), the front
//!   emits exactly the HTTP byte stream it emits for the whole stream in one chunk, and the read
//!   buffer only ever holds complete HTTP requests;
//! - answers relayed by HCM come back as the server's frames, heartbeats as pongs, one-way
//!   acknowledgements as nothing, and the `Recorder` metrics stay consistent (every request
//!   counted once, one response outcome per request, the active gauge back to 0 after the last
//!   answer or on close);
//! - arbitrary bytes, HTTP-shaped or not, in either direction of either transcoder, return a
//!   value or a `Fatal` and never panic.

use std::rc::Rc;

use meltemi_sdk::back::Back;
use meltemi_sdk::config::{FilterConfig, Limits, Role};
use meltemi_sdk::front::Front;
use meltemi_sdk::stats::{self, Recorder};
use meltemi_sdk::{http1, Codec, CodecError, ErrorKind, Message, MessageKind, Metadata};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// The test codec: `len u32 | kind u8 | id u32 | mlen u8 | method | payload`, `len` counting the
// bytes after itself. Kinds: 1 request, 2 response, 3 one-way, 4 ping, 5 pong, 6 error.

struct Lp;

const FIXED: usize = 4 + 1 + 4 + 1;

fn lp(kind: u8, id: u32, method: &str, payload: &[u8]) -> Vec<u8> {
    let len = (FIXED - 4 + method.len() + payload.len()) as u32;
    let mut out = len.to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(&id.to_be_bytes());
    out.push(method.len() as u8);
    out.extend_from_slice(method.as_bytes());
    out.extend_from_slice(payload);
    out
}

impl Codec for Lp {
    const PROTOCOL: &'static str = "lp";
    type Config = ();

    fn new(_: &()) -> Self {
        Lp
    }

    fn decode(&mut self, buf: &[u8]) -> Result<Option<Message>, CodecError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < FIXED - 4 {
            return Err(CodecError::malformed("short frame"));
        }
        if buf.len() < 5 {
            return Ok(None);
        }
        let kind = match buf[4] {
            1 => MessageKind::Request,
            2 => MessageKind::Response,
            3 => MessageKind::OneWay,
            4 => MessageKind::Heartbeat,
            5 => MessageKind::HeartbeatReply,
            6 => MessageKind::Exception,
            k => return Err(CodecError::malformed(format!("kind {k}"))),
        };
        let total = len + 4;
        if buf.len() < total {
            return Ok(None);
        }
        let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]);
        let mlen = buf[9] as usize;
        let method = buf
            .get(FIXED..FIXED + mlen)
            .filter(|_| FIXED + mlen <= total)
            .ok_or_else(|| CodecError::malformed("method overflows the frame"))?;
        let method =
            std::str::from_utf8(method).map_err(|_| CodecError::malformed("method not UTF-8"))?;
        let mut metadata = Metadata::new();
        if kind.is_request() {
            metadata.push("service", "svc");
            metadata.push("method", method);
        }
        Ok(Some(
            Message::new(total, kind, u64::from(id)).with_metadata(metadata),
        ))
    }

    fn encode(
        &mut self,
        frame: &[u8],
        message: &Message,
        mutation: &Metadata,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let mut method = std::str::from_utf8(&frame[FIXED..FIXED + frame[9] as usize])
            .map_err(|_| CodecError::malformed("method"))?
            .to_owned();
        for (k, v) in mutation.iter() {
            match k {
                "method" if v.len() < 256 => method = v.to_owned(),
                _ => return Err(CodecError::unsupported(format!("nowhere to put {k}"))),
            }
        }
        let payload = &frame[FIXED + frame[9] as usize..];
        out.extend(lp(frame[4], message.request_id as u32, &method, payload));
        Ok(())
    }

    fn error_reply(&mut self, request: &Message, kind: ErrorKind, detail: &str) -> Option<Vec<u8>> {
        Some(lp(
            6,
            request.request_id as u32,
            kind.as_str(),
            detail.as_bytes(),
        ))
    }

    fn heartbeat_reply(&mut self, request: &Message) -> Option<Vec<u8>> {
        Some(lp(5, request.request_id as u32, "", b""))
    }

    fn delivery_probe(&mut self, oneway: &Message) -> Option<Vec<u8>> {
        Some(lp(4, oneway.request_id as u32, "", b""))
    }

    fn going_away(&mut self) -> Option<Vec<u8>> {
        Some(GOING_AWAY.to_vec())
    }
}

/// The test codec's going-away notice: an error frame with id 0.
const GOING_AWAY: &[u8] = &[
    0, 0, 0, 16, 6, 0, 0, 0, 0, 10, b'g', b'o', b'i', b'n', b'g', b' ', b'a', b'w', b'a', b'y',
];

fn config(role: Role, limits: Limits) -> Rc<FilterConfig<()>> {
    Rc::new(FilterConfig {
        role,
        service: None,
        limits,
        known_services: Vec::new(),
        known_methods: Vec::new(),
        propagate_headers: Vec::new(),
        hcm_protocol: meltemi_sdk::config::HcmProtocol::Http1,
        codec: (),
    })
}

fn front() -> Front<Lp> {
    Front::new(config(Role::Front, Limits::default()))
}

fn back() -> Back<Lp> {
    Back::new(config(Role::Back, Limits::default()))
}

const ACTIVE: &str = stats::ACTIVE;

// ---------------------------------------------------------------------------------------------
// Emulating HCM.

/// Splits `buf` into complete HTTP requests; panics if anything else is left over.
fn requests(buf: &[u8]) -> Vec<http1::Parsed> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let p = http1::parse_request(&buf[at..], usize::MAX)
            .expect("valid HTTP")
            .unwrap_or_else(|| panic!("partial request in the read buffer: {:?}", &buf[at..]));
        at += p.len;
        out.push(p);
    }
    out
}

/// HCM's answer to a consumed request: the server echoes the frame as a response, the local
/// route answers 200, a one-way call gets the back's acknowledgement.
fn answer(req: &http1::Parsed) -> (Vec<u8>, Vec<u8>) {
    let kind = req.header("x-meltemi-kind").unwrap();
    let empty = |headers: &str| format!("HTTP/1.1 200 OK\r\n{headers}content-length: 0\r\n\r\n");
    match kind {
        "request" => {
            let id: u32 = req.header("x-meltemi-rid").unwrap().parse().unwrap();
            let frame = lp(2, id, "r", &req.body);
            let mut http = format!(
                "HTTP/1.1 200 OK\r\nx-meltemi-response: response\r\ncontent-length: {}\r\nserver: envoy\r\n\r\n",
                frame.len()
            )
            .into_bytes();
            http.extend_from_slice(&frame);
            (http, frame)
        }
        "oneway" => (
            empty("x-meltemi-response: oneway-ack\r\n").into_bytes(),
            Vec::new(),
        ),
        "heartbeat" => {
            // The pong carries the heartbeat's id, which only the front knows: checked by caller.
            (empty("").into_bytes(), Vec::new())
        }
        other => panic!("unexpected kind {other}"),
    }
}

#[derive(Debug, Clone)]
struct Spec {
    kind: u8,
    id: u32,
    method: String,
    payload: Vec<u8>,
}

impl Spec {
    fn bytes(&self) -> Vec<u8> {
        lp(self.kind, self.id, &self.method, &self.payload)
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop_oneof![4 => Just(1u8), 1 => Just(3u8), 1 => Just(4u8)],
        any::<u32>(),
        "[a-zA-Z0-9_.]{1,12}",
        proptest::collection::vec(any::<u8>(), 0..48),
    )
        .prop_map(|(kind, id, method, payload)| Spec {
            kind,
            id,
            method,
            payload,
        })
}

/// The bytes with every connection token of `x-meltemi-seq: <16 hex>-<n>` removed: tokens are
/// random per connection, the rest of a bridged request is deterministic. (The same as
/// `meltemi_wasm_host::envoy_emulation::strip_tokens`: the SDK does not depend on the test host.)
fn strip_tokens(bytes: &[u8]) -> Vec<u8> {
    const NAME: &[u8] = b"x-meltemi-seq: ";
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(NAME) {
            out.extend_from_slice(NAME);
            i += NAME.len();
            let token = &bytes[i..bytes.len().min(i + 17)];
            if token.len() == 17
                && token[16] == b'-'
                && token[..16].iter().all(u8::is_ascii_hexdigit)
            {
                i += 17;
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// What the front writes for the whole stream handed over in one chunk.
fn reference(stream: &[u8]) -> Vec<u8> {
    let mut f = front();
    let mut sink = Recorder::default();
    f.on_client_data(stream, 0, &mut sink).unwrap().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Any chunking of the client stream, any HCM consumption points and answers interleaved:
    /// the HTTP bytes HCM consumes equal the single-chunk reference, the read buffer never holds
    /// a partial request, each answer becomes the right frame, and metrics add up.
    #[test]
    fn chunking_and_hcm_consumption_do_not_change_the_requests(
        specs in proptest::collection::vec(spec(), 1..12),
        cuts in proptest::collection::vec(1usize..64, 1..40),
        consume in proptest::collection::vec(any::<u8>(), 40),
        answers in proptest::collection::vec(any::<u8>(), 40),
    ) {
        let stream: Vec<u8> = specs.iter().flat_map(Spec::bytes).collect();
        let expected = reference(&stream);

        let mut f = front();
        let mut sink = Recorder::default();
        let mut buffer = Vec::new(); // Envoy's read buffer
        let mut consumed = Vec::new(); // every byte HCM took, in order
        let mut pending: std::collections::VecDeque<http1::Parsed> = Default::default();
        let mut to_client = Vec::new();
        let mut expected_to_client = Vec::new();
        let mut now = 0u64;
        let mut rest = &stream[..];
        let hcm_turn = |f: &mut Front<Lp>,
                            sink: &mut Recorder,
                            buffer: &mut Vec<u8>,
                            n_consume: usize,
                            n_answer: usize,
                            now: u64,
                            consumed: &mut Vec<u8>,
                            pending: &mut std::collections::VecDeque<http1::Parsed>,
                            to_client: &mut Vec<u8>,
                            expected_to_client: &mut Vec<u8>| {
            let reqs = requests(buffer);
            let take = n_consume.min(reqs.len());
            let used: usize = reqs[..take].iter().map(|r| r.len).sum();
            consumed.extend_from_slice(&buffer[..used]);
            buffer.drain(..used);
            pending.extend(reqs.into_iter().take(take));
            for _ in 0..n_answer.min(pending.len()) {
                let req = pending.pop_front().unwrap();
                let (http, frame) = answer(&req);
                expected_to_client.extend_from_slice(&frame);
                // Cut HCM's write in two anywhere.
                let cut = (now as usize) % (http.len() + 1);
                to_client.extend(f.on_hcm_data(&http[..cut], now, sink).unwrap());
                to_client.extend(f.on_hcm_data(&http[cut..], now, sink).unwrap());
            }
        };
        for (i, cut) in cuts.iter().enumerate() {
            if rest.is_empty() {
                break;
            }
            let n = (*cut).min(rest.len());
            buffer.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            now += 1_000_000;
            if let Some(new) = f.on_client_data(&buffer, now, &mut sink).unwrap() {
                buffer = new;
            }
            hcm_turn(&mut f, &mut sink, &mut buffer, (consume[i] % 4) as usize,
                     (answers[i] % 3) as usize, now, &mut consumed, &mut pending,
                     &mut to_client, &mut expected_to_client);
        }
        if !rest.is_empty() {
            buffer.extend_from_slice(rest);
            if let Some(new) = f.on_client_data(&buffer, now, &mut sink).unwrap() {
                buffer = new;
            }
        }
        // HCM drains and answers everything left.
        hcm_turn(&mut f, &mut sink, &mut buffer, usize::MAX, usize::MAX, now + 1,
                 &mut consumed, &mut pending, &mut to_client, &mut expected_to_client);
        prop_assert!(buffer.is_empty());
        prop_assert_eq!(strip_tokens(&consumed), strip_tokens(&expected), "HTTP stream differs from the one-chunk reference");

        // Heartbeat answers are pongs with the heartbeat's id, in request order.
        let mut expected_client = Vec::new();
        let mut answered = expected_to_client.as_slice();
        for s in &specs {
            match s.kind {
                1 => {
                    let frame = lp(2, s.id, "r", &s.bytes());
                    prop_assert!(answered.starts_with(&frame));
                    answered = &answered[frame.len()..];
                    expected_client.extend(frame);
                }
                4 => expected_client.extend(lp(5, s.id, "", b"")),
                _ => {}
            }
        }
        prop_assert_eq!(to_client, expected_client);
        prop_assert_eq!(f.in_flight(), 0);

        let calls = specs.iter().filter(|s| s.kind != 4).count() as u64;
        prop_assert_eq!(sink.total(stats::REQUESTS, &[("protocol", "lp")]), calls);
        prop_assert_eq!(sink.total(stats::RESPONSES, &[("protocol", "lp")]), calls);
        prop_assert_eq!(
            sink.total(stats::RESPONSES, &[("outcome", "success")]),
            specs.iter().filter(|s| s.kind == 1).count() as u64
        );
        prop_assert_eq!(
            sink.total(stats::HEARTBEATS, &[("role", "front")]),
            specs.iter().filter(|s| s.kind == 4).count() as u64
        );
        prop_assert_eq!(sink.gauge_total(ACTIVE, &[]), 0);
        let samples: usize = sink.samples.values().map(Vec::len).sum();
        prop_assert_eq!(samples as u64, calls);
    }

    /// Arbitrary client bytes, in arbitrary chunks, after an optional valid prefix.
    #[test]
    fn arbitrary_client_bytes_never_panic(
        prefix in proptest::collection::vec(spec(), 0..3),
        junk in proptest::collection::vec(any::<u8>(), 0..256),
        cuts in proptest::collection::vec(1usize..32, 1..16),
        consume in any::<bool>(),
    ) {
        let mut stream: Vec<u8> = prefix.iter().flat_map(Spec::bytes).collect();
        stream.extend_from_slice(&junk);
        let mut f = front();
        let mut sink = Recorder::default();
        let mut buffer = Vec::new();
        let mut rest = &stream[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = (*cut).min(rest.len());
            buffer.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            match f.on_client_data(&buffer, 0, &mut sink) {
                Ok(Some(new)) => buffer = new,
                Ok(None) => {}
                Err(_) => break,
            }
            // Whatever happened, nothing but whole requests is left for HCM.
            let reqs = requests(&buffer);
            if consume {
                let used: usize = reqs.iter().map(|r| r.len).sum();
                buffer.drain(..used);
            }
        }
        f.on_close(&mut sink);
        prop_assert_eq!(sink.gauge_total(ACTIVE, &[]), 0);
        assert_catalogued(&sink);
    }

    /// Arbitrary bytes from HCM, raw or HTTP-shaped, with requests in flight.
    #[test]
    fn arbitrary_hcm_bytes_never_panic(
        n_requests in 0usize..4,
        data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            http_shaped(),
        ],
        cuts in proptest::collection::vec(1usize..32, 1..16),
    ) {
        let mut f = front();
        let mut sink = Recorder::default();
        let stream: Vec<u8> = (0..n_requests).flat_map(|i| lp(1, i as u32, "m", b"x")).collect();
        if !stream.is_empty() {
            f.on_client_data(&stream, 0, &mut sink).unwrap();
        }
        let mut rest = &data[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = (*cut).min(rest.len());
            if f.on_hcm_data(&rest[..n], 0, &mut sink).is_err() {
                break;
            }
            rest = &rest[n..];
        }
        f.on_close(&mut sink);
        prop_assert_eq!(sink.gauge_total(ACTIVE, &[]), 0);
    }

    /// Arbitrary bytes from the router and from the server, raw or shaped, into the back.
    #[test]
    fn arbitrary_bytes_into_the_back_never_panic(
        router in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            http_request_shaped(),
        ],
        server in proptest::collection::vec(any::<u8>(), 0..256),
        valid_first in any::<bool>(),
        cuts in proptest::collection::vec(1usize..32, 1..16),
    ) {
        let mut b = back();
        let mut sink = Recorder::default();
        let mut input = Vec::new();
        if valid_first {
            let frame = lp(3, 9, "m", b"x");
            input.extend(format!(
                "POST /svc/m HTTP/1.1\r\nhost: svc\r\nx-meltemi-kind: oneway\r\ncontent-length: {}\r\n\r\n",
                frame.len()
            ).into_bytes());
            input.extend(frame);
        }
        input.extend(router);
        for (data, server_side) in [(&input, false), (&server, true)] {
            let mut rest = &data[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let n = (*cut).min(rest.len());
                let r = if server_side {
                    b.on_server_data(&rest[..n], &mut sink)
                } else {
                    b.on_router_data(&rest[..n], &mut sink)
                };
                if r.is_err() {
                    break;
                }
                rest = &rest[n..];
            }
        }
    }
}

fn http_shaped() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just(100u16),
            Just(200),
            Just(204),
            Just(404),
            Just(503),
            100u16..600
        ],
        proptest::collection::vec(
            prop_oneof![
                Just("x-meltemi-response: response".to_owned()),
                Just("x-meltemi-response: oneway-ack".to_owned()),
                Just("transfer-encoding: chunked".to_owned()),
                "x-meltemi-mutation: [a-z%=,]{0,12}",
                "content-length: [0-9]{1,3}",
                "[a-z-]{1,10}: [ -~]{0,10}",
            ],
            0..5,
        ),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
    )
        .prop_map(|(status, headers, body, chunked)| {
            let mut s = format!("HTTP/1.1 {status} X\r\n");
            for h in headers {
                s.push_str(&h);
                s.push_str("\r\n");
            }
            s.push_str("\r\n");
            let mut out = s.into_bytes();
            if chunked {
                out.extend(format!("{:x}\r\n", body.len()).into_bytes());
            }
            out.extend(body);
            out
        })
}

fn http_request_shaped() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(
            prop_oneof![
                Just("x-meltemi-kind: request".to_owned()),
                Just("x-meltemi-kind: oneway".to_owned()),
                "x-meltemi-mutation: [a-z%=,]{0,12}",
                "content-length: [0-9]{1,2}",
                "[a-z-]{1,10}: [ -~]{0,10}",
            ],
            0..5,
        ),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(headers, body)| {
            let mut s = "POST /svc/m HTTP/1.1\r\n".to_owned();
            for h in headers {
                s.push_str(&h);
                s.push_str("\r\n");
            }
            s.push_str("\r\n");
            let mut out = s.into_bytes();
            out.extend(body);
            out
        })
}

// ---------------------------------------------------------------------------------------------
// A few exact cases next to the properties.

#[test]
fn closing_with_requests_in_flight_releases_the_gauge() {
    let mut f = front();
    let mut sink = Recorder::default();
    let stream = [lp(1, 1, "a", b""), lp(4, 2, "", b""), lp(3, 3, "b", b"")].concat();
    f.on_client_data(&stream, 0, &mut sink).unwrap().unwrap();
    assert_eq!(
        sink.gauge_total(ACTIVE, &[]),
        2,
        "the heartbeat is not a call"
    );
    assert_eq!(f.in_flight(), 3);
    f.on_close(&mut sink);
    assert_eq!(sink.gauge_total(ACTIVE, &[]), 0);
    assert_eq!(f.in_flight(), 0);
}

#[test]
fn hcm_closing_after_an_answer_refuses_the_calls_it_will_never_serve() {
    // HCM drains an HTTP/1.1 connection by marking an answer `connection: close` and closing
    // after it; the calls handed behind that answer (and those still in the backlog) never
    // run. The client must learn that from the protocol, not from a silent close.
    let mut f = front();
    let mut sink = Recorder::default();
    let stream = [
        lp(1, 1, "a", b"one"),
        lp(1, 2, "b", b"two"),
        lp(3, 3, "c", b""),
        lp(4, 4, "", b""),
        lp(1, 5, "d", b"five"),
    ]
    .concat();
    let http = f.on_client_data(&stream, 0, &mut sink).unwrap().unwrap();
    let handed = requests(&http);
    assert_eq!(handed.len(), 5);
    let first = lp(2, 1, "r", &handed[0].body);
    let mut closing = format!(
        "HTTP/1.1 200 OK\r\nx-meltemi-response: response\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        first.len()
    )
    .into_bytes();
    closing.extend_from_slice(&first);
    let out = f.on_hcm_data(&closing, 0, &mut sink).unwrap();
    let mut codec = Lp;
    assert!(out.starts_with(&first), "the marked answer first");
    assert!(out.ends_with(GOING_AWAY), "the going-away notice last");
    // Between them: call 2 refused (Unavailable), the one-way call dropped, the ping
    // answered, call 5 refused — in request order.
    let mut rest = &out[first.len()..out.len() - GOING_AWAY.len()];
    let mut seen = Vec::new();
    while !rest.is_empty() {
        let m = codec.decode(rest).unwrap().unwrap();
        seen.push((m.kind, m.request_id));
        if m.kind == MessageKind::Exception {
            let method_len = rest[9] as usize;
            assert_eq!(&rest[10..10 + method_len], b"unavailable");
        }
        rest = &rest[m.len..];
    }
    assert_eq!(
        seen,
        [
            (MessageKind::Exception, 2),
            (MessageKind::HeartbeatReply, 4),
            (MessageKind::Exception, 5)
        ]
    );
    assert_eq!(f.in_flight(), 0);
    assert_eq!(sink.gauge_total(ACTIVE, &[]), 0, "every call answered");
    // What the client sends now is never handed: HCM is closing.
    let late = f.on_client_data(&lp(1, 6, "e", b""), 0, &mut sink).unwrap();
    assert!(late.as_ref().is_none_or(|b| b.is_empty()), "{late:?}");
}

#[test]
fn an_unsupported_mutation_forwards_the_frame_unchanged_and_counts() {
    let mut b = back();
    let mut sink = Recorder::default();
    let frame = lp(1, 4, "m", b"body");
    let mut http = format!(
        "POST /svc/m HTTP/1.1\r\nhost: svc\r\nx-meltemi-kind: request\r\nx-meltemi-mutation: method=m2\r\ncontent-length: {}\r\n\r\n",
        frame.len()
    )
    .into_bytes();
    http.extend_from_slice(&frame);
    assert_eq!(
        b.on_router_data(&http, &mut sink).unwrap(),
        lp(1, 4, "m2", b"body")
    );
    let other = String::from_utf8(http.clone())
        .unwrap()
        .replace("method=m2", "env=canary");
    assert_eq!(
        b.on_router_data(other.as_bytes(), &mut sink).unwrap(),
        frame
    );
    assert_eq!(
        sink.total(stats::MUTATION_UNSUPPORTED, &[("protocol", "lp")]),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// The native back's exchange and the native metric catalogue.

use meltemi_sdk::exchange::{Exchange, Response, Step};
use meltemi_sdk::vm::VmShared;

fn exchange() -> Exchange<Lp> {
    Exchange::new(config(Role::Back, Limits::default()), VmShared::unbounded())
}

/// Request headers as the router passes them.
fn headers(kind: &str, rid: u32, mutation: &[&str]) -> impl Fn(&str) -> Vec<String> {
    let kind = kind.to_owned();
    let mutation: Vec<String> = mutation.iter().map(|m| m.to_string()).collect();
    move |name: &str| match name {
        "x-meltemi-kind" => vec![kind.clone()],
        "x-meltemi-rid" => vec![rid.to_string()],
        "method" => vec!["m".into()],
        "x-meltemi-mutation" => mutation.clone(),
        _ => Vec::new(),
    }
}

fn header_of<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn exchange_passes_the_body_through_and_relays_the_awaited_answer() {
    let mut x = exchange();
    let mut sink = Recorder::default();
    let frame = lp(1, 7, "m", b"hello");
    assert_eq!(
        x.on_headers(&headers("request", 7, &[]), false),
        Step::default()
    );
    let (a, b) = frame.split_at(5);
    let step = x.on_body(&[a], false, &mut sink);
    assert!(step.forward_input && step.response.is_none());
    let step = x.on_body(&[b], true, &mut sink);
    assert!(step.forward_input && step.response.is_none());
    // A provider heartbeat first: answered on the spot, never relayed.
    let ping = lp(4, 99, "", b"");
    let answer = lp(2, 7, "m", b"world");
    let (c, d) = answer.split_at(3);
    let step = x.on_server_data(&[&ping, c], &mut sink);
    assert_eq!(step.to_server, lp(5, 99, "", b""));
    assert!(step.response.is_none());
    let step = x.on_server_data(&[d], &mut sink);
    let r = step.response.expect("answer");
    assert_eq!((r.status, r.body.as_slice()), (200, answer.as_slice()));
    assert_eq!(header_of(&r, "x-meltemi-response"), Some("response"));
    assert_eq!(
        header_of(&r, "content-length"),
        Some(answer.len().to_string().as_str())
    );
    assert!(!step.close_server && x.is_done());
    assert_eq!(sink.total(stats::HEARTBEATS, &[("role", "back")]), 1);
}

#[test]
fn exchange_acknowledges_a_one_way_call_once_the_server_answered_its_probe() {
    let mut x = exchange();
    let mut sink = Recorder::default();
    x.on_headers(&headers("oneway", 3, &[]), false);
    let frame = lp(3, 3, "m", b"fire");
    let step = x.on_body(&[&frame], true, &mut sink);
    assert!(!step.forward_input && step.response.is_none());
    assert_eq!(
        step.to_server,
        [frame, lp(4, 3, "", b"")].concat(),
        "the call, then the probe"
    );
    let step = x.on_server_data(&[&lp(5, 3, "", b"")], &mut sink);
    let r = step.response.expect("the bridge answers the router");
    assert_eq!(header_of(&r, "x-meltemi-response"), Some("oneway-ack"));
    assert!(!step.close_server);
}

#[test]
fn exchange_applies_the_mutation_to_the_whole_frame() {
    let mut x = exchange();
    let mut sink = Recorder::default();
    let mutation = meltemi_sdk::bridge::mutation_header_value("method", "renamed");
    x.on_headers(&headers("request", 5, &[&mutation]), false);
    let frame = lp(1, 5, "m", b"p");
    let (a, b) = frame.split_at(2);
    assert_eq!(x.on_body(&[a], false, &mut sink), Step::default());
    let step = x.on_body(&[b], true, &mut sink);
    assert!(!step.forward_input);
    assert_eq!(step.to_server, lp(1, 5, "renamed", b"p"));
}

/// A back whose configuration names headers to propagate (the trace context) writes their
/// values into the frame as metadata, the way the codec writes a mutation; a request without
/// them passes unchanged. (The test codec can only place `method`, so `method` stands in for
/// a trace header here; the end-to-end suite proves `x-b3-*` with the real codecs.)
fn propagating(role: Role) -> Rc<FilterConfig<()>> {
    let mut c = (*config(role, Limits::default())).clone();
    c.propagate_headers = vec!["method".into()];
    Rc::new(c)
}

#[test]
fn exchange_writes_propagated_headers_into_the_frame() {
    let mut x = Exchange::<Lp>::new(propagating(Role::Back), VmShared::unbounded());
    let mut sink = Recorder::default();
    let base = headers("request", 5, &[]);
    let traced = move |name: &str| match name {
        "method" => vec!["traced".to_owned()],
        other => base(other),
    };
    x.on_headers(&traced, false);
    let frame = lp(1, 5, "m", b"p");
    let step = x.on_body(&[&frame], true, &mut sink);
    assert!(!step.forward_input);
    assert_eq!(step.to_server, lp(1, 5, "traced", b"p"));
    // Without the header nothing is held or rewritten.
    let mut x = Exchange::<Lp>::new(propagating(Role::Back), VmShared::unbounded());
    let plain = |name: &str| match name {
        "x-meltemi-kind" => vec!["request".to_owned()],
        _ => Vec::new(),
    };
    x.on_headers(&plain, false);
    assert!(x.on_body(&[&frame], true, &mut sink).forward_input);
}

#[test]
fn back_writes_propagated_headers_into_the_frame() {
    let mut b = Back::<Lp>::new(propagating(Role::Back));
    let mut sink = Recorder::default();
    let frame = lp(1, 4, "m", b"body");
    let request = |extra: &str| {
        let mut http = format!(
            "POST /svc/m HTTP/1.1\r\nhost: svc\r\nx-meltemi-kind: request\r\n{extra}content-length: {}\r\n\r\n",
            frame.len()
        )
        .into_bytes();
        http.extend_from_slice(&frame);
        http
    };
    assert_eq!(
        b.on_router_data(&request("method: traced\r\n"), &mut sink)
            .unwrap(),
        lp(1, 4, "traced", b"body")
    );
    assert_eq!(b.on_router_data(&request(""), &mut sink).unwrap(), frame);
}

#[test]
fn exchange_drops_a_stray_answer_waits_for_its_own_and_closes_after_it() {
    let mut x = exchange();
    let mut sink = Recorder::default();
    x.on_headers(&headers("request", 8, &[]), false);
    x.on_body(&[&lp(1, 8, "m", b"q")], true, &mut sink);
    // A late answer to an earlier call on this pooled connection, then the awaited one.
    let stray = lp(2, 7, "m", b"old");
    let step = x.on_server_data(&[&stray], &mut sink);
    assert!(
        step.response.is_none(),
        "nothing relayed for the stray answer"
    );
    assert_eq!(sink.total(stats::STRAY_ANSWERS, &[("role", "back")]), 1);
    let mine = lp(2, 8, "m", b"new");
    let step = x.on_server_data(&[&mine], &mut sink);
    assert_eq!(step.response.expect("own answer").body, mine);
    assert!(
        step.close_server,
        "the connection is not reused after a stray answer"
    );
}

#[test]
fn exchange_refuses_a_request_without_a_front_and_a_corrupt_server_stream() {
    let mut x = exchange();
    let step = x.on_headers(&|_: &str| Vec::new(), false);
    assert_eq!(step.response.map(|r| r.status), Some(400));
    let mut x = exchange();
    let mut sink = Recorder::default();
    x.on_headers(&headers("request", 1, &[]), false);
    x.on_body(&[&lp(1, 1, "m", b"")], true, &mut sink);
    let step = x.on_server_data(&[&[0, 0, 0, 1, 9]], &mut sink);
    assert_eq!(step.response.map(|r| r.status), Some(502));
    assert!(step.close_server);
    assert_eq!(sink.total(stats::DECODE_ERRORS, &[("role", "back")]), 1);
}

/// The value of label `label` in a stat name, if it has one.
fn label_value<'a>(name: &'a str, label: &str) -> Option<&'a str> {
    let key = format!(";.;{label}=.=");
    let at = name.find(&key)? + key.len();
    Some(name[at..].split(";.;").next().unwrap_or(""))
}

/// Every name the transcoders reported is one the native build defines when it loads (the
/// catalogue for the service and method values the names carry).
fn assert_catalogued(sink: &Recorder) {
    let names = sink
        .counters
        .keys()
        .chain(sink.gauges.keys())
        .chain(sink.samples.keys());
    for name in names {
        let service = label_value(name, "service").unwrap_or("other");
        let method = label_value(name, "method").unwrap_or("other");
        let all = stats::catalogue(Lp::PROTOCOL, &[service, "other"], &[method, "other"]);
        assert!(
            all.iter().any(|(_, n)| n == name),
            "{name} is reported but not in stats::catalogue"
        );
    }
}

#[test]
fn every_reported_metric_is_in_the_native_catalogue() {
    let mut sink = Recorder::default();
    // Front: requests, a one-way call, a heartbeat, answers, local replies, garbage.
    let mut f = front();
    let stream = [
        lp(1, 1, "a", b"x"),
        lp(3, 2, "b", b"y"),
        lp(4, 3, "", b""),
        lp(1, 4, "c", b"z"),
    ]
    .concat();
    let buffer = f.on_client_data(&stream, 0, &mut sink).unwrap().unwrap();
    for req in requests(&buffer) {
        let (http, _) = answer(&req);
        f.on_hcm_data(&http, 1_000, &mut sink).unwrap();
    }
    let _ = f.on_hcm_data(
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        0,
        &mut sink,
    );
    let _ = f.on_client_data(b"\0\0\0\x01\x09", 0, &mut sink);
    f.on_close(&mut sink);
    // Back (wasm) and exchange (native): answers, strays, heartbeats, corrupt streams.
    let mut b = back();
    let _ = b.on_server_data(&lp(4, 9, "", b""), &mut sink);
    let _ = b.on_server_data(&lp(2, 9, "m", b""), &mut sink);
    let mut x = exchange();
    x.on_headers(&headers("request", 1, &[]), false);
    x.on_body(&[&lp(1, 1, "m", b"")], true, &mut sink);
    x.on_server_data(&[&lp(2, 2, "m", b""), &lp(4, 3, "", b"")], &mut sink);
    x.on_server_data(&[&[0, 0, 0, 1, 9]], &mut sink);
    assert!(sink.counters.len() >= 8, "{:?}", sink.counters.keys());
    assert_catalogued(&sink);
}

/// With `answer_locally` (the native front) heartbeats are answered by the front itself, in
/// request order, and never reach HCM.
#[test]
fn direct_answers_keep_request_order_and_never_reach_hcm() {
    let mut f = front();
    f.answer_locally();
    let mut sink = Recorder::default();
    // Nothing in flight: the pong is due at once.
    let http = f.on_client_bytes(&lp(4, 1, "", b""), 0, &mut sink).unwrap();
    assert!(http.is_empty(), "no request for HCM");
    assert_eq!(f.take_direct(), lp(5, 1, "", b""));
    // A call, a heartbeat behind it, another call: HCM gets the two calls only, and the pong
    // goes out right after the first call's answer.
    let stream = [lp(1, 2, "a", b"x"), lp(4, 3, "", b""), lp(1, 4, "b", b"y")].concat();
    let http = f.on_client_bytes(&stream, 0, &mut sink).unwrap();
    let reqs = requests(&http);
    assert_eq!(reqs.len(), 2, "the heartbeat is not sent to HCM");
    assert!(reqs
        .iter()
        .all(|r| r.header("x-meltemi-kind") == Some("request")));
    assert!(
        f.take_direct().is_empty(),
        "the pong waits for the call before it"
    );
    let (first, frame_a) = answer(&reqs[0]);
    let out = f.on_hcm_data(&first, 0, &mut sink).unwrap();
    assert_eq!(out, [frame_a, lp(5, 3, "", b"")].concat());
    let (second, frame_b) = answer(&reqs[1]);
    assert_eq!(f.on_hcm_data(&second, 0, &mut sink).unwrap(), frame_b);
    assert_eq!(f.in_flight(), 0);
    assert_eq!(sink.total(stats::HEARTBEATS, &[("role", "front")]), 2);
}
