use super::*;
use crate::cli::{KvConnector, LogLevel};
use clap::Parser;

fn parse(argv: &[&str]) -> Result<Config, String> {
    let mut full = vec!["vllm-router"];
    full.extend_from_slice(argv);
    let args = crate::cli::RouterOnly::try_parse_from(full)
        .map_err(|e| e.to_string())?
        .args;
    Config::from_args(args).map_err(|e| e.to_string())
}

#[test]
fn defaults_match_the_compatible_router() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.host, "127.0.0.1");
    assert_eq!(c.port, 30000);
    assert_eq!(c.policy, PolicyKind::CacheAware);
    assert_eq!(c.max_payload_size.get(), 64 * 1024 * 1024);
    assert_eq!(
        c.listener,
        ListenerConfig {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            shutdown_timeout: Duration::from_secs(30),
            client_write_timeout: Duration::from_secs(60),
        }
    );
    assert_eq!(c.metrics_listen, Some(("127.0.0.1".into(), 29000)));
    let ids: Vec<_> = c.request_id_headers.iter().map(|h| h.as_str()).collect();
    assert_eq!(
        ids,
        [
            "x-request-id",
            "x-correlation-id",
            "x-trace-id",
            "request-id"
        ]
    );
}

#[test]
fn worker_urls_space_or_comma_separated() {
    let c = parse(&["--worker-urls", "http://a:1,http://b:2/", "http://c:3/v"]).unwrap();
    let urls: Vec<_> = c.workers.iter().map(|w| w.url.text.as_str()).collect();
    assert_eq!(urls, ["http://a:1", "http://b:2", "http://c:3/v"]);
    assert_eq!(c.workers[2].url.prefix, "/v");
    assert!(c.workers.iter().all(|w| w.capacity.is_none()));
}

#[test]
fn worker_capacities_attach_to_listed_workers() {
    let c = parse(&[
        "--worker-urls",
        "http://a:1",
        "http://b:2",
        "--worker-capacity",
        "http://b:2/=8",
    ])
    .unwrap();
    let caps: Vec<_> = c
        .workers
        .iter()
        .map(|w| w.capacity.map(NonZeroU32::get))
        .collect();
    assert_eq!(caps, [None, Some(8)]);
    let e = parse(&[
        "--worker-urls",
        "http://a:1",
        "--worker-capacity",
        "http://z:9=2",
    ])
    .unwrap_err();
    assert!(
        e.contains("--worker-capacity") && e.contains("not among"),
        "{e}"
    );
    let e = parse(&[
        "--worker-urls",
        "http://a:1",
        "--worker-capacity",
        "http://a:1=0",
    ])
    .unwrap_err();
    assert!(e.contains("at least 1"), "{e}");
    let e = parse(&[
        "--worker-urls",
        "http://a:1",
        "--worker-capacity",
        "http://a:1",
    ])
    .unwrap_err();
    assert!(e.contains("URL=N"), "{e}");
}

#[test]
fn bad_values_name_flag_and_value() {
    let e = parse(&["--worker-urls", "gpu1:8000"]).unwrap_err();
    assert!(
        e.contains("--worker-urls") && e.contains("gpu1:8000"),
        "{e}"
    );
    let e = parse(&["--worker-urls", "ftp://a:1"]).unwrap_err();
    assert!(e.contains("http:// or https://"), "{e}");
    assert!(parse(&["--worker-urls", "https://a:1"]).is_ok());
    let e = parse(&["--worker-urls", "http://a:1", "http://a:1/"]).unwrap_err();
    assert!(e.contains("listed twice"), "{e}");
    let e = parse(&["--max-payload-size", "0"]).unwrap_err();
    assert!(e.contains("--max-payload-size") && e.contains("'0'"), "{e}");
    let e = parse(&["--port", "99999"]).unwrap_err();
    assert!(e.contains("--port") && e.contains("99999"), "{e}");
    let e = parse(&["--policy", "fastest"]).unwrap_err();
    assert!(e.contains("--policy") && e.contains("fastest"), "{e}");
    let e = parse(&["--request-id-headers", "bad header"]).unwrap_err();
    assert!(e.contains("--request-id-headers"), "{e}");
    let e = parse(&["--session-key-headers", "x-request-id"]).unwrap_err();
    assert!(
        e.contains("--session-key-headers") && e.contains("request id"),
        "{e}"
    );
    let e = parse(&["--hash-load-factor", "0.5"]).unwrap_err();
    assert!(e.contains("--hash-load-factor") && e.contains("0.5"), "{e}");
    let e = parse(&["--cache-threshold", "1.5"]).unwrap_err();
    assert!(e.contains("--cache-threshold") && e.contains("1.5"), "{e}");
    let e = parse(&["--max-tree-size", "3"]).unwrap_err();
    assert!(e.contains("--max-tree-size"), "{e}");
    let e = parse(&["--rate-limit-tokens-per-second", "0"]).unwrap_err();
    assert!(e.contains("--rate-limit-tokens-per-second"), "{e}");
    let e = parse(&["--retry-on-status", "200"]).unwrap_err();
    assert!(e.contains("--retry-on-status") && e.contains("200"), "{e}");
    let e = parse(&["--health-failure-threshold", "0"]).unwrap_err();
    assert!(e.contains("--health-failure-threshold"), "{e}");
    assert_eq!(parse(&["--disable-retries"]).unwrap().retry.max_retries, 0);
    let e = parse(&["--request-timeout-secs", "0"]).unwrap_err();
    assert!(e.contains("--request-timeout-secs"), "{e}");
    let e = parse(&["--header-read-timeout-secs", "0"]).unwrap_err();
    assert!(e.contains("--header-read-timeout-secs"), "{e}");
    let e = parse(&["--max-header-bytes", "1024"]).unwrap_err();
    assert!(
        e.contains("--max-header-bytes") && e.contains("'1024'"),
        "{e}"
    );
    let e = parse(&["--max-header-bytes", "999999999"]).unwrap_err();
    assert!(e.contains("--max-header-bytes"), "{e}");
    let zero = parse(&["--shutdown-timeout-secs", "0"]).unwrap();
    assert_eq!(zero.listener.shutdown_timeout, Duration::ZERO);
}

