use std::collections::BTreeMap;
use std::io::Write;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;
use zeromq::{DealerSocket, Socket, SocketSend};

use super::registry::Throttle;
use super::*;
use crate::config::{DiscoveryConfig, Role, WorkerSpec, WorkerUrl};
use crate::sync::Mutex;

const EXPIRY: Duration = Duration::from_secs(5);

/// The map vLLM sends, plus a key the router does not know.
#[derive(Serialize)]
struct Heartbeat<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    http_address: &'a str,
    zmq_address: &'a str,
    extra: u32,
}

fn payload(kind: &str, http: &str, zmq: &str) -> Vec<u8> {
    let heartbeat = Heartbeat {
        kind,
        http_address: http,
        zmq_address: zmq,
        extra: 7,
    };
    rmp_serde::to_vec_named(&heartbeat).unwrap()
}

/// `[identity, payload]`, as the ROUTER socket delivers a DEALER's one frame.
fn frames(payload: Vec<u8>) -> Vec<Bytes> {
    vec![Bytes::from_static(b"\x00peer"), Bytes::from(payload)]
}

fn discovery(ranks: u32) -> DiscoveryConfig {
    DiscoveryConfig {
        address: "127.0.0.1:0".into(),
        expiry: EXPIRY,
        ranks: NonZeroU32::new(ranks).unwrap(),
    }
}

fn registry() -> Registry {
    Registry::new(&discovery(1), &[])
}

fn registration(kind: &str, http: &str, zmq: &str) -> Registration {
    decode(&payload(kind, http, zmq)).unwrap()
}

/// The events as comparable text: `+role url zmq ranks` or `-url`.
fn summary(events: &[FleetEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            FleetEvent::Add(spec) => format!(
                "+{} {} {} {}",
                spec.role.name(),
                spec.url.text,
                spec.zmq_address.as_deref().unwrap_or("-"),
                spec.ranks
            ),
            FleetEvent::Remove(url) => format!("-{url}"),
            FleetEvent::Models { url, .. } => format!("models {url}"),
        })
        .collect()
}

#[test]
fn decode_reads_the_map_vllm_sends_and_ignores_other_keys() {
    let r = decode(&payload("P", "10.0.0.1:8100", "10.0.0.1:21001")).unwrap();
    assert_eq!(r.role, Role::Prefill);
    assert_eq!(r.url.text, "http://10.0.0.1:8100");
    assert_eq!(r.zmq_address, "10.0.0.1:21001");
    // A plain map with string values, as Python's msgpack writes a dict.
    let map = BTreeMap::from([
        ("type", "D"),
        ("http_address", "gpu-2:8200"),
        ("zmq_address", "[fd00::2]:21002"),
    ]);
    let r = decode(&rmp_serde::to_vec(&map).unwrap()).unwrap();
    assert_eq!(r.role, Role::Decode);
    assert_eq!(r.url.text, "http://gpu-2:8200");
    assert_eq!(r.zmq_address, "[fd00::2]:21002");
}

#[test]
fn decode_refuses_what_is_not_a_registration() {
    let missing = rmp_serde::to_vec(&BTreeMap::from([("type", "P"), ("http_address", "h:1")]));
    #[derive(Serialize)]
    struct Numeric {
        #[serde(rename = "type")]
        kind: &'static str,
        http_address: u32,
        zmq_address: &'static str,
    }
    let number = rmp_serde::to_vec_named(&Numeric {
        kind: "P",
        http_address: 8000,
        zmq_address: "h:2",
    });
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "not a registration map"),
        (b"\xc1".to_vec(), "not a registration map"),
        (br#"{"type":"P"}"#.to_vec(), "not a registration map"),
        (missing.unwrap(), "not a registration map"),
        (number.unwrap(), "not a registration map"),
        (rmp_serde::to_vec(&42u32).unwrap(), "not a registration map"),
        (payload("X", "h:1", "h:2"), "unknown type 'X'"),
        (payload("p", "h:1", "h:2"), "unknown type 'p'"),
        (payload("P", "h", "h:2"), "bad http_address 'h'"),
        (payload("P", "h:99999", "h:2"), "bad http_address"),
        (payload("P", "http://h:1", "h:2"), "bad http_address"),
        (payload("P", ":1", "h:2"), "bad http_address"),
        (payload("P", "[::1:80", "h:2"), "bad http_address"),
        (payload("D", "h:1", ""), "bad zmq_address"),
        (payload("D", "h:1", "h 2:3"), "bad zmq_address"),
        (payload("D", "h:1", "h:port"), "bad zmq_address"),
    ];
    for (bytes, expected) in cases {
        let error = decode(&bytes).expect_err(expected).to_string();
        assert!(
            error.contains(expected),
            "{error:?} should say {expected:?}"
        );
    }
}

