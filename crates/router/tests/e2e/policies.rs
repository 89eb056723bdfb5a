//! Policies on real signals: the workers' `/metrics` scraped over HTTP, and session keys.

use std::time::Duration;

use serde_json::json;
use vllm_router::policy::PolicyKind;
use vllm_sim::SimConfig;

use crate::support::*;

#[tokio::test]
async fn least_load_avoids_a_worker_whose_engine_queue_is_deep() {
    let one_at_a_time = || SimConfig {
        max_num_seqs: 1,
        itl: Duration::from_millis(100),
        ..SimConfig::default()
    };
    let workers = sims([one_at_a_time(), one_at_a_time()]).await;
    let router = router_with(&workers, |a| {
        a.policy = Some(PolicyKind::LeastLoad);
        a.load_scrape_interval_ms = 50;
    })
    .await;

    // Other clients load worker 0 directly, behind the router's back: only its /metrics shows it.
    let body =
        json!({"model": MODEL, "prompt": "long", "max_tokens": 100, "stream": true}).to_string();
    let mut direct = Vec::new();
    for _ in 0..3 {
        direct.push(RawClient::post(workers[0].addr(), "/v1/completions", &body).await);
    }
    let busy = router.app().fleet.snapshot().members()[0].worker.clone();
    eventually(Duration::from_secs(5), || {
        let sample = busy.engine_sample()?;
        (sample.metrics.waiting? >= 2.0).then_some(())
    })
    .await;

    let url = format!("{}/v1/completions", router.url());
    for _ in 0..6 {
        let r = post_json(
            &url,
            json!({"model": MODEL, "prompt": "x", "max_tokens": 1}),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-vllm-router-worker"),
            workers[1].url(),
            "sent to the queued worker"
        );
    }
    drop(direct);
}

#[tokio::test]
async fn consistent_hash_keeps_a_session_on_one_worker() {
    let workers = fast_sims(3).await;
    let router = router_with(&workers, |a| a.policy = Some(PolicyKind::ConsistentHash)).await;
    let url = format!("{}/v1/chat/completions", router.url());

    let session = |key: &'static str| {
        let url = url.clone();
        async move {
            let headers = [("content-type", "application/json"), ("x-session-id", key)];
            send(
                http::Method::POST,
                &url,
                &headers,
                chat(MODEL, false).to_string(),
            )
            .await
        }
    };
    // Turns of a conversation come one after another: they all land on the session's worker.
    let mut turns = Vec::new();
    for _ in 0..8 {
        turns.push(
            session("alice")
                .await
                .header("x-vllm-router-worker")
                .to_owned(),
        );
    }
    assert!(turns.iter().all(|w| *w == turns[0]), "{turns:?}");

    // A burst of one key at once exceeds the load bound: the overflow walks the ring.
    let burst = futures_util::future::join_all((0..9).map(|_| session("alice"))).await;
    let burst: std::collections::HashSet<&str> = burst
        .iter()
        .map(|r| r.header("x-vllm-router-worker"))
        .collect();
    assert!(
        burst.len() > 1,
        "a burst of one session was not spread: {burst:?}"
    );

    let mut by_body = Vec::new();
    let mut spread = std::collections::HashSet::new();
    for user in 0..30 {
        let mut body = chat(MODEL, false);
        body["user"] = json!(format!("user-{user}"));
        let first = post_json(&url, body.clone())
            .await
            .header("x-vllm-router-worker")
            .to_owned();
        let again = post_json(&url, body)
            .await
            .header("x-vllm-router-worker")
            .to_owned();
        assert_eq!(first, again, "user-{user} moved");
        spread.insert(first.clone());
        by_body.push(first);
    }
    assert_eq!(
        spread.len(),
        3,
        "30 sessions should reach all 3 workers: {by_body:?}"
    );
}

