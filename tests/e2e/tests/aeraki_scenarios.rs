//! Aeraki's own routing scenarios, end to end through the controller, for Dubbo and Thrift on
//! every engine (`wasm::`, `native::`, `mix::`): each scenario is an Aeraki `MetaRouter` (with
//! Istio `ServiceEntry` / `DestinationRule`) written to the directory `meltemi-controller serve`
//! watches, a real Envoy 1.40 fed over ADS, and real clients and servers: the Caucho-Hessian2
//! Java consumer and providers for Dubbo, Apache Thrift (PyPI `thrift`, THeader/compact) for
//! Thrift. One test per protocol and engine runs the scenarios in sequence on one Envoy and
//! one set of servers, each after Envoy accepted its routes:
//!
//! 1. version routing: 100 calls, every one answered by a `v2` server;
//! 2. attribute routing: exact / prefix / regex on method, interface, attachment / THeader header;
//! 3. a 20/80 split, 1,000 calls, `v1`'s count within ±4σ of the binomial (150..=250);
//! 4. consistent hash on a metadata key over a two-host subset: one key → always one host,
//!    different keys → both hosts;
//! 5. request mutation seen by the server, response mutation seen by the client;
//! 6. mirroring: the mirror server counts the copies, the client sees only the primary;
//! 7. gateway: a MetaRouter naming a gateway routes the gateway's listener (only).
//!
//! Servers: `v1`, `v2a` and `v2b` (both labelled `version: v2`: the subset with two hosts),
//! `mirror`. Every answer names the server that gave it.
//!
//! Without the peers every test is skipped with a note, unless `MELTEMI_REQUIRE_PEERS=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meltemi_e2e::bootstrap::Engine;
use meltemi_e2e::controlplane::{wait_for_routes, ControlPlane, Plan};
use meltemi_e2e::dubbo_peer::{self, run_consumer, Call, ConsumerKind, Outcome, Provider};
use meltemi_e2e::envoy::Envoy;
use meltemi_e2e::{thrift_peer, workspace};

meltemi_e2e::on_every_engine!(dubbo_aeraki_scenarios, thrift_aeraki_scenarios);

/// Calls of the split scenario.
const SPLIT_CALLS: usize = 1000;
/// `v1`'s expected share of the split, in percent.
const SPLIT_V1: usize = 20;

/// The Dubbo service host: Aeraki's lower-cased interface name.
fn dubbo_host() -> String {
    dubbo_peer::ECHO.to_ascii_lowercase()
}

/// One call of a scenario: Dubbo `interface.method(arg)` with attachments, or Thrift
/// `method(arg)` with THeader info headers.
#[derive(Clone, Debug)]
struct Step {
    interface: &'static str,
    method: &'static str,
    arg: String,
    kv: Vec<(String, String)>,
}

fn step(method: &'static str, arg: &str) -> Step {
    Step {
        interface: dubbo_peer::ECHO,
        method,
        arg: arg.to_owned(),
        kv: Vec::new(),
    }
}

impl Step {
    fn kv(mut self, k: &str, v: &str) -> Step {
        self.kv.push((k.to_owned(), v.to_owned()));
        self
    }
    fn on(mut self, interface: &'static str) -> Step {
        self.interface = interface;
        self
    }
}

/// A server the test started; killed by PID on drop.
struct Proc {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A server of either protocol, tagged (its answers name the tag).
enum Server {
    Dubbo(Provider),
    Thrift(Proc),
}

impl Server {
    fn port(&self) -> u16 {
        match self {
            Server::Dubbo(p) => p.port,
            Server::Thrift(p) => p.port,
        }
    }

