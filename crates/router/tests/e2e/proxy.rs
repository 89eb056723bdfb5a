//! Forwarding: bytes untouched, every inference route, request ids, header rules.

use http::Method;
use serde_json::json;
use sha2::{Digest, Sha256};
use vllm_router::server::INFERENCE_ROUTES;

use crate::support::*;

#[tokio::test]
async fn chat_and_completions_are_forwarded_and_name_their_worker() {
    let workers = fast_sims(2).await;
    let router = router(&workers).await;
    let urls: Vec<String> = workers.iter().map(|w| w.url()).collect();

    let reply = post_json(
        &format!("{}/v1/chat/completions", router.url()),
        chat(MODEL, false),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["object"], "chat.completion");
    assert!(urls.contains(&reply.header("x-vllm-router-worker").to_owned()));
    assert_eq!(reply.header("x-request-id").len(), 32);

    let body = json!({"model": MODEL, "prompt": "hello", "max_tokens": 3});
    let reply = post_json(&format!("{}/v1/completions", router.url()), body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["object"], "text_completion");

    // Round robin spread the two requests over both workers.
    let served: Vec<usize> = workers.iter().map(|w| w.records().len()).collect();
    assert_eq!(served, [1, 1]);
}

#[tokio::test]
async fn an_8_mb_body_with_unknown_fields_arrives_byte_identical() {
    let workers = long_context_sim().await;
    let router = router(&workers).await;
    let filler = "lorem ipsum ".repeat(8 * 1024 * 1024 / 12);
    // Key order, spacing, unknown fields, an unknown role and tools: all must survive.
    let body = format!(
        r#"{{ "zeta_unknown": {{"nested": [1, 2.50, "x"]}}, "model" : "{MODEL}", "messages": [{{"role": "narrator", "content": "{filler}"}}, {{"role":"user","content":"\u00e9t\u00e9"}}], "tools": [{{"type": "function", "function": {{"name": "f", "parameters": {{}}}}}}], "max_tokens": 1, "vendor_extension": null }}"#
    );
    assert!(body.len() > 8 * 1024 * 1024 - 64);
    let expected = hex(&Sha256::digest(body.as_bytes()));

    let reply = send(
        Method::POST,
        &format!("{}/v1/chat/completions", router.url()),
        &[("content-type", "application/json")],
        body.clone(),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let record = workers[0].records().pop().expect("recorded");
    assert_eq!(record.body_len, body.len());
    assert_eq!(record.body_sha256, expected);
}

#[tokio::test]
async fn every_inference_route_reaches_a_worker() {
    let workers = fast_sims(1).await;
    let router = router(&workers).await;
    for route in INFERENCE_ROUTES {
        let reply = if route.starts_with("/v1/audio/") {
            let form = format!(
                "--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
Content-Type: audio/wav\r\n\r\nRIFF\0\0\0\0WAVE\r\n--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n\
{MODEL}\r\n--b0undary--\r\n"
            );
            send(
                Method::POST,
                &format!("{}{route}", router.url()),
                &[("content-type", "multipart/form-data; boundary=b0undary")],
                form,
            )
            .await
        } else {
            let body = json!({
                "model": MODEL, "prompt": "hi", "input": "hi", "messages": [{"role": "user", "content": "hi"}],
                "tokens": [1, 2], "query": "q", "documents": ["d"], "text_1": "a", "text_2": "b",
            });
            post_json(&format!("{}{route}", router.url()), body).await
        };
        assert_eq!(
            reply.status,
            200,
            "{route}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let last = workers[0].records().pop().expect("recorded");
        assert_eq!(last.path, *route);
    }
}

#[tokio::test]
async fn request_id_is_adopted_from_the_configured_headers_or_generated() {
    let workers = fast_sims(1).await;
    let router = router(&workers).await;
    let url = format!("{}/v1/completions", router.url());
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 1}).to_string();

    let reply = send(
        Method::POST,
        &url,
        &[
            ("content-type", "application/json"),
            ("x-correlation-id", "corr-42"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(reply.header("x-request-id"), "corr-42");
    assert_eq!(
        workers[0].records().pop().unwrap().request_id.as_deref(),
        Some("corr-42")
    );

    let reply = send(
        Method::POST,
        &url,
        &[("content-type", "application/json")],
        body,
    )
    .await;
    let generated = reply.header("x-request-id").to_owned();
    assert_eq!(generated.len(), 32);
    assert_eq!(
        workers[0].records().pop().unwrap().request_id,
        Some(generated)
    );
}

#[tokio::test]
async fn hop_by_hop_headers_stay_on_their_hop() {
    let workers = fast_sims(1).await;
    let router = router(&workers).await;
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 1}).to_string();
    let reply = send(
        Method::POST,
        &format!("{}/v1/completions", router.url()),
        &[
            ("content-type", "application/json"),
            ("connection", "x-hop-only"),
            ("x-hop-only", "1"),
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("authorization", "Bearer end-to-end"),
            ("x-custom", "kept"),
        ],
        body,
    )
    .await;
    assert_eq!(reply.status, 200);
    let record = workers[0].records().pop().unwrap();
    let names: Vec<&str> = record.headers.iter().map(|(k, _)| k.as_str()).collect();
    for gone in ["x-hop-only", "proxy-authorization", "connection"] {
        assert!(!names.contains(&gone), "{gone} forwarded: {names:?}");
    }
    for kept in ["authorization", "x-custom", "x-request-id"] {
        assert!(names.contains(&kept), "{kept} missing: {names:?}");
    }
}

#[tokio::test]
async fn worker_errors_pass_through_verbatim() {
    let workers = fast_sims(1).await;
    let router = router(&workers).await;
    let reply = send(
        Method::POST,
        &format!("{}/v1/chat/completions", router.url()),
        &[
            ("content-type", "application/json"),
            ("x-return-error", "400"),
        ],
        chat(MODEL, false).to_string(),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["code"], 400);
    assert_eq!(reply.header("x-vllm-router-worker"), workers[0].url());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
