//! The pods each watch has seen and the workers they stand for: watch events in, fleet events
//! out. No client and no clock of its own, so every transition is tested with plain pod
//! objects.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;

use crate::config::{Origin, Role, Selector, ServiceDiscoveryConfig, WorkerSpec, WorkerUrl};
use crate::fleet::FleetEvent;

/// One label selector watched, and the role its pods play.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// Regular, prefill or decode.
    pub role: Role,
    /// Sent to the API server as the `labelSelector` of every list and watch.
    pub selector: Selector,
}

impl fmt::Display for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} pods {}", self.role.name(), self.selector.to_query())
    }
}

/// A pod as one watch sees it: the watch's index and the pod's `namespace/name`.
type PodKey = (usize, String);

#[derive(Debug)]
struct Known {
    /// The worker the pod stands for while it may serve, else why it may not.
    worker: Result<WorkerSpec, &'static str>,
    /// The malformed bootstrap-port annotation last warned about.
    bad_annotation: Option<String>,
}

/// Every pod the watches reported and the workers they stand for. A pod serves while its phase
/// is `Running`, its `Ready` condition is `True`, it has a pod IP and it is not being deleted;
/// its worker is `http://{podIP}:{port}`.
#[derive(Debug)]
pub struct Pods {
    watches: Vec<Watch>,
    port: u16,
    annotation: String,
    ranks: NonZeroU32,
    /// URLs of the static workers: a pod cannot take one over.
    fixed: HashSet<String>,
    /// URLs already warned about: static ones some pod has, or ones two pods share.
    warned: HashSet<String>,
    known: BTreeMap<PodKey, Known>,
    /// Per watch, the pods listed since its relist began; `None` outside a relist.
    relisting: Vec<Option<HashSet<String>>>,
    /// The workers added to the fleet, by URL, with the pod behind each.
    serving: BTreeMap<String, (PodKey, WorkerSpec)>,
}

impl Pods {
    /// No pod yet; one watch per selector `settings` gives (`--selector` for regular workers,
    /// `--prefill-selector` and `--decode-selector` for P/D roles). Pods at the URL of one of
    /// `statics` are ignored.
    pub fn new(settings: &ServiceDiscoveryConfig, statics: &[WorkerSpec]) -> Self {
        let watches: Vec<Watch> = [
            (Role::Regular, &settings.selector),
            (Role::Prefill, &settings.prefill_selector),
            (Role::Decode, &settings.decode_selector),
        ]
        .into_iter()
        .filter(|(_, selector)| !selector.is_empty())
        .map(|(role, selector)| Watch {
            role,
            selector: selector.clone(),
        })
        .collect();
        Self {
            relisting: vec![None; watches.len()],
            watches,
            port: settings.port,
            annotation: settings.bootstrap_port_annotation.clone(),
            ranks: settings.ranks,
            fixed: statics.iter().map(|s| s.url.text.clone()).collect(),
            warned: HashSet::new(),
            known: BTreeMap::new(),
            serving: BTreeMap::new(),
        }
    }

    /// The watches, in the order their indexes refer to.
    pub fn watches(&self) -> &[Watch] {
        &self.watches
    }

    /// The watches as `role pods k=v` text, for logs.
    pub fn selectors(&self) -> Vec<String> {
        self.watches.iter().map(Watch::to_string).collect()
    }

    /// How many workers the pods currently stand for.
    pub fn len(&self) -> usize {
        self.serving.len()
    }

    /// Whether no pod currently serves.
    pub fn is_empty(&self) -> bool {
        self.serving.is_empty()
    }

