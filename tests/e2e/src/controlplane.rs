//! The product's control plane in the end-to-end suites: `meltemi-controller serve` watching a
//! directory of Aeraki / Istio / Meltemi resources, and real Envoys bootstrapped from it over
//! ADS, for any engine. Scenario suites configure Envoy only through it, as a user would: write
//! resources, wait for Envoy to take the routes, drive real clients.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bootstrap::Engine;
use crate::envoy::Envoy;
use crate::workspace::{build_controller, build_for, free_port};

/// A running `meltemi-controller serve` and its watched directory; the process is killed (by
/// PID) on drop, and its log printed if the test failed.
pub struct ControlPlane {
    child: Child,
    log: PathBuf,
    /// Scratch directory of this control plane (the watched `config/` is inside).
    pub dir: PathBuf,
    /// The watched directory: write resources here with [`ControlPlane::write`].
    pub config: PathBuf,
    /// Port of the ADS server.
    pub xds_port: u16,
    engine: Engine,
}

/// What a control plane serves: which engine renders the data path, which codec crate serves
/// which protocol, extra `serve` arguments (`--filter-config …`), and the resources written
/// before it starts (file name, YAML).
pub struct Plan<'a> {
    pub engine: Engine,
    /// (protocol name as in `ApplicationProtocol`, codec package), e.g. `("dubbo", "meltemi-dubbo")`.
    pub codecs: &'a [(&'a str, &'a str)],
    pub args: &'a [&'a str],
    pub files: &'a [(&'a str, String)],
}

impl ControlPlane {
    /// Builds the modules `plan.engine` needs and the controller, writes `plan.files`, starts
    /// `serve` and waits until its xDS server listens.
    pub fn start(name: &str, plan: &Plan<'_>) -> ControlPlane {
        let bin = build_controller();
        let dir = std::env::temp_dir().join(format!(
            "meltemi-cp-{name}-{}-{}",
            plan.engine.name(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let config = dir.join("config");
        std::fs::create_dir_all(&config).expect("config dir");
        for (file, text) in plan.files {
            write_atomic(&config, file, text);
        }
        let xds_port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--dir"])
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{xds_port}")])
            .args(["--build", plan.engine.name()]);
        for (protocol, package) in plan.codecs {
            let wasm = build_for(plan.engine, package);
            if plan.engine != Engine::Native {
                cmd.arg("--module")
                    .arg(format!("{protocol}={}", wasm.display()));
            }
            if plan.engine != Engine::Wasm {
                cmd.arg("--native-module")
                    .arg(format!("{protocol}={}", package.replace('-', "_")));
            }
        }
        cmd.args(plan.args);
        let log = dir.join("controller.log");
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("controller log"))
            .spawn()
            .expect("start meltemi-controller");
        let cp = ControlPlane {
            child,
            log,
            dir,
            config,
            xds_port,
            engine: plan.engine,
        };
        cp.wait_logged("xds server listening", Duration::from_secs(30));
        cp
    }

    /// The engine this control plane renders.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Writes a resource file into the watched directory atomically (rename), as editors and
    /// `kubectl`-style tools do, so that the controller never reads half a file.
    pub fn write(&self, file: &str, text: &str) {
        write_atomic(&self.config, file, text);
    }

    /// Everything the controller logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the controller's log contains `needle`; panics with the log after `timeout`.
    pub fn wait_logged(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "controller never logged {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The ADS bootstrap `meltemi-controller bootstrap` renders for an Envoy with its admin on
    /// `admin_port`, with `extra` bootstrap arguments.
    pub fn bootstrap(&self, admin_port: u16, extra: &[&str]) -> String {
        bootstrap(build_controller(), self.xds_port, admin_port, extra)
    }

    /// Starts a real Envoy bootstrapped from this control plane (one worker).
    pub fn envoy(&self, name: &str) -> Envoy {
        let admin = free_port();
        Envoy::start(
            &format!("{name}-{}", self.engine.name()),
            &self.bootstrap(admin, &[]),
            admin,
        )
    }
}

/// What `controller` (the `meltemi-controller` binary) renders with `bootstrap` for an Envoy
/// with its admin on `admin_port` fetching everything over ADS from 127.0.0.1:`xds_port`,
/// with `extra` arguments.
pub fn bootstrap(
    controller: impl AsRef<std::ffi::OsStr>,
    xds_port: u16,
    admin_port: u16,
    extra: &[&str],
) -> String {
    let out = Command::new(controller)
        .args(["bootstrap", "--xds", &format!("127.0.0.1:{xds_port}")])
        .args(["--admin-port", &admin_port.to_string()])
        .args(extra)
        .output()
        .expect("run meltemi-controller bootstrap");
    assert!(
        out.status.success(),
        "bootstrap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `envoy` accepted a route configuration for the front listener of `protocol` on
/// `port` at least `n` times (the first push is `n = 1`); panics with Envoy's log after 30 s.
pub fn wait_for_routes(envoy: &Envoy, protocol: &str, port: u16, n: u64) {
    let stat = format!("http.meltemi_{protocol}_{port}.rds.meltemi_{port}.update_success");
    let deadline = Instant::now() + Duration::from_secs(30);
    while envoy.stat(&stat) < n {
        assert!(
            Instant::now() < deadline,
            "{stat} never reached {n}:\n{}",
            envoy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_atomic(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write resource");
    std::fs::rename(&tmp, dir.join(name)).expect("rename resource");
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("controller log ({}):\n{}", self.log.display(), self.log());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
