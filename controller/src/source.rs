//! Sources of configuration and the incremental pipeline they feed: documents → validate →
//! translate → xDS snapshot, published only when valid, so that the last good configuration
//! stays in force while a broken file (or Kubernetes object) is being fixed.
//!
//! The pipeline keeps every origin's parsed documents (a file of the watched directory, or one
//! object of the Kubernetes source) and re-parses only the origins that changed; translation
//! keeps each port's resources ([`translate::Cache`]) and the snapshot each resource's
//! encoding, so one MetaRouter edit among thousands of services costs one file's parse, one
//! port's translation and one route configuration's encoding (plus a validation of the whole,
//! which is what keeps cross-resource checks — conflicts, references — exact).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::load::{self, Loaded, Problem, Skipped};
use crate::model::Inputs;
use crate::translate::{self, Options, Resources};
use crate::xds::Snapshot;

/// Why a configuration cannot be served.
#[derive(Debug)]
pub enum Rejected {
    /// The source could not be read, or translation failed as a whole.
    Fatal(String),
    /// Resources that are wrong, each naming file (or Kubernetes object), resource and field.
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

/// Loads, validates and translates `dir` once (`check`, `bootstrap`, `envoyfilter`).
pub fn build(dir: &Path, options: &Options) -> Result<(Loaded, Resources), Rejected> {
    let mut loaded = load::load_dir(dir, options.namespace.as_deref()).map_err(Rejected::Fatal)?;
    crate::workloads::resolve(&mut loaded.inputs);
    let mut problems = std::mem::take(&mut loaded.problems);
    problems.extend(crate::validate::validate(&loaded.inputs));
    if !problems.is_empty() {
        return Err(Rejected::Problems(problems));
    }
    let resources =
        translate::translate(&loaded.inputs, options).map_err(|e| Rejected::Fatal(e.0))?;
    Ok((loaded, resources))
}

/// What a file looked like when it was last read: a rewrite changes at least one of these
/// (a rename changes the inode; an in-place write the length or the modification time, and
/// the watcher names the file besides).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let inode = 0;
    Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    }
}

/// One origin's documents, parsed.
#[derive(Debug)]
struct Fragment {
    stamp: Option<Stamp>,
    text: String,
    loaded: Loaded,
}

/// The incremental pipeline of one `serve`: origins in, snapshots out.
#[derive(Debug)]
pub struct Pipeline {
    options: Options,
    /// Origin (file path, or Kubernetes object) → its documents, in origin order.
    fragments: BTreeMap<String, Fragment>,
    cache: translate::Cache,
    /// The rate limit service's limits, replaced with every valid configuration.
    pub limits: watch::Sender<Arc<crate::ratelimit::limits::Limits>>,
}

