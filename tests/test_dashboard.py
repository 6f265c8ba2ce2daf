"""The dashboard in a real browser: Debian's chromium, driven by Playwright, against a real gateway
(uvicorn in a thread) on SQLite and on PostgreSQL, with the fake FAL upstream.

One browser per module. Screenshots of every page go to `$PIXELGOV_ARTIFACTS` (or the test's
tmp directory): artifacts of the run, never committed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from gateway_support import ADMIN_TOKEN, RunningGateway, gateway_server

from pixelgov.cli import cli

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLUX = "fal-ai/flux/dev"
BODY = {"prompt": "a red fox in the snow"}  # landscape_4_3: 0.79 MP × 0.015 = 0.01185

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    root = os.environ.get("PIXELGOV_ARTIFACTS")
    where = Path(root) / "dashboard" / request.node.name.replace("/", "_") if root else tmp_path / "screenshots"
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture
def gw(db_url: str, fake_fal: Any) -> Iterator[RunningGateway]:
    with gateway_server(db_url, fake_fal.url) as running:
        yield running


def report(url: str, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["--db", url, "report", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def seed(gw: RunningGateway) -> dict[str, str]:
    """Agents `bot` and `artist` with keys; completed runs through the gateway, a denial by a rule,
    a pending hold, an unknown outcome and a settled variance. Returns the agents' keys."""
    from ledger import RuleSpec

    ledger = gw.ledger
    keys = {name: str(ledger.admin.create_agent(name).api_key) for name in ("bot", "artist")}
    ledger.admin.create_rule(
        RuleSpec(
            name="artist-cap",
            type="request-cap",
            limit="0.02",
            agent="artist",
            given={"name", "type", "limit", "agent"},
        )
    )
    ledger.admin.create_rule(
        RuleSpec(
            name="bot-daily",
            type="spend-limit",
            limit="1",
            period="day",
            agent="bot",
            alert_at=1,
            given={"name", "type", "limit", "period", "agent", "alert_at"},
        )
    )
    with gw.client(keys["bot"]) as client:
        for _ in range(3):
            assert client.post(f"/{FLUX}", json=BODY).status_code == 200
    with gw.client(keys["artist"]) as client:
        assert client.post(f"/{FLUX}", json=BODY).status_code == 200
        denied = client.post(f"/{FLUX}", json={**BODY, "image_size": "square_hd", "num_images": 4})
        assert denied.status_code == 402
    gov = ledger.governor
    held = gov.authorize("bot", ledger.quote(FLUX, BODY), BODY)  # pending: held
    assert held.transaction.status.value == "pending"
    lost = gov.authorize("artist", ledger.quote(FLUX, BODY), BODY)
    gov.mark_unknown(lost.transaction.id, "timeout after sending")
    varied = gov.authorize("bot", ledger.quote(FLUX, BODY), BODY)
    gov.complete(varied.transaction.id, actual="0.02")  # variance +0.00815
    return keys


def login(page: Any, base: str) -> None:
    page.goto(f"{base}/dashboard")
    assert "/dashboard/login" in page.url
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/dashboard")


def usd_of(page: Any, selector: str) -> str:
    return str(page.locator(selector).get_attribute("data-usd"))


