//! A cheap, deterministic stand-in for a real tokenizer.
//!
//! Text splits at whitespace and around ASCII punctuation: each run of word bytes (ASCII letters,
//! digits, `_`, and any non-ASCII byte) is one token, each punctuation byte is its own token.
//! A token's id is the 32-bit FNV-1a hash of its bytes, so equal text always gives equal ids and
//! a shared text prefix gives a shared token prefix, which is all the prefix cache needs.

const FNV32_OFFSET: u32 = 0x811c_9dc5;
const FNV32_PRIME: u32 = 0x0100_0193;

/// Words the simulator "generates"; each is a single token under [`tokenize_into`].
const WORDS: [&str; 32] = [
    "the", "model", "router", "token", "cache", "prefix", "block", "batch", "decode", "prefill",
    "stream", "worker", "engine", "queue", "latency", "request", "answer", "simple", "quick",
    "steady", "signal", "window", "vector", "kernel", "memory", "policy", "health", "metric",
    "update", "result", "sample", "output",
];

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(FNV32_OFFSET, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(FNV32_PRIME)
    })
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Appends the token ids of `text` to `out`.
pub(crate) fn tokenize_into(text: &str, out: &mut Vec<u32>) {
    let bytes = text.as_bytes();
    let mut start: Option<usize> = None;
    for (i, &b) in bytes.iter().enumerate() {
        if is_word_byte(b) {
            start.get_or_insert(i);
            continue;
        }
        if let Some(s) = start.take() {
            out.push(fnv1a(&bytes[s..i]));
        }
        if !b.is_ascii_whitespace() {
            out.push(fnv1a(&bytes[i..=i]));
        }
    }
    if let Some(s) = start {
        out.push(fnv1a(&bytes[s..]));
    }
}

/// Token ids of `text`.
pub fn tokenize(text: &str) -> Vec<u32> {
    let mut out = Vec::with_capacity(text.len() / 4 + 1);
    tokenize_into(text, &mut out);
    out
}

/// Appends the chat-template marker `<|role|>` without building the string.
pub(crate) fn push_role_marker(role: &str, out: &mut Vec<u32>) {
    let lt = fnv1a(b"<");
    let bar = fnv1a(b"|");
    out.extend([lt, bar]);
    tokenize_into(role, out);
    out.extend([bar, fnv1a(b">")]);
}

/// The fake word generated at output position `index` for a prompt whose tokens hash to `seed`.
pub(crate) fn output_word(seed: u32, index: u32) -> &'static str {
    let mixed = seed ^ index.wrapping_mul(0x9e37_79b9);
    WORDS[(mixed as usize) % WORDS.len()]
}

/// A seed summarising a prompt, so different prompts get different (but stable) answers.
pub(crate) fn prompt_seed(tokens: &[u32]) -> u32 {
    tokens
        .iter()
        .take(64)
        .fold(FNV32_OFFSET, |h, &t| (h ^ t).wrapping_mul(FNV32_PRIME))
}

/// Readable text for token ids: hashes cannot be reversed, so each id maps to a stable fake word.
pub fn detokenize(tokens: &[u32]) -> String {
    let mut text = String::with_capacity(tokens.len() * 7);
    for (i, &t) in tokens.iter().enumerate() {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(WORDS[(t as usize) % WORDS.len()]);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_whitespace_and_punctuation() {
        let ids = tokenize("Hello, world!  foo_bar\n42");
        assert_eq!(ids.len(), 6);
        assert_eq!(ids[0], fnv1a(b"Hello"));
        assert_eq!(ids[1], fnv1a(b","));
        assert_eq!(ids[4], fnv1a(b"foo_bar"));
        assert_eq!(ids[5], fnv1a(b"42"));
    }

    #[test]
    fn deterministic_and_prefix_stable() {
        let a = tokenize("the quick brown fox jumps");
        assert_eq!(a, tokenize("the quick brown fox jumps"));
        let b = tokenize("the quick brown fox sleeps");
        assert_eq!(a[..4], b[..4]);
        assert_ne!(a[4], b[4]);
        assert!(tokenize("   ").is_empty());
    }

    #[test]
    fn role_marker_matches_its_text() {
        let mut ids = Vec::new();
        push_role_marker("user", &mut ids);
        assert_eq!(ids, tokenize("<|user|>"));
    }

    #[test]
    fn output_words_are_single_tokens() {
        for i in 0..64 {
            let w = output_word(7, i);
            assert_eq!(tokenize(w).len(), 1, "{w}");
        }
        assert_eq!(detokenize(&[0, 1]), "the model");
    }
}
