//! The admin API: workers listed, added, drained and removed at run time, behind the admin key.

use std::time::Duration;

use http::Method;
use serde_json::json;
use vllm_sim::SimConfig;

use crate::support::*;

fn enc(url: &str) -> String {
    url.replace(':', "%3A").replace('/', "%2F")
}

#[tokio::test]
async fn workers_are_added_listed_and_removed() {
    let workers = fast_sims(2).await;
    let router = router(&workers[..1]).await;
    let base = router.url();

    let added = post_json(
        &format!("{base}/workers"),
        json!({"url": workers[1].url(), "weight": 2, "labels": {"zone": "b"}}),
    )
    .await;
    assert_eq!(added.status, 201, "{:?}", added.body);
    let entry = added.json();
    assert_eq!(
        (
            entry["origin"].clone(),
            entry["healthy"].clone(),
            entry["weight"].clone()
        ),
        (json!("admin"), json!(true), json!(2)),
        "{entry}"
    );
    assert_eq!(entry["models"], json!([MODEL]));
    let id = entry["id"].as_str().unwrap().to_owned();

    let list = get(&format!("{base}/workers")).await.json();
    assert_eq!(list["workers"].as_array().unwrap().len(), 2);
    assert_eq!(list["workers"][0]["origin"], "config");
    let by_id = get(&format!("{base}/workers/{id}")).await.json();
    let by_url = get(&format!("{base}/workers/{}", enc(&workers[1].url())))
        .await
        .json();
    assert_eq!(by_id, by_url);
    // The new worker takes traffic.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = post_json(&format!("{base}/v1/chat/completions"), chat(MODEL, false)).await;
        seen.push(r.header("x-vllm-router-worker").to_owned());
    }
    assert!(seen.contains(&workers[1].url()), "{seen:?}");

    post_json(&format!("{base}/workers"), json!({"url": workers[1].url()}))
        .await
        .assert_error(409);
    post_json(&format!("{base}/workers"), json!({"url": "gpu:1"}))
        .await
        .assert_error(400);
    post_json(
        &format!("{base}/workers"),
        json!({"url": workers[1].url(), "colour": 1}),
    )
    .await
    .assert_error(400);
    send(Method::POST, &format!("{base}/workers"), &[], "{not json")
        .await
        .assert_error(400);

    let removed = send(Method::DELETE, &format!("{base}/workers/{id}"), &[], "").await;
    assert_eq!(removed.status, 200);
    assert_eq!(removed.json()["removed"], true);
    get(&format!("{base}/workers/{id}")).await.assert_error(404);
    send(Method::DELETE, &format!("{base}/workers/{id}"), &[], "")
        .await
        .assert_error(404);
    for _ in 0..3 {
        let r = post_json(&format!("{base}/v1/chat/completions"), chat(MODEL, false)).await;
        assert_eq!(r.header("x-vllm-router-worker"), workers[0].url());
    }
}

