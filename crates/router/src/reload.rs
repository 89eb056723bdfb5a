//! Live configuration: the config file is re-read when it changes (watched), every
//! `config_reload_interval` (a fallback for file systems that do not report changes), and on
//! demand (SIGHUP). A valid file's difference is applied while requests flow:
//! - workers it adds join (and are asked for their models at once); workers it removes get no
//!   new requests while their in-flight ones finish; a worker whose entry changed is replaced;
//!   workers added by the admin API or discovered are left alone;
//! - settings read per request (timeouts, retries, breakers, health probing, headers, payload
//!   limit, admin key, client API keys (the keys file is read again), validation URLs, the
//!   workers' key) take effect at once; settings fixed at start (listen addresses, policies,
//!   P/D mode, discovery, admission, scraping, log settings, CORS origins) keep their running
//!   value and a warning says a restart is needed.
//!
//! An invalid file changes nothing: the error is logged and counted
//! (`vllm_router_config_reloads_total{cause="rejected"}`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{Mutex, Notify};
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::{Config, ConfigError, Origin, Sources, WorkerSpec, fingerprint};
use crate::fleet::{self, FleetEvent};

/// Time given to a burst of file events (an editor's write, a ConfigMap's swap) to settle
/// before the file is read.
pub(crate) const SETTLE: Duration = Duration::from_millis(150);

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Change {
    /// Workers that joined, by URL.
    pub added: Vec<String>,
    /// Workers that left, by URL.
    pub removed: Vec<String>,
    /// Workers whose entry changed and were replaced, by URL.
    pub replaced: Vec<String>,
    /// Settings that changed in the file but keep their running value until a restart.
    pub needs_restart: Vec<&'static str>,
}

/// The outcome of one reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The file gives the configuration already in force.
    Unchanged,
    /// The difference was applied.
    Applied(Change),
}

/// Re-reads the configuration and applies its difference to a running router.
#[derive(Debug)]
pub struct Reloader {
    app: Arc<App>,
    sources: Sources,
    /// Serialises reloads; holds the hash of the file text last read.
    last_text: Mutex<Option<u64>>,
    wake: Notify,
}