    /// One event of watch `watch` (an index into [`Pods::watches`]). A relist (`Init`, the
    /// pods listed, `InitDone`) applies each pod as it comes and, once complete, drops the pods
    /// of that watch it did not list again.
    pub fn apply(&mut self, watch: usize, event: Event<Pod>) -> Vec<FleetEvent> {
        if watch >= self.watches.len() {
            return Vec::new();
        }
        match event {
            Event::Init => {
                self.relisting[watch] = Some(HashSet::new());
                Vec::new()
            }
            Event::InitApply(pod) => {
                if let (Some(listed), Some(name)) = (&mut self.relisting[watch], pod_name(&pod)) {
                    listed.insert(name);
                }
                self.upsert(watch, &pod)
            }
            Event::Apply(pod) => self.upsert(watch, &pod),
            Event::Delete(pod) => match pod_name(&pod) {
                Some(name) => self.remove(vec![(watch, name)], "deleted"),
                None => Vec::new(),
            },
            Event::InitDone => {
                let Some(listed) = self.relisting[watch].take() else {
                    return Vec::new();
                };
                let gone = self
                    .known
                    .keys()
                    .filter(|(w, name)| *w == watch && !listed.contains(name))
                    .cloned()
                    .collect();
                self.remove(gone, "no longer listed")
            }
        }
    }

    /// A pod added or changed.
    fn upsert(&mut self, watch: usize, pod: &Pod) -> Vec<FleetEvent> {
        let Some(name) = pod_name(pod) else {
            tracing::debug!("Kubernetes discovery: ignoring a pod without a name");
            return Vec::new();
        };
        let key = (watch, name);
        let mut bad_annotation = self.known.get(&key).and_then(|k| k.bad_annotation.clone());
        let worker = self.worker(watch, &key.1, pod, &mut bad_annotation);
        let mut touched: Vec<String> = Vec::with_capacity(2);
        if let Some(Known {
            worker: Ok(old), ..
        }) = self.known.get(&key)
        {
            touched.push(old.url.text.clone());
        }
        if let Ok(new) = &worker {
            touched.push(new.url.text.clone());
        }
        self.known.insert(
            key,
            Known {
                worker,
                bad_annotation,
            },
        );
        self.reconcile(touched, "deleted")
    }

    /// Pods gone for `reason`.
    fn remove(&mut self, keys: Vec<PodKey>, reason: &'static str) -> Vec<FleetEvent> {
        let mut touched = Vec::new();
        for key in keys {
            if let Some(Known {
                worker: Ok(old), ..
            }) = self.known.remove(&key)
            {
                touched.push(old.url.text);
            }
        }
        self.reconcile(touched, reason)
    }

