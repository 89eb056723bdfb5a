use std::collections::HashMap;
use std::path::Path;

use super::*;
use crate::config::{Role, Secret};

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| vars.get(name).cloned()
}

pub(super) fn load(
    argv: &[&str],
    vars: &[(&str, &str)],
    file: Option<&str>,
) -> Result<Config, String> {
    let sources = Sources::from_argv(argv, env(vars)).map_err(|e| e.to_string())?;
    match file {
        Some(text) => sources.load_text(Path::new("router.toml"), text),
        None => sources.load(),
    }
    .map_err(|e| e.to_string())
}

pub(super) fn place_of(config: &Config, key: &str) -> Place {
    config
        .given
        .iter()
        .find(|(k, _, _)| k == key)
        .map(|(_, _, p)| p.clone())
        .unwrap_or(Place::Default)
}

#[test]
fn each_layer_overrides_the_one_below() {
    let file = Some("port = 1111\n");
    let env_port = [("VLLM_ROUTER_PORT", "2222")];
    assert_eq!(load(&[], &[], None).unwrap().port, 30000, "default");
    assert_eq!(
        load(&[], &[], file).unwrap().port,
        1111,
        "file over default"
    );
    let c = load(&[], &env_port, file).unwrap();
    assert_eq!(c.port, 2222, "environment over file");
    assert_eq!(place_of(&c, "port"), Place::Env("VLLM_ROUTER_PORT".into()));
    let c = load(&["--port", "3333"], &env_port, file).unwrap();
    assert_eq!(c.port, 3333, "flag over environment");
    assert_eq!(place_of(&c, "port"), Place::Flag);
    // A flag left at its default does not hide the file's value.
    assert_eq!(load(&["--host", "0.0.0.0"], &[], file).unwrap().port, 1111);
}

#[test]
fn our_variable_beats_the_legacy_one() {
    assert_eq!(load(&[], &[("PORT", "9000")], None).unwrap().port, 9000);
    let both = [("PORT", "9000"), ("VLLM_ROUTER_PORT", "9001")];
    assert_eq!(load(&[], &both, None).unwrap().port, 9001);
    let legacy = [
        ("LOG_LEVEL", "WARNING"),
        ("HEALTH_CHECK_INTERVAL", "2.5"),
        ("REQUEST_TIMEOUT", "60"),
    ];
    let c = load(&[], &legacy, None).unwrap();
    assert_eq!(c.log.level, crate::cli::LogLevel::Warn);
    assert_eq!(c.health.interval, Duration::from_secs(3), "rounded up");
    assert_eq!(c.timeouts.total, Duration::from_secs(60));
}

#[test]
fn kubernetes_service_links_are_not_settings() {
    let vars = [
        ("VLLM_ROUTER_PORT", "tcp://10.96.0.12:30000"),
        ("VLLM_ROUTER_SERVICE_PORT", "30000"),
        ("VLLM_ROUTER_PROMETHEUS_PORT", "tcp://10.96.0.13:29000"),
    ];
    let c = load(&[], &vars, None).unwrap();
    assert_eq!(
        (c.port, c.metrics_listen.clone().unwrap().1),
        (30000, 29000)
    );
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("service link"), "{:?}", c.warnings);
    // A real value still counts, and so does the legacy variable behind a link.
    let c = load(
        &[],
        &[
            ("VLLM_ROUTER_PORT", "tcp://10.96.0.12:30000"),
            ("PORT", "9000"),
        ],
        None,
    )
    .unwrap();
    assert_eq!(c.port, 9000);
}

