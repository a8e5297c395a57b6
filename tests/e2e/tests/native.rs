//! What only the native build (Envoy dynamic modules) has to prove, on the real Envoy 1.40:
//! Envoy accepts the module's ABI version, a bug that panics inside a codec closes only the
//! connection it happened on (a native module has no sandbox: an unwinding panic would take
//! Envoy down), a bad configuration is refused naming the field, and Envoy's validation mode
//! accepts every native and mixed configuration the suites use.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use meltemi_e2e::bootstrap::{route_action, Bridge, Destination, Engine};
use meltemi_e2e::envoy::{envoy_binary, Envoy};
use meltemi_e2e::workspace;
use serde_json::json;

/// A server of the test codec's line protocol: `Q <id> <method> <text>` → `A <id> <text>`.
fn line_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind line server");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut writer = conn.try_clone().expect("clone");
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { break };
                    let parts: Vec<&str> = line.splitn(4, ' ').collect();
                    let answer = format!("A {} {}\n", parts[1], parts.get(3).unwrap_or(&""));
                    if writer.write_all(answer.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// One line-protocol client connection.
struct LineClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineClient {
    fn connect(port: u16) -> LineClient {
        let writer = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        writer
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        LineClient {
            reader: BufReader::new(writer.try_clone().expect("clone")),
            writer,
        }
    }

    /// Sends one call; the answer line, or `None` when the connection closed.
    fn call(&mut self, line: &str) -> Option<String> {
        self.writer.write_all(line.as_bytes()).ok()?;
        let mut answer = String::new();
        match self.reader.read_line(&mut answer) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(answer),
        }
    }
}

fn line_bridge(engine: Engine, port: u16, admin: u16, server: u16) -> String {
    Bridge {
        protocol: "line",
        // Unused by the native engine (no wasm filter is rendered).
        wasm: Path::new("/nonexistent.wasm"),
        engine,
        module: "meltemi_panic_codec",
        front: json!({"known_methods": ["m"]}),
        back: json!({}),
        listen_port: port,
        admin_port: admin,
        destinations: vec![Destination {
            cluster: "line".into(),
            port: server,
        }],
        virtual_hosts: vec![json!({
            "name": "line", "domains": ["line"],
            "routes": [{"match": {"prefix": "/line/"}, "route": route_action("line")}]
        })],
        http_filters: vec![],
    }
    .render()
}

#[test]
fn a_panic_inside_the_codec_closes_only_its_connection() {
    workspace::build_native("meltemi-panic-codec");
    let server = line_server();
    let (port, admin) = (workspace::free_port(), workspace::free_port());
    let envoy = Envoy::start(
        "native-panic",
        &line_bridge(Engine::Native, port, admin, server),
        admin,
    );
    assert!(
        envoy
            .log()
            .contains("Dynamic module ABI version v0.2.0 matched"),
        "{}",
        envoy.log()
    );
    let mut good = LineClient::connect(port);
    assert_eq!(good.call("Q 1 m hello\n").as_deref(), Some("A 1 hello\n"));
    let mut bad = LineClient::connect(port);
    assert_eq!(
        bad.call("Q 2 m PANIC now\n"),
        None,
        "the panicking call's connection is closed"
    );
    // Envoy, the worker and the other connection live on; so do new connections.
    assert_eq!(good.call("Q 3 m again\n").as_deref(), Some("A 3 again\n"));
    let mut fresh = LineClient::connect(port);
    assert_eq!(fresh.call("Q 4 m new\n").as_deref(), Some("A 4 new\n"));
    assert!(
        envoy.log().contains("a bug panicked inside the module"),
        "{}",
        envoy.log()
    );
    let answered = envoy.wait_prom(
        "meltemi_responses_total",
        &[("protocol", "line"), ("outcome", "success")],
        3.0,
    );
    assert_eq!(answered, 3.0, "{}", envoy.prometheus());
}

#[test]
fn envoy_refuses_a_bad_native_configuration_and_names_the_field() {
    workspace::build_native("meltemi-panic-codec");
    let admin = workspace::free_port();
    let good = line_bridge(Engine::Native, workspace::free_port(), admin, 1);
    let bad = good.replace("known_methods", "known_methodz");
    assert_ne!(bad, good);
    let log = Envoy::refused("native-badconfig", &bad, admin);
    assert!(
        log.contains("unknown field `known_methodz`"),
        "the error names the field:\n{log}"
    );
}

