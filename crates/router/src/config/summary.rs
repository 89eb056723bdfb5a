//! What `--check-config` prints.

use super::Config;

impl Config {
    /// What `--check-config` prints: the settings given and where, and the workers.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut out = String::from("configuration is valid\n");
        if let Some(file) = &self.config_file {
            let _ = writeln!(out, "config file: {}", file.display());
        }
        let _ = writeln!(out, "settings given ({}):", self.given.len());
        for (key, value, place) in &self.given {
            let _ = writeln!(out, "  {key} = {value}    [{place}]");
        }
        let _ = writeln!(out, "workers ({}):", self.workers.len());
        for w in &self.workers {
            let _ = write!(
                out,
                "  {} role={} ranks={} weight={}",
                w.url.text,
                w.role.name(),
                w.ranks,
                w.weight
            );
            if let Some(c) = w.capacity {
                let _ = write!(out, " capacity={c}");
            }
            if let Some(models) = &w.models {
                let _ = write!(out, " models={}", models.join(","));
            }
            out.push('\n');
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
        out
    }
}
