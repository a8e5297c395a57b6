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
//! is rewritten and the same connection's calls move to the other version.
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

/// A child process stopped (by PID) on drop.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The embedded default's MetaRouter with everything else going to `subset`.
fn metarouter(subset: &str) -> String {
    std::fs::read_to_string(workspace::root().join("controller/testdata/minirpc/router.yaml"))
        .expect("controller/testdata/minirpc/router.yaml")
        .replace("        subset: v1", &format!("        subset: {subset}"))
}

fn controller() {
    use meltemi_e2e::minirpc_peer::Server;
    use std::time::{Duration, Instant};
    println!("\nControl plane: building meltemi-controller; Aeraki MetaRouter + Istio ServiceEntry → Envoy over ADS");
    let bin = workspace::build_controller();
    let wasm = workspace::build_wasm("minirpc");
    let (v1, v2) = (Server::start("v1"), Server::start("v2"));
    let (port, xds, admin) = (
        workspace::free_port(),
        workspace::free_port(),
        workspace::free_port(),
    );
    let dir = std::env::temp_dir().join(format!("meltemi-demo-controller-{}", std::process::id()));
    let config = dir.join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    let testdata = workspace::root().join("controller/testdata/minirpc");
    std::fs::copy(testdata.join("protocol.yaml"), config.join("protocol.yaml")).expect("copy");
    let service = std::fs::read_to_string(testdata.join("service.yaml"))
        .expect("service.yaml")
        .replace("29000", &port.to_string())
        .replace("29101", &v1.port.to_string())
        .replace("29102", &v2.port.to_string());
    std::fs::write(config.join("service.yaml"), service).expect("write");
    std::fs::write(config.join("router.yaml"), metarouter("v1")).expect("write");
    let log = dir.join("controller.log");
    let ctl = Process(
        std::process::Command::new(&bin)
            .args(["serve", "--dir"])
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{xds}"), "--module"])
            .arg(format!("minirpc={}", wasm.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start meltemi-controller"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("xds server listening")
    {
        assert!(Instant::now() < deadline, "the controller did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let bootstrap = dir.join("envoy.json");
    let out = std::process::Command::new(&bin)
        .args([
            "bootstrap",
            "--xds",
            &format!("127.0.0.1:{xds}"),
            "--admin-port",
        ])
        .arg(admin.to_string())
        .arg("-o")
        .arg(&bootstrap)
        .output()
        .expect("meltemi-controller bootstrap");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&bootstrap).expect("bootstrap");
    let envoy = Envoy::start("demo-controller", &text, admin);
    println!("  meltemi-controller serve --dir {} (MetaRouter: version=v2 → v2, everything else → v1 with env=prod)", config.display());
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
    let tmp = config.join(".router.yaml.tmp");
    std::fs::write(&tmp, metarouter("v2")).expect("write");
    let changed = Instant::now();
    std::fs::rename(&tmp, config.join("router.yaml")).expect("rename");
    let mut id = 3;
    let moved = loop {
        let r = c.call(&request(id, "echo", &[], b"c"));
        id += 1;
        if r.headers.get("server") == Some("v2") {
            break r;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "the route change never arrived"
        );
    };
    show(
        &format!(
            "echo after {:>4.0} ms  (live route change)",
            changed.elapsed().as_secs_f64() * 1000.0
        ),
        &moved,
    );
    println!(
        "  {} calls on one connection, none failed; the connection was never closed",
        id - 1
    );
    drop(envoy);
    drop(ctl);
    let _ = std::fs::remove_dir_all(&dir);
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