/// `envoy --mode validate` accepts the configuration at `path`, with the dynamic modules on
/// Envoy's search path.
fn assert_envoy_validates(path: &Path) {
    let out = Command::new(envoy_binary())
        .args(["--mode", "validate", "-c"])
        .arg(path)
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", workspace::native_dir())
        .output()
        .expect("run envoy --mode validate");
    assert!(
        out.status.success(),
        "{} rejected:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every engine's rendering of a two-destination bridge passes `envoy --mode validate` with
/// the dynamic modules on Envoy's search path.
#[test]
fn native_and_mixed_configurations_pass_envoy_validate() {
    workspace::build_native("meltemi-panic-codec");
    let dir = std::env::temp_dir().join(format!("meltemi-native-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let wasm = workspace::build_wasm("meltemi-panic-codec");
    for engine in Engine::ALL {
        let mut config = line_bridge(engine, workspace::free_port(), workspace::free_port(), 1);
        if engine != Engine::Native {
            config = config.replace("/nonexistent.wasm", &wasm.display().to_string());
        }
        let path = dir.join(format!("{}.json", engine.name()));
        std::fs::write(&path, &config).expect("write");
        assert_envoy_validates(&path);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `scripts/build-modules.sh` builds both kinds of every codec and lists each in the manifest
/// with the sha256 of the file it wrote.
#[test]
fn the_module_manifest_matches_the_built_files() {
    let root = workspace::root();
    let status = Command::new("bash")
        .arg(root.join("scripts/build-modules.sh"))
        .status()
        .expect("run scripts/build-modules.sh");
    assert!(status.success(), "scripts/build-modules.sh failed");
    let dir = root.join("target/modules");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest.json"))
            .expect("manifest JSON");
    let modules = manifest["modules"].as_array().expect("modules");
    assert_eq!(modules.len(), 6, "thrift, dubbo, minirpc × wasm, native");
    for m in modules {
        let file = dir.join(m["file"].as_str().expect("file"));
        let out = Command::new("sha256sum")
            .arg(&file)
            .output()
            .expect("sha256sum");
        let sum = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            sum.split_whitespace().next(),
            m["sha256"].as_str(),
            "{}",
            file.display()
        );
        let abi = m["envoy_abi"].as_str().unwrap_or("");
        match m["build"].as_str() {
            Some("native") => assert!(abi.contains("v0.2.0"), "{m}"),
            Some("wasm") => assert!(abi.contains("proxy-wasm"), "{m}"),
            other => panic!("unknown build {other:?}"),
        }
    }
}

/// The benchmark's anchors are valid Envoy configurations, and its HCM floor really is
/// HTTP through HCM's router to the server: every echoed call is a 2xx of the floor's HCM and
/// an upstream request of its cluster, on the client's one kept-alive connection.
#[test]
fn the_benchmark_anchors_pass_envoy_validate_and_the_hcm_floor_routes_http() {
    let dir = std::env::temp_dir().join(format!("meltemi-bench-configs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let vars = |server: u16| {
        [
            ("ADMIN_PORT", workspace::free_port().to_string()),
            ("LISTEN_PORT", workspace::free_port().to_string()),
            ("SERVER_PORT", server.to_string()),
        ]
    };
    let configs = workspace::root().join("tests/e2e/configs");
    let mut validated = 0;
    for entry in std::fs::read_dir(&configs).expect("tests/e2e/configs") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        let rendered = dir.join(path.file_name().expect("name"));
        std::fs::write(&rendered, workspace::render(&text, &vars(9))).expect("write");
        assert_envoy_validates(&rendered);
        validated += 1;
    }
    assert!(validated >= 5, "only {validated} benchmark configurations");
    let _ = std::fs::remove_dir_all(&dir);

    let server = meltemi_e2e::http_load::start_echo_server();
    let [admin, listen, upstream] = vars(server);
    let text = std::fs::read_to_string(configs.join("hcm_floor.yaml")).expect("hcm_floor.yaml");
    let admin_port: u16 = admin.1.parse().expect("port");
    let envoy = Envoy::start(
        "bench-hcm-floor",
        &workspace::render(&text, &[admin, listen.clone(), upstream]),
        admin_port,
    );
    let mut client = meltemi_e2e::http_load::Client::connect(listen.1.parse().expect("port"));
    for i in 0..100u32 {
        let body = format!("call {i}");
        let request = meltemi_e2e::http_load::request("echo", "/echo/echo", body.as_bytes());
        let (status, echoed) = client.call(&request).expect("answer");
        assert_eq!((status, echoed), (200, body.into_bytes()), "call {i}");
    }
    assert_eq!(envoy.stat("http.hcm_floor.downstream_rq_2xx"), 100);
    assert_eq!(envoy.stat("cluster.server.upstream_rq_total"), 100);
    assert_eq!(envoy.stat("http.hcm_floor.downstream_cx_total"), 1);
}
