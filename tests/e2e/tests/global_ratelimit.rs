//! Global rate limits end to end, configured only through the controller: Aeraki MetaRouters
//! with `globalRateLimit` and Meltemi `RateLimitConfig`s in the watched directory,
//! `meltemi-controller serve` as Envoy's rate limit service, real Envoy 1.40 on every engine,
//! real Dubbo (Caucho Java provider; Java and sofa-rpc-node consumers) and Thrift (Apache Thrift
//! Python server and client) peers.
//!
//! - `two_replicas_count_once_in_redis`: a real `redis-server`, two controller replicas
//!   sharing it, two Envoys each asking its own replica (the `meltemi_xds` cluster of its
//!   bootstrap). A limit of 10 calls per window for one method per protocol: of 16 calls
//!   made at the same time through both Envoys exactly 10 succeed, the other 6 get the
//!   protocol's over-limit error; other methods are never limited. Envoy's `ratelimit.ok` /
//!   `over_limit` counters say the same. Then Redis is stopped: the Dubbo limit
//!   (`denyOnFail: true`) refuses calls, the Thrift one (`denyOnFail: false`) lets them pass.
//! - `one_controller_counts_in_memory`: the same limits without Redis.
//!
//! Both Envoys run on this machine, so each replica serves its listeners on ports of its own
//! (two Envoys binding one port with SO_REUSEPORT would share its connections at random).
//! Windows are an hour long and a test waits for a fresh hour when fewer than two minutes are
//! left, so that no count straddles two windows.
//!
//! Without the peers or `redis-server` (`tests/peers/*/install.sh`) the tests are skipped with
//! a note, unless `MELTEMI_REQUIRE_PEERS=1`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meltemi_e2e::bootstrap::Engine;
use meltemi_e2e::controlplane::{wait_for_routes, ControlPlane, Plan};
use meltemi_e2e::dubbo_peer::{
    self, run_consumer, Call, ConsumerKind, Outcome, Provider, ProviderKind, ECHO,
};
use meltemi_e2e::envoy::Envoy;
use meltemi_e2e::thrift_peer::{self, Impl};
use meltemi_e2e::workspace::{self, free_port};

/// The limit every test configures: calls of the limited method per window.
const LIMIT: usize = 10;
/// Limited calls each of the two clients makes.
const PER_CLIENT: usize = 8;
const CODECS: &[(&str, &str)] = &[("dubbo", "meltemi-dubbo"), ("thrift", "meltemi-thrift")];

/// A `redis-server` of this test on a free loopback port, without persistence; killed by PID
/// on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        if let Err(e) = workspace::wait_accepting(port, &mut child, Duration::from_secs(20)) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server {e}");
        }
        Redis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peers() -> bool {
    // Both checks run, so that a missing peer of either protocol is reported.
    let dubbo = dubbo_peer::peers_available();
    let thrift = thrift_peer::peers_available();
    dubbo && thrift
}

fn redis_available() -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || workspace::peer_missing("redis-server", "run tests/peers/redis/install.sh")
}

/// The watched directory's files of one replica: a Dubbo interface and a Thrift service with a
/// limited method each (Dubbo's refuses calls when the service fails, Thrift's lets them
/// pass), and the limits.
fn files(
    dubbo_port: u16,
    thrift_port: u16,
    provider: u16,
    server: u16,
) -> Vec<(&'static str, String)> {
    let iface = ECHO.to_ascii_lowercase();
    let services = format!(
        "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: echo-dubbo, namespace: meta}}
spec:
  hosts: [{iface}]
  ports: [{{number: {dubbo_port}, name: tcp-metaprotocol-dubbo, protocol: TCP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-metaprotocol-dubbo: {provider}}}}}]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: echo-thrift, namespace: meta}}
spec:
  hosts: [echo-thrift]
  ports: [{{number: {thrift_port}, name: tcp-metaprotocol-thrift-echo, protocol: TCP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-metaprotocol-thrift-echo: {server}}}}}]
