use super::*;
use crate::fleet::InFlight;
use crate::policy::test_support::{engine, workers};
use std::time::Instant;

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
    engine(&ws[home], |m| m.waiting = Some(20.0));
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
fn the_index_is_sized_at_the_bytes_per_token_the_worker_reported() {
    let ws = workers(1);
    engine(&ws[0], |m| {
        (m.block_size, m.num_gpu_blocks) = (Some(16), Some(16))
    });
    let policy = CacheAware::new(CacheAwareConfig::default());
    // 256 tokens of 8 bytes: 2 KiB of text, 16 index blocks instead of the default's 8.
    ws[0].observe_prompt(8000, 1000);
    assert_eq!(policy.capacity(&ws[0]), 16);
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

/// A chat prompt: a system prompt of `system` blocks shared by `group`, then `private` blocks
/// of conversation `conv`.
fn chat(group: usize, conv: usize, system: usize, private: usize) -> String {
    let block = |tag: String| format!("{tag:-<width$}", width = BLOCK_BYTES);
    let mut p = String::new();
    for i in 0..system {
        p.push_str(&block(format!("system {group} part {i} ")));
    }
    for i in 0..private {
        p.push_str(&block(format!("conversation {conv} turn {i} ")));
    }
    p
}

/// Choose for `text` and dispatch there, as the proxy does: the guard books the predicted
/// prefill until it drops.
fn dispatch(policy: &CacheAware, ws: &[Arc<Worker>], text: &str) -> (usize, InFlight) {
    let headers = http::HeaderMap::new();
    let req = RouteRequest {
        prompt: Some(text),
        ..RouteRequest::new("/v1/chat/completions", &headers)
    };
    let d = policy.pick(&req, ws).unwrap();
    (d.index, ws[d.index].begin_booked(d.prefill_blocks))
}

fn decide(policy: &CacheAware, ws: &[Arc<Worker>], text: &str) -> Decision {
    policy.choose(&chain_hashes(text.as_bytes()), ws).unwrap()
}

#[test]
fn new_prefixes_spread_over_the_fleet() {
    let ws = workers(4);
    let policy = CacheAware::new(CacheAwareConfig::default());
    // Each group's first request finishes before the next group arrives: only the room
    // each worker's cache has left tells them apart.
    let homes: Vec<usize> = (0..4)
        .map(|g| pick(&policy, &ws, &chat(g, g, 20, 2)))
        .collect();
    let mut sorted = homes.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [0, 1, 2, 3], "one group per worker: {homes:?}");
    let d = decide(&policy, &ws, &chat(9, 9, 20, 2));
    assert_eq!(d.reason, "new prefix: most room");
}

#[test]
fn followers_stay_where_their_prefix_is_cached() {
    let ws = workers(4);
    let policy = CacheAware::new(CacheAwareConfig::default());
    let home = pick(&policy, &ws, &chat(1, 1, 20, 2));
    // Other workers idle, the holder a little busy: the group's new conversations follow.
    let _busy: Vec<_> = (0..3).map(|_| ws[home].begin()).collect();
    for conv in 2..10 {
        let d = decide(&policy, &ws, &chat(1, conv, 20, 2));
        assert_eq!(
            (d.index, d.reason),
            (home, "cached prefix: holder"),
            "conv {conv}"
        );
        assert_eq!(d.prefill_blocks, 2, "only the private part is prefilled");
    }
}

#[test]
fn a_spill_happens_only_past_the_recompute_cost() {
    let ws = workers(2);
    let policy = CacheAware::new(CacheAwareConfig::default());
    let home = pick(&policy, &ws, &chat(1, 1, 20, 2));
    let other = 1 - home;
    let text = chat(1, 2, 20, 2);
    // The holder's cache is the only full one: its 2 new blocks cost twice, 4. Elsewhere the
    // whole prompt is prefilled, 22, into an empty cache. The margin is half the 20 held, 10.
    // With 21 blocks booked and that one request in flight, the holder's cost is
    // 4 + 21 + 1 = 26, within 22 + 10: it keeps the follower...
    let _booked = ws[home].begin_booked(21);
    assert_eq!(decide(&policy, &ws, &text).index, home);
    // ...with 6 blocks and a request more (33), it loses it.
    let _more = ws[home].begin_booked(6);
    let d = decide(&policy, &ws, &text);
    assert_eq!(
        (d.index, d.reason),
        (other, "spill: queue past recompute cost")
    );
    assert_eq!(d.prefill_blocks, 22, "the whole prompt is prefilled there");
}

