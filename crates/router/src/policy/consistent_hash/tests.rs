use std::collections::HashMap;

use super::*;
use crate::fleet::InFlight;
use crate::policy::test_support::{with_session, workers};

fn policy_over(ws: &[Arc<Worker>]) -> ConsistentHash {
    let p = ConsistentHash::new(1.25);
    p.ring
        .store(Arc::new(Ring::build(ws.iter().map(|w| w.as_ref()))));
    p
}

fn home(p: &ConsistentHash, ws: &[Arc<Worker>], key: &str) -> u64 {
    let i = with_session(Some(key), |r| p.pick(r, ws).unwrap().index);
    ws[i].id()
}

#[test]
fn a_session_sticks_to_its_worker() {
    let ws = workers(5);
    let p = policy_over(&ws);
    for k in 0..100 {
        let key = format!("user-{k}");
        let first = home(&p, &ws, &key);
        for _ in 0..5 {
            assert_eq!(home(&p, &ws, &key), first);
        }
    }
}

#[test]
fn only_the_sessions_of_a_removed_worker_move_and_they_spread() {
    let ws = workers(5);
    let p = policy_over(&ws);
    let keys: Vec<String> = (0..2000).map(|k| format!("session-{k}")).collect();
    let before: Vec<u64> = keys.iter().map(|k| home(&p, &ws, k)).collect();

    let gone = ws[2].id();
    let rest: Vec<Arc<Worker>> = ws.iter().filter(|w| w.id() != gone).cloned().collect();
    // Same ring (the worker is down, not yet removed), and a rebuilt ring without it.
    for ring_of in [&ws[..], &rest[..]] {
        let p2 = policy_over(ring_of);
        let mut landed: HashMap<u64, usize> = HashMap::new();
        for (key, old) in keys.iter().zip(&before) {
            let new = home(&p2, &rest, key);
            if *old == gone {
                *landed.entry(new).or_default() += 1;
            } else {
                assert_eq!(new, *old, "{key} moved though its worker stayed");
            }
        }
        // The leaver's sessions are spread over the others, not piled onto one.
        assert_eq!(landed.len(), 4, "{landed:?}");
        let most = *landed.values().max().unwrap();
        let total: usize = landed.values().sum();
        assert!(most * 2 < total, "one worker took {most} of {total}");
    }
    let _ = p;
}

#[test]
fn no_worker_exceeds_the_bound_under_a_skewed_key_distribution() {
    let ws = workers(4);
    let p = policy_over(&ws);
    let mut held: Vec<InFlight> = Vec::new();
    // 90% of requests carry one hot key; all stay in flight.
    for i in 0..400 {
        let key = if i % 10 == 0 {
            format!("cold-{i}")
        } else {
            "hot".to_owned()
        };
        let total: usize = ws.iter().map(|w| w.in_flight()).sum();
        let bound = (1.25 * (total + 1) as f64 / 4.0).ceil() as usize;
        let index = with_session(Some(&key), |r| p.pick(r, &ws).unwrap().index);
        assert!(ws[index].in_flight() < bound, "worker over bound {bound}");
        held.push(ws[index].begin());
        let max = ws.iter().map(|w| w.in_flight()).max().unwrap();
        assert!(max <= bound, "in flight {max} > bound {bound} after {i}");
    }
    let mean = 400.0 / 4.0;
    assert!(ws.iter().all(|w| w.in_flight() as f64 <= 1.25 * mean + 1.0));
}

#[test]
fn no_key_goes_to_the_least_loaded() {
    let ws = workers(3);
    let p = policy_over(&ws);
    let _a = ws[0].begin();
    let _b = ws[2].begin();
    assert_eq!(with_session(None, |r| p.pick(r, &ws).unwrap().index), 1);
}

#[test]
fn candidates_limit_the_walk_to_workers_serving_the_model() {
    let ws = workers(4);
    let p = policy_over(&ws);
    let subset = vec![ws[1].clone(), ws[3].clone()];
    for k in 0..200 {
        let id = home(&p, &subset, &format!("k{k}"));
        assert!(id == ws[1].id() || id == ws[3].id());
    }
}

#[test]
fn every_data_parallel_rank_is_a_home_of_its_own_under_skewed_keys() {
    use crate::config::{WorkerSpec, WorkerUrl};
    use std::num::NonZeroU32;
    // Two servers of four ranks each: eight workers, two URLs.
    let ws: Vec<Arc<Worker>> = (0..2)
        .flat_map(|s| {
            let url = WorkerUrl::parse("--worker-urls", &format!("http://10.0.1.{s}:8000"));
            let spec = WorkerSpec {
                ranks: NonZeroU32::new(4).unwrap(),
                ..WorkerSpec::from(url.unwrap())
            };
            Worker::ranks(&spec)
        })
        .collect();
    assert_eq!(ws.len(), 8);
    let p = policy_over(&ws);
    // Skewed: key k is sent 1 + 400 / (k + 1) times (a few heavy sessions, a long tail).
    let mut served: HashMap<u64, usize> = HashMap::new();
    let mut homes: HashMap<u64, usize> = HashMap::new();
    for k in 0..400 {
        let key = format!("tenant-{k}");
        let at = home(&p, &ws, &key);
        *homes.entry(at).or_default() += 1;
        *served.entry(at).or_default() += 1 + 400 / (k + 1);
    }
    assert_eq!(
        homes.len(),
        8,
        "every rank is the home of some sessions: {homes:?}"
    );
    let most = *homes.values().max().unwrap();
    assert!(
        most < 400 / 4,
        "one rank is home to {most} of 400 sessions: {homes:?}"
    );
    let heaviest = *served.values().max().unwrap();
    let total: usize = served.values().sum();
    assert!(
        heaviest * 3 < total,
        "one rank took {heaviest} of {total}: {served:?}"
    );
}
