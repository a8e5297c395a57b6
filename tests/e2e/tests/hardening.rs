//! Hardening on the real Envoy 1.40: clients, loads and servers that must not kill the VM,
//! cross wires or lose a call (issue 8). MiniRPC is the protocol here because its test server
//! can misbehave on request; the Thrift and Dubbo suites run the same bridge with third-party
//! peers. The scenarios that do not depend on the build run on every engine
//! (`wasm::<name>`, `native::<name>`, `mix::<name>`); the VM's own failure and the wasm label
//! limiter are wasm-only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use meltemi_e2e::bootstrap::{self, Engine};
use meltemi_e2e::envoy::Envoy;
use meltemi_e2e::minirpc_peer::{encode, read_frame, request, Client, Deployment};
use meltemi_e2e::workspace;
use minirpc::kind;
use serde_json::json;

const MIB: usize = 1 << 20;

/// A deployment whose VM may hold `budget` bytes, frames up to 8 MiB.
fn with_budget(engine: Engine, name: &str, budget: usize) -> Deployment {
    Deployment::start_on_with_front(
        engine,
        name,
        Some(json!({"limits": {
            "max_frame_bytes": 8 * MIB,
            "vm_buffer_budget_bytes": budget,
        }})),
    )
}

fn refused(s: &Deployment, reason: &str) -> f64 {
    s.envoy.prom_sum(
        "meltemi_refused_total",
        &[("protocol", "minirpc"), ("reason", reason)],
    )
}

/// A healthy client gets its answer on the (only) worker.
fn healthy_call_succeeds(s: &Deployment) {
    let mut c = Client::connect(s.port);
    c.send(&request(1, "sayHello", &[], b"still here"));
    let r = c
        .recv()
        .unwrap_or_else(|e| panic!("healthy call failed: {e}\n{}", s.envoy.log()));
    assert_eq!(
        (r.kind, r.id, String::from_utf8_lossy(&r.payload).as_ref()),
        (kind::RESPONSE, 1, "v1:still here"),
        "{}",
        s.envoy.log()
    );
}

/// The MiniRPC header of a request whose body will be `body_len` bytes.
fn big_request_head(id: u64, body_len: usize) -> (Vec<u8>, usize) {
    let full = request(id, "echo", &[], b"");
    let md_len = full.len() - 16;
    let mut head = full.clone();
    let total_body = md_len + body_len;
    head[12..16].copy_from_slice(&(total_body as u32).to_be_bytes());
    (head, body_len)
}

fn partial_frames_over_the_vm_budget_close_only_their_connections(engine: Engine) {
    // Twice the budget in partial 7 MiB frames: the VM refuses the connections that would pass
    // it, keeps the others, and keeps serving.
    let budget = 32 * MIB;
    let s = with_budget(engine, "budget-partial", budget);
    let mut attackers = Vec::new();
    for i in 0..10 {
        let mut c = workspace_connect(s.port);
        let (head, body) = big_request_head(100 + i, 7 * MIB);
        c.write_all(&head).unwrap();
        // All but the last byte: the frame never completes.
        let chunk = vec![b'z'; body - 1];
        let _ = c.write_all(&chunk);
        attackers.push(c);
    }
    let want = 1.0;
    let got = wait_for(|| refused(&s, "vm_buffer_budget") >= want);
    assert!(
        got,
        "no vm_buffer_budget refusal:\n{}",
        s.envoy.prometheus()
    );
    healthy_call_succeeds(&s);
    let closed = attackers.iter().filter(|c| is_closed(c)).count();
    assert!(
        (1..10).contains(&closed),
        "{closed} of 10 attackers closed: some must be refused, others kept"
    );
    drop(attackers);
    healthy_call_succeeds(&s);
}

