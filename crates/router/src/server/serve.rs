//! The accept loop: every client connection is served by hyper (HTTP/1.1, or HTTP/2 with prior
//! knowledge) in a task of its own, under the listener limits, and drained on shutdown.
//!
//! What each limit does at the wire (the hardening end-to-end tests hold it to this):
//! - a request head not complete within the header read timeout closes the connection without
//!   an answer; an idle keep-alive connection is closed after the same time, since hyper's
//!   timer also runs while it waits for the next head;
//! - a request head larger than `--max-header-bytes` gets 431 and the connection closes
//!   (HTTP/2 advertises the same bound as its header list size);
//! - ambiguous framing never reaches a handler: two different `Content-Length` values, or a
//!   transfer coding other than chunked, get 400; `Transfer-Encoding: chunked` with
//!   `Content-Length` is read as chunked (RFC 9112 §6.3), the length dropped, and the
//!   connection closed after the answer. The proxy forwards the body with its own length.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use http::Request;
use hyper::body::Incoming;
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::App;
use tokio_io_timeout::TimeoutStream;

use crate::config::ListenerConfig;

/// How long streams get, once ended at the drain deadline, to flush their error event.
const FLUSH_GRACE: Duration = Duration::from_millis(100);
/// Pause after an accept error that is not about one connection (out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serve until `shutdown` resolves, then drain (see [`super::run`]).
pub async fn serve<F>(listener: TcpListener, app: Arc<App>, shutdown: F) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let limits = app.config().listener;
    let router = super::routes(Arc::clone(&app));
    let http = Arc::new(builder(&limits));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(
                        stream,
                        peer,
                        router.clone(),
                        Arc::clone(&http),
                        limits.header_read_timeout,
                        limits.client_write_timeout,
                        stopping.clone(),
                    ));
                }
                Err(error) if is_per_connection(&error) => {}
                Err(error) => {
                    tracing::error!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
    drop(listener);
    app.start_draining();
    stop.send_replace(true);
    drain(connections, &app, limits.shutdown_timeout).await;
    Ok(())
}

fn builder(limits: &ListenerConfig) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Accept errors that concern the one connection being accepted; the listener is fine.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serve one connection until it ends, `stopping` turns it graceful, or its first request
/// head is late.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    http: Arc<Builder<TokioExecutor>>,
    header_read_timeout: Duration,
    write_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let greeted = Arc::new(Notify::new());
    let service = {
        let greeted = Arc::clone(&greeted);
        let inner = TowerToHyperService::new(router);
        service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            greeted.notify_one();
            inner.call(request)
        })
    };
    // A client that stops reading stalls the router's writes: past the timeout the
    // connection fails, the response body is dropped, and with it the worker's request.
    let mut timed = TimeoutStream::new(stream);
    timed.set_write_timeout(Some(write_timeout));
    let conn = http.serve_connection(TokioIo::new(Box::pin(timed)), service);
    tokio::pin!(conn);
    // hyper's header timer starts once the protocol is known; until the first request, this
    // one covers a client that connects and sends nothing, or half an HTTP/2 preface.
    let first_head = tokio::time::sleep(header_read_timeout);
    tokio::pin!(first_head);
    let mut awaiting_first = true;
    let mut graceful = false;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%peer, %error, "client connection ended with an error");
                }
                return;
            }
            () = greeted.notified(), if awaiting_first => awaiting_first = false,
            () = &mut first_head, if awaiting_first => {
                tracing::debug!(%peer, "no request head within the header read timeout");
                return;
            }
            _ = stopping.wait_for(|stop| *stop), if !graceful => {
                graceful = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Wait for connections to finish their requests; past `deadline`, end open responses, let
/// them flush, and drop whatever is left.
async fn drain(mut connections: JoinSet<()>, app: &App, deadline: Duration) {
    if connections.is_empty() {
        return;
    }
    tracing::info!(
        connections = connections.len(),
        ?deadline,
        "draining client connections"
    );
    if tokio::time::timeout(deadline, all_done(&mut connections))
        .await
        .is_ok()
    {
        return;
    }
    tracing::warn!(
        connections = connections.len(),
        "shutdown timeout passed: ending open responses"
    );
    app.end_streams();
    let _ = tokio::time::timeout(FLUSH_GRACE, all_done(&mut connections)).await;
    connections.shutdown().await;
}

async fn all_done(connections: &mut JoinSet<()>) {
    while connections.join_next().await.is_some() {}
}