#[test]
fn a_session_does_not_flap_between_equal_workers() {
    let ws = workers(2);
    let policy = CacheAware::new(CacheAwareConfig::default());
    // Both workers hold the group's system prompt; the session's history is on one.
    pick(&policy, &ws, &chat(1, 1, 20, 2));
    let home = pick(&policy, &ws, &chat(1, 2, 20, 4));
    let other = 1 - home;
    policy.learn(&ws[other], &chain_hashes(chat(1, 3, 20, 1).as_bytes()));
    // Loads swing a few blocks either way, as a busy fleet's do: the session stays.
    for turn in 5..15 {
        let busy = if turn % 2 == 0 { home } else { other };
        let _swing = ws[busy].begin_booked(5);
        let (chosen, _guard) = dispatch(&policy, &ws, &chat(1, 2, 20, turn));
        assert_eq!(chosen, home, "turn {turn}");
    }
}

#[test]
fn a_burst_of_new_conversations_spreads() {
    let ws = workers(4);
    let policy = CacheAware::new(CacheAwareConfig::default());
    // An idle fleet: 32 conversations of one group arrive before any first token.
    let mut held = Vec::new();
    let mut per_worker = [0usize; 4];
    for conv in 0..32 {
        let (i, guard) = dispatch(&policy, &ws, &chat(1, conv, 20, 2));
        per_worker[i] += 1;
        held.push(guard);
    }
    assert!(
        per_worker.iter().all(|&n| (4..=12).contains(&n)),
        "every worker takes a share: {per_worker:?}"
    );
    drop(held);
    assert!(ws.iter().all(|w| w.booked_prefill() == 0));
}

#[test]
fn debug_terms_name_every_part_of_the_cost() {
    let ws = workers(2);
    let policy = CacheAware::new(CacheAwareConfig::default());
    let home = pick(&policy, &ws, &chat(1, 1, 20, 2));
    let _booked = ws[home].begin_booked(7);
    let headers = http::HeaderMap::new();
    let text = chat(1, 2, 20, 2);
    let req = RouteRequest {
        prompt: Some(&text),
        ..RouteRequest::new("/v1/chat/completions", &headers)
    };
    let explained = policy.explain(&req, &ws);
    let terms = explained.terms.unwrap();
    let t = terms[home];
    assert_eq!((t.matched_blocks, t.uncached_blocks), (20, 2));
    assert_eq!((t.booked_blocks, t.in_flight), (7, 1));
    assert_eq!(t.queued, 7.0 + DECODE_BLOCKS);
    assert_eq!(
        t.cache_fill, 1.0,
        "the fullest index, with no capacity known"
    );
    assert_eq!(t.cost, 2.0 * (1.0 + EVICTION_WEIGHT) + t.queued);
    assert_eq!(terms[1 - home].uncached_blocks, 22);
}

#[test]
fn a_spill_into_a_full_cache_must_also_pay_for_the_copy_it_makes_there() {
    let ws = workers(2);
    // 48 KV blocks of 16 tokens at 4 bytes a token: 24 index blocks each.
    for w in &ws {
        engine(w, |m| {
            (m.block_size, m.num_gpu_blocks) = (Some(16), Some(48))
        });
    }
    let policy = CacheAware::new(CacheAwareConfig::default());
    let home = pick(&policy, &ws, &chat(1, 1, 20, 2));
    let other = 1 - home;
    // The other worker's cache is full of another group.
    policy.learn(&ws[other], &chain_hashes(chat(2, 9, 20, 4).as_bytes()));
    let text = chat(1, 2, 20, 2);
    let terms = policy.terms(&chain_hashes(text.as_bytes()), &ws, Instant::now());
    assert_eq!(terms[other].cache_fill, 1.0);
    // Elsewhere the whole prompt, 22 blocks, is prefilled into a full cache (cost 44), and
    // the copy of the 20 held blocks stays there evicting as many: the margin is
    // (0.5 + 1) x 20 = 30. The holder's 2 new blocks cost 2 x (1 + 22/24) = 3.83, plus the
    // booked prefill and one decode block: it keeps the follower up to 70 blocks booked...
    let _booked = ws[home].begin_booked(69);
    assert_eq!(decide(&policy, &ws, &text).index, home);
    // ...and loses it past them.
    let _more = ws[home].begin_booked(2);
    let d = decide(&policy, &ws, &text);
    assert_eq!(
        (d.index, d.reason),
        (other, "spill: queue past recompute cost")
    );
}

