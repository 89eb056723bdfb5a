//! Prefill/decode disaggregation settings: the `--prefill`/`--decode` workers, the connector,
//! the policies of each role, conditional prefill and ZMQ discovery.

use std::num::NonZeroU32;
use std::time::Duration;

use super::bounds::secs_f64;
use super::{ConfigError, Role, WorkerSpec, WorkerUrl, invalid};
use crate::cli::{KvConnector, RouterArgs};
use crate::policy::PolicyKind;

/// Prefill/decode disaggregation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PdConfig {
    /// How the KV cache moves between static workers (discovered ones use P2P NCCL).
    pub connector: KvConnector,
    /// Policy choosing the prefill worker.
    pub prefill_policy: PolicyKind,
    /// Policy choosing the decode worker.
    pub decode_policy: PolicyKind,
    /// Skip the prefill leg when fewer prompt tokens than this are expected to be uncached on
    /// the chosen decode worker (0: always prefill).
    pub min_uncached_tokens: u32,
    /// When every prefill attempt failed, send the request to decode whole.
    pub recompute_on_prefill_failure: bool,
    /// The ZMQ ROUTER address of P2P NCCL discovery, when enabled.
    pub discovery: Option<DiscoveryConfig>,
}

/// Where vLLM instances register (P2P NCCL) and when a silent one is dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryConfig {
    /// `host:port` the ROUTER socket binds.
    pub address: String,
    /// Silence after which an instance is dropped.
    pub expiry: Duration,
    /// Data-parallel ranks behind each registered instance (`--intra-node-data-parallel-size`).
    pub ranks: NonZeroU32,
}

/// The P/D settings, adding the `--prefill` and `--decode` workers to `workers`.
pub(super) fn pd_config(
    args: &RouterArgs,
    workers: &mut Vec<WorkerSpec>,
    from_file: &[WorkerSpec],
    ranks: NonZeroU32,
    pods_discovered: bool,
) -> Result<Option<PdConfig>, ConfigError> {
    let enabled = args.vllm_pd_disaggregation || args.vllm_discovery_address.is_some();
    if !enabled {
        if let Some(first) = args.prefill.first() {
            return Err(invalid(
                "--prefill",
                first,
                "prefill workers need --vllm-pd-disaggregation",
            ));
        }
        if let Some(first) = args.decode.first() {
            return Err(invalid(
                "--decode",
                first,
                "decode workers need --vllm-pd-disaggregation",
            ));
        }
        return Ok(None);
    }
    let mut add = |flag: &'static str, raw: &str, role: Role, bootstrap_port| {
        let url = WorkerUrl::parse(flag, raw)?;
        if workers.iter().chain(from_file).any(|w| w.url == url) {
            return Err(invalid(flag, raw, "listed twice"));
        }
        workers.push(WorkerSpec {
            bootstrap_port,
            ..WorkerSpec::with_role(url, role)
        });
        Ok(())
    };
    // `--prefill URL [PORT]` may repeat; its values arrive in one list, where every URL
    // (it has a scheme) starts an entry and a port or `none` ends it.
    let mut entries: Vec<(&str, Option<&str>)> = Vec::new();
    for value in &args.prefill {
        match entries.last_mut() {
            Some((_, port @ None)) if !value.contains("://") => *port = Some(value),
            _ => entries.push((value, None)),
        }
    }
    for (url, port) in entries {
        let bootstrap_port = match port.map(str::trim) {
            None => None,
            Some(p) if p.eq_ignore_ascii_case("none") => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| {
                invalid(
                    "--prefill",
                    p,
                    "the bootstrap port must be a port number or 'none'",
                )
            })?),
        };
        add("--prefill", url, Role::Prefill, bootstrap_port)?;
    }
    for url in &args.decode {
        add("--decode", url, Role::Decode, None)?;
    }
    let discovery = match &args.vllm_discovery_address {
        Some(address) => {
            if !address.contains(':') {
                return Err(invalid(
                    "--vllm-discovery-address",
                    address,
                    "expected host:port",
                ));
            }
            Some(DiscoveryConfig {
                address: address.clone(),
                expiry: secs_f64(
                    "--vllm-discovery-expiry-secs",
                    args.vllm_discovery_expiry_secs,
                )?,
                ranks,
            })
        }
        None => None,
    };
    let has = |role| workers.iter().chain(from_file).any(|w| w.role == role);
    if discovery.is_none() && !pods_discovered && !(has(Role::Prefill) && has(Role::Decode)) {
        return Err(invalid(
            "--vllm-pd-disaggregation",
            "",
            "P/D mode needs at least one --prefill and one --decode worker, --vllm-discovery-address or --service-discovery",
        ));
    }
    Ok(Some(PdConfig {
        connector: args.kv_connector.unwrap_or(KvConnector::Nixl),
        prefill_policy: args
            .prefill_policy
            .or(args.policy)
            .unwrap_or(PolicyKind::CacheAware),
        decode_policy: args
            .decode_policy
            .or(args.policy)
            .unwrap_or(PolicyKind::CacheAware),
        min_uncached_tokens: args.pd_min_uncached_tokens,
        recompute_on_prefill_failure: args.pd_recompute_on_prefill_failure,
        discovery,
    }))
}