def test_finance_walkthrough_in_a_real_browser(gw: RunningGateway, browser: Any, artifacts: Path, db_url: str) -> None:
    keys = seed(gw)
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    outside: list[str] = []
    page.on(
        "request", lambda r: None if r.url.startswith(gw.url) or r.url.startswith("data:") else outside.append(r.url)
    )
    try:
        login(page, gw.url)

        # Overview: the totals are `pixelgov report summary`'s, to the nano-USD.
        summary = report(db_url, "summary", "--period", "month")
        assert usd_of(page, "#card-settled .value") == summary["settled_spend"]
        assert usd_of(page, "#card-held .value") == summary["held_spend"]
        assert usd_of(page, "#card-unknown .value") == summary["unknown_spend"]
        assert usd_of(page, "#card-net .value") == summary["total_spend"]
        assert page.locator("#card-transactions .value").get_attribute("data-count") == str(
            summary["total_transactions"]
        )
        assert page.locator("#card-denials .value").get_attribute("data-count") == str(summary["total_denials"])
        assert page.locator("svg.chart rect.bar").count() == 30
        assert page.locator("#top-agent + .scroll tbody tr").first.locator("th").inner_text() == "bot"
        page.screenshot(path=str(artifacts / "overview.png"), full_page=True)

        # Budgets: closest to the limit first; the spend-limit's bar is settled + held of its limit.
        page.get_by_role("link", name="Budgets").click()
        rows = page.locator("table.budgets tbody tr")
        assert rows.first.get_attribute("data-rule") == "bot-daily"
        usage = gw.ledger.governor.check("bot", gw.ledger.quote(FLUX, BODY))  # what the next request sees
        verdict = next(v for v in usage.verdicts if v.rule.name == "bot-daily")
        used = verdict.usage_after - Decimal("0.01185")
        assert f"{used.normalize()} of 1 USD" in rows.first.inner_text()
        page.screenshot(path=str(artifacts / "budgets.png"), full_page=True)

        # Transactions: filter by agent and status; the CSV of that view matches `report spend`.
        page.get_by_role("link", name="Transactions").click()
        page.get_by_label("Agent").fill("bot")
        page.get_by_label("Status").select_option("completed")
        page.get_by_role("button", name="Filter").click()
        page.wait_for_url("**/dashboard/transactions?**")
        shown = page.locator("table.transactions tbody tr")
        assert shown.count() == 4
        assert page.locator("td.variance.over").count() == 1
        page.screenshot(path=str(artifacts / "transactions.png"), full_page=True)
        with page.expect_download() as download_info:
            page.locator("#csv").click()
        text = Path(download_info.value.path()).read_text()
        rows_csv = list(csv.DictReader(io.StringIO(text)))
        assert {r["agent"] for r in rows_csv} == {"bot"} and {r["status"] for r in rows_csv} == {"completed"}
        spend = report(db_url, "spend", "--by", "agent", "--agent", "bot", "--status", "completed")
        total = spend["total"]
        assert len(rows_csv) == total["transactions"]
        assert str(sum(Decimal(r["actual_cost"]) for r in rows_csv)) == total["actual"]
        assert str(sum(Decimal(r["variance"]) for r in rows_csv)) == total["variance"]
        ledger_ids = [t.id for t in gw.ledger.governor.transactions(agent="bot", status="completed")]
        assert sorted(int(r["id"]) for r in rows_csv) == sorted(ledger_ids)

        # A transaction's detail: cost lines, facts, upstream outcome, variance highlighted.
        page.locator("td.variance.over").locator("xpath=..").locator("th a").click()
        assert page.locator("dd.variance.over").inner_text() == "+$0.00815"
        assert "estimate" in page.locator("main").inner_text()
        page.screenshot(path=str(artifacts / "transaction.png"), full_page=True)

        # Denials and alerts: the refused request, by which rule.
        page.get_by_role("link", name="Denials and alerts").click()
        assert "artist-cap" in page.locator("#refused + .scroll").inner_text()
        page.screenshot(path=str(artifacts / "denials.png"), full_page=True)

        # Agents: pause `bot` (with a confirmation step), and its next gateway request is refused.
        page.get_by_role("link", name="Agents").click()
        page.screenshot(path=str(artifacts / "agents.png"), full_page=True)
        page.locator("tr[data-agent='bot']").get_by_role("link", name="Pause").click()
        assert gw.ledger.admin.agent("bot").status.value == "active"  # not before the confirmation
        page.get_by_role("button", name="Yes, pause").click()
        assert "bot is now paused" in page.locator(".notice").inner_text()
        with gw.client(keys["bot"]) as client:
            assert client.post(f"/{FLUX}", json=BODY).status_code == 402

        # Rotate `artist`'s key: shown once; the old key stops working.
        page.locator("tr[data-agent='artist']").get_by_role("link", name="Rotate key").click()
        page.get_by_role("button", name="Yes, rotate").click()
        new_key = page.get_by_label("New API key").input_value()
        assert new_key.startswith("pgv_") and new_key != keys["artist"]
        assert gw.ledger.admin.agent_by_api_key(new_key).name == "artist"
        assert gw.ledger.admin.agent_by_api_key(keys["artist"]) is None

        # A phone-sized screen: every page still renders (screenshots for the eye).
        page.set_viewport_size({"width": 375, "height": 740})
        page.goto(f"{gw.url}/dashboard")
        page.screenshot(path=str(artifacts / "overview-phone.png"), full_page=True)

        # Log out: the dashboard refuses this browser until it logs in again.
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url("**/dashboard/login?logged_out=1")
        page.goto(f"{gw.url}/dashboard/agents")
        assert "/dashboard/login" in page.url
        assert outside == []  # nothing fetched from anywhere but the server
    finally:
        context.close()


def test_pages_are_keyboard_navigable_and_labelled(gw: RunningGateway, browser: Any) -> None:
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{gw.url}/dashboard/login")
        # Focus moves when the browser gets to it (a loaded machine may be a moment late): wait for
        # it, bounded, rather than reading it once.
        focused = "(want) => document.activeElement && document.activeElement.textContent === want"
        page.wait_for_function("() => document.activeElement && document.activeElement.id === 'token'", timeout=5000)
        page.keyboard.type(ADMIN_TOKEN)
        page.keyboard.press("Enter")
        page.wait_for_url(f"{gw.url}/dashboard")
        page.keyboard.press("Tab")
        page.wait_for_function(focused, arg="Skip to content", timeout=5000)
        page.keyboard.press("Tab")
        page.wait_for_function(focused, arg="Overview", timeout=5000)
        page.goto(f"{gw.url}/dashboard/transactions")
        for field in page.locator("form.filters input, form.filters select").all():
            field_id = field.get_attribute("id")
            if field.get_attribute("type") != "hidden" and field_id:
                assert page.locator(f"label[for='{field_id}']").count() == 1
    finally:
        context.close()