/// Teach `w` a pace of `ms` milliseconds per block of work.
fn pace(w: &Worker, ms: u64) {
    w.observe_first_token(std::time::Duration::from_millis(ms * 10), 10.0);
}

#[test]
fn a_slower_worker_costs_more_per_block() {
    let ws = workers(2);
    let policy = CacheAware::new(CacheAwareConfig::default());
    pace(&ws[0], 20);
    pace(&ws[1], 10);
    // The faster worker has 10 blocks booked: in blocks it costs more (22 + 10 + 1 against
    // 22), in time less: against the mean pace, 33 x 2/3 = 22 against 22 x 4/3 = 29.3.
    let _booked = ws[1].begin_booked(10);
    let text = chat(1, 1, 20, 2);
    let terms = policy.terms(&chain_hashes(text.as_bytes()), &ws, Instant::now());
    assert!((terms[0].speed - 4.0 / 3.0).abs() < 1e-9, "{:?}", terms[0]);
    assert!((terms[1].speed - 2.0 / 3.0).abs() < 1e-9, "{:?}", terms[1]);
    let d = decide(&policy, &ws, &text);
    assert_eq!((d.index, d.reason), (1, "new prefix: most room"));
    // Untimed, the same loads send it to the idle one.
    let untimed = workers(2);
    let _booked = untimed[1].begin_booked(10);
    assert_eq!(decide(&policy, &untimed, &text).index, 0);
}

#[test]
fn a_slow_holder_spills_sooner() {
    let ws = workers(2);
    let policy = CacheAware::new(CacheAwareConfig::default());
    let home = pick(&policy, &ws, &chat(1, 1, 20, 2));
    let other = 1 - home;
    pace(&ws[home], 20);
    pace(&ws[other], 10);
    let text = chat(1, 2, 20, 2);
    // As in the spill test above, in blocks: the holder 4 + booked + 1, the other 22 and a
    // margin of 10; the holder's blocks now take 4/3 of the mean, the other's 2/3. With 10
    // booked, 20 - 14.7 stays within the margin (6.7); with 13 (at equal paces it would
    // keep the follower up to 27 booked), 24 - 14.7 passes it.
    let _booked = ws[home].begin_booked(10);
    assert_eq!(decide(&policy, &ws, &text).index, home);
    let _more = ws[home].begin_booked(3);
    let d = decide(&policy, &ws, &text);
    assert_eq!(
        (d.index, d.reason),
        (other, "spill: queue past recompute cost")
    );
}

#[test]
fn a_decision_predicts_the_work_its_first_token_is_timed_against() {
    let ws = workers(2);
    let policy = CacheAware::new(CacheAwareConfig::default());
    let home = pick(&policy, &ws, &chat(1, 1, 20, 2));
    let _booked = ws[home].begin_booked(7);
    let d = decide(&policy, &ws, &chat(1, 2, 20, 2));
    assert_eq!(d.index, home);
    // 7 booked and a decode block ahead, 2 of its own, 1 for any request.
    assert_eq!(d.work_blocks, Some(7.0 + DECODE_BLOCKS + 2.0 + 1.0));
}

#[test]
fn odd_paces_are_bounded() {
    let ws = workers(2);
    let policy = CacheAware::new(CacheAwareConfig::default());
    pace(&ws[0], 1);
    pace(&ws[1], 1000);
    let terms = policy.terms(
        &chain_hashes(chat(1, 1, 20, 2).as_bytes()),
        &ws,
        Instant::now(),
    );
    assert_eq!(terms[0].speed, PACE_BOUNDS.0);
    assert!(terms[1].speed <= PACE_BOUNDS.1);
}
