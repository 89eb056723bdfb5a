//! Model aliases (`--model-alias alias=canonical`, SGLang's gateway's flag): a request naming
//! `alias` is routed to the workers of `canonical`, and its body's `model` is rewritten to
//! `canonical` (the workers know no other name). Only that one value changes: every other
//! byte of the body is kept (but for an alias written with JSON escapes, whose body is
//! re-serialised).

use bytes::{Bytes, BytesMut};

/// `body` (a JSON object whose top-level `model` is `named`, as peeked from `body`) with that
/// value replaced by `canonical`.
pub(crate) fn rename_model(body: &Bytes, named: &str, canonical: &str) -> Bytes {
    splice(body, named, canonical).unwrap_or_else(|| reserialise(body, canonical))
}

/// The body re-written whole with `model` set: for a name `splice` cannot find.
fn reserialise(body: &Bytes, canonical: &str) -> Bytes {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut value) if value.is_object() => {
            value["model"] = canonical.into();
            serde_json::to_vec(&value).map_or_else(|_| body.clone(), Bytes::from)
        }
        _ => body.clone(),
    }
}

/// The splice of `canonical` in place of `named`, when `named` is a slice of `body` between
/// its quotes.
fn splice(body: &Bytes, named: &str, canonical: &str) -> Option<Bytes> {
    let base = body.as_ptr() as usize;
    let start = (named.as_ptr() as usize).checked_sub(base)?;
    let end = start.checked_add(named.len())?;
    // A borrowed string lies between its quotes.
    if end >= body.len() || start == 0 || body[start - 1] != b'"' || body[end] != b'"' {
        return None;
    }
    let quoted = serde_json::to_string(canonical).ok()?;
    let mut out = BytesMut::with_capacity(body.len() + quoted.len());
    out.extend_from_slice(&body[..start - 1]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&body[end + 1..]);
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_of(body: &Bytes) -> &str {
        #[derive(serde::Deserialize)]
        struct M<'a> {
            #[serde(borrow)]
            model: &'a str,
        }
        serde_json::from_slice::<M<'_>>(body).unwrap().model
    }

    #[test]
    fn only_the_model_value_changes() {
        let body = Bytes::from_static(
            br#"{"temperature": 0.70, "model":"gpt-4o", "messages":[{"role":"user","content":"model gpt-4o"}]}"#,
        );
        let renamed = rename_model(&body, model_of(&body), "meta/llama-3.1");
        assert_eq!(
            &renamed[..],
            br#"{"temperature": 0.70, "model":"meta/llama-3.1", "messages":[{"role":"user","content":"model gpt-4o"}]}"#
        );
    }

    #[test]
    fn a_name_written_with_escapes_is_renamed_all_the_same() {
        let body = Bytes::from_static(br#"{"model":"gpt\u002d4o","n":1}"#);
        let renamed = rename_model(&body, "gpt-4o", "x");
        let v: serde_json::Value = serde_json::from_slice(&renamed).unwrap();
        assert_eq!((v["model"].as_str(), v["n"].as_u64()), (Some("x"), Some(1)));
        let body = Bytes::from_static(br#"{"model":"gpt-4o"}"#);
        let canonical = "a \"quoted\" name";
        let renamed = rename_model(&body, model_of(&body), canonical);
        let v: serde_json::Value = serde_json::from_slice(&renamed).unwrap();
        assert_eq!(v["model"], canonical, "escaped as JSON needs");
    }
}
