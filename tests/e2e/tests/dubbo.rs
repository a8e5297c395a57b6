//! Dubbo2 through the real Envoy 1.40 on every engine (`meltemi_dubbo.wasm` on both sides of
//! the bridge, the `libmeltemi_dubbo.so` dynamic module on both sides, and the mix; each test
//! runs as `wasm::<name>`, `native::<name>` and `mix::<name>`), driven by real consumers (npm `dubbo2.js`, npm `sofa-rpc-node`, PyPI
//! `dubbo-ssl-python`, the Caucho-Hessian2 Java consumer) against real providers (the Java
//! Caucho-Hessian2 provider as `v1`, sofa-rpc-node + dubbo-remoting as `v2`).
//!
//! One Envoy and the two providers per engine are shared by the tests of this file (started by
//! the first test that needs them, stopped when the last one finishes), and the tests take turns
//! ([`SERIAL`]): each asserts exact counter deltas, per-listener connection counts and provider
//! logs, which concurrent consumers would blur. Envoy has two front listeners on the same
//! routes and backs: interface-level governance (no `service` in the front configuration: the
//! authority is the interface, one virtual host per interface) and app-level governance
//! (`"service": "demo-app"`: one virtual host, routes match the `interface` header).
//!
//! Without the peers (`tests/peers/dubbo/install.sh`) every test is skipped with a note, unless
//! `MELTEMI_REQUIRE_PEERS=1`.

use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use meltemi_e2e::bootstrap::{Bridge, Destination, Engine, SharedPerEngine};
use meltemi_e2e::dubbo_peer::{
    heartbeat_frame, peers_available, read_raw_frame, request_frame, run_consumer, Call,
    ConsumerKind, Outcome, Provider, ProviderKind, Run, ECHO, NO_ROUTE, OTHER,
};
use meltemi_e2e::envoy::{prom_sum, Envoy};
use meltemi_e2e::workspace;
use meltemi_sdk::bridge::{mutation_header_value, MUTATION_HEADER};
use serde_json::{json, Value};

/// The app-level front's `service` (its single virtual host).
const APP: &str = "demo-app";
/// What the mutation routes write into the attachments (`x-mutated`), per governance style.
const MUTATED_IFACE: &str = "by-envoy";
const MUTATED_APP: &str = "by-envoy-app";
/// Longest a consumer script may take (they finish in about a second; a hang is a failure).
const CONSUMER_TIMEOUT: Duration = Duration::from_secs(40);

/// The shared deployment: Envoy with both fronts, and the two providers.
struct Setup {
    // Declared first so it stops first: providers then see Envoy's connections close instead
    // of logging errors while Envoy retries.
    envoy: Envoy,
    v1: Provider,
    v2: Provider,
    /// Interface-level front (authority = interface).
    iface_port: u16,
    /// App-level front (authority = `demo-app`).
    app_port: u16,
}

/// The shared deployment and this test's turn, or `None` (skip) when the peers are missing.
fn setup(engine: Engine) -> Option<(Arc<Setup>, MutexGuard<'static, ()>)> {
    static SHARED: SharedPerEngine<Setup> = SharedPerEngine::new();
    if !peers_available() {
        return None;
    }
    Some(SHARED.get(engine, || Setup::start(engine)))
}

fn route(matcher: Value, cluster: &str) -> Value {
    json!({"match": matcher, "route": meltemi_e2e::bootstrap::route_action(cluster)})
}

fn exact(header: &str, value: &str) -> Value {
    json!({"name": header, "string_match": {"exact": value}})
}

/// `route` plus a request mutation: the back writes `key=value` into the attachments.
fn mutating(mut route: Value, key: &str, value: &str) -> Value {
    route["request_headers_to_add"] = json!([{
        "header": {"key": MUTATION_HEADER, "value": mutation_header_value(key, value)},
        "append_action": "APPEND_IF_EXISTS_OR_ADD"
    }]);
    route
}

