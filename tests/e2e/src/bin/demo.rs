//! The main job: requests routed one by one through a real Envoy 1.40 with the Meltemi bridge.
//!
//! Part 1, MiniRPC (the example private protocol), on both builds of the same codec: the wasm
//! build (`minirpc.wasm`) and the native build (the Envoy dynamic module `libminirpc.so`).
//! Starts two servers (v1, v2) and Envoy, drives one client connection and prints where every
//! request went and what the client got back, then the request-level metrics Envoy exports.
//! Part 2, Thrift with real third-party software: the Apache Thrift Python client and servers
//! (PyPI `thrift`, THeader/compact) through `meltemi_thrift.wasm`, routed per call by method
//! and by a THeader info header over one connection.
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
    println!("\ndone: Envoy and every server stopped.");
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
