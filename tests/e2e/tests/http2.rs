//! HTTP/2 toward HCM (`"hcm_protocol": "http2"`) on the real Envoy 1.40 with the built
//! `meltemi_dubbo.wasm`: the calls of one Dubbo connection are proxied concurrently.
//!
//! Provider: the real sofa-rpc-node + dubbo-remoting provider (`tests/peers/dubbo`), whose
//! `slow` method answers after 50 ms. Consumer: none of the real Dubbo consumers here puts
//! many calls in flight on one connection from a script (they run calls one after another), so
//! the load client is written here: it writes every Dubbo2 request frame of a connection at
//! once (frames built like a Java consumer's, [`request_frame`]) and matches the answers by
//! request id, as a multiplexing Dubbo consumer does.
//!
//! One Envoy, two front listeners on the same routes and backs: HTTP/2 (the subject) and
//! HTTP/1.1 (the comparison). Clusters: `fast` (64 connections, queue of 100,000) and `narrow`
//! (circuit breaker: 4 connections, 4 requests, queue of 100,000).
//!
//! Without the peers every test is skipped with a note, unless `MELTEMI_REQUIRE_PEERS=1`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use meltemi_e2e::bootstrap::{Bridge, Destination, Engine, SharedPerEngine};
use meltemi_e2e::dubbo_peer::{
    peers_available, read_raw_frame, request_frame, Provider, ProviderKind, ECHO, OTHER,
};
use meltemi_e2e::envoy::Envoy;
use meltemi_e2e::workspace;
use serde_json::{json, Value};

struct Setup {
    engine: Engine,
    envoy: Envoy,
    _provider: Provider,
    h2_port: u16,
    h1_port: u16,
    /// An HTTP/2 front whose HCM serves at most [`DRAIN_AFTER`] streams per connection, then
    /// drains it (GOAWAY).
    drain_port: u16,
}

/// `max_requests_per_connection` of the draining front's HCM.
const DRAIN_AFTER: u64 = 10;

/// Connections and requests the `narrow` cluster's circuit breaker allows.
const NARROW: u64 = 4;

fn setup(engine: Engine) -> Option<(Arc<Setup>, MutexGuard<'static, ()>)> {
    static SHARED: SharedPerEngine<Setup> = SharedPerEngine::new();
    if !peers_available() {
        return None;
    }
    Some(SHARED.get(engine, || Setup::start(engine)))
}

fn route(prefix: &str, cluster: &str) -> Value {
    // A long timeout: 10,000 calls queue behind 64 connections.
    json!({"match": {"prefix": prefix}, "route": {"cluster": cluster, "timeout": "60s"}})
}

impl Setup {
    fn start(engine: Engine) -> Setup {
        let wasm = workspace::build_for(engine, "meltemi-dubbo");
        let provider = Provider::start(ProviderKind::Sofa, "v2");
        let (h2_port, h1_port, drain_port, admin) = (
            workspace::free_port(),
            workspace::free_port(),
            workspace::free_port(),
            workspace::free_port(),
        );
        let codec = json!({"codec": {"max_body_bytes": 8 << 20}});
        let mut front = codec.clone();
        front["hcm_protocol"] = json!("http2");
        front["known_services"] = json!([ECHO, OTHER]);
        let rendered = Bridge {
            protocol: "dubbo",
            wasm: &wasm,
            engine,
            module: "meltemi_dubbo",
            front,
            back: codec,
            listen_port: h2_port,
            admin_port: admin,
            destinations: vec![
                Destination {
                    cluster: "fast".into(),
                    port: provider.port,
                },
                Destination {
                    cluster: "narrow".into(),
                    port: provider.port,
                },
            ],
            virtual_hosts: vec![
                json!({"name": "echo", "domains": [ECHO], "routes": [route("/", "fast")]}),
                json!({"name": "other", "domains": [OTHER], "routes": [route("/", "narrow")]}),
            ],
            http_filters: vec![],
        }
        .render();
        let config = with_limits_and_http1_front(&rendered, h1_port, drain_port, engine);
        let envoy = Envoy::start(&format!("http2-{}", engine.name()), &config, admin);
        Setup {
            engine,
            envoy,
            _provider: provider,
            h2_port,
            h1_port,
            drain_port,
        }
    }
}

