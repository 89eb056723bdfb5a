//! A stand-in Kubernetes API server, over plain HTTP: `GET /api/v1/namespaces/{ns}/pods` lists
//! the pods matching `labelSelector` with the list's `resourceVersion`, and with `watch=true`
//! streams `{"type": ..., "object": ...}` lines from the given `resourceVersion` on. Pods live
//! across restarts, as they would in etcd.
//!
//! What tests can make it do: change pods (each change an event with the next resource
//! version), change them quietly and forget its history (open watches get a 410 Gone `ERROR`
//! event, as does any watch resumed from before), end every open watch (as `timeoutSeconds`
//! does), and go down: open connections are cut and new ones reset as soon as they are
//! accepted (counted), the port kept so that it comes back on the same address. Every request is
//! recorded with its `labelSelector`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State as Shared};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// One request the stand-in answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The namespace in the path.
    pub namespace: String,
    /// `watch=true` (else a list).
    pub watch: bool,
    /// `labelSelector`, when sent.
    pub label_selector: Option<String>,
    /// `resourceVersion`, when sent.
    pub resource_version: Option<String>,
}

#[derive(Debug)]
struct Logged {
    version: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct State {
    /// The last resource version handed out.
    version: u64,
    /// Pods by `namespace/name`.
    pods: BTreeMap<String, Value>,
    /// Every event, oldest first.
    log: Vec<Logged>,
    /// A watch from a resource version below this gets 410 Gone.
    oldest: u64,
    /// Bumped to end every open watch.
    cut: u64,
    /// Bumped to send 410 Gone on every open watch.
    expired: u64,
    /// Watch streams open now.
    open_watches: usize,
    requests: Vec<Seen>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    changed: watch::Sender<()>,
}

impl Inner {
    fn change<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.state.lock());
        self.changed.send_replace(());
        out
    }
}

/// The stand-in, listening on a loopback port.
pub struct ApiServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    /// Held for the stand-in's life: while it is down, and when it is back on the same port.
    listener: Arc<TcpListener>,
    /// Connections reset while down.
    turned_away: Arc<AtomicUsize>,
    /// Serving the API, or, while down, turning connections away.
    serving: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(task) = self.serving.lock().take() {
            task.abort();
        }
    }
}

impl ApiServer {
    /// Listen on a free loopback port, with no pod.
    pub async fn start() -> Self {
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                version: 100,
                oldest: 100,
                ..State::default()
            }),
            changed: watch::Sender::new(()),
        });
        let server = Self {
            addr: listener.local_addr().unwrap(),
            inner,
            listener,
            turned_away: Arc::default(),
            serving: Mutex::new(None),
        };
        server.serve();
        server
    }

    fn serve(&self) {
        let routes = Router::new()
            .route("/api/v1/namespaces/{namespace}/pods", get(pods))
            .with_state(Arc::clone(&self.inner));
        self.run(accept(Arc::clone(&self.listener), routes));
    }

    /// Run `task` on the listener in place of what ran there (which ends, and with it every
    /// connection it served).
    fn run(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut serving = self.serving.lock();
        if let Some(before) = serving.take() {
            before.abort();
        }
        *serving = Some(tokio::spawn(task));
    }

    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client of the real kube crate, talking to this stand-in; default namespace `default`.
    pub fn client(&self) -> ::kube::Client {
        let config = ::kube::Config::new(self.url().parse().unwrap());
        ::kube::Client::try_from(config).unwrap()
    }

    /// Add or change a pod (by `metadata.namespace`/`metadata.name`): an ADDED or MODIFIED event.
    pub fn apply(&self, pod: Value) {
        self.inner.change(|s| {
            let key = key_of(&pod);
            let kind = if s.pods.contains_key(&key) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            let pod = s.stamp(pod);
            s.pods.insert(key, pod.clone());
            s.log_event(kind, pod);
        });
    }

    /// Delete a pod: a DELETED event.
    pub fn delete(&self, namespace: &str, name: &str) {
        self.inner.change(|s| {
            let pod = s.pods.remove(&format!("{namespace}/{name}")).unwrap();
            let pod = s.stamp(pod);
            s.log_event("DELETED", pod);
        });
    }

    /// Change pods without any event, then forget the history: open watches get 410 Gone
    /// and end, and a watch resumed from any earlier resource version gets 410 Gone too.
    pub fn expire_with(&self, change: impl FnOnce(&mut Quiet<'_>)) {
        self.inner.change(|s| {
            change(&mut Quiet(s));
            s.oldest = s.version;
            s.expired += 1;
        });
    }

    /// End every open watch, as the API server does when `timeoutSeconds` runs out.
    pub fn end_watches(&self) {
        self.inner.change(|s| s.cut += 1);
    }

    /// Go down: cut every open connection, and reset each new one as soon as it is accepted,
    /// as near to a refused connection as one accepted can be (the port stays ours).
    pub fn stop(&self) {
        let listener = Arc::clone(&self.listener);
        let turned_away = Arc::clone(&self.turned_away);
        self.run(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_zero_linger();
                turned_away.fetch_add(1, Ordering::SeqCst);
            }
        });
    }

    /// Serve again on the same address, pods and history as they were.
    pub fn restart(&self) {
        self.serve();
    }

    /// Connections reset while down, so far.
    pub fn turned_away(&self) -> usize {
        self.turned_away.load(Ordering::SeqCst)
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.inner.state.lock().requests.clone()
    }

    /// Watch streams open now.
    pub fn open_watches(&self) -> usize {
        self.inner.state.lock().open_watches
    }
}

