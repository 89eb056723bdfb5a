//! Prefill/decode disaggregation: the two legs, their exact bodies, failover per leg,
//! disconnects during either leg, conditional prefill, data-parallel ranks, and the routes
//! that have no P/D meaning.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use sha2::{Digest, Sha256};
use vllm_router::cli::RouterArgs;
use vllm_router::server::RouterHandle;
use vllm_sim::{RequestRecord, Role, SimConfig, SimServer};

use crate::support::*;

mod mooncake;
mod ranks;

fn role(role: Role) -> SimConfig {
    SimConfig {
        role,
        ..SimConfig::default()
    }
}

/// A worker of `role` answering every inference request with a 500.
fn failing(role: Role) -> SimConfig {
    SimConfig {
        role,
        error_rate: 1.0,
        ..SimConfig::default()
    }
}

fn assert_ok(reply: &Reply) {
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
}

async fn pd_sims(prefill: usize, decode: usize) -> (Vec<SimServer>, Vec<SimServer>) {
    (
        sims((0..prefill).map(|_| role(Role::Prefill))).await,
        sims((0..decode).map(|_| role(Role::Decode))).await,
    )
}

/// A P/D router in front of these prefill and decode workers.
async fn pd_router(
    prefill: &[SimServer],
    decode: &[SimServer],
    tweak: impl FnOnce(&mut RouterArgs),
) -> RouterHandle {
    router_with(&[], |a| {
        a.vllm_pd_disaggregation = true;
        a.prefill = prefill.iter().map(SimServer::url).collect();
        a.decode = decode.iter().map(SimServer::url).collect();
        a.prefill_policy = Some(vllm_router::policy::PolicyKind::RoundRobin);
        a.decode_policy = Some(vllm_router::policy::PolicyKind::RoundRobin);
        tweak(a);
    })
    .await
}

/// A small chat completion through `router`.
async fn chat_via(router: &RouterHandle, stream: bool) -> Reply {
    post_json(
        &format!("{}/v1/chat/completions", router.url()),
        chat(MODEL, stream),
    )
    .await
}

fn inference(records: Vec<RequestRecord>) -> Vec<RequestRecord> {
    records
        .into_iter()
        .filter(|r| r.path.starts_with("/v1/"))
        .filter(|r| r.path != "/v1/models")
        .collect()
}

