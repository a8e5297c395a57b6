//! `serve --kubernetes` on the real Envoy 1.40, reading its resources from a **fake**
//! Kubernetes API server: no kube-apiserver can be installed on this machine, so the API
//! server is this file's test double, a small HTTP/1.1 server that speaks the list and watch
//! JSON protocol kube-rs uses (`GET …/metarouters?limit=500` → a `…List` with a
//! `resourceVersion`; `GET …?watch=true&resourceVersion=N` → a chunked stream of
//! `{"type": "ADDED|MODIFIED|DELETED", "object": …}` lines). Everything else is real: the
//! controller binary with kube-rs's client and watcher, ADS, Envoy, the MiniRPC servers and a
//! client on one long-lived connection.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meltemi_e2e::envoy::Envoy;
use meltemi_e2e::minirpc_peer::{self, Client, Server};
use meltemi_e2e::workspace::{build_wasm, free_port, listener};
use serde_json::{json, Value};

mod common;

use common::Controller;

/// How long the controller gets to log what a test waits for.
const WAIT: Duration = Duration::from_secs(30);

/// One collection (`metarouters`, `services`, …) of the fake API server.
#[derive(Default)]
struct Collection {
    /// `namespace/name` → object.
    objects: BTreeMap<String, Value>,
    /// Open watches: each gets every event as one JSON line.
    watches: Vec<mpsc::Sender<String>>,
}

#[derive(Default)]
struct State {
    resource_version: u64,
    collections: BTreeMap<String, Collection>,
    /// Requests seen (`GET path?query`), for the test to check what was asked.
    requests: Vec<String>,
    /// Collections answered `404 NotFound`, as for a CRD that is not installed.
    not_served: BTreeSet<String>,
}

/// The fake API server: one thread per connection, bound to 127.0.0.1.
struct FakeApi {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

fn plural(kind: &str) -> &'static str {
    match kind {
        "ApplicationProtocol" => "applicationprotocols",
        "MetaRouter" => "metarouters",
        "ServiceEntry" => "serviceentries",
        "DestinationRule" => "destinationrules",
        "Service" => "services",
        "MetaAuthorizationPolicy" => "metaauthorizationpolicies",
        "Telemetry" => "telemetries",
        "ConfigMap" => "configmaps",
        "Pod" => "pods",
        "WorkloadEntry" => "workloadentries",
        other => panic!("no collection for {other}"),
    }
}

impl FakeApi {
    fn start() -> FakeApi {
        let l: TcpListener = listener();
        let port = l.local_addr().expect("addr").port();
        let state: Arc<Mutex<State>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if sp.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (st, sp) = (Arc::clone(&st), Arc::clone(&sp));
                std::thread::spawn(move || serve_connection(conn, &st, &sp));
            }
        });
        FakeApi { port, state, stop }
    }

    /// Adds or replaces an object and tells the open watches of its collection.
    fn apply(&self, mut object: Value) {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let key = format!(
            "{}/{}",
            object["metadata"]["namespace"].as_str().unwrap_or(""),
            object["metadata"]["name"].as_str().unwrap_or("")
        );
        let mut s = self.state.lock().expect("state");
        s.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
        let c = s.collections.entry(plural(&kind).to_owned()).or_default();
        let kind = if c.objects.insert(key, object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let line = json!({"type": kind, "object": object}).to_string();
        c.watches.retain(|w| w.send(line.clone()).is_ok());
    }

    fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let mut s = self.state.lock().expect("state");
        s.resource_version += 1;
        let rv = s.resource_version.to_string();
        let c = s.collections.entry(plural(kind).to_owned()).or_default();
        if let Some(mut object) = c.objects.remove(&format!("{namespace}/{name}")) {
            object["metadata"]["resourceVersion"] = json!(rv);
            let line = json!({"type": "DELETED", "object": object}).to_string();
            c.watches.retain(|w| w.send(line.clone()).is_ok());
        }
    }

    fn requests(&self) -> Vec<String> {
        self.state.lock().expect("state").requests.clone()
    }

    /// Answers `404 NotFound` for `plural` (its CRD is not installed), or serves it again.
    fn set_served(&self, plural: &str, served: bool) {
        let mut s = self.state.lock().expect("state");
        if served {
            s.not_served.remove(plural);
        } else {
            s.not_served.insert(plural.to_owned());
        }
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the accept loop
    }
}

