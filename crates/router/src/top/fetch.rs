//! Reading the router's live view: `GET {URL}/fleet?history=N` once a second, with the
//! client key as a bearer token when one is given.

use std::time::Duration;

use http::Uri;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::config::{Origin, Secret};
use crate::live::FleetView;
use crate::upstream::Upstream;

/// History points asked for on a first read and after a failure (the sparklines' fill).
pub const FULL_HISTORY: usize = 300;
/// History points asked for while reads succeed: a few, so a late read leaves no gap.
pub const RECENT_HISTORY: usize = 5;
/// How long one read may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The router to read.
#[derive(Debug, Clone)]
pub struct Source {
    base: String,
    upstream: Upstream,
}

impl Source {
    /// A source for the router at `url` (`http://host:port`), sending `api_key` if given.
    pub fn new(url: &str, api_key: Option<&str>) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .map_err(|e| anyhow::anyhow!("--url {url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            anyhow::bail!("--url {url:?} must be an http:// URL with a host");
        }
        let upstream = Upstream::new(TIMEOUT);
        upstream.set_worker_key(api_key.map(Secret::new).as_ref(), false);
        Ok(Self { base, upstream })
    }

    /// The address of the view with the last `history` points.
    pub fn uri(&self, history: usize) -> Result<Uri, String> {
        format!("{}/fleet?history={history}", self.base)
            .parse()
            .map_err(|e| format!("bad URL: {e}"))
    }

    /// One read: the view, or why there is none, as a line for the screen.
    pub async fn fetch(&self, history: usize) -> Result<FleetView, String> {
        let body = self
            .upstream
            .get(self.uri(history)?, TIMEOUT, Origin::Config)
            .await
            .map_err(|e| chain(&e))?;
        serde_json::from_slice(&body).map_err(|e| format!("not a fleet view: {e}"))
    }

    /// Read once a second until `results` is closed, sending every outcome.
    pub async fn poll(self, results: mpsc::Sender<Result<FleetView, String>>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut history = FULL_HISTORY;
        loop {
            tick.tick().await;
            let result = self.fetch(history).await;
            history = if result.is_ok() {
                RECENT_HISTORY
            } else {
                FULL_HISTORY
            };
            if results.send(result).await.is_err() {
                return;
            }
        }
    }
}

/// An error and its causes on one line, without repeats.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}