    /// Requests it answered so far (mirror copies included): the provider's `<- …#method`
    /// lines, the Thrift server's `SEEN` lines.
    fn requests(&self) -> Vec<String> {
        match self {
            Server::Dubbo(p) => p
                .log()
                .lines()
                .filter(|l| l.contains(" <- ") && l.contains('#'))
                .map(str::to_owned)
                .collect(),
            Server::Thrift(p) => p
                .log()
                .lines()
                .filter(|l| l.starts_with("SEEN "))
                .map(str::to_owned)
                .collect(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Dubbo,
    Thrift,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Dubbo => "dubbo",
            Proto::Thrift => "thrift",
        }
    }

    fn host(self) -> String {
        match self {
            Proto::Dubbo => dubbo_host(),
            Proto::Thrift => "echo".to_owned(),
        }
    }

    fn port_name(self) -> &'static str {
        match self {
            Proto::Dubbo => "tcp-metaprotocol-dubbo",
            Proto::Thrift => "tcp-metaprotocol-thrift-echo",
        }
    }

    fn start_server(self, tag: &str) -> Server {
        match self {
            Proto::Dubbo => Server::Dubbo(Provider::start(dubbo_peer::ProviderKind::Java, tag)),
            Proto::Thrift => {
                let port = workspace::free_port();
                let log = std::env::temp_dir().join(format!(
                    "meltemi-aeraki-thrift-{tag}-{}-{port}.log",
                    std::process::id()
                ));
                let out = File::create(&log).expect("server log");
                let child = Command::new(thrift_peer::python())
                    .arg(thrift_peer::peers_dir().join("scenario_server.py"))
                    .args(["--transport", "header", "--protocol", "compact"])
                    .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--tag", tag])
                    .current_dir(thrift_peer::peers_dir())
                    .env("PYTHONUNBUFFERED", "1")
                    .stdin(Stdio::null())
                    .stdout(out.try_clone().expect("log fd"))
                    .stderr(out)
                    .spawn()
                    .expect("start scenario_server.py");
                let mut p = Proc { child, log, port };
                if let Err(e) =
                    workspace::wait_accepting(port, &mut p.child, Duration::from_secs(20))
                {
                    panic!("thrift server {tag} {e}:\n{}", p.log());
                }
                Server::Thrift(p)
            }
        }
    }

