//! The admin API, on the client port or on its own (`--admin-port`): list, add, drain and
//! remove workers.
//!
//! - `GET /workers`, `GET /workers/{id}`: the fleet, one entry per worker URL;
//! - `POST /workers`: add a worker (body: `url`, and optionally `role`, `capacity`, `weight`,
//!   `models`, `labels`, `bootstrap_port`, `ranks`, as in the config file's `[[workers]]`);
//! - `DELETE /workers/{id}`: remove it; its in-flight requests finish;
//! - `POST /workers/{id}/drain[?timeout_secs=N]`: no new requests; answers once its in-flight
//!   requests finished (or the timeout passed); `POST /workers/{id}/resume` undoes it;
//! - vllm-project/router's `POST /add_worker?url=`, `POST /remove_worker?url=`,
//!   `GET /list_workers`.
//!
//! `{id}` is the worker's id from the listing or its URL (percent-encoded). With
//! `--admin-api-key`, every admin route needs `Authorization: Bearer KEY`; without it, only
//! clients on loopback may call them, and none with `--admin-deny-loopback`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::App;
use crate::auth::{bearer, same};
use crate::config::{Origin, Role, WorkerUrl, worker_from_json};
use crate::error::ApiError;
use crate::fleet::{self, FleetEvent, Member};

