//! Benchmarks on real Envoy 1.40 (one worker thread each), side by side in one run:
//! - MiniRPC: plain `tcp_proxy` vs the Meltemi bridge;
//! - Thrift (framed, binary): `tcp_proxy` vs Envoy's native `thrift_proxy` vs the bridge;
//! - Dubbo2: `tcp_proxy` vs native `dubbo_proxy` vs `generic_proxy` (dubbo codec) vs the bridge.
//!
//! Reports requests per second and, more stable on a shared machine, Envoy CPU per request and
//! its ratio to tcp_proxy. Usage: `meltemi-bench [connections] [requests-per-connection]`.
//!
//! `meltemi-bench inflight [calls]`: Dubbo2 on ONE client connection with 1, 8 and 32 calls in
//! flight (a multiplexing consumer), for tcp_proxy, native `dubbo_proxy`, and the bridge with
//! HTTP/1.1 and with HTTP/2 toward HCM; each depth measures every path right after the others.

use meltemi_e2e::bootstrap::{method_route, Bridge, Destination};
use meltemi_e2e::envoy::Envoy;
use meltemi_e2e::load::{self, Measurement};
use meltemi_e2e::minirpc_peer::{self, Deployment, Server};
use meltemi_e2e::{dubbo_load, thrift_load, workspace};

struct Plan {
    connections: usize,
    per_connection: u64,
}

impl Plan {
    /// Warm-up (pools, V8 tiering), then the measured run. `call` makes one checked call.
    fn measure<C: FnMut(u64) -> bool>(
        &self,
        envoy: &Envoy,
        connect: impl Fn() -> C + Sync,
    ) -> Measurement {
        load::run(
            envoy.pid(),
            self.connections,
            self.per_connection / 10 + 1,
            &connect,
        );
        load::run(envoy.pid(), self.connections, self.per_connection, &connect)
    }
}

fn envoy_from(template: &str, name: &str, listen: u16, server: u16) -> Envoy {
    let admin = workspace::free_port();
    let text = std::fs::read_to_string(workspace::root().join("tests/e2e/configs").join(template))
        .expect("config");
    let config = workspace::render(
        &text,
        &[
            ("ADMIN_PORT", admin.to_string()),
            ("LISTEN_PORT", listen.to_string()),
            ("SERVER_PORT", server.to_string()),
        ],
    );
    Envoy::start(name, &config, admin)
}

fn table(title: &str, rows: &[(&str, Measurement)]) {
    println!("\n{title}");
    println!(
        "  {:<26} {:>9} {:>10} {:>17} {:>13}",
        "path", "requests", "req/s", "Envoy CPU µs/req", "vs tcp_proxy"
    );
    let base = rows[0].1.cpu_us_per_request();
    for (name, m) in rows {
        println!(
            "  {name:<26} {:>9} {:>10.0} {:>17.1} {:>12.2}×",
            m.requests,
            m.rate(),
            m.cpu_us_per_request(),
            m.cpu_us_per_request() / base
        );
    }
}

fn minirpc(plan: &Plan) {
    let req = minirpc_peer::request(1, "echo", &[], &[b'x'; 128]);
    let connect = |port: u16| {
        let req = req.clone();
        move || {
            let mut c = minirpc_peer::Client::connect(port);
            let req = req.clone();
            move |_| c.call(&req).payload.len() == 131
        }
    };
    let server = Server::start("v1");
    let port = workspace::free_port();
    let tcp = plan.measure(
        &envoy_from("tcp_proxy.yaml", "bench-tcp", port, server.port),
        connect(port),
    );
    let d = Deployment::start("bench-bridge");
    let bridge = plan.measure(&d.envoy, connect(d.port));
    table(
        "MiniRPC (128-byte payload)",
        &[("tcp_proxy", tcp), ("meltemi bridge (HTTP/1)", bridge)],
    );
}

fn thrift(plan: &Plan) {
    let frame = thrift_load::call_frame("echo", 7, &[b'x'; 128]);
    let connect = |port: u16| {
        let frame = frame.clone();
        move || {
            let mut c = thrift_load::Client::connect(port);
            let frame = frame.clone();
            move |_| c.call(&frame).ok().and_then(|b| thrift_load::seqid(&b)) == Some(7)
        }
    };
    let server = thrift_load::start_echo_server();
    let port = workspace::free_port();
    let tcp = plan.measure(
        &envoy_from("tcp_proxy.yaml", "bench-thrift-tcp", port, server),
        connect(port),
    );
    let port = workspace::free_port();
    let native = plan.measure(
        &envoy_from("thrift_proxy.yaml", "bench-thrift-native", port, server),
        connect(port),
    );
    let wasm = workspace::build_wasm("meltemi-thrift");
    let (port, admin) = (workspace::free_port(), workspace::free_port());
    let config = Bridge {
        protocol: "thrift",
        wasm: &wasm,
        front: serde_json::json!({"service": "echo", "codec": {"transport": "framed", "protocol": "binary"}}),
        back: serde_json::json!({"codec": {"transport": "framed", "protocol": "binary"}}),
        listen_port: port,
        admin_port: admin,
        destinations: vec![Destination { cluster: "server".into(), port: server }],
        virtual_hosts: vec![serde_json::json!({
            "name": "echo", "domains": ["echo"], "routes": [method_route("echo", "echo", "server")]
        })],
        http_filters: vec![],
    }
    .render();
    let bridge = plan.measure(
        &Envoy::start("bench-thrift-bridge", &config, admin),
        connect(port),
    );
    table(
        "Thrift framed/binary (128-byte string)",
        &[
            ("tcp_proxy", tcp),
            ("native thrift_proxy", native),
            ("meltemi bridge (HTTP/1)", bridge),
        ],
    );
    println!(
        "  bridge / native thrift_proxy CPU: {:.2}×",
        bridge.cpu_us_per_request() / native.cpu_us_per_request()
    );
}

