//! Properties of the peek: no input panics it, and what it reads is what the body says, in
//! any field order, among any other fields, JSON and multipart alike.

use bytes::Bytes;
use http::HeaderValue;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

const CASES: u32 = 10_000;

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A message of a chat request: a role, and content as a string or as text parts.
fn message() -> impl Strategy<Value = Value> {
    let content = prop_oneof![
        ".{0,40}".prop_map(Value::String),
        prop::collection::vec(".{0,20}", 0..3).prop_map(|parts| json!(
            parts
                .iter()
                .map(|t| json!({"type": "text", "text": t}))
                .collect::<Vec<_>>()
        )),
    ];
    (
        prop_oneof![
            Just("system"),
            Just("user"),
            Just("assistant"),
            Just("tool")
        ],
        content,
    )
        .prop_map(|(role, content)| json!({"role": role, "content": content}))
}

/// Field names the peek reads, to keep out of the random extra fields.
const READ: [&str; 8] = [
    "model",
    "stream",
    "user",
    "session_id",
    "user_id",
    "session_params",
    "messages",
    "prompt",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn no_body_panics_the_json_peek(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = peek_json(&body, true);
        let _ = peek_json(&body, false);
    }

    #[test]
    fn no_json_value_panics_the_peek(value in any_json()) {
        let body = serde_json::to_vec(&value).unwrap_or_default();
        let _ = peek_json(&body, true);
    }

    #[test]
    fn the_peek_reads_what_the_body_says_among_any_other_fields(
        model in ".{0,24}",
        stream in any::<bool>(),
        user in prop::option::of("[a-z0-9-]{1,12}"),
        extra in prop::collection::btree_map("[a-z_]{1,10}", any_json(), 0..6),
        model_first in any::<bool>(),
    ) {
        let mut object = Map::new();
        if model_first {
            object.insert("model".into(), json!(model));
        }
        for (key, value) in extra {
            if !READ.contains(&key.as_str()) {
                object.insert(key, value);
            }
        }
        object.insert("stream".into(), json!(stream));
        if let Some(user) = &user {
            object.insert("user".into(), json!(user));
        }
        if !model_first {
            object.insert("model".into(), json!(model));
        }
        let body = serde_json::to_vec(&Value::Object(object)).unwrap_or_default();
        let peeked = peek_json(&body, false).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(peeked.model.as_deref(), Some(model.as_str()));
        prop_assert_eq!(peeked.stream, stream);
        prop_assert_eq!(peeked.session.as_deref(), user.as_deref());
    }

    #[test]
    fn a_conversation_prompt_extends_the_prompt_of_its_beginning(
        messages in prop::collection::vec(message(), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let prompt = |messages: &[Value]| {
            let body = serde_json::to_vec(&json!({"model": "m", "messages": messages})).unwrap_or_default();
            peek_json(&body, true).map(|p| p.prompt.map(Cow::into_owned))
        };
        let k = cut.index(messages.len() + 1);
        let whole = prompt(&messages).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let start = prompt(&messages[..k]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (whole, start) = (whole.unwrap_or_default(), start.unwrap_or_default());
        prop_assert!(whole.starts_with(&start), "{start:?} / {whole:?}");
    }
}

/// A multipart form with `fields` before a `model` field.
fn form(boundary: &str, fields: &[(String, String)], model: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .chain([("model", model)])
    {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn the_multipart_peek_reads_the_model_field_and_no_body_panics_it(
        fields in prop::collection::vec(("[a-z]{1,8}", "[ -~]{0,30}"), 0..4),
        model in "[ -~]{0,24}",
        noise in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let boundary = "b0undary-x";
        let ct = HeaderValue::from_static("multipart/form-data; boundary=b0undary-x");
        let fields: Vec<_> = fields.into_iter().filter(|(n, _)| n != "model").collect();
        let body = Bytes::from(form(boundary, &fields, &model));
        let peeked = rt.block_on(peek(Some(&ct), &body, false)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(peeked.model.as_deref(), Some(model.trim_end_matches(['\r', '\n'])));
        let noise = Bytes::from(noise);
        let _ = rt.block_on(peek(Some(&ct), &noise, true));
    }
}
