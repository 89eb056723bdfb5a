//! `GET /fleet`: the live view of the fleet ([`crate::live`]), as the sampler last built it.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use http::header::CACHE_CONTROL;
use serde::Deserialize;

use super::App;
use crate::error::ApiError;
use crate::live::{DEFAULT_HISTORY, HISTORY};

/// Query of `GET /fleet`.
#[derive(Debug, Deserialize)]
pub struct FleetQuery {
    /// History points to answer per series (at most [`HISTORY`]).
    history: Option<usize>,
}

/// `GET /fleet[?history=N]`: the latest view, with the last N points of each history
/// ([`DEFAULT_HISTORY`] by default, at most [`HISTORY`], 0 for none). Never cached.
pub async fn fleet(
    State(app): State<Arc<App>>,
    query: Result<Query<FleetQuery>, QueryRejection>,
) -> Response {
    let points = match query {
        Ok(Query(q)) => q.history.unwrap_or(DEFAULT_HISTORY).min(HISTORY),
        Err(_) => {
            return ApiError::bad_request(
                format!("history must be a whole number of points, 0 to {HISTORY}"),
                Some("history"),
            )
            .into_response();
        }
    };
    let view = app.live.view().with_history(points);
    (
        [(CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(view),
    )
        .into_response()
}
