use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vllm_sim::{Role, SimConfig, SimServer, spawn};

use crate::support::{long_text, post_json};

/// A prefill worker with this engine id, and a decode worker whose own prefill is slow.
async fn pair(engine_id: &str) -> (SimServer, SimServer) {
    let prefill = spawn(SimConfig {
        role: Role::Prefill,
        engine_id: engine_id.into(),
        ..SimConfig::default()
    })
    .await
    .expect("prefill starts");
    let decode = spawn(SimConfig {
        role: Role::Decode,
        prefill_per_token: Duration::from_millis(10),
        ..SimConfig::default()
    })
    .await
    .expect("decode starts");
    (prefill, decode)
}

#[tokio::test]
async fn prefill_hands_kv_params_to_decode() {
    let (prefill, decode) = pair("prefill-engine").await;
    let prompt = long_text(100);
    let request = json!({"prompt": prompt, "max_tokens": 8});

    let mut p_leg = request.clone();
    p_leg["max_tokens"] = json!(1);
    p_leg["stream"] = json!(false);
    p_leg["kv_transfer_params"] = json!({"do_remote_decode": true, "do_remote_prefill": false,
        "remote_engine_id": null, "remote_block_ids": null, "remote_host": null,
        "remote_port": null});
    let rid = [("x-request-id", "pd-1")];
    let p = post_json(prefill.addr(), "/v1/completions", p_leg.clone(), &rid).await;
    assert_eq!(p.status, 200);
    let p = p.json();
    assert_eq!(p["usage"]["completion_tokens"], 1);
    let kv = p["kv_transfer_params"].clone();
    assert_eq!(kv["do_remote_prefill"], true);
    assert_eq!(kv["do_remote_decode"], false);
    assert_eq!(kv["remote_engine_id"], "prefill-engine");
    assert_eq!(kv["remote_host"], "127.0.0.1");
    assert_eq!(kv["remote_port"], prefill.addr().port());
    assert_eq!(kv["tp_size"], 1);
    assert_eq!(kv["remote_block_ids"].as_array().unwrap().len(), 100 / 16);
    assert_eq!(
        prefill.records()[0].kv_transfer_params.as_ref(),
        Some(&p_leg["kv_transfer_params"])
    );

    let mut d_leg = request.clone();
    d_leg["kv_transfer_params"] = kv.clone();
    let start = Instant::now();
    let d = post_json(decode.addr(), "/v1/completions", d_leg, &rid)
        .await
        .json();
    // Prefilling 100 tokens at 10 ms each would take a second; a remote prefill skips it.
    assert!(start.elapsed() < Duration::from_millis(900));
    assert_eq!(d["usage"]["completion_tokens"], 8);
    assert_eq!(d["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
    assert!(d["kv_transfer_params"].is_null());
    let rec = &decode.records()[0];
    assert_eq!(rec.kv_transfer_params.as_ref(), Some(&kv));
    assert_eq!(rec.request_id.as_deref(), Some("pd-1"));
    assert_eq!(rec.cached_tokens, 100);

    // Without the handshake, the decode worker prefills itself.
    let plain: Value = post_json(
        decode.addr(),
        "/v1/completions",
        json!({"prompt": "fresh words here", "max_tokens": 1}),
        &[],
    )
    .await
    .json();
    assert_eq!(plain["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
}

#[tokio::test]
async fn mooncake_legs_and_decode_keeps_received_blocks_cached() {
    let (prefill, decode) = pair("mc-prefill").await;
    let prompt = long_text(100);

    // Mooncake's prefill leg carries only the flags and the router's transfer id.
    let p_leg = json!({"prompt": prompt, "max_tokens": 1, "stream": false,
        "kv_transfer_params": {"do_remote_decode": true, "do_remote_prefill": false,
            "transfer_id": "xfer-1"}});
    let p = post_json(prefill.addr(), "/v1/completions", p_leg, &[]).await;
    assert_eq!(p.status, 200);
    let kv = &p.json()["kv_transfer_params"];
    assert_eq!(kv["do_remote_prefill"], true);
    assert_eq!(kv["remote_engine_id"], "mc-prefill");

    let d_leg = json!({"prompt": prompt, "max_tokens": 4,
        "kv_transfer_params": {"do_remote_decode": false, "do_remote_prefill": true,
            "remote_bootstrap_addr": format!("http://{}", prefill.addr()),
            "remote_engine_id": "mc-prefill", "remote_dp_rank": 0, "transfer_id": "xfer-1"}});
    let start = Instant::now();
    let d = post_json(decode.addr(), "/v1/completions", d_leg, &[])
        .await
        .json();
    assert!(
        // A local prefill would take a second.
        start.elapsed() < Duration::from_millis(900),
        "a remote prefill skips the local one"
    );
    assert_eq!(d["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
    assert!(d["kv_transfer_params"].is_null());

    // The received blocks stay in the decode worker's prefix cache, as in vLLM: the same prompt
    // without kv_transfer_params hits every full block but the one holding the last token.
    let again: Value = post_json(
        decode.addr(),
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 1}),
        &[],
    )
    .await
    .json();
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"], 96);
    let records = decode.records();
    assert_eq!(records[1].cached_tokens, 96);
    assert!(records[1].kv_transfer_params.is_none());
}