/// `/apis/G/V[/namespaces/NS]/PLURAL` or `/api/v1[/namespaces/NS]/PLURAL` → (namespace, plural).
fn route(path: &str) -> Option<(Option<String>, String)> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest = match *parts.first()? {
        "apis" => parts.get(3..)?,
        "api" => parts.get(2..)?,
        _ => return None,
    };
    match rest {
        [plural] => Some((None, (*plural).to_owned())),
        ["namespaces", ns, plural] => Some((Some((*ns).to_owned()), (*plural).to_owned())),
        _ => None,
    }
}

fn serve_connection(conn: TcpStream, state: &Mutex<State>, stop: &AtomicBool) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut out = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        // Headers (a GET has no body).
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
        }
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let watch = query.split('&').any(|kv| kv == "watch=true");
        let not_found = |out: &mut TcpStream| {
            let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404})
            .to_string();
            write!(out, "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        };
        let Some((namespace, plural)) = route(path) else {
            let _ = not_found(&mut out);
            continue;
        };
        {
            let mut s = state.lock().expect("state");
            if s.not_served.contains(&plural) {
                s.requests.push(format!("404 {target}"));
                drop(s);
                if not_found(&mut out).is_err() {
                    return;
                }
                continue;
            }
        }
        let in_scope = |o: &Value| {
            namespace
                .as_deref()
                .is_none_or(|ns| o["metadata"]["namespace"] == ns)
        };
        if !watch {
            let body = {
                let mut s = state.lock().expect("state");
                s.requests.push(target.clone());
                let rv = s.resource_version.to_string();
                let items: Vec<Value> = s
                    .collections
                    .get(&plural)
                    .map(|c| {
                        c.objects
                            .values()
                            .filter(|o| in_scope(o))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items})
                    .to_string()
            };
            if write!(out, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).is_err() {
                return;
            }
            continue;
        }
        let (tx, rx) = mpsc::channel::<String>();
        {
            let mut s = state.lock().expect("state");
            s.requests.push(target.clone());
            s.collections.entry(plural).or_default().watches.push(tx);
        }
        if write!(out, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n").is_err() {
            return;
        }
        let _ = out.flush();
        while !stop.load(Ordering::SeqCst) {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let o: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                    if !in_scope(&o["object"]) {
                        continue;
                    }
                    let chunk = format!("{line}\n");
                    if write!(out, "{:x}\r\n{chunk}\r\n", chunk.len()).is_err() {
                        return;
                    }
                    let _ = out.flush();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        return;
    }
}

fn router(split: &[(&str, u32)], name: &str, namespace: &str, host: &str) -> Value {
    let route: Vec<Value> = split
        .iter()
        .map(|(subset, weight)| json!({"destination": {"host": host, "subset": subset}, "weight": weight}))
        .collect();
    json!({
        "apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "MetaRouter",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")},
        "spec": {"hosts": [host], "routes": [{"name": "all", "route": route}]}
    })
}

/// The service every test routes.
const HOST: &str = "demo.meta.svc.cluster.local";

/// What every test starts from: the MiniRPC module, servers v1 and v2, free ports, and the
/// fake API server holding the protocol, the service and a MetaRouter sending all to v1.
struct Demo {
    wasm: PathBuf,
    /// The servers, kept running for the test's length.
    _servers: [Server; 2],
    port: u16,
    xds: u16,
    admin: u16,
    api: FakeApi,
}

impl Demo {
    fn start() -> Demo {
        let wasm = build_wasm("minirpc");
        let (v1, v2) = (Server::start("v1"), Server::start("v2"));
        let (port, xds, admin) = (free_port(), free_port(), free_port());
        let api = FakeApi::start();
        apply_service(&api, HOST, port, &v1, &v2);
        api.apply(router(&[("v1", 100)], "demo", "meta", HOST));
        Demo {
            wasm,
            _servers: [v1, v2],
            port,
            xds,
            admin,
            api,
        }
    }
}

