//! Paired benchmarks on real Envoy 1.40 (`--concurrency 1` each), one command for the table in
//! `docs/benchmarks.md`:
//! - Thrift framed/binary: `tcp_proxy`, native `thrift_proxy`, the HCM floor, the wasm bridge,
//!   wasm front + native back (mix), the native build;
//! - Dubbo2: `tcp_proxy`, native `dubbo_proxy`, `generic_proxy` (dubbo codec), the HCM floor,
//!   the same three Meltemi builds.
//!
//! The HCM floor is Envoy's HTTP connection manager and router with no module (an HTTP/1.1
//! client and server exchanging the protocol's frame as bodies): the part of every Meltemi
//! path's cost that is Envoy's HTTP stack, so a ratio target can be read against what the
//! machine at hand allows.
//!
//! Every path's Envoy runs for the whole benchmark; each round measures the native proxy and
//! then each other path right after it with the same client shape, so a path's ratio to the
//! native proxy is paired (other jobs on a shared machine move absolute figures by up to 2×
//! between minutes, ratios much less). Reported per path: Envoy CPU µs per request (median of
//! rounds), its ratio to the native proxy (median and min..max over rounds), requests per
//! second, and latency p50/p99/p999 from a histogram over all rounds; then one fixed-rate run
//! per path, whose latency counts from when each call was due (no coordinated omission).
//!
//! Then Dubbo2 and Thrift on ONE client connection with 1, 8 and 32 calls in flight (a
//! multiplexing Dubbo consumer, answers matched by id; a pipelining Thrift client, by seqid):
//! tcp_proxy, the native `dubbo_proxy` / `thrift_proxy`, and the Meltemi builds with HTTP/1.1
//! and with HTTP/2 toward HCM; at each depth every path runs right after the native proxy.
//! `MELTEMI_BENCH_PROTOCOLS` picks tables: `thrift,dubbo,inflight,thrift-inflight` (default).
//!
//! Usage: `meltemi-bench [rounds=5] [connections=4] [requests=10000] [rate=2000]
//! [inflight=20000] [out=FILE]` (requests per connection per run; rate = total calls/s of the
//! fixed-rate run; inflight = calls per path and depth, 0 to skip).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use meltemi_e2e::bootstrap::{method_route, Bridge, Destination, Engine};
use meltemi_e2e::envoy::{envoy_binary, Envoy};
use meltemi_e2e::load::{self, Measurement};
use meltemi_e2e::{dubbo_load, http_load, thrift_load, workspace};
use serde_json::json;

struct Args {
    rounds: usize,
    connections: usize,
    requests: u64,
    rate: u64,
    inflight: u64,
    out: Option<String>,
    /// Only the paths whose label contains this (the native proxy always runs).
    only: Option<String>,
}

impl Args {
    fn parse() -> Args {
        let mut a = Args {
            rounds: 5,
            connections: 4,
            requests: 10_000,
            rate: 2_000,
            inflight: 20_000,
            out: None,
            only: None,
        };
        for arg in std::env::args().skip(1) {
            let (k, v) = arg.split_once('=').unwrap_or((arg.as_str(), ""));
            match k {
                "rounds" => a.rounds = v.parse().expect("rounds=N"),
                "connections" => a.connections = v.parse().expect("connections=N"),
                "requests" => a.requests = v.parse().expect("requests=N"),
                "rate" => a.rate = v.parse().expect("rate=N"),
                "inflight" => a.inflight = v.parse().expect("inflight=N"),
                "out" => a.out = Some(v.to_owned()),
                "only" => a.only = Some(v.to_owned()),
                other => {
                    panic!("unknown argument {other:?} (rounds= connections= requests= rate= out=)")
                }
            }
        }
        a
    }
}

/// Label of the HCM floor path: what any bridge through HCM pays before its own work.
const HCM_FLOOR: &str = "HCM floor: HTTP/1.1 client → HCM router → HTTP/1.1 server, no module";

/// One way through Envoy, running for the whole benchmark.
struct Route {
    label: &'static str,
    envoy: Envoy,
    port: u16,
    /// Driven by HTTP/1.1 clients (the HCM floor) instead of the protocol's own.
    http: bool,
}

/// A route through the Envoy of `template` (in `tests/e2e/configs`), driven by the protocol's
/// clients.
fn anchor(label: &'static str, template: &str, name: &str, server: u16) -> Route {
    let (envoy, port) = envoy_from(template, name, server);
    Route {
        label,
        envoy,
        port,
        http: false,
    }
}

