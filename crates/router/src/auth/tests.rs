use std::path::PathBuf;

use axum::response::IntoResponse;
use http::{HeaderValue, StatusCode};

use super::*;
use crate::config::Secret;

fn headers(auth: Option<&'static str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(auth) = auth {
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static(auth));
    }
    headers
}

fn config(keys: &[&str], admin: Option<&str>) -> Arc<Config> {
    let mut config = Config::with_workers(Vec::<String>::new()).unwrap();
    config.auth.keys = keys.iter().map(|k| Secret::new(*k)).collect();
    config.admin_api_key = admin.map(Secret::new);
    Arc::new(config)
}

async fn status(config: &Arc<Config>, auth: Option<&'static str>) -> StatusCode {
    let checker = Auth::new(Metrics::new());
    match checker.check(config, &headers(auth)).await {
        Ok(()) => StatusCode::OK,
        Err(e) => e.status(),
    }
}

#[test]
fn secrets_compare_whole() {
    assert!(same(b"abc", b"abc"));
    assert!(!same(b"abc", b"abd"));
    assert!(!same(b"abc", b"abcd"));
    assert!(!same(b"", b"a"));
}

#[test]
fn the_bearer_key_is_read_in_any_case_of_the_scheme() {
    assert_eq!(bearer(&headers(Some("Bearer k1"))), Some("k1"));
    assert_eq!(bearer(&headers(Some("bearer  k1 "))), Some("k1"));
    assert_eq!(bearer(&headers(Some("BEARER k1"))), Some("k1"));
    assert_eq!(bearer(&headers(Some("Basic azE6"))), None);
    assert_eq!(bearer(&headers(Some("Bearer "))), None);
    assert_eq!(bearer(&headers(Some("k1"))), None);
    assert_eq!(bearer(&headers(None)), None);
}

#[tokio::test]
async fn without_keys_every_request_passes() {
    let open = config(&[], Some("admin"));
    assert!(!open.auth.is_required());
    assert_eq!(status(&open, None).await, StatusCode::OK);
    assert_eq!(status(&open, Some("Bearer anything")).await, StatusCode::OK);
}

#[tokio::test]
async fn static_keys_and_the_admin_key_pass_others_do_not() {
    let keyed = config(&["k1", "k2"], Some("admin"));
    assert_eq!(status(&keyed, Some("Bearer k1")).await, StatusCode::OK);
    assert_eq!(status(&keyed, Some("Bearer k2")).await, StatusCode::OK);
    assert_eq!(status(&keyed, Some("Bearer admin")).await, StatusCode::OK);
    for wrong in [None, Some("Bearer k3"), Some("Bearer k"), Some("Basic k1")] {
        assert_eq!(
            status(&keyed, wrong).await,
            StatusCode::UNAUTHORIZED,
            "{wrong:?}"
        );
    }
    // No admin key: nothing but the client keys.
    let no_admin = config(&["k1"], None);
    assert_eq!(
        status(&no_admin, Some("Bearer admin")).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_keys_file_listing_no_key_still_requires_one() {
    let mut empty = Config::with_workers(Vec::<String>::new()).unwrap();
    empty.auth.keys_file = Some(PathBuf::from("keys.txt"));
    let empty = Arc::new(empty);
    assert_eq!(status(&empty, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(&empty, Some("Bearer x")).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn refusals_never_echo_the_key() {
    let keyed = config(&["k1"], None);
    let checker = Auth::new(Metrics::new());
    let error = checker
        .check(&keyed, &headers(Some("Bearer sk-very-secret-value")))
        .await
        .unwrap_err();
    let body = String::from_utf8(error.to_json().to_vec()).unwrap();
    assert!(!body.contains("sk-very-secret-value"), "{body}");
    assert!(body.contains("AuthenticationError"), "{body}");
    let response = error.into_response();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
}
