//! Observability end to end, configured only through the controller (Istio `Telemetry` and
//! the mesh's `extensionProviders` written to its watched directory), on every engine, for
//! Dubbo (the real sofa-rpc-node provider and consumer) and Thrift (Apache Thrift's Python
//! THeader client and server):
//! - metrics: `meltemi_*` counts equal to what the real client did, per outcome;
//! - access logs: one JSON line per call naming protocol, service, method, request id,
//!   outcome, response code/flags, upstream host and duration;
//! - tracing: Envoy's Zipkin spans (received by a collector double in the test) named
//!   `<service>/<method>`, and the trace context inside the protocol: the real server reports
//!   the `x-b3-*` attachment / THeader header it received, equal to the span's ids;
//! - the dashboard (`docs/dashboards/`): every metric its queries name is exported by a live
//!   Envoy after real calls.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meltemi_e2e::bootstrap::Engine;
use meltemi_e2e::controlplane::{wait_for_routes, ControlPlane, Plan};
use meltemi_e2e::envoy::{Envoy, NATIVE_PROM_PREFIX};
use meltemi_e2e::workspace::{free_port, root};
use serde_json::Value;

meltemi_e2e::on_every_engine!(
    dubbo_metrics_logs_and_traces,
    a_w3c_trace_context_crosses_the_dubbo_bridge_both_ways,
    thrift_metrics_logs_and_traces
);

/// A Zipkin collector double: an HTTP/1.1 server on loopback keeping every span Envoy POSTs
/// to `/api/v2/spans` (JSON v2). Stopped (and its threads joined) on drop.
struct Collector {
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Collector {
    fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind collector");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&spans), Arc::clone(&stop));
        let accept = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => {
                        let (s, st) = (Arc::clone(&s), Arc::clone(&st));
                        conns.push(std::thread::spawn(move || serve(c, &s, &st)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Collector {
            port,
            spans,
            stop,
            accept: Some(accept),
        }
    }

    fn spans(&self) -> Vec<Value> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits (Envoy flushes spans every 5 s) until a span satisfies `pred`; panics after 30 s.
    fn wait_span(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.spans().into_iter().find(|s| pred(s)) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no span {what} among {:#?}",
                self.spans()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// One collector connection: HTTP/1.1 requests (Envoy's Zipkin reporter sends chunked
/// bodies; `content-length` is read too), each answered 202.
fn serve(mut c: TcpStream, spans: &Mutex<Vec<Value>>, stop: &AtomicBool) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while !stop.load(Ordering::Relaxed) {
        match c.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        while let Some((head, body, used)) = parse_request(&buf) {
            buf.drain(..used);
            if head.starts_with("post /api/v2/spans") {
                if let Ok(Value::Array(batch)) = serde_json::from_slice::<Value>(&body) {
                    spans.lock().expect("spans").extend(batch);
                }
            }
            let _ = c.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n");
        }
    }
}

/// One complete request at the start of `buf`: (lower-cased head, body, bytes used).
fn parse_request(buf: &[u8]) -> Option<(String, Vec<u8>, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let mut at = end + 4;
    if head.contains("transfer-encoding: chunked") {
        let mut body = Vec::new();
        loop {
            let line_end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
            let size_text = String::from_utf8_lossy(&buf[at..line_end]);
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                // No trailers from Envoy: the final CRLF.
                buf.get(at..at + 2)?;
                return Some((head, body, at + 2));
            }
            body.extend_from_slice(buf.get(at..at + size)?);
            at += size + 2;
            buf.get(..at)?;
        }
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let body = buf.get(at..at + len)?.to_vec();
    Some((head, body, at + len))
}

/// The mesh configuration (providers), the collector's ServiceEntry and a mesh-wide
/// Telemetry: access logs to `log`, every call traced; `zipkin_extra` adds fields to the
/// Zipkin provider (`, key: value`).
fn telemetry_files(collector: u16, log: &Path, zipkin_extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    extensionProviders:
    - name: zipkin
      zipkin: {{service: zipkin.istio-system.svc.cluster.local, port: 9411{zipkin_extra}}}
    - name: calls
      envoyFileAccessLog: {{path: {log}}}
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: zipkin, namespace: istio-system}}
spec:
  hosts: [zipkin.istio-system.svc.cluster.local]
  ports: [{{number: 9411, name: http-zipkin, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http-zipkin: {collector}}}}}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  accessLogging: [{{providers: [{{name: calls}}]}}]
  tracing:
  - providers: [{{name: zipkin}}]
    randomSamplingPercentage: 100
"#,
        log = log.display()
    )
}

fn log_path(name: &str, engine: Engine) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "meltemi-obs-{name}-{}-{}.log",
        engine.name(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&p);
    p
}

