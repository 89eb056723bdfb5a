use std::time::Duration;

use http::HeaderMap;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use super::*;
use crate::telemetry::span::RequestSpan;
use crate::telemetry::trace::{TRACEPARENT, TraceContext};

fn exporter(queue: usize) -> (Exporter, mpsc::Receiver<SpanData>, Arc<Metrics>) {
    let metrics = Metrics::new();
    let (tx, rx) = mpsc::channel(queue);
    let exporter = Exporter {
        queue: tx,
        metrics: Arc::clone(&metrics),
    };
    (exporter, rx, metrics)
}

fn rendered(metrics: &Metrics) -> String {
    let admission = crate::admission::Admission::new(crate::admission::AdmissionConfig::default());
    metrics.render(&crate::fleet::Snapshot::new(Vec::new()), &admission)
}

fn client_trace() -> TraceContext {
    let mut headers = HeaderMap::new();
    headers.insert(
        &TRACEPARENT,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    TraceContext::from_headers(&headers)
}

fn string_attr(span: &proto::Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

#[test]
fn spans_end_when_their_last_holder_lets_go_and_encode_with_their_links() {
    let (exporter, mut rx, _) = exporter(8);
    let trace = client_trace();
    let server = RequestSpan::start(Some(&exporter), trace, || "POST /v1/completions".into());
    server.set("http.route", "/v1/completions");
    let mut attempt = server.child(|| "POST /v1/completions".into());
    attempt.set("http.response.status_code", 503i64);
    attempt.set("http.response.status_code", 200i64);
    let attempt_id = attempt.span_id().unwrap();
    let held_by_body = server.clone();
    drop(attempt);
    drop(server);
    assert_eq!(rx.try_recv().unwrap().span_id, attempt_id);
    assert!(
        rx.try_recv().is_err(),
        "the body still holds the server span"
    );
    held_by_body.fail("stream_idle");
    drop(held_by_body);
    let server_data = rx.try_recv().unwrap();
    assert_eq!(server_data.span_id, trace.span_id());
    assert!(server_data.end >= server_data.start);

    // Encoded and decoded again with the OTLP types.
    let (again, mut rx2, _) = self::exporter(8);
    let server = RequestSpan::start(Some(&again), trace, || "POST /v1/completions".into());
    let mut attempt = server.child(|| "POST /v1/completions".into());
    attempt.set("http.response.status_code", 200i64);
    drop(attempt);
    drop(server);
    let spans = [rx2.try_recv().unwrap(), server_data];
    let body = encode(&resource("svc".into()), spans.into_iter());
    let decoded = ExportTraceServiceRequest::decode(body).unwrap();
    let rs = &decoded.resource_spans[0];
    let service = &rs.resource.as_ref().unwrap().attributes[0];
    assert_eq!(service.key, "service.name");
    let spans = &rs.scope_spans[0].spans;
    let (client, server) = (&spans[0], &spans[1]);
    assert_eq!(client.kind, SpanKind::Client as i32);
    assert_eq!(server.kind, SpanKind::Server as i32);
    let trace_bytes = trace.trace_id().to_bytes().to_vec();
    assert_eq!(client.trace_id, trace_bytes);
    assert_eq!(server.trace_id, trace_bytes);
    assert_eq!(
        server.parent_span_id,
        trace.remote_parent().unwrap().to_bytes()
    );
    assert_eq!(server.flags, 0x301, "sampled, with a remote parent");
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(client.flags, 0x101, "sampled, with a local parent");
    assert_eq!(
        client.attributes[0].value.as_ref().unwrap().value,
        Some(any_value::Value::IntValue(200)),
        "the last value set wins"
    );
    assert_eq!(client.attributes.len(), 1);
    assert_eq!(
        string_attr(server, "http.route").as_deref(),
        Some("/v1/completions")
    );
    let status = server.status.as_ref().unwrap();
    assert_eq!(status.code, proto::status::StatusCode::Error as i32);
    assert_eq!(status.message, "stream_idle");
    assert!(client.status.is_none());
    assert!(server.end_time_unix_nano >= server.start_time_unix_nano);
    assert!(server.start_time_unix_nano > 1_600_000_000_000_000_000);
}

#[test]
fn nothing_is_recorded_without_export_or_for_an_unsampled_trace() {
    let (exporter, mut rx, _) = exporter(8);
    let trace = client_trace();
    let off = RequestSpan::start(None, trace, || unreachable!("no name is built"));
    assert!(!off.is_recording());
    assert!(!off.child(|| unreachable!()).is_recording());
    let mut headers = HeaderMap::new();
    headers.insert(
        &TRACEPARENT,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
            .parse()
            .unwrap(),
    );
    let unsampled = TraceContext::from_headers(&headers);
    let span = RequestSpan::start(Some(&exporter), unsampled, || unreachable!());
    assert!(!span.is_recording());
    drop(span);
    assert!(rx.try_recv().is_err());
}

#[test]
fn a_full_queue_drops_and_counts_without_waiting() {
    let (exporter, mut rx, metrics) = exporter(2);
    let trace = client_trace();
    for _ in 0..5 {
        drop(RequestSpan::start(Some(&exporter), trace, String::new));
    }
    let text = rendered(&metrics);
    assert!(
        text.contains(r#"vllm_router_trace_spans_dropped_total{cause="queue_full"} 3"#),
        "{text}"
    );
    rx.close();
    while rx.try_recv().is_ok() {}
    drop(RequestSpan::start(Some(&exporter), trace, String::new));
    let text = rendered(&metrics);
    assert!(
        text.contains(r#"vllm_router_trace_spans_dropped_total{cause="shutdown"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn an_unreachable_collector_costs_counted_spans_and_shutdown_stays_bounded() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint: Uri = format!("http://{}/v1/traces", dead.local_addr().unwrap())
        .parse()
        .unwrap();
    drop(dead);
    let metrics = Metrics::new();
    let settings = ExportSettings {
        queue: 16,
        batch: 4,
        delay: Duration::from_millis(20),
        timeout: Duration::from_secs(1),
    };
    let traces = Traces::start(&endpoint, "svc".into(), Arc::clone(&metrics), settings).unwrap();
    let trace = client_trace();
    for _ in 0..6 {
        drop(RequestSpan::start(
            Some(traces.exporter()),
            trace,
            String::new,
        ));
    }
    let started = Instant::now();
    traces.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let text = rendered(&metrics);
    assert!(
        text.contains(r#"vllm_router_trace_spans_dropped_total{cause="export_failed"} 6"#),
        "{text}"
    );
    assert!(
        text.contains("vllm_router_trace_spans_exported_total 0"),
        "{text}"
    );
}

#[test]
fn the_service_name_and_the_endpoint_path() {
    assert_eq!(service_name(|_| None), "vllm-router");
    assert_eq!(service_name(|_| Some("  ".into())), "vllm-router");
    assert_eq!(
        service_name(|k| Some(format!("{k}-x"))),
        "OTEL_SERVICE_NAME-x"
    );
    let bare: Uri = "http://collector:4318".parse().unwrap();
    assert_eq!(
        with_traces_path(&bare).to_string(),
        "http://collector:4318/v1/traces"
    );
    let given: Uri = "https://collector/otlp/v1/traces".parse().unwrap();
    assert_eq!(with_traces_path(&given), given);
}

#[test]
fn a_partial_success_counts_the_rejected_spans() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
    let answer = ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: 2,
            error_message: "too old".into(),
        }),
    };
    assert_eq!(rejected_spans(&answer.encode_to_vec()), 2);
    assert_eq!(rejected_spans(b""), 0);
}

/// Log lines written while `f` runs, on this thread.
fn logged(f: impl FnOnce()) -> String {
    let buf = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = Arc::clone(&buf);
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || Sink(Arc::clone(&sink)))
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    String::from_utf8(buf.lock().unwrap().clone()).unwrap()
}

struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn export_failures_are_logged_at_most_once_a_minute_and_all_counted() {
    let endpoint: Uri = "http://127.0.0.1:9/v1/traces".parse().unwrap();
    let metrics = Metrics::new();
    let mut sender = Sender {
        transport: Transport::new(&endpoint, Duration::from_secs(1)).unwrap(),
        endpoint,
        resource: resource("svc".into()),
        timeout: Duration::from_secs(1),
        metrics: Arc::clone(&metrics),
        warned: None,
        lost: 0,
    };
    let text = logged(|| sender.lost(3, "connection refused".into()));
    assert_eq!(text.matches("trace export failed").count(), 1, "{text}");
    assert!(text.contains("spans_lost=3"), "{text}");
    tokio::time::advance(Duration::from_secs(30)).await;
    let text = logged(|| {
        sender.lost(2, "connection refused".into());
        sender.lost(4, "connection refused".into());
    });
    assert!(text.is_empty(), "not again within the minute: {text}");
    tokio::time::advance(Duration::from_secs(31)).await;
    let text = logged(|| sender.lost(1, "connection refused".into()));
    assert!(
        text.contains("spans_lost=7"),
        "the spans lost since: {text}"
    );
    let text = rendered(&metrics);
    assert!(
        text.contains(r#"vllm_router_trace_spans_dropped_total{cause="export_failed"} 10"#),
        "{text}"
    );
}

#[test]
fn only_an_https_endpoint_gets_tls() {
    let plain: Uri = "http://collector:4318/v1/traces".parse().unwrap();
    assert!(matches!(
        Transport::new(&plain, Duration::from_secs(1)),
        Ok(Transport::Plain(_))
    ));
    // With the system's roots (or an error naming them where there are none), never a panic
    // over which TLS provider to use.
    let tls: Uri = "https://collector:4318/v1/traces".parse().unwrap();
    match Transport::new(&tls, Duration::from_secs(1)) {
        Ok(Transport::Tls(_)) | Err(ExportError::Certificates { .. }) => {}
        Ok(Transport::Plain(_)) => panic!("https without TLS"),
    }
}
