//! vLLM's `--api-key`: every route under `/v1` needs `Authorization: Bearer KEY` (the scheme
//! in any case) and answers 401 `{"error": "Unauthorized"}` without it; `OPTIONS` and every
//! other route (`/health`, `/metrics`, `/tokenize`, `/sim/...`) stay open.

use axum::response::Response;
use http::{HeaderMap, Method, StatusCode, header};

use crate::openai::json_response;

/// Whether a request may reach its route when the server runs with `api_key`.
pub(crate) fn allowed(
    api_key: Option<&str>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> bool {
    let Some(key) = api_key else {
        return true;
    };
    if method == Method::OPTIONS || !path.starts_with("/v1") {
        return true;
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, given)| scheme.eq_ignore_ascii_case("bearer") && given == key)
}

/// vLLM's answer to a request without the key.
pub(crate) fn unauthorized() -> Response {
    let mut response = json_response(br#"{"error":"Unauthorized"}"#.to_vec());
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn with(auth: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static(auth));
        headers
    }

    #[test]
    fn only_v1_routes_need_the_key() {
        let key = Some("k1");
        let get = Method::GET;
        let none = HeaderMap::new();
        assert!(allowed(None, &get, "/v1/models", &none));
        assert!(!allowed(key, &get, "/v1/models", &none));
        assert!(!allowed(
            key,
            &Method::POST,
            "/v1/chat/completions",
            &with("Bearer k2")
        ));
        assert!(!allowed(key, &get, "/v1/models", &with("Basic k1")));
        assert!(allowed(key, &get, "/v1/models", &with("Bearer k1")));
        assert!(allowed(key, &get, "/v1/models", &with("bearer k1")));
        assert!(allowed(key, &Method::OPTIONS, "/v1/models", &none));
        for open in ["/health", "/metrics", "/tokenize", "/sim/records"] {
            assert!(allowed(key, &get, open, &none), "{open}");
        }
    }
}
