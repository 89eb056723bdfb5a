//! The Prometheus listener. For now it exposes the per-worker live numbers the router already
//! keeps; request metrics join it with the observability work.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::header;
use tokio::net::TcpListener;

use super::App;
use crate::fleet::Worker;

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

/// Name, type, help, and the value read off each worker.
type Family = (&'static str, &'static str, &'static str, fn(&Worker) -> u64);

async fn render(State(app): State<Arc<App>>) -> impl IntoResponse {
    let snapshot = app.fleet.snapshot();
    let mut out = String::new();
    let families: [Family; 3] = [
        (
            "vllm_router_worker_healthy",
            "gauge",
            "1 when the worker is in rotation",
            |w| u64::from(w.is_healthy()),
        ),
        (
            "vllm_router_worker_in_flight",
            "gauge",
            "requests whose response has not ended",
            |w| w.in_flight() as u64,
        ),
        (
            "vllm_router_worker_requests_total",
            "counter",
            "requests forwarded to the worker",
            |w| w.served(),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for m in snapshot.members() {
            let url = m.worker.url().replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(out, "{name}{{worker=\"{url}\"}} {}", value(&m.worker));
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