    /// Runs `steps` on ONE client connection to `port`; one answer per step, as the client
    /// printed it (`<tag>:<arg> …`, errors as `ERR …`).
    fn run(self, port: u16, steps: &[Step]) -> Vec<String> {
        match self {
            Proto::Dubbo => {
                let calls: Vec<Call> = steps
                    .iter()
                    .map(|s| {
                        s.kv.iter()
                            .fold(Call::new(s.interface, s.method, &s.arg), |c, (k, v)| {
                                c.att(k, v)
                            })
                    })
                    .collect();
                let run = run_consumer(
                    ConsumerKind::Java,
                    port,
                    &calls,
                    &[],
                    Duration::from_secs(120),
                );
                assert!(run.completed(), "{}", run.transcript());
                run.outcomes
                    .iter()
                    .map(|o| match o {
                        Outcome::Ok(v) => v.clone(),
                        Outcome::Err(e) => format!("ERR {e}"),
                        other => format!("ERR {other:?}"),
                    })
                    .collect()
            }
            Proto::Thrift => {
                let dir = std::env::temp_dir();
                let tag = format!("{}-{port}", std::process::id());
                let (out_path, err_path) = (
                    dir.join(format!("meltemi-aeraki-client-{tag}.out")),
                    dir.join(format!("meltemi-aeraki-client-{tag}.err")),
                );
                let mut cmd = Command::new(thrift_peer::python());
                cmd.arg(thrift_peer::peers_dir().join("scenario_client.py"))
                    .args(["--port", &port.to_string(), "--protocol", "compact"])
                    .current_dir(thrift_peer::peers_dir())
                    .env("PYTHONUNBUFFERED", "1")
                    .stdin(Stdio::null())
                    .stdout(File::create(&out_path).expect("client out"))
                    .stderr(File::create(&err_path).expect("client err"));
                for s in steps {
                    let kv: Vec<String> = s.kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    cmd.arg("--call")
                        .arg(format!("{}|{}|{}", s.method, s.arg, kv.join(",")));
                }
                let child = cmd.spawn().expect("start scenario_client.py");
                let mut p = Proc {
                    child,
                    log: err_path.clone(),
                    port,
                };
                let deadline = Instant::now() + Duration::from_secs(120);
                let status = loop {
                    match p.child.try_wait() {
                        Ok(Some(s)) => break Some(s),
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        _ => break None,
                    }
                };
                let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
                let stderr = p.log();
                drop(p);
                let _ = std::fs::remove_file(&out_path);
                assert!(
                    status.is_some_and(|s| s.success()) && stdout.lines().any(|l| l == "DONE"),
                    "thrift client failed ({status:?}):\n{stdout}\n{stderr}"
                );
                let mut by_index = BTreeMap::new();
                for line in stdout.lines() {
                    let Some(rest) = line.strip_prefix("CALL ") else {
                        continue;
                    };
                    let mut parts = rest.splitn(3, ' ');
                    let (Some(i), Some(verb), text) = (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    let text = text.unwrap_or("").to_owned();
                    let answer = if verb == "OK" {
                        // `inspect tag=<tag> …` → `<tag>:inspect …`, like echo's answers.
                        match text.strip_prefix("inspect tag=") {
                            Some(r) => {
                                let (t, rest) = r.split_once(' ').unwrap_or((r, ""));
                                format!("{t}:inspect {rest}")
                            }
                            None => text,
                        }
                    } else {
                        format!("ERR {text}")
                    };
                    if let Ok(i) = i.parse::<usize>() {
                        by_index.insert(i, answer);
                    }
                }
                (0..steps.len())
                    .map(|i| by_index.remove(&i).unwrap_or_else(|| "ERR missing".into()))
                    .collect()
            }
        }
    }
}

/// The server tag an answer names (`v2a:hello …` → `v2a`).
fn tag(answer: &str) -> &str {
    // Dubbo `greet` answers `User{name=ann@<tag>, …}`.
    if let Some(rest) = answer.strip_prefix("User{name=ann@") {
        return rest.split(',').next().unwrap_or(rest);
    }
    answer.split(':').next().unwrap_or(answer)
}

/// The ServiceEntry (four servers) and DestinationRule (subsets `v1`, `v2` with a consistent
/// hash on `x-user` over its two hosts, `mirror`) of the service on `port`.
fn service_yaml(proto: Proto, port: u16, servers: &[(&str, &str, u16)]) -> String {
    let host = proto.host();
    let port_name = proto.port_name();
    let endpoints: String = servers
        .iter()
        .map(|(_, version, p)| {
            format!(
                "  - {{address: 127.0.0.1, ports: {{{port_name}: {p}}}, labels: {{version: {version}}}}}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: echo, namespace: meta}}
spec:
  hosts: [{host}]
  ports: [{{number: {port}, name: {port_name}, protocol: TCP}}]
  resolution: STATIC
  endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: echo, namespace: meta}}
spec:
  host: {host}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - name: v2
    labels: {{version: v2}}
    trafficPolicy: {{loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}}}
  - {{name: mirror, labels: {{version: mirror}}}}
"
    )
}

/// A MetaRouter for the service with `routes` (YAML list items, indented by 2).
fn router_yaml(proto: Proto, extra_spec: &str, routes: &str) -> String {
    format!(
        "apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: echo, namespace: meta}}
spec:
  hosts: [{}]
{extra_spec}  routes:
{routes}",
        proto.host()
    )
}

fn dest(proto: Proto, subset: &str) -> String {
    format!(
        "{{destination: {{host: {}, subset: {subset}}}}}",
        proto.host()
    )
}

/// The running deployment of one protocol on one engine.
struct Deployment {
    // Envoy first: it stops before the servers and the controller.
    envoy: Envoy,
    cp: ControlPlane,
    proto: Proto,
    port: u16,
    servers: BTreeMap<&'static str, Server>,
    /// RDS updates of the front listener Envoy accepted so far.
    pushes: u64,
}

impl Deployment {
    fn start(proto: Proto, engine: Engine) -> Deployment {
        let servers: BTreeMap<&'static str, Server> = [
            ("v1", "v1"),
            ("v2a", "v2"),
            ("v2b", "v2"),
            ("mirror", "mirror"),
        ]
        .into_iter()
        .map(|(tag, _)| (tag, proto.start_server(tag)))
        .collect();
        let labelled: Vec<(&str, &str, u16)> = [
            ("v1", "v1"),
            ("v2a", "v2"),
            ("v2b", "v2"),
            ("mirror", "mirror"),
        ]
        .into_iter()
        .map(|(tag, version)| (tag, version, servers[tag].port()))
        .collect();
        let port = workspace::free_port();
        let (codecs, args): (&[(&str, &str)], &[&str]) = match proto {
            Proto::Dubbo => (&[("dubbo", "meltemi-dubbo")], &[]),
            Proto::Thrift => (
                &[("thrift", "meltemi-thrift")],
                &[
                    "--filter-config",
                    r#"thrift={"codec": {"transport": "header"}}"#,
                ],
            ),
        };
        let cp = ControlPlane::start(
            &format!("aeraki-{}", proto.name()),
            &Plan {
                engine,
                codecs,
                args,
                files: &[
                    ("service.yaml", service_yaml(proto, port, &labelled)),
                    (
                        "router.yaml",
                        router_yaml(proto, "", &format!("  - route: [{}]\n", dest(proto, "v1"))),
                    ),
                ],
            },
        );
        let envoy = cp.envoy(&format!("aeraki-{}", proto.name()));
        wait_for_routes(&envoy, proto.name(), port, 1);
        Deployment {
            envoy,
            cp,
            proto,
            port,
            servers,
            pushes: 1,
        }
    }