#[tokio::test]
async fn the_compatible_routes_work() {
    let workers = fast_sims(2).await;
    let router = router(&workers[..1]).await;
    let base = router.url();
    let r = send(
        Method::POST,
        &format!("{base}/add_worker?url={}", enc(&workers[1].url())),
        &[],
        "",
    )
    .await;
    // The peer's statuses: 200 when added, 400 when already there.
    assert_eq!(r.status, 200, "{:?}", r.body);
    let again = format!("{base}/add_worker?url={}", enc(&workers[1].url()));
    send(Method::POST, &again, &[], "").await.assert_error(400);
    let listed = get(&format!("{base}/workers")).await.json();
    assert_eq!(listed["total"], 2);
    assert_eq!(listed["stats"]["regular_count"], 2);
    let entry = &listed["workers"][1];
    assert_eq!(entry["url"], workers[1].url());
    assert_eq!(
        (
            entry["model_id"].clone(),
            entry["worker_type"].clone(),
            entry["is_healthy"].clone()
        ),
        (json!(MODEL), json!("regular"), json!(true))
    );
    assert_eq!(entry["load"], 0);
    let loads = get(&format!("{base}/get_loads")).await.json();
    assert_eq!(
        loads,
        json!({"workers": [{"worker": workers[0].url(), "load": 0},
                           {"worker": workers[1].url(), "load": 0}]})
    );
    let list = get(&format!("{base}/list_workers")).await.json();
    assert_eq!(list, json!({"urls": [workers[0].url(), workers[1].url()]}));
    let r = send(
        Method::POST,
        &format!("{base}/remove_worker?url={}", enc(&workers[0].url())),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let list = get(&format!("{base}/list_workers")).await.json();
    assert_eq!(list, json!({"urls": [workers[1].url()]}));
    send(Method::POST, &format!("{base}/add_worker"), &[], "")
        .await
        .assert_error(400);
}

#[tokio::test]
async fn a_drain_waits_for_in_flight_requests_and_sends_no_new_ones() {
    let workers = sims([
        SimConfig {
            itl: Duration::from_millis(40),
            ..SimConfig::default()
        },
        SimConfig::default(),
    ])
    .await;
    let router = router(&workers).await;
    let base = router.url();
    // Round robin's first turn: the slow worker, a stream of 20 tokens (~800 ms).
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 20, "stream": true});
    let mut stream = RawClient::post(router.addr(), "/v1/completions", &body.to_string()).await;
    stream.read_until("data: ", 1).await;
    assert_eq!(workers[0].records().len(), 1);

    let drain_url = format!("{base}/workers/{}/drain", enc(&workers[0].url()));
    let drain = tokio::spawn(async move { send(Method::POST, &drain_url, &[], "").await });
    let slow_worker = router
        .app()
        .fleet
        .snapshot()
        .members()
        .iter()
        .find(|m| m.worker.url() == workers[0].url())
        .expect("the slow worker is in the fleet")
        .worker
        .clone();
    eventually(Duration::from_secs(5), || {
        slow_worker.is_draining().then_some(())
    })
    .await;
    for _ in 0..4 {
        let r = post_json(&format!("{base}/v1/chat/completions"), chat(MODEL, false)).await;
        assert_eq!(r.header("x-vllm-router-worker"), workers[1].url());
    }
    assert!(
        !drain.is_finished(),
        "the drain answered while a request was in flight"
    );
    let listed = get(&format!("{base}/workers")).await.json();
    assert_eq!(listed["workers"][0]["draining"], true);
    assert_eq!(listed["workers"][0]["in_flight"], 1);

    stream.read_until("data: [DONE]", 1).await;
    let drained = drain.await.unwrap();
    assert_eq!(drained.status, 200);
    let entry = drained.json();
    assert_eq!(
        (entry["drained"].clone(), entry["in_flight"].clone()),
        (json!(true), json!(0))
    );
    assert_eq!(
        workers[0].records().len(),
        1,
        "a draining worker got a new request"
    );

    let resumed = send(
        Method::POST,
        &format!("{base}/workers/{}/resume", enc(&workers[0].url())),
        &[],
        "",
    )
    .await;
    assert_eq!(resumed.json()["draining"], false);
    for _ in 0..2 {
        post_json(&format!("{base}/v1/chat/completions"), chat(MODEL, false)).await;
    }
    assert_eq!(workers[0].records().len(), 2);
}

#[tokio::test]
async fn a_drain_with_a_timeout_answers_when_it_passes() {
    let workers = sims([SimConfig {
        itl: Duration::from_millis(100),
        ..SimConfig::default()
    }])
    .await;
    let router = router(&workers).await;
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 30, "stream": true});
    let mut stream = RawClient::post(router.addr(), "/v1/completions", &body.to_string()).await;
    stream.read_until("data: ", 1).await;
    let url = format!(
        "{}/workers/{}/drain?timeout_secs=0.2",
        router.url(),
        enc(&workers[0].url())
    );
    let entry = send(Method::POST, &url, &[], "").await.json();
    assert_eq!(
        (entry["drained"].clone(), entry["in_flight"].clone()),
        (json!(false), json!(1))
    );
    let url = format!("{}/workers/x/drain?timeout_secs=-1", router.url());
    send(Method::POST, &url, &[], "").await.assert_error(404);
    let url = format!(
        "{}/workers/{}/drain?timeout_secs=-1",
        router.url(),
        enc(&workers[0].url())
    );
    send(Method::POST, &url, &[], "").await.assert_error(400);
}

