use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;

use super::render::{duration, render};
use super::{Action, Column, State};
use crate::config::Role;
use crate::fleet::BreakerState;
use crate::live::{FleetPoint, FleetView, Summary, WorkerStatus, WorkerView};

fn worker(label: &str, role: Role, req_per_sec: f64, ttft: Option<f64>) -> WorkerView {
    WorkerView {
        status: WorkerStatus {
            id: format!("id-{label}"),
            url: label.to_owned(),
            label: label.to_owned(),
            role,
            rank: None,
            models: vec!["sim-model".to_owned()],
            capacity: None,
            healthy: true,
            draining: false,
            breaker: BreakerState::Closed,
            in_flight: 2,
            running: Some(2.0),
            waiting: Some(1.0),
            kv_cache_usage: Some(0.25),
            requests_total: 10,
        },
        req_per_sec,
        ttft_p50_ms: ttft,
        ttft_p99_ms: ttft.map(|t| t * 2.0),
        cache_hit_rate: Some(0.5),
        history: Vec::new(),
    }
}

fn point(t_ms: u64, req_per_sec: f64) -> FleetPoint {
    FleetPoint {
        t_ms,
        req_per_sec,
        ttft_p50_ms: Some(20.0),
        ttft_p99_ms: Some(40.0),
        in_flight: 1,
    }
}

fn view(workers: Vec<WorkerView>, history: Vec<FleetPoint>) -> FleetView {
    FleetView {
        sampled_at_ms: 1_000_000,
        interval_ms: 1000,
        window_ms: 30_000,
        summary: Summary {
            version: "9.8.7".to_owned(),
            policy: "cache_aware".to_owned(),
            pd: false,
            uptime_ms: 3_723_000,
            workers: workers.len(),
            healthy: workers.iter().filter(|w| w.status.healthy).count(),
            draining: 0,
            in_flight: 6,
            queued: 3,
            req_per_sec: 12.5,
            ttft_p50_ms: Some(21.6),
            ttft_p99_ms: Some(23.3),
            cache_hit_rate: Some(0.41),
        },
        workers,
        history,
    }
}

fn regular_fleet() -> FleetView {
    view(
        vec![
            worker("http://b:1", Role::Regular, 3.0, Some(30.0)),
            worker("http://a:1", Role::Regular, 9.0, Some(10.0)),
            worker("http://c:1", Role::Regular, 6.0, None),
        ],
        (0..10).map(|i| point(i * 1000, i as f64)).collect(),
    )
}

fn pd_fleet() -> FleetView {
    view(
        vec![
            worker("http://r:1", Role::Regular, 1.0, None),
            worker("http://d2:1", Role::Decode, 1.0, None),
            worker("http://p:1", Role::Prefill, 1.0, None),
            worker("http://d1:1", Role::Decode, 1.0, None),
        ],
        Vec::new(),
    )
}

fn live(view: FleetView, now: Instant) -> State {
    let mut state = State::new("http://router:30000");
    state.update(Ok(view), now);
    state
}

/// The screen as lines of text.
fn screen(state: &State, now: Instant) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(160, 40)).expect("test terminal");
    terminal
        .draw(|frame| render(state, now, frame.area(), frame.buffer_mut()))
        .expect("draw");
    lines(terminal.backend().buffer())
}

fn lines(buf: &Buffer) -> Vec<String> {
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
        })
        .collect()
}