/// What one [`Pipeline::snapshot`] did, for logs and measurements.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Assembling the inputs and validating them.
    pub validate_ms: f64,
    /// Translating (only the changed ports; `ports_translated` says how many).
    pub translate_ms: f64,
    /// Encoding the changed resources for xDS.
    pub encode_ms: f64,
    /// Ports translated anew (the others came from the cache).
    pub ports_translated: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Pipeline {
    /// An empty pipeline translating with `options`.
    pub fn new(options: Options) -> Pipeline {
        Pipeline {
            options,
            fragments: BTreeMap::new(),
            cache: translate::Cache::default(),
            limits: watch::Sender::new(Arc::default()),
        }
    }

    fn parse(&self, origin: &str, text: &str) -> Loaded {
        let mut loaded = Loaded {
            default_namespace: self.options.namespace.clone(),
            ..Loaded::default()
        };
        load::load_text(origin, text, &mut loaded);
        loaded
    }

    /// Brings the directory's files up to date. With `touched` (the files the watcher named),
    /// only those are looked at; without it (start, or a watcher that lost events) every file
    /// is, and one whose stamp is unchanged is not read. A file read again is parsed again only
    /// if its text changed. Returns whether any origin changed.
    pub fn refresh_dir(
        &mut self,
        dir: &Path,
        touched: Option<&BTreeSet<PathBuf>>,
    ) -> Result<bool, String> {
        if let Some(touched) = touched {
            let mut changed = false;
            for path in touched {
                // The watcher's path, re-rooted at `dir`, so that origins are named the same way
                // whichever way the file was found.
                let Some(name) = path.file_name() else {
                    continue;
                };
                let path = dir.join(name);
                let origin = path.display().to_string();
                let meta = std::fs::metadata(&path).ok().filter(|m| m.is_file());
                match meta {
                    Some(meta) if load::is_config_file(&path) => {
                        changed |= self.refresh_file(origin, &path, Some(stamp(&meta)), true);
                    }
                    // Removed, renamed away, or not a file any more.
                    _ => changed |= self.fragments.remove(&origin).is_some(),
                }
            }
            return Ok(changed);
        }
        let unreadable =
            |e: std::io::Error| format!("cannot read directory {}: {e}", dir.display());
        // One `stat` per file: it both finds the regular files and gives their stamps.
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(unreadable)? {
            let path = entry.map_err(unreadable)?.path();
            if !load::is_config_file(&path) {
                continue;
            }
            if let Ok(meta) = std::fs::metadata(&path) {
                if meta.is_file() {
                    paths.push((path, stamp(&meta)));
                }
            }
        }
        paths.sort();
        let present: BTreeSet<String> =
            paths.iter().map(|(p, _)| p.display().to_string()).collect();
        let before = self.fragments.len();
        // Only files leave this way: the directory source never holds other origins.
        self.fragments.retain(|k, _| present.contains(k));
        let mut changed = self.fragments.len() != before;
        for (path, st) in paths {
            let origin = path.display().to_string();
            changed |= self.refresh_file(origin, &path, Some(st), false);
        }
        Ok(changed)
    }

    /// Re-reads one file unless `force` is off and its stamp is unchanged; re-parses it if
    /// its text changed. Returns whether its documents changed.
    fn refresh_file(
        &mut self,
        origin: String,
        path: &Path,
        st: Option<Stamp>,
        force: bool,
    ) -> bool {
        if let Some(f) = self.fragments.get(&origin) {
            if !force && st.is_some() && f.stamp == st {
                return false;
            }
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                // Gone between listing and reading (a rename in progress), or unreadable: a
                // problem naming the file, which the next event will clear.
                let mut loaded = Loaded::default();
                loaded.problems.push(Problem {
                    source: crate::model::Source {
                        file: origin.clone(),
                        document: 0,
                    },
                    resource: String::new(),
                    field: String::new(),
                    message: format!("cannot read file: {e}"),
                });
                self.fragments.insert(
                    origin,
                    Fragment {
                        stamp: None,
                        text: String::new(),
                        loaded,
                    },
                );
                return true;
            }
        };
        if let Some(f) = self.fragments.get_mut(&origin) {
            if f.text == text && f.stamp.is_some() {
                f.stamp = st;
                return false;
            }
        }
        let loaded = self.parse(&origin, &text);
        self.fragments.insert(
            origin,
            Fragment {
                stamp: st,
                text,
                loaded,
            },
        );
        true
    }

    /// Sets one object of the Kubernetes source under `origin` (unique per kind, namespace
    /// and name; objects sort by it); `None` removes it. Returns whether anything changed.
    pub fn set_object(&mut self, origin: &str, object: Option<serde_json::Value>) -> bool {
        let Some(object) = object else {
            return self.fragments.remove(origin).is_some();
        };
        let text = object.to_string();
        if self.fragments.get(origin).is_some_and(|f| f.text == text) {
            return false; // e.g. only `status` or `resourceVersion` moved… in the same text
        }
        let mut loaded = Loaded {
            default_namespace: self.options.namespace.clone(),
            ..Loaded::default()
        };
        load::load_object(crate::kubernetes::SOURCE_NAME, object, &mut loaded);
        self.fragments.insert(
            origin.to_owned(),
            Fragment {
                stamp: None,
                text,
                loaded,
            },
        );
        true
    }

    /// Replaces every object whose origin starts with `prefix` by `objects` (a Kubernetes
    /// relist of one kind). Returns whether anything changed.
    pub fn replace_objects(
        &mut self,
        prefix: &str,
        objects: BTreeMap<String, serde_json::Value>,
    ) -> bool {
        let stale: Vec<String> = self
            .fragments
            .keys()
            .filter(|k| k.starts_with(prefix) && !objects.contains_key(*k))
            .cloned()
            .collect();
        let mut changed = !stale.is_empty();
        for k in stale {
            self.fragments.remove(&k);
        }
        for (origin, object) in objects {
            changed |= self.set_object(&origin, Some(object));
        }
        changed
    }

    /// Every document of every origin, in origin order.
    pub fn inputs(&self) -> (Inputs, Vec<Skipped>, Vec<Problem>) {
        let mut inputs = Inputs::default();
        let mut skipped = Vec::new();
        let mut problems = Vec::new();
        for f in self.fragments.values() {
            let i = &f.loaded.inputs;
            inputs.protocols.extend(i.protocols.iter().cloned());
            inputs.routers.extend(i.routers.iter().cloned());
            inputs
                .service_entries
                .extend(i.service_entries.iter().cloned());
            inputs
                .destination_rules
                .extend(i.destination_rules.iter().cloned());
            inputs.dubbo_authz.extend(i.dubbo_authz.iter().cloned());
            inputs.meta_authz.extend(i.meta_authz.iter().cloned());
            inputs
                .traffic_policies
                .extend(i.traffic_policies.iter().cloned());
            inputs.gateways.extend(i.gateways.iter().cloned());
            inputs.telemetries.extend(i.telemetries.iter().cloned());
            inputs.meshes.extend(i.meshes.iter().cloned());
            inputs
                .rate_limit_configs
                .extend(i.rate_limit_configs.iter().cloned());
            inputs.workloads.extend(i.workloads.iter().cloned());
            skipped.extend(f.loaded.skipped.iter().cloned());
            problems.extend(f.loaded.problems.iter().cloned());
        }
        crate::workloads::resolve(&mut inputs);
        (inputs, skipped, problems)
    }

    /// Validates and translates the current origins and encodes the result, re-using
    /// `previous`'s encoding of unchanged resources.
    pub fn snapshot(
        &mut self,
        changed_at: Instant,
        previous: Option<&Snapshot>,
    ) -> Result<(Snapshot, Timings), Rejected> {
        let t = Instant::now();
        let (inputs, skipped, mut problems) = self.inputs();
        for s in &skipped {
            tracing::debug!(source = %s.source, what = %s.what, "skipped document of another kind");
        }
        problems.extend(crate::validate::validate(&inputs));
        if !problems.is_empty() {
            return Err(Rejected::Problems(problems));
        }
        let validated = t.elapsed();
        let resources = translate::translate_cached(&inputs, &self.options, &mut self.cache)
            .map_err(|e| Rejected::Fatal(e.0))?;
        let translated = t.elapsed();
        let snapshot =
            Snapshot::update(resources, changed_at, previous).map_err(Rejected::Fatal)?;
        let encoded = t.elapsed();
        // Limits change nothing Envoy receives: published here, whatever the xDS versions do.
        let limits = crate::ratelimit::limits::Limits::new(&inputs.rate_limit_configs);
        self.limits.send_if_modified(|old| {
            let changed = **old != limits;
            if changed {
                *old = Arc::new(limits);
            }
            changed
        });
        Ok((
            snapshot,
            Timings {
                validate_ms: ms(validated),
                translate_ms: ms(translated - validated),
                encode_ms: ms(encoded - translated),
                ports_translated: self.cache.translated,
            },
        ))
    }
}

