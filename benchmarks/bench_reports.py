"""Finance reports at scale: each report's time next to a plain-SQL aggregate over the same rows.

    python benchmarks/bench_reports.py [--n 1000000] [--repeat 3] [--skip-pg | --skip-sqlite]
                                       [--pg URL] [--sqlite-db FILE] [--pg-db URL]

For each database it fills a fresh store with `gen_ledger.py` (N transactions over 180 days,
50 agents with skewed volumes, every model, operation and status, adjustments), then times
every report through the library (`Ledger.reports`, as the CLI and the gateway call it) and,
in the same run, a baseline: the plain SQL aggregate a person would write for the same figures
over the same rows (one GROUP BY through the bare driver, no spend rules, no adjustments, no
records). Each figure is the median of `--repeat` runs after one warm-up, report and baseline
alternating so a noisy neighbour hits both alike. The ratio is report / baseline.

Stores: a SQLite file in a temporary directory, and a PostgreSQL database of its own
(`pixelgov_bench_reports_<pid>_<random>` on the server of `--pg`), dropped at the end. With
`--sqlite-db FILE` / `--pg-db URL` an existing generated ledger is used instead (kept).
Targets at 1,000,000 transactions: every report ≤ 1 s on PostgreSQL, ≤ 2 s on SQLite, and
within 2x its baseline. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import io
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_ledger import DEFAULT_END, generate

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MONTH = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
PREVIOUS = (datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC))
QUARTER_START = datetime(2026, 8, 27, tzinfo=UTC)


@dataclass
class Case:
    """One report and its baseline."""

    name: str
    report: Callable[[Any], Any]  #: (Reports) -> result
    baseline: Callable[[Any, bool], Any]  #: (DBAPI connection, is_pg) -> rows
    count: Callable[[Any], int]  #: rows in the report's result


def _ts(value: datetime, pg: bool) -> Any:
    naive = value.astimezone(UTC).replace(tzinfo=None)
    return naive if pg else naive.strftime("%Y-%m-%d %H:%M:%S.%f")


def _run(conn: Any, pg: bool, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    sql = sql.replace("?", "%s") if pg else sql
    cur = conn.cursor()
    cur.execute(sql, params)
    rows = cur.fetchall()
    cur.close()
    return rows


def _day(pg: bool) -> str:
    return "date_trunc('day', created_at)" if pg else "substr(created_at, 1, 10)"


def _week(pg: bool) -> str:
    return "date_trunc('week', created_at)" if pg else "date(created_at, 'weekday 0', '-6 days')"


def _sums() -> str:
    return "count(*), sum(estimated_cost), sum(actual_cost)"


def _export_baseline(conn: Any, pg: bool) -> int:
    """The same rows and cost lines, selected plainly and written with csv.writer."""
    out = io.StringIO()
    writer = csv.writer(out)
    rows = _run(
        conn,
        pg,
        "SELECT id, agent_id, endpoint, model, operation, status, estimated_cost, actual_cost, "
        "created_at, images, billable_mp_nano, price_book FROM transactions WHERE status IN "
        "('completed', 'unknown') AND created_at >= ? AND created_at < ? ORDER BY id",
        (_ts(MONTH[0], pg), _ts(MONTH[1], pg)),
    )
    writer.writerows(rows)
    writer.writerows(
        _run(
            conn,
            pg,
            "SELECT c.transaction_id, c.amount, c.note, c.created_at FROM cost_lines c "
            "JOIN transactions t ON t.id = c.transaction_id WHERE c.kind = 'adjustment' "
            "AND t.created_at >= ? AND t.created_at < ? ORDER BY c.transaction_id, c.id",
            (_ts(MONTH[0], pg), _ts(MONTH[1], pg)),
        )
    )
    return len(rows)


def _rule_baseline(conn: Any, pg: bool) -> list[Any]:
    """The same figures: denials per rule named, and the per-(agent, endpoint) sums that rules scope."""
    if pg:
        denials = _run(
            conn,
            pg,
            "SELECT d->>'rule', count(*) FROM transactions t CROSS JOIN LATERAL "
            "jsonb_array_elements(t.denial_json::jsonb -> 'denials') d "
            "WHERE t.status = 'denied' GROUP BY 1 ORDER BY 2 DESC",
        )
    else:
        denials = _run(
            conn,
            pg,
            "SELECT json_extract(j.value, '$.rule'), count(*) FROM transactions t, "
            "json_each(t.denial_json, '$.denials') j WHERE t.status = 'denied' "
            "GROUP BY 1 ORDER BY 2 DESC",
        )
    return [denials, _run(conn, pg, f"SELECT agent_id, endpoint, {_sums()} FROM transactions GROUP BY 1, 2")]


def cases(export_dir: Path) -> list[Case]:
    m0, m1 = MONTH
    return [
        Case(
            "summary --period 2026-10",
            lambda r: r.summary(period="2026-10"),
            lambda c, pg: [
                _run(
                    c,
                    pg,
                    f"SELECT status, {_sums()} FROM transactions WHERE created_at >= ? AND "
                    "created_at < ? GROUP BY status",
                    (_ts(a, pg), _ts(b, pg)),
                )
                for a, b in (MONTH, PREVIOUS)
            ],
            lambda s: len(s.by_status),
        ),
        Case(
            "summary (all time)",
            lambda r: r.summary(),
            lambda c, pg: _run(c, pg, f"SELECT status, {_sums()} FROM transactions GROUP BY status"),
            lambda s: len(s.by_status),
        ),
        Case(
            "spend --by agent",
            lambda r: r.spend(["agent"]),
            lambda c, pg: _run(c, pg, f"SELECT agent_id, {_sums()} FROM transactions GROUP BY agent_id"),
            lambda s: len(s.rows),
        ),
        Case(
            "spend --by agent,model,day",
            lambda r: r.spend(["agent", "model", "day"]),
            lambda c, pg: _run(
                c, pg, f"SELECT agent_id, model, {_day(pg)}, {_sums()} FROM transactions GROUP BY 1, 2, 3"
            ),
            lambda s: len(s.rows),
        ),
        Case(
            "spend --by model,week --since 90d",
            lambda r: r.spend(["model", "week"], since=QUARTER_START),
            lambda c, pg: _run(
                c,
                pg,
                f"SELECT model, {_week(pg)}, {_sums()} FROM transactions WHERE created_at >= ? GROUP BY 1, 2",
                (_ts(QUARTER_START, pg),),
            ),
            lambda s: len(s.rows),
        ),
        Case(
            "leaderboard --by agent --top 10",
            lambda r: r.leaderboard("agent", top=10),
            lambda c, pg: _run(
                c, pg, f"SELECT agent_id, {_sums()} FROM transactions GROUP BY agent_id ORDER BY 4 DESC LIMIT 10"
            ),
            lambda s: len(s.entries),
        ),
        Case(
            "leaderboard --by rule", lambda r: r.leaderboard("rule", top=10), _rule_baseline, lambda s: len(s.entries)
        ),
        Case(
            "chart --by day",
            lambda r: r.chart("day"),
            lambda c, pg: _run(c, pg, f"SELECT {_day(pg)}, {_sums()} FROM transactions GROUP BY 1"),
            lambda s: len(s.points),
        ),
        Case(
            "statement --month 2026-10",
            lambda r: r.statement("2026-10"),
            lambda c, pg: [
                _run(
                    c,
                    pg,
                    f"SELECT agent_id, model, {_sums()} FROM transactions WHERE created_at >= ? "
                    "AND created_at < ? GROUP BY 1, 2",
                    (_ts(m0, pg), _ts(m1, pg)),
                ),
                _run(
                    c,
                    pg,
                    "SELECT c.transaction_id, c.amount, c.note FROM cost_lines c JOIN "
                    "transactions t ON t.id = c.transaction_id WHERE c.kind = 'adjustment' AND "
                    "t.created_at >= ? AND t.created_at < ?",
                    (_ts(m0, pg), _ts(m1, pg)),
                ),
            ],
            lambda s: sum(len(a.lines) for a in s.agents),
        ),
        Case(
            "export --focus (2026-10)",
            lambda r: r.export_focus(export_dir / "focus.csv", since=m0, until=m1),
            _export_baseline,
            lambda s: s.rows,
        ),
    ]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench(label: str, url: str, repeat: int, export_dir: Path) -> None:
    from ledger import Ledger

    pg = url.startswith("postgresql")
    target = 1.0 if pg else 2.0
    print(f"\n{label}: {url.split('@')[-1]}")
    print(f"{'report':36s} {'rows':>7s} {'report':>9s} {'baseline':>9s} {'ratio':>6s}  target")
    with Ledger(url) as ledger, _driver(url) as conn:
        reports = ledger.reports
        for case in cases(export_dir):
            case.report(reports)  # warm-up: caches, plans, pages
            case.baseline(conn, pg)
            ours, base = [], []
            result = None
            for _ in range(repeat):
                elapsed, result = timed(lambda: case.report(reports))  # noqa: B023 - called at once
                ours.append(elapsed)
                base.append(timed(lambda: case.baseline(conn, pg))[0])  # noqa: B023
            mine, theirs = statistics.median(ours), statistics.median(base)
            verdict = "ok" if mine <= target and mine <= 2 * theirs else "MISSED"
            print(
                f"{case.name:36s} {case.count(result):>7,d} {mine:>8.3f}s {theirs:>8.3f}s {mine / theirs:>5.2f}x"
                f"  ≤{target:g}s, ≤2x: {verdict}",
                flush=True,
            )


@contextmanager
def _driver(url: str) -> Iterator[Any]:
    if url.startswith("sqlite"):
        lite = sqlite3.connect(url.split(":///", 1)[1])
        try:
            yield lite
        finally:
            lite.close()
        return
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@contextmanager
def pg_store(server: str) -> Iterator[str]:
    """A PostgreSQL database of this run's own, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"pixelgov_bench_reports_{secrets.token_hex(4)}"
    admin = make_url(server).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server).set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="transactions to generate")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pg", default=DEFAULT_PG, help="a PostgreSQL server (its database is only connected to)")
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--sqlite-db", default=None, help="an existing generated SQLite ledger (kept)")
    parser.add_argument("--pg-db", default=None, help="an existing generated PostgreSQL ledger URL (kept)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pixelgov-bench-reports-"))
    print(
        f"finance reports, {args.n:,} transactions generated over 180 days to {DEFAULT_END.date()} "
        f"(median of {args.repeat})"
    )
    try:
        if not args.skip_sqlite:
            url = f"sqlite:///{args.sqlite_db}" if args.sqlite_db else f"sqlite:///{work / 'ledger.db'}"
            if not args.sqlite_db:
                stats = generate(url, args.n)
                print(f"SQLite: generated in {stats.seconds:.0f} s")
            bench("SQLite", url, args.repeat, work)
        if not args.skip_pg:
            if args.pg_db:
                bench("PostgreSQL", args.pg_db, args.repeat, work)
            else:
                with pg_store(args.pg) as url:
                    stats = generate(url, args.n)
                    print(f"PostgreSQL: generated in {stats.seconds:.0f} s")
                    bench("PostgreSQL", url, args.repeat, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