fn concurrent_large_calls_over_the_budget_fail_alone_and_never_cross(engine: Engine) {
    // Ten legitimate 7 MiB calls at once, twice the budget: each either gets its own answer, its
    // own error reply or a closed connection; afterwards the worker serves normally.
    let s = with_budget(engine, "budget-large", 32 * MIB);
    let port = s.port;
    let threads: Vec<_> = (0..10u64)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = workspace_connect(port);
                let payload = vec![b'a' + i as u8; 7 * MIB];
                let frame = request(i + 1, "echo", &[], &payload);
                if c.write_all(&frame).is_err() {
                    return None;
                }
                match read_frame(&mut c) {
                    // Refused at the back: the protocol's error reply, to this caller.
                    Ok(f) if f.kind == kind::ERROR => {
                        assert_eq!(f.id, i + 1, "an error reached another caller");
                        Some(false)
                    }
                    Ok(f) => {
                        assert_eq!(f.id, i + 1, "an answer reached another caller");
                        assert_eq!(f.kind, kind::RESPONSE);
                        assert_eq!(&f.payload[..3], b"v1:");
                        assert!(f.payload[3..].iter().all(|b| *b == b'a' + i as u8));
                        assert_eq!(f.payload.len(), 3 + 7 * MIB);
                        Some(true)
                    }
                    Err(_) => Some(false),
                }
            })
        })
        .collect();
    // Every caller got its own answer, its own error reply or a closed connection (the
    // assertions in the threads); how many succeed depends on timing and is not asserted.
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    eprintln!("large calls: {results:?}");
    assert!(
        refused(&s, "vm_buffer_budget") >= 1.0,
        "twice the budget must be refused somewhere:\n{}",
        s.envoy.prometheus()
    );
    healthy_call_succeeds(&s);
}

fn clients_that_never_read_are_back_pressured_and_the_worker_keeps_serving(engine: Engine) {
    // Over HTTP/1.1 a connection holds one call upstream at a time.
    let s = with_budget(engine, "noread", 64 * MIB);
    twenty_clients_never_read(&s, 256.0, 1);
}

fn over_http2_clients_that_never_read_leave_the_cluster_to_others(engine: Engine) {
    // Over HTTP/2 every call of a connection is a stream of its own, and a stream whose
    // answer the client never reads keeps its upstream connection: without a per-connection
    // bound (`max_concurrent_streams`, default 32) these twenty clients held 1,024 calls
    // upstream at once, the cluster's whole circuit breaker (Envoy's default), and a healthy
    // call on another connection failed in 3 of 4 runs; with it, at most 20 × 32.
    let s = Deployment::start_on_with_front(
        engine,
        "noread-h2",
        Some(json!({"hcm_protocol": "http2", "limits": {
            "max_frame_bytes": 8 * MIB,
            "max_pending_requests": 256,
            "vm_buffer_budget_bytes": 64 * MIB,
        }})),
    );
    twenty_clients_never_read(&s, 32.0, 32);
}

/// Twenty clients pipeline calls and never read an answer. Envoy stops reading them once
/// their answers fill its write buffers; the VM holds at most their limits (`per_client`
/// calls in flight each, `upstream_per_client` of them upstream at once), and a healthy
/// client is served after.
fn twenty_clients_never_read(s: &Deployment, per_client: f64, upstream_per_client: u64) {
    let port = s.port;
    let mut writers = Vec::new();
    for i in 0..20u64 {
        writers.push(std::thread::spawn(move || {
            let c = workspace_connect(port);
            c.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
            let batch: Vec<u8> = (0..1000u64)
                .flat_map(|n| request(i * 1_000_000 + n, "echo", &[], &[b'q'; 200]))
                .collect();
            let mut sent = 0usize;
            let deadline = Instant::now() + Duration::from_secs(6);
            let mut c = c;
            while Instant::now() < deadline {
                match c.write(&batch) {
                    Ok(n) => sent += n,
                    Err(_) => break,
                }
            }
            (c, sent)
        }));
    }
    // What the attackers hold of the cluster while they push: its active requests, sampled.
    let mut most_upstream = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        most_upstream = most_upstream.max(s.envoy.stat("cluster.demo_v1.upstream_rq_active"));
        std::thread::sleep(Duration::from_millis(10));
    }
    let attackers: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let pushed: usize = attackers.iter().map(|(_, n)| *n).sum();
    eprintln!("twenty clients that never read: {pushed} bytes pushed, at most {most_upstream} calls upstream");
    assert!(
        most_upstream > 0 && most_upstream <= 20 * upstream_per_client,
        "{most_upstream} calls upstream at once: past {upstream_per_client} per client connection"
    );
    // Back-pressure: far less than the 6 s a free-flowing connection would take.
    assert!(
        pushed < 20 * 64 * MIB,
        "{pushed} bytes pushed: Envoy kept reading clients that never read"
    );
    healthy_call_succeeds(s);
    let active = s
        .envoy
        .prom_sum("meltemi_active_requests", &[("protocol", "minirpc")]);
    assert!(
        active <= 20.0 * per_client,
        "{active} requests in flight: past {per_client} per client connection"
    );
    drop(attackers);
    healthy_call_succeeds(s);
}

