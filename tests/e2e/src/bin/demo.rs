//! The main job: requests routed one by one through a real Envoy 1.40 with the Meltemi bridge.
//!
//! Part 1, MiniRPC (the example private protocol), on both builds of the same codec: the wasm
//! build (`minirpc.wasm`) and the native build (the Envoy dynamic module `libminirpc.so`).
//! Starts two servers (v1, v2) and Envoy, drives one client connection and prints where every
//! request went and what the client got back, then the request-level metrics Envoy exports.
//! Part 2, Thrift with real third-party software: the Apache Thrift Python client and servers
//! (PyPI `thrift`, THeader/compact) through `meltemi_thrift.wasm`, routed per call by method
//! and by a THeader info header over one connection.
//! Part 3, the control plane: `meltemi-controller serve` on an embedded default (the Aeraki
//! MetaRouter, ApplicationProtocol and Istio ServiceEntry of `controller/testdata/minirpc`),
//! Envoy bootstrapped from it over ADS, one MiniRPC client connection; then the MetaRouter file
//! is rewritten under it: the same connection's calls move to the other version, then are split
//! 20/80 by weight, then Aeraki's local rate limit refuses the calls over its token bucket with
//! MiniRPC errors; finally the metrics this Envoy exports.
//! Everything started is stopped on exit.

use meltemi_e2e::bootstrap::{Bridge, Destination, Engine};
use meltemi_e2e::envoy::Envoy;
use meltemi_e2e::minirpc_peer::{encode, request, Client, Deployment, Frame};
use meltemi_e2e::{thrift_peer, workspace};
use minirpc::kind;
use serde_json::json;

fn show(what: &str, f: &Frame) {
    let kind = match f.kind {
        kind::RESPONSE => "response",
        kind::ERROR => "ERROR",
        kind::PONG => "pong",
        _ => "other",
    };
    let server = f.headers.get("server").unwrap_or("-");
    let extra = f
        .headers
        .get("error")
        .or(f.headers.get("env"))
        .unwrap_or("");
    println!(
        "  {what:<44} → id={:<3} {kind:<8} server={server:<3} {:<22} {extra}",
        f.id,
        String::from_utf8_lossy(&f.payload)
    );
}

fn main() {
    minirpc(Engine::Wasm);
    minirpc(Engine::Native);
    thrift();
    controller();
    println!("\ndone: the controller, Envoy and every server stopped.");
}

/// The embedded default's MetaRouter with everything else going to `subset`.
fn metarouter(subset: &str) -> String {
    std::fs::read_to_string(workspace::root().join("controller/testdata/minirpc/router.yaml"))
        .expect("controller/testdata/minirpc/router.yaml")
        .replace("        subset: v1", &format!("        subset: {subset}"))
}

/// The embedded default's MetaRouter with everything else split `v1`/`v2` by weight, and
/// optionally Aeraki's local rate limit (a token bucket of `tokens` that refills once a minute).
fn split_router(v1: u32, v2: u32, tokens: Option<u32>) -> String {
    let mut text = metarouter("v1").replace(
        "    - destination:\n        host: demo\n        subset: v1\n",
        &format!(
            "    - destination:\n        host: demo\n        subset: v1\n      weight: {v1}\n    - destination:\n        host: demo\n        subset: v2\n      weight: {v2}\n"
        ),
    );
    if let Some(n) = tokens {
        text.push_str(&format!(
            "  localRateLimit:\n    tokenBucket:\n      maxTokens: {n}\n      tokensPerFill: {n}\n      fillInterval: 60s\n"
        ));
    }
    text
}

/// Waits until a call on `c` is answered by `server`, calling `echo`; returns the answer and
/// the number of calls it took.
fn until_server(c: &mut Client, id: &mut u64, server: &str, what: &str) -> (Frame, u64) {
    let since = std::time::Instant::now();
    let mut calls = 0;
    loop {
        let r = c.call(&request(*id, "echo", &[], b"c"));
        *id += 1;
        calls += 1;
        if r.headers.get("server") == Some(server) {
            return (r, calls);
        }
        assert!(
            since.elapsed() < std::time::Duration::from_secs(10),
            "{what} never arrived"
        );
    }
}

