//! What one request costs the router in heap allocations and lock acquisitions, counted, not
//! timed: `cargo bench -p vllm-router --bench request_path --features lock-count`.
//!
//! For each mode the router runs alone in a child process of this bench, whose global
//! allocator counts every allocation (`stats_alloc`) and whose locks count their acquisitions
//! (`vllm_router::sync`); the two simulated workers (`vllm-sim`, 0.5 ms between tokens) and the
//! load client run in the parent. The figures are the router process's: its server and
//! upstream connections (hyper), its request path, and the tasks it runs beside (health
//! probes, scrapes), the latter spread thin over thousands of requests. Locks inside
//! dependencies (tokio's scheduler, hyper's connection pool, prometheus-client's families)
//! are not counted.
//!
//! Modes, each after a warm-up: non-streaming and streaming chat with `round_robin`, the
//! default policy on a 2 KB chat prompt next to `round_robin` on the same prompt, and access
//! lines at `--log-level info`. Per streamed token: the difference between streams of 4 and
//! 36 tokens, divided by the 32 extra events.
//!
//! Extra arguments: `--requests N` (per mode, default 4000), `--mode NAME` (one mode only),
//! `--wrap 'CMD ARGS'` (start each router under a profiler, e.g. `--wrap heaptrack`).

use std::alloc::System;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tokio::net::TcpListener;
use vllm_router::cli::{LogLevel, RouterArgs};
use vllm_router::config::Config;
use vllm_router::policy::PolicyKind;
use vllm_router::server::RouterHandle;
use vllm_sim::SimConfig;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// One measured way of sending requests.
#[derive(Clone, Copy)]
struct Mode {
    name: &'static str,
    what: &'static str,
    policy: PolicyKind,
    stream: bool,
    max_tokens: u32,
    long_prompt: bool,
    access_logs: bool,
}

const MODES: &[Mode] = &[
    Mode {
        name: "non-stream",
        what: "non-streaming chat, `round_robin`",
        policy: PolicyKind::RoundRobin,
        stream: false,
        max_tokens: 4,
        long_prompt: false,
        access_logs: false,
    },
    Mode {
        name: "stream",
        what: "streaming chat, 4 tokens, `round_robin`",
        policy: PolicyKind::RoundRobin,
        stream: true,
        max_tokens: 4,
        long_prompt: false,
        access_logs: false,
    },
    Mode {
        name: "stream-36",
        what: "streaming chat, 36 tokens, `round_robin`",
        policy: PolicyKind::RoundRobin,
        stream: true,
        max_tokens: 36,
        long_prompt: false,
        access_logs: false,
    },
    Mode {
        name: "2k-round-robin",
        what: "non-streaming chat, 2 KB prompt, `round_robin`",
        policy: PolicyKind::RoundRobin,
        stream: false,
        max_tokens: 4,
        long_prompt: true,
        access_logs: false,
    },
    Mode {
        name: "2k-default",
        what: "non-streaming chat, 2 KB prompt, the default policy (`cache_aware`)",
        policy: PolicyKind::CacheAware,
        stream: false,
        max_tokens: 4,
        long_prompt: true,
        access_logs: false,
    },
    Mode {
        name: "access-logs",
        what: "non-streaming chat, `round_robin`, `--log-level info` (an access line each)",
        policy: PolicyKind::RoundRobin,
        stream: false,
        max_tokens: 4,
        long_prompt: false,
        access_logs: true,
    },
];

/// What a mode measured.
struct Counts {
    requests: u64,
    allocations: u64,
    bytes: u64,
    locks: u64,
}

impl Counts {
    fn per_request(&self, n: u64) -> f64 {
        n as f64 / self.requests as f64
    }

