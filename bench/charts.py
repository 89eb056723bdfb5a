"""SVG charts for the benchmark reports, written with the standard library only.

Two kinds: `lines` (x against y, one polyline per series, optionally on a log x axis) and `bars`
(grouped bars over categories). Both take plain numbers and write a self-contained SVG file
that any browser or Markdown viewer shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

WIDTH, HEIGHT = 900, 520
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 70, 250, 60, 60
FONT = "font-family='Helvetica, Arial, sans-serif'"


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    color: str = "#1f77b4"
    dash: str = ""
    width: float = 1.8
    notes: list[str] = field(default_factory=list)


def nice_step(span: float, ticks: int = 6) -> float:
    """A round step (1, 2 or 5 times a power of ten) giving about `ticks` ticks over `span`."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2 and 5 times the powers of ten between lo and hi (both positive)."""
    out = []
    for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** k
            if lo <= v <= hi:
                out.append(v)
    return out


def label_of(v: float) -> str:
    if v >= 1000 and v % 1000 == 0:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def _frame(title: str, subtitle: str) -> list[str]:
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
        f"viewBox='0 0 {WIDTH} {HEIGHT}'>",
        f"<rect width='{WIDTH}' height='{HEIGHT}' fill='white'/>",
        f"<text x='{MARGIN_L}' y='24' {FONT} font-size='15' font-weight='bold'>"
        f"{escape(title)}</text>",
    ]
    if subtitle:
        out.append(f"<text x='{MARGIN_L}' y='42' {FONT} font-size='11' fill='#555'>"
                   f"{escape(subtitle)}</text>")
    return out


def _legend(entries: list[tuple[str, str, str, float]], y0: float = MARGIN_T) -> list[str]:
    """Legend to the right of the plot: (label, color, dash, width) per entry."""
    x = WIDTH - MARGIN_R + 16
    out = []
    for i, (label, color, dash, width) in enumerate(entries):
        y = y0 + 8 + i * 17
        d = f" stroke-dasharray='{dash}'" if dash else ""
        out.append(f"<line x1='{x}' y1='{y}' x2='{x + 26}' y2='{y}' stroke='{color}' "
                   f"stroke-width='{width + 0.6:g}'{d}/>")
        out.append(f"<text x='{x + 32}' y='{y + 4}' {FONT} font-size='11'>{escape(label)}</text>")
    return out


