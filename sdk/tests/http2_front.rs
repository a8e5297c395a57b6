//! The front with `"hcm_protocol": "http2"`, driven natively against an emulated HCM that
//! speaks HTTP/2 (frames parsed here, header blocks decoded with the SDK's HPACK decoder,
//! answers written with its literal encoder).
//!
//! What they prove: every request becomes its own stream at once (no serialisation); answers
//! are returned as soon as they finish for codecs whose clients match by id, in request order
//! otherwise (held until the earlier ones are written); a reset stream gets the codec's error
//! reply; heartbeats are answered by the bridge; `max_pending_requests` bounds the streams and
//! the rest are handed when answers free room; SETTINGS and PING from HCM are acknowledged
//! through the glue's next kick; the active gauge returns to 0.

use std::rc::Rc;

use meltemi_sdk::config::{FilterConfig, HcmProtocol, Limits, Role};
use meltemi_sdk::front::Front;
use meltemi_sdk::stats::{self, Recorder};
use meltemi_sdk::{hpack, http2, Codec, CodecError, ErrorKind, Message, MessageKind, Metadata};

/// `len u32 | kind u8 | id u32 | payload`; kinds 1 request, 2 response, 3 one-way, 4 ping,
/// 5 pong, 6 error.
struct Lp<const ANY: bool>;

