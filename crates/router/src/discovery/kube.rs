//! Kubernetes pod discovery (`--service-discovery`).
//!
//! Each label selector (`--selector`, or `--prefill-selector` and `--decode-selector` in P/D
//! mode) is one list-then-watch of the pods of one namespace, the selector sent to the API
//! server as `labelSelector`. A pod joins the fleet at `http://{podIP}:{port}` while it is
//! Running and Ready, has an IP and is not being deleted; it leaves when that stops being true
//! or it is deleted, and a pod whose IP changed swaps its old worker for a new one.
//!
//! kube-runtime's [`watcher`] resumes a watch that ended and relists when the API server no
//! longer has its resource version (410 Gone); after a relist, pods not listed again leave.
//! While the API server cannot be reached the known workers keep serving: only what the API
//! server says removes a worker, never its silence.
//!
//! The logic is kept apart from the client: [`Pods`] turns watch events into
//! [`FleetEvent`]s and is tested with plain pod objects; [`PodWatch`] owns the client, runs the
//! watches and applies those events to the fleet.

mod pods;

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::{DiscoveryError, admit};
use crate::fleet::{Fleet, FleetEvent};
use crate::upstream::Upstream;

pub use pods::{Pods, Watch};

/// Shortest time between two warnings that the API server cannot be reached; the failures in
/// between are logged at debug and counted in the next warning.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// How long a failed list or watch waits before the next attempt: `first`, doubling with each
/// failure in a row up to `max`, each pause shortened by up to half at random so routers
/// restarted together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The pause after a first failure.
    pub first: Duration,
    /// The longest pause.
    pub max: Duration,
}

impl Default for Retry {
    /// 0.8 s doubling up to 30 s, as kube-runtime's default backoff.
    fn default() -> Self {
        Self {
            first: Duration::from_millis(800),
            max: Duration::from_secs(30),
        }
    }
}

/// A client to the API server and the namespace watched, before the watches start.
#[derive(Clone)]
pub struct PodWatch {
    client: Client,
    namespace: String,
    retry: Retry,
}

impl std::fmt::Debug for PodWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodWatch")
            .field("namespace", &self.namespace)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl PodWatch {
    /// A client from the environment: `KUBECONFIG` (or `~/.kube/config`), else the pod's
    /// service account. Watches `namespace`, else the client's default namespace (the
    /// router's own in a cluster, the kubeconfig context's otherwise).
    pub async fn infer(namespace: Option<&str>) -> Result<Self, DiscoveryError> {
        let config = kube::Config::infer()
            .await
            .map_err(DiscoveryError::KubeConfig)?;
        let client = Client::try_from(config).map_err(DiscoveryError::KubeClient)?;
        Ok(Self::new(client, namespace))
    }

    /// Watch with `client` in `namespace`, else in the client's default namespace.
    pub fn new(client: Client, namespace: Option<&str>) -> Self {
        let namespace = match namespace {
            Some(namespace) => namespace.to_owned(),
            None => client.default_namespace().to_owned(),
        };
        Self {
            client,
            namespace,
            retry: Retry::default(),
        }
    }

    /// The same watch, pausing after failures as `retry` says.
    pub fn with_retry(self, retry: Retry) -> Self {
        Self { retry, ..self }
    }

    /// The namespace watched.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Watch the pods of each of `pods`' selectors for as long as the task lives: apply what
    /// `pods` makes of the events, and ask each new worker for its models (waiting at most
    /// `probe_timeout` per attempt) so it serves promptly.
    pub fn spawn(
        self,
        pods: Pods,
        fleet: Arc<Fleet>,
        upstream: Upstream,
        probe_timeout: Duration,
    ) -> JoinHandle<()> {
        tokio::spawn(self.run(pods, fleet, upstream, probe_timeout))
    }

    async fn run(self, mut pods: Pods, fleet: Arc<Fleet>, upstream: Upstream, timeout: Duration) {
        let watches: Vec<BoxStream<'static, (usize, WatchItem)>> = pods
            .watches()
            .iter()
            .enumerate()
            .map(|(i, watch)| {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
                let config = watcher::Config::default().labels(&watch.selector.to_query());
                paced(watcher(api, config), self.retry)
                    .map(move |item| (i, item))
                    .boxed()
            })
            .collect();
        let mut events = stream::select_all(watches);
        // Dropped with this task, which aborts any admission still retrying.
        let mut admissions = JoinSet::new();
        let mut outage = Outage::new(WARN_EVERY);
        while let Some((i, item)) = events.next().await {
            while admissions.try_join_next().is_some() {}
            let event = match item {
                Ok(event) => event,
                Err(error) => {
                    self.report(&mut outage, &pods, i, &error);
                    continue;
                }
            };
            // `Init` comes before the list is even asked for; anything else is an answer.
            if !matches!(event, Event::Init)
                && let Some(lasted) = outage.answered(Instant::now())
            {
                tracing::info!(
                    outage = ?lasted,
                    "Kubernetes discovery: the API server answers again"
                );
            }
            for change in pods.apply(i, event) {
                let joined = match &change {
                    FleetEvent::Add(spec) => Some(spec.url.text.clone()),
                    _ => None,
                };
                fleet.apply(change).await;
                if let Some(url) = joined {
                    admissions.spawn(admit(Arc::clone(&fleet), upstream.clone(), url, timeout));
                }
            }
        }
        tracing::warn!("Kubernetes discovery: the pod watches ended; discovered workers stay");
    }

    /// Log a failed list or watch of watch `i`: an expired watch (410 Gone) is routine, the
    /// rest is an outage, warned about at most once per [`WARN_EVERY`].
    fn report(&self, outage: &mut Outage, pods: &Pods, i: usize, error: &watcher::Error) {
        let selector = pods.watches().get(i).map(Watch::to_string);
        let selector = selector.unwrap_or_default();
        if let watcher::Error::WatchError(status) = error
            && status.code == 410
        {
            tracing::debug!(%selector, %error, "Kubernetes discovery: watch expired; relisting");
            return;
        }
        match outage.failed(Instant::now()) {
            Some(suppressed) => tracing::warn!(
                namespace = %self.namespace,
                %selector,
                %error,
                suppressed,
                workers = pods.len(),
                hint = forbidden(error).then_some(
                    "the router's service account needs get, list and watch on pods"
                ),
                "Kubernetes discovery: cannot list or watch pods; the known workers keep serving, retrying"
            ),
            None => tracing::debug!(
                %selector,
                %error,
                "Kubernetes discovery: cannot list or watch pods"
            ),
        }
    }
}

