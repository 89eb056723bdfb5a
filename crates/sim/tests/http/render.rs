use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};
use vllm_sim::{SimConfig, spawn, tokenize};

use crate::support::{Conn, long_text, post, post_json};

#[tokio::test]
async fn chat_render_is_the_prompt_the_chat_route_prefills() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let addr = sim.addr();
    let messages = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": long_text(40)}]},
    ]);
    let body = json!({"model": "sim-model", "messages": messages, "max_tokens": 7,
        "temperature": 0.2, "top_p": 0.9, "stop": "END", "seed": 3});
    let r = post_json(addr, "/v1/chat/completions/render", body.clone(), &[]).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert!(
        v["request_id"].as_str().unwrap().starts_with("chatcmpl-"),
        "{v}"
    );
    assert_eq!(v["model"], "sim-model");
    assert_eq!(v["stream"], false);
    assert_eq!(v["priority"], 0);
    for null in ["features", "cache_salt", "kv_transfer_params"] {
        assert!(v[null].is_null(), "{null}: {v}");
    }
    let sp = &v["sampling_params"];
    assert_eq!(sp["max_tokens"], 7);
    assert_eq!(sp["temperature"], 0.2);
    assert_eq!(sp["top_p"], 0.9);
    assert_eq!(sp["stop"], json!(["END"]));
    assert_eq!(sp["seed"], 3);
    assert_eq!(sp["n"], 1);
    assert_eq!(sp["repetition_penalty"], 1.0);
    let stats = sim.stats();
    assert_eq!(
        (stats.prompt_tokens_total, stats.running),
        (0, 0),
        "nothing ran"
    );

    let tokens = v["token_ids"].as_array().unwrap().clone();
    let tokenized = post_json(addr, "/tokenize", json!({"messages": messages}), &[])
        .await
        .json();
    assert_eq!(Value::from(tokens.clone()), tokenized["tokens"]);
    let answer = post_json(addr, "/v1/chat/completions", body.clone(), &[])
        .await
        .json();
    assert_eq!(answer["usage"]["prompt_tokens"], tokens.len());
    assert_eq!(answer["usage"]["completion_tokens"], 7);
    // A cached prefix changes nothing in what is rendered.
    let again = post_json(addr, "/v1/chat/completions/render", body, &[])
        .await
        .json();
    assert_eq!(sim.stats().prompt_tokens_total, tokens.len() as u64);
    assert_eq!(again["token_ids"], Value::from(tokens));
}

#[tokio::test]
async fn completions_render_gives_one_request_per_prompt() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let addr = sim.addr();
    let r = post_json(
        addr,
        "/v1/completions/render",
        json!({"prompt": ["a b", "c d, e"], "max_tokens": 3, "stream": true}),
        &[("x-request-id", "r1")],
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["request_id"], "cmpl-r1-0");
    assert_eq!(items[1]["request_id"], "cmpl-r1-1");
    assert_eq!(items[0]["token_ids"], json!(tokenize("a b")));
    assert_eq!(items[1]["token_ids"], json!(tokenize("c d, e")));
    assert_eq!(items[1]["sampling_params"]["max_tokens"], 3);
    assert_eq!(items[1]["stream"], true);

    let one = post_json(
        addr,
        "/v1/completions/render",
        json!({"prompt": "hello there world"}),
        &[],
    )
    .await
    .json();
    let one = one.as_array().unwrap();
    assert_eq!(one.len(), 1);
    assert!(one[0]["request_id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(one[0]["sampling_params"]["max_tokens"], 16, "the default");
    let done = post_json(
        addr,
        "/v1/completions",
        json!({"prompt": "hello there world"}),
        &[],
    )
    .await
    .json();
    assert_eq!(
        done["usage"]["prompt_tokens"],
        one[0]["token_ids"].as_array().unwrap().len()
    );

    for (prompt, expected) in [
        (json!([5, 6, 7]), json!([[5, 6, 7]])),
        (json!([[1, 2], [3]]), json!([[1, 2], [3]])),
    ] {
        let v = post_json(
            addr,
            "/v1/completions/render",
            json!({"prompt": prompt}),
            &[],
        )
        .await
        .json();
        let ids: Vec<&Value> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|i| &i["token_ids"])
            .collect();
        assert_eq!(json!(ids), expected);
    }
}

#[tokio::test]
async fn render_validates_like_the_generating_routes() {
    let sim = spawn(SimConfig {
        models: vec!["a".into()],
        max_model_len: 8,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let addr = sim.addr();
    for path in ["/v1/chat/completions/render", "/v1/completions/render"] {
        let nf = post_json(addr, path, json!({"model": "x", "prompt": "hi"}), &[]).await;
        assert_eq!(nf.status, 404, "{path}");
        assert_eq!(
            nf.json(),
            json!({"error": {"message": "The model `x` does not exist.", "type": "NotFoundError",
                "param": "model", "code": 404}})
        );
        let mut conn = Conn::open(addr).await;
        let mut req = post(addr, path, &json!(null), &[]);
        *req.body_mut() = Full::new(Bytes::from_static(b"{not json"));
        let bad = conn.send(req).await.unwrap();
        assert_eq!(bad.status(), 400, "{path}");
        let typed = post_json(addr, path, json!({"temperature": "hot"}), &[]).await;
        assert_eq!(typed.status, 400, "{path}");
        assert_eq!(typed.json()["error"]["type"], "BadRequestError");
    }
    let long = post_json(
        addr,
        "/v1/chat/completions/render",
        json!({"messages": [{"role": "user", "content": "one two"}]}),
        &[],
    )
    .await;
    assert_eq!(long.status, 400);
    assert!(
        long.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length is 8 tokens"),
    );
    let batch = post_json(
        addr,
        "/v1/completions/render",
        json!({"prompt": ["fits", long_text(9)]}),
        &[],
    )
    .await;
    assert_eq!(batch.status, 400, "any prompt of a batch too long");
    assert_eq!(sim.stats().prompt_tokens_total, 0);
}

#[tokio::test]
async fn render_needs_the_api_key_like_other_v1_routes() {
    let sim = spawn(SimConfig {
        api_key: Some("k1".into()),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let body = json!({"messages": [{"role": "user", "content": "hi"}]});
    for path in ["/v1/chat/completions/render", "/v1/completions/render"] {
        let refused = post_json(sim.addr(), path, body.clone(), &[]).await;
        assert_eq!(refused.status, 401, "{path}");
        let allowed = post_json(
            sim.addr(),
            path,
            body.clone(),
            &[("authorization", "Bearer k1")],
        )
        .await;
        assert_eq!(allowed.status, 200, "{path}");
    }
}
