//! MiniRPC through the real Envoy 1.40 on every engine (the built `minirpc.wasm` on both
//! sides, the `libminirpc.so` dynamic module on both sides, and the mix): per-request routing,
//! error replies, failures, limits and metrics as a client and Envoy's admin endpoint see them.
//! Each scenario runs as `wasm::<name>`, `native::<name>` and `mix::<name>`.

use std::sync::atomic::Ordering;
use std::thread::sleep;
use std::time::Duration;

use meltemi_e2e::bootstrap::Engine;
use meltemi_e2e::minirpc_peer::{encode, request, Client, Deployment};
use minirpc::kind;

fn setup(engine: Engine, name: &str) -> Deployment {
    Deployment::start_on(engine, name)
}

fn payload_of(f: &meltemi_e2e::minirpc_peer::Frame) -> String {
    String::from_utf8_lossy(&f.payload).into_owned()
}

fn one_connection_is_routed_per_request_by_method_and_metadata(engine: Engine) {
    let s = setup(engine, "routing");
    let mut c = Client::connect(s.port);
    let r = c.call(&request(1, "sayHello", &[], b"a"));
    assert_eq!(
        (r.kind, r.id, payload_of(&r).as_str()),
        (kind::RESPONSE, 1, "v1:a")
    );
    let r = c.call(&request(2, "sayBye", &[], b"b"));
    assert_eq!(
        (r.kind, r.id, payload_of(&r).as_str()),
        (kind::RESPONSE, 2, "v2:b")
    );
    let r = c.call(&request(3, "echo", &[("version", "v2")], b"c"));
    assert_eq!(payload_of(&r), "v2:c", "header match on metadata `version`");
    let r = c.call(&request(4, "echo", &[], b"d"));
    assert_eq!(payload_of(&r), "v1:d");

    // Pipelined: twenty requests in one write, alternating destinations, answered in order.
    let mut batch = Vec::new();
    for i in 0..20u64 {
        let method = if i % 2 == 0 { "sayHello" } else { "sayBye" };
        batch.extend(request(100 + i, method, &[], format!("p{i}").as_bytes()));
    }
    c.send(&batch);
    for i in 0..20u64 {
        let r = c.recv().expect("pipelined response");
        let tag = if i % 2 == 0 { "v1" } else { "v2" };
        assert_eq!((r.id, payload_of(&r)), (100 + i, format!("{tag}:p{i}")));
    }
    let labels = [
        ("protocol", "minirpc"),
        ("service", "demo"),
        ("method", "sayHello"),
    ];
    assert!(
        s.envoy.wait_prom("meltemi_requests_total", &labels, 11.0) >= 11.0,
        "{}",
        s.envoy.prometheus()
    );
    let ok = [
        ("protocol", "minirpc"),
        ("method", "sayBye"),
        ("outcome", "success"),
    ];
    assert!(s.envoy.wait_prom("meltemi_responses_total", &ok, 11.0) >= 11.0);
    assert!(
        s.envoy
            .wait_prom("meltemi_request_duration_us_count", &labels, 11.0)
            >= 11.0,
        "latency histogram"
    );
}

fn no_route_gets_a_protocol_error_reply_and_the_connection_lives_on(engine: Engine) {
    let s = setup(engine, "noroute");
    let mut c = Client::connect(s.port);
    let r = c.call(&request(7, "nope", &[], b"x"));
    assert_eq!((r.kind, r.id), (kind::ERROR, 7));
    assert_eq!(r.headers.get("error"), Some("route_not_found"));
    let r = c.call(&request(8, "echo", &[], b"y"));
    assert_eq!((r.kind, payload_of(&r).as_str()), (kind::RESPONSE, "v1:y"));
    let labels = [("protocol", "minirpc"), ("kind", "route_not_found")];
    assert_eq!(
        s.envoy
            .wait_prom("meltemi_local_replies_total", &labels, 1.0),
        1.0
    );
}

fn upstream_closing_mid_request_fails_only_that_request(engine: Engine) {
    let s = setup(engine, "crash");
    let mut c = Client::connect(s.port);
    let r = c.call(&request(1, "crash", &[], b""));
    assert_eq!((r.kind, r.id), (kind::ERROR, 1));
    assert_eq!(
        r.headers.get("error"),
        Some("unavailable"),
        "{}",
        payload_of(&r)
    );
    let r = c.call(&request(2, "echo", &[], b"after"));
    assert_eq!(payload_of(&r), "v1:after");
}

fn one_mebibyte_messages_and_one_byte_chunks(engine: Engine) {
    let s = setup(engine, "big");
    let mut c = Client::connect(s.port);
    let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i % 251) as u8).collect();
    let r = c.call(&request(1, "echo", &[], &big));
    assert_eq!(r.payload.len(), big.len() + 3);
    assert_eq!(&r.payload[3..], &big[..], "1 MiB payload intact");
    c.send_bytewise(&request(2, "sayBye", &[], b"tiny"));
    let r = c.recv().expect("bytewise response");
    assert_eq!((r.id, payload_of(&r).as_str()), (2, "v2:tiny"));
}

fn garbage_closes_only_its_connection_and_is_counted(engine: Engine) {
    let s = setup(engine, "garbage");
    let mut good = Client::connect(s.port);
    assert_eq!(
        payload_of(&good.call(&request(1, "echo", &[], b"before"))),
        "v1:before"
    );
    let mut bad = Client::connect(s.port);
    bad.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    assert!(bad.is_closed(), "garbage must close the connection");
    assert_eq!(
        payload_of(&good.call(&request(2, "echo", &[], b"after"))),
        "v1:after"
    );
    let labels = [("protocol", "minirpc"), ("role", "front")];
    assert_eq!(
        s.envoy
            .wait_prom("meltemi_decode_errors_total", &labels, 1.0),
        1.0
    );
}

