//! What every request goes through before and after its route: counting, recording, failure
//! injection, and the tracker that tells completion from cancellation.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tower_service::Service;

use crate::DATA_PARALLEL_RANK_HEADER;
use crate::auth;
use crate::control::is_control_path;
use crate::inject::Verdict;
use crate::openai::Inbound;
use crate::openai::error::ApiError;
use crate::record::{TrackedBody, Tracker};
use crate::state::Sim;

/// Serves one request on behalf of a connection.
pub(crate) async fn handle(
    sim: Arc<Sim>,
    mut router: Router,
    req: Request<Incoming>,
) -> Result<Response, Infallible> {
    sim.recorder.count(req.uri().path());
    // Before anything else, as vLLM's middleware: a refused request is not recorded.
    if !auth::allowed(
        sim.config.api_key.as_deref(),
        req.method(),
        req.uri().path(),
        req.headers(),
    ) {
        return Ok(auth::unauthorized());
    }
    if is_control_path(req.uri().path()) {
        return router.call(req.map(Body::new)).await;
    }
    let received_at = Instant::now();
    let (parts, body) = req.into_parts();
    let record = sim.recorder.open(&parts, received_at);
    // From here on, dropping this future (the client left) marks the record cancelled.
    let tracker = Tracker::new(sim.clone(), record.clone());
    let request_id = parts.headers.get("x-request-id").cloned();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let resp = ApiError::bad_request("could not read the request body").into_response();
            return Ok(finish(resp, tracker, request_id));
        }
    };
    crate::record::set_body(&record, &body);
    let resp = match sim.faults.judge(&parts.headers) {
        Verdict::Serve => {
            let mut req = Request::from_parts(parts, Body::empty());
            let dp_rank = req.headers().get(DATA_PARALLEL_RANK_HEADER).cloned();
            req.extensions_mut().insert(Inbound {
                body,
                record,
                request_id: request_id.clone(),
                dp_rank,
            });
            router.call(req).await?
        }
        Verdict::Fail(status) => {
            sim.recorder.errors_injected.fetch_add(1, Relaxed);
            ApiError::injected(status).into_response()
        }
        Verdict::Hang => {
            // Held as by a stalled engine; the client leaving drops this future.
            sim.faults.hang_lifted().await;
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "The engine was restarted while this request waited; it was not run.",
            )
            .into_response()
        }
        Verdict::BadHeader => {
            ApiError::bad_request("X-Return-Error must be an HTTP status code between 200 and 599")
                .into_response()
        }
        Verdict::Die => {
            sim.lifecycle.kill();
            // The kill aborts this very connection task at its next yield.
            std::future::pending().await
        }
    };
    Ok(finish(resp, tracker, request_id))
}

fn finish(mut resp: Response, tracker: Tracker, request_id: Option<HeaderValue>) -> Response {
    tracker.set_status(resp.status().as_u16());
    if let Some(id) = request_id {
        resp.headers_mut().insert("x-request-id", id);
    }
    resp.map(|body| Body::new(TrackedBody::new(body, tracker)))
}