#[tokio::test]
async fn cache_aware_returns_each_conversation_to_the_worker_holding_its_prefix() {
    let workers = fast_sims(4).await;
    let router = router_with(&workers, |a| a.policy = Some(PolicyKind::CacheAware)).await;
    let url = format!("{}/v1/chat/completions", router.url());
    for group in 0..4 {
        let system = format!("You are the assistant of team {group}. ").repeat(60);
        let mut messages = vec![json!({"role": "system", "content": system})];
        let mut home = String::new();
        for turn in 0..4 {
            messages.push(
                json!({"role": "user", "content": format!("Question {turn} from team {group}?")}),
            );
            let r = post_json(
                &url,
                json!({"model": MODEL, "messages": messages, "max_tokens": 4}),
            )
            .await;
            assert_eq!(r.status, 200);
            let worker = r.header("x-vllm-router-worker").to_owned();
            let v = r.json();
            if turn == 0 {
                home = worker;
            } else {
                assert_eq!(worker, home, "team {group} turn {turn} left its worker");
                let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .unwrap();
                assert!(cached > 300, "turn {turn}: only {cached} cached tokens");
            }
            let reply = v["choices"][0]["message"]["content"].clone();
            messages.push(json!({"role": "assistant", "content": reply}));
        }
    }
    // Every answer's reported usage was checked against the prediction.
    let metrics = router.app().render_metrics();
    assert!(
        metrics.contains("vllm_router_prefix_prediction_error_count 16"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"vllm_router_routing_decisions_total{policy="cache_aware""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_worker_learns_its_bytes_per_token_from_the_usage_it_reports() {
    let workers = fast_sims(2).await;
    let router = router_with(&workers, |a| a.policy = Some(PolicyKind::CacheAware)).await;
    // Six words and a full stop in 40 bytes: the simulator's tokenizer gives about 5.7 bytes
    // a token, not the 4 assumed before any report.
    let system = "Shared instructions for the whole team. ".repeat(40);
    let body = json!({"model": MODEL, "max_tokens": 2, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": "hello"},
    ]});
    let served = post_json(
        &format!("{}/v1/chat/completions", router.url()),
        body.clone(),
    )
    .await;
    assert_eq!(served.status, 200);
    let home = served.header("x-vllm-router-worker").to_owned();
    let tokens = served.json()["usage"]["prompt_tokens"].as_f64().unwrap();
    let learned_by = |url: &str| {
        let snapshot = router.app().fleet.snapshot();
        let member = snapshot.members().iter().find(|m| m.worker.url() == url)?;
        member.worker.learned_bytes_per_token()
    };
    let learned = eventually(Duration::from_secs(5), || learned_by(&home)).await;
    let expected = (system.len() + "hello".len()) as f64 / tokens;
    assert!(
        (learned - expected).abs() < 0.15 * expected,
        "learned {learned}, prompt text over tokens {expected}"
    );
    assert!(learned > 5.0, "{learned}");
    let other = workers
        .iter()
        .map(|w| w.url())
        .find(|u| *u != home)
        .unwrap();
    assert_eq!(learned_by(&other), None);

    // /debug/route shows what each worker learned.
    let v = post_json(
        &format!("{}/debug/route?path=/v1/chat/completions", router.url()),
        body,
    )
    .await
    .json();
    let rows = v["candidates"].as_array().unwrap();
    let row = |url: &str| rows.iter().find(|r| r["url"] == url).unwrap();
    assert_eq!(row(&home)["bytes_per_token"].as_f64(), Some(learned), "{v}");
    assert!(row(&other)["bytes_per_token"].is_null(), "{v}");
}

#[tokio::test]
async fn debug_route_explains_without_forwarding_or_learning() {
    let workers = fast_sims(3).await;
    let router = router_with(&workers, |a| a.policy = Some(PolicyKind::CacheAware)).await;
    let system = "Shared instructions for the whole team. ".repeat(40);
    let turn = |n: usize| {
        json!({"model": MODEL, "max_tokens": 2, "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": format!("question number {n}")},
        ]})
    };
    let served = post_json(&format!("{}/v1/chat/completions", router.url()), turn(1)).await;
    let home = served.header("x-vllm-router-worker").to_owned();
    let forwarded: usize = workers.iter().map(|w| w.records().len()).sum();

    let debug = format!("{}/debug/route?path=/v1/chat/completions", router.url());
    let first = post_json(&debug, turn(2)).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let v = first.json();
    assert_eq!(v["policy"], "cache_aware");
    assert_eq!(v["choice"]["url"], home.as_str());
    assert_eq!(v["choice"]["reason"], "cached prefix: holder");
    let rows = v["candidates"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let held: Vec<u64> = rows
        .iter()
        .map(|r| r["matched_prefix_blocks"].as_u64().unwrap())
        .collect();
    let home_row = rows.iter().find(|r| r["url"] == home.as_str()).unwrap();
    assert!(
        home_row["matched_prefix_blocks"].as_u64().unwrap() > 10,
        "{v}"
    );
    assert_eq!(held.iter().filter(|&&b| b > 0).count(), 1, "{v}");
    assert!(rows.iter().all(|r| r["score"].is_number()));
    // Every term of the cost is shown, and they add up to the score.
    let terms = &home_row["terms"];
    assert_eq!(
        terms["matched_blocks"], home_row["matched_prefix_blocks"],
        "{v}"
    );
    assert_eq!(terms["booked_blocks"], 0, "{v}");
    let uncached = terms["uncached_blocks"].as_f64().unwrap();
    let queued = terms["queued"].as_f64().unwrap();
    assert_eq!(
        home_row["score"].as_f64().unwrap(),
        uncached + queued,
        "{v}"
    );

    // Nothing was forwarded, and explaining again sees the same index (nothing learned).
    assert_eq!(
        workers.iter().map(|w| w.records().len()).sum::<usize>(),
        forwarded
    );
    let again = post_json(&debug, turn(2)).await.json();
    let overlap = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        let rows = v["candidates"].as_array().unwrap();
        rows.iter()
            .map(|r| r["matched_prefix_blocks"].clone())
            .collect()
    };
    assert_eq!(overlap(&again), overlap(&v));

    let bad = post_json(
        &format!("{}/debug/route?path=/v1/nope", router.url()),
        turn(2),
    )
    .await;
    bad.assert_error(400);
    let unknown = post_json(&debug, json!({"model": "nope", "messages": []})).await;
    unknown.assert_error(404);
}

