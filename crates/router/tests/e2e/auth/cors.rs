//! CORS: no headers at all by default; with allowed origins, those origins get them and
//! preflights are answered (before any key is asked for).

use bytes::Bytes;
use http::Method;

use crate::support::*;

const APP: &str = "https://app.example";

async fn chat_from(base: &str, origin: &str, auth: &str) -> Reply {
    send(
        Method::POST,
        &format!("{base}/v1/chat/completions"),
        &[
            ("content-type", "application/json"),
            ("origin", origin),
            ("authorization", auth),
        ],
        chat(MODEL, false).to_string(),
    )
    .await
}

async fn preflight(base: &str, origin: &str) -> Reply {
    send(
        Method::OPTIONS,
        &format!("{base}/v1/chat/completions"),
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization,content-type,x-session-id,x-stainless-os,openai-organization",
            ),
        ],
        Bytes::new(),
    )
    .await
}

#[tokio::test]
async fn by_default_no_cors_headers_and_preflights_are_not_answered() {
    let workers = fast_sims(1).await;
    let router = router(&workers).await;
    let base = router.url();
    let reply = chat_from(&base, APP, "Bearer x").await;
    assert_eq!(reply.status, 200);
    assert!(
        !reply
            .headers
            .keys()
            .any(|k| k.as_str().starts_with("access-control-")),
        "{:?}",
        reply.headers
    );
    let pre = preflight(&base, APP).await;
    pre.assert_error(405);
    assert!(pre.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn listed_origins_get_cors_headers_and_others_do_not() {
    let workers = fast_sims(1).await;
    let router = router_with(&workers, |a| {
        a.cors_allowed_origins = vec![APP.into(), "http://localhost:3000".into()];
        a.api_keys = vec!["k1".into()];
    })
    .await;
    let base = router.url();

    let reply = chat_from(&base, APP, "Bearer k1").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), APP);
    let exposed = reply.header("access-control-expose-headers").to_owned();
    assert!(
        exposed.contains("x-request-id") && exposed.contains("x-vllm-router-worker"),
        "{exposed}"
    );
    // A refusal carries them too, so the page can read it.
    let refused = chat_from(&base, APP, "Bearer wrong").await;
    refused.assert_error(401);
    assert_eq!(refused.header("access-control-allow-origin"), APP);

    let other = chat_from(&base, "https://evil.example", "Bearer k1").await;
    assert!(other.headers.get("access-control-allow-origin").is_none());

    // The preflight is answered without a key.
    let pre = preflight(&base, APP).await;
    assert_eq!(pre.status, 200, "{:?}", pre.body);
    assert_eq!(pre.header("access-control-allow-origin"), APP);
    let methods = pre.header("access-control-allow-methods").to_owned();
    for method in ["GET", "POST", "DELETE", "OPTIONS"] {
        assert!(methods.contains(method), "{methods}");
    }
    let headers = pre.header("access-control-allow-headers").to_owned();
    // The headers the page asked for, the OpenAI SDKs' own among them.
    for header in [
        "authorization",
        "content-type",
        "x-session-id",
        "x-stainless-os",
        "openai-organization",
    ] {
        assert!(headers.contains(header), "{headers}");
    }
    let pre = preflight(&base, "https://evil.example").await;
    assert!(pre.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_star_allows_any_origin() {
    let workers = fast_sims(1).await;
    let router = router_with(&workers, |a| a.cors_allowed_origins = vec!["*".into()]).await;
    let reply = chat_from(&router.url(), "https://anywhere.example", "Bearer x").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), "*");
}
