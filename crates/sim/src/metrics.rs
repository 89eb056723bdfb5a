//! `/metrics` in Prometheus text format under vLLM's series names: one sample per
//! data-parallel rank in every family, labelled `engine` (the rank) and `model_name` (the root
//! model), as vLLM labels them.

pub(crate) mod histogram;

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use crate::engine::Engine;
use crate::state::Sim;

type Gauge = fn(&Engine) -> f64;
type Counter = fn(&Engine) -> u64;

const GAUGES: [(&str, &str, Gauge); 3] = [
    (
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        |e| e.counters.running.load(Relaxed) as f64,
    ),
    (
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        |e| e.counters.waiting.load(Relaxed) as f64,
    ),
    (
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        Engine::kv_usage,
    ),
];

const COUNTERS: [(&str, &str, Counter); 6] = [
    (
        "vllm:num_preemptions_total",
        "Cumulative number of preemptions from the engine.",
        |_| 0,
    ),
    (
        "vllm:prefix_cache_queries_total",
        "Prefix cache queries, in terms of number of queried tokens.",
        |e| e.counters.prefix_queries.load(Relaxed),
    ),
    (
        "vllm:prefix_cache_hits_total",
        "Prefix cache hits, in terms of number of cached tokens.",
        |e| e.counters.prefix_hits.load(Relaxed),
    ),
    (
        "vllm:prompt_tokens_total",
        "Number of prefill tokens processed.",
        |e| e.counters.prompt_tokens.load(Relaxed),
    ),
    (
        "vllm:generation_tokens_total",
        "Number of generation tokens processed.",
        |e| e.counters.generation_tokens.load(Relaxed),
    ),
    (
        "vllm:request_success_total",
        "Count of successfully processed requests.",
        |e| e.counters.success.load(Relaxed),
    ),
];

/// Renders the whole exposition. Each family's samples follow its one `# HELP`/`# TYPE` pair,
/// as the text format requires.
pub(crate) fn render(sim: &Sim) -> String {
    let model = escape(sim.config.root_model());
    let engines: Vec<(&Engine, String)> = sim
        .ranks
        .engines()
        .iter()
        .map(|e| {
            let labels = format!("engine=\"{}\",model_name=\"{model}\"", e.rank());
            (e.as_ref(), labels)
        })
        .collect();
    let mut out = String::with_capacity(2048 + 2048 * engines.len());
    for (name, help, value) in GAUGES {
        head(&mut out, name, "gauge", help);
        for (engine, labels) in &engines {
            let _ = writeln!(out, "{name}{{{labels}}} {}", fmt_f64(value(engine)));
        }
    }
    for (name, help, value) in COUNTERS {
        head(&mut out, name, "counter", help);
        for (engine, labels) in &engines {
            let _ = writeln!(out, "{name}{{{labels}}} {}", fmt_f64(value(engine) as f64));
        }
    }
    let name = "vllm:cache_config_info";
    head(
        &mut out,
        name,
        "gauge",
        "Information of the LLMEngine CacheConfig.",
    );
    for (engine, labels) in &engines {
        let _ = writeln!(
            out,
            "{name}{{block_size=\"{}\",{labels},num_gpu_blocks=\"{}\"}} 1.0",
            engine.block_size(),
            engine.num_blocks(),
        );
    }
    let name = "vllm:time_to_first_token_seconds";
    head(
        &mut out,
        name,
        "histogram",
        "Histogram of time to first token in seconds.",
    );
    for (engine, labels) in &engines {
        let ttft = engine.counters.ttft.snapshot();
        for (bound, count) in &ttft.buckets {
            let le = if bound.is_infinite() {
                "+Inf".to_owned()
            } else {
                fmt_f64(*bound)
            };
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {count}.0");
        }
        let _ = write!(
            out,
            "{name}_sum{{{labels}}} {}\n{name}_count{{{labels}}} {}.0\n",
            fmt_f64(ttft.sum_seconds),
            ttft.count
        );
    }
    out
}

/// A family's `# HELP` and `# TYPE` lines.
fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// Floats the way Prometheus clients print them: always with a fractional part.
fn fmt_f64(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Escapes a label value per the text exposition format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_f64(3.0), "3.0");
        assert_eq!(fmt_f64(0.25), "0.25");
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
