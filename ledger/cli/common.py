"""What every command shares: output formats, the request options, error reporting."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from pricing.errors import InvalidRequest, PixelgovError
from pricing.schemas import parse_size

from ..errors import NotFound, exit_code

F = TypeVar("F", bound=Callable[..., Any])
FORMAT_KEY = "pixelgov.format"


def _remember_format(ctx: click.Context, _param: click.Parameter, value: str) -> str:
    ctx.meta[FORMAT_KEY] = value
    return value


def output_options(*formats: str) -> Callable[[F], F]:
    """Add `--format` with the given choices (the first is the default)."""
    choices = formats or ("table", "json")
    return click.option(
        "--format", "fmt", type=click.Choice(choices), default=choices[0], show_default=True,
        is_eager=True, callback=_remember_format, help="Output format.",
    )


def report_error(ctx: click.Context, error: PixelgovError) -> NoReturn:
    """Print an error (JSON on stdout with --format json, else one line on stderr) and exit."""
    if ctx.meta.get(FORMAT_KEY) == "json":
        click.echo(json.dumps(error.to_json(), indent=2, default=str, ensure_ascii=False))
    else:
        click.echo(f"error: {error.message}", err=True)
    ctx.exit(exit_code(error))
    raise AssertionError("unreachable")  # pragma: no cover


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, default=str, ensure_ascii=False))


def emit_record(doc: Mapping[str, Any], fmt: str, *, title: str | None = None) -> None:
    """One record: JSON, or aligned `key  value` lines."""
    if fmt == "json":
        emit_json(doc)
        return
    if fmt == "csv":
        emit_rows([doc], list(doc), fmt)
        return
    if title:
        click.echo(title)
    width = max((len(k) for k in doc), default=0)
    for key, value in doc.items():
        click.echo(f"{key.ljust(width)}  {_cell(value)}")


def emit_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: str, *,
              doc: Any = None) -> None:
    """Many records: JSON (`doc`, or the list), CSV, or an aligned table."""
    if fmt == "json":
        emit_json(rows if doc is None else doc)
        return
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            # A missing value is an empty cell (not the table's "-"), so a spreadsheet reads a number column.
            writer.writerow(["" if row.get(c) is None else _cell(row.get(c)) for c in columns])
        click.echo(buf.getvalue(), nl=False)
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    if not rows:
        click.echo("(none)")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


# --- request options -------------------------------------------------------------------------

_REQUEST_OPTIONS: list[tuple[str, str, str]] = [
    ("--prompt", "prompt", "What to draw (required to run, not to price)."),
    ("--image-size", "image_size", "A preset (square_hd, landscape_4_3, …) or WxH, e.g. 1280x720."),
    ("--num-images", "num_images", "Images per request, 1–4."),
    ("--steps", "num_inference_steps", "Inference steps, 1–100."),
    ("--guidance", "guidance_scale", "Guidance scale, ≥ 0."),
    ("--seed", "seed", "Seed, an integer ≥ 0."),
    ("--output-format", "output_format", "jpeg or png."),
    ("--image-url", "image_url", "Input image (transform, upscale): URL, data: URI or local file."),
    ("--strength", "strength", "Transform strength, 0.0–1.0."),
    ("--scale", "scale", "Upscale factor, 2 or 4."),
    ("--input-size", "input_size", "Upscale input size WxH, when the image cannot be read."),
]
_INT_FIELDS = {"num_images", "num_inference_steps", "seed", "scale"}
_NUMBER_FIELDS = {"guidance_scale", "strength"}


def request_options(fn: F) -> F:
    """Add the request options of SPEC §5 and `--params JSON|@file`."""
    for flag, field, help_text in reversed(_REQUEST_OPTIONS):
        fn = click.option(flag, field, default=None, metavar=_metavar(field), help=help_text)(fn)
    fn = click.option("--params", "params", default=None, metavar="JSON|@FILE",
                      help="A whole request body; the options above override its fields.")(fn)
    return fn


def _metavar(field: str) -> str:
    return {"image_size": "PRESET|WxH", "input_size": "WxH"}.get(
        field, "N" if field in _INT_FIELDS else "X" if field in _NUMBER_FIELDS else "TEXT"
    )


def build_request(params: str | None, options: Mapping[str, str | None]) -> dict[str, Any]:
    """The request body from `--params` and the request options (options win)."""
    body = _load_params(params) if params is not None else {}
    for _flag, field, _help in _REQUEST_OPTIONS:
        raw = options.get(field)
        if raw is not None:
            body[field] = _convert(field, raw)
    return body


def pop_request_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the request options (and --params) out of a command's kwargs; return the body."""
    options = {field: kwargs.pop(field, None) for _f, field, _h in _REQUEST_OPTIONS}
    return build_request(kwargs.pop("params", None), options)


