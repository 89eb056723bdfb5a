//! What can be wrong with a configuration, named where it was given; and secrets, which are
//! compared but never shown.

use std::collections::HashMap;
use std::path::PathBuf;

use super::layers::{self, Place};

/// A configuration value that cannot be used, with where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting's value is out of range or malformed.
    #[error("invalid value '{value}' for {}: {reason}", at.clone().unwrap_or_else(|| format!("'{flag}'")))]
    Invalid {
        /// The flag, spelled as on the command line ("" when the value has no flag).
        flag: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: String,
        /// Where it was given (`'--flag'`, `$VAR`, `'key' in FILE`), when known.
        at: Option<String>,
    },
    /// A setting of a router users come from that this one does not have.
    #[error("{} is not supported: {reason}", at.clone().unwrap_or_else(|| format!("'{flag}'")))]
    Unsupported {
        /// The flag, spelled as on the command line.
        flag: &'static str,
        /// Why, and what to use instead.
        reason: &'static str,
        /// Where it was given, when known.
        at: Option<String>,
    },
    /// The command line cannot be parsed.
    #[error("{reason}")]
    Flags {
        /// The parser's message.
        reason: String,
    },
    /// The config file cannot be read or is not a config file.
    #[error("config file {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    /// Name where a flag's value came from, using the places of the merged layers.
    pub(super) fn placed(self, places: &HashMap<String, Place>) -> Self {
        match self {
            Self::Invalid {
                flag,
                value,
                reason,
                at: None,
            } if !flag.is_empty() => {
                let key = layers::key_of(flag);
                let at = places.get(&key).unwrap_or(&Place::Default).name(&key);
                Self::Invalid {
                    flag,
                    value,
                    reason,
                    at: Some(at),
                }
            }
            Self::Unsupported {
                flag,
                reason,
                at: None,
            } => {
                let key = layers::key_of(flag);
                let at = places.get(&key).unwrap_or(&Place::Default).name(&key);
                Self::Unsupported {
                    flag,
                    reason,
                    at: Some(at),
                }
            }
            other => other,
        }
    }
}

/// A secret setting: compared, never shown (`Debug` prints a mask).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret of this text.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The secret's text, for comparisons.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

pub(crate) fn invalid(
    flag: &'static str,
    value: impl ToString,
    reason: impl ToString,
) -> ConfigError {
    ConfigError::Invalid {
        flag,
        value: value.to_string(),
        reason: reason.to_string(),
        at: None,
    }
}