/// The HCM floor path, in front of its own HTTP/1.1 echo server. Its clients send the
/// protocol's call frame as the request body, so the same bytes cross Envoy each way.
fn hcm_floor() -> Route {
    let (envoy, port) = envoy_from(
        "hcm_floor.yaml",
        "bench-hcm-floor",
        http_load::start_echo_server(),
    );
    Route {
        label: HCM_FLOOR,
        envoy,
        port,
        http: true,
    }
}

/// A client of the HCM floor sending `frame` as the body of each request, checking the echo.
fn http_echo_client(port: u16, frame: &[u8]) -> Box<dyn FnMut(u64) -> bool> {
    let mut c = http_load::Client::connect(port);
    let request = http_load::request("echo", "/echo/echo", frame);
    let frame = frame.to_vec();
    Box::new(move |_| {
        c.call(&request)
            .is_ok_and(|(status, body)| status == 200 && body == frame)
    })
}

fn envoy_from(template: &str, name: &str, server: u16) -> (Envoy, u16) {
    let (admin, listen) = (workspace::free_port(), workspace::free_port());
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
    (Envoy::start(name, &config, admin), listen)
}

/// A codec deployed in front of one echo server, routing `host`/`method` to it.
struct Codec<'a> {
    protocol: &'static str,
    package: &'a str,
    module: &'a str,
    front: serde_json::Value,
    back: serde_json::Value,
    host: &'a str,
    method: &'a str,
}

/// The three Meltemi builds of `codec` in front of `server`.
fn meltemi_routes(codec: Codec<'_>, server: u16) -> Vec<Route> {
    let Codec {
        protocol,
        package,
        module,
        front,
        back,
        host,
        method,
    } = codec;
    let wasm = workspace::build_for(Engine::Native, package);
    [
        (Engine::Wasm, "meltemi wasm"),
        (Engine::Mix, "meltemi wasm front + native back"),
        (Engine::Native, "meltemi native"),
    ]
    .into_iter()
    .map(|(engine, label)| {
        let (port, admin) = (workspace::free_port(), workspace::free_port());
        let config = Bridge {
            protocol,
            wasm: &wasm,
            engine,
            module,
            front: front.clone(),
            back: back.clone(),
            listen_port: port,
            admin_port: admin,
            destinations: vec![Destination {
                cluster: "server".into(),
                port: server,
            }],
            virtual_hosts: vec![json!({
                "name": "echo", "domains": [host], "routes": [method_route(host, method, "server")]
            })],
            http_filters: vec![],
        }
        .render();
        let envoy = Envoy::start(
            &format!("bench-{protocol}-{}", engine.name()),
            &config,
            admin,
        );
        Route {
            label,
            envoy,
            port,
            http: false,
        }
    })
    .collect()
}

/// Results of one path over all rounds.
struct Row {
    label: &'static str,
    cpu: Vec<f64>,
    ratio: Vec<f64>,
    rate: Vec<f64>,
    latency: Option<Measurement>,
    paced: Option<Measurement>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// Paired rounds over `routes` (the first is the native proxy every other one is paired with).
fn bench<F, C>(args: &Args, routes: &[Route], connect: F) -> Vec<Row>
where
    F: Fn(&Route) -> C + Sync,
    C: FnMut(u64) -> bool,
{
    let measure = |r: &Route, requests: u64, interval: Option<Duration>| {
        let connect = || connect(r);
        // Warm-up: pools, V8 tiering, the server's threads.
        load::run(r.envoy.pid(), args.connections, requests / 10 + 1, connect);
        load::run_paced(r.envoy.pid(), args.connections, requests, interval, connect)
    };
    let routes: Vec<&Route> = routes
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            *i == 0
                || args
                    .only
                    .as_ref()
                    .is_none_or(|o| r.label.contains(o.as_str()))
        })
        .map(|(_, r)| r)
        .collect();
    let mut rows: Vec<Row> = routes
        .iter()
        .map(|r| Row {
            label: r.label,
            cpu: Vec::new(),
            ratio: Vec::new(),
            rate: Vec::new(),
            latency: None,
            paced: None,
        })
        .collect();
    let absorb = |row: &mut Row, m: Measurement, base: Option<f64>| {
        row.cpu.push(m.cpu_us_per_request());
        row.rate.push(m.rate());
        if let Some(base) = base {
            row.ratio.push(m.cpu_us_per_request() / base);
        }
        match &mut row.latency {
            Some(all) => {
                let _ = all.latency.add(&m.latency);
            }
            None => row.latency = Some(m),
        }
    };
    for round in 0..args.rounds {
        for i in 1..routes.len() {
            let base = measure(routes[0], args.requests, None);
            let other = measure(routes[i], args.requests, None);
            let b = base.cpu_us_per_request();
            eprintln!(
                "round {round}: {} {:.1} µs/req, {} {:.1} µs/req ({:.2}×)",
                routes[0].label,
                b,
                routes[i].label,
                other.cpu_us_per_request(),
                other.cpu_us_per_request() / b
            );
            absorb(&mut rows[0], base, Some(b));
            absorb(&mut rows[i], other, Some(b));
        }
    }
    let per_conn = args.rate as f64 / args.connections as f64;
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let paced_requests = (args.rate * 5 / args.connections as u64).max(100);
    for (row, route) in rows.iter_mut().zip(&routes) {
        row.paced = Some(measure(route, paced_requests, Some(interval)));
    }
    rows
}

