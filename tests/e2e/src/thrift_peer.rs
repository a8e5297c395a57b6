//! Real Thrift peers for the end-to-end tests: the Python servers and clients in
//! `tests/peers/thrift/` (Apache Thrift from PyPI `thrift`, and `thriftpy2`) and the Rust
//! `thrift` 0.17 server in `tests/peers/thrift-rs` ([`Server::start_rust`]), run as child
//! processes on loopback.
//!
//! A [`Server`] is started with an implementation, transport, protocol and tag on a free port
//! and is ready once it accepts connections; a client run ([`Client`]) has its stdout and
//! stderr captured. Every process is killed by its PID when its handle is dropped, also while a
//! failing test unwinds, so no peer outlives its test.
//!
//! The peers are installed by `tests/peers/thrift/install.sh`. [`peers_available`]: without
//! peers a test is skipped with a note, unless [`workspace::peers_required`]
//! (`MELTEMI_REQUIRE_PEERS=1`, CI), where a missing peer is a failure.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::workspace;

/// Which Thrift implementation a peer runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    /// Apache Thrift (PyPI `thrift` 0.25): buffered, framed and THeader transports.
    Apache,
    /// thriftpy2, an independent implementation: buffered and framed only.
    Thriftpy2,
}

impl Impl {
    /// The script prefix in `tests/peers/thrift/` (`py_server.py`, `tp2_client.py`, ...).
    pub fn script_prefix(self) -> &'static str {
        match self {
            Impl::Apache => "py",
            Impl::Thriftpy2 => "tp2",
        }
    }

    /// Short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Apache => "apache",
            Impl::Thriftpy2 => "thriftpy2",
        }
    }
}

/// `tests/peers/thrift/`.
pub fn peers_dir() -> PathBuf {
    workspace::root().join("tests/peers/thrift")
}

/// The Python interpreter (`$PYTHON`, else `python3`), the same one install.sh installs into.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Whether the peers (generated bindings, `thrift`, `thriftpy2`) are installed. When they are
/// not, prints a skip note, or panics if `MELTEMI_REQUIRE_PEERS=1`.
pub fn peers_available() -> bool {
    let ok = peers_dir().join("gen-py/echo/Echo.py").exists()
        && Command::new(python())
            .args(["-c", "import thrift, thriftpy2"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    ok || workspace::peer_missing("Thrift peers", "run tests/peers/thrift/install.sh")
}

/// A command for one peer script. Unbuffered so a peer killed on timeout still shows what it
/// printed; UTF-8 so non-ASCII answers print the same whatever the machine's locale.
fn peer_command(script: &str) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(peers_dir().join(script))
        .current_dir(peers_dir())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONIOENCODING", "utf-8")
        .stdin(Stdio::null());
    cmd
}

/// A running Echo server. Dropping it kills the process by PID and reaps it.
pub struct Server {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// What `echo` prefixes its answers with (`<tag>:<msg>`).
    pub tag: String,
    log: PathBuf,
}

impl Server {
    /// Starts `imp`'s server speaking `transport`/`protocol` with `tag` (plus `extra` flags such
    /// as `--multiplex Echo`) on a free port, and waits until it accepts connections.
    pub fn start(imp: Impl, transport: &str, protocol: &str, tag: &str, extra: &[&str]) -> Server {
        let port = workspace::free_port();
        let log = std::env::temp_dir().join(format!(
            "meltemi-thrift-{}-{}-{port}.log",
            imp.script_prefix(),
            std::process::id()
        ));
        let out = File::create(&log).expect("server log");
        let child = peer_command(&format!("{}_server.py", imp.script_prefix()))
            .args(["--transport", transport, "--protocol", protocol])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--tag", tag])
            .args(extra)
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .spawn()
            .expect("start python thrift server");
        let mut server = Server {
            child,
            port,
            tag: tag.to_owned(),
            log,
        };
        server.wait_accepting(imp.name());
        server
    }

    fn wait_accepting(&mut self, name: &str) {
        if let Err(e) =
            workspace::wait_accepting(self.port, &mut self.child, Duration::from_secs(20))
        {
            panic!("{name} server (tag {}) {e}:\n{}", self.tag, self.log());
        }
    }

    /// The server's stdout and stderr so far (handler tracebacks end up here).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("server {} log kept in {}", self.tag, self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Builds the Rust `thrift` 0.17 Echo server (`tests/peers/thrift-rs`, a workspace member, so
/// its crates come with the workspace's lock file) once per process and returns its path.
pub fn rust_server_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = workspace::root();
            let status = Command::new(env!("CARGO"))
                .current_dir(&root)
                .args(["build", "--quiet", "-p", "meltemi-thrift-rs-peer"])
                .status()
                .expect("run cargo build for thrift-rs-server");
            assert!(status.success(), "building thrift-rs-server failed");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            let path = target.join("debug/thrift-rs-server");
            assert!(path.exists(), "{} missing after build", path.display());
            path
        })
        .clone()
}

