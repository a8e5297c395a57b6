//! The directory source: load → validate → translate in one step ([`build`]), and a watcher
//! that re-runs it on every change and publishes the result only when it is valid, so that the
//! last good configuration stays in force while a broken file is being fixed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::load::{self, Loaded, Problem};
use crate::translate::{self, Options, Resources};
use crate::xds::Snapshot;

/// Why a directory cannot be served.
#[derive(Debug)]
pub enum Rejected {
    /// The directory could not be read, or translation failed as a whole.
    Fatal(String),
    /// Resources that are wrong, each naming file, resource and field.
    Problems(Vec<Problem>),
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::Fatal(e) => f.write_str(e),
            Rejected::Problems(ps) => {
                for (i, p) in ps.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
        }
    }
}

/// Loads, validates and translates `dir`.
pub fn build(dir: &Path, options: &Options) -> Result<(Loaded, Resources), Rejected> {
    let mut loaded = load::load_dir(dir, options.namespace.as_deref()).map_err(Rejected::Fatal)?;
    let mut problems = std::mem::take(&mut loaded.problems);
    problems.extend(crate::validate::validate(&loaded.inputs));
    if !problems.is_empty() {
        return Err(Rejected::Problems(problems));
    }
    let resources =
        translate::translate(&loaded.inputs, options).map_err(|e| Rejected::Fatal(e.0))?;
    Ok((loaded, resources))
}

/// [`build`] plus encoding for xDS (which checks every resource against Envoy's schema),
/// re-using `previous`'s encoding of unchanged resources.
pub fn snapshot(
    dir: &Path,
    options: &Options,
    changed_at: Instant,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, Rejected> {
    let (loaded, resources) = build(dir, options)?;
    for s in &loaded.skipped {
        tracing::debug!(source = %s.source, what = %s.what, "skipped document of another kind");
    }
    Snapshot::update(&resources, changed_at, previous).map_err(Rejected::Fatal)
}

/// Watches `dir` and publishes a new snapshot into `tx` after every valid change. Runs until
/// the watcher fails; returns why.
pub async fn watch_dir(
    dir: PathBuf,
    options: Options,
    tx: watch::Sender<Arc<Snapshot>>,
) -> Result<(), String> {
    use notify::Watcher;
    let (events_tx, mut events) = mpsc::unbounded_channel::<Instant>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = events_tx.send(Instant::now());
            }
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    while let Some(first) = events.recv().await {
        // An editor's save or a `mv` is several events: let the burst settle briefly so the
        // files are read once, complete.
        let settle = tokio::time::sleep(Duration::from_millis(15));
        tokio::pin!(settle);
        loop {
            tokio::select! {
                _ = &mut settle => break,
                more = events.recv() => if more.is_none() { break },
            }
        }
        let started = Instant::now();
        let previous = Arc::clone(&tx.borrow());
        match snapshot(&dir, &options, first, Some(&previous)) {
            Ok(s) => {
                if s.versions() == tx.borrow().versions() {
                    tracing::debug!("change without effect on the served configuration");
                    continue;
                }
                tracing::info!(
                    versions = %s.versions(),
                    translate_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "configuration updated"
                );
                tx.send_replace(Arc::new(s));
            }
            Err(Rejected::Problems(ps)) => {
                for p in &ps {
                    tracing::error!(
                        file = %p.source.file,
                        document = p.source.document,
                        resource = %p.resource,
                        field = %p.field,
                        problem = %p.message,
                        "rejected change; the last good configuration stays in force"
                    );
                }
            }
            Err(Rejected::Fatal(e)) => {
                tracing::error!(error = %e, "rejected change; the last good configuration stays in force");
            }
        }
    }
    drop(watcher);
    Err("directory watcher stopped".into())
}
