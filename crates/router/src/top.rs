//! `vllm-router top`: the router's live view (`GET /fleet`) in the terminal, read once a
//! second. The screen is a pure function of [`State`] ([`render::render`]); a router that
//! goes away leaves its last view on screen, marked stale, until it answers again.

mod fetch;
pub mod render;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tokio::sync::mpsc;

use crate::cli::TopArgs;
use crate::live::{FleetView, HISTORY, WorkerView};

pub use fetch::Source;

/// A column of the worker table that rows can be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// The worker's label (URL, with `#RANK` for a data-parallel rank).
    Worker,
    /// The models it serves.
    Models,
    /// Healthy, draining or down.
    Health,
    /// Its circuit breaker.
    Breaker,
    /// Requests the router has open to it.
    InFlight,
    /// Requests queued in its engine.
    Waiting,
    /// Its KV-cache use.
    KvCache,
    /// Requests per second.
    ReqPerSec,
    /// Median time to first token.
    TtftP50,
    /// 99th percentile time to first token.
    TtftP99,
    /// Cache-hit rate.
    CacheHit,
}

impl Column {
    /// Every sortable column, in the order `s` walks them.
    pub const ALL: [Column; 11] = [
        Column::Worker,
        Column::Models,
        Column::Health,
        Column::Breaker,
        Column::InFlight,
        Column::Waiting,
        Column::KvCache,
        Column::ReqPerSec,
        Column::TtftP50,
        Column::TtftP99,
        Column::CacheHit,
    ];

    /// Its header in the table.
    pub fn title(self) -> &'static str {
        match self {
            Column::Worker => "worker",
            Column::Models => "models",
            Column::Health => "health",
            Column::Breaker => "breaker",
            Column::InFlight => "in-flight",
            Column::Waiting => "waiting",
            Column::KvCache => "KV-cache",
            Column::ReqPerSec => "req/s",
            Column::TtftP50 => "TTFT p50",
            Column::TtftP99 => "TTFT p99",
            Column::CacheHit => "cache-hit",
        }
    }

    fn step(self, by: isize) -> Self {
        let n = Self::ALL.len() as isize;
        let at = Self::ALL.iter().position(|c| *c == self).unwrap_or(0) as isize;
        Self::ALL[(at + by).rem_euclid(n) as usize]
    }

    /// How `a` and `b` compare in this column (missing figures first), labels breaking ties.
    pub fn compare(self, a: &WorkerView, b: &WorkerView) -> Ordering {
        fn num(a: Option<f64>, b: Option<f64>) -> Ordering {
            match (a, b) {
                (Some(a), Some(b)) => a.total_cmp(&b),
                (a, b) => a.is_some().cmp(&b.is_some()),
            }
        }
        let (sa, sb) = (&a.status, &b.status);
        let by = match self {
            Column::Worker => Ordering::Equal,
            Column::Models => sa.models.cmp(&sb.models),
            Column::Health => health_rank(a).cmp(&health_rank(b)),
            Column::Breaker => sa.breaker.name().cmp(sb.breaker.name()),
            Column::InFlight => sa.in_flight.cmp(&sb.in_flight),
            Column::Waiting => num(sa.waiting, sb.waiting),
            Column::KvCache => num(sa.kv_cache_usage, sb.kv_cache_usage),
            Column::ReqPerSec => a.req_per_sec.total_cmp(&b.req_per_sec),
            Column::TtftP50 => num(a.ttft_p50_ms, b.ttft_p50_ms),
            Column::TtftP99 => num(a.ttft_p99_ms, b.ttft_p99_ms),
            Column::CacheHit => num(a.cache_hit_rate, b.cache_hit_rate),
        };
        by.then_with(|| sa.label.cmp(&sb.label))
    }
}

/// 0 down, 1 draining, 2 healthy.
fn health_rank(w: &WorkerView) -> u8 {
    match (w.status.healthy, w.status.draining) {
        (false, _) => 0,
        (true, true) => 1,
        (true, false) => 2,
    }
}

/// What the screen shows: the last view read, how reads are going, and the viewer's choices.
#[derive(Debug, Clone)]
pub struct State {
    /// The router's URL, as given.
    pub url: String,
    /// The last view read, its history extended by every read since the first.
    pub view: Option<FleetView>,
    /// Why the last read failed, if it did.
    pub error: Option<String>,
    /// When a read last succeeded.
    pub last_ok: Option<Instant>,
    /// The column rows are sorted by, within their role.
    pub sort: Column,
    /// Whether the sort is reversed (largest first).
    pub descending: bool,
    /// Whether the help overlay is shown.
    pub help: bool,
}

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Keep going.
    Continue,
    /// Leave.
    Quit,
}