/// Interface-level virtual hosts. EchoService: by attachment (`x-target`), by method (`greet`
/// → v2), mutation on `attachment`, the other methods → v1, anything else has no route.
/// OtherService: everything → v2 (routing by interface).
fn interface_level_hosts() -> Vec<Value> {
    let p = |m: &str| format!("/{ECHO}/{m}");
    vec![
        json!({"name": "echo_service", "domains": [ECHO], "routes": [
            mutating(route(json!({"path": p("attachment"), "headers": [exact("x-target", "v2")]}), "v2"), "x-mutated", MUTATED_IFACE),
            mutating(route(json!({"path": p("attachment")}), "v1"), "x-mutated", MUTATED_IFACE),
            route(json!({"prefix": format!("/{ECHO}/"), "headers": [exact("x-target", "v1")]}), "v1"),
            route(json!({"prefix": format!("/{ECHO}/"), "headers": [exact("x-target", "v2")]}), "v2"),
            route(json!({"path": p("greet")}), "v2"),
            route(json!({"path": p("echo")}), "v1"),
            route(json!({"path": p("fail")}), "v1"),
            route(json!({"path": p("notify")}), "v1"),
        ]}),
        json!({"name": "other_service", "domains": [OTHER], "routes": [
            route(json!({"prefix": "/"}), "v2"),
        ]}),
    ]
}

/// The app-level virtual host: every request has authority `demo-app` and path
/// `/demo-app/<method>`; routes tell interfaces apart by the `interface` header.
fn app_level_host() -> Value {
    json!({"name": "demo_app", "domains": [APP], "routes": [
        route(json!({"prefix": "/", "headers": [exact("interface", OTHER)]}), "v2"),
        route(json!({"prefix": "/", "headers": [exact("interface", ECHO), exact("x-target", "v2")]}), "v2"),
        mutating(route(json!({"path": format!("/{APP}/attachment"), "headers": [exact("interface", ECHO)]}), "v1"), "x-mutated", MUTATED_APP),
        route(json!({"prefix": "/", "headers": [exact("interface", ECHO)]}), "v1"),
    ]})
}

impl Setup {
    fn start(engine: Engine) -> Setup {
        let wasm = workspace::build_for(engine, "meltemi-dubbo");
        let v1 = Provider::start(ProviderKind::Java, "v1");
        let v2 = Provider::start(ProviderKind::Sofa, "v2");
        let (iface_port, app_port, admin) = (
            workspace::free_port(),
            workspace::free_port(),
            workspace::free_port(),
        );
        let mut virtual_hosts = interface_level_hosts();
        virtual_hosts.push(app_level_host());
        let codec = json!({"codec": {"max_body_bytes": 8 << 20}});
        // What the controller lists from the routes (the native build defines their metrics).
        let mut front = codec.clone();
        front["known_services"] = json!([ECHO, OTHER, APP]);
        front["known_methods"] = json!(["echo", "greet", "fail", "attachment", "notify"]);
        let rendered = Bridge {
            protocol: "dubbo",
            wasm: &wasm,
            engine,
            module: "meltemi_dubbo",
            front,
            back: codec,
            listen_port: iface_port,
            admin_port: admin,
            destinations: vec![
                Destination {
                    cluster: "v1".into(),
                    port: v1.port,
                },
                Destination {
                    cluster: "v2".into(),
                    port: v2.port,
                },
            ],
            virtual_hosts,
            http_filters: vec![],
        }
        .render();
        let config = with_app_level_front(&rendered, app_port, engine);
        let envoy = Envoy::start(&format!("dubbo-{}", engine.name()), &config, admin);
        Setup {
            envoy,
            v1,
            v2,
            iface_port,
            app_port,
        }
    }

    fn prom(&self) -> String {
        self.envoy.prometheus()
    }

