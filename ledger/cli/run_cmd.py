"""`pixelgov run`: a governed request to FAL."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import InvalidRequest, UpstreamError
from ..quoting import quote_body
from .common import emit_json, governor, output_options, pop_request_options, request_options
from .ledger_cmds import check_output, print_alerts


@click.command()
@click.argument("endpoint")
@click.option("--agent", required=True, help="The agent that spends.")
@request_options
@click.option("--idempotency-key", default=None, help="A retry with the same key is not sent or charged again.")
@click.option("--out", "out_dir", default=None, metavar="DIR", help="Download the images into DIR.")
@click.option("--dry-run", is_flag=True, help="Quote and rule decision only: nothing written, nothing sent.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Wait this long for the upstream's answer (env PIXELGOV_UPSTREAM_TIMEOUT, default 120).")
@click.option("--upstream-url", default=None, metavar="URL", help="Env PIXELGOV_UPSTREAM_URL (default https://fal.run).")
@output_options("table", "json")
@click.pass_context
def run(ctx: click.Context, endpoint: str, agent: str, idempotency_key: str | None, out_dir: str | None,
        dry_run: bool, timeout: float | None, upstream_url: str | None, fmt: str, **options: Any) -> None:
    """Authorize, forward to FAL and settle the real cost. Denied: nothing is sent (exit 3).

    \b
    pixelgov run fal-ai/flux/dev --agent bot --prompt "a red fox" --dry-run
    FAL_KEY=... pixelgov run fal-ai/flux/dev --agent bot --prompt "a red fox" --out images/
    """
    body = pop_request_options(options)
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 200:
        raise InvalidRequest("idempotency_key: 1–200 characters", field="idempotency_key")
    quote = quote_body(endpoint, body)
    gov = governor(ctx)
    if dry_run:
        check_output(ctx, gov.check(agent, quote), fmt)
        return
    from ..runner import run_governed, runnable
    from ..upstream import Upstream, UpstreamConfig, fal_key_from_env

    runnable(quote, body)
    fal_key = fal_key_from_env()
    config = UpstreamConfig.from_env(url=upstream_url, timeout=timeout)
    directory = None
    if out_dir is not None:
        from ..downloads import ensure_writable

        directory = ensure_writable(out_dir)
    with Upstream(config) as upstream:
        outcome = run_governed(gov, upstream, agent=agent, quote=quote, body=body, fal_key=fal_key,
                               idempotency_key=idempotency_key,
                               after_authorize=lambda auth: print_alerts(auth.decision.alerts if auth.decision else []))
    tx = outcome.transaction
    if fmt == "json":
        emit_json(outcome.to_json())
    else:
        note = " (idempotent retry: the earlier transaction, nothing sent)" if outcome.replayed else ""
        click.echo(f"{tx['status']}: transaction {tx['id']}, estimated {tx['estimated_cost']}, "
                   f"actual {tx['actual_cost']}{note}")
        from ..downloads import image_urls

        for i, url in enumerate(image_urls(outcome.result)):
            click.echo(f"  image {i}: {url if not url.startswith('data:') else url[:40] + '…'}")
    if directory is not None and outcome.result is not None:
        from ..downloads import save_images

        try:
            paths = save_images(outcome.result, directory, tx["id"], progress=fmt != "json" and sys.stderr.isatty())
        except Exception as exc:  # noqa: BLE001 - a download problem is reported, the ledger is already right
            raise UpstreamError(f"transaction {tx['id']} is settled but downloading its images failed: {exc}",
                                transaction=tx) from None
        for path in paths:
            click.echo(f"saved {path}", err=True)



