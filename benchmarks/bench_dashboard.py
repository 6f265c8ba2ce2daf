"""Server-side render time of each dashboard page, next to the library call it is built from.

    python benchmarks/bench_dashboard.py [--n 100000] [--db URL] [--repeat 5]

Fills the database with `gen_ledger.py` (`--n` transactions; an existing generated ledger at
`--db` is reused as it is), then serves the gateway app in process (FastAPI's TestClient: the
full app with its middleware, no network), logs in, and times every page: the median of
`--repeat` requests, each measured from the request to the last byte. Beside each page is the
median of the library call(s) the page makes, run directly, and the ratio page / call: what
the dashboard adds to the reports (templates, SVG, HTTP) — and, for a page that runs several
calls concurrently, what it saves. The clock is the generated history's last day, so "this
month" holds a full month of data. Target: every page ≤ 300 ms at 1,000,000 transactions on
PostgreSQL.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_ledger import DEFAULT_END, generate

TOKEN = "bench-admin-token"


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm: caches, connections, plans
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def ensure_ledger(url: str, n: int) -> None:
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            has = inspect(conn).has_table("transactions")
            count = conn.execute(text("SELECT count(*) FROM transactions")).scalar() if has else 0
    finally:
        engine.dispose()
    if count:
        print(f"reusing {url.split('@')[-1]}: {count:,} transactions", file=sys.stderr)
        return
    print(f"generating {n:,} transactions into {url.split('@')[-1]} …", file=sys.stderr)
    stats = generate(url, n, progress=lambda line: print(line, file=sys.stderr))
    print(f"generated in {stats.seconds:.1f} s", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="transactions to generate (into an empty database)")
    parser.add_argument("--db", default=None, help="sqlite:///FILE or postgresql+psycopg://… (default: a temp SQLite)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    url = args.db or f"sqlite:///{tempfile.mkdtemp(prefix='bench-dashboard-')}/ledger.db"
    ensure_ledger(url, args.n)

    from fastapi.testclient import TestClient

    from ledger import Ledger
    from ledger.policy.budgets import Budgets
    from ledger.reports.history import History, TransactionFilter
    from pixelgov.gateway import GatewayConfig, create_app

    now = DEFAULT_END - timedelta(hours=1)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    month_end = (month_start + timedelta(days=32)).replace(day=1)
    ledger = Ledger(url, clock=lambda: now)
    reports, history = ledger.reports, History(ledger.engine, book=ledger.book)
    busiest = reports.leaderboard("agent", top=1).entries[0].name or ""
    first_page = history.page(TransactionFilter())
    deep = first_page
    for _ in range(20):  # a cursor 20 pages deep
        deep = history.page(TransactionFilter(), cursor=deep.next_cursor)
    some_tx = first_page.transactions[0].id
    chart_since = datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=29)
    chart_until = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    agent_filter = history.check(agent=busiest, status="completed")

    def overview_calls() -> None:
        reports.summary(period="month")
        reports.chart("day", since=chart_since, until=chart_until)
        reports.leaderboard("agent", top=5, since=month_start, until=month_end)
        reports.leaderboard("model", top=5, since=month_start, until=month_end)

    cases: list[tuple[str, str, str, Callable[[], Any]]] = [
        ("overview", "/dashboard", "summary+chart+2 leaderboards, in sequence", overview_calls),
        ("budgets", "/dashboard/budgets", "Budgets.usage", Budgets(ledger.engine, clock=ledger.clock).usage),
        (
            "agents",
            "/dashboard/agents",
            "spend --by agent (month)",
            lambda: reports.spend(("agent",), since=month_start, until=month_end),
        ),
        ("transactions", "/dashboard/transactions", "History.page", lambda: history.page(TransactionFilter())),
        (
            "transactions, agent+status",
            f"/dashboard/transactions?agent={busiest}&status=completed",
            "History.page (filtered)",
            lambda: history.page(agent_filter),
        ),
        (
            "transactions, 21st page",
            f"/dashboard/transactions?cursor={deep.cursor}",
            "History.page (cursor)",
            lambda: history.page(TransactionFilter(), cursor=deep.cursor),
        ),
        (
            "transaction detail",
            f"/dashboard/transactions/{some_tx}",
            "governor.transaction(detail)",
            lambda: ledger.governor.transaction(some_tx, detail=True),
        ),
        ("denials", "/dashboard/denials", "summary (month)", lambda: reports.summary(period="month")),
    ]

    app = create_app(ledger, GatewayConfig(admin_token=TOKEN, access_log=False))
    rows = []
    with TestClient(app, base_url="http://bench") as client:
        form = client.get("/dashboard/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf
        client.post("/dashboard/login", data={"csrf": csrf.group(1), "token": TOKEN}, follow_redirects=False)
        for label, path, call_label, call in cases:

            def page(path: str = path) -> None:
                r = client.get(path)
                assert r.status_code == 200, (path, r.status_code, r.text[:200])

            page_ms = median_ms(page, args.repeat)
            call_ms = median_ms(call, args.repeat)
            rows.append((label, page_ms, call_label, call_ms))
    ledger.close()

    dialect = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    print(f"\ndashboard pages, {dialect}, median of {args.repeat} (server-side, in process)")
    print(f"{'page':<28} {'page ms':>9}  {'library call(s)':<42} {'call ms':>9} {'ratio':>7}  ≤300 ms")
    for label, page_ms, call_label, call_ms in rows:
        ratio = page_ms / call_ms if call_ms else float("nan")
        ok = "yes" if page_ms <= 300 else "no"
        print(f"{label:<28} {page_ms:>9.1f}  {call_label:<42} {call_ms:>9.1f} {ratio:>6.2f}×  {ok}")


if __name__ == "__main__":
    main()