impl Server {
    /// Starts the Rust `thrift` 0.17 server (framed or buffered × binary or compact; the crate
    /// has no THeader) with `tag` on a free port, and waits until it accepts connections.
    pub fn start_rust(transport: &str, protocol: &str, tag: &str) -> Server {
        let port = workspace::free_port();
        let log = std::env::temp_dir().join(format!(
            "meltemi-thrift-rs-{}-{port}.log",
            std::process::id()
        ));
        let out = File::create(&log).expect("server log");
        let child = Command::new(rust_server_binary())
            .args(["--transport", transport, "--protocol", protocol])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--tag", tag])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .spawn()
            .expect("start thrift-rs-server");
        let mut server = Server {
            child,
            port,
            tag: tag.to_owned(),
            log,
        };
        server.wait_accepting("rust thrift");
        server
    }
}

/// What a finished client printed.
#[derive(Debug, Clone)]
pub struct ClientOutput {
    /// Exit status (`None` when it was killed on timeout).
    pub status: Option<ExitStatus>,
    /// Everything it printed to stdout.
    pub stdout: String,
    /// Everything it printed to stderr.
    pub stderr: String,
}

impl ClientOutput {
    /// The stdout lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// Whether the client exited with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// A client invocation: implementation, transport, protocol, scenario and extra flags.
pub struct Client {
    imp: Impl,
    args: Vec<String>,
}

impl Client {
    /// `imp`'s client speaking `transport`/`protocol` to 127.0.0.1:`port`, running `scenario`.
    pub fn new(imp: Impl, transport: &str, protocol: &str, port: u16, scenario: &str) -> Client {
        let args = [
            "--transport",
            transport,
            "--protocol",
            protocol,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--scenario",
            scenario,
        ]
        .map(str::to_owned)
        .to_vec();
        Client { imp, args }
    }

    /// Adds command-line flags (`--msg x`, `--header k=v`, `--multiplex Echo`, ...).
    pub fn arg(mut self, flag: &str) -> Client {
        self.args.push(flag.to_owned());
        self
    }

    /// Starts the client; [`RunningClient::finish`] collects what it printed.
    pub fn spawn(&self) -> RunningClient {
        let mut child = peer_command(&format!("{}_client.py", self.imp.script_prefix()))
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python thrift client");
        // Drained on threads: a client blocked on a full pipe would otherwise look like a hang.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_string(&mut s);
                }
                s
            })
        };
        let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
        let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
        RunningClient {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// Runs the client to completion (at most 60 s) and returns what it printed.
    pub fn run(&self) -> ClientOutput {
        self.spawn().finish()
    }

    /// A short description for assertion messages.
    pub fn describe(&self) -> String {
        format!("{} client {}", self.imp.name(), self.args.join(" "))
    }
}

/// A client process in flight. Dropping it kills the process by PID and reaps it.
pub struct RunningClient {
    child: Child,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl RunningClient {
    /// Waits for the client to exit (killing it after 60 s) and returns what it printed.
    pub fn finish(mut self) -> ClientOutput {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        let join = |h: Option<std::thread::JoinHandle<String>>| {
            h.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        ClientOutput {
            status,
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
        }
    }
}

impl Drop for RunningClient {
    fn drop(&mut self) {
        // After `finish` the child is already reaped and these are no-ops.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
