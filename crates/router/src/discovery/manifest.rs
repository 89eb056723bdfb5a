//! Workers from a JSON manifest, SGLang's gateway's file discovery (`--discovery-provider file
//! --discovery-file FILE`): `{"version": 1, "workers": [{"url": "http://gpu1:8000"}, ...]}`,
//! each worker with optional `worker_type` (`regular`, `prefill`, `decode`), `bootstrap_port`,
//! `model_id` (the one model it is routed for) and `id` (kept as its `id` label).
//!
//! The file may appear after start. It is watched and re-read every check interval; each read
//! is applied as a difference (workers that left are removed, their requests in flight finish;
//! new ones join and are asked for their models). A file that cannot be read or parsed keeps
//! the last good manifest in force, with a warning once per distinct problem.

use std::collections::{BTreeMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::{ManifestConfig, Origin, WorkerSpec, worker_from_json};
use crate::fleet::{Fleet, FleetEvent};
use crate::upstream::Upstream;

/// The manifest's one version.
const VERSION: u32 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    version: u32,
    workers: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    url: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    worker_type: Option<String>,
    #[serde(default)]
    bootstrap_port: Option<u16>,
    #[serde(default)]
    model_id: Option<String>,
    #[serde(default)]
    kv_connector: Option<serde_json::Value>,
    #[serde(default)]
    kv_role: Option<serde_json::Value>,
    #[serde(default)]
    kv_engine_id: Option<serde_json::Value>,
}

/// The workers a manifest's text lists, or why it cannot be used.
pub fn parse(text: &str, ranks: NonZeroU32, pd: bool) -> Result<Vec<WorkerSpec>, String> {
    let manifest: Manifest =
        serde_json::from_str(text).map_err(|e| format!("not a manifest: {e}"))?;
    if manifest.version != VERSION {
        return Err(format!(
            "unsupported version {}; this router reads version {VERSION}",
            manifest.version
        ));
    }
    let mut specs: Vec<WorkerSpec> = Vec::with_capacity(manifest.workers.len());
    for (i, entry) in manifest.workers.into_iter().enumerate() {
        let at = format!("workers[{i}]");
        if entry.kv_connector.is_some() || entry.kv_role.is_some() || entry.kv_engine_id.is_some() {
            return Err(format!(
                "{at}: kv_connector, kv_role and kv_engine_id are not read here: the KV \
                 connector is --kv-connector, and roles are worker_type"
            ));
        }
        let mut value = json!({ "url": entry.url });
        if let Some(role) = entry.worker_type {
            value["role"] = json!(role);
        }
        if let Some(port) = entry.bootstrap_port {
            value["bootstrap_port"] = json!(port);
        }
        if let Some(model) = entry.model_id {
            value["models"] = json!([model]);
        }
        if let Some(id) = entry.id {
            value["labels"] = json!({ "id": id });
        }
        let spec = worker_from_json(value, ranks, pd, &at).map_err(|e| e.to_string())?;
        if specs.iter().any(|s| s.url.text == spec.url.text) {
            return Err(format!("{at}: {} is listed twice", spec.url.text));
        }
        specs.push(WorkerSpec {
            origin: Origin::Manifest,
            ..spec
        });
    }
    Ok(specs)
}

/// The manifest's workers as last applied, and what has been warned about.
pub struct ManifestWatch {
    config: ManifestConfig,
    ranks: NonZeroU32,
    pd: bool,
    /// URLs of the configured workers: a manifest entry for one is ignored.
    statics: HashSet<String>,
    known: BTreeMap<String, WorkerSpec>,
    warned: Option<String>,
}

impl ManifestWatch {
    /// A watch of `config`'s file beside the configured workers `statics`.
    pub fn new(
        config: ManifestConfig,
        statics: &[WorkerSpec],
        ranks: NonZeroU32,
        pd: bool,
    ) -> Self {
        Self {
            config,
            ranks,
            pd,
            statics: statics.iter().map(|s| s.url.text.clone()).collect(),
            known: BTreeMap::new(),
            warned: None,
        }
    }

    /// The fleet changes that make the last applied manifest `read` (a file's text, or why it
    /// could not be read): none when it cannot be used.
    pub fn changes(&mut self, read: Result<String, String>) -> Vec<FleetEvent> {
        let specs = read.and_then(|text| parse(&text, self.ranks, self.pd));
        let specs = match specs {
            Ok(specs) => specs,
            Err(problem) => {
                if self.warned.as_ref() != Some(&problem) {
                    tracing::warn!(
                        file = %self.config.path.display(),
                        %problem,
                        workers = self.known.len(),
                        "discovery file unusable; keeping the last good manifest"
                    );
                    self.warned = Some(problem);
                }
                return Vec::new();
            }
        };
        self.warned = None;
        let wanted: BTreeMap<String, WorkerSpec> = specs
            .into_iter()
            .filter(|s| !self.statics.contains(&s.url.text))
            .map(|s| (s.url.text.clone(), s))
            .collect();
        let mut changes = Vec::new();
        for (url, spec) in &self.known {
            if wanted.get(url) != Some(spec) {
                changes.push(FleetEvent::Remove(url.clone()));
            }
        }
        for (url, spec) in &wanted {
            if self.known.get(url) != Some(spec) {
                changes.push(FleetEvent::Add(spec.clone()));
            }
        }
        self.known = wanted;
        changes
    }

