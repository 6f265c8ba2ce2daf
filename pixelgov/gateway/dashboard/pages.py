"""The dashboard's pages: login, overview, budgets, agents, transactions, denials and alerts.

Every figure comes from a library call (`ledger.reports`, `ledger.policy.budgets`, `ledger.reports.history`,
the governor and admin), run in the gateway's bounded thread pool; independent calls of one page
run concurrently. No SQL here.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from sqlalchemy.exc import SQLAlchemyError

from ledger.errors import InvalidRequest, NotFound
from ledger.policy.budgets import Budgets
from ledger.records import Transaction, TxStatus
from ledger.reports.filters import OPERATIONS, bucket_start, next_bucket
from ledger.reports.history import History, TransactionFilter

from ..service import Gateway
from . import router
from .guard import ended_elsewhere, error_page, field, form_of, render
from .money import change, exact
from .session import COOKIE_PATH, LOGIN_COOKIE, LOGIN_SECONDS, SESSION_COOKIE, SESSION_SECONDS
from .svg import spend_chart, usage_bar

log = logging.getLogger("pixelgov.dashboard")

PUBLIC = {"x-public": True}
PERIODS = ("day", "week", "month")
#: How many periods of each size the overview's chart shows.
CHART_SPAN = {"day": 30, "week": 12, "month": 12}
TOP = 5
PAGE_SIZE = 50
_STATIC = Path(__file__).parent / "static"
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
MAX_TX_ID = 2**63 - 1


def _gw(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def _choice(request: Request, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = request.query_params.get(name) or default
    if value not in allowed:
        raise InvalidRequest(f"{name}: {value[:40]!r} is not one of {', '.join(allowed)}", field=name)
    return value


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _period_window(period: str, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The current day, week or month (UTC) as [since, until); `all`: unbounded."""
    if period == "all":
        return None, None
    start = bucket_start(period, now.astimezone(UTC).date())
    return _midnight(start), _midnight(next_bucket(period, start))