/// Circuit breakers on the two clusters, a copy of the HTTP/2 front speaking HTTP/1.1 on
/// `h1_port`, and one whose HCM drains connections after [`DRAIN_AFTER`] streams.
fn with_limits_and_http1_front(
    rendered: &str,
    h1_port: u16,
    drain_port: u16,
    engine: Engine,
) -> String {
    let mut bootstrap: Value = serde_json::from_str(rendered).expect("rendered bootstrap");
    for cluster in bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters")
    {
        let limit = match cluster["name"].as_str() {
            Some("fast") => 64,
            Some("narrow") => NARROW,
            _ => continue,
        };
        cluster["circuit_breakers"] = json!({"thresholds": [{
            "max_connections": limit,
            "max_requests": limit,
            "max_pending_requests": 100000
        }]});
    }
    let listeners = bootstrap["static_resources"]["listeners"]
        .as_array_mut()
        .expect("listeners");
    let mut drain = listeners[0].clone();
    drain["name"] = json!("dubbo_front_drain");
    drain["address"]["socket_address"]["port_value"] = json!(drain_port);
    let hcm = &mut drain["filter_chains"][0]["filters"][1]["typed_config"];
    hcm["stat_prefix"] = json!("dubbo_drain");
    hcm["common_http_protocol_options"] = json!({"max_requests_per_connection": DRAIN_AFTER});
    let mut h1 = listeners[0].clone();
    h1["name"] = json!("dubbo_front_h1");
    h1["address"]["socket_address"]["port_value"] = json!(h1_port);
    let filters = h1["filter_chains"][0]["filters"]
        .as_array_mut()
        .expect("filters");
    let value = if engine == Engine::Native {
        &mut filters[0]["typed_config"]["filter_config"]["value"]
    } else {
        let wasm = &mut filters[0]["typed_config"]["config"];
        wasm["name"] = json!("meltemi_front_h1");
        &mut wasm["configuration"]["value"]
    };
    let mut plugin: Value =
        serde_json::from_str(value.as_str().expect("config")).expect("plugin configuration JSON");
    plugin["hcm_protocol"] = json!("http1");
    *value = json!(plugin.to_string());
    let hcm = &mut filters[1]["typed_config"];
    hcm["stat_prefix"] = json!("dubbo_h1");
    hcm["codec_type"] = json!("HTTP1");
    hcm.as_object_mut()
        .expect("hcm")
        .remove("http2_protocol_options");
    listeners.push(h1);
    listeners.push(drain);
    bootstrap.to_string()
}

/// What one connection's calls gave.
#[derive(Debug, Default)]
struct Report {
    answered: usize,
    /// Answers whose id was not asked, came twice, or whose value is not the caller's.
    mismatched: Vec<String>,
    lost: usize,
    elapsed: Duration,
}

/// Opens one connection to `port`, writes `count` calls of `interface.method(payload)` at once
/// (ids 1..=count, payload unique per call: `tag-i`) and reads every answer, matching by id.
fn burst(port: u16, interface: &str, method: &str, tag: &str, count: u64) -> Report {
    let mut conn = meltemi_e2e::load::connect(port);
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut expected: HashMap<u64, String> = HashMap::new();
    let mut bytes = Vec::new();
    for id in 1..=count {
        let payload = format!("{tag}-{id}");
        bytes.extend(request_frame(id, interface, method, &payload));
        expected.insert(id, format!("v2:{payload}"));
    }
    let start = Instant::now();
    conn.write_all(&bytes).expect("write the calls");
    let mut report = Report::default();
    while !expected.is_empty() {
        let frame = match read_raw_frame(&mut conn) {
            Ok(f) => f,
            Err(e) => {
                eprintln!(
                    "{tag}: read failed with {} calls unanswered: {e}",
                    expected.len()
                );
                break;
            }
        };
        match expected.remove(&frame.id) {
            Some(want)
                if frame.status == 20
                    && frame.body.windows(want.len()).any(|w| w == want.as_bytes()) =>
            {
                report.answered += 1;
            }
            Some(want) => report.mismatched.push(format!(
                "id {} status {}: wanted {want}, got {:?}",
                frame.id,
                frame.status,
                String::from_utf8_lossy(&frame.body)
            )),
            None => report
                .mismatched
                .push(format!("id {} not asked or answered twice", frame.id)),
        }
    }
    report.elapsed = start.elapsed();
    report.lost = expected.len();
    report
}

fn thirty_two_calls_on_one_connection_run_concurrently(engine: Engine) {
    let Some((s, _turn)) = setup(engine) else {
        return;
    };
    // Warm-up: VM, upstream connections.
    let warm = burst(s.h2_port, ECHO, "slow", "warm", 32);
    assert_eq!(warm.answered, 32, "{warm:?}\n{}", s.envoy.log());
    let mut best = Duration::MAX;
    for round in 0..3 {
        let r = burst(s.h2_port, ECHO, "slow", &format!("h2-{round}"), 32);
        assert_eq!(
            (r.answered, r.lost, r.mismatched.len()),
            (32, 0, 0),
            "{r:?}"
        );
        eprintln!(
            "http2: 32 calls of 50 ms on one connection in {:?}",
            r.elapsed
        );
        best = best.min(r.elapsed);
    }
    let h1 = burst(s.h1_port, ECHO, "slow", "h1", 32);
    assert_eq!((h1.answered, h1.lost), (32, 0), "{h1:?}");
    eprintln!(
        "http1.1: 32 calls of 50 ms on one connection in {:?}",
        h1.elapsed
    );
    assert!(
        best < Duration::from_millis(250),
        "HTTP/2: 32 concurrent 50 ms calls took {best:?}"
    );
    assert!(
        h1.elapsed > Duration::from_millis(32 * 50),
        "HTTP/1.1 serialises: {:?}",
        h1.elapsed
    );
}

