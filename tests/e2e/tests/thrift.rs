//! Thrift through the real Envoy 1.40 on every engine (`meltemi_thrift.wasm` on both sides of
//! the bridge, the `libmeltemi_thrift.so` dynamic module on both sides, and the mix; each test
//! runs as `wasm::<name>`, `native::<name>` and `mix::<name>`), driven by real Thrift stacks (`tests/peers/thrift/`): Apache Thrift (PyPI `thrift`
//! 0.25) and thriftpy2, as clients and servers, over every transport and protocol they speak.
//!
//! Every assertion is on what a real client printed or on Envoy's Prometheus counters. Each
//! test starts one Envoy and its servers and runs all its clients against them; several
//! transport/protocol combinations share one Envoy through one front listener per combination
//! (a Thrift message names no service, so each listener's fixed `service` picks the virtual
//! host, and that host's route picks the server of the same combination).
//!
//! Skipped with a note when the peers are not installed, unless `MELTEMI_REQUIRE_PEERS=1`.

use std::path::Path;

use meltemi_e2e::bootstrap::{Bridge, Destination, Engine};
use meltemi_e2e::envoy::Envoy;
use meltemi_e2e::thrift_peer::{peers_available, Client, ClientOutput, Impl, Server};
use meltemi_e2e::workspace;
use serde_json::{json, Value};

/// What `peer_common.UTF8_SAMPLE` is: non-ASCII Latin, CJK, 4-byte emoji, a combining mark.
const UTF8_SAMPLE: &str =
    "h\u{e9}llo w\u{f6}rld \u{65e5}\u{672c}\u{8a9e} \u{1F980}\u{1F680} e\u{301}";

/// Transport/protocol combinations, as peer flags. `buffered` is the codec's `unframed`.
const APACHE_COMBOS: [(&str, &str); 6] = [
    ("buffered", "binary"),
    ("buffered", "compact"),
    ("framed", "binary"),
    ("framed", "compact"),
    ("header", "binary"),
    ("header", "compact"),
];
const THRIFTPY2_COMBOS: [(&str, &str); 4] = [
    ("buffered", "binary"),
    ("buffered", "compact"),
    ("framed", "binary"),
    ("framed", "compact"),
];

fn codec_transport(peer_transport: &str) -> &str {
    match peer_transport {
        "buffered" => "unframed",
        other => other,
    }
}

/// One front listener of a test's Envoy.
struct Front {
    port: u16,
    /// Front plugin configuration (`role` is added).
    config: Value,
}

/// The methods of `tests/peers/thrift/echo.thrift`: what the controller would list from the
/// routes, so that the native build defines their metrics when it loads.
const METHODS: [&str; 8] = [
    "echo", "add", "blob", "fail", "notify", "mirror", "ping", "inspect",
];

impl Front {
    fn new(mut config: Value) -> Front {
        config["known_methods"] = json!(METHODS);
        Front {
            port: workspace::free_port(),
            config,
        }
    }

    /// A front with a fixed `service` and an explicit codec configuration for one combination
    /// (the back side stays on `auto`, so both configuration styles are exercised).
    fn fixed(service: &str, transport: &str, protocol: &str) -> Front {
        Front::new(json!({
            "service": service,
            "codec": {"transport": codec_transport(transport), "protocol": protocol}
        }))
    }
}

