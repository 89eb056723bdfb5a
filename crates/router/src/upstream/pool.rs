//! Keep-alive HTTP/1.1 connections to workers, kept per authority and reused newest first.
//!
//! A request takes an idle connection (or opens one), is sent on it, and the connection comes
//! back to the pool when its answer's body has been read to the end ([`WorkerBody`]). The
//! connection is driven by the task of the request it serves, not by a task of its own: the
//! request is written, its answer read and each of the answer's frames handed on within one
//! task, so frames that arrive together leave together, and no wake-up passes between tasks.
//! An answer left unread closes its connection (HTTP/1.1 cannot take another request before
//! the answer ends). A request that the pooled
//! connection could not take (the worker had just closed it) is sent once more on a new one;
//! a request that was written is never sent again here. Connections idle for [`IDLE_TIMEOUT`]
//! are closed by a sweep every [`SWEEP_EVERY`].

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::rt::{Read, Write};
use tower_service::Service;

use super::UpstreamBody;
use crate::sync::Mutex;

/// Idle connections are closed after this long unused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// How often idle connections are looked over.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Idle connections kept per authority; more are closed as they come back.
const MAX_IDLE_PER_HOST: usize = 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What reads and writes a connection: hyper's connection state machine over its socket.
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// One connection: the handle requests are sent through, and what drives it.
struct Conn {
    sender: SendRequest<UpstreamBody>,
    driver: Driver,
    ended: bool,
}

impl Conn {
    /// Let the connection read and write what it can, waking `cx` on progress; `false` once
    /// it has ended (closed by either side, or broken).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if self.ended {
            return false;
        }
        if let Poll::Ready(result) = self.driver.as_mut().poll(cx) {
            if let Err(error) = result {
                tracing::debug!(%error, "worker connection ended");
            }
            self.ended = true;
        }
        !self.ended
    }

    /// Whether an idle connection is still open: it takes note of a close without waiting.
    fn open(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop())) && !self.sender.is_closed()
    }

    /// Wait until the connection can take a request; `false` when it ended instead.
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            if !self.drive(cx) {
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }
}

/// Why a request to a worker got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened: nothing was sent.
    #[error("connect failed")]
    Connect(#[source] BoxError),
    /// The request's URI names no worker.
    #[error("the request has no scheme and authority")]
    NoAuthority,
    /// The connection failed while the request was sent or answered.
    #[error("request failed")]
    Request(#[source] hyper::Error),
}

impl SendError {
    /// Nothing reached the worker: moving on is always safe.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::NoAuthority)
    }
}

/// The connections of one authority, and its `Host` header, made once.
struct Host {
    header: HeaderValue,
    idle: Vec<(Conn, Instant)>,
}

/// The idle connections of a pool, by authority; shared with the answers' bodies that bring
/// their connection back.
#[derive(Default)]
pub(super) struct Idle {
    hosts: Mutex<HashMap<Authority, Host>>,
    sweeping: AtomicBool,
}

impl Idle {
    /// The newest idle connection to `authority` (connections found closed are dropped), and
    /// the authority's `Host` header.
    fn take(&self, authority: &Authority) -> Result<(Option<Conn>, HeaderValue), SendError> {
        let mut hosts = self.hosts.lock();
        if let Some(host) = hosts.get_mut(authority) {
            while let Some((mut conn, _)) = host.idle.pop() {
                if conn.open() {
                    return Ok((Some(conn), host.header.clone()));
                }
            }
            return Ok((None, host.header.clone()));
        }
        // The authority's first request.
        let header =
            HeaderValue::from_str(authority.as_str()).map_err(|_| SendError::NoAuthority)?;
        let host = Host {
            header: header.clone(),
            idle: Vec::new(),
        };
        hosts.insert(authority.clone(), host);
        Ok((None, header))
    }

    fn give_back(&self, authority: &Authority, mut conn: Conn) {
        if !conn.open() {
            return;
        }
        let mut hosts = self.hosts.lock();
        if let Some(host) = hosts.get_mut(authority)
            && host.idle.len() < MAX_IDLE_PER_HOST
        {
            host.idle.push((conn, Instant::now()));
        }
    }

    /// Close the connections idle past `IDLE_TIMEOUT` or found closed; forget authorities left
    /// without any.
    fn sweep(&self, now: Instant) {
        let gone: Vec<Conn> = {
            let mut hosts = self.hosts.lock();
            let mut gone = Vec::new();
            hosts.retain(|_, host| {
                for (mut conn, since) in std::mem::take(&mut host.idle) {
                    if now.saturating_duration_since(since) < IDLE_TIMEOUT && conn.open() {
                        host.idle.push((conn, since));
                    } else {
                        gone.push(conn);
                    }
                }
                !host.idle.is_empty()
            });
            gone
        };
        // Dropped outside the lock: each closes its connection.
        drop(gone);
    }

