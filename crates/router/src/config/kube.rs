//! Kubernetes service discovery settings: which pods are workers, in which namespace, on
//! which port, and in which P/D role.

use std::num::NonZeroU32;

use super::{ConfigError, invalid};
use crate::cli::RouterArgs;

/// A label selector: every `key=value` pair must match. Sent to the API server as is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector(pub Vec<(String, String)>);

impl Selector {
    fn parse(flag: &'static str, raw: &[String]) -> Result<Self, ConfigError> {
        let mut pairs = Vec::with_capacity(raw.len());
        for entry in raw.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let (key, value) = entry
                .split_once('=')
                .ok_or_else(|| invalid(flag, entry, "expected key=value, as in app=vllm"))?;
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() || !key.chars().all(label_char) || !value.chars().all(label_char) {
                return Err(invalid(flag, entry, "not a valid label key=value"));
            }
            pairs.push((key.to_owned(), value.to_owned()));
        }
        Ok(Self(pairs))
    }

    /// Whether no pair is given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `labelSelector` query value: `k1=v1,k2=v2`.
    pub fn to_query(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

/// Where and how worker pods are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDiscoveryConfig {
    /// Pods of regular workers (empty in P/D mode when only role selectors are given).
    pub selector: Selector,
    /// Pods of prefill workers (P/D mode).
    pub prefill_selector: Selector,
    /// Pods of decode workers (P/D mode).
    pub decode_selector: Selector,
    /// Namespace watched, or `None` for the client's default namespace.
    pub namespace: Option<String>,
    /// vLLM's HTTP port on each pod.
    pub port: u16,
    /// The annotation naming a prefill pod's bootstrap port.
    pub bootstrap_port_annotation: String,
    /// Data-parallel ranks behind each pod (`--intra-node-data-parallel-size`).
    pub ranks: NonZeroU32,
}

/// The discovery settings, when `--service-discovery` is on; each pod stands for `ranks`.
pub(super) fn service_discovery(
    args: &RouterArgs,
    ranks: NonZeroU32,
) -> Result<Option<ServiceDiscoveryConfig>, ConfigError> {
    let selector = Selector::parse("--selector", &args.selector)?;
    let prefill_selector = Selector::parse("--prefill-selector", &args.prefill_selector)?;
    let decode_selector = Selector::parse("--decode-selector", &args.decode_selector)?;
    // SGLang's gateway's `--discovery-provider kubernetes` is the same.
    let asked = args.service_discovery
        || args.discovery.discovery_provider == Some(crate::cli::DiscoveryProvider::Kubernetes);
    if !asked {
        return Ok(None);
    }
    let pd = args.vllm_pd_disaggregation;
    if !pd && selector.is_empty() {
        return Err(invalid(
            "--selector",
            "",
            "--service-discovery needs a --selector (k=v) naming the worker pods",
        ));
    }
    if pd && (prefill_selector.is_empty() || decode_selector.is_empty()) && selector.is_empty() {
        return Err(invalid(
            "--prefill-selector",
            "",
            "--service-discovery in P/D mode needs --prefill-selector and --decode-selector",
        ));
    }
    let role_selectors = !prefill_selector.is_empty() || !decode_selector.is_empty();
    if !pd && role_selectors {
        return Err(invalid(
            "--prefill-selector",
            prefill_selector.to_query() + &decode_selector.to_query(),
            "role selectors need --vllm-pd-disaggregation",
        ));
    }
    if args.service_discovery_port == 0 {
        return Err(invalid(
            "--service-discovery-port",
            0,
            "must be a port number",
        ));
    }
    Ok(Some(ServiceDiscoveryConfig {
        selector,
        prefill_selector,
        decode_selector,
        namespace: args
            .service_discovery_namespace
            .clone()
            .filter(|n| !n.trim().is_empty()),
        port: args.service_discovery_port,
        bootstrap_port_annotation: args.bootstrap_port_annotation.clone(),
        ranks,
    }))
}
