//! Reads the `usage` a worker reports as its response streams by (`prompt_tokens`,
//! `completion_tokens` and `prompt_tokens_details.cached_tokens`). It only looks at the bytes;
//! the client receives them untouched. Each frame costs one search for `"usage":`; from the
//! last one found, a short copy of the object is kept (across frames, so a frame boundary
//! anywhere in it, the key included, loses nothing) and its numbers are read.

use std::sync::LazyLock;

use memchr::memmem::{Finder, FinderRev};

/// The object's key. Inside a JSON string its quotes would be escaped, so text that merely
/// mentions it never matches.
static USAGE: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(br#""usage":"#));
const USAGE_LEN: usize = 8;
static PROMPT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""prompt_tokens":"#));
static COMPLETION: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(br#""completion_tokens":"#));
static CACHED: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""cached_tokens":"#));
/// Bytes kept from the key on: a usage object with its details is a few hundred.
const MAX_OBJECT: usize = 1024;

/// Token counts a worker reported, as far as seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt: Option<u64>,
    /// Tokens generated.
    pub completion: Option<u64>,
    /// Tokens of the prompt found in the worker's prefix cache.
    pub cached: Option<u64>,
}

/// Bytes of a frame's end kept for the next: one short of the key.
const TAIL: usize = USAGE_LEN - 1;

/// Scans a response body, frame by frame, for the usage the worker reports. Nothing is
/// allocated until a usage object is seen: the tail kept between frames lives inline.
#[derive(Debug, Default)]
pub struct UsageScan {
    /// The end of the previous frame, shorter than the key: where a split key begins. Its
    /// first `tail_len` bytes are the tail.
    tail: [u8; TAIL],
    tail_len: usize,
    /// The last usage object seen, from its key on (empty before one is seen).
    object: Vec<u8>,
    seen: Usage,
}

impl UsageScan {
    /// Look at the next frame of the body.
    pub fn observe(&mut self, chunk: &[u8]) {
        if let Some(at) = USAGE.rfind(chunk) {
            self.start(&chunk[at..]);
        } else if let Some(split) = self.split_key(chunk) {
            // Rare: a key split across frames. Its object starts in the tail.
            let mut joined = self.tail[split..self.tail_len].to_vec();
            joined.extend_from_slice(&chunk[..chunk.len().min(MAX_OBJECT)]);
            self.start(&joined);
        } else if !self.object.is_empty() && self.object.len() < MAX_OBJECT {
            let room = MAX_OBJECT - self.object.len();
            self.object
                .extend_from_slice(&chunk[..chunk.len().min(room)]);
            self.read();
        }
        self.keep_tail(chunk);
    }

    /// Where in the kept tail a key begins that this frame completes, if one does.
    fn split_key(&self, chunk: &[u8]) -> Option<usize> {
        if self.tail_len == 0 {
            return None;
        }
        let mut seam = [0u8; 2 * TAIL];
        let from_chunk = chunk.len().min(TAIL);
        seam[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        seam[self.tail_len..self.tail_len + from_chunk].copy_from_slice(&chunk[..from_chunk]);
        USAGE
            .rfind(&seam[..self.tail_len + from_chunk])
            .filter(|at| *at < self.tail_len)
    }

    /// A new usage object begins: it replaces the last one whole, however the frames fall.
    fn start(&mut self, from_key: &[u8]) {
        self.seen = Usage::default();
        self.object.clear();
        self.object
            .extend_from_slice(&from_key[..from_key.len().min(MAX_OBJECT)]);
        self.read();
    }

    fn keep_tail(&mut self, chunk: &[u8]) {
        if chunk.len() >= TAIL {
            self.tail.copy_from_slice(&chunk[chunk.len() - TAIL..]);
            self.tail_len = TAIL;
            return;
        }
        // A frame shorter than the tail: the tail's last bytes, then the whole frame.
        let kept = self.tail_len.min(TAIL - chunk.len());
        self.tail
            .copy_within(self.tail_len - kept..self.tail_len, 0);
        self.tail[kept..kept + chunk.len()].copy_from_slice(chunk);
        self.tail_len = kept + chunk.len();
    }

    fn read(&mut self) {
        let object = &self.object;
        if let Some(v) = number_after(object, &PROMPT) {
            self.seen.prompt = Some(v);
        }
        if let Some(v) = number_after(object, &COMPLETION) {
            self.seen.completion = Some(v);
        }
        if let Some(v) = number_after(object, &CACHED) {
            self.seen.cached = Some(v);
        }
    }

    /// What was reported so far.
    pub fn usage(&self) -> Usage {
        self.seen
    }
}

/// The number after `field`, once it is whole (followed by something that is not a digit).
fn number_after(bytes: &[u8], field: &Finder<'_>) -> Option<u64> {
    let at = field.find(bytes)?;
    let rest = &bytes[at + field.needle().len()..];
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let digits = rest[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let end = start + digits;
    // A number running into the end of the bytes may continue in the next frame.
    (digits > 0 && end < rest.len())
        .then(|| std::str::from_utf8(&rest[start..end]).ok()?.parse().ok())?
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"data: {"choices":[{"delta":{"content":"say \"prompt_tokens\": 5"}}]}

data: {"choices":[],"usage":{"prompt_tokens":1234,"completion_tokens":8,"total_tokens":1242,"prompt_tokens_details":{"cached_tokens":1024}}}

data: [DONE]

"#;

    const ALL: Usage = Usage {
        prompt: Some(1234),
        completion: Some(8),
        cached: Some(1024),
    };

    #[test]
    fn usage_is_found_whole_or_split_anywhere() {
        for split in 0..BODY.len() {
            let mut w = UsageScan::default();
            w.observe(&BODY.as_bytes()[..split]);
            w.observe(&BODY.as_bytes()[split..]);
            assert_eq!(w.usage(), ALL, "split at {split}");
        }
        let mut w = UsageScan::default();
        for b in BODY.as_bytes().chunks(3) {
            w.observe(b);
        }
        assert_eq!(w.usage(), ALL);
    }

    #[test]
    fn byte_by_byte_and_the_last_report_wins() {
        let mut w = UsageScan::default();
        for b in BODY.as_bytes().chunks(1) {
            w.observe(b);
        }
        assert_eq!(w.usage(), ALL);
        // Continuous usage stats: each event reports the running totals.
        let mut w = UsageScan::default();
        w.observe(br#"data: {"usage":{"prompt_tokens":9,"completion_tokens":1}}"#);
        w.observe(br#"data: {"usage":{"prompt_tokens":9,"completion_tokens":2}}"#);
        assert_eq!((w.usage().prompt, w.usage().completion), (Some(9), Some(2)));
    }

    #[test]
    fn escaped_text_is_not_usage() {
        let mut w = UsageScan::default();
        w.observe(br#"{"content": "\"usage\": {\"prompt_tokens\": 7, \"cached_tokens\": 7}"}"#);
        assert_eq!(w.usage(), Usage::default());
    }
}
