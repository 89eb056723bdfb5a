use super::*;
use crate::policy::test_support::{engine, workers};

fn prompt(group: usize, turns: usize) -> String {
    let mut p = format!("<|system|>\nYou are assistant number {group}. ").repeat(40);
    for t in 0..turns {
        p.push_str(&format!("<|user|>\nquestion {t} of group {group} ").repeat(6));
    }
    p
}

fn pick(policy: &CacheAware, ws: &[Arc<Worker>], text: &str) -> usize {
    let headers = http::HeaderMap::new();
    let req = RouteRequest {
        prompt: Some(text),
        ..RouteRequest::new("/v1/chat/completions", &headers)
    };
    policy.pick(&req, ws).unwrap().index
}

#[test]
fn a_growing_conversation_returns_to_the_worker_that_holds_it() {
    let ws = workers(4);
    let policy = CacheAware::new(CacheAwareConfig::default());
    let home = pick(&policy, &ws, &prompt(1, 1));
    for turns in 2..8 {
        assert_eq!(pick(&policy, &ws, &prompt(1, turns)), home, "turn {turns}");
    }
}

#[test]
fn unseen_prefixes_spread_to_the_least_loaded() {
    let ws = workers(3);
    let policy = CacheAware::new(CacheAwareConfig::default());
    let _busy: Vec<_> = [0, 0, 2].iter().map(|&i| ws[i].begin()).collect();
    assert_eq!(pick(&policy, &ws, &prompt(7, 1)), 1);
}

#[test]
fn a_deep_queue_outweighs_a_cache_hit() {
    let ws = workers(2);
    let policy = CacheAware::new(CacheAwareConfig::default());
    let home = pick(&policy, &ws, &prompt(1, 1));
    engine(&ws[home], |m| m.waiting = Some(10.0));
    engine(&ws[1 - home], |m| m.waiting = Some(0.0));
    assert_eq!(pick(&policy, &ws, &prompt(1, 2)), 1 - home);
}

#[test]
fn load_imbalance_past_both_thresholds_overrides_the_cache() {
    let ws = workers(2);
    let config = CacheAwareConfig {
        balance_abs_threshold: 2.0,
        balance_rel_threshold: 1.5,
        ..CacheAwareConfig::default()
    };
    let policy = CacheAware::new(config);
    let home = pick(&policy, &ws, &prompt(1, 1));
    let _held: Vec<_> = (0..3).map(|_| ws[home].begin()).collect();
    let d = {
        let chain = chain_hashes(prompt(1, 2).as_bytes());
        policy.choose(&chain, &ws).unwrap()
    };
    assert_eq!(
        (d.index, d.reason),
        (1 - home, "load imbalance: least loaded")
    );
}

#[test]
fn the_index_forgets_beyond_the_workers_kv_capacity() {
    let ws = workers(1);
    // 16 blocks of 16 tokens at 4 bytes per token: 1 KiB of text, 8 index blocks.
    engine(&ws[0], |m| {
        (m.block_size, m.num_gpu_blocks) = (Some(16), Some(16))
    });
    let policy = CacheAware::new(CacheAwareConfig::default());
    assert_eq!(policy.capacity(&ws[0]), 8);
    pick(&policy, &ws, &prompt(1, 1));
    pick(&policy, &ws, &prompt(2, 1));
    assert!(policy.index_of(&ws[0]).lock().len() <= 9);
    let chain = chain_hashes(prompt(1, 1).as_bytes());
    assert_eq!(
        policy.index_of(&ws[0]).lock().matched(&chain),
        0,
        "the older prompt was evicted"
    );
}

#[test]
fn removed_workers_lose_their_index() {
    let ws = workers(2);
    let policy = CacheAware::new(CacheAwareConfig::default());
    pick(&policy, &ws, &prompt(1, 1));
    pick(&policy, &ws, &prompt(2, 1));
    assert!(!policy.indexes.read().is_empty());
    policy.on_fleet_change(&Snapshot::default());
    assert!(policy.indexes.read().is_empty());
}
