//! Where things are: the repository root, built wasm modules, free loopback ports.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

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
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let root = root();
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-wasip1",
            "-p",
            package,
        ])
        .status()
        .expect("run cargo build for wasm");
    assert!(
        status.success(),
        "building {package} for wasm32-wasip1 failed"
    );
    let path = root
        .join("target/wasm32-wasip1/release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    assert!(path.exists(), "{} missing after build", path.display());
    path
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

/// A port on 127.0.0.1 that was free a moment ago, below Linux's ephemeral range (32768+) so
/// that no client connection's source port, nor its TIME_WAIT after Envoy is killed, can take
/// it before Envoy binds it. Each process walks its own stretch of 20000..32000, and a port is
/// handed out once per process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 60) * 200;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
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
