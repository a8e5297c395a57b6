//! Directory → typed inputs. Every `*.yaml`, `*.yml` and `*.json` file (not recursing, sorted by
//! name so that results never depend on the file system's order) may hold many documents.
//! Documents of other kinds (Deployments, Services, …) are skipped and listed, never an error;
//! a document of a known kind that does not fit its schema is an error naming the file, the
//! resource and the field.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{
    port_protocol, Inputs, KubeServiceSpec, Object, ObjectMeta, Source, AERAKI_API,
};

/// One problem found while loading or validating, in terms a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the resource was read from (file and document).
    pub source: Source,
    /// `Kind namespace/name`, or empty when the document could not be read at all.
    pub resource: String,
    /// Field path (`spec.routes[1].route[0].weight`), or empty.
    pub field: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.source)?;
        if !self.resource.is_empty() {
            write!(f, ": {}", self.resource)?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A document that was not one of the kinds the controller reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Where it was.
    pub source: Source,
    /// `apiVersion kind namespace/name` as far as known.
    pub what: String,
}

/// The result of loading a directory.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Namespace given to resources without one (`kubectl apply -n` semantics; `default`).
    pub default_namespace: Option<String>,
    /// The resources read.
    pub inputs: Inputs,
    /// Other documents, skipped.
    pub skipped: Vec<Skipped>,
    /// Files or documents that could not be read.
    pub problems: Vec<Problem>,
}

/// Whether the loader reads `path` (by name only): `*.yaml`, `*.yml`, `*.json`, not hidden.
pub fn is_config_file(path: &Path) -> bool {
    let wanted = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
    // Editors write `.name.swp`, `name~`, tools `.name.tmp` before a rename: hidden files are
    // not configuration.
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'));
    wanted && !hidden
}

/// The files the loader reads from `dir`, sorted.
pub fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if is_config_file(&path) && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Loads every file of `dir`. An unreadable directory is the only hard error.
pub fn load_dir(dir: &Path, default_namespace: Option<&str>) -> Result<Loaded, String> {
    let paths = files(dir).map_err(|e| format!("cannot read directory {}: {e}", dir.display()))?;
    let mut loaded = Loaded {
        default_namespace: default_namespace.map(str::to_owned),
        ..Loaded::default()
    };
    for path in paths {
        let file = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => load_text(&file, &text, &mut loaded),
            Err(e) => loaded.problems.push(Problem {
                source: Source { file, document: 0 },
                resource: String::new(),
                field: String::new(),
                message: format!("cannot read file: {e}"),
            }),
        }
    }
    Ok(loaded)
}

/// Parses one file's text (YAML, which includes JSON) into `loaded`.
pub fn load_text(file: &str, text: &str, loaded: &mut Loaded) {
    let docs: Vec<Value> = match serde_saphyr::from_multiple(text) {
        Ok(docs) => docs,
        Err(e) => {
            loaded.problems.push(Problem {
                source: Source {
                    file: file.to_owned(),
                    document: 0,
                },
                resource: String::new(),
                field: String::new(),
                message: format!("not valid YAML: {e}"),
            });
            return;
        }
    };
    for (i, doc) in docs.into_iter().enumerate() {
        let source = Source {
            file: file.to_owned(),
            document: i + 1,
        };
        load_document(source, doc, loaded);
    }
}

/// Loads one object that did not come from a file (the Kubernetes source): problems name
/// `origin`, the resource (`Kind namespace/name`) and the field.
pub fn load_object(origin: &str, doc: Value, loaded: &mut Loaded) {
    let source = Source {
        file: origin.to_owned(),
        document: 0,
    };
    load_document(source, doc, loaded);
}

