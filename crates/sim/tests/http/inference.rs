use serde_json::json;
use sha2::{Digest, Sha256};
use vllm_sim::{SimConfig, spawn};

use crate::support::{chat, get, long_text, post_json};

#[tokio::test]
async fn chat_reports_usage_and_cached_tokens_on_repeat() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let body = chat(&long_text(60), 5);
    let first = post_json(sim.addr(), "/v1/chat/completions", body.clone(), &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["content-type"], "application/json");
    assert!(first.headers.contains_key("content-length"));
    let v = first.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "sim-model");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let usage = &v["usage"];
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    // <|user|> is 5 tokens, 60 words, <|assistant|> 5 tokens.
    assert_eq!(prompt, 70);
    assert_eq!(usage["completion_tokens"], 5);
    assert_eq!(usage["total_tokens"], prompt + 5);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    let words = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(words.split(' ').count(), 5);

    let second = post_json(sim.addr(), "/v1/chat/completions", body.clone(), &[])
        .await
        .json();
    // Four full blocks of 16 out of 70 tokens.
    assert_eq!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"],
        64
    );
    assert_eq!(
        second["choices"][0]["message"]["content"], words,
        "deterministic output"
    );

    let stats = sim.stats();
    assert_eq!(stats.completed, 2);
    assert_eq!(stats.prompt_tokens_total, 140);
    assert_eq!(stats.cached_tokens_total, 64);
    let records = sim.records();
    assert_eq!(records.len(), 2);
    let rec = &records[0];
    assert_eq!(rec.path, "/v1/chat/completions");
    assert_eq!(rec.model.as_deref(), Some("sim-model"));
    assert_eq!((rec.prompt_tokens, rec.cached_tokens), (70, 0));
    assert_eq!(records[1].cached_tokens, 64);
    assert_eq!(rec.status, 200);
    assert!(!rec.cancelled && rec.finished_at.is_some());
    let sent = body.to_string();
    assert_eq!(rec.body_len, sent.len());
    let digest: String = Sha256::digest(sent.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(rec.body_sha256, digest);
    assert!(
        rec.headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/json")
    );
}

#[tokio::test]
async fn request_id_is_echoed_and_recorded() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let headers = [("x-request-id", "req-42")];
    let a = post_json(
        sim.addr(),
        "/v1/completions",
        json!({"prompt": "hi", "max_tokens": 2}),
        &headers,
    )
    .await;
    assert_eq!(a.headers["x-request-id"], "req-42");
    let v = a.json();
    assert_eq!(v["id"], "cmpl-req-42");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(sim.records()[0].request_id.as_deref(), Some("req-42"));
}