/// Longest drain wait a client may ask for.
const MAX_DRAIN_WAIT: Duration = Duration::from_secs(3600);
/// How often a drain looks at the in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Let an admin request through: the admin key when one is set, else a loopback client
/// (unless `--admin-deny-loopback`).
pub async fn guard(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = match &app.config().admin_api_key {
        Some(key) => match bearer(request.headers()) {
            Some(given) if same(given.as_bytes(), key.expose().as_bytes()) => Ok(()),
            Some(_) => Err(ApiError::Unauthorized("invalid admin API key")),
            None => Err(ApiError::Unauthorized(
                "the admin API needs 'Authorization: Bearer <admin API key>'",
            )),
        },
        None if app.config().admin.loopback && peer.ip().is_loopback() => Ok(()),
        None if app.config().admin.loopback => Err(ApiError::Forbidden(
            "the admin API is open to loopback clients only; set --admin-api-key to call it from elsewhere",
        )),
        None => Err(ApiError::Forbidden(
            "the admin API needs --admin-api-key: loopback clients are refused (--admin-deny-loopback)",
        )),
    };
    match allowed {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// One entry per server (its ranks together).
fn describe(ranks: &[Member]) -> serde_json::Value {
    let w = &ranks[0].worker;
    let spec = w.spec();
    json!({
        "id": w.server_id(),
        "url": w.url(),
        "role": w.role().name(),
        "origin": spec.origin.name(),
        "healthy": w.is_healthy(),
        "draining": w.is_draining(),
        "in_flight": ranks.iter().map(|m| m.worker.in_flight()).sum::<usize>(),
        "requests_total": ranks.iter().map(|m| m.worker.served()).sum::<u64>(),
        "ranks": spec.ranks.get(),
        "capacity": spec.capacity,
        "weight": spec.weight.get(),
        "models": ranks[0].model_names(),
        "models_configured": spec.models,
        "labels": spec.labels,
        "bootstrap_port": spec.bootstrap_port,
        // vllm-project/router's names for the same facts.
        "model_id": ranks[0].model_names().first().copied().unwrap_or("unknown"),
        "worker_type": w.role().name(),
        "is_healthy": w.is_healthy(),
        "load": ranks.iter().map(|m| m.worker.in_flight()).sum::<usize>(),
        "connection_mode": "Http",
    })
}

/// The ranks of the worker named by `id` (its id or URL).
fn find(app: &App, id: &str) -> Result<Vec<Member>, ApiError> {
    let snapshot = app.fleet.snapshot();
    let by_url = WorkerUrl::parse("", id)
        .ok()
        .and_then(|u| snapshot.server(&u.text));
    by_url
        .or_else(|| snapshot.servers().find(|r| r[0].worker.server_id() == id))
        .map(<[Member]>::to_vec)
        .ok_or_else(|| ApiError::UnknownWorker(id.to_owned()))
}

/// `GET /workers`.
pub async fn list(State(app): State<Arc<App>>) -> Response {
    let snapshot = app.fleet.snapshot();
    let workers: Vec<serde_json::Value> = snapshot.servers().map(describe).collect();
    let count = |role: Role| {
        snapshot
            .servers()
            .filter(|r| r[0].worker.role() == role)
            .count()
    };
    Json(json!({
        "total": workers.len(),
        "workers": workers,
        "stats": {
            "prefill_count": count(Role::Prefill),
            "decode_count": count(Role::Decode),
            "regular_count": count(Role::Regular),
        },
    }))
    .into_response()
}

/// `GET /workers/{id}`.
pub async fn get_one(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match find(&app, &id) {
        Ok(ranks) => Json(describe(&ranks)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /workers`: add a worker from a JSON body.
pub async fn add(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return ApiError::bad_request(format!("the body is not JSON: {e}"), None)
                .into_response();
        }
    };
    match add_value(&app, value).await {
        Ok(entry) => (StatusCode::CREATED, Json(entry)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn add_value(
    app: &Arc<App>,
    value: serde_json::Value,
) -> Result<serde_json::Value, ApiError> {
    let config = app.config().clone();
    let spec = match worker_from_json(
        value,
        config.data_parallel_size,
        config.pd.is_some(),
        "the request body",
    ) {
        Ok(spec) => spec,
        Err(e) => return Err(ApiError::bad_request(e.to_string(), None)),
    };
    let url = spec.url.text.clone();
    if find(app, &url).is_ok() {
        return Err(ApiError::Conflict(format!(
            "worker {url} is already in the fleet"
        )));
    }
    let spec = crate::config::WorkerSpec {
        origin: Origin::Admin,
        ..spec
    };
    app.fleet.apply(FleetEvent::Add(spec)).await;
    fleet::admit_url(&app.fleet, &app.upstream, &url, config.health.timeout).await;
    tracing::info!(worker = %url, "worker added through the admin API");
    // Removed again between the two calls: an error.
    find(app, &url).map(|ranks| describe(&ranks))
}

/// `DELETE /workers/{id}`: remove the worker; its in-flight requests finish.
pub async fn remove(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    remove_id(&app, &id).await
}

async fn remove_id(app: &App, id: &str) -> Response {
    let ranks = match find(app, id) {
        Ok(ranks) => ranks,
        Err(e) => return e.into_response(),
    };
    let url = ranks[0].worker.url().to_owned();
    app.fleet.apply(FleetEvent::Remove(url.clone())).await;
    tracing::info!(worker = %url, "worker removed through the admin API");
    let mut entry = describe(&ranks);
    entry["removed"] = json!(true);
    Json(entry).into_response()
}

/// Query of a drain.
#[derive(Debug, Deserialize)]
pub struct DrainQuery {
    timeout_secs: Option<f64>,
}

/// `POST /workers/{id}/drain`: no new requests; wait for the in-flight ones.
pub async fn drain(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(query): Query<DrainQuery>,
) -> Response {
    let ranks = match find(&app, &id) {
        Ok(ranks) => ranks,
        Err(e) => return e.into_response(),
    };
    let wait = match query.timeout_secs {
        None => app.config().listener.shutdown_timeout,
        Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s).min(MAX_DRAIN_WAIT),
        Some(s) => {
            return ApiError::bad_request(
                format!("timeout_secs must be 0 or more, not {s}"),
                Some("timeout_secs"),
            )
            .into_response();
        }
    };
    let url = ranks[0].worker.url().to_owned();
    if !ranks[0].worker.set_draining(true) {
        tracing::info!(worker = %url, "worker draining");
    }
    let in_flight = || ranks.iter().map(|m| m.worker.in_flight()).sum::<usize>();
    let deadline = tokio::time::Instant::now() + wait;
    while in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let left = in_flight();
    let mut entry = describe(&ranks);
    entry["drained"] = json!(left == 0);
    Json(entry).into_response()
}

/// `POST /workers/{id}/resume`: end a drain.
pub async fn resume(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match find(&app, &id) {
        Ok(ranks) => {
            if ranks[0].worker.set_draining(false) {
                tracing::info!(worker = ranks[0].worker.url(), "worker resumed");
            }
            Json(describe(&ranks)).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Query of the legacy routes.
#[derive(Debug, Deserialize)]
pub struct UrlQuery {
    url: Option<String>,
}

fn url_param(query: UrlQuery) -> Result<String, ApiError> {
    query
        .url
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("the 'url' query parameter is required", Some("url")))
}

/// vllm-project/router's `POST /add_worker?url=`, with its statuses: 200 when added, 400 when
/// the worker is already in the fleet (`POST /workers` answers 201 and 409).
pub async fn add_worker(State(app): State<Arc<App>>, Query(query): Query<UrlQuery>) -> Response {
    let url = match url_param(query) {
        Ok(url) => url,
        Err(e) => return e.into_response(),
    };
    match add_value(&app, json!({ "url": url })).await {
        Ok(entry) => Json(entry).into_response(),
        Err(ApiError::Conflict(message)) => {
            ApiError::bad_request(message, Some("url")).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// vllm-project/router's `POST /remove_worker?url=`.
pub async fn remove_worker(State(app): State<Arc<App>>, Query(query): Query<UrlQuery>) -> Response {
    match url_param(query) {
        Ok(url) => remove_id(&app, &url).await,
        Err(e) => e.into_response(),
    }
}

/// vllm-project/router's `GET /list_workers`: `{"urls": [...]}`.
pub async fn list_workers(State(app): State<Arc<App>>) -> Response {
    let snapshot = app.fleet.snapshot();
    let urls: Vec<&str> = snapshot.servers().map(|r| r[0].worker.url()).collect();
    Json(json!({ "urls": urls })).into_response()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use http::Request;
    use tower_service::Service;

    use super::*;
    use crate::config::Config;

    async fn status_from(peer: &str, key: Option<&str>, auth: Option<&str>) -> StatusCode {
        let mut config = Config::with_workers(Vec::<String>::new()).unwrap();
        config.admin_api_key = key.map(crate::config::Secret::new);
        let app = App::start(config).await.unwrap();
        let mut routes = super::super::routes(app);
        let mut request = Request::get("/workers");
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let mut request = request.body(Body::empty()).unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        routes.call(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn without_a_key_only_loopback_clients_get_in() {
        assert_eq!(
            status_from("127.0.0.1:5000", None, None).await,
            StatusCode::OK
        );
        assert_eq!(status_from("[::1]:5000", None, None).await, StatusCode::OK);
        assert_eq!(
            status_from("10.1.2.3:5000", None, None).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status_from("10.1.2.3:5000", None, Some("Bearer anything")).await,
            StatusCode::FORBIDDEN
        );
    }

    #[tokio::test]
    async fn with_a_key_the_key_decides_wherever_the_client_is() {
        let key = Some("k3y");
        let right = Some("Bearer k3y");
        assert_eq!(
            status_from("10.1.2.3:5000", key, right).await,
            StatusCode::OK
        );
        assert_eq!(
            status_from("127.0.0.1:5000", key, None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status_from("10.1.2.3:5000", key, Some("Bearer k3")).await,
            StatusCode::UNAUTHORIZED
        );
    }
}
