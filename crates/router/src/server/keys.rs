//! The client routes' guard: a request passes when its key is accepted ([`crate::auth`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;

use crate::app::{App, inference_route};
use crate::proxy::headers;
use crate::telemetry::exchange::Exchange;
use crate::telemetry::trace::TraceContext;

/// Let a request to a client route through when its key is accepted (or none is required).
/// A refusal carries the request id; on an inference route it is recorded like any refused
/// request (access line and request metrics).
pub async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    match refusal(&app, request.headers(), request.uri().path()).await {
        None => next.run(request).await,
        Some(refused) => refused,
    }
}

/// The answer refusing a request to the client route `path` with these headers, or `None`
/// when its key is accepted (or none is required).
pub(super) async fn refusal(app: &App, headers: &HeaderMap, path: &str) -> Option<Response> {
    let config = app.live_config().load_full();
    let error = app.auth.check(&config, headers).await.err()?;
    let request_id = headers::request_id(headers, &config.request_id_headers);
    match inference_route(path) {
        Some(route) => {
            let mut exchange = Exchange::begin(
                Arc::clone(&app.metrics),
                "POST",
                route,
                request_id.clone(),
                TraceContext::from_headers(headers).trace_id(),
            );
            exchange.refused(error.status().as_u16(), error.to_string());
        }
        None => tracing::debug!(
            request_id = ?request_id,
            path,
            status = error.status().as_u16(),
            "client request refused: {error}"
        ),
    }
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(headers::X_REQUEST_ID.clone(), request_id);
    Some(response)
}