fn controller() {
    use meltemi_e2e::controlplane::{ControlPlane, Plan};
    use meltemi_e2e::minirpc_peer::Server;
    use std::time::{Duration, Instant};
    println!("\nControl plane: meltemi-controller; Aeraki MetaRouter + Istio ServiceEntry → Envoy over ADS");
    let (v1, v2) = (Server::start("v1"), Server::start("v2"));
    let port = workspace::free_port();
    let testdata = workspace::root().join("controller/testdata/minirpc");
    let read =
        |f: &str| std::fs::read_to_string(testdata.join(f)).expect("controller/testdata/minirpc");
    let service = read("service.yaml")
        .replace("29000", &port.to_string())
        .replace("29101", &v1.port.to_string())
        .replace("29102", &v2.port.to_string());
    let cp = ControlPlane::start(
        "demo",
        &Plan {
            engine: Engine::Wasm,
            codecs: &[("minirpc", "minirpc")],
            args: &[],
            files: &[
                ("protocol.yaml", read("protocol.yaml")),
                ("service.yaml", service),
                ("router.yaml", metarouter("v1")),
            ],
        },
    );
    let envoy = cp.envoy("demo-controller");
    println!(
        "  meltemi-controller serve --dir {} (MetaRouter: version=v2 → v2, everything else → v1 with env=prod)",
        cp.config.display()
    );
    // The listener arrives over LDS: wait for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut c = loop {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            drop(s);
            break Client::connect(port);
        }
        assert!(Instant::now() < deadline, "no listener from the controller");
        std::thread::sleep(Duration::from_millis(50));
    };
    show(
        "echo                (MetaRouter → v1)",
        &c.call(&request(1, "echo", &[], b"a")),
    );
    show(
        "echo version=v2     (MetaRouter match → v2)",
        &c.call(&request(2, "echo", &[("version", "v2")], b"b")),
    );
    println!("  rewriting router.yaml: everything else → v2 (same client connection) …");
    let changed = Instant::now();
    cp.write("router.yaml", &metarouter("v2"));
    let mut id = 3;
    let (moved, _) = until_server(&mut c, &mut id, "v2", "the route change");
    show(
        &format!(
            "echo after {:>4.0} ms  (live route change)",
            changed.elapsed().as_secs_f64() * 1000.0
        ),
        &moved,
    );

    println!("  rewriting router.yaml: everything else split 20 % v1 / 80 % v2 …");
    cp.write("router.yaml", &split_router(20, 80, None));
    until_server(&mut c, &mut id, "v1", "the split");
    let (mut on_v1, mut on_v2) = (0, 0);
    for _ in 0..500 {
        let r = c.call(&request(id, "echo", &[], b"split"));
        id += 1;
        match r.headers.get("server") {
            Some("v1") => on_v1 += 1,
            Some("v2") => on_v2 += 1,
            _ => {}
        }
    }
    println!("  500 calls on the same connection: {on_v1} answered by v1, {on_v2} by v2");

    println!("  adding Aeraki's localRateLimit (token bucket: 5 calls a minute) …");
    let before = envoy.stat(&format!(
        "http.meltemi_minirpc_{port}.rds.meltemi_{port}.update_success"
    ));
    cp.write("router.yaml", &split_router(20, 80, Some(5)));
    meltemi_e2e::controlplane::wait_for_routes(&envoy, "minirpc", port, before + 1);
    let (mut ok, mut limited) = (0, 0);
    let mut last = None;
    for _ in 0..12 {
        let r = c.call(&request(id, "echo", &[], b"limited"));
        id += 1;
        if r.kind == kind::ERROR {
            limited += 1;
            last = Some(r);
        } else {
            ok += 1;
        }
    }
    println!("  12 calls: {ok} answered, {limited} refused by Envoy's local rate limit with MiniRPC errors:");
    if let Some(r) = &last {
        show("echo                (over the limit)", r);
    }
    println!(
        "  {} calls on one connection; the connection was never closed",
        id - 1
    );
    envoy.wait_prom("meltemi_requests_total", &[("method", "echo")], 1.0);
    println!("\nMetrics from the controller-driven Envoy's /stats/prometheus:");
    for line in envoy.prometheus().lines() {
        let shown = line.starts_with("meltemi_requests_total")
            || line.starts_with("envoy_http_local_rate_limit");
        if shown && !line.ends_with(" 0") {
            println!("  {line}");
        }
    }
}

