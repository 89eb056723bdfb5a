//! Peek: read the few fields routing needs from a body that stays untouched.
//!
//! JSON bodies are scanned by a borrowing deserializer of one small struct; every other field,
//! known or not, is skipped and forwarded byte for byte. Multipart bodies (audio routes) are
//! scanned for their `model` form field.

use std::borrow::Cow;
use std::convert::Infallible;

use bytes::Bytes;
use http::HeaderValue;
use serde::Deserialize;

use crate::error::ApiError;

/// The fields the router routes on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Peeked<'a> {
    /// The `model` field, when present and not null.
    pub model: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct JsonFields<'a> {
    #[serde(borrow, default)]
    model: Option<Text<'a>>,
}

/// A string borrowed from the body unless it holds escapes (serde borrows a `Cow` only as a
/// direct field, not inside `Option`, hence the newtype).
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// Peek at a request body according to its content type.
pub async fn peek<'a>(
    content_type: Option<&HeaderValue>,
    body: &'a Bytes,
) -> Result<Peeked<'a>, ApiError> {
    let ct = content_type.and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        peek_multipart(ct, body).await
    } else {
        peek_json(body)
    }
}

/// Peek at a JSON object body.
pub fn peek_json(body: &[u8]) -> Result<Peeked<'_>, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => {
            return Err(ApiError::bad_request(
                "the request body is empty; expected a JSON object",
                None,
            ));
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
                None,
            ));
        }
    }
    let fields: JsonFields<'_> = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::bad_request(
                format!("invalid field type: {e}; `model` must be a string"),
                Some("model"),
            )
        } else {
            ApiError::bad_request(format!("invalid JSON in request body: {e}"), None)
        }
    })?;
    Ok(Peeked {
        model: fields.model.map(|t| t.0),
    })
}

async fn peek_multipart<'a>(content_type: &str, body: &'a Bytes) -> Result<Peeked<'a>, ApiError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| ApiError::bad_request(format!("invalid multipart content type: {e}"), None))?;
    let chunk = body.clone();
    let stream = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(chunk) });
    let mut form = multer::Multipart::new(stream, boundary);
    let bad =
        |e: multer::Error| ApiError::bad_request(format!("invalid multipart body: {e}"), None);
    while let Some(field) = form.next_field().await.map_err(bad)? {
        if field.name() == Some("model") {
            let model = field.text().await.map_err(bad)?;
            return Ok(Peeked {
                model: Some(Cow::Owned(model)),
            });
        }
    }
    Ok(Peeked::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_borrowed_and_everything_else_ignored() {
        let body = br#"{"messages":[{"role":"alien","content":"x"}],"tools":[{"x":1}],"model":"m","weird":{"a":[1,2]}}"#;
        let p = peek_json(body).unwrap();
        assert_eq!(p.model.as_deref(), Some("m"));
        assert!(matches!(p.model, Some(Cow::Borrowed(_))));
    }

    #[test]
    fn missing_or_null_model_is_none() {
        assert_eq!(peek_json(b"{}").unwrap().model, None);
        assert_eq!(peek_json(br#" {"model":null}"#).unwrap().model, None);
        assert_eq!(
            peek_json(br#"{"model":"a\"b"}"#).unwrap().model.as_deref(),
            Some("a\"b")
        );
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        for body in [
            &b""[..],
            b"  ",
            b"[\"m\"]",
            b"{\"model\":",
            b"{\"model\":\"m\"} x",
            b"not json",
        ] {
            let e = peek_json(body).unwrap_err();
            assert_eq!(e.status(), 400, "{:?}", String::from_utf8_lossy(body));
        }
        let e = peek_json(br#"{"model": 7}"#).unwrap_err();
        assert!(e.to_string().contains("model"), "{e}");
    }

    #[tokio::test]
    async fn multipart_model_field_is_found() {
        let body = Bytes::from_static(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
Content-Type: audio/wav\r\n\r\nRIFF....\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n\
whisper\r\n--XyZ--\r\n",
        );
        let ct = HeaderValue::from_static("multipart/form-data; boundary=XyZ");
        let p = peek(Some(&ct), &body).await.unwrap();
        assert_eq!(p.model.as_deref(), Some("whisper"));
        let bad = HeaderValue::from_static("multipart/form-data");
        assert_eq!(peek(Some(&bad), &body).await.unwrap_err().status(), 400);
    }
}
