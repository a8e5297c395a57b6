//! Where things are and what tests share: the repository root, built wasm modules, loopback
//! ports below the ephemeral range, readiness polling, and whether missing peers fail.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The repository root (two levels above this crate).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

static BUILD: Mutex<()> = Mutex::new(());

/// Builds `package` for `wasm32-wasip1` in release mode (once per call site; cargo makes
/// repeated builds cheap) and returns the module's path.
pub fn build_wasm(package: &str) -> PathBuf {
    cargo_build(&["--release", "--target", "wasm32-wasip1", "-p", package]);
    let path = root()
        .join("target/wasm32-wasip1/release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// `cargo build --quiet <args>` in the repository root, one build at a time.
fn cargo_build(args: &[&str]) {
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let status = Command::new(env!("CARGO"))
        .current_dir(root())
        .args(["build", "--quiet"])
        .args(args)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build {} failed", args.join(" "));
}

/// Builds `package` as an Envoy dynamic module (the SDK's `native` feature, the `native`
/// profile) and returns the `.so`'s path. Envoy started by [`crate::envoy::Envoy`] finds it by
/// name: its search path is this directory.
pub fn build_native(package: &str) -> PathBuf {
    cargo_build(&[
        "--profile",
        "native",
        "--features",
        "meltemi-sdk/native",
        "-p",
        package,
    ]);
    let path = native_dir().join(format!("lib{}.so", package.replace('-', "_")));
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// Builds `meltemi-controller` (the dev profile the test suites already build it with) and
/// returns the binary's path.
///
/// Under `scripts/test.sh` (`MELTEMI_CONTROLLER_BUILT=1`) the binary `cargo test --workspace`
/// has just built for the controller's own integration tests is used as it is: `cargo build
/// -p meltemi-controller` resolves other features for shared dependencies (the workspace's
/// other members turn on `serde` in `indexmap`, `smallvec`, …), and since cargo no longer
/// keeps artifacts apart by features it would rebuild envoy-types and the controller over the
/// test build's (measured: 2 min alone, about 4 in CI next to a running suite).
pub fn build_controller() -> PathBuf {
    if std::env::var_os("MELTEMI_CONTROLLER_BUILT").is_none() {
        cargo_build(&["-p", "meltemi-controller"]);
    }
    let path = root().join("target/debug/meltemi-controller");
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// Where [`build_native`] puts dynamic modules.
pub fn native_dir() -> PathBuf {
    root().join("target/native")
}

/// Builds what `engine` needs of `package`: the `.wasm` (always: the wasm front or back) and,
/// for the native engines, the `.so`. Returns the `.wasm` path.
pub fn build_for(engine: crate::bootstrap::Engine, package: &str) -> PathBuf {
    if engine != crate::bootstrap::Engine::Wasm {
        build_native(package);
    }
    build_wasm(package)
}

/// Builds the standalone (non-workspace) crate in `dir` (relative to the repository root) for
/// `wasm32-wasip1` in release mode, into the target directory the wasm test host uses for its
/// own test modules, and returns `<artifact>.wasm`.
pub fn build_standalone_wasm(dir: &str, artifact: &str) -> PathBuf {
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let root = root();
    let target = root.join("target/wasm-host-testdata");
    let status = Command::new(env!("CARGO"))
        .current_dir(root.join(dir))
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip1"])
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("run cargo build for wasm");
    assert!(status.success(), "building {dir} for wasm32-wasip1 failed");
    let path = target.join(format!("wasm32-wasip1/release/{artifact}.wasm"));
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// A listener on 127.0.0.1, on a port below Linux's ephemeral range (32768+), kept bound: for
/// servers a test runs in its own process (nothing can take the port between choosing and
/// binding it). Each process walks its own stretch of 20000..32000, and a port is tried once per
/// process.
pub fn listener() -> TcpListener {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 60) * 200;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % SPAN) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

/// A port on 127.0.0.1 that was free a moment ago, for a child process (Envoy, a peer) to bind.
/// It is below the ephemeral range so that no client connection's source port, nor its
/// TIME_WAIT after a process is killed, can take it before the child binds it (a port from
/// `bind(":0")` is exactly such a port). See [`listener`] for the ranges.
pub fn free_port() -> u16 {
    listener().local_addr().expect("listener address").port()
}

/// Waits until something accepts connections on 127.0.0.1:`port`, polling (no fixed sleep
/// decides readiness). Fails early when `child` exits, and after `timeout`.
pub fn wait_accepting(port: u16, child: &mut Child, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status} before accepting on {port}"));
        }
        if Instant::now() >= deadline {
            return Err(format!("not accepting on {port} after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `MELTEMI_E2E_HCM_PROTOCOL=http2` runs the suites' fronts with HTTP/2 toward HCM (the
/// filter's `"hcm_protocol": "http2"` and HCM's `codec_type: HTTP2`), so that every claim of
/// the HTTP/1.1 suites can be checked under the other framing; unset (or `http1`): as
/// configured. Fronts whose configuration names a protocol keep it.
pub fn hcm_protocol_override() -> Option<&'static str> {
    match std::env::var("MELTEMI_E2E_HCM_PROTOCOL").as_deref() {
        Ok("http2") => Some("http2"),
        _ => None,
    }
}

/// Whether a missing test peer is a failure: `MELTEMI_REQUIRE_PEERS=1` (set by
/// `scripts/test.sh` after installing them, so by CI). Any other value, or none, lets suites
/// skip. The one reader of the variable, so every suite agrees.
pub fn peers_required() -> bool {
    std::env::var("MELTEMI_REQUIRE_PEERS").as_deref() == Ok("1")
}

/// Reports that `what` is missing (`install` says how to get it): panics when
/// [`peers_required`], else prints a skip note. Returns `false`, for `return peer_missing(..)`
/// in availability checks.
pub fn peer_missing(what: &str, install: &str) -> bool {
    assert!(
        !peers_required(),
        "{what} missing (MELTEMI_REQUIRE_PEERS=1): {install}"
    );
    eprintln!("skipping: {what} not installed ({install})");
    false
}

/// Replaces every `{{NAME}}` in `template` with its value; panics on a placeholder left over.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    let body: String = out
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!body.contains("{{"), "unfilled placeholder in:\n{body}");
    out
}
