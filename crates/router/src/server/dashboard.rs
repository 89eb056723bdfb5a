//! `GET /dashboard`: one self-contained page that polls `GET /fleet` once a second and draws
//! the fleet in place. The page holds no fleet data, so it is served without a key; `/fleet`
//! stays behind the client keys, and the page asks for one when that answers 401.

use std::sync::LazyLock;

use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use sha2::{Digest, Sha256};

/// The page: markup, one inline `<style>` and one inline `<script>`, nothing fetched but `/fleet`.
pub const PAGE: &str = include_str!("dashboard.html");

/// The page's `Content-Security-Policy`: nothing loads but the page's own style and script
/// (allowed by their SHA-256, so no other inline code runs) and fetches to the router itself.
static POLICY: LazyLock<HeaderValue> = LazyLock::new(|| {
    let policy = format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
         img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        source_hash(inline(PAGE, "script")),
        source_hash(inline(PAGE, "style")),
    );
    HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
});

/// `GET /dashboard`: the page, never cached, under its strict policy.
pub async fn page() -> Response {
    (
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (CONTENT_SECURITY_POLICY, POLICY.clone()),
            (
                http::header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                http::header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// The text between `<tag>` and `</tag>` in `page` (empty when there is none).
fn inline<'a>(page: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    page.split_once(&open)
        .and_then(|(_, rest)| rest.split_once(&close))
        .map_or("", |(body, _)| body)
}

/// A CSP hash source, `'sha256-BASE64'`, for an inline element's text.
fn source_hash(text: &str) -> String {
    format!("'sha256-{}'", base64(&Sha256::digest(text.as_bytes())))
}

/// Standard base64, padded.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn the_policy_names_the_hash_of_the_page_script_and_style() {
        let script = inline(PAGE, "script");
        let style = inline(PAGE, "style");
        assert!(script.contains("fetch("), "no script found in the page");
        assert!(style.contains("font"), "no style found in the page");
        let policy = POLICY.to_str().unwrap_or_default();
        assert!(policy.contains(&source_hash(script)), "{policy}");
        assert!(policy.contains(&source_hash(style)), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
    }
}
