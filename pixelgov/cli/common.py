"""What every command shares: output formats, the request options, error reporting."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from ledger.clock import EARLIEST, LATEST, within_calendar
from ledger.errors import NotFound, exit_code
from pricing.errors import InvalidRequest, PixelgovError
from pricing.schemas import parse_size

if TYPE_CHECKING:
    from ledger.core import Ledger
    from ledger.policy.governor import Governor
    from ledger.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
FORMAT_KEY = "pixelgov.format"
SETTINGS_KEY = "settings"
LEDGER_KEY = "ledger"
#: Library errors name fields; on the command line, the flag that sets each one.
FIELD_FLAGS = {
    "name": "--name",
    "type": "--type",
    "limit": "--limit",
    "period": "--period",
    "window": "--window",
    "models": "--models",
    "model": "--model",
    "operation": "--operation",
    "action": "--action",
    "alert_at": "--alert-at",
    "input_size": "--input-size",
    "image_url": "--image-url",
    "params": "--params",
    "idempotency_key": "--idempotency-key",
    "actual": "--actual",
    "response": "--response",
    "out": "--out",
    "upstream": "--upstream-url",
    "timeout": "--timeout",
    "older_than": "--older-than",
    "since": "--since",
    "until": "--until",
    "status": "--status",
    "database": "--db",
}


def _remember_format(ctx: click.Context, _param: click.Parameter, value: str) -> str:
    ctx.meta[FORMAT_KEY] = value
    return value


def output_options(*formats: str) -> Callable[[F], F]:
    """Add `--format` with the given choices (the first is the default)."""
    choices = formats or ("table", "json")
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices),
        default=choices[0],
        show_default=True,
        is_eager=True,
        callback=_remember_format,
        help="Output format.",
    )


def report_error(ctx: click.Context, error: PixelgovError) -> NoReturn:
    """Print an error (JSON on stdout with --format json, else one line on stderr, with a hint
    of the flag or command that fixes it) and exit with the error's exit code."""
    if ctx.meta.get(FORMAT_KEY) == "json":
        click.echo(json.dumps(error.to_json(), indent=2, default=str, ensure_ascii=False))
    else:
        hint = cli_hint(error)
        line = f"error: {error.message}" + (f" ({hint})" if hint else "")
        click.echo(" ".join(line.split()), err=True)  # one line, whatever the message holds
    ctx.exit(exit_code(error))
    raise AssertionError("unreachable")  # pragma: no cover


def cli_hint(error: PixelgovError) -> str | None:
    """What to type to fix `error`, in the CLI's own terms (library messages never name flags)."""
    details = error.details
    reason = details.get("reason")
    if error.code == "schema_behind":
        return "run `pixelgov db upgrade`"
    if error.code == "model_not_found":
        return "see `pixelgov models`"
    if error.code == "not_found" and reason == "create_first" and "agent" in details:
        return f"create it with `pixelgov agents create {details['agent']}`"
    if error.code == "upstream_error" and reason == "unknown" and details.get("transaction") is not None:
        tx_id = details["transaction"].id
        return f"settle it with `pixelgov tx complete {tx_id}` or `pixelgov tx void {tx_id}`"
    if reason == "input_size_unknown" or (
        error.code == "invalid_request" and details.get("field") == "input_size" and reason == "missing"
    ):
        return "give --input-size WxH"
    if reason == "duplicate":
        return None
    field = str(details.get("field"))
    return FIELD_FLAGS.get(field) or _REQUEST_FLAGS.get(field)


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


def emit_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: str, *, doc: Any = None) -> None:
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
_REQUEST_FLAGS = {field: flag for flag, field, _ in _REQUEST_OPTIONS}
_INT_FIELDS = {"num_images", "num_inference_steps", "seed", "scale"}
_NUMBER_FIELDS = {"guidance_scale", "strength"}


class Integer(click.ParamType):
    """An option's integer in pixelgov's grammar (`pricing.grammar`): ASCII digits only, in range.
    click's own INT reads `int()`'s wider grammar (`١٠` is 10); this refuses it with a usage error."""

    name = "integer"

    def __init__(self, minimum: int | None = None, maximum: int | None = None) -> None:
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value  # a default
        from pricing import grammar

        try:
            return grammar.parse_int(
                str(value), param.name if param and param.name else "value", minimum=self.minimum, maximum=self.maximum
            )
        except InvalidRequest as exc:
            self.fail(exc.message, param, ctx)