#[tokio::test]
async fn model_errors_use_vllm_shape() {
    let cfg = SimConfig {
        models: vec!["a".into(), "b".into()],
        ..SimConfig::default()
    };
    let sim = spawn(cfg).await.unwrap();
    let ok = post_json(
        sim.addr(),
        "/v1/chat/completions",
        json!({"model": "b", "messages": []}),
        &[],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["model"], "b");
    let missing = post_json(sim.addr(), "/v1/completions", json!({"prompt": "x"}), &[]).await;
    assert_eq!(
        missing.json()["model"],
        "a",
        "no model means the first served one"
    );
    let nf = post_json(
        sim.addr(),
        "/v1/chat/completions",
        json!({"model": "x", "messages": []}),
        &[],
    )
    .await;
    assert_eq!(nf.status, 404);
    assert_eq!(
        nf.json(),
        json!({"error": {"message": "The model `x` does not exist.", "type": "NotFoundError",
            "param": "model", "code": 404}})
    );
    let mut conn = crate::support::Conn::open(sim.addr()).await;
    let mut req = crate::support::post(sim.addr(), "/v1/chat/completions", &json!(null), &[]);
    *req.body_mut() = http_body_util::Full::new(bytes::Bytes::from_static(b"{not json"));
    let bad = conn.send(req).await.unwrap();
    assert_eq!(bad.status(), 400);
    let models = get(sim.addr(), "/v1/models").await.json();
    assert_eq!(models["object"], "list");
    let data = models["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["id"], "b");
    assert_eq!(data[1]["root"], "a");
    assert_eq!(data[1]["owned_by"], "vllm");
    assert!(data[1]["parent"].is_null());
    assert_eq!(data[1]["max_model_len"], 32768);
}

#[tokio::test]
async fn other_endpoints_answer_and_are_recorded() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let addr = sim.addr();
    let emb = post_json(addr, "/v1/embeddings", json!({"input": ["a", "b c"]}), &[])
        .await
        .json();
    assert_eq!(emb["data"].as_array().unwrap().len(), 2);
    assert_eq!(emb["data"][1]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(emb["usage"]["prompt_tokens"], 3);
    let tok = post_json(addr, "/tokenize", json!({"prompt": "a b, c"}), &[])
        .await
        .json();
    assert_eq!(tok["count"], 4);
    assert!(tok["token_strs"].is_null());
    let chat_tok = post_json(
        addr,
        "/tokenize",
        json!({"messages": [{"role": "user", "content": "hi"}]}),
        &[],
    )
    .await
    .json();
    assert_eq!(chat_tok["count"], 11);
    let detok = post_json(addr, "/detokenize", json!({"tokens": [1, 2, 3]}), &[])
        .await
        .json();
    assert!(detok["prompt"].is_string());
    for path in ["/v1/rerank", "/rerank", "/v2/rerank"] {
        let r = post_json(
            addr,
            path,
            json!({"query": "q", "documents": ["x", "y"]}),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["results"].as_array().unwrap().len(), 2);
    }
    for path in ["/v1/score", "/score"] {
        let r = post_json(
            addr,
            path,
            json!({"text_1": "q", "text_2": ["x", "y"]}),
            &[],
        )
        .await;
        assert_eq!(r.json()["data"].as_array().unwrap().len(), 2, "{path}");
    }
    for path in ["/pooling", "/classify"] {
        let r = post_json(addr, path, json!({"input": "abc"}), &[]).await;
        assert_eq!(r.status, 200, "{path}");
    }
    let resp = post_json(
        addr,
        "/v1/responses",
        json!({"input": "hello", "max_output_tokens": 3}),
        &[],
    )
    .await
    .json();
    assert_eq!(resp["usage"]["output_tokens"], 3);
    let generate = post_json(
        addr,
        "/inference/v1/generate",
        json!({"token_ids": [1, 2, 3], "sampling_params": {"max_tokens": 4}}),
        &[],
    )
    .await
    .json();
    assert_eq!(
        generate["choices"][0]["token_ids"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let unknown = post_json(addr, "/nope", json!({}), &[]).await;
    assert_eq!(unknown.status, 404);

    let recorded: Vec<String> = sim.records().into_iter().map(|r| r.path).collect();
    assert_eq!(recorded.len(), 14);
    assert!(recorded.contains(&"/nope".to_owned()));
    // Control paths are counted but not recorded.
    get(addr, "/health").await;
    get(addr, "/v1/models").await;
    assert_eq!(sim.records().len(), 14);
    let stats = sim.stats();
    assert_eq!(stats.requests_total, 16);
    assert_eq!(stats.by_path["/health"], 1);
    assert_eq!(stats.by_path["/rerank"], 1);
}

#[tokio::test]
async fn multipart_audio_is_recorded() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let boundary = "XBOUNDARY";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nsim-model\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
         Content-Type: audio/wav\r\n\r\nRIFF....\r\n--{boundary}--\r\n"
    );
    for path in ["/v1/audio/transcriptions", "/v1/audio/translations"] {
        let mut conn = crate::support::Conn::open(sim.addr()).await;
        let req = http::Request::post(format!("http://{}{path}", sim.addr()))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
            .unwrap();
        let resp = conn.send(req).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let records = sim.records();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].body_len, body.len());
}

#[tokio::test]
async fn h2c_is_served() {
    use http_body_util::{BodyExt, Full};
    let sim = spawn(SimConfig::default()).await.unwrap();
    let stream = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{}/v1/chat/completions", sim.addr()))
        .body(Full::new(bytes::Bytes::from(chat("hello", 3).to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn reset_prefix_cache_forgets_every_block() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let body = chat(&long_text(60), 1);
    let cached =
        |v: serde_json::Value| v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
    post_json(sim.addr(), "/v1/chat/completions", body.clone(), &[]).await;
    let warm = post_json(sim.addr(), "/v1/chat/completions", body.clone(), &[]).await;
    assert_eq!(cached(warm.json()), Some(64));

    let reset = post_json(sim.addr(), "/reset_prefix_cache", json!({}), &[]).await;
    assert_eq!(reset.status, 200);
    let cold = post_json(sim.addr(), "/v1/chat/completions", body.clone(), &[]).await;
    assert_eq!(cached(cold.json()), Some(0), "the cache was emptied");
    let again = post_json(sim.addr(), "/v1/chat/completions", body, &[]).await;
    assert_eq!(cached(again.json()), Some(64), "and refills as before");
    assert_eq!(
        sim.records().len(),
        4,
        "the reset itself is not a recorded request"
    );
}