impl Reloader {
    /// A reloader of `app` from `sources` (the flags and environment of the start, and the file
    /// they name), whose configuration was loaded from the file text of fingerprint `loaded`
    /// ([`Sources::load_versioned`]).
    pub fn new(app: Arc<App>, sources: Sources, loaded: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            app,
            sources,
            last_text: Mutex::new(loaded),
            wake: Notify::new(),
        })
    }

    /// Watch the config file and re-read it on change and every reload interval, until the
    /// task is aborted. Without a file, the task only waits for [`Reloader::trigger`].
    pub fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.run(true).await })
    }

    /// [`Reloader::spawn`] without watching: the file is re-read every reload interval only
    /// (and on [`Reloader::trigger`]), as the TOML router does unless `run --reload` asks.
    pub fn spawn_polling(self: &Arc<Self>) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.run(false).await })
    }

    /// Ask for a reload from outside (SIGHUP).
    pub fn trigger(&self) {
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>, watching: bool) {
        let changed = Arc::new(Notify::new());
        let _watcher = self
            .sources
            .file()
            .filter(|_| watching)
            .and_then(|f| watch(f, Arc::clone(&changed)));
        loop {
            let poll = self
                .app
                .config()
                .config_reload_interval
                .unwrap_or(Duration::from_secs(24 * 3600));
            let forced = tokio::select! {
                () = self.wake.notified() => true,
                () = changed.notified() => {
                    tokio::time::sleep(SETTLE).await;
                    false
                }
                () = tokio::time::sleep(poll) => false,
            };
            // Without a file only SIGHUP reloads: it re-reads the keys file.
            if self.sources.file().is_none() && !forced {
                continue;
            }
            let _ = self.reload_if(forced).await;
        }
    }

    /// Re-read the configuration and apply it, whether or not the file changed.
    pub async fn reload(&self) -> Result<Outcome, ConfigError> {
        self.reload_if(true).await
    }

    /// Re-read and apply; unless `forced`, only when the file's text changed since the last
    /// read.
    async fn reload_if(&self, forced: bool) -> Result<Outcome, ConfigError> {
        let mut last = self.last_text.lock().await;
        let metrics = &self.app.metrics;
        // Read once: the text compared is the text applied.
        let text = self
            .sources
            .file()
            .map(|path| (path, std::fs::read_to_string(path)));
        let now = match &text {
            Some((_, Ok(text))) => Some(fingerprint(text)),
            _ => None,
        };
        if !forced && now == *last {
            return Ok(Outcome::Unchanged);
        }
        *last = now;
        let next = match text {
            Some((path, Ok(text))) => self.sources.load_text(path, &text),
            _ => self.sources.load(),
        };
        let next = match next {
            Ok(next) => next,
            Err(error) => {
                metrics.config_reload("rejected");
                tracing::error!(%error, "config reload rejected; the running configuration stays");
                return Err(error);
            }
        };
        let outcome = self.apply(next).await;
        match &outcome {
            Outcome::Unchanged => metrics.config_reload("unchanged"),
            Outcome::Applied(change) => {
                metrics.config_reload("applied");
                tracing::info!(
                    added = ?change.added,
                    removed = ?change.removed,
                    replaced = ?change.replaced,
                    "config reloaded"
                );
                if !change.needs_restart.is_empty() {
                    tracing::warn!(
                        settings = ?change.needs_restart,
                        "these settings changed but take effect only at restart"
                    );
                }
            }
        }
        Ok(outcome)
    }

    async fn apply(&self, mut next: Config) -> Outcome {
        let running = self.app.config().clone();
        let needs_restart = keep_fixed(&mut next, &running);
        if next == *running {
            return Outcome::Unchanged;
        }
        // Said once: a warning the running configuration already gave is not repeated.
        for warning in next
            .warnings
            .iter()
            .filter(|w| !running.warnings.contains(w))
        {
            tracing::warn!("{warning}");
        }
        let mut change = Change {
            needs_restart,
            ..Change::default()
        };
        let before = |url: &str| running.workers.iter().find(|w| w.url.text == url);
        let after = |url: &str| next.workers.iter().find(|w| w.url.text == url);
        let joining: Vec<WorkerSpec> = next
            .workers
            .iter()
            .filter(|w| before(&w.url.text) != Some(*w))
            .cloned()
            .collect();
        let leaving: Vec<String> = running
            .workers
            .iter()
            .filter(|w| after(&w.url.text).is_none())
            .map(|w| w.url.text.clone())
            .collect();
        let fleet = &self.app.fleet;
        // Before workers are admitted: their model lists are asked with it.
        self.app
            .upstream
            .set_worker_key(next.worker_api_key.as_ref(), next.admin.key_to_added);
        // New and changed workers first, so the fleet never shrinks more than it must.
        for spec in joining {
            let url = spec.url.text.clone();
            if before(&url).is_some() {
                if !self.ours(&url) {
                    continue;
                }
                fleet.apply(FleetEvent::Remove(url.clone())).await;
                change.replaced.push(url.clone());
            } else {
                change.added.push(url.clone());
            }
            fleet.apply(FleetEvent::Add(spec)).await;
            fleet::admit_url(fleet, &self.app.upstream, &url, next.health.timeout).await;
        }
        for url in leaving {
            if self.ours(&url) {
                fleet.apply(FleetEvent::Remove(url.clone())).await;
                change.removed.push(url);
            }
        }
        self.app.live_config().store(Arc::new(next));
        Outcome::Applied(change)
    }

    /// Whether the fleet's worker at `url` is the configuration's (not the admin API's or a
    /// discovery's, which a reload leaves alone).
    fn ours(&self, url: &str) -> bool {
        self.app
            .fleet
            .snapshot()
            .server(url)
            .is_some_and(|ranks| ranks[0].worker.spec().origin == Origin::Config)
    }
}