    fn connections(&self, port: u16) -> u64 {
        self.envoy
            .stat(&format!("listener.127.0.0.1_{port}.downstream_cx_total"))
    }

    /// Waits until `metric{labels}` is `before + delta`, then asserts it is exactly that.
    fn assert_delta(&self, before: &str, metric: &str, labels: &[(&str, &str)], delta: f64) {
        let start = prom_sum(before, metric, labels);
        let got = self.envoy.wait_prom(metric, labels, start + delta);
        assert_eq!(
            got - start,
            delta,
            "{metric}{labels:?}: moved by {} instead of {delta}",
            got - start
        );
    }
}

/// The bridge renderer makes one front listener; the app-level front is a copy of it on
/// `app_port` whose plugin configuration adds `"service": "demo-app"`. Both share the routes
/// (their virtual hosts do not overlap) and the backs. Its HCM gets its own stat prefix.
fn with_app_level_front(rendered: &str, app_port: u16, engine: Engine) -> String {
    let mut bootstrap: Value = serde_json::from_str(rendered).expect("rendered bootstrap");
    let listeners = bootstrap["static_resources"]["listeners"]
        .as_array_mut()
        .expect("listeners");
    let mut app = listeners[0].clone();
    app["name"] = json!("dubbo_front_app");
    app["address"]["socket_address"]["port_value"] = json!(app_port);
    let filters = app["filter_chains"][0]["filters"]
        .as_array_mut()
        .expect("filters");
    let value = if engine == Engine::Native {
        &mut filters[0]["typed_config"]["filter_config"]["value"]
    } else {
        let wasm = &mut filters[0]["typed_config"]["config"];
        wasm["name"] = json!("meltemi_front_app");
        &mut wasm["configuration"]["value"]
    };
    let mut plugin: Value = serde_json::from_str(value.as_str().expect("plugin configuration"))
        .expect("plugin configuration JSON");
    plugin["service"] = json!(APP);
    *value = json!(plugin.to_string());
    filters[1]["typed_config"]["stat_prefix"] = json!("dubbo_app");
    listeners.push(app);
    bootstrap.to_string()
}

/// What a call must produce: a value or an RPC error containing every needle, or a send.
enum Expect {
    Value(Vec<String>),
    Error(Vec<String>),
    Sent,
}

fn value(needles: &[&str]) -> Expect {
    Expect::Value(needles.iter().map(|s| s.to_string()).collect())
}

fn error(needles: &[&str]) -> Expect {
    Expect::Error(needles.iter().map(|s| s.to_string()).collect())
}

/// Runs `steps` on one connection of `consumer` and checks every outcome; all mismatches are
/// reported at once, with the consumer's transcript.
fn run_script(consumer: ConsumerKind, port: u16, steps: Vec<(Call, Expect)>) -> Run {
    let calls: Vec<Call> = steps.iter().map(|(c, _)| c.clone()).collect();
    let run = run_consumer(consumer, port, &calls, &[], CONSUMER_TIMEOUT);
    // Shown with --nocapture: what each real consumer made of every answer.
    eprintln!("{}", run.transcript());
    let mut wrong = Vec::new();
    for (i, ((call, expect), got)) in steps.iter().zip(&run.outcomes).enumerate() {
        let ok = match (expect, got) {
            (Expect::Value(n), Outcome::Ok(v)) | (Expect::Error(n), Outcome::Err(v)) => {
                n.iter().all(|needle| v.contains(needle.as_str()))
            }
            (Expect::Sent, Outcome::Sent) => true,
            _ => false,
        };
        if !ok {
            let want = match expect {
                Expect::Value(n) => format!("value with {n:?}"),
                Expect::Error(n) => format!("error with {n:?}"),
                Expect::Sent => "sent".into(),
            };
            wrong.push(format!("call {i} {call:?}: wanted {want}, got {got:?}"));
        }
    }
    assert!(
        wrong.is_empty() && run.completed(),
        "{} through Envoy:\n{}\n{}",
        consumer.name(),
        wrong.join("\n"),
        run.transcript()
    );
    run
}

