use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use http::{HeaderMap, StatusCode};
use tokio::net::TcpListener;

use super::*;

/// A validation service on a loopback port: answers `status` to every key after `delay`,
/// counting the calls and the keys it was shown.
struct Service {
    url: String,
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
}

/// What the service shares with its handler: the call count and the keys shown.
type Seen = (Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>);

async fn service(status: StatusCode, delay: Duration) -> Service {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let state: Seen = (Arc::clone(&calls), Arc::clone(&seen));
    let answer = move |State((calls, seen)): State<Seen>, headers: HeaderMap| async move {
        calls.fetch_add(1, Ordering::SeqCst);
        let auth = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        seen.lock().push(auth);
        tokio::time::sleep(delay).await;
        status
    };
    let app = Router::new().route("/check", get(answer)).with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/check", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Service { url, calls, seen }
}

/// A URL where nothing listens.
async fn nowhere() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/check", listener.local_addr().unwrap());
    drop(listener);
    url
}

fn config(urls: &[&str]) -> Arc<Config> {
    let mut config = Config::with_workers(Vec::<String>::new()).unwrap();
    config.auth.validation_urls = urls.iter().map(|u| u.parse().unwrap()).collect();
    config.auth.validation_timeout = Duration::from_secs(2);
    Arc::new(config)
}

#[tokio::test]
async fn concurrent_requests_with_one_key_share_one_check() {
    let ok = service(StatusCode::OK, Duration::from_millis(200)).await;
    let config = config(&[&ok.url]);
    let validator = Arc::new(Validator::new(Metrics::new()));
    let checks: Vec<_> = (0..8)
        .map(|_| {
            let validator = Arc::clone(&validator);
            let config = Arc::clone(&config);
            tokio::spawn(async move { validator.verdict("key-1", &config).await })
        })
        .collect();
    for check in checks {
        assert_eq!(check.await.unwrap(), Verdict::Valid);
    }
    assert_eq!(ok.calls.load(Ordering::SeqCst), 1);
    assert_eq!(*ok.seen.lock(), ["Bearer key-1"]);
    // Remembered now.
    assert_eq!(validator.verdict("key-1", &config).await, Verdict::Valid);
    assert_eq!(ok.calls.load(Ordering::SeqCst), 1);
    assert!(validator.inner.flights.lock().is_empty());
    // Another key is checked on its own.
    assert_eq!(validator.verdict("key-2", &config).await, Verdict::Valid);
    assert_eq!(ok.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn refusals_are_remembered_unavailability_is_not() {
    let refusing = service(StatusCode::UNAUTHORIZED, Duration::ZERO).await;
    let validator = Validator::new(Metrics::new());
    let refused = config(&[&refusing.url]);
    assert_eq!(validator.verdict("k", &refused).await, Verdict::Refused);
    assert_eq!(validator.verdict("k", &refused).await, Verdict::Refused);
    assert_eq!(refusing.calls.load(Ordering::SeqCst), 1);

    let failing = service(StatusCode::BAD_GATEWAY, Duration::ZERO).await;
    let down = config(&[&failing.url]);
    assert_eq!(validator.verdict("k2", &down).await, Verdict::Unavailable);
    assert_eq!(validator.verdict("k2", &down).await, Verdict::Unavailable);
    assert_eq!(failing.calls.load(Ordering::SeqCst), 2);
    let unreachable = config(&[&nowhere().await]);
    assert_eq!(
        validator.verdict("k3", &unreachable).await,
        Verdict::Unavailable
    );
}

#[tokio::test]
async fn one_acceptance_suffices_and_a_refusal_outweighs_silence() {
    let ok = service(StatusCode::OK, Duration::ZERO).await;
    let refusing = service(StatusCode::FORBIDDEN, Duration::ZERO).await;
    let failing = service(StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO).await;
    let dead = nowhere().await;
    let cases = [
        (vec![refusing.url.as_str(), ok.url.as_str()], Verdict::Valid),
        (vec![dead.as_str(), ok.url.as_str()], Verdict::Valid),
        (
            vec![failing.url.as_str(), refusing.url.as_str()],
            Verdict::Refused,
        ),
        (
            vec![dead.as_str(), failing.url.as_str()],
            Verdict::Unavailable,
        ),
    ];
    for (urls, expected) in cases {
        // A fresh validator each time: nothing remembered.
        let validator = Validator::new(Metrics::new());
        assert_eq!(
            validator.verdict("k", &config(&urls)).await,
            expected,
            "{urls:?}"
        );
    }
}

#[tokio::test]
async fn a_slow_url_is_unavailable_after_the_timeout() {
    let slow = service(StatusCode::OK, Duration::from_secs(5)).await;
    let mut config = Config::clone(&config(&[&slow.url]));
    config.auth.validation_timeout = Duration::from_millis(100);
    let validator = Validator::new(Metrics::new());
    let started = std::time::Instant::now();
    assert_eq!(
        validator.verdict("k", &Arc::new(config)).await,
        Verdict::Unavailable
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn logged_urls_carry_no_credentials_or_query() {
    let url: Uri = "https://user:pw@auth.example:8443/v1/check?token=x"
        .parse()
        .unwrap();
    assert_eq!(shown(&url), "https://auth.example:8443/v1/check");
    let url: Uri = "http://auth.example/check".parse().unwrap();
    assert_eq!(shown(&url), "http://auth.example/check");
}

#[test]
fn digests_depend_on_the_validator() {
    let a = Validator::new(Metrics::new());
    let b = Validator::new(Metrics::new());
    assert_eq!(a.inner.digest("k"), a.inner.digest("k"));
    assert_ne!(a.inner.digest("k"), a.inner.digest("k2"));
    assert_ne!(a.inner.digest("k"), b.inner.digest("k"));
}