fn lp(kind: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = ((5 + payload.len()) as u32).to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

impl<const ANY: bool> Codec for Lp<ANY> {
    const PROTOCOL: &'static str = "lp";
    const ANSWERS_IN_ANY_ORDER: bool = ANY;
    type Config = ();

    fn new(_: &()) -> Self {
        Lp
    }

    fn decode(&mut self, buf: &[u8]) -> Result<Option<Message>, CodecError> {
        if buf.len() < 9 {
            return Ok(None);
        }
        let total = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize + 4;
        if buf.len() < total {
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
        let id = u32::from_be_bytes(buf[5..9].try_into().unwrap());
        let mut md = Metadata::new();
        md.push("service", "svc");
        md.push("method", "m");
        Ok(Some(
            Message::new(total, kind, u64::from(id)).with_metadata(md),
        ))
    }

    fn encode(
        &mut self,
        _: &[u8],
        _: &Message,
        _: &Metadata,
        _: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        Err(CodecError::unsupported("no mutation"))
    }

    fn error_reply(&mut self, request: &Message, kind: ErrorKind, _: &str) -> Option<Vec<u8>> {
        Some(lp(6, request.request_id as u32, kind.as_str().as_bytes()))
    }

    fn heartbeat_reply(&mut self, request: &Message) -> Option<Vec<u8>> {
        Some(lp(5, request.request_id as u32, b""))
    }
}

fn front<const ANY: bool>(max_pending: usize) -> Front<Lp<ANY>> {
    front_with(Limits {
        max_pending_requests: max_pending,
        ..Limits::default()
    })
}

fn front_with<const ANY: bool>(limits: Limits) -> Front<Lp<ANY>> {
    Front::new(Rc::new(FilterConfig {
        role: Role::Front,
        service: None,
        limits,
        known_services: Vec::new(),
        known_methods: Vec::new(),
        propagate_headers: Vec::new(),
        hcm_protocol: HcmProtocol::Http2,
        codec: (),
    }))
}

/// A request stream seen by the emulated HCM.
#[derive(Debug)]
struct Seen {
    stream: u32,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// HCM's side: reads the front's bytes (preface, frames) into requests.
#[derive(Default)]
struct Hcm {
    decoder: hpack::Decoder,
    preface_seen: bool,
    settings: usize,
    settings_acks: usize,
    ping_acks: usize,
    window_updates: usize,
    late_data: usize,
}

impl Hcm {
    fn read(&mut self, mut bytes: &[u8]) -> Vec<Seen> {
        if !self.preface_seen {
            bytes = bytes
                .strip_prefix(http2::PREFACE)
                .expect("the preface comes first");
            self.preface_seen = true;
        }
        let mut out: Vec<Seen> = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let (kind, flags) = (bytes[3], bytes[4]);
            let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap());
            let payload = &bytes[9..9 + len];
            match kind {
                1 => {
                    assert_ne!(flags & 0x4, 0, "small blocks fit one HEADERS frame");
                    let headers = self.decoder.decode(payload, 1 << 16).unwrap();
                    out.push(Seen {
                        stream,
                        headers,
                        body: Vec::new(),
                    });
                }
                0 => match out.iter_mut().find(|s| s.stream == stream) {
                    Some(seen) => seen.body.extend_from_slice(payload),
                    // A stream of an earlier read (it waited for flow-control credit).
                    None => self.late_data += payload.len(),
                },
                4 if flags & 1 != 0 => self.settings_acks += 1,
                4 => self.settings += 1,
                6 => {
                    assert_eq!(flags, 1);
                    self.ping_acks += 1
                }
                8 => self.window_updates += 1,
                k => panic!("unexpected frame type {k}"),
            }
            bytes = &bytes[9 + len..];
        }
        out
    }
}

/// HCM's answer to `seen`: what the back would relay (the server echoing the payload), a
/// direct 200 for the bridge's local requests.
fn answer(seen: &Seen) -> Vec<u8> {
    let mut block = Vec::new();
    hpack::encode_indexed(&mut block, 8); // :status 200
    let body = match seen.header("x-meltemi-kind") {
        Some("request") => {
            hpack::encode_literal(&mut block, 0, "x-meltemi-response", "response");
            let id: u32 = seen.header("x-meltemi-rid").unwrap().parse().unwrap();
            lp(2, id, &seen.body[9..])
        }
        Some("oneway") => {
            hpack::encode_literal(&mut block, 0, "x-meltemi-response", "oneway-ack");
            Vec::new()
        }
        _ => Vec::new(),
    };
    let mut out = http2::frame(1, 0x4, seen.stream, &block);
    out.extend(http2::frame(0, 0x1, seen.stream, &body));
    out
}

#[test]
fn calls_are_concurrent_streams_answered_in_request_order_when_the_codec_needs_it() {
    let mut f = front::<false>(1024);
    let mut hcm = Hcm::default();
    let mut sink = Recorder::default();
    let client: Vec<u8> = (1..=3)
        .flat_map(|i| lp(1, i, format!("p{i}").as_bytes()))
        .collect();
    let http = f.on_client_bytes(&client, 0, &mut sink).unwrap();
    let seen = hcm.read(&http);
    assert_eq!(hcm.settings, 1);
    assert_eq!(seen.len(), 3, "every call handed at once");
    assert_eq!(f.in_flight(), 3);
    assert!(
        f.has_waiting(),
        "the read buffer must stay reachable for later frames"
    );
    assert_eq!(seen[0].header(":authority"), Some("svc"));
    assert_eq!(seen[0].header(":path"), Some("/svc/m"));
    assert_eq!(seen[0].body, lp(1, 1, b"p1"));
    // The last call is answered first: held until the first two are.
    let out = f.on_hcm_data(&answer(&seen[2]), 1, &mut sink).unwrap();
    assert!(out.is_empty(), "held for request order");
    let out = f.on_hcm_data(&answer(&seen[0]), 2, &mut sink).unwrap();
    assert_eq!(out, lp(2, 1, b"p1"));
    let out = f.on_hcm_data(&answer(&seen[1]), 3, &mut sink).unwrap();
    assert_eq!(out, [lp(2, 2, b"p2"), lp(2, 3, b"p3")].concat());
    assert_eq!(f.in_flight(), 0);
    assert_eq!(sink.gauge_total(stats::ACTIVE, &[]), 0);
    assert_eq!(sink.total(stats::RESPONSES, &[("outcome", "success")]), 3);
}

#[test]
fn answers_go_out_as_soon_as_ready_when_clients_match_by_id() {
    let mut f = front::<true>(1024);
    let mut hcm = Hcm::default();
    let mut sink = Recorder::default();
    let client: Vec<u8> = (1..=3).flat_map(|i| lp(1, i, b"x")).collect();
    let seen = hcm.read(&f.on_client_bytes(&client, 0, &mut sink).unwrap());
    for i in [2usize, 0, 1] {
        let out = f.on_hcm_data(&answer(&seen[i]), 1, &mut sink).unwrap();
        assert_eq!(out, lp(2, i as u32 + 1, b"x"));
    }
}

#[test]
fn a_reset_stream_gets_the_error_reply_and_heartbeats_the_bridge_s_answer() {
    let mut f = front::<true>(1024);
    let mut hcm = Hcm::default();
    let mut sink = Recorder::default();
    let client = [lp(1, 7, b"x"), lp(4, 8, b"")].concat();
    let seen = hcm.read(&f.on_client_bytes(&client, 0, &mut sink).unwrap());
    assert_eq!(seen[1].header(":authority"), Some("meltemi.local"));
    let reset = http2::frame(3, 0, seen[0].stream, &http2::REFUSED_STREAM.to_be_bytes());
    let out = f.on_hcm_data(&reset, 1, &mut sink).unwrap();
    assert_eq!(out, lp(6, 7, b"unavailable"));
    let out = f.on_hcm_data(&answer(&seen[1]), 2, &mut sink).unwrap();
    assert_eq!(out, lp(5, 8, b""));
    assert_eq!(sink.gauge_total(stats::ACTIVE, &[]), 0);
}

#[test]
fn pending_limit_bounds_streams_and_hcm_control_frames_wait_for_a_kick() {
    let mut f = front::<true>(2);
    let mut hcm = Hcm::default();
    let mut sink = Recorder::default();
    let client: Vec<u8> = (1..=5).flat_map(|i| lp(1, i, b"x")).collect();
    let seen = hcm.read(&f.on_client_bytes(&client, 0, &mut sink).unwrap());
    assert_eq!(seen.len(), 2);
    assert!(!f.wants_kick(), "no room yet");
    // HCM's SETTINGS and a PING, then one answer: the acknowledgements and the next call
    // leave with the glue's kick.
    let mut wire = http2::frame(4, 0, 0, &[]);
    wire.extend(http2::frame(6, 0, 0, b"pingpong"));
    wire.extend(answer(&seen[0]));
    let out = f.on_hcm_data(&wire, 1, &mut sink).unwrap();
    assert_eq!(out, lp(2, 1, b"x"));
    assert!(f.wants_kick());
    let more = hcm.read(&f.on_client_bytes(&[], 2, &mut sink).unwrap());
    assert_eq!((hcm.settings_acks, hcm.ping_acks), (1, 1));
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].body, lp(1, 3, b"x"));
    assert!(!f.wants_kick());
    let mut answered = 1;
    let mut open = vec![
        seen.into_iter().nth(1).unwrap(),
        more.into_iter().next().unwrap(),
    ];
    while let Some(s) = open.pop() {
        let out = f.on_hcm_data(&answer(&s), 3, &mut sink).unwrap();
        assert!(!out.is_empty());
        answered += 1;
        open.extend(hcm.read(&f.on_client_bytes(&[], 4, &mut sink).unwrap()));
    }
    assert_eq!(answered, 5);
    assert_eq!(f.backlog_len(), 0);
}

