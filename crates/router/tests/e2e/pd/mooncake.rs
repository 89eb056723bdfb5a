//! Mooncake: one transfer id and the prefill's bootstrap engine in both legs, which run
//! together.

use std::time::{Duration, Instant};

use vllm_sim::{Role, SimConfig};

use super::*;

#[tokio::test]
async fn mooncake_names_the_prefill_engine_and_one_transfer_id_in_both_legs() {
    // A prefill whose bootstrap server does not answer is passed over for one that does
    // (the simulator serves Mooncake's `/query` on its own port).
    let (prefill, decode) = pd_sims(2, 1).await;
    let closed = ClosedPort::hold();
    let dead_port = closed.addr().port();
    let router = router_with(&[], |a| {
        a.vllm_pd_disaggregation = true;
        a.kv_connector = Some(vllm_router::cli::KvConnector::Mooncake);
        a.prefill = vec![
            prefill[0].url(),
            dead_port.to_string(),
            prefill[1].url(),
            prefill[1].addr().port().to_string(),
        ];
        a.decode = vec![decode[0].url()];
        a.prefill_policy = Some(vllm_router::policy::PolicyKind::RoundRobin);
    })
    .await;
    for stream in [false, true] {
        let reply = chat_via(&router, stream).await;
        assert_ok(&reply);
    }
    assert!(inference(prefill[0].records()).is_empty());
    let p = inference(prefill[1].records());
    let d = inference(decode[0].records());
    assert_eq!((p.len(), d.len()), (2, 2));
    for (p, d) in p.iter().zip(&d) {
        assert_eq!(p.request_id, d.request_id);
        let (pk, dk) = (
            p.kv_transfer_params.as_ref().unwrap(),
            d.kv_transfer_params.as_ref().unwrap(),
        );
        assert_eq!(pk["do_remote_decode"], true);
        assert_eq!(pk["do_remote_prefill"], false);
        assert_eq!(dk["do_remote_prefill"], true);
        assert_eq!(dk["do_remote_decode"], false);
        assert_eq!(pk["transfer_id"], dk["transfer_id"]);
        assert!(pk["transfer_id"].as_str().is_some_and(|t| t.len() == 32));
        assert_eq!(
            dk["remote_bootstrap_addr"],
            format!("http://127.0.0.1:{}", prefill[1].addr().port())
        );
        assert_eq!(dk["remote_engine_id"], prefill[1].config().engine_id);
        assert_eq!(dk["remote_dp_rank"], 0);
        assert!(!p.stream);
        assert_eq!(d.cached_tokens, d.prompt_tokens);
    }
}

#[tokio::test]
async fn a_failed_mooncake_prefill_cancels_the_waiting_decode() {
    let prefill = sims([SimConfig {
        role: Role::Prefill,
        ttft: Duration::from_millis(300),
        ..SimConfig::default()
    }])
    .await;
    let decode = sims([SimConfig {
        role: Role::Decode,
        ttft: Duration::from_secs(5),
        ..SimConfig::default()
    }])
    .await;
    let router = router_with(&[], |a| {
        a.vllm_pd_disaggregation = true;
        a.kv_connector = Some(vllm_router::cli::KvConnector::Mooncake);
        a.prefill = vec![prefill[0].url(), prefill[0].addr().port().to_string()];
        a.decode = vec![decode[0].url()];
    })
    .await;
    prefill[0].set_error_rate(1.0);
    let started = Instant::now();
    let reply = chat_via(&router, false).await;
    reply.assert_error(502);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no wait for the decode"
    );
    let cancelled = eventually(Duration::from_secs(2), || {
        decode[0].records().iter().find_map(|r| r.cancelled_at)
    })
    .await;
    assert!(cancelled.saturating_duration_since(started) < Duration::from_secs(3));
}
