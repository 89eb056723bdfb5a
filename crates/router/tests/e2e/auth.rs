//! Client API keys on the client routes, the admin key beside them, routes that stay open, and
//! keys that change with a reload.

mod cors;
mod validation;
mod workers;

use bytes::Bytes;
use http::Method;
use tokio::net::TcpListener;
use vllm_router::config::Sources;
use vllm_router::reload::Outcome;
use vllm_router::server::RouterHandle;

use crate::reload::ConfigFile;
use crate::support::*;

/// POST a chat request to `base` bearing `auth` as the `Authorization` header.
pub async fn chat_as(base: &str, auth: Option<&str>, stream: bool) -> Reply {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = auth {
        headers.push(("authorization", auth));
    }
    send(
        Method::POST,
        &format!("{base}/v1/chat/completions"),
        &headers,
        chat(MODEL, stream).to_string(),
    )
    .await
}

/// GET `url` bearing `auth`.
pub async fn get_as(url: &str, auth: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    send(Method::GET, url, &headers, Bytes::new()).await
}

/// Assert a 401 in the OpenAI shape that invites a bearer key and never shows `key`.
fn assert_refused(reply: &Reply, key: &str) {
    let body = reply.assert_error(401);
    assert_eq!(body["error"]["type"], "AuthenticationError", "{body}");
    assert_eq!(reply.header("www-authenticate"), "Bearer");
    assert!(
        !String::from_utf8_lossy(&reply.body).contains(key),
        "the key is echoed: {body}"
    );
}

