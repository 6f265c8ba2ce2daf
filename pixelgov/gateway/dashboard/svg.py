"""Charts as inline SVG, drawn on the server from the reports' exact numbers (no JavaScript, no
chart library, nothing fetched). Heights are computed with integers and Decimals, never floats;
only presentation attributes are used (the pages' Content-Security-Policy forbids inline styles)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from html import escape

from markupsafe import Markup

from ledger.reports.records import ChartPoint

from .money import usd

WIDTH, HEIGHT = 720, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 8, 12, 28


def _scale(value: Decimal, top: Decimal, span: int) -> int:
    if top <= 0 or value <= 0:
        return 0
    return int((value * span / top).to_integral_value(rounding=ROUND_HALF_UP))


def _nice_top(peak: Decimal) -> Decimal:
    """The axis maximum: the peak rounded up to 1, 2 or 5 times a power of ten."""
    if peak <= 0:
        return Decimal(1)
    exponent = peak.adjusted()
    for step in (1, 2, 5, 10):
        top = Decimal(step).scaleb(exponent)
        if top >= peak:
            return top
    return Decimal(10).scaleb(exponent)  # pragma: no cover - 10 × 10^e always reaches the peak


def spend_chart(points: Sequence[ChartPoint], *, title: str, period: str) -> Markup:
    """A bar chart of net spend per period, with a title and a description for screen readers
    (the page also shows the same numbers as a table)."""
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    peak = max((p.spend for p in points), default=Decimal(0))
    top = _nice_top(peak)
    n = max(len(points), 1)
    slot = Decimal(plot_w) / n
    bar = max(int(slot * Decimal("0.8")), 1)
    total = sum((p.spend for p in points), Decimal(0))
    out = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title chart-desc" '
        'xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="xMidYMid meet">',
        f'<title id="chart-title">{escape(title)}</title>',
        f'<desc id="chart-desc">{len(points)} {escape(period)}s, {escape(usd(total))} in total, '
        f"highest {escape(usd(peak))}</desc>",
    ]
    for i in range(5):  # gridlines and axis labels at 0, ¼, ½, ¾ and the top
        value = top * i / 4
        y = _TOP + plot_h - _scale(value, top, plot_h)
        out.append(f'<line class="grid" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y}" y2="{y}"/>')
        out.append(f'<text class="axis" x="{_LEFT - 6}" y="{y + 4}" text-anchor="end">{escape(usd(value))}</text>')
    label_every = max(1, -(-len(points) // 8))
    for i, p in enumerate(points):
        h = _scale(p.spend, top, plot_h)
        x = _LEFT + int(slot * i) + (int(slot) - bar) // 2
        y = _TOP + plot_h - h
        label = p.date.isoformat() if period != "month" else p.date.isoformat()[:7]
        out.append(
            f'<rect class="bar" x="{x}" y="{y}" width="{bar}" height="{max(h, 0)}">'
            f"<title>{escape(label)}: {escape(usd(p.spend))}, {p.usage} requests, {p.denials} denied</title></rect>"
        )
        if i % label_every == 0:
            out.append(
                f'<text class="axis" x="{x + bar // 2}" y="{HEIGHT - 8}" text-anchor="middle">{escape(label)}</text>'
            )
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every interpolated text is escaped above


def usage_bar(fraction: Decimal | None, *, label: str) -> Markup:
    """A horizontal bar for a budget's usage (settled + held of limit); past 100% it is full and marked."""
    if fraction is None:
        return Markup("")
    width = 200
    filled = min(_scale(fraction, Decimal(1), width), width)
    level = "over" if fraction >= 1 else ("high" if fraction >= Decimal("0.8") else "ok")
    return Markup(  # noqa: S704 - the label is escaped
        f'<svg class="usage usage-{level}" viewBox="0 0 {width} 12" preserveAspectRatio="none" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        f'<rect class="track" x="0" y="0" width="{width}" height="12"/>'
        f'<rect class="fill" x="0" y="0" width="{filled}" height="12"/></svg>'
    )
