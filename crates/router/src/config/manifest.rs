//! SGLang's gateway's file discovery: `--discovery-provider file --discovery-file FILE`.

use std::path::PathBuf;
use std::time::Duration;

use super::ConfigError;
use super::bounds::secs;
use super::error::invalid;
use crate::cli::{DiscoveryProvider, RouterArgs};

/// Where the workers' manifest is and how often it is re-read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestConfig {
    /// The JSON manifest.
    pub path: PathBuf,
    /// Time between re-reads (it is also watched).
    pub interval: Duration,
}

/// The manifest settings, when `--discovery-provider file` asks for them.
pub(super) fn manifest(args: &RouterArgs) -> Result<Option<ManifestConfig>, ConfigError> {
    let d = &args.discovery;
    let interval = secs(
        "--discovery-check-interval-secs",
        d.discovery_check_interval_secs,
        false,
    )?;
    match (d.discovery_provider, &d.discovery_file) {
        (Some(DiscoveryProvider::File), Some(path)) => Ok(Some(ManifestConfig {
            path: path.clone(),
            interval,
        })),
        (Some(DiscoveryProvider::File), None) => Err(invalid(
            "--discovery-provider",
            "file",
            "needs --discovery-file FILE, the JSON manifest of the workers",
        )),
        (_, Some(path)) => Err(invalid(
            "--discovery-file",
            path.display(),
            "is read with --discovery-provider file",
        )),
        (_, None) => Ok(None),
    }
}
