use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use tokio::time::Instant;

use super::*;
use crate::config::{Config, Role, ServiceDiscoveryConfig, WorkerSpec};

fn settings(argv: &[&str]) -> (ServiceDiscoveryConfig, Vec<WorkerSpec>) {
    let mut full = vec!["vllm-router", "--service-discovery"];
    full.extend_from_slice(argv);
    let args = crate::cli::RouterOnly::try_parse_from(full).unwrap().args;
    let config = Config::from_args(args).unwrap();
    (config.service_discovery.unwrap(), config.workers)
}

/// Regular pods `app=vllm` on port 8000.
fn regular() -> Pods {
    let (settings, statics) = settings(&["--selector", "app=vllm"]);
    Pods::new(&settings, &statics)
}

/// Prefill pods (watch 0) `role=p` and decode pods (watch 1) `role=d`, on port 8000.
fn pd() -> Pods {
    let (settings, statics) = settings(&[
        "--vllm-pd-disaggregation",
        "--prefill-selector",
        "role=p",
        "--decode-selector",
        "role=d",
    ]);
    Pods::new(&settings, &statics)
}

/// A pod in namespace `ns` at `ip`, in `phase`, with its Ready condition `ready`.
fn pod(name: &str, ip: &str, phase: &str, ready: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"},
        "status": {
            "phase": phase,
            "podIP": ip,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": if ready { "True" } else { "False" }},
            ],
        },
    }))
    .unwrap()
}

/// A Running, Ready pod.
fn up(name: &str, ip: &str) -> Pod {
    pod(name, ip, "Running", true)
}

fn annotated(mut pod: Pod, key: &str, value: &str) -> Pod {
    pod.metadata
        .annotations
        .get_or_insert_default()
        .insert(key.into(), value.into());
    pod
}

fn terminating(pod: Pod) -> Pod {
    let mut raw = serde_json::to_value(pod).unwrap();
    raw["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    serde_json::from_value(raw).unwrap()
}

/// The events as comparable text: `+role url ranks bootstrap-port` or `-url`.
fn summary(events: &[FleetEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            FleetEvent::Add(spec) => {
                assert_eq!(spec.origin, crate::config::Origin::Kubernetes);
                assert_eq!(spec.zmq_address, None);
                format!(
                    "+{} {} {} {}",
                    spec.role.name(),
                    spec.url.text,
                    spec.ranks,
                    spec.bootstrap_port
                        .map_or_else(|| "-".to_owned(), |p| p.to_string())
                )
            }
            FleetEvent::Remove(url) => format!("-{url}"),
            FleetEvent::Models { url, .. } => format!("models {url}"),
        })
        .collect()
}

fn apply(pods: &mut Pods, watch: usize, event: Event<Pod>) -> Vec<String> {
    summary(&pods.apply(watch, event))
}

#[test]
fn one_watch_per_selector_with_its_role() {
    assert_eq!(regular().selectors(), ["regular pods app=vllm"]);
    assert_eq!(
        pd().selectors(),
        ["prefill pods role=p", "decode pods role=d"]
    );
    let (settings, statics) = settings(&[
        "--vllm-pd-disaggregation",
        "--selector",
        "app=vllm,tier=gpu",
    ]);
    let pods = Pods::new(&settings, &statics);
    assert_eq!(pods.watches().len(), 1);
    assert_eq!(pods.watches()[0].role, Role::Regular);
    assert_eq!(pods.watches()[0].selector.to_query(), "app=vllm,tier=gpu");
}

