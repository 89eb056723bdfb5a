//! vllm-project/router's README, command by command: each line as it is written there, with
//! only hosts and ports changed to simulated workers on loopback, checked by what it does.

use http::Method;
use vllm_sim::{Role, SimConfig, SimServer};

use crate::support::*;

fn urls(workers: &[SimServer]) -> Vec<String> {
    workers.iter().map(SimServer::url).collect()
}

/// `args` with `{W}`, `{P}`, `{D}` (the next worker, prefill or decode URL) filled in.
fn command(args: &[&str], w: &[SimServer], p: &[SimServer], d: &[SimServer]) -> Vec<String> {
    let (mut w, mut p, mut d) = (
        urls(w).into_iter(),
        urls(p).into_iter(),
        urls(d).into_iter(),
    );
    args.iter()
        .map(|a| match *a {
            "{W}" => w.next().unwrap(),
            "{P}" => p.next().unwrap(),
            "{D}" => d.next().unwrap(),
            other => other.to_owned(),
        })
        .collect()
}

async fn chat_with(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(
        Method::POST,
        &format!("http://{addr}/v1/chat/completions"),
        &all,
        chat(MODEL, false).to_string(),
    )
    .await
}

/// A fast worker of `role`.
fn of_role(role: Role) -> SimConfig {
    SimConfig {
        role,
        ..SimConfig::default()
    }
}

/// The `kv_transfer_params` these workers received, request by request.
fn kv_params(servers: &[SimServer]) -> Vec<serde_json::Value> {
    servers
        .iter()
        .flat_map(SimServer::records)
        .filter_map(|r| r.kv_transfer_params)
        .collect()
}

