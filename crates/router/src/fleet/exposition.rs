//! Reads the few vLLM series the router routes on out of a worker's Prometheus text.
//!
//! Series are summed over their label sets (one per engine, data-parallel rank or model),
//! except KV-cache use, which is averaged. Current and deprecated names are both read; a
//! missing series stays `None`, never zero.

/// What one `/metrics` page says about a worker's engine.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EngineMetrics {
    /// `vllm:num_requests_running`.
    pub running: Option<f64>,
    /// `vllm:num_requests_waiting`.
    pub waiting: Option<f64>,
    /// `vllm:kv_cache_usage_perc` (or `vllm:gpu_cache_usage_perc`), 0..1.
    pub kv_usage: Option<f64>,
    /// `vllm:num_preemptions_total` (or `vllm:num_preemptions`).
    pub preemptions: Option<f64>,
    /// `vllm:prefix_cache_hits_total` (or `vllm:gpu_prefix_cache_hits_total`), in tokens.
    pub prefix_hits: Option<f64>,
    /// `vllm:prefix_cache_queries_total` (or `vllm:gpu_prefix_cache_queries_total`), in tokens.
    pub prefix_queries: Option<f64>,
    /// `block_size` label of `vllm:cache_config_info`.
    pub block_size: Option<u32>,
    /// `num_gpu_blocks` label of `vllm:cache_config_info`.
    pub num_gpu_blocks: Option<u64>,
    /// `process_open_fds`: the server process's open file descriptors.
    pub open_fds: Option<f64>,
    /// `process_max_fds`: its limit of open file descriptors.
    pub max_fds: Option<f64>,
}

#[derive(Default)]
struct Mean {
    sum: f64,
    n: u32,
}

/// Parse a Prometheus text exposition.
#[cfg(test)]
pub fn parse(text: &str) -> EngineMetrics {
    parse_rank(text, None)
}

/// Parse the series of one data-parallel rank (those labelled `engine="RANK"`); the whole
/// page for `None`, or when the page has no series labelled with that rank.
pub fn parse_rank(text: &str, rank: Option<u32>) -> EngineMetrics {
    if let Some(rank) = rank {
        let engine = rank.to_string();
        let m = parse_filtered(text, Some(&engine));
        if m.running.is_some() || m.waiting.is_some() {
            return m;
        }
    }
    parse_filtered(text, None)
}

fn parse_filtered(text: &str, engine: Option<&str>) -> EngineMetrics {
    let mut m = EngineMetrics::default();
    let mut kv = Mean::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, labels, value)) = split_sample(line) else {
            continue;
        };
        // The process is the server's, whichever rank is read.
        match name {
            "process_open_fds" => m.open_fds = Some(value),
            "process_max_fds" => m.max_fds = Some(value),
            _ => {}
        }
        if engine.is_some() && label(labels, "engine") != engine {
            continue;
        }
        let add = |slot: &mut Option<f64>| *slot = Some(slot.unwrap_or(0.0) + value);
        match name {
            "vllm:num_requests_running" => add(&mut m.running),
            "vllm:num_requests_waiting" => add(&mut m.waiting),
            "vllm:kv_cache_usage_perc" | "vllm:gpu_cache_usage_perc" => {
                kv.sum += value;
                kv.n += 1;
            }
            "vllm:num_preemptions_total" | "vllm:num_preemptions" => add(&mut m.preemptions),
            "vllm:prefix_cache_hits_total" | "vllm:gpu_prefix_cache_hits_total" => {
                add(&mut m.prefix_hits)
            }
            "vllm:prefix_cache_queries_total" | "vllm:gpu_prefix_cache_queries_total" => {
                add(&mut m.prefix_queries)
            }
            "vllm:cache_config_info" => {
                m.block_size = m
                    .block_size
                    .or_else(|| label(labels, "block_size")?.parse().ok());
                m.num_gpu_blocks = m
                    .num_gpu_blocks
                    .or_else(|| label(labels, "num_gpu_blocks")?.parse().ok());
            }
            _ => {}
        }
    }
    if kv.n > 0 {
        m.kv_usage = Some(kv.sum / f64::from(kv.n));
    }
    m
}

/// `name{labels} value [timestamp]` → (name, labels without braces, value).
fn split_sample(line: &str) -> Option<(&str, &str, f64)> {
    let (name, labels, rest) = match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => {
            let close = closing_brace(line, i)?;
            (&line[..i], &line[i + 1..close], &line[close + 1..])
        }
        Some(i) => (&line[..i], "", &line[i..]),
        None => return None,
    };
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    value.is_finite().then_some((name, labels, value))
}

/// The brace closing the label set opened at `open`, skipping quoted values.
fn closing_brace(line: &str, open: usize) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, b) in line.bytes().enumerate().skip(open + 1) {
        match (quoted, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (_, _, b'"') => quoted = !quoted,
            (false, _, b'}') => return Some(i),
            _ => {}
        }
    }
    None
}

/// The value of label `key` (label values the router reads never hold escapes).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:num_requests_waiting{engine="1",model_name="m"} 0.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.7
vllm:num_preemptions_total{engine="0",model_name="m"} 7.0
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 250.0 1700000000000
vllm:cache_config_info{block_size="16",cache_dtype="auto",engine="0",num_gpu_blocks="4096",prefix="a,b}"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 2.0
"#;

    #[test]
    fn sums_engines_and_averages_kv_use() {
        let m = parse(PAGE);
        assert_eq!(m.running, Some(5.0));
        assert_eq!(m.waiting, Some(4.0));
        assert!((m.kv_usage.unwrap() - 0.6).abs() < 1e-9);
        assert_eq!(m.preemptions, Some(7.0));
        assert_eq!(
            (m.prefix_queries, m.prefix_hits),
            (Some(1000.0), Some(250.0))
        );
        assert_eq!((m.block_size, m.num_gpu_blocks), (Some(16), Some(4096)));
    }

    #[test]
    fn a_rank_reads_its_own_engine_and_falls_back_to_the_page() {
        let m = parse_rank(PAGE, Some(1));
        assert_eq!((m.running, m.waiting), (Some(2.0), Some(0.0)));
        assert!((m.kv_usage.unwrap() - 0.7).abs() < 1e-9);
        let whole = parse_rank(PAGE, Some(7));
        assert_eq!(whole, parse(PAGE), "no series for rank 7: the whole page");
    }

    #[test]
    fn the_servers_process_figures_are_read_for_every_rank() {
        let page = "process_open_fds 41.0\nprocess_max_fds 1048576.0\n\
                    vllm:num_requests_running{engine=\"1\"} 2\n";
        for rank in [None, Some(1)] {
            let m = parse_rank(page, rank);
            assert_eq!(
                (m.open_fds, m.max_fds),
                (Some(41.0), Some(1_048_576.0)),
                "{rank:?}"
            );
        }
    }

    #[test]
    fn deprecated_names_are_read() {
        let m = parse(
            "vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.25\nvllm:gpu_prefix_cache_hits_total 9\nvllm:num_preemptions 1\n",
        );
        assert_eq!(
            (m.kv_usage, m.prefix_hits, m.preemptions),
            (Some(0.25), Some(9.0), Some(1.0))
        );
    }

    #[test]
    fn missing_or_malformed_series_stay_unknown() {
        let m = parse(
            "vllm:num_requests_running{engine=\"0\" 3\nvllm:num_requests_waiting NaN\ngarbage\n",
        );
        assert_eq!(m, EngineMetrics::default());
        assert_eq!(parse(""), EngineMetrics::default());
    }
}
