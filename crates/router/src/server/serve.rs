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

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use futures_util::future::Either;
use http::{Method, Request};
use hyper::body::Incoming;
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_io_timeout::TimeoutStream;

use super::keys;
use crate::app::{App, inference_route};
use crate::config::ListenerConfig;
use crate::proxy;

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
    let shared = Arc::new(Shared {
        router: super::routes(Arc::clone(&app)),
        http: builder(&limits),
        // With CORS on, every request takes the router's routes, which add its headers.
        direct: super::cors::layer(&app.config()).is_none(),
        app: Arc::clone(&app),
        limits,
    });
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
                        Arc::clone(&shared),
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
        // Answers are copied into the connection's write buffer, not queued by reference: a
        // worker's frame is let go at once, so the worker connection's read buffer is free to
        // be reused for the next one instead of a new buffer per frame.
        .writev(false)
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

/// What every connection is served with.
struct Shared {
    router: Router,
    http: Builder<TokioExecutor>,
    /// Inference requests go straight to the proxy (see [`connection`]).
    direct: bool,
    app: Arc<App>,
    limits: ListenerConfig,
}

/// Serve one connection until it ends, `stopping` turns it graceful, or its first request
/// head is late.
///
/// A `POST` to an inference route goes straight to the client routes' key check and the
/// proxy, as the router's routes would send it, without the routing table's boxed services
/// and request extensions; every other request (and every request while CORS is on) takes
/// the routes.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stopping: watch::Receiver<bool>,
) {
    let greeted = Arc::new(Notify::new());
    let service = {
        let greeted = Arc::clone(&greeted);
        let inner = TowerToHyperService::new(shared.router.clone());
        let shared = Arc::clone(&shared);
        service_fn(move |mut request: Request<Incoming>| {
            greeted.notify_one();
            if shared.direct && is_inference_post(&request) {
                let app = Arc::clone(&shared.app);
                Either::Left(async move { Ok::<_, Infallible>(direct(&app, peer, request).await) })
            } else {
                request.extensions_mut().insert(ConnectInfo(peer));
                Either::Right(inner.call(request))
            }
        })
    };
    let (header_read_timeout, write_timeout) = (
        shared.limits.header_read_timeout,
        shared.limits.client_write_timeout,
    );
    // A client that stops reading stalls the router's writes: past the timeout the
    // connection fails, the response body is dropped, and with it the worker's request.
    let mut timed = TimeoutStream::new(stream);
    timed.set_write_timeout(Some(write_timeout));
    let conn = shared
        .http
        .serve_connection(TokioIo::new(Box::pin(timed)), service);
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

fn is_inference_post(request: &Request<Incoming>) -> bool {
    request.method() == Method::POST && inference_route(request.uri().path()).is_some()
}

/// An inference request on the direct path: refused unless its key is accepted, then
/// forwarded.
async fn direct(app: &App, peer: SocketAddr, request: Request<Incoming>) -> Response {
    if let Some(refused) = keys::refusal(app, request.headers(), request.uri().path()).await {
        return refused;
    }
    proxy::forward_from(app, Some(peer.ip()), request.map(Body::new)).await
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
