use std::time::Duration;

/// How a simulated server takes part in prefill/decode disaggregation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Serves whole requests; also answers the prefill leg of a P/D pair.
    #[default]
    Mixed,
    /// A prefill worker: answers `do_remote_decode` legs with filled-in `kv_transfer_params`
    /// and serves Mooncake's bootstrap `GET /query`.
    Prefill,
    /// A decode worker: skips prefill cost for requests carrying `do_remote_prefill: true`.
    Decode,
}

/// The most data-parallel ranks one simulated server runs.
pub const MAX_DATA_PARALLEL_SIZE: usize = 1024;

/// Everything that shapes one simulated server. `Default` is fast: no delays, no faults.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Served model names; the first is the root model and labels `/metrics`.
    pub models: Vec<String>,
    /// Part played in prefill/decode disaggregation.
    pub role: Role,
    /// Engine id of rank 0, handed out as `remote_engine_id` in `kv_transfer_params` and listed
    /// by the Mooncake bootstrap `/query`; rank `r > 0` is `{engine_id}_dp{r}`, as in vLLM.
    pub engine_id: String,
    /// Data-parallel ranks behind the one port, each its own engine with its own batch, queue,
    /// prefix cache and counters (`vllm serve --data-parallel-size`).
    pub data_parallel_size: usize,
    /// Fixed overhead each request waits before joining its engine's batch; it holds no step.
    pub ttft: Duration,
    /// Prefill cost per prompt token not served from the prefix cache, added to the step that
    /// computes it.
    pub prefill_per_token: Duration,
    /// Duration of a step in which one sequence decodes (inter-token latency of a lone
    /// sequence).
    pub itl: Duration,
    /// A step's decode time is `itl * (1 + itl_batch_factor * (decoding - 1))` with `decoding`
    /// sequences decoding in it.
    pub itl_batch_factor: f64,
    /// Token budget of one engine step, shared by the batch as in vLLM's chunked prefill
    /// (`--max-num-batched-tokens`): each decoding sequence takes one token, prefills take
    /// chunks of the rest, oldest first.
    pub max_num_batched_tokens: usize,
    /// Output tokens when the request sets neither `max_tokens` nor `max_completion_tokens`.
    pub default_max_tokens: u32,
    /// Prefix-cache block size in tokens.
    pub block_size: usize,
    /// Prefix-cache capacity in blocks, per rank; the least recently used block is evicted first.
    pub num_blocks: usize,
    /// Bound on each rank's running batch; further requests wait in a FIFO queue.
    pub max_num_seqs: usize,
    /// Longest prompt accepted, in tokens.
    pub max_model_len: u32,
    /// Fraction (0..=1) of inference requests answered with a 500.
    pub error_rate: f64,
    /// Accept inference requests and hold them unanswered while this is on; see
    /// [`crate::SimServer::set_hang`].
    pub hang: bool,
    /// The server dies (listener and connections closed) on receiving this many inference requests.
    pub exit_after: Option<u64>,
    /// vLLM's `--api-key`: routes under `/v1` answer 401 without `Authorization: Bearer KEY`;
    /// the others (`/health`, `/metrics`, `/tokenize`, ...) stay open, as in vLLM.
    pub api_key: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            models: vec!["sim-model".to_owned()],
            role: Role::Mixed,
            engine_id: uuid::Uuid::new_v4().to_string(),
            data_parallel_size: 1,
            ttft: Duration::ZERO,
            prefill_per_token: Duration::ZERO,
            itl: Duration::ZERO,
            itl_batch_factor: 0.0,
            max_num_batched_tokens: 2048,
            default_max_tokens: 16,
            block_size: 16,
            num_blocks: 4096,
            max_num_seqs: 256,
            max_model_len: 32768,
            error_rate: 0.0,
            hang: false,
            exit_after: None,
            api_key: None,
        }
    }
}

