"""What the gateway adds to a request: governed through `pixelgov serve` vs straight to the upstream.

    python benchmarks/bench_gateway.py [--quick] [--seconds S] [--rate R] [--concurrency C]
                                       [--pg URL | --no-pg]
                                       [--only-db sqlite|postgresql] [--only-layout per-agent|shared]

The fake FAL (tests/fake_fal.py) and the gateway (`pixelgov serve`, one worker, access log on)
run as their own processes on 127.0.0.1; this process is the load generator (asyncio + httpx,
one keep-alive connection per client). One request shape (flux-schnell, landscape_4_3), and on
every governed request a spend-limit and a rate-limit `deny` rule with room to spare, so each
request holds, checks, commits and settles exactly as in production. Two budget layouts:

- per-agent: 16 agents, each with its own spend-limit and rate-limit (requests round-robin);
- shared:    the same 16 agents under one global spend-limit and rate-limit (every
             authorization and settlement locks the same rule rows).

For each database (SQLite file, PostgreSQL) and layout:
- at a fixed open-loop rate (default 100 requests/s): latency p50/p99 of the governed request and
  of the same request sent straight to the fake in the same run; added = governed − direct;
- at saturation (C concurrent closed-loop clients): requests/s through the gateway vs straight,
  and the CPU the gateway worker, the fake and the database used per request (from /proc): what
  limits throughput.

Nothing is asserted; figures are milliseconds (p99: nearest rank).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import httpx
from bench_run import p99, postgres_url

ENDPOINT = "fal-ai/flux/schnell"
BODY = {"prompt": "a red fox in the snow", "image_size": "landscape_4_3"}
SERVER_KEY = "bench-server-key"
AGENTS = 16
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/pixelgov_bench_gateway"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each of these processes (with their threads), from /proc."""
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return found


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two readings by the processes alive at both (a pooled database
    connection closed meanwhile takes its figure with it: the database column is a lower bound)."""
    return sum(after[pid] - before[pid] for pid in before if pid in after)


def postgres_pids(database: str) -> list[int]:
    """The PostgreSQL backends serving `database` (their process title names it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if title.startswith("postgres:") and f" {database} " in title:
                pids.append(int(entry.name))
    return pids


@contextmanager
def process(args: list[str], env: dict[str, str], ready: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A child process; yields it and the first stdout/stderr line containing `ready`."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = ""
    deadline = time.monotonic() + 60
    while ready not in line:
        line = proc.stdout.readline()
        if (not line and proc.poll() is not None) or time.monotonic() > deadline:
            raise RuntimeError(f"{args[:3]} did not start")
    # Keep draining the pipe so the child never blocks on a full buffer.
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        yield proc, line
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def phase(run: Any) -> Any:
    """One measured phase, with this process's cyclic garbage collector paused: a full collection
    among a phase's thousand scheduled requests stopped the load generator itself for 40–70 ms
    about 0.2 s into the phase, which showed as p99 latency of whichever side it hit."""
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(run)
    finally:
        gc.enable()


def prepare(url: str, layout: str) -> list[str]:
    """A migrated, emptied ledger with AGENTS agents and the layout's rules; the agents' keys."""
    from sqlalchemy import text

    from ledger import Ledger, RuleSpec
    from ledger.store.models import Base

    def rule(**fields: Any) -> Any:
        return RuleSpec(**fields, given=set(fields))

    with Ledger(url, migrate=True) as ledger:
        names = ", ".join(t.name for t in Base.metadata.sorted_tables)
        with ledger.engine.begin() as conn:
            if ledger.engine.dialect.name == "postgresql":
                conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            else:
                for table in reversed(Base.metadata.sorted_tables):
                    conn.execute(table.delete())
        keys = [str(ledger.admin.create_agent(f"bench-{i}").api_key) for i in range(AGENTS)]
        if layout == "shared":
            ledger.admin.create_rule(rule(name="shared-budget", type="spend-limit", limit="1000000", period="day"))
            ledger.admin.create_rule(rule(name="shared-rate", type="rate-limit", limit=100_000_000, period="day"))
        else:
            for i in range(AGENTS):
                ledger.admin.create_rule(
                    rule(name=f"budget-{i}", type="spend-limit", limit="1000000", period="day", agent=f"bench-{i}")
                )
                ledger.admin.create_rule(
                    rule(name=f"rate-{i}", type="rate-limit", limit=100_000_000, period="day", agent=f"bench-{i}")
                )
    return keys


def auth(keys: list[str] | None, i: int) -> dict[str, str]:
    """Agent i's key (round robin), or the server's own key for requests straight to the fake."""
    return {"Authorization": f"Key {keys[i % len(keys)] if keys else SERVER_KEY}"}


async def open_loop(
    url: str, path: str, keys: list[str] | None, rate: float, seconds: float
) -> tuple[list[float], int]:
    """Requests at a fixed rate (open loop): each one's latency from its scheduled send time."""
    n = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one(i: int, at: float) -> None:
            nonlocal errors
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            headers = auth(keys, i)
            started = time.perf_counter()
            try:
                r = await client.post(path, json=BODY, headers=headers)
                if r.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            latencies.append((time.perf_counter() - started) * 1000)

        # Warm up the connections and the server's caches first.
        for i in range(20):
            await client.post(path, json=BODY, headers=auth(keys, i))
        start = time.perf_counter() + 0.05
        await asyncio.gather(*(one(i, start + i / rate) for i in range(n)))
    return latencies, errors


async def closed_loop(
    url: str, path: str, keys: list[str] | None, concurrency: int, seconds: float
) -> tuple[int, float, int]:
    """`concurrency` clients sending back to back for `seconds`: (requests done, elapsed, errors)."""
    done = errors = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def worker(w: int) -> None:
            nonlocal done, errors
            i = w
            while time.perf_counter() < stop:
                headers = auth(keys, i)
                try:
                    r = await client.post(path, json=BODY, headers=headers)
                    errors += r.status_code != 200
                except httpx.HTTPError:
                    errors += 1
                done += 1
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return done, time.perf_counter() - started, errors


def fmt(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), p99(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke run)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per phase (default 10; quick 3)")
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop requests/s (default 100)")
    parser.add_argument("--concurrency", type=int, default=16, help="clients at saturation (default 16)")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes (default 1)")
    parser.add_argument(
        "--pg",
        default=os.environ.get("PIXELGOV_BENCH_POSTGRES_URL", DEFAULT_PG),
        help=f"PostgreSQL URL for the benchmark's own database (default {DEFAULT_PG})",
    )
    parser.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--only-db", choices=("sqlite", "postgresql"), help="one database only")
    parser.add_argument("--only-layout", choices=("per-agent", "shared"), help="one budget layout only")
    args = parser.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 10.0)

    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    targets = [] if args.only_db == "postgresql" else [("sqlite", f"sqlite:///{tmp / 'ledger.db'}")]
    if not args.no_pg and args.only_db != "sqlite":
        pg, why = postgres_url(args.pg)
        if pg:
            targets.append(("postgresql", pg))
        else:
            print(f"PostgreSQL skipped: {why}")

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(
        f"{seconds:g} s per phase, open loop at {args.rate:g} requests/s, saturation with {args.concurrency} "
        f"clients, {args.workers} gateway worker(s); {os.cpu_count()} CPU(s), load average "
        f"{os.getloadavg()[0]:.1f} at the start\n"
    )
    rows = []
    with process([sys.executable, str(ROOT / "tests" / "fake_fal.py")], env, "FAKE_FAL_URL=") as (fake, line):
        fake_url = line.strip().split("=", 1)[1]
        for db_name, db_url in targets:
            for layout in (args.only_layout,) if args.only_layout else ("per-agent", "shared"):
                keys = prepare(db_url, layout)
                port = free_port()
                gw_env = {
                    **env,
                    "PIXELGOV_DATABASE_URL": db_url,
                    "PIXELGOV_UPSTREAM_URL": fake_url,
                    "FAL_KEY": SERVER_KEY,
                }
                serve = [
                    sys.executable,
                    "-c",
                    "from pixelgov.cli import main; main()",
                    "serve",
                    "--port",
                    str(port),
                    "--workers",
                    str(args.workers),
                ]
                with process(serve, gw_env, "Uvicorn running") as (gw, _):
                    gw_url = f"http://127.0.0.1:{port}"
                    direct, _e1 = phase(open_loop(fake_url, f"/{ENDPOINT}", None, args.rate, seconds))
                    governed, e2 = phase(open_loop(gw_url, f"/{ENDPOINT}", keys, args.rate, seconds))
                    sat_direct = phase(closed_loop(fake_url, f"/{ENDPOINT}", None, args.concurrency, seconds))
                    pids = {
                        "gateway": [gw.pid, *_threads_children(gw.pid)],  # the workers, with --workers N
                        "fake": [fake.pid],
                        "database": postgres_pids(db_url.rsplit("/", 1)[1]) if db_name == "postgresql" else [],
                    }
                    before = {k: cpu_seconds(v) for k, v in pids.items()}
                    sat = phase(closed_loop(gw_url, f"/{ENDPOINT}", keys, args.concurrency, seconds))
                    cpu = {k: cpu_used(before[k], cpu_seconds(v)) for k, v in pids.items()}
                rows.append((db_name, layout, direct, governed, e2, sat_direct, sat, cpu))

    print("| database | budgets | direct p50 / p99 | governed p50 / p99 | added p50 / p99 | errors |")
    print("|---|---|---|---|---|---|")
    for db_name, layout, direct, governed, errors, *_ in rows:
        d50, d99 = fmt(direct)
        g50, g99 = fmt(governed)
        print(
            f"| {db_name} | {layout} | {d50:.2f} / {d99:.2f} ms | {g50:.2f} / {g99:.2f} ms | "
            f"**{g50 - d50:.2f} / {g99 - d99:.2f} ms** | {errors} |"
        )
    print()
    print(
        "| database | budgets | straight to the fake | through the gateway | gateway CPU per request "
        "| database CPU per request (lower bound) | fake CPU per request |"
    )
    print("|---|---|---|---|---|---|---|")
    for db_name, layout, _d, _g, _e, sat_direct, sat, cpu in rows:
        n, elapsed, errors = sat
        per = 1000 / max(n, 1)
        print(
            f"| {db_name} | {layout} | {sat_direct[0] / sat_direct[1]:.0f}/s | **{n / elapsed:.0f}/s** "
            f"({errors} errors) | {cpu['gateway'] * per:.2f} ms ({cpu['gateway'] / elapsed:.0%} of a core) | "
            f"{cpu['database'] * per:.2f} ms | {cpu['fake'] * per:.2f} ms |"
        )
    return 0


def _threads_children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(int(p.name)) == pid]


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


if __name__ == "__main__":
    sys.exit(main())