fn stop(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn data_parallel_routing() {
    let dp = || SimConfig {
        data_parallel_size: 8,
        ..SimConfig::default()
    };
    let workers = sims([dp(), dp()]).await;
    // ./target/release/vllm-router --worker-urls http://worker1:8000 http://worker2:8000 \
    //     --policy consistent_hash --intra-node-data-parallel-size 8
    let args = [
        "--worker-urls",
        "{W}",
        "{W}",
        "--policy",
        "consistent_hash",
        "--intra-node-data-parallel-size",
        "8",
    ];
    let (child, addr) = spawn_router(&command(&args, &workers, &[], &[]), &[]).await;
    let mut ranks = std::collections::HashSet::new();
    for session in 0..12 {
        let key = format!("user-{session}");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 {
            let r = chat_with(addr, &[("x-session-id", &key)]).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            seen.insert(r.header("x-vllm-router-worker").to_owned());
        }
        assert_eq!(
            seen.len(),
            1,
            "a session keeps its worker and rank: {seen:?}"
        );
        ranks.extend(seen);
    }
    assert!(ranks.iter().all(|r| r.contains('#')), "{ranks:?}");
    assert!(ranks.len() > 2, "sessions spread over the ranks: {ranks:?}");
    stop(child);
}

#[tokio::test]
async fn prefill_decode_with_nixl() {
    let prefill = sims([of_role(Role::Prefill), of_role(Role::Prefill)]).await;
    let decode = sims((0..4).map(|_| of_role(Role::Decode))).await;
    let args = [
        "--policy",
        "consistent_hash",
        "--vllm-pd-disaggregation",
        "--prefill",
        "{P}",
        "--prefill",
        "{P}",
        "--decode",
        "{D}",
        "--decode",
        "{D}",
        "--decode",
        "{D}",
        "--decode",
        "{D}",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--intra-node-data-parallel-size",
        "1",
    ];
    let (child, addr) = spawn_router(&command(&args, &[], &prefill, &decode), &[]).await;
    let r = chat_with(addr, &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (p, d) = (kv_params(&prefill), kv_params(&decode));
    assert_eq!((p.len(), d.len()), (1, 1));
    assert_eq!(p[0]["do_remote_decode"], true);
    assert_eq!(d[0]["do_remote_prefill"], true);
    stop(child);
}

#[tokio::test]
async fn prefill_decode_with_zmq_discovery_and_with_mooncake() {
    // ZMQ discovery: the router listens for vLLM's registrations (tests/openai registers with
    // pyzmq); with none yet, it serves and says no worker is ready.
    let zmq_port = ClosedPort::hold().addr().port();
    let discovery = format!("127.0.0.1:{zmq_port}");
    let args = [
        "--policy",
        "consistent_hash",
        "--vllm-pd-disaggregation",
        "--vllm-discovery-address",
        &discovery,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--prefill-policy",
        "consistent_hash",
        "--decode-policy",
        "consistent_hash",
    ]
    .map(String::from);
    let (child, addr) = spawn_router(&args, &[]).await;
    assert!(
        tokio::net::TcpStream::connect(&discovery).await.is_ok(),
        "the ZMQ socket listens"
    );
    chat_with(addr, &[]).await.assert_error(503);
    stop(child);
    // Mooncake, with each prefill's bootstrap port given (vLLM's default, 8998, cannot be every
    // loopback worker's; the simulator serves Mooncake's `/query` on its own port).
    let prefill = sims([of_role(Role::Prefill), of_role(Role::Prefill)]).await;
    let decode = sims([of_role(Role::Decode), of_role(Role::Decode)]).await;
    let bootstrap: Vec<String> = prefill
        .iter()
        .map(|p| p.addr().port().to_string())
        .collect();
    let args = [
        "--policy",
        "consistent_hash",
        "--vllm-pd-disaggregation",
        "--kv-connector",
        "mooncake",
        "--prefill",
        "{P}",
        &bootstrap[0],
        "--prefill",
        "{P}",
        &bootstrap[1],
        "--decode",
        "{D}",
        "--decode",
        "{D}",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--intra-node-data-parallel-size",
        "1",
    ];
    let (child, addr) = spawn_router(&command(&args, &[], &prefill, &decode), &[]).await;
    let r = chat_with(addr, &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let params = kv_params(&decode);
    assert_eq!(params.len(), 1);
    assert!(
        params[0]["remote_bootstrap_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("http://127.0.0.1:"))
    );
    assert!(params[0]["transfer_id"].is_string());
    stop(child);
}

#[tokio::test]
async fn authentication_by_validation_url_from_dot_env_or_the_flag() {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/api/v4/user",
        get(|headers: http::HeaderMap| async move {
            let ok = headers
                .get("authorization")
                .is_some_and(|v| v == "Bearer good");
            if ok {
                http::StatusCode::OK
            } else {
                http::StatusCode::UNAUTHORIZED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let validation = format!("http://{}/api/v4/user", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let workers = fast_sims(1).await;
    let dir = std::env::temp_dir().join(format!("readme-dotenv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // # .env
    // API_KEY_VALIDATION_URLS=https://codebase.helmholtz.cloud/api/v4/user
    std::fs::write(
        dir.join(".env"),
        format!("API_KEY_VALIDATION_URLS={validation}\n"),
    )
    .unwrap();
    for args in [
        vec!["--worker-urls".to_owned(), workers[0].url()],
        // vllm-router --api-key-validation-urls https://codebase.helmholtz.cloud/api/v4/user
        vec![
            "--api-key-validation-urls".to_owned(),
            validation.clone(),
            "--worker-urls".to_owned(),
            workers[0].url(),
        ],
    ] {
        let (child, addr, _) = spawn_router_in(&dir, &args, &[]).await;
        assert_eq!(chat_with(addr, &[]).await.status, 401);
        assert_eq!(
            chat_with(addr, &[("authorization", "Bearer bad")])
                .await
                .status,
            401
        );
        assert_eq!(
            chat_with(addr, &[("authorization", "Bearer good")])
                .await
                .status,
            200
        );
        stop(child);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn metrics_retries_breakers_and_request_ids() {
    let workers = fast_sims(2).await;
    // Custom metrics configuration.
    let metrics_port = ClosedPort::hold().addr().port().to_string();
    let args = [
        "--worker-urls",
        "{W}",
        "{W}",
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        &metrics_port,
    ];
    let (child, addr) = spawn_router(&command(&args, &workers, &[], &[]), &[]).await;
    assert_eq!(chat_with(addr, &[]).await.status, 200);
    let metrics = get(&format!("http://127.0.0.1:{metrics_port}/metrics")).await;
    assert_eq!(metrics.status, 200);
    assert!(String::from_utf8_lossy(&metrics.body).contains("vllm_router_requests_total"));
    stop(child);

    // Retry configuration: a 503 is tried on the other worker before it is answered.
    let args = [
        "--worker-urls",
        "{W}",
        "{W}",
        "--retry-max-retries",
        "3",
        "--retry-initial-backoff-ms",
        "100",
        "--retry-max-backoff-ms",
        "10000",
        "--retry-backoff-multiplier",
        "2.0",
        "--retry-jitter-factor",
        "0.1",
    ];
    let (child, addr) = spawn_router(&command(&args, &workers, &[], &[]), &[]).await;
    let before: usize = workers.iter().map(|w| w.records().len()).sum();
    assert_eq!(
        chat_with(addr, &[("x-return-error", "503")]).await.status,
        503
    );
    let after: usize = workers.iter().map(|w| w.records().len()).sum();
    assert_eq!(after - before, 2, "both workers tried");
    stop(child);

    // Request id tracking: the first header present names the request, end to end.
    let args = [
        "--worker-urls",
        "{W}",
        "--request-id-headers",
        "x-trace-id",
        "x-request-id",
    ];
    let (child, addr) = spawn_router(&command(&args, &workers, &[], &[]), &[]).await;
    let r = chat_with(
        addr,
        &[("x-trace-id", "trace-123"), ("x-request-id", "other")],
    )
    .await;
    assert_eq!(r.header("x-request-id"), "trace-123");
    let seen = workers[0].records().pop().unwrap();
    assert_eq!(seen.request_id.as_deref(), Some("trace-123"));
    stop(child);
}

#[tokio::test]
async fn circuit_breakers_take_a_failing_worker_out() {
    let workers = failing_then_healthy().await;
    let args = [
        "--worker-urls",
        "{W}",
        "{W}",
        "--cb-failure-threshold",
        "5",
        "--cb-success-threshold",
        "2",
        "--cb-timeout-duration-secs",
        "30",
        "--cb-window-duration-secs",
        "60",
    ];
    let (child, addr) = spawn_router(&command(&args, &workers, &[], &[]), &[]).await;
    for _ in 0..20 {
        assert_eq!(
            chat_with(addr, &[]).await.status,
            200,
            "retried on the good worker"
        );
    }
    let failed = workers[0].records().len();
    assert!(
        (1..=5).contains(&failed),
        "out of rotation after its failures: {failed}"
    );
    stop(child);
}

#[tokio::test]
async fn session_affinity_by_x_session_id() {
    let workers = fast_sims(3).await;
    let args = [
        "--worker-urls",
        "{W}",
        "{W}",
        "{W}",
        "--policy",
        "consistent_hash",
    ];
    let (child, addr) = spawn_router(&command(&args, &workers, &[], &[]), &[]).await;
    // curl -X POST http://router:8000/v1/chat/completions -H "X-Session-ID: my-session-123" ...
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5 {
        let r = chat_with(addr, &[("X-Session-ID", "my-session-123")]).await;
        assert_eq!(r.status, 200);
        seen.insert(r.header("x-vllm-router-worker").to_owned());
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    stop(child);
}

#[tokio::test]
async fn grpc_workers_and_wasm_middleware_are_refused_saying_why() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vllm-router"))
            .args(args)
            .env_clear()
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // Kubernetes discovery's command runs against a stand-in API server in the kube suite
    // (`vllm_project_routers_readme_command_discovers_the_pods_its_selector_names`).
    // vllm-router --host 127.0.0.1 --port 30000 --worker-urls grpc://127.0.0.1:50051
    let (code, said) = run(&[
        "--host",
        "127.0.0.1",
        "--port",
        "30000",
        "--worker-urls",
        "grpc://127.0.0.1:50051",
    ]);
    assert_eq!(code, Some(2));
    assert!(said.contains("grpc:// workers"), "{said}");
    let (code, said) = run(&[
        "--worker-urls",
        "http://localhost:8000",
        "--wasm-middleware",
        "./examples/wasm_middleware/wasm_middleware_example.component.wasm",
        "--wasm-middleware-route",
        "/v1/chat/completions",
    ]);
    assert_eq!(code, Some(2));
    assert!(
        said.contains("'--wasm-middleware' is not supported"),
        "{said}"
    );
}