"
    );
    let routers = format!(
        "apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: echo-dubbo, namespace: meta}}
spec:
  hosts: [{iface}]
  routes:
  - name: all
    route: [{{destination: {{host: {iface}}}}}]
  globalRateLimit:
    domain: dubbo-production
    match: {{attributes: {{method: {{exact: echo}}}}}}
    descriptors: [{{property: method, descriptorKey: method}}]
    requestTimeout: 2s
    denyOnFail: true
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: echo-thrift, namespace: meta}}
spec:
  hosts: [echo-thrift]
  routes:
  - name: all
    route: [{{destination: {{host: echo-thrift}}}}]
  globalRateLimit:
    domain: thrift-production
    match: {{attributes: {{method: {{exact: echo}}}}}}
    descriptors: [{{property: method, descriptorKey: method}}]
    requestTimeout: 2000
    rateLimitService: meltemi-controller
"
    );
    let limits = format!(
        "apiVersion: meltemi.io/v1alpha1
kind: RateLimitConfig
metadata: {{name: dubbo, namespace: meta}}
spec:
  domain: dubbo-production
  descriptors:
  - key: method
    value: echo
    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}}}
---
apiVersion: meltemi.io/v1alpha1
kind: RateLimitConfig
metadata: {{name: thrift, namespace: meta}}
spec:
  domain: thrift-production
  descriptors:
  - key: method
    value: echo
    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}}}
"
    );
    vec![
        ("services.yaml", services),
        ("routers.yaml", routers),
        ("limits.yaml", limits),
    ]
}

/// One Envoy's listener ports and its control plane.
struct Side {
    // Envoy first: it stops before its controller.
    envoy: Envoy,
    cp: ControlPlane,
    dubbo_port: u16,
    thrift_port: u16,
}

fn side(name: &str, engine: Engine, args: &[&str], provider: u16, server: u16) -> Side {
    let (dubbo_port, thrift_port) = (free_port(), free_port());
    let files = files(dubbo_port, thrift_port, provider, server);
    let cp = ControlPlane::start(
        name,
        &Plan {
            engine,
            codecs: CODECS,
            args,
            files: &files,
        },
    );
    let envoy = cp.envoy(name);
    wait_for_routes(&envoy, "dubbo", dubbo_port, 1);
    wait_for_routes(&envoy, "thrift", thrift_port, 1);
    Side {
        envoy,
        cp,
        dubbo_port,
        thrift_port,
    }
}

