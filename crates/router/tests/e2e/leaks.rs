//! No secret leaves the router: the router binary at trace (every dependency too), with every
//! kind of key configured and sent, serves ordinary and faulty traffic, admin calls and
//! reloads; then no log file, stdout, stderr, metrics page, answer body or answer header holds
//! any of the secrets, plain or base64-encoded.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use vllm_sim::SimConfig;

use crate::logs::{LogDir, json_lines};
use crate::reload::ConfigFile;
use crate::support::*;

const CLIENT_KEY: &str = "client-key-7Gq2vTnB";
const WRONG_CLIENT_KEY: &str = "wrong-client-J8v3Lx";
const ADMIN_KEY: &str = "admin-key-R4nd0mXw";
const WRONG_ADMIN_KEY: &str = "wrong-admin-Kk2pQs";
const WORKER_KEY: &str = "worker-key-Zx81Hyu";
const COOKIE: &str = "cookie-value-Qp55Mz";
const X_API_KEY: &str = "x-api-key-Lm09Rdc";
const PROXY_AUTH: &str = "proxy-auth-Wd3Ffe";
const URL_PASSWORD: &str = "url-password-Tt6Ycv";

/// Each secret, and the forms it may take on the wire: the header value it was sent in, and
/// base64 of both.
fn forms() -> Vec<(&'static str, String)> {
    let sent = [
        (CLIENT_KEY, format!("Bearer {CLIENT_KEY}")),
        (WRONG_CLIENT_KEY, format!("Bearer {WRONG_CLIENT_KEY}")),
        (ADMIN_KEY, format!("Bearer {ADMIN_KEY}")),
        (WRONG_ADMIN_KEY, format!("Bearer {WRONG_ADMIN_KEY}")),
        (WORKER_KEY, format!("Bearer {WORKER_KEY}")),
        (COOKIE, format!("session={COOKIE}")),
        (X_API_KEY, X_API_KEY.to_owned()),
        (
            PROXY_AUTH,
            format!("Basic {}", base64(format!("u:{PROXY_AUTH}"))),
        ),
        (URL_PASSWORD, format!("user:{URL_PASSWORD}")),
    ];
    sent.into_iter()
        .flat_map(|(secret, value)| {
            [
                (secret, secret.to_owned()),
                (secret, base64(secret)),
                (secret, base64(&value)),
                (secret, value),
            ]
        })
        .collect()
}

fn base64(text: impl AsRef<[u8]>) -> String {
    const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_ref().chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..=chunk.len() {
            out.push(char::from(DIGITS[((n >> (18 - 6 * i)) & 63) as usize]));
        }
        out.extend(std::iter::repeat_n('=', 3 - chunk.len()));
    }
    out
}

/// Headers carrying the client's secrets, sent with every request.
fn client_secrets(authorization: &str) -> Vec<(String, String)> {
    vec![
        ("authorization".into(), authorization.into()),
        ("cookie".into(), format!("session={COOKIE}")),
        ("x-api-key".into(), X_API_KEY.into()),
        (
            "proxy-authorization".into(),
            format!("Basic {}", base64(format!("u:{PROXY_AUTH}"))),
        ),
    ]
}

/// Everything the router said, by where it said it.
#[derive(Default)]
struct Said(Vec<(String, String)>);

impl Said {
    fn reply(&mut self, what: &str, reply: &Reply) {
        let mut text = String::new();
        for (name, value) in &reply.headers {
            text.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        text.push_str(&String::from_utf8_lossy(&reply.body));
        self.0.push((what.to_owned(), text));
    }
}

struct Client {
    base: String,
    said: Said,
}

impl Client {
    /// Send with the client's secrets (the admin key or another bearer in `authorization`);
    /// the answer's status.
    async fn call(
        &mut self,
        what: &str,
        method: Method,
        path: &str,
        authorization: &str,
        extra: &[(&str, &str)],
        body: String,
    ) -> u16 {
        let owned = client_secrets(authorization);
        let mut headers: Vec<(&str, &str)> = owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        headers.push(("content-type", "application/json"));
        headers.extend_from_slice(extra);
        let url = format!("{}{path}", self.base);
        let reply = send(method, &url, &headers, body).await;
        self.said.reply(what, &reply);
        reply.status.as_u16()
    }

    async fn inference(&mut self, what: &str, extra: &[(&str, &str)], body: String) -> u16 {
        let bearer = format!("Bearer {CLIENT_KEY}");
        self.call(
            what,
            Method::POST,
            "/v1/chat/completions",
            &bearer,
            extra,
            body,
        )
        .await
    }