/// Waits until the access log holds `n` lines of `protocol`, returns them parsed.
fn wait_log(path: &Path, protocol: &str, n: usize, envoy: &Envoy) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .filter(|v: &Value| v["protocol"] == protocol)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "access log {} has {} of {n} lines:\n{text}\nenvoy:\n{}",
            path.display(),
            lines.len(),
            envoy.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn field(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Checks one access-log line against the call it should describe.
fn check_line(line: &Value, method: &str, outcome: &str, code: &str) {
    let ctx = format!("{line}");
    assert_eq!(field(line, "method"), method, "{ctx}");
    assert_eq!(field(line, "outcome"), outcome, "{ctx}");
    assert_eq!(field(line, "response_code"), code, "{ctx}");
    assert!(
        field(line, "request_id").parse::<u64>().is_ok(),
        "request id: {ctx}"
    );
    assert!(
        field(line, "duration_ms").parse::<u64>().is_ok(),
        "duration: {ctx}"
    );
    assert!(!field(line, "service").is_empty(), "{ctx}");
}

/// The upstream host a log line must name: the real server on the native back; on the wasm
/// back Envoy's router only sees the internal listener the back runs on.
fn check_upstream(line: &Value, engine: Engine, server_port: u16) {
    let host = field(line, "upstream_host");
    if engine == Engine::Wasm {
        assert!(host.contains("meltemi_back"), "{line}");
    } else {
        assert_eq!(host, format!("127.0.0.1:{server_port}"), "{line}");
    }
}

/// Every metric name the dashboard's queries use is exported by `envoy` (the native build's
/// names after the scrape config's relabelling, which strips [`NATIVE_PROM_PREFIX`]).
fn dashboard_metrics_are_exported(envoy: &Envoy) {
    let docs = root().join("docs/dashboards");
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(docs.join("meltemi-grafana.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let scrape = std::fs::read_to_string(docs.join("prometheus.yml")).expect("scrape config");
    let rule = format!("regex: {NATIVE_PROM_PREFIX}((meltemi|istio)_.*)");
    assert!(scrape.contains(&rule), "the scrape config lacks {rule}");
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    assert!(exprs.len() >= 6, "{exprs:?}");
    let exported: std::collections::BTreeSet<String> = envoy
        .prometheus()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            // The scrape config's relabelling rule.
            name.strip_prefix(NATIVE_PROM_PREFIX)
                .filter(|n| n.starts_with("meltemi_") || n.starts_with("istio_"))
                .unwrap_or(name)
                .to_owned()
        })
        .collect();
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                exported.contains(&name),
                "dashboard query {expr:?} names {name}, which Envoy does not export; exported: {exported:?}"
            );
        }
    }
}

/// Istio's standard metric `base` as this engine's Envoy exports it: Istio's exact name with a
/// wasm front (the `wasmcustom` namespace is dropped), in the dynamic modules' namespace on
/// the native build.
fn istio_name(engine: Engine, base: &str) -> String {
    if engine == Engine::Native {
        format!("{NATIVE_PROM_PREFIX}{base}")
    } else {
        base.to_owned()
    }
}

