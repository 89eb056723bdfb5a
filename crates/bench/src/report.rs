//! Per-target figures, the Markdown table and the JSON document.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::client::Verdict;
use crate::config::{BenchConfig, Target};
use crate::load::LoadResult;
use crate::stats::Summary;

/// The figures of one target.
#[derive(Clone, Debug, Serialize)]
pub struct TargetReport {
    /// Target name.
    pub name: String,
    /// Target base URL.
    pub url: String,
    /// Counted requests, whatever their outcome.
    pub requests: u64,
    /// Of those, complete answers.
    pub ok: u64,
    /// Complete answers per second of the measured window.
    pub ok_per_sec: f64,
    /// Seconds from the end of the warm-up until the last counted request finished.
    pub elapsed_secs: f64,
    /// Time to first token of complete answers, in milliseconds.
    pub ttft_ms: Option<Summary>,
    /// End-to-end latency of complete answers, in milliseconds.
    pub e2e_ms: Option<Summary>,
    /// Σ `usage.prompt_tokens` over complete answers.
    pub prompt_tokens: u64,
    /// Σ `usage.prompt_tokens_details.cached_tokens` over complete answers.
    pub cached_tokens: u64,
    /// `cached_tokens / prompt_tokens`, when any prompt tokens were reported.
    pub cache_hit_rate: Option<f64>,
    /// Complete answers without a usage chunk.
    pub missing_usage: u64,
    /// Failed requests (not counting shed ones).
    pub errors: u64,
    /// Requests turned away with 429 or 503, plus open-loop arrivals dropped for overload.
    pub shed: u64,
    /// Failures by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// The first failure's description.
    pub first_error: Option<String>,
}

/// The whole JSON report: the configuration and every target's figures.
#[derive(Debug, Serialize)]
pub struct JsonReport<'a> {
    /// This tool and its version.
    pub tool: String,
    /// The configuration the run used.
    pub config: &'a BenchConfig,
    /// One entry per target, in run order.
    pub targets: &'a [TargetReport],
}

impl TargetReport {
    /// Reduces a target's samples to its figures.
    pub fn new(target: &Target, result: &LoadResult) -> Self {
        let mut ttft = Vec::with_capacity(result.samples.len());
        let mut e2e = Vec::with_capacity(result.samples.len());
        let mut r = Self {
            name: target.name.clone(),
            url: target.url.clone(),
            requests: result.samples.len() as u64,
            ok: 0,
            ok_per_sec: 0.0,
            elapsed_secs: result.elapsed.as_secs_f64(),
            ttft_ms: None,
            e2e_ms: None,
            prompt_tokens: 0,
            cached_tokens: 0,
            cache_hit_rate: None,
            missing_usage: 0,
            errors: 0,
            shed: result.overload_shed,
            error_kinds: BTreeMap::new(),
            first_error: None,
        };
        for s in &result.samples {
            match &s.verdict {
                Verdict::Ok => {
                    r.ok += 1;
                    e2e.push(s.e2e_ms);
                    ttft.extend(s.ttft_ms);
                    match s.usage {
                        Some(u) => {
                            r.prompt_tokens += u.prompt_tokens;
                            r.cached_tokens += u.cached_tokens;
                        }
                        None => r.missing_usage += 1,
                    }
                }
                Verdict::Shed => r.shed += 1,
                Verdict::Error(kind) => {
                    r.errors += 1;
                    *r.error_kinds.entry(kind.to_string()).or_default() += 1;
                    if r.first_error.is_none() {
                        r.first_error.clone_from(&s.detail);
                    }
                }
            }
        }
        if r.elapsed_secs > 0.0 {
            r.ok_per_sec = r.ok as f64 / r.elapsed_secs;
        }
        r.ttft_ms = Summary::of(&mut ttft);
        r.e2e_ms = Summary::of(&mut e2e);
        if r.prompt_tokens > 0 {
            r.cache_hit_rate = Some(r.cached_tokens as f64 / r.prompt_tokens as f64);
        }
        r
    }
}

/// The Markdown table: one row per target.
pub fn markdown(reports: &[TargetReport]) -> String {
    let mut out = String::from(
        "| target | requests | req/s | TTFT mean ms | TTFT p50 ms | TTFT p99 ms | e2e mean ms \
         | e2e p50 ms | e2e p99 ms | cache hit | errors | shed |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in reports {
        let ms = |s: Option<Summary>| match s {
            Some(s) => [s.mean, s.p50, s.p99].map(|v| format!("{v:.1}")),
            None => ["n/a".to_owned(), "n/a".to_owned(), "n/a".to_owned()],
        };
        let [tm, t50, t99] = ms(r.ttft_ms);
        let [em, e50, e99] = ms(r.e2e_ms);
        let hit = r
            .cache_hit_rate
            .map_or_else(|| "n/a".to_owned(), |h| format!("{:.1}%", h * 100.0));
        // Writing into a String cannot fail.
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {tm} | {t50} | {t99} | {em} | {e50} | {e99} | {hit} | {} | {} |",
            r.name, r.requests, r.ok_per_sec, r.errors, r.shed
        );
    }
    let notes: Vec<String> = reports
        .iter()
        .filter_map(|r| {
            let e = r.first_error.as_ref()?;
            Some(format!("- {}: first error: {e}", r.name))
        })
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::client::{ErrorKind, Usage};
    use crate::load::Sample;

    fn sample(verdict: Verdict, ttft: f64, prompt: u64, cached: u64) -> Sample {
        Sample {
            detail: matches!(verdict, Verdict::Error(_)).then(|| "boom".to_owned()),
            verdict,
            ttft_ms: Some(ttft),
            e2e_ms: ttft * 2.0,
            usage: Some(Usage {
                prompt_tokens: prompt,
                cached_tokens: cached,
            }),
        }
    }

    #[test]
    fn figures_from_samples() {
        let target = Target::parse("t=http://h:1").unwrap();
        let result = LoadResult {
            samples: vec![
                sample(Verdict::Ok, 10.0, 100, 0),
                sample(Verdict::Ok, 30.0, 100, 80),
                sample(Verdict::Shed, 1.0, 0, 0),
                sample(Verdict::Error(ErrorKind::Status(500)), 1.0, 50, 50),
            ],
            overload_shed: 2,
            elapsed: Duration::from_secs(2),
        };
        let r = TargetReport::new(&target, &result);
        assert_eq!((r.requests, r.ok, r.errors, r.shed), (4, 2, 1, 3));
        assert_eq!(r.ok_per_sec, 1.0);
        assert_eq!(r.ttft_ms.unwrap().mean, 20.0);
        assert_eq!(r.e2e_ms.unwrap().p99, 60.0);
        assert_eq!(r.cache_hit_rate, Some(0.4));
        assert_eq!(r.error_kinds.get("status 500"), Some(&1));
        assert_eq!(r.first_error.as_deref(), Some("boom"));
        let table = markdown(&[r]);
        assert!(
            table.contains("| t | 4 | 1.0 | 20.0 | 10.0 | 30.0 |"),
            "{table}"
        );
        assert!(table.contains("| 40.0% | 1 | 3 |"), "{table}");
        assert!(table.contains("- t: first error: boom"), "{table}");
    }
}