    /// Idle connections, across authorities.
    #[cfg(test)]
    fn count(&self) -> usize {
        self.hosts.lock().values().map(|h| h.idle.len()).sum()
    }
}

/// Sweep `idle` every [`SWEEP_EVERY`] until its pool is gone.
async fn sweep(idle: Weak<Idle>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(idle) = idle.upgrade() else { return };
        idle.sweep(Instant::now());
    }
}

/// A pool over connector `C` (plain TCP, or TLS over it).
pub(super) struct Pool<C> {
    connector: C,
    idle: Arc<Idle>,
}

impl<C> Pool<C>
where
    C: Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: Read + Write + Unpin + Send + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
{
    pub(super) fn new(connector: C) -> Self {
        Self {
            connector,
            idle: Arc::default(),
        }
    }

    /// Send `request` (its URI absolute, naming the worker) on a pooled connection; resolves
    /// at the answer's head.
    pub(super) async fn send(
        &self,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<WorkerBody>, SendError> {
        let uri = std::mem::take(request.uri_mut()).into_parts();
        let (Some(scheme), Some(authority)) = (uri.scheme, uri.authority) else {
            return Err(SendError::NoAuthority);
        };
        // Sent in origin form, as HTTP/1.1 asks of a request to an origin server.
        *request.uri_mut() = uri
            .path_and_query
            .map_or_else(|| Uri::from_static("/"), Uri::from);
        let (pooled, host) = self.idle.take(&authority)?;
        if !request.headers().contains_key(header::HOST) {
            request.headers_mut().insert(header::HOST, host);
        }
        let mut conn = match pooled {
            // Closed while idle (the worker hung up): a new one below.
            Some(mut conn) => conn.ready().await.then_some(conn),
            None => None,
        };
        let mut fresh = false;
        loop {
            let mut conn = match conn.take() {
                Some(conn) => conn,
                None => {
                    fresh = true;
                    // Boxed: opening a connection (a TLS one most of all) needs far more room
                    // than sending on one, and a request's future would carry it always.
                    let mut conn = Box::pin(self.connect(&scheme, &authority)).await?;
                    if !conn.ready().await {
                        return Err(SendError::Connect("closed at once".into()));
                    }
                    conn
                }
            };
            let mut answer = std::pin::pin!(conn.sender.try_send_request(request));
            let answered = poll_fn(|cx| {
                // The connection writes the request and reads the answer as it is driven.
                conn.drive(cx);
                answer.as_mut().poll(cx)
            })
            .await;
            match answered {
                Ok(response) => {
                    let idle = Arc::clone(&self.idle);
                    return Ok(response.map(|body| WorkerBody {
                        body,
                        back: Some(GiveBack {
                            idle,
                            authority,
                            conn,
                        }),
                    }));
                }
                Err(mut failed) => match failed.take_message() {
                    // Not written: the pooled connection was closing. Once more, on a new one.
                    Some(unsent) if !fresh => request = unsent,
                    _ => return Err(SendError::Request(failed.into_error())),
                },
            }
        }
    }

    async fn connect(&self, scheme: &Scheme, authority: &Authority) -> Result<Conn, SendError> {
        if !self.idle.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(&self.idle)));
        }
        let uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|_| SendError::NoAuthority)?;
        let io = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        Ok(Conn {
            sender,
            driver: Box::pin(connection),
            ended: false,
        })
    }
}

/// Brings a connection back to its pool.
struct GiveBack {
    idle: Arc<Idle>,
    authority: Authority,
    conn: Conn,
}

/// The body of a worker's answer: its connection goes back to the pool once the body has been
/// read to its end, and is closed when it is dropped before.
pub struct WorkerBody {
    body: Incoming,
    back: Option<GiveBack>,
}

impl WorkerBody {
    fn give_back(&mut self) {
        if let Some(back) = self.back.take() {
            back.idle.give_back(&back.authority, back.conn);
        }
    }
}

impl Body for WorkerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(back) = &mut self.back {
            // Read what the worker sent: every frame already here is handed on before this
            // body says it must wait.
            back.conn.drive(cx);
        }
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            // A broken answer leaves its connection unusable.
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for WorkerBody {
    fn drop(&mut self) {
        // A body of known length read whole ends without a last poll.
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}

impl std::fmt::Debug for WorkerBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBody")
            .field("pooled", &self.back.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests;