#[test]
fn max_concurrent_streams_bounds_one_connection_below_its_pending_limit() {
    // Forty calls, room for 1024 pending but 3 streams: HCM never sees more than 3 at once,
    // and every call is answered in the end, in order.
    let mut f = front_with::<false>(Limits {
        max_concurrent_streams: 3,
        ..Limits::default()
    });
    let mut hcm = Hcm::default();
    let mut sink = Recorder::default();
    let client: Vec<u8> = (1..=40).flat_map(|i| lp(1, i, b"y")).collect();
    let mut open = hcm.read(&f.on_client_bytes(&client, 0, &mut sink).unwrap());
    let mut answers = Vec::new();
    let mut now = 1;
    while !open.is_empty() {
        assert!(open.len() <= 3, "{} streams open at once", open.len());
        let s = open.remove(0);
        answers.extend(f.on_hcm_data(&answer(&s), now, &mut sink).unwrap());
        now += 1;
        open.extend(hcm.read(&f.on_client_bytes(&[], now, &mut sink).unwrap()));
    }
    let want: Vec<u8> = (1..=40).flat_map(|i| lp(2, i, b"y")).collect();
    assert_eq!(answers, want);
    assert_eq!(f.backlog_len(), 0);
}

#[test]
fn a_large_call_waits_for_hcm_s_flow_control_credit() {
    let mut f = front::<true>(16);
    let mut hcm = Hcm::default();
    let mut sink = Recorder::default();
    let payload = vec![9u8; 200_000];
    let seen = hcm.read(
        &f.on_client_bytes(&lp(1, 1, &payload), 0, &mut sink)
            .unwrap(),
    );
    assert_eq!(seen[0].body.len(), 65_535, "the initial windows");
    let mut credit = http2::frame(8, 0, 0, &1_000_000u32.to_be_bytes());
    credit.extend(http2::frame(8, 0, 1, &1_000_000u32.to_be_bytes()));
    assert!(f.on_hcm_data(&credit, 1, &mut sink).unwrap().is_empty());
    assert!(f.wants_kick());
    let rest = hcm.read(&f.on_client_bytes(&[], 2, &mut sink).unwrap());
    assert!(rest.is_empty(), "no new stream");
    assert_eq!(hcm.late_data, 200_009 - 65_535, "the rest of the call");
    assert!(!f.wants_kick());
}

