//! Kubernetes discovery against a stand-in API server, through the real kube client: pods
//! joining and leaving, a watch resumed after it ended, a relist after 410 Gone, an API server
//! that goes away, P/D roles, and the router binary finding its API server through
//! `KUBECONFIG` and routing a request to a discovered pod.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use vllm_router::cli::RouterArgs;
use vllm_router::config::Config;
use vllm_router::discovery::kube::{PodWatch, Pods, Retry};
use vllm_router::fleet::Fleet;
use vllm_router::upstream::Upstream;

use crate::support::*;

mod apiserver;
mod binary;

use apiserver::ApiServer;

const NS: &str = "inference";

/// Quick retries, so outages in tests last milliseconds.
const FAST: Retry = Retry {
    first: Duration::from_millis(20),
    max: Duration::from_millis(100),
};

/// Long enough for anything the client does against a loopback server.
const WITHIN: Duration = Duration::from_secs(10);

/// A pod of namespace [`NS`] labelled `labels`, at `ip` (none when empty), in `phase`, with its
/// Ready condition `ready`.
fn pod(name: &str, labels: Value, ip: &str, phase: &str, ready: bool) -> Value {
    pod_in(NS, name, labels, ip, phase, ready)
}

/// [`pod`] in `namespace`.
fn pod_in(namespace: &str, name: &str, labels: Value, ip: &str, phase: &str, ready: bool) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"), "labels": labels},
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]},
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        },
    });
    if !ip.is_empty() {
        pod["status"]["podIP"] = json!(ip);
    }
    pod
}

/// A pod labelled `app=vllm`.
fn vllm(name: &str, ip: &str, phase: &str, ready: bool) -> Value {
    pod(name, json!({"app": "vllm"}), ip, phase, ready)
}

/// A Running, Ready pod labelled `app=vllm`.
fn up(name: &str, ip: &str) -> Value {
    vllm(name, ip, "Running", true)
}

/// Discovery of `app=vllm` pods in [`NS`] on port 8000, flags adjusted by `tweak`, feeding a
/// fleet of its own.
fn discover(api: &ApiServer, tweak: impl FnOnce(&mut RouterArgs)) -> (Arc<Fleet>, JoinHandle<()>) {
    let mut args = RouterArgs {
        service_discovery: true,
        selector: vec!["app=vllm".into()],
        service_discovery_namespace: Some(NS.into()),
        ..RouterArgs::default()
    };
    tweak(&mut args);
    let config = Config::from_args(args).unwrap();
    let settings = config.service_discovery.clone().unwrap();
    let fleet = Arc::new(Fleet::start(&config.workers, Vec::new()));
    let watch = PodWatch::new(api.client(), settings.namespace.as_deref()).with_retry(FAST);
    assert_eq!(watch.namespace(), NS);
    let task = watch.spawn(
        Pods::new(&settings, &config.workers),
        Arc::clone(&fleet),
        Upstream::new(Duration::from_secs(1)),
        Duration::from_millis(200),
    );
    (fleet, task)
}

/// The fleet's workers as `role url`, sorted.
fn workers(fleet: &Fleet) -> Vec<String> {
    let snapshot = fleet.snapshot();
    let mut out: Vec<String> = snapshot
        .servers()
        .map(|ranks| &ranks[0].worker)
        .map(|w| format!("{} {}", w.role().name(), w.url()))
        .collect();
    out.sort();
    out
}

/// Wait until the fleet's workers are `expected`.
async fn until_workers(fleet: &Fleet, expected: &[&str]) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let now = workers(fleet);
        if now == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "workers are {now:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Wait until `count` watches are open: the client is caught up and listening.
async fn until_watching(api: &ApiServer, count: usize) {
    eventually(WITHIN, || (api.open_watches() == count).then_some(())).await;
}

/// Wait until the stand-in, down, has turned `count` more connections away: the client tried
/// again and failed that many times.
async fn turned_away(api: &ApiServer, count: usize) {
    let before = api.turned_away();
    eventually(WITHIN, || {
        (api.turned_away() >= before + count).then_some(())
    })
    .await;
}

fn lists(api: &ApiServer) -> usize {
    api.requests().iter().filter(|r| !r.watch).count()
}

