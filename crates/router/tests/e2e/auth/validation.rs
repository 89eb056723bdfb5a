//! Keys checked with validation URLs: answers remembered for their TTLs, a service down is a
//! 503 (never a 401), several URLs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use tokio::net::TcpListener;

use super::{assert_refused, chat_as};
use crate::support::*;

/// A validation service on a loopback port: `Bearer good` is accepted, `Bearer admin-only`
/// refused with 403, anything else with 401, unless it is switched down (503 to all).
struct KeyService {
    url: String,
    state: Arc<ServiceState>,
}

#[derive(Default)]
struct ServiceState {
    calls: AtomicUsize,
    down: AtomicBool,
    refuse_all: AtomicBool,
    seen: Mutex<Vec<String>>,
}

async fn answer(State(state): State<Arc<ServiceState>>, headers: HeaderMap) -> StatusCode {
    state.calls.fetch_add(1, Ordering::SeqCst);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    state.seen.lock().push(auth.clone());
    if state.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match auth.as_str() {
        "Bearer good" if !state.refuse_all.load(Ordering::SeqCst) => StatusCode::OK,
        "Bearer admin-only" => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    }
}

impl KeyService {
    async fn start() -> Self {
        let state = Arc::new(ServiceState::default());
        let app = Router::new()
            .route("/v1/check", get(answer))
            .with_state(Arc::clone(&state));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/check", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, state }
    }

    fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }
}

/// A URL where nothing listens, and the port it names, which no other test is given while
/// it is held.
fn dead_url() -> (String, ClosedPort) {
    let closed = ClosedPort::hold();
    (format!("http://{}/v1/check", closed.addr()), closed)
}

