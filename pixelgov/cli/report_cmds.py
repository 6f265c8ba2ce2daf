"""`pixelgov report …`: finance reports, a skin over `ledger.reports.Reports`.

Every report takes `--format table|json|csv`; windows are UTC, `--since` inclusive and
`--until` exclusive (an ISO date or time, or a span back from now such as 7d). Bad input
(dates, `--by` keys, an unknown agent or model, an unwritable file) exits 2 with one line,
before anything is read or written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from .common import Integer, emit_json, emit_record, emit_rows, ledger_of, output_options, parse_time

F = TypeVar("F", bound=Callable[..., Any])
FORMATS = ("table", "json", "csv")
_BLOCKS = " ▏▎▍▌▋▊▉█"
BAR_WIDTH = 40


def _reports(ctx: click.Context) -> Any:
    return ledger_of(ctx).reports


def window_options(fn: F) -> F:
    """`--since` / `--until`."""
    fn = click.option(
        "--until",
        default=None,
        metavar="TIME",
        help="End of the window, exclusive (UTC): 2026-12-01, 2026-11-25T10:00Z or a span: 24h.",
    )(fn)
    return click.option(
        "--since",
        default=None,
        metavar="TIME",
        help="Start of the window, inclusive (UTC): 2026-11-01, 2026-11-25T10:00Z or a span: 7d.",
    )(fn)


def _window(since: str | None, until: str | None) -> dict[str, Any]:
    return {"since": parse_time(since, "since"), "until": parse_time(until, "until")}


@click.group()
def report() -> None:
    """Finance reports: summary, spend, leaderboard, chart, statement, FOCUS export.

    \b
    pixelgov report summary --period month
    pixelgov report spend --by agent,model,day --since 2026-11-01 --format csv
    pixelgov report export --focus november.csv --since 2026-11-01 --until 2026-12-01
    """


# --- summary -----------------------------------------------------------------------------------


@report.command("summary")
@window_options
@click.option(
    "--period",
    default=None,
    metavar="day|week|month|YYYY-MM",
    help="The current day, week or month (UTC), or a given month; instead of --since/--until.",
)
@click.option("--agent", default=None, help="Only this agent.")
@click.option("--model", default=None, help="Only this model (an endpoint or alias names its model).")
@output_options(*FORMATS)
@click.pass_context
def summary(
    ctx: click.Context,
    since: str | None,
    until: str | None,
    period: str | None,
    agent: str | None,
    model: str | None,
    fmt: str,
) -> None:
    """Spend (settled, held, unknown), counts by status, images and megapixels, denials by rule,
    estimated vs actual, and the change against the previous period of the same length.

    \b
    pixelgov report summary --period month
    pixelgov report summary --since 2026-11-01 --until 2026-11-08 --format json
    """
    result = _reports(ctx).summary(**_window(since, until), period=period, agent=agent, model=model)
    doc = result.to_json()
    if fmt == "json":
        emit_json(doc)
        return
    change = doc["change"] or {}
    previous = doc["previous"] or {}
    rows = []
    for metric in (
        "total_transactions",
        "total_spend",
        "total_denials",
        "total_agents",
        "requests",
        "settled_spend",
        "held_spend",
        "unknown_spend",
        "estimated",
        "actual",
        "variance",
        "adjustments",
        "images",
        "billable_megapixels",
    ):
        delta = change.get(metric) or {}
        rows.append(
            {
                "metric": metric,
                "value": doc[metric],
                "previous": previous.get(metric),
                "delta": delta.get("delta"),
                "percent": delta.get("percent"),
            }
        )
    for status, count in doc["transactions_by_status"].items():
        rows.append({"metric": f"status:{status}", "value": count})
    for entry in doc["denials_by_rule"]:
        rows.append({"metric": f"denials:{entry['rule'] or entry['type']}", "value": entry["denials"]})
    if fmt == "table":
        click.echo(f"summary {_span(doc)}" + (f"   previous {_span(previous)}" if previous else ""))
    emit_rows(rows, ["metric", "value", "previous", "delta", "percent"], fmt)


def _span(doc: dict[str, Any]) -> str:
    return f"{doc.get('since') or 'start'} → {doc.get('until') or 'now'}"


# --- spend -------------------------------------------------------------------------------------


@report.command("spend")
@click.option(
    "--by",
    "by",
    default="agent",
    show_default=True,
    metavar="KEYS",
    help="Comma-separated: any of agent, model, operation, and one of day, week, month.",
)
@window_options
@click.option("--agent", default=None, help="Only this agent.")
@click.option("--model", default=None, help="Only this model.")
@click.option("--operation", default=None, help="Only generate, transform or upscale.")
@click.option("--status", default=None, help="Only transactions in this status.")
@output_options(*FORMATS)
@click.pass_context
def spend(
    ctx: click.Context,
    by: str,
    since: str | None,
    until: str | None,
    agent: str | None,
    model: str | None,
    operation: str | None,
    status: str | None,
    fmt: str,
) -> None:
    """Transactions, images, billable MP, estimated, actual, adjustments, net and variance per group.

    \b
    pixelgov report spend --by agent,model
    pixelgov report spend --by model,week --since 2026-10-01 --format csv
    """
    result = _reports(ctx).spend(
        by, **_window(since, until), agent=agent, model=model, operation=operation, status=status
    )
    if fmt == "json":
        emit_json(result.to_json())
        return
    rows = [row.to_json() for row in result.rows]
    if fmt == "table" and rows:
        rows.append({result.by[0]: "TOTAL", **result.total.to_json()})
    emit_rows(rows, result.columns, fmt)


# --- leaderboard -------------------------------------------------------------------------------


@report.command("leaderboard")
@click.option("--by", "by", type=click.Choice(["agent", "model", "rule"]), default="agent", show_default=True)
@click.option("--top", default=10, show_default=True, type=Integer(), help="How many entries (1–1000).")
@window_options
@output_options(*FORMATS)
@click.pass_context
def leaderboard(ctx: click.Context, by: str, top: int, since: str | None, until: str | None, fmt: str) -> None:
    """The top agents or models by spend, or rules by denials (with spend and transactions in scope).

    \b
    pixelgov report leaderboard --by agent --top 5 --since 30d
    pixelgov report leaderboard --by rule
    """
    result = _reports(ctx).leaderboard(by, top=top, **_window(since, until))
    if fmt == "json":
        emit_json(result.to_json())
        return
    emit_rows(result.rows(), result.columns, fmt)


# --- chart -------------------------------------------------------------------------------------


@report.command("chart")
@click.option("--by", "by", type=click.Choice(["day", "week", "month"]), default="day", show_default=True)
@window_options
@click.option("--agent", default=None, help="Only this agent.")
@click.option("--model", default=None, help="Only this model.")
@click.option("--png", "png", default=None, metavar="FILE", help="Also write the chart as a PNG image.")
@click.option("--svg", "svg", default=None, metavar="FILE", help="Also write the chart as an SVG image.")
@click.option("--width", default=1000, show_default=True, type=Integer(), help="Image width in pixels.")
@click.option("--height", default=500, show_default=True, type=Integer(), help="Image height in pixels.")
@output_options(*FORMATS)
@click.pass_context
def chart(
    ctx: click.Context,
    by: str,
    since: str | None,
    until: str | None,
    agent: str | None,
    model: str | None,
    png: str | None,
    svg: str | None,
    width: int,
    height: int,
    fmt: str,
) -> None:
    """Spend and denials per day, week or month: bars in the terminal, or a PNG/SVG image.

    \b
    pixelgov report chart --by week --since 2026-09-01
    pixelgov report chart --by day --since 30d --png spend.png --width 1200 --height 600
    """
    images = [(kind, path) for kind, path in (("png", png), ("svg", svg)) if path is not None]
    if images:
        from ledger.reports.charts import check_size
        from ledger.reports.output import check_writable

        check_size(width, height)
        for _kind, path in images:
            check_writable(path, "path")
    window = _window(since, until)
    result = _reports(ctx).chart(by, **window, agent=agent, model=model)
    written = []
    if images:
        from ledger.reports.charts import write

        written = [write(result, path, fmt=kind, width=width, height=height) for kind, path in images]
    if fmt == "json":
        emit_json({**result.to_json(), "images": [w.to_json() for w in written]})
        return
    if fmt == "csv":
        emit_rows([p.to_json() for p in result.points], ["date", "usage", "spend", "denials"], fmt)
        return
    _terminal_bars(result)
    for image in written:
        click.echo(
            f"wrote {image.path} ({image.format}, {image.width}x{image.height} px, {image.bars} bars per series)"
        )


def _terminal_bars(result: Any) -> None:
    points = result.points
    if not points:
        click.echo("(no transactions in the window)")
        return
    top = max(p.spend for p in points)
    click.echo(f"spend per {result.by} (USD), requests and denials   {_span(result.window.to_json())}")
    label_width = 7 if result.by == "month" else 10
    for p in points:
        cells = 0 if not top else p.spend / top * BAR_WIDTH * 8  # eighths of a character cell
        whole, part = divmod(int(cells), 8)
        bar = "█" * whole + (_BLOCKS[part] if part else "")
        label = p.date.isoformat()[:label_width]
        click.echo(
            f"{label}  {bar.ljust(BAR_WIDTH)} {p.to_json()['spend']:>14}  {p.usage:>8} req  {p.denials:>6} denied"
        )


# --- statement ---------------------------------------------------------------------------------

STATEMENT_COLUMNS = ["agent", "line", "model", "operation", "transaction_id", "note"]


@report.command("statement")
@click.option("--month", required=True, metavar="YYYY-MM", help="The month (UTC).")
@click.option("--agent", default=None, help="Only this agent's statement.")
@output_options(*FORMATS)
@click.pass_context
def statement(ctx: click.Context, month: str, agent: str | None, fmt: str) -> None:
    """A month-end statement per agent: per-model lines, adjustments with their notes, totals.

    \b
    pixelgov report statement --month 2026-11
    pixelgov report statement --month 2026-11 --agent marketing-bot --format csv
    """
    result = _reports(ctx).statement(month, agent=agent)
    if fmt == "json":
        emit_json(result.to_json())
        return
    columns = [*STATEMENT_COLUMNS, *_totals_columns()]
    if fmt == "csv":
        emit_rows(_statement_rows(result), columns, fmt)
        return
    click.echo(f"statement {result.month}  {_span(result.window.to_json())}")
    for agent_statement in result.agents:
        click.echo(f"\nagent {agent_statement.agent}")
        lines = [line.to_json() for line in agent_statement.lines]
        lines.append({"model": "TOTAL", **agent_statement.total.to_json()})
        emit_rows(lines, ["model", "operation", *_totals_columns()], fmt)
        if agent_statement.adjustments:
            click.echo("adjustments:")
            emit_rows(
                [a.to_json() for a in agent_statement.adjustments],
                ["transaction_id", "created_at", "model", "amount", "note"],
                fmt,
            )
    if not result.agents:
        click.echo("(no transactions that month)")
    click.echo("\ntotal")
    emit_rows([result.total.to_json()], _totals_columns(), fmt)


def _totals_columns() -> list[str]:
    from ledger.reports.records import TOTALS_COLUMNS

    return list(TOTALS_COLUMNS)


def _statement_rows(result: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for agent_statement in result.agents:
        name = agent_statement.agent
        rows += [{"agent": name, "line": "model", **line.to_json()} for line in agent_statement.lines]
        rows += [
            {
                "agent": name,
                "line": "adjustment",
                "model": a.model,
                "transaction_id": a.transaction_id,
                "note": a.note,
                "adjustments": a.to_json()["amount"],
            }
            for a in agent_statement.adjustments
        ]
        rows.append({"agent": name, "line": "total", **agent_statement.total.to_json()})
    rows.append({"agent": None, "line": "total", **result.total.to_json()})
    return rows


# --- export ------------------------------------------------------------------------------------


@report.command("export")
@click.argument("file", metavar="FILE.csv")
@click.option("--focus", "focus", is_flag=True, help="FOCUS 1.0 (FinOps cost and usage) CSV: the format to write.")
@window_options
@output_options(*FORMATS)
@click.pass_context
def export(ctx: click.Context, file: str, focus: bool, since: str | None, until: str | None, fmt: str) -> None:
    """Write the ledger as a FOCUS 1.0 cost-and-usage CSV: one row per charge (usage and adjustments).

    \b
    pixelgov report export --focus november.csv --since 2026-11-01 --until 2026-12-01
    """
    if not focus:
        raise click.UsageError("give --focus: FOCUS 1.0 is the export format")
    result = _reports(ctx).export_focus(file, **_window(since, until))
    emit_record(result.to_json(), fmt)
