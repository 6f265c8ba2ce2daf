"""`pixelgov run`: a governed request to FAL."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ledger.errors import InvalidRequest, UpstreamError

from .common import emit_json, ledger_of, output_options, pop_request_options, request_options, settings_of
from .ledger_cmds import check_output, print_alerts


def fal_key_from_env() -> str:
    """The FAL key from the environment (the edge), checked; never kept beyond this run."""
    from ledger.forward.upstream import check_fal_key

    key = os.environ.get("FAL_KEY", "").strip()
    if not key:
        raise InvalidRequest(
            "FAL_KEY is not set: a real run needs your FAL API key in the FAL_KEY environment "
            "variable (or use --dry-run)",
            field="FAL_KEY",
        )
    return check_fal_key(key)


@click.command()
@click.argument("endpoint")
@click.option("--agent", required=True, help="The agent that spends.")
@request_options
@click.option("--idempotency-key", default=None, help="A retry with the same key is not sent or charged again.")
@click.option("--out", "out_dir", default=None, metavar="DIR", help="Download the images into DIR.")
@click.option("--dry-run", is_flag=True, help="Quote and rule decision only: nothing written, nothing sent.")
@click.option(
    "--timeout",
    default=None,
    metavar="SECONDS",
    help="Wait this long for the upstream's answer (env PIXELGOV_UPSTREAM_TIMEOUT, default 120).",
)
@click.option(
    "--upstream-url", default=None, metavar="URL", help="Env PIXELGOV_UPSTREAM_URL (default https://fal.run)."
)
@output_options("table", "json")
@click.pass_context
def run(
    ctx: click.Context,
    /,
    endpoint: str,
    agent: str,
    idempotency_key: str | None,
    out_dir: str | None,
    dry_run: bool,
    timeout: str | None,
    upstream_url: str | None,
    fmt: str,
    **options: Any,
) -> None:
    """Authorize, forward to FAL and settle the real cost. Denied: nothing is sent (exit 3).

    \b
    pixelgov run fal-ai/flux/dev --agent bot --prompt "a red fox" --dry-run
    FAL_KEY=... pixelgov run fal-ai/flux/dev --agent bot --prompt "a red fox" --out images/
    """
    from ledger.policy.requests import validate_idempotency_key

    body = pop_request_options(options)
    validate_idempotency_key(idempotency_key)
    ledger = ledger_of(ctx)
    quote = ledger.quote(endpoint, body)
    if dry_run:
        check_output(ctx, ledger.governor.check(agent, quote), fmt)
        return
    from ledger.forward.runner import run_governed, runnable
    from ledger.forward.upstream import Upstream, UpstreamConfig

    # Everything that can be refused is refused before a hold is written.
    runnable(quote, body)
    fal_key = fal_key_from_env()
    config = UpstreamConfig.from_settings(settings_of(ctx), url=upstream_url, timeout=timeout)
    directory = None
    if out_dir is not None:
        from ledger.forward.downloads import ensure_writable

        directory = ensure_writable(out_dir)
    with Upstream(config) as upstream:
        outcome = run_governed(
            ledger.governor,
            upstream,
            agent=agent,
            quote=quote,
            body=body,
            fal_key=fal_key,
            idempotency_key=idempotency_key,
            after_authorize=lambda auth: print_alerts(auth.decision.alerts if auth.decision else []),
        )
    tx = outcome.transaction
    if fmt == "json":
        emit_json(outcome.to_json())
    else:
        note = " (idempotent retry: the earlier transaction, nothing sent)" if outcome.replayed else ""
        click.echo(
            f"{tx.status.value}: transaction {tx.id}, estimated {tx.to_json()['estimated_cost']}, "
            f"actual {tx.to_json()['actual_cost']}{note}"
        )
        from ledger.forward.downloads import image_urls

        for i, url in enumerate(image_urls(outcome.result)):
            click.echo(f"  image {i}: {url if not url.startswith('data:') else url[:40] + '…'}")
    if directory is not None and outcome.result is not None:
        from ledger.forward.downloads import save_images

        try:
            paths = save_images(outcome.result, directory, tx.id, progress=fmt != "json" and sys.stderr.isatty())
        except Exception as exc:  # noqa: BLE001 - a download problem is reported, the ledger is already right
            raise UpstreamError(
                f"transaction {tx.id} is settled but downloading its images failed: {exc}", transaction=tx
            ) from None
        for path in paths:
            click.echo(f"saved {path}", err=True)
