"""The dashboard over plain HTTP against a real gateway: sessions, CSRF, bad input, paging."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import ADMIN_TOKEN, RunningGateway, gateway_server, self_signed_cert

FLUX = "fal-ai/flux/dev"
BODY = {"prompt": "a red fox in the snow"}
PAGES = (
    "/dashboard",
    "/dashboard?period=week&chart=month",
    "/dashboard/budgets",
    "/dashboard/agents",
    "/dashboard/agents/confirm?name=bot&action=pause",
    "/dashboard/transactions",
    "/dashboard/transactions.csv",
    "/dashboard/transactions/1",
    "/dashboard/denials",
)


@pytest.fixture
def gw(db_url: str, fake_fal: Any) -> Iterator[RunningGateway]:
    with gateway_server(db_url, fake_fal.url) as running:
        yield running


@pytest.fixture
def sqlite_gw(sqlite_url: str, fake_fal: Any) -> Iterator[RunningGateway]:
    with gateway_server(sqlite_url, fake_fal.url) as running:
        yield running


def client(gw: RunningGateway, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=gw.url, follow_redirects=False, timeout=10, **kwargs)


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden field {name}"
    return match.group(1)


def log_in(c: httpx.Client) -> httpx.Response:
    form = c.get("/dashboard/login")
    r = c.post("/dashboard/login", data={"csrf": hidden(form.text, "csrf"), "token": ADMIN_TOKEN, "next": "/dashboard"})
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    return r


def test_every_page_redirects_to_the_login_form_without_a_session(sqlite_gw: RunningGateway) -> None:
    with client(sqlite_gw) as c:
        for path in PAGES:
            r = c.get(path)
            assert r.status_code == 303, path
            assert r.headers["location"].startswith("/dashboard/login?next=%2Fdashboard"), path
        for path in ("/dashboard/agents/action", "/dashboard/logout"):
            assert c.post(path, data={"name": "bot", "action": "pause"}).status_code == 303
    for forged in ("x", "a.b.c", "abc.9999999999.0000", "a" * 5000, "💥".encode()):
        raw = forged if isinstance(forged, bytes) else forged.encode()
        with client(sqlite_gw, headers={"Cookie": b"pixelgov_session=" + raw}) as c:
            assert c.get("/dashboard").status_code == 303


def test_a_tampered_session_cookie_is_refused(sqlite_gw: RunningGateway) -> None:
    with client(sqlite_gw) as c:
        log_in(c)
        cookie = c.cookies["pixelgov_session"]
    sid, expiry, mac = cookie.split(".")
    for tampered in (
        f"{sid}.{int(expiry) + 3600}.{mac}",
        f"{sid}x.{expiry}.{mac}",
        f"{sid}.{expiry}.{mac[:-1]}{'1' if mac[-1] == '0' else '0'}",
    ):
        with client(sqlite_gw, cookies={"pixelgov_session": tampered}) as c:
            assert c.get("/dashboard/agents").status_code == 303
    with client(sqlite_gw, cookies={"pixelgov_session": cookie}) as c:
        assert c.get("/dashboard/agents").status_code == 200


def test_the_session_cookie_is_httponly_strict_signed_and_never_the_token(sqlite_gw: RunningGateway) -> None:
    with client(sqlite_gw) as c:
        r = log_in(c)
    header = r.headers["set-cookie"]
    assert "pixelgov_session=" in header and "HttpOnly" in header and "SameSite=strict" in header
    assert "Path=/dashboard" in header and "Secure" not in header  # plain HTTP here
    assert ADMIN_TOKEN not in header


def test_the_session_cookie_is_secure_over_tls(sqlite_url: str, fake_fal: Any, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    with (
        gateway_server(sqlite_url, fake_fal.url, ssl=(cert, key)) as gw,
        httpx.Client(
            base_url=gw.url, verify=ssl.create_default_context(cafile=cert), follow_redirects=False, timeout=10
        ) as c,
    ):
        form = c.get("/dashboard/login")
        assert "Secure" in form.headers["set-cookie"]
        r = c.post("/dashboard/login", data={"csrf": hidden(form.text, "csrf"), "token": ADMIN_TOKEN})
        assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]


def test_a_wrong_token_or_a_forged_login_form_does_not_log_in(sqlite_gw: RunningGateway) -> None:
    with client(sqlite_gw) as c:
        form = c.get("/dashboard/login")
        csrf = hidden(form.text, "csrf")
        r = c.post("/dashboard/login", data={"csrf": csrf, "token": "guess"})
        assert r.status_code == 401 and "not the admin token" in r.text and "pixelgov_session" not in c.cookies
        r = c.post("/dashboard/login", data={"csrf": "forged", "token": ADMIN_TOKEN})
        assert r.status_code == 403 and "pixelgov_session" not in c.cookies
    with client(sqlite_gw) as c:  # no login cookie: the form was not this server's page
        assert c.post("/dashboard/login", data={"csrf": csrf, "token": ADMIN_TOKEN}).status_code == 403


def test_a_forged_or_missing_csrf_token_is_refused_and_changes_nothing(gw: RunningGateway) -> None:
    gw.ledger.admin.create_agent("bot")
    with client(gw) as c:
        log_in(c)
        page = c.get("/dashboard/agents/confirm", params={"name": "bot", "action": "pause"})
        assert page.status_code == 200
        csrf = hidden(page.text, "csrf")
        for token in (None, "", "forged", csrf[:-1] + ("0" if csrf[-1] != "0" else "1")):
            data = {"name": "bot", "action": "pause", **({"csrf": token} if token is not None else {})}
            r = c.post("/dashboard/agents/action", data=data)
            assert r.status_code == 403, token
            assert "security token" in r.text
        assert gw.ledger.admin.agent("bot").status.value == "active"
        assert c.post("/dashboard/logout", data={}).status_code == 403
        assert c.get("/dashboard").status_code == 200  # still logged in
        r = c.post("/dashboard/agents/action", data={"name": "bot", "action": "pause", "csrf": csrf})
        assert r.status_code == 303
        assert gw.ledger.admin.agent("bot").status.value == "paused"


def test_a_session_logged_out_is_refused_even_if_its_cookie_is_replayed(sqlite_gw: RunningGateway) -> None:
    with client(sqlite_gw) as c:
        log_in(c)
        cookie = c.cookies["pixelgov_session"]
        csrf = hidden(c.get("/dashboard").text, "csrf")
        r = c.post("/dashboard/logout", data={"csrf": csrf})
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/login?logged_out=1"
        assert c.get("/dashboard").status_code == 303
    with client(sqlite_gw, cookies={"pixelgov_session": cookie}) as c:
        assert c.get("/dashboard").status_code == 303


BAD_INPUT = [
    ("/dashboard?period=year", 400, "period"),
    ("/dashboard?chart=hour", 400, "chart"),
    ("/dashboard/agents?period=decade", 400, "period"),
    ("/dashboard/transactions?agent=nobody", 400, "unknown agent"),
    ("/dashboard/transactions?agent=%00bad", 400, "agent"),
    ("/dashboard/transactions?model=no/such/model", 400, "unknown model"),
    ("/dashboard/transactions?status=lost", 400, "status"),
    ("/dashboard/transactions?operation=paint", 400, "operation"),
    ("/dashboard/transactions?since=2026-13-45", 400, "since"),
    ("/dashboard/transactions?since=2026-11-02&until=2026-11-01", 400, "until"),
    ("/dashboard/transactions?since=0001-01-01T00:00:00%2B14:00", 400, "since"),
    ("/dashboard/transactions?cursor=abc", 400, "cursor"),
    ("/dashboard/transactions?cursor=1.9999999999999999999", 400, "cursor"),
    ("/dashboard/transactions.csv?status=lost", 400, "status"),
    ("/dashboard/transactions/0", 404, "no transaction"),
    ("/dashboard/transactions/99999999999999999999999", 404, "no transaction"),
    ("/dashboard/transactions/abc", 400, "tx_id"),
    ("/dashboard/transactions/424242", 404, "no transaction"),
    ("/dashboard/agents/confirm?name=ghost&action=pause", 404, "unknown agent"),
    ("/dashboard/agents/confirm?name=bot&action=explode", 400, "action"),
    ("/dashboard/denials?cursor=1.1.1", 400, "cursor"),
    ("/dashboard/static/.dashboard.css", 404, "no static file"),
    ("/dashboard/static/pages.py", 404, "no static file"),
    ("/dashboard/static/nothing.css", 404, "no static file"),
]


def test_bad_input_is_a_clear_4xx_page_never_a_500(gw: RunningGateway) -> None:
    gw.ledger.admin.create_agent("bot")
    with client(gw) as c:
        log_in(c)
        for path, status, message in BAD_INPUT:
            r = c.get(path)
            assert r.status_code == status, (path, r.text[:300])
            assert message in r.text, path
            assert "Traceback" not in r.text


def test_pages_carry_security_headers_and_no_outside_references(sqlite_gw: RunningGateway) -> None:
    sqlite_gw.ledger.admin.create_agent("bot")
    with client(sqlite_gw) as c:
        log_in(c)
        for path in PAGES[:6]:
            r = c.get(path)
            assert r.status_code == 200, path
            assert "default-src 'none'" in r.headers["content-security-policy"]
            assert r.headers["x-content-type-options"] == "nosniff"
            if "text/html" in r.headers["content-type"]:
                assert not re.search(r'(src|href)="(https?:)?//', r.text), path


def test_the_dashboard_is_off_without_an_admin_token(sqlite_url: str, fake_fal: Any) -> None:
    with gateway_server(sqlite_url, fake_fal.url, admin_token=None) as gw, client(gw) as c:
        for path in ("/dashboard", "/dashboard/login", "/dashboard/agents"):
            r = c.get(path)
            assert r.status_code == 404 and "dashboard is off" in r.text


def test_transactions_page_by_keyset_through_every_match_exactly_once(gw: RunningGateway) -> None:
    ledger = gw.ledger
    for name in ("bot", "other"):
        ledger.admin.create_agent(name, with_key=False)
    made = []
    for i in range(130):
        auth = ledger.governor.authorize("bot" if i % 3 else "other", ledger.quote(FLUX, BODY), BODY)
        made.append(auth.transaction.id)
    bot_ids = {t for i, t in enumerate(made) if i % 3}
    with client(gw) as c:
        log_in(c)
        seen: list[int] = []
        url: str | None = "/dashboard/transactions?agent=bot"
        while url:
            r = c.get(url)
            assert r.status_code == 200
            seen += [int(x) for x in re.findall(r'data-tx="(\d+)"', r.text)]
            found = re.search(r'rel="next" href="([^"]+)"', r.text)
            url = found.group(1).replace("&amp;", "&") if found else None
        assert len(seen) == len(bot_ids) and set(seen) == bot_ids
        assert seen == sorted(seen, reverse=True)  # newest first
        csv_ids = [int(line.split(",")[0]) for line in c.get("/dashboard/transactions.csv?agent=bot").text.split()[1:]]
        assert csv_ids == seen


def test_a_logout_on_one_worker_ends_the_session_on_every_worker(db_url: str, fake_fal: Any) -> None:
    """Two gateways on one database stand for two workers (or hosts): each verifies the other's
    cookies, and a logout on one is refused by the other from then on, its login form included."""
    with gateway_server(db_url, fake_fal.url) as first, gateway_server(db_url, fake_fal.url) as second:
        with client(first) as c:
            log_in(c)
            cookie = c.cookies["pixelgov_session"]
        with client(second, cookies={"pixelgov_session": cookie}) as other:
            assert other.get("/dashboard/budgets").status_code == 200  # the other worker knows it
            with client(first, cookies={"pixelgov_session": cookie}) as c:
                csrf = hidden(c.get("/dashboard").text, "csrf")
                assert c.post("/dashboard/logout", data={"csrf": csrf}).status_code == 303
            r = other.get("/dashboard/budgets")
            assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login")
            login_form = other.get("/dashboard/login")
            assert login_form.status_code == 200 and 'name="token"' in login_form.text


def test_a_logout_the_database_cannot_record_still_logs_out_here_and_says_so(sqlite_url: str, fake_fal: Any) -> None:
    import sqlite3

    with gateway_server(sqlite_url, fake_fal.url, settings={"db_timeout": 0.3}) as gw, client(gw) as c:
        log_in(c)
        cookie = c.cookies["pixelgov_session"]
        csrf = hidden(c.get("/dashboard").text, "csrf")
        blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the logout's write waits 0.3 s, then gives up
        try:
            r = c.post("/dashboard/logout", data={"csrf": csrf})
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert r.status_code == 503 and "other gateway workers may accept" in r.text
        assert 'pixelgov_session=""' in r.headers["set-cookie"]  # the browser drops it
        assert not gw.ledger.admin.dashboard_session_ended(cookie.split(".")[0])
        with client(gw, cookies={"pixelgov_session": cookie}) as replay:
            assert replay.get("/dashboard").status_code == 303  # this worker refuses it
