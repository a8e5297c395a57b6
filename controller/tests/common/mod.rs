//! What the controller's end-to-end suites share: the `meltemi-controller` process under test
//! (its binary, how it is started, how a test waits on its log, how it is stopped).

// Each suite that includes this module uses a part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The controller binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_meltemi-controller");

/// `meltemi-controller serve …` with its log (stderr) in a file: killed by PID on drop, and
/// the end of its log printed when the test failed.
pub struct Controller {
    child: Child,
    log: PathBuf,
}

impl Controller {
    /// `meltemi-controller` with `args`, logging at info, no stdin or stdout: add the source
    /// and environment, then [`Controller::start`] it.
    pub fn command(args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }

    /// Spawns `command` with stderr to `log` and waits (up to `timeout`) until it serves xDS,
    /// i.e. its first configuration is built.
    pub fn start(mut command: Command, log: PathBuf, timeout: Duration) -> Controller {
        let file = std::fs::File::create(&log).expect("controller log file");
        let child = command
            .stderr(file)
            .spawn()
            .expect("start meltemi-controller");
        let controller = Controller { child, log };
        controller.wait_logged("xds server listening", timeout);
        controller
    }

    /// The log so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the log contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }

    /// Waits until the log contains `needle`; fails the test with the log after `timeout`.
    pub fn wait_logged(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.logged(needle) {
            assert!(
                Instant::now() < deadline,
                "controller never logged {needle:?}:\n{}",
                tail(&self.text())
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("controller log:\n{}", tail(&self.text()));
        }
    }
}

/// The last 200 lines of a log (a scale run logs thousands).
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(200)..].join("\n")
}

/// `meltemi-controller bootstrap` for an Envoy with admin on `admin` fetching everything over
/// ADS from the controller at 127.0.0.1:`xds`: the bootstrap's text.
pub fn bootstrap(xds: u16, admin: u16) -> String {
    meltemi_e2e::controlplane::bootstrap(BIN, xds, admin, &[])
}