    /// Writes the MetaRouter and waits until Envoy accepted the routes it makes.
    fn route(&mut self, yaml: &str) {
        self.cp.write("router.yaml", yaml);
        self.pushes += 1;
        wait_for_routes(&self.envoy, self.proto.name(), self.port, self.pushes);
    }

    fn run(&self, steps: &[Step]) -> Vec<String> {
        self.proto.run(self.port, steps)
    }

    /// Scenario 1: everything to `v2` (two hosts): 100 calls, each answered by a v2 server.
    fn version_routing(&mut self) {
        let p = self.proto;
        self.route(&router_yaml(
            p,
            "",
            &format!("  - name: all-v2\n    route: [{}]\n", dest(p, "v2")),
        ));
        let answers = self.run(&vec![step("echo", "ver"); 100]);
        let tags: BTreeSet<&str> = answers.iter().map(|a| tag(a)).collect();
        assert!(
            answers
                .iter()
                .all(|a| a.starts_with("v2a:ver") || a.starts_with("v2b:ver")),
            "not all answered by v2: {tags:?}"
        );
        eprintln!("[{p:?}] version routing: 100/100 calls answered by v2 ({tags:?})");
    }

    /// Scenario 2: exact / prefix / regex on method, interface and an attachment / header.
    fn attribute_routing(&mut self) {
        let p = self.proto;
        let (v1, v2, m) = (dest(p, "v1"), dest(p, "v2"), dest(p, "mirror"));
        let (routes, cases): (String, Vec<(Step, &str)>) = match p {
            Proto::Dubbo => (
                format!(
                    "  - name: attachment-exact
    match: {{attributes: {{x-target: {{exact: v2}}}}}}
    route: [{v2}]
  - name: method-prefix
    match: {{attributes: {{method: {{prefix: gre}}}}}}
    route: [{v2}]
  - name: interface-regex
    match: {{attributes: {{interface: {{regex: '.*\\.Other[A-Z][a-z]+'}}}}}}
    route: [{m}]
  - name: default
    route: [{v1}]
"
                ),
                vec![
                    (step("echo", "a"), "v1"),
                    (step("echo", "a").kv("x-target", "v2"), "v2"),
                    (step("echo", "a").kv("x-target", "v22"), "v1"),
                    (step("greet", "a"), "v2"),
                    (step("echo", "a").on(dubbo_peer::OTHER), "mirror"),
                ],
            ),
            Proto::Thrift => (
                format!(
                    "  - name: header-exact
    match: {{attributes: {{x-version: {{exact: v2}}}}}}
    route: [{v2}]
  - name: method-prefix
    match: {{attributes: {{method: {{prefix: insp}}}}}}
    route: [{v2}]
  - name: header-regex
    match: {{attributes: {{x-user: {{regex: '^vip-[0-9]+$'}}}}}}
    route: [{m}]
  - name: default
    route: [{v1}]
"
                ),
                vec![
                    (step("echo", "a"), "v1"),
                    (step("echo", "a").kv("X-Version", "v2"), "v2"),
                    (step("echo", "a").kv("x-version", "v2x"), "v1"),
                    (step("inspect", ""), "v2"),
                    (step("echo", "a").kv("x-user", "vip-42"), "mirror"),
                    (step("echo", "a").kv("x-user", "vip-4x"), "v1"),
                ],
            ),
        };
        self.route(&router_yaml(p, "", &routes));
        let steps: Vec<Step> = cases.iter().map(|(s, _)| s.clone()).collect();
        let answers = self.run(&steps);
        for ((s, want), got) in cases.iter().zip(&answers) {
            assert!(
                tag(got).starts_with(want),
                "{s:?}: want {want}, got {got:?}"
            );
        }
        eprintln!(
            "[{p:?}] attribute routing: {} calls each to its route",
            cases.len()
        );
    }