    fn line(&self) -> String {
        format!(
            "{} {} {} {}",
            self.requests, self.allocations, self.bytes, self.locks
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let mut it = line.split_whitespace().map(str::parse::<u64>);
        Some(Self {
            requests: it.next()?.ok()?,
            allocations: it.next()?.ok()?,
            bytes: it.next()?.ok()?,
            locks: it.next()?.ok()?,
        })
    }
}

const URL_PREFIX: &str = "url: ";
const COUNTS_PREFIX: &str = "counts: ";

fn main() {
    let mut args = std::env::args().skip(1);
    let mut requests = 4000u64;
    let mut only: Option<String> = None;
    let mut wrap: Vec<String> = Vec::new();
    let mut child: Option<(String, String)> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--requests" => {
                requests = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--requests N");
            }
            "--mode" => only = args.next(),
            "--wrap" => {
                wrap = args
                    .next()
                    .map(|w| w.split_whitespace().map(str::to_owned).collect())
                    .unwrap_or_default();
            }
            "--router" => child = args.next().zip(args.next()),
            // cargo bench passes `--bench`; nothing else is ours.
            _ => {}
        }
    }
    if let Some((name, workers)) = child {
        let mode = MODES.iter().find(|m| m.name == name).expect("known mode");
        serve(*mode, workers.split(',').map(str::to_owned).collect());
        return;
    }
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("load runtime");
    let (workers, _sims) = load.block_on(async {
        let mut sims = Vec::new();
        for _ in 0..2 {
            // A small inter-token latency, so that each streamed event is a frame of its own.
            let config = SimConfig {
                itl: std::time::Duration::from_micros(500),
                ..SimConfig::default()
            };
            sims.push(vllm_sim::spawn(config).await.expect("sim"));
        }
        let urls: Vec<String> = sims.iter().map(vllm_sim::SimServer::url).collect();
        (urls.join(","), sims)
    });
    let mut results = Vec::new();
    for mode in MODES
        .iter()
        .filter(|m| only.as_deref().is_none_or(|o| o == m.name))
    {
        let mut router = RouterProcess::start(*mode, &workers, &wrap);
        let url: http::Uri = format!("{}/v1/chat/completions", router.url)
            .parse()
            .expect("uri");
        let body = Bytes::from(request_body(*mode));
        let send = |n: u64| {
            load.block_on(send_all(url.clone(), body.clone(), n))
                .unwrap_or_else(|e| panic!("{}: {e}", mode.name));
        };
        send(requests / 4 + 200);
        let before = router.counts();
        send(requests);
        let after = router.counts();
        router.stop();
        results.push((
            *mode,
            Counts {
                requests,
                allocations: after.allocations - before.allocations,
                bytes: after.bytes - before.bytes,
                locks: after.locks - before.locks,
            },
        ));
    }
    print!("{}", report(&results));
}

/// The router of one mode, in a child process that answers `counts` on its standard input
/// with its counters so far.
struct RouterProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    url: String,
}

impl RouterProcess {
    fn start(mode: Mode, workers: &str, wrap: &[String]) -> Self {
        let exe = std::env::current_exe().expect("own path");
        let mut command = match wrap.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(exe);
                command
            }
            None => Command::new(exe),
        };
        let mut child = command
            .args(["--router", mode.name, workers])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the router");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let url = read_prefixed(&mut stdout, URL_PREFIX);
        Self {
            child,
            stdin,
            stdout,
            url,
        }
    }

    fn counts(&mut self) -> Counts {
        let stdin = self.stdin.as_mut().expect("open");
        writeln!(stdin, "counts").expect("ask the router");
        stdin.flush().expect("ask the router");
        Counts::parse(&read_prefixed(&mut self.stdout, COUNTS_PREFIX)).expect("counts")
    }

    fn stop(mut self) {
        // The router exits when its standard input closes.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

fn read_prefixed(from: &mut impl BufRead, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        let n = from.read_line(&mut line).expect("read the router");
        assert!(n > 0, "the router exited before printing {prefix:?}");
        if let Some(rest) = line.trim_end().strip_prefix(prefix) {
            return rest.to_owned();
        }
    }
}

