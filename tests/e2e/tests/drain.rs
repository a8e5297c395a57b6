//! Closing a connection loses no call: Envoy draining it (issue 8, item 9), on the real
//! Envoy 1.40 and every engine, and a client half-closing it (native front).
//!
//! Envoy drains a client connection through its HTTP connection manager: over HTTP/1.1 HCM
//! marks an answer `connection: close` and closes the connection after it (hot restart,
//! listener update, `max_requests_per_connection`). The calls the client pipelined behind that
//! answer never run; before the fix the client only saw the connection close, so it could not
//! know whether they ran. Now each gets the protocol's `Unavailable` error reply ahead of the
//! close, and a Dubbo client the provider's read-only event, last:
//! - `a_closing_connection_refuses_the_calls_behind_its_last_answer`: HCM serves three calls
//!   per connection; a client pipelines eight. Three answers, then five error replies naming
//!   the drain, then the close.
//! - `a_hot_restart_under_load_loses_no_call`: `envoy --restart-epoch 1` while clients keep
//!   calls in flight on long-lived connections (bursts of four calls in one write). The old
//!   epoch drains every connection; each call of a burst Envoy read is answered by its own
//!   server answer or refused — none vanishes — and a burst written after the connection's
//!   last answer, into a connection already closing, is resent on a new one (as any client
//!   must: HTTP/1.1 HCM stops reading while it serves a pipelined call, so such a call may sit
//!   unread in the socket when Envoy closes it).
//! - `a_closing_dubbo_connection_sends_the_read_only_event_last`: the exact frames a raw Dubbo
//!   client reads; `real_dubbo_consumers_read_past_the_read_only_event`: the four real
//!   consumers still get the answer written with it.
//! - `a_half_closed_client_gets_every_answer_on_the_native_front`: a client that sends its
//!   calls and shuts down its sending side reads every answer, then the close (the native
//!   front enables half-close; proxy-wasm cannot, so on the wasm front Envoy closes on the
//!   FIN). In the end every call succeeded
//!   exactly once, none mismatched, and the new epoch served the reconnected clients.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meltemi_e2e::bootstrap::{route_action, Bridge, Destination, Engine};
use meltemi_e2e::dubbo_peer::{self, ConsumerKind, ProviderKind};
use meltemi_e2e::envoy::Envoy;
use meltemi_e2e::minirpc_peer::{self, Frame, Server};
use meltemi_e2e::workspace;
use minirpc::kind;
use serde_json::{json, Value};

/// The protocol a bridge carries: its codec crate, dynamic module and metric label values.
struct Protocol {
    name: &'static str,
    package: &'static str,
    module: &'static str,
    service: &'static str,
    method: &'static str,
}

const MINIRPC: Protocol = Protocol {
    name: "minirpc",
    package: "minirpc",
    module: "minirpc",
    service: "demo",
    method: "echo",
};

const DUBBO: Protocol = Protocol {
    name: "dubbo",
    package: "meltemi-dubbo",
    module: "meltemi_dubbo",
    service: dubbo_peer::ECHO,
    method: "echo",
};

/// A bridge for `protocol` on `engine` sending every call to the server on `server_port`,
/// its front's HCM closing each connection after `max_requests` calls when given.
fn bridge(
    engine: Engine,
    protocol: &Protocol,
    server_port: u16,
    max_requests: Option<u64>,
) -> (String, u16, u16) {
    let wasm = workspace::build_for(engine, protocol.package);
    let (port, admin) = (workspace::free_port(), workspace::free_port());
    let rendered = Bridge {
        protocol: protocol.name,
        wasm: &wasm,
        engine,
        module: protocol.module,
        front: json!({
            "limits": {"max_pending_requests": 64},
            "known_services": [protocol.service],
            "known_methods": [protocol.method],
        }),
        back: json!({}),
        listen_port: port,
        admin_port: admin,
        destinations: vec![Destination {
            cluster: "v1".into(),
            port: server_port,
        }],
        virtual_hosts: vec![json!({
            "name": "all",
            "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": route_action("v1")}],
        })],
        http_filters: vec![],
    }
    .render();
    let Some(max) = max_requests else {
        return (rendered, port, admin);
    };
    let mut bootstrap: Value = serde_json::from_str(&rendered).expect("rendered bootstrap");
    let hcm = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][1];
    assert_eq!(
        hcm["name"], "envoy.filters.network.http_connection_manager",
        "the front's HCM"
    );
    hcm["typed_config"]["common_http_protocol_options"] =
        json!({"max_requests_per_connection": max});
    (bootstrap.to_string(), port, admin)
}

