//! `GET /v1/models`: one entry per served name, all rooted at the first, then one per loaded
//! LoRA adapter, rooted at its path with the first model as parent (as vLLM lists them).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde_json::json;

use super::json_response;
use crate::state::Sim;

/// `GET /v1/models`.
pub(crate) async fn list(State(sim): State<Arc<Sim>>) -> Response {
    let root = sim.config.root_model();
    let mut data: Vec<_> = sim
        .config
        .models
        .iter()
        .map(|id| {
            json!({
                "id": id,
                "object": "model",
                "created": sim.started_secs,
                "owned_by": "vllm",
                "root": root,
                "parent": null,
                "max_model_len": sim.config.max_model_len,
            })
        })
        .collect();
    data.extend(sim.adapters.loras().into_iter().map(|lora| {
        json!({
            "id": lora.name,
            "object": "model",
            "created": sim.started_secs,
            "owned_by": "vllm",
            "root": lora.path,
            "parent": root,
            "max_model_len": null,
        })
    }));
    json_response(serde_json::to_vec(&json!({"object": "list", "data": data})).unwrap_or_default())
}