#[test]
fn compatible_log_level_names_parse() {
    for (name, level) in [
        ("warning", LogLevel::Warn),
        ("critical", LogLevel::Error),
        ("debug", LogLevel::Debug),
    ] {
        assert_eq!(parse(&["--log-level", name]).unwrap().log.level, level);
    }
}

#[test]
fn every_compatible_policy_name_parses() {
    let names = [
        "round_robin",
        "random",
        "power_of_two",
        "consistent_hash",
        "cache_aware",
        "kv_aware",
        "sticky_least_loaded",
        "least_load",
        "weighted",
    ];
    for name in names {
        assert_eq!(parse(&["--policy", name]).unwrap().policy.name(), name);
    }
}

#[test]
fn pd_flags_take_the_compatible_router_spelling() {
    let c = parse(&[
        "--vllm-pd-disaggregation",
        "--prefill",
        "http://p1:8000",
        "9000",
        "--prefill",
        "http://p2:8000",
        "none",
        "--prefill",
        "http://p3:8000",
        "--decode",
        "http://d1:8001",
        "--decode",
        "http://d2:8001",
        "--intra-node-data-parallel-size",
        "4",
    ])
    .unwrap();
    let roles: Vec<(&str, Role, Option<u16>, u32)> = c
        .workers
        .iter()
        .map(|w| (w.url.text.as_str(), w.role, w.bootstrap_port, w.ranks.get()))
        .collect();
    assert_eq!(
        roles,
        [
            ("http://p1:8000", Role::Prefill, Some(9000), 4),
            ("http://p2:8000", Role::Prefill, None, 4),
            ("http://p3:8000", Role::Prefill, None, 4),
            ("http://d1:8001", Role::Decode, None, 4),
            ("http://d2:8001", Role::Decode, None, 4),
        ]
    );
    let pd = c.pd.unwrap();
    assert_eq!(pd.connector, KvConnector::Nixl);
    assert_eq!(
        (pd.prefill_policy, pd.decode_policy),
        (PolicyKind::CacheAware, PolicyKind::CacheAware),
        "one cost model on both pools: a decode worker pulls only what its own cache lacks"
    );
    assert_eq!(pd.min_uncached_tokens, 0);
    assert!(!pd.recompute_on_prefill_failure && pd.discovery.is_none());
}

#[test]
fn pd_policies_inherit_an_explicit_policy_like_the_compatible_router() {
    let base = [
        "--vllm-pd-disaggregation",
        "--prefill",
        "http://p:1",
        "--decode",
        "http://d:1",
    ];
    let with = |extra: &[&str]| {
        let mut argv = base.to_vec();
        argv.extend_from_slice(extra);
        let pd = parse(&argv).unwrap().pd.unwrap();
        (pd.prefill_policy, pd.decode_policy)
    };
    assert_eq!(
        with(&["--policy", "power_of_two"]),
        (PolicyKind::PowerOfTwo, PolicyKind::PowerOfTwo)
    );
    assert_eq!(
        with(&["--policy", "random", "--decode-policy", "round_robin"]),
        (PolicyKind::Random, PolicyKind::RoundRobin)
    );
    let c = parse(
        &[
            &base[..],
            &[
                "--kv-connector",
                "mooncake",
                "--vllm-discovery-address",
                "0.0.0.0:30001",
            ],
        ]
        .concat(),
    )
    .unwrap();
    let pd = c.pd.unwrap();
    assert_eq!(pd.connector, KvConnector::Mooncake);
    assert_eq!(
        pd.discovery.map(|d| (d.address, d.expiry)),
        Some(("0.0.0.0:30001".into(), Duration::from_secs(5)))
    );
}

