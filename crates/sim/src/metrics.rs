//! `/metrics` in Prometheus text format under vLLM's series names, every series labelled
//! `model_name` (the root model) and `engine="0"`.

pub(crate) mod histogram;

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use crate::state::Sim;

/// Renders the whole exposition.
pub(crate) fn render(sim: &Sim) -> String {
    let engine = &sim.engine;
    let c = &engine.counters;
    let labels = format!(
        "engine=\"0\",model_name=\"{}\"",
        escape(sim.config.root_model())
    );
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {}\n",
            fmt_f64(value)
        );
    };
    let gauges = [
        (
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            c.running.load(Relaxed) as f64,
        ),
        (
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            c.waiting.load(Relaxed) as f64,
        ),
        (
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            engine.kv_usage(),
        ),
    ];
    for (name, help, value) in gauges {
        family(name, "gauge", help, value);
    }
    let counters = [
        (
            "vllm:num_preemptions_total",
            "Cumulative number of preemptions from the engine.",
            0,
        ),
        (
            "vllm:prefix_cache_queries_total",
            "Prefix cache queries, in terms of number of queried tokens.",
            c.prefix_queries.load(Relaxed),
        ),
        (
            "vllm:prefix_cache_hits_total",
            "Prefix cache hits, in terms of number of cached tokens.",
            c.prefix_hits.load(Relaxed),
        ),
        (
            "vllm:prompt_tokens_total",
            "Number of prefill tokens processed.",
            c.prompt_tokens.load(Relaxed),
        ),
        (
            "vllm:generation_tokens_total",
            "Number of generation tokens processed.",
            c.generation_tokens.load(Relaxed),
        ),
        (
            "vllm:request_success_total",
            "Count of successfully processed requests.",
            c.success.load(Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        family(name, "counter", help, value as f64);
    }
    let _ = write!(
        out,
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig.\n\
         # TYPE vllm:cache_config_info gauge\n\
         vllm:cache_config_info{{block_size=\"{}\",{labels},num_gpu_blocks=\"{}\"}} 1.0\n",
        engine.block_size(),
        engine.num_blocks(),
    );
    let ttft = c.ttft.snapshot();
    let name = "vllm:time_to_first_token_seconds";
    let _ = write!(
        out,
        "# HELP {name} Histogram of time to first token in seconds.\n# TYPE {name} histogram\n"
    );
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
    out
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