/// The interface-level script: routing by attachment, method and interface to v1/v2, strings,
/// POJOs, declared exceptions from both providers, two calls without a route (status 60),
/// mutation seen by both providers, a consumer attachment seen by the provider, and a last
/// call proving the connection survived it all.
fn interface_level_steps(consumer: ConsumerKind) -> Vec<(Call, Expect)> {
    let caller = format!("v1:x-caller={}", consumer.name());
    let mutated_v1 = format!("v1:x-mutated={MUTATED_IFACE}");
    let mutated_v2 = format!("v2:x-mutated={MUTATED_IFACE}");
    vec![
        (Call::new(ECHO, "echo", "hello"), value(&["v1:hello"])),
        (
            Call::new(ECHO, "echo", "hello").att("x-target", "v2"),
            value(&["v2:hello"]),
        ),
        (
            Call::new(ECHO, "greet", "pojo"),
            value(&["ann@v2", "42", "pojo"]),
        ),
        (
            Call::new(ECHO, "greet", "pojo").att("x-target", "v1"),
            value(&["ann@v1", "42", "pojo"]),
        ),
        (Call::new(OTHER, "echo", "iface"), value(&["v2:iface"])),
        (
            Call::new(ECHO, "fail", "boom"),
            error(&["declared failure from v1: boom"]),
        ),
        (
            Call::new(ECHO, "fail", "boom").att("x-target", "v2"),
            error(&["declared failure from v2: boom"]),
        ),
        (Call::new(NO_ROUTE, "echo", "lost"), no_route(consumer)),
        (Call::new(ECHO, "nosuch", "lost"), no_route(consumer)),
        (
            Call::new(ECHO, "attachment", "x-mutated"),
            value(&[&mutated_v1]),
        ),
        (
            Call::new(ECHO, "attachment", "x-mutated").att("x-target", "v2"),
            value(&[&mutated_v2]),
        ),
        (Call::new(ECHO, "attachment", "x-caller"), value(&[&caller])),
        (Call::new(ECHO, "echo", "after"), value(&["v1:after"])),
    ]
}

/// A no-route error reply: status 60 SERVICE_NOT_FOUND carrying Envoy's reason. Only the Java
/// consumer prints the status; the others raise with the message.
fn no_route(consumer: ConsumerKind) -> Expect {
    match consumer {
        ConsumerKind::Java => error(&["error status=60", "envoy 404"]),
        _ => error(&["envoy 404"]),
    }
}

/// The app-level script: the same interfaces told apart by the `interface` header.
fn app_level_steps(consumer: ConsumerKind) -> Vec<(Call, Expect)> {
    let mutated = format!("v1:x-mutated={MUTATED_APP}");
    vec![
        (Call::new(ECHO, "echo", "app"), value(&["v1:app"])),
        (
            Call::new(ECHO, "echo", "app").att("x-target", "v2"),
            value(&["v2:app"]),
        ),
        (Call::new(OTHER, "echo", "app"), value(&["v2:app"])),
        (Call::new(ECHO, "greet", "app"), value(&["ann@v1", "app"])),
        (
            Call::new(ECHO, "attachment", "x-mutated"),
            value(&[&mutated]),
        ),
        (Call::new(NO_ROUTE, "echo", "lost"), no_route(consumer)),
        (Call::new(ECHO, "echo", "after"), value(&["v1:after"])),
    ]
}

