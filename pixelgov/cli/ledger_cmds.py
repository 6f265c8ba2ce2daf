"""`pixelgov check`, `authorize` and `tx …`: decisions and the transaction ledger."""

from __future__ import annotations

from typing import Any

import click

from ledger.errors import InvalidRequest, denial_error
from pricing.money import usd_str

from .common import (
    TX_COLUMNS,
    Integer,
    Seconds,
    emit_json,
    emit_rows,
    emit_transaction,
    governor,
    ledger_of,
    output_options,
    parse_time,
    pop_request_options,
    request_options,
    stderr_lines,
    tx_id_argument,
)


def print_alerts(alerts: Any) -> None:
    stderr_lines(f"alert: {a.rule}: {a.reason}" for a in alerts)


@click.command()
@click.argument("endpoint")
@click.option("--agent", required=True, help="The agent that would spend.")
@request_options
@output_options("table", "json")
@click.pass_context
def check(ctx: click.Context, /, endpoint: str, agent: str, fmt: str, **options: Any) -> None:
    """Pre-flight: the quote and the rule decision. Writes nothing. Exit 3 when denied.

    \b
    pixelgov check fal-ai/flux/dev --agent bot --image-size square_hd
    """
    body = pop_request_options(options)
    ledger = ledger_of(ctx)
    check_output(ctx, ledger.governor.check(agent, ledger.quote(endpoint, body)), fmt)


def check_output(ctx: click.Context, decision: Any, fmt: str) -> None:
    """Print a decision (check, run --dry-run); exit 3 when denied."""
    quote = decision.quote
    if fmt == "json":
        emit_json(decision.to_json())
    else:
        verdict = "allowed" if decision.allowed else "denied"
        click.echo(f"{verdict}: {quote.endpoint} for agent {decision.agent.name}")
        click.echo(
            f"  quote   {quote.price} ({usd_str(quote.amount)} USD): {quote.images} × {quote.width}x{quote.height}"
            f", {usd_str(quote.billable_megapixels)} billable MP × {usd_str(quote.rate_per_megapixel)} USD/MP"
            f" (price book {quote.price_book})"
        )
        if not decision.verdicts:
            click.echo("  rules   none apply (add some: pixelgov rules create --help)")
        for v in decision.verdicts:
            state = "ok" if v.ok else ("DENIED" if v.rule.action == "deny" else "ALERT")
            detail = v.reason or v.rule.describe_limit()
            if v.ok and v.usage_after is not None:
                detail = f"{usd_str(v.usage_after)} of {detail} with this request"
            click.echo(f"  rule    {v.rule.name} ({v.rule.type}, {v.rule.action}): {state}: {detail}")
        for d in decision.denials:
            if d.rule is None:
                click.echo(f"  agent   DENIED: {d.reason}")
    print_alerts(decision.alerts)
    if not decision.allowed:
        ctx.exit(3)


@click.command()
@click.argument("endpoint")
@click.option("--agent", required=True, help="The agent that spends.")
@request_options
@click.option("--idempotency-key", default=None, help="A retry with the same key returns the same transaction.")
@output_options("table", "json")
@click.pass_context
def authorize(
    ctx: click.Context, /, endpoint: str, agent: str, idempotency_key: str | None, fmt: str, **options: Any
) -> None:
    """Create a pending transaction (a hold) for a caller that forwards the request itself.

    \b
    pixelgov authorize fal-ai/flux/dev --agent bot --prompt "a fox" --idempotency-key job-42
    pixelgov tx complete 17 --response fal-response.json
    """
    from ledger.policy.requests import validate_idempotency_key

    validate_idempotency_key(idempotency_key)
    body = pop_request_options(options)
    ledger = ledger_of(ctx)
    result = ledger.governor.authorize(agent, ledger.quote(endpoint, body), body, idempotency_key=idempotency_key)
    if result.decision:
        print_alerts(result.decision.alerts)
    if not result.allowed:
        raise denial_error(result.transaction, result.transaction.denials, agent)
    emit_transaction(result.transaction, fmt)


@click.group()
def tx() -> None:
    """Transactions: list, show, complete, void, expire, add-cost, add-fact.

    \b
    pixelgov tx list --agent bot --status pending
    pixelgov tx show 1
    """