fn minirpc(engine: Engine) {
    let build = match engine {
        Engine::Native => "the native build: libminirpc.so as an Envoy dynamic module",
        _ => "the wasm build: minirpc.wasm in Envoy's V8",
    };
    println!("\nMiniRPC on {build}; starting servers v1 and v2 and Envoy 1.40 …");
    let d = Deployment::start_on(engine, &format!("demo-{}", engine.name()));
    println!(
        "Envoy listens on 127.0.0.1:{} (v1 on :{}, v2 on :{})",
        d.port, d.v1.port, d.v2.port
    );
    println!("One client connection, request-level routing by HCM on MiniRPC metadata:");
    let mut c = Client::connect(d.port);
    show(
        "sayHello            (route: method → v1)",
        &c.call(&request(1, "sayHello", &[], b"hi")),
    );
    show(
        "sayBye              (route: method → v2)",
        &c.call(&request(2, "sayBye", &[], b"bye")),
    );
    show(
        "echo version=v2     (route: header → v2)",
        &c.call(&request(3, "echo", &[("version", "v2")], b"x")),
    );
    show(
        "echo                (route: default v1)",
        &c.call(&request(4, "echo", &[], b"y")),
    );
    show(
        "tagged env=prod     (route mutates env)",
        &c.call(&request(5, "tagged", &[("env", "prod")], b"z")),
    );
    show(
        "nope                (no route)",
        &c.call(&request(6, "nope", &[], b"?")),
    );
    show(
        "ping                (answered by bridge)",
        &c.call(&encode(kind::PING, 7, &[], &[])),
    );
    c.send(&encode(
        kind::ONEWAY,
        8,
        &[("service", "demo"), ("method", "notify")],
        b"fire",
    ));
    show(
        "notify one-way, then count",
        &c.call(&request(9, "count", &[], b"")),
    );
    show(
        "crash               (server drops conn)",
        &c.call(&request(10, "crash", &[], b"")),
    );
    show(
        "echo                (same connection)",
        &c.call(&request(11, "echo", &[], b"still here")),
    );
    d.envoy.wait_prom(
        "meltemi_request_duration_us_count",
        &[("method", "echo")],
        3.0,
    );
    println!("\nRequest-level metrics from Envoy's /stats/prometheus:");
    for line in d.envoy.prometheus().lines() {
        // The native build's names carry Envoy's `envoy_dynamicmodulescustom_` prefix.
        let line = line
            .strip_prefix(meltemi_e2e::envoy::NATIVE_PROM_PREFIX)
            .unwrap_or(line);
        if line.starts_with("meltemi_") && !line.contains("duration") && !line.ends_with(" 0") {
            println!("  {line}");
        }
    }
}

fn thrift() {
    use thrift_peer::{Impl, Server};
    println!("\nThrift: the Apache Thrift Python client → Envoy (meltemi_thrift.wasm) → Apache Thrift servers v1, v2");
    if !thrift_peer::peers_available() {
        println!("  (skipped: run tests/peers/thrift/install.sh)");
        return;
    }
    let wasm = workspace::build_wasm("meltemi-thrift");
    let v1 = Server::start(Impl::Apache, "header", "compact", "v1", &[]);
    let v2 = Server::start(Impl::Apache, "header", "compact", "v2", &[]);
    let (port, admin) = (workspace::free_port(), workspace::free_port());
    let route = |m: serde_json::Value, cluster: &str| json!({"match": m, "route": {"cluster": cluster, "timeout": "5s"}});
    let mut inspect = route(json!({"path": "/echo/inspect"}), "v2");
    inspect["request_headers_to_add"] = json!([{"header": {
        "key": meltemi_sdk::bridge::MUTATION_HEADER,
        "value": meltemi_sdk::bridge::mutation_header_value("env", "canary")}}]);
    let config = Bridge {
        protocol: "thrift",
        wasm: &wasm,
        engine: meltemi_e2e::bootstrap::Engine::Wasm,
        module: "meltemi_thrift",
        front: json!({"service": "echo"}),
        back: json!({}),
        listen_port: port,
        admin_port: admin,
        destinations: vec![
            Destination { cluster: "v1".into(), port: v1.port },
            Destination { cluster: "v2".into(), port: v2.port },
        ],
        virtual_hosts: vec![json!({"name": "echo", "domains": ["echo"], "routes": [
            route(json!({"path": "/echo/echo", "headers": [{"name": "x-version", "string_match": {"exact": "v2"}}]}), "v2"),
            route(json!({"path": "/echo/echo"}), "v1"),
            inspect,
            route(json!({"path": "/echo/add"}), "v2"),
        ]})],
        http_filters: vec![],
    }
    .render();
    let envoy = Envoy::start("demo-thrift", &config, admin);
    println!("  routes: echo → v1, echo with THeader `X-Version: v2` → v2, add → v2, inspect → v2 (+ info header env=canary), fail → no route");
    let out = thrift_peer::Client::new(Impl::Apache, "header", "compact", port, "route")
        .arg("--msg")
        .arg("hi")
        .run();
    for line in out.lines() {
        println!("  client printed: {line}");
    }
    envoy.wait_prom("meltemi_requests_total", &[("protocol", "thrift")], 5.0);
    println!("  Envoy: {} thrift requests, {} answered by the bridge with a TApplicationException (no route)",
        envoy.prom_sum("meltemi_requests_total", &[("protocol", "thrift")]),
        envoy.prom_sum("meltemi_local_replies_total", &[("protocol", "thrift"), ("kind", "route_not_found")]));
}