#[test]
fn a_call_after_a_one_way_call_waits_for_its_acknowledgement() {
    // The client cannot wait for a one-way call: what it sent first must reach the server
    // first, as on HTTP/1.1.
    let mut f = front::<true>(1024);
    let mut hcm = Hcm::default();
    let mut sink = Recorder::default();
    let client = [lp(3, 1, b"fire"), lp(1, 2, b"count")].concat();
    let seen = hcm.read(&f.on_client_bytes(&client, 0, &mut sink).unwrap());
    assert_eq!(seen.len(), 1, "only the one-way call");
    assert_eq!(seen[0].header("x-meltemi-kind"), Some("oneway"));
    assert!(!f.wants_kick());
    let out = f.on_hcm_data(&answer(&seen[0]), 1, &mut sink).unwrap();
    assert!(out.is_empty(), "a one-way call is never answered");
    assert!(f.wants_kick(), "the waiting call can go now");
    let seen = hcm.read(&f.on_client_bytes(&[], 2, &mut sink).unwrap());
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, lp(1, 2, b"count"));
    assert_eq!(
        f.on_hcm_data(&answer(&seen[0]), 3, &mut sink).unwrap(),
        lp(2, 2, b"count")
    );
    assert_eq!(sink.total(stats::RESPONSES, &[("outcome", "oneway")]), 1);
}

#[test]
fn after_goaway_the_calls_hcm_will_not_serve_get_error_replies_and_the_connection_closes() {
    let mut f = front::<false>(2);
    let mut hcm = Hcm::default();
    let mut sink = Recorder::default();
    let client: Vec<u8> = (1..=5).flat_map(|i| lp(1, i, b"x")).collect();
    let seen = hcm.read(&f.on_client_bytes(&client, 0, &mut sink).unwrap());
    assert_eq!(seen.len(), 2);
    // HCM keeps stream 1, refuses stream 3 (above last_stream_id), answers stream 1.
    let mut goaway = 1u32.to_be_bytes().to_vec();
    goaway.extend_from_slice(&0u32.to_be_bytes());
    let mut wire = http2::frame(7, 0, 0, &goaway);
    wire.extend(answer(&seen[0]));
    let out = f.on_hcm_data(&wire, 1, &mut sink).unwrap();
    // In request order: the answer, the refused stream's error, then the three waiting calls.
    let expected: Vec<u8> = [
        lp(2, 1, b"x"),
        lp(6, 2, b"unavailable"),
        lp(6, 3, b"unavailable"),
        lp(6, 4, b"unavailable"),
        lp(6, 5, b"unavailable"),
    ]
    .concat();
    assert_eq!(out, expected);
    assert_eq!(f.backlog_len(), 0);
    assert!(f.wants_kick(), "the glue must come back to close");
    assert!(f.on_client_bytes(&[], 2, &mut sink).is_err(), "closed");
    assert_eq!(sink.total(stats::REQUESTS, &[]), 5);
    assert_eq!(
        sink.total(stats::RESPONSES, &[("outcome", "local_reply")]),
        4
    );
    assert_eq!(sink.gauge_total(stats::ACTIVE, &[]), 0);
}