/// Runs both scripts with `consumer` and checks the answers, one connection per script, no
/// heartbeat reaching a provider, and the exact metric deltas each script must cause.
fn consumer_through_both_governance_styles(engine: Engine, consumer: ConsumerKind) {
    let Some((s, _turn)) = setup(engine) else {
        return;
    };
    let hb = (s.v1.heartbeats().len(), s.v2.heartbeats().len());

    let before = s.prom();
    let cx = s.connections(s.iface_port);
    let run = run_script(consumer, s.iface_port, interface_level_steps(consumer));
    assert_eq!(
        s.connections(s.iface_port) - cx,
        1,
        "{}: every call over ONE connection",
        consumer.name()
    );
    let d = "dubbo";
    // The native build has metrics only for the services its configuration names (what the
    // routes name); a service without a route is counted as `other`.
    let (no_route, nosuch) = if engine == Engine::Native {
        ("other", "other")
    } else {
        (NO_ROUTE, "nosuch")
    };
    for (service, method, n) in [
        (ECHO, "echo", 2.0 + 1.0),
        (ECHO, "greet", 2.0),
        (OTHER, "echo", 1.0),
        (ECHO, "fail", 2.0),
        (ECHO, "attachment", 3.0),
        (no_route, "echo", 1.0),
        (ECHO, nosuch, 1.0),
    ] {
        let labels = [("protocol", d), ("service", service), ("method", method)];
        s.assert_delta(&before, "meltemi_requests_total", &labels, n);
    }
    let fail = [
        ("protocol", d),
        ("service", ECHO),
        ("method", "fail"),
        ("outcome", "business_error"),
    ];
    s.assert_delta(&before, "meltemi_responses_total", &fail, 2.0);
    let outcome = |o| [("protocol", d), ("outcome", o)];
    s.assert_delta(
        &before,
        "meltemi_responses_total",
        &outcome("business_error"),
        2.0,
    );
    s.assert_delta(&before, "meltemi_responses_total", &outcome("success"), 9.0);
    s.assert_delta(
        &before,
        "meltemi_responses_total",
        &outcome("local_reply"),
        2.0,
    );
    let no_route = [("protocol", d), ("kind", "route_not_found")];
    s.assert_delta(&before, "meltemi_local_replies_total", &no_route, 2.0);
    // Java's log names every request's attachments: the consumer's own arrived verbatim.
    assert!(
        s.v1.log()
            .contains(&format!("x-caller={}", consumer.name())),
        "{}",
        run.transcript()
    );

    let before = s.prom();
    let cx = s.connections(s.app_port);
    run_script(consumer, s.app_port, app_level_steps(consumer));
    assert_eq!(
        s.connections(s.app_port) - cx,
        1,
        "app-level: one connection"
    );
    for (method, n) in [("echo", 5.0), ("greet", 1.0), ("attachment", 1.0)] {
        let labels = [("protocol", d), ("service", APP), ("method", method)];
        s.assert_delta(&before, "meltemi_requests_total", &labels, n);
    }
    s.assert_delta(&before, "meltemi_local_replies_total", &no_route, 1.0);

    assert_eq!(
        (s.v1.heartbeats().len(), s.v2.heartbeats().len()),
        hb,
        "no heartbeat reached a provider"
    );
}

fn dubbo2js_consumer_through_both_governance_styles(engine: Engine) {
    consumer_through_both_governance_styles(engine, ConsumerKind::Dubbo2js);
}

fn sofa_rpc_node_consumer_through_both_governance_styles(engine: Engine) {
    consumer_through_both_governance_styles(engine, ConsumerKind::Sofa);
}

fn dubbo_ssl_python_consumer_through_both_governance_styles(engine: Engine) {
    consumer_through_both_governance_styles(engine, ConsumerKind::Python);
}

fn java_consumer_through_both_governance_styles(engine: Engine) {
    consumer_through_both_governance_styles(engine, ConsumerKind::Java);
}