/// A bridge bootstrap with several front listeners. `Bridge` renders one; the others are
/// copies of it with their own port and plugin configuration, sharing the route table and
/// the destinations (same wasm VM, one plugin configuration each).
fn render(
    engine: Engine,
    wasm: &Path,
    admin_port: u16,
    fronts: &[Front],
    destinations: Vec<Destination>,
    virtual_hosts: Vec<Value>,
) -> String {
    let first = fronts.first().expect("at least one front");
    let rendered = Bridge {
        protocol: "thrift",
        wasm,
        engine,
        module: "meltemi_thrift",
        front: first.config.clone(),
        back: json!({"codec": {"transport": "auto", "protocol": "auto"}}),
        listen_port: first.port,
        admin_port,
        destinations,
        virtual_hosts,
        http_filters: vec![],
    }
    .render();
    let mut bootstrap: Value = serde_json::from_str(&rendered).expect("rendered JSON");
    let listeners = bootstrap["static_resources"]["listeners"]
        .as_array_mut()
        .expect("listeners");
    let template = listeners[0].clone();
    for (i, front) in fronts.iter().enumerate().skip(1) {
        let mut listener = template.clone();
        listener["name"] = json!(format!("thrift_front_{i}"));
        listener["address"]["socket_address"]["port_value"] = json!(front.port);
        let mut config = front.config.clone();
        config["role"] = json!("front");
        // The copies share the first front's HCM, so they speak its HTTP version.
        if let Some(p) = meltemi_e2e::workspace::hcm_protocol_override() {
            if config.get("hcm_protocol").is_none() {
                config["hcm_protocol"] = json!(p);
            }
        }
        let filter = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
        let value = if engine == Engine::Native {
            &mut filter["filter_config"]["value"]
        } else {
            &mut filter["config"]["configuration"]["value"]
        };
        *value = json!(config.to_string());
        listeners.push(listener);
    }
    bootstrap.to_string()
}

/// A virtual host for `service` sending every method to `cluster`.
fn whole_service(service: &str, cluster: &str) -> Value {
    json!({
        "name": service, "domains": [service],
        "routes": [{"match": {"prefix": format!("/{service}/")}, "route": meltemi_e2e::bootstrap::route_action(cluster)}]
    })
}

fn destination(cluster: &str, server: &Server) -> Destination {
    Destination {
        cluster: cluster.to_owned(),
        port: server.port,
    }
}

/// The lines the `e2e` scenario prints when server `tag` answers everything for `msg`.
fn expected_e2e(tag: &str, msg: &str) -> Vec<String> {
    [
        format!("echo {tag}:{msg}"),
        "add -3".into(),
        "blob ff0201".into(),
        "fail EchoError boom".into(),
        // INTERNAL_ERROR raised by the server: a TApplicationException passes through too.
        "fail TApplicationException 6".into(),
        "notify sent".into(),
        "mirror ok".into(),
        "ping None".into(),
        format!("big {} {tag}:", 100_000 + tag.len() + 1),
        format!("utf8 {tag}:{UTF8_SAMPLE}"),
        "i64 9223372036854775807 -9223372036854775808 -9223372036854775808 9223372036854775807"
            .into(),
        "fail EchoError again 42".into(),
        "oneway delivered".into(),
        format!("after {tag}:{msg}-after"),
    ]
    .into()
}

/// Asserts a client exited cleanly having printed exactly `want`.
fn assert_printed(what: &str, out: &ClientOutput, want: &[String], envoy: &Envoy) {
    let got = out.lines();
    assert!(
        out.success() && got == want,
        "{what}: exit {:?}\n--- got\n{}\n--- want\n{}\n--- stderr\n{}\n--- envoy\n{}",
        out.status,
        out.stdout,
        want.join("\n"),
        out.stderr,
        tail(&envoy.log(), 40)
    );
}

/// Envoy logged no error: a trapped wasm VM, a rejected buffer call or a codec failure would.
fn assert_clean_log(envoy: &Envoy) {
    let log = envoy.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("][error][") || l.contains("][critical][") || l.contains("panicked"))
        .collect();
    assert!(bad.is_empty(), "Envoy logged errors:\n{}", bad.join("\n"));
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `clients` at most three at a time (two cores are shared with Envoy and the servers).
fn run_all(clients: &[Client]) -> Vec<ClientOutput> {
    clients
        .chunks(3)
        .flat_map(|batch| {
            let running: Vec<_> = batch.iter().map(Client::spawn).collect();
            running.into_iter().map(|r| r.finish()).collect::<Vec<_>>()
        })
        .collect()
}