#[tokio::test]
async fn the_admin_key_guards_every_admin_route_and_nothing_else() {
    let workers = fast_sims(1).await;
    let router = router_with(&workers, |a| a.admin_api_key = Some("adm1n-s3cret".into())).await;
    let base = router.url();
    let routes = [
        (Method::GET, "/workers"),
        (Method::POST, "/workers"),
        (Method::GET, "/workers/x"),
        (Method::DELETE, "/workers/x"),
        (Method::POST, "/workers/x/drain"),
        (Method::POST, "/workers/x/resume"),
        (Method::POST, "/add_worker?url=http://a:1"),
        (Method::POST, "/remove_worker?url=http://a:1"),
        (Method::GET, "/list_workers"),
    ];
    for (method, path) in &routes {
        let url = format!("{base}{path}");
        let none = send(method.clone(), &url, &[], "").await;
        let v = none.assert_error(401);
        assert!(
            !String::from_utf8_lossy(&none.body).contains("adm1n"),
            "{v}"
        );
        send(
            method.clone(),
            &url,
            &[("authorization", "Bearer wrong")],
            "",
        )
        .await
        .assert_error(401);
        send(
            method.clone(),
            &url,
            &[("authorization", "adm1n-s3cret")],
            "",
        )
        .await
        .assert_error(401);
    }
    let ok = send(
        Method::GET,
        &format!("{base}/workers"),
        &[("authorization", "Bearer adm1n-s3cret")],
        "",
    )
    .await;
    assert_eq!(ok.status, 200);
    // Inference, health and info routes do not need it.
    let r = post_json(&format!("{base}/v1/chat/completions"), chat(MODEL, false)).await;
    assert_eq!(r.status, 200);
    assert_eq!(get(&format!("{base}/health")).await.status, 200);
}

#[tokio::test]
async fn on_its_own_listener_the_admin_api_leaves_the_client_port() {
    let workers = fast_sims(2).await;
    let router = router_with(&workers[..1], |a| a.admin_port = Some(0)).await;
    let admin = router.admin_url().expect("an admin listener");
    post_json(
        &format!("{}/workers", router.url()),
        json!({"url": workers[1].url()}),
    )
    .await
    .assert_error(404);
    assert_eq!(
        get(&format!("{}/list_workers", router.url())).await.status,
        404
    );
    let added = post_json(
        &format!("{admin}/workers"),
        json!({"url": workers[1].url()}),
    )
    .await;
    assert_eq!(added.status, 201, "{:?}", added.body);
    // The peer's workflow, on the admin port.
    let listed = get(&format!("{admin}/list_workers")).await;
    assert_eq!(listed.status, 200);
    assert!(listed.json().to_string().contains(&workers[1].url()));
    // Client routes stay on the client port only.
    assert_eq!(get(&format!("{admin}/v1/models")).await.status, 404);
    let r = post_json(
        &format!("{}/v1/chat/completions", router.url()),
        chat(MODEL, false),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn the_loopback_rule_can_be_turned_off() {
    let workers = fast_sims(2).await;
    let router = router_with(&workers[..1], |a| a.admin_deny_loopback = true).await;
    let r = post_json(
        &format!("{}/workers", router.url()),
        json!({"url": workers[1].url()}),
    )
    .await;
    let v = r.assert_error(403);
    assert!(v.to_string().contains("--admin-api-key"), "{v}");
    assert_eq!(get(&format!("{}/workers", router.url())).await.status, 403);
    assert_eq!(router.app().fleet.snapshot().members().len(), 1);

    let keyed = router_with(&workers[..1], |a| {
        a.admin_deny_loopback = true;
        a.admin_api_key = Some("admin-key".into());
    })
    .await;
    let listed = send(
        Method::GET,
        &format!("{}/workers", keyed.url()),
        &[("authorization", "Bearer admin-key")],
        "",
    )
    .await;
    assert_eq!(listed.status, 200);
}

#[tokio::test]
async fn the_route_explanation_never_echoes_a_credential() {
    let workers = fast_sims(2).await;
    let router = router_with(&workers, |a| {
        a.policy = Some(vllm_router::policy::PolicyKind::ConsistentHash);
        a.session_key_headers = vec!["authorization".into(), "x-session-id".into()];
    })
    .await;
    let explain = |headers: &'static [(&'static str, &'static str)]| {
        let url = format!("{}/debug/route", router.url());
        async move {
            let mut all = vec![("content-type", "application/json")];
            all.extend_from_slice(headers);
            send(Method::POST, &url, &all, chat(MODEL, false).to_string()).await
        }
    };
    let r = explain(&[("authorization", "Bearer sk-very-secret")]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(!text.contains("sk-very-secret"), "{text}");
    assert!(text.contains("redacted (from authorization)"), "{text}");
    // A key that is no credential is shown as it is.
    let r = explain(&[("x-session-id", "tenant-7")]).await;
    assert!(String::from_utf8_lossy(&r.body).contains("\"tenant-7\""));
}