#[tokio::test]
async fn accepted_keys_are_remembered_and_refused_ones_for_the_rejected_ttl() {
    let workers = fast_sims(1).await;
    let service = KeyService::start().await;
    let router = router_with(&workers, |a| {
        a.api_keys = vec!["static-key".into()];
        a.api_key_validation_urls = vec![service.url.clone()];
        a.api_key_rejected_ttl_secs = 1;
    })
    .await;
    let base = router.url();

    // Static keys never reach the service.
    assert_eq!(
        chat_as(&base, Some("Bearer static-key"), false)
            .await
            .status,
        200
    );
    assert_eq!(service.calls(), 0);

    assert_eq!(chat_as(&base, Some("Bearer good"), false).await.status, 200);
    assert_eq!(service.calls(), 1);
    assert_eq!(*service.state.seen.lock(), ["Bearer good"]);
    let streamed = chat_as(&base, Some("Bearer good"), true).await;
    assert_eq!(streamed.status, 200);
    assert_eq!(
        service.calls(),
        1,
        "the second request is served from the cache"
    );

    assert_refused(&chat_as(&base, Some("Bearer bad"), false).await, "bad");
    assert_eq!(service.calls(), 2);
    assert_refused(&chat_as(&base, Some("Bearer bad"), false).await, "bad");
    assert_refused(
        &chat_as(&base, Some("Bearer admin-only"), false).await,
        "admin-only",
    );
    assert_eq!(service.calls(), 3, "a refusal is remembered");
    // The rejected TTL (1 s) passes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_refused(&chat_as(&base, Some("Bearer bad"), false).await, "bad");
    assert_eq!(
        service.calls(),
        4,
        "asked again once the rejected TTL passed"
    );
    // Accepted keys stay for the (longer) cache TTL.
    assert_eq!(chat_as(&base, Some("Bearer good"), false).await.status, 200);
    assert_eq!(service.calls(), 4);
    let app = router.app();
    let metrics = app.metrics.render(&app.fleet.snapshot(), &app.admission);
    assert!(
        metrics.contains(r#"vllm_router_api_key_validations_total{cause="refused"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"vllm_router_api_key_validations_total{cause="valid"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn while_the_service_is_down_clients_get_503_not_401() {
    let workers = fast_sims(1).await;
    let service = KeyService::start().await;
    let router = router_with(&workers, |a| {
        a.api_key_validation_urls = vec![service.url.clone()];
    })
    .await;
    let base = router.url();

    service.set_down(true);
    for _ in 0..2 {
        let reply = chat_as(&base, Some("Bearer good"), false).await;
        let body = reply.assert_error(503);
        assert_eq!(body["error"]["type"], "ServiceUnavailableError");
        assert!(reply.header("retry-after").parse::<u64>().unwrap() >= 1);
        assert!(!String::from_utf8_lossy(&reply.body).contains("good"));
    }
    assert_eq!(service.calls(), 2, "an unavailable check is not remembered");
    // A key the service would refuse is not refused while it is down either.
    chat_as(&base, Some("Bearer bad"), false)
        .await
        .assert_error(503);

    service.set_down(false);
    assert_eq!(chat_as(&base, Some("Bearer good"), false).await.status, 200);
    assert_refused(&chat_as(&base, Some("Bearer bad"), false).await, "bad");

    // Unreachable is down too.
    let (dead, _closed) = dead_url();
    let router = router_with(&workers, |a| {
        a.api_key_validation_urls = vec![dead.clone()];
        a.api_key_validation_timeout_ms = 500;
    })
    .await;
    chat_as(&router.url(), Some("Bearer good"), false)
        .await
        .assert_error(503);
}

#[tokio::test]
async fn an_accepted_key_is_asked_again_after_the_cache_ttl() {
    let workers = fast_sims(1).await;
    let service = KeyService::start().await;
    let router = router_with(&workers, |a| {
        a.api_key_validation_urls = vec![service.url.clone()];
        a.api_key_cache_ttl_secs = 1;
    })
    .await;
    let base = router.url();
    assert_eq!(chat_as(&base, Some("Bearer good"), false).await.status, 200);
    assert_eq!(chat_as(&base, Some("Bearer good"), false).await.status, 200);
    assert_eq!(service.calls(), 1);
    // The cache TTL (1 s) passes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Revoked in the meantime: the next check says so.
    service.state.refuse_all.store(true, Ordering::SeqCst);
    assert_refused(&chat_as(&base, Some("Bearer good"), false).await, "good");
    assert_eq!(service.calls(), 2);
}

#[tokio::test]
async fn one_url_accepting_suffices_and_refusals_outweigh_silence() {
    let workers = fast_sims(1).await;
    let refusing = KeyService::start().await;
    refusing.state.refuse_all.store(true, Ordering::SeqCst);
    let accepting = KeyService::start().await;
    let (dead, _closed) = dead_url();
    let router = router_with(&workers, |a| {
        a.api_key_validation_urls = vec![refusing.url.clone(), dead.clone(), accepting.url.clone()];
    })
    .await;
    let base = router.url();
    assert_eq!(chat_as(&base, Some("Bearer good"), false).await.status, 200);
    assert_eq!(accepting.calls(), 1);

    // One URL down, the other refusing: refused, not unavailable.
    let router = router_with(&workers, |a| {
        a.api_key_validation_urls = vec![dead.clone(), refusing.url.clone()];
    })
    .await;
    assert_refused(
        &chat_as(&router.url(), Some("Bearer good"), false).await,
        "good",
    );
}

#[tokio::test]
async fn an_https_url_is_dialled_with_tls() {
    let workers = fast_sims(1).await;
    let plain = KeyService::start().await;
    // The service speaks plain HTTP: the TLS handshake fails, so the check is unavailable.
    let https = plain.url.replacen("http://", "https://", 1);
    let router = router_with(&workers, |a| {
        a.api_key_validation_urls = vec![https];
        a.api_key_validation_timeout_ms = 1000;
    })
    .await;
    chat_as(&router.url(), Some("Bearer good"), false)
        .await
        .assert_error(503);
    assert_eq!(plain.calls(), 0, "no plain HTTP request was made");
}
