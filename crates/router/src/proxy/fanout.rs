//! Fleet-wide worker routes. vLLM's `/v1/load_lora_adapter`, `/v1/unload_lora_adapter`,
//! `/reset_prefix_cache`, `/reset_mm_cache`, `/sleep`, `/wake_up`, `/start_profile` and
//! `/stop_profile` change one engine; through the router they go
//! to every worker server (once per URL: data-parallel ranks share their server), and the
//! answers merge into one. vllm-project/router's `/flush_cache` is `/reset_prefix_cache` sent
//! this way. They are admin routes: they change every worker at once.
//!
//! The merged answer is the workers' own when all of them gave the same status (the first
//! worker's body); otherwise an error in the OpenAI shape whose message names each worker's
//! part, with the parts listed under `workers`. After a LoRA load or unload, every worker that
//! took it lists its models again, so the adapter is routable by name at once.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::future::join_all;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde_json::json;

use super::{headers, read_body, worker_request};
use crate::app::App;
use crate::config::Config;
use crate::error::ApiError;
use crate::fleet::{self, Worker};

/// The fleet-wide routes, with the worker path each is sent to.
pub const FANOUT_ROUTES: &[(&str, &str)] = &[
    ("/v1/load_lora_adapter", "/v1/load_lora_adapter"),
    ("/v1/unload_lora_adapter", "/v1/unload_lora_adapter"),
    ("/reset_prefix_cache", "/reset_prefix_cache"),
    ("/sleep", "/sleep"),
    ("/wake_up", "/wake_up"),
    ("/reset_mm_cache", "/reset_mm_cache"),
    ("/start_profile", "/start_profile"),
    ("/stop_profile", "/stop_profile"),
    ("/flush_cache", "/reset_prefix_cache"),
];

/// Largest answer read from one worker.
const MAX_ANSWER: usize = 1024 * 1024;

/// What one worker made of the request.
struct Part {
    worker: Arc<Worker>,
    answer: Result<(StatusCode, Option<HeaderValue>, Bytes), String>,
}

impl Part {
    fn status(&self) -> Option<StatusCode> {
        self.answer.as_ref().ok().map(|(status, ..)| *status)
    }
}

/// Send the request to every worker server and merge the answers.
pub async fn fan_out(State(app): State<Arc<App>>, request: Request) -> Response {
    let config = app.live_config().load_full();
    let request_id = headers::request_id(request.headers(), &config.request_id_headers);
    let mut response = match run(&app, &config, request, &request_id).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    response
        .headers_mut()
        .insert(headers::X_REQUEST_ID.clone(), request_id);
    response
}

async fn run(
    app: &App,
    config: &Config,
    request: Request,
    request_id: &HeaderValue,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let client_path = parts.uri.path();
    let target = FANOUT_ROUTES
        .iter()
        .find(|(route, _)| *route == client_path)
        .map_or(client_path, |(_, target)| *target);
    let path_and_query = match parts.uri.query() {
        Some(query) => format!("{target}?{query}"),
        None => target.to_owned(),
    };
    let body = read_body(
        &parts.headers,
        body,
        config.max_payload_size.get(),
        &config.body,
    )
    .await?;
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let mut to_worker = headers::to_worker(
        &parts.headers,
        request_id,
        peer,
        config.worker_api_key.as_ref(),
    );
    if config.worker_api_key.is_none() {
        // The client's Authorization was for the router's admin guard, not for workers.
        to_worker.remove(header::AUTHORIZATION);
    }
    let snapshot = app.fleet.snapshot();
    let workers: Vec<Arc<Worker>> = snapshot
        .servers()
        .map(|ranks| Arc::clone(&ranks[0].worker))
        .collect();
    if workers.is_empty() {
        return Err(ApiError::NoWorker { model: None });
    }
    let sends = workers.into_iter().map(|worker| {
        let request = worker_request(
            &worker,
            parts.method.clone(),
            &path_and_query,
            body.clone(),
            to_worker.clone(),
            config,
        );
        async move {
            let answer = match request {
                Ok(request) => send(app, config, request).await,
                Err(e) => Err(e.to_string()),
            };
            Part { worker, answer }
        }
    });
    let answers = join_all(sends).await;
    if target.ends_with("_lora_adapter") {
        // Adapters are served by name: each worker that took the change lists its models again.
        let refreshes = answers
            .iter()
            .filter(|part| part.status().is_some_and(|s| s.is_success()))
            .map(|part| {
                fleet::admit(
                    &app.fleet,
                    &app.upstream,
                    &part.worker,
                    config.health.timeout,
                )
            });
        join_all(refreshes).await;
    }
    merge(target, answers)
}

async fn send(
    app: &App,
    config: &Config,
    request: http::Request<crate::upstream::UpstreamBody>,
) -> Result<(StatusCode, Option<HeaderValue>, Bytes), String> {
    let exchange = async {
        let response = app
            .upstream
            .send(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?
            .to_bytes();
        Ok((status, content_type, body))
    };
    let limit = config.timeouts.first_byte;
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", limit.as_secs())))
}

/// One answer from many: the workers' own when they agree, else an error naming each part.
fn merge(target: &str, answers: Vec<Part>) -> Result<Response, ApiError> {
    let total = answers.len();
    let first = answers[0].status();
    if let Some(status) = first.filter(|s| answers.iter().all(|p| p.status() == Some(*s))) {
        let Some(Part {
            answer: Ok((_, content_type, body)),
            ..
        }) = answers.into_iter().next()
        else {
            unreachable!("the first part has a status");
        };
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        if let Some(content_type) = content_type {
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
        }
        response
            .headers_mut()
            .insert("x-vllm-router-workers", HeaderValue::from(total));
        return Ok(response);
    }
    let failed = answers
        .iter()
        .filter(|p| !p.status().is_some_and(|s| s.is_success()))
        .count();
    let status = if answers
        .iter()
        .any(|p| p.status().is_none_or(|s| s.is_server_error()))
    {
        StatusCode::BAD_GATEWAY
    } else {
        answers
            .iter()
            .filter_map(Part::status)
            .find(|s| !s.is_success())
            .unwrap_or(StatusCode::BAD_GATEWAY)
    };
    let described: Vec<String> = answers.iter().map(describe).collect();
    let error = ApiError::Fleetwide {
        status,
        message: format!(
            "{failed} of {total} workers did not take {target}: {}",
            described.join("; ")
        ),
    };
    let mut body: serde_json::Value =
        serde_json::from_slice(&error.to_json()).unwrap_or_else(|_| json!({}));
    body["workers"] = answers
        .iter()
        .map(|p| match &p.answer {
            Ok((status, _, body)) => json!({
                "worker": p.worker.url(),
                "status": status.as_u16(),
                "body": String::from_utf8_lossy(body),
            }),
            Err(reason) => json!({"worker": p.worker.url(), "status": null, "error": reason}),
        })
        .collect();
    let mut response = (status, serde_json::to_vec(&body).unwrap_or_default()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// `URL: STATUS text` of one part, its text cut short.
fn describe(part: &Part) -> String {
    let url = part.worker.url();
    match &part.answer {
        Ok((status, _, body)) => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(200).collect();
            format!("{url}: {} {}", status.as_u16(), text.trim())
        }
        Err(reason) => format!("{url}: {reason}"),
    }
}