    /// The worker `pod` (watched by `watch`, named `name`) stands for, or why it does not
    /// serve. `bad_annotation` is the malformed annotation value last warned about.
    fn worker(
        &mut self,
        watch: usize,
        name: &str,
        pod: &Pod,
        bad_annotation: &mut Option<String>,
    ) -> Result<WorkerSpec, &'static str> {
        if pod.metadata.deletion_timestamp.is_some() {
            return Err("terminating");
        }
        let status = pod.status.as_ref().ok_or("no status")?;
        if status.phase.as_deref() != Some("Running") {
            return Err("not running");
        }
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if !ready {
            return Err("not ready");
        }
        let ip = status
            .pod_ip
            .as_deref()
            .filter(|ip| !ip.is_empty())
            .ok_or("no pod IP")?;
        let ip: IpAddr = ip.parse().map_err(|_| "pod IP is not an IP address")?;
        let address = SocketAddr::new(ip, self.port);
        let url = WorkerUrl::parse("podIP", &format!("http://{address}"))
            .map_err(|_| "pod IP makes no worker URL")?;
        if self.fixed.contains(&url.text) {
            if self.warned.insert(url.text.clone()) {
                tracing::warn!(
                    pod = name,
                    worker = %url.text,
                    "Kubernetes discovery: a pod has the URL of a static worker; ignored, the static worker stays as configured"
                );
            }
            return Err("static worker");
        }
        let role = self.watches[watch].role;
        let bootstrap_port = match role {
            Role::Prefill => self.bootstrap_port(name, pod, bad_annotation),
            Role::Regular | Role::Decode => None,
        };
        Ok(WorkerSpec {
            ranks: self.ranks,
            bootstrap_port,
            origin: Origin::Kubernetes,
            ..WorkerSpec::with_role(url, role)
        })
    }

    /// A prefill pod's bootstrap port from its annotation; a malformed value is warned about
    /// (once per value) and ignored.
    fn bootstrap_port(
        &self,
        name: &str,
        pod: &Pod,
        bad_annotation: &mut Option<String>,
    ) -> Option<u16> {
        let raw = pod.metadata.annotations.as_ref()?.get(&self.annotation)?;
        match raw.trim().parse::<u16>() {
            Ok(port) if port > 0 => {
                *bad_annotation = None;
                Some(port)
            }
            _ => {
                if bad_annotation.as_deref() != Some(raw.as_str()) {
                    tracing::warn!(
                        pod = name,
                        annotation = %self.annotation,
                        value = %raw,
                        "Kubernetes discovery: the bootstrap port annotation is not a port number; ignored"
                    );
                    *bad_annotation = Some(raw.clone());
                }
                None
            }
        }
    }

    /// Bring the fleet in line with the pods for each of `urls`: the first serving pod with a
    /// URL stands for its worker. `gone` is why a pod that is no longer known left.
    fn reconcile(&mut self, mut urls: Vec<String>, gone: &'static str) -> Vec<FleetEvent> {
        urls.sort_unstable();
        urls.dedup();
        let (mut leaving, mut joining) = (Vec::new(), Vec::new());
        for url in urls {
            let mut claims = self
                .known
                .iter()
                .filter_map(|(key, known)| match &known.worker {
                    Ok(spec) if spec.url.text == url => Some((key, spec)),
                    _ => None,
                });
            let wanted = claims.next().map(|(key, spec)| (key.clone(), spec.clone()));
            if let Some((other, _)) = claims.next()
                && self.warned.insert(url.clone())
            {
                tracing::warn!(
                    worker = %url,
                    pod = %other.1,
                    "Kubernetes discovery: more than one pod (or selector) has this URL; the first one serves"
                );
            }
            match (self.serving.remove(&url), wanted) {
                (None, None) => {}
                (None, Some((key, spec))) => {
                    tracing::info!(
                        pod = %key.1,
                        worker = %url,
                        role = spec.role.name(),
                        bootstrap_port = ?spec.bootstrap_port,
                        "Kubernetes discovery: pod joined"
                    );
                    joining.push(FleetEvent::Add(spec.clone()));
                    self.serving.insert(url, (key, spec));
                }
                (Some((key, _)), None) => {
                    tracing::info!(
                        pod = %key.1,
                        worker = %url,
                        reason = %self.why_not(&key, gone),
                        "Kubernetes discovery: pod left"
                    );
                    leaving.push(FleetEvent::Remove(url));
                }
                (Some((_, was)), Some((key, spec))) => {
                    if was != spec {
                        tracing::info!(
                            pod = %key.1,
                            worker = %url,
                            role = spec.role.name(),
                            bootstrap_port = ?spec.bootstrap_port,
                            "Kubernetes discovery: pod changed; replacing its worker"
                        );
                        leaving.push(FleetEvent::Remove(url.clone()));
                        joining.push(FleetEvent::Add(spec.clone()));
                    }
                    self.serving.insert(url, (key, spec));
                }
            }
        }
        leaving.extend(joining);
        leaving
    }

    /// Why the pod behind a worker that just left no longer serves.
    fn why_not(&self, key: &PodKey, gone: &'static str) -> String {
        match self.known.get(key).map(|k| &k.worker) {
            None => gone.to_owned(),
            Some(Err(why)) => (*why).to_owned(),
            Some(Ok(spec)) => format!("moved to {}", spec.url.text),
        }
    }
}

/// `namespace/name`, or `None` for a pod without a name.
fn pod_name(pod: &Pod) -> Option<String> {
    let name = pod.metadata.name.as_deref()?;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    Some(format!("{namespace}/{name}"))
}
