//! Mooncake's bootstrap servers: each prefill worker runs one (at its `--prefill URL PORT`,
//! 8998 by default) whose `GET /query` maps engine ids to the data-parallel ranks they serve.
//! The decode leg names the prefill's engine, so the router asks once per prefill server and
//! remembers the answer until a plan finds it unusable.

use std::collections::HashMap;
use std::sync::Arc;

use crate::app::App;
use crate::fleet::Worker;
use crate::sync::Mutex;

/// Mooncake's default bootstrap port.
pub(crate) const DEFAULT_BOOTSTRAP_PORT: u16 = 8998;

/// Where a decode worker finds one prefill rank's blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Engine {
    /// `http://host:port` of the prefill's bootstrap server.
    pub(crate) bootstrap_addr: String,
    /// The engine serving the prefill worker's rank.
    pub(crate) engine_id: String,
}

/// Known engines by prefill server URL: rank → engine id.
#[derive(Debug, Default)]
pub(crate) struct Bootstrap {
    known: Mutex<HashMap<String, Arc<HashMap<u32, String>>>>,
}

impl Bootstrap {
    /// The engine of `worker`'s rank, asking its bootstrap server when not yet known.
    pub(crate) async fn engine(&self, app: &App, worker: &Worker) -> Result<Engine, String> {
        let port = worker.bootstrap_port().unwrap_or(DEFAULT_BOOTSTRAP_PORT);
        let host = worker.host();
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let bootstrap_addr = format!("http://{host}:{port}");
        let rank = worker.rank().unwrap_or(0);
        let cached = self.known.lock().get(worker.url()).cloned();
        let ranks = match cached {
            Some(ranks) => ranks,
            None => {
                let uri = format!("{bootstrap_addr}/query")
                    .parse()
                    .map_err(|e| format!("bootstrap address {bootstrap_addr}: {e}"))?;
                let body = app
                    .upstream
                    .get(uri, app.config().health.timeout, worker.spec().origin)
                    .await
                    .map_err(|e| format!("{bootstrap_addr}/query: {e}"))?;
                let ranks = Arc::new(parse_query(&body)?);
                self.known
                    .lock()
                    .insert(worker.url().to_owned(), Arc::clone(&ranks));
                ranks
            }
        };
        match ranks.get(&rank) {
            Some(engine_id) => Ok(Engine {
                bootstrap_addr,
                engine_id: engine_id.clone(),
            }),
            None => {
                // Perhaps the server restarted with other engines: ask again next time.
                self.known.lock().remove(worker.url());
                Err(format!(
                    "{bootstrap_addr}/query names no engine for rank {rank}"
                ))
            }
        }
    }
}

/// `{"ENGINE_ID": {"RANK": {...}, ...}, ...}` → rank → engine id.
fn parse_query(body: &[u8]) -> Result<HashMap<u32, String>, String> {
    let engines: HashMap<String, HashMap<String, serde_json::Value>> =
        serde_json::from_slice(body).map_err(|e| format!("unexpected /query answer: {e}"))?;
    let mut ranks = HashMap::new();
    for (engine_id, entries) in engines {
        for rank in entries.keys() {
            let rank: u32 = rank
                .parse()
                .map_err(|_| format!("unexpected rank {rank:?} in the /query answer"))?;
            ranks.insert(rank, engine_id.clone());
        }
    }
    Ok(ranks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_answers_map_ranks_to_engines() {
        let ranks = parse_query(br#"{"e-a":{"0":{"x":1},"1":{}},"e-b":{"2":{}}}"#).unwrap();
        assert_eq!(ranks.get(&1).map(String::as_str), Some("e-a"));
        assert_eq!(ranks.get(&2).map(String::as_str), Some("e-b"));
        assert!(parse_query(br#"{"e":{"zero":{}}}"#).is_err());
        assert!(parse_query(b"[]").is_err());
    }
}