fn a_deep_pipeline_is_answered_in_order_without_refusals(engine: Engine) {
    // 20,000 calls in one write with room for 4 at a time, then 500 × 30 kB: all answered, in
    // order, none refused (the front stops reading instead).
    let s = Deployment::start_on_with_front(
        engine,
        "deep",
        Some(json!({"limits": {"max_pending_requests": 4}})),
    );
    let mut c = Client::connect(s.port);
    let n = 20_000u64;
    let batch: Vec<u8> = (1..=n)
        .flat_map(|i| request(i, "echo", &[], format!("p{i}").as_bytes()))
        .collect();
    let sender = {
        let mut w = c_clone(&c);
        std::thread::spawn(move || w.write_all(&batch).unwrap())
    };
    for i in 1..=n {
        let r = c.recv().expect("answer");
        assert_eq!((r.id, r.payload), (i, format!("v1:p{i}").into_bytes()));
    }
    sender.join().unwrap();
    let big: Vec<u8> = (1..=500u64)
        .flat_map(|i| request(n + i, "echo", &[], &vec![b'x'; 30_000]))
        .collect();
    let sender = {
        let mut w = c_clone(&c);
        std::thread::spawn(move || w.write_all(&big).unwrap())
    };
    for i in 1..=500u64 {
        let r = c.recv().expect("answer");
        assert_eq!((r.id, r.payload.len()), (n + i, 30_003));
    }
    sender.join().unwrap();
    assert_eq!(
        s.envoy.prom_sum(
            "meltemi_local_replies_total",
            &[("protocol", "minirpc"), ("kind", "over_limit")]
        ),
        0.0
    );
}

fn a_duplicate_or_wrong_answer_never_reaches_another_caller(engine: Engine) {
    let s = Deployment::start_on(engine, "stray");
    // `dup` is answered, then answered again 100 ms later on the same pooled server connection.
    let mut a = Client::connect(s.port);
    let r = a.call(&request(7, "dup", &[], b""));
    assert_eq!(
        (r.kind, r.id, r.payload),
        (kind::RESPONSE, 7, b"dup".to_vec())
    );
    // The next call (another client) is likely to ride the same server connection.
    let mut b = Client::connect(s.port);
    let r = b.call(&request(8, "sayHello", &[], b"mine"));
    assert_eq!(r.id, 8, "an answer for another request reached this caller");
    assert_ne!(
        r.payload, b"dup",
        "the stale duplicate reached another caller"
    );
    // An answer with another request id is dropped and its caller gets an error, not a hang.
    let r = b.call(&request(9, "wrongid", &[], b""));
    assert_eq!((r.kind, r.id), (kind::ERROR, 9), "{:?}", r);
    let r = b.call(&request(10, "sayHello", &[], b"after"));
    assert_eq!((r.id, r.payload), (10, b"v1:after".to_vec()));
    if engine != Engine::Mix {
        // A native back's own counters are exported through a native front's configuration.
        let stray = s.envoy.wait_prom(
            "meltemi_stray_answers_total",
            &[("protocol", "minirpc")],
            1.0,
        );
        assert!(stray >= 1.0, "{}", s.envoy.prometheus());
    }
}