fn one_way_calls_are_delivered_and_the_next_call_still_works(engine: Engine) {
    let Some((s, _turn)) = setup(engine) else {
        return;
    };
    let before = s.prom();
    let hb = s.v1.heartbeats().len();
    let tag = format!("ow{}", std::process::id());
    let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
    run_script(
        ConsumerKind::Java,
        s.iface_port,
        vec![
            (Call::new(ECHO, "notify", &a).oneway(), Expect::Sent),
            (Call::new(ECHO, "echo", "after-a"), value(&["v1:after-a"])),
            // Two one-way calls back to back, then a two-way call: the first frame the
            // consumer reads must be that call's answer.
            (Call::new(ECHO, "notify", &b).oneway(), Expect::Sent),
            (Call::new(ECHO, "notify", &b).oneway(), Expect::Sent),
            (Call::new(ECHO, "echo", "after-b"), value(&["v1:after-b"])),
        ],
    );
    let oneway = [("protocol", "dubbo"), ("outcome", "oneway")];
    s.assert_delta(&before, "meltemi_responses_total", &oneway, 3.0);
    let notify = [
        ("protocol", "dubbo"),
        ("service", ECHO),
        ("method", "notify"),
    ];
    s.assert_delta(&before, "meltemi_requests_total", &notify, 3.0);
    let v1 = s.v1.log();
    assert!(v1.contains(&format!("[{a}]")), "v1 got notify({a}):\n{v1}");
    assert_eq!(
        v1.matches(&format!("[{b}]")).count(),
        2,
        "v1 got notify({b}) twice:\n{v1}"
    );
    // Each one-way call is acknowledged once the provider answered a delivery probe (a
    // heartbeat) written after it, so it has read the call before the next one is sent.
    assert_eq!(
        s.v1.heartbeats().len() - hb,
        3,
        "one delivery probe per one-way call"
    );
}

/// dubbo-remoting (v2) answers one-way calls although Dubbo says not to; the back must drop
/// that stray answer and keep serving. The wasm back counts it in
/// `meltemi_unexpected_messages_total`; with the native back the answer arrives on an idle
/// pooled connection, which Envoy's pool closes (nothing reaches a caller, nothing counted).
fn one_way_calls_to_a_provider_that_answers_them_keep_the_connection_working(engine: Engine) {
    let Some((s, _turn)) = setup(engine) else {
        return;
    };
    let before = s.prom();
    let tag = format!("ow{}", std::process::id());
    let mut steps = Vec::new();
    for i in 0..5 {
        let event = format!("{tag}-v2-{i}");
        let echo = format!("after-{i}");
        steps.push((
            Call::new(ECHO, "notify", &event)
                .att("x-target", "v2")
                .oneway(),
            Expect::Sent,
        ));
        steps.push((
            Call::new(ECHO, "echo", &echo).att("x-target", "v2"),
            value(&[&format!("v2:{echo}")]),
        ));
    }
    run_script(ConsumerKind::Java, s.iface_port, steps);
    let v2 = s.v2.log();
    for i in 0..5 {
        assert!(v2.contains(&format!("notify({tag}-v2-{i})")), "{v2}");
    }
    let unexpected = [("protocol", "dubbo"), ("role", "back")];
    let stray = if engine == Engine::Wasm { 5.0 } else { 0.0 };
    s.assert_delta(
        &before,
        "meltemi_unexpected_messages_total",
        &unexpected,
        stray,
    );
}

