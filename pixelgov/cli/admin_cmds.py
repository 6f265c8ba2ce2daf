"""`pixelgov agents`, `rules`, `alerts`, `audit` and `db`: administration."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from .common import Integer, emit_json, emit_record, emit_rows, ledger_of, output_options, settings_of

F = TypeVar("F", bound=Callable[..., Any])
AGENT_COLUMNS = ["id", "name", "status", "has_api_key", "description", "created_at"]
RULE_COLUMNS = [
    "id",
    "name",
    "type",
    "limit",
    "period",
    "window",
    "models",
    "agent",
    "model",
    "operation",
    "action",
    "alert_at",
    "enabled",
]


def _admin(ctx: click.Context) -> Any:
    return ledger_of(ctx).admin


def _json_rows(records: Any) -> list[dict[str, Any]]:
    return [r.to_json() for r in records]


# --- agents ------------------------------------------------------------------------------------


@click.group()
def agents() -> None:
    """Agents: create, list, show, update, rotate-key.

    \b
    pixelgov agents create marketing-bot
    pixelgov agents update marketing-bot --status paused
    """


@agents.command("create")
@click.argument("name")
@click.option("--description", default=None)
@click.option("--no-key", is_flag=True, help="Create the agent without a gateway API key.")
@output_options("table", "json")
@click.pass_context
def agents_create(ctx: click.Context, name: str, description: str | None, no_key: bool, fmt: str) -> None:
    """Create an agent. Its API key is printed this once and stored only as a hash.

    \b
    pixelgov agents create marketing-bot --description "social images"
    """
    doc = _admin(ctx).create_agent(name, description, with_key=not no_key).to_json()
    emit_record(doc, fmt)
    if fmt == "table" and "api_key" in doc:
        click.echo("\nstore the api_key now: it is not shown again", err=True)


@agents.command("list")
@output_options("table", "json", "csv")
@click.pass_context
def agents_list(ctx: click.Context, fmt: str) -> None:
    """Every agent.

    \b
    pixelgov agents list --format csv
    """
    emit_rows(_json_rows(_admin(ctx).agents()), AGENT_COLUMNS, fmt)


@agents.command("show")
@click.argument("name")
@output_options("table", "json")
@click.pass_context
def agents_show(ctx: click.Context, name: str, fmt: str) -> None:
    """One agent.

    \b
    pixelgov agents show marketing-bot
    """
    emit_record(_admin(ctx).agent(name).to_json(), fmt)


@agents.command("update")
@click.argument("name")
@click.option("--status", type=click.Choice(["active", "paused"]), default=None)
@click.option("--description", default=None)
@output_options("table", "json")
@click.pass_context
def agents_update(ctx: click.Context, name: str, status: str | None, description: str | None, fmt: str) -> None:
    """Pause or resume an agent, or change its description. A paused agent is denied.

    \b
    pixelgov agents update marketing-bot --status paused
    """
    if status is None and description is None:
        from ledger.errors import InvalidRequest

        raise InvalidRequest("nothing to update: give --status or --description")
    emit_record(_admin(ctx).update_agent(name, status=status, description=description).to_json(), fmt)


@agents.command("rotate-key")
@click.argument("name")
@output_options("table", "json")
@click.pass_context
def agents_rotate_key(ctx: click.Context, name: str, fmt: str) -> None:
    """Replace an agent's API key (the old one stops working). The new key is shown once.

    \b
    pixelgov agents rotate-key marketing-bot
    """
    emit_record(_admin(ctx).rotate_key(name).to_json(), fmt)


# --- rules -------------------------------------------------------------------------------------


def rule_options(fn: F) -> F:
    options = [
        click.option("--name", default=None, help="Unique rule name."),
        click.option(
            "--type",
            "type_",
            default=None,
            metavar="TYPE",
            help="spend-limit, request-cap, rate-limit or model-allowlist.",
        ),
        click.option(
            "--limit", default=None, metavar="X", help="USD (spend-limit, request-cap) or a count (rate-limit)."
        ),
        click.option(
            "--period", default=None, help="spend-limit: hour/day/week/month/total; rate-limit: minute/hour/day."
        ),
        click.option("--window", default=None, help="A rolling window instead of a period: 30m, 24h, 7d."),
        click.option("--models", default=None, metavar="G1,G2", help="model-allowlist globs, e.g. 'fal-ai/flux/*'."),
        click.option("--agent", default=None, help="Only this agent (default: every agent, counted together)."),
        click.option("--model", default=None, metavar="GLOB", help="Only endpoints matching this glob."),
        click.option("--operation", default=None, help="Only generate, transform or upscale."),
        click.option("--action", default=None, help="deny (default) or alert."),
        click.option("--alert-at", default=None, metavar="PCT", help="spend-limit: alert once per period at PCT%."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _spec(ctx: click.Context, enabled: bool | None, **values: Any) -> Any:
    from ledger.policy.rules import RuleSpec

    values["type"] = values.pop("type_")
    if values.get("models") is not None:
        values["models"] = [m for m in values["models"].split(",")]
    given = {k for k, v in values.items() if v is not None}
    if enabled is not None:
        given.add("enabled")
    return RuleSpec(**values, enabled=enabled, given=given)


@click.group()
def rules() -> None:
    """Spending rules: create, list, show, update, delete.

    \b
    pixelgov rules create --name bot-daily --type spend-limit --limit 5 --period day
    pixelgov rules list
    """


@rules.command("create")
@rule_options
@click.option("--disable", is_flag=True, help="Create the rule disabled.")
@output_options("table", "json")
@click.pass_context
def rules_create(ctx: click.Context, /, disable: bool, fmt: str, **values: Any) -> None:
    """Create a spending rule.

    \b
    pixelgov rules create --name bot-daily --type spend-limit --limit 5 --period day --agent bot
    pixelgov rules create --name burst --type rate-limit --limit 60 --window 1h
    pixelgov rules create --name flux-only --type model-allowlist --models 'fal-ai/flux/*'
    pixelgov rules create --name big-request --type request-cap --limit 0.10 --action alert
    """
    emit_record(_admin(ctx).create_rule(_spec(ctx, False if disable else None, **values)).to_json(), fmt)


@rules.command("update")
@click.argument("name_or_id")
@rule_options
@click.option("--enable/--disable", "enabled", default=None)
@output_options("table", "json")
@click.pass_context
def rules_update(ctx: click.Context, /, name_or_id: str, enabled: bool | None, fmt: str, **values: Any) -> None:
    """Change a rule. Changing its period, window or scope recounts it from the ledger.

    \b
    pixelgov rules update bot-daily --limit 10
    pixelgov rules update bot-daily --disable
    """
    emit_record(_admin(ctx).update_rule(name_or_id, _spec(ctx, enabled, **values)).to_json(), fmt)


@rules.command("list")
@output_options("table", "json", "csv")
@click.pass_context
def rules_list(ctx: click.Context, fmt: str) -> None:
    """Every spending rule.

    \b
    pixelgov rules list
    """
    emit_rows(_json_rows(_admin(ctx).rules()), RULE_COLUMNS, fmt)


@rules.command("show")
@click.argument("name_or_id")
@output_options("table", "json")
@click.pass_context
def rules_show(ctx: click.Context, name_or_id: str, fmt: str) -> None:
    """One rule.

    \b
    pixelgov rules show bot-daily
    """
    emit_record(_admin(ctx).rule(name_or_id).to_json(), fmt)


@rules.command("delete")
@click.argument("name_or_id")
@output_options("table", "json")
@click.pass_context
def rules_delete(ctx: click.Context, name_or_id: str, fmt: str) -> None:
    """Delete a rule (the audit log keeps it).

    \b
    pixelgov rules delete bot-daily
    """
    doc = _admin(ctx).delete_rule(name_or_id).to_json()
    if fmt == "json":
        emit_json({"deleted": doc})
    else:
        click.echo(f"deleted rule {doc['name']} (id {doc['id']})")


# --- alerts, audit -----------------------------------------------------------------------------


@click.group()
def alerts() -> None:
    """Alerts raised by alert rules and alert_at thresholds.

    \b
    pixelgov alerts list
    """


@alerts.command("list")
@click.option("--limit", default=100, show_default=True, type=Integer(1, 100000))
@output_options("table", "json", "csv")
@click.pass_context
def alerts_list(ctx: click.Context, limit: int, fmt: str) -> None:
    """Alerts, newest first.

    \b
    pixelgov alerts list --format json
    """
    emit_rows(
        _json_rows(_admin(ctx).alerts(limit=limit)),
        ["id", "rule", "kind", "agent", "transaction_id", "message", "created_at"],
        fmt,
    )


@click.command()
@click.option("--entity", type=click.Choice(["agent", "rule"]), default=None)
@click.option("--limit", default=100, show_default=True, type=Integer(1, 100000))
@output_options("table", "json", "csv")
@click.pass_context
def audit(ctx: click.Context, entity: str | None, limit: int, fmt: str) -> None:
    """The audit log of agent and rule changes, newest first.

    \b
    pixelgov audit --entity rule
    """
    emit_rows(
        _json_rows(_admin(ctx).audit(entity=entity, limit=limit)), ["id", "entity", "name", "action", "created_at"], fmt
    )


# --- db ----------------------------------------------------------------------------------------


@click.group()
def db() -> None:
    """Database schema: upgrade, current, downgrade.

    \b
    pixelgov db current
    pixelgov db upgrade
    """


def _url(ctx: click.Context) -> str:
    from ledger.store.db import default_url

    return settings_of(ctx).database_url or default_url()


@db.command("upgrade")
@click.argument("revision", default="head")
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply migrations up to REVISION (default: head).

    \b
    pixelgov --db postgresql+psycopg://localhost/pixelgov db upgrade
    """
    from ledger.store.db import current_revision, make_engine, upgrade_engine

    engine = make_engine(_url(ctx), timeout=settings_of(ctx).db_timeout)
    try:
        upgrade_engine(engine, revision)
        click.echo(f"database at revision {current_revision(engine)}")
    finally:
        engine.dispose()


@db.command("downgrade")
@click.argument("revision")
@click.pass_context
def db_downgrade(ctx: click.Context, revision: str) -> None:
    """Revert migrations down to REVISION (`base` removes every table).

    \b
    pixelgov db downgrade base
    """
    from ledger.store.db import current_revision, downgrade, make_engine

    url = _url(ctx)
    downgrade(url, revision)
    engine = make_engine(url, timeout=settings_of(ctx).db_timeout)
    try:
        click.echo(f"database at revision {current_revision(engine) or 'base'}")
    finally:
        engine.dispose()


@db.command("current")
@output_options("table", "json")
@click.pass_context
def db_current(ctx: click.Context, fmt: str) -> None:
    """The database's schema revision and pixelgov's.

    \b
    pixelgov db current
    """
    from ledger.store.db import SCHEMA_HEAD, current_revision, make_engine

    engine = make_engine(_url(ctx), timeout=settings_of(ctx).db_timeout)
    try:
        rev = current_revision(engine)
        doc = {
            "database": engine.url.render_as_string(hide_password=True),
            "revision": rev,
            "head": SCHEMA_HEAD,
            "up_to_date": rev == SCHEMA_HEAD,
        }
    finally:
        engine.dispose()
    emit_record(doc, fmt)
