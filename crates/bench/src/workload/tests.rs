use std::num::{NonZeroU32, NonZeroU64};

use serde_json::Value;

use super::*;

fn config(kind: WorkloadKind) -> WorkloadConfig {
    WorkloadConfig {
        kind,
        seed: 1,
        prefix_seed: 1,
        groups: NonZeroU64::new(4).unwrap(),
        turns: NonZeroU32::new(3).unwrap(),
        system_prompt_words: 60,
        user_words: 10,
        prompt_words: 30,
        max_tokens: 8,
        model: "m".into(),
        session_key: true,
    }
}

fn body(req: &ChatRequest) -> Value {
    serde_json::from_slice(&req.body).unwrap()
}

/// Runs a conversation to its end with fixed replies; returns each request's body.
fn play(mut conv: Conversation) -> Vec<Value> {
    let mut bodies = Vec::new();
    while let Some(req) = conv.next_request() {
        bodies.push(body(&req));
        conv.record_reply(format!("reply {}", bodies.len()));
    }
    assert!(conv.is_finished());
    bodies
}

#[test]
fn same_seed_same_conversation() {
    let a = play(Workload::new(config(WorkloadKind::MultiTurn)).conversation(5, 1));
    let b = play(Workload::new(config(WorkloadKind::MultiTurn)).conversation(5, 1));
    assert_eq!(a, b);
    let other = play(Workload::new(config(WorkloadKind::MultiTurn)).conversation(6, 1));
    assert_ne!(a, other);
    let mut reseeded = config(WorkloadKind::MultiTurn);
    reseeded.seed = 2;
    assert_ne!(a, play(Workload::new(reseeded).conversation(5, 1)));
}

#[test]
fn prompts_grow_turn_by_turn_and_keep_their_prefix() {
    let bodies = play(Workload::new(config(WorkloadKind::MultiTurn)).conversation(0, 0));
    assert_eq!(bodies.len(), 3);
    for (turn, pair) in bodies.windows(2).enumerate() {
        let (prev, next) = (
            pair[0]["messages"].as_array().unwrap(),
            pair[1]["messages"].as_array().unwrap(),
        );
        assert_eq!(next.len(), prev.len() + 2, "turn {turn}");
        assert_eq!(&next[..prev.len()], &prev[..]);
        assert_eq!(next[prev.len()]["role"], "assistant");
        assert_eq!(next[prev.len()]["content"], format!("reply {}", turn + 1));
        assert_eq!(next[prev.len() + 1]["role"], "user");
    }
    let first = bodies[0]["messages"].as_array().unwrap();
    assert_eq!(first[0]["role"], "system");
    assert_eq!(first[0]["content"].as_str().unwrap().split(' ').count(), 60);
    assert_eq!(first[1]["content"].as_str().unwrap().split(' ').count(), 10);
}

#[test]
fn groups_share_system_prompts_and_conversations_differ() {
    let w = Workload::new(config(WorkloadKind::MultiTurn));
    let a = play(w.conversation(1, 2));
    let b = play(w.conversation(2, 6));
    let c = play(w.conversation(3, 3));
    assert_eq!(
        a[0]["messages"][0], b[0]["messages"][0],
        "6 mod 4 is group 2"
    );
    assert_ne!(a[0]["messages"][0], c[0]["messages"][0]);
    assert_ne!(a[0]["messages"][1], b[0]["messages"][1]);
}

#[test]
fn every_request_streams_with_usage_and_carries_the_session() {
    let mut conv = Workload::new(config(WorkloadKind::MultiTurn)).conversation(9, 0);
    let req = conv.next_request().unwrap();
    let v = body(&req);
    assert_eq!(v["stream"], true);
    assert_eq!(v["stream_options"]["include_usage"], true);
    assert_eq!(v["max_tokens"], 8);
    assert_eq!(v["model"], "m");
    assert_eq!(v["user"], "conv-9");
    assert_eq!(req.session.as_deref(), Some("conv-9"));

    let mut off = config(WorkloadKind::MultiTurn);
    off.session_key = false;
    let req = Workload::new(off)
        .conversation(9, 0)
        .next_request()
        .unwrap();
    assert!(req.session.is_none());
    assert!(body(&req).get("user").is_none());
}

#[test]
fn few_shot_requests_share_a_prefix_per_group() {
    let w = Workload::new(config(WorkloadKind::FewShot));
    let bodies: Vec<Value> = (0..40)
        .map(|id| play(w.conversation(id, 0)).remove(0))
        .collect();
    let mut prefixes: Vec<&Value> = bodies.iter().map(|b| &b["messages"][0]).collect();
    prefixes.sort_by_key(|v| v.to_string());
    prefixes.dedup();
    assert!(
        (2..=4).contains(&prefixes.len()),
        "{} distinct prefixes",
        prefixes.len()
    );
    let questions: std::collections::HashSet<String> = bodies
        .iter()
        .map(|b| b["messages"][1]["content"].to_string())
        .collect();
    assert_eq!(questions.len(), 40);
    assert!(bodies.iter().all(|b| b.get("user").is_none()));
}

/// A pre-warm runs under another seed: it must send the same shared prefixes with other
/// questions, or it warms the caches with prefixes the measured run never sends.
#[test]
fn another_seed_keeps_the_prefixes_of_the_prefix_seed() {
    let first = |seed: u64, kind: WorkloadKind| {
        let w = Workload::new(WorkloadConfig {
            seed,
            ..config(kind)
        });
        let prefixes: std::collections::BTreeSet<String> = (0..40)
            .map(|id| play(w.conversation(id, id)).remove(0)["messages"][0].to_string())
            .collect();
        let question = play(w.conversation(0, 0)).remove(0)["messages"][1].to_string();
        (prefixes, question)
    };
    for kind in [WorkloadKind::FewShot, WorkloadKind::MultiTurn] {
        let (prefixes_a, question_a) = first(1, kind);
        let (prefixes_b, question_b) = first(1001, kind);
        assert_eq!(prefixes_a, prefixes_b, "{kind:?}");
        assert_ne!(question_a, question_b, "{kind:?}");
    }
    let w = Workload::new(WorkloadConfig {
        prefix_seed: 2,
        ..config(WorkloadKind::FewShot)
    });
    let other = play(w.conversation(0, 0)).remove(0)["messages"][0].to_string();
    assert!(!first(1, WorkloadKind::FewShot).0.contains(&other));
}

#[test]
fn random_prompts_have_the_asked_length_and_share_nothing() {
    let w = Workload::new(config(WorkloadKind::Random));
    let a = play(w.conversation(0, 0));
    let b = play(w.conversation(1, 0));
    assert_eq!(a.len(), 1);
    let text = a[0]["messages"][0]["content"].as_str().unwrap();
    assert_eq!(text.split(' ').count(), 30);
    assert_ne!(a[0]["messages"], b[0]["messages"]);
}