/// The child: run the router of `mode` over `workers` until standard input closes,
/// answering each line with the counters so far.
fn serve(mode: Mode, workers: Vec<String>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("router runtime");
    let config = Config::from_args(RouterArgs {
        host: "127.0.0.1".to_owned(),
        port: 0,
        worker_urls: workers,
        policy: Some(mode.policy),
        prometheus_port: 0,
        log_level: if mode.access_logs {
            LogLevel::Info
        } else {
            LogLevel::Warn
        },
        ..RouterArgs::default()
    })
    .expect("config");
    let _logs = vllm_router::telemetry::init(&config.log).expect("logs");
    let router = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        RouterHandle::spawn(listener, config).await.expect("router")
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{URL_PREFIX}{}", router.url()).expect("stdout");
    out.flush().expect("stdout");
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        let stats = GLOBAL.stats();
        let counts = Counts {
            requests: 0,
            allocations: (stats.allocations + stats.reallocations) as u64,
            bytes: stats.bytes_allocated as u64,
            locks: vllm_router::sync::acquisitions(),
        };
        writeln!(out, "{COUNTS_PREFIX}{}", counts.line()).expect("stdout");
        out.flush().expect("stdout");
    }
    drop(router);
    runtime.shutdown_background();
}

fn report(results: &[(Mode, Counts)]) -> String {
    let mut out = String::from(
        "| mode | requests | allocations / request | bytes / request | locks / request |\n\
         |---|---:|---:|---:|---:|\n",
    );
    for (mode, c) in results {
        out.push_str(&format!(
            "| {} ({}) | {} | {:.1} | {:.0} | {:.1} |\n",
            mode.name,
            mode.what,
            c.requests,
            c.per_request(c.allocations),
            c.per_request(c.bytes),
            c.per_request(c.locks),
        ));
    }
    let find = |name: &str| results.iter().find(|(m, _)| m.name == name).map(|(_, c)| c);
    if let (Some(short), Some(long)) = (find("stream"), find("stream-36")) {
        let per_token = |a: u64, b: u64| (long.per_request(b) - short.per_request(a)) / 32.0;
        out.push_str(&format!(
            "\nPer streamed token (36-token streams less 4-token streams, over 32 events): \
             {:.2} allocations, {:.0} bytes, {:.2} locks.\n",
            per_token(short.allocations, long.allocations),
            per_token(short.bytes, long.bytes),
            per_token(short.locks, long.locks),
        ));
    }
    out
}

fn request_body(mode: Mode) -> String {
    let (system, user) = if mode.long_prompt {
        (
            "You are a careful assistant. Answer briefly and cite the document you use. "
                .repeat(20),
            "Please summarise the attached quarterly report in three short points. ".repeat(6),
        )
    } else {
        (String::new(), "hello".to_owned())
    };
    let mut messages = Vec::new();
    if !system.is_empty() {
        messages.push(serde_json::json!({"role": "system", "content": system}));
    }
    messages.push(serde_json::json!({"role": "user", "content": user}));
    let mut body = serde_json::json!({
        "model": "sim-model",
        "messages": messages,
        "max_tokens": mode.max_tokens,
    });
    if mode.stream {
        body["stream"] = serde_json::Value::Bool(true);
    }
    body.to_string()
}

/// Send `n` requests over 8 connections, reading every answer whole.
async fn send_all(url: http::Uri, body: Bytes, n: u64) -> Result<(), String> {
    const CONNECTIONS: usize = 8;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let left = Arc::new(AtomicUsize::new(n as usize));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (client, url, body, left) = (client.clone(), url.clone(), body.clone(), left.clone());
        tasks.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let request = http::Request::post(url.clone())
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))
                    .map_err(|e| e.to_string())?;
                let response = client.request(request).await.map_err(|e| e.to_string())?;
                let status = response.status();
                let answer = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("status {status}: {:?}", answer.to_bytes()));
                }
            }
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}
