"""Small inline SVG charts for the HTML report: lines over a linear or log x axis, and grouped bars.

No dependency and no external resource: each chart is one `<svg>` element. Every series is one `<polyline>`
with exactly one point per data point (and `data-label` naming it), and the first and last tick labels of an
axis are the data's own minimum and maximum, so a reader sees the real range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 560, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 150, 34, 46
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


@dataclass
class Series:
    label: str
    points: Sequence[tuple[float, float]]
    color: str = COLORS[0]
    dashed: bool = False
    markers: bool = False


def number(value: float) -> str:
    """A short label: 3 significant digits, no exponent for everyday magnitudes."""
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:.2e}"


class Axis:
    """A mapping from data values to pixels, linear or logarithmic, with ticks that include both ends."""

    def __init__(self, low: float, high: float, start: float, end: float, log: bool = False) -> None:
        self.log = log and low > 0
        if high <= low:
            pad = abs(low) * 0.05 or 1.0
            low, high = low - pad, high + pad
        self.low, self.high, self.start, self.end = low, high, start, end

    def _t(self, value: float) -> float:
        return math.log10(value) if self.log else value

    def __call__(self, value: float) -> float:
        span = self._t(self.high) - self._t(self.low)
        return self.start + (self._t(value) - self._t(self.low)) / span * (self.end - self.start)

    def ticks(self, count: int = 5) -> list[float]:
        inner = self._log_ticks() if self.log else self._linear_ticks(count)
        gap = abs(self.end - self.start) / 12
        inner = [t for t in inner if abs(self(t) - self.start) > gap and abs(self(t) - self.end) > gap]
        return [self.low, *inner, self.high]

    def _linear_ticks(self, count: int) -> list[float]:
        raw = (self.high - self.low) / count
        step = 10 ** math.floor(math.log10(raw))
        step *= next(m for m in (1, 2, 5, 10) if step * m >= raw)
        first = math.ceil(self.low / step) * step
        return [first + i * step for i in range(int((self.high - first) / step) + 1)]

    def _log_ticks(self) -> list[float]:
        ticks = []
        for exponent in range(math.floor(math.log10(self.low)), math.ceil(math.log10(self.high)) + 1):
            ticks += [m * 10 ** exponent for m in (1, 2, 5) if self.low <= m * 10 ** exponent <= self.high]
        return ticks


def _frame(title: str, x_label: str, y_label: str) -> list[str]:
    return [f'<svg width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" font-family="sans-serif" '
            'font-size="11">',
            f'<text x="{WIDTH / 2:.0f}" y="18" text-anchor="middle" font-size="13" font-weight="bold">'
            f'{escape(title)}</text>',
            f'<text x="{(LEFT + WIDTH - RIGHT) / 2:.0f}" y="{HEIGHT - 8}" text-anchor="middle">'
            f'{escape(x_label)}</text>',
            f'<text transform="translate(14,{(TOP + HEIGHT - BOTTOM) / 2:.0f}) rotate(-90)" text-anchor="middle">'
            f'{escape(y_label)}</text>']


def _axes(x: Axis, y: Axis) -> list[str]:
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    parts = [f'<rect x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{bottom - TOP}" fill="none" stroke="#888"/>']
    for t in x.ticks():
        px = x(t)
        parts.append(f'<line x1="{px:.1f}" y1="{TOP}" x2="{px:.1f}" y2="{bottom}" stroke="#eee"/>')
        parts.append(f'<text class="xtick" x="{px:.1f}" y="{bottom + 15}" text-anchor="middle">{number(t)}</text>')
    for t in y.ticks():
        py = y(t)
        parts.append(f'<line x1="{LEFT}" y1="{py:.1f}" x2="{right}" y2="{py:.1f}" stroke="#eee"/>')
        parts.append(f'<text class="ytick" x="{LEFT - 5}" y="{py + 4:.1f}" text-anchor="end">{number(t)}</text>')
    return parts


def _legend(entries: Sequence[tuple[str, str, bool]]) -> list[str]:
    parts = []
    for i, (label, color, dashed) in enumerate(entries):
        y = TOP + 10 + 16 * i
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        parts.append(f'<line x1="{WIDTH - RIGHT + 10}" y1="{y}" x2="{WIDTH - RIGHT + 30}" y2="{y}" stroke="{color}" '
                     f'stroke-width="2"{dash}/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 35}" y="{y + 4}">{escape(label[:22])}</text>')
    return parts


def line_chart(title: str, series: Sequence[Series], x_label: str, y_label: str, *, log_x: bool = False) -> str:
    """One polyline per series (a series of one point is drawn as a marker only)."""
    points = [p for s in series for p in s.points]
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x = Axis(min(xs), max(xs), LEFT, WIDTH - RIGHT, log_x)
    y = Axis(min(ys), max(ys), HEIGHT - BOTTOM, TOP)
    parts = _frame(title, x_label, y_label) + _axes(x, y)
    for s in series:
        coords = " ".join(f"{x(px):.1f},{y(py):.1f}" for px, py in s.points)
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        parts.append(f'<polyline class="series" data-label="{escape(s.label)}" points="{coords}" fill="none" '
                     f'stroke="{s.color}" stroke-width="1.8"{dash}/>')
        if s.markers or len(s.points) == 1:
            parts += [f'<circle cx="{x(px):.1f}" cy="{y(py):.1f}" r="3.5" fill="{s.color}"/>' for px, py in s.points]
    parts += _legend([(s.label, s.color, s.dashed) for s in series])
    return "\n".join(parts + ["</svg>"])


def bar_chart(title: str, categories: Sequence[str], groups: Sequence[tuple[str, Sequence[float]]],
              y_label: str) -> str:
    """Grouped bars: one group per category, one bar per (label, values) entry of `groups`, value on top."""
    top = max((v for _, values in groups for v in values), default=1.0) or 1.0
    y = Axis(0.0, top * 1.1, HEIGHT - BOTTOM, TOP)
    parts = _frame(title, "layer", y_label)
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{bottom - TOP}" fill="none" '
                 'stroke="#888"/>')
    slot = (right - LEFT) / max(len(categories), 1)
    bar = slot * 0.8 / max(len(groups), 1)
    for c, category in enumerate(categories):
        parts.append(f'<text class="xtick" x="{LEFT + slot * (c + 0.5):.1f}" y="{bottom + 15}" '
                     f'text-anchor="middle">{escape(category[:14])}</text>')
        for g, (label, values) in enumerate(groups):
            px, py = LEFT + slot * (c + 0.1) + bar * g, y(values[c])
            parts.append(f'<rect class="bar" data-label="{escape(label)}" x="{px:.1f}" y="{py:.1f}" '
                         f'width="{bar * 0.92:.1f}" height="{bottom - py:.1f}" fill="{COLORS[g % len(COLORS)]}"/>')
            parts.append(f'<text x="{px + bar * 0.46:.1f}" y="{py - 3:.1f}" text-anchor="middle" font-size="9">'
                         f'{number(values[c])}</text>')
    parts += _legend([(label, COLORS[g % len(COLORS)], False) for g, (label, _) in enumerate(groups)])
    return "\n".join(parts + ["</svg>"])


def standalone(svg: str) -> str:
    """A chart as an .svg file of its own (inline in HTML it needs no namespace, and the report names no URL)."""
    return svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)
