"""What governance costs per request: a governed run minus the upstream's own time.

    python benchmarks/bench_run.py [--quick] [--n N] [--cli-n N] [--pg URL | --no-pg]

Against the fake FAL server (tests/fake_fal.py, started in this process), one request
shape (flux-dev, landscape_4_3), with two `deny` rules in scope (a spend-limit and a
rate-limit, both with room to spare) so every run reads, locks and moves rule counters:

- baseline: a bare httpx POST to the same fake endpoint, same body and headers;
- (a) in process: `run_governed` on a SQLite file (and PostgreSQL when reachable);
      overhead = the run's wall time − the upstream latency the runner itself measured
      (its `latency_ms` fact), per request; also median(run) − median(bare POST);
- (b) the CLI: `pixelgov run …` as a subprocess; overhead = wall time − `latency_ms`;
      the bare interpreter start (`python -c "import click, pydantic"`) is printed
      beside it (and with sqlalchemy and httpx too): most of a CLI call is starting Python.

Figures are medians and p99 (nearest rank) in milliseconds. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import httpx
from fake_fal import FakeFal

ENDPOINT = "fal-ai/flux/dev"
BODY = {"prompt": "a red fox in the snow", "image_size": "landscape_4_3"}
FAL_KEY = "bench-key"
AGENT = "bench"
PIXELGOV = Path(sys.executable).with_name("pixelgov")
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/pixelgov_bench"


# --- statistics ------------------------------------------------------------------------------


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-99 * len(ordered) // 100) - 1)]  # nearest rank


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return (time.perf_counter() - started) * 1000, value


# --- the ledger ------------------------------------------------------------------------------


def prepare_ledger(url: str) -> None:
    """A migrated, empty ledger with the two rules every run is checked against."""
    from sqlalchemy import text

    from ledger import Ledger, RuleSpec
    from ledger.store.models import Base

    with Ledger(url, migrate=True) as ledger:
        if ledger.engine.dialect.name == "postgresql":
            names = ", ".join(t.name for t in Base.metadata.sorted_tables)
            with ledger.engine.begin() as conn:
                conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        ledger.admin.create_rule(
            RuleSpec(
                name="bench-budget",
                type="spend-limit",
                limit="1000000",
                period="day",
                given={"name", "type", "limit", "period"},
            )
        )
        ledger.admin.create_rule(
            RuleSpec(
                name="bench-rate",
                type="rate-limit",
                limit="100000000",
                period="day",
                given={"name", "type", "limit", "period"},
            )
        )


def postgres_url(requested: str) -> tuple[str | None, str]:
    """The benchmark's own PostgreSQL database (created if missing), or None and why not."""
    import psycopg

    dsn = requested.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return requested, ""
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            return None, f"unreachable ({str(exc).strip().splitlines()[0]})"
    server, _, name = dsn.rpartition("/")
    try:
        with psycopg.connect(f"{server}/postgres", connect_timeout=3, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return requested, ""
    except Exception as exc:
        return None, f"cannot create database {name!r} ({type(exc).__name__})"


def latencies(url: str, ids: list[int]) -> dict[int, float]:
    """The upstream latency the runner recorded for each transaction (its `latency_ms` fact)."""
    from sqlalchemy import select

    from ledger import Ledger
    from ledger.store.models import facts

    with Ledger(url) as ledger, ledger.engine.connect() as conn:
        rows = conn.execute(
            select(facts.c.transaction_id, facts.c.value).where(
                facts.c.key == "latency_ms", facts.c.transaction_id.in_(ids)
            )
        )
        return {r[0]: float(r[1]) for r in rows}


# --- the measurements ------------------------------------------------------------------------


def bench_bare(fake: FakeFal, n: int) -> list[float]:
    headers = {
        "Authorization": f"Key {FAL_KEY}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": "pixelgov/0.1",
    }
    times = []
    with httpx.Client(timeout=30) as client:
        for i in range(n + 3):
            ms, response = timed(lambda: client.post(f"{fake.url}/{ENDPOINT}", json=BODY, headers=headers))
            response.raise_for_status()
            response.json()
            if i >= 3:  # warm-up
                times.append(ms)
    return times


def bench_in_process(fake: FakeFal, url: str, n: int) -> tuple[list[float], list[float]]:
    """(wall ms per run, overhead ms per run = wall − the runner's own upstream latency)."""
    from ledger import Ledger
    from ledger.forward.runner import run_governed
    from ledger.forward.upstream import Upstream, UpstreamConfig

    prepare_ledger(url)
    ledger = Ledger(url)
    gov = ledger.governor
    walls: dict[int, float] = {}
    with Upstream(UpstreamConfig(url=fake.url, timeout=30)) as upstream:
        for i in range(n + 3):

            def one() -> Any:
                # quoting is part of governance: priced from the request as given, every time
                return run_governed(
                    gov, upstream, agent=AGENT, quote=ledger.quote(ENDPOINT, BODY), body=BODY, fal_key=FAL_KEY
                )

            ms, outcome = timed(one)
            assert outcome.transaction.status == "completed", outcome.transaction
            if i >= 3:
                walls[outcome.transaction.id] = ms
    ledger.close()
    upstream_ms = latencies(url, list(walls))
    return list(walls.values()), [walls[i] - upstream_ms[i] for i in walls]


def bench_cli(fake: FakeFal, url: str, n: int) -> tuple[list[float], list[float]]:
    import json

    prepare_ledger(url)
    env = {**os.environ, "FAL_KEY": FAL_KEY, "PIXELGOV_UPSTREAM_URL": fake.url}
    args = [
        str(PIXELGOV),
        "--db",
        url,
        "run",
        ENDPOINT,
        "--agent",
        AGENT,
        "--prompt",
        BODY["prompt"],
        "--image-size",
        BODY["image_size"],
        "--format",
        "json",
    ]
    walls: dict[int, float] = {}
    for i in range(n + 1):
        ms, done = timed(lambda: subprocess.run(args, env=env, capture_output=True, text=True))
        if done.returncode != 0:
            raise SystemExit(f"pixelgov run failed ({done.returncode}): {done.stdout}{done.stderr}")
        if i >= 1:
            walls[json.loads(done.stdout)["transaction"]["id"]] = ms
    upstream_ms = latencies(url, list(walls))
    return list(walls.values()), [walls[i] - upstream_ms[i] for i in walls]


def bench_python_start(n: int, imports: str) -> list[float]:
    times = []
    for _ in range(n):
        ms, _ = timed(lambda: subprocess.run([sys.executable, "-c", f"import {imports}"], check=True))
        times.append(ms)
    return times


# --- report ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--n", type=int, default=None, help="in-process requests per database (default 300; quick 40)")
    parser.add_argument("--cli-n", type=int, default=None, help="CLI invocations (default 30; quick 6)")
    parser.add_argument(
        "--pg",
        default=os.environ.get("PIXELGOV_BENCH_POSTGRES_URL", DEFAULT_PG),
        help=f"PostgreSQL URL for the benchmark's own database (default {DEFAULT_PG})",
    )
    parser.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    args = parser.parse_args(argv)
    n = args.n or (40 if args.quick else 300)
    cli_n = args.cli_n or (6 if args.quick else 30)

    rows: list[tuple[str, int, float, float, float, float]] = []
    notes: list[str] = []
    with FakeFal() as fake, tempfile.TemporaryDirectory(prefix="pixelgov-bench-") as tmp:
        os.environ["XDG_DATA_HOME"] = tmp  # never the user's own ledger
        bare = bench_bare(fake, n)
        bare_med = statistics.median(bare)
        rows.append(("bare httpx POST (baseline)", len(bare), bare_med, bare_med, 0.0, 0.0))

        targets = [("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}")]
        if args.no_pg:
            notes.append("PostgreSQL: skipped (--no-pg)")
        else:
            pg, why = postgres_url(args.pg)
            if pg:
                targets.append(("postgresql", pg))
            else:
                notes.append(f"PostgreSQL: skipped, {args.pg} {why}")

        for name, url in targets:
            walls, overheads = bench_in_process(fake, url, n)
            upstream = [w - o for w, o in zip(walls, overheads)]
            rows.append(
                (
                    f"(a) run_governed, {name}",
                    len(walls),
                    statistics.median(walls),
                    statistics.median(upstream),
                    statistics.median(overheads),
                    p99(overheads),
                )
            )
            notes.append(f"(a) {name}: median(run) - median(bare POST) = {statistics.median(walls) - bare_med:.2f} ms")

        cli_url = f"sqlite:///{Path(tmp) / 'bench-cli.db'}"
        walls, overheads = bench_cli(fake, cli_url, cli_n)
        upstream = [w - o for w, o in zip(walls, overheads)]
        rows.append(
            (
                "(b) pixelgov run (CLI), sqlite",
                len(walls),
                statistics.median(walls),
                statistics.median(upstream),
                statistics.median(overheads),
                p99(overheads),
            )
        )
        for imports in ("click, pydantic", "click, pydantic, sqlalchemy, httpx"):
            start = bench_python_start(max(5, cli_n // 2), imports)
            rows.append(
                (
                    f'python -c "import {imports}"',
                    len(start),
                    statistics.median(start),
                    0.0,
                    statistics.median(start),
                    p99(start),
                )
            )

    print(
        f"pixelgov governance overhead per request — {ENDPOINT}, fake FAL on 127.0.0.1, "
        f"2 deny rules in scope, Python {sys.version.split()[0]}"
    )
    header = ("scenario", "n", "total med", "upstream med", "overhead med", "overhead p99")
    widths = [max(len(header[0]), *(len(r[0]) for r in rows)), 5, 10, 13, 13, 13]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    print("  ".join("-" * w for w in widths))
    for name, count, total, up, over, over99 in rows:
        cells = [name.ljust(widths[0]), str(count).rjust(widths[1])]
        cells += [f"{v:.2f}".rjust(w) for v, w in zip((total, up, over, over99), widths[2:])]
        print("  ".join(cells))
    print(
        "(milliseconds; overhead = total - the upstream latency the runner measured for that request;\n"
        " the python rows are bare interpreter starts with the CLI's dependencies, for context)"
    )
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