fn refused_one_way_calls_are_dropped_never_answered(engine: Engine) {
    let s = Deployment::start_on_with_front(
        engine,
        "oneway-refused",
        Some(json!({"limits": {"max_metadata_entries": 2}})),
    );
    let mut c = Client::connect(s.port);
    let fat = encode(
        kind::ONEWAY,
        1,
        &[("service", "demo"), ("method", "notify"), ("x", "y")],
        b"",
    );
    // A refused one-way, then a call: the first frame back answers the call.
    c.send(&[fat.clone(), fat, request(2, "sayHello", &[], b"next")].concat());
    let r = c.recv().unwrap();
    assert_eq!(
        (r.kind, r.id, r.payload),
        (kind::RESPONSE, 2, b"v1:next".to_vec())
    );
    assert_eq!(
        s.envoy.wait_prom(
            "meltemi_responses_total",
            &[("protocol", "minirpc"), ("outcome", "dropped")],
            2.0
        ),
        2.0
    );
}

#[test]
fn label_values_past_the_limit_become_other_and_named_ones_keep_metrics() {
    let s = Deployment::start_with_front(
        "labels",
        Some(json!({
            "limits": {"max_method_labels": 20},
            "known_methods": ["sayHello"]
        })),
    );
    let mut c = Client::connect(s.port);
    for i in 0..100u64 {
        let r = c.call(&request(i, &format!("random{i}"), &[], b""));
        assert_eq!(r.kind, kind::ERROR, "no route");
    }
    let r = c.call(&request(500, "sayHello", &[], b"x"));
    assert_eq!(r.kind, kind::RESPONSE);
    let hello = s.envoy.wait_prom(
        "meltemi_requests_total",
        &[("protocol", "minirpc"), ("method", "sayHello")],
        1.0,
    );
    assert_eq!(hello, 1.0, "a named method keeps its own metrics");
    let other = s.envoy.prom_sum(
        "meltemi_requests_total",
        &[("protocol", "minirpc"), ("method", "other")],
    );
    assert_eq!(other, 80.0, "100 random methods, 20 admitted");
    let overflow = s.envoy.prom_sum(
        "meltemi_label_overflow_total",
        &[("protocol", "minirpc"), ("label", "method")],
    );
    assert!(overflow >= 80.0, "overflow counted: {overflow}");
}

#[test]
fn a_failed_vm_is_reloaded_for_the_next_connections() {
    // A module that traps on purpose (the harness's echo filter, on `PANIC`), configured the way
    // Meltemi's filters are: the next connection gets a fresh VM instead of a reset.
    let wasm =
        workspace::build_standalone_wasm("tests/wasm-host/testdata/echo-filter", "echo_filter");
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let (port, admin) = (workspace::free_port(), workspace::free_port());
    let config = bootstrap::plain_wasm_proxy(&wasm, port, admin, echo_port);
    let envoy = Envoy::start("vm-reload", &config, admin);
    let roundtrip = |line: &[u8]| -> Option<Vec<u8>> {
        let mut c = workspace_connect(port);
        c.write_all(line).ok()?;
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while !out.ends_with(b"\n") {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        Some(out)
    };
    assert_eq!(roundtrip(b"hello\n").as_deref(), Some(&b">> HELLO\n"[..]));
    assert_eq!(
        roundtrip(b"PANIC\n"),
        None,
        "the trap closes its connection"
    );
    let back = wait_for(|| roundtrip(b"again\n").as_deref() == Some(&b">> AGAIN\n"[..]));
    assert!(back, "the VM did not come back:\n{}", envoy.log());
    assert!(
        envoy.stat("wasm.envoy.wasm.runtime.v8.created") >= 2 || envoy.log().contains("reload"),
        "a second VM was created"
    );
}

// ---------------------------------------------------------------------------------------------

fn workspace_connect(port: u16) -> TcpStream {
    meltemi_e2e::load::connect(port)
}

fn c_clone(c: &Client) -> TcpStream {
    c.stream().try_clone().unwrap()
}

fn is_closed(c: &TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut b = [0u8; 1];
    let mut r: &TcpStream = c;
    match r.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => {
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut
        }
    }
}