    /// Scenario 3: 20/80 split over 1,000 calls on one connection.
    fn weighted_split(&mut self) {
        let p = self.proto;
        self.route(&router_yaml(
            p,
            "",
            &format!(
                "  - name: split
    route:
    - {{destination: {{host: {h}, subset: v1}}, weight: {SPLIT_V1}}}
    - {{destination: {{host: {h}, subset: v2}}, weight: {}}}
",
                100 - SPLIT_V1,
                h = p.host()
            ),
        ));
        let t = Instant::now();
        let answers = self.run(&vec![step("echo", "s"); SPLIT_CALLS]);
        let elapsed = t.elapsed();
        let v1 = answers.iter().filter(|a| tag(a) == "v1").count();
        let v2 = answers.iter().filter(|a| tag(a).starts_with("v2")).count();
        assert_eq!(v1 + v2, SPLIT_CALLS, "every call answered by v1 or v2");
        // Binomial(n = 1000, p = 0.2): mean 200, σ = √(n·p·(1−p)) ≈ 12.65; ±4σ ≈ ±50 (150..=250) is
        // missed by a correct split with probability ~6e-5, while 50/50 (500) and 0/100 (0)
        // are ~24σ and ~16σ away.
        let n = SPLIT_CALLS as f64;
        let prob = SPLIT_V1 as f64 / 100.0;
        let sigma = (n * prob * (1.0 - prob)).sqrt();
        let (lo, hi) = (
            (n * prob - 4.0 * sigma).ceil() as usize,
            (n * prob + 4.0 * sigma).floor() as usize,
        );
        assert!(
            (lo..=hi).contains(&v1),
            "v1 got {v1}/{SPLIT_CALLS}, outside {lo}..={hi}"
        );
        eprintln!(
            "[{p:?}] 20/80 split: v1 {v1}/{SPLIT_CALLS} (bounds {lo}..={hi}, ±4σ), {:.0} calls/s",
            n / elapsed.as_secs_f64()
        );
    }

