//! The Prometheus text format (0.0.4) from OpenMetrics text.

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// `registry` as OpenMetrics text (ending with `# EOF`); an encoding failure is logged.
pub(super) fn encoded(registry: &Registry) -> String {
    let mut out = String::new();
    if encode(&mut out, registry).is_err() {
        tracing::error!("metrics encoding failed");
    }
    out
}

/// The OpenMetrics text `openmetrics` in the Prometheus text format (0.0.4), for scrapers
/// that do not ask for OpenMetrics: counter families take their samples' `_total` name, and
/// `# UNIT` and `# EOF` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line.starts_with("# HELP ") {
            if let Some(earlier) = help.replace(line) {
                out.push_str(earlier);
                out.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let renamed =
                (kind == "counter" && !name.ends_with("_total")).then(|| format!("{name}_total"));
            let name_out = renamed.as_deref().unwrap_or(name);
            if let Some(help) = help.take() {
                let text = help
                    .strip_prefix("# HELP ")
                    .and_then(|h| h.strip_prefix(name))
                    .unwrap_or("");
                out.push_str("# HELP ");
                out.push_str(name_out);
                out.push_str(text);
                out.push('\n');
            }
            out.push_str("# TYPE ");
            out.push_str(name_out);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some(help) = help {
        out.push_str(help);
        out.push('\n');
    }
    out
}