/// Waits for `metric{labels}` to reach `want` and asserts it is exactly `want`.
fn assert_counter(envoy: &Envoy, metric: &str, labels: &[(&str, &str)], want: f64) {
    let got = envoy.wait_prom(metric, labels, want);
    assert!(
        got == want,
        "{metric}{labels:?} = {got}, want {want}\n{}",
        envoy
            .prometheus()
            .lines()
            .filter(|l| l.starts_with("meltemi_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The `e2e` scenario (echo, 100 kB, UTF-8, i64 extremes, declared exception, one-way then a
/// two-way call, nested struct, void) from Apache clients to Apache servers, for all six
/// transport × protocol combinations, through one Envoy.
fn apache_client_to_apache_server_every_transport_and_protocol(engine: Engine) {
    if !peers_available() {
        return;
    }
    let wasm = workspace::build_for(engine, "meltemi-thrift");
    let servers: Vec<Server> = APACHE_COMBOS
        .iter()
        .map(|(t, p)| Server::start(Impl::Apache, t, p, &format!("py-{t}-{p}"), &[]))
        .collect();
    let fronts: Vec<Front> = APACHE_COMBOS
        .iter()
        .map(|(t, p)| Front::fixed(&format!("echo-{t}-{p}"), t, p))
        .collect();
    let admin = workspace::free_port();
    let config = render(
        engine,
        &wasm,
        admin,
        &fronts,
        servers
            .iter()
            .map(|s| destination(&s.tag.replace('-', "_"), s))
            .collect(),
        APACHE_COMBOS
            .iter()
            .map(|(t, p)| whole_service(&format!("echo-{t}-{p}"), &format!("py_{t}_{p}")))
            .collect(),
    );
    let envoy = Envoy::start(&format!("thrift-apache-{}", engine.name()), &config, admin);
    let clients: Vec<Client> = APACHE_COMBOS
        .iter()
        .zip(&fronts)
        .map(|((t, p), f)| {
            Client::new(Impl::Apache, t, p, f.port, "e2e")
                .arg("--msg")
                .arg(t)
        })
        .collect();
    for ((client, out), ((t, _), server)) in clients
        .iter()
        .zip(run_all(&clients))
        .zip(APACHE_COMBOS.iter().zip(&servers))
    {
        assert_printed(
            &client.describe(),
            &out,
            &expected_e2e(&server.tag, t),
            &envoy,
        );
    }

    let n = APACHE_COMBOS.len() as f64;
    let thrift = ("protocol", "thrift");
    // Per client: echo(msg), echo(100 kB), echo(UTF-8), echo(after).
    assert_counter(
        &envoy,
        "meltemi_requests_total",
        &[thrift, ("method", "echo")],
        4.0 * n,
    );
    // Per client: fail(boom) and fail(again) raise EchoError, fail(internal) a server-side
    // TApplicationException; all three are exception replies from the server.
    assert_counter(
        &envoy,
        "meltemi_responses_total",
        &[thrift, ("method", "fail"), ("outcome", "business_error")],
        3.0 * n,
    );
    // Only those: no other answer (nor a delivery probe's) may be taken for an exception.
    assert_counter(
        &envoy,
        "meltemi_responses_total",
        &[thrift, ("outcome", "business_error")],
        3.0 * n,
    );
    assert_counter(
        &envoy,
        "meltemi_responses_total",
        &[thrift, ("method", "echo"), ("outcome", "success")],
        4.0 * n,
    );
    assert_counter(
        &envoy,
        "meltemi_responses_total",
        &[thrift, ("method", "notify"), ("outcome", "oneway")],
        2.0 * n,
    );
    assert_counter(&envoy, "meltemi_local_replies_total", &[thrift], 0.0);
    assert_counter(&envoy, "meltemi_decode_errors_total", &[thrift], 0.0);
    assert_clean_log(&envoy);
}

/// thriftpy2 as client and server through Envoy for every combination it speaks, and across
/// implementations: Apache clients to thriftpy2 servers (all four), thriftpy2 clients to
/// Apache servers (two).
fn thriftpy2_and_cross_implementation(engine: Engine) {
    if !peers_available() {
        return;
    }
    let wasm = workspace::build_for(engine, "meltemi-thrift");
    // (server implementation, transport, protocol)
    let mut targets: Vec<(Impl, &str, &str)> = THRIFTPY2_COMBOS
        .iter()
        .map(|(t, p)| (Impl::Thriftpy2, *t, *p))
        .collect();
    targets.push((Impl::Apache, "buffered", "binary"));
    targets.push((Impl::Apache, "framed", "compact"));
    let servers: Vec<Server> = targets
        .iter()
        .map(|(imp, t, p)| {
            let tag = format!("{}-{t}-{p}", imp.script_prefix());
            Server::start(*imp, t, p, &tag, &[])
        })
        .collect();
    let fronts: Vec<Front> = targets
        .iter()
        .zip(&servers)
        .map(|((_, t, p), s)| Front::fixed(&format!("echo-{}", s.tag), t, p))
        .collect();
    let admin = workspace::free_port();
    let config = render(
        engine,
        &wasm,
        admin,
        &fronts,
        servers
            .iter()
            .map(|s| destination(&s.tag.replace('-', "_"), s))
            .collect(),
        servers
            .iter()
            .map(|s| whole_service(&format!("echo-{}", s.tag), &s.tag.replace('-', "_")))
            .collect(),
    );
    let envoy = Envoy::start(&format!("thrift-tp2-{}", engine.name()), &config, admin);

    // (client, server index): every thriftpy2 server gets a thriftpy2 and an Apache client;
    // the Apache servers (Apache → Apache is the other test) get a thriftpy2 client.
    let plan: Vec<(Impl, usize)> = targets
        .iter()
        .enumerate()
        .flat_map(|(i, (server_imp, _, _))| match server_imp {
            Impl::Thriftpy2 => vec![(Impl::Thriftpy2, i), (Impl::Apache, i)],
            Impl::Apache => vec![(Impl::Thriftpy2, i)],
        })
        .collect();
    let clients: Vec<Client> = plan
        .iter()
        .map(|(imp, i)| {
            let (_, t, p) = targets[*i];
            // A distinct message per client: one-way tokens must not collide on a server.
            let msg = format!("{}{i}", imp.script_prefix());
            Client::new(*imp, t, p, fronts[*i].port, "e2e")
                .arg("--msg")
                .arg(&msg)
        })
        .collect();
    let outputs = run_all(&clients);
    for ((client, out), (imp, i)) in clients.iter().zip(&outputs).zip(&plan) {
        let msg = format!("{}{i}", imp.script_prefix());
        assert_printed(
            &client.describe(),
            out,
            &expected_e2e(&servers[*i].tag, &msg),
            &envoy,
        );
    }
    let thrift = ("protocol", "thrift");
    assert_counter(
        &envoy,
        "meltemi_requests_total",
        &[thrift, ("method", "echo")],
        4.0 * plan.len() as f64,
    );
    assert_counter(&envoy, "meltemi_local_replies_total", &[thrift], 0.0);
    assert_counter(&envoy, "meltemi_decode_errors_total", &[thrift], 0.0);
    assert_clean_log(&envoy);
}

/// Per-request routing on ONE client connection (by method, and by a THeader info header),
/// a method without a route answered as UNKNOWN_METHOD with the connection still usable,
/// request mutation written into THeader (and counted as unsupported, call unchanged, on
/// framed/binary), and a multiplexed client routed by its `Service:` prefix.
fn routing_no_route_mutation_and_multiplexing(engine: Engine) {
    if !peers_available() {
        return;
    }
    let wasm = workspace::build_for(engine, "meltemi-thrift");
    let v1 = Server::start(Impl::Apache, "header", "compact", "v1", &[]);
    let v2 = Server::start(Impl::Apache, "header", "compact", "v2", &[]);
    let fb = Server::start(Impl::Apache, "framed", "binary", "fb", &[]);
    let mux = Server::start(
        Impl::Apache,
        "framed",
        "compact",
        "mux",
        &["--multiplex", "EchoMux"],
    );
    let mutation = json!([{
        "header": {
            "key": meltemi_sdk::bridge::MUTATION_HEADER,
            "value": meltemi_sdk::bridge::mutation_header_value("env", "canary")
        },
        "append_action": "APPEND_IF_EXISTS_OR_ADD"
    }]);
    let route = |path: &str, cluster: &str| json!({"match": {"path": path}, "route": meltemi_e2e::bootstrap::route_action(cluster)});
    let mut inspect = route("/echo/inspect", "v2");
    inspect["request_headers_to_add"] = mutation.clone();
    let mut framed_all = whole_service("echo-framed", "fb");
    framed_all["routes"][0]["request_headers_to_add"] = mutation;
    let virtual_hosts = vec![
        json!({
            "name": "echo", "domains": ["echo"],
            "routes": [
                // The info header arrives as an HTTP header with a lower-cased name.
                {"match": {"path": "/echo/echo", "headers": [{"name": "x-version", "string_match": {"exact": "v2"}}]},
                 "route": meltemi_e2e::bootstrap::route_action("v2")},
                route("/echo/echo", "v1"),
                inspect,
                route("/echo/add", "v2"),
                // No route for `fail`: Envoy answers 404, the client must see UNKNOWN_METHOD.
            ]
        }),
        framed_all,
        // Multiplexed: no fixed service on that front, so the `EchoMux:` prefix names the host
        // (not `Echo`: domains are case-insensitive and `echo` is taken above).
        whole_service("EchoMux", "mux"),
    ];
    let fronts = [
        Front::new(json!({"service": "echo"})),
        Front::fixed("echo-framed", "framed", "binary"),
        // The controller lists the services its routes name (native metrics are defined for them).
        Front::new(json!({"known_services": ["EchoMux"]})),
    ];
    let admin = workspace::free_port();
    let config = render(
        engine,
        &wasm,
        admin,
        &fronts,
        vec![
            destination("v1", &v1),
            destination("v2", &v2),
            destination("fb", &fb),
            destination("mux", &mux),
        ],
        virtual_hosts,
    );
    let envoy = Envoy::start(&format!("thrift-routing-{}", engine.name()), &config, admin);

    let clients = [
        Client::new(Impl::Apache, "header", "compact", fronts[0].port, "route")
            .arg("--msg")
            .arg("r"),
        Client::new(Impl::Apache, "header", "binary", fronts[0].port, "inspect"),
        Client::new(Impl::Apache, "framed", "binary", fronts[1].port, "inspect"),
        Client::new(Impl::Apache, "framed", "compact", fronts[2].port, "echo")
            .arg("--multiplex")
            .arg("EchoMux")
            .arg("--msg")
            .arg("m"),
    ];
    let outputs = run_all(&clients);
    let want: [&[&str]; 4] = [
        &[
            "echo v1:r1",
            "inspect tag=v2 h:env=canary",
            "echo X-Version=v2 v2:r2",
            "add 42",
            "fail TApplicationException type=1",
            "echo v1:r3",
        ],
        // The same mutation on a client-chosen protocol (binary inside THeader).
        &["inspect tag=v2 h:env=canary"],
        // Framed has no headers: the mutation is dropped (and counted), the call unchanged.
        &["inspect tag=fb"],
        &["echo mux:m"],
    ];
    for ((client, out), want) in clients.iter().zip(&outputs).zip(want) {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        assert_printed(&client.describe(), out, &want, &envoy);
    }

    let thrift = ("protocol", "thrift");
    assert_counter(
        &envoy,
        "meltemi_local_replies_total",
        &[thrift, ("method", "fail"), ("kind", "route_not_found")],
        1.0,
    );
    assert_counter(&envoy, "meltemi_local_replies_total", &[thrift], 1.0);
    if engine != Engine::Mix {
        // Counted by the back; a native back's own counters are exported only through a
        // native front's configuration (see sdk/src/native/metrics.rs).
        assert_counter(&envoy, "meltemi_mutation_unsupported_total", &[thrift], 1.0);
    }
    assert_counter(
        &envoy,
        "meltemi_requests_total",
        &[thrift, ("service", "EchoMux"), ("method", "echo")],
        1.0,
    );
    // Route echo (three calls on one connection) + the multiplexed echo.
    assert_counter(
        &envoy,
        "meltemi_requests_total",
        &[thrift, ("method", "echo")],
        4.0,
    );
    assert_counter(&envoy, "meltemi_decode_errors_total", &[thrift], 0.0);
    assert_clean_log(&envoy);
}

/// Clients of different dialects at once through ONE front listener (auto-detecting) to ONE
/// server connection pool: Envoy pools server connections per client dialect (the codec's
/// `dialect` metadata → filter state shared with the upstream), so each server connection
/// sees one dialect and every client gets answers in its own. The server is Apache Thrift's
/// THeader server, which speaks THeader with either protocol (it refuses framed and unframed
/// clients, so those dialects cannot share it).
fn client_dialects_interleaved_through_one_bridge_and_one_server(engine: Engine) {
    if !peers_available() {
        return;
    }
    let wasm = workspace::build_for(engine, "meltemi-thrift");
    let server = Server::start(Impl::Apache, "header", "binary", "py-any", &[]);
    let fronts = [Front::new(json!({"service": "echo"}))];
    let admin = workspace::free_port();
    let config = render(
        engine,
        &wasm,
        admin,
        &fronts,
        vec![destination("py_any", &server)],
        vec![whole_service("echo", "py_any")],
    );
    let envoy = Envoy::start(
        &format!("thrift-dialects-{}", engine.name()),
        &config,
        admin,
    );
    let dialects = [("header", "binary"), ("header", "compact")];
    let clients: Vec<(Client, String)> = (0..6)
        .map(|i| {
            let (t, p) = dialects[i % 2];
            let msg = format!("{t}-{p}-{i}");
            let c = Client::new(Impl::Apache, t, p, fronts[0].port, "e2e")
                .arg("--msg")
                .arg(&msg);
            (c, msg)
        })
        .collect();
    // All at once, so that their calls interleave on the bridge's pooled connections.
    let running: Vec<_> = clients.iter().map(|(c, _)| c.spawn()).collect();
    for ((client, msg), run) in clients.iter().zip(running) {
        let out = run.finish();
        assert_printed(
            &client.describe(),
            &out,
            &expected_e2e(&server.tag, msg),
            &envoy,
        );
    }
    assert_counter(
        &envoy,
        "meltemi_decode_errors_total",
        &[("protocol", "thrift")],
        0.0,
    );
    assert_clean_log(&envoy);
}

/// Clients of two dialects with Envoy configured by the controller (an Istio ServiceEntry and
/// an Aeraki MetaRouter): the controller's HCM pools server connections per client dialect
/// too — clients run one after another, and exactly one pooled connection per dialect opens.
fn client_dialects_get_server_connections_of_their_own_through_the_controller(engine: Engine) {
    use meltemi_e2e::controlplane::{wait_for_routes, ControlPlane, Plan};
    if !peers_available() {
        return;
    }
    let server = Server::start(Impl::Apache, "header", "binary", "py-any", &[]);
    let port = workspace::free_port();
    let resources = format!(
        "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: echo, namespace: meta}}
spec:
  hosts: [echo]
  ports: [{{number: {port}, name: tcp-metaprotocol-thrift-echo, protocol: TCP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-metaprotocol-thrift-echo: {}}}}}]
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: echo, namespace: meta}}
spec:
  hosts: [echo]
  routes: [{{route: [{{destination: {{host: echo}}}}]}}]
",
        server.port
    );
    let cp = ControlPlane::start(
        "thrift-dialects",
        &Plan {
            engine,
            codecs: &[("thrift", "meltemi-thrift")],
            args: &[
                "--filter-config",
                r#"thrift={"codec": {"transport": "auto", "protocol": "auto"}}"#,
            ],
            files: &[("echo.yaml", resources)],
        },
    );
    let envoy = cp.envoy("thrift-dialects-controller");
    wait_for_routes(&envoy, "thrift", port, 1);
    let dialects = [("header", "binary"), ("header", "compact")];
    let clients: Vec<(Client, String)> = (0..6)
        .map(|i| {
            let (t, p) = dialects[i % 2];
            let msg = format!("{t}-{p}-{i}");
            let c = Client::new(Impl::Apache, t, p, port, "echo")
                .arg("--msg")
                .arg(&msg);
            (c, msg)
        })
        .collect();
    // One after another: one pooled server connection would serve them all if the pool did
    // not tell dialects apart; it must open exactly one per dialect.
    for (client, msg) in &clients {
        let out = client.spawn().finish();
        assert_printed(
            &client.describe(),
            &out,
            &[format!("echo {}:{msg}", server.tag)],
            &envoy,
        );
    }
    assert_eq!(
        envoy.stat(&format!("cluster.outbound|{port}||echo.upstream_cx_total")),
        2,
        "one pooled server connection per client dialect"
    );
    assert_counter(
        &envoy,
        "meltemi_decode_errors_total",
        &[("protocol", "thrift")],
        0.0,
    );
}

meltemi_e2e::on_every_engine!(
    apache_client_to_apache_server_every_transport_and_protocol,
    thriftpy2_and_cross_implementation,
    routing_no_route_mutation_and_multiplexing,
    client_dialects_interleaved_through_one_bridge_and_one_server,
    client_dialects_get_server_connections_of_their_own_through_the_controller,
);
