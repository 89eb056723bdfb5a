//! Layered settings: defaults < config file < environment < flags.
//!
//! Every flag is a setting named by its key: the flag without `--`, with underscores
//! (`--cache-threshold` is `cache_threshold`). A layer holds the keys it sets explicitly and
//! where each came from; layers are merged key by key, a higher layer replacing a lower one's
//! value whole (lists included). Flags and environment values are typed by the flag parser
//! itself, file values by the settings' types, so a value means the same wherever it is given.
//! Errors name the key, the place it came from and the bad value.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use serde_json::{Map, Value};

use super::file::{self, FileLayer};
use super::{Config, ConfigError};
use crate::cli::{RouterArgs, RouterOnly};

/// Prefix of the environment variable of every setting: `VLLM_ROUTER_CACHE_THRESHOLD`.
pub const ENV_PREFIX: &str = "VLLM_ROUTER_";

/// Environment variables of the routers users come from, with the setting each stands for.
/// The `VLLM_ROUTER_` variable of a setting wins over these.
const LEGACY_ENV: &[(&str, &str)] = &[
    ("CONFIG_PATH", "config"),
    ("HOST", "host"),
    ("PORT", "port"),
    ("LOG_LEVEL", "log_level"),
    ("LOG_TO_CONSOLE", "log_to_console"),
    ("HEALTH_CHECK_INTERVAL", "health_check_interval_secs"),
    ("CONFIG_RELOAD_INTERVAL", "config_reload_interval_secs"),
    ("REQUEST_TIMEOUT", "request_timeout_secs"),
    ("API_KEY_VALIDATION_URLS", "api_key_validation_urls"),
];

/// Keys that choose how the configuration is loaded, and cannot be set from a file.
const NOT_IN_FILE: &[&str] = &["config", "check_config"];

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The built-in default.
    Default,
    /// The command line.
    Flag,
    /// An environment variable.
    Env(String),
    /// A key of the config file (its own spelling: the TOML router's keys differ from ours).
    File {
        /// The file.
        path: PathBuf,
        /// The key as written there.
        key: String,
    },
}

impl Place {
    /// Name the setting `key` as given here: `--flag`, `$VAR` or `key in FILE`.
    pub fn name(&self, key: &str) -> String {
        match self {
            Self::Default => format!("'--{}' (default)", flag_name(key)),
            Self::Flag => format!("'--{}'", flag_name(key)),
            Self::Env(var) => format!("${var}"),
            Self::File { path, key } => format!("'{key}' in {}", path.display()),
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Flag => f.write_str("command line"),
            Self::Env(var) => write!(f, "environment ({var})"),
            Self::File { path, key } => write!(f, "'{key}' in {}", path.display()),
        }
    }
}

fn flag_name(key: &str) -> String {
    key.replace('_', "-")
}

/// The setting key of a flag as the validation names it (`--cache-threshold`).
pub(super) fn key_of(flag: &str) -> String {
    flag.trim_start_matches("--").replace('-', "_")
}

/// The values one layer sets explicitly, by key, and where each came from.
#[derive(Debug, Clone, Default)]
pub(super) struct Layer {
    pub(super) values: Map<String, Value>,
    pub(super) places: HashMap<String, Place>,
}

impl Layer {
    pub(super) fn set(&mut self, key: &str, value: Value, place: Place) {
        self.values.insert(key.to_owned(), value);
        self.places.insert(key.to_owned(), place);
    }
}

/// Every setting at its default, by key; parsed once.
fn defaults() -> &'static Map<String, Value> {
    static DEFAULTS: LazyLock<Map<String, Value>> =
        LazyLock::new(|| to_json(&RouterArgs::default()));
    &DEFAULTS
}