/// How one call ended on its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The server's answer, with the payload the server echoed.
    Answered(Vec<u8>),
    /// The protocol's error reply, with its `error` kind and detail.
    Refused(String, String),
}

fn outcome(frame: &Frame) -> Outcome {
    if frame.kind == kind::ERROR {
        Outcome::Refused(
            frame.headers.get("error").unwrap_or("").to_owned(),
            String::from_utf8_lossy(&frame.payload).into_owned(),
        )
    } else {
        Outcome::Answered(frame.payload.clone())
    }
}

/// Reads frames until the connection closes (or `limit` passes).
fn read_until_close(stream: &mut TcpStream, limit: Duration) -> Vec<Frame> {
    stream.set_read_timeout(Some(limit)).expect("timeout");
    let mut frames = Vec::new();
    while let Ok(f) = minirpc_peer::read_frame(stream) {
        frames.push(f);
    }
    frames
}

#[test]
fn a_closing_connection_refuses_the_calls_behind_its_last_answer() {
    let server = Server::start("v1");
    for engine in Engine::ALL {
        let (config, port, admin) = bridge(engine, &MINIRPC, server.port, Some(3));
        let envoy = Envoy::start(&format!("drain-close-{}", engine.name()), &config, admin);
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let calls: Vec<u8> = (1..=8u64)
            .flat_map(|id| minirpc_peer::request(id, "echo", &[], format!("call-{id}").as_bytes()))
            .collect();
        stream.write_all(&calls).expect("pipeline 8 calls");
        let frames = read_until_close(&mut stream, Duration::from_secs(10));
        let got: Vec<(u64, Outcome)> = frames.iter().map(|f| (f.id, outcome(f))).collect();
        let answered: Vec<(u64, Outcome)> = (1..=3u64)
            .map(|id| (id, Outcome::Answered(format!("v1:call-{id}").into_bytes())))
            .collect();
        assert_eq!(
            got.get(..3),
            Some(answered.as_slice()),
            "{engine:?}: the three calls HCM served, each its own answer: {got:?}"
        );
        let refused: Vec<u64> = got[3..]
            .iter()
            .filter(|(_, o)| {
                matches!(o, Outcome::Refused(kind, detail)
                    if kind == "unavailable" && detail.contains("draining"))
            })
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(
            refused,
            [4, 5, 6, 7, 8],
            "{engine:?}: every call behind the last answer refused, in order, before the close: {got:?}"
        );
        // The close follows: nothing more, and the server never saw the refused calls.
        let mut b = [0u8; 1];
        assert!(
            matches!(stream.read(&mut b), Ok(0) | Err(_)),
            "{engine:?}: closed"
        );
        assert_eq!(
            envoy.stat("cluster.v1.upstream_rq_total"),
            3,
            "{engine:?}: only the served calls reached the server"
        );
    }
}

/// One client's record over a run.
#[derive(Default)]
struct Ledger {
    /// Calls issued (each resent under the same id until answered).
    issued: u64,
    /// How many times each call was answered with its own payload.
    succeeded: BTreeMap<u64, u32>,
    /// Answers carrying another call's payload or id.
    mismatched: u64,
    /// Attempts refused with the protocol's error reply (then resent).
    refused: u64,
    /// Attempts of a burst Envoy read and then neither answered nor refused: lost.
    lost: u64,
    /// Bursts written after the connection's last answer, into a connection already closing
    /// (resent on the next connection).
    raced: u64,
    /// Connections the proxy closed.
    closed: u64,
}

