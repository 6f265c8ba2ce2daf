"""Chart images of `report chart`: spend and denials per period as bar charts, PNG or SVG.

matplotlib is imported here only, when an image is asked for (the `charts` extra:
`pip install 'pixelgov[charts]'`), through its object API and the Agg/SVG canvases, so no
global pyplot state or display is involved. A PNG is exactly `width` × `height` pixels; an SVG
states its size in points as matplotlib writes it (0.75 pt per CSS pixel, so the same
`width` × `height` in pixels). Each bar carries an id (`spend-0`, `denials-0`, …) in the SVG.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from pricing.money import usd_str

from ..clock import iso
from ..errors import InvalidRequest
from .records import Chart

FORMATS = ("png", "svg")
SPEND_COLOR = "#1f6feb"
DENIAL_COLOR = "#d1242f"
MIN_SIDE, MAX_SIDE = 200, 8000
_DPI = 100
_SVG_PX_PER_INCH = 96  # CSS pixels per inch: an SVG of w/96 inches is w px wide (matplotlib writes pt)
_MAX_LABELS = 12


@dataclass(frozen=True, slots=True)
class ChartImage:
    """An image written: where, its format and size in pixels, and the bars drawn per series."""

    path: str
    format: str
    width: int
    height: int
    bars: int  #: per series (spend, denials): one per period

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "width": self.width, "height": self.height, "bars": self.bars}


def check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if not MIN_SIDE <= value <= MAX_SIDE:
            raise InvalidRequest(f"{name}: between {MIN_SIDE} and {MAX_SIDE} pixels (got {value})", field=name)


def render(chart: Chart, out: Any, *, fmt: str, width: int = 1000, height: int = 500) -> int:
    """Draw `chart` to a binary stream in `fmt` (png or svg); the number of bars per series."""
    if fmt not in FORMATS:
        raise InvalidRequest(f"format: {fmt!r} is not one of {', '.join(FORMATS)}", field="format")
    check_size(width, height)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.backends.backend_svg import FigureCanvasSVG
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the installation
        raise InvalidRequest("chart images need matplotlib: pip install 'pixelgov[charts]'", field="format") from None

    per_inch = _DPI if fmt == "png" else _SVG_PX_PER_INCH
    fig = Figure(figsize=(width / per_inch, height / per_inch), dpi=_DPI)
    (FigureCanvasAgg if fmt == "png" else FigureCanvasSVG)(fig)
    spend_ax, denial_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    xs = list(range(len(chart.points)))
    spend = [float(p.spend) for p in chart.points]  # plotting coordinates only: the amounts stay Decimal elsewhere
    denials = [p.denials for p in chart.points]
    for ax, values, color, name in (
        (spend_ax, spend, SPEND_COLOR, "spend"),
        (denial_ax, denials, DENIAL_COLOR, "denials"),
    ):
        bars = ax.bar(xs, values, width=0.8, color=color, linewidth=0)
        for i, bar in enumerate(bars):
            bar.set_gid(f"{name}-{i}")
        ax.spines[["top", "right"]].set_visible(False)
        ax.margins(x=0.01)
    spend_ax.set_ylabel("spend (USD)")
    denial_ax.set_ylabel("denials")
    total = sum((p.spend for p in chart.points), start=Decimal(0))
    span = f"{iso(chart.window.since) or 'start'} – {iso(chart.window.until) or 'now'}"
    spend_ax.set_title(
        f"pixelgov: spend and denials per {chart.by} ({usd_str(total) if total else '0'} USD, {span})", fontsize=10
    )
    step = max(1, -(-len(xs) // _MAX_LABELS))
    denial_ax.set_xticks(
        xs[::step],
        [p.date.isoformat()[: 7 if chart.by == "month" else 10] for p in chart.points][::step],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    fig.subplots_adjust(left=0.08, right=0.98, top=0.92, bottom=0.18, hspace=0.12)
    fig.savefig(out, format=fmt, dpi=_DPI)
    return len(xs)


def write(chart: Chart, path: str | Path, *, fmt: str, width: int = 1000, height: int = 500) -> ChartImage:
    """Render `chart` to `path`, whole or not at all (a temporary file renamed into place)."""
    from .output import atomic_output

    target = Path(path)
    with atomic_output(target, "path", binary=True) as out:
        bars = render(chart, out, fmt=fmt, width=width, height=height)
    return ChartImage(str(target), fmt, width, height, bars)
