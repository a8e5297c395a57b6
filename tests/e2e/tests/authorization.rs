//! Authorization end to end, configured only through the controller: Aeraki's
//! `DubboAuthorizationPolicy` and Meltemi's `MetaAuthorizationPolicy` written to the watched
//! directory, translated to HCM RBAC, enforced by a real Envoy 1.40 on real Dubbo (sofa-rpc-node
//! provider, Java Hessian consumer) and Thrift (Apache Thrift Python) peers, on every engine.
//!
//! Identity is set up the way a mesh does it: clients connect to a client-side Envoy (the
//! "sidecar" here) whose tcp_proxy listeners originate mutual TLS with a certificate carrying
//! a SPIFFE URI SAN (`spiffe://cluster.local/ns/front/sa/web`, `…/ns/batch/sa/job`, made with
//! `openssl` in the test); the Meltemi front listeners terminate it (`--front-tls-*`) and
//! require a client certificate. Denied calls must come back as the protocol's own error and
//! leave the client's connection usable; `rbac.*` counters in `/stats` must move; a policy
//! change must reach a connection that is already open.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use meltemi_e2e::bootstrap::Engine;
use meltemi_e2e::controlplane::{wait_for_routes, ControlPlane, Plan};
use meltemi_e2e::dubbo_peer::{
    self, read_raw_frame, request_frame, run_consumer, Call, ConsumerKind, Outcome, Provider,
    ProviderKind, ECHO, OTHER,
};
use meltemi_e2e::envoy::Envoy;
use meltemi_e2e::thrift_peer::{self, Impl};
use meltemi_e2e::workspace::free_port;

meltemi_e2e::on_every_engine!(dubbo_policies, thrift_policies);

/// The identities the sidecar presents.
const WEB: &str = "spiffe://cluster.local/ns/front/sa/web";
const JOB: &str = "spiffe://cluster.local/ns/batch/sa/job";

/// A scratch directory with a CA, the Meltemi listener's server certificate and one client
/// certificate per identity; removed on drop unless the test failed.
struct Certs {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    fn new(name: &str, engine: Engine) -> Certs {
        let dir = std::env::temp_dir().join(format!(
            "meltemi-authz-certs-{name}-{}-{}",
            engine.name(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cert dir");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca = [
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=meltemi-authz-ca",
        ];
        openssl(&dir, &[&["req", "-x509"][..], &ec, &ca].concat());
        for (who, san, usage) in [
            ("server", "IP:127.0.0.1".to_owned(), "serverAuth"),
            ("web", format!("URI:{WEB}"), "clientAuth"),
            ("job", format!("URI:{JOB}"), "clientAuth"),
        ] {
            std::fs::write(
                dir.join(format!("{who}.ext")),
                format!("subjectAltName={san}\nextendedKeyUsage={usage}\n"),
            )
            .expect("ext");
            let (key, csr, pem, ext) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.pem"),
                format!("{who}.ext"),
            );
            let subj = format!("/CN={who}");
            openssl(
                &dir,
                &[
                    &["req"][..],
                    &ec,
                    &["-keyout", &key, "-out", &csr, "-subj", &subj],
                ]
                .concat(),
            );
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "1",
                    "-extfile",
                    &ext,
                    "-out",
                    &pem,
                ],
            );
        }
        Certs { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// The controller flags that make every front listener terminate mutual TLS.
    fn controller_args(&self) -> Vec<String> {
        vec![
            "--front-tls-cert".into(),
            self.path("server.pem"),
            "--front-tls-key".into(),
            self.path("server.key"),
            "--front-tls-client-ca".into(),
            self.path("ca.pem"),
        ]
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The client-side Envoy: one plain-TCP listener per (identity, Meltemi port), each a
/// tcp_proxy that originates mutual TLS with that identity's certificate.
struct Sidecar {
    envoy: Envoy,
    ports: Vec<u16>,
}

impl Sidecar {
    fn start(name: &str, certs: &Certs, routes: &[(&str, u16)]) -> Sidecar {
        let admin = free_port();
        let ports: Vec<u16> = routes.iter().map(|_| free_port()).collect();
        let mut listeners = Vec::new();
        let mut clusters = Vec::new();
        for (i, ((who, target), port)) in routes.iter().zip(&ports).enumerate() {
            listeners.push(serde_json::json!({
                "name": format!("to_{i}"),
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": format!("to_{i}"),
                        "cluster": format!("mtls_{i}")
                    }
                }]}]
            }));
            clusters.push(serde_json::json!({
                "name": format!("mtls_{i}"),
                "type": "STATIC",
                "connect_timeout": "2s",
                "load_assignment": {"cluster_name": format!("mtls_{i}"), "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": target}}}}]}]},
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "common_tls_context": {
                            "tls_certificates": [{
                                "certificate_chain": {"filename": certs.path(&format!("{who}.pem"))},
                                "private_key": {"filename": certs.path(&format!("{who}.key"))}
                            }],
                            "validation_context": {"trusted_ca": {"filename": certs.path("ca.pem")}}
                        }
                    }
                }
            }));
        }
        let config = serde_json::json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {"listeners": listeners, "clusters": clusters}
        });
        let envoy = Envoy::start(name, &config.to_string(), admin);
        Sidecar { envoy, ports }
    }
}

