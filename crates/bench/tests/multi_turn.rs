//! A short multi-turn run against one in-process simulated worker, over real HTTP.

use clap::Parser;
use vllm_router_bench::cli::Cli;
use vllm_router_bench::run::run;
use vllm_sim::SimConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_turn_run_counts_every_request_and_hits_the_cache() {
    let sim = vllm_sim::spawn(SimConfig::default()).await.unwrap();
    let url = sim.url();
    let cli = Cli::try_parse_from([
        "vllm-router-bench",
        "--target",
        &format!("sim={url}"),
        "--reset-prefix-cache",
        &url,
        "--users",
        "4",
        "--groups",
        "2",
        "--turns",
        "3",
        "--system-prompt-words",
        "100",
        "--user-words",
        "20",
        "--max-tokens",
        "4",
        "--requests",
        "30",
        "--duration-secs",
        "60",
    ])
    .unwrap();
    let config = cli.config().unwrap();
    let reports = run(&config).await.unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.requests, 30, "{r:?}");
    assert_eq!(r.ok, 30, "{r:?}");
    assert_eq!((r.errors, r.shed, r.missing_usage), (0, 0, 0), "{r:?}");
    let hit = r.cache_hit_rate.unwrap();
    assert!(
        hit > 0.3,
        "later turns and shared system prompts hit the cache: {hit}"
    );
    assert!(r.ttft_ms.is_some() && r.e2e_ms.is_some());

    // The worker saw what the report says: every counted request (the users' last requests
    // may be cut off by the limit, never added), with the same token totals.
    let stats = sim.stats();
    let chat = stats
        .by_path
        .get("/v1/chat/completions")
        .copied()
        .unwrap_or(0);
    assert_eq!(chat, 30);
    assert_eq!(stats.prompt_tokens_total, r.prompt_tokens);
    assert_eq!(stats.cached_tokens_total, r.cached_tokens);
}