fn all_records(servers: &[SimServer]) -> Vec<RequestRecord> {
    servers
        .iter()
        .flat_map(|s| inference(s.records()))
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const NIXL_PREFILL_PARAMS: &str = r#"{"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}"#;

/// The body a client sends, as text, so the expected leg bodies can be spelled out.
const CLIENT_BODY: &str = r#"{"model":"sim-model","messages":[{"role":"user","content":"Explain KV caches"}],"max_tokens":5,"temperature":0.50,"stream":STREAM,"stream_options":{"include_usage":true},"vendor_field":{"keep":[1,2.0]}}"#;

async fn nixl_round_trip(stream: bool) {
    let (prefill, decode) = pd_sims(1, 1).await;
    let router = pd_router(&prefill, &decode, |_| {}).await;
    let body = CLIENT_BODY.replace("STREAM", &stream.to_string());
    let reply = send(
        Method::POST,
        &format!("{}/v1/chat/completions", router.url()),
        &[
            ("content-type", "application/json"),
            ("x-request-id", "pd-req-1"),
        ],
        body.clone(),
    )
    .await;
    assert_ok(&reply);
    assert_eq!(reply.header("x-request-id"), "pd-req-1");
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    if stream {
        assert!(text.contains("data: [DONE]"), "{text}");
    } else {
        assert_eq!(reply.json()["object"], "chat.completion");
    }

    let p = inference(prefill[0].records());
    let d = inference(decode[0].records());
    assert_eq!((p.len(), d.len()), (1, 1), "one leg each");
    let (p, d) = (&p[0], &d[0]);
    assert_eq!(p.request_id.as_deref(), Some("pd-req-1"));
    assert_eq!(d.request_id.as_deref(), Some("pd-req-1"));
    // The prefill leg: one token, not streamed, no stream_options, asking for a remote decode;
    // every other field byte for byte.
    let expected_prefill = format!(
        r#"{{"model":"sim-model","messages":[{{"role":"user","content":"Explain KV caches"}}],"max_tokens":1,"temperature":0.50,"stream":false,"vendor_field":{{"keep":[1,2.0]}},"kv_transfer_params":{NIXL_PREFILL_PARAMS}}}"#
    );
    assert_eq!(p.body_sha256, sha(expected_prefill.as_bytes()));
    assert!(!p.stream);
    // The decode leg: the client's request plus the prefill's parameters, verbatim.
    let params = d.kv_transfer_params.clone().expect("decode got parameters");
    assert_eq!(params["do_remote_prefill"], true);
    assert_eq!(params["remote_engine_id"], prefill[0].config().engine_id);
    assert!(params["remote_block_ids"].is_array(), "{params}");
    let expected_decode = format!(
        "{},\"kv_transfer_params\":{}}}",
        body.strip_suffix('}').unwrap(),
        serde_json::to_string(&params).unwrap()
    );
    assert_eq!(d.body_sha256, sha(expected_decode.as_bytes()));
    assert_eq!(d.stream, stream);
    assert_eq!(
        d.cached_tokens, d.prompt_tokens,
        "the decode worker did not recompute the prompt"
    );
}

#[tokio::test]
async fn nixl_legs_carry_the_exact_bodies_and_one_request_id_non_streaming() {
    nixl_round_trip(false).await;
}

#[tokio::test]
async fn nixl_legs_carry_the_exact_bodies_and_one_request_id_streaming() {
    nixl_round_trip(true).await;
}

#[tokio::test]
async fn both_legs_carry_the_clients_trace_each_under_its_own_span() {
    let (prefill, decode) = pd_sims(1, 1).await;
    let collector = Collector::start().await;
    let router = pd_router(&prefill, &decode, |a| {
        a.otlp_traces_endpoint = Some(collector.endpoint());
    })
    .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let reply = send(
        Method::POST,
        &format!("{}/v1/chat/completions", router.url()),
        &[
            ("content-type", "application/json"),
            ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01")),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
        chat(MODEL, true).to_string(),
    )
    .await;
    assert_ok(&reply);
    let (p, d) = (
        inference(prefill[0].records()),
        inference(decode[0].records()),
    );
    let (p_trace, p_parent, _) = traceparent_of(&p[0]);
    let (d_trace, d_parent, _) = traceparent_of(&d[0]);
    assert_eq!((p_trace.as_str(), d_trace.as_str()), (trace, trace));
    assert_ne!(p_parent, d_parent, "each leg is its own span");
    for record in [&p[0], &d[0]] {
        assert_eq!(header_values(record, "tracestate"), ["congo=t61rcWkgMzE"]);
    }
    router.shutdown().await.unwrap();
    let spans = collector.spans();
    let server = spans
        .iter()
        .find(|s| s.parent_span_id == [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
    let server = server.expect("the request's span, under the client's");
    let legs: Vec<(String, String)> = spans
        .iter()
        .filter(|s| s.parent_span_id == server.span_id)
        .map(|s| (attr(s, "vllm_router.stage").unwrap(), hex(&s.span_id)))
        .collect();
    assert_eq!(
        legs,
        [
            ("prefill".to_owned(), p_parent),
            ("decode".to_owned(), d_parent)
        ],
        "one span per leg, with the ids the workers saw"
    );
}

#[tokio::test]
async fn completions_go_through_the_plan_too() {
    let (prefill, decode) = pd_sims(1, 1).await;
    let router = pd_router(&prefill, &decode, |_| {}).await;
    let reply = post_json(
        &format!("{}/v1/completions", router.url()),
        json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 3}),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["object"], "text_completion");
    assert_eq!(all_records(&prefill).len(), 1);
    assert_eq!(all_records(&decode).len(), 1);
}

#[tokio::test]
async fn a_failing_prefill_is_retried_on_another_prefill_worker() {
    // The first prefill worker answers 500; one "prefill" is really a decode worker, whose
    // answer lacks kv_transfer_params: both must be passed over for the good one.
    let broken = sims([failing(Role::Prefill)]).await;
    let paramless = sims([role(Role::Decode)]).await;
    let good = sims([role(Role::Prefill)]).await;
    let decode = sims([role(Role::Decode)]).await;
    let prefill: Vec<SimServer> = broken.into_iter().chain(paramless).chain(good).collect();
    let router = pd_router(&prefill, &decode, |a| {
        a.retry_initial_backoff_ms = 1;
        a.retry_budget_min_per_sec = 1000.0;
    })
    .await;
    for _ in 0..3 {
        let reply = chat_via(&router, false).await;
        assert_ok(&reply);
    }
    let decoded = all_records(&decode);
    assert_eq!(decoded.len(), 3);
    let good_engine = prefill[2].config().engine_id.clone();
    for d in &decoded {
        let params = d.kv_transfer_params.as_ref().expect("params");
        assert_eq!(params["remote_engine_id"], good_engine.as_str());
    }
    let metrics = router.app().render_metrics();
    assert!(
        metrics.contains("vllm_router_retries_total{cause=\"unusable_answer\"}"),
        "{metrics}"
    );
    // Each request's prefill leg (retries within it) and decode leg are timed once.
    for leg in [
        r#"vllm_router_pd_leg_duration_seconds_count{leg="prefill",outcome="ready"} 3"#,
        r#"vllm_router_pd_leg_duration_seconds_count{leg="decode",outcome="answered"} 3"#,
    ] {
        assert!(metrics.lines().any(|l| l == leg), "{leg} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_prefill_failure_is_an_error_not_a_silent_recompute() {
    let prefill = sims([failing(Role::Prefill)]).await;
    let decode = sims([role(Role::Decode)]).await;
    let router = pd_router(&prefill, &decode, |_| {}).await;
    let reply = chat_via(&router, false).await;
    reply.assert_error(502);
    assert!(
        all_records(&decode).is_empty(),
        "the decode worker was not asked to recompute"
    );

    // Unless configured: then the decode worker gets the client's request whole.
    let router = pd_router(&prefill, &decode, |a| {
        a.pd_recompute_on_prefill_failure = true;
    })
    .await;
    let reply = chat_via(&router, false).await;
    assert_eq!(reply.status, 200);
    let d = all_records(&decode);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].kv_transfer_params, None);
    assert_eq!(
        d[0].body_sha256,
        sha(chat(MODEL, false).to_string().as_bytes())
    );
}

#[tokio::test]
async fn a_decode_failing_before_its_first_byte_is_retried_with_the_same_parameters() {
    let (prefill, decode) = pd_sims(1, 2).await;
    let router = pd_router(&prefill, &decode, |a| a.retry_initial_backoff_ms = 1).await;
    // The first decode worker in rotation dies: connections are refused.
    decode[0].kill();
    for stream in [false, true] {
        let reply = chat_via(&router, stream).await;
        assert_ok(&reply);
    }
    assert_eq!(inference(decode[1].records()).len(), 2);
    // A decode answering a retryable status is passed over with the prefill's parameters.
    let (prefill, decode) = pd_sims(1, 2).await;
    decode[0].set_error_rate(1.0);
    let router = pd_router(&prefill, &decode, |a| {
        a.retry_initial_backoff_ms = 1;
        a.retry_on_status = vec![500];
    })
    .await;
    let reply = chat_via(&router, false).await;
    assert_ok(&reply);
    let (failed, served) = (
        inference(decode[0].records()),
        inference(decode[1].records()),
    );
    assert_eq!((failed.len(), served.len()), (1, 1));
    assert_eq!(failed[0].status, 500);
    assert_eq!(
        failed[0].body_sha256, served[0].body_sha256,
        "the same body, parameters included"
    );
    assert!(served[0].kv_transfer_params.is_some());
    assert_eq!(
        all_records(&prefill).len(),
        1,
        "one prefill for both attempts"
    );
}

#[tokio::test]
async fn a_client_leaving_during_the_prefill_cancels_the_prefill() {
    let prefill = sims([SimConfig {
        role: Role::Prefill,
        ttft: Duration::from_secs(3),
        ..SimConfig::default()
    }])
    .await;
    let decode = sims([role(Role::Decode)]).await;
    let router = pd_router(&prefill, &decode, |_| {}).await;
    let client = RawClient::post(
        router.addr(),
        "/v1/chat/completions",
        &chat(MODEL, true).to_string(),
    )
    .await;
    eventually(Duration::from_secs(2), || {
        (!inference(prefill[0].records()).is_empty()).then_some(())
    })
    .await;
    let left = Instant::now();
    drop(client);
    let cancelled = eventually(Duration::from_secs(5), || {
        prefill[0].records().iter().find_map(|r| r.cancelled_at)
    })
    .await;
    // Promptly (milliseconds, given 2 s on a loaded machine), and long before the 3 s prefill
    // would have ended by itself.
    let after = cancelled.saturating_duration_since(left);
    assert!(after < Duration::from_secs(2), "cancelled {after:?} after");
    // Time for a decode leg to be sent, were it to be.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        all_records(&decode).is_empty(),
        "no decode leg after the client left"
    );
}

#[tokio::test]
async fn a_client_leaving_during_the_decode_cancels_the_decode() {
    let prefill = sims([role(Role::Prefill)]).await;
    let decode = sims([SimConfig {
        role: Role::Decode,
        itl: Duration::from_millis(200),
        ..SimConfig::default()
    }])
    .await;
    let router = pd_router(&prefill, &decode, |_| {}).await;
    let mut body = chat(MODEL, true);
    body["max_tokens"] = json!(100);
    let mut client =
        RawClient::post(router.addr(), "/v1/chat/completions", &body.to_string()).await;
    client.read_until("data: ", 2).await;
    let left = Instant::now();
    drop(client);
    let cancelled = eventually(Duration::from_secs(5), || {
        decode[0].records().iter().find_map(|r| r.cancelled_at)
    })
    .await;
    // Promptly (milliseconds, given 2 s on a loaded machine): the stream had some 20 s left.
    let after = cancelled.saturating_duration_since(left);
    assert!(after < Duration::from_secs(2), "cancelled {after:?} after");
}

#[tokio::test]
async fn routes_without_pd_meaning_go_to_one_worker() {
    let (prefill, decode) = pd_sims(1, 1).await;
    let router = pd_router(&prefill, &decode, |_| {}).await;
    let embed = post_json(
        &format!("{}/v1/embeddings", router.url()),
        json!({"model": MODEL, "input": "hello"}),
    )
    .await;
    assert_eq!(embed.status, 200);
    let tokens = post_json(
        &format!("{}/tokenize", router.url()),
        json!({"model": MODEL, "prompt": "hello world"}),
    )
    .await;
    assert_eq!(tokens.status, 200);
    assert!(tokens.json()["tokens"].is_array());
    let models = get(&format!("{}/v1/models", router.url())).await;
    assert_eq!(models.json()["data"][0]["id"], MODEL);
    // Each went to exactly one worker, untouched: no kv_transfer_params anywhere.
    let mut seen: Vec<RequestRecord> = prefill
        .iter()
        .chain(&decode)
        .flat_map(|s| s.records())
        .filter(|r| r.path == "/v1/embeddings" || r.path == "/tokenize")
        .collect();
    seen.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.kv_transfer_params.is_none()));
}