fn ten_thousand_calls_from_ten_connections_each_reach_its_caller(engine: Engine) {
    let Some((s, _turn)) = setup(engine) else {
        return;
    };
    const CONNECTIONS: u64 = 10;
    const PER: u64 = 1000;
    let start = Instant::now();
    let reports: Vec<Report> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CONNECTIONS)
            .map(|c| {
                let port = s.h2_port;
                scope.spawn(move || burst(port, ECHO, "echo", &format!("c{c}"), PER))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let answered: usize = reports.iter().map(|r| r.answered).sum();
    let lost: usize = reports.iter().map(|r| r.lost).sum();
    let mismatched: Vec<&String> = reports.iter().flat_map(|r| &r.mismatched).collect();
    eprintln!(
        "http2: {answered} of {} calls answered in {:?}, {lost} lost, {} mismatched",
        CONNECTIONS * PER,
        start.elapsed(),
        mismatched.len()
    );
    assert_eq!(
        lost,
        0,
        "lost calls; first mismatches {:?}",
        &mismatched.get(..5)
    );
    assert!(
        mismatched.is_empty(),
        "{:?}",
        &mismatched[..mismatched.len().min(5)]
    );
    assert_eq!(answered as u64, CONNECTIONS * PER);
}

fn upstream_connections_stay_within_the_circuit_breaker(engine: Engine) {
    let Some((s, _turn)) = setup(engine) else {
        return;
    };
    let stat = |name: &str| s.envoy.stat(name);
    // With the wasm back the destination cluster reaches an internal listener, whose
    // tcp_proxy has a cluster of its own to the provider; the native back's cluster is the
    // provider's.
    let server_cluster = if s.engine == Engine::Wasm {
        "cluster.narrow_server.upstream_cx_total"
    } else {
        "cluster.narrow.upstream_cx_total"
    };
    let (cx_before, server_cx_before) = (
        stat("cluster.narrow.upstream_cx_total"),
        stat(server_cluster),
    );
    let overflow_before = stat("cluster.narrow.upstream_rq_pending_overflow");
    // 64 calls of 50 ms on one connection, at most 4 at a time upstream: about 16 × 50 ms.
    let r = burst(s.h2_port, OTHER, "slow", "narrow", 64);
    assert_eq!(
        (r.answered, r.lost, r.mismatched.len()),
        (64, 0, 0),
        "{r:?}"
    );
    let cx = stat("cluster.narrow.upstream_cx_total") - cx_before;
    let server_cx = stat(server_cluster) - server_cx_before;
    eprintln!(
        "narrow: 64 calls in {:?} over {cx} upstream connections ({server_cx} to the provider)",
        r.elapsed
    );
    assert!(cx <= NARROW, "{cx} upstream connections, limit {NARROW}");
    assert!(server_cx <= NARROW, "{server_cx} provider connections");
    assert_eq!(
        stat("cluster.narrow.upstream_rq_pending_overflow"),
        overflow_before,
        "queued, never refused"
    );
    assert!(
        stat("cluster.narrow.upstream_rq_pending_total") > 0,
        "the calls past the limit were queued"
    );
    assert!(
        r.elapsed >= Duration::from_millis(64 / NARROW * 50),
        "4 at a time: {:?}",
        r.elapsed
    );
}

fn a_draining_hcm_s_goaway_answers_what_it_kept_and_closes_at_once(engine: Engine) {
    let Some((s, _turn)) = setup(engine) else {
        return;
    };
    // HCM serves DRAIN_AFTER streams of a connection, then drains it (GOAWAY). 32 calls at
    // once were all opened before: all answered. Calls sent after the GOAWAY cannot be served
    // on this connection: the front closes it as soon as the kept calls are answered, instead
    // of leaving the client waiting for HCM's drain timeout (5 s).
    let mut conn = meltemi_e2e::load::connect(s.drain_port);
    let first = burst_outcomes(&mut conn, 1, 32);
    eprintln!("draining HCM, first 32: {first:?}");
    assert_eq!((first.ok, first.lost), (32, 0), "{first:?}");
    let start = Instant::now();
    let second = burst_outcomes(&mut conn, 33, 32);
    let waited = start.elapsed();
    eprintln!("draining HCM, next 32 after the GOAWAY: {second:?} in {waited:?}");
    assert_eq!(second.ok, 0, "{second:?}");
    // The read-only event comes last, before the close: read to the end.
    let mut notices = first.notices + second.notices;
    while let Ok(frame) = read_raw_frame(&mut conn) {
        notices += usize::from(frame.is_event() && frame.id == 0);
    }
    assert_eq!(
        notices, 1,
        "Dubbo's read-only event, once, when the drained connection closes: {first:?} {second:?}"
    );
    assert!(
        second.statuses.iter().all(|s| *s == 70),
        "error replies are `unavailable`: {second:?}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "the client learns at once, not after HCM's drain timeout: {waited:?}"
    );
    assert!(
        s.envoy
            .stat("http.dubbo_drain.downstream_cx_max_requests_reached")
            > 0
    );
}

/// What one burst of echo calls on `conn` got: values, error replies (their Dubbo status), and
/// calls without any answer when the connection closed.
#[derive(Debug, Default)]
struct Outcomes {
    ok: usize,
    errors: usize,
    statuses: Vec<u8>,
    lost: usize,
    /// Read-only events (id 0): the front's going-away notice, written when it closes.
    notices: usize,
}

fn burst_outcomes(conn: &mut std::net::TcpStream, first_id: u64, count: u64) -> Outcomes {
    let ids = first_id..first_id + count;
    let mut bytes = Vec::new();
    for id in ids.clone() {
        bytes.extend(request_frame(id, ECHO, "slow", &format!("d-{id}")));
    }
    let mut out = Outcomes::default();
    if conn.write_all(&bytes).is_err() {
        out.lost = count as usize;
        return out;
    }
    let mut waiting: std::collections::HashSet<u64> = ids.collect();
    while !waiting.is_empty() {
        let Ok(frame) = read_raw_frame(conn) else {
            break;
        };
        if frame.is_event() && frame.id == 0 && frame.body == [0x01, b'R'] {
            out.notices += 1;
            continue;
        }
        assert!(
            waiting.remove(&frame.id),
            "answer {} twice or foreign",
            frame.id
        );
        if frame.status == 20 {
            out.ok += 1;
        } else {
            out.errors += 1;
            out.statuses.push(frame.status);
        }
    }
    out.lost = waiting.len();
    out
}

/// The same 32 concurrent calls with Envoy configured by the controller: an Aeraki MetaRouter
/// and an Istio ServiceEntry, the front's filter configuration asking for HTTP/2 toward HCM
/// (`--filter-config dubbo='{"hcm_protocol": "http2"}'`).
fn the_controller_renders_the_http2_front(engine: Engine) {
    use meltemi_e2e::controlplane::{wait_for_routes, ControlPlane, Plan};
    if !peers_available() {
        return;
    }
    let provider = Provider::start(ProviderKind::Sofa, "v2");
    let port = workspace::free_port();
    let host = ECHO.to_ascii_lowercase();
    let resources = format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: echo, namespace: meta-dubbo, annotations: {{interface: {ECHO}}}}}