fn to_json(args: &RouterArgs) -> Map<String, Value> {
    match serde_json::to_value(args) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// What the configuration is made of: the flags and environment read at start, and the file
/// they name, re-read on every [`Sources::load`].
#[derive(Debug, Clone)]
pub struct Sources {
    flags: Layer,
    env: Layer,
    file: Option<PathBuf>,
    /// Environment variables ignored, to be logged.
    notes: Vec<String>,
}

impl Sources {
    /// The flags given on the command line (`matches` of [`crate::cli::Cli`] or
    /// [`RouterOnly`]) and the environment as `env` reads it.
    pub fn new(
        matches: &ArgMatches,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let given = RouterArgs::from_arg_matches(matches).map_err(|e| ConfigError::Flags {
            reason: e.to_string(),
        })?;
        let given = to_json(&given);
        let mut flags = Layer::default();
        for (key, value) in given {
            if matches.value_source(&key) == Some(ValueSource::CommandLine) {
                flags.set(&key, value, Place::Flag);
            }
        }
        let mut notes = Vec::new();
        let env = env_layer(&env, &mut notes)?;
        let file = [&flags, &env]
            .iter()
            .rev()
            .find_map(|layer| layer.values.get("config"))
            .and_then(Value::as_str)
            .map(PathBuf::from);
        Ok(Self {
            flags,
            env,
            file,
            notes,
        })
    }

    /// Sources of these command-line arguments (without the program name) and environment.
    pub fn from_argv<I, S>(
        argv: I,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        let full = std::iter::once("vllm-router".into()).chain(argv.into_iter().map(Into::into));
        let matches = RouterOnly::command()
            .try_get_matches_from(full)
            .map_err(|e| ConfigError::Flags {
                reason: e.to_string(),
            })?;
        Self::new(&matches, env)
    }

    /// The config file, when one is named.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Read `path` as the config file when neither the flags nor the environment name one.
    pub fn or_file(mut self, path: PathBuf) -> Self {
        self.file.get_or_insert(path);
        self
    }

    /// Whether the flags or the environment set `key`.
    pub fn sets(&self, key: &str) -> bool {
        self.flags.values.contains_key(key) || self.env.values.contains_key(key)
    }

    /// Read the file (when named), merge the layers and validate the result.
    pub fn load(&self) -> Result<Config, ConfigError> {
        self.load_versioned().map(|(config, _)| config)
    }

    /// [`Sources::load`], with the [`fingerprint`] of the file text it read (`None` without a
    /// file): a reload compares it with the file's text now.
    pub fn load_versioned(&self) -> Result<(Config, Option<u64>), ConfigError> {
        match &self.file {
            Some(path) => {
                let text = file::read_text(path)?;
                let config = self.load_text(path, &text)?;
                Ok((config, Some(fingerprint(&text))))
            }
            None => Ok((self.load_with(None)?, None)),
        }
    }

    /// [`Sources::load`] with the file's text given rather than read (tests, `--check-config`
    /// of a text in hand).
    pub fn load_text(&self, path: &Path, text: &str) -> Result<Config, ConfigError> {
        self.load_with(Some(file::parse(path, text)?))
    }

    fn load_with(&self, file: Option<FileLayer>) -> Result<Config, ConfigError> {
        let base = defaults();
        let mut merged = base.clone();
        let mut places: HashMap<String, Place> = HashMap::new();
        let (settings, workers, notes) = match file {
            Some(f) => (f.settings, f.workers, f.notes),
            None => (Layer::default(), Vec::new(), Vec::new()),
        };
        check_file_types(base, &settings)?;
        for layer in [&settings, &self.env, &self.flags] {
            for (key, value) in &layer.values {
                merged.insert(key.clone(), value.clone());
            }
            places.extend(layer.places.iter().map(|(k, p)| (k.clone(), p.clone())));
        }
        let mut given: Vec<(String, String, Place)> = places
            .iter()
            .map(|(key, place)| {
                let value = if is_secret(key) {
                    "***".to_owned()
                } else {
                    merged.get(key).map(display_value).unwrap_or_default()
                };
                (key.clone(), value, place.clone())
            })
            .collect();
        given.sort_by(|a, b| a.0.cmp(&b.0));
        let args: RouterArgs =
            serde_json::from_value(Value::Object(merged)).map_err(|e| ConfigError::Flags {
                reason: e.to_string(),
            })?;
        let mut config = Config::build(args, &workers).map_err(|error| error.placed(&places))?;
        config.warnings.extend(self.notes.iter().cloned());
        config.warnings.extend(notes);
        config.given = given;
        Ok(config)
    }
}

/// A fingerprint of a config file's text: equal texts, equal fingerprints.
pub fn fingerprint(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// A file value of the wrong type is refused naming its key, before anything is merged. The
/// file's values are tried together, and one by one only to find the one at fault.
fn check_file_types(base: &Map<String, Value>, file: &Layer) -> Result<(), ConfigError> {
    let with = |values: &mut dyn Iterator<Item = (&String, &Value)>| {
        let mut probe = base.clone();
        probe.extend(values.map(|(k, v)| (k.clone(), v.clone())));
        serde_json::from_value::<RouterArgs>(Value::Object(probe))
    };
    if with(&mut file.values.iter()).is_ok() {
        return Ok(());
    }
    for (key, value) in &file.values {
        if let Err(error) = with(&mut std::iter::once((key, value))) {
            let place = file.places.get(key).cloned().unwrap_or(Place::Default);
            // The parser's message quotes the value too.
            let (value, reason) = if is_secret(key) {
                ("***".to_owned(), "must be a string".to_owned())
            } else {
                (display_value(value), error.to_string())
            };
            return Err(ConfigError::Invalid {
                flag: "",
                value,
                reason,
                at: Some(place.name(key)),
            });
        }
    }
    Ok(())
}

/// Whether a setting holds a secret, never shown.
fn is_secret(key: &str) -> bool {
    key.ends_with("api_key") || key.ends_with("api_keys")
}

/// A value as a person would write it: strings without quotes.
pub(super) fn display_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The environment's settings: `VLLM_ROUTER_<KEY>` for every key, then the legacy names.
fn env_layer(
    env: &impl Fn(&str) -> Option<String>,
    notes: &mut Vec<String>,
) -> Result<Layer, ConfigError> {
    let mut layer = Layer::default();
    let mut argv: Vec<String> = vec!["vllm-router".to_owned()];
    let mut from: HashMap<String, String> = HashMap::new();
    let base = defaults();
    for (key, default) in base {
        let ours = format!("{ENV_PREFIX}{}", key.to_ascii_uppercase());
        let value = env(&ours);
        if let Some(raw) = &value
            && is_service_link(key, raw)
        {
            notes.push(format!(
                "${ours} is ignored: '{raw}' is a Kubernetes service link (a Service named vllm-router), not a port"
            ));
        }
        let value = value.filter(|raw| !is_service_link(key, raw));
        let found = value.map(|v| (ours, v)).or_else(|| {
            LEGACY_ENV
                .iter()
                .filter(|(_, k)| k == key)
                .find_map(|(name, _)| env(name).map(|v| ((*name).to_owned(), v)))
        });
        let Some((var, raw)) = found else { continue };
        if default.is_boolean() {
            let value = truthy(&raw).ok_or_else(|| ConfigError::Invalid {
                flag: "",
                value: raw.clone(),
                reason: "expected true or false".to_owned(),
                at: Some(format!("${var}")),
            })?;
            layer.set(key, Value::Bool(value), Place::Env(var));
            continue;
        }
        let raw = if LEGACY_ENV.iter().any(|(n, _)| *n == var) {
            legacy_value(key, &raw)
        } else {
            raw
        };
        argv.push(format!("--{}={raw}", flag_name(key)));
        from.insert(key.clone(), var);
    }
    if from.is_empty() {
        return Ok(layer);
    }
    let matches = RouterOnly::command()
        .try_get_matches_from(&argv)
        .map_err(|e| env_error(&e, &from))?;
    let parsed = RouterArgs::from_arg_matches(&matches).map_err(|e| env_error(&e, &from))?;
    for (key, value) in to_json(&parsed) {
        if let Some(var) = from.remove(&key) {
            layer.set(&key, value, Place::Env(var));
        }
    }
    Ok(layer)
}

/// A clap error about an environment value, naming the variable rather than the flag.
fn env_error(error: &clap::Error, from: &HashMap<String, String>) -> ConfigError {
    use clap::error::{ContextKind, ContextValue};
    let arg = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg.split_whitespace().next().map(key_of),
        _ => None,
    };
    let value = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => v.clone(),
        _ => String::new(),
    };
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    let reason = first
        .rsplit_once("': ")
        .map_or(first, |(_, why)| why)
        .trim_start_matches("error: ")
        .to_owned();
    ConfigError::Invalid {
        flag: "",
        value,
        reason,
        at: arg
            .and_then(|key| from.get(&key))
            .map(|var| format!("${var}")),
    }
}

/// Kubernetes gives every pod `<SERVICE>_PORT=tcp://IP:PORT` for each Service in its
/// namespace: a Service named `vllm-router` would set `VLLM_ROUTER_PORT`.
fn is_service_link(key: &str, raw: &str) -> bool {
    key.ends_with("port")
        && ["tcp://", "udp://", "sctp://"]
            .iter()
            .any(|p| raw.starts_with(p))
}

/// `true`/`false` as environment variables spell them.
pub(super) fn truthy(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

/// The legacy variables give seconds as decimals and levels in capitals.
fn legacy_value(key: &str, raw: &str) -> String {
    let raw = raw.trim();
    if key == "log_level" {
        return raw.to_ascii_lowercase();
    }
    if key.ends_with("_secs")
        && let Ok(secs) = raw.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return format!("{}", secs.ceil() as u64);
    }
    raw.to_owned()
}

/// Whether `key` may be set in a config file.
pub(super) fn file_key_allowed(key: &str) -> bool {
    !NOT_IN_FILE.contains(&key) && defaults().contains_key(key)
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