#[test]
fn a_running_ready_pod_joins_at_its_ip_and_the_port() {
    let (settings, statics) = settings(&[
        "--selector",
        "app=vllm",
        "--service-discovery-port",
        "8100",
        "--intra-node-data-parallel-size",
        "2",
    ]);
    let mut pods = Pods::new(&settings, &statics);
    assert_eq!(
        apply(&mut pods, 0, Event::Apply(up("a", "10.0.0.1"))),
        ["+regular http://10.0.0.1:8100 2 -"]
    );
    assert_eq!(pods.len(), 1);
    // The same pod again, or changed in ways that do not matter, changes nothing.
    assert!(apply(&mut pods, 0, Event::Apply(up("a", "10.0.0.1"))).is_empty());
    let relabelled = annotated(up("a", "10.0.0.1"), "note", "x");
    assert!(apply(&mut pods, 0, Event::Apply(relabelled)).is_empty());
}

#[test]
fn an_ipv6_pod_ip_is_bracketed() {
    let mut pods = regular();
    assert_eq!(
        apply(&mut pods, 0, Event::Apply(up("a", "fd00::1"))),
        ["+regular http://[fd00::1]:8000 1 -"]
    );
}

#[test]
fn a_pod_stays_out_until_running_ready_and_addressed() {
    let mut pods = regular();
    for stage in [
        pod("a", "", "Pending", false),
        pod("a", "10.0.0.1", "Pending", false),
        pod("a", "10.0.0.1", "Running", false),
        pod("a", "", "Running", true),
        pod("a", "not-an-ip", "Running", true),
        terminating(up("a", "10.0.0.1")),
    ] {
        assert!(apply(&mut pods, 0, Event::Apply(stage)).is_empty());
    }
    let no_status: Pod = serde_json::from_value(json!({"metadata": {"name": "b"}})).unwrap();
    assert!(apply(&mut pods, 0, Event::Apply(no_status)).is_empty());
    assert!(pods.is_empty());
    assert_eq!(
        apply(&mut pods, 0, Event::Apply(up("a", "10.0.0.1"))),
        ["+regular http://10.0.0.1:8000 1 -"]
    );
}

#[test]
fn a_pod_leaves_when_not_ready_not_running_or_terminating() {
    let mut pods = regular();
    let gone = ["-http://10.0.0.1:8000"];
    let back = ["+regular http://10.0.0.1:8000 1 -"];
    for leaving in [
        pod("a", "10.0.0.1", "Running", false),
        pod("a", "10.0.0.1", "Failed", true),
        pod("a", "10.0.0.1", "Succeeded", false),
        terminating(up("a", "10.0.0.1")),
    ] {
        assert_eq!(apply(&mut pods, 0, Event::Apply(up("a", "10.0.0.1"))), back);
        assert_eq!(apply(&mut pods, 0, Event::Apply(leaving)), gone);
        assert!(pods.is_empty());
    }
}

#[test]
fn a_deleted_pod_leaves() {
    let mut pods = regular();
    apply(&mut pods, 0, Event::Apply(up("a", "10.0.0.1")));
    apply(&mut pods, 0, Event::Apply(up("b", "10.0.0.2")));
    assert_eq!(
        apply(&mut pods, 0, Event::Delete(up("a", "10.0.0.1"))),
        ["-http://10.0.0.1:8000"]
    );
    // A pod deleted while out of rotation changes nothing.
    apply(
        &mut pods,
        0,
        Event::Apply(pod("c", "10.0.0.3", "Running", false)),
    );
    assert!(
        apply(
            &mut pods,
            0,
            Event::Delete(pod("c", "10.0.0.3", "Running", false))
        )
        .is_empty()
    );
    assert_eq!(pods.len(), 1);
}

#[test]
fn a_new_ip_swaps_the_old_url_for_the_new_one() {
    let mut pods = regular();
    apply(&mut pods, 0, Event::Apply(up("a", "10.0.0.1")));
    assert_eq!(
        apply(&mut pods, 0, Event::Apply(up("a", "10.0.0.9"))),
        ["-http://10.0.0.1:8000", "+regular http://10.0.0.9:8000 1 -"]
    );
    assert_eq!(pods.len(), 1);
    assert_eq!(
        apply(&mut pods, 0, Event::Delete(up("a", "10.0.0.9"))),
        ["-http://10.0.0.9:8000"]
    );
}