/// Logs a rejected change; the served configuration does not move.
pub fn log_rejected(e: &Rejected) {
    match e {
        Rejected::Problems(ps) => {
            for p in ps {
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
        Rejected::Fatal(e) => {
            tracing::error!(error = %e, "rejected change; the last good configuration stays in force");
        }
    }
}

/// Runs the pipeline after a change first seen at `changed_at` and publishes the result into
/// `tx` when it is valid and differs from what is served.
pub fn publish(pipeline: &mut Pipeline, changed_at: Instant, tx: &watch::Sender<Arc<Snapshot>>) {
    let started = Instant::now();
    let previous = Arc::clone(&tx.borrow());
    match pipeline.snapshot(changed_at, Some(&previous)) {
        Ok((s, t)) => {
            if s.versions() == previous.versions() {
                tracing::debug!("change without effect on the served configuration");
                return;
            }
            // `translate_ms`: all the controller's work for the change (named as before).
            tracing::info!(
                versions = %s.versions(),
                translate_ms = ms(started.elapsed()),
                since_change_ms = ms(changed_at.elapsed()),
                validate_ms = t.validate_ms,
                translation_ms = t.translate_ms,
                ports_translated = t.ports_translated,
                encode_ms = t.encode_ms,
                "configuration updated"
            );
            tx.send_replace(Arc::new(s));
        }
        Err(e) => log_rejected(&e),
    }
}

/// How the watcher waits for a burst of file events to end: a file being written (opened
/// for writing, not closed yet) is waited for up to [`WRITE_WAIT`]; otherwise [`QUIET`]
/// without events ends the burst (an editor's save or `mv` is several events within
/// microseconds). [`MAX_BURST`] bounds the wait whatever happens.
const QUIET: Duration = Duration::from_millis(2);
const WRITE_WAIT: Duration = Duration::from_millis(50);
const MAX_BURST: Duration = Duration::from_millis(250);

/// Watches `dir` and publishes a new snapshot into `tx` after every valid change. Runs until
/// the watcher fails; returns why.
pub async fn watch_dir(
    dir: PathBuf,
    mut pipeline: Pipeline,
    tx: watch::Sender<Arc<Snapshot>>,
) -> Result<(), String> {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    use notify::Watcher;
    let (events_tx, mut events) = mpsc::unbounded_channel::<(Instant, notify::Event)>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            let _ = events_tx.send((Instant::now(), ev));
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;

    /// The files a burst touched, and those still open for writing.
    #[derive(Default)]
    struct Burst {
        first: Option<Instant>,
        touched: BTreeSet<PathBuf>,
        writing: BTreeSet<PathBuf>,
        /// The watcher lost events (queue overflow): look at every file.
        rescan: bool,
    }
    let note = |b: &mut Burst, at: Instant, ev: notify::Event| {
        if ev.need_rescan() {
            b.rescan = true;
        }
        for path in ev.paths {
            if !load::is_config_file(&path) {
                continue; // temporary files of an atomic write, swap files, other kinds
            }
            match ev.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                    b.writing.remove(&path);
                }
                EventKind::Access(_) => continue,
                EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => {
                    b.writing.insert(path.clone());
                }
                _ => {
                    b.writing.remove(&path);
                }
            }
            b.first.get_or_insert(at);
            b.touched.insert(path);
        }
    };

    while let Some((at, ev)) = events.recv().await {
        let mut burst = Burst::default();
        note(&mut burst, at, ev);
        let opened = Instant::now();
        loop {
            let wait = if burst.writing.is_empty() {
                QUIET
            } else {
                WRITE_WAIT
            };
            let until = (Instant::now() + wait).min(opened + MAX_BURST);
            tokio::select! {
                more = events.recv() => match more {
                    Some((at, ev)) => note(&mut burst, at, ev),
                    None => break,
                },
                _ = tokio::time::sleep_until(until.into()) => break,
            }
        }
        let Some(first) = burst.first.or(burst.rescan.then(Instant::now)) else {
            continue; // only files the loader does not read
        };
        let touched = (!burst.rescan).then_some(&burst.touched);
        match pipeline.refresh_dir(&dir, touched) {
            Ok(false) => tracing::debug!("files touched, content unchanged"),
            Ok(true) => publish(&mut pipeline, first, &tx),
            Err(e) => log_rejected(&Rejected::Fatal(e)),
        }
    }
    drop(watcher);
    Err("directory watcher stopped".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::tests::options;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("meltemi-src-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn service(i: usize) -> String {
        format!(
            "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {{name: svc{i}, namespace: s}}\nspec:\n  hosts: [svc{i}.s]\n  ports: [{{number: {}, name: tcp-metaprotocol-minirpc}}]\n  endpoints:\n  - {{address: 10.0.0.1, labels: {{version: v1}}}}\n  - {{address: 10.0.0.2, labels: {{version: v2}}}}\n---\napiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {{name: svc{i}, namespace: s}}\nspec:\n  host: svc{i}.s\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n",
            20000 + i
        )
    }

    fn router(i: usize, last: &str, weight: u32) -> String {
        let mut s = format!("apiVersion: metaprotocol.aeraki.io/v1alpha1\nkind: MetaRouter\nmetadata: {{name: svc{i}, namespace: s}}\nspec:\n  hosts: [svc{i}.s]\n  routes:\n");
        for r in 0..9 {
            s.push_str(&format!("  - match: {{attributes: {{method: {{exact: m{r}}}}}}}\n    route:\n    - {{destination: {{host: svc{i}.s, subset: v1}}, weight: {weight}}}\n    - {{destination: {{host: svc{i}.s, subset: v2}}, weight: 10}}\n"));
        }
        s.push_str(&format!(
            "  - route: [{{destination: {{host: svc{i}.s, subset: {last}}}}}]\n"
        ));
        s
    }

    fn ms_since(t: Instant) -> f64 {
        ms(t.elapsed())
    }

    /// 1,000 services × 10 routes from 2,001 files: the full load, then one MetaRouter file
    /// rewritten (the watcher names it), then a bad rewrite of it (rejected, naming file,
    /// resource and field; the pipeline keeps the good state for the next change).
    #[test]
    fn thousand_services_one_file_change() {
        let dir = temp_dir("thousand");
        std::fs::write(dir.join("protocol.yaml"), "apiVersion: metaprotocol.aeraki.io/v1alpha1\nkind: ApplicationProtocol\nmetadata: {name: minirpc}\nspec: {protocol: minirpc}\n").unwrap();
        for i in 0..1000 {
            std::fs::write(dir.join(format!("svc{i:04}.yaml")), service(i)).unwrap();
            std::fs::write(
                dir.join(format!("svc{i:04}-router.yaml")),
                router(i, "v1", 90),
            )
            .unwrap();
        }
        let mut p = Pipeline::new(options());
        let t = Instant::now();
        assert!(p.refresh_dir(&dir, None).unwrap());
        let loaded = ms_since(t);
        let (first, full) = p.snapshot(t, None).unwrap();
        let total = ms_since(t);
        assert_eq!(first.types[crate::proto::ROUTE].resources.len(), 1000);
        assert_eq!(full.ports_translated, 1000);

        let changed = dir.join("svc0500-router.yaml");
        std::fs::write(&changed, router(500, "v2", 90)).unwrap();
        let t = Instant::now();
        let touched: BTreeSet<PathBuf> = [changed.clone()].into();
        assert!(p.refresh_dir(&dir, Some(&touched)).unwrap());
        let reloaded = ms_since(t);
        let (second, one) = p.snapshot(t, Some(&first)).unwrap();
        let change = ms_since(t);
        assert_eq!(one.ports_translated, 1);
        let moved: Vec<&str> = second
            .types
            .iter()
            .filter(|(k, v)| first.types[*k].version != v.version)
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(moved, vec![crate::proto::ROUTE]);
        eprintln!(
            "1000 services x 10 routes, 2001 files: full load {loaded:.0} ms + validate {:.0} + translate {:.0} + encode {:.0} = {total:.0} ms; one MetaRouter file changed: read {reloaded:.1} ms + validate {:.1} + translate {:.1} ({} port) + encode {:.1} = {change:.1} ms",
            full.validate_ms, full.translate_ms, full.encode_ms, one.validate_ms, one.translate_ms, one.ports_translated, one.encode_ms
        );
        // Same inputs, fresh pipeline: same versions (replicas agree).
        let mut fresh = Pipeline::new(options());
        fresh.refresh_dir(&dir, None).unwrap();
        assert_eq!(
            fresh.snapshot(t, None).unwrap().0.versions(),
            second.versions()
        );

        std::fs::write(&changed, router(500, "v2", 50)).unwrap();
        assert!(p.refresh_dir(&dir, Some(&touched)).unwrap());
        let Err(Rejected::Problems(ps)) = p.snapshot(t, Some(&second)) else {
            panic!("weights 50 + 10 accepted");
        };
        let text = ps[0].to_string();
        assert!(
            text.contains("svc0500-router.yaml (document 1): MetaRouter s/svc500: field `spec.routes[0].route`: weights sum to 60"),
            "{text}"
        );
        std::fs::write(&changed, router(500, "v1", 90)).unwrap();
        p.refresh_dir(&dir, Some(&touched)).unwrap();
        let (back, _) = p.snapshot(t, Some(&second)).unwrap();
        assert_eq!(back.versions(), first.versions(), "back to the first state");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A file rewritten in place with the same length within the file system's timestamp
    /// granularity is still seen when the watcher names it; an untouched directory costs no
    /// parse.
    #[test]
    fn refresh_reads_named_files_and_skips_unchanged() {
        let dir = temp_dir("refresh");
        let file = dir.join("r.yaml");
        std::fs::write(&file, router(1, "v1", 90)).unwrap();
        let mut p = Pipeline::new(options());
        assert!(p.refresh_dir(&dir, None).unwrap());
        assert!(!p.refresh_dir(&dir, Some(&BTreeSet::new())).unwrap());
        std::fs::write(&file, router(1, "v2", 90)).unwrap();
        let touched: BTreeSet<PathBuf> = [file.clone()].into();
        assert!(p.refresh_dir(&dir, Some(&touched)).unwrap());
        assert!(
            p.inputs().0.routers[0].spec.routes[9].route[0]
                .destination
                .subset
                .as_deref()
                == Some("v2")
        );
        std::fs::remove_file(&file).unwrap();
        assert!(p.refresh_dir(&dir, Some(&touched)).unwrap());
        assert!(p.inputs().0.routers.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
