//! Real Dubbo2 peers for the end-to-end tests: the providers and consumers in
//! `tests/peers/dubbo/` (Java on Caucho Hessian2, npm `sofa-rpc-node` + `dubbo-remoting`, npm
//! `dubbo2.js`, PyPI `dubbo-ssl-python`), run as child processes on loopback.
//!
//! A [`Provider`] is started with a tag (`v1`, `v2`; every answer names it) on a free port and
//! is ready once it accepts connections; it logs every request and heartbeat it receives, which
//! [`Provider::log`] exposes. A consumer run ([`run_consumer`]) executes a script of [`Call`]s
//! over ONE connection and reports one [`Outcome`] per call, parsed from the `CALL <i> ...`
//! lines the consumer scripts print. Every process is killed by its PID when its handle is
//! dropped, also while a failing test unwinds, so no peer outlives its test.
//!
//! The peers are installed by `tests/peers/dubbo/install.sh`. [`peers_available`] skips a
//! test with a note when they are missing, unless [`workspace::peers_required`]
//! (`MELTEMI_REQUIRE_PEERS=1`, CI), where a missing peer is a failure.

use std::fs::File;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::workspace;

/// The demo interface every provider serves.
pub const ECHO: &str = "org.meltemi.demo.EchoService";
/// A second interface with the same methods (served by the same providers): routing by
/// interface needs two.
pub const OTHER: &str = "org.meltemi.demo.OtherService";
/// An interface nobody serves and no route names.
pub const NO_ROUTE: &str = "org.meltemi.demo.NoRouteService";

/// `tests/peers/dubbo/`.
pub fn peers_dir() -> PathBuf {
    workspace::root().join("tests/peers/dubbo")
}

/// The Python interpreter (`$PYTHON`, else `python3`), the one install.sh installs into.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn command_works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .current_dir(peers_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether every peer is installed (npm packages, compiled Java peer, `dubbo_ssl`, `java`,
/// `node`). When not, prints a skip note, or panics if [`workspace::peers_required`].
pub fn peers_available() -> bool {
    let dir = peers_dir();
    let missing: Vec<&str> = [
        (
            "node_modules/sofa-rpc-node",
            dir.join("node_modules/sofa-rpc-node/package.json").exists(),
        ),
        (
            "node_modules/dubbo-remoting",
            dir.join("node_modules/dubbo-remoting/package.json")
                .exists(),
        ),
        (
            "node_modules/dubbo2.js",
            dir.join("node_modules/dubbo2.js/package.json").exists(),
        ),
        (
            "build/java (javac)",
            dir.join("build/java/org/meltemi/demo/DubboPeer.class")
                .exists(),
        ),
        ("node", command_works("node", &["--version"])),
        ("java", command_works("java", &["-version"])),
        (
            "python dubbo_ssl",
            command_works(&python(), &["-c", "import dubbo_ssl"]),
        ),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(what, _)| what)
    .collect();
    if missing.is_empty() {
        return true;
    }
    workspace::peer_missing(
        &format!("Dubbo peers {missing:?}"),
        "run tests/peers/dubbo/install.sh",
    )
}

/// The JVM command line for `DubboPeer` (same flags as run_matrix.py: Caucho serialises
/// Throwable by reflection, which Java 17 only allows with these packages opened).
fn java_peer() -> Command {
    let mut cmd = Command::new("java");
    cmd.args([
        "--add-opens",
        "java.base/java.lang=ALL-UNNAMED",
        "--add-opens",
        "java.base/java.util=ALL-UNNAMED",
        "-cp",
    ])
    .arg(format!(
        "{}:/usr/share/java/hessian.jar",
        peers_dir().join("build/java").display()
    ))
    .arg("org.meltemi.demo.DubboPeer");
    cmd
}

/// Which provider implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// `DubboPeer provider`: Caucho Hessian2, Dubbo exchange framing written by hand.
    Java,
    /// `sofa_provider.js`: sofa-rpc-node's `RpcServer` with the dubbo-remoting protocol.
    Sofa,
}