#[test]
fn a_relist_drops_pods_not_listed_again_and_adds_new_ones_at_once() {
    let mut pods = regular();
    apply(&mut pods, 0, Event::Apply(up("a", "10.0.0.1")));
    apply(&mut pods, 0, Event::Apply(up("b", "10.0.0.2")));
    assert!(apply(&mut pods, 0, Event::Init).is_empty());
    assert!(apply(&mut pods, 0, Event::InitApply(up("b", "10.0.0.2"))).is_empty());
    assert_eq!(
        apply(&mut pods, 0, Event::InitApply(up("c", "10.0.0.3"))),
        ["+regular http://10.0.0.3:8000 1 -"]
    );
    assert_eq!(
        apply(&mut pods, 0, Event::InitDone),
        ["-http://10.0.0.1:8000"]
    );
    assert_eq!(pods.len(), 2);
    // An empty relist empties the watch.
    apply(&mut pods, 0, Event::Init);
    assert_eq!(
        apply(&mut pods, 0, Event::InitDone),
        ["-http://10.0.0.2:8000", "-http://10.0.0.3:8000"]
    );
}

#[test]
fn an_unfinished_relist_removes_nothing() {
    let mut pods = regular();
    apply(&mut pods, 0, Event::Apply(up("a", "10.0.0.1")));
    apply(&mut pods, 0, Event::Apply(up("b", "10.0.0.2")));
    // A relist that failed after its first pod, then one that completes.
    apply(&mut pods, 0, Event::Init);
    apply(&mut pods, 0, Event::InitApply(up("b", "10.0.0.2")));
    apply(&mut pods, 0, Event::Init);
    apply(&mut pods, 0, Event::InitApply(up("a", "10.0.0.1")));
    assert!(apply(&mut pods, 0, Event::InitApply(up("b", "10.0.0.2"))).is_empty());
    assert!(apply(&mut pods, 0, Event::InitDone).is_empty());
    // `InitDone` outside a relist removes nothing either.
    assert!(apply(&mut pods, 0, Event::InitDone).is_empty());
    assert_eq!(pods.len(), 2);
}

#[test]
fn a_relist_of_one_watch_leaves_the_others_pods() {
    let mut pods = pd();
    apply(&mut pods, 0, Event::Apply(up("p", "10.0.0.1")));
    apply(&mut pods, 1, Event::Apply(up("d", "10.0.0.2")));
    apply(&mut pods, 1, Event::Init);
    assert_eq!(
        apply(&mut pods, 1, Event::InitDone),
        ["-http://10.0.0.2:8000"]
    );
    assert_eq!(pods.len(), 1);
}

#[test]
fn role_selectors_give_roles_and_prefill_pods_their_bootstrap_port() {
    let mut pods = pd();
    let key = "vllm.ai/bootstrap-port";
    assert_eq!(
        apply(
            &mut pods,
            0,
            Event::Apply(annotated(up("p", "10.0.0.1"), key, "8998"))
        ),
        ["+prefill http://10.0.0.1:8000 1 8998"]
    );
    // Decode pods have no bootstrap server: the annotation is not theirs to carry.
    assert_eq!(
        apply(
            &mut pods,
            1,
            Event::Apply(annotated(up("d", "10.0.0.2"), key, "8998"))
        ),
        ["+decode http://10.0.0.2:8000 1 -"]
    );
    // A changed port replaces the worker.
    assert_eq!(
        apply(
            &mut pods,
            0,
            Event::Apply(annotated(up("p", "10.0.0.1"), key, "9000"))
        ),
        [
            "-http://10.0.0.1:8000",
            "+prefill http://10.0.0.1:8000 1 9000"
        ]
    );
}