fn row_of(lines: &[String], text: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no line with {text:?} in\n{}", lines.join("\n")))
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

#[test]
fn every_worker_has_a_row_with_its_figures() {
    let now = Instant::now();
    let lines = screen(&live(regular_fleet(), now), now);
    for label in ["http://a:1", "http://b:1", "http://c:1"] {
        let row = &lines[row_of(&lines, label)];
        assert!(row.contains("regular"), "{row}");
        assert!(row.contains("sim-model"), "{row}");
        assert!(row.contains("healthy"), "{row}");
        assert!(row.contains("closed"), "{row}");
        assert!(row.contains("25%"), "{row}");
        assert!(row.contains("50%"), "{row}");
    }
    let a = &lines[row_of(&lines, "http://a:1")];
    assert!(
        a.contains("9.0") && a.contains("10.0 ms") && a.contains("20.0 ms"),
        "{a}"
    );
    let c = &lines[row_of(&lines, "http://c:1")];
    assert!(c.contains(" - "), "a missing TTFT shows as '-': {c}");
    let summary = &lines[row_of(&lines, "workers 3/3 healthy")];
    for part in [
        "in-flight 6",
        "queued 3",
        "12.5 req/s",
        "TTFT p50 21.6 ms p99 23.3 ms",
        "cache-hit 41%",
        "policy cache_aware",
        "v9.8.7",
        "up 1h02m",
    ] {
        assert!(summary.contains(part), "{part:?} not in {summary}");
    }
    assert!(lines[0].contains(" live "), "{}", lines[0]);
    assert!(!lines.iter().any(|l| l.contains("STALE")));
}

#[test]
fn sparklines_are_titled_and_drawn_from_history() {
    let now = Instant::now();
    let lines = screen(&live(regular_fleet(), now), now);
    let chart = row_of(&lines, "fleet req/s: 12.5 now, 9.0 peak");
    assert!(lines[chart].contains("TTFT p50: 21.6 ms now, 20.0 ms peak"));
    let bars: String = lines[chart + 1..chart + 5].concat();
    assert!(bars.contains('█'), "no bars under the chart titles");
    // The newest (and highest) point is at the right edge of the left chart.
    let top_bar = &lines[chart + 1];
    let edge: String = top_bar.chars().skip(77).take(3).collect();
    assert!(edge.contains('█') && edge.ends_with('│'), "{top_bar}");
}

#[test]
fn roles_are_grouped_prefill_decode_regular_each_headed() {
    let now = Instant::now();
    let lines = screen(&live(pd_fleet(), now), now);
    let order: Vec<usize> = [
        "-- prefill (1)",
        "http://p:1",
        "-- decode (2)",
        "http://d1:1",
        "http://d2:1",
        "-- regular (1)",
        "http://r:1",
    ]
    .iter()
    .map(|t| row_of(&lines, t))
    .collect();
    assert!(order.is_sorted(), "rows out of order: {order:?}");
}

#[test]
fn keys_cycle_the_sort_column_and_reverse_it() {
    let now = Instant::now();
    let mut state = live(regular_fleet(), now);
    let labels =
        |s: &State| -> Vec<String> { s.rows().iter().map(|w| w.status.label.clone()).collect() };
    assert_eq!(labels(&state), ["http://a:1", "http://b:1", "http://c:1"]);
    while state.sort != Column::ReqPerSec {
        assert_eq!(state.key(key(KeyCode::Char('s'))), Action::Continue);
    }
    assert_eq!(labels(&state), ["http://b:1", "http://c:1", "http://a:1"]);
    state.key(key(KeyCode::Char('r')));
    assert_eq!(labels(&state), ["http://a:1", "http://c:1", "http://b:1"]);
    let lines = screen(&state, now);
    assert!(row_of(&lines, "http://a:1") < row_of(&lines, "http://c:1"));
    assert!(row_of(&lines, "http://c:1") < row_of(&lines, "http://b:1"));
    assert!(lines[0].contains("sort: req/s desc"), "{}", lines[0]);
    assert!(
        lines.iter().any(|l| l.contains("req/s v")),
        "the header marks the column"
    );
    // Missing figures sort first, going up.
    state.key(key(KeyCode::Char('r')));
    state.key(key(KeyCode::Char('s')));
    assert_eq!(state.sort, Column::TtftP50);
    assert_eq!(labels(&state), ["http://c:1", "http://a:1", "http://b:1"]);
    // Back, and all the way round.
    state.key(key(KeyCode::Char('S')));
    assert_eq!(state.sort, Column::ReqPerSec);
    for _ in 0..Column::ALL.len() {
        state.key(key(KeyCode::Right));
    }
    assert_eq!(state.sort, Column::ReqPerSec);
}

#[test]
fn sorting_stays_within_the_role_groups() {
    let now = Instant::now();
    let mut state = live(pd_fleet(), now);
    state.key(key(KeyCode::Char('r')));
    let labels: Vec<_> = state
        .rows()
        .iter()
        .map(|w| w.status.label.clone())
        .collect();
    assert_eq!(
        labels,
        ["http://p:1", "http://d2:1", "http://d1:1", "http://r:1"]
    );
}

#[test]
fn a_failed_read_keeps_the_view_marked_stale_until_one_succeeds() {
    let t0 = Instant::now();
    let mut state = live(regular_fleet(), t0);
    state.update(Err("request failed: connection refused".to_owned()), t0);
    let later = t0 + Duration::from_secs(75);
    let lines = screen(&state, later);
    assert!(lines[0].contains("STALE"), "{}", lines[0]);
    let banner = &lines[row_of(&lines, "STALE: last update 1m15s ago")];
    assert!(banner.contains("connection refused"), "{banner}");
    assert!(banner.contains("router unreachable"), "{banner}");
    // The last view stays on screen.
    for label in ["http://a:1", "http://b:1", "http://c:1"] {
        row_of(&lines, label);
    }
    state.update(Ok(regular_fleet()), later);
    let lines = screen(&state, later);
    assert!(!lines.iter().any(|l| l.contains("STALE")));
    assert!(lines[0].contains(" live "));
}

#[test]
fn before_any_view_the_error_shows() {
    let now = Instant::now();
    let mut state = State::new("http://router:30000");
    assert!(
        screen(&state, now)
            .iter()
            .any(|l| l.contains("waiting for the first view"))
    );
    state.update(Err("answered 401 Unauthorized".to_owned()), now);
    let lines = screen(&state, now);
    let banner = &lines[row_of(&lines, "router unreachable")];
    assert!(banner.contains("answered 401 Unauthorized"), "{banner}");
}

#[test]
fn help_opens_on_question_mark_or_h_and_closes() {
    let now = Instant::now();
    let mut state = live(regular_fleet(), now);
    let shown = |s: &State| {
        screen(s, now)
            .iter()
            .any(|l| l.contains("reverse the sort"))
    };
    assert!(!shown(&state));
    state.key(key(KeyCode::Char('?')));
    assert!(shown(&state));
    state.key(key(KeyCode::Char('?')));
    assert!(!shown(&state));
    state.key(key(KeyCode::Char('h')));
    assert!(shown(&state));
    state.key(key(KeyCode::Esc));
    assert!(!shown(&state));
}

#[test]
fn q_and_ctrl_c_quit() {
    let mut state = State::new("http://router:30000");
    assert_eq!(state.key(key(KeyCode::Char('x'))), Action::Continue);
    assert_eq!(state.key(key(KeyCode::Char('q'))), Action::Quit);
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert_eq!(state.key(ctrl_c), Action::Quit);
    assert_eq!(state.key(key(KeyCode::Char('c'))), Action::Continue);
}

#[test]
fn reads_extend_the_history_without_repeats() {
    let now = Instant::now();
    let mut state = live(regular_fleet(), now);
    let next = view(
        regular_fleet().workers,
        vec![point(8000, 8.0), point(9000, 9.0), point(10_000, 10.0)],
    );
    state.update(Ok(next), now);
    let times: Vec<u64> = state
        .view
        .as_ref()
        .map(|v| v.history.iter().map(|p| p.t_ms).collect())
        .unwrap_or_default();
    assert_eq!(times, (0..=10).map(|i| i * 1000).collect::<Vec<_>>());
}

#[test]
fn renders_into_a_small_area_without_panicking() {
    let now = Instant::now();
    let mut state = live(pd_fleet(), now);
    state.help = true;
    state.update(Err("x".to_owned()), now);
    for (w, h) in [(1, 1), (20, 5), (80, 24)] {
        let area = Rect::new(0, 0, w, h);
        let mut buf = Buffer::empty(area);
        render(&state, now, area, &mut buf);
    }
}

#[test]
fn durations_read_short() {
    assert_eq!(duration(Duration::from_secs(5)), "5s");
    assert_eq!(duration(Duration::from_secs(123)), "2m03s");
    assert_eq!(duration(Duration::from_secs(3723)), "1h02m");
    assert_eq!(duration(Duration::from_secs(273_600)), "3d04h");
}

#[test]
fn source_wants_an_http_url() {
    assert!(super::Source::new("http://127.0.0.1:30000/", None).is_ok());
    assert!(super::Source::new("https://router", None).is_err());
    assert!(super::Source::new("router:30000", None).is_err());
    assert!(super::Source::new("not a url", None).is_err());
    let source = super::Source::new("http://127.0.0.1:30000/", Some("k")).expect("source");
    assert_eq!(
        source.uri(5).map(|u| u.to_string()),
        Ok("http://127.0.0.1:30000/fleet?history=5".to_owned())
    );
}