/// Waits until Istio's request counter for `protocol` and `code` reaches `want`.
fn wait_istio(envoy: &Envoy, engine: Engine, protocol: &str, code: &str, want: f64) {
    let name = istio_name(engine, "istio_requests_total");
    let labels = [
        ("reporter", "source"),
        ("request_protocol", protocol),
        ("response_code", code),
    ];
    let got = envoy.wait_prom(&name, &labels, want);
    assert_eq!(got, want, "{name} {labels:?}:\n{}", envoy.prometheus());
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Metric names in a PromQL expression: identifiers starting `meltemi_` or `envoy_`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_') {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            // A metric is followed by its selector, range or the next argument; label names
            // (in selectors and `by (...)`) by `=`, `!`, `~` or `)`, label values are quoted.
            let quoted = start > 0 && bytes[start - 1] == '"';
            let metric = matches!(bytes.get(i), Some('{' | '[' | ','));
            let ours = ["meltemi_", "envoy_", "istio_"]
                .iter()
                .any(|p| word.starts_with(p));
            if !quoted && metric && ours {
                out.push(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// What a Dubbo observability test runs against: the sofa-rpc-node provider behind the
/// controller's Envoy, a Zipkin collector, the access log file.
struct DubboObs {
    // Dropped in this order: Envoy before its controller.
    envoy: Envoy,
    _cp: ControlPlane,
    provider: meltemi_e2e::dubbo_peer::Provider,
    collector: Collector,
    log: PathBuf,
    port: u16,
    /// The routed interface, lower case.
    echo: String,
}

impl DubboObs {
    /// Routes by method only (`echo`, `attachment`, `fail` on the echo interface): a method
    /// without a route is a local reply (route_not_found). `zipkin_extra`: see
    /// [`telemetry_files`].
    fn start(engine: Engine, name: &str, zipkin_extra: &str) -> DubboObs {
        use meltemi_e2e::dubbo_peer::{Provider, ProviderKind, ECHO, OTHER};
        let provider = Provider::start(ProviderKind::Sofa, "v1");
        let collector = Collector::start();
        let log = log_path(name, engine);
        let port = free_port();
        let (echo, other) = (ECHO.to_ascii_lowercase(), OTHER.to_ascii_lowercase());
        let mut services = String::new();
        for host in [&echo, &other] {
            let name = host.rsplit('.').next().unwrap_or(host);
            services.push_str(&format!(
                "---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: {name}, namespace: meta-dubbo}}
spec:
  hosts: [{host}]
  ports: [{{number: {port}, name: tcp-metaprotocol-dubbo, protocol: TCP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-metaprotocol-dubbo: {}}}}}]
",
                provider.port
            ));
        }
        services.push_str(&format!(
        "---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: echo, namespace: meta-dubbo}}
spec:
  hosts: [{echo}]
  routes:
  - {{name: echo, match: {{attributes: {{method: {{exact: echo}}}}}}, route: [{{destination: {{host: {echo}}}}}]}}
  - {{name: attachment, match: {{attributes: {{method: {{exact: attachment}}}}}}, route: [{{destination: {{host: {echo}}}}}]}}
  - {{name: fail, match: {{attributes: {{method: {{exact: fail}}}}}}, route: [{{destination: {{host: {echo}}}}}]}}
"
    ));
        let cp_name = format!("obs-{name}");
        let cp = ControlPlane::start(
            &cp_name,
            &Plan {
                engine,
                codecs: &[("dubbo", "meltemi-dubbo")],
                args: &[],
                files: &[
                    ("services.yaml", services),
                    (
                        "telemetry.yaml",
                        telemetry_files(collector.port, &log, zipkin_extra),
                    ),
                ],
            },
        );
        let envoy = cp.envoy(&cp_name);
        wait_for_routes(&envoy, "dubbo", port, 1);
        DubboObs {
            envoy,
            _cp: cp,
            provider,
            collector,
            log,
            port,
            echo,
        }
    }
}

impl Drop for DubboObs {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

fn dubbo_metrics_logs_and_traces(engine: Engine) {
    use meltemi_e2e::dubbo_peer::{self, run_consumer, Call, ConsumerKind, ECHO, NO_ROUTE};
    if !dubbo_peer::peers_available() {
        return;
    }
    let obs = DubboObs::start(engine, "dubbo", "");
    let (envoy, collector, log, port, echo) =
        (&obs.envoy, &obs.collector, &obs.log, obs.port, &obs.echo);

    let calls = [
        Call::new(ECHO, "echo", "one"),
        Call::new(ECHO, "attachment", "x-b3-traceid"),
        Call::new(ECHO, "attachment", "x-b3-spanid"),
        Call::new(ECHO, "fail", "boom"),
        Call::new(ECHO, "greet", "nobody-routes-greet"),
        Call::new(NO_ROUTE, "echo", "lost"),
    ];
    let run = run_consumer(
        ConsumerKind::Sofa,
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
    let o = &run.outcomes;
    // sofa-rpc-node prints String results JSON-quoted.
    let value = |i: usize| o[i].value("call").trim_matches('"').to_owned();
    assert_eq!(value(0), "v1:one", "{}", run.transcript());
    let trace_id = value(1)
        .strip_prefix("v1:x-b3-traceid=")
        .unwrap_or_else(|| panic!("{}", run.transcript()))
        .to_owned();
    let span_id = value(2)
        .strip_prefix("v1:x-b3-spanid=")
        .unwrap_or_else(|| panic!("{}", run.transcript()))
        .to_owned();
    assert!(
        trace_id.len() == 32 && trace_id.chars().all(|c| c.is_ascii_hexdigit()),
        "the provider saw trace id {trace_id:?}"
    );
    assert!(span_id.len() == 16, "the provider saw span id {span_id:?}");
    o[3].error("fail");
    o[4].error("greet");
    o[5].error("no route");

    // Metrics: what the consumer did, per outcome.
    let dubbo = ("protocol", "dubbo");
    for (outcome, want) in [
        ("success", 3.0),
        ("business_error", 1.0),
        ("local_reply", 2.0),
    ] {
        let got = envoy.wait_prom(
            "meltemi_responses_total",
            &[dubbo, ("outcome", outcome)],
            want,
        );
        assert_eq!(got, want, "{outcome}:\n{}", envoy.prometheus());
    }
    assert_eq!(
        envoy.wait_prom("meltemi_requests_total", &[dubbo], 6.0),
        6.0,
        "{}",
        envoy.prometheus()
    );
    assert_eq!(
        envoy.prom_sum("meltemi_requests_total", &[dubbo, ("method", "attachment")]),
        2.0
    );

    // Istio's standard metrics, from the same calls (a business error is a 200 answer).
    wait_istio(envoy, engine, "dubbo", "200", 4.0);
    wait_istio(envoy, engine, "dubbo", "404", 2.0);

    // Access log: one line per call, in order, naming it.
    let lines = wait_log(log, "dubbo", 6, envoy);
    assert_eq!(lines.len(), 6, "{lines:#?}");
    let expect = [
        ("echo", "success", "200"),
        ("attachment", "success", "200"),
        ("attachment", "success", "200"),
        ("fail", "business_error", "200"),
        ("greet", "local_reply", "404"),
        ("echo", "local_reply", "404"),
    ];
    for (line, (method, outcome, code)) in lines.iter().zip(expect) {
        check_line(line, method, outcome, code);
    }
    for line in &lines[..4] {
        check_upstream(line, engine, obs.provider.port);
        // The front names the interface as the client wrote it; Envoy matched it to the
        // lower-cased host.
        assert!(field(line, "service").eq_ignore_ascii_case(echo), "{line}");
        assert_eq!(field(line, "error_kind"), "-", "{line}");
    }
    for line in &lines[4..] {
        assert_eq!(field(line, "error_kind"), "route_not_found", "{line}");
        assert_eq!(field(line, "response_flags"), "NR", "{line}");
    }
    assert_eq!(field(&lines[1], "trace_id"), trace_id, "{}", lines[1]);

    // Traces: Envoy's span for the call carries the ids the provider received.
    let span = collector.wait_span("with the provider's trace id", |s| {
        s["traceId"] == trace_id.as_str()
    });
    assert_eq!(
        span["name"].as_str().map(str::to_ascii_lowercase),
        Some(format!("{echo}/attachment")),
        "{span:#}"
    );
    assert_eq!(span["tags"]["rpc.method"], "attachment", "{span:#}");
    let span = collector.wait_span("with the provider's span id", |s| {
        s["id"] == span_id.as_str()
    });
    assert_eq!(
        span["name"].as_str().map(str::to_ascii_lowercase),
        Some(format!("{echo}/attachment")),
        "{span:#}"
    );
    collector.wait_span("for fail", |s| {
        s["name"].as_str().map(str::to_ascii_lowercase) == Some(format!("{echo}/fail"))
    });

    dashboard_metrics_are_exported(envoy);
}

/// With the Zipkin provider's `traceContextOption: USE_B3_WITH_W3C_PROPAGATION` (Istio
/// 1.28), the W3C trace context crosses the bridge both ways: the provider receives a
/// `traceparent` attachment naming Envoy's span, and a consumer's own `traceparent`
/// attachment (no B3) puts Envoy's span into the consumer's trace, which the provider then
/// receives.
fn a_w3c_trace_context_crosses_the_dubbo_bridge_both_ways(engine: Engine) {
    use meltemi_e2e::dubbo_peer::{self, run_consumer, Call, ConsumerKind, ECHO};
    if !dubbo_peer::peers_available() {
        return;
    }
    let obs = DubboObs::start(
        engine,
        "dubbo-w3c",
        ", traceContextOption: USE_B3_WITH_W3C_PROPAGATION",
    );
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    let calls = [
        Call::new(ECHO, "attachment", "traceparent"),
        Call::new(ECHO, "attachment", "x-b3-traceid")
            .att("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
    ];
    let run = run_consumer(
        ConsumerKind::Sofa,
        obs.port,
        &calls,
        &[],
        Duration::from_secs(60),
    );
    assert!(
        run.completed(),
        "{}\nenvoy:\n{}",
        run.transcript(),
        obs.envoy.log()
    );
    let value = |i: usize| run.outcomes[i].value("call").trim_matches('"').to_owned();
    // `00-<trace id>-<span id>-01`, the ids of the span Envoy sent.
    let seen = value(0);
    let parts: Vec<&str> = seen
        .strip_prefix("v1:traceparent=")
        .unwrap_or_else(|| panic!("no traceparent reached the provider: {}", run.transcript()))
        .split('-')
        .collect();
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[3] == "01",
        "the provider saw traceparent {seen:?}"
    );
    let span = obs
        .collector
        .wait_span("named by the provider's traceparent", |s| {
            s["traceId"] == parts[1] && s["id"] == parts[2]
        });
    assert_eq!(
        span["name"].as_str().map(str::to_ascii_lowercase),
        Some(format!("{}/attachment", obs.echo)),
        "{span:#}"
    );
    // The consumer's trace continues through Envoy to the provider.
    assert_eq!(
        value(1),
        format!("v1:x-b3-traceid={TRACE}"),
        "{}",
        run.transcript()
    );
    let span = obs
        .collector
        .wait_span("in the consumer's trace", |s| s["traceId"] == TRACE);
    // Zipkin's shared span context (Envoy's default): the server side of the consumer's own
    // span, same id, marked shared.
    assert_eq!(span["id"], PARENT, "{span:#}");
    assert_eq!(span["shared"], true, "{span:#}");
}

fn thrift_metrics_logs_and_traces(engine: Engine) {
    use meltemi_e2e::thrift_peer::{self, Impl};
    if !thrift_peer::peers_available() {
        return;
    }
    let server = thrift_peer::Server::start(Impl::Apache, "header", "compact", "v1", &[]);
    let collector = Collector::start();
    let log = log_path("thrift", engine);
    let port = free_port();
    let host = "echo.meta-thrift.svc.cluster.local";
    let services = format!(
        "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: echo, namespace: meta-thrift}}
spec:
  hosts: [{host}]
  ports: [{{number: {port}, name: tcp-metaprotocol-thrift-echo, protocol: TCP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-metaprotocol-thrift-echo: {}}}}}]
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: echo, namespace: meta-thrift}}
spec:
  hosts: [{host}]
  routes:
  - {{name: echo, match: {{attributes: {{method: {{exact: echo}}}}}}, route: [{{destination: {{host: {host}}}}}]}}
  - {{name: inspect, match: {{attributes: {{method: {{exact: inspect}}}}}}, route: [{{destination: {{host: {host}}}}}]}}
  - {{name: add, match: {{attributes: {{method: {{exact: add}}}}}}, route: [{{destination: {{host: {host}}}}}]}}
",
        server.port
    );
    let cp = ControlPlane::start(
        "obs-thrift",
        &Plan {
            engine,
            codecs: &[("thrift", "meltemi-thrift")],
            args: &[
                "--filter-config",
                r#"thrift={"codec": {"transport": "header"}}"#,
            ],
            files: &[
                ("services.yaml", services),
                (
                    "telemetry.yaml",
                    telemetry_files(
                        collector.port,
                        &log,
                        ", traceContextOption: USE_B3_WITH_W3C_PROPAGATION",
                    ),
                ),
            ],
        },
    );
    let envoy = cp.envoy("obs-thrift");
    wait_for_routes(&envoy, "thrift", port, 1);

    // The `route` scenario on one connection: echo, inspect, echo (with a header), add, fail
    // (no route: a TApplicationException), echo.
    let out = thrift_peer::Client::new(Impl::Apache, "header", "compact", port, "route")
        .arg("--msg")
        .arg("t")
        .run();
    assert!(
        out.success(),
        "client failed:\n{}\n{}\nenvoy:\n{}",
        out.stdout,
        out.stderr,
        envoy.log()
    );
    let lines_out = out.lines();
    for want in [
        "echo v1:t1",
        "echo X-Version=v2 v1:t2",
        "add 42",
        "echo v1:t3",
    ] {
        assert!(lines_out.contains(&want), "{want:?} missing: {lines_out:?}");
    }
    assert!(
        lines_out
            .iter()
            .any(|l| l.starts_with("fail TApplicationException")),
        "{lines_out:?}"
    );
    // What the server received in THeader info headers for `inspect`.
    let inspect = lines_out
        .iter()
        .find(|l| l.starts_with("inspect "))
        .expect("inspect line");
    let header = |k: &str| {
        inspect
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("h:{k}=")))
            .unwrap_or_else(|| panic!("server saw no {k}: {inspect}"))
            .to_owned()
    };
    let (trace_id, span_id) = (header("x-b3-traceid"), header("x-b3-spanid"));
    assert_eq!(header("x-b3-sampled"), "1", "{inspect}");
    assert_eq!(trace_id.len(), 32, "{inspect}");
    // The provider asks for W3C too: the same ids as a THeader `traceparent`.
    assert_eq!(
        header("traceparent"),
        format!("00-{trace_id}-{span_id}-01"),
        "{inspect}"
    );

    let thrift = ("protocol", "thrift");
    for (outcome, want) in [("success", 5.0), ("local_reply", 1.0)] {
        let got = envoy.wait_prom(
            "meltemi_responses_total",
            &[thrift, ("outcome", outcome)],
            want,
        );
        assert_eq!(got, want, "{outcome}:\n{}", envoy.prometheus());
    }
    assert_eq!(
        envoy.wait_prom("meltemi_requests_total", &[thrift], 6.0),
        6.0
    );
    assert_eq!(
        envoy.prom_sum("meltemi_requests_total", &[thrift, ("method", "echo")]),
        3.0
    );

    wait_istio(&envoy, engine, "thrift", "200", 5.0);
    wait_istio(&envoy, engine, "thrift", "404", 1.0);

    let lines = wait_log(&log, "thrift", 6, &envoy);
    assert_eq!(lines.len(), 6, "{lines:#?}");
    let expect = [
        ("echo", "success", "200"),
        ("inspect", "success", "200"),
        ("echo", "success", "200"),
        ("add", "success", "200"),
        ("fail", "local_reply", "404"),
        ("echo", "success", "200"),
    ];
    for (line, (method, outcome, code)) in lines.iter().zip(expect) {
        check_line(line, method, outcome, code);
        assert_eq!(field(line, "service"), host, "{line}");
    }
    for i in [0, 1, 2, 3, 5] {
        check_upstream(&lines[i], engine, server.port);
    }
    assert_eq!(field(&lines[4], "error_kind"), "route_not_found");
    assert_eq!(field(&lines[1], "trace_id"), trace_id, "{}", lines[1]);

    let span = collector.wait_span("with the server's trace id", |s| {
        s["traceId"] == trace_id.as_str()
    });
    assert_eq!(span["id"], span_id.as_str(), "{span:#}");
    assert_eq!(
        span["name"].as_str().map(str::to_ascii_lowercase),
        Some(format!("{host}/inspect")),
        "{span:#}"
    );
    collector.wait_span("for add", |s| {
        s["name"].as_str().map(str::to_ascii_lowercase) == Some(format!("{host}/add"))
    });

    dashboard_metrics_are_exported(&envoy);
    drop(envoy);
    drop(cp);
    let _ = std::fs::remove_file(&log);
}