    /// Scenario 4: consistent hash on `x-user` over v2's two hosts.
    fn consistent_hash(&mut self) {
        let p = self.proto;
        self.route(&router_yaml(
            p,
            "",
            &format!("  - name: sticky\n    route: [{}]\n", dest(p, "v2")),
        ));
        let users: Vec<String> = (0..16).map(|i| format!("user-{i}")).collect();
        let steps: Vec<Step> = (0..6)
            .flat_map(|_| users.iter().map(|u| step("echo", u).kv("x-user", u)))
            .collect();
        let answers = self.run(&steps);
        let mut hosts: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (s, a) in steps.iter().zip(&answers) {
            assert!(tag(a).starts_with("v2"), "{s:?} → {a:?}");
            hosts.entry(&s.arg).or_default().insert(tag(a));
        }
        let moved: Vec<_> = hosts.iter().filter(|(_, h)| h.len() > 1).collect();
        assert!(
            moved.is_empty(),
            "keys answered by several hosts: {moved:?}"
        );
        let used: BTreeSet<&str> = hosts.values().flatten().copied().collect();
        assert_eq!(
            used,
            BTreeSet::from(["v2a", "v2b"]),
            "16 keys should reach both hosts: {hosts:?}"
        );
        eprintln!(
            "[{p:?}] consistent hash: 16 keys x 6 calls, each key on one host, {} keys on v2a",
            hosts.values().filter(|h| h.contains("v2a")).count()
        );
    }

    /// Scenario 5: request mutation seen by the server, response mutation seen by the client.
    fn mutation(&mut self) {
        let p = self.proto;
        self.route(&router_yaml(
            p,
            "",
            &format!(
                "  - name: mutate
    route: [{}]
    requestMutation: [{{key: x-env, value: canary}}]
    responseMutation: [{{key: route-by, value: meltemi}}]
",
                dest(p, "v1")
            ),
        ));
        let answers = match p {
            // The provider answers `attachment(k)` with the value of attachment k it received.
            Proto::Dubbo => self.run(&[step("attachment", "x-env")]),
            Proto::Thrift => self.run(&[step("inspect", "")]),
        };
        let a = &answers[0];
        let seen = match p {
            Proto::Dubbo => a.starts_with("v1:x-env=canary"),
            Proto::Thrift => a.contains("h:x-env=canary"),
        };
        assert!(seen, "server did not see the request mutation: {a:?}");
        let client = match p {
            // The Java consumer prints the response attachments.
            Proto::Dubbo => a.contains("route-by=meltemi"),
            // The client prints the response's THeader headers.
            Proto::Thrift => a.contains("resp=") && a.contains("route-by=meltemi"),
        };
        assert!(client, "client did not see the response mutation: {a:?}");
        eprintln!("[{p:?}] mutation: server saw x-env=canary, client saw route-by=meltemi");
    }