impl ProviderKind {
    /// Short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Java => "java",
            ProviderKind::Sofa => "sofa-rpc-node",
        }
    }
}

/// A temporary log file for a peer process, named after the test process and a port.
/// A sequence number makes each path unique, so that consumers run at once against one
/// port (circuit breaking) never share an output file.
fn log_path(what: &str, port: u16) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "meltemi-dubbo-{what}-{}-{port}-{n}.log",
        std::process::id()
    ))
}

/// A running provider. Dropping it kills the process by PID and reaps it.
pub struct Provider {
    child: Child,
    /// Which implementation.
    pub kind: ProviderKind,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// What its answers name (`<tag>:<message>`, `ann@<tag>`).
    pub tag: String,
    log: PathBuf,
}

impl Provider {
    /// Starts a `kind` provider tagged `tag` on a free port and waits until it accepts.
    pub fn start(kind: ProviderKind, tag: &str) -> Provider {
        Provider::start_with(kind, tag, &[])
    }

    /// [`Provider::start`] with extra command-line flags (`--slow-ms 1500` for sofa's `slow`).
    pub fn start_with(kind: ProviderKind, tag: &str, extra: &[&str]) -> Provider {
        let port = workspace::free_port();
        let log = log_path(&format!("{}-{tag}", kind.name()), port);
        let out = File::create(&log).expect("provider log");
        let mut cmd = match kind {
            ProviderKind::Java => {
                let mut c = java_peer();
                c.arg("provider");
                c
            }
            ProviderKind::Sofa => {
                let mut c = Command::new("node");
                c.arg("sofa_provider.js");
                c
            }
        };
        let child = cmd
            .args(["--port", &port.to_string(), "--tag", tag])
            .args(extra)
            .current_dir(peers_dir())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {} provider: {e}", kind.name()));
        let mut provider = Provider {
            child,
            kind,
            port,
            tag: tag.to_owned(),
            log,
        };
        provider.wait_accepting();
        provider
    }

    fn wait_accepting(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        // Ready means the process says so (after `listen`), not just that the port is open:
        // the connection probe below would otherwise race a port reused by someone else.
        while !self.log().contains("listening on 127.0.0.1")
            || TcpStream::connect(("127.0.0.1", self.port)).is_err()
        {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} provider {} exited with {status}:\n{}",
                    self.kind.name(),
                    self.tag,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} provider {} not accepting on {} after 30s:\n{}",
                self.kind.name(),
                self.tag,
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the provider printed so far (one line per request and per heartbeat).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Heartbeats the provider received so far (lines `provider <tag> <- heartbeat id=N`).
    pub fn heartbeats(&self) -> Vec<u64> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once("<- heartbeat id=").map(|(_, id)| id.trim()))
            .filter_map(|id| id.parse().ok())
            .collect()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "{} provider {} log kept in {}",
                self.kind.name(),
                self.tag,
                self.log.display()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Which consumer implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerKind {
    /// npm `dubbo2.js` (`DirectlyDubbo`), dubbo version 2.0.2.
    Dubbo2js,
    /// npm `sofa-rpc-node` `RpcClient` with the `dubbo-remoting` protocol.
    Sofa,
    /// PyPI `dubbo-ssl-python` (dubbo version 2.4.10: it cannot read 2.0.2 result flags).
    Python,
    /// `DubboPeer consumer` (Caucho Hessian2), dubbo version 2.0.2; the only one that sends
    /// one-way calls.
    Java,
}

impl ConsumerKind {
    /// Every consumer.
    pub const ALL: [ConsumerKind; 4] = [
        ConsumerKind::Dubbo2js,
        ConsumerKind::Sofa,
        ConsumerKind::Python,
        ConsumerKind::Java,
    ];

