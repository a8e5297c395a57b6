//! The main job: MiniRPC routed per request through a real Envoy 1.40 with the Meltemi bridge.
//!
//! Builds `minirpc.wasm`, starts two MiniRPC servers (v1, v2) and Envoy, then drives one client
//! connection and prints where every request went and what the client got back, followed by
//! the request-level metrics Envoy exports. Everything started is stopped on exit.

use meltemi_e2e::minirpc_peer::{encode, request, Client, Deployment, Frame};
use minirpc::kind;

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
    println!("meltemi demo: building minirpc.wasm, starting servers v1 and v2 and Envoy 1.40 …");
    let d = Deployment::start("demo");
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
        "meltemi_request_duration_ms_count",
        &[("method", "echo")],
        3.0,
    );
    println!("\nRequest-level metrics from Envoy's /stats/prometheus:");
    for line in d.envoy.prometheus().lines() {
        if line.starts_with("meltemi_") && !line.contains("_bucket") {
            println!("  {line}");
        }
    }
    println!("\ndone: Envoy and both servers stopped.");
}
