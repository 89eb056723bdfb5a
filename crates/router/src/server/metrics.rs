//! The Prometheus listener: `GET /metrics` renders the registry in the text format.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::header;
use tokio::net::TcpListener;

use super::App;

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

async fn render(State(app): State<Arc<App>>) -> impl IntoResponse {
    let text = app.render_metrics();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