/// A `SimConfig` field holding a value the simulator cannot run with.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// No served model name was given.
    #[error("models: at least one served model name is required")]
    NoModels,
    /// A count that must be positive is zero.
    #[error("{field}: must be at least 1")]
    Zero {
        /// The offending field.
        field: &'static str,
    },
    /// A fraction or factor outside its range.
    #[error("{field}: {value} is out of range ({range})")]
    OutOfRange {
        /// The offending field.
        field: &'static str,
        /// The rejected value.
        value: f64,
        /// The accepted range, for the message.
        range: &'static str,
    },
}

impl SimConfig {
    /// Checks that the config can be served; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.models.is_empty() {
            return Err(ConfigError::NoModels);
        }
        let positive = [
            ("block_size", self.block_size),
            ("max_num_seqs", self.max_num_seqs),
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("max_model_len", self.max_model_len as usize),
            ("data_parallel_size", self.data_parallel_size),
        ];
        if let Some((field, _)) = positive.into_iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Zero { field });
        }
        if self.data_parallel_size > MAX_DATA_PARALLEL_SIZE {
            return Err(ConfigError::OutOfRange {
                field: "data_parallel_size",
                value: self.data_parallel_size as f64,
                range: "1..=1024",
            });
        }
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(ConfigError::OutOfRange {
                field: "error_rate",
                value: self.error_rate,
                range: "0..=1",
            });
        }
        if !(self.itl_batch_factor >= 0.0 && self.itl_batch_factor.is_finite()) {
            return Err(ConfigError::OutOfRange {
                field: "itl_batch_factor",
                value: self.itl_batch_factor,
                range: ">= 0",
            });
        }
        Ok(())
    }

    /// The root model: the first served name.
    pub(crate) fn root_model(&self) -> &str {
        self.models.first().map_or("sim-model", String::as_str)
    }

    /// The engine id of data-parallel rank `rank`: rank 0 keeps `engine_id`, like a server
    /// without data parallelism; later ranks get vLLM's `_dp{rank}` suffix.
    pub fn rank_engine_id(&self, rank: u32) -> String {
        if rank == 0 {
            self.engine_id.clone()
        } else {
            format!("{}_dp{rank}", self.engine_id)
        }
    }

    /// The served name matching `requested`, or the root model when none was requested.
    pub(crate) fn resolve_model<'a>(&'a self, requested: Option<&str>) -> Option<&'a str> {
        match requested {
            None => Some(self.root_model()),
            Some(name) => self
                .models
                .iter()
                .find(|m| m.as_str() == name)
                .map(String::as_str),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(SimConfig::default().validate(), Ok(()));
    }

    #[test]
    fn errors_name_the_field() {
        let cfg = SimConfig {
            error_rate: 1.5,
            ..SimConfig::default()
        };
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(msg.starts_with("error_rate"), "{msg}");
        let cfg = SimConfig {
            block_size: 0,
            ..SimConfig::default()
        };
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::Zero {
                field: "block_size"
            })
        );
        let cfg = SimConfig {
            max_num_batched_tokens: 0,
            ..SimConfig::default()
        };
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::Zero {
                field: "max_num_batched_tokens"
            })
        );
    }

    #[test]
    fn data_parallel_size_is_bounded_and_names_ranks() {
        for (size, ok) in [(0, false), (1, true), (MAX_DATA_PARALLEL_SIZE, true)] {
            let cfg = SimConfig {
                data_parallel_size: size,
                ..SimConfig::default()
            };
            assert_eq!(cfg.validate().is_ok(), ok, "size {size}");
        }
        let cfg = SimConfig {
            data_parallel_size: MAX_DATA_PARALLEL_SIZE + 1,
            engine_id: "e".into(),
            ..SimConfig::default()
        };
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(msg.starts_with("data_parallel_size"), "{msg}");
        assert_eq!(cfg.rank_engine_id(0), "e");
        assert_eq!(cfg.rank_engine_id(3), "e_dp3");
    }

    #[test]
    fn model_resolution() {
        let cfg = SimConfig {
            models: vec!["a".into(), "b".into()],
            ..SimConfig::default()
        };
        assert_eq!(cfg.resolve_model(None), Some("a"));
        assert_eq!(cfg.resolve_model(Some("b")), Some("b"));
        assert_eq!(cfg.resolve_model(Some("c")), None);
    }
}