/// Pods changed behind the watchers' backs (see [`ApiServer::expire_with`]).
pub struct Quiet<'a>(&'a mut State);

impl Quiet<'_> {
    /// Add or change a pod.
    pub fn apply(&mut self, pod: Value) {
        let pod = self.0.stamp(pod);
        self.0.pods.insert(key_of(&pod), pod);
    }

    /// Delete a pod.
    pub fn delete(&mut self, namespace: &str, name: &str) {
        self.0.pods.remove(&format!("{namespace}/{name}")).unwrap();
        self.0.version += 1;
    }
}

impl State {
    /// `pod` with the next resource version.
    fn stamp(&mut self, mut pod: Value) -> Value {
        self.version += 1;
        pod["metadata"]["resourceVersion"] = json!(self.version.to_string());
        pod
    }

    fn log_event(&mut self, kind: &'static str, object: Value) {
        self.log.push(Logged {
            version: self.version,
            kind,
            object,
        });
    }
}

fn key_of(pod: &Value) -> String {
    let meta = &pod["metadata"];
    format!(
        "{}/{}",
        meta["namespace"].as_str().unwrap(),
        meta["name"].as_str().unwrap()
    )
}

/// Whether `pod`, of `namespace`, matches an equality-based selector (`k=v,k2=v2`).
fn selected(pod: &Value, namespace: &str, selector: Option<&str>) -> bool {
    if pod["metadata"]["namespace"] != namespace {
        return false;
    }
    let labels = &pod["metadata"]["labels"];
    selector
        .into_iter()
        .flat_map(|s| s.split(','))
        .filter(|term| !term.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => labels[k] == v,
            None => false,
        })
}

async fn accept(listener: Arc<TcpListener>, routes: Router) {
    // Dropped with this task: aborting it cuts every connection.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let service = TowerToHyperService::new(routes.clone());
        connections.spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn pods(
    Shared(inner): Shared<Arc<Inner>>,
    Path(namespace): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let selector = query.get("labelSelector").cloned();
    let from = query.get("resourceVersion").cloned();
    let mut state = inner.state.lock();
    state.requests.push(Seen {
        namespace: namespace.clone(),
        watch: watching,
        label_selector: selector.clone(),
        resource_version: from.clone(),
    });
    if !watching {
        let items: Vec<&Value> = state
            .pods
            .values()
            .filter(|p| selected(p, &namespace, selector.as_deref()))
            .collect();
        let list = json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": state.version.to_string()},
            "items": items,
        });
        return axum::Json(list).into_response();
    }
    let from = from
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0)
        .unwrap_or(state.version);
    let stream = Watch {
        inner: Arc::clone(&inner),
        changed: inner.changed.subscribe(),
        namespace,
        selector,
        after: from,
        cut: state.cut,
        expired: state.expired,
        too_old: from < state.oldest,
        done: false,
    };
    state.open_watches += 1;
    drop(state);
    let body = futures_util::stream::unfold(stream, |mut watch| async move {
        let chunk = watch.next().await?;
        Some((Ok::<_, Infallible>(chunk), watch))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(body))
        .unwrap()
}

/// One open watch: where it is in the history and what ends it.
struct Watch {
    inner: Arc<Inner>,
    changed: watch::Receiver<()>,
    namespace: String,
    selector: Option<String>,
    after: u64,
    cut: u64,
    expired: u64,
    /// Resumed from a version the history no longer holds: 410 Gone at once.
    too_old: bool,
    done: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.inner.state.lock().open_watches -= 1;
    }
}

impl Watch {
    /// The next lines to send, or `None` when the watch is over.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if self.done {
                return None;
            }
            self.changed.borrow_and_update();
            let mut lines = String::new();
            {
                let state = self.inner.state.lock();
                if self.too_old || state.expired != self.expired {
                    let gone = json!({
                        "type": "ERROR",
                        "object": {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "metadata": {},
                            "status": "Failure",
                            "message": format!("too old resource version: {}", self.after),
                            "reason": "Expired",
                            "code": 410,
                        },
                    });
                    self.done = true;
                    return Some(Bytes::from(format!("{gone}\n")));
                }
                let after = self.after;
                for event in state.log.iter().filter(|e| e.version > after) {
                    self.after = event.version;
                    if selected(&event.object, &self.namespace, self.selector.as_deref()) {
                        let line = json!({"type": event.kind, "object": event.object});
                        lines.push_str(&format!("{line}\n"));
                    }
                }
                self.done = state.cut != self.cut;
            }
            if !lines.is_empty() {
                return Some(Bytes::from(lines));
            }
            if !self.done && self.changed.changed().await.is_err() {
                return None;
            }
        }
    }
}