@tx.command("list")
@click.option("--agent", default=None)
@click.option("--status", default=None, help="pending, completed, failed, voided, expired, unknown, denied")
@click.option("--since", default=None, help="ISO date/time or a span back from now (24h, 7d).")
@click.option("--until", default=None)
@click.option("--limit", default=100, show_default=True, type=Integer(1, 100000))
@output_options("table", "json", "csv")
@click.pass_context
def tx_list(
    ctx: click.Context,
    agent: str | None,
    status: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    fmt: str,
) -> None:
    """Transactions, newest first.

    \b
    pixelgov tx list --agent bot --status pending --since 24h
    """
    rows = governor(ctx).transactions(
        agent=agent, status=status, since=parse_time(since, "since"), until=parse_time(until, "until"), limit=limit
    )
    emit_rows([r.to_json() for r in rows], TX_COLUMNS, fmt)


@tx.command("show")
@tx_id_argument
@output_options("table", "json")
@click.pass_context
def tx_show(ctx: click.Context, tx_id: int, fmt: str) -> None:
    """One transaction with its cost lines and facts.

    \b
    pixelgov tx show 17
    """
    emit_transaction(governor(ctx).transaction(tx_id, detail=True), fmt)


@tx.command("complete")
@tx_id_argument
@click.option("--actual", default=None, metavar="USD", help="The actual cost.")
@click.option(
    "--response",
    "response_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="The upstream's JSON response: the actual cost is priced from its image sizes.",
)
@output_options("table", "json")
@click.pass_context
def tx_complete(ctx: click.Context, tx_id: int, actual: str | None, response_file: str | None, fmt: str) -> None:
    """Settle a pending (or unknown) transaction at its actual cost; the hold is released.

    Without --actual or --response the estimate is taken as the actual cost.

    \b
    pixelgov tx complete 17 --actual 0.0118
    pixelgov tx complete 17 --response fal-response.json
    """
    from pricing.jsondoc import read_json_file

    if actual is not None and response_file is not None:
        raise InvalidRequest("actual: give an actual cost or a response, not both", field="actual")
    response = read_json_file(response_file, field="response") if response_file is not None else None
    emit_transaction(governor(ctx).complete(tx_id, actual=actual, response=response), fmt)


@tx.command("void")
@tx_id_argument
@click.option("--reason", default=None)
@output_options("table", "json")
@click.pass_context
def tx_void(ctx: click.Context, tx_id: int, reason: str | None, fmt: str) -> None:
    """Release a pending hold (or an unknown outcome) by hand.

    \b
    pixelgov tx void 17 --reason "request never sent"
    """
    emit_transaction(governor(ctx).void(tx_id, reason), fmt)


@tx.command("expire")
@click.option(
    "--older-than",
    type=Seconds(),
    default=None,
    metavar="SECONDS",
    help="Default: PIXELGOV_HOLD_TTL (900 s).",
)
@output_options("table", "json")
@click.pass_context
def tx_expire(ctx: click.Context, older_than: float | None, fmt: str) -> None:
    """Release pending holds older than the hold TTL.

    \b
    pixelgov tx expire
    pixelgov tx expire --older-than 60
    """
    ids = governor(ctx).expire(older_than)
    if fmt == "json":
        emit_json({"expired": ids})
    else:
        click.echo(f"expired {len(ids)} hold(s)" + (f": {', '.join(map(str, ids))}" if ids else ""))


@tx.command("add-cost", context_settings={"ignore_unknown_options": True})  # so -0.002 is an amount
@tx_id_argument
@click.argument("amount", metavar="USD")
@click.option("--kind", type=click.Choice(["adjustment"]), default="adjustment", show_default=True)
@click.option("--note", default=None)
@output_options("table", "json")
@click.pass_context
def tx_add_cost(ctx: click.Context, tx_id: int, amount: str, kind: str, note: str | None, fmt: str) -> None:
    """Add a correcting cost line (positive or negative) to a completed transaction.

    \b
    pixelgov tx add-cost 17 -0.002 --note "FAL credit"
    """
    from ledger.policy.transitions import parse_amount

    emit_transaction(
        governor(ctx).add_cost(tx_id, parse_amount(amount, "amount", allow_negative=True), kind=kind, note=note), fmt
    )


@tx.command("add-fact")
@tx_id_argument
@click.argument("fact", metavar="KEY=VALUE")
@output_options("table", "json")
@click.pass_context
def tx_add_fact(ctx: click.Context, tx_id: int, fact: str, fmt: str) -> None:
    """Attach a key/value note to a transaction.

    \b
    pixelgov tx add-fact 17 reviewer=alice
    """
    key, sep, value = fact.partition("=")
    if not sep or not key.strip():
        raise InvalidRequest(f"fact: expected KEY=VALUE, got {fact!r}", field="fact")
    emit_transaction(governor(ctx).add_fact(tx_id, key.strip(), value), fmt)