/// What a watcher yields.
type WatchItem = Result<Event<Pod>, watcher::Error>;

/// Whether the API server refused the request (RBAC).
fn forbidden(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => {
            matches!(e, kube::Error::Api(status) if status.is_forbidden())
        }
        watcher::Error::WatchError(status) => status.is_forbidden(),
        watcher::Error::NoResourceVersion => false,
    }
}

/// `events`, pausing after each error before asking for the next item (which is when the
/// watcher retries): [`Retry::first`] after a first error, doubling while errors follow each
/// other. An answer from the API server starts over from `first`; `Init` does not count as
/// one, since the watcher yields it before each relist is even attempted (kube-runtime's own
/// backoff resets on it, so a failing relist would never wait longer than its first pause).
fn paced<K, S>(events: S, retry: Retry) -> impl Stream<Item = Result<Event<K>, watcher::Error>>
where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    let start = (events.boxed(), retry.first, None::<Duration>);
    stream::unfold(start, move |(mut events, next, pause)| async move {
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        let item = events.next().await?;
        let (next, pause) = match &item {
            Err(_) => ((next * 2).min(retry.max), Some(jitter(next))),
            Ok(Event::Init) => (next, None),
            Ok(_) => (retry.first, None),
        };
        Some((item, (events, next, pause)))
    })
}

/// `pause` shortened by up to half, at random.
fn jitter(pause: Duration) -> Duration {
    pause.mul_f64(1.0 - fastrand::f64() / 2.0)
}

/// When the API server stopped answering, and when that was last warned about.
#[derive(Debug)]
struct Outage {
    every: Duration,
    since: Option<Instant>,
    warned: Option<Instant>,
    quiet: u64,
}

impl Outage {
    fn new(every: Duration) -> Self {
        Self {
            every,
            since: None,
            warned: None,
            quiet: 0,
        }
    }

    /// A request failed at `now`: `Some(failures held back since the last warning)` when a
    /// warning is due.
    fn failed(&mut self, now: Instant) -> Option<u64> {
        self.since.get_or_insert(now);
        match self.warned {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.quiet += 1;
                None
            }
            _ => {
                self.warned = Some(now);
                Some(std::mem::take(&mut self.quiet))
            }
        }
    }

    /// The API server answered at `now`: how long it had not, if it had failed.
    fn answered(&mut self, now: Instant) -> Option<Duration> {
        let since = self.since.take()?;
        self.warned = None;
        self.quiet = 0;
        Some(now.saturating_duration_since(since))
    }
}

#[cfg(test)]
mod tests;