/// Waits until the current hour has at least two minutes left, so that every count of the
/// test falls in one window (a condition on the clock, polled).
fn wait_for_window_room() {
    let left = || {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        3600 - now % 3600
    };
    while left() < 120 {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The sum of Envoy's `…ratelimit.<what>` counters (they are per route target cluster).
fn ratelimit_stat(envoy: &Envoy, what: &str) -> u64 {
    let body = envoy
        .admin_get("/stats?filter=ratelimit")
        .unwrap_or_default();
    let suffix = format!(".ratelimit.{what}");
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.ends_with(&suffix))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// What one client saw: answers and over-limit errors of the limited method, and the other
/// method's answers.
#[derive(Debug, Default)]
struct Seen {
    ok: usize,
    over_limit: usize,
    other_ok: usize,
    unexpected: Vec<String>,
}

/// `PER_CLIENT` limited Dubbo calls (`echo`) and two others (`greet`) on one connection.
fn dubbo_client(consumer: ConsumerKind, port: u16) -> Seen {
    let mut calls: Vec<Call> = (0..PER_CLIENT)
        .map(|i| Call::new(ECHO, "echo", &format!("m{i}")))
        .collect();
    calls.insert(2, Call::new(ECHO, "greet", "pojo"));
    calls.push(Call::new(ECHO, "greet", "pojo"));
    let run = run_consumer(consumer, port, &calls, &[], Duration::from_secs(60));
    assert!(run.completed(), "{}", run.transcript());
    let mut seen = Seen::default();
    for (call, outcome) in calls.iter().zip(&run.outcomes) {
        let greet = format!("{call:?}").contains("|greet|");
        match outcome {
            Outcome::Ok(v) if greet && v.contains("ann@") => seen.other_ok += 1,
            Outcome::Ok(_) if !greet => seen.ok += 1,
            // Dubbo's over-limit error (status 100, SERVICE_ERROR's neighbour for limits):
            // the Java consumer prints the status, the others raise with Envoy's reason.
            Outcome::Err(e) if !greet && (e.contains("status=100") || e.contains("429")) => {
                seen.over_limit += 1
            }
            other => seen.unexpected.push(format!("{call:?}: {other:?}")),
        }
    }
    seen
}

/// `PER_CLIENT` limited Thrift calls (`echo`) and two others (`add`) on one connection.
fn thrift_client(port: u16) -> Seen {
    let mut calls: Vec<String> = (0..PER_CLIENT).map(|i| format!("echo:m{i}")).collect();
    calls.insert(2, "add".into());
    calls.push("add".into());
    let mut cmd = Command::new(thrift_peer::python());
    cmd.arg(thrift_peer::peers_dir().join("py_calls_client.py"))
        .args([
            "--port",
            &port.to_string(),
            "--transport",
            "framed",
            "--protocol",
            "binary",
        ]);
    for c in &calls {
        cmd.args(["--call", c]);
    }
    let out = cmd
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run the thrift client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "DONE"),
        "thrift client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seen = Seen::default();
    for (i, call) in calls.iter().enumerate() {
        let prefix = format!("CALL {i} ");
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or("missing");
        match (call.as_str(), line) {
            ("add", "OK 42") => seen.other_ok += 1,
            (c, l) if c.starts_with("echo:") && l.starts_with("OK ") => seen.ok += 1,
            // The over-limit error reply: a TApplicationException INTERNAL_ERROR (6) whose
            // message carries the reason (Apache clients know no more precise type).
            (c, l)
                if c.starts_with("echo:")
                    && l.starts_with("ERR TApplicationException type=6")
                    && l.contains("429") =>
            {
                seen.over_limit += 1
            }
            (c, l) => seen.unexpected.push(format!("{c}: {l}")),
        }
    }
    seen
}

/// Runs one Dubbo and one Thrift client on each (dubbo port, thrift port) at the same time.
fn clients_at_once(ports: &[(u16, u16)]) -> (Vec<Seen>, Vec<Seen>) {
    const CONSUMERS: [ConsumerKind; 2] = [ConsumerKind::Java, ConsumerKind::Sofa];
    std::thread::scope(|s| {
        let dubbo: Vec<_> = ports
            .iter()
            .zip(CONSUMERS.iter().cycle())
            .map(|((d, _), c)| s.spawn(move || dubbo_client(*c, *d)))
            .collect();
        let thrift: Vec<_> = ports
            .iter()
            .map(|(_, t)| s.spawn(move || thrift_client(*t)))
            .collect();
        let join = |v: Vec<std::thread::ScopedJoinHandle<'_, Seen>>| -> Vec<Seen> {
            v.into_iter()
                .map(|h| h.join().expect("client thread"))
                .collect()
        };
        (join(dubbo), join(thrift))
    })
}

/// Asserts the exact split over all clients of one protocol.
fn assert_exact(protocol: &str, seen: &[Seen], other_per_client: usize) {
    let ok: usize = seen.iter().map(|s| s.ok).sum();
    let over: usize = seen.iter().map(|s| s.over_limit).sum();
    let other: usize = seen.iter().map(|s| s.other_ok).sum();
    let unexpected: Vec<&String> = seen.iter().flat_map(|s| &s.unexpected).collect();
    assert!(
        unexpected.is_empty(),
        "{protocol}: unexpected outcomes {unexpected:?}"
    );
    assert_eq!(
        ok, LIMIT,
        "{protocol}: answered calls of the limited method {seen:?}"
    );
    assert_eq!(
        over,
        seen.len() * PER_CLIENT - LIMIT,
        "{protocol}: over-limit errors {seen:?}"
    );
    assert_eq!(
        other,
        seen.len() * other_per_client,
        "{protocol}: other method {seen:?}"
    );
}