#[test]
fn pd_misconfigurations_name_the_flag() {
    let err = |argv: &[&str]| parse(argv).unwrap_err();
    assert!(err(&["--prefill", "http://p:1"]).contains("--vllm-pd-disaggregation"));
    assert!(err(&["--decode", "http://d:1"]).contains("--vllm-pd-disaggregation"));
    assert!(err(&["--vllm-pd-disaggregation", "--prefill", "http://p:1"]).contains("--decode"));
    assert!(
        err(&[
            "--vllm-pd-disaggregation",
            "--prefill",
            "http://p:1",
            "x9",
            "--decode",
            "http://d:1"
        ])
        .contains("bootstrap port")
    );
    assert!(
        err(&[
            "--vllm-pd-disaggregation",
            "--prefill",
            "http://p:1",
            "--decode",
            "http://p:1"
        ])
        .contains("listed twice")
    );
    assert!(err(&["--intra-node-data-parallel-size", "0"]).contains("at least 1"));
    assert!(err(&["--vllm-discovery-address", "nohost"]).contains("host:port"));
    // Discovery alone is a P/D fleet that fills itself.
    assert!(
        parse(&["--vllm-discovery-address", "127.0.0.1:30001"])
            .unwrap()
            .pd
            .is_some()
    );
}

#[test]
fn sglang_gateway_names_for_consistent_hashing_and_its_key_headers_are_taken() {
    let c = parse(&[
        "--policy",
        "consistent_hashing",
        "--routing-key-headers",
        "X-Tenant,x-conversation",
    ])
    .unwrap();
    assert_eq!(c.policy, PolicyKind::ConsistentHash);
    let names: Vec<_> = c.session_key_headers.iter().map(|h| h.as_str()).collect();
    assert_eq!(names, ["x-tenant", "x-conversation"]);
}

#[test]
fn vllm_project_routers_flags_are_understood() {
    // Its README's circuit-breaker example.
    let config = parse(&[
        "--worker-urls",
        "http://localhost:8080",
        "http://localhost:8081",
        "--cb-failure-threshold",
        "5",
        "--cb-success-threshold",
        "2",
        "--cb-timeout-duration-secs",
        "30",
        "--cb-window-duration-secs",
        "60",
    ])
    .unwrap();
    assert_eq!(config.breaker.window, std::time::Duration::from_secs(60));
    assert_eq!(config.breaker.failure_threshold, 5);
    // The kv_aware family: understood, refused with a message naming the flag and saying why.
    for (flag, value) in [
        ("--kv-event-source", "http://w:8000=tcp://w:5557"),
        ("--kv-event-replay-source", "http://w:8000=tcp://w:5558"),
        ("--kv-event-block-size", "16"),
        ("--kv-event-model", "m"),
        ("--pd-kv-events", "http://p:8000=tcp://p:5557"),
        ("--router-temperature", "0.5"),
        ("--kv-penalty-host", "0.8"),
        ("--kv-penalty-external", "0.6"),
        ("--kv-penalty-disk", "0.3"),
        ("--kv-aware-session-affinity-ttl-secs", "60"),
    ] {
        let e = parse(&["--worker-urls", "http://a:1", flag, value]).unwrap_err();
        assert!(
            e.contains(flag) && e.contains("not have yet"),
            "{flag}: {e}"
        );
    }
    let e = parse(&["--kv-connector", "moriio"]).unwrap_err();
    assert!(e.contains("MoRI-IO is not supported"), "{e}");
    assert!(parse(&["--kv-connector", "mooncake"]).is_ok());
    assert!(parse(&["--health-compat"]).unwrap().health_compat);
    let e = parse(&[
        "--wasm-middleware",
        "./m.wasm",
        "--wasm-middleware-route",
        "/v1/chat/completions",
    ])
    .unwrap_err();
    assert!(e.starts_with("'--wasm-middleware' is not supported"), "{e}");
    let e = parse(&["--worker-urls", "grpc://127.0.0.1:50051"]).unwrap_err();
    assert!(e.contains("grpc:// workers"), "{e}");
}
