//! Reads the `usage` a worker reports as its response streams by (`prompt_tokens` and
//! `prompt_tokens_details.cached_tokens`), to check a policy's prefix-cache prediction. It
//! only looks at the bytes; the client receives them untouched. Values split across frames
//! are caught by re-reading a short seam of the previous frame's tail with the next head.

use std::sync::Arc;

use memchr::memmem;

use crate::telemetry::metrics::Metrics;

const PROMPT: &[u8] = br#""prompt_tokens":"#;
const CACHED: &[u8] = br#""cached_tokens":"#;
/// Longer than a needle plus any number: enough to catch whatever a frame boundary split.
const SEAM: usize = 48;

/// Watches a response for its usage and reports the prediction error when it ends.
#[derive(Debug)]
pub struct UsageWatch {
    predicted_hit: f64,
    metrics: Arc<Metrics>,
    tail: Vec<u8>,
    prompt_tokens: Option<u64>,
    cached_tokens: Option<u64>,
}

impl UsageWatch {
    /// Watch for a response whose prompt was predicted `predicted_hit` cached.
    pub fn new(predicted_hit: f64, metrics: Arc<Metrics>) -> Self {
        Self {
            predicted_hit,
            metrics,
            tail: Vec::with_capacity(2 * SEAM),
            prompt_tokens: None,
            cached_tokens: None,
        }
    }

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
        if let Some(v) = last_number_after(bytes, PROMPT) {
            self.prompt_tokens = Some(v);
        }
        if let Some(v) = last_number_after(bytes, CACHED) {
            self.cached_tokens = Some(v);
        }
    }

    /// The body ended cleanly: report the error if the worker reported its usage.
    pub fn finish(self) {
        if let (Some(prompt), Some(cached)) = (self.prompt_tokens, self.cached_tokens)
            && prompt > 0
        {
            self.metrics.prefix_prediction(
                self.predicted_hit,
                cached.min(prompt) as f64 / prompt as f64,
            );
        }
    }

    #[cfg(test)]
    fn seen(&self) -> (Option<u64>, Option<u64>) {
        (self.prompt_tokens, self.cached_tokens)
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

    fn watch() -> UsageWatch {
        UsageWatch::new(0.5, Metrics::new())
    }

    #[test]
    fn usage_is_found_whole_or_split_anywhere() {
        for split in 0..BODY.len() {
            let mut w = watch();
            w.observe(&BODY.as_bytes()[..split]);
            w.observe(&BODY.as_bytes()[split..]);
            assert_eq!(w.seen(), (Some(1234), Some(1024)), "split at {split}");
        }
        let mut w = watch();
        for b in BODY.as_bytes().chunks(3) {
            w.observe(b);
        }
        assert_eq!(w.seen(), (Some(1234), Some(1024)));
    }

    #[test]
    fn escaped_text_is_not_usage() {
        let mut w = watch();
        w.observe(br#"{"content": "\"prompt_tokens\": 7, \"cached_tokens\": 7"}"#);
        assert_eq!(w.seen(), (None, None));
    }

    #[test]
    fn finish_reports_the_error() {
        let metrics = Metrics::new();
        let mut w = UsageWatch::new(0.75, Arc::clone(&metrics));
        w.observe(
            br#"{"usage":{"prompt_tokens":100,"prompt_tokens_details":{"cached_tokens":50}}}"#,
        );
        w.finish();
        let text = metrics.render(&crate::fleet::Snapshot::default());
        assert!(
            text.contains("vllm_router_prefix_prediction_error_count 1"),
            "{text}"
        );
        assert!(
            text.contains("vllm_router_prefix_prediction_error_sum 0.25"),
            "{text}"
        );
    }
}