fn load_document(source: Source, doc: Value, loaded: &mut Loaded) {
    if doc.is_null() {
        return; // an empty document (`---` at the end of a file)
    }
    // A `List` (what `kubectl get -o yaml` writes) holds the documents in `items`.
    if doc["kind"] == "List" {
        if let Some(items) = doc["items"].as_array() {
            for item in items {
                load_document(source.clone(), item.clone(), loaded);
            }
        }
        return;
    }
    let api = doc["apiVersion"].as_str().unwrap_or("").to_owned();
    let kind = doc["kind"].as_str().unwrap_or("").to_owned();
    let mut meta: ObjectMeta = match doc.get("metadata") {
        Some(m) => match serde_json::from_value(m.clone()) {
            Ok(meta) => meta,
            Err(e) => {
                loaded.problems.push(Problem {
                    source,
                    resource: kind,
                    field: "metadata".into(),
                    message: e.to_string(),
                });
                return;
            }
        },
        None => ObjectMeta::default(),
    };
    if meta.namespace.is_none() {
        meta.namespace = loaded.default_namespace.clone();
    }
    let group = api.split('/').next().unwrap_or("");
    let spec = doc.get("spec").cloned().unwrap_or(Value::Null);
    let inputs = &mut loaded.inputs;
    let problems = &mut loaded.problems;
    match (group, kind.as_str()) {
        ("metaprotocol.aeraki.io", "ApplicationProtocol") => push(
            &mut inputs.protocols,
            &api,
            &kind,
            meta,
            spec,
            source,
            problems,
        ),
        ("metaprotocol.aeraki.io", "MetaRouter") => push(
            &mut inputs.routers,
            &api,
            &kind,
            meta,
            spec,
            source,
            problems,
        ),
        ("networking.istio.io", "ServiceEntry") => push(
            &mut inputs.service_entries,
            &api,
            &kind,
            meta,
            spec,
            source,
            problems,
        ),
        ("networking.istio.io", "DestinationRule") => push(
            &mut inputs.destination_rules,
            &api,
            &kind,
            meta,
            spec,
            source,
            problems,
        ),
        _ if crate::authz::kind_of(&api, &kind).is_some() => {
            match crate::authz::kind_of(&api, &kind) {
                Some(Ok(crate::authz::Which::Dubbo)) => push(
                    &mut inputs.dubbo_authz,
                    &api,
                    &kind,
                    meta,
                    spec,
                    source,
                    problems,
                ),
                Some(Ok(crate::authz::Which::Meta)) => push(
                    &mut inputs.meta_authz,
                    &api,
                    &kind,
                    meta,
                    spec,
                    source,
                    problems,
                ),
                Some(Err(message)) => problems.push(Problem {
                    resource: format!(
                        "{kind} {}/{}",
                        meta.namespace.as_deref().unwrap_or("default"),
                        meta.name
                    ),
                    source,
                    field: "apiVersion".into(),
                    message,
                }),
                None => {}
            }
        }
        ("meltemi.io", crate::policy::KIND) => push(
            &mut inputs.traffic_policies,
            &api,
            &kind,
            meta,
            spec,
            source,
            problems,
        ),
        ("meltemi.io", crate::ratelimit::KIND) => push(
            &mut inputs.rate_limit_configs,
            &api,
            &kind,
            meta,
            spec,
            source,
            problems,
        ),
        ("networking.istio.io", "Gateway") => push(
            &mut inputs.gateways,
            &api,
            &kind,
            meta,
            spec,
            source,
            problems,
        ),
        ("telemetry.istio.io", "Telemetry") => push(
            &mut inputs.telemetries,
            &api,
            &kind,
            meta,
            spec,
            source,
            problems,
        ),
        // The mesh configuration istiod reads (its `extensionProviders`); other ConfigMaps
        // are skipped.
        ("v1", "ConfigMap") if meta.name == "istio" => {
            crate::telemetry::load_mesh(&doc, meta, source, &mut inputs.meshes, problems)
        }
        ("v1", "Pod") => {
            crate::workloads::load_pod(&doc, meta, source, &mut inputs.workloads, problems)
        }
        ("networking.istio.io", "WorkloadEntry") => {
            crate::workloads::load_entry(&doc, meta, source, &mut inputs.workloads, problems)
        }
        ("v1", "Service") => {
            let mut services = Vec::new();
            push::<KubeServiceSpec>(&mut services, &api, &kind, meta, spec, source, problems);
            for svc in services {
                let svc = std::sync::Arc::unwrap_or_clone(svc);
                let ns = svc.namespace().to_owned();
                let spec = svc.spec.to_service_entry(&svc.meta.name, &ns);
                // A Service without Meltemi ports is not ours: list it as skipped.
                if spec.ports.iter().any(|p| port_protocol(&p.name).is_some()) {
                    inputs.service_entries.push(std::sync::Arc::new(Object {
                        meta: svc.meta,
                        spec,
                        source: svc.source,
                    }));
                } else {
                    loaded.skipped.push(Skipped {
                        source: svc.source,
                        what: format!(
                            "{api} {kind} {ns}/{} (no tcp-metaprotocol-* port)",
                            svc.meta.name
                        ),
                    });
                }
            }
        }
        _ => loaded.skipped.push(Skipped {
            source,
            what: format!(
                "{api} {kind} {}/{}",
                meta.namespace.as_deref().unwrap_or("default"),
                meta.name
            ),
        }),
    }
}