#[test]
fn a_malformed_bootstrap_port_annotation_is_ignored() {
    let mut pods = pd();
    let key = "vllm.ai/bootstrap-port";
    for (i, bad) in ["eighty", "0", "70000", ""].into_iter().enumerate() {
        let ip = format!("10.0.0.{}", i + 1);
        assert_eq!(
            apply(
                &mut pods,
                0,
                Event::Apply(annotated(up(&format!("p{i}"), &ip), key, bad))
            ),
            [format!("+prefill http://{ip}:8000 1 -")]
        );
    }
    // Another annotation name is not read.
    let (settings, statics) = settings(&[
        "--vllm-pd-disaggregation",
        "--prefill-selector",
        "role=p",
        "--decode-selector",
        "role=d",
        "--bootstrap-port-annotation",
        "example.com/port",
    ]);
    let mut pods = Pods::new(&settings, &statics);
    let both = annotated(
        annotated(up("p", "10.0.0.1"), key, "1"),
        "example.com/port",
        "7",
    );
    assert_eq!(
        apply(&mut pods, 0, Event::Apply(both)),
        ["+prefill http://10.0.0.1:8000 1 7"]
    );
}

#[test]
fn a_static_worker_url_is_never_added_or_removed() {
    let (settings, statics) = settings(&[
        "--selector",
        "app=vllm",
        "--worker-urls",
        "http://10.0.0.1:8000",
    ]);
    let mut pods = Pods::new(&settings, &statics);
    assert!(apply(&mut pods, 0, Event::Apply(up("a", "10.0.0.1"))).is_empty());
    assert!(apply(&mut pods, 0, Event::Apply(up("b", "10.0.0.1"))).is_empty());
    assert!(apply(&mut pods, 0, Event::Delete(up("a", "10.0.0.1"))).is_empty());
    apply(&mut pods, 0, Event::Init);
    assert!(apply(&mut pods, 0, Event::InitDone).is_empty());
    // A pod moving off the static URL joins; moving back onto it, it leaves.
    apply(&mut pods, 0, Event::Apply(up("c", "10.0.0.1")));
    assert_eq!(
        apply(&mut pods, 0, Event::Apply(up("c", "10.0.0.3"))),
        ["+regular http://10.0.0.3:8000 1 -"]
    );
    assert_eq!(
        apply(&mut pods, 0, Event::Apply(up("c", "10.0.0.1"))),
        ["-http://10.0.0.3:8000"]
    );
}

#[test]
fn two_pods_with_one_url_the_first_serves_then_the_other() {
    // One pod matched by both role selectors.
    let mut pods = pd();
    assert_eq!(
        apply(&mut pods, 1, Event::Apply(up("both", "10.0.0.1"))),
        ["+decode http://10.0.0.1:8000 1 -"]
    );
    // The prefill watch comes first: its role wins.
    assert_eq!(
        apply(&mut pods, 0, Event::Apply(up("both", "10.0.0.1"))),
        ["-http://10.0.0.1:8000", "+prefill http://10.0.0.1:8000 1 -"]
    );
    assert_eq!(
        apply(&mut pods, 0, Event::Delete(up("both", "10.0.0.1"))),
        ["-http://10.0.0.1:8000", "+decode http://10.0.0.1:8000 1 -"]
    );
    assert_eq!(
        apply(&mut pods, 1, Event::Delete(up("both", "10.0.0.1"))),
        ["-http://10.0.0.1:8000"]
    );
    // Two pods of one watch with one IP (a stale pod and its replacement): one worker.
    let mut pods = regular();
    apply(&mut pods, 0, Event::Apply(up("old", "10.0.0.5")));
    assert!(apply(&mut pods, 0, Event::Apply(up("new", "10.0.0.5"))).is_empty());
    assert!(apply(&mut pods, 0, Event::Delete(up("old", "10.0.0.5"))).is_empty());
    assert_eq!(pods.len(), 1);
    assert_eq!(
        apply(&mut pods, 0, Event::Delete(up("new", "10.0.0.5"))),
        ["-http://10.0.0.5:8000"]
    );
}

