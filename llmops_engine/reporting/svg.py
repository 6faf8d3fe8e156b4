"""Small inline SVG charts for the report: lines, bars and histograms, drawn by hand.

The report must open with no network and no scripts, so charts are static SVG written into
the page (no plotting library, no images to fetch). Each function is pure: numbers in,
`Html` out; labels go through `markup.h`, so a hostile name in a legend is only text.
Non-finite (and absurdly large) values are dropped, long series are thinned to `MAX_POINTS` per line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .markup import Html, h, number

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
MAX_POINTS = 1000
MAX_ABS = 1e12  # beyond any loss, latency or count; a hand-edited 1e308 is not drawn
WIDTH, HEIGHT = 560, 260
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 44, 40  # legend row under the title


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    dashed: bool = False


@dataclass
class _Frame:
    """Maps data coordinates onto the plot area."""

    x_min: float
    x_max: float
    y_min: float
    y_max: float
    width: int = WIDTH
    height: int = HEIGHT
    plot: tuple[float, float, float, float] = field(init=False)

    def __post_init__(self):
        self.plot = (MARGIN_LEFT, MARGIN_TOP, self.width - MARGIN_RIGHT, self.height - MARGIN_BOTTOM)

    def x(self, value: float) -> float:
        left, _, right, _ = self.plot
        span = self.x_max - self.x_min or 1.0
        return round(left + (value - self.x_min) / span * (right - left), 2)

    def y(self, value: float) -> float:
        _, top, _, bottom = self.plot
        span = self.y_max - self.y_min or 1.0
        return round(bottom - (value - self.y_min) / span * (bottom - top), 2)


def line_chart(series: list[Series], title: str, x_label: str, y_label: str) -> Html:
    """One line per series over shared axes; a series of one point is drawn as a dot."""
    drawn = [Series(s.name, _thin(_finite(s.points)), s.dashed) for s in series]
    drawn = [s for s in drawn if s.points]
    if not drawn:
        return _empty(title)
    xs = [x for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points]
    low, high = _padded(min(ys), max(ys))
    x_low, x_high = (min(xs), max(xs)) if max(xs) > min(xs) else (min(xs) - 1, max(xs) + 1)  # one run: centred
    frame = _Frame(x_low, x_high, low, high)
    marks = []
    for index, item in enumerate(drawn):
        color = PALETTE[index % len(PALETTE)]
        path = " ".join(f"{frame.x(x)},{frame.y(y)}" for x, y in item.points)
        marks.append(h("polyline", h("title", item.name), points=path, fill="none", stroke=color, stroke_width=1.6,
                       stroke_dasharray="6 4" if item.dashed else None, class_="series"))
        if len(item.points) <= 30:  # few points: show each one, with its value on hover
            marks += [h("circle", h("title", f"{item.name}: {number(y)} at {number(x)}"), cx=frame.x(x), cy=frame.y(y),
                        r=2.5, fill=color) for x, y in item.points]
    return _figure(title, frame, x_label, y_label, marks, _legend([s.name for s in drawn], dashed=[s.dashed for s in drawn]))


def bar_chart(labels: list[str], values: list[float | None], title: str) -> Html:
    """One bar per label (a missing value leaves a gap marked 'n/a'), value printed on top."""
    shown = [v for v in values if _is_finite(v)]
    if not shown:
        return _empty(title)
    low, high = min(0.0, min(shown)), max(0.0, max(shown))
    high = high if high > low else low + 1.0
    frame = _Frame(0, len(labels), low, high + (high - low) * 0.12, width=max(220, 70 * len(labels) + 80))
    left, _, right, _ = frame.plot
    slot = (right - left) / len(labels)
    marks = []
    for index, (label, value) in enumerate(zip(labels, values)):
        x = left + index * slot + slot * 0.15
        color = PALETTE[index % len(PALETTE)]
        marks.append(h("text", label[:18], x=round(x + slot * 0.35, 2), y=frame.height - MARGIN_BOTTOM + 14,
                       text_anchor="middle", class_="tick"))
        if not _is_finite(value):
            marks.append(h("text", "n/a", x=round(x + slot * 0.35, 2), y=frame.y(0) - 4, text_anchor="middle", class_="tick"))
            continue
        top, base = frame.y(max(value, 0.0)), frame.y(min(value, 0.0))
        marks.append(h("rect", h("title", f"{label}: {number(value)}"), x=round(x, 2), y=top, width=round(slot * 0.7, 2),
                       height=max(round(base - top, 2), 0.5), fill=color, class_="bar"))
        marks.append(h("text", number(value), x=round(x + slot * 0.35, 2), y=top - 4, text_anchor="middle", class_="value"))
    return _figure(title, frame, "", "", marks, None, x_ticks=False)


def histogram(values: list[float], title: str, x_label: str, bins: int = 20) -> Html:
    """Counts of `values` in `bins` equal-width bins between their min and max."""
    finite = sorted(v for v in values if _is_finite(v))
    if not finite:
        return _empty(title)
    low, high = finite[0], finite[-1]
    width = (high - low) / bins if high > low else 1.0
    counts = [0] * bins
    for value in finite:
        counts[min(int((value - low) / width), bins - 1)] += 1
    frame = _Frame(low, low + width * bins, 0, max(counts) * 1.1)
    _, _, _, bottom = frame.plot
    marks = [h("rect", h("title", f"{number(low + i * width)}–{number(low + (i + 1) * width)}: {count}"),
               x=frame.x(low + i * width), y=frame.y(count), width=max(round(frame.x(low + width) - frame.x(low) - 1, 2), 0.5),
               height=round(bottom - frame.y(count), 2), fill=PALETTE[0], class_="bar")
             for i, count in enumerate(counts) if count]
    return _figure(title, frame, x_label, "requests", marks, None)


# drawing helpers -----------------------------------------------------------------------------

def _figure(title: str, frame: _Frame, x_label: str, y_label: str, marks: list, legend: Html | None,
            x_ticks: bool = True) -> Html:
    left, top, right, bottom = frame.plot
    axes = [h("line", x1=left, y1=bottom, x2=right, y2=bottom, class_="axis"),
            h("line", x1=left, y1=top, x2=left, y2=bottom, class_="axis")]
    for value in _ticks(frame.y_min, frame.y_max):
        y = frame.y(value)
        axes.append(h("line", x1=left, y1=y, x2=right, y2=y, class_="grid"))
        axes.append(h("text", number(value), x=left - 6, y=y + 4, text_anchor="end", class_="tick"))
    if x_ticks:
        whole = frame.x_min == int(frame.x_min) and frame.x_max == int(frame.x_max)  # steps, runs: no 1.5
        for value in _ticks(frame.x_min, frame.x_max):
            if whole and value != int(value):
                continue
            axes.append(h("text", number(value), x=frame.x(value), y=bottom + 14, text_anchor="middle", class_="tick"))
    labels = [h("text", title, x=left, y=16, class_="title"),
              h("text", x_label, x=(left + right) / 2, y=frame.height - 6, text_anchor="middle", class_="label"),
              h("text", y_label, x=12, y=(top + bottom) / 2, text_anchor="middle", class_="label",
                transform=f"rotate(-90 12 {(top + bottom) / 2})")]
    return h("svg", axes, marks, labels, legend, xmlns="http://www.w3.org/2000/svg", class_="chart", role="img",
             width=frame.width, height=frame.height, viewBox=f"0 0 {frame.width} {frame.height}",
             aria_label=title)


def _legend(names: list[str], dashed: list[bool]) -> Html:
    items = []
    for index, (name, dash) in enumerate(zip(names, dashed)):
        x, color = MARGIN_LEFT + (index % 3) * 160, PALETTE[index % len(PALETTE)]
        y = 30 + (index // 3) * 10  # between the title and the plot; a 4th series starts a tighter 2nd row
        items.append(h("line", x1=x, y1=y, x2=x + 18, y2=y, stroke=color, stroke_width=2,
                       stroke_dasharray="6 4" if dash else None))
        items.append(h("text", name[:24], x=x + 22, y=y + 4, class_="legend"))
    return h("g", items, class_="legend")


def _empty(title: str) -> Html:
    return h("svg", h("text", title, x=10, y=16, class_="title"), h("text", "no data", x=10, y=40, class_="tick"),
             xmlns="http://www.w3.org/2000/svg", class_="chart empty", width=240, height=56, viewBox="0 0 240 56",
             role="img", aria_label=title)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten) inside [low, high]."""
    if not high > low:
        return [low]
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step) + 1)]


def _padded(low: float, high: float) -> tuple[float, float]:
    if high == low:
        return low - 1.0, high + 1.0
    pad = (high - low) * 0.05
    return low - pad, high + pad


def _finite(points) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in points if _is_finite(x) and _is_finite(y)]


def _is_finite(value) -> bool:
    """A number a chart can place: finite and within ±MAX_ABS, so spans between values stay finite too."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and abs(value) <= MAX_ABS


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Every n-th point (and the last) so a long run stays a small page."""
    if len(points) <= MAX_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_POINTS)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