fn dubbo(plan: &Plan) {
    let connect = |port: u16| {
        move || {
            let mut c = dubbo_load::Client::connect(port);
            move |i: u64| {
                let id = i + 1;
                c.call(&dubbo_load::echo_request(id))
                    .map(|f| dubbo_load::request_id(&f))
                    .ok()
                    == Some(id)
            }
        }
    };
    let server = dubbo_load::start_echo_provider();
    let mut rows = Vec::new();
    for (name, template) in [
        ("tcp_proxy", "tcp_proxy.yaml"),
        ("native dubbo_proxy", "dubbo_proxy.yaml"),
        ("generic_proxy (dubbo)", "generic_proxy_dubbo.yaml"),
    ] {
        let port = workspace::free_port();
        rows.push((
            name,
            plan.measure(
                &envoy_from(template, "bench-dubbo", port, server),
                connect(port),
            ),
        ));
    }
    let wasm = workspace::build_wasm("meltemi-dubbo");
    let (port, admin) = (workspace::free_port(), workspace::free_port());
    let config = Bridge {
        protocol: "dubbo",
        wasm: &wasm,
        front: serde_json::json!({}),
        back: serde_json::json!({}),
        listen_port: port,
        admin_port: admin,
        destinations: vec![Destination {
            cluster: "server".into(),
            port: server,
        }],
        virtual_hosts: vec![serde_json::json!({
            "name": "echo", "domains": ["org.meltemi.demo.EchoService"],
            "routes": [method_route("org.meltemi.demo.EchoService", "echo", "server")]
        })],
        http_filters: vec![],
    }
    .render();
    rows.push((
        "meltemi bridge (HTTP/1)",
        plan.measure(
            &Envoy::start("bench-dubbo-bridge", &config, admin),
            connect(port),
        ),
    ));
    table(
        "Dubbo2 / Hessian2 (captured echo call, 214-byte request)",
        &rows,
    );
    println!(
        "  bridge / native dubbo_proxy CPU: {:.2}×",
        rows[3].1.cpu_us_per_request() / rows[1].1.cpu_us_per_request()
    );
}

/// The Dubbo bridge's bootstrap on `port` to the echo provider on `server`, with `front`.
fn dubbo_bridge(port: u16, admin: u16, server: u16, front: serde_json::Value) -> String {
    let wasm = workspace::build_wasm("meltemi-dubbo");
    Bridge {
        protocol: "dubbo",
        wasm: &wasm,
        front,
        back: serde_json::json!({}),
        listen_port: port,
        admin_port: admin,
        destinations: vec![Destination {
            cluster: "server".into(),
            port: server,
        }],
        virtual_hosts: vec![serde_json::json!({
            "name": "echo", "domains": ["org.meltemi.demo.EchoService"],
            "routes": [method_route("org.meltemi.demo.EchoService", "echo", "server")]
        })],
        http_filters: vec![],
    }
    .render()
}

fn in_flight(calls: u64) {
    let server = dubbo_load::start_echo_provider();
    let mut paths: Vec<(&str, Envoy, u16)> = Vec::new();
    for (name, template) in [
        ("tcp_proxy", "tcp_proxy.yaml"),
        ("native dubbo_proxy", "dubbo_proxy.yaml"),
    ] {
        let port = workspace::free_port();
        paths.push((
            name,
            envoy_from(template, "bench-inflight", port, server),
            port,
        ));
    }
    for (name, front) in [
        ("meltemi bridge (HTTP/1)", serde_json::json!({})),
        (
            "meltemi bridge (HTTP/2)",
            serde_json::json!({"hcm_protocol": "http2"}),
        ),
    ] {
        let (port, admin) = (workspace::free_port(), workspace::free_port());
        let config = dubbo_bridge(port, admin, server, front);
        paths.push((
            name,
            Envoy::start("bench-inflight-bridge", &config, admin),
            port,
        ));
    }
    println!("Dubbo2 echo, ONE client connection, {calls} calls per path and depth, Envoy --concurrency 1");
    for depth in [1u64, 8, 32] {
        let rows: Vec<(&str, Measurement)> = paths
            .iter()
            .map(|(name, envoy, port)| {
                dubbo_load::run_in_flight(envoy.pid(), *port, depth, calls / 10 + depth);
                (
                    *name,
                    dubbo_load::run_in_flight(envoy.pid(), *port, depth, calls),
                )
            })
            .collect();
        table(&format!("{depth} in flight"), &rows);
        println!(
            "  bridge HTTP/2 / native dubbo_proxy CPU: {:.2}×, HTTP/2 / HTTP/1 wall time: {:.2}×",
            rows[3].1.cpu_us_per_request() / rows[1].1.cpu_us_per_request(),
            rows[3].1.elapsed.as_secs_f64() / rows[2].1.elapsed.as_secs_f64()
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("inflight") {
        in_flight(args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20_000));
        return;
    }
    let plan = Plan {
        connections: args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4),
        per_connection: args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5000),
    };
    println!(
        "{} connections × {} closed-loop requests per path, Envoy --concurrency 1, all on 127.0.0.1",
        plan.connections, plan.per_connection
    );
    minirpc(&plan);
    thrift(&plan);
    dubbo(&plan);
}