#[test]
fn lists_and_switches_from_the_environment() {
    let vars = [
        ("VLLM_ROUTER_WORKER_URLS", "http://a:1,http://b:1"),
        ("VLLM_ROUTER_DISABLE_RETRIES", "true"),
        ("VLLM_ROUTER_POLICY", "round_robin"),
    ];
    let c = load(&[], &vars, None).unwrap();
    assert_eq!(c.workers.len(), 2);
    assert_eq!(c.retry.max_retries, 0);
    assert_eq!(c.policy, PolicyKind::RoundRobin);
    // A list from a higher layer replaces the lower one's whole.
    let c = load(&["--worker-urls", "http://c:1"], &vars, None).unwrap();
    let urls: Vec<&str> = c.workers.iter().map(|w| w.url.text.as_str()).collect();
    assert_eq!(urls, ["http://c:1"]);
    // A switch turned on in the file is turned off by the environment.
    let c = load(
        &[],
        &[("VLLM_ROUTER_DISABLE_RETRIES", "0")],
        Some("disable_retries = true"),
    )
    .unwrap();
    assert_eq!(c.retry.max_retries, 3);
}

use crate::policy::PolicyKind;
use std::time::Duration;

#[test]
fn errors_name_the_key_the_place_and_the_value() {
    let e = load(&[], &[], Some("cache_threshold = 3")).unwrap_err();
    assert!(
        e.contains("'cache_threshold' in router.toml") && e.contains("'3'"),
        "{e}"
    );
    let e = load(&[], &[], Some("cache_threshold = \"high\"")).unwrap_err();
    assert!(
        e.contains("'cache_threshold' in router.toml") && e.contains("high"),
        "{e}"
    );
    let e = load(&[], &[("VLLM_ROUTER_CACHE_THRESHOLD", "2")], None).unwrap_err();
    assert!(
        e.contains("$VLLM_ROUTER_CACHE_THRESHOLD") && e.contains("'2'"),
        "{e}"
    );
    let e = load(&[], &[("VLLM_ROUTER_PORT", "http")], None).unwrap_err();
    assert!(e.contains("$VLLM_ROUTER_PORT") && e.contains("http"), "{e}");
    let e = load(&[], &[("VLLM_ROUTER_DISABLE_RETRIES", "maybe")], None).unwrap_err();
    assert!(e.contains("$VLLM_ROUTER_DISABLE_RETRIES"), "{e}");
    let e = load(&["--cache-threshold", "2"], &[], None).unwrap_err();
    assert!(
        e.contains("'--cache-threshold'") && e.contains("'2'"),
        "{e}"
    );
    let e = load(&[], &[], Some("cache_treshold = 0.5")).unwrap_err();
    assert!(e.contains("unknown key 'cache_treshold'"), "{e}");
    let e = load(&[], &[], Some("config = \"other.toml\"")).unwrap_err();
    assert!(e.contains("unknown key 'config'"), "{e}");
    let e = load(&[], &[], Some("port = ")).unwrap_err();
    assert!(e.contains("router.toml"), "{e}");
}

const NATIVE: &str = r#"
policy = "round_robin"
vllm_pd_disaggregation = true

[[workers]]
url = "http://p1:8000"
role = "prefill"
bootstrap_port = 8998

[[workers]]
url = "http://d1:8000/"
role = "decode"
capacity = 8
weight = 3
ranks = 2
models = ["llama"]
labels = { zone = "a" }
"#;

#[test]
fn the_native_file_gives_every_worker_field() {
    let c = load(&[], &[], Some(NATIVE)).unwrap();
    assert_eq!(c.policy, PolicyKind::RoundRobin);
    let [p, d] = c.workers.as_slice() else {
        panic!("{:?}", c.workers)
    };
    assert_eq!((p.role, p.bootstrap_port), (Role::Prefill, Some(8998)));
    assert_eq!(d.url.text, "http://d1:8000");
    assert_eq!(d.role, Role::Decode);
    assert_eq!(d.capacity.map(|c| c.get()), Some(8));
    assert_eq!((d.weight.get(), d.ranks.get()), (3, 2));
    assert_eq!(d.models.as_deref(), Some(&["llama".to_owned()][..]));
    assert_eq!(d.labels.get("zone").map(String::as_str), Some("a"));
}