/// Waits for `cond`, polling; panics with `what` after 30 s.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every counter in `/stats` whose name contains `.rbac.` (for messages).
fn rbac_stats(envoy: &Envoy) -> String {
    envoy
        .admin_get("/stats")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(".rbac."))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether an error text is the codec's refusal for Envoy's 403.
fn refused(text: &str) -> bool {
    text.contains("unauthorized") || text.contains("RBAC") || text.contains("403")
}

// ---------------------------------------------------------------------------------------
// Dubbo

fn dubbo_services(port: u16, provider: u16) -> String {
    let mut text = String::new();
    for iface in [ECHO, OTHER] {
        let host = iface.to_ascii_lowercase();
        let name = host.rsplit('.').next().unwrap_or(&host).to_owned();
        text.push_str(&format!(
            "---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{host}]
  ports: [{{number: {port}, name: tcp-metaprotocol-dubbo, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-metaprotocol-dubbo: {provider}}}}}]
"
        ));
    }
    text
}

/// Aeraki's kind as written: DENY OtherService to everyone (by service); ALLOW namespace
/// `front` everything and principal `batch/job` only `echo` (by identity and method). Plus
/// Meltemi's kind: DENY calls whose `x-tenant` attachment is `blocked` (by attribute).
fn dubbo_policy_text() -> String {
    format!(
        "apiVersion: dubbo.aeraki.io/v1alpha1
kind: DubboAuthorizationPolicy
metadata: {{name: no-other, namespace: shop}}
spec:
  action: DENY
  rules:
  - to: [{{operation: {{interfaces: [{OTHER}]}}}}]
---
apiVersion: dubbo.aeraki.io/v1alpha1
kind: DubboAuthorizationPolicy
metadata: {{name: callers, namespace: shop}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{namespaces: [front]}}}}]
  - from: [{{source: {{principals: [cluster.local/ns/batch/sa/job]}}}}]
    to: [{{operation: {{methods: [echo]}}}}]
---
apiVersion: meltemi.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {{name: blocked-tenant, namespace: shop}}
spec:
  action: DENY
  rules:
  - to: [{{operation: {{attributes: {{x-tenant: {{exact: blocked}}}}}}}}]
"
    )
}

/// Runs the Java consumer (one connection) and checks each call: `Ok(substring)` for an
/// answer containing it, `Err` for a Dubbo error reply naming the refusal.
fn expect_dubbo(envoy: &Envoy, port: u16, steps: &[(Call, Result<&str, ()>)]) {
    let calls: Vec<Call> = steps.iter().map(|(c, _)| c.clone()).collect();
    let run = run_consumer(
        ConsumerKind::Java,
        port,
        &calls,
        &[],
        Duration::from_secs(60),
    );
    assert!(
        run.completed(),
        "{}\nenvoy:\n{}",
        run.transcript(),
        envoy.log()
    );
    for ((call, want), got) in steps.iter().zip(&run.outcomes) {
        match (want, got) {
            (Ok(v), Outcome::Ok(text)) if text.contains(v) => {}
            // The codec's reply to Envoy's 403: a Dubbo error status with a message.
            (Err(()), Outcome::Err(text)) if refused(text) => {
                eprintln!("refused Dubbo call {call:?}: {text}")
            }
            _ => panic!("{call:?}: want {want:?}, got {got:?}\n{}", run.transcript()),
        }
    }
}

