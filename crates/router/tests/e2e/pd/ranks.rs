//! Data-parallel ranks: routed like workers, named in `X-data-parallel-rank`, probed once per
//! URL, in regular and P/D mode.

use std::time::{Duration, Instant};

use vllm_sim::{RequestRecord, Role, SimConfig};

use super::*;

fn rank_of(r: &RequestRecord) -> Option<String> {
    r.headers
        .iter()
        .find(|(k, _)| k == "x-data-parallel-rank")
        .map(|(_, v)| v.clone())
}

#[tokio::test]
async fn data_parallel_ranks_are_routed_like_workers_and_probed_once_per_url() {
    let workers = sims([SimConfig {
        data_parallel_size: 3,
        ..SimConfig::default()
    }])
    .await;
    let router = router_with(&workers, |a| {
        a.intra_node_data_parallel_size = 3;
    })
    .await;
    for _ in 0..6 {
        let reply = chat_via(&router, false).await;
        assert_eq!(reply.status, 200);
        assert!(reply.header("x-vllm-router-worker").contains('#'));
    }
    let mut ranks: Vec<String> = inference(workers[0].records())
        .iter()
        .filter_map(rank_of)
        .collect();
    ranks.sort();
    assert_eq!(
        ranks,
        ["0", "0", "1", "1", "2", "2"],
        "round robin over the ranks"
    );
    // One server, one start-up model list and one probe per interval (1 s), not one per rank:
    // the first two probes come about an interval apart, where the three ranks' probes of one
    // round would come milliseconds apart (200 ms tells the two apart with room for a loaded
    // machine either way).
    let stats = workers[0].stats();
    assert_eq!(stats.by_path.get("/v1/models"), Some(&1), "{stats:?}");
    let probes = || {
        workers[0]
            .stats()
            .by_path
            .get("/health")
            .copied()
            .unwrap_or(0)
    };
    let first = eventually(Duration::from_secs(10), || {
        (probes() >= 1).then(Instant::now)
    })
    .await;
    let (seen, second) = eventually(Duration::from_secs(10), || {
        let n = probes();
        (n >= 2).then(|| (n, Instant::now()))
    })
    .await;
    assert_eq!(seen, 2, "{seen} probes in two rounds");
    let apart = second - first;
    assert!(
        apart >= Duration::from_millis(200),
        "the second probe came {apart:?} after the first, in the same round"
    );
}

#[tokio::test]
async fn data_parallel_ranks_work_in_pd_mode() {
    let ranked = |role| SimConfig {
        role,
        data_parallel_size: 2,
        ..SimConfig::default()
    };
    let prefill = sims([ranked(Role::Prefill)]).await;
    let decode = sims([ranked(Role::Decode)]).await;
    let router = pd_router(&prefill, &decode, |a| a.intra_node_data_parallel_size = 2).await;
    for _ in 0..4 {
        let reply = chat_via(&router, true).await;
        assert_eq!(reply.status, 200);
    }
    for side in [&prefill, &decode] {
        let records = all_records(side);
        let mut ranks: Vec<String> = records.iter().filter_map(rank_of).collect();
        ranks.sort();
        assert_eq!(ranks, ["0", "0", "1", "1"]);
        // Each rank served its own requests.
        assert!(
            records
                .iter()
                .all(|r| rank_of(r) == Some(r.dp_rank.to_string()))
        );
    }
    // Rank 1 of the prefill named its own engine to the decode leg.
    let engines: Vec<String> = all_records(&decode)
        .iter()
        .map(|r| {
            r.kv_transfer_params.as_ref().unwrap()["remote_engine_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let base = &prefill[0].config().engine_id;
    assert!(
        engines.contains(base) && engines.contains(&format!("{base}_dp1")),
        "{engines:?}"
    );
}
