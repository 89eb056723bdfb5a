//! The accept loop and one task per connection (HTTP/1.1 with keep-alive, or h2c).

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

use super::lifecycle::stopping;
use super::service;
use crate::state::Sim;

type Builder = auto::Builder<TokioExecutor>;

/// Accepts until the listener closes (drain or kill).
pub(crate) async fn run(sim: Arc<Sim>, router: Router) {
    let builder = Arc::new(Builder::new(TokioExecutor::new()));
    let mut phase = sim.lifecycle.subscribe();
    loop {
        let accepted = tokio::select! {
            biased;
            () = stopping(&mut phase) => return,
            accepted = poll_fn(|cx| sim.lifecycle.poll_accept(cx)) => accepted,
        };
        match accepted {
            None => return,
            Some(Ok((stream, _))) => serve(&sim, &builder, &router, stream),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "accept failed");
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::Interrupted
                ) {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// Deregisters a connection however its task ends.
struct Registered {
    sim: Arc<Sim>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.sim.lifecycle.deregister(self.id);
    }
}

fn serve(sim: &Arc<Sim>, builder: &Arc<Builder>, router: &Router, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (task_sim, builder, router) = (sim.clone(), builder.clone(), router.clone());
    sim.lifecycle.register(move |id| {
        tokio::spawn(async move {
            let _registered = Registered {
                sim: task_sim.clone(),
                id,
            };
            let mut phase = task_sim.lifecycle.subscribe();
            let svc_sim = task_sim.clone();
            let svc = service_fn(move |req| service::handle(svc_sim.clone(), router.clone(), req));
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopping(&mut phase) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        })
    });
}