fn dubbo_policies(engine: Engine) {
    if !dubbo_peer::peers_available() {
        return;
    }
    let certs = Certs::new("dubbo", engine);
    let provider = Provider::start(ProviderKind::Sofa, "v1");
    let port = free_port();
    let args = certs.controller_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cp = ControlPlane::start(
        "authz-dubbo",
        &Plan {
            engine,
            codecs: &[("dubbo", "meltemi-dubbo")],
            args: &args,
            files: &[("services.yaml", dubbo_services(port, provider.port))],
        },
    );
    let envoy = cp.envoy("authz-dubbo");
    wait_for_routes(&envoy, "dubbo", port, 1);
    let sidecar = Sidecar::start(
        &format!("authz-dubbo-sidecar-{}", engine.name()),
        &certs,
        &[("web", port), ("job", port)],
    );
    let (web, job) = (sidecar.ports[0], sidecar.ports[1]);

    // No policy: everything passes, over mutual TLS.
    expect_dubbo(
        &envoy,
        job,
        &[
            (Call::new(ECHO, "echo", "open"), Ok("v1:open")),
            (Call::new(OTHER, "echo", "open"), Ok("v1:open")),
        ],
    );
    let handshakes = envoy
        .admin_get("/stats")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("listener.127.0.0.1_") && l.contains(".ssl.handshake: "))
        .filter_map(|l| l.rsplit(": ").next()?.parse::<u64>().ok())
        .sum::<u64>();
    assert!(handshakes >= 1, "no TLS handshake on the Meltemi listener");
    assert!(
        sidecar.envoy.stat("cluster.mtls_1.ssl.handshake") >= 1,
        "the sidecar did not originate TLS"
    );

    cp.write("authz.yaml", &dubbo_policy_text());
    wait_for_routes(&envoy, "dubbo", port, 2);
    let denied_before = envoy.stat(&format!(
        "http.meltemi_dubbo_{port}.rbac.meltemi_deny.denied"
    ));
    // `front/web`: all but OtherService (DENY by service) and the blocked tenant (DENY by
    // attribute); each refusal is a Dubbo error and the next call works on the same connection.
    expect_dubbo(
        &envoy,
        web,
        &[
            (Call::new(ECHO, "echo", "a"), Ok("v1:a")),
            (Call::new(OTHER, "echo", "b"), Err(())),
            (Call::new(ECHO, "greet", "c"), Ok("ann@v1")),
            (
                Call::new(ECHO, "echo", "d").att("x-tenant", "blocked"),
                Err(()),
            ),
            (
                Call::new(ECHO, "echo", "e").att("x-tenant", "paying"),
                Ok("v1:e"),
            ),
        ],
    );
    // `batch/job`: only `echo` is allowed to it (ALLOW by identity and method).
    expect_dubbo(
        &envoy,
        job,
        &[
            (Call::new(ECHO, "echo", "f"), Ok("v1:f")),
            (Call::new(ECHO, "greet", "g"), Err(())),
            (Call::new(OTHER, "echo", "h"), Err(())),
            (Call::new(ECHO, "echo", "i"), Ok("v1:i")),
        ],
    );
    let stat = |s: &str| envoy.stat(&format!("http.meltemi_dubbo_{port}.rbac.{s}"));
    assert_eq!(
        stat("meltemi_deny.denied") - denied_before,
        3,
        "{}",
        rbac_stats(&envoy)
    );
    assert_eq!(stat("meltemi_allow.denied"), 1, "{}", rbac_stats(&envoy));
    assert!(stat("meltemi_allow.allowed") >= 5, "{}", rbac_stats(&envoy));

    // A live change on an open connection (raw Dubbo2 frames through the sidecar as `web`).
    let mut conn = TcpStream::connect(("127.0.0.1", web)).expect("connect sidecar");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut call = |id: u64| {
        conn.write_all(&request_frame(id, ECHO, "echo", "live"))
            .expect("write");
        let frame = read_raw_frame(&mut conn).expect("answer");
        assert_eq!(frame.id, id);
        frame.status
    };
    assert_eq!(call(1), 20, "allowed before the change");
    let updates = envoy.stat(&format!(
        "http.meltemi_dubbo_{port}.rds.meltemi_{port}.update_success"
    ));
    let deny_echo = format!(
        "{}---
apiVersion: dubbo.aeraki.io/v1alpha1
kind: DubboAuthorizationPolicy
metadata: {{name: no-echo-for-web, namespace: shop}}
spec:
  action: DENY
  rules:
  - from: [{{source: {{principals: [\"*/sa/web\"]}}}}]
    to: [{{operation: {{interfaces: [{ECHO}], methods: [echo]}}}}]
",
        dubbo_policy_text()
    );
    let t = Instant::now();
    cp.write("authz.yaml", &deny_echo);
    wait_for_routes(&envoy, "dubbo", port, updates + 1);
    let status = call(2);
    eprintln!(
        "{}: live DENY on an open Dubbo connection seen after {:?}",
        engine.name(),
        t.elapsed()
    );
    // 70 SERVICE_ERROR: the Dubbo codec's status for Unauthorized.
    assert_eq!(status, 70, "denied after the change, same connection");
    cp.write("authz.yaml", &dubbo_policy_text());
    wait_for_routes(&envoy, "dubbo", port, updates + 2);
    assert_eq!(call(3), 20, "allowed again, same connection");

    // An invalid policy is refused naming file, resource and field; the last good one stays.
    cp.write(
        "authz.yaml",
        &dubbo_policy_text().replace("action: DENY", "action: REFUSE"),
    );
    cp.wait_logged(
        "resource=DubboAuthorizationPolicy shop/no-other field=spec.action",
        Duration::from_secs(10),
    );
    expect_dubbo(
        &envoy,
        web,
        &[
            (Call::new(OTHER, "echo", "j"), Err(())),
            (Call::new(ECHO, "echo", "k"), Ok("v1:k")),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Thrift

/// Two Thrift services of namespace `shop` on two ports (one host per port, as Thrift has it).
fn thrift_services(echo: u16, audit: u16, server: u16) -> String {
    let mut text = String::new();
    for (host, port) in [("echo", echo), ("audit", audit)] {
        text.push_str(&format!(
            "---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: {host}, namespace: shop}}
spec:
  hosts: [{host}]
  ports: [{{number: {port}, name: tcp-metaprotocol-thrift-{host}, protocol: TCP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-metaprotocol-thrift-{host}: {server}}}}}]
"
        ));
    }
    text
}

/// DENY `add` from namespace `batch` and any call with THeader `x-tenant: blocked` on
/// `echo`; ALLOW only `front/web` on `audit` (by service and identity).
const THRIFT_POLICIES: &str = "apiVersion: meltemi.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {name: echo-guard, namespace: shop}
spec:
  hosts: [echo]
  action: DENY
  rules:
  - from: [{source: {namespaces: [batch]}}]
    to: [{operation: {methods: [add]}}]
  - to: [{operation: {attributes: {x-tenant: {exact: blocked}}}}]
---
apiVersion: meltemi.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {name: audit-web-only, namespace: shop}
spec:
  hosts: [audit]
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/front/sa/web]}}]
";

/// The Apache client's `calls` scenario against `port`: one connection, each step's line.
fn thrift_calls(envoy: &Envoy, port: u16, steps: &[&str]) -> Vec<String> {
    let mut client = thrift_peer::Client::new(Impl::Apache, "header", "compact", port, "calls");
    for s in steps {
        client = client.arg("--call").arg(s);
    }
    let out = client.run();
    assert!(
        out.success() && out.lines().contains(&"DONE"),
        "{}:\n{}\n{}\nenvoy:\n{}",
        client.describe(),
        out.stdout,
        out.stderr,
        envoy.log()
    );
    out.lines()
        .iter()
        .filter(|l| l.starts_with("CALL "))
        .map(|l| l.to_string())
        .collect()
}

/// `CALL i OK …` lines must contain `Ok(text)`; `Err` = the codec's TApplicationException
/// for Envoy's 403.
fn check_thrift(lines: &[String], want: &[Result<&str, ()>]) {
    assert_eq!(lines.len(), want.len(), "{lines:#?}");
    for (line, want) in lines.iter().zip(want) {
        let ok = match want {
            Ok(v) => line.contains(" OK ") && line.contains(v),
            // INTERNAL_ERROR (6): what the codec sends for Unauthorized (Apache clients know
            // only 0..=10), the reason in the message.
            Err(()) => line.contains(" ERR TApplicationException type=6") && refused(line),
        };
        assert!(ok, "want {want:?}, got {line:?}\nall: {lines:#?}");
        if want.is_err() {
            eprintln!("refused Thrift call: {line}");
        }
    }
}

fn thrift_policies(engine: Engine) {
    if !thrift_peer::peers_available() {
        return;
    }
    let certs = Certs::new("thrift", engine);
    let server = thrift_peer::Server::start(Impl::Apache, "header", "compact", "s", &[]);
    let (echo, audit) = (free_port(), free_port());
    let mut args = certs.controller_args();
    args.extend([
        "--filter-config".to_owned(),
        r#"thrift={"codec": {"transport": "header"}}"#.to_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cp = ControlPlane::start(
        "authz-thrift",
        &Plan {
            engine,
            codecs: &[("thrift", "meltemi-thrift")],
            args: &args,
            files: &[("services.yaml", thrift_services(echo, audit, server.port))],
        },
    );
    let envoy = cp.envoy("authz-thrift");
    wait_for_routes(&envoy, "thrift", echo, 1);
    wait_for_routes(&envoy, "thrift", audit, 1);
    let sidecar = Sidecar::start(
        &format!("authz-thrift-sidecar-{}", engine.name()),
        &certs,
        &[("web", echo), ("job", echo), ("web", audit), ("job", audit)],
    );
    let [web_echo, job_echo, web_audit, job_audit] = [
        sidecar.ports[0],
        sidecar.ports[1],
        sidecar.ports[2],
        sidecar.ports[3],
    ];

    check_thrift(
        &thrift_calls(&envoy, job_audit, &["echo", "add"]),
        &[Ok("s:hello0"), Ok("42")],
    );

    cp.write("authz.yaml", THRIFT_POLICIES);
    wait_for_routes(&envoy, "thrift", echo, 2);
    wait_for_routes(&envoy, "thrift", audit, 2);
    // `front/web` on echo: `add` allowed; the blocked tenant refused (attribute), and the
    // connection goes on.
    check_thrift(
        &thrift_calls(
            &envoy,
            web_echo,
            &[
                "echo",
                "add",
                "echo@x-tenant=blocked",
                "echo@x-tenant=paying",
            ],
        ),
        &[Ok("s:hello0"), Ok("42"), Err(()), Ok("s:hello3")],
    );
    // `batch/job` on echo: `add` refused (identity by namespace + method).
    check_thrift(
        &thrift_calls(&envoy, job_echo, &["add", "echo", "add"]),
        &[Err(()), Ok("s:hello1"), Err(())],
    );
    // audit allows only `front/web` (service + principal).
    check_thrift(
        &thrift_calls(&envoy, job_audit, &["echo", "inspect"]),
        &[Err(()), Err(())],
    );
    check_thrift(
        &thrift_calls(&envoy, web_audit, &["echo"]),
        &[Ok("s:hello0")],
    );
    let stat = |p: u16, s: &str| envoy.stat(&format!("http.meltemi_thrift_{p}.rbac.{s}"));
    assert_eq!(
        stat(echo, "meltemi_deny.denied"),
        3,
        "{}",
        rbac_stats(&envoy)
    );
    assert_eq!(
        stat(audit, "meltemi_allow.denied"),
        2,
        "{}",
        rbac_stats(&envoy)
    );
    assert_eq!(
        stat(audit, "meltemi_allow.allowed"),
        1,
        "{}",
        rbac_stats(&envoy)
    );
    assert_eq!(
        stat(echo, "meltemi_allow.denied"),
        0,
        "{}",
        rbac_stats(&envoy)
    );

    // A live change on an open connection: `job` calls echo, the policy starts denying
    // `echo` to it, the same connection's next call is refused, then allowed again.
    let gate = cp.dir.join("gate");
    let (g1, g2) = (
        gate.with_extension("1").display().to_string(),
        gate.with_extension("2").display().to_string(),
    );
    let client = thrift_peer::Client::new(Impl::Apache, "header", "compact", job_echo, "calls")
        .arg("--call")
        .arg("echo")
        .arg("--call")
        .arg(&format!("wait:{g1}"))
        .arg("--call")
        .arg("echo")
        .arg("--call")
        .arg(&format!("wait:{g2}"))
        .arg("--call")
        .arg("echo");
    let running = client.spawn();
    let updates = |e: &Envoy| {
        e.stat(&format!(
            "http.meltemi_thrift_{echo}.rds.meltemi_{echo}.update_success"
        ))
    };
    let ready = |g: &str| Path::new(&format!("{g}.ready")).exists();
    wait_until("the client's first call", || ready(&g1));
    let before = updates(&envoy);
    let deny_echo = THRIFT_POLICIES.replace("methods: [add]", "methods: [add, echo]");
    let t = Instant::now();
    cp.write("authz.yaml", &deny_echo);
    wait_for_routes(&envoy, "thrift", echo, before + 1);
    eprintln!(
        "{}: live DENY on an open Thrift connection's policy seen by Envoy after {:?}",
        engine.name(),
        t.elapsed()
    );
    std::fs::write(&g1, "").expect("gate");
    wait_until("the client's second call", || ready(&g2));
    cp.write("authz.yaml", THRIFT_POLICIES);
    wait_for_routes(&envoy, "thrift", echo, before + 2);
    std::fs::write(&g2, "").expect("gate");
    let out = running.finish();
    let lines: Vec<String> = out
        .lines()
        .iter()
        .filter(|l| l.starts_with("CALL "))
        .map(|l| l.to_string())
        .collect();
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    check_thrift(&lines, &[Ok("s:hello0"), Err(()), Ok("s:hello4")]);
    // Unchanged: listeners were never touched by a policy change.
    assert_eq!(envoy.stat("listener_manager.listener_modified"), 0);
}