/// Give `next` the running value of every setting fixed at start; the names of those that
/// differ.
fn keep_fixed(next: &mut Config, running: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($field:ident).+ => $name:literal) => {
            if next.$($field).+ != running.$($field).+ {
                changed.push($name);
                next.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    keep!(host => "host");
    keep!(port => "port");
    keep!(metrics_listen => "prometheus_host/prometheus_port");
    keep!(admin.listen => "admin_host/admin_port");
    keep!(listener => "listener limits");
    keep!(policy => "policy");
    keep!(policy_config => "policy settings");
    keep!(pd => "P/D settings");
    keep!(service_discovery => "service discovery");
    keep!(admission => "admission control");
    keep!(retry.budget_ratio => "retry_budget_ratio");
    keep!(retry.budget_min_per_sec => "retry_budget_min_per_sec");
    keep!(timeouts.connect => "connect_timeout_secs");
    keep!(load_scrape_interval => "load_scrape_interval_ms");
    keep!(log => "log settings");
    keep!(otlp_traces_endpoint => "otlp_traces_endpoint");
    keep!(cors => "cors_allowed_origins");
    next.config_file.clone_from(&running.config_file);
    next.check_only = running.check_only;
    changed
}

/// Whether an event on `path` may concern the config file named `name`: the file itself, or
/// a Kubernetes ConfigMap's `..data` link and timestamped directories swapped under it.
fn concerns(path: &Path, name: Option<&std::ffi::OsStr>) -> bool {
    match path.file_name() {
        Some(file) => Some(file) == name || file.as_encoded_bytes().starts_with(b".."),
        None => false,
    }
}

/// Whether a file event may change what the file says: not the router's own reads.
fn is_change(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Any
            | EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Remove(_)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

/// Watch the directory of `file` (editors and ConfigMaps replace files rather than write
/// them) and wake `changed` on any event there. `None`, with a warning, when the platform
/// cannot watch: polling still reloads.
fn watch(file: &Path, changed: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    watch_file(
        file,
        changed,
        "cannot watch the config file; it is re-read every config_reload_interval_secs",
    )
}

/// Wake `changed` on every change of `file`, as the config file is watched (see [`watch`]);
/// `unwatched` is the warning given when the platform cannot watch it.
pub(crate) fn watch_file(
    file: &Path,
    changed: Arc<Notify>,
    unwatched: &'static str,
) -> Option<notify::RecommendedWatcher> {
    let dir: PathBuf = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = file.file_name().map(ToOwned::to_owned);
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && is_change(&event.kind)
            && event.paths.iter().any(|p| concerns(p, name.as_deref()))
        {
            tracing::trace!(kind = ?event.kind, paths = ?event.paths, "config file event");
            changed.notify_one();
        }
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match watcher {
        Ok(w) => Some(w),
        Err(error) => {
            tracing::warn!(%error, dir = %dir.display(), "{unwatched}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};

    use super::*;

    #[test]
    fn only_the_file_and_configmap_swaps_concern_it() {
        let name = Some(std::ffi::OsStr::new("router.toml"));
        assert!(concerns(Path::new("/etc/r/router.toml"), name));
        assert!(concerns(Path::new("/etc/r/..data"), name));
        assert!(concerns(Path::new("/etc/r/..2026_11_21_20_00_00.1"), name));
        assert!(!concerns(Path::new("/etc/r/router.log"), name));
        assert!(!concerns(Path::new("/etc/r/.router.toml.swp"), name));
    }

    #[test]
    fn reads_of_the_file_are_not_changes() {
        assert!(!is_change(&EventKind::Access(AccessKind::Read)));
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_change(&EventKind::Modify(ModifyKind::Any)));
        assert!(is_change(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(is_change(&EventKind::Create(CreateKind::File)));
        assert!(is_change(&EventKind::Remove(RemoveKind::File)));
    }
}
