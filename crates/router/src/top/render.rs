//! The screen, drawn from a [`State`] alone: a title line, the fleet summary, a stale-view
//! banner when reads fail, sparklines of the fleet's req/s and time to first token, and the
//! worker table grouped by role; the help overlay on top.

use std::time::{Duration, Instant};

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, Widget};

use super::{Column, State};
use crate::config::Role;
use crate::fleet::BreakerState;
use crate::live::{FleetView, WorkerView};

/// Where a role's rows go: prefill, then decode, then regular.
pub fn group(role: Role) -> u8 {
    match role {
        Role::Prefill => 0,
        Role::Decode => 1,
        Role::Regular => 2,
    }
}

/// Draw `state` as of `now` into `area` of `buf`.
pub fn render(state: &State, now: Instant, area: Rect, buf: &mut Buffer) {
    let banner = u16::from(state.is_stale() || state.view.is_none());
    let [title, summary, stale, charts, table] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(banner),
        Constraint::Length(6),
        Constraint::Min(3),
    ])
    .areas(area);
    title_line(state).render(title, buf);
    if let Some(view) = &state.view {
        summary_line(view).render(summary, buf);
        charts_of(view, charts, buf);
    }
    banner_line(state, now).render(stale, buf);
    worker_table(state).render(table, buf);
    if state.help {
        help(area, buf);
    }
}

fn title_line(state: &State) -> Line<'static> {
    let dir = if state.descending { "desc" } else { "asc" };
    let status = if state.is_stale() {
        Span::styled(
            " STALE ",
            Style::new().fg(Color::White).bg(Color::Red).bold(),
        )
    } else if state.view.is_some() {
        Span::styled(" live ", Style::new().fg(Color::Black).bg(Color::Green))
    } else {
        Span::raw(" connecting ")
    };
    Line::from(vec![
        Span::raw("vllm-router top ").bold(),
        Span::raw(state.url.clone()),
        Span::raw("  "),
        status,
        Span::raw(format!(
            "  sort: {} {dir}  (s/S column, r reverse, ? help, q quit)",
            state.sort.title()
        ))
        .dark_gray(),
    ])
}

fn summary_line(view: &FleetView) -> Line<'static> {
    let s = &view.summary;
    let healthy = if s.healthy < s.workers {
        Style::new().fg(Color::Yellow).bold()
    } else {
        Style::new().fg(Color::Green)
    };
    let mut spans = vec![
        Span::raw("workers "),
        Span::styled(format!("{}/{} healthy", s.healthy, s.workers), healthy),
    ];
    if s.draining > 0 {
        spans.push(Span::raw(format!(" ({} draining)", s.draining)));
    }
    spans.push(Span::raw(format!(
        " | in-flight {} | queued {} | {:.1} req/s | TTFT p50 {} p99 {} | cache-hit {} | policy {}{} | v{} | up {}",
        s.in_flight,
        s.queued,
        s.req_per_sec,
        ms(s.ttft_p50_ms),
        ms(s.ttft_p99_ms),
        share(s.cache_hit_rate),
        s.policy,
        if s.pd { " (P/D)" } else { "" },
        s.version,
        duration(Duration::from_millis(s.uptime_ms)),
    )));
    Line::from(spans)
}

fn banner_line(state: &State, now: Instant) -> Line<'static> {
    let style = Style::new().fg(Color::Red).bold();
    match (&state.error, state.since_ok(now)) {
        (Some(error), Some(age)) => Line::styled(
            format!(
                "STALE: last update {} ago, retrying every second | router unreachable: {error}",
                duration(age)
            ),
            style,
        ),
        (Some(error), None) => Line::styled(
            format!("retrying every second | router unreachable: {error}"),
            style,
        ),
        (None, _) if state.view.is_none() => Line::raw("waiting for the first view..."),
        (None, _) => Line::default(),
    }
}

fn charts_of(view: &FleetView, area: Rect, buf: &mut Buffer) {
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let width = usize::from(left.width.saturating_sub(2));
    let recent = &view.history[view.history.len().saturating_sub(width)..];
    // Padded on the left, so the newest point is always at the right edge.
    let pad = width.saturating_sub(recent.len());
    let rates: Vec<f64> = std::iter::repeat_n(0.0, pad)
        .chain(recent.iter().map(|p| p.req_per_sec))
        .collect();
    let ttfts: Vec<Option<f64>> = std::iter::repeat_n(None, pad)
        .chain(recent.iter().map(|p| p.ttft_p50_ms))
        .collect();
    let peak_rate = rates.iter().copied().fold(0.0, f64::max);
    let peak_ttft = ttfts.iter().flatten().copied().fold(0.0, f64::max);
    sparkline(
        format!(
            " fleet req/s: {:.1} now, {:.1} peak ",
            view.summary.req_per_sec, peak_rate
        ),
        rates.iter().map(|r| scaled(*r)).collect(),
        Color::Cyan,
    )
    .render(left, buf);
    sparkline(
        format!(
            " TTFT p50: {} now, {} peak ",
            ms(view.summary.ttft_p50_ms),
            ms((peak_ttft > 0.0).then_some(peak_ttft))
        ),
        ttfts.iter().map(|t| scaled(t.unwrap_or(0.0))).collect(),
        Color::Magenta,
    )
    .render(right, buf);
}