#[tokio::test]
async fn conditional_prefill_skips_short_prompts_and_prompts_the_decode_worker_holds() {
    let (prefill, decode) = pd_sims(1, 1).await;
    let router = pd_router(&prefill, &decode, |a| a.pd_min_uncached_tokens = 64).await;
    let url = format!("{}/v1/chat/completions", router.url());
    // A short prompt: straight to decode, untouched.
    let short = chat(MODEL, false);
    assert_eq!(post_json(&url, short.clone()).await.status, 200);
    assert!(all_records(&prefill).is_empty());
    let d = all_records(&decode);
    assert_eq!(d[0].kv_transfer_params, None);
    assert_eq!(d[0].body_sha256, sha(short.to_string().as_bytes()));
    // A long prompt, first time: prefilled.
    let long_text = "The quick brown fox jumps over the lazy dog. ".repeat(40);
    let long = json!({"model": MODEL, "messages": [{"role": "user", "content": long_text}], "max_tokens": 2});
    assert_eq!(post_json(&url, long.clone()).await.status, 200);
    assert_eq!(all_records(&prefill).len(), 1);
    // The same long prompt again: the decode worker holds it now, so no prefill leg, and the
    // decode worker's own prefix cache serves it.
    assert_eq!(post_json(&url, long).await.status, 200);
    assert_eq!(
        all_records(&prefill).len(),
        1,
        "the second one skipped prefill"
    );
    let d = all_records(&decode);
    let last = d.last().unwrap();
    assert_eq!(last.kv_transfer_params, None);
    assert!(
        last.cached_tokens * 10 >= last.prompt_tokens * 8,
        "mostly cached on the decode worker: {} of {}",
        last.cached_tokens,
        last.prompt_tokens
    );
    let metrics = router.app().render_metrics();
    assert!(
        metrics.contains("vllm_router_pd_plans_total{cause=\"skipped\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vllm_router_pd_plans_total{cause=\"prefilled\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_refused_in_pd_mode() {
    let (prefill, decode) = pd_sims(1, 1).await;
    let router = pd_router(&prefill, &decode, |_| {}).await;
    let reply = send(
        Method::POST,
        &format!("{}/v1/chat/completions", router.url()),
        &[("content-type", "application/json")],
        "[1,2,3]",
    )
    .await;
    reply.assert_error(400);
    assert!(all_records(&prefill).is_empty() && all_records(&decode).is_empty());
}

#[tokio::test]
async fn debug_route_explains_both_legs_and_the_conditional_prefill() {
    let (prefill, decode) = pd_sims(2, 2).await;
    let router = pd_router(&prefill, &decode, |a| {
        a.pd_min_uncached_tokens = 16;
        a.policy = None;
        a.prefill_policy = None;
        a.decode_policy = None;
    })
    .await;
    let explained = post_json(&format!("{}/debug/route", router.url()), chat(MODEL, false)).await;
    assert_eq!(explained.status, 200);
    let v = explained.json();
    assert_eq!(v["plan"], "prefill_decode");
    assert_eq!(v["prefill"]["policy"], "cache_aware");
    assert_eq!(v["decode"]["policy"], "cache_aware");
    assert_eq!(v["prefill"]["candidates"].as_array().unwrap().len(), 2);
    assert!(
        v["decode"]["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["role"] == "decode")
    );
    assert_eq!(v["conditional_prefill"]["skips_prefill"], true, "{v}");
    // Embeddings have no P/D meaning: one pool of every worker.
    let embed = post_json(
        &format!("{}/debug/route?path=/v1/embeddings", router.url()),
        json!({"model": MODEL, "input": "x"}),
    )
    .await
    .json();
    assert_eq!(embed["candidates"].as_array().unwrap().len(), 4, "{embed}");
    assert!(all_records(&prefill).is_empty() && all_records(&decode).is_empty());
}

#[tokio::test]
async fn requests_arriving_during_a_prefill_see_its_decode_worker_as_taken() {
    // A slow prefill and slow decodes: all eight requests are placed while the first one's
    // decode leg is still unsent, and none has finished before the last is placed.
    let prefill = sims([SimConfig {
        ttft: Duration::from_millis(300),
        ..role(Role::Prefill)
    }])
    .await;
    let decode = sims((0..4).map(|_| SimConfig {
        itl: Duration::from_millis(100),
        ..role(Role::Decode)
    }))
    .await;
    let router = pd_router(&prefill, &decode, |a| {
        a.decode_policy = Some(vllm_router::policy::PolicyKind::LeastLoad);
    })
    .await;
    let replies = futures_util::future::join_all((0..8u64).map(|i| {
        let router = &router;
        async move {
            tokio::time::sleep(Duration::from_millis(20 * i)).await;
            chat_via(router, false).await
        }
    }))
    .await;
    replies.iter().for_each(assert_ok);
    let served: Vec<usize> = decode
        .iter()
        .map(|d| inference(d.records()).len())
        .collect();
    // Unseen, every one of them would have looked idle to every request (a 4% chance of
    // this spread by luck).
    assert_eq!(served, [2, 2, 2, 2], "two decode legs each: {served:?}");
}