    /// Short name for messages; also the `x-caller` attachment value each one sends.
    pub fn name(self) -> &'static str {
        match self {
            ConsumerKind::Dubbo2js => "dubbo2.js",
            ConsumerKind::Sofa => "sofa-rpc-node",
            ConsumerKind::Python => "dubbo-ssl-python",
            ConsumerKind::Java => "java-consumer",
        }
    }

    fn command(self) -> Command {
        match self {
            ConsumerKind::Dubbo2js => {
                let mut c = Command::new("node");
                c.arg("dubbo2js_consumer.js");
                c
            }
            ConsumerKind::Sofa => {
                let mut c = Command::new("node");
                c.arg("sofa_consumer.js");
                c
            }
            ConsumerKind::Python => {
                let mut c = Command::new(python());
                c.arg("py_consumer.py").env("PYTHONUNBUFFERED", "1");
                c
            }
            ConsumerKind::Java => {
                let mut c = java_peer();
                c.args(["consumer", "--dubbo", "2.0.2"]);
                c
            }
        }
    }
}

/// One step of a consumer script.
#[derive(Debug, Clone)]
pub struct Call {
    spec: String,
}

impl Call {
    /// `interface.method(argument)`, two-way. `greet` sends `User("ann", 41, 7, [argument])`;
    /// every other method sends the argument as its one String parameter.
    pub fn new(interface: &str, method: &str, argument: &str) -> Call {
        Call {
            spec: format!("{interface}|{method}|{argument}||"),
        }
    }

    /// Adds an attachment (no `|` or `,` in key or value: the script format separators).
    pub fn att(mut self, key: &str, value: &str) -> Call {
        let mut parts: Vec<String> = self.spec.split('|').map(str::to_owned).collect();
        if !parts[3].is_empty() {
            parts[3].push(',');
        }
        parts[3].push_str(&format!("{key}={value}"));
        self.spec = parts.join("|");
        self
    }

    /// Makes the call one-way (no answer expected; only the Java consumer sends these).
    pub fn oneway(mut self) -> Call {
        self.spec.push_str("oneway");
        self
    }

    /// A pause of `ms` milliseconds in the script (idle time for client heartbeats).
    pub fn sleep(ms: u64) -> Call {
        Call {
            spec: format!("sleep|{ms}"),
        }
    }

    fn is_sleep(&self) -> bool {
        self.spec.starts_with("sleep|")
    }
}

/// What a consumer reported for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The call returned; the consumer's rendering of the value.
    Ok(String),
    /// The consumer raised an RPC error; its message.
    Err(String),
    /// A one-way call was sent (nothing comes back).
    Sent,
    /// The consumer cannot make this call (why).
    Skip(String),
    /// The consumer printed nothing for this call (crashed or hung before it).
    Missing,
}

impl Outcome {
    /// The value of an `Ok`, else panics with `context` and the outcome.
    pub fn value(&self, context: &str) -> &str {
        match self {
            Outcome::Ok(v) => v,
            other => panic!("{context}: expected a value, got {other:?}"),
        }
    }

    /// The message of an `Err`, else panics with `context` and the outcome.
    pub fn error(&self, context: &str) -> &str {
        match self {
            Outcome::Err(e) => e,
            other => panic!("{context}: expected an RPC error, got {other:?}"),
        }
    }
}

/// A finished consumer run.
#[derive(Debug)]
pub struct Run {
    /// Which consumer.
    pub consumer: ConsumerKind,
    /// Its exit status (`None` when it was killed on timeout).
    pub status: Option<ExitStatus>,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
    /// One outcome per non-sleep call of the script, in order.
    pub outcomes: Vec<Outcome>,
}

impl Run {
    /// Whether the script ran to its end (`DONE` printed, exit 0).
    pub fn completed(&self) -> bool {
        self.status.is_some_and(|s| s.success()) && self.stdout.lines().any(|l| l == "DONE")
    }

