//! Peek: read the few fields routing needs from a body that stays untouched.
//!
//! JSON bodies are scanned once by a borrowing deserializer of one small struct; every other
//! field, known or not, is skipped and forwarded byte for byte. Multipart bodies (audio routes)
//! are scanned for their `model` form field.
//!
//! Session keys come from parsed fields, never from a text search of the body, and are read
//! leniently: a field of an unexpected type is no key, not an error.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

mod prompt;
#[cfg(test)]
mod properties;

use crate::error::ApiError;

/// The fields the router routes on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Peeked<'a> {
    /// The `model` field, when present and not null.
    pub model: Option<Cow<'a, str>>,
    /// The first session key among `session_params.session_id`, `user`, `session_id`,
    /// `user_id` (strings or integers).
    pub session: Option<Cow<'a, str>>,
    /// The canonical prompt (chat roles and texts, or the completion prompt), when asked for.
    pub prompt: Option<Cow<'a, str>>,
    /// `"stream": true`: the answer is a stream whose head comes first; otherwise the head
    /// comes with the whole answer.
    pub stream: bool,
}

/// The top-level fields peeked, filled by [`TopLevel`].
#[derive(Default)]
struct JsonFields<'a> {
    model: Option<Cow<'a, str>>,
    session_params: Option<Key<'a>>,
    user: Option<Key<'a>>,
    session_id: Option<Key<'a>>,
    user_id: Option<Key<'a>>,
    prompt: Option<Cow<'a, str>>,
    stream: bool,
}

impl<'a> JsonFields<'a> {
    fn session(&mut self) -> Option<Cow<'a, str>> {
        [
            self.session_params.take(),
            self.user.take(),
            self.session_id.take(),
            self.user_id.take(),
        ]
        .into_iter()
        .flatten()
        .find_map(|k| k.0.filter(|k| !k.is_empty()))
    }
}

/// Visits the body's top-level object once, reading the fields routing needs and skipping
/// the rest; the prompt is only assembled when a policy asked for it.
struct TopLevel<'a> {
    want_prompt: bool,
    _body: PhantomData<&'a ()>,
}

impl<'de: 'a, 'a> Visitor<'de> for TopLevel<'a> {
    type Value = JsonFields<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut f = JsonFields::default();
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match key.0.as_ref() {
                "model" => f.model = map.next_value::<Option<Text<'a>>>()?.map(|t| t.0),
                "session_params" => f.session_params = map.next_value::<SessionParams<'a>>()?.0,
                "user" => f.user = Some(map.next_value()?),
                "session_id" => f.session_id = Some(map.next_value()?),
                "user_id" => f.user_id = Some(map.next_value()?),
                // Leniently: a value that is not a boolean is the worker's to refuse.
                "stream" => {
                    f.stream = map.next_value::<serde_json::Value>()?.as_bool() == Some(true)
                }
                "messages" if self.want_prompt => f.prompt = map.next_value::<prompt::Chat>()?.0,
                "prompt" if self.want_prompt => {
                    f.prompt = map.next_value::<prompt::Completion<'a>>()?.0
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(f)
    }
}

/// The session key from the first of `headers` present, else from the body's fields.
pub fn session_key<'a>(
    headers: &'a HeaderMap,
    names: &[HeaderName],
    peeked: &'a Peeked<'_>,
) -> Option<&'a str> {
    session_header(headers, names)
        .map(|(_, key)| key)
        .or(peeked.session.as_deref())
}

/// The first of `names` that `headers` carry with a non-empty value, and that value.
pub fn session_header<'n, 'h>(
    headers: &'h HeaderMap,
    names: &'n [HeaderName],
) -> Option<(&'n HeaderName, &'h str)> {
    names
        .iter()
        .filter_map(|n| Some((n, headers.get(n)?.to_str().ok()?)))
        .find(|(_, v)| !v.is_empty())
}

/// A session key: a string or an integer; any other JSON value is no key.
struct Key<'a>(Option<Cow<'a, str>>);

/// `session_params`: an object whose `session_id` is a [`Key`]; anything else is no key.
struct SessionParams<'a>(Option<Key<'a>>);