/// The protocol and service: `host` on `port`, subsets v1 and v2.
fn apply_service(api: &FakeApi, host: &str, port: u16, v1: &Server, v2: &Server) {
    api.apply(json!({
        "apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "ApplicationProtocol",
        "metadata": {"name": "minirpc"}, "spec": {"protocol": "minirpc", "codec": "meltemi.minirpc"}
    }));
    // A Kubernetes Service carries the port name; its endpoints come from a ServiceEntry
    // for the same host (the watched kinds include no Endpoints).
    api.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "meta"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}
    }));
    api.apply(json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "ServiceEntry",
        "metadata": {"name": "demo", "namespace": "meta"},
        "spec": {"hosts": [host], "ports": [{"number": port, "name": "tcp-metaprotocol-minirpc-demo", "protocol": "TCP"}],
                 "endpoints": [
                     {"address": "127.0.0.1", "ports": {"tcp-metaprotocol-minirpc-demo": v1.port}, "labels": {"version": "v1"}},
                     {"address": "127.0.0.1", "ports": {"tcp-metaprotocol-minirpc-demo": v2.port}, "labels": {"version": "v2"}}]}
    }));
    api.apply(json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
        "metadata": {"name": "demo", "namespace": "meta"},
        "spec": {"host": host, "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}
    }));
}

/// `serve --kubernetes -n meta` against the fake API server; its kubeconfig and log live in a
/// directory of its own, removed after a passing test (the controller is stopped first).
struct KubeController {
    controller: Controller,
    dir: PathBuf,
}

impl KubeController {
    /// Starts it against `api` and waits until it serves xDS (its first configuration built).
    fn start(name: &str, api: &FakeApi, wasm: &Path, xds: u16) -> KubeController {
        let dir =
            std::env::temp_dir().join(format!("meltemi-ctl-kube-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let mut command = Controller::command(&["serve", "--kubernetes", "-n", "meta"]);
        command
            .args(["--listen", &format!("127.0.0.1:{xds}"), "--module"])
            .arg(format!("minirpc={}", wasm.display()))
            .env("KUBECONFIG", kubeconfig(&dir, api.port))
            .env("HOME", &dir);
        let controller = Controller::start(command, dir.join("controller.log"), WAIT);
        KubeController { controller, dir }
    }
}

impl std::ops::Deref for KubeController {
    type Target = Controller;
    fn deref(&self) -> &Controller {
        &self.controller
    }
}

impl Drop for KubeController {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn kubeconfig(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: 'http://127.0.0.1:{port}'}}\nusers:\n- name: test\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: test, namespace: meta}}\ncurrent-context: fake\n"
        ),
    )
    .expect("kubeconfig");
    path
}

