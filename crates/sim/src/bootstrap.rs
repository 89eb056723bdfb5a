//! Mooncake's bootstrap server, as a prefill-role server answers it on its own port.
//!
//! vLLM's Mooncake connector runs one on each prefill instance; a proxy calls `GET /query` to
//! learn which engine serves each data-parallel rank before it names that engine in the decode
//! leg's `kv_transfer_params`. The answer maps engine id → rank → tensor-parallel rank →
//! pipeline-parallel rank → worker address: `{"ENGINE_ID": {"RANK": {"0": {"0": "host:port"}}}}`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::Role;
use crate::engine::Engine;
use crate::openai::json_response;
use crate::state::Sim;

/// `GET /query`: every rank's engine on a prefill-role server; a 404 on any other role, which
/// runs no bootstrap server.
pub(crate) async fn query(State(sim): State<Arc<Sim>>) -> Response {
    if sim.config.role != Role::Prefill {
        return crate::openai::not_found().await;
    }
    let answer = engines(sim.ranks.engines(), sim.advertised);
    json_response(serde_json::to_vec(&answer).unwrap_or_default())
}

/// One engine id per rank, each listing its rank with a single worker (one tensor-parallel and
/// one pipeline-parallel rank) at `addr`.
fn engines(engines: &[Arc<Engine>], addr: SocketAddr) -> Value {
    let worker = json!({"0": {"0": addr.to_string()}});
    let mut out = Map::new();
    for engine in engines {
        let mut ranks = Map::new();
        ranks.insert(engine.rank().to_string(), worker.clone());
        out.insert(engine.engine_id().to_owned(), Value::Object(ranks));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimConfig;
    use crate::ranks::Ranks;

    #[test]
    fn one_engine_per_rank() {
        let ranks = Ranks::new(&SimConfig {
            engine_id: "p".into(),
            data_parallel_size: 2,
            ..SimConfig::default()
        });
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            engines(ranks.engines(), addr),
            json!({
                "p": {"0": {"0": {"0": "127.0.0.1:9"}}},
                "p_dp1": {"1": {"0": {"0": "127.0.0.1:9"}}},
            })
        );
    }
}