#[tokio::test]
async fn ready_pods_join_and_the_selector_goes_to_the_api_server() {
    let api = ApiServer::start().await;
    api.apply(up("a", "127.0.0.11"));
    api.apply(vllm("pending", "", "Pending", false));
    // Only the API server can tell these apart from the rest: the client must send the selector.
    api.apply(pod(
        "other",
        json!({"app": "other"}),
        "127.0.0.12",
        "Running",
        true,
    ));
    let (fleet, task) = discover(&api, |_| {});
    until_workers(&fleet, &["regular http://127.0.0.11:8000"]).await;
    until_watching(&api, 1).await;

    // ADDED, not ready: stays out (events arrive in order, so it is known once b joined).
    api.apply(vllm("c", "127.0.0.14", "Running", false));
    // ADDED, Running and Ready: joins.
    api.apply(up("b", "127.0.0.13"));
    until_workers(
        &fleet,
        &[
            "regular http://127.0.0.11:8000",
            "regular http://127.0.0.13:8000",
        ],
    )
    .await;
    // MODIFIED: scheduled, started, then Ready: joins only then.
    api.apply(vllm("pending", "127.0.0.15", "Pending", false));
    api.apply(vllm("pending", "127.0.0.15", "Running", false));
    api.apply(vllm("c", "127.0.0.14", "Running", true));
    until_workers(
        &fleet,
        &[
            "regular http://127.0.0.11:8000",
            "regular http://127.0.0.13:8000",
            "regular http://127.0.0.14:8000",
        ],
    )
    .await;
    api.apply(up("pending", "127.0.0.15"));
    until_workers(
        &fleet,
        &[
            "regular http://127.0.0.11:8000",
            "regular http://127.0.0.13:8000",
            "regular http://127.0.0.14:8000",
            "regular http://127.0.0.15:8000",
        ],
    )
    .await;

    let requests = api.requests();
    assert!(requests.iter().any(|r| !r.watch) && requests.iter().any(|r| r.watch));
    for request in &requests {
        assert_eq!(request.namespace, NS, "{request:?}");
        assert_eq!(
            request.label_selector.as_deref(),
            Some("app=vllm"),
            "{request:?}"
        );
    }
    task.abort();
}

