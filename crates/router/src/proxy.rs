//! The request path: read the body within the limit, peek, find the workers serving the
//! model, let the policy pick, forward, and stream the answer back through a [`TrackedBody`].
//!
//! A worker that refuses the connection was sent nothing, so the request moves on to another
//! candidate and the worker leaves rotation until its next good health probe. Anything that
//! fails after the request was sent is answered to the client, never retried here.

pub mod headers;
pub mod peek;
mod tracked;
mod usage;

use std::error::Error as _;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

pub use tracked::TrackedBody;

use crate::error::ApiError;
use crate::fleet::Worker;
use crate::policy::RouteRequest;
use crate::server::App;
use crate::upstream::UpstreamBody;

/// Forward one inference request. The response always carries `x-request-id`.
pub async fn forward(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let request_id = headers::request_id(&parts.headers, &app.config.request_id_headers);
    let mut response = match route(&app, parts, body, &request_id).await {
        Ok(response) => response,
        Err(error) => {
            tracing::info!(request_id = ?request_id, status = error.status().as_u16(), %error, "request refused");
            error.into_response()
        }
    };
    response
        .headers_mut()
        .insert(headers::X_REQUEST_ID.clone(), request_id);
    response
}

async fn route(
    app: &App,
    parts: Parts,
    body: Body,
    request_id: &HeaderValue,
) -> Result<Response, ApiError> {
    let body = read_body(&parts.headers, body, app.config.max_payload_size.get()).await?;
    let want_prompt = app.policy.wants_prompt();
    let peeked = peek::peek(parts.headers.get(header::CONTENT_TYPE), &body, want_prompt).await?;
    let model = peeked.model.as_deref();
    let mut candidates = candidates(app, model)?;
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let id = request_id.to_str().unwrap_or_default();
    let route_req = route_request(app, parts.uri.path(), &parts.headers, &body, &peeked, id);
    let to_worker = headers::to_worker(&parts.headers, request_id);

    loop {
        let no_worker = || ApiError::NoWorker {
            model: model.map(str::to_owned),
        };
        let decision = app
            .policy
            .pick(&route_req, &candidates)
            .ok_or_else(no_worker)?;
        let worker = candidates.swap_remove(decision.index);
        app.metrics.decided(app.policy.name(), decision.reason);
        tracing::debug!(
            request_id = route_req.request_id,
            worker = worker.url(),
            reason = decision.reason,
            "routed"
        );

        let uri = worker
            .uri_for(path_and_query)
            .map_err(|e| ApiError::Internal(format!("upstream URI: {e}")))?;
        let mut upstream_req = http::Request::new(UpstreamBody::new(body.clone()));
        *upstream_req.method_mut() = parts.method.clone();
        *upstream_req.uri_mut() = uri;
        *upstream_req.headers_mut() = to_worker.clone();

        let guard = worker.begin();
        let sent =
            tokio::time::timeout(app.config.request_timeout, app.upstream.send(upstream_req)).await;
        match sent {
            Ok(Ok(response)) => {
                let (mut head, upstream_body) = response.into_parts();
                headers::strip_hop_by_hop(&mut head.headers);
                head.headers.insert(
                    headers::X_VLLM_ROUTER_WORKER.clone(),
                    worker.header_value().clone(),
                );
                let usage = decision
                    .predicted_hit
                    .map(|p| usage::UsageWatch::new(p, Arc::clone(&app.metrics)));
                let body = Body::new(TrackedBody::new(upstream_body, guard).watching(usage));
                return Ok(Response::from_parts(head, body));
            }
            Ok(Err(error)) if error.is_connect() => {
                if worker.set_healthy(false) {
                    tracing::warn!(worker = worker.url(), error = %cause(&error), "worker unreachable; out of rotation until its next good probe");
                }
                continue;
            }
            Ok(Err(error)) => {
                return Err(ApiError::BadGateway {
                    worker: worker.url().to_owned(),
                    reason: cause(&error),
                });
            }
            Err(_) => {
                return Err(ApiError::GatewayTimeout {
                    worker: worker.url().to_owned(),
                    after: app.config.request_timeout,
                });
            }
        }
    }
}

/// The healthy workers serving `model`: 404 when no worker serves it, an empty list (so a
/// 503) while no worker has listed its models yet.
pub(crate) fn candidates(app: &App, model: Option<&str>) -> Result<Vec<Arc<Worker>>, ApiError> {
    let snapshot = app.fleet.snapshot();
    let serving = match snapshot.serving(model) {
        Some(serving) => serving,
        None if snapshot.serving(None).is_some_and(<[_]>::is_empty) => &[],
        None => {
            return Err(ApiError::UnknownModel {
                model: model.unwrap_or_default().to_owned(),
                served: snapshot
                    .model_names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            });
        }
    };
    Ok(serving.iter().filter(|w| w.is_healthy()).cloned().collect())
}

/// What the policy sees of a peeked request.
pub(crate) fn route_request<'a>(
    app: &App,
    path: &'a str,
    headers: &'a HeaderMap,
    body: &'a [u8],
    peeked: &'a peek::Peeked<'_>,
    request_id: &'a str,
) -> RouteRequest<'a> {
    RouteRequest {
        path,
        model: peeked.model.as_deref(),
        headers,
        body,
        request_id,
        session_key: peek::session_key(headers, &app.config.session_key_headers, peeked),
        prompt: peeked.prompt.as_deref(),
    }
}

/// Read the whole body, refusing it as soon as it is known to exceed `limit`: from
/// `Content-Length` before reading, else when the bytes read cross the limit.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ApiError::PayloadTooLarge { limit }),
        Err(e) => Err(ApiError::bad_request(
            format!("could not read the request body: {e}"),
            None,
        )),
    }
}

/// The innermost cause of an upstream error, which names what actually failed.
fn cause(error: &hyper_util::client::legacy::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text = inner.to_string();
        source = inner.source();
    }
    text
}