fn table(out: &mut String, title: &str, baseline: &str, rows: &[Row], args: &Args) {
    let _ = writeln!(out, "\n### {title}\n");
    let _ = writeln!(
        out,
        "Closed loop, {} connections × {} calls per run, {} rounds; ratio = Envoy CPU per request ÷ {baseline} measured right before it.\n",
        args.connections, args.requests, args.rounds
    );
    let _ = writeln!(
        out,
        "| path | Envoy CPU µs/req (median) | × {baseline} (median, min..max) | req/s | p50 µs | p99 µs | p999 µs |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for row in rows {
        let (lo, hi) = spread(&row.ratio);
        let lat = row.latency.as_ref();
        let p = |q| lat.map_or(0, |m| m.latency_us(q));
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.2} ({:.2}..{:.2}) | {:.0} | {} | {} | {} |",
            row.label,
            median(&row.cpu),
            median(&row.ratio),
            lo,
            hi,
            median(&row.rate),
            p(50.0),
            p(99.0),
            p(99.9)
        );
    }
    let _ = writeln!(
        out,
        "\nFixed rate: {} calls/s in all over {} connections, latency from each call's due time.\n",
        args.rate, args.connections
    );
    let _ = writeln!(
        out,
        "| path | Envoy CPU µs/req | p50 µs | p99 µs | p999 µs |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for row in rows {
        if let Some(m) = &row.paced {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {} | {} | {} |",
                row.label,
                m.cpu_us_per_request(),
                m.latency_us(50.0),
                m.latency_us(99.0),
                m.latency_us(99.9)
            );
        }
    }
}

/// The Thrift table; returns the native build's and the HCM floor's median ratios.
fn thrift(args: &Args, out: &mut String) -> (f64, f64) {
    let frame = thrift_load::call_frame("echo", 7, &[b'x'; 128]);
    let server = thrift_load::start_echo_server();
    let mut routes = vec![
        anchor(
            "native thrift_proxy",
            "thrift_proxy.yaml",
            "bench-thrift",
            server,
        ),
        anchor("tcp_proxy", "tcp_proxy.yaml", "bench-thrift", server),
    ];
    routes.push(hcm_floor());
    let codec = json!({"codec": {"transport": "framed", "protocol": "binary"}});
    let mut front = codec.clone();
    front["service"] = json!("echo");
    front["known_methods"] = json!(["echo"]);
    routes.extend(meltemi_routes(
        Codec {
            protocol: "thrift",
            package: "meltemi-thrift",
            module: "meltemi_thrift",
            front,
            back: codec,
            host: "echo",
            method: "echo",
        },
        server,
    ));
    let rows = bench(args, &routes, |route| -> Box<dyn FnMut(u64) -> bool> {
        if route.http {
            return http_echo_client(route.port, &frame);
        }
        let mut c = thrift_load::Client::connect(route.port);
        let frame = frame.clone();
        Box::new(move |_| c.call(&frame).ok().and_then(|b| thrift_load::seqid(&b)) == Some(7))
    });
    table(
        out,
        "Thrift framed/binary, 128-byte string echo",
        "thrift_proxy",
        &rows,
        args,
    );
    (ratio(&rows, "meltemi native"), ratio(&rows, HCM_FLOOR))
}