/// Drives `f` through a whole exchange: the client's `calls` arrive cut at `cuts`, HCM answers
/// the open streams in an order drawn from `seed`, each answer split at a drawn offset, and the
/// glue kicks the front whenever it asks. Returns every answer frame the client received.
fn exchange<const ANY: bool>(
    f: &mut Front<Lp<ANY>>,
    calls: &[Vec<u8>],
    cuts: &[usize],
    mut seed: u64,
) -> Vec<Vec<u8>> {
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let stream: Vec<u8> = calls.concat();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.push(stream.len());
    points.sort_unstable();
    let mut hcm = Hcm::default();
    let mut sink = Recorder::default();
    let mut open: Vec<Seen> = Vec::new();
    let mut client = Vec::new();
    let mut at = 0;
    let mut now = 0;
    for p in points {
        let http = f.on_client_bytes(&stream[at..p], now, &mut sink).unwrap();
        open.extend(hcm.read(&http));
        at = p;
        now += 1;
    }
    while !open.is_empty() {
        let seen = open.swap_remove((next() as usize) % open.len());
        let wire = answer(&seen);
        let cut = (next() as usize) % (wire.len() + 1);
        for part in [&wire[..cut], &wire[cut..]] {
            client.extend(f.on_hcm_data(part, now, &mut sink).unwrap());
        }
        while f.wants_kick() {
            open.extend(hcm.read(&f.on_client_bytes(&[], now, &mut sink).unwrap()));
        }
    }
    assert_eq!(f.in_flight(), 0);
    assert_eq!(f.backlog_len(), 0);
    assert_eq!(sink.gauge_total(stats::ACTIVE, &[]), 0);
    let mut frames = Vec::new();
    let mut rest = &client[..];
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize + 4;
        frames.push(rest[..len].to_vec());
        rest = &rest[len..];
    }
    frames
}

fn calls_of(payloads: &[Vec<u8>]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let calls = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| lp(1, i as u32 + 1, p))
        .collect();
    let answers = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| lp(2, i as u32 + 1, p))
        .collect();
    (calls, answers)
}

proptest::proptest! {
    #[test]
    fn answers_keep_request_order_however_hcm_interleaves(
        payloads in proptest::collection::vec(proptest::collection::vec(0u8..255, 0..40), 1..24),
        cuts in proptest::collection::vec(0usize..4096, 0..6),
        pending in 1usize..6,
        seed in 1u64..u64::MAX,
    ) {
        let (calls, answers) = calls_of(&payloads);
        let got = exchange(&mut front::<false>(pending), &calls, &cuts, seed);
        proptest::prop_assert_eq!(got, answers);
    }

    #[test]
    fn every_answer_reaches_its_caller_once_in_any_order(
        payloads in proptest::collection::vec(proptest::collection::vec(0u8..255, 0..40), 1..24),
        cuts in proptest::collection::vec(0usize..4096, 0..6),
        pending in 1usize..6,
        seed in 1u64..u64::MAX,
    ) {
        let (calls, mut answers) = calls_of(&payloads);
        let mut got = exchange(&mut front::<true>(pending), &calls, &cuts, seed);
        got.sort();
        answers.sort();
        proptest::prop_assert_eq!(got, answers);
    }
}