/// A figure as a bar height: tenths, so small rates still show.
fn scaled(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        (x * 10.0).round() as u64
    } else {
        0
    }
}

fn sparkline(title: String, data: Vec<u64>, color: Color) -> Sparkline<'static> {
    Sparkline::default()
        .block(Block::default().borders(Borders::ALL).title(title))
        .data(data)
        .style(Style::new().fg(color))
}

fn worker_table(state: &State) -> Table<'static> {
    let rows_in_order = state.rows();
    let header = Row::new(
        [
            "worker",
            "role",
            "models",
            "health",
            "breaker",
            "in-flight",
            "waiting",
            "KV-cache",
            "req/s",
            "TTFT p50",
            "TTFT p99",
            "cache-hit",
        ]
        .map(|title| {
            let sorted =
                title == state.sort.title() || (title == "worker" && state.sort == Column::Worker);
            let text = if sorted {
                format!("{title}{}", if state.descending { " v" } else { " ^" })
            } else {
                title.to_owned()
            };
            let cell = Cell::from(text).bold();
            if sorted { cell.underlined() } else { cell }
        }),
    )
    .style(Style::new().add_modifier(Modifier::REVERSED));
    let mut rows = Vec::new();
    let mut current = None;
    for w in &rows_in_order {
        let role = w.status.role;
        if current != Some(role) {
            current = Some(role);
            let count = rows_in_order
                .iter()
                .filter(|o| o.status.role == role)
                .count();
            rows.push(
                Row::new(vec![Cell::from(format!("-- {} ({count})", role.name()))])
                    .style(Style::new().fg(Color::Yellow).bold()),
            );
        }
        rows.push(worker_row(w));
    }
    let count = rows_in_order.len();
    Table::new(
        rows,
        [
            Constraint::Min(24),
            Constraint::Length(7),
            Constraint::Min(10),
            Constraint::Length(10),
            Constraint::Length(11),
            Constraint::Length(11),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(9),
            Constraint::Length(11),
            Constraint::Length(11),
            Constraint::Length(11),
        ],
    )
    .header(header)
    .block(
        Block::default()
            .borders(Borders::TOP)
            .title(format!(" workers ({count}) ")),
    )
}

fn worker_row(w: &WorkerView) -> Row<'static> {
    let s = &w.status;
    let (health, health_style) = match (s.healthy, s.draining) {
        (false, _) => ("DOWN", Style::new().fg(Color::Red).bold()),
        (true, true) => ("draining", Style::new().fg(Color::Yellow)),
        (true, false) => ("healthy", Style::new().fg(Color::Green)),
    };
    let breaker_style = match s.breaker {
        BreakerState::Closed => Style::new(),
        BreakerState::Open => Style::new().fg(Color::Red).bold(),
        BreakerState::HalfOpen => Style::new().fg(Color::Yellow),
    };
    let models = if s.models.is_empty() {
        "-".to_owned()
    } else {
        s.models.join(",")
    };
    Row::new(vec![
        Cell::from(s.label.clone()),
        Cell::from(s.role.name()),
        Cell::from(models),
        Cell::from(health).style(health_style),
        Cell::from(s.breaker.name()).style(breaker_style),
        Cell::from(s.in_flight.to_string()),
        Cell::from(s.waiting.map_or("-".to_owned(), |x| format!("{x:.0}"))),
        Cell::from(share(s.kv_cache_usage)),
        Cell::from(format!("{:.1}", w.req_per_sec)),
        Cell::from(ms(w.ttft_p50_ms)),
        Cell::from(ms(w.ttft_p99_ms)),
        Cell::from(share(w.cache_hit_rate)),
    ])
}

const HELP: &[(&str, &str)] = &[
    ("s, Tab, Right", "sort by the next column"),
    ("S, BackTab, Left", "sort by the previous column"),
    ("r", "reverse the sort"),
    ("? or h", "show or hide this help"),
    ("Esc", "hide this help"),
    ("q or Ctrl-C", "quit"),
];

fn help(area: Rect, buf: &mut Buffer) {
    let width = 60.min(area.width);
    let height = (HELP.len() as u16 + 6).min(area.height);
    let x = area.x + (area.width - width) / 2;
    let y = area.y + (area.height - height) / 2;
    let popup = Rect::new(x, y, width, height);
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(keys, what)| {
            Line::from(vec![
                Span::raw(format!("{keys:>18}  ")).bold(),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::default());
    lines.push(Line::raw(
        "Rows: prefill, then decode, then regular workers.",
    ));
    lines.push(Line::raw(
        "Figures refresh every second; '-' is no data yet.",
    ));
    Clear.render(popup, buf);
    Paragraph::new(lines)
        .block(Block::default().borders(Borders::ALL).title(" help "))
        .render(popup, buf);
}

/// Milliseconds, or `-`.
fn ms(x: Option<f64>) -> String {
    x.map_or("-".to_owned(), |x| format!("{x:.1} ms"))
}

/// A fraction as a percentage, or `-`.
fn share(x: Option<f64>) -> String {
    x.map_or("-".to_owned(), |x| format!("{:.0}%", x * 100.0))
}

/// `3d04h`, `1h02m`, `2m03s` or `5s`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}