#[test]
fn file_workers_are_checked() {
    let e = load(
        &[],
        &[],
        Some("[[workers]]\nurl = \"http://a:1\"\nrole = \"prefill\""),
    )
    .unwrap_err();
    assert!(
        e.contains("'workers[0]' in router.toml") && e.contains("P/D"),
        "{e}"
    );
    let e = load(
        &[],
        &[],
        Some("[[workers]]\nurl = \"http://a:1\"\nweight = 0"),
    )
    .unwrap_err();
    assert!(e.contains("weight must be at least 1"), "{e}");
    let e = load(
        &[],
        &[],
        Some("[[workers]]\nurl = \"http://a:1\"\ncolour = 1"),
    )
    .unwrap_err();
    assert!(e.contains("'workers[0]'") && e.contains("colour"), "{e}");
    let e = load(
        &["--worker-urls", "http://a:1"],
        &[],
        Some("[[workers]]\nurl = \"http://a:1/\""),
    )
    .unwrap_err();
    assert!(
        e.contains("'workers[0]' in router.toml") && e.contains("listed twice"),
        "{e}"
    );
    // Flags and the file's workers add up.
    let c = load(
        &["--worker-urls", "http://a:1"],
        &[],
        Some("[[workers]]\nurl = \"http://b:1\""),
    )
    .unwrap();
    assert_eq!(c.workers.len(), 2);
}

const SERVERS_TOML: &str = r#"
[servers]
servers = [
  { url = "http://gpu-1:8081", max_concurrent_requests = 3 },
  { url = "http://gpu-2:8081", max_concurrent_requests = 5 },
]

[config]
health_check_interval = 10
health_check_timeout = 5
health_check_min_success_rate = 0.8
health_check_max_response_time = 2.0
config_reload_interval = 15
enable_active_health_check = true
request_timeout = 120
max_retries = 2
retry_delay = 0.25
"#;

#[test]
fn the_toml_routers_file_loads_unchanged() {
    let c = load(&[], &[], Some(SERVERS_TOML)).unwrap();
    let caps: Vec<(&str, u32)> = c
        .workers
        .iter()
        .map(|w| (w.url.text.as_str(), w.capacity.map_or(0, |c| c.get())))
        .collect();
    assert_eq!(caps, [("http://gpu-1:8081", 3), ("http://gpu-2:8081", 5)]);
    assert_eq!(c.port, 8888, "that router's port");
    assert_eq!(c.health.interval, Duration::from_secs(10));
    assert_eq!(
        c.health.timeout,
        Duration::from_secs(2),
        "max response time"
    );
    assert_eq!(c.config_reload_interval, Some(Duration::from_secs(15)));
    assert_eq!(c.timeouts.total, Duration::from_secs(120));
    assert_eq!(c.retry.max_retries, 2);
    assert_eq!(c.retry.initial_backoff, Duration::from_millis(250));
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert_eq!(
        place_of(&c, "retry_max_retries"),
        Place::File {
            path: "router.toml".into(),
            key: "config.max_retries".into()
        }
    );
    // Its keys are validated like ours, named as written.
    let bad = SERVERS_TOML.replace("max_retries = 2", "max_retries = -1");
    let e = load(&[], &[], Some(&bad)).unwrap_err();
    assert!(e.contains("'config.max_retries' in router.toml"), "{e}");
    let e = load(&[], &[], Some("[servers]\nservers = []\n[config]\nfoo = 1")).unwrap_err();
    assert!(e.contains("config.foo"), "{e}");
    // Flags still win over it.
    assert_eq!(
        load(&["--port", "7000"], &[], Some(SERVERS_TOML))
            .unwrap()
            .port,
        7000
    );
}

#[test]
fn secrets_are_masked_in_the_summary() {
    let c = load(&["--admin-api-key", "s3cret-admin"], &[], None).unwrap();
    let summary = c.summary();
    assert!(!summary.contains("s3cret-admin"), "{summary}");
    assert!(!format!("{c:?}").contains("s3cret-admin"));
    assert_eq!(c.admin_api_key.unwrap().expose(), "s3cret-admin");
}