fn raw_heartbeats_are_answered_by_the_bridge_not_the_providers(engine: Engine) {
    let Some((s, _turn)) = setup(engine) else {
        return;
    };
    let before = s.prom();
    let mut c = TcpStream::connect(("127.0.0.1", s.iface_port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let (hb1, hb2) = (0x5eed_0001u64, 0x5eed_0002u64);

    c.write_all(&request_frame(11, ECHO, "echo", "raw"))
        .expect("send");
    let r = read_raw_frame(&mut c).expect("echo answer");
    assert_eq!((r.id, r.status, r.is_event()), (11, 20, false));
    assert!(String::from_utf8_lossy(&r.body).contains("v1:raw"), "{r:?}");

    c.write_all(&heartbeat_frame(hb1)).expect("send heartbeat");
    let r = read_raw_frame(&mut c).expect("heartbeat reply");
    assert_eq!((r.id, r.status, r.is_event()), (hb1, 20, true), "{r:?}");
    assert_eq!(r.flags & 0x80, 0, "a reply, not a request: {r:?}");
    assert_eq!(r.body, b"N", "Hessian null body");

    // A heartbeat pipelined with a call in one write: both answered, in order.
    let mut batch = heartbeat_frame(hb2);
    batch.extend(request_frame(12, OTHER, "echo", "raw2"));
    c.write_all(&batch).expect("send batch");
    let r = read_raw_frame(&mut c).expect("second heartbeat reply");
    assert_eq!((r.id, r.is_event()), (hb2, true), "{r:?}");
    let r = read_raw_frame(&mut c).expect("echo after heartbeat");
    assert_eq!((r.id, r.status), (12, 20));
    assert!(
        String::from_utf8_lossy(&r.body).contains("v2:raw2"),
        "{r:?}"
    );

    let front = [("protocol", "dubbo"), ("role", "front")];
    s.assert_delta(&before, "meltemi_heartbeats_total", &front, 2.0);
    for p in [&s.v1, &s.v2] {
        let seen = p.heartbeats();
        assert!(
            !seen.contains(&hb1) && !seen.contains(&hb2),
            "provider {} saw a heartbeat the bridge answers: {seen:?}",
            p.tag
        );
    }
}

fn python_consumer_heartbeats_are_answered_by_the_bridge(engine: Engine) {
    let Some((s, _turn)) = setup(engine) else {
        return;
    };
    let before = s.prom();
    let hb = (s.v1.heartbeats().len(), s.v2.heartbeats().len());
    let calls = [
        Call::new(ECHO, "echo", "before-idle"),
        Call::sleep(1500),
        Call::new(ECHO, "echo", "after-idle").att("x-target", "v2"),
    ];
    // dubbo-ssl-python heartbeats after 60 s idle; 0.3 s makes it send several while idle.
    let run = run_consumer(
        ConsumerKind::Python,
        s.iface_port,
        &calls,
        &["--heartbeat-idle", "0.3"],
        CONSUMER_TIMEOUT,
    );
    let report = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("HEARTBEATS "))
        .unwrap_or_else(|| panic!("no heartbeat report:\n{}", run.transcript()));
    let field = |name: &str| -> u64 {
        report
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {report:?}"))
    };
    let (sent, unanswered) = (field("sent="), field("unanswered="));
    assert!(sent >= 1, "the consumer sent heartbeats: {report}");
    assert_eq!(unanswered, 0, "every heartbeat answered: {report}");
    assert!(run.completed(), "{}", run.transcript());
    assert_eq!(
        run.outcomes,
        [
            Outcome::Ok("'v1:before-idle'".into()),
            Outcome::Ok("'v2:after-idle'".into())
        ],
        "{}",
        run.transcript()
    );
    let front = [("protocol", "dubbo"), ("role", "front")];
    s.assert_delta(&before, "meltemi_heartbeats_total", &front, sent as f64);
    assert_eq!(
        (s.v1.heartbeats().len(), s.v2.heartbeats().len()),
        hb,
        "no heartbeat reached a provider"
    );
}

meltemi_e2e::on_every_engine!(
    dubbo2js_consumer_through_both_governance_styles,
    sofa_rpc_node_consumer_through_both_governance_styles,
    dubbo_ssl_python_consumer_through_both_governance_styles,
    java_consumer_through_both_governance_styles,
    one_way_calls_are_delivered_and_the_next_call_still_works,
    one_way_calls_to_a_provider_that_answers_them_keep_the_connection_working,
    raw_heartbeats_are_answered_by_the_bridge_not_the_providers,
    python_consumer_heartbeats_are_answered_by_the_bridge,
);