#[test]
fn a_new_instance_joins_as_a_worker_of_its_role() {
    let mut reg = Registry::new(&discovery(4), &[]);
    let t0 = Instant::now();
    let events = reg.receive(&frames(payload("P", "10.0.0.1:8100", "10.0.0.1:21001")), t0);
    assert_eq!(
        summary(&events),
        ["+prefill http://10.0.0.1:8100 10.0.0.1:21001 4"]
    );
    let events = reg.receive(&frames(payload("D", "10.0.0.2:8200", "10.0.0.2:22001")), t0);
    assert_eq!(
        summary(&events),
        ["+decode http://10.0.0.2:8200 10.0.0.2:22001 4"]
    );
    assert_eq!(reg.len(), 2);
}

#[test]
fn heartbeats_keep_an_instance_without_events() {
    let mut reg = registry();
    let t0 = Instant::now();
    reg.heard(registration("P", "h:1", "h:2"), t0);
    let later = t0 + Duration::from_secs(3);
    assert!(reg.heard(registration("P", "h:1", "h:2"), later).is_empty());
    // Silence is counted from the last heartbeat.
    assert_eq!(reg.next_expiry(), Some(later + EXPIRY));
    assert!(reg.expire(t0 + EXPIRY).is_empty());
    assert_eq!(reg.len(), 1);
}

#[test]
fn a_change_of_type_or_zmq_address_replaces_the_worker() {
    let mut reg = registry();
    let t0 = Instant::now();
    reg.heard(registration("P", "h:1", "h:2"), t0);
    let events = reg.heard(registration("D", "h:1", "h:2"), t0);
    assert_eq!(
        summary(&events),
        ["-http://h:1", "+decode http://h:1 h:2 1"]
    );
    let events = reg.heard(registration("D", "h:1", "h:3"), t0);
    assert_eq!(
        summary(&events),
        ["-http://h:1", "+decode http://h:1 h:3 1"]
    );
    assert!(reg.heard(registration("D", "h:1", "h:3"), t0).is_empty());
    assert_eq!(reg.len(), 1);
}

#[test]
fn a_silent_instance_expires_and_may_register_again() {
    let mut reg = registry();
    let t0 = Instant::now();
    assert_eq!(reg.next_expiry(), None);
    reg.heard(registration("P", "a:1", "a:2"), t0);
    reg.heard(registration("D", "b:1", "b:2"), t0 + Duration::from_secs(2));
    assert_eq!(reg.next_expiry(), Some(t0 + EXPIRY));
    assert!(
        reg.expire(t0 + EXPIRY - Duration::from_millis(1))
            .is_empty()
    );
    assert_eq!(summary(&reg.expire(t0 + EXPIRY)), ["-http://a:1"]);
    assert_eq!(
        reg.next_expiry(),
        Some(t0 + Duration::from_secs(2) + EXPIRY)
    );
    assert_eq!(
        summary(&reg.expire(t0 + Duration::from_secs(60))),
        ["-http://b:1"]
    );
    assert!(reg.is_empty());
    assert_eq!(reg.next_expiry(), None);
    let back = reg.heard(
        registration("P", "a:1", "a:2"),
        t0 + Duration::from_secs(61),
    );
    assert_eq!(summary(&back), ["+prefill http://a:1 a:2 1"]);
}

#[test]
fn malformed_messages_change_nothing() {
    let mut reg = registry();
    let t0 = Instant::now();
    reg.heard(registration("P", "h:1", "h:2"), t0);
    assert!(reg.receive(&frames(b"garbage".to_vec()), t0).is_empty());
    assert!(
        reg.receive(&frames(payload("Q", "h:1", "h:9")), t0)
            .is_empty()
    );
    let one_frame = vec![Bytes::from(payload("D", "h:1", "h:9"))];
    assert!(reg.receive(&one_frame, t0).is_empty());
    assert!(reg.receive(&[], t0).is_empty());
    assert_eq!(reg.len(), 1);
    assert_eq!(reg.next_expiry(), Some(t0 + EXPIRY));
}

