//! The config file, in either of two formats:
//! - native: every setting as a top-level key (the flag's name with underscores) and the
//!   workers as `[[workers]]` tables;
//! - the TOML router's `servers.toml`: `[servers] servers = [{ url, max_concurrent_requests }]`
//!   and a `[config]` table of its own keys, mapped here to ours.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::layers::{Layer, Place, file_key_allowed};
use super::{ConfigError, Role, WorkerSpec, WorkerUrl};

/// The port the TOML router listens on when its file does not say.
const LEGACY_DEFAULT_PORT: u16 = 8888;

/// What a config file sets: settings and workers.
#[derive(Debug, Clone)]
pub(super) struct FileLayer {
    pub(super) settings: Layer,
    pub(super) workers: Vec<FileWorker>,
    /// Keys accepted without effect, to be logged.
    pub(super) notes: Vec<String>,
}

/// One worker of the file, with where it was written.
#[derive(Debug, Clone)]
pub(super) struct FileWorker {
    entry: WorkerEntry,
    at: String,
}

/// A worker as the file gives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerEntry {
    url: String,
    #[serde(default)]
    role: RoleName,
    #[serde(default, alias = "max_concurrent_requests")]
    capacity: Option<u32>,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    bootstrap_port: Option<u16>,
    #[serde(default)]
    ranks: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RoleName {
    #[default]
    Regular,
    Prefill,
    Decode,
}

impl FileWorker {
    /// Read an entry given `at` (named in errors) from any serde value.
    fn new<'de, D: serde::Deserializer<'de>>(value: D, at: String) -> Result<Self, ConfigError>
    where
        D::Error: std::fmt::Display,
    {
        match WorkerEntry::deserialize(value) {
            Ok(entry) => Ok(Self { entry, at }),
            Err(e) => Err(ConfigError::Invalid {
                flag: "",
                value: String::new(),
                reason: e.to_string(),
                at: Some(at),
            }),
        }
    }

    /// An error about this entry.
    pub(super) fn invalid(&self, value: &str, reason: &str) -> ConfigError {
        ConfigError::Invalid {
            flag: "",
            value: value.to_owned(),
            reason: reason.to_owned(),
            at: Some(self.at.clone()),
        }
    }

    /// The worker's spec, with `ranks` unless the entry sets its own; `pd` tells whether
    /// prefill and decode roles are allowed.
    pub(super) fn spec(&self, ranks: NonZeroU32, pd: bool) -> Result<WorkerSpec, ConfigError> {
        let e = &self.entry;
        let bad = |value: &dyn ToString, reason: &str| self.invalid(&value.to_string(), reason);
        let url = WorkerUrl::parse("", &e.url).map_err(|error| match error {
            ConfigError::Invalid { value, reason, .. } => ConfigError::Invalid {
                flag: "",
                value,
                reason,
                at: Some(self.at.clone()),
            },
            other => other,
        })?;
        let role = match e.role {
            RoleName::Regular => Role::Regular,
            RoleName::Prefill => Role::Prefill,
            RoleName::Decode => Role::Decode,
        };
        if role != Role::Regular && !pd {
            return Err(bad(
                &role.name(),
                "prefill and decode workers need P/D mode (vllm_pd_disaggregation = true)",
            ));
        }
        if e.bootstrap_port.is_some() && role != Role::Prefill {
            return Err(bad(&e.url, "only a prefill worker has a bootstrap_port"));
        }
        let nonzero = |v: Option<u32>, what: &str| match v {
            None => Ok(None),
            Some(n) => NonZeroU32::new(n)
                .map(Some)
                .ok_or_else(|| bad(&0, &format!("{what} must be at least 1"))),
        };
        if let Some(models) = &e.models
            && (models.is_empty() || models.iter().any(|m| m.trim().is_empty()))
        {
            return Err(bad(
                &format!("{models:?}"),
                "models must name at least one model, none empty",
            ));
        }
        Ok(WorkerSpec {
            capacity: nonzero(e.capacity, "capacity")?,
            weight: nonzero(e.weight, "weight")?.unwrap_or(NonZeroU32::MIN),
            ranks: nonzero(e.ranks, "ranks")?.unwrap_or(ranks),
            bootstrap_port: e.bootstrap_port,
            models: e.models.clone(),
            labels: e.labels.clone(),
            ..WorkerSpec::with_role(url, role)
        })
    }
}

/// A worker given as JSON (the admin API's `POST /workers` body, in the file's worker format),
/// named `at` in errors.
pub fn worker_from_json(
    value: serde_json::Value,
    ranks: NonZeroU32,
    pd: bool,
    at: &str,
) -> Result<WorkerSpec, ConfigError> {
    FileWorker::new(value, at.to_owned())?.spec(ranks, pd)
}

fn file_error(path: &Path, reason: impl ToString) -> ConfigError {
    ConfigError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// A TOML syntax error by line and column, without the parser's excerpt of the file: the line
/// at fault may hold a secret.
fn syntax_error(path: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
    let message = error.message().trim();
    let reason = match error.span().and_then(|span| text.get(..span.start)) {
        Some(before) => {
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("TOML parse error at line {line}, column {column}: {message}")
        }
        None => format!("TOML parse error: {message}"),
    };
    file_error(path, reason)
}

/// Read the file at `path`.
pub(super) fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| file_error(path, e))
}