fn heartbeats_are_answered_without_reaching_the_server(engine: Engine) {
    let s = setup(engine, "heartbeat");
    let mut c = Client::connect(s.port);
    let r = c.call(&encode(kind::PING, 42, &[], &[]));
    assert_eq!((r.kind, r.id), (kind::PONG, 42));
    assert_eq!(payload_of(&c.call(&request(43, "echo", &[], b"z"))), "v1:z");
    assert_eq!(
        s.v1.pings.load(Ordering::SeqCst) + s.v2.pings.load(Ordering::SeqCst),
        0
    );
    if engine == Engine::Native {
        // The native front answers the ping itself: HCM saw only the echo.
        assert_eq!(s.envoy.stat("http.minirpc.downstream_rq_total"), 1);
    }
}

fn one_way_calls_are_delivered_and_never_answered(engine: Engine) {
    let s = setup(engine, "oneway");
    let mut c = Client::connect(s.port);
    for i in 0..3u64 {
        c.send(&encode(
            kind::ONEWAY,
            10 + i,
            &[("service", "demo"), ("method", "notify")],
            b"fire",
        ));
    }
    let r = c.call(&request(20, "count", &[], b""));
    assert_eq!(
        (r.kind, r.id),
        (kind::RESPONSE, 20),
        "the first frame back answers the two-way call"
    );
    assert_eq!(payload_of(&r), "3");
    assert_eq!(s.v1.oneways.load(Ordering::SeqCst), 3);
}

fn route_mutation_reaches_the_server_in_the_frame(engine: Engine) {
    let s = setup(engine, "mutation");
    let mut c = Client::connect(s.port);
    let r = c.call(&request(1, "tagged", &[("env", "prod")], b"m"));
    assert_eq!(r.headers.get("server"), Some("v1"));
    assert_eq!(
        r.headers.get("env"),
        Some("canary"),
        "mutation replaced the attachment: {:?}",
        r.headers
    );
    sleep(Duration::from_millis(10));
}

#[test]
fn rendered_bootstrap_bridges_like_the_hand_written_one() {
    use meltemi_e2e::bootstrap::{method_route, Bridge, Destination};
    use meltemi_e2e::{envoy::Envoy, minirpc_peer::Server, workspace};
    let wasm = workspace::build_wasm("minirpc");
    let (a, b) = (Server::start("a"), Server::start("b"));
    let (port, admin) = (workspace::free_port(), workspace::free_port());
    let config = Bridge {
        protocol: "minirpc",
        wasm: &wasm,
        engine: meltemi_e2e::bootstrap::Engine::Wasm,
        module: "minirpc",
        front: serde_json::json!({}),
        back: serde_json::json!({}),
        listen_port: port,
        admin_port: admin,
        destinations: vec![
            Destination {
                cluster: "a".into(),
                port: a.port,
            },
            Destination {
                cluster: "b".into(),
                port: b.port,
            },
        ],
        virtual_hosts: vec![serde_json::json!({
            "name": "demo", "domains": ["demo"],
            "routes": [method_route("demo", "first", "a"), method_route("demo", "second", "b")]
        })],
        http_filters: vec![],
    }
    .render();
    let _envoy = Envoy::start("rendered", &config, admin);
    let mut c = Client::connect(port);
    assert_eq!(payload_of(&c.call(&request(1, "first", &[], b"1"))), "a:1");
    assert_eq!(payload_of(&c.call(&request(2, "second", &[], b"2"))), "b:2");
    assert_eq!(c.call(&request(3, "third", &[], b"3")).kind, kind::ERROR);
}

#[test]
fn envoy_refuses_an_invalid_filter_configuration_and_names_the_field() {
    use meltemi_e2e::{envoy::Envoy, workspace};
    let wasm = workspace::build_wasm("minirpc");
    let template =
        std::fs::read_to_string(workspace::root().join("examples/minirpc/envoy/bridge.yaml"))
            .unwrap();
    let typo = template.replace("\"max_pending_requests\": 256", "\"max_pending\": 256");
    assert_ne!(
        typo, template,
        "the example configuration changed: update this test"
    );
    let admin = workspace::free_port();
    let config = workspace::render(
        &typo,
        &[
            ("ADMIN_PORT", admin.to_string()),
            ("LISTEN_PORT", workspace::free_port().to_string()),
            ("V1_PORT", workspace::free_port().to_string()),
            ("V2_PORT", workspace::free_port().to_string()),
            ("WASM", wasm.display().to_string()),
        ],
    );
    let log = Envoy::refused("badconfig", &config, admin);
    assert!(
        log.contains("field `limits.max_pending`: unknown field `max_pending`"),
        "{log}"
    );
    assert!(
        log.contains("Unable to create Wasm plugin meltemi_front"),
        "{log}"
    );
}

meltemi_e2e::on_every_engine!(
    one_connection_is_routed_per_request_by_method_and_metadata,
    no_route_gets_a_protocol_error_reply_and_the_connection_lives_on,
    upstream_closing_mid_request_fails_only_that_request,
    one_mebibyte_messages_and_one_byte_chunks,
    garbage_closes_only_its_connection_and_is_counted,
    heartbeats_are_answered_without_reaching_the_server,
    one_way_calls_are_delivered_and_never_answered,
    route_mutation_reaches_the_server_in_the_frame,
);
