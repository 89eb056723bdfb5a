//! `GET /dashboard`: a self-contained page under a strict policy, open without a key while the
//! fleet it reads stays behind the client keys. (Its behaviour in a browser is tested in
//! headless Chromium, `tests/openai/test_dashboard.py`.)

use crate::auth::get_as;
use crate::support::*;

/// The directives of a `Content-Security-Policy` value, by name.
fn directives(policy: &str) -> Vec<(String, Vec<String>)> {
    policy
        .split(';')
        .filter_map(|d| {
            let mut words = d.split_whitespace().map(str::to_owned);
            Some((words.next()?, words.collect()))
        })
        .collect()
}

fn directive<'a>(all: &'a [(String, Vec<String>)], name: &str) -> &'a [String] {
    all.iter()
        .find(|(n, _)| n == name)
        .map_or(&[], |(_, v)| v.as_slice())
}

#[tokio::test]
async fn the_page_is_served_fresh_under_a_policy_that_loads_nothing_else() {
    let workers = fast_sims(1).await;
    let router = router(&workers).await;
    let reply = get(&format!("{}/dashboard", router.url())).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(reply.header("cache-control"), "no-store");
    assert_eq!(reply.header("x-content-type-options"), "nosniff");
    assert_eq!(reply.header("referrer-policy"), "no-referrer");

    let policy = directives(reply.header("content-security-policy"));
    assert_eq!(directive(&policy, "default-src"), ["'none'"], "{policy:?}");
    assert_eq!(directive(&policy, "connect-src"), ["'self'"], "{policy:?}");
    for name in ["base-uri", "form-action", "frame-ancestors"] {
        assert_eq!(directive(&policy, name), ["'none'"], "{name}: {policy:?}");
    }
    // Inline code runs only by its hash: one script and one style, nothing unsafe.
    for name in ["script-src", "style-src"] {
        let sources = directive(&policy, name);
        assert_eq!(sources.len(), 1, "{name}: {policy:?}");
        assert!(
            sources[0].starts_with("'sha256-") && sources[0].ends_with("='"),
            "{name}: {policy:?}"
        );
    }

    let page = String::from_utf8(reply.body.to_vec()).unwrap();
    assert!(page.starts_with("<!doctype html>"), "{page:.80}");
    let lower = page.to_ascii_lowercase();
    for external in [
        "src=", "@import", "url(", "<link", "<iframe", "<object", "<embed",
    ] {
        assert!(!lower.contains(external), "the page holds {external:?}");
    }
    // No address but the SVG namespace (an identifier, never fetched).
    let mut addresses = lower.match_indices("://").map(|(i, _)| &lower[..i]);
    assert!(
        addresses.all(|before| before.ends_with("\"http")
            && lower[before.len()..].starts_with("://www.w3.org/2000/svg\"")),
        "the page names an address"
    );
    assert!(
        lower.matches("href=").count() == 0,
        "the page links elsewhere"
    );
    assert_eq!(lower.matches("<script>").count(), 1);
    assert!(
        page.contains("fetch(\"fleet?history="),
        "the page reads /fleet"
    );
}

#[tokio::test]
async fn behind_api_keys_the_page_loads_without_a_key_but_the_fleet_does_not() {
    let workers = fast_sims(1).await;
    let router = router_with(&workers, |a| a.api_keys = vec!["k1".into()]).await;
    let base = router.url();
    let page = get(&format!("{base}/dashboard")).await;
    assert_eq!(page.status, 200);
    assert!(!String::from_utf8_lossy(&page.body).contains(&workers[0].url()));

    let refused = get(&format!("{base}/fleet")).await;
    refused.assert_error(401);
    let fleet = get_as(&format!("{base}/fleet"), Some("Bearer k1")).await;
    assert_eq!(fleet.status, 200);
    assert_eq!(fleet.json()["workers"][0]["url"], workers[0].url().as_str());
}