/// Parse a config file's text.
pub(super) fn parse(path: &Path, text: &str) -> Result<FileLayer, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
    if table.contains_key("servers") || table.get("config").is_some_and(toml::Value::is_table) {
        legacy(path, table)
    } else {
        native(path, table)
    }
}

fn place(path: &Path, key: &str) -> Place {
    Place::File {
        path: path.to_owned(),
        key: key.to_owned(),
    }
}

fn json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        // JSON has no inf or NaN: as text, they fail the number check naming their key.
        toml::Value::Float(f) if !f.is_finite() => Value::String(f.to_string()),
        toml::Value::Float(f) => Value::from(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.into_iter().map(json).collect()),
        toml::Value::Table(t) => Value::Object(t.into_iter().map(|(k, v)| (k, json(v))).collect()),
    }
}

fn workers(path: &Path, key: &str, value: toml::Value) -> Result<Vec<FileWorker>, ConfigError> {
    let toml::Value::Array(items) = value else {
        return Err(file_error(
            path,
            format!("'{key}' must be a list of worker tables"),
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| FileWorker::new(item, format!("'{key}[{i}]' in {}", path.display())))
        .collect()
}

fn native(path: &Path, table: toml::Table) -> Result<FileLayer, ConfigError> {
    let mut settings = Layer::default();
    let mut found = Vec::new();
    for (key, value) in table {
        if key == "workers" {
            found = workers(path, "workers", value)?;
        } else if file_key_allowed(&key) {
            settings.set(&key, json(value), place(path, &key));
        } else {
            return Err(file_error(
                path,
                format!(
                    "unknown key '{key}' (settings are the flags' names with underscores, workers are [[workers]] tables)"
                ),
            ));
        }
    }
    Ok(FileLayer {
        settings,
        workers: found,
        notes: Vec::new(),
    })
}

/// The TOML router's `[config]` keys and ours. Seconds become whole seconds (rounded up).
fn legacy(path: &Path, mut table: toml::Table) -> Result<FileLayer, ConfigError> {
    let mut settings = Layer::default();
    settings.set(
        "port",
        Value::from(LEGACY_DEFAULT_PORT),
        place(path, "(the TOML router's default port)"),
    );
    // Its one policy, the capacity score, unless a policy is given (here or anywhere above).
    settings.set(
        "policy",
        Value::from("least_load"),
        place(path, "(the TOML router's capacity score)"),
    );
    let servers = match table.remove("servers") {
        Some(toml::Value::Table(mut servers)) => match servers.remove("servers") {
            Some(list) => workers(path, "servers.servers", list)?,
            None => Vec::new(),
        },
        Some(list @ toml::Value::Array(_)) => workers(path, "servers", list)?,
        Some(_) => {
            return Err(file_error(
                path,
                "'servers' must be a table with a 'servers' list",
            ));
        }
        None => Vec::new(),
    };
    let config = match table.remove("config") {
        Some(toml::Value::Table(config)) => config,
        Some(_) => return Err(file_error(path, "'config' must be a table")),
        None => toml::Table::new(),
    };
    let mut max_response_time = None;
    let mut notes = Vec::new();
    for (key, value) in config {
        let at = place(path, &format!("config.{key}"));
        let secs = |v: &toml::Value| match v.as_float().or(v.as_integer().map(|i| i as f64)) {
            Some(s) if s.is_finite() && s >= 0.0 => Value::from(s.ceil() as u64),
            _ => json(v.clone()),
        };
        match key.as_str() {
            "health_check_interval" => settings.set("health_check_interval_secs", secs(&value), at),
            "health_check_timeout" => settings.set("health_check_timeout_secs", secs(&value), at),
            "config_reload_interval" => settings.set("config_reload_interval_secs", secs(&value), at),
            "request_timeout" => settings.set("request_timeout_secs", secs(&value), at),
            "max_retries" => settings.set("retry_max_retries", json(value), at),
            "retry_delay" => {
                let ms = match value.as_float().or(value.as_integer().map(|i| i as f64)) {
                    Some(s) if s.is_finite() && s >= 0.0 => Value::from((s * 1000.0).round() as u64),
                    _ => json(value),
                };
                settings.set("retry_initial_backoff_ms", ms, at);
            }
            "health_check_max_response_time" => max_response_time = Some((secs(&value), at)),
            // No equivalent: health here is consecutive failures, and probes are what tell
            // the router a worker's models, so they stay on.
            "health_check_min_success_rate" | "enable_active_health_check" => notes.push(format!(
                "'config.{key}' in {} has no equivalent and is ignored: a worker leaves rotation after --health-failure-threshold failures in a row, and probes stay on since they also read each worker's models",
                path.display()
            )),
            other if file_key_allowed(other) => settings.set(other, json(value), at),
            other => {
                return Err(file_error(path, format!("unknown key 'config.{other}'")));
            }
        }
    }
    // A probe slower than the TOML router's maximum response time failed there: the shorter
    // of the two is our probe timeout.
    if let Some((limit, at)) = max_response_time {
        let timeout = settings
            .values
            .get("health_check_timeout_secs")
            .and_then(Value::as_u64);
        if let Some(limit_secs) = limit.as_u64()
            && timeout.is_none_or(|t| limit_secs < t)
        {
            settings.set("health_check_timeout_secs", limit, at);
        }
    }
    if let Some((key, _)) = table.into_iter().next() {
        return Err(file_error(
            path,
            format!("unknown key '{key}' beside [servers] and [config]"),
        ));
    }
    Ok(FileLayer {
        settings,
        workers: servers,
        notes,
    })
}