#[test]
fn errors_never_show_a_secret() {
    let cases: [(&[&str], &str, &str, &str); 6] = [
        (
            &[],
            "admin_api_key = 98765431\n",
            "98765431",
            "'admin_api_key' in router.toml",
        ),
        (
            &[],
            "api_keys = [\"a\", 98765431]\n",
            "98765431",
            "'api_keys' in router.toml",
        ),
        // Not TOML: the parser's excerpt of the line is left out.
        (
            &[],
            "port = 1\nadmin_api_key = s3cr3t-value\n",
            "s3cr3t-value",
            "line 2, column 17",
        ),
        (
            &["--worker-urls", "http://user:s3cr3t-value@gpu-1:8000"],
            "",
            "s3cr3t-value",
            "http://***@gpu-1:8000",
        ),
        (
            &[
                "--otlp-traces-endpoint",
                "https://user:s3cr3t-value@otlp:4318/v1/traces",
            ],
            "",
            "s3cr3t-value",
            "https://***@otlp:4318",
        ),
        (
            &[],
            "[[workers]]\nurl = \"http://user:s3cr3t-value@gpu-1:8000\"\n",
            "s3cr3t-value",
            "http://***@gpu-1:8000",
        ),
    ];
    for (argv, file, secret, named) in cases {
        let e = load(argv, &[], Some(file)).unwrap_err();
        assert!(!e.contains(secret) && e.contains(named), "{e}");
    }
}