spec:
  hosts: [{host}]
  ports: [{{number: {port}, name: tcp-metaprotocol-dubbo, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-metaprotocol-dubbo: {}}}, labels: {{version: v2}}}}]
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: echo, namespace: meta-dubbo}}
spec:
  hosts: [{host}]
  routes: [{{route: [{{destination: {{host: {host}}}}}]}}]
",
        provider.port
    );
    let cp = ControlPlane::start(
        "http2",
        &Plan {
            engine,
            codecs: &[("dubbo", "meltemi-dubbo")],
            args: &["--filter-config", r#"dubbo={"hcm_protocol": "http2"}"#],
            files: &[("echo.yaml", resources)],
        },
    );
    let envoy = cp.envoy("http2-controller");
    wait_for_routes(&envoy, "dubbo", port, 1);
    let warm = burst(port, ECHO, "slow", "warm", 32);
    assert_eq!(warm.answered, 32, "{warm:?}\n{}", envoy.log());
    let r = burst(port, ECHO, "slow", "h2", 32);
    assert_eq!(
        (r.answered, r.lost, r.mismatched.len()),
        (32, 0, 0),
        "{r:?}"
    );
    eprintln!(
        "controller, http2: 32 calls of 50 ms on one connection in {:?}",
        r.elapsed
    );
    assert!(
        r.elapsed < Duration::from_millis(250),
        "HTTP/2 from the controller: 32 concurrent 50 ms calls took {:?}",
        r.elapsed
    );
}

meltemi_e2e::on_every_engine!(
    thirty_two_calls_on_one_connection_run_concurrently,
    the_controller_renders_the_http2_front,
    ten_thousand_calls_from_ten_connections_each_reach_its_caller,
    upstream_connections_stay_within_the_circuit_breaker,
    a_draining_hcm_s_goaway_answers_what_it_kept_and_closes_at_once,
);