def _is_secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: only a dashboard path of this server."""
    if not target or not target.startswith("/dashboard") or "//" in target or "\\" in target or len(target) > 1000:
        return "/dashboard"
    return target


# --- static files and login ------------------------------------------------------------------


@router.get("/static/{name}", openapi_extra=PUBLIC)
async def static(name: str) -> Response:
    path = _STATIC / name
    kind = _STATIC_TYPES.get(path.suffix)
    if kind is None or "/" in name or name.startswith(".") or not path.is_file():
        raise NotFound(f"no static file {name[:60]!r}")
    return Response(path.read_bytes(), media_type=kind, headers={"Cache-Control": "public, max-age=3600"})


@router.get("/login", openapi_extra=PUBLIC)
async def login_form(request: Request) -> Response:
    session = request.state.session
    if session is not None and not await ended_elsewhere(request, session):
        return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
    return _login_page(request, 200, error=None)


def _login_page(request: Request, status: int, *, error: str | None) -> Response:
    sign = request.state.signer
    nonce = sign.login_nonce()
    response = render(
        request,
        "login.html",
        status,
        title="Log in",
        active="",
        error=error,
        login_csrf=sign.login_csrf(nonce),
        next=_safe_next(request.query_params.get("next")),
        logged_out=request.query_params.get("logged_out") == "1",
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=LOGIN_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_is_secure(request),
    )
    return response


@router.post("/login", openapi_extra=PUBLIC)
async def login(request: Request) -> Response:
    sign = request.state.signer
    form = await form_of(request)
    if form is None:
        return error_page(request, 400, "The form could not be read.")
    if not sign.login_csrf_ok(request.cookies.get(LOGIN_COOKIE), field(form, "csrf")):
        return error_page(request, 403, "The login form expired or was not sent by this page: reload it and try again.")
    token = field(form, "token") or ""
    if not _gw(request).is_admin_token(token.strip()):
        await asyncio.sleep(0.25)  # slows guessing; the comparison itself is constant-time
        return _login_page(request, 401, error="That is not the admin token.")
    cookie, _ = sign.issue()
    response = RedirectResponse(_safe_next(field(form, "next")), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=SESSION_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_is_secure(request),
    )
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = request.state.session
    request.state.signer.revoke(session)  # this worker refuses it whatever happens next
    gw = _gw(request)
    response: Response
    try:
        await gw.db(gw.ledger.admin.end_dashboard_session, session.id, datetime.fromtimestamp(session.expires, UTC))
        response = RedirectResponse("/dashboard/login?logged_out=1", status_code=303)
    except SQLAlchemyError as exc:
        log.warning("dashboard: logout not recorded, database error %s", type(exc).__name__)
        response = error_page(
            request,
            503,
            "You are logged out of this server process, but the database is unavailable: other gateway "
            "workers may accept a copy of this session's cookie until it expires.",
            title="Logged out here only",
        )
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


# --- overview --------------------------------------------------------------------------------


def _chart_window(by: str, now: datetime) -> tuple[datetime, datetime]:
    last = bucket_start(by, now.astimezone(UTC).date())
    until = next_bucket(by, last)
    first = last
    for _ in range(CHART_SPAN[by] - 1):
        first = bucket_start(by, first - timedelta(days=1))
    return _midnight(first), _midnight(until)


@router.get("")
async def overview(request: Request) -> Response:
    gw = _gw(request)
    period = _choice(request, "period", PERIODS, "month")
    by = _choice(request, "chart", PERIODS, "day")
    reports = gw.ledger.reports
    now = gw.ledger.clock()
    since, until = _period_window(period, now)
    chart_since, chart_until = _chart_window(by, now)
    summary, chart, agents, models = await asyncio.gather(
        gw.db(reports.summary, period=period),
        gw.db(reports.chart, by, since=chart_since, until=chart_until),
        gw.db(reports.leaderboard, "agent", top=TOP, since=since, until=until),
        gw.db(reports.leaderboard, "model", top=TOP, since=since, until=until),
    )
    t, p = summary.totals, summary.previous
    figures: list[tuple[str, str, Decimal | int, Decimal | int | None, bool]] = [
        ("settled", "Settled spend", t.settled, p.settled if p else None, True),
        ("held", "Held (pending)", t.held, p.held if p else None, True),
        ("unknown", "Unknown outcome", t.unknown, p.unknown if p else None, True),
        ("net", "Total spend (net)", t.net, p.net if p else None, True),
        ("transactions", "Transactions", t.transactions, p.transactions if p else None, False),
        ("denials", "Denials", t.denials, p.denials if p else None, False),
    ]
    cards = [
        {"key": k, "label": label, "value": v, "money": money, "change": change(v, before)}
        for k, label, v, before, money in figures
    ]
    return render(
        request,
        "overview.html",
        title="Overview",
        active="overview",
        period=period,
        by=by,
        periods=PERIODS,
        summary=summary,
        cards=cards,
        chart=chart,
        chart_svg=spend_chart(
            chart.points, title=f"Net spend per {by}, {len(chart.points)} {by}s to {now:%Y-%m-%d}", period=by
        ),
        agents=agents.entries,
        models=models.entries,
    )


# --- budgets ---------------------------------------------------------------------------------


@router.get("/budgets")
async def budgets(request: Request) -> Response:
    gw = _gw(request)
    usages = await gw.db(Budgets(gw.ledger.engine, clock=gw.ledger.clock).usage)
    rows = []
    for u in usages:
        if u.used is None:
            text = "not counted" if u.rule.enabled else "disabled"
        elif isinstance(u.used, Decimal):
            text = f"{exact(u.used)} of {exact(u.limit)} USD"
        else:
            text = f"{u.used} of {u.limit} requests"
        bar = usage_bar(u.fraction, label=f"{u.rule.name}: {text} ({u.percent}%)") if u.fraction is not None else ""
        rows.append({"u": u, "text": text, "bar": bar})
    return render(request, "budgets.html", title="Budgets", active="budgets", rows=rows)


# --- agents ----------------------------------------------------------------------------------


@router.get("/agents")
async def agents_page(request: Request) -> Response:
    gw = _gw(request)
    period = _choice(request, "period", (*PERIODS, "all"), "month")
    since, until = _period_window(period, gw.ledger.clock())
    agents, spend = await asyncio.gather(
        gw.db(gw.ledger.admin.agents),
        gw.db(gw.ledger.reports.spend, ("agent",), since=since, until=until),
    )
    totals = {row.key["agent"]: row.totals for row in spend.rows}
    ranked = sorted(agents, key=lambda a: (-(totals[a.name].net if a.name in totals else 0), a.name))
    rows = [{"agent": a, "totals": totals.get(a.name)} for a in ranked]
    return render(
        request,
        "agents.html",
        title="Agents",
        active="agents",
        rows=rows,
        period=period,
        periods=(*PERIODS, "all"),
        total=spend.total,
        notice=request.query_params.get("notice"),
    )


_ACTIONS = {"pause": "Pause", "resume": "Resume", "rotate": "Rotate the API key of"}


@router.get("/agents/confirm")
async def confirm_agent_action(request: Request) -> Response:
    gw = _gw(request)
    action = _choice(request, "action", tuple(_ACTIONS), "pause")
    name = request.query_params.get("name") or ""
    agent = await gw.db(gw.ledger.admin.agent, name)
    return render(
        request,
        "agent_confirm.html",
        title="Confirm",
        active="agents",
        agent=agent,
        action=action,
        verb=_ACTIONS[action],
    )


@router.post("/agents/action")
async def agent_action(request: Request) -> Response:
    gw = _gw(request)
    form = await request.form()
    name, action = field(form, "name") or "", field(form, "action") or ""
    if action not in _ACTIONS:
        raise InvalidRequest(f"action: {action[:40]!r} is not one of {', '.join(_ACTIONS)}", field="action")
    if action == "rotate":
        agent = await gw.db(gw.ledger.admin.rotate_key, name)
        return render(request, "agent_key.html", title="New API key", active="agents", agent=agent)
    status = "paused" if action == "pause" else "active"
    agent = await gw.db(gw.ledger.admin.update_agent, name, status=status)
    notice = f"{agent.name} is now {agent.status.value}"
    return RedirectResponse("/dashboard/agents?" + urlencode({"notice": notice}), status_code=303)


# --- transactions ----------------------------------------------------------------------------

_FILTERS = ("agent", "model", "operation", "status", "since", "until")


def _parse_when(text: str, name: str) -> datetime:
    """A date (YYYY-MM-DD: its midnight) or an ISO-8601 time, in UTC; InvalidRequest otherwise."""
    raw = text.strip()
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00")) if len(raw) > 10 else None
        if value is None:
            value = _midnight(date.fromisoformat(raw))
    except ValueError:
        raise InvalidRequest(f"{name}: {raw[:40]!r} is not a date like 2026-11-25", field=name) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _filter_args(query: Mapping[str, str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for name in _FILTERS:
        value = (query.get(name) or "").strip()
        if value:
            args[name] = _parse_when(value, name) if name in ("since", "until") else value
    return args


def _shown_filters(query: Mapping[str, str]) -> dict[str, str]:
    return {name: (query.get(name) or "").strip()[:200] for name in _FILTERS}


def _variance(tx: Transaction) -> Decimal | None:
    if tx.status != TxStatus.completed or tx.actual_cost is None:
        return None
    return tx.actual_cost - tx.estimated_cost


@router.get("/transactions")
async def transactions_page(request: Request) -> Response:
    gw = _gw(request)
    shown = _shown_filters(request.query_params)
    history = History(gw.ledger.engine, book=gw.ledger.book)
    error = None
    page = None
    try:
        where = await gw.db(history.check, **_filter_args(request.query_params))
        page = await gw.db(history.page, where, cursor=request.query_params.get("cursor") or None, limit=PAGE_SIZE)
    except (InvalidRequest, NotFound) as exc:
        error = str(exc)
    query = {k: v for k, v in shown.items() if v}
    models = sorted({e.model for e in gw.ledger.book.endpoints.values()})
    return render(
        request,
        "transactions.html",
        400 if error else 200,
        title="Transactions",
        active="transactions",
        shown=shown,
        error=error,
        page=page,
        rows=[{"tx": tx, "variance": _variance(tx)} for tx in (page.transactions if page else ())],
        statuses=[s.value for s in TxStatus],
        operations=OPERATIONS,
        models=models,
        query=urlencode(query),
        next_query=urlencode({**query, "cursor": page.next_cursor}) if page and page.next_cursor else None,
    )


CSV_COLUMNS = (
    "id",
    "created_at",
    "completed_at",
    "agent",
    "endpoint",
    "model",
    "operation",
    "status",
    "estimated_cost",
    "actual_cost",
    "variance",
    "upstream_status",
    "outcome",
    "denied_by",
)


def _cell(text: str | None) -> str:
    """Text a spreadsheet will not run as a formula."""
    if not text:
        return ""
    return "'" + text if text[0] in "=+-@\t\r" else text


def _csv_rows(history: History, where: TransactionFilter) -> Iterator[str]:
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(CSV_COLUMNS)
    for i, tx in enumerate(history.each(where)):
        variance = _variance(tx)
        out.writerow(
            (
                tx.id,
                tx.created_at.isoformat().replace("+00:00", "Z"),
                tx.completed_at.isoformat().replace("+00:00", "Z") if tx.completed_at else "",
                _cell(tx.agent),
                _cell(tx.endpoint),
                _cell(tx.model),
                tx.operation,
                tx.status.value,
                exact(tx.estimated_cost),
                exact(tx.actual_cost),
                exact(variance),
                tx.upstream_status if tx.upstream_status is not None else "",
                _cell(tx.outcome),
                _cell(";".join(d.rule or d.type for d in tx.denials)),
            )
        )
        if i % 500 == 499:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


@router.get("/transactions.csv")
async def transactions_csv(request: Request) -> Response:
    gw = _gw(request)
    history = History(gw.ledger.engine, book=gw.ledger.book)
    where = await gw.db(history.check, **_filter_args(request.query_params))
    return StreamingResponse(
        _csv_rows(history, where),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="transactions.csv"', "Cache-Control": "no-store"},
    )


@router.get("/transactions/{tx_id}")
async def transaction_page(request: Request, tx_id: int) -> Response:
    gw = _gw(request)
    if not 1 <= tx_id <= MAX_TX_ID:
        raise NotFound(f"no transaction {tx_id}", id=tx_id)
    tx = await gw.db(gw.ledger.governor.transaction, tx_id, detail=True)
    return render(
        request,
        "transaction.html",
        title=f"Transaction {tx.id}",
        active="transactions",
        tx=tx,
        variance=_variance(tx),
    )


# --- denials and alerts ----------------------------------------------------------------------


@router.get("/denials")
async def denials_page(request: Request) -> Response:
    gw = _gw(request)
    period = _choice(request, "period", PERIODS, "month")
    since, until = _period_window(period, gw.ledger.clock())
    history = History(gw.ledger.engine, book=gw.ledger.book)
    where = TransactionFilter(status=TxStatus.denied.value, since=since, until=until)
    cursor = request.query_params.get("cursor") or None
    summary, page, alerts = await asyncio.gather(
        gw.db(gw.ledger.reports.summary, period=period),
        gw.db(history.page, where, cursor=cursor, limit=PAGE_SIZE),
        gw.db(gw.ledger.admin.alerts, limit=50),
    )
    return render(
        request,
        "denials.html",
        title="Denials and alerts",
        active="denials",
        period=period,
        periods=PERIODS,
        summary=summary,
        page=page,
        alerts=alerts,
        next_query=urlencode({"period": period, "cursor": page.next_cursor}) if page.next_cursor else None,
    )