fn two_replicas_count_once_in_redis(engine: Engine) {
    if !peers() || !redis_available() {
        return;
    }
    let started = Instant::now();
    let redis = Redis::start();
    let provider = Provider::start(ProviderKind::Java, "v1");
    let server = thrift_peer::Server::start(Impl::Apache, "framed", "binary", "t1", &[]);
    let url = redis.url();
    let args = ["--redis", url.as_str()];
    let a = side("rl-a", engine, &args, provider.port, server.port);
    let b = side("rl-b", engine, &args, provider.port, server.port);
    wait_for_window_room();
    let (dubbo, thrift) =
        clients_at_once(&[(a.dubbo_port, a.thrift_port), (b.dubbo_port, b.thrift_port)]);
    assert_exact("dubbo", &dubbo, 2);
    assert_exact("thrift", &thrift, 2);
    // Envoy's own counters: every limited call asked a rate limit service, and each Envoy
    // asked its own replica (both answered some), the other methods none.
    let (ok_a, ok_b) = (
        ratelimit_stat(&a.envoy, "ok"),
        ratelimit_stat(&b.envoy, "ok"),
    );
    let over_a = ratelimit_stat(&a.envoy, "over_limit");
    let over_b = ratelimit_stat(&b.envoy, "over_limit");
    assert_eq!(ok_a + ok_b, 2 * LIMIT as u64, "ok: {ok_a} + {ok_b}");
    assert_eq!(
        over_a + over_b,
        2 * (2 * PER_CLIENT - LIMIT) as u64,
        "over_limit: {over_a} + {over_b}"
    );
    assert!(ok_a + over_a == 2 * PER_CLIENT as u64 && ok_b + over_b == 2 * PER_CLIENT as u64);
    eprintln!(
        "{}: redis, two replicas: ok {ok_a}+{ok_b}, over_limit {over_a}+{over_b} ({:.1} s so far)",
        engine.name(),
        started.elapsed().as_secs_f64()
    );

    // Redis goes away: the replicas' rate limit calls fail, and each limit's denyOnFail
    // decides. Dubbo (deny): refused with the over-limit error; Thrift (allow): answered,
    // although the method is over its limit.
    drop(redis);
    let (dubbo, thrift) = clients_at_once(&[(a.dubbo_port, a.thrift_port)]);
    let (d, t) = (&dubbo[0], &thrift[0]);
    assert!(
        d.unexpected.is_empty() && t.unexpected.is_empty(),
        "{d:?} {t:?}"
    );
    assert_eq!(
        (d.ok, d.over_limit, d.other_ok),
        (0, PER_CLIENT, 2),
        "dubbo without redis"
    );
    assert_eq!(
        (t.ok, t.over_limit, t.other_ok),
        (PER_CLIENT, 0, 2),
        "thrift without redis"
    );
    assert_eq!(ratelimit_stat(&a.envoy, "error"), 2 * PER_CLIENT as u64);
    assert_eq!(
        ratelimit_stat(&a.envoy, "failure_mode_allowed"),
        PER_CLIENT as u64
    );
    assert!(
        a.cp.log().contains("rate limit check failed"),
        "{}",
        a.cp.log()
    );
    eprintln!(
        "{}: two_replicas_count_once_in_redis took {:.1} s",
        engine.name(),
        started.elapsed().as_secs_f64()
    );
}

fn one_controller_counts_in_memory(engine: Engine) {
    if !peers() {
        return;
    }
    let started = Instant::now();
    let provider = Provider::start(ProviderKind::Java, "v1");
    let server = thrift_peer::Server::start(Impl::Apache, "framed", "binary", "t1", &[]);
    let a = side("rl-mem", engine, &[], provider.port, server.port);
    wait_for_window_room();
    // Two client connections of each protocol through the one Envoy at the same time.
    let ports = [(a.dubbo_port, a.thrift_port), (a.dubbo_port, a.thrift_port)];
    let (dubbo, thrift) = clients_at_once(&ports);
    assert_exact("dubbo", &dubbo, 2);
    assert_exact("thrift", &thrift, 2);
    assert_eq!(ratelimit_stat(&a.envoy, "ok"), 2 * LIMIT as u64);
    assert_eq!(
        ratelimit_stat(&a.envoy, "over_limit"),
        2 * (2 * PER_CLIENT - LIMIT) as u64
    );
    assert!(
        a.cp.log().contains("counters=\"memory\"") || a.cp.log().contains("counters=memory"),
        "{}",
        a.cp.log()
    );
    eprintln!(
        "{}: one_controller_counts_in_memory took {:.1} s",
        engine.name(),
        started.elapsed().as_secs_f64()
    );
}

meltemi_e2e::on_every_engine!(
    two_replicas_count_once_in_redis,
    one_controller_counts_in_memory
);
