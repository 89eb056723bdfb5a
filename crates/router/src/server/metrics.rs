//! The Prometheus listener: `GET /metrics` renders the registry as OpenMetrics text to
//! scrapers that accept it (Prometheus does), else in the Prometheus text format.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::{HeaderMap, header};
use tokio::net::TcpListener;

use super::App;
use crate::telemetry::metrics::to_prometheus_text;

/// Serve `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics<F>(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let router = Router::new().route("/metrics", get(render)).with_state(app);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn render(State(app): State<Arc<App>>, headers: HeaderMap) -> impl IntoResponse {
    let text = app.render_metrics();
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        return (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        to_prometheus_text(&text),
    )
}