    /// stdout and stderr, for assertion messages.
    pub fn transcript(&self) -> String {
        format!(
            "{} exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.consumer.name(),
            self.status,
            self.stdout,
            // Python's logging repeats every exception with its trace: keep the tail.
            tail(&self.stderr, 3000)
        )
    }
}

fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Kills a child by PID when dropped (timeouts and panics while a consumer runs).
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs `consumer` against 127.0.0.1:`port` with `calls` (one connection) plus `extra`
/// command-line flags, kills it after `timeout`, and parses its report. Output goes to files,
/// not pipes, so a chatty consumer can never block on a full pipe.
pub fn run_consumer(
    consumer: ConsumerKind,
    port: u16,
    calls: &[Call],
    extra: &[&str],
    timeout: Duration,
) -> Run {
    let out_path = log_path(&format!("{}-out", consumer.name()), port);
    let err_path = log_path(&format!("{}-err", consumer.name()), port);
    let mut cmd = consumer.command();
    cmd.args(["--port", &port.to_string()]);
    for c in calls {
        cmd.args(["--call", &c.spec]);
    }
    let child = cmd
        .args(extra)
        .current_dir(peers_dir())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("consumer stdout"))
        .stderr(File::create(&err_path).expect("consumer stderr"))
        .spawn()
        .unwrap_or_else(|e| panic!("start {} consumer: {e}", consumer.name()));
    let mut reaper = Reaper(child);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match reaper.0.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => break None,
        }
    };
    drop(reaper);
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    let outcomes = parse_outcomes(&stdout, calls);
    Run {
        consumer,
        status,
        stdout,
        stderr,
        outcomes,
    }
}

/// [`run_consumer`], also noting when each `CALL <i>` line appeared on the consumer's
/// stdout (polled every 2 ms; the consumers flush per call): `times[k]` is the moment the
/// `k`-th non-sleep call's outcome was printed, so `times[k] - times[k - 1]` is how long that
/// call took as the client saw it (within a few ms).
pub fn run_consumer_timed(
    consumer: ConsumerKind,
    port: u16,
    calls: &[Call],
    timeout: Duration,
) -> (Run, Vec<Option<Instant>>) {
    let out_path = log_path(&format!("{}-timed-out", consumer.name()), port);
    let err_path = log_path(&format!("{}-timed-err", consumer.name()), port);
    let mut cmd = consumer.command();
    cmd.args(["--port", &port.to_string()]);
    for c in calls {
        cmd.args(["--call", &c.spec]);
    }
    let child = cmd
        .current_dir(peers_dir())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("consumer stdout"))
        .stderr(File::create(&err_path).expect("consumer stderr"))
        .spawn()
        .unwrap_or_else(|e| panic!("start {} consumer: {e}", consumer.name()));
    let mut reaper = Reaper(child);
    let mut seen: std::collections::HashMap<usize, Instant> = std::collections::HashMap::new();
    let deadline = Instant::now() + timeout;
    let note = |seen: &mut std::collections::HashMap<usize, Instant>| {
        let now = Instant::now();
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        // Only complete lines: the last one may still be being written.
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            if let Some(i) = line
                .strip_prefix("CALL ")
                .and_then(|r| r.split(' ').next())
                .and_then(|i| i.parse::<usize>().ok())
            {
                seen.entry(i).or_insert(now);
            }
        }
    };
    let status = loop {
        note(&mut seen);
        match reaper.0.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => break None,
        }
    };
    drop(reaper);
    note(&mut seen);
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    let outcomes = parse_outcomes(&stdout, calls);
    let times = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.is_sleep())
        .map(|(i, _)| seen.get(&i).copied())
        .collect();
    (
        Run {
            consumer,
            status,
            stdout,
            stderr,
            outcomes,
        },
        times,
    )
}

