use super::*;
use crate::config::WorkerUrl;
use crate::policy::PolicyKind;

fn url(s: &str) -> WorkerSpec {
    WorkerUrl::parse("--worker-urls", s).unwrap().into()
}

fn card(id: &str) -> ModelCard {
    ModelCard {
        id: id.into(),
        raw: serde_json::json!({ "id": id, "object": "model" }),
    }
}

#[tokio::test]
async fn models_route_to_the_workers_that_serve_them() {
    let fleet = Fleet::start(
        &[url("http://a:1"), url("http://b:2")],
        vec![PolicyKind::RoundRobin.build(&Default::default())],
    );
    assert_eq!(fleet.snapshot().serving(Some("m1")).map(<[_]>::len), None);
    assert_eq!(fleet.snapshot().serving(None).map(<[_]>::len), Some(0));

    fleet
        .apply(FleetEvent::Models {
            url: "http://a:1".into(),
            models: vec![card("m1"), card("m2")],
        })
        .await;
    fleet
        .apply(FleetEvent::Models {
            url: "http://b:2".into(),
            models: vec![card("m2")],
        })
        .await;
    let snap = fleet.snapshot();
    assert_eq!(snap.serving(Some("m1")).unwrap().len(), 1);
    assert_eq!(snap.serving(Some("m2")).unwrap().len(), 2);
    assert_eq!(snap.serving(None).unwrap().len(), 2);
    assert_eq!(snap.model_names(), ["m1", "m2"]);

    // Only healthy workers' models are listed, each once.
    assert!(snap.healthy_models().is_empty());
    for m in snap.members() {
        m.worker.set_healthy(true);
    }
    let ids: Vec<_> = snap
        .healthy_models()
        .iter()
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(ids, ["m1", "m2"]);
}

#[tokio::test]
async fn add_and_remove_publish_new_snapshots_and_keep_live_workers() {
    let fleet = Fleet::start(
        &[url("http://a:1")],
        vec![PolicyKind::Random.build(&Default::default())],
    );
    let before = fleet.snapshot();
    let held = before.members()[0].worker.begin();

    fleet.apply(FleetEvent::Add(url("http://b:2"))).await;
    fleet.apply(FleetEvent::Add(url("http://b:2"))).await;
    assert_eq!(fleet.snapshot().members().len(), 2);

    fleet.apply(FleetEvent::Remove("http://a:1".into())).await;
    let after = fleet.snapshot();
    assert_eq!(after.members().len(), 1);
    assert_eq!(after.members()[0].worker.url(), "http://b:2");
    // The removed worker's in-flight request still holds it.
    assert_eq!(held.worker().in_flight(), 1);
    // An unchanged model list does not publish a new snapshot.
    fleet
        .apply(FleetEvent::Models {
            url: "http://b:2".into(),
            models: vec![card("m")],
        })
        .await;
    let s1 = fleet.snapshot();
    fleet
        .apply(FleetEvent::Models {
            url: "http://b:2".into(),
            models: vec![card("m")],
        })
        .await;
    assert!(Arc::ptr_eq(&s1, &fleet.snapshot()));
}

#[test]
fn bytes_per_token_starts_from_the_first_report_and_moves_by_a_sixteenth() {
    let w = Worker::new(url("http://a:1"));
    assert_eq!(w.learned_bytes_per_token(), None);
    assert_eq!(w.bytes_per_token(), DEFAULT_BYTES_PER_TOKEN);
    w.observe_prompt(0, 10);
    w.observe_prompt(10, 0);
    assert_eq!(
        w.learned_bytes_per_token(),
        None,
        "empty reports teach nothing"
    );
    w.observe_prompt(6000, 1000);
    assert_eq!(w.bytes_per_token(), 6.0);
    w.observe_prompt(2200, 1000);
    let moved = w.bytes_per_token();
    assert!((moved - (6.0 - 3.8 / 16.0)).abs() < 0.01, "{moved}");
    for _ in 0..200 {
        w.observe_prompt(2200, 1000);
    }
    assert!((w.bytes_per_token() - 2.2).abs() < 0.01);
}
