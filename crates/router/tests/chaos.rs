//! Chaos: four workers killed, hung and restarted at random under ~200 requests/s of mixed
//! streaming and non-streaming traffic. Worker 0 is never disturbed, so one worker is always
//! healthy. Checks: no non-streaming request fails; every stream ends either complete or
//! with an error event (never silently truncated); no request id got two successful
//! answers (nothing was retried after a worker began answering); in-flight returns to 0;
//! the router's file descriptors return to their starting count. `CHAOS_SECS` sets the
//! length (default 60).

#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // shared fixtures; this binary uses some of them
#[path = "e2e/support.rs"]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use vllm_router::policy::PolicyKind;
use vllm_sim::{SimConfig, SimServer};

use support::*;

/// Concurrent clients; with a 60 ms pause between requests they send about 200 per second.
const CLIENTS: usize = 24;

fn worker_config() -> SimConfig {
    SimConfig {
        itl: Duration::from_millis(5),
        default_max_tokens: 8,
        ..SimConfig::default()
    }
}

/// Every server ever started per address (records survive a kill), the live one last.
type Fleet = Arc<Mutex<Vec<(SocketAddr, Vec<SimServer>, bool)>>>;

/// A listener on `port`, which stays held (refusing connections) whenever no worker listens
/// there: a killed worker's port cannot be given to another test before it restarts.
fn listen_on(port: &ClosedPort) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    // As `TcpListener::bind` does, so the port's connections in TIME_WAIT are no obstacle.
    socket.set_reuseaddr(true).unwrap();
    // Shared with the socket holding the port.
    socket.set_reuseport(true).unwrap();
    socket.bind(port.addr()).unwrap();
    socket.listen(1024).unwrap()
}

