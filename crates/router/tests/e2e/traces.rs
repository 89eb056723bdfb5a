//! Trace context to workers (W3C `traceparent` and `tracestate`) and span export by OTLP to a
//! collector: what each worker receives, what the collector receives, and that a collector
//! which is down or hangs changes nothing for requests.

use std::time::{Duration, Instant};

use http::Method;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use vllm_sim::{RequestRecord, SimConfig, SimServer};

use crate::support::*;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_PARENT: &str = "00f067aa0ba902b7";

fn client_traceparent(trace: &str, flags: &str) -> String {
    format!("00-{trace}-{CLIENT_PARENT}-{flags}")
}

fn chats(worker: &SimServer) -> Vec<RequestRecord> {
    worker
        .records()
        .into_iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .collect()
}

async fn chat_with(router: &str, stream: bool, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(
        Method::POST,
        &format!("{router}/v1/chat/completions"),
        &all,
        chat(MODEL, stream).to_string(),
    )
    .await
}

#[tokio::test]
async fn a_client_trace_reaches_the_worker_under_a_new_parent_with_its_tracestate() {
    let workers = fast_sims(1).await;
    let router = router(&workers).await;
    for (flags, stream) in [("01", false), ("00", true)] {
        let traceparent = client_traceparent(CLIENT_TRACE, flags);
        let r = chat_with(
            &router.url(),
            stream,
            &[
                ("traceparent", &traceparent),
                ("tracestate", "congo=t61rcWkgMzE"),
                ("tracestate", "rojo=00f067aa0ba902b7"),
            ],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let records = chats(&workers[0]);
    assert_eq!(records.len(), 2);
    let mut parents = Vec::new();
    for (record, flags) in records.iter().zip(["01", "00"]) {
        let (trace, parent, sent_flags) = traceparent_of(record);
        assert_eq!(trace, CLIENT_TRACE, "the client's trace");
        assert_ne!(parent, CLIENT_PARENT, "the router's span is the parent");
        assert_eq!(sent_flags, flags, "the client's sampling decision");
        assert_eq!(
            header_values(record, "tracestate"),
            ["congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7"],
            "tracestate unchanged"
        );
        parents.push(parent);
    }
    assert_ne!(parents[0], parents[1]);
}

#[tokio::test]
async fn without_a_valid_traceparent_the_worker_gets_a_new_trace_and_no_tracestate() {
    let workers = fast_sims(1).await;
    let router = router(&workers).await;
    let upper = client_traceparent(&CLIENT_TRACE.to_uppercase(), "01");
    let version_ff = format!("ff-{CLIENT_TRACE}-{CLIENT_PARENT}-01");
    let zero_trace = client_traceparent(&"0".repeat(32), "01");
    let cases: [&[(&str, &str)]; 4] = [
        &[],
        &[("traceparent", &upper), ("tracestate", "congo=t61rcWkgMzE")],
        &[("traceparent", &version_ff)],
        &[
            ("traceparent", &zero_trace),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    ];
    for headers in cases {
        assert_eq!(chat_with(&router.url(), false, headers).await.status, 200);
    }
    let records = chats(&workers[0]);
    assert_eq!(records.len(), 4);
    let mut traces = Vec::new();
    for record in &records {
        let (trace, _, flags) = traceparent_of(record);
        assert_ne!(trace, CLIENT_TRACE);
        assert_eq!(flags, "01", "a trace the router starts is sampled");
        assert!(header_values(record, "tracestate").is_empty(), "{record:?}");
        traces.push(trace);
    }
    traces.sort_unstable();
    traces.dedup();
    assert_eq!(traces.len(), 4, "a new trace per request");
}

/// A worker that dies on its first inference request, before answering it.
fn dies_at_once() -> SimConfig {
    SimConfig {
        exit_after: Some(1),
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn each_attempt_of_a_retried_request_is_its_own_span_in_the_clients_trace() {
    let workers = sims([dies_at_once(), SimConfig::default()]).await;
    let router = router(&workers).await;
    let traceparent = client_traceparent(CLIENT_TRACE, "01");
    let r = chat_with(&router.url(), false, &[("traceparent", &traceparent)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-vllm-router-worker"), workers[1].url());
    let (first, second) = (chats(&workers[0]), chats(&workers[1]));
    assert_eq!((first.len(), second.len()), (1, 1), "one attempt on each");
    let (trace_1, parent_1, _) = traceparent_of(&first[0]);
    let (trace_2, parent_2, _) = traceparent_of(&second[0]);
    assert_eq!(
        (trace_1.as_str(), trace_2.as_str()),
        (CLIENT_TRACE, CLIENT_TRACE)
    );
    assert_ne!(parent_1, parent_2, "a span per attempt");
    assert!(parent_1 != CLIENT_PARENT && parent_2 != CLIENT_PARENT);
}

fn of_trace<'a>(spans: &'a [Span], trace: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| hex(&s.trace_id) == trace).collect()
}

fn server_and_clients<'a>(spans: &[&'a Span]) -> (&'a Span, Vec<&'a Span>) {
    let servers: Vec<_> = spans
        .iter()
        .copied()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(servers.len(), 1, "{spans:#?}");
    let mut clients: Vec<_> = spans
        .iter()
        .copied()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    clients.sort_by_key(|s| s.start_time_unix_nano);
    (servers[0], clients)
}

fn is_error(span: &Span) -> bool {
    span.status
        .as_ref()
        .is_some_and(|s| s.code == SpanStatus::Error as i32)
}

#[tokio::test]
async fn the_collector_receives_the_request_and_attempt_spans_linked_as_the_workers_saw_them() {
    let collector = Collector::start().await;
    // The second worker takes 4 tokens at 60 ms each: a streamed answer lasts about 240 ms
    // after its headers.
    let slow = SimConfig {
        itl: Duration::from_millis(60),
        ..SimConfig::default()
    };
    let workers = sims([dies_at_once(), slow]).await;
    let router = router_with(&workers, |a| {
        a.otlp_traces_endpoint = Some(collector.endpoint());
    })
    .await;
    // A request retried after the first worker died, then a streamed one, both in the
    // client's traces; then one the router refuses itself (no such model), in a new trace.
    let retried = client_traceparent(CLIENT_TRACE, "01");
    let r = chat_with(
        &router.url(),
        false,
        &[("traceparent", &retried), ("x-request-id", "req-retried")],
    )
    .await;
    assert_eq!(r.status, 200);
    let streamed_trace = "0af7651916cd43dd8448eb211c80319c";
    let streamed = client_traceparent(streamed_trace, "01");
    let r = chat_with(&router.url(), true, &[("traceparent", &streamed)]).await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("[DONE]"));
    let r = post_json(
        &format!("{}/v1/chat/completions", router.url()),
        chat("no-such-model", false),
    )
    .await;
    assert_eq!(r.status, 404);
    // Not sampled by the client: propagated, not recorded.
    let unsampled = client_traceparent("11111111111111111111111111111111", "00");
    let r = chat_with(&router.url(), false, &[("traceparent", &unsampled)]).await;
    assert_eq!(r.status, 200);
    router.shutdown().await.unwrap();

    let spans = collector.spans();
    assert!(
        collector.services().iter().all(|s| s == "vllm-router"),
        "{:?}",
        collector.services()
    );
    assert!(of_trace(&spans, "11111111111111111111111111111111").is_empty());
    let seen =
        |w: &SimServer| -> Vec<String> { chats(w).iter().map(|r| traceparent_of(r).1).collect() };

    // The retried request: the server span under the client's span, two attempts under it.
    let (server, clients) = server_and_clients(&of_trace(&spans, CLIENT_TRACE));
    assert_eq!(server.name, "POST /v1/chat/completions");
    assert_eq!(hex(&server.parent_span_id), CLIENT_PARENT);
    assert_eq!(server.flags, 0x301, "sampled, remote parent");
    for (key, value) in [
        ("http.request.method", "POST"),
        ("http.route", "/v1/chat/completions"),
        ("http.response.status_code", "200"),
        ("gen_ai.request.model", MODEL),
        ("vllm_router.request_id", "req-retried"),
    ] {
        assert_eq!(attr(server, key).as_deref(), Some(value), "{key}");
    }
    assert_eq!(attr(server, "vllm_router.worker"), Some(workers[1].url()));
    assert!(!is_error(server));
    assert_eq!(clients.len(), 2, "{clients:#?}");
    for client in &clients {
        assert_eq!(client.parent_span_id, server.span_id);
        assert_eq!(attr(client, "vllm_router.stage").as_deref(), Some("single"));
        assert!(client.start_time_unix_nano >= server.start_time_unix_nano);
        assert!(client.end_time_unix_nano <= server.end_time_unix_nano);
    }
    let (failed, answered) = (clients[0], clients[1]);
    assert_eq!(attr(failed, "vllm_router.worker"), Some(workers[0].url()));
    assert_eq!(attr(failed, "error.type").as_deref(), Some("reset"));
    assert!(is_error(failed));
    assert_eq!(attr(failed, "http.request.resend_count"), None);
    assert_eq!(
        seen(&workers[0]),
        [hex(&failed.span_id)],
        "the id the worker saw"
    );
    assert_eq!(attr(answered, "vllm_router.worker"), Some(workers[1].url()));
    assert_eq!(
        attr(answered, "url.full"),
        Some(format!("{}/v1/chat/completions", workers[1].url()))
    );
    assert_eq!(
        attr(answered, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(answered, "http.request.resend_count").as_deref(),
        Some("1")
    );
    assert!(!is_error(answered));
    assert!(failed.end_time_unix_nano <= answered.start_time_unix_nano);

    // The streamed request: both spans last until the stream's end. (Round robin may have
    // tried the dead worker first: the connection was refused, and the attempt says so.)
    let (server, clients) = server_and_clients(&of_trace(&spans, streamed_trace));
    let answered = *clients.last().unwrap();
    for refused in &clients[..clients.len() - 1] {
        assert_eq!(attr(refused, "error.type").as_deref(), Some("connect"));
    }
    assert!(clients.iter().all(|c| c.parent_span_id == server.span_id));
    assert_eq!(
        attr(answered, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(seen(&workers[1]).contains(&hex(&answered.span_id)));
    for span in [server, answered] {
        let lasted = span.end_time_unix_nano - span.start_time_unix_nano;
        assert!(
            lasted >= Duration::from_millis(180).as_nanos() as u64,
            "{} lasted {lasted} ns",
            span.name
        );
    }

    // The refused request: a server span of its own trace, no attempt, no parent.
    let refused: Vec<&Span> = spans
        .iter()
        .filter(|s| attr(s, "http.response.status_code").as_deref() == Some("404"))
        .collect();
    assert_eq!(refused.len(), 1);
    let refused = refused[0];
    assert!(refused.parent_span_id.is_empty());
    assert_eq!(refused.flags, 0x101);
    assert!(!is_error(refused), "a 4xx is not the server's error");
    assert_eq!(of_trace(&spans, &hex(&refused.trace_id)).len(), 1);
    let mut traces: Vec<String> = spans.iter().map(|s| hex(&s.trace_id)).collect();
    traces.sort_unstable();
    traces.dedup();
    assert_eq!(traces.len(), 3, "nothing else was recorded");
}

/// A collector that accepts connections and never answers.
async fn hanging_collector() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (endpoint, task)
}

/// Requests for a little longer than the export delay, so exports start while they flow;
/// the slowest request's time.
async fn traffic(router: &str) -> Duration {
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(2600) {
        let sent = Instant::now();
        let r = chat_with(router, n % 2 == 0, &[]).await;
        assert_eq!(r.status, 200);
        slowest = slowest.max(sent.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    slowest
}

#[tokio::test]
async fn a_collector_that_is_down_or_hangs_neither_fails_nor_slows_requests() {
    let workers = fast_sims(1).await;
    let (hanging, _held) = hanging_collector().await;
    let closed = ClosedPort::hold();
    let dead = format!("http://{}/v1/traces", closed.addr());
    let to_hanging = router_with(&workers, |a| a.otlp_traces_endpoint = Some(hanging)).await;
    let to_dead = router_with(&workers, |a| a.otlp_traces_endpoint = Some(dead)).await;
    let (hanging_url, dead_url) = (to_hanging.url(), to_dead.url());
    let (slowest_hanging, slowest_dead) = tokio::join!(traffic(&hanging_url), traffic(&dead_url));
    // Requests take milliseconds; one held up by an export would wait for its 10 s timeout.
    // The bounds leave a loaded machine some 2 s.
    assert!(
        slowest_hanging < Duration::from_secs(2),
        "{slowest_hanging:?}"
    );
    assert!(slowest_dead < Duration::from_secs(2), "{slowest_dead:?}");
    // The dead collector's batches failed at once and were counted.
    let metrics = |r: &vllm_router::server::RouterHandle| r.app().render_metrics();
    eventually(Duration::from_secs(3), || {
        metrics(&to_dead)
            .contains(r#"vllm_router_trace_spans_dropped_total{cause="export_failed"}"#)
            .then_some(())
    })
    .await;
    assert!(metrics(&to_dead).contains("vllm_router_trace_spans_exported_total 0"));
    // The hanging one still waits on its first batch: nothing was exported or lost yet.
    let m = metrics(&to_hanging);
    assert!(
        m.contains("vllm_router_trace_spans_exported_total 0"),
        "{m}"
    );
    assert!(!m.contains("export_failed"), "{m}");
}

#[tokio::test]
async fn the_binary_exports_as_otel_service_name_and_sends_what_is_queued_at_shutdown() {
    let collector = Collector::start().await;
    let workers = fast_sims(1).await;
    let args = [
        "--worker-urls".to_owned(),
        workers[0].url(),
        "--policy".to_owned(),
        "round_robin".to_owned(),
        "--otlp-traces-endpoint".to_owned(),
        collector.endpoint(),
    ];
    let (mut child, addr) = spawn_router(&args, &[("OTEL_SERVICE_NAME", "edge-router")]).await;
    let traceparent = client_traceparent(CLIENT_TRACE, "01");
    for stream in [false, true] {
        let r = chat_with(
            &format!("http://{addr}"),
            stream,
            &[("traceparent", &traceparent)],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    // Whether or not a batch went out meanwhile, whatever is still queued is sent before the
    // process exits.
    signal(&child, "TERM");
    assert_eq!(exit_code(&mut child, Duration::from_secs(5)).await, Some(0));
    let spans = collector.spans();
    assert_eq!(spans.len(), 4, "two requests, one attempt each: {spans:#?}");
    assert!(spans.iter().all(|s| hex(&s.trace_id) == CLIENT_TRACE));
    assert_eq!(collector.services(), ["edge-router"; 4]);
}