    /// Scenario 6: mirror every call to `mirror`; the client sees only v1's answers.
    fn mirroring(&mut self) {
        const N: usize = 50;
        let p = self.proto;
        self.route(&router_yaml(
            p,
            "",
            &format!(
                "  - name: mirrored
    route: [{}]
    mirror: {{host: {}, subset: mirror}}
    mirrorPercentage: {{value: 100}}
",
                dest(p, "v1"),
                p.host()
            ),
        ));
        let before = self.servers["mirror"].requests().len();
        let answers = self.run(&vec![step("echo", "mirrored"); N]);
        assert!(
            answers.iter().all(|a| a.starts_with("v1:mirrored")),
            "the client must see only the primary: {:?}",
            answers.iter().map(|a| tag(a)).collect::<BTreeSet<_>>()
        );
        // Copies are sent asynchronously: wait for them.
        let deadline = Instant::now() + Duration::from_secs(20);
        let copies = loop {
            let got = self.servers["mirror"]
                .requests()
                .iter()
                .skip(before)
                .filter(|l| l.contains("mirrored"))
                .count();
            if got >= N || Instant::now() > deadline {
                break got;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            copies,
            N,
            "mirror server received {copies}/{N} copies; Envoy's mirror stats:\n{}",
            self.envoy
                .admin_get("/stats")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("mirror") && !l.ends_with(": 0"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        eprintln!(
            "[{p:?}] mirroring: {N} calls, {copies} copies on the mirror, client saw v1 only"
        );
    }
}

impl Deployment {
    /// Scenario 7: an Istio `Gateway` with a server for the protocol, and a MetaRouter bound
    /// to it: clients of the gateway's listener are routed by that router (to `v2`), the
    /// mesh's own listener keeps the mesh router's routes (`v1`). An invalid gateway router is
    /// rejected naming file, resource and field, and the gateway keeps routing.
    fn gateway(&mut self) {
        let p = self.proto;
        self.route(&router_yaml(
            p,
            "",
            &format!("  - name: mesh-v1\n    route: [{}]\n", dest(p, "v1")),
        ));
        let gw_port = workspace::free_port();
        self.cp.write(
            "gateway.yaml",
            &format!(
                "apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gw_port}, name: {}, protocol: TCP}}
    hosts: ['*']
",
                p.port_name()
            ),
        );
        wait_for_routes(&self.envoy, p.name(), gw_port, 1);
        let gw_router = |gateways: &str| {
            format!(
                "apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: echo-ingress, namespace: meta}}
spec:
  hosts: [{}]
  gateways: [{gateways}]
  routes:
  - name: ingress-v2
    route: [{}]
",
                p.host(),
                dest(p, "v2")
            )
        };
        self.cp
            .write("router-ingress.yaml", &gw_router("istio-system/ingress"));
        wait_for_routes(&self.envoy, p.name(), gw_port, 2);
        let check = |what: &str| {
            let through_gw = p.run(gw_port, &vec![step("echo", "gw"); 10]);
            assert!(
                through_gw.iter().all(|a| tag(a).starts_with("v2")),
                "{what}: gateway clients go to v2: {through_gw:?}"
            );
            let mesh = self.run(&vec![step("echo", "mesh"); 10]);
            assert!(
                mesh.iter().all(|a| tag(a) == "v1"),
                "{what}: mesh clients stay on v1: {mesh:?}"
            );
        };
        check("bound");
        // A router naming a gateway that does not exist: rejected, the last good one stays.
        self.cp
            .write("router-ingress.yaml", &gw_router("istio-system/nope"));
        self.cp
            .wait_logged("spec.gateways[0]", Duration::from_secs(20));
        let log = self.cp.log();
        let line = log
            .lines()
            .find(|l| l.contains("spec.gateways[0]"))
            .unwrap_or_default();
        assert!(
            line.contains("router-ingress.yaml") && line.contains("MetaRouter meta/echo-ingress"),
            "the rejection names file, resource and field: {line}"
        );
        check("after a rejected change");
        eprintln!("[{p:?}] gateway: 10 calls through the gateway on v2, 10 mesh calls on v1; bad change rejected: {line}");
    }
}

fn scenarios(proto: Proto, engine: Engine) {
    let available = match proto {
        Proto::Dubbo => dubbo_peer::peers_available(),
        Proto::Thrift => thrift_peer::peers_available(),
    };
    if !available {
        return;
    }
    let t = Instant::now();
    let mut d = Deployment::start(proto, engine);
    eprintln!(
        "[{proto:?} {}] deployment up in {:.1}s",
        engine.name(),
        t.elapsed().as_secs_f64()
    );
    d.version_routing();
    d.attribute_routing();
    d.weighted_split();
    d.consistent_hash();
    d.mutation();
    d.mirroring();
    d.gateway();
    eprintln!(
        "[{proto:?} {}] all scenarios in {:.1}s",
        engine.name(),
        t.elapsed().as_secs_f64()
    );
}

fn dubbo_aeraki_scenarios(engine: Engine) {
    scenarios(Proto::Dubbo, engine)
}

fn thrift_aeraki_scenarios(engine: Engine) {
    scenarios(Proto::Thrift, engine)
}
