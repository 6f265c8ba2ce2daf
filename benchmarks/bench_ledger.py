"""Benchmarks of the governed hot path (authorize + settle) against the floor the database sets.

    python benchmarks/bench_ledger.py [--quick] [--pg URL] [--skip-pg] [--rows N]

a. governed authorize + settle per second with three matching rules (a daily spend-limit, a
   rolling 24h spend-limit and a daily rate-limit, limits so large that nothing is denied),
   one client, next to a hand-written baseline measured in the same run: the same rows and
   the same counter updates through the plain driver (sqlite3 / psycopg), no SQLAlchemy and no
   rule engine. Rounds of both alternate so a noisy neighbour hits both alike.
b. authorize latency (median, p99) on an empty ledger and on one holding 1,000,000 prior
   transactions (100,000 with --quick), bulk-loaded with the raw driver over the past 60 days
   and ten agents, with their holds and counters, so the counters stay exact.
c. PostgreSQL throughput with 8 concurrent client processes (each its own agent and rules,
   plus one rule shared by all), next to one client process under the same setup.

Dedicated stores only: a SQLite file in a temporary directory and the PostgreSQL databases
`pixelgov_bench` and `pixelgov_bench_big` (created if missing; their schema is dropped and
rebuilt with `ledger.store.db.upgrade`) — never the test suite's database. Prints figures, asserts
nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger import Ledger, Settings
from ledger.policy.governor import Governor
from ledger.policy.requests import request_hash
from ledger.policy.rules import RuleSpec
from ledger.store import db as ledger_db
from pricing import quote
from pricing.money import to_nano

ENDPOINT = "fal-ai/flux/dev"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/pixelgov_bench"
HUGE_USD = "1000000000"
HUGE_COUNT = "2000000000"
HOUR, DAY = 3600, 86400

# --- stores ---------------------------------------------------------------------------------


def pg_dsn(url: str) -> str:
    _scheme, rest = url.split("://", 1)
    return "postgresql://" + rest


def with_dbname(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


def dbname(url: str) -> str:
    return url.partition("?")[0].rpartition("/")[2]


def ensure_pg_database(url: str) -> None:
    import psycopg

    name = dbname(url)
    with psycopg.connect(pg_dsn(with_dbname(url, "postgres")), autocommit=True, connect_timeout=5) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')


def fresh_store(url: str) -> None:
    """An empty, migrated ledger at `url` (a file removed, or a schema dropped and rebuilt)."""
    forget(url)
    if url.startswith("sqlite"):
        path = Path(url.split(":///", 1)[1])
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    else:
        import psycopg

        ensure_pg_database(url)
        with psycopg.connect(pg_dsn(url), autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
            conn.execute("CREATE SCHEMA public")
    ledger_db.upgrade(url)


def forget(url: str) -> None:
    """Dispose the engines this benchmark opened on `url`."""
    for opened in _OPENED.pop(url, []):
        opened.close()


_OPENED: dict[str, list[Ledger]] = {}


def open_ledger(url: str) -> Ledger:
    """A Ledger on `url` with a one-hour hold TTL and no agents created on first use."""
    opened = Ledger(url, settings=Settings(hold_ttl=3600, auto_create_agents=False))
    _OPENED.setdefault(url, []).append(opened)
    return opened


def setup_rules(url: str, agents: list[str], *, shared_window: bool = True, per_agent: bool = False) -> dict[str, Any]:
    """Agents and three matching rules with limits nothing reaches. Returns their ids."""
    admin = open_ledger(url).admin
    ids: dict[str, Any] = {"agents": {}, "rules": []}
    for name in agents:
        ids["agents"][name] = admin.create_agent(name, with_key=False).id
    given = {"name", "type", "limit", "period", "agent"}
    scopes = agents if per_agent else [None]
    for scope in scopes:
        suffix = f"-{scope}" if scope else ""
        ids["rules"].append(
            (
                admin.create_rule(
                    RuleSpec(
                        name=f"daily{suffix}",
                        type="spend-limit",
                        limit=HUGE_USD,
                        period="day",
                        agent=scope,
                        given=given,
                    )
                ).id,
                "day",
            )
        )
        if not per_agent:
            ids["rules"].append(
                (
                    admin.create_rule(
                        RuleSpec(
                            name="rolling-24h",
                            type="spend-limit",
                            limit=HUGE_USD,
                            window="24h",
                            given={"name", "type", "limit", "window"},
                        )
                    ).id,
                    "window",
                )
            )
        ids["rules"].append(
            (
                admin.create_rule(
                    RuleSpec(
                        name=f"rate{suffix}",
                        type="rate-limit",
                        limit=HUGE_COUNT,
                        period="day",
                        agent=scope,
                        given=given,
                    )
                ).id,
                "day",
            )
        )
    if per_agent and shared_window:
        ids["rules"].append(
            (
                admin.create_rule(
                    RuleSpec(
                        name="shared-rolling-24h",
                        type="spend-limit",
                        limit=HUGE_USD,
                        window="24h",
                        given={"name", "type", "limit", "window"},
                    )
                ).id,
                "window",
            )
        )
    ids["rules"].sort()
    return ids


def bucket_of(kind: str, epoch: int) -> int:
    return epoch - epoch % (DAY if kind == "day" else HOUR)  # a 24h window counts hourly buckets


# --- a. governed vs. hand-written baseline ---------------------------------------------------


def governed_round(gov: Governor, agent: str, q: Any, n: int) -> float:
    body: dict[str, Any] = {}
    t0 = time.perf_counter()
    for _ in range(n):
        auth = gov.authorize(agent, q, body)
        if not auth.allowed:
            raise RuntimeError(f"benchmark misconfigured: denied {auth.transaction.denial}")
        gov.settle(auth.transaction.id, q.amount)
    return n / (time.perf_counter() - t0)


class Baseline:
    """The same rows and counter updates as one governed authorize + settle, with plain driver calls."""

    def __init__(self, url: str, agent_id: int, rules: list[tuple[int, str]], q: Any) -> None:
        self.pg = not url.startswith("sqlite")
        self.agent_id, self.rules = agent_id, rules
        self.est = to_nano(q.amount)
        self.q = q
        self.request_json = json.dumps({})
        self.digest = request_hash(q.endpoint, {})
        if self.pg:
            import psycopg

            self.conn = psycopg.connect(pg_dsn(url))
            self.p = "%s"
        else:
            self.conn = sqlite3.connect(url.split(":///", 1)[1], isolation_level=None, timeout=10)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.p = "?"
        p = self.p
        k = len(rules)
        self.sql_tx = (
            "INSERT INTO transactions (agent_id, endpoint, model, operation, request_json, request_hash, "
            "price_book, estimated_cost, status, created_at) "
            f"VALUES ({', '.join([p] * 10)}) RETURNING id"
        )
        self.sql_line = f"INSERT INTO cost_lines (transaction_id, kind, amount, created_at) VALUES ({p}, {p}, {p}, {p})"
        self.sql_counters = (
            "INSERT INTO rule_counters (rule_id, bucket, spent, held, requests) VALUES "
            + ", ".join([f"({p}, {p}, 0, {p}, 1)"] * k)
            + " ON CONFLICT (rule_id, bucket) DO UPDATE SET held = rule_counters.held + excluded.held,"
            " requests = rule_counters.requests + excluded.requests"
        )
        self.sql_holds = "INSERT INTO holds (transaction_id, rule_id, bucket) VALUES " + ", ".join(
            [f"({p}, {p}, {p})"] * k
        )
        self.sql_settle = (
            f"UPDATE transactions SET status = 'completed', actual_cost = {p}, completed_at = {p} "
            f"WHERE id = {p} AND status = 'pending'"
        )
        self.sql_release = (
            f"UPDATE rule_counters SET held = held - {p}, spent = spent + {p} "
            "WHERE (rule_id, bucket) IN (" + ", ".join([f"({p}, {p})"] * k) + ")"
        )

    def ts(self, now: datetime) -> Any:
        naive = now.replace(tzinfo=None)
        return naive if self.pg else naive.strftime("%Y-%m-%d %H:%M:%S.%f")

    def begin(self, cur: Any) -> None:
        if not self.pg:
            cur.execute("BEGIN IMMEDIATE")

    def one(self) -> None:
        conn, q = self.conn, self.q
        cur = conn.cursor()
        now = datetime.now(UTC)
        ts, epoch = self.ts(now), int(now.timestamp())
        keys = [(rid, bucket_of(kind, epoch)) for rid, kind in self.rules]
        self.begin(cur)
        tx_id = cur.execute(
            self.sql_tx,
            (
                self.agent_id,
                q.endpoint,
                q.model,
                q.operation,
                self.request_json,
                self.digest,
                q.price_book,
                self.est,
                "pending",
                ts,
            ),
        ).fetchone()[0]
        cur.execute(self.sql_line, (tx_id, "estimate", self.est, ts))
        cur.execute(self.sql_counters, [v for rid, b in keys for v in (rid, b, self.est)])
        cur.execute(self.sql_holds, [v for rid, b in keys for v in (tx_id, rid, b)])
        conn.commit() if self.pg else cur.execute("COMMIT")
        now = datetime.now(UTC)
        ts = self.ts(now)
        self.begin(cur)
        cur.execute(self.sql_settle, (self.est, ts, tx_id))
        cur.execute(self.sql_line, (tx_id, "actual", self.est, ts))
        cur.execute(self.sql_release, [self.est, self.est, *[v for key in keys for v in key]])
        conn.commit() if self.pg else cur.execute("COMMIT")

    def round(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            self.one()
        return n / (time.perf_counter() - t0)

    def close(self) -> None:
        self.conn.close()


def bench_throughput(url: str, label: str, n: int, rounds: int) -> dict[str, float]:
    fresh_store(url)
    ids = setup_rules(url, ["bench", "baseline"])
    q = quote(ENDPOINT, {})
    gov = open_ledger(url).governor
    base = Baseline(url, ids["agents"]["baseline"], ids["rules"], q)
    governed_round(gov, "bench", q, max(50, n // 10))  # warm up: caches, prepared statements
    base.round(max(50, n // 10))
    g, b = [], []
    for i in range(rounds):  # alternate, and pair each governed round with the baseline round next to it
        if i % 2:
            g.append(governed_round(gov, "bench", q, n))
            b.append(base.round(n))
        else:
            b.append(base.round(n))
            g.append(governed_round(gov, "bench", q, n))
    base.close()
    forget(url)
    gm, bm = statistics.median(g), statistics.median(b)
    ratio = statistics.median(x / y for x, y in zip(g, b))
    print(
        f"  {label:<11} governed {gm:7.0f} ops/s   baseline {bm:7.0f} ops/s   ratio {ratio:6.1%}  "
        f"(median of {rounds} paired rounds of {n})"
    )
    print(f"  {'':<11} rounds: governed {' '.join(f'{x:.0f}' for x in g)}")
    print(f"  {'':<11}         baseline {' '.join(f'{x:.0f}' for x in b)}")
    return {"governed": gm, "baseline": bm, "ratio": ratio}


# --- b. latency with an empty ledger and with a large one ------------------------------------

STATUS_MIX = (("completed", 85), ("failed", 5), ("voided", 3), ("expired", 2), ("denied", 5))


def history(rows: int, agent_ids: list[int], rules: list[tuple[int, str]], now: datetime, first_id: int):
    """Prior transactions over the past 60 days, with their cost lines, holds and counters.

    Yields ("tx"|"line"|"hold", row) batches; returns the counters through `counters`."""
    rng = random.Random(42)
    q_small, q_big = quote(ENDPOINT, {}), quote(ENDPOINT, {"num_images": 2})
    ests = [to_nano(q_small.amount), to_nano(q_big.amount)]
    statuses = [s for s, w in STATUS_MIX for _ in range(w)]
    start = int(now.timestamp()) - 60 * DAY
    span = 60 * DAY - 2 * 3600  # nothing in the last two hours: no hold is pending or stale
    times = sorted(start + rng.randrange(span) for _ in range(rows))
    counters: dict[tuple[int, int], list[int]] = {}
    txs, lines, holds = [], [], []
    digest = request_hash(ENDPOINT, {})
    for i, epoch in enumerate(times):
        tx_id = first_id + i
        est = ests[rng.random() < 0.2]
        status = statuses[rng.randrange(len(statuses))]
        created = datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)
        done = created + timedelta(seconds=5)
        actual = None
        if status == "completed":
            actual = est if rng.random() < 0.9 else est // 2
        denial = (
            json.dumps({"rule": "daily", "type": "spend-limit", "reason": "bench history"})
            if status == "denied"
            else None
        )
        txs.append(
            (
                tx_id,
                agent_ids[i % len(agent_ids)],
                ENDPOINT,
                ENDPOINT,
                "generate",
                "{}",
                digest,
                q_small.price_book,
                est,
                actual,
                status,
                denial,
                created,
                None if status == "denied" else done,
            )
        )
        if status != "denied":
            lines.append((tx_id, "estimate", est, created))
            if actual is not None:
                lines.append((tx_id, "actual", actual, done))
            for rid, kind in rules:
                bucket = bucket_of(kind, epoch)
                holds.append((tx_id, rid, bucket))
                c = counters.setdefault((rid, bucket), [0, 0, 0])
                c[0] += actual or 0  # spent; nothing is pending or unknown in the history
                c[2] += 1
    return txs, lines, holds, counters


TX_COLS = (
    "id",
    "agent_id",
    "endpoint",
    "model",
    "operation",
    "request_json",
    "request_hash",
    "price_book",
    "estimated_cost",
    "actual_cost",
    "status",
    "denial_json",
    "created_at",
    "completed_at",
)


def bulk_load(url: str, rows: int, agent_ids: list[int], rules: list[tuple[int, str]]) -> float:
    t0 = time.perf_counter()
    now = datetime.now(UTC)
    forget(url)
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.split(":///", 1)[1], isolation_level=None)
        first = (conn.execute("SELECT COALESCE(MAX(id), 0) FROM transactions").fetchone()[0]) + 1
        txs, lines, holds, counters = history(rows, agent_ids, rules, now, first)
        fmt = "%Y-%m-%d %H:%M:%S.%f"
        txs = [(*t[:12], t[12].strftime(fmt), t[13].strftime(fmt) if t[13] else None) for t in txs]
        lines = [(*line[:3], line[3].strftime(fmt)) for line in lines]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            f"INSERT INTO transactions ({', '.join(TX_COLS)}) VALUES ({', '.join('?' * len(TX_COLS))})", txs
        )
        conn.executemany("INSERT INTO cost_lines (transaction_id, kind, amount, created_at) VALUES (?, ?, ?, ?)", lines)
        conn.executemany("INSERT INTO holds (transaction_id, rule_id, bucket) VALUES (?, ?, ?)", holds)
        conn.executemany(
            "INSERT INTO rule_counters (rule_id, bucket, spent, held, requests) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (rule_id, bucket) DO UPDATE SET spent = spent + excluded.spent, "
            "held = held + excluded.held, requests = requests + excluded.requests",
            [(r, b, *c) for (r, b), c in counters.items()],
        )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    else:
        import psycopg

        with psycopg.connect(pg_dsn(url)) as conn:
            first = conn.execute("SELECT COALESCE(MAX(id), 0) FROM transactions").fetchone()[0] + 1
            txs, lines, holds, counters = history(rows, agent_ids, rules, now, first)
            with conn.cursor() as cur:
                with cur.copy(f"COPY transactions ({', '.join(TX_COLS)}) FROM STDIN") as copy:
                    for t in txs:
                        copy.write_row(t)
                with cur.copy("COPY cost_lines (transaction_id, kind, amount, created_at) FROM STDIN") as copy:
                    for line in lines:
                        copy.write_row(line)
                with cur.copy("COPY holds (transaction_id, rule_id, bucket) FROM STDIN") as copy:
                    for h in holds:
                        copy.write_row(h)
                cur.executemany(
                    "INSERT INTO rule_counters (rule_id, bucket, spent, held, requests) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (rule_id, bucket) DO UPDATE SET "
                    "spent = rule_counters.spent + excluded.spent, held = rule_counters.held + "
                    "excluded.held, requests = rule_counters.requests + excluded.requests",
                    [(r, b, *c) for (r, b), c in counters.items()],
                )
                for table in ("transactions", "cost_lines"):
                    cur.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
                    )
            conn.commit()
            conn.autocommit = True
            conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - t0


def latency_round(gov: Governor, agent: str, q: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        auth = gov.authorize(agent, q, {})
        out.append(time.perf_counter() - t0)
        gov.settle(auth.transaction.id, q.amount)  # untimed: keeps the ledger in a steady state
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def bench_latency(url_empty: str, url_big: str, label: str, rows: int, n: int, rounds: int) -> None:
    agents = [f"agent-{i}" for i in range(10)]
    fresh_store(url_empty)
    setup_rules(url_empty, agents)
    fresh_store(url_big)
    ids = setup_rules(url_big, agents)
    took = bulk_load(url_big, rows, list(ids["agents"].values()), ids["rules"])
    with open_ledger(url_big).engine.connect() as conn:
        from sqlalchemy import text

        counts = {
            t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one()
            for t in ("transactions", "cost_lines", "holds", "rule_counters")
        }
    print(f"  {label}: loaded {', '.join(f'{v:,} {k}' for k, v in counts.items())} in {took:.1f}s")
    q = quote(ENDPOINT, {})
    govs = {name: open_ledger(u).governor for name, u in (("empty", url_empty), ("big", url_big))}
    samples: dict[str, list[float]] = {"empty": [], "big": []}
    for gov in govs.values():
        latency_round(gov, "agent-0", q, max(30, n // 10))  # warm up
    for _ in range(rounds):  # alternate so both see the same background load
        for name, gov in govs.items():
            samples[name].extend(latency_round(gov, "agent-0", q, n // rounds))
    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    p99 = {k: pct(v, 99) * 1000 for k, v in samples.items()}
    print(f"  {label:<11} authorize, 0 prior:        median {med['empty']:6.2f} ms   p99 {p99['empty']:6.2f} ms")
    print(f"  {label:<11} authorize, {rows:,} prior: median {med['big']:6.2f} ms   p99 {p99['big']:6.2f} ms")
    print(
        f"  {label:<11} ratio (large / empty):     median {med['big'] / med['empty']:5.2f}x   "
        f"p99 {p99['big'] / p99['empty']:5.2f}x"
    )
    forget(url_empty)
    forget(url_big)


# --- c. concurrent clients on PostgreSQL -----------------------------------------------------


def client(url: str, agent: str, seconds: float, barrier: Any, results: Any) -> None:
    try:
        gov = open_ledger(url).governor
        q = quote(ENDPOINT, {})
        governed_round(gov, agent, q, 20)  # warm up
        barrier.wait(timeout=120)
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            auth = gov.authorize(agent, q, {})
            if not auth.allowed:
                raise RuntimeError(f"benchmark misconfigured: denied {auth.transaction.denial}")
            gov.settle(auth.transaction.id, q.amount)
            done += 1
        results.put(("ok", done, time.perf_counter() - t0))
    except BaseException as exc:
        results.put(("error", repr(exc), 0.0))


def run_clients(url: str, clients: int, seconds: float) -> float:
    fresh_store(url)
    agents = [f"client-{i}" for i in range(clients)]
    setup_rules(url, agents, per_agent=True, shared_window=True)
    forget(url)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(clients), ctx.Queue()
    procs = [ctx.Process(target=client, args=(url, a, seconds, barrier, results)) for a in agents]
    for p in procs:
        p.start()
    got = [results.get(timeout=seconds + 180) for _ in procs]
    for p in procs:
        p.join()
    errors = [g[1] for g in got if g[0] != "ok"]
    if errors:
        print(f"  client errors: {errors}")
    return sum(g[1] for g in got if g[0] == "ok") / max(g[2] for g in got if g[0] == "ok")


def bench_concurrency(url: str, seconds: float) -> None:
    single = run_clients(url, 1, seconds)
    many = run_clients(url, 8, seconds)
    print(f"  postgresql  1 client process:  {single:8.0f} ops/s")
    print(
        f"  postgresql  8 client processes: {many:8.0f} ops/s   ({many / single:.2f}x one client; "
        f"{os.cpu_count()} cores; 3 rules per request, one of them shared by all 8 agents)"
    )


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations and 100,000 prior rows")
    parser.add_argument(
        "--pg",
        default=os.environ.get("PIXELGOV_BENCH_POSTGRES_URL", DEFAULT_PG),
        help=f"a PostgreSQL URL for a dedicated benchmark database (default {DEFAULT_PG})",
    )
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument("--rows", type=int, default=None, help="prior transactions for the latency run")
    parser.add_argument("--only", choices=("a", "b", "c"), action="append", help="run only these parts")
    args = parser.parse_args()
    parts = set(args.only or ("a", "b", "c"))
    n, rounds = (150, 6) if args.quick else (300, 12)
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    lat_n = 300 if args.quick else 1000
    seconds = 5.0 if args.quick else 10.0
    pg = (
        None
        if args.skip_pg
        else (
            args.pg if "+" in args.pg.split("://")[0] else args.pg.replace("postgresql://", "postgresql+psycopg://", 1)
        )
    )
    tmp = Path(tempfile.mkdtemp(prefix="pixelgov-bench-"))
    sqlite_url = f"sqlite:///{tmp / 'bench.db'}"
    print(
        f"pixelgov ledger benchmark — python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} cores, {'quick' if args.quick else 'full'} run"
    )
    test_db = dbname(os.environ.get("PIXELGOV_TEST_POSTGRES_URL", "postgresql://127.0.0.1/test"))
    if pg and dbname(pg) in (test_db, "test", "postgres"):
        print(f"refusing to use the database {dbname(pg)!r} (its schema would be dropped): give --pg a dedicated one")
        pg = None
    if pg:
        try:
            ensure_pg_database(pg)
            ensure_pg_database(with_dbname(pg, dbname(pg) + "_big"))
        except Exception as exc:
            print(f"PostgreSQL at {pg} unreachable ({type(exc).__name__}: {exc}); skipping PostgreSQL")
            pg = None
    try:
        if "a" in parts:
            print(
                "\na. authorize + settle per second, 3 matching rules, 1 client; hand-written driver baseline alongside"
            )
            sq = bench_throughput(sqlite_url, "sqlite", n, rounds)
            print(f"     sqlite target ≥ 25% of baseline: {'met' if sq['ratio'] >= 0.25 else 'NOT met'}")
            if pg:
                pq = bench_throughput(pg, "postgresql", n, rounds)
                print(f"     postgresql target ≥ 50% of baseline: {'met' if pq['ratio'] >= 0.5 else 'NOT met'}")
        if "b" in parts:
            print(f"\nb. authorize latency, empty ledger vs. {rows:,} prior transactions ({lat_n} each, alternating)")
            bench_latency(sqlite_url, f"sqlite:///{tmp / 'bench_big.db'}", "sqlite", rows, lat_n, 4)
            if pg:
                bench_latency(pg, with_dbname(pg, dbname(pg) + "_big"), "postgresql", rows, lat_n, 4)
        if "c" in parts and pg:
            print(f"\nc. concurrent clients on PostgreSQL, authorize + settle for {seconds:.0f}s")
            bench_concurrency(pg, seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
