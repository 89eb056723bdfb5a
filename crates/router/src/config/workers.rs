//! Workers as configured: their URLs, roles, data-parallel ranks and capacities.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use http::uri::{Authority, Scheme, Uri};

use super::{ConfigError, invalid};

/// The parsed base URL of one worker: scheme and authority plus an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerUrl {
    /// Canonical text, `http://host:port` with any path prefix and no trailing slash.
    pub text: String,
    /// Scheme (only `http` is served).
    pub scheme: Scheme,
    /// Host and port.
    pub authority: Authority,
    /// Path prefix put before every forwarded path, without a trailing slash ("" for none).
    pub prefix: String,
}

impl WorkerUrl {
    /// Parse a worker URL given under `flag`.
    pub fn parse(flag: &'static str, raw: &str) -> Result<Self, ConfigError> {
        let trimmed = raw.trim();
        let uri: Uri = trimmed
            .parse()
            .map_err(|e| invalid(flag, raw, format_args!("not a URL ({e})")))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| invalid(flag, raw, "the URL needs a scheme, as in http://host:8000"))?;
        if scheme.as_str().eq_ignore_ascii_case("grpc") {
            return Err(invalid(
                flag,
                raw,
                "grpc:// workers (vLLM's gRPC Inference API) are not supported: give the \
                 worker's HTTP address (vllm serve's --port)",
            ));
        }
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(invalid(flag, raw, "a worker URL is http:// or https://"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| invalid(flag, raw, "the URL needs a host"))?;
        if let Some((_, host)) = authority.as_str().rsplit_once('@') {
            // Shown without the credentials: the URL is logged, labelled and listed everywhere.
            return Err(invalid(
                flag,
                format_args!("{scheme}://***@{host}"),
                "credentials in a worker URL are not supported (--api-key sets the key sent to workers)",
            ));
        }
        if uri.query().is_some() {
            return Err(invalid(flag, raw, "a worker URL cannot carry a query"));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let text = format!("{scheme}://{authority}{prefix}");
        Ok(Self {
            text,
            scheme,
            authority,
            prefix,
        })
    }
}

/// The part a worker plays; serialized as its [`Role::name`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Serves whole requests.
    #[default]
    Regular,
    /// Computes prompts for decode workers (P/D).
    Prefill,
    /// Generates from prompts a prefill worker computed (P/D).
    Decode,
}

impl Role {
    /// `regular`, `prefill` or `decode`: the label in logs, metrics and info routes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Regular => "regular",
            Self::Prefill => "prefill",
            Self::Decode => "decode",
        }
    }
}

/// Where a worker came from: a configuration reload only adds and removes workers it
/// configured, never those an operator or a discovery mechanism added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Origin {
    /// Flags, environment or the config file.
    #[default]
    Config,
    /// The admin API.
    Admin,
    /// vLLM's P2P NCCL registration over ZMQ.
    Zmq,
    /// A Kubernetes pod.
    Kubernetes,
    /// The workers' manifest of `--discovery-provider file`.
    Manifest,
}

impl Origin {
    /// `config`, `admin`, `zmq`, `kubernetes` or `manifest`: the name in listings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Admin => "admin",
            Self::Zmq => "zmq",
            Self::Kubernetes => "kubernetes",
            Self::Manifest => "manifest",
        }
    }
}

/// A worker as configured: where it is, the part it plays and, when known, how many requests
/// it serves at once (the TOML router's `max_concurrent_requests`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpec {
    /// Its base URL.
    pub url: WorkerUrl,
    /// Requests it serves at once, when known.
    pub capacity: Option<NonZeroU32>,
    /// Regular, prefill or decode.
    pub role: Role,
    /// Data-parallel ranks behind the URL (1: no rank header is sent).
    pub ranks: NonZeroU32,
    /// A prefill worker's Mooncake bootstrap port, when given.
    pub bootstrap_port: Option<u16>,
    /// The engine's ZMQ address (`host:port`), for workers registered by P2P NCCL discovery.
    pub zmq_address: Option<String>,
    /// Where it came from.
    pub origin: Origin,
    /// Its share of requests relative to other workers under `round_robin` and `random`.
    pub weight: NonZeroU32,
    /// The models routed to it, when restricted (of those it lists); `None` for all it lists.
    pub models: Option<Vec<String>>,
    /// Free-form labels, shown by the admin API.
    pub labels: BTreeMap<String, String>,
}

impl From<WorkerUrl> for WorkerSpec {
    fn from(url: WorkerUrl) -> Self {
        Self {
            url,
            capacity: None,
            role: Role::Regular,
            ranks: NonZeroU32::MIN,
            bootstrap_port: None,
            zmq_address: None,
            origin: Origin::Config,
            weight: NonZeroU32::MIN,
            models: None,
            labels: BTreeMap::new(),
        }
    }
}

impl WorkerSpec {
    /// A worker at `url` playing `role`, one rank, nothing else known.
    pub fn with_role(url: WorkerUrl, role: Role) -> Self {
        Self {
            role,
            ..Self::from(url)
        }
    }
}

/// Attach `URL=N` capacities to the listed workers.
pub(super) fn with_capacities(
    urls: Vec<WorkerUrl>,
    raw: &[String],
) -> Result<Vec<WorkerSpec>, ConfigError> {
    const FLAG: &str = "--worker-capacity";
    let mut specs: Vec<WorkerSpec> = urls.into_iter().map(WorkerSpec::from).collect();
    for entry in raw {
        let (url, n) = entry
            .rsplit_once('=')
            .ok_or_else(|| invalid(FLAG, entry, "expected URL=N, as in http://gpu1:8000=8"))?;
        let url = WorkerUrl::parse(FLAG, url)?;
        let n: NonZeroU32 = n
            .trim()
            .parse()
            .map_err(|_| invalid(FLAG, entry, "N must be a whole number of at least 1"))?;
        let spec = specs
            .iter_mut()
            .find(|s| s.url == url)
            .ok_or_else(|| invalid(FLAG, entry, "the URL is not among --worker-urls"))?;
        spec.capacity = Some(n);
    }
    Ok(specs)
}