/// Log lines at warn and above written while `f` runs on this thread.
fn warnings(f: impl FnOnce()) -> Vec<String> {
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(sink.0.lock().clone()).unwrap();
    text.lines().map(str::to_owned).collect()
}

#[test]
fn a_static_worker_is_not_taken_over_and_is_warned_about_once() {
    let fixed = WorkerSpec::with_role(
        WorkerUrl::parse("--decode", "http://h:1").unwrap(),
        Role::Decode,
    );
    let mut reg = Registry::new(&discovery(1), &[fixed]);
    let t0 = Instant::now();
    let logged = warnings(|| {
        for kind in ["P", "D", "P"] {
            assert!(reg.heard(registration(kind, "h:1", "h:2"), t0).is_empty());
        }
    });
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(logged[0].contains("static worker"), "{logged:?}");
    assert!(reg.is_empty());
    assert_eq!(reg.next_expiry(), None);
    // Other URLs still register.
    let events = reg.heard(registration("P", "h:3", "h:4"), t0);
    assert_eq!(summary(&events), ["+prefill http://h:3 h:4 1"]);
}

#[test]
fn malformed_message_warnings_are_rate_limited() {
    let mut reg = registry();
    let t0 = Instant::now();
    let logged = warnings(|| {
        for s in 0..30 {
            reg.receive(&frames(b"junk".to_vec()), t0 + Duration::from_secs(s));
        }
        reg.receive(&frames(b"junk".to_vec()), t0 + Duration::from_secs(61));
    });
    assert_eq!(logged.len(), 2, "{logged:?}");
    assert!(logged[1].contains("suppressed=29"), "{logged:?}");
}

#[test]
fn throttle_lets_one_through_per_period() {
    let mut throttle = Throttle::new(Duration::from_secs(10));
    let t0 = Instant::now();
    assert_eq!(throttle.allow(t0), Some(0));
    assert_eq!(throttle.allow(t0 + Duration::from_secs(1)), None);
    assert_eq!(throttle.allow(t0 + Duration::from_secs(9)), None);
    assert_eq!(throttle.allow(t0 + Duration::from_secs(10)), Some(2));
    assert_eq!(throttle.allow(t0 + Duration::from_secs(11)), None);
}

/// Poll `done` until it holds or `within` passes.
async fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

#[tokio::test]
async fn a_dealer_registers_a_worker_that_serves_at_once_and_leaves_when_silent() {
    let sim = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = vllm_sim::spawn_on(sim, vllm_sim::SimConfig::default()).await;
    let http_address = sim
        .url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let fleet = Arc::new(Fleet::start(&[], Vec::new()));
    let listener = Listener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.endpoint().to_string();
    let config = DiscoveryConfig {
        expiry: Duration::from_millis(400),
        ..discovery(1)
    };
    let task = listener.spawn(
        Registry::new(&config, &[]),
        Arc::clone(&fleet),
        Upstream::new(Duration::from_secs(2)),
        Duration::from_secs(2),
    );

    let mut dealer = DealerSocket::new();
    dealer.connect(&endpoint).await.unwrap();
    dealer
        .send(payload("D", &http_address, "127.0.0.1:21001").into())
        .await
        .unwrap();
    // Healthy well before a health probe round could have run (there is no health loop here).
    let healthy = eventually(Duration::from_secs(10), || {
        let snapshot = fleet.snapshot();
        snapshot.members().iter().any(|m| {
            m.worker.is_healthy()
                && m.worker.role() == Role::Decode
                && m.worker.zmq_address() == Some("127.0.0.1:21001")
                && m.models.is_some()
        })
    })
    .await;
    assert!(healthy, "the registered worker never became healthy");
    // No further heartbeat: the expiry timer removes it with no message arriving.
    let gone = eventually(Duration::from_secs(10), || {
        fleet.snapshot().members().is_empty()
    })
    .await;
    assert!(gone, "the silent worker was never removed");
    task.abort();
}
