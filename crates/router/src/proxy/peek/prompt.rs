//! The canonical prompt of a request, for prefix-aware routing: what the engine reads first,
//! in order. Chat: each message's role and text; completions: the prompt (the first of a
//! batch; token ids as decimal text). Requests that share a system prompt or a conversation
//! share a prefix of this text.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};

use super::Text;

/// The canonical text of a chat request's `messages`, or `None` when it is not an array.
pub struct Chat(pub Option<Cow<'static, str>>);

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Text<'a>>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
}

/// A message's text: a string, or the `text` of each part of an array.
struct Content<'a>(Vec<Cow<'a, str>>);

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
}

struct ChatVisitor;

impl<'de> Visitor<'de> for ChatVisitor {
    type Value = Chat;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of messages")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Chat, A::Error> {
        let mut out = String::new();
        while let Some(m) = seq.next_element::<Message<'de>>()? {
            let role = m.role.as_ref().map_or("", |r| r.0.as_ref());
            let _ = writeln!(out, "<|{role}|>");
            for piece in m.content.iter().flat_map(|c| c.0.iter()) {
                out.push_str(piece);
            }
            out.push('\n');
        }
        Ok(Chat(Some(Cow::Owned(out))))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Chat, A::Error> {
        IgnoredAny.visit_map(map).map(|_| Chat(None))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Chat, E> {
        Ok(Chat(None))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Chat, E> {
        Ok(Chat(None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Chat, E> {
        Ok(Chat(None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Chat, E> {
        Ok(Chat(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Chat, E> {
        Ok(Chat(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Chat, E> {
        Ok(Chat(None))
    }
}

impl<'de> Deserialize<'de> for Chat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ChatVisitor)
    }
}

struct ContentVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ContentVisitor<'a> {
    type Value = Content<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an array of content parts")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Content(vec![Cow::Borrowed(v)]))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Content(vec![Cow::Owned(v.to_owned())]))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut parts = Vec::new();
        while let Some(part) = seq.next_element::<Part<'a>>()? {
            parts.extend(part.text.map(|t| t.0));
        }
        Ok(Content(parts))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Content(Vec::new()))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ContentVisitor(PhantomData))
    }
}

/// A completion's `prompt`: a string, the first of an array of strings, or token ids.
pub struct Completion<'a>(pub Option<Cow<'a, str>>);

struct CompletionVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for CompletionVisitor<'a> {
    type Value = Completion<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a prompt")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Completion(Some(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Completion(Some(Cow::Owned(v.to_owned()))))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Completion(Some(Cow::Owned(v.to_string()))))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // The first element decides: a string or a token list is the prompt (the first of a
        // batch); a token id starts a list of ids.
        let Some(first) = seq.next_element::<Completion<'a>>()? else {
            return Ok(Completion(None));
        };
        let mut text = first.0;
        let ids = text
            .as_deref()
            .is_some_and(|t| t.bytes().all(|b| b.is_ascii_digit()));
        if ids {
            let mut joined = text.map(Cow::into_owned).unwrap_or_default();
            while let Some(id) = seq.next_element::<Completion<'a>>()? {
                joined.push(' ');
                joined.push_str(id.0.as_deref().unwrap_or_default());
            }
            text = Some(Cow::Owned(joined));
        } else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
        }
        Ok(Completion(text))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_map(map).map(|_| Completion(None))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Completion(Some(Cow::Owned(v.to_string()))))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Completion(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Completion(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Completion(None))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Completion<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CompletionVisitor(PhantomData))
    }
}