/// Sends bursts of `depth` calls in one write (Envoy reads a burst whole) and reads their
/// answers, on one connection after another, until `stop`; then finishes what it issued.
/// Every call is resent until its own answer arrives.
fn client(port: u16, depth: usize, tag: u64, stop: &AtomicBool) -> Ledger {
    let mut ledger = Ledger::default();
    let mut pending: Vec<u64> = Vec::new();
    let mut next_id = tag << 32;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !(stop.load(Ordering::SeqCst) && pending.is_empty()) {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        loop {
            let mut burst = Vec::new();
            while burst.len() < depth {
                match pending.pop() {
                    Some(id) => burst.push(id),
                    None if !stop.load(Ordering::SeqCst) => {
                        next_id += 1;
                        ledger.issued += 1;
                        burst.push(next_id);
                    }
                    None => break,
                }
            }
            if burst.is_empty() {
                break;
            }
            let bytes: Vec<u8> = burst
                .iter()
                .flat_map(|id| {
                    minirpc_peer::request(*id, "echo", &[], format!("call-{id}").as_bytes())
                })
                .collect();
            let _ = stream.write_all(&bytes);
            let mut answered = 0usize;
            while answered < burst.len() {
                let Ok(frame) = minirpc_peer::read_frame(&mut stream) else {
                    break;
                };
                if !burst.contains(&frame.id) {
                    ledger.mismatched += 1;
                    continue;
                }
                answered += 1;
                match outcome(&frame) {
                    Outcome::Answered(p) if p == format!("v1:call-{}", frame.id).into_bytes() => {
                        *ledger.succeeded.entry(frame.id).or_default() += 1;
                    }
                    Outcome::Answered(_) => ledger.mismatched += 1,
                    Outcome::Refused(..) => {
                        ledger.refused += 1;
                        pending.push(frame.id);
                    }
                }
            }
            if answered == burst.len() {
                continue;
            }
            // The connection closed under the burst.
            ledger.closed += 1;
            let unanswered = burst.len() - answered;
            if answered == 0 {
                // Written after the connection's last answer: it was already closing.
                ledger.raced += 1;
            } else {
                // Part of the burst was served, so Envoy had read all of it: the rest was owed
                // an answer or a refusal.
                ledger.lost += unanswered as u64;
            }
            for id in burst {
                if !ledger.succeeded.contains_key(&id) && !pending.contains(&id) {
                    pending.push(id);
                }
            }
            break;
        }
        let _ = stream.shutdown(Shutdown::Both);
    }
    ledger
}

#[test]
fn a_hot_restart_under_load_loses_no_call() {
    let server = Server::start("v1");
    for engine in [Engine::Wasm, Engine::Native] {
        let (config, port, admin) = bridge(engine, &MINIRPC, server.port, None);
        let name = format!("drain-hot-{}", engine.name());
        // The old epoch drains for 2 s and exits 4 s after the new one started.
        let old = Envoy::start_hot_restartable(&format!("{name}-0"), &config, admin, 2, 4);
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..4u64)
            .map(|tag| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || client(port, 4, tag + 1, &stop))
            })
            .collect();
        // Load on the old epoch first.
        let started = Instant::now();
        while old.stat("cluster.v1.upstream_rq_total") < 2_000 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{engine:?}: no load"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut old = old;
        let new = old.hot_restart(&format!("{name}-1"));
        let exited = old.wait_exit(Duration::from_secs(20));
        assert!(
            exited.is_some(),
            "{engine:?}: the old epoch exits after its drain"
        );
        // The clients reconnected to the new epoch: let it serve some load, then stop.
        let served = Instant::now();
        while new.stat("cluster.v1.upstream_rq_total") < 1_000 {
            assert!(
                served.elapsed() < Duration::from_secs(30),
                "{engine:?}: the new epoch serves no calls"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::SeqCst);
        let ledgers: Vec<Ledger> = clients
            .into_iter()
            .map(|c| c.join().expect("client thread"))
            .collect();
        let total = |f: &dyn Fn(&Ledger) -> u64| ledgers.iter().map(f).sum::<u64>();
        let issued = total(&|l| l.issued);
        let succeeded = total(&|l| l.succeeded.len() as u64);
        let twice = total(&|l| l.succeeded.values().filter(|n| **n > 1).count() as u64);
        let (refused, lost, raced, closed, mismatched) = (
            total(&|l| l.refused),
            total(&|l| l.lost),
            total(&|l| l.raced),
            total(&|l| l.closed),
            total(&|l| l.mismatched),
        );
        eprintln!(
            "{engine:?}: {issued} calls, {succeeded} succeeded, {refused} refused during the \
             drain, {raced} written after their connection's last answer, {lost} lost, {closed} \
             connections closed by the drain"
        );
        assert!(
            closed >= 4,
            "{engine:?}: the drain closed every client's connection ({closed})"
        );
        assert_eq!(mismatched, 0, "{engine:?}: answers to other calls");
        assert_eq!(
            lost, 0,
            "{engine:?}: calls of a burst Envoy had read got neither an answer nor a refusal"
        );
        assert_eq!(twice, 0, "{engine:?}: a call answered twice");
        assert_eq!(
            succeeded, issued,
            "{engine:?}: every call succeeded in the end"
        );
    }
}

