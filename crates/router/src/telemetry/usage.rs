//! Reads the `usage` a worker reports as its response streams by (`prompt_tokens`,
//! `completion_tokens` and `prompt_tokens_details.cached_tokens`). It only looks at the bytes;
//! the client receives them untouched. Values split across frames are caught by re-reading a
//! short seam of the previous frame's tail with the next head.

use memchr::memmem;

const PROMPT: &[u8] = br#""prompt_tokens":"#;
const COMPLETION: &[u8] = br#""completion_tokens":"#;
const CACHED: &[u8] = br#""cached_tokens":"#;
/// Longer than a needle plus any number: enough to catch whatever a frame boundary split.
const SEAM: usize = 48;

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

/// Scans a response body, frame by frame, for the usage the worker reports.
#[derive(Debug, Default)]
pub struct UsageScan {
    tail: Vec<u8>,
    seen: Usage,
}

impl UsageScan {
    /// Look at the next frame of the body.
    pub fn observe(&mut self, chunk: &[u8]) {
        let head = &chunk[..chunk.len().min(SEAM)];
        self.tail.extend_from_slice(head);
        let seam = std::mem::take(&mut self.tail);
        self.scan(&seam);
        self.scan(chunk);
        self.tail = seam;
        if chunk.len() >= SEAM {
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[chunk.len() - SEAM..]);
        } else if self.tail.len() > SEAM {
            self.tail.drain(..self.tail.len() - SEAM);
        }
    }

    fn scan(&mut self, bytes: &[u8]) {
        // Usage comes once, near the end: most frames hold none of it.
        if memchr::memchr(b'_', bytes).is_none() {
            return;
        }
        if let Some(v) = last_number_after(bytes, PROMPT) {
            self.seen.prompt = Some(v);
        }
        if let Some(v) = last_number_after(bytes, COMPLETION) {
            self.seen.completion = Some(v);
        }
        if let Some(v) = last_number_after(bytes, CACHED) {
            self.seen.cached = Some(v);
        }
    }

    /// What was reported so far.
    pub fn usage(&self) -> Usage {
        self.seen
    }
}

/// The number after the last complete occurrence of `needle` followed by digits.
fn last_number_after(bytes: &[u8], needle: &[u8]) -> Option<u64> {
    memmem::rfind_iter(bytes, needle).find_map(|at| {
        let rest = &bytes[at + needle.len()..];
        let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
        let digits = rest[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let end = start + digits;
        // A number running into the end of the bytes may continue in the next frame.
        (digits > 0 && end < rest.len())
            .then(|| std::str::from_utf8(&rest[start..end]).ok()?.parse().ok())?
    })
}

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
    fn escaped_text_is_not_usage() {
        let mut w = UsageScan::default();
        w.observe(br#"{"content": "\"prompt_tokens\": 7, \"cached_tokens\": 7"}"#);
        assert_eq!(w.usage(), Usage::default());
    }
}