def _convert(field: str, raw: str) -> Any:
    flag = "--" + next(f for f, name, _ in _REQUEST_OPTIONS if name == field).lstrip("-")
    if field == "image_size":
        text = raw.strip()
        return parse_size(text, field=field) if "x" in text.lower() and text[:1].isdigit() else text
    if field == "input_size":
        return parse_size(raw, field=field)
    if field in _INT_FIELDS:
        try:
            return int(raw)
        except ValueError:
            raise InvalidRequest(f"{field}: {flag} expects an integer (got {raw!r})", field=field) from None
    if field in _NUMBER_FIELDS:
        try:
            value = float(raw)  # a model parameter, not money
        except ValueError:
            raise InvalidRequest(f"{field}: {flag} expects a number (got {raw!r})", field=field) from None
        return int(value) if value.is_integer() and "." not in raw else value
    return raw


def _load_params(params: str) -> dict[str, Any]:
    source = "--params"
    text = params
    if params.startswith("@"):
        path = Path(params[1:])
        source = f"--params file {path}"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidRequest(f"params: cannot read {path} ({exc.strerror})", field="params") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"params: {source} is not valid JSON ({exc.msg} at line {exc.lineno} "
                             f"column {exc.colno})", field="params") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"params: {source} must be a JSON object", field="params")
    return body


def fail(message: str, *, field: str | None = None) -> NoReturn:
    raise InvalidRequest(message, field=field)


def stderr_lines(lines: Iterable[str]) -> None:
    for line in lines:
        click.echo(line, err=True)


def is_tty() -> bool:
    return sys.stdout.isatty()


# --- the ledger ------------------------------------------------------------------------------

def ledger_engine(ctx: click.Context) -> Any:
    """The database engine for this invocation, its schema checked (default SQLite: migrated)."""
    from ..db import open_ledger

    root = ctx.find_root()
    return open_ledger((root.obj or {}).get("db_url"))


def governor(ctx: click.Context) -> Any:
    from ..governor import Governor

    return Governor(ledger_engine(ctx))


def parse_time(value: str | None, field: str) -> Any:
    """ISO date/time (UTC when no zone is given) or a span back from now: 30m, 24h, 7d."""
    if value is None:
        return None
    from datetime import UTC, datetime, timedelta

    from ..periods import parse_window

    text = value.strip()
    if text and text[-1] in "mhdw" and text[:-1].isdigit():
        try:
            return datetime.now(UTC) - timedelta(seconds=parse_window(text))
        except ValueError as exc:
            raise InvalidRequest(f"{field}: {exc}", field=field) from None
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{field}: {value!r} is not an ISO date/time (2026-11-25, 2026-11-25T10:00Z) "
                             "or a span like 24h or 7d", field=field) from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


TX_COLUMNS = ["id", "agent", "endpoint", "status", "estimated_cost", "actual_cost", "created_at"]
_MAX_ID = 2**63 - 1


def _known_tx_id(_ctx: click.Context, _param: click.Parameter, value: int | None) -> int | None:
    # An id beyond the id column's range is as unknown as any other (not a driver overflow).
    if value is not None and not 1 <= value <= _MAX_ID:
        raise NotFound(f"no transaction {value}", id=value)
    return value


def tx_id_argument(fn: F) -> F:
    """The TX_ID argument of the `tx` commands."""
    return click.argument("tx_id", type=int, callback=_known_tx_id)(fn)


def emit_transaction(tx: Mapping[str, Any], fmt: str) -> None:
    if fmt == "table":
        emit_record({k: v for k, v in tx.items() if k not in ("request", "cost_lines", "facts", "result")}, fmt)
        for section in ("cost_lines", "facts"):
            if tx.get(section):
                click.echo(f"\n{section.replace('_', ' ')}:")
                emit_rows(tx[section], list(tx[section][0]), fmt)
    else:
        emit_record(tx, fmt)
