//! Who is still connected, and how the server ends.
//!
//! The listener sits in a slot that `kill` empties synchronously, so the port refuses
//! connections the moment `kill` returns. Every connection task is registered with its abort
//! handle; `kill` aborts them all at once, like a process dying. `drain` only stops accepting
//! and asks connections to finish what they have.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::{AbortHandle, JoinHandle};

/// The server's stage of life; it only moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    Draining,
    Killed,
}

#[derive(Default)]
struct Connections {
    next_id: u64,
    live: HashMap<u64, AbortHandle>,
    killed: bool,
}

pub(crate) struct Lifecycle {
    listener: Mutex<Option<TcpListener>>,
    connections: Mutex<Connections>,
    phase: watch::Sender<Phase>,
    idle: Notify,
}

impl Lifecycle {
    pub(crate) fn new(listener: TcpListener) -> Self {
        Self {
            listener: Mutex::new(Some(listener)),
            connections: Mutex::new(Connections::default()),
            phase: watch::Sender::new(Phase::Running),
            idle: Notify::new(),
        }
    }

    /// Accepts the next connection; `None` once the listener is closed.
    pub(crate) fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<(TcpStream, SocketAddr)>>> {
        match self.listener.lock().as_ref() {
            Some(listener) => listener.poll_accept(cx).map(Some),
            None => Poll::Ready(None),
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Spawns a connection task through `spawn` and tracks it; refuses once killed.
    pub(crate) fn register(&self, spawn: impl FnOnce(u64) -> JoinHandle<()>) {
        let mut conns = self.connections.lock();
        if conns.killed {
            return;
        }
        let id = conns.next_id;
        conns.next_id += 1;
        // The task deregisters itself under this same lock, so it cannot race the insert.
        let handle = spawn(id);
        conns.live.insert(id, handle.abort_handle());
    }

    pub(crate) fn deregister(&self, id: u64) {
        let mut conns = self.connections.lock();
        if conns.live.remove(&id).is_some() && conns.live.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// Closes the port and drops every connection now. Idempotent.
    pub(crate) fn kill(&self) {
        self.phase.send_replace(Phase::Killed);
        drop(self.listener.lock().take());
        let live = {
            let mut conns = self.connections.lock();
            conns.killed = true;
            std::mem::take(&mut conns.live)
        };
        for handle in live.values() {
            handle.abort();
        }
        self.idle.notify_waiters();
    }

    /// Stops accepting; open connections are asked to finish their in-flight requests.
    pub(crate) fn drain(&self) {
        self.phase.send_if_modified(|p| {
            let running = *p == Phase::Running;
            if running {
                *p = Phase::Draining;
            }
            running
        });
        drop(self.listener.lock().take());
    }

    /// Resolves once no connection task is left.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.connections.lock().live.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Resolves once the server has been killed.
    pub(crate) async fn killed(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p == Phase::Killed).await;
    }
}

/// Resolves once the server leaves [`Phase::Running`].
pub(crate) async fn stopping(rx: &mut watch::Receiver<Phase>) {
    let _ = rx.wait_for(|p| *p != Phase::Running).await;
}
