//! The config file reloaded while requests flow: workers join and leave without a failed
//! request, changed settings apply, an invalid file is kept out.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use vllm_router::config::Sources;
use vllm_router::reload::Outcome;
use vllm_router::server::RouterHandle;
use vllm_sim::{SimConfig, SimServer};

use crate::support::*;

/// A config file in a directory of its own, removed when dropped.
pub struct ConfigFile {
    dir: PathBuf,
    pub path: PathBuf,
}

impl ConfigFile {
    pub fn new(text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vllm-router-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("router.toml");
        let file = Self { dir, path };
        file.write(text);
        file
    }

    /// Replace the file the way editors and ConfigMaps do: write aside, then rename over.
    pub fn write(&self, text: &str) {
        let aside = self.dir.join(".router.toml.tmp");
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, &self.path).unwrap();
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const HEAD: &str = r#"
policy = "round_robin"
prometheus_port = 0
worker_startup_timeout_secs = 5
health_check_interval_secs = 1
config_reload_interval_secs = 1
"#;

fn file_with(extra: &str, workers: &[&SimServer]) -> String {
    let mut text = format!("{HEAD}{extra}\n");
    for w in workers {
        text.push_str(&format!("[[workers]]\nurl = \"{}\"\n", w.url()));
    }
    text
}

async fn router_from(file: &ConfigFile) -> RouterHandle {
    let sources = Sources::from_argv(["--config", file.path.to_str().unwrap()], |_| None).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    RouterHandle::spawn_with(listener, sources).await.unwrap()
}

async fn worker_urls(router: &RouterHandle) -> Vec<(String, bool)> {
    let list = get(&format!("{}/workers", router.url())).await.json();
    list["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["url"].as_str().unwrap().to_owned(),
                w["healthy"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Clients sending requests, streamed and not, until told to stop; failures counted.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let tasks = (0..clients)
            .map(|i| {
                let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
                let url = format!("{url}/v1/chat/completions");
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let reply = post_json(&url, chat(MODEL, (i + n) % 2 == 0)).await;
                        let ok = reply.status == 200
                            && !String::from_utf8_lossy(&reply.body).contains("\"error\"");
                        if !ok {
                            eprintln!("failed: {} {:?}", reply.status, reply.body);
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                    }
                })
            })
            .collect();
        Self {
            stop,
            sent,
            failed,
            tasks,
        }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn slowish() -> SimConfig {
    SimConfig {
        itl: Duration::from_millis(5),
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn workers_join_and_leave_under_load_without_a_failed_request() {
    let workers = sims([slowish(), slowish(), slowish()]).await;
    let [a, b, c] = [&workers[0], &workers[1], &workers[2]];
    let file = ConfigFile::new(&file_with("", &[a, b]));
    let router = router_from(&file).await;
    // A's own count of requests in flight, which the router keeps after A leaves.
    let a_worker = router
        .app()
        .fleet
        .snapshot()
        .members()
        .iter()
        .find(|m| m.worker.url() == a.url())
        .expect("A is in the fleet")
        .worker
        .clone();
    let load = Load::start(&router.url(), 6);
    // Requests flow to both workers before the file changes.
    eventually(Duration::from_secs(10), || {
        (load.sent.load(Ordering::Relaxed) >= 20
            && !a.records().is_empty()
            && !b.records().is_empty())
        .then_some(())
    })
    .await;

    // A leaves and C joins, picked up by watching the file.
    file.write(&file_with("", &[b, c]));
    let want = vec![(b.url(), true), (c.url(), true)];
    let mut tries = 0;
    while worker_urls(&router).await != want {
        tries += 1;
        assert!(
            tries < 100,
            "reload not applied: {:?}",
            worker_urls(&router).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A's in-flight requests finish; then it gets no more while C (taking turns with B)
    // serves twenty more.
    eventually(Duration::from_secs(10), || {
        (a_worker.in_flight() == 0).then_some(())
    })
    .await;
    let a_served = a.records().len();
    let c_before = c.records().len();
    eventually(Duration::from_secs(10), || {
        (c.records().len() >= c_before + 20).then_some(())
    })
    .await;
    let (sent, failed) = load.finish().await;
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the reload"
    );
    assert_eq!(
        a.records().len(),
        a_served,
        "a removed worker got new requests"
    );
    assert!(
        c.records().len() > c_before,
        "the new worker got no requests"
    );
    assert!(sent > 50, "too little load to mean anything: {sent}");
}

#[tokio::test]
async fn an_invalid_file_is_kept_out_and_counted() {
    let workers = fast_sims(2).await;
    let file = ConfigFile::new(&file_with("", &[&workers[0]]));
    let router = router_from(&file).await;
    let reloader = router.reloader().unwrap();
    let load = Load::start(&router.url(), 2);

    file.write(&file_with(
        "cache_threshold = 7",
        &[&workers[0], &workers[1]],
    ));
    let error = reloader.reload().await.unwrap_err().to_string();
    assert!(
        error.contains("'cache_threshold' in") && error.contains("'7'"),
        "{error}"
    );
    file.write("this is [not toml");
    assert!(reloader.reload().await.is_err());
    assert_eq!(worker_urls(&router).await, vec![(workers[0].url(), true)]);
    let metrics = router.app().render_metrics();
    assert!(
        metrics.contains("vllm_router_config_reloads_total{cause=\"rejected\"} 2"),
        "{metrics}"
    );

    // Fixed, it applies: the worker joins and a per-request setting changes at once.
    file.write(&file_with(
        "retry_max_retries = 1",
        &[&workers[0], &workers[1]],
    ));
    let Outcome::Applied(change) = reloader.reload().await.unwrap() else {
        panic!("nothing applied")
    };
    assert_eq!(change.added, vec![workers[1].url()]);
    assert_eq!(router.app().config().retry.max_retries, 1);
    let (sent, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} of {sent} failed");
}

#[tokio::test]
async fn settings_fixed_at_start_wait_for_a_restart_and_entries_are_replaced() {
    let workers = fast_sims(1).await;
    let file = ConfigFile::new(&file_with("", &[&workers[0]]));
    let router = router_from(&file).await;
    let reloader = router.reloader().unwrap();
    assert_eq!(reloader.reload().await.unwrap(), Outcome::Unchanged);

    let text = file_with("", &[&workers[0]])
        .replace("round_robin", "random")
        .replace(
            &format!("url = \"{}\"", workers[0].url()),
            &format!(
                "url = \"{}\"\nweight = 4\nlabels = {{ zone = \"b\" }}",
                workers[0].url()
            ),
        );
    file.write(&text);
    let Outcome::Applied(change) = reloader.reload().await.unwrap() else {
        panic!("nothing applied")
    };
    assert_eq!(change.needs_restart, vec!["policy"]);
    assert_eq!(change.replaced, vec![workers[0].url()]);
    assert_eq!(router.app().policy.name(), "round_robin");
    let list = get(&format!("{}/workers", router.url())).await.json();
    let w = &list["workers"][0];
    assert_eq!(
        (w["weight"].clone(), w["labels"]["zone"].clone()),
        (json!(4), json!("b"))
    );
    assert_eq!(w["healthy"], true, "a replaced worker is admitted at once");
}

#[tokio::test]
async fn workers_added_by_the_admin_api_survive_a_reload() {
    let workers = fast_sims(2).await;
    let file = ConfigFile::new(&file_with("", &[&workers[0]]));
    let router = router_from(&file).await;
    let added = post_json(
        &format!("{}/workers", router.url()),
        json!({ "url": workers[1].url() }),
    )
    .await;
    assert_eq!(added.status, 201);
    file.write(&file_with("retry_max_retries = 2", &[&workers[0]]));
    router.reloader().unwrap().reload().await.unwrap();
    let urls: Vec<String> = worker_urls(&router)
        .await
        .into_iter()
        .map(|w| w.0)
        .collect();
    assert_eq!(urls, vec![workers[0].url(), workers[1].url()]);
}

#[tokio::test]
async fn the_reload_interval_catches_changes_the_watch_cannot_see() {
    let workers = fast_sims(2).await;
    let file = ConfigFile::new(&file_with("", &[&workers[0]]));
    // Read through a link in another directory: writes to the file itself raise no event
    // where the router watches, so only the re-read every second finds them.
    let link = ConfigFile::new("");
    std::fs::remove_file(&link.path).unwrap();
    std::os::unix::fs::symlink(&file.path, &link.path).unwrap();
    let router = router_from(&link).await;
    std::fs::write(&file.path, file_with("", &[&workers[0], &workers[1]])).unwrap();
    let mut tries = 0;
    while worker_urls(&router).await.len() != 2 {
        tries += 1;
        assert!(
            tries < 60,
            "not reloaded: {:?} {}",
            worker_urls(&router).await,
            router.app().render_metrics()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