#[test]
fn an_event_of_an_unknown_watch_or_nameless_pod_changes_nothing() {
    let mut pods = regular();
    assert!(apply(&mut pods, 3, Event::Apply(up("a", "10.0.0.1"))).is_empty());
    let mut nameless = up("a", "10.0.0.1");
    nameless.metadata.name = None;
    assert!(apply(&mut pods, 0, Event::Apply(nameless)).is_empty());
    assert!(pods.is_empty());
}

#[tokio::test(start_paused = true)]
async fn errors_pause_the_watch_doubling_and_only_answers_reset_the_pause() {
    let retry = Retry {
        first: Duration::from_millis(100),
        max: Duration::from_millis(400),
    };
    let failed = || Err(watcher::Error::NoResourceVersion);
    let items: Vec<Result<Event<Pod>, watcher::Error>> = vec![
        failed(),
        failed(),
        failed(),
        failed(),
        Ok(Event::Init),
        failed(),
        Ok(Event::InitDone),
        failed(),
        Ok(Event::InitDone),
    ];
    let mut paced = std::pin::pin!(paced(futures_util::stream::iter(items), retry));
    let mut at = Vec::new();
    let start = Instant::now();
    while paced.next().await.is_some() {
        at.push(start.elapsed());
    }
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    let ms = Duration::from_millis;
    let expected = [
        (ms(50), ms(100)),  // first error: `first`, shortened by up to half
        (ms(100), ms(200)), // doubling...
        (ms(200), ms(400)),
        (ms(200), ms(400)), // ...up to `max`
        (ms(0), ms(0)),     // `Init` is no answer: no pause after it...
        (ms(200), ms(400)), // ...and the pause does not start over
        (ms(0), ms(0)),     // an answer...
        (ms(50), ms(100)),  // ...does
    ];
    assert_eq!(gaps.len(), expected.len(), "{gaps:?}");
    for (gap, (low, high)) in gaps.iter().zip(expected) {
        assert!((low..=high).contains(gap), "{gaps:?}");
    }
}

#[test]
fn an_outage_warns_at_once_then_once_a_minute_and_ends_on_an_answer() {
    let every = Duration::from_secs(60);
    let mut outage = Outage::new(every);
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    assert_eq!(outage.answered(at(0)), None);
    assert_eq!(outage.failed(at(0)), Some(0));
    assert_eq!(outage.failed(at(1)), None);
    assert_eq!(outage.failed(at(30)), None);
    assert_eq!(outage.failed(at(60)), Some(2));
    assert_eq!(outage.failed(at(61)), None);
    assert_eq!(outage.answered(at(70)), Some(Duration::from_secs(70)));
    assert_eq!(outage.answered(at(71)), None);
    // A new outage warns at once.
    assert_eq!(outage.failed(at(72)), Some(0));
}

#[test]
fn an_expired_watch_is_routine_and_a_refusal_needs_rbac() {
    use kube::core::Status;
    let status =
        |code: u16, reason: &str| Status::failure("refused", reason).with_code(code).boxed();
    assert!(forbidden(&watcher::Error::InitialListFailed(
        kube::Error::Api(status(403, "Forbidden"))
    )));
    assert!(forbidden(&watcher::Error::WatchError(status(
        403,
        "Forbidden"
    ))));
    assert!(!forbidden(&watcher::Error::WatchError(status(
        410, "Expired"
    ))));
    assert!(!forbidden(&watcher::Error::NoResourceVersion));
}

#[tokio::test]
async fn an_https_api_server_gets_a_tls_client_and_the_default_namespace() {
    // In a cluster the API server speaks https: without a TLS stack, or with an ambiguous
    // crypto provider, no client could be built for it.
    let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    assert_eq!(PodWatch::new(client.clone(), None).namespace(), "default");
    assert_eq!(PodWatch::new(client, Some("ml")).namespace(), "ml");
}