    async fn admin(&mut self, what: &str, method: Method, path: &str, key: &str) -> u16 {
        let bearer = format!("Bearer {key}");
        self.call(what, method, path, &bearer, &[], String::new())
            .await
    }
}

/// A chat request over HTTP/2 (prior knowledge) with the client's secrets.
async fn over_http2(url: &str, said: &mut Said) -> u16 {
    let client: HyperClient<_, Full<Bytes>> = HyperClient::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mut request = Request::post(url).header("content-type", "application/json");
    for (name, value) in client_secrets(&format!("Bearer {CLIENT_KEY}")) {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(chat(MODEL, false).to_string())))
        .unwrap();
    let response = client.request(request).await.expect("an HTTP/2 answer");
    let (head, body) = response.into_parts();
    let reply = Reply {
        status: head.status,
        headers: head.headers,
        body: body.collect().await.unwrap().to_bytes(),
    };
    said.reply("chat over HTTP/2", &reply);
    reply.status.as_u16()
}

/// A loopback port free when asked, to name on a child process's command line: free only until
/// someone else binds it, so whoever uses it must cope with finding it taken.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Wait until the metrics count a reload of `cause`.
async fn reload_counted(metrics: &str, cause: &str) {
    let series = format!("vllm_router_config_reloads_total{{cause=\"{cause}\"}} ");
    for _ in 0..100 {
        let page = get(metrics).await;
        if String::from_utf8_lossy(&page.body)
            .lines()
            .any(|l| l.starts_with(&series) && !l.ends_with(" 0"))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {cause} reload counted");
}

#[test]
fn base64_is_standard() {
    assert_eq!(base64("Man"), "TWFu");
    assert_eq!(base64("Ma"), "TWE=");
    assert_eq!(base64("M"), "TQ==");
}

#[tokio::test]
async fn no_secret_reaches_a_log_stdout_stderr_the_metrics_or_an_answer() {
    // Workers that, like vLLM with --api-key, answer only the workers' key.
    let workers = sims((0..3).map(|_| SimConfig {
        api_key: Some(WORKER_KEY.to_owned()),
        ..SimConfig::default()
    }))
    .await;
    let file = ConfigFile::new(&format!("admin_api_key = \"{ADMIN_KEY}\"\n"));
    // A key that is not listed goes to a validation URL, which is down.
    let down = ClosedPort::hold();
    let validation = format!("http://{}/check", down.addr());
    let args_for = |port: u16, logs: &LogDir| {
        let port = port.to_string();
        let mut args: Vec<String> = [
            "--config",
            file.path.to_str().unwrap(),
            "--policy",
            "round_robin",
            "--api-key",
            WORKER_KEY,
            "--api-keys",
            CLIENT_KEY,
            "--api-key-validation-urls",
            &validation,
            "--log-level",
            "trace",
            "--log-format",
            "json",
            "--prometheus-port",
            &port,
            "--worker-startup-timeout-secs",
            "5",
            "--health-check-interval-secs",
            "1",
            "--worker-urls",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(workers.iter().map(|w| w.url()));
        args.extend(logs.args());
        args
    };
    // The metrics page is read on a port named on the command line, found free just before the
    // start. Should another test take it in between, the router cannot listen there and exits
    // at once; it is started again on another port, with fresh log files.
    let (logs, port, (mut child, addr, output)) = 'started: {
        for _ in 0..5 {
            let logs = LogDir::new();
            let port = free_port();
            // The strictest setting: every dependency at trace as well.
            let env = [("RUST_LOG", "trace")];
            match try_spawn_router_captured(&args_for(port, &logs), &env).await {
                Ok(started) => break 'started (logs, port, started),
                Err(stderr) if stderr.contains("(--prometheus-port)") => {}
                Err(stderr) => panic!("the router did not start: {stderr}"),
            }
        }
        panic!("the metrics port was taken five times in a row");
    };
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let mut client = Client {
        base: format!("http://{addr}"),
        said: Said::default(),
    };

    let plain = chat(MODEL, false).to_string();
    let mut streamed = chat(MODEL, true);
    streamed["stream_options"] = json!({"include_usage": true});
    assert_eq!(
        client.inference("plain chat", &[], plain.clone()).await,
        200
    );
    let stream = streamed.to_string();
    assert_eq!(client.inference("streamed chat", &[], stream).await, 200);
    let url = format!("{}/v1/chat/completions", client.base);
    assert_eq!(over_http2(&url, &mut client.said).await, 200);
    // A worker's own error, then one retried on every worker.
    let fault = [("x-return-error", "500")];
    assert_eq!(
        client
            .inference("worker error", &fault, plain.clone())
            .await,
        500
    );
    let fault = [("x-return-error", "503")];
    assert_eq!(
        client
            .inference("retried error", &fault, plain.clone())
            .await,
        503
    );
    // A dead worker: refused connections move on to the others.
    workers[2].kill();
    workers[2].killed().await;
    for _ in 0..3 {
        assert_eq!(
            client.inference("dead worker", &[], plain.clone()).await,
            200
        );
    }
    let wrong = format!("Bearer {WRONG_CLIENT_KEY}");
    let refused = client.call(
        "wrong client key",
        Method::POST,
        "/v1/chat/completions",
        &wrong,
        &[],
        plain.clone(),
    );
    assert_eq!(refused.await, 503, "the validation URL is down");
    let unknown = chat("no-such-model", false).to_string();
    assert_eq!(client.inference("unknown model", &[], unknown).await, 404);
    let bad = "{\"model\": ".to_owned();
    assert_eq!(client.inference("bad JSON", &[], bad).await, 400);

    assert_eq!(
        client
            .admin("admin list", Method::GET, "/workers", ADMIN_KEY)
            .await,
        200
    );
    let wrong = client.admin("wrong admin key", Method::GET, "/workers", WRONG_ADMIN_KEY);
    assert_eq!(wrong.await, 401);
    let listed = client.admin("wrong key, legacy route", Method::GET, "/list_workers", "");
    assert_eq!(listed.await, 401);
    let admin = format!("Bearer {ADMIN_KEY}");
    let with_password = json!({"url": format!("http://user:{URL_PASSWORD}@127.0.0.1:9")});
    let added = client.call(
        "worker URL with a password",
        Method::POST,
        "/workers",
        &admin,
        &[],
        with_password.to_string(),
    );
    assert_eq!(added.await, 400);
    let bearer = format!("Bearer {CLIENT_KEY}");
    let explain = "/debug/route?path=/v1/chat/completions";
    let explained = client.call(
        "explain",
        Method::POST,
        explain,
        &bearer,
        &[],
        plain.clone(),
    );
    assert_eq!(explained.await, 200);
    for path in [
        "/v1/models",
        "/health",
        "/load-stats",
        "/",
        "/version",
        "/readiness",
    ] {
        let status = client.call(path, Method::GET, path, &bearer, &[], String::new());
        assert_eq!(status.await, 200, "{path}");
    }

    // A reload applied, then one rejected for a syntax error on the admin key's line.
    file.write(&format!(
        "admin_api_key = \"{ADMIN_KEY}\"\nretry_max_retries = 2\n"
    ));
    signal(&child, "HUP");
    reload_counted(&metrics, "applied").await;
    file.write(&format!("admin_api_key = {ADMIN_KEY}\n"));
    signal(&child, "HUP");
    reload_counted(&metrics, "rejected").await;
    assert_eq!(
        client
            .admin("admin after reloads", Method::GET, "/workers", ADMIN_KEY)
            .await,
        200
    );

    let page = get(&metrics).await;
    assert_eq!(page.status, 200);
    client.said.reply("metrics", &page);
    signal(&child, "TERM");
    assert_eq!(exit_code(&mut child, Duration::from_secs(5)).await, Some(0));
    let (stdout, stderr) = output.collect();

    // The logs are the full trace they should be.
    let lines = logs.json();
    assert!(
        lines.iter().any(|l| l["level"] == "TRACE"),
        "no trace lines"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"]
                == "config reload rejected; the running configuration stays"),
        "no rejected reload logged"
    );
    assert!(
        lines
            .iter()
            .filter(|l| l["target"] == "vllm_router::access")
            .count()
            >= 9,
        "access lines missing"
    );
    assert!(!json_lines(&stderr).is_empty());
    assert!(stdout.contains("vllm-router listening on"));

    let mut places = client.said.0;
    places.push(("stdout".into(), stdout));
    places.push(("stderr".into(), stderr));
    places.extend(logs.files());
    assert!(places.len() > 25);
    for (place, text) in &places {
        for (secret, form) in forms() {
            if let Some(at) = text.find(&form) {
                let from = text[..at]
                    .char_indices()
                    .rev()
                    .nth(200)
                    .map_or(0, |(i, _)| i);
                panic!(
                    "{secret} leaked into {place} as {form:?}: ...{}",
                    &text[from..(at + form.len())]
                );
            }
        }
    }
}
