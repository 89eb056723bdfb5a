//! Costs on the request path: a policy's choice among 16 workers, `cache_aware` on a
//! 32k-token prompt, the peek of request bodies, and prefix-index insert and match.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use vllm_router::config::WorkerUrl;
use vllm_router::fleet::{EngineMetrics, EngineSample, Snapshot, Worker};
use vllm_router::policy::{PolicyConfig, PolicyKind, RouteRequest};
use vllm_router::prefix::{PrefixIndex, chain_hashes};
use vllm_router::proxy::peek::peek_json;

const WORKERS: usize = 16;

fn fleet() -> Vec<Arc<Worker>> {
    (0..WORKERS)
        .map(|i| {
            let url =
                WorkerUrl::parse("--worker-urls", &format!("http://10.0.0.{i}:8000")).expect("url");
            let w = Arc::new(Worker::new(url));
            w.set_engine_sample(Some(Arc::new(EngineSample {
                metrics: EngineMetrics {
                    running: Some((i % 5) as f64),
                    waiting: Some((i % 3) as f64),
                    kv_usage: Some(i as f64 / WORKERS as f64),
                    ..EngineMetrics::default()
                },
                preempting: false,
                in_flight_at_scrape: 0,
                fresh_until: Instant::now() + Duration::from_secs(3600),
            })));
            w
        })
        .collect()
}

fn snapshot(workers: &[Arc<Worker>]) -> Snapshot {
    Snapshot::of_workers(workers)
}

/// About 32k tokens of chat text (~128 KiB), with a long shared system prompt.
fn long_prompt(user: usize) -> String {
    let system = "<|system|>\nYou are a careful assistant who answers briefly. ".repeat(600);
    let turns = format!("<|user|>\nplease summarise document {user} for me ").repeat(2000);
    system + &turns
}

fn choices(c: &mut Criterion) {
    let workers = fleet();
    let snap = snapshot(&workers);
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("choose_among_16");
    for kind in [
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::PowerOfTwo,
        PolicyKind::LeastLoad,
        PolicyKind::Weighted,
        PolicyKind::ConsistentHash,
    ] {
        let policy = kind.build(&PolicyConfig::default());
        policy.on_fleet_change(&snap);
        let req = RouteRequest {
            session_key: Some("user-1234"),
            ..RouteRequest::new("/v1/chat/completions", &headers)
        };
        group.bench_function(kind.name(), |b| {
            b.iter(|| policy.pick(black_box(&req), black_box(&workers)))
        });
    }
    group.finish();
}

fn cache_aware(c: &mut Criterion) {
    let workers = fleet();
    let policy = PolicyKind::CacheAware.build(&PolicyConfig::default());
    policy.on_fleet_change(&snapshot(&workers));
    let headers = HeaderMap::new();
    // Warm every worker's index with other users' conversations.
    for user in 0..64 {
        let prompt = long_prompt(user);
        let req = RouteRequest {
            prompt: Some(&prompt),
            ..RouteRequest::new("/v1/chat/completions", &headers)
        };
        policy.pick(&req, &workers);
    }
    let prompt = long_prompt(7);
    let req = RouteRequest {
        prompt: Some(&prompt),
        ..RouteRequest::new("/v1/chat/completions", &headers)
    };
    c.bench_function("cache_aware_32k_token_prompt", |b| {
        b.iter(|| policy.pick(black_box(&req), black_box(&workers)))
    });
}

fn peek(c: &mut Criterion) {
    let small = br#"{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":4}"#;
    let long = serde_json::json!({
        "model": "m",
        "messages": [{"role": "system", "content": long_prompt(1)}, {"role": "user", "content": "go"}],
        "user": "u-1",
    })
    .to_string();
    c.bench_function("peek_small_chat", |b| {
        b.iter(|| peek_json(black_box(small), false))
    });
    c.bench_function("peek_128k_chat", |b| {
        b.iter(|| peek_json(black_box(long.as_bytes()), false))
    });
    c.bench_function("peek_128k_chat_with_prompt", |b| {
        b.iter(|| peek_json(black_box(long.as_bytes()), true))
    });
}

fn prefix_index(c: &mut Criterion) {
    let text = long_prompt(3);
    let chain = chain_hashes(text.as_bytes());
    let mut index = PrefixIndex::default();
    for user in 0..32 {
        index.insert(
            &chain_hashes(long_prompt(user + 100).as_bytes()),
            user as u64,
        );
    }
    c.bench_function("prefix_chain_hashes_128k", |b| {
        b.iter(|| chain_hashes(black_box(text.as_bytes())))
    });
    c.bench_function("prefix_insert_128k", |b| {
        b.iter(|| index.insert(black_box(&chain), 1000))
    });
    c.bench_function("prefix_match_128k", |b| {
        b.iter(|| index.matched(black_box(&chain)))
    });
}

criterion_group!(benches, choices, cache_aware, peek, prefix_index);
criterion_main!(benches);
