//! The controller against the real Envoy 1.40: rendered bootstraps pass `envoy --mode validate`,
//! and `serve` drives two Envoys over gRPC ADS while a MiniRPC client keeps calling on one
//! long-lived connection and the route file is rewritten under it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meltemi_e2e::envoy::{envoy_binary, Envoy};
use meltemi_e2e::minirpc_peer::{self, Client, Server};
use meltemi_e2e::workspace::{build_wasm, free_port};

mod common;

use common::{Controller, BIN};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/minirpc")
}

fn controller(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run meltemi-controller")
}

/// A fresh temporary directory, removed on drop unless the test failed.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("meltemi-ctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("files kept in {}", self.0.display());
        }
    }
}

#[test]
fn rendered_bootstraps_pass_envoy_validate() {
    let wasm = build_wasm("minirpc");
    // The native and mix builds load `libminirpc.so` from Envoy's search path.
    meltemi_e2e::workspace::build_native("minirpc");
    let dir = TempDir::new("validate");
    let module = format!("minirpc={}", wasm.display());
    for (name, args) in [
        (
            "static.json",
            vec![
                "bootstrap",
                "--dir",
                testdata().to_str().unwrap_or_default(),
                "--module",
                &module,
            ],
        ),
        ("ads.json", vec!["bootstrap", "--xds", "127.0.0.1:18000"]),
        (
            "http2.json",
            vec![
                "bootstrap",
                "--dir",
                testdata().to_str().unwrap_or_default(),
                "--module",
                &module,
                "--filter-config",
                r#"minirpc={"hcm_protocol": "http2"}"#,
            ],
        ),
        (
            "native.json",
            vec![
                "bootstrap",
                "--dir",
                testdata().to_str().unwrap_or_default(),
                "--build",
                "native",
                "--native-module",
                "minirpc=minirpc",
            ],
        ),
        (
            "mix.json",
            vec![
                "bootstrap",
                "--dir",
                testdata().to_str().unwrap_or_default(),
                "--module",
                &module,
                "--build",
                "mix",
                "--native-module",
                "minirpc=minirpc",
            ],
        ),
    ] {
        let file = dir.0.join(name);
        let mut args = args.clone();
        args.extend(["-o", file.to_str().unwrap_or_default()]);
        let out = controller(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if name == "http2.json" {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            assert!(text.contains(r#""codec_type": "HTTP2""#), "{text}");
        }
        let v = Command::new(envoy_binary())
            .args(["--mode", "validate", "-c"])
            .arg(&file)
            .env(
                "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
                meltemi_e2e::workspace::native_dir(),
            )
            .output()
            .expect("run envoy");
        let log =
            String::from_utf8_lossy(&v.stdout).to_string() + &String::from_utf8_lossy(&v.stderr);
        assert!(
            v.status.success() && log.contains("OK"),
            "{name} refused:\n{log}"
        );
    }
}

#[test]
fn check_lists_skipped_and_names_file_resource_field() {
    let out = controller(&["check", testdata().to_str().unwrap_or_default()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("skipped: ") && text.contains("Deployment meta/demo-v1"),
        "{text}"
    );
    assert!(text.contains("outbound|29000|v2|demo"), "{text}");

    let dir = TempDir::new("check");
    for f in ["protocol.yaml", "service.yaml"] {
        std::fs::copy(testdata().join(f), dir.0.join(f)).expect("copy");
    }
    std::fs::write(dir.0.join("router.yaml"), router(&[("v1", 30), ("v3", 30)])).expect("write");
    let out = controller(&["check", dir.0.to_str().unwrap_or_default()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("router.yaml (document 1): MetaRouter meta/demo: field `spec.routes[0].route`: weights sum to 60"), "{err}");
    assert!(
        err.contains(
            "field `spec.routes[0].route[1].destination.subset`: subset `v3` is not defined"
        ),
        "{err}"
    );
}

#[test]
fn aeraki_shaped_thrift_and_dubbo_demos_are_accepted() {
    let dir = |d: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(d)
    };
    let thrift = dir("aeraki-thrift");
    let out = controller(&[
        "check",
        "-n",
        "meta-thrift",
        thrift.to_str().unwrap_or_default(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "apps/v1 Deployment meta-thrift/thrift-sample-server-v1",
        "v1 Service meta-thrift/web (no tcp-metaprotocol-* port)",
        "127.0.0.1_9090",
        "thrift-sample-server.meta-thrift.svc.cluster.local:9090 (2 routes)",
        "outbound|9090|v2|thrift-sample-server.meta-thrift.svc.cluster.local",
        "picks no ready Pod or WorkloadEntry of its namespace",
    ] {
        assert!(text.contains(want), "missing {want:?}:\n{text}");
    }
    // Without `-n meta-thrift` the Service lands in `default` and the MetaRouter's host is unknown.
    let out = controller(&["check", thrift.to_str().unwrap_or_default()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("metarouter.yaml (document 1): MetaRouter meta-thrift/test-metaprotocol-thrift-route: field `spec.hosts[0]`"), "{err}");

    let dubbo = dir("aeraki-dubbo");
    let out = controller(&["check", dubbo.to_str().unwrap_or_default()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "org.apache.dubbo.samples.basic.api.demoservice:20880 (1 routes)",
        "org.apache.dubbo.samples.basic.api.testservice:20880 (1 routes)",
        "meltemi_server|20880||org.apache.dubbo.samples.basic.api.testservice (2 endpoints)",
    ] {
        assert!(text.contains(want), "missing {want:?}:\n{text}");
    }
}

/// A MetaRouter for `demo` sending everything to the weighted subsets.
fn router(split: &[(&str, u32)]) -> String {
    let mut s = String::from(
        "apiVersion: metaprotocol.aeraki.io/v1alpha1\nkind: MetaRouter\nmetadata: {name: demo, namespace: meta}\nspec:\n  hosts: [demo]\n  routes:\n  - name: all\n    route:\n",
    );
    for (subset, weight) in split {
        s.push_str(&format!(
            "    - destination: {{host: demo, subset: {subset}}}\n      weight: {weight}\n"
        ));
    }
    s
}

/// Writes `text` to `dir/name` atomically (rename), as editors and `kubectl`-style tools do,
/// so that the controller never reads half a file.
fn write_atomic(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

/// `meltemi-controller serve --dir <dir>` serving the `minirpc` module.
fn serve_dir(dir: &Path, xds_port: u16, wasm: &Path, log: PathBuf) -> Controller {
    let mut command = Controller::command(&["serve", "--dir"]);
    command
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{xds_port}"), "--module"])
        .arg(format!("minirpc={}", wasm.display()));
    Controller::start(command, log, Duration::from_secs(20))
}

/// One call's outcome as the client saw it.
#[derive(Debug, Clone)]
struct Call {
    sent: Instant,
    method: &'static str,
    /// `v1` / `v2` (the answering server's tag) or `error: …`.
    outcome: String,
}

/// Calls `echo` on one connection until stopped, recording every outcome.
fn caller(
    port: u16,
    stop: Arc<AtomicBool>,
    calls: Arc<Mutex<Vec<Call>>>,
) -> std::thread::JoinHandle<()> {
    caller_with(port, &["echo"], stop, calls)
}

/// Like [`caller`], cycling through `methods`.
fn caller_with(
    port: u16,
    methods: &'static [&'static str],
    stop: Arc<AtomicBool>,
    calls: Arc<Mutex<Vec<Call>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut client = Client::connect(port);
        let mut id = 0u64;
        while !stop.load(Ordering::SeqCst) {
            id += 1;
            let sent = Instant::now();
            let method = methods[id as usize % methods.len()];
            client.send(&minirpc_peer::request(id, method, &[], b"x"));
            let outcome = match client.recv() {
                Ok(f) if f.kind == minirpc::kind::RESPONSE && f.id == id => {
                    String::from_utf8_lossy(&f.payload)
                        .trim_end_matches(":x")
                        .to_owned()
                }
                Ok(f) => format!("error: kind {} id {} {:?}", f.kind, f.id, f.headers),
                Err(e) => format!("error: {e}"),
            };
            let failed = outcome.starts_with("error");
            if let Ok(mut c) = calls.lock() {
                c.push(Call {
                    sent,
                    method,
                    outcome,
                });
            }
            if failed {
                return; // the connection is no longer trustworthy
            }
        }
    })
}

/// Waits until a call sent after `since` answers with `tag`; returns how long after `since`.
fn wait_for(calls: &Mutex<Vec<Call>>, since: Instant, tag: &str) -> Duration {
    let deadline = since + Duration::from_secs(10);
    loop {
        if let Ok(c) = calls.lock() {
            if let Some(call) = c.iter().find(|c| c.sent >= since && c.outcome == tag) {
                return call.sent - since;
            }
        }
        assert!(Instant::now() < deadline, "no `{tag}` answer within 10 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Outcomes of calls sent after `since`, waiting until there are at least `n`.
fn outcomes_after(calls: &Mutex<Vec<Call>>, since: Instant, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = calls.lock() {
            let after: Vec<String> = c
                .iter()
                .filter(|c| c.sent >= since)
                .map(|c| c.outcome.clone())
                .collect();
            if after.len() >= n {
                return after;
            }
        }
        assert!(Instant::now() < deadline, "fewer than {n} calls in 20 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn rds_updates(envoy: &Envoy, port: u16) -> u64 {
    envoy.stat(&format!(
        "http.meltemi_minirpc_{port}.rds.meltemi_{port}.update_success"
    ))
}

fn rds_rejected(envoy: &Envoy, port: u16) -> u64 {
    envoy.stat(&format!(
        "http.meltemi_minirpc_{port}.rds.meltemi_{port}.update_rejected"
    ))
}

fn wait_stat(envoy: &Envoy, what: &str, f: impl Fn(&Envoy) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f(envoy) {
        assert!(
            Instant::now() < deadline,
            "{what} not reached in 10 s:\n{}",
            envoy.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn live_route_changes_on_one_connection_through_ads() {
    let wasm = build_wasm("minirpc");
    let (v1, v2) = (Server::start("v1"), Server::start("v2"));
    let (port, xds, admin1, admin2) = (free_port(), free_port(), free_port(), free_port());
    let dir = TempDir::new("live");
    let config = dir.0.join("config");
    demo_config(&config, port, &v1, &v2, &[("v1", 100)]);

    let ctl = serve_dir(&config, xds, &wasm, dir.0.join("controller.log"));
    // Two Envoys on the same controller (SO_REUSEPORT lets both bind the listener port).
    let envoys: Vec<Envoy> = [admin1, admin2]
        .iter()
        .enumerate()
        .map(|(i, admin)| {
            let out = controller(&[
                "bootstrap",
                "--xds",
                &format!("127.0.0.1:{xds}"),
                "--admin-port",
                &admin.to_string(),
                "--node-id",
                &format!("envoy-{i}"),
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Envoy::start(
                &format!("ctl-{i}"),
                &String::from_utf8_lossy(&out.stdout),
                *admin,
            )
        })
        .collect();
    for e in &envoys {
        wait_stat(e, "listener active", |e| {
            e.stat("listener_manager.total_listeners_active") >= 1
        });
        wait_stat(e, "first RDS", |e| rds_updates(e, port) >= 1);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let worker = caller(port, Arc::clone(&stop), Arc::clone(&calls));
    let start = Instant::now();
    wait_for(&calls, start, "v1");

    // Flip v1 → v2.
    let updates: Vec<u64> = envoys.iter().map(|e| rds_updates(e, port)).collect();
    let t = Instant::now();
    write_atomic(&config, "router.yaml", &router(&[("v2", 100)]));
    let flip = wait_for(&calls, t, "v2");
    let seen_at = Instant::now();
    let after: Vec<String> = outcomes_after(&calls, seen_at + Duration::from_millis(1), 50);
    assert!(after.iter().all(|o| o == "v2"), "after the flip: {after:?}");
    for (e, before) in envoys.iter().zip(&updates) {
        wait_stat(e, "RDS update on every Envoy", |e| {
            rds_updates(e, port) > *before
        });
    }

    // A 50/50 split.
    let t = Instant::now();
    write_atomic(&config, "router.yaml", &router(&[("v1", 50), ("v2", 50)]));
    let split = wait_for(&calls, t, "v1");
    let seen_at = Instant::now();
    let after = outcomes_after(&calls, seen_at, 400);
    let n1 = after.iter().filter(|o| *o == "v1").count();
    let n2 = after.iter().filter(|o| *o == "v2").count();
    assert!(
        n1 > 120 && n2 > 120,
        "50/50 split over {}: v1={n1} v2={n2}",
        after.len()
    );

    // An invalid change: weights summing to 60. Rejected, logged, nothing changes.
    let updates: Vec<u64> = envoys.iter().map(|e| rds_updates(e, port)).collect();
    write_atomic(&config, "router.yaml", &router(&[("v1", 30), ("v2", 30)]));
    ctl.wait_logged("weights sum to 60", Duration::from_secs(10));
    let log = ctl.text();
    let line = log
        .lines()
        .find(|l| l.contains("weights sum to 60"))
        .unwrap_or_default();
    assert!(
        line.contains("router.yaml")
            && line.contains("MetaRouter meta/demo")
            && line.contains("spec.routes[0].route"),
        "{line}"
    );
    let t = Instant::now();
    let after = outcomes_after(&calls, t, 200);
    assert!(
        after.iter().any(|o| o == "v1") && after.iter().any(|o| o == "v2"),
        "split kept: {after:?}"
    );
    for (e, before) in envoys.iter().zip(&updates) {
        assert_eq!(
            rds_updates(e, port),
            *before,
            "an invalid change reached Envoy"
        );
    }

    // A change the controller's checks pass but Envoy refuses: a regex over RE2's program-size
    // limit (Envoy's `re2.max_program_size.error_level`, 100). Envoy NACKs, the controller logs
    // Envoy's message, routing stays the split; the next good change is applied.
    let rejected: Vec<u64> = envoys.iter().map(|e| rds_rejected(e, port)).collect();
    let big = "(abcdefghij){30}";
    write_atomic(
        &config,
        "router.yaml",
        &format!(
            "{}  - name: huge\n    match: {{attributes: {{user: {{regex: \"{big}\"}}}}}}\n    route: [{{destination: {{host: demo, subset: v1}}}}]\n",
            router(&[("v2", 100)]).replace("  - name: all\n", "  - name: all\n    match: {attributes: {never: {exact: x}}}\n")
        ),
    );
    for (e, before) in envoys.iter().zip(&rejected) {
        wait_stat(e, "RDS NACK", |e| rds_rejected(e, port) > *before);
    }
    ctl.wait_logged("(NACK)", Duration::from_secs(10));
    let log = ctl.text();
    let nack = log
        .lines()
        .find(|l| l.contains("(NACK)"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        nack.contains("program size") && nack.contains("xds=\"rds\""),
        "{nack}"
    );
    let t = Instant::now();
    let after = outcomes_after(&calls, t, 200);
    assert!(
        after.iter().any(|o| o == "v1") && after.iter().any(|o| o == "v2"),
        "split kept after the NACK: {after:?}"
    );
    // (A `v1` answer alone proves nothing here: the split sends v1 too. Wait for Envoy's RDS
    // update, then every answer must be v1.)
    let updates: Vec<u64> = envoys.iter().map(|e| rds_updates(e, port)).collect();
    let t = Instant::now();
    write_atomic(&config, "router.yaml", &router(&[("v1", 100)]));
    for (e, before) in envoys.iter().zip(&updates) {
        wait_stat(e, "RDS update after the NACK", |e| {
            rds_updates(e, port) > *before
        });
    }
    let recovered = t.elapsed();
    let seen_at = Instant::now() + Duration::from_millis(5);
    let after = outcomes_after(&calls, seen_at + Duration::from_millis(1), 50);
    assert!(after.iter().all(|o| o == "v1"), "after recovery: {after:?}");

    stop.store(true, Ordering::SeqCst);
    worker.join().expect("caller thread");
    let calls = calls.lock().expect("calls").clone();
    let failed: Vec<&Call> = calls
        .iter()
        .filter(|c| c.outcome.starts_with("error"))
        .collect();
    assert!(failed.is_empty(), "failed calls: {failed:?}");
    // One client connection in total, across both Envoys: no reconnect happened.
    let connections: u64 = envoys
        .iter()
        .map(|e| e.stat(&format!("listener.127.0.0.1_{port}.downstream_cx_total")))
        .sum();
    assert_eq!(connections, 1, "client connections accepted");

    let log = ctl.text();
    let acks: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("(ACK)") && l.contains("xds=\"rds\""))
        .filter_map(|l| {
            l.split("change_to_ack_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    eprintln!(
        "calls: {} on one connection, 0 failed; file write → new routing seen by the client: flip {:.1} ms, split {:.1} ms, after a NACK both Envoys updated within {:.1} ms; file change → Envoy RDS ACK (ms, per Envoy and change): {acks:?}",
        calls.len(),
        flip.as_secs_f64() * 1000.0,
        split.as_secs_f64() * 1000.0,
        recovered.as_secs_f64() * 1000.0
    );
    assert!(flip < Duration::from_secs(1) && split < Duration::from_secs(1));
    drop(envoys);
    drop(ctl);
}

/// Writes the MiniRPC demo directory for servers `v1`/`v2` and listener `port` into `config`.
fn demo_config(config: &Path, port: u16, v1: &Server, v2: &Server, split: &[(&str, u32)]) {
    std::fs::create_dir_all(config).expect("config dir");
    std::fs::copy(
        testdata().join("protocol.yaml"),
        config.join("protocol.yaml"),
    )
    .expect("copy");
    let service = std::fs::read_to_string(testdata().join("service.yaml"))
        .expect("service.yaml")
        .replace("29000", &port.to_string())
        .replace("29101", &v1.port.to_string())
        .replace("29102", &v2.port.to_string());
    std::fs::write(config.join("service.yaml"), service).expect("write");
    std::fs::write(config.join("router.yaml"), router(split)).expect("write");
}

#[test]
fn controller_restart_under_load_changes_nothing() {
    let wasm = build_wasm("minirpc");
    let (v1, v2) = (Server::start("v1"), Server::start("v2"));
    let (port, xds, admin) = (free_port(), free_port(), free_port());
    let dir = TempDir::new("restart");
    let config = dir.0.join("config");
    demo_config(&config, port, &v1, &v2, &[("v1", 100)]);
    let ctl = serve_dir(&config, xds, &wasm, dir.0.join("controller-1.log"));
    let out = controller(&[
        "bootstrap",
        "--xds",
        &format!("127.0.0.1:{xds}"),
        "--admin-port",
        &admin.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let envoy = Envoy::start("ctl-restart", &String::from_utf8_lossy(&out.stdout), admin);
    wait_stat(&envoy, "first RDS", |e| rds_updates(e, port) >= 1);

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let worker = caller(port, Arc::clone(&stop), Arc::clone(&calls));
    wait_for(&calls, Instant::now(), "v1");
    let reloads = |e: &Envoy| {
        (
            e.stat("listener_manager.listener_modified"),
            e.stat("cluster_manager.cluster_modified"),
            e.stat(&format!(
                "http.meltemi_minirpc_{port}.rds.meltemi_{port}.config_reload"
            )),
        )
    };
    let before = reloads(&envoy);

    // The controller goes away: Envoy keeps serving its configuration.
    drop(ctl);
    wait_stat(&envoy, "xDS disconnected", |e| {
        e.stat("control_plane.connected_state") == 0
    });
    let t = Instant::now();
    let during = outcomes_after(&calls, t, 100);
    assert!(
        during.iter().all(|o| o == "v1"),
        "while the controller is down: {during:?}"
    );

    // A new controller on the same directory serves the same content-hash versions: Envoy
    // reconnects and modifies nothing.
    let ctl = serve_dir(&config, xds, &wasm, dir.0.join("controller-2.log"));
    wait_stat(&envoy, "xDS reconnected", |e| {
        e.stat("control_plane.connected_state") == 1
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctl.text().matches("(ACK)").count() < 4 {
        assert!(
            Instant::now() < deadline,
            "Envoy did not ACK the new controller:\n{}",
            ctl.text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        reloads(&envoy),
        before,
        "(listener_modified, cluster_modified, rds config_reload)"
    );

    // And the new controller pushes changes as the old one did.
    let t = Instant::now();
    write_atomic(&config, "router.yaml", &router(&[("v2", 100)]));
    let flip = wait_for(&calls, t, "v2");
    stop.store(true, Ordering::SeqCst);
    worker.join().expect("caller thread");
    let calls = calls.lock().expect("calls").clone();
    let failed: Vec<&Call> = calls
        .iter()
        .filter(|c| c.outcome.starts_with("error"))
        .collect();
    assert!(failed.is_empty(), "failed calls: {failed:?}");
    assert_eq!(
        envoy.stat(&format!("listener.127.0.0.1_{port}.downstream_cx_total")),
        1
    );
    eprintln!(
        "restart: {} calls on one connection, 0 failed; flip after restart seen in {:.1} ms",
        calls.len(),
        flip.as_secs_f64() * 1000.0
    );
}

/// The route file for the soak: `default` for every call, `other` for method `other`.
fn router_with_other(other: &str, default: &str) -> String {
    format!(
        "apiVersion: metaprotocol.aeraki.io/v1alpha1\nkind: MetaRouter\nmetadata: {{name: demo, namespace: meta}}\nspec:\n  hosts: [demo]\n  routes:\n  - name: other\n    match: {{attributes: {{method: {{exact: other}}}}}}\n    route: [{{destination: {{host: demo, subset: {other}}}}}]\n  - name: all\n    route: [{{destination: {{host: demo, subset: {default}}}}}]\n"
    )
}

#[test]
fn fifty_route_changes_under_load_two_connections() {
    let wasm = build_wasm("minirpc");
    let (v1, v2) = (Server::start("v1"), Server::start("v2"));
    let (port, xds, admin) = (free_port(), free_port(), free_port());
    let dir = TempDir::new("soak");
    let config = dir.0.join("config");
    demo_config(&config, port, &v1, &v2, &[("v1", 100)]);
    let ctl = serve_dir(&config, xds, &wasm, dir.0.join("controller.log"));
    let out = controller(&[
        "bootstrap",
        "--xds",
        &format!("127.0.0.1:{xds}"),
        "--admin-port",
        &admin.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let envoy = Envoy::start("ctl-soak", &String::from_utf8_lossy(&out.stdout), admin);
    wait_stat(&envoy, "first RDS", |e| rds_updates(e, port) >= 1);

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            caller_with(
                port,
                &["echo", "other"],
                Arc::clone(&stop),
                Arc::clone(&calls),
            )
        })
        .collect();
    wait_for(&calls, Instant::now(), "v1");

    // (file, expected tags for `echo`, for `other`): every step differs from the one before.
    type Step = (String, &'static [&'static str], &'static [&'static str]);
    let steps: Vec<Step> = vec![
        (router(&[("v2", 100)]), &["v2"], &["v2"]),
        (
            router(&[("v1", 50), ("v2", 50)]),
            &["v1", "v2"],
            &["v1", "v2"],
        ),
        (router_with_other("v2", "v1"), &["v1"], &["v2"]),
        (router_with_other("v1", "v2"), &["v2"], &["v1"]),
        (router(&[("v1", 100)]), &["v1"], &["v1"]),
    ];
    let mut applied = Vec::new();
    for change in 0..50 {
        let (file, echo, other) = &steps[change % steps.len()];
        let before = rds_updates(&envoy, port);
        let t = Instant::now();
        write_atomic(&config, "router.yaml", file);
        wait_stat(&envoy, "RDS update", |e| rds_updates(e, port) > before);
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "change {change} took {took:?}"
        );
        applied.push(took.as_secs_f64() * 1000.0);
        // The worker thread takes the new configuration just after the main thread counts it.
        let after_update = Instant::now() + Duration::from_millis(5);
        let deadline = after_update + Duration::from_secs(20);
        let seen: Vec<Call> = loop {
            let got: Vec<Call> = calls
                .lock()
                .map(|c| {
                    c.iter()
                        .filter(|c| c.sent >= after_update)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if got.len() >= 60 {
                break got;
            }
            assert!(
                Instant::now() < deadline,
                "too few calls after change {change}"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        for c in &seen {
            let want = if c.method == "other" { other } else { echo };
            assert!(
                want.contains(&c.outcome.as_str()),
                "change {change}: {} answered {} (want {want:?})",
                c.method,
                c.outcome
            );
        }
        if echo.len() == 2 {
            for tag in ["v1", "v2"] {
                assert!(
                    seen.iter().any(|c| c.outcome == tag),
                    "change {change}: split never answered {tag}"
                );
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("caller thread");
    }
    let calls = calls.lock().expect("calls").clone();
    let failed: Vec<&Call> = calls
        .iter()
        .filter(|c| c.outcome.starts_with("error"))
        .collect();
    assert!(failed.is_empty(), "failed calls: {failed:?}");
    assert_eq!(
        envoy.stat(&format!("listener.127.0.0.1_{port}.downstream_cx_total")),
        2,
        "connections"
    );
    assert_eq!(
        envoy.stat("listener_manager.listener_modified"),
        0,
        "a route change touched a listener"
    );
    applied.sort_by(f64::total_cmp);
    eprintln!(
        "soak: 50 changes, {} calls on 2 connections, 0 failed, 0 reconnects; file write → Envoy RDS update: median {:.1} ms, max {:.1} ms",
        calls.len(),
        applied[applied.len() / 2],
        applied[applied.len() - 1]
    );
    drop(ctl);
}

#[test]
fn envoyfilter_patches_compose_into_a_sidecar_envoy_validates() {
    let wasm = build_wasm("minirpc");
    let dir = TempDir::new("envoyfilter");
    let composed = dir.0.join("composed.json");
    let sidecar = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/istio-sidecar.yaml");
    let out = controller(&[
        "envoyfilter",
        "--dir",
        testdata().to_str().unwrap_or_default(),
        "--xds",
        "meltemi.istio-system.svc:18000",
        "--module",
        &format!("minirpc={}", wasm.display()),
        "--compose",
        sidecar.to_str().unwrap_or_default(),
        "-o",
        composed.to_str().unwrap_or_default(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&composed).expect("composed");
    for want in [
        "meltemi_front",
        "meltemi|inbound|29000",
        "meltemi_back|29000|v2|demo",
        "meltemi_xds",
    ] {
        assert!(text.contains(want), "missing {want}");
    }
    let v = Command::new(envoy_binary())
        .args(["--mode", "validate", "-c"])
        .arg(&composed)
        .output()
        .expect("run envoy");
    let log = String::from_utf8_lossy(&v.stdout).to_string() + &String::from_utf8_lossy(&v.stderr);
    assert!(
        v.status.success() && log.contains("OK"),
        "composed sidecar refused:\n{log}"
    );

    // The EnvoyFilters themselves: one per context and port, plus the shared bridge.
    let out = controller(&[
        "envoyfilter",
        "--dir",
        testdata().to_str().unwrap_or_default(),
        "--xds",
        "meltemi.istio-system.svc:18000",
        "--module",
        "minirpc=https://modules.example/minirpc.wasm,sha256=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ]);
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&yaml).expect("EnvoyFilter YAML");
    let names: Vec<&str> = docs
        .iter()
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "meltemi-outbound-29000",
            "meltemi-inbound-29000",
            "meltemi-gateway-29000",
            "meltemi-bridge"
        ]
    );
    assert!(docs
        .iter()
        .all(|d| d["kind"] == "EnvoyFilter" && d["metadata"]["namespace"] == "istio-system"));
    assert!(
        yaml.contains("meltemi_module|modules.example|443"),
        "{yaml}"
    );
}

#[test]
fn istio_shaped_sidecar_gets_live_routes_over_rds() {
    let wasm = build_wasm("minirpc");
    let (v1, v2) = (Server::start("v1"), Server::start("v2"));
    let (port, inbound, xds, admin) = (free_port(), free_port(), free_port(), free_port());
    let dir = TempDir::new("istio");
    let config = dir.0.join("config");
    demo_config(&config, port, &v1, &v2, &[("v1", 100)]);
    // A mesh-wide Telemetry with a file access log: the bridge's HCM replaced the tcp_proxy
    // istiod applies Telemetry to, so the EnvoyFilter's HCM must carry it.
    let access_log = dir.0.join("access.log");
    std::fs::write(
        config.join("telemetry.yaml"),
        format!(
            "apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    extensionProviders:
    - name: calls
      envoyFileAccessLog: {{path: {}}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  accessLogging: [{{providers: [{{name: calls}}]}}]
",
            access_log.display()
        ),
    )
    .expect("write telemetry");

    // istiod's part, played by the stand-in sidecar bootstrap (gateway listener left out).
    let raw = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/istio-sidecar.yaml"),
    )
    .expect("istio-sidecar.yaml")
    .replace("29000", &port.to_string())
    .replace("29101", &v1.port.to_string())
    .replace("29102", &v2.port.to_string())
    .replace("15006", &inbound.to_string())
    .replace("15000", &admin.to_string());
    let mut sidecar: serde_json::Value = serde_saphyr::from_str(&raw).expect("sidecar YAML");
    if let Some(ls) = sidecar["static_resources"]["listeners"].as_array_mut() {
        ls.retain(|l| !l["name"].as_str().unwrap_or("").starts_with("gateway_"));
    }
    let sidecar_file = dir.0.join("sidecar.json");
    std::fs::write(&sidecar_file, sidecar.to_string()).expect("write");

    let log = dir.0.join("controller.log");
    let mut command = Controller::command(&[]);
    command
        .args(["serve", "--istio", "--dir"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{xds}"), "--module"])
        .arg(format!("minirpc={}", wasm.display()));
    let _ctl = Controller::start(command, log, Duration::from_secs(20));
    let out = controller(&[
        "envoyfilter",
        "--dir",
        config.to_str().unwrap_or_default(),
        "--xds",
        &format!("127.0.0.1:{xds}"),
        "--context",
        "outbound,inbound",
        "--inbound-port",
        &inbound.to_string(),
        "--module",
        &format!("minirpc={}", wasm.display()),
        "--compose",
        sidecar_file.to_str().unwrap_or_default(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let envoy = Envoy::start("ctl-istio", &String::from_utf8_lossy(&out.stdout), admin);
    wait_stat(&envoy, "first RDS", |e| rds_updates(e, port) >= 1);

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let worker = caller(port, Arc::clone(&stop), Arc::clone(&calls));
    wait_for(&calls, Instant::now(), "v1");
    let t = Instant::now();
    write_atomic(&config, "router.yaml", &router(&[("v2", 100)]));
    let flip = wait_for(&calls, t, "v2");
    let seen_at = Instant::now();
    let after = outcomes_after(&calls, seen_at + Duration::from_millis(1), 50);
    assert!(after.iter().all(|o| o == "v2"), "after the flip: {after:?}");
    stop.store(true, Ordering::SeqCst);
    worker.join().expect("caller thread");
    let calls = calls.lock().expect("calls").clone();
    assert!(
        calls.iter().all(|c| !c.outcome.starts_with("error")),
        "failed calls"
    );
    // The bridge forwarded into istiod's own subset cluster.
    assert!(
        envoy.stat(&format!(
            "cluster.outbound|{port}|v2|demo.upstream_cx_total"
        )) >= 1
    );
    // One access log line per call (Envoy flushes the file on its own schedule), each naming
    // the call's method and the istiod subset cluster it went to.
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let text = std::fs::read_to_string(&access_log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if lines.len() >= calls.len() || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lines.len(), calls.len(), "access log lines vs calls");
    for l in &lines {
        assert_eq!(
            (l["protocol"].as_str(), l["method"].as_str()),
            (Some("minirpc"), Some("echo")),
            "{l}"
        );
        let cluster = l["upstream_cluster"].as_str().unwrap_or("");
        assert!(cluster.starts_with(&format!("meltemi|{port}|v")), "{l}");
    }
    eprintln!(
        "istio-shaped sidecar: {} calls, flip seen in {:.1} ms, {} access log lines",
        calls.len(),
        flip.as_secs_f64() * 1000.0,
        lines.len()
    );
}

/// Runs `openssl` with `args` in `dir`; panics with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throw-away CA with a server certificate for 127.0.0.1 and a client certificate.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=meltemi-test-ca",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    std::fs::write(
        dir.join("client.ext"),
        "subjectAltName=DNS:envoy.test\nextendedKeyUsage=clientAuth\n",
    )
    .expect("ext");
    for who in ["server", "client"] {
        let (key, csr, pem, ext) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
        );
        openssl(
            dir,
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN={who}"),
                ],
            ]
            .concat(),
        );
        openssl(
            dir,
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
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                &ext,
            ],
        );
    }
}

#[test]
fn xds_over_mutual_tls() {
    let wasm = build_wasm("minirpc");
    let (v1, v2) = (Server::start("v1"), Server::start("v2"));
    let (port, xds, admin) = (free_port(), free_port(), free_port());
    let dir = TempDir::new("tls");
    certificates(&dir.0);
    let config = dir.0.join("config");
    demo_config(&config, port, &v1, &v2, &[("v2", 100)]);
    let p = |f: &str| dir.0.join(f).display().to_string();
    let log = dir.0.join("controller.log");
    let mut command = Controller::command(&[]);
    command
        .args(["serve", "--dir"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{xds}")])
        .args([
            "--tls-cert",
            &p("server.pem"),
            "--tls-key",
            &p("server.key"),
            "--tls-client-ca",
            &p("ca.pem"),
        ])
        .arg("--module")
        .arg(format!("minirpc={}", wasm.display()));
    let ctl = Controller::start(command, log, Duration::from_secs(20));
    assert!(ctl.logged("tls=true"), "{}", ctl.text());
    let out = controller(&[
        "bootstrap",
        "--xds",
        &format!("127.0.0.1:{xds}"),
        "--admin-port",
        &admin.to_string(),
        "--xds-ca",
        &p("ca.pem"),
        "--xds-client-cert",
        &p("client.pem"),
        "--xds-client-key",
        &p("client.key"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let envoy = Envoy::start("ctl-tls", &String::from_utf8_lossy(&out.stdout), admin);
    wait_stat(&envoy, "first RDS", |e| rds_updates(e, port) >= 1);
    assert!(
        envoy.stat("cluster.meltemi_xds.ssl.handshake") >= 1,
        "xDS not over TLS"
    );
    let mut client = Client::connect(port);
    let f = client.call(&minirpc_peer::request(1, "echo", &[], b"x"));
    assert_eq!(f.payload, b"v2:x");
    drop(ctl);
}

/// The Thrift demo: `echo` with servers v1/v2, routed by method and by a THeader info header,
/// with request mutation; `default` names the subset everything else goes to.
fn thrift_config(dir: &Path, port: u16, v1: u16, v2: u16, default: &str) {
    std::fs::create_dir_all(dir).expect("config dir");
    std::fs::write(
        dir.join("service.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: echo, namespace: meta}}
spec:
  hosts: [echo]
  ports: [{{number: {port}, name: tcp-metaprotocol-thrift-echo, protocol: TCP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp-metaprotocol-thrift-echo: {v1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{tcp-metaprotocol-thrift-echo: {v2}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: echo, namespace: meta}}
spec:
  host: echo
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"
        ),
    )
    .expect("write");
    write_atomic(
        dir,
        "router.yaml",
        &format!(
            "apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: echo, namespace: meta}}
spec:
  hosts: [echo]
  routes:
  - name: canary-header
    match: {{attributes: {{x-version: {{exact: v2}}}}}}
    route: [{{destination: {{host: echo, subset: v2}}}}]
  - name: inspect
    match: {{attributes: {{method: {{exact: inspect}}}}}}
    route: [{{destination: {{host: echo, subset: v2}}}}]
    requestMutation: [{{key: env, value: canary}}]
  - name: default
    route: [{{destination: {{host: echo, subset: {default}}}}}]
"
        ),
    );
}

#[test]
fn thrift_routes_from_the_controller_with_apache_thrift_peers() {
    use meltemi_e2e::thrift_peer::{self, Impl};
    if !thrift_peer::peers_available() {
        return;
    }
    let wasm = build_wasm("meltemi-thrift");
    let v1 = thrift_peer::Server::start(Impl::Apache, "header", "compact", "v1", &[]);
    let v2 = thrift_peer::Server::start(Impl::Apache, "header", "compact", "v2", &[]);
    let (port, xds, admin) = (free_port(), free_port(), free_port());
    let dir = TempDir::new("thrift");
    let config = dir.0.join("config");
    thrift_config(&config, port, v1.port, v2.port, "v1");
    let log = dir.0.join("controller.log");
    let mut command = Controller::command(&[]);
    command
        .args(["serve", "--dir"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{xds}"), "--module"])
        .arg(format!("thrift={}", wasm.display()))
        // The codec's own configuration, as an operator fixes the transport.
        .args([
            "--filter-config",
            r#"thrift={"codec": {"transport": "header"}, "limits": {"max_frame_bytes": 1048576}}"#,
        ]);
    let ctl = Controller::start(command, log, Duration::from_secs(20));
    let out = controller(&[
        "bootstrap",
        "--xds",
        &format!("127.0.0.1:{xds}"),
        "--admin-port",
        &admin.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let envoy = Envoy::start("ctl-thrift", &String::from_utf8_lossy(&out.stdout), admin);
    let rds = |e: &Envoy| {
        e.stat(&format!(
            "http.meltemi_thrift_{port}.rds.meltemi_{port}.update_success"
        ))
    };
    wait_stat(&envoy, "first RDS", |e| rds(e) >= 1);

    let run = || {
        let out = thrift_peer::Client::new(Impl::Apache, "header", "compact", port, "route")
            .arg("--msg")
            .arg("r")
            .run();
        assert!(
            out.success(),
            "client failed:\n{}\n{}\nenvoy:\n{}",
            out.stdout,
            out.stderr,
            envoy.log()
        );
        out.lines()
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
    };
    let lines = run();
    for want in [
        "echo v1:r1",
        "inspect tag=v2 h:env=canary",
        "echo X-Version=v2 v2:r2",
        "add 42",
        "echo v1:r3",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "missing {want:?} in {lines:?}"
        );
    }
    // The default route flips to v2: the next client sees it, header and method routes stay.
    let before = rds(&envoy);
    thrift_config(&config, port, v1.port, v2.port, "v2");
    wait_stat(&envoy, "RDS update", |e| rds(e) > before);
    let lines = run();
    for want in [
        "echo v2:r1",
        "inspect tag=v2 h:env=canary",
        "echo X-Version=v2 v2:r2",
        "echo v2:r3",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "missing {want:?} in {lines:?}"
        );
    }
    drop(ctl);
}

/// Dubbo interface-level services as Aeraki users declare them: one lower-cased ServiceEntry
/// host per Java interface, both on one port; subsets v1/v2; MetaRouters per interface.
fn dubbo_config(dir: &Path, port: u16, v1: u16, v2: u16) {
    use meltemi_e2e::dubbo_peer::{ECHO, OTHER};
    std::fs::create_dir_all(dir).expect("config dir");
    let mut text = String::new();
    for iface in [ECHO, OTHER] {
        let host = iface.to_ascii_lowercase();
        let name = iface
            .rsplit('.')
            .next()
            .unwrap_or(iface)
            .to_ascii_lowercase();
        text.push_str(&format!(
            "---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: {name}, namespace: meta-dubbo, annotations: {{interface: {iface}}}}}
spec:
  hosts: [{host}]
  ports: [{{number: {port}, name: tcp-metaprotocol-dubbo, protocol: TCP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp-metaprotocol-dubbo: {v1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{tcp-metaprotocol-dubbo: {v2}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: {name}, namespace: meta-dubbo}}
spec:
  host: {host}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"
        ));
    }
    let echo = ECHO.to_ascii_lowercase();
    let other = OTHER.to_ascii_lowercase();
    text.push_str(&format!(
        "---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: echoservice, namespace: meta-dubbo}}
spec:
  hosts: [{echo}]
  routes:
  - name: target-v2
    match: {{attributes: {{x-target: {{exact: v2}}}}}}
    route: [{{destination: {{host: {echo}, subset: v2}}}}]
  - name: greet
    match: {{attributes: {{method: {{exact: greet}}}}}}
    route: [{{destination: {{host: {echo}, subset: v2}}}}]
  - name: attachment
    match: {{attributes: {{method: {{exact: attachment}}}}}}
    route: [{{destination: {{host: {echo}, subset: v1}}}}]
    requestMutation: [{{key: x-mutated, value: by-meltemi}}]
  - name: default
    route: [{{destination: {{host: {echo}, subset: v1}}}}]
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: otherservice, namespace: meta-dubbo}}
spec:
  hosts: [{other}]
  routes:
  - route: [{{destination: {{host: {other}, subset: v2}}}}]
"
    ));
    std::fs::write(dir.join("dubbo.yaml"), text).expect("write");
}

#[test]
fn dubbo_interface_level_from_the_controller_with_real_providers() {
    use meltemi_e2e::dubbo_peer::{
        self, run_consumer, Call, ConsumerKind, Outcome, Provider, ProviderKind, ECHO, NO_ROUTE,
        OTHER,
    };
    if !dubbo_peer::peers_available() {
        return;
    }
    let wasm = build_wasm("meltemi-dubbo");
    let v1 = Provider::start(ProviderKind::Java, "v1");
    let v2 = Provider::start(ProviderKind::Sofa, "v2");
    let (port, xds, admin) = (free_port(), free_port(), free_port());
    let dir = TempDir::new("dubbo");
    let config = dir.0.join("config");
    dubbo_config(&config, port, v1.port, v2.port);
    let log = dir.0.join("controller.log");
    let mut command = Controller::command(&[]);
    command
        .args(["serve", "--dir"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{xds}"), "--module"])
        .arg(format!("dubbo={}", wasm.display()));
    let ctl = Controller::start(command, log, Duration::from_secs(20));
    let out = controller(&[
        "bootstrap",
        "--xds",
        &format!("127.0.0.1:{xds}"),
        "--admin-port",
        &admin.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let envoy = Envoy::start("ctl-dubbo", &String::from_utf8_lossy(&out.stdout), admin);
    wait_stat(&envoy, "first RDS", |e| {
        e.stat(&format!(
            "http.meltemi_dubbo_{port}.rds.meltemi_{port}.update_success"
        )) >= 1
    });

    let steps: Vec<(Call, &str)> = vec![
        (Call::new(ECHO, "echo", "hello"), "v1:hello"),
        (
            Call::new(ECHO, "echo", "hello").att("x-target", "v2"),
            "v2:hello",
        ),
        (Call::new(ECHO, "greet", "pojo"), "ann@v2"),
        (Call::new(OTHER, "echo", "iface"), "v2:iface"),
        (Call::new(NO_ROUTE, "echo", "lost"), "status=60"),
        (
            Call::new(ECHO, "attachment", "x-mutated"),
            "v1:x-mutated=by-meltemi",
        ),
        (Call::new(ECHO, "echo", "after"), "v1:after"),
    ];
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
        let text = match got {
            Outcome::Ok(v) | Outcome::Err(v) => v.clone(),
            other => format!("{other:?}"),
        };
        assert!(
            text.contains(want),
            "{call:?}: want {want:?}, got {got:?}\n{}",
            run.transcript()
        );
    }
    drop(ctl);
}