impl State {
    /// Nothing read yet from the router at `url`.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            view: None,
            error: None,
            last_ok: None,
            sort: Column::Worker,
            descending: false,
            help: false,
        }
    }

    /// Take in a read made at `now`.
    pub fn update(&mut self, read: Result<FleetView, String>, now: Instant) {
        match read {
            Ok(mut view) => {
                if let Some(old) = self.view.take() {
                    let first = view.history.first().map_or(u64::MAX, |p| p.t_ms);
                    let mut history: Vec<_> =
                        old.history.into_iter().filter(|p| p.t_ms < first).collect();
                    history.append(&mut view.history);
                    let extra = history.len().saturating_sub(HISTORY);
                    history.drain(..extra);
                    view.history = history;
                }
                self.view = Some(view);
                self.error = None;
                self.last_ok = Some(now);
            }
            Err(error) => self.error = Some(error),
        }
    }

    /// Whether the view on screen is not the router's current one.
    pub fn is_stale(&self) -> bool {
        self.error.is_some()
    }

    /// Time since the last successful read, if there was one.
    pub fn since_ok(&self, now: Instant) -> Option<Duration> {
        self.last_ok.map(|t| now.saturating_duration_since(t))
    }

    /// Act on a key press.
    pub fn key(&mut self, key: KeyEvent) -> Action {
        if key.kind != KeyEventKind::Press {
            return Action::Continue;
        }
        match key.code {
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                return Action::Quit;
            }
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('?' | 'h') => self.help = !self.help,
            KeyCode::Esc => self.help = false,
            KeyCode::Char('s') | KeyCode::Right | KeyCode::Tab => self.sort = self.sort.step(1),
            KeyCode::Char('S') | KeyCode::Left | KeyCode::BackTab => {
                self.sort = self.sort.step(-1);
            }
            KeyCode::Char('r') => self.descending = !self.descending,
            _ => {}
        }
        Action::Continue
    }

    /// The workers in screen order: prefill, then decode, then regular, each sorted by the
    /// chosen column.
    pub fn rows(&self) -> Vec<&WorkerView> {
        let Some(view) = &self.view else {
            return Vec::new();
        };
        let mut rows: Vec<&WorkerView> = view.workers.iter().collect();
        rows.sort_by(|a, b| {
            let by = self.sort.compare(a, b);
            let by = if self.descending { by.reverse() } else { by };
            render::group(a.status.role)
                .cmp(&render::group(b.status.role))
                .then(by)
        });
        rows
    }
}

/// Run `top` until `q` or Ctrl-C, restoring the terminal on the way out.
pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    let source = Source::new(&args.url, args.api_key.as_deref())?;
    let mut terminal = ratatui::try_init()?;
    let outcome = watch(&mut terminal, source, State::new(&args.url)).await;
    let restored = ratatui::try_restore();
    outcome?;
    Ok(restored?)
}

async fn watch(
    terminal: &mut ratatui::DefaultTerminal,
    source: Source,
    mut state: State,
) -> anyhow::Result<()> {
    let (results_tx, mut results) = mpsc::channel(4);
    let reads = tokio::spawn(source.poll(results_tx));
    let (keys_tx, mut keys) = mpsc::channel(64);
    std::thread::spawn(move || read_keys(keys_tx));
    // Redraws between reads keep the "last update ... ago" of a stale view current.
    let mut redraw = tokio::time::interval(Duration::from_secs(1));
    let outcome = loop {
        if let Err(e) = terminal.draw(|frame| {
            let area = frame.area();
            render::render(&state, Instant::now(), area, frame.buffer_mut());
        }) {
            break Err(e.into());
        }
        tokio::select! {
            read = results.recv() => match read {
                Some(read) => state.update(read, Instant::now()),
                None => break Err(anyhow::anyhow!("the reader of the live view stopped")),
            },
            event = keys.recv() => match event {
                Some(Ok(Event::Key(key))) => {
                    if state.key(key) == Action::Quit {
                        break Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(anyhow::Error::from(e).context("reading the terminal")),
                None => break Ok(()),
            },
            _ = redraw.tick() => {}
        }
    };
    reads.abort();
    outcome
}

/// Terminal events, until the receiver goes.
fn read_keys(events: mpsc::Sender<std::io::Result<Event>>) {
    loop {
        match event::poll(Duration::from_millis(200)) {
            Ok(false) => {
                if events.is_closed() {
                    return;
                }
            }
            Ok(true) => {
                if events.blocking_send(event::read()).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = events.blocking_send(Err(e));
                return;
            }
        }
    }
}