#[tokio::test]
async fn a_pod_leaves_when_not_ready_and_when_deleted() {
    let api = ApiServer::start().await;
    api.apply(up("a", "127.0.0.11"));
    api.apply(up("b", "127.0.0.12"));
    let (fleet, task) = discover(&api, |_| {});
    until_workers(
        &fleet,
        &[
            "regular http://127.0.0.11:8000",
            "regular http://127.0.0.12:8000",
        ],
    )
    .await;

    // MODIFIED to NotReady: leaves; Ready again: back.
    api.apply(vllm("a", "127.0.0.11", "Running", false));
    until_workers(&fleet, &["regular http://127.0.0.12:8000"]).await;
    api.apply(up("a", "127.0.0.11"));
    until_workers(
        &fleet,
        &[
            "regular http://127.0.0.11:8000",
            "regular http://127.0.0.12:8000",
        ],
    )
    .await;
    // Marked for deletion (still Ready while it drains): leaves.
    let mut draining = up("b", "127.0.0.12");
    draining["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    api.apply(draining);
    until_workers(&fleet, &["regular http://127.0.0.11:8000"]).await;
    // DELETED: leaves.
    api.delete(NS, "a");
    api.delete(NS, "b");
    until_workers(&fleet, &[]).await;
    task.abort();
}

#[tokio::test]
async fn a_pod_with_a_new_ip_swaps_its_worker() {
    let api = ApiServer::start().await;
    api.apply(up("a", "127.0.0.11"));
    let (fleet, task) = discover(&api, |_| {});
    until_workers(&fleet, &["regular http://127.0.0.11:8000"]).await;
    api.apply(up("a", "127.0.0.21"));
    until_workers(&fleet, &["regular http://127.0.0.21:8000"]).await;
    task.abort();
}

#[tokio::test]
async fn an_ended_watch_is_resumed_and_later_events_still_apply() {
    let api = ApiServer::start().await;
    api.apply(up("a", "127.0.0.11"));
    let (fleet, task) = discover(&api, |_| {});
    until_workers(&fleet, &["regular http://127.0.0.11:8000"]).await;
    until_watching(&api, 1).await;
    let watches = |api: &ApiServer| api.requests().iter().filter(|r| r.watch).count();
    assert_eq!(watches(&api), 1);

    for (i, ip) in ["127.0.0.12", "127.0.0.13"].into_iter().enumerate() {
        api.end_watches();
        // A change as the watch ends: the old watch or the resumed one delivers it.
        api.apply(up(&format!("n{i}"), ip));
        eventually(WITHIN, || (watches(&api) == i + 2).then_some(())).await;
    }
    until_workers(
        &fleet,
        &[
            "regular http://127.0.0.11:8000",
            "regular http://127.0.0.12:8000",
            "regular http://127.0.0.13:8000",
        ],
    )
    .await;
    until_watching(&api, 1).await;
    api.delete(NS, "a");
    until_workers(
        &fleet,
        &[
            "regular http://127.0.0.12:8000",
            "regular http://127.0.0.13:8000",
        ],
    )
    .await;
    // Resumed from where it was, each time: one list in all, and every watch after the first
    // names a resource version.
    assert_eq!(lists(&api), 1, "{:?}", api.requests());
    let resumed: Vec<_> = api.requests().into_iter().filter(|r| r.watch).collect();
    assert!(
        resumed.iter().all(|r| r.resource_version.is_some()),
        "{resumed:?}"
    );
    task.abort();
}

#[tokio::test]
async fn gone_410_relists_and_pods_missing_from_the_relist_leave() {
    let api = ApiServer::start().await;
    api.apply(up("a", "127.0.0.11"));
    api.apply(up("b", "127.0.0.12"));
    let (fleet, task) = discover(&api, |_| {});
    until_workers(
        &fleet,
        &[
            "regular http://127.0.0.11:8000",
            "regular http://127.0.0.12:8000",
        ],
    )
    .await;
    until_watching(&api, 1).await;
    assert_eq!(lists(&api), 1);

    // Events the client never sees, then 410 Gone: only a relist can tell.
    api.expire_with(|pods| {
        pods.delete(NS, "a");
        pods.apply(up("c", "127.0.0.13"));
    });
    until_workers(
        &fleet,
        &[
            "regular http://127.0.0.12:8000",
            "regular http://127.0.0.13:8000",
        ],
    )
    .await;
    assert_eq!(lists(&api), 2, "{:?}", api.requests());
    // Watching again after the relist.
    until_watching(&api, 1).await;
    api.apply(up("d", "127.0.0.14"));
    until_workers(
        &fleet,
        &[
            "regular http://127.0.0.12:8000",
            "regular http://127.0.0.13:8000",
            "regular http://127.0.0.14:8000",
        ],
    )
    .await;
    task.abort();
}

#[tokio::test]
async fn workers_stay_while_the_api_server_is_down_and_changes_apply_once_it_is_back() {
    let api = ApiServer::start().await;
    api.apply(up("a", "127.0.0.11"));
    api.apply(up("b", "127.0.0.12"));
    let (fleet, task) = discover(&api, |_| {});
    until_workers(
        &fleet,
        &[
            "regular http://127.0.0.11:8000",
            "regular http://127.0.0.12:8000",
        ],
    )
    .await;
    until_watching(&api, 1).await;

    api.stop();
    // The open watch is cut...
    until_watching(&api, 0).await;
    // ...and many retries fail.
    turned_away(&api, 5).await;
    assert_eq!(
        workers(&fleet),
        [
            "regular http://127.0.0.11:8000",
            "regular http://127.0.0.12:8000"
        ]
    );
    // Changes made while the router could not see them.
    api.delete(NS, "a");
    api.apply(up("c", "127.0.0.13"));
    api.restart();
    until_workers(
        &fleet,
        &[
            "regular http://127.0.0.12:8000",
            "regular http://127.0.0.13:8000",
        ],
    )
    .await;
    // Caught up by resuming the watch, not by relisting.
    assert_eq!(lists(&api), 1, "{:?}", api.requests());

    // Down again and back with the history gone: the relist catches up.
    until_watching(&api, 1).await;
    api.stop();
    api.expire_with(|pods| pods.delete(NS, "b"));
    turned_away(&api, 3).await;
    assert_eq!(
        workers(&fleet),
        [
            "regular http://127.0.0.12:8000",
            "regular http://127.0.0.13:8000"
        ]
    );
    api.restart();
    until_workers(&fleet, &["regular http://127.0.0.13:8000"]).await;
    assert_eq!(lists(&api), 2, "{:?}", api.requests());
    task.abort();
}

#[tokio::test]
async fn role_selectors_give_roles_and_prefill_pods_their_bootstrap_port() {
    let api = ApiServer::start().await;
    let mut prefill = pod(
        "p",
        json!({"role": "prefill"}),
        "127.0.0.11",
        "Running",
        true,
    );
    prefill["metadata"]["annotations"] = json!({"vllm.ai/bootstrap-port": "8998"});
    api.apply(prefill);
    let mut bad = pod(
        "p2",
        json!({"role": "prefill"}),
        "127.0.0.12",
        "Running",
        true,
    );
    bad["metadata"]["annotations"] = json!({"vllm.ai/bootstrap-port": "none"});
    api.apply(bad);
    api.apply(pod(
        "d",
        json!({"role": "decode"}),
        "127.0.0.13",
        "Running",
        true,
    ));
    let (fleet, task) = discover(&api, |args| {
        args.selector.clear();
        args.vllm_pd_disaggregation = true;
        args.prefill_selector = vec!["role=prefill".into()];
        args.decode_selector = vec!["role=decode".into()];
        args.service_discovery_port = 8100;
        args.intra_node_data_parallel_size = 2;
    });
    until_workers(
        &fleet,
        &[
            "decode http://127.0.0.13:8100",
            "prefill http://127.0.0.11:8100",
            "prefill http://127.0.0.12:8100",
        ],
    )
    .await;
    let snapshot = fleet.snapshot();
    let port = |url: &str| {
        let ranks: Vec<_> = snapshot
            .members()
            .iter()
            .filter(|m| m.worker.url() == url)
            .collect();
        assert_eq!(ranks.len(), 2, "two data-parallel ranks per pod");
        ranks[0].worker.bootstrap_port()
    };
    assert_eq!(port("http://127.0.0.11:8100"), Some(8998));
    assert_eq!(port("http://127.0.0.12:8100"), None);
    assert_eq!(port("http://127.0.0.13:8100"), None);

    let mut selectors: Vec<_> = api
        .requests()
        .into_iter()
        .map(|r| r.label_selector.unwrap_or_default())
        .collect();
    selectors.sort();
    selectors.dedup();
    assert_eq!(selectors, ["role=decode", "role=prefill"]);
    task.abort();
}