fn push<T: DeserializeOwned + Default>(
    out: &mut Vec<crate::model::Shared<T>>,
    api: &str,
    kind: &str,
    meta: ObjectMeta,
    spec: Value,
    source: Source,
    problems: &mut Vec<Problem>,
) {
    let resource = format!(
        "{kind} {}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name
    );
    if api.starts_with("meltemi.io/") && api != crate::policy::MELTEMI_API {
        problems.push(Problem {
            source,
            resource,
            field: "apiVersion".into(),
            message: format!("{api} is not supported; use {}", crate::policy::MELTEMI_API),
        });
        return;
    }
    if api.starts_with("metaprotocol.aeraki.io/") && api != AERAKI_API {
        problems.push(Problem {
            source,
            resource,
            field: "apiVersion".into(),
            message: format!("{api} is not supported; use {AERAKI_API}"),
        });
        return;
    }
    if meta.name.is_empty() {
        problems.push(Problem {
            source,
            resource,
            field: "metadata.name".into(),
            message: "missing".into(),
        });
        return;
    }
    let spec: T = if spec.is_null() {
        T::default()
    } else {
        match serde_path_to_error::deserialize(spec) {
            Ok(spec) => spec,
            Err(e) => {
                problems.push(Problem {
                    source,
                    resource,
                    field: format!("spec.{}", e.path()),
                    message: e.inner().to_string(),
                });
                return;
            }
        }
    };
    out.push(std::sync::Arc::new(Object { meta, spec, source }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_documents_other_kinds_skipped_and_field_errors() {
        let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {name: r, namespace: meta}
spec:
  hosts: [a.svc]
  routes:
  - route:
    - destination: {host: a.svc}
      weight: heavy
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: a}
spec:
  hosts: [a.svc]
---
"#;
        let mut loaded = Loaded::default();
        load_text("x.yaml", text, &mut loaded);
        assert_eq!(loaded.skipped.len(), 1);
        assert!(loaded.skipped[0].what.contains("Deployment default/web"));
        assert_eq!(loaded.inputs.service_entries.len(), 1);
        assert_eq!(loaded.problems.len(), 1, "{:?}", loaded.problems);
        let p = loaded.problems[0].to_string();
        assert!(
            p.starts_with("x.yaml (document 2): MetaRouter meta/r"),
            "{p}"
        );
        assert!(p.contains("spec.routes[0].route[0].weight"), "{p}");
    }

    #[test]
    fn a_typo_in_a_metarouter_is_an_error_naming_the_field() {
        let text = "apiVersion: metaprotocol.aeraki.io/v1alpha1\nkind: MetaRouter\nmetadata: {name: r}\nspec:\n  hosts: [a]\n  exportTo: ['*']\n  routes:\n  - route:\n    - destination: {host: a, subsets: v1}\n";
        let mut loaded = Loaded::default();
        load_text("t.yaml", text, &mut loaded);
        assert_eq!(loaded.problems.len(), 1, "{:?}", loaded.problems);
        let p = loaded.problems[0].to_string();
        assert!(
            p.contains("MetaRouter default/r: field `spec.routes[0].route[0].destination.subsets`"),
            "{p}"
        );
        assert!(p.contains("unknown field"), "{p}");
    }

    #[test]
    fn bad_yaml_names_the_file() {
        let mut loaded = Loaded::default();
        load_text("bad.yaml", "a: [\n", &mut loaded);
        assert_eq!(loaded.problems.len(), 1);
        assert!(loaded.problems[0].to_string().starts_with("bad.yaml"));
    }
}