#[tokio::test]
async fn client_routes_need_one_of_the_keys() {
    let workers = fast_sims(1).await;
    let router = router_with(&workers, |a| a.api_keys = vec!["k1".into(), "k2".into()]).await;
    let base = router.url();

    let refused = chat_as(&base, None, false).await;
    assert_refused(&refused, "k1");
    assert_eq!(refused.header("x-request-id").len(), 32);
    assert_refused(
        &chat_as(&base, Some("Bearer wrong-key"), false).await,
        "wrong-key",
    );
    assert_refused(&chat_as(&base, Some("Basic azE="), false).await, "azE=");
    assert_refused(&chat_as(&base, Some("k1"), false).await, "k1");

    for key in ["Bearer k1", "Bearer k2", "bearer k1"] {
        let reply = chat_as(&base, Some(key), false).await;
        assert_eq!(reply.status, 200, "{key}: {:?}", reply.body);
        assert!(reply.json()["choices"][0]["message"]["content"].is_string());
    }
    let streamed = chat_as(&base, Some("Bearer k2"), true).await;
    assert_eq!(streamed.status, 200);
    assert!(
        String::from_utf8_lossy(&streamed.body).contains("data: [DONE]"),
        "{:?}",
        streamed.body
    );
    // The other client routes are guarded alike.
    for path in ["/v1/models", "/", "/load-stats"] {
        let url = format!("{base}{path}");
        assert_refused(&get_as(&url, None).await, "k1");
        assert_eq!(get_as(&url, Some("Bearer k1")).await.status, 200, "{path}");
    }
    let explain = |auth: Option<&'static str>| {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend(auth.map(|a| ("authorization", a)));
        let url = format!("{base}/debug/route");
        async move { send(Method::POST, &url, &headers, chat(MODEL, false).to_string()).await }
    };
    assert_refused(&explain(None).await, "k1");
    assert_eq!(explain(Some("Bearer k1")).await.status, 200);
    // A refused request never reaches a worker, and is counted like any refusal.
    let served = workers[0].stats().by_path["/v1/chat/completions"];
    assert_eq!(served, 4, "{:?}", workers[0].stats().by_path);
    let app = router.app();
    let metrics = app.metrics.render(&app.fleet.snapshot(), &app.admission);
    assert!(
        metrics.contains(
            r#"vllm_router_requests_total{route="/v1/chat/completions",model="none",status_class="4xx"} 4"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn probes_version_and_metrics_stay_open() {
    let workers = fast_sims(1).await;
    let router = router_with(&workers, |a| a.api_keys = vec!["k1".into()]).await;
    let base = router.url();
    for path in ["/health", "/liveness", "/readiness", "/version"] {
        let reply = get(&format!("{base}{path}")).await;
        assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = format!("http://{}/metrics", listener.local_addr().unwrap());
    tokio::spawn(vllm_router::server::serve_metrics(
        listener,
        router.app().clone(),
        std::future::pending(),
    ));
    let page = get(&metrics).await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("vllm_router_"));
}

#[tokio::test]
async fn the_admin_key_opens_client_routes_but_a_client_key_never_opens_admin_routes() {
    let workers = fast_sims(1).await;
    let router = router_with(&workers, |a| {
        a.api_keys = vec!["client-key".into()];
        a.admin_api_key = Some("admin-key".into());
    })
    .await;
    let base = router.url();
    assert_eq!(
        chat_as(&base, Some("Bearer admin-key"), false).await.status,
        200
    );
    let workers_url = format!("{base}/workers");
    assert_eq!(
        get_as(&workers_url, Some("Bearer admin-key")).await.status,
        200
    );
    get_as(&workers_url, Some("Bearer client-key"))
        .await
        .assert_error(401);
    get_as(&workers_url, None).await.assert_error(401);
}

#[tokio::test]
async fn keys_come_from_the_keys_file_too() {
    let workers = fast_sims(1).await;
    let file = ConfigFile::new("");
    let keys = file.path.with_file_name("keys.txt");
    std::fs::write(
        &keys,
        "# team a\nfile-key-a\n\n  file-key-b  # rotated monthly\n",
    )
    .unwrap();
    let router = router_with(&workers, |a| {
        a.api_keys = vec!["flag-key".into()];
        a.api_keys_file = Some(keys.clone());
    })
    .await;
    let base = router.url();
    for key in ["Bearer flag-key", "Bearer file-key-a", "Bearer file-key-b"] {
        assert_eq!(chat_as(&base, Some(key), false).await.status, 200, "{key}");
    }
    assert_refused(
        &chat_as(&base, Some("Bearer # team a"), false).await,
        "team",
    );
}

async fn router_from(file: &ConfigFile) -> RouterHandle {
    let sources = Sources::from_argv(["--config", file.path.to_str().unwrap()], |_| None).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    RouterHandle::spawn_with(listener, sources).await.unwrap()
}

fn config_text(worker: &str, extra: &str) -> String {
    format!(
        "prometheus_port = 0\nworker_startup_timeout_secs = 5\nconfig_reload_interval_secs = 3600\n\
         worker_urls = [\"{worker}\"]\n{extra}\n"
    )
}

#[tokio::test]
async fn keys_rotate_with_a_reload_and_the_keys_file_is_read_again() {
    let workers = fast_sims(1).await;
    let file = ConfigFile::new("");
    let keys = file.path.with_file_name("keys.txt");
    std::fs::write(&keys, "file-key-1\n").unwrap();
    let keys_line = format!("api_keys_file = \"{}\"", keys.display());
    file.write(&config_text(
        &workers[0].url(),
        &format!("api_keys = [\"old-key\"]\n{keys_line}"),
    ));
    let router = router_from(&file).await;
    let base = router.url();
    let reloader = router.reloader().unwrap();
    assert_eq!(
        chat_as(&base, Some("Bearer old-key"), false).await.status,
        200
    );
    assert_eq!(
        chat_as(&base, Some("Bearer file-key-1"), false)
            .await
            .status,
        200
    );

    // The file names a new key, and CORS origins, which wait for a restart.
    file.write(&config_text(
        &workers[0].url(),
        &format!("api_keys = [\"new-key\"]\n{keys_line}\ncors_allowed_origins = [\"https://app.example\"]"),
    ));
    let Outcome::Applied(change) = reloader.reload().await.unwrap() else {
        panic!("nothing applied")
    };
    assert_eq!(change.needs_restart, vec!["cors_allowed_origins"]);
    assert_refused(
        &chat_as(&base, Some("Bearer old-key"), false).await,
        "old-key",
    );
    assert_eq!(
        chat_as(&base, Some("Bearer new-key"), false).await.status,
        200
    );
    let with_origin = send(
        Method::GET,
        &format!("{base}/health"),
        &[("origin", "https://app.example")],
        Bytes::new(),
    )
    .await;
    assert!(
        with_origin
            .headers
            .get("access-control-allow-origin")
            .is_none()
    );

    // Only the keys file changed: a reload (SIGHUP's) reads it again.
    std::fs::write(&keys, "file-key-2\n").unwrap();
    assert!(matches!(
        reloader.reload().await.unwrap(),
        Outcome::Applied(_)
    ));
    assert_refused(
        &chat_as(&base, Some("Bearer file-key-1"), false).await,
        "file-key-1",
    );
    assert_eq!(
        chat_as(&base, Some("Bearer file-key-2"), false)
            .await
            .status,
        200
    );
}