class Seconds(click.ParamType):
    """A duration in seconds in pixelgov's grammar: ASCII digits, an optional fraction, ≥ 0."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        from decimal import Decimal

        from pricing import grammar

        try:
            seconds = grammar.parse_decimal(
                str(value), param.name if param and param.name else "value", minimum=Decimal(0)
            )
        except InvalidRequest as exc:
            self.fail(exc.message, param, ctx)
        return float(seconds)


def request_options(fn: F) -> F:
    """Add the request options of SPEC §5 and `--params JSON|@file`."""
    for flag, field, help_text in reversed(_REQUEST_OPTIONS):
        fn = click.option(flag, field, default=None, metavar=_metavar(field), help=help_text)(fn)
    fn = click.option(
        "--params",
        "params",
        default=None,
        metavar="JSON|@FILE",
        help="A whole request body; the options above override its fields.",
    )(fn)
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
    from pricing import grammar

    if field == "image_size":
        text = raw.strip()
        # A preset is a name (it starts with a letter); anything else is read as a size, so a size in
        # other digits (`١٠٢٤x٧٦٨`, `²x768`) is refused as one rather than taken for a preset.
        return parse_size(text, field=field) if text[:1] and not text[:1].isalpha() else text
    if field == "input_size":
        return parse_size(raw, field=field)
    if field in _INT_FIELDS:
        return grammar.parse_int(raw.strip(), field)
    if field in _NUMBER_FIELDS:
        value = grammar.parse_decimal(raw.strip(), field)  # a model parameter, not money
        # FAL takes JSON numbers: an exact decimal of at most 18+18 digits, sent as the nearest float.
        return int(value) if value == value.to_integral_value() and "." not in raw else float(value)
    return raw


def _load_params(params: str) -> dict[str, Any]:
    from pricing.jsondoc import parse_json, read_json_file

    if params.startswith("@"):
        source = f"file {params[1:]}"
        body = read_json_file(params[1:], field="params")
    else:
        source = "the request body"
        body = parse_json(params, source=source, field="params")
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


def settings_of(ctx: click.Context) -> Settings:
    """The settings of this invocation, read from the environment once, when a command first needs
    them (so a malformed variable is reported in the command's own format, and `price` is not
    refused for a ledger setting it never reads)."""
    root = ctx.find_root()
    root.ensure_object(dict)
    settings = root.obj.get(SETTINGS_KEY)
    if settings is None:
        from ledger.settings import Settings

        settings = root.obj[SETTINGS_KEY] = Settings.from_env(database_url=root.obj.get("db_url"))
    return settings


def price_book_of(ctx: click.Context) -> str | None:
    """The price book path for the pricing-only commands: they read only `PIXELGOV_PRICE_BOOK`
    (a malformed ledger setting does not stop a quote)."""
    settings = (ctx.find_root().obj or {}).get(SETTINGS_KEY)
    if settings is not None:
        return settings.price_book_path
    return os.environ.get("PIXELGOV_PRICE_BOOK") or None


def ledger_of(ctx: click.Context) -> Ledger:
    """The ledger of this invocation, opened once (its schema checked; the default SQLite file is
    created and migrated on first use) and closed when the command ends."""
    root = ctx.find_root()
    root.ensure_object(dict)
    found = root.obj.get(LEDGER_KEY)
    if found is None:
        from ledger.core import Ledger

        found = root.obj[LEDGER_KEY] = Ledger(settings=settings_of(ctx))
        root.call_on_close(found.close)
    return found


def ledger_engine(ctx: click.Context) -> Any:
    """The database engine of this invocation's ledger."""
    return ledger_of(ctx).engine


def governor(ctx: click.Context) -> Governor:
    return ledger_of(ctx).governor


def parse_time(value: str | None, field: str) -> Any:
    """ISO date/time (UTC when no zone is given) or a span back from now: 30m, 24h, 7d."""
    if value is None:
        return None
    from ledger.policy.periods import parse_window

    text = value.strip()
    from pricing.grammar import INTEGER

    if text and text[-1] in "mhdw" and INTEGER.fullmatch(text[:-1]):
        try:
            return datetime.now(UTC) - timedelta(seconds=parse_window(text))
        except ValueError as exc:
            raise InvalidRequest(f"{field}: {exc}", field=field) from None
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
        ts = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).astimezone(UTC)
    except ValueError:
        raise InvalidRequest(
            f"{field}: {value!r} is not an ISO date/time (2026-11-25, 2026-11-25T10:00Z) or a span like 24h or 7d",
            field=field,
        ) from None
    except OverflowError:
        raise InvalidRequest(f"{field}: {value!r} is outside the calendar", field=field) from None
    if not within_calendar(ts):
        raise InvalidRequest(
            f"{field}: {value!r} is outside the years {EARLIEST.year} to {LATEST.year - 1}", field=field
        )
    return ts


TX_COLUMNS = ["id", "agent", "endpoint", "status", "estimated_cost", "actual_cost", "created_at"]
_MAX_ID = 2**63 - 1


def _known_tx_id(_ctx: click.Context, _param: click.Parameter, value: int | None) -> int | None:
    # An id beyond the id column's range is as unknown as any other (not a driver overflow).
    if value is not None and not 1 <= value <= _MAX_ID:
        raise NotFound(f"no transaction {value}", id=value)
    return value


def tx_id_argument(fn: F) -> F:
    """The TX_ID argument of the `tx` commands."""
    return click.argument("tx_id", type=Integer(), callback=_known_tx_id)(fn)


def emit_transaction(record: Any, fmt: str) -> None:
    """A transaction record: JSON, or its fields then its cost lines and facts as tables."""
    tx = record.to_json()
    if fmt == "table":
        emit_record({k: v for k, v in tx.items() if k not in ("request", "cost_lines", "facts", "result")}, fmt)
        for section in ("cost_lines", "facts"):
            if tx.get(section):
                click.echo(f"\n{section.replace('_', ' ')}:")
                emit_rows(tx[section], list(tx[section][0]), fmt)
    else:
        emit_record(tx, fmt)