def lines(path: Path, title: str, series: list[Series], x_label: str, y_label: str,
          subtitle: str = "", log_x: bool = False, y_range: tuple[float, float] | None = None,
          y_ticks: list[float] | None = None, y_format=lambda v: f"{v:g}") -> None:
    """One polyline with point markers per series."""
    pts = [p for s in series for p in s.points]
    plot_w = WIDTH - MARGIN_L - MARGIN_R
    plot_h = HEIGHT - MARGIN_T - MARGIN_B
    out = _frame(title, subtitle)
    if not pts:
        out.append(f"<text x='{MARGIN_L}' y='{MARGIN_T + 40}' {FONT} font-size='13'>"
                   "no data</text></svg>")
        path.write_text("\n".join(out) + "\n")
        return
    xs = [p[0] for p in pts]
    if log_x:
        lo = min(x for x in xs if x > 0) if any(x > 0 for x in xs) else 1.0
        hi = max(xs + [lo * 2])
        x_lo, x_hi = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
        if x_hi / x_lo > 10:  # trim to the nearest 1-2-5 tick around the data
            cands = log_ticks(x_lo, x_hi)
            x_lo = max([t for t in cands if t <= lo] or [x_lo])
            x_hi = min([t for t in cands if t >= hi] or [x_hi])
        x_ticks = log_ticks(x_lo, x_hi)

        def fx(x: float) -> float:
            x = max(x, x_lo)
            return MARGIN_L + plot_w * (math.log10(x) - math.log10(x_lo)) / (
                math.log10(x_hi) - math.log10(x_lo))
    else:
        step = nice_step(max(xs) - min(0.0, min(xs)))
        x_lo, x_hi = min(0.0, min(xs)), math.ceil(max(xs) / step) * step or step
        x_ticks = [x_lo + i * step for i in range(int(round((x_hi - x_lo) / step)) + 1)]

        def fx(x: float) -> float:
            return MARGIN_L + plot_w * (x - x_lo) / (x_hi - x_lo)
    ys = [p[1] for p in pts]
    y_lo, y_hi = y_range or (min(0.0, min(ys)), max(ys) or 1.0)
    if y_ticks is None:
        step = nice_step(y_hi - y_lo)
        y_ticks = [y_lo + i * step for i in range(int((y_hi - y_lo) / step) + 1)]

    def fy(y: float) -> float:
        return MARGIN_T + plot_h * (1 - (y - y_lo) / (y_hi - y_lo))
    out += _axes(plot_w, plot_h, x_label, y_label)
    for t in x_ticks:
        out.append(f"<line x1='{fx(t):.1f}' y1='{MARGIN_T}' x2='{fx(t):.1f}' "
                   f"y2='{MARGIN_T + plot_h}' stroke='#eee'/>")
        out.append(f"<text x='{fx(t):.1f}' y='{MARGIN_T + plot_h + 16}' {FONT} font-size='11' "
                   f"text-anchor='middle'>{label_of(t)}</text>")
    for t in y_ticks:
        out.append(f"<line x1='{MARGIN_L}' y1='{fy(t):.1f}' x2='{MARGIN_L + plot_w}' "
                   f"y2='{fy(t):.1f}' stroke='#eee'/>")
        out.append(f"<text x='{MARGIN_L - 6}' y='{fy(t) + 4:.1f}' {FONT} font-size='11' "
                   f"text-anchor='end'>{escape(y_format(t))}</text>")
    for s in series:
        if not s.points:
            continue
        d = f" stroke-dasharray='{s.dash}'" if s.dash else ""
        coords = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in s.points)
        out.append(f"<polyline points='{coords}' fill='none' stroke='{s.color}' "
                   f"stroke-width='{s.width:g}'{d}/>")
        for x, y in s.points:
            out.append(f"<circle cx='{fx(x):.1f}' cy='{fy(y):.1f}' r='3' fill='{s.color}'>"
                       f"<title>{escape(s.label)}: {x:.1f}, {y:g}</title></circle>")
    out += _legend([(s.label, s.color, s.dash, s.width) for s in series])
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def bars(path: Path, title: str, categories: list[str],
         series: list[tuple[str, list[float | None], str]], y_label: str,
         subtitle: str = "", notes: list[list[str]] | None = None) -> None:
    """Grouped bars: one group per category, one bar per series (label, values, color); a
    missing value leaves a gap. `notes[i][j]`, when given, is written under bar j of series i."""
    plot_w = WIDTH - MARGIN_L - MARGIN_R
    plot_h = HEIGHT - MARGIN_T - MARGIN_B
    out = _frame(title, subtitle)
    values = [v for _, vs, _ in series for v in vs if v is not None]
    y_hi = max(values) if values else 1.0
    step = nice_step(y_hi)
    y_hi = math.ceil(y_hi / step) * step or step

    def fy(y: float) -> float:
        return MARGIN_T + plot_h * (1 - y / y_hi)
    out += _axes(plot_w, plot_h, "", y_label)
    for i in range(int(round(y_hi / step)) + 1):
        t = i * step
        out.append(f"<line x1='{MARGIN_L}' y1='{fy(t):.1f}' x2='{MARGIN_L + plot_w}' "
                   f"y2='{fy(t):.1f}' stroke='#eee'/>")
        out.append(f"<text x='{MARGIN_L - 6}' y='{fy(t) + 4:.1f}' {FONT} font-size='11' "
                   f"text-anchor='end'>{t:g}</text>")
    group_w = plot_w / max(1, len(categories))
    bar_w = group_w * 0.8 / max(1, len(series))
    for c, cat in enumerate(categories):
        gx = MARGIN_L + c * group_w
        out.append(f"<text x='{gx + group_w / 2:.1f}' y='{MARGIN_T + plot_h + 16}' {FONT} "
                   f"font-size='11' text-anchor='middle'>{escape(cat)}</text>")
        for s, (label, vs, color) in enumerate(series):
            v = vs[c] if c < len(vs) else None
            if v is None:
                continue
            x = gx + group_w * 0.1 + s * bar_w
            out.append(f"<rect x='{x:.1f}' y='{fy(v):.1f}' width='{bar_w * 0.92:.1f}' "
                       f"height='{MARGIN_T + plot_h - fy(v):.1f}' fill='{color}'>"
                       f"<title>{escape(label)} at {escape(cat)}: {v:.1f}</title></rect>")
            out.append(f"<text x='{x + bar_w * 0.46:.1f}' y='{fy(v) - 3:.1f}' {FONT} "
                       f"font-size='9' text-anchor='middle'>{v:.0f}</text>")
            note = notes[s][c] if notes and s < len(notes) and c < len(notes[s]) else ""
            if note:
                tx, ty = x + bar_w * 0.46, MARGIN_T + plot_h + 26 + 7 * s
                out.append(f"<text x='{tx:.1f}' y='{ty:.1f}' {FONT} font-size='8' fill='#555' "
                           f"text-anchor='end' transform='rotate(-35 {tx:.1f} {ty:.1f})'>"
                           f"{escape(note)}</text>")
    out += _legend([(label, color, "", 8.0) for label, _, color in series])
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def _axes(plot_w: float, plot_h: float, x_label: str, y_label: str) -> list[str]:
    x0, y0 = MARGIN_L, MARGIN_T + plot_h
    out = [
        f"<line x1='{x0}' y1='{MARGIN_T}' x2='{x0}' y2='{y0}' stroke='#333'/>",
        f"<line x1='{x0}' y1='{y0}' x2='{x0 + plot_w}' y2='{y0}' stroke='#333'/>",
    ]
    if x_label:
        out.append(f"<text x='{x0 + plot_w / 2:.1f}' y='{HEIGHT - 14}' {FONT} font-size='12' "
                   f"text-anchor='middle'>{escape(x_label)}</text>")
    if y_label:
        cy = MARGIN_T + plot_h / 2
        out.append(f"<text x='18' y='{cy:.1f}' {FONT} font-size='12' text-anchor='middle' "
                   f"transform='rotate(-90 18 {cy:.1f})'>{escape(y_label)}</text>")
    return out
