use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use super::window::Window;
use super::*;
use crate::admission::AdmissionConfig;
use crate::config::WorkerUrl;
use crate::fleet::{Completion, EngineMetrics, EngineSample, PromptTokens, Snapshot, Worker};
use crate::telemetry::exchange::{Exchange, Outcome};
use crate::telemetry::trace::TraceId;

fn worker(url: &str) -> Arc<Worker> {
    let w = Arc::new(Worker::new(WorkerUrl::parse("--worker-urls", url).unwrap()));
    w.set_healthy(true);
    w
}

fn about() -> About {
    About {
        policy: "round_robin",
        pd: false,
        started: Instant::now(),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn done(ttft: Option<u64>, prompt: Option<(u64, u64)>) -> Completion {
    Completion {
        at: Instant::now(),
        ttft: ttft.map(ms),
        prompt: prompt.map(|(total, cached)| PromptTokens { total, cached }),
    }
}

/// Sample `snapshot` at the paused clock's now, with `finished` requests done so far.
fn sample(sampler: &mut Sampler, snapshot: &Snapshot, finished: u64) -> FleetView {
    sampler.sample(&Reading {
        snapshot,
        finished,
        queued: 0,
        now: Instant::now(),
    })
}

/// Forward `n` requests to `w` (each ends at once).
fn serve(w: &Arc<Worker>, n: usize) {
    for _ in 0..n {
        drop(w.begin());
    }
}

#[test]
fn quantiles_are_by_nearest_rank() {
    let sorted: Vec<Duration> = (1..=100).map(ms).collect();
    assert_eq!(quantile(&sorted, 0.5), Some(ms(50)));
    assert_eq!(quantile(&sorted, 0.99), Some(ms(99)));
    assert_eq!(quantile(&sorted, 1.0), Some(ms(100)));
    assert_eq!(quantile(&sorted, 0.0), Some(ms(1)));
    let few = [ms(10), ms(20), ms(30)];
    assert_eq!(quantile(&few, 0.5), Some(ms(20)));
    assert_eq!(quantile(&few, 0.99), Some(ms(30)));
    assert_eq!(quantile(&[ms(7)], 0.5), Some(ms(7)));
    assert_eq!(quantile(&[], 0.5), None);
}

#[test]
fn a_window_counts_streamed_latencies_and_reported_prompts() {
    let mut window = Window::of(&[
        done(Some(30), Some((100, 50))),
        done(None, Some((100, 0))),
        done(Some(10), None),
        done(Some(20), Some((10, 40))),
    ]);
    let figures = window.figures();
    assert_eq!(figures.ttft_p50_ms, Some(20.0));
    assert_eq!(figures.ttft_p99_ms, Some(30.0));
    // 50 + 0 + 10 (cached never counts past the prompt) of 210.
    assert_eq!(figures.cache_hit_rate, Some(0.286));

    let mut plain = Window::of(&[done(None, None)]);
    let none = plain.figures();
    assert_eq!(
        (none.ttft_p50_ms, none.ttft_p99_ms, none.cache_hit_rate),
        (None, None, None)
    );

    let mut fleet = Window::of(&[done(Some(40), Some((100, 100)))]);
    fleet.absorb(window);
    let all = fleet.figures();
    assert_eq!((all.ttft_p50_ms, all.ttft_p99_ms), (Some(20.0), Some(40.0)));
    assert_eq!(all.cache_hit_rate, Some(0.516));
}

#[tokio::test(start_paused = true)]
async fn rates_are_the_change_since_the_last_sample() {
    let (a, b) = (worker("http://a:1"), worker("http://b:1"));
    let snapshot = Snapshot::of_workers([&a, &b]);
    let mut sampler = Sampler::new(about(), Instant::now());
    serve(&a, 3);
    let first = sample(&mut sampler, &snapshot, 3);
    assert_eq!(
        first.summary.req_per_sec, 0.0,
        "nothing to compare with yet"
    );
    assert_eq!(first.workers[0].req_per_sec, 0.0);
    assert_eq!(first.workers[0].status.requests_total, 3);

    tokio::time::advance(Duration::from_secs(1)).await;
    serve(&a, 5);
    serve(&b, 2);
    let second = sample(&mut sampler, &snapshot, 10);
    let rates: Vec<f64> = second.workers.iter().map(|w| w.req_per_sec).collect();
    assert_eq!(rates, [5.0, 2.0]);
    assert_eq!(second.summary.req_per_sec, 7.0);
    assert_eq!(second.workers[0].status.requests_total, 8);

    // A late sample divides by the time that really passed.
    tokio::time::advance(Duration::from_secs(2)).await;
    serve(&a, 3);
    let third = sample(&mut sampler, &snapshot, 13);
    assert_eq!(third.workers[0].req_per_sec, 1.5);
    assert_eq!(third.workers[1].req_per_sec, 0.0);
    assert_eq!(third.summary.req_per_sec, 1.5);
    assert_eq!(third.summary.uptime_ms, 3000);
    assert_eq!(third.sampled_at_ms - first.sampled_at_ms, 3000);
}

#[tokio::test(start_paused = true)]
async fn latencies_and_cache_hits_cover_the_last_30_seconds() {
    let w = worker("http://w:1");
    let snapshot = Snapshot::of_workers([&w]);
    let mut sampler = Sampler::new(about(), Instant::now());
    w.recent().record(done(Some(500), Some((100, 0))));
    tokio::time::advance(Duration::from_secs(25)).await;
    for ttft in [100, 120, 140] {
        w.recent().record(done(Some(ttft), Some((100, 90))));
    }
    let view = sample(&mut sampler, &snapshot, 4);
    assert_eq!(view.workers[0].ttft_p50_ms, Some(120.0));
    assert_eq!(view.workers[0].ttft_p99_ms, Some(500.0));
    assert_eq!(view.workers[0].cache_hit_rate, Some(0.675));

    // The slow one falls out of the window.
    tokio::time::advance(Duration::from_secs(6)).await;
    let view = sample(&mut sampler, &snapshot, 4);
    let worker = &view.workers[0];
    assert_eq!(
        (
            worker.ttft_p50_ms,
            worker.ttft_p99_ms,
            worker.cache_hit_rate
        ),
        (Some(120.0), Some(140.0), Some(0.9))
    );
    assert_eq!(view.summary.ttft_p50_ms, Some(120.0));
    assert_eq!(view.summary.cache_hit_rate, Some(0.9));

    tokio::time::advance(WINDOW).await;
    let idle = sample(&mut sampler, &snapshot, 4);
    assert_eq!(idle.workers[0].ttft_p50_ms, None);
    assert_eq!(idle.summary.cache_hit_rate, None);
}

#[tokio::test(start_paused = true)]
async fn the_fleet_figures_pool_every_worker() {
    let (a, b) = (worker("http://a:1"), worker("http://b:1"));
    b.set_draining(true);
    let _open = a.begin();
    for ttft in [10, 20, 30] {
        a.recent().record(done(Some(ttft), Some((10, 0))));
    }
    for ttft in [40, 50] {
        b.recent().record(done(Some(ttft), Some((10, 10))));
    }
    let mut sampler = Sampler::new(about(), Instant::now());
    let view = sampler.sample(&Reading {
        snapshot: &Snapshot::of_workers([&a, &b]),
        finished: 5,
        queued: 2,
        now: Instant::now(),
    });
    let s = &view.summary;
    assert_eq!((s.workers, s.healthy, s.draining), (2, 2, 1));
    assert_eq!((s.in_flight, s.queued), (1, 2));
    assert_eq!((s.ttft_p50_ms, s.ttft_p99_ms), (Some(30.0), Some(50.0)));
    assert_eq!(s.cache_hit_rate, Some(0.4));
    assert_eq!((s.policy.as_str(), s.pd), ("round_robin", false));
    assert_eq!(s.version, crate::VERSION);
    assert_eq!(view.history[0].in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn history_is_bounded_and_leaves_with_its_worker() {
    let (a, b) = (worker("http://a:1"), worker("http://b:1"));
    let both = Snapshot::of_workers([&a, &b]);
    let mut sampler = Sampler::new(about(), Instant::now());
    let mut view = sample(&mut sampler, &both, 0);
    for n in 1..=(HISTORY as u64 + 10) {
        tokio::time::advance(INTERVAL).await;
        serve(&a, 1);
        view = sample(&mut sampler, &both, n);
    }
    assert_eq!(view.history.len(), HISTORY);
    assert_eq!(view.workers[0].history.len(), HISTORY);
    assert!(
        view.history
            .windows(2)
            .all(|p| p[1].t_ms - p[0].t_ms == 1000)
    );
    assert_eq!(view.history.last().unwrap().t_ms, view.sampled_at_ms);
    assert!(view.workers[0].history.iter().all(|p| p.req_per_sec == 1.0));
    assert!(view.workers[1].history.iter().all(|p| p.req_per_sec == 0.0));

    // b leaves: its row and its history go.
    tokio::time::advance(INTERVAL).await;
    let only_a = sample(&mut sampler, &Snapshot::of_workers([&a]), 400);
    let labels: Vec<&str> = only_a
        .workers
        .iter()
        .map(|w| w.status.label.as_str())
        .collect();
    assert_eq!(labels, ["http://a:1"]);

    // Back, it starts from nothing: what it served since it was last seen counts as new.
    serve(&b, 7);
    tokio::time::advance(INTERVAL).await;
    let back = sample(&mut sampler, &both, 400);
    assert_eq!(back.workers[1].history.len(), 1);
    assert_eq!(back.workers[1].req_per_sec, 7.0);

    // A new worker at b's URL is not b, though it has b's label.
    let again = worker("http://b:1");
    serve(&again, 2);
    tokio::time::advance(INTERVAL).await;
    let other = sample(&mut sampler, &Snapshot::of_workers([&a, &again]), 400);
    assert_eq!(other.workers[1].history.len(), 1);
    assert_eq!(other.workers[1].req_per_sec, 2.0);
    assert_eq!(other.workers[1].status.requests_total, 2);
}

#[tokio::test(start_paused = true)]
async fn engine_figures_show_only_while_fresh() {
    let w = worker("http://w:1");
    let snapshot = Snapshot::of_workers([&w]);
    let sample_of = |fresh_for: Duration| EngineSample {
        metrics: EngineMetrics {
            running: Some(3.0),
            waiting: Some(1.0),
            kv_usage: Some(0.25),
            ..EngineMetrics::default()
        },
        preempting: false,
        in_flight_at_scrape: 0,
        fresh_until: std::time::Instant::now() + fresh_for,
    };
    w.set_engine_sample(Some(Arc::new(sample_of(Duration::from_secs(5)))));
    let status = WorkerStatus::of(&snapshot.members()[0], std::time::Instant::now());
    assert_eq!(
        (status.running, status.waiting, status.kv_cache_usage),
        (Some(3.0), Some(1.0), Some(0.25))
    );
    w.set_engine_sample(Some(Arc::new(sample_of(Duration::ZERO))));
    let later = std::time::Instant::now() + ms(1);
    let stale = WorkerStatus::of(&snapshot.members()[0], later);
    assert_eq!(
        (stale.running, stale.waiting, stale.kv_cache_usage),
        (None, None, None)
    );
}

#[test]
fn with_history_keeps_the_last_points() {
    let point = |t_ms| FleetPoint {
        t_ms,
        req_per_sec: 1.0,
        ttft_p50_ms: None,
        ttft_p99_ms: None,
        in_flight: 0,
    };
    let w = worker("http://w:1");
    let snapshot = Snapshot::of_workers([&w]);
    let view = FleetView {
        sampled_at_ms: 5,
        interval_ms: 1000,
        window_ms: 30_000,
        summary: example_summary(),
        workers: vec![WorkerView {
            status: WorkerStatus::of(&snapshot.members()[0], std::time::Instant::now()),
            req_per_sec: 0.0,
            ttft_p50_ms: None,
            ttft_p99_ms: None,
            cache_hit_rate: None,
            history: (1..=5)
                .map(|t_ms| WorkerPoint {
                    t_ms,
                    req_per_sec: 0.0,
                    ttft_p50_ms: None,
                })
                .collect(),
        }],
        history: (1..=5).map(point).collect(),
    };
    let two = view.with_history(2);
    let times: Vec<u64> = two.history.iter().map(|p| p.t_ms).collect();
    assert_eq!(times, [4, 5]);
    let times: Vec<u64> = two.workers[0].history.iter().map(|p| p.t_ms).collect();
    assert_eq!(times, [4, 5]);
    let none = view.with_history(0);
    assert!(none.history.is_empty() && none.workers[0].history.is_empty());
    assert_eq!(view.with_history(HISTORY), view);
}

fn example_summary() -> Summary {
    Summary {
        version: crate::VERSION.to_owned(),
        policy: "round_robin".to_owned(),
        pd: false,
        uptime_ms: 0,
        workers: 1,
        healthy: 1,
        draining: 0,
        in_flight: 0,
        queued: 0,
        req_per_sec: 0.0,
        ttft_p50_ms: None,
        ttft_p99_ms: None,
        cache_hit_rate: None,
    }
}

#[tokio::test(start_paused = true)]
async fn the_json_shape_is_stable_and_reads_back() {
    let w = worker("http://w:1");
    serve(&w, 1);
    w.recent().record(done(Some(42), Some((10, 5))));
    let mut sampler = Sampler::new(about(), Instant::now());
    let view = sample(&mut sampler, &Snapshot::of_workers([&w]), 1);
    let json = serde_json::to_value(&view).unwrap();
    let keys = |v: &serde_json::Value| {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys(&json),
        [
            "history",
            "interval_ms",
            "sampled_at_ms",
            "summary",
            "window_ms",
            "workers"
        ]
    );
    assert_eq!(
        keys(&json["summary"]),
        [
            "cache_hit_rate",
            "draining",
            "healthy",
            "in_flight",
            "pd",
            "policy",
            "queued",
            "req_per_sec",
            "ttft_p50_ms",
            "ttft_p99_ms",
            "uptime_ms",
            "version",
            "workers"
        ]
    );
    let row = &json["workers"][0];
    assert_eq!(
        keys(row),
        [
            "breaker",
            "cache_hit_rate",
            "capacity",
            "draining",
            "healthy",
            "history",
            "id",
            "in_flight",
            "kv_cache_usage",
            "label",
            "models",
            "rank",
            "req_per_sec",
            "requests_total",
            "role",
            "running",
            "ttft_p50_ms",
            "ttft_p99_ms",
            "url",
            "waiting"
        ]
    );
    assert_eq!(
        (&row["role"], &row["breaker"], &row["running"]),
        (
            &serde_json::json!("regular"),
            &serde_json::json!("closed"),
            &serde_json::Value::Null
        )
    );
    assert_eq!(row["id"], w.server_id());
    assert_eq!(row["ttft_p50_ms"], 42.0);
    assert_eq!(
        keys(&json["history"][0]),
        [
            "in_flight",
            "req_per_sec",
            "t_ms",
            "ttft_p50_ms",
            "ttft_p99_ms"
        ]
    );
    assert_eq!(
        keys(&row["history"][0]),
        ["req_per_sec", "t_ms", "ttft_p50_ms"]
    );
    let read: FleetView = serde_json::from_value(json).unwrap();
    assert_eq!(read, view);
}

#[test]
fn roles_and_breaker_states_serialize_as_their_names() {
    use crate::config::Role;
    use crate::fleet::BreakerState;
    for role in [Role::Regular, Role::Prefill, Role::Decode] {
        assert_eq!(serde_json::to_value(role).unwrap(), role.name());
    }
    for state in [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ] {
        assert_eq!(serde_json::to_value(state).unwrap(), state.name());
    }
}

#[tokio::test(start_paused = true)]
async fn a_finished_exchange_is_counted_and_kept_on_its_worker() {
    let metrics = Metrics::new();
    let w = worker("http://w:1");
    let begin = || {
        Exchange::begin(
            Arc::clone(&metrics),
            "POST",
            "/v1/chat/completions",
            HeaderValue::from_static("req"),
            TraceId::random(),
        )
    };
    let mut streamed = begin();
    tokio::time::advance(ms(40)).await;
    streamed.answered(&w, 200, true, None);
    streamed.frame(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
    tokio::time::advance(ms(10)).await;
    streamed.frame(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":1,\"prompt_tokens_details\":{\"cached_tokens\":25}}}\n\n");
    streamed.end(Outcome::Complete);
    drop(streamed);

    let mut refused = begin();
    refused.refused(429, "queue full".to_owned());
    drop(refused);

    assert_eq!(metrics.requests_finished(), 2);
    let mut kept = Vec::new();
    w.recent()
        .since(Instant::now() - Duration::from_secs(1), &mut kept);
    assert_eq!(
        kept,
        [Completion {
            at: Instant::now(),
            ttft: Some(ms(40)),
            prompt: Some(PromptTokens {
                total: 100,
                cached: 25
            }),
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn the_sampler_publishes_every_interval_until_stopped() {
    let fleet = Arc::new(crate::fleet::Fleet::start(&[], Vec::new()));
    let metrics = Metrics::new();
    let (_resample, resampled) = tokio::sync::watch::channel(false);
    let (live, task) = Live::start(
        Inputs {
            fleet,
            metrics: Arc::clone(&metrics),
            admission: Arc::new(Admission::new(AdmissionConfig::default())),
            about: about(),
        },
        resampled,
    );
    let first = live.view();
    assert_eq!(first.history.len(), 1, "a view from the start");

    for _ in 0..4 {
        drop(Exchange::begin(
            Arc::clone(&metrics),
            "POST",
            "/v1/completions",
            HeaderValue::from_static("req"),
            TraceId::random(),
        ));
    }
    tokio::time::sleep(INTERVAL + ms(1)).await;
    let second = live.view();
    assert_eq!(second.history.len(), 2);
    assert_eq!(second.sampled_at_ms - first.sampled_at_ms, 1000);
    assert_eq!(second.summary.req_per_sec, 4.0);

    task.abort();
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(live.view().history.len(), 2, "no samples once stopped");
}

#[tokio::test(start_paused = true)]
async fn the_sampler_samples_at_once_when_the_start_up_wait_ends() {
    let fleet = Arc::new(crate::fleet::Fleet::start(&[], Vec::new()));
    let (started_up, resampled) = tokio::sync::watch::channel(false);
    let (live, task) = Live::start(
        Inputs {
            fleet,
            metrics: Metrics::new(),
            admission: Arc::new(Admission::new(AdmissionConfig::default())),
            about: about(),
        },
        resampled,
    );
    started_up.send_replace(true);
    tokio::time::sleep(ms(1)).await;
    assert_eq!(
        live.view().history.len(),
        2,
        "a view at once, not a tick later"
    );
    task.abort();
}