#[tokio::test]
async fn a_worker_learns_its_pace_from_streamed_first_tokens_only() {
    let paced = |per_token_us: u64| SimConfig {
        ttft: Duration::from_millis(per_token_us / 10),
        prefill_per_token: Duration::from_micros(per_token_us),
        ..SimConfig::default()
    };
    let workers = sims([paced(20), paced(400)]).await;
    let (fast, slow) = (workers[0].url(), workers[1].url());
    let router = router_with(&workers, |a| a.policy = Some(PolicyKind::CacheAware)).await;
    let body = |n: usize, stream: bool| {
        json!({"model": MODEL, "max_tokens": 2, "stream": stream, "messages": [
            {"role": "system", "content": format!("Instructions of team {n}. ").repeat(60)},
            {"role": "user", "content": "hello"},
        ]})
    };
    let pace_of = |url: &str| {
        let snapshot = router.app().fleet.snapshot();
        let member = snapshot.members().iter().find(|m| m.worker.url() == url)?;
        member.worker.secs_per_block()
    };
    // Whole answers come after the generation: they teach nothing.
    for n in 0..4 {
        let r = post_json(
            &format!("{}/v1/chat/completions", router.url()),
            body(n, false),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!((pace_of(&fast), pace_of(&slow)), (None, None));
    // Streamed ones do. New prefixes spread over both workers (the emptier cache is cheaper).
    for n in 10..16 {
        let r = post_json(
            &format!("{}/v1/chat/completions", router.url()),
            body(n, true),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let (f, s) = eventually(Duration::from_secs(5), || {
        Some((pace_of(&fast)?, pace_of(&slow)?))
    })
    .await;
    assert!(
        s > 2.0 * f,
        "the slow worker's pace {s} against the fast one's {f}"
    );

    // /debug/route shows the pace, and the speed the cost is scaled by.
    let v = post_json(
        &format!("{}/debug/route?path=/v1/chat/completions", router.url()),
        body(99, true),
    )
    .await
    .json();
    let rows = v["candidates"].as_array().unwrap();
    let row = |url: &str| rows.iter().find(|r| r["url"] == url).unwrap();
    let shown = row(&slow)["secs_per_block"].as_f64().unwrap();
    // Printed to JSON and read back: equal but for the last digit.
    assert!((shown - s).abs() <= 1e-9 * s, "{shown} against {s}: {v}");
    let speed = |url: &str| row(url)["terms"]["speed"].as_f64().unwrap();
    assert!(speed(&slow) > 1.0 && speed(&fast) < 1.0, "{v}");
    assert_eq!(v["choice"]["url"], fast.as_str(), "{v}");
}
