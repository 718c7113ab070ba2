"""The overview's chart: events received and deliveries delivered per minute over the last 24
hours, drawn on the server as SVG.

No script and no inline style: the lines' colours come from admin.css by class, so the page keeps
its Content-Security-Policy, and it reads without JavaScript. The SVG scales to the page's width
(viewBox); its title and description say what a screen reader needs, and the page writes the
totals as text beside it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720.0, 200.0
LEFT, RIGHT, TOP, BOTTOM = 40.0, 8.0, 10.0, 22.0  # room for the axes' labels
TICK_HOURS = 3  # a time on the x axis every 3 hours


def draw(received: Sequence[int], delivered: Sequence[int], since: float) -> Markup:
    """The chart of two per-minute series that start at `since` (a timestamp)."""
    top = nice_top(max([*received, *delivered, 1]))
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH:g} {HEIGHT:g}" role="img" '
        'aria-labelledby="chart-title chart-desc" xmlns="http://www.w3.org/2000/svg">',
        '<title id="chart-title">Received and delivered per minute, last 24 hours</title>',
        f'<desc id="chart-desc">{sum(received)} events received and {sum(delivered)} deliveries '
        f"delivered; the busiest minute saw {max([*received, *delivered, 0])}.</desc>",
        *_axes(top, since, len(received)),
        _line("received", received, top),
        _line("delivered", delivered, top),
        "</svg>",
    ]
    return Markup("\n".join(parts))


def nice_top(peak: int) -> int:
    """The y axis' top: the first of 1, 2, 5, 10, 20, 50... that is at least `peak`."""
    power = 10 ** int(math.log10(peak)) if peak > 0 else 1
    return next(step * power for step in (1, 2, 5, 10) if step * power >= peak)


def _x(minute: float, minutes: int) -> float:
    return LEFT + (WIDTH - LEFT - RIGHT) * minute / max(minutes - 1, 1)


def _y(value: float, top: int) -> float:
    return TOP + (HEIGHT - TOP - BOTTOM) * (1 - value / top)


def _line(name: str, values: Sequence[int], top: int) -> str:
    """A polyline without the points inside a flat run, which change nothing it draws."""
    kept = [
        i
        for i, v in enumerate(values)
        if i in (0, len(values) - 1) or not values[i - 1] == v == values[i + 1]
    ]
    points = " ".join(f"{_x(i, len(values)):.1f},{_y(values[i], top):.1f}" for i in kept)
    return f'<polyline class="line {name}" points="{points}"/>'


def _axes(top: int, since: float, minutes: int) -> list[str]:
    """The y axis (0 and the top), the baseline, and a time every TICK_HOURS hours."""
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    parts = [
        f'<line class="axis" x1="{LEFT:g}" y1="{bottom:g}" x2="{right:g}" y2="{bottom:g}"/>',
        f'<line class="grid" x1="{LEFT:g}" y1="{TOP:g}" x2="{right:g}" y2="{TOP:g}"/>',
        f'<text class="label" x="{LEFT - 4:g}" y="{TOP + 4:g}" text-anchor="end">{top}</text>',
        f'<text class="label" x="{LEFT - 4:g}" y="{bottom:g}" text-anchor="end">0</text>',
    ]
    start = dt.datetime.fromtimestamp(since)
    first = start.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    while first.hour % TICK_HOURS:
        first += dt.timedelta(hours=1)
    tick = first
    while (minute := (tick - start).total_seconds() / 60) < minutes:
        x = _x(minute, minutes)
        parts += [
            f'<line class="grid" x1="{x:.1f}" y1="{TOP:g}" x2="{x:.1f}" y2="{bottom:g}"/>',
            f'<text class="label" x="{x:.1f}" y="{HEIGHT - 6:g}" text-anchor="middle">'
            f"{escape(tick.strftime('%H:%M'))}</text>",
        ]
        tick += dt.timedelta(hours=TICK_HOURS)
    return parts