async fn restart(fleet: &Fleet, ports: &[ClosedPort], i: usize) {
    let server = vllm_sim::spawn_on(listen_on(&ports[i]), worker_config()).await;
    let mut f = fleet.lock();
    f[i].1.push(server);
    f[i].2 = true;
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[derive(Default, Debug)]
struct Tally {
    plain_ok: u64,
    plain_failed: Vec<String>,
    streams_complete: u64,
    streams_error_event: u64,
    streams_refused_before_start: u64,
    streams_truncated: Vec<String>,
}

async fn stream_once(addr: SocketAddr, tally: &Mutex<Tally>) {
    let body =
        json!({"model": MODEL, "prompt": "chaos", "max_tokens": 8, "stream": true}).to_string();
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: r\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    let mut t = tally.lock();
    if !text.starts_with("HTTP/1.1 200") {
        t.streams_refused_before_start += 1;
    } else if text.contains("data: [DONE]") {
        t.streams_complete += 1;
    } else if text.contains("data: {\"error\"") {
        t.streams_error_event += 1;
    } else {
        t.streams_truncated.push(text.chars().take(400).collect());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_keeps_answers_whole_or_clearly_failed() {
    let secs: u64 = std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let ports: Arc<Vec<ClosedPort>> = Arc::new((0..4).map(|_| ClosedPort::hold()).collect());
    let mut initial = Vec::new();
    for port in ports.iter() {
        initial.push(vllm_sim::spawn_on(listen_on(port), worker_config()).await);
    }
    let router = router_with(&initial, |a| {
        a.policy = Some(PolicyKind::PowerOfTwo);
        a.first_byte_timeout_secs = 1;
        a.health_check_interval_secs = 1;
    })
    .await;
    let fleet: Fleet = Arc::new(Mutex::new(
        initial
            .into_iter()
            .map(|s| (s.addr(), vec![s], true))
            .collect(),
    ));

    // Warm the connection pools at full concurrency, then take the descriptor baseline.
    let warm: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, addr) = (router.url(), router.addr());
            tokio::spawn(async move {
                let scratch = Mutex::new(Tally::default());
                for _ in 0..5 {
                    stream_once(addr, &scratch).await;
                    post_json(
                        &format!("{url}/v1/completions"),
                        json!({"model": MODEL, "prompt": "w"}),
                    )
                    .await;
                }
            })
        })
        .collect();
    for w in warm {
        w.await.unwrap();
    }
    // The warm-up's connections wound down: every request over, and the descriptor count
    // steady for 200 ms.
    let members = router.app().fleet.snapshot();
    eventually(Duration::from_secs(10), || {
        members
            .members()
            .iter()
            .all(|m| m.worker.in_flight() == 0)
            .then_some(())
    })
    .await;
    let mut fds_before = open_fds();
    let settled = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = open_fds();
        if now == fds_before || Instant::now() > settled {
            break;
        }
        fds_before = now;
    }

    let deadline = Instant::now() + Duration::from_secs(secs);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut clients = Vec::new();
    for c in 0..CLIENTS as u64 {
        let (tally, url, addr) = (Arc::clone(&tally), router.url(), router.addr());
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                if (n + c).is_multiple_of(2) {
                    stream_once(addr, &tally).await;
                } else {
                    let r = post_json(
                        &format!("{url}/v1/completions"),
                        json!({"model": MODEL, "prompt": "chaos"}),
                    )
                    .await;
                    let mut t = tally.lock();
                    if r.status == 200 {
                        t.plain_ok += 1;
                    } else {
                        t.plain_failed.push(format!(
                            "{} {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        }));
    }

    let chaos = {
        let fleet = Arc::clone(&fleet);
        tokio::spawn(async move {
            let mut actions = 0u32;
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(fastrand::u64(800..2000))).await;
                let i = fastrand::usize(1..4);
                let outage = Duration::from_millis(fastrand::u64(1000..3000));
                let (live, server_alive) = {
                    let f = fleet.lock();
                    (f[i].1.last().map(|s| s.addr()), f[i].2)
                };
                if live.is_none() || !server_alive {
                    continue;
                }
                actions += 1;
                let fleet = Arc::clone(&fleet);
                let ports = Arc::clone(&ports);
                if fastrand::bool() {
                    {
                        let mut f = fleet.lock();
                        f[i].2 = false;
                        if let Some(s) = f[i].1.last() {
                            s.kill();
                        }
                    }
                    tokio::spawn(async move {
                        tokio::time::sleep(outage).await;
                        restart(&fleet, &ports, i).await;
                    });
                } else {
                    {
                        let mut f = fleet.lock();
                        f[i].2 = false;
                        if let Some(s) = f[i].1.last() {
                            s.set_hang(true);
                        }
                    }
                    tokio::spawn(async move {
                        tokio::time::sleep(outage).await;
                        let mut f = fleet.lock();
                        if let Some(s) = f[i].1.last() {
                            s.set_hang(false);
                        }
                        f[i].2 = true;
                    });
                }
            }
            actions
        })
    };

    for c in clients {
        c.await.unwrap();
    }
    let actions = chaos.await.unwrap();
    // Outages end (within 3 s) and workers return.
    eventually(Duration::from_secs(10), || {
        fleet.lock().iter().all(|(_, _, up)| *up).then_some(())
    })
    .await;

    let t = std::mem::take(&mut *tally.lock());
    println!("chaos: {secs}s, {actions} faults, {t:?}");
    assert!(
        actions >= (secs as u32) / 3,
        "too few faults injected: {actions}"
    );
    assert!(
        t.plain_failed.is_empty(),
        "non-streaming requests failed: {:?}",
        t.plain_failed
    );
    assert!(
        t.streams_truncated.is_empty(),
        "streams ended silently: {:?}",
        t.streams_truncated
    );
    assert!(t.plain_ok > 1000 && t.streams_complete > 1000, "{t:?}");

    // No request id was answered successfully twice: nothing was retried after a worker
    // began answering.
    let mut answered: HashMap<String, u32> = HashMap::new();
    for (_, servers, _) in fleet.lock().iter() {
        for s in servers {
            for r in s.records() {
                if (200..300).contains(&r.status)
                    && let Some(id) = r.request_id
                {
                    *answered.entry(id).or_default() += 1;
                }
            }
        }
    }
    let twice: Vec<_> = answered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "answered twice: {twice:?}");

    let snapshot = router.app().fleet.snapshot();
    eventually(Duration::from_secs(5), || {
        snapshot
            .members()
            .iter()
            .all(|m| m.worker.in_flight() == 0)
            .then_some(())
    })
    .await;
    // The pools were warmed to this concurrency; a leak would grow with the thousands of
    // requests and stay, where connections still closing go within moments.
    let deadline = Instant::now() + Duration::from_secs(10);
    let fds_after = loop {
        let now = open_fds();
        if now <= fds_before + 24 || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("descriptors: {fds_before} before, {fds_after} after");
    assert!(
        fds_after <= fds_before + 24,
        "descriptors grew from {fds_before} to {fds_after}"
    );
}