/// `CALL <i> OK|ERR|SENT|SKIP ...` lines → outcomes of the non-sleep calls. Lines are split on
/// `\n` only: dubbo2.js messages may hold other control bytes (the scripts strip them, but a
/// stray one must not shift the numbering).
fn parse_outcomes(stdout: &str, calls: &[Call]) -> Vec<Outcome> {
    let mut by_index = std::collections::HashMap::new();
    for line in stdout.split('\n') {
        let Some(rest) = line.strip_prefix("CALL ") else {
            continue;
        };
        let mut parts = rest.splitn(3, ' ');
        let (Some(i), Some(verb)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(i) = i.parse::<usize>() else { continue };
        let text = parts.next().unwrap_or("").trim_end_matches('\r').to_owned();
        let outcome = match verb {
            "OK" => Outcome::Ok(text),
            "ERR" => Outcome::Err(text),
            "SENT" => Outcome::Sent,
            "SKIP" => Outcome::Skip(text),
            _ => continue,
        };
        by_index.insert(i, outcome);
    }
    // Scripts number calls by their position in the argument list, sleeps included.
    calls
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.is_sleep())
        .map(|(i, _)| by_index.remove(&i).unwrap_or(Outcome::Missing))
        .collect()
}

/// A raw Dubbo2 heartbeat request (two-way event, Hessian2, body = Hessian null) with `id`.
pub fn heartbeat_frame(id: u64) -> Vec<u8> {
    let mut f = vec![0xda, 0xbb, 0x80 | 0x40 | 0x20 | 0x02, 0];
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes());
    f.push(b'N');
    f
}

/// Appends a Hessian2 string (compact form below 32 UTF-16 units, `S` chunk up to 65535).
fn hessian_string(out: &mut Vec<u8>, s: &str) {
    let units = s.encode_utf16().count();
    if units < 32 {
        out.push(units as u8);
    } else {
        assert!(units <= 0xffff, "hessian_string: {units} units");
        out.push(b'S');
        out.extend_from_slice(&(units as u16).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

/// A raw two-way Dubbo2 request `interface.method(String argument)` with `id` and the usual
/// attachments (as Apache Dubbo 2.7 writes them), for tests that need exact bytes on the wire.
pub fn request_frame(id: u64, interface: &str, method: &str, argument: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for s in [
        "2.0.2",
        interface,
        "1.0.0",
        method,
        "Ljava/lang/String;",
        argument,
    ] {
        hessian_string(&mut body, s);
    }
    body.push(b'H');
    for (k, v) in [
        ("path", interface),
        ("interface", interface),
        ("version", "1.0.0"),
        ("group", "demo"),
        ("x-caller", "rust-raw"),
    ] {
        hessian_string(&mut body, k);
        hessian_string(&mut body, v);
    }
    body.push(b'Z');
    let mut f = vec![0xda, 0xbb, 0x80 | 0x40 | 0x02, 0];
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(&body);
    f
}

/// One frame read from a raw connection: header fields and body.
#[derive(Debug, Clone)]
pub struct RawFrame {
    /// Flag byte (0x80 request, 0x40 two-way, 0x20 event, low 5 bits serialization).
    pub flags: u8,
    /// Status byte (20 = OK).
    pub status: u8,
    /// Request id.
    pub id: u64,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl RawFrame {
    /// Whether the event flag is set (heartbeat or heartbeat reply).
    pub fn is_event(&self) -> bool {
        self.flags & 0x20 != 0
    }
}

/// Reads one Dubbo2 frame from `stream`.
pub fn read_raw_frame(stream: &mut TcpStream) -> std::io::Result<RawFrame> {
    use std::io::Read;
    let mut h = [0u8; 16];
    stream.read_exact(&mut h)?;
    if h[..2] != [0xda, 0xbb] {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad magic in {h:02x?}"),
        ));
    }
    let len = u32::from_be_bytes([h[12], h[13], h[14], h[15]]) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(RawFrame {
        flags: h[2],
        status: h[3],
        id: u64::from_be_bytes(h[4..12].try_into().expect("8 bytes")),
        body,
    })
}