#[test]
fn security_settings_from_flags_env_and_file() {
    let c = load(&[], &[], None).unwrap();
    assert!(!c.auth.is_required(), "open by default");
    assert_eq!(c.cors, crate::config::CorsOrigins::None);
    assert_eq!(c.worker_api_key, None);
    let c = load(
        &["--api-keys", "k1, Bearer k2", "--api-key", "upstream"],
        &[(
            "API_KEY_VALIDATION_URLS",
            "http://auth-a/check,http://auth-b/check",
        )],
        None,
    )
    .unwrap();
    let keys: Vec<&str> = c.auth.keys.iter().map(Secret::expose).collect();
    assert_eq!(keys, ["k1", "k2"]);
    assert_eq!(c.auth.validation_urls.len(), 2);
    assert_eq!(
        c.worker_api_key.as_ref().map(Secret::expose),
        Some("upstream")
    );
    let dir = std::env::temp_dir().join(format!("vllm-router-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys");
    std::fs::write(&file, "# team a\nalpha\n\n  beta  # rotated monthly\n").unwrap();
    let path = file.to_str().unwrap();
    let c = load(&["--api-keys-file", path], &[], None).unwrap();
    let keys: Vec<&str> = c.auth.keys.iter().map(Secret::expose).collect();
    assert_eq!(keys, ["alpha", "beta"]);
    std::fs::write(&file, "# nobody yet\n").unwrap();
    let c = load(&["--api-keys-file", path], &[], None).unwrap();
    assert!(c.auth.is_required(), "an empty keys file refuses everyone");
    std::fs::remove_dir_all(&dir).unwrap();
    let c = load(
        &[],
        &[],
        Some("cors_allowed_origins = [\"https://a.example\", \"http://b.example:8080\"]\n"),
    )
    .unwrap();
    assert!(matches!(c.cors, crate::config::CorsOrigins::List(ref o) if o.len() == 2));
    for bad in [
        vec!["--cors-allowed-origins", "https://a.example/path"],
        vec!["--cors-allowed-origins", "a.example"],
        vec!["--api-key-validation-urls", "ftp://x"],
        vec!["--otlp-traces-endpoint", "collector:4318"],
        vec!["--api-keys-file", "/nonexistent/keys"],
        vec!["--log-max-files", "0"],
    ] {
        let err = load(&bad, &[], None).unwrap_err();
        assert!(err.contains(bad[0]), "{bad:?}: {err}");
    }
    // A workers' key that cannot be a header value is refused without being shown.
    let err = load(&["--api-key", "s3cret\u{7f}key"], &[], None).unwrap_err();
    assert!(
        err.contains("--api-key") && !err.contains("s3cret"),
        "{err}"
    );
}

/// Every duration setting, as a flag and as its file key.
const DURATIONS: &[(&str, &str)] = &[
    ("--request-timeout-secs", "request_timeout_secs"),
    ("--connect-timeout-secs", "connect_timeout_secs"),
    ("--first-byte-timeout-secs", "first_byte_timeout_secs"),
    ("--stream-idle-timeout-secs", "stream_idle_timeout_secs"),
    ("--retry-initial-backoff-ms", "retry_initial_backoff_ms"),
    ("--retry-max-backoff-ms", "retry_max_backoff_ms"),
    ("--cb-timeout-duration-secs", "cb_timeout_duration_secs"),
    ("--cb-window-duration-secs", "cb_window_duration_secs"),
    ("--queue-timeout-secs", "queue_timeout_secs"),
    ("--header-read-timeout-secs", "header_read_timeout_secs"),
    ("--client-write-timeout-secs", "client_write_timeout_secs"),
    ("--shutdown-timeout-secs", "shutdown_timeout_secs"),
    ("--api-key-cache-ttl-secs", "api_key_cache_ttl_secs"),
    ("--api-key-rejected-ttl-secs", "api_key_rejected_ttl_secs"),
    (
        "--api-key-validation-timeout-ms",
        "api_key_validation_timeout_ms",
    ),
    (
        "--worker-startup-timeout-secs",
        "worker_startup_timeout_secs",
    ),
    (
        "--worker-startup-check-interval",
        "worker_startup_check_interval",
    ),
    ("--health-check-interval-secs", "health_check_interval_secs"),
    ("--health-check-timeout-secs", "health_check_timeout_secs"),
    ("--load-scrape-interval-ms", "load_scrape_interval_ms"),
    ("--eviction-interval-secs", "eviction_interval_secs"),
    (
        "--config-reload-interval-secs",
        "config_reload_interval_secs",
    ),
];

#[test]
fn a_duration_past_its_bound_is_refused_naming_its_key() {
    let huge = u64::MAX.to_string();
    let year = crate::config::MAX_DURATION_SECS.to_string();
    for (flag, key) in DURATIONS {
        // Just past the bound in the flag's own unit: a year and one unit.
        let past = if flag.ends_with("-ms") {
            (crate::config::MAX_DURATION_SECS * 1000 + 1).to_string()
        } else {
            (crate::config::MAX_DURATION_SECS + 1).to_string()
        };
        for value in [&huge, &past] {
            let e = load(&[flag, value], &[], None).unwrap_err();
            assert!(e.contains(&format!("'{flag}'")), "{flag}={value}: {e}");
        }
        // TOML integers stop at i64::MAX.
        for value in [&i64::MAX.to_string(), &past] {
            let e = load(&[], &[], Some(&format!("{key} = {value}"))).unwrap_err();
            assert!(
                e.contains(&format!("'{key}' in router.toml")),
                "{key}={value}: {e}"
            );
        }
        let mut at_bound = vec![*flag, year.as_str()];
        if *flag == "--retry-initial-backoff-ms" {
            at_bound.extend(["--retry-max-backoff-ms", year.as_str()]);
        }
        load(&at_bound, &[], None).unwrap_or_else(|e| panic!("{flag} at the bound: {e}"));
    }
    for value in ["17", "1e300", "inf"] {
        let e = load(&["--retry-backoff-multiplier", value], &[], None).unwrap_err();
        assert!(e.contains("--retry-backoff-multiplier"), "{value}: {e}");
    }
    let e = load(&[], &[], Some("rate_limit_tokens_per_second = inf")).unwrap_err();
    assert!(
        e.contains("'rate_limit_tokens_per_second' in router.toml"),
        "{e}"
    );
    let e = load(&[], &[("VLLM_ROUTER_CACHE_THRESHOLD", "NaN")], None).unwrap_err();
    assert!(e.contains("$VLLM_ROUTER_CACHE_THRESHOLD"), "{e}");
}
