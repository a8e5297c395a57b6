//! Benchmarks: the same MiniRPC traffic through plain `tcp_proxy` and through the Meltemi
//! bridge, side by side in one run, on real Envoy 1.40 (one worker thread each).
//!
//! Reports requests per second and, more stable on a shared machine, Envoy CPU per request and
//! its ratio to tcp_proxy. Usage: `meltemi-bench [connections] [requests-per-connection]`.

use meltemi_e2e::envoy::Envoy;
use meltemi_e2e::load::{self, Measurement};
use meltemi_e2e::minirpc_peer::{request, Client, Deployment, Server};
use meltemi_e2e::workspace;

fn minirpc_load(envoy: &Envoy, port: u16, connections: usize, per_connection: u64) -> Measurement {
    let payload = vec![b'x'; 128];
    let req = request(1, "echo", &[("version", "v1")], &payload);
    // Warm-up: connection pools, V8 tiering.
    load::run(envoy.pid(), connections, per_connection / 10 + 1, || {
        let mut c = Client::connect(port);
        let req = req.clone();
        move |_| c.call(&req).payload.len() == 131
    });
    load::run(envoy.pid(), connections, per_connection, || {
        let mut c = Client::connect(port);
        let req = req.clone();
        move |_| c.call(&req).payload.len() == 131
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let connections: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    let per_connection: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5000);
    println!("MiniRPC, {connections} connections × {per_connection} closed-loop requests, 128-byte payloads, Envoy --concurrency 1");

    let server = Server::start("v1");
    let (port, admin) = (workspace::free_port(), workspace::free_port());
    let template =
        std::fs::read_to_string(workspace::root().join("tests/e2e/configs/tcp_proxy.yaml"))
            .expect("config");
    let config = workspace::render(
        &template,
        &[
            ("ADMIN_PORT", admin.to_string()),
            ("LISTEN_PORT", port.to_string()),
            ("SERVER_PORT", server.port.to_string()),
        ],
    );
    let tcp = {
        let envoy = Envoy::start("bench-tcp", &config, admin);
        minirpc_load(&envoy, port, connections, per_connection)
    };
    let bridge = {
        let d = Deployment::start("bench-bridge");
        minirpc_load(&d.envoy, d.port, connections, per_connection)
    };
    println!(
        "{:<24} {:>10} {:>12} {:>16} {:>10}",
        "path", "requests", "req/s", "envoy CPU µs/req", "CPU ratio"
    );
    for (name, m) in [("tcp_proxy", tcp), ("meltemi bridge (HTTP/1)", bridge)] {
        println!(
            "{name:<24} {:>10} {:>12.0} {:>16.1} {:>9.2}×",
            m.requests,
            m.rate(),
            m.cpu_us_per_request(),
            m.cpu_us_per_request() / tcp.cpu_us_per_request()
        );
    }
}