/// Envoy bootstrapped from the controller at `xds`, once it holds the routes of `port`;
/// with the name of the RDS update counter.
fn envoy_with_routes(name: &str, xds: u16, admin: u16, port: u16) -> (Envoy, String) {
    let envoy = Envoy::start(name, &common::bootstrap(xds, admin), admin);
    let rds = format!("http.meltemi_minirpc_{port}.rds.meltemi_{port}.update_success");
    let deadline = Instant::now() + Duration::from_secs(30);
    while envoy.stat(&rds) < 1 {
        assert!(Instant::now() < deadline, "no routes:\n{}", envoy.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    (envoy, rds)
}

type Calls = Arc<Mutex<Vec<(Instant, String)>>>;

fn wait_tag(calls: &Calls, since: Instant, tag: &str) -> Duration {
    let deadline = since + Duration::from_secs(10);
    loop {
        if let Some((sent, _)) = calls
            .lock()
            .expect("calls")
            .iter()
            .find(|(sent, o)| *sent >= since && o == tag)
        {
            return *sent - since;
        }
        assert!(
            Instant::now() < deadline,
            "no `{tag}` answer within 10 s: last {:?}",
            calls.lock().expect("calls").last()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn kubernetes_source_drives_envoy_through_a_fake_api_server() {
    let demo = Demo::start();
    let (api, wasm, host) = (&demo.api, &demo.wasm, HOST);
    let (port, xds, admin) = (demo.port, demo.xds, demo.admin);
    // Outside the watched namespace: invalid (unknown host), and never seen.
    api.apply(router(
        &[("v1", 100)],
        "stray",
        "other",
        "nowhere.other.svc",
    ));

    let ctl = KubeController::start("route", api, wasm, xds);
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r
                .starts_with("/apis/metaprotocol.aeraki.io/v1alpha1/namespaces/meta/metarouters")),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("/apis/metaprotocol.aeraki.io/v1alpha1/applicationprotocols")),
        "ApplicationProtocols are cluster-wide: {requests:?}"
    );
    assert!(
        !requests.iter().any(|r| r.contains("/namespaces/other/")),
        "{requests:?}"
    );
    let (envoy, rds) = envoy_with_routes("ctl-kube", xds, admin, port);

    let stop = Arc::new(AtomicBool::new(false));
    let calls: Calls = Arc::default();
    let worker = {
        let (stop, calls) = (Arc::clone(&stop), Arc::clone(&calls));
        std::thread::spawn(move || {
            let mut client = Client::connect(port);
            let mut id = 0u64;
            while !stop.load(Ordering::SeqCst) {
                id += 1;
                let sent = Instant::now();
                client.send(&minirpc_peer::request(id, "echo", &[], b"x"));
                let outcome = match client.recv() {
                    Ok(f) if f.id == id => String::from_utf8_lossy(&f.payload)
                        .trim_end_matches(":x")
                        .to_owned(),
                    Ok(f) => format!("error: kind {} id {}", f.kind, f.id),
                    Err(e) => format!("error: {e}"),
                };
                let failed = outcome.starts_with("error");
                calls.lock().expect("calls").push((sent, outcome));
                if failed {
                    return;
                }
            }
        })
    };
    wait_tag(&calls, Instant::now(), "v1");

    // A MODIFIED MetaRouter: the client's connection sees v2.
    let t = Instant::now();
    api.apply(router(&[("v2", 100)], "demo", "meta", host));
    let flip = wait_tag(&calls, t, "v2");
    eprintln!(
        "watch event -> new route seen by the client: {:.1} ms",
        flip.as_secs_f64() * 1000.0
    );

    // An invalid MetaRouter: rejected naming namespace/name and field; routing unchanged.
    let updates = envoy.stat(&rds);
    api.apply(router(&[("v1", 30), ("v2", 30)], "demo", "meta", host));
    ctl.wait_logged(
        "resource=MetaRouter meta/demo field=spec.routes[0].route problem=weights sum to 60",
        WAIT,
    );
    assert!(ctl.text().contains("file=kubernetes"), "{}", ctl.text());
    let t = Instant::now();
    let after = loop {
        let c: Vec<String> = calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|(s, _)| *s >= t)
            .map(|(_, o)| o.clone())
            .collect();
        if c.len() >= 50 {
            break c;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(after.iter().all(|o| o == "v2"), "{after:?}");
    assert_eq!(envoy.stat(&rds), updates, "a rejected change reached Envoy");

    // DELETED: no MetaRouter, the default route sends calls to the whole service's cluster
    // (which server answers depends on the bridge's pooled connection: the wasm back balances
    // per connection, so the cluster's own counter is what shows the new route).
    let default = format!("cluster.outbound|{port}||{host}.upstream_rq_total");
    assert_eq!(envoy.stat(&default), 0);
    api.delete("MetaRouter", "meta", "demo");
    let deadline = Instant::now() + Duration::from_secs(10);
    while envoy.stat(&default) == 0 {
        assert!(
            Instant::now() < deadline,
            "the default route was never used"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    stop.store(true, Ordering::SeqCst);
    worker.join().expect("caller");
    let failed: Vec<String> = calls
        .lock()
        .expect("calls")
        .iter()
        .filter(|(_, o)| o.starts_with("error"))
        .map(|(_, o)| o.clone())
        .collect();
    assert!(failed.is_empty(), "failed calls: {failed:?}");
    assert_eq!(
        envoy.stat(&format!("listener.127.0.0.1_{port}.downstream_cx_total")),
        1,
        "one client connection throughout"
    );
    drop(envoy);
    drop(ctl);
}

/// A pod of the Service `demo` (`app: demo`) at 127.0.0.1 whose container port `rpc` is
/// `rpc`, ready or not.
fn pod(name: &str, version: &str, rpc: u16, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "meta", "labels": {"app": "demo", "version": version}},
        "spec": {"containers": [{"name": "server", "ports": [{"name": "rpc", "containerPort": rpc}]}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1",
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

/// One `echo` call: the answering server's tag, or `error` for a MiniRPC error reply.
fn echo_once(client: &mut Client, id: &mut u64) -> String {
    *id += 1;
    let f = client.call(&minirpc_peer::request(*id, "echo", &[], b"x"));
    assert_eq!(f.id, *id, "answer for another call");
    let got = if f.kind == minirpc::kind::RESPONSE {
        String::from_utf8_lossy(&f.payload)
            .trim_end_matches(":x")
            .to_owned()
    } else {
        "error".to_owned()
    };
    assert_ne!(got, "stray", "a pod the selector does not pick got a call");
    got
}

/// Calls `echo` on `client` until the answer is `want` (`v1`, `v2`, or `error` for a
/// MiniRPC error reply); panics after 10 s with the last answer, or at once when the pod
/// the selector does not pick (`stray`) answers. Returns the calls made.
fn until_answer(client: &mut Client, id: &mut u64, want: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut calls = 0;
    loop {
        calls += 1;
        let got = echo_once(client, id);
        if got == want {
            return calls;
        }
        assert!(Instant::now() < deadline, "never `{want}`: last `{got}`");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A Kubernetes Service with no ServiceEntry: its endpoints are the ready pods its selector
/// picks, at the container port its named `targetPort` gives, and DestinationRule subsets
/// select on pod labels, as in Istio. A pod becoming ready, and a pod deleted (its process
/// gone), move the endpoints on the same client connection; a pod that is not ready, or that the selector
/// does not pick, never gets a call.
#[test]
fn a_services_endpoints_are_the_ready_pods_it_selects() {
    let wasm = build_wasm("minirpc");
    let (v1, v2, stray) = (
        Server::start("v1"),
        Server::start("v2"),
        Server::start("stray"),
    );
    let (port, xds, admin) = (free_port(), free_port(), free_port());
    let api = FakeApi::start();
    api.apply(json!({
        "apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "ApplicationProtocol",
        "metadata": {"name": "minirpc"}, "spec": {"protocol": "minirpc", "codec": "meltemi.minirpc"}
    }));
    api.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "demo", "namespace": "meta"},
        "spec": {"selector": {"app": "demo"},
                 "ports": [{"name": "tcp-metaprotocol-minirpc-demo", "port": port, "targetPort": "rpc"}]}
    }));
    api.apply(json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
        "metadata": {"name": "demo", "namespace": "meta"},
        "spec": {"host": HOST, "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}
    }));
    api.apply(pod("demo-v1", "v1", v1.port, true));
    api.apply(pod("demo-v2", "v2", v2.port, false));
    // Labelled v2 but not the Service's: never selected.
    let mut other = pod("web-v2", "v2", stray.port, true);
    other["metadata"]["labels"]["app"] = json!("web");
    api.apply(other);
    api.apply(router(&[("v1", 100)], "demo", "meta", HOST));

    let ctl = KubeController::start("pods", &api, &wasm, xds);
    let (envoy, _) = envoy_with_routes("ctl-kube-pods", xds, admin, port);
    assert!(
        api.requests()
            .iter()
            .any(|r| r.starts_with("/api/v1/namespaces/meta/pods")),
        "{:?}",
        api.requests()
    );
    let mut client = Client::connect(port);
    let mut id = 0;
    until_answer(&mut client, &mut id, "v1");
    // Subset v2's only pod is not ready: no endpoint, the call gets the protocol's error.
    api.apply(router(&[("v2", 100)], "demo", "meta", HOST));
    until_answer(&mut client, &mut id, "error");
    let t = Instant::now();
    api.apply(pod("demo-v2", "v2", v2.port, true));
    until_answer(&mut client, &mut id, "v2");
    eprintln!(
        "pod ready -> its first call: {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    for _ in 0..20 {
        until_answer(&mut client, &mut id, "v2");
    }
    // A deleted pod's process ends, closing its connections (Envoy keeps a removed host's
    // open TCP connections, as Istio does): `crash` makes the v2 server close the one the
    // bridge holds, as a dying pod would, until the next connection finds no endpoint.
    api.delete("Pod", "meta", "demo-v2");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        id += 1;
        let f = client.call(&minirpc_peer::request(id, "crash", &[], b""));
        assert_eq!(f.id, id, "answer for another call");
        if echo_once(&mut client, &mut id) == "error" {
            break;
        }
        assert!(Instant::now() < deadline, "the deleted pod kept its calls");
    }
    assert_eq!(
        envoy.stat(&format!("listener.127.0.0.1_{port}.downstream_cx_total")),
        1,
        "one client connection throughout"
    );
    drop(envoy);
    drop(ctl);
}

/// The other kinds come from the API server too, and a cluster without Meltemi's CRDs is
/// not a broken cluster: `404 NotFound` for the optional kinds reads as none of them, the
/// first configuration is served at once, and a policy whose CRD is installed later is
/// picked up by the watch that kept retrying. The root `Telemetry` and the mesh ConfigMap
/// (both in `istio-system`, watched besides `-n meta`) turn on the access log.
#[test]
fn missing_crds_do_not_block_and_policies_telemetry_and_mesh_config_are_watched() {
    let demo = Demo::start();
    let (api, wasm) = (&demo.api, &demo.wasm);
    let (port, xds, admin) = (demo.port, demo.xds, demo.admin);
    let log = std::env::temp_dir().join(format!("meltemi-kube-access-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    api.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": format!("extensionProviders:\n- name: calls\n  envoyFileAccessLog: {{path: {}}}\n", log.display())}
    }));
    api.apply(json!({
        "apiVersion": "telemetry.istio.io/v1alpha1", "kind": "Telemetry",
        "metadata": {"name": "mesh-default", "namespace": "istio-system"},
        "spec": {"accessLogging": [{"providers": [{"name": "calls"}]}]}
    }));
    let not_installed = [
        "metaauthorizationpolicies",
        "dubboauthorizationpolicies",
        "metatrafficpolicies",
        "ratelimitconfigs",
        "gateways",
    ];
    for plural in not_installed {
        api.set_served(plural, false);
    }

    let ctl = KubeController::start("kinds", api, wasm, xds);
    ctl.wait_logged("not served by the API server", WAIT);
    let requests = api.requests();
    for plural in not_installed {
        assert!(
            requests
                .iter()
                .any(|r| r.starts_with("404 ") && r.contains(&format!("/namespaces/meta/{plural}"))),
            "{plural} was never asked for: {requests:?}"
        );
    }
    let asked = |prefix: &str| requests.iter().any(|r| r.starts_with(prefix));
    assert!(
        asked("/api/v1/namespaces/istio-system/configmaps?")
            && requests
                .iter()
                .any(|r| r.contains("/configmaps?")
                    && r.contains("fieldSelector=metadata.name%3Distio")),
        "the mesh ConfigMap is read by name from the root namespace: {requests:?}"
    );
    assert!(
        asked("/apis/telemetry.istio.io/v1alpha1/namespaces/istio-system/telemetries")
            && asked("/apis/telemetry.istio.io/v1alpha1/namespaces/meta/telemetries"),
        "Telemetry of the root and the watched namespace: {requests:?}"
    );

    let (envoy, _) = envoy_with_routes("ctl-kube-kinds", xds, admin, port);
    let mut client = Client::connect(port);
    let mut id = 0u64;
    let mut call = |client: &mut Client, method: &str| {
        id += 1;
        let f = client.call(&minirpc_peer::request(id, method, &[], b"x"));
        assert_eq!(f.id, id, "{f:?}");
        f
    };
    let bye = call(&mut client, "sayBye");
    assert_eq!(
        (bye.kind, bye.payload.as_slice()),
        (minirpc::kind::RESPONSE, &b"v1:x"[..]),
        "{bye:?}"
    );
    // The root Telemetry's access log, through the mesh ConfigMap's provider.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &Value| v["protocol"] == "minirpc")
            .collect();
        if let Some(line) = lines.first() {
            assert_eq!(line["response_code"], 200, "{line}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no access log line in {}:\n{text}\nenvoy:\n{}",
            log.display(),
            envoy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The CRD is installed and a DENY policy written: the retrying watch lists it and the
    // same connection's `sayBye` is refused, `echo` still answered.
    let t = Instant::now();
    api.set_served("metaauthorizationpolicies", true);
    api.apply(json!({
        "apiVersion": "meltemi.io/v1alpha1", "kind": "MetaAuthorizationPolicy",
        "metadata": {"name": "no-bye", "namespace": "meta"},
        "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["sayBye"]}}]}]}
    }));
    let deadline = t + Duration::from_secs(60);
    loop {
        let f = call(&mut client, "sayBye");
        if f.kind == minirpc::kind::ERROR {
            assert_eq!(f.headers.get("error"), Some("unauthorized"), "{f:?}");
            break;
        }
        assert_eq!(f.payload, b"v1:x", "{f:?}");
        assert!(
            Instant::now() < deadline,
            "the policy was never applied:\n{}",
            ctl.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "CRD installed -> policy enforced: {:.1} s (the watch's backoff)",
        t.elapsed().as_secs_f64()
    );
    let echo = call(&mut client, "echo");
    assert_eq!(
        (echo.kind, echo.payload.as_slice()),
        (minirpc::kind::RESPONSE, &b"v1:x"[..]),
        "{echo:?}"
    );
    assert_eq!(
        envoy.stat(&format!("listener.127.0.0.1_{port}.downstream_cx_total")),
        1,
        "one client connection throughout"
    );
    drop(envoy);
    drop(ctl);
    let _ = std::fs::remove_file(&log);
}