/// The Dubbo table; returns the native build's and the HCM floor's median ratios.
fn dubbo(args: &Args, out: &mut String) -> (f64, f64) {
    let server = dubbo_load::start_echo_provider();
    let mut routes = Vec::new();
    for (label, template) in [
        ("native dubbo_proxy", "dubbo_proxy.yaml"),
        ("tcp_proxy", "tcp_proxy.yaml"),
        ("generic_proxy (dubbo codec)", "generic_proxy_dubbo.yaml"),
    ] {
        routes.push(anchor(label, template, "bench-dubbo", server));
    }
    routes.push(hcm_floor());
    let iface = "org.meltemi.demo.EchoService";
    let front = json!({"known_services": [iface], "known_methods": ["echo"]});
    routes.extend(meltemi_routes(
        Codec {
            protocol: "dubbo",
            package: "meltemi-dubbo",
            module: "meltemi_dubbo",
            front,
            back: json!({}),
            host: iface,
            method: "echo",
        },
        server,
    ));
    let rows = bench(args, &routes, |route| -> Box<dyn FnMut(u64) -> bool> {
        if route.http {
            return http_echo_client(route.port, &dubbo_load::echo_request(1));
        }
        let mut c = dubbo_load::Client::connect(route.port);
        Box::new(move |i: u64| {
            let id = i + 1;
            c.call(&dubbo_load::echo_request(id))
                .map(|f| dubbo_load::request_id(&f))
                .ok()
                == Some(id)
        })
    });
    table(
        out,
        "Dubbo2 / Hessian2, captured echo call (214-byte request)",
        "dubbo_proxy",
        &rows,
        args,
    );
    (ratio(&rows, "meltemi native"), ratio(&rows, HCM_FLOOR))
}

/// The median ratio of the path labelled `label`.
fn ratio(rows: &[Row], label: &str) -> f64 {
    rows.iter()
        .find(|r| r.label == label)
        .map_or(f64::NAN, |r| median(&r.ratio))
}

/// Which protocol an in-flight table loads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum InFlight {
    /// A multiplexing Dubbo2 consumer (answers matched by id, any order) against dubbo_proxy.
    Dubbo,
    /// A pipelining framed/binary Thrift client (answers matched by seqid) against thrift_proxy.
    Thrift,
}

/// Calls in flight on one client connection: every path at 1, 8 and 32.
fn in_flight(args: &Args, out: &mut String, kind: InFlight) {
    let (server, proxy, baseline, protocol, package, module, host, codec) = match kind {
        InFlight::Dubbo => {
            let iface = "org.meltemi.demo.EchoService";
            (
                dubbo_load::start_echo_provider(),
                ("native dubbo_proxy", "dubbo_proxy.yaml"),
                "dubbo_proxy",
                "dubbo",
                "meltemi-dubbo",
                "meltemi_dubbo",
                iface,
                (
                    json!({"known_services": [iface], "known_methods": ["echo"]}),
                    json!({}),
                ),
            )
        }
        InFlight::Thrift => {
            let codec = json!({"codec": {"transport": "framed", "protocol": "binary"}});
            let mut front = codec.clone();
            front["service"] = json!("echo");
            front["known_methods"] = json!(["echo"]);
            (
                thrift_load::start_echo_server(),
                ("native thrift_proxy", "thrift_proxy.yaml"),
                "thrift_proxy",
                "thrift",
                "meltemi-thrift",
                "meltemi_thrift",
                "echo",
                (front, codec),
            )
        }
    };
    let load = match kind {
        InFlight::Dubbo => dubbo_load::run_in_flight,
        InFlight::Thrift => thrift_load::run_in_flight,
    };
    let mut routes = Vec::new();
    for (label, template) in [proxy, ("tcp_proxy", "tcp_proxy.yaml")] {
        routes.push(anchor(label, template, "bench-inflight", server));
    }
    for (hcm, labels) in [
        (
            "http1",
            ["meltemi wasm, HTTP/1.1", "meltemi native, HTTP/1.1"],
        ),
        ("http2", ["meltemi wasm, HTTP/2", "meltemi native, HTTP/2"]),
    ] {
        let mut front = codec.0.clone();
        front["hcm_protocol"] = json!(hcm);
        let builds = meltemi_routes(
            Codec {
                protocol,
                package,
                module,
                front,
                back: codec.1.clone(),
                host,
                method: "echo",
            },
            server,
        );
        for r in builds {
            let label = match r.label {
                "meltemi wasm" => labels[0],
                "meltemi native" => labels[1],
                _ => continue,
            };
            routes.push(Route { label, ..r });
        }
    }
    let (title, how) = match kind {
        InFlight::Dubbo => ("Dubbo2", "answers matched by id, any order"),
        InFlight::Thrift => (
            "Thrift framed/binary, 128-byte string echo",
            "answers matched by seqid",
        ),
    };
    let _ = writeln!(
        out,
        "\n### {title}, calls in flight on one client connection\n\nOne connection, {} calls per path and depth; a new call as each answer arrives ({how}); × = Envoy CPU per call ÷ {baseline} measured right before.\n",
        args.inflight
    );
    let _ = writeln!(
        out,
        "| in flight | path | Envoy CPU µs/call | × {baseline} | calls/s | p50 µs | p99 µs |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for depth in [1u64, 8, 32] {
        for route in &routes[1..] {
            let run = |r: &Route| {
                load(r.envoy.pid(), r.port, depth, args.inflight / 10 + depth);
                load(r.envoy.pid(), r.port, depth, args.inflight)
            };
            let base = run(&routes[0]);
            let m = run(route);
            if route.label == routes[1].label {
                row_in_flight(out, depth, &routes[0], &base, &base);
            }
            row_in_flight(out, depth, route, &m, &base);
            eprintln!(
                "{depth} in flight: {} {:.1} µs/call ({:.2}× {baseline})",
                route.label,
                m.cpu_us_per_request(),
                m.cpu_us_per_request() / base.cpu_us_per_request()
            );
        }
    }
}

