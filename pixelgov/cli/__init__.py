"""The `pixelgov` command line.

Commands live in modules per group and are imported only when invoked, so
`pixelgov price` never imports SQLAlchemy or httpx.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from pricing.errors import InvalidRequest, PixelgovError

from .common import FORMAT_KEY, SETTINGS_KEY, report_error

_COMMANDS = {
    "models": "pixelgov.cli.pricing_cmds:models",
    "price": "pixelgov.cli.pricing_cmds:price",
    "check": "pixelgov.cli.ledger_cmds:check",
    "authorize": "pixelgov.cli.ledger_cmds:authorize",
    "run": "pixelgov.cli.run_cmd:run",
    "tx": "pixelgov.cli.ledger_cmds:tx",
    "agents": "pixelgov.cli.admin_cmds:agents",
    "rules": "pixelgov.cli.admin_cmds:rules",
    "alerts": "pixelgov.cli.admin_cmds:alerts",
    "db": "pixelgov.cli.admin_cmds:db",
    "audit": "pixelgov.cli.admin_cmds:audit",
    "report": "pixelgov.cli.report_cmds:report",
    "serve": "pixelgov.cli.serve_cmd:serve",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use, and the one place errors become exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in _COMMANDS:
            module, attr = _COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_ARGV_KEY] = list(args)  # checked in `invoke`, where errors are reported as ours
        if _wants_json(args):
            # Errors found before the command reads its own --format (bad arguments, unknown options)
            # still come out as the JSON error.
            ctx.meta[FORMAT_KEY] = "json"
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:  # the group's own options: one line too
            report_error(ctx, InvalidRequest(f"{error.format_message()} (see `pixelgov --help`)", reason="usage"))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            _check_text(ctx.meta.get(_ARGV_KEY, []))
            return super().invoke(ctx)
        except PixelgovError as error:
            report_error(ctx, error)
        except click.exceptions.NoArgsIsHelpError as error:
            # `pixelgov tx` alone asks what `tx` can do: its help, as `--help` prints it.
            click.echo(error.ctx.get_help() if error.ctx else ctx.get_help())
            ctx.exit(0)
        except click.UsageError as error:
            # click's own parsing mistakes are bad input like any other: one line, or the JSON error.
            where = f" (see `{error.ctx.command_path} --help`)" if error.ctx else ""
            report_error(ctx, InvalidRequest(f"{error.format_message()}{where}", reason="usage"))
        except Exception as error:
            translated = _translate(ctx, error)
            if translated is None:
                raise
            report_error(ctx, translated)


_ARGV_KEY = "pixelgov.argv"


def _wants_json(args: list[str]) -> bool:
    return any(a == "--format=json" or (a == "--format" and nxt == "json") for a, nxt in zip(args, [*args[1:], ""]))


def _check_text(args: list[str]) -> None:
    """Refuse arguments that are not valid UTF-8 (the OS hands them over as surrogate escapes):
    they could be neither stored nor printed."""
    for position, arg in enumerate(args, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(f"argument {position} is not valid UTF-8 text: {arg!r}", reason="encoding") from None


def _translate(ctx: click.Context, error: Exception) -> PixelgovError | None:
    if "sqlalchemy" in sys.modules:
        from ledger.store.db import translate_db_error

        settings = (ctx.obj or {}).get(SETTINGS_KEY)
        return translate_db_error(error, timeout=settings.db_timeout if settings else None)
    return None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    "db_url",
    envvar="PIXELGOV_DATABASE_URL",
    metavar="URL",
    help="Database URL (env PIXELGOV_DATABASE_URL; default: a SQLite file in the user data dir).",
)
@click.version_option("0.1.0", prog_name="pixelgov")
@click.pass_context
def cli(ctx: click.Context, db_url: str | None) -> None:
    """pixelgov: price, govern and account for AI image generation on FAL.

    \b
    pixelgov price fal-ai/flux/dev --image-size square_hd --num-images 2
    pixelgov run fal-ai/flux/dev --agent bot --prompt "a red fox" --dry-run
    """
    ctx.ensure_object(dict)
    ctx.obj["db_url"] = db_url  # the environment is read once, by the first command that needs it


def main() -> None:
    cli(prog_name="pixelgov")