/// Polls `f` for up to 10 s.
fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn a_service_name_that_is_no_valid_authority_fails_alone(engine: Engine) {
    // A client-chosen service name with characters no HTTP authority may hold: Envoy must not
    // answer 400 and close the connection with the calls pipelined behind it.
    let s = Deployment::start_on(engine, "authority");
    let mut c = Client::connect(s.port);
    let odd = encode(
        kind::REQUEST,
        1,
        &[("service", "demo x/é@{}"), ("method", "sayHello")],
        b"",
    );
    c.send(&[odd, request(2, "sayHello", &[], b"next")].concat());
    let r = c.recv().unwrap();
    assert_eq!((r.kind, r.id), (kind::ERROR, 1), "no route for that name");
    let r = c.recv().unwrap();
    assert_eq!(
        (r.kind, r.id, r.payload),
        (kind::RESPONSE, 2, b"v1:next".to_vec())
    );
}

fn calls_held_back_are_handed_even_when_envoy_answers_everything_at_once(engine: Engine) {
    // With room for 2, fifty calls that Envoy answers itself (no route: a local reply, written
    // before any further read) and one routed call, in one write: no read event follows the
    // local replies, so the front's timer must hand the calls that wait.
    let s = Deployment::start_on_with_front(
        engine,
        "timer",
        Some(json!({"limits": {"max_pending_requests": 2}})),
    );
    let mut c = Client::connect(s.port);
    let mut batch: Vec<u8> = (1..=50u64)
        .flat_map(|i| request(i, &format!("nope{i}"), &[], b""))
        .collect();
    batch.extend(request(51, "sayHello", &[], b"last"));
    c.send(&batch);
    for i in 1..=50u64 {
        let r = c.recv().expect("local reply");
        assert_eq!((r.kind, r.id), (kind::ERROR, i));
    }
    let r = c.recv().expect("routed answer");
    assert_eq!((r.id, r.payload), (51, b"v1:last".to_vec()));
}

/// Issue 8 item 10: a server that closes its connection after every answer. Each call goes to
/// a pooled connection the server may have closed a moment ago; none may fail.
fn a_server_that_closes_after_every_answer_loses_no_call(engine: Engine) {
    let s = Deployment::start_on_with_options(engine, "once", None, true);
    let failures: Vec<String> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..3u64)
            .map(|c| {
                let port = s.port;
                scope.spawn(move || {
                    let mut client = Client::connect(port);
                    let mut failed = Vec::new();
                    for i in 0..100u64 {
                        let id = c * 1000 + i;
                        let r = client.call(&request(id, "once", &[], b""));
                        if (r.kind, r.id, r.payload.as_slice()) != (kind::RESPONSE, id, b"once") {
                            failed.push(format!(
                                "call {id}: kind {} {}",
                                r.kind,
                                String::from_utf8_lossy(&r.payload)
                            ));
                        }
                    }
                    failed
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of 300 calls failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

meltemi_e2e::on_every_engine!(
    a_server_that_closes_after_every_answer_loses_no_call,
    partial_frames_over_the_vm_budget_close_only_their_connections,
    concurrent_large_calls_over_the_budget_fail_alone_and_never_cross,
    clients_that_never_read_are_back_pressured_and_the_worker_keeps_serving,
    over_http2_clients_that_never_read_leave_the_cluster_to_others,
    a_deep_pipeline_is_answered_in_order_without_refusals,
    a_duplicate_or_wrong_answer_never_reaches_another_caller,
    refused_one_way_calls_are_dropped_never_answered,
    a_service_name_that_is_no_valid_authority_fails_alone,
    calls_held_back_are_handed_even_when_envoy_answers_everything_at_once,
);