    /// Read and apply the file now, on every change and every check interval, until aborted.
    pub fn spawn(
        mut self,
        fleet: Arc<Fleet>,
        upstream: Upstream,
        timeout: Duration,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let changed = Arc::new(Notify::new());
            let _watcher = crate::reload::watch_file(
                &self.config.path,
                Arc::clone(&changed),
                "cannot watch the discovery file; it is re-read every --discovery-check-interval-secs",
            );
            let mut admissions = JoinSet::new();
            loop {
                while admissions.try_join_next().is_some() {}
                let read = match tokio::fs::read_to_string(&self.config.path).await {
                    Ok(text) => Ok(text),
                    // Not there yet, or gone: nothing to apply either way.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.known.is_empty() => {
                        Ok(r#"{"version": 1, "workers": []}"#.to_owned())
                    }
                    Err(e) => Err(e.to_string()),
                };
                for change in self.changes(read) {
                    let joined = match &change {
                        FleetEvent::Add(spec) => Some(spec.url.text.clone()),
                        _ => None,
                    };
                    if let Some(url) = &joined {
                        tracing::info!(worker = %url, "discovery file: worker joins");
                    } else if let FleetEvent::Remove(url) = &change {
                        tracing::info!(worker = %url, "discovery file: worker leaves");
                    }
                    fleet.apply(change).await;
                    if let Some(url) = joined {
                        admissions.spawn(super::admit(
                            Arc::clone(&fleet),
                            upstream.clone(),
                            url,
                            timeout,
                        ));
                    }
                }
                tokio::select! {
                    () = changed.notified() => tokio::time::sleep(crate::reload::SETTLE).await,
                    () = tokio::time::sleep(self.config.interval) => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch() -> ManifestWatch {
        let config = ManifestConfig {
            path: "workers.json".into(),
            interval: Duration::from_secs(30),
        };
        let statics = [WorkerSpec::from(
            crate::config::WorkerUrl::parse("--worker-urls", "http://static:1").unwrap(),
        )];
        ManifestWatch::new(config, &statics, NonZeroU32::MIN, true)
    }

    fn urls(changes: &[FleetEvent]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                FleetEvent::Add(spec) => format!("+{}", spec.url.text),
                FleetEvent::Remove(url) => format!("-{url}"),
                FleetEvent::Models { url, .. } => format!("?{url}"),
            })
            .collect()
    }

    #[test]
    fn each_read_applies_as_a_difference_and_a_bad_one_keeps_the_last() {
        let mut w = watch();
        let one =
            r#"{"version": 1, "workers": [{"url": "http://a:1"}, {"url": "http://static:1"}]}"#;
        assert_eq!(urls(&w.changes(Ok(one.into()))), ["+http://a:1"]);
        assert!(w.changes(Ok(one.into())).is_empty(), "unchanged");
        let two = r#"{"version": 1, "workers": [{"url": "http://a:1", "worker_type": "prefill", "bootstrap_port": 8998},
                                                 {"url": "http://b:1", "model_id": "m", "id": "gpu-b"}]}"#;
        let changes = w.changes(Ok(two.into()));
        assert_eq!(
            urls(&changes),
            ["-http://a:1", "+http://a:1", "+http://b:1"]
        );
        let FleetEvent::Add(b) = &changes[2] else {
            unreachable!()
        };
        assert_eq!(b.origin, Origin::Manifest);
        assert_eq!(b.models.as_deref(), Some(&["m".to_owned()][..]));
        assert_eq!(b.labels.get("id").map(String::as_str), Some("gpu-b"));
        for bad in [
            "{not json",
            r#"{"version": 2, "workers": []}"#,
            r#"{"version": 1, "workers": [{"url": "http://c:1", "colour": "red"}]}"#,
            r#"{"version": 1, "workers": [{"url": "http://c:1", "kv_role": "kv_producer"}]}"#,
            r#"{"version": 1, "workers": [{"url": "c:1"}]}"#,
        ] {
            assert!(w.changes(Ok(bad.into())).is_empty(), "{bad}");
        }
        assert!(w.changes(Err("permission denied".into())).is_empty());
        assert_eq!(
            urls(&w.changes(Ok(r#"{"version": 1, "workers": []}"#.into()))),
            ["-http://a:1", "-http://b:1"]
        );
    }
}
