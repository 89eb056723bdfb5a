//! The router binary finding its API server through a kubeconfig, and stopping without one.

use super::*;

/// A kubeconfig naming the stand-in, with `namespace` as its context's namespace.
fn kubeconfig(api: &ApiServer, namespace: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "kubeconfig-{}-{}",
        std::process::id(),
        api.url().rsplit(':').next().unwrap()
    ));
    let config = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: stand-in\n  cluster:\n    server: {url}\n\
         users:\n\
         - name: router\n  user: {{}}\n\
         contexts:\n\
         - name: stand-in\n  context:\n    cluster: stand-in\n    user: router\n    namespace: {namespace}\n\
         current-context: stand-in\n",
        url = api.url()
    );
    std::fs::write(&path, config).unwrap();
    path
}

#[tokio::test]
async fn the_router_finds_its_api_server_through_kubeconfig_and_routes_to_a_pod() {
    let workers = fast_sims(1).await;
    let api = ApiServer::start().await;
    api.apply(up("vllm-0", "127.0.0.1"));
    let config = kubeconfig(&api, NS);
    let port = workers[0].addr().port().to_string();
    // No namespace flag: the kubeconfig context's namespace is watched.
    let args = [
        "--service-discovery",
        "--selector",
        "app=vllm",
        "--service-discovery-port",
        &port,
    ];
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let (mut child, addr) = spawn_router(&args, &[("KUBECONFIG", config.to_str().unwrap())]).await;
    let router = format!("http://{addr}");

    // Served once the pod's worker has listed its models.
    let chat_url = format!("{router}/v1/chat/completions");
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let reply = post_json(&chat_url, chat(MODEL, false)).await;
        if reply.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never served: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(workers[0].records().len(), 1);
    let about = get(&format!("{router}/")).await.json();
    assert!(about.to_string().contains(&workers[0].url()), "{about}");

    // The pod leaves: nothing serves the model any more.
    api.delete(NS, "vllm-0");
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let reply = post_json(&chat_url, chat(MODEL, false)).await;
        if reply.status != 200 {
            assert!(matches!(reply.status.as_u16(), 404 | 503), "{reply:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the pod never left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        api.requests()
            .iter()
            .all(|r| r.namespace == NS && r.label_selector.as_deref() == Some("app=vllm")),
        "{:?}",
        api.requests()
    );
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_file(config).unwrap();
}

#[tokio::test]
async fn without_a_kubernetes_configuration_the_router_stops_at_start() {
    let missing = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-kubeconfig");
    // A clean environment: no in-cluster variables either.
    let mut command = Command::new(env!("CARGO_BIN_EXE_vllm-router"));
    command
        .args(["--port", "0", "--prometheus-port", "0"])
        .args(["--service-discovery", "--selector", "app=vllm"])
        .env_clear()
        .env("KUBECONFIG", &missing);
    let run = tokio::task::spawn_blocking(move || command.output().unwrap());
    let output = tokio::time::timeout(WITHIN, run).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--service-discovery: no Kubernetes configuration found"),
        "{stderr}"
    );
}

#[tokio::test]
async fn vllm_project_routers_readme_command_discovers_the_pods_its_selector_names() {
    let workers = fast_sims(1).await;
    let api = ApiServer::start().await;
    let labels = json!({"app": "vllm-worker", "role": "inference"});
    api.apply(pod_in(
        "default",
        "vllm-0",
        labels.clone(),
        "127.0.0.1",
        "Running",
        true,
    ));
    // One label of two, or another namespace: not selected.
    api.apply(pod_in(
        "default",
        "half-0",
        json!({"app": "vllm-worker"}),
        "127.0.0.2",
        "Running",
        true,
    ));
    api.apply(pod_in(
        NS,
        "elsewhere-0",
        labels,
        "127.0.0.3",
        "Running",
        true,
    ));
    let config = kubeconfig(&api, NS);
    let port = workers[0].addr().port().to_string();
    // vllm-router --service-discovery --selector app=vllm-worker role=inference \
    //     --service-discovery-namespace default     (and the pods' port: ours is 8000, theirs 80)
    let args = [
        "--service-discovery",
        "--selector",
        "app=vllm-worker",
        "role=inference",
        "--service-discovery-namespace",
        "default",
        "--service-discovery-port",
        &port,
    ]
    .map(String::from);
    let (mut child, addr) = spawn_router(&args, &[("KUBECONFIG", config.to_str().unwrap())]).await;
    let chat_url = format!("http://{addr}/v1/chat/completions");
    let deadline = tokio::time::Instant::now() + WITHIN;
    while post_json(&chat_url, chat(MODEL, false)).await.status != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed = get(&format!("http://{addr}/list_workers")).await.json();
    assert_eq!(listed["urls"], json!([workers[0].url()]));
    let _ = child.kill();
    let _ = child.wait();
}