/// Dubbo's going-away signal on the wire: HCM serves two calls per connection; a raw client
/// pipelines three. It reads both answers (HCM marked the second `connection: close`),
/// SERVICE_ERROR (70) for the third, then the provider's read-only event (a one-way event
/// request, body the Hessian string "R"), last, then the close.
#[test]
fn a_closing_dubbo_connection_sends_the_read_only_event_last() {
    if !dubbo_peer::peers_available() {
        return;
    }
    let provider = dubbo_peer::Provider::start(ProviderKind::Java, "v1");
    for engine in Engine::ALL {
        let (config, port, admin) = bridge(engine, &DUBBO, provider.port, Some(2));
        let _envoy = Envoy::start(&format!("drain-dubbo-{}", engine.name()), &config, admin);
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let calls: Vec<u8> = (1..=3u64)
            .flat_map(|id| {
                dubbo_peer::request_frame(id, dubbo_peer::ECHO, "echo", &format!("c{id}"))
            })
            .collect();
        stream.write_all(&calls).expect("pipeline 3 calls");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut frames = Vec::new();
        while let Ok(f) = dubbo_peer::read_raw_frame(&mut stream) {
            frames.push((f.flags, f.status, f.id, f.body));
        }
        let shape: Vec<(u8, u8, u64)> = frames.iter().map(|(f, s, i, _)| (*f, *s, *i)).collect();
        // Response frames: flags 0x02 (Hessian2), status 20 OK / 70 SERVICE_ERROR.
        assert_eq!(
            shape,
            [(0x02, 20, 1), (0x02, 20, 2), (0x02, 70, 3), (0xa2, 0, 0)],
            "{engine:?}: two answers, the refusal, the read-only event: {frames:02x?}"
        );
        assert_eq!(
            frames[3].3,
            [0x01, b'R'],
            "{engine:?}: the event body is \"R\""
        );
        let refusal = String::from_utf8_lossy(&frames[2].3);
        assert!(refusal.contains("draining"), "{engine:?}: {refusal}");
    }
}

/// Real consumers tolerate the read-only event: through a front that closes each connection
/// after two calls, every consumer's second call — answered in the same write as the event —
/// returns its value. (dubbo2.js stops decoding a read at any event frame until more bytes
/// come: with the event ahead of the answer, its second call timed out.)
#[test]
fn real_dubbo_consumers_read_past_the_read_only_event() {
    if !dubbo_peer::peers_available() {
        return;
    }
    let provider = dubbo_peer::Provider::start(ProviderKind::Java, "v1");
    let (config, port, admin) = bridge(Engine::Wasm, &DUBBO, provider.port, Some(2));
    let _envoy = Envoy::start("drain-dubbo-consumers", &config, admin);
    for consumer in ConsumerKind::ALL {
        let calls = [
            dubbo_peer::Call::new(dubbo_peer::ECHO, "echo", "first"),
            dubbo_peer::Call::new(dubbo_peer::ECHO, "echo", "second"),
        ];
        let run = dubbo_peer::run_consumer(consumer, port, &calls, &[], Duration::from_secs(60));
        let context = run.transcript();
        for (i, want) in ["first", "second"].iter().enumerate() {
            let value = run.outcomes[i].value(&context);
            assert!(
                value.contains(want),
                "{}: call {i} gave {value}\n{context}",
                consumer.name()
            );
        }
    }
}

#[test]
fn a_half_closed_client_gets_every_answer_on_the_native_front() {
    let server = Server::start("v1");
    let (config, port, admin) = bridge(Engine::Native, &MINIRPC, server.port, None);
    let envoy = Envoy::start("half-close-native", &config, admin);
    for calls in [1u64, 5] {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let bytes: Vec<u8> = (1..=calls)
            .flat_map(|id| minirpc_peer::request(id, "echo", &[], format!("half-{id}").as_bytes()))
            .collect();
        stream.write_all(&bytes).expect("calls");
        stream.shutdown(Shutdown::Write).expect("half-close");
        let frames = read_until_close(&mut stream, Duration::from_secs(10));
        let got: Vec<(u64, Outcome)> = frames.iter().map(|f| (f.id, outcome(f))).collect();
        let want: Vec<(u64, Outcome)> = (1..=calls)
            .map(|id| (id, Outcome::Answered(format!("v1:half-{id}").into_bytes())))
            .collect();
        assert_eq!(
            got, want,
            "{calls} calls, then FIN: every answer, then the close"
        );
    }
    // A FIN with nothing pending closes at once.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    idle.shutdown(Shutdown::Write).expect("half-close");
    assert!(read_until_close(&mut idle, Duration::from_secs(5)).is_empty());
    let mut b = [0u8; 1];
    assert!(
        matches!(idle.read(&mut b), Ok(0)),
        "closed by Envoy, not timed out"
    );
    assert_eq!(envoy.stat("cluster.v1.upstream_rq_total"), 6);
}