struct KeyVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for KeyVisitor<'a> {
    type Value = Key<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Key(Some(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Key(Some(Cow::Owned(v.to_owned()))))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Key(Some(Cow::Owned(v.to_string()))))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Key(Some(Cow::Owned(v.to_string()))))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Key(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Key(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Key(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Key(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Key(None))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeyVisitor(PhantomData))
    }
}

struct ParamsVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ParamsVisitor<'a> {
    type Value = SessionParams<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(name) = map.next_key::<Text<'de>>()? {
            if name.0 == "session_id" && found.is_none() {
                found = Some(map.next_value::<Key<'a>>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(SessionParams(found))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        KeyVisitor(PhantomData)
            .visit_seq(seq)
            .map(|_| SessionParams(None))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(SessionParams(None))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(SessionParams(None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(SessionParams(None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(SessionParams(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(SessionParams(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(SessionParams(None))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for SessionParams<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ParamsVisitor(PhantomData))
    }
}

/// A string borrowed from the body unless it holds escapes (serde borrows a `Cow` only as a
/// direct field, not inside `Option`, hence the newtype).
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// Peek at a request body according to its content type; `want_prompt` also assembles the
/// canonical prompt for prefix-aware policies.
pub async fn peek<'a>(
    content_type: Option<&HeaderValue>,
    body: &'a Bytes,
    want_prompt: bool,
) -> Result<Peeked<'a>, ApiError> {
    let ct = content_type.and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        peek_multipart(ct, body).await
    } else {
        peek_json(body, want_prompt)
    }
}

/// Peek at a JSON object body.
pub fn peek_json(body: &[u8], want_prompt: bool) -> Result<Peeked<'_>, ApiError> {
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
    let mut de = serde_json::Deserializer::from_slice(body);
    let visitor = TopLevel {
        want_prompt,
        _body: PhantomData,
    };
    let mut fields = de
        .deserialize_map(visitor)
        .and_then(|f| de.end().map(|()| f))
        .map_err(|e| {
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
        model: fields.model.take(),
        session: fields.session(),
        prompt: fields.prompt.take(),
        stream: fields.stream,
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
                ..Peeked::default()
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
        let p = peek_json(body, false).unwrap();
        assert_eq!(p.model.as_deref(), Some("m"));
        assert!(matches!(p.model, Some(Cow::Borrowed(_))));
    }

    #[test]
    fn only_a_true_stream_is_a_stream() {
        for (body, stream) in [
            (&br#"{"stream":true}"#[..], true),
            (br#"{"stream":false}"#, false),
            (br#"{}"#, false),
            (br#"{"stream":"yes","model":"m"}"#, false),
            (br#"{"stream":{"a":[1]},"model":"m"}"#, false),
        ] {
            let p = peek_json(body, false).unwrap();
            assert_eq!(p.stream, stream, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn missing_or_null_model_is_none() {
        assert_eq!(peek_json(b"{}", false).unwrap().model, None);
        assert_eq!(peek_json(br#" {"model":null}"#, false).unwrap().model, None);
        assert_eq!(
            peek_json(br#"{"model":"a\"b"}"#, false)
                .unwrap()
                .model
                .as_deref(),
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
            let e = peek_json(body, false).unwrap_err();
            assert_eq!(e.status(), 400, "{:?}", String::from_utf8_lossy(body));
        }
        let e = peek_json(br#"{"model": 7}"#, false).unwrap_err();
        assert!(e.to_string().contains("model"), "{e}");
    }

    #[test]
    fn session_key_order_headers_then_parsed_fields() {
        let key = |body: &[u8], headers: &[(&'static str, &'static str)]| {
            let p = peek_json(body, false).unwrap();
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                h.insert(*k, HeaderValue::from_static(v));
            }
            let names = [
                HeaderName::from_static("x-session-id"),
                HeaderName::from_static("x-user-id"),
            ];
            session_key(&h, &names, &p).map(str::to_owned)
        };
        let all = br#"{"user_id": 4, "session_id": "s", "user": "u", "session_params": {"session_id": "p"}}"#;
        assert_eq!(key(all, &[]).as_deref(), Some("p"));
        assert_eq!(
            key(br#"{"user_id": 4, "session_id": "s", "user": "u"}"#, &[]).as_deref(),
            Some("u")
        );
        assert_eq!(
            key(br#"{"user_id": 4, "session_id": "s"}"#, &[]).as_deref(),
            Some("s")
        );
        assert_eq!(key(br#"{"user_id": 4}"#, &[]).as_deref(), Some("4"));
        assert_eq!(
            key(all, &[("x-user-id", "hu"), ("x-session-id", "hs")]).as_deref(),
            Some("hs")
        );
        assert_eq!(key(all, &[("x-user-id", "hu")]).as_deref(), Some("hu"));
        // A prompt that mentions user: or session_id is text, not a key.
        let prompt = br#"{"prompt": "user: alice\nsession_id: 7 \"user\": \"x\"", "messages": [{"role": "user", "content": "user: bob"}]}"#;
        assert_eq!(key(prompt, &[]), None);
    }

    #[test]
    fn odd_session_field_types_are_no_key_not_an_error() {
        let body = br#"{"model": "m", "user": {"id": 1}, "session_id": [1], "user_id": 1.5, "session_params": "x"}"#;
        let p = peek_json(body, false).unwrap();
        assert_eq!((p.model.as_deref(), p.session), (Some("m"), None));
        let body =
            br#"{"session_params": {"other": [1, {"a": 2}], "session_id": null}, "user": true}"#;
        assert_eq!(peek_json(body, false).unwrap().session, None);
        let body = br#"{"session_params": {"session_id": "z\u00e9"}}"#;
        assert_eq!(
            peek_json(body, false).unwrap().session.as_deref(),
            Some("zé")
        );
    }

    fn prompt(body: &str) -> Option<String> {
        peek_json(body.as_bytes(), true)
            .unwrap()
            .prompt
            .map(Cow::into_owned)
    }

    #[test]
    fn the_canonical_prompt_only_when_asked() {
        let chat = r#"{"messages": [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": " there"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "1"}]}], "model": "m"}"#;
        assert_eq!(
            prompt(chat).as_deref(),
            Some("<|system|>\nBe brief.\n<|user|>\nHi there\n<|assistant|>\n\n")
        );
        assert_eq!(peek_json(chat.as_bytes(), false).unwrap().prompt, None);
        assert_eq!(
            peek_json(chat.as_bytes(), true).unwrap().model.as_deref(),
            Some("m")
        );
    }

    #[test]
    fn completion_prompts_of_every_shape() {
        assert_eq!(
            prompt(r#"{"prompt": "Once upon"}"#).as_deref(),
            Some("Once upon")
        );
        assert_eq!(
            prompt(r#"{"prompt": ["first", "second"]}"#).as_deref(),
            Some("first")
        );
        assert_eq!(
            prompt(r#"{"prompt": [101, 7, 42]}"#).as_deref(),
            Some("101 7 42")
        );
        assert_eq!(
            prompt(r#"{"prompt": [[5, 6], [7]]}"#).as_deref(),
            Some("5 6")
        );
        assert_eq!(prompt(r#"{"prompt": {"odd": true}}"#), None);
        assert_eq!(prompt(r#"{"messages": "not a list"}"#), None);
        let borrowed = peek_json(br#"{"prompt": "plain"}"#, true).unwrap();
        assert!(matches!(borrowed.prompt, Some(Cow::Borrowed("plain"))));
    }

    #[tokio::test]
    async fn multipart_model_field_is_found() {
        let body = Bytes::from_static(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
Content-Type: audio/wav\r\n\r\nRIFF....\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n\
whisper\r\n--XyZ--\r\n",
        );
        let ct = HeaderValue::from_static("multipart/form-data; boundary=XyZ");
        let p = peek(Some(&ct), &body, false).await.unwrap();
        assert_eq!(p.model.as_deref(), Some("whisper"));
        let bad = HeaderValue::from_static("multipart/form-data");
        assert_eq!(
            peek(Some(&bad), &body, false).await.unwrap_err().status(),
            400
        );
    }
}
