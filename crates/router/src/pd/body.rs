//! Rewriting the top level of a JSON request body for one leg of a P/D plan. Fields are kept
//! in their order and every value the plan does not touch is copied byte for byte (numbers,
//! strings and nested objects are never re-encoded).

use std::fmt;

use bytes::Bytes;
use serde::Deserializer;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::ApiError;

/// The top-level fields of a JSON object, each value as its original text.
#[derive(Debug)]
pub(crate) struct Fields<'a>(Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>);

impl<'a> Fields<'a> {
    /// Read the top level of `body`; a body that is not a JSON object is a client error.
    pub(crate) fn parse(body: &'a [u8]) -> Result<Self, ApiError> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<(std::borrow::Cow<'de, str>, &'de RawValue)>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(entry) = map.next_entry()? {
                    fields.push(entry);
                }
                Ok(fields)
            }
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let fields = (&mut de)
            .deserialize_map(V)
            .and_then(|f| de.end().map(|()| f))
            .map_err(|e| {
                ApiError::bad_request(format!("the body is not a JSON object: {e}"), None)
            })?;
        Ok(Self(fields))
    }

    /// The original text of field `key`, when present.
    pub(crate) fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// A body with these fields, `set` replacing (or appending) values by key, and `remove`d
    /// keys left out. Values in `set` are JSON text.
    pub(crate) fn render(&self, set: &[(&str, &str)], remove: &[&str]) -> Bytes {
        let mut out = Vec::with_capacity(
            self.0
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>()
                + set
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 4)
                    .sum::<usize>()
                + 2,
        );
        out.push(b'{');
        let mut first = true;
        let mut field = |out: &mut Vec<u8>, key: &str, value: &str| {
            if !first {
                out.push(b',');
            }
            first = false;
            // Keys are re-escaped: a key arrives unescaped from the parser.
            out.extend_from_slice(
                serde_json::to_string(key)
                    .unwrap_or_else(|_| format!("\"{key}\""))
                    .as_bytes(),
            );
            out.push(b':');
            out.extend_from_slice(value.as_bytes());
        };
        for (key, value) in &self.0 {
            if remove.contains(&key.as_ref()) {
                continue;
            }
            match set.iter().find(|(k, _)| k == key) {
                Some((_, new)) => field(&mut out, key, new),
                None => field(&mut out, key, value.get()),
            }
        }
        for (key, value) in set {
            if !self.0.iter().any(|(k, _)| k == key) {
                field(&mut out, key, value);
            }
        }
        out.push(b'}');
        Bytes::from(out)
    }
}

/// The prefill leg's body: the client's request cut to one output token, not streamed,
/// carrying `kv_transfer_params` (JSON text) when the connector uses them.
pub(crate) fn prefill(fields: &Fields<'_>, kv_transfer_params: Option<&str>) -> Bytes {
    let mut set: Vec<(&str, &str)> = vec![("max_tokens", "1"), ("stream", "false")];
    if fields.get("max_completion_tokens").is_some() {
        set.push(("max_completion_tokens", "1"));
    }
    let min_tokens = fields
        .get("min_tokens")
        .and_then(|v| v.get().parse::<u64>().ok());
    if min_tokens.is_some_and(|n| n > 1) {
        set.push(("min_tokens", "1"));
    }
    if let Some(params) = kv_transfer_params {
        set.push(("kv_transfer_params", params));
    }
    fields.render(&set, &["stream_options"])
}

/// The decode leg's body: the client's request, with `kv_transfer_params` (JSON text) set.
pub(crate) fn decode(fields: &Fields<'_>, kv_transfer_params: &str) -> Bytes {
    fields.render(&[("kv_transfer_params", kv_transfer_params)], &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(b: &Bytes) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn prefill_cuts_to_one_token_and_keeps_everything_else_verbatim() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"h\u00e9"}],"stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":50,"min_tokens":7,"temperature":0.70,"x":{"deep":[1,2.50]}}"#;
        let fields = Fields::parse(body).unwrap();
        let out = prefill(&fields, Some(r#"{"do_remote_decode":true}"#));
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(
            text,
            r#"{"model":"m","messages":[{"role":"user","content":"h\u00e9"}],"stream":false,"max_completion_tokens":1,"min_tokens":1,"temperature":0.70,"x":{"deep":[1,2.50]},"max_tokens":1,"kv_transfer_params":{"do_remote_decode":true}}"#
        );
        assert_eq!(json(&out)["kv_transfer_params"]["do_remote_decode"], true);
    }

    #[test]
    fn decode_replaces_a_client_given_kv_transfer_params() {
        let body = br#"{"kv_transfer_params":{"evil":1},"prompt":"p","max_tokens":9}"#;
        let out = decode(
            &Fields::parse(body).unwrap(),
            r#"{"remote_block_ids":[1,2]}"#,
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"kv_transfer_params":{"remote_block_ids":[1,2]},"prompt":"p","max_tokens":9}"#
        );
    }

    #[test]
    fn escaped_keys_stay_escaped_and_non_objects_are_refused() {
        let body = br#"{"a\"b":1,"prompt":"x"}"#;
        let out = decode(&Fields::parse(body).unwrap(), "null");
        assert_eq!(json(&out)["a\"b"], 1);
        for bad in [&b"[1]"[..], b"{\"a\":1} trailing", b"", b"{\"a\":"] {
            assert!(Fields::parse(bad).is_err(), "{bad:?}");
        }
        let min_one = Fields::parse(br#"{"min_tokens":1,"max_tokens":5}"#).unwrap();
        assert_eq!(
            std::str::from_utf8(&prefill(&min_one, None)).unwrap(),
            r#"{"min_tokens":1,"max_tokens":1,"stream":false}"#
        );
    }
}