fn row_in_flight(out: &mut String, depth: u64, r: &Route, m: &Measurement, base: &Measurement) {
    let _ = writeln!(
        out,
        "| {depth} | {} | {:.1} | {:.2} | {:.0} | {} | {} |",
        r.label,
        m.cpu_us_per_request(),
        m.cpu_us_per_request() / base.cpu_us_per_request(),
        m.rate(),
        m.latency_us(50.0),
        m.latency_us(99.0)
    );
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let envoy = run(&envoy_binary(), &["--version"]);
    let envoy = envoy.split("version: ").nth(1).unwrap_or(&envoy).to_owned();
    format!(
        "{cores} × {model}, Linux {}, Envoy {envoy}; load generator, echo servers and Envoy share the machine",
        run("uname", &["-r"])
    )
}

fn main() {
    let args = Args::parse();
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Generated by `cargo run --release -p meltemi-e2e --bin meltemi-bench -- rounds={} connections={} requests={} rate={} out=docs/benchmarks.md` on {}.\n",
        args.rounds,
        args.connections,
        args.requests,
        args.rate,
        run_date()
    );
    let _ = writeln!(out, "Machine: {}.", machine());
    let _ = writeln!(
        out,
        "\nEvery Envoy runs with one worker thread. Envoy CPU is read from `/proc/<pid>/stat` before and after each run, so it does not depend on how busy the load generator is; absolute figures move with other jobs on the machine, paired ratios much less."
    );
    let protocols = std::env::var("MELTEMI_BENCH_PROTOCOLS")
        .unwrap_or_else(|_| "thrift,dubbo,inflight,thrift-inflight".into());
    let wanted = |p: &str| protocols.split(',').any(|x| x.trim() == p);
    let (thrift, floor) = if wanted("thrift") {
        thrift(&args, &mut out)
    } else {
        (f64::NAN, f64::NAN)
    };
    let (dubbo, dubbo_floor) = if wanted("dubbo") {
        dubbo(&args, &mut out)
    } else {
        (f64::NAN, f64::NAN)
    };
    if args.inflight > 0 && wanted("inflight") {
        in_flight(&args, &mut out, InFlight::Dubbo);
    }
    if args.inflight > 0 && wanted("thrift-inflight") {
        in_flight(&args, &mut out, InFlight::Thrift);
    }
    let _ = writeln!(
        out,
        "\nTargets (issue 9): the native build ≤ 1.8× the native proxies' CPU per request — measured {thrift:.2}× (Thrift) and {dubbo:.2}× (Dubbo); wasm front + native back ≤ 2.4×: see the tables. Envoy's HCM and router alone (the HCM floor, no module) measured {floor:.2}× thrift_proxy and {dubbo_floor:.2}× dubbo_proxy in the same run: every bridge through HCM costs at least that."
    );
    print!("{out}");
    if let Some(path) = &args.out {
        std::fs::write(Path::new(path), &out).expect("write the report");
        eprintln!("written to {path}");
    }
}

fn run_date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
