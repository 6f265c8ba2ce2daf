"""Fill a pixelgov database with realistic ledger data at any size, fast.

    python benchmarks/gen_ledger.py --db URL --transactions 1000000 [--agents 50] [--days 180]
                                    [--end 2026-11-25] [--seed 1]

The database is migrated first and must hold no transactions. What it writes:
- agents with skewed volumes (Zipf-like: the busiest agent makes ~20% of the requests,
  the quietest a handful), and a dozen spending rules that the denials name;
- transactions over `--days` days ending at `--end`, growing over time, on every endpoint of
  the default price book (every generate model and its alias, their image-to-image transforms,
  the upscaler) at realistic sizes and image counts, in every status: mostly completed, some
  denied (naming one or two rules), failed, expired, voided and unknown, and pending holds in
  the last minutes only;
- the cost lines the governor writes (an estimate for every authorized transaction, an actual
  for every completed one; actuals differ from estimates for ~15%: fewer images returned or a
  larger size), adjustments on ~1.2% of completed transactions (credits, a few larger than
  the charge, and corrections upwards) with notes, and the facts `output_sizes` / `variance`;
- `images` and `billable_mp_nano` as priced, as the governor records them.

Rows go straight to the driver (sqlite3 `executemany` in one transaction; PostgreSQL `COPY`),
in chunks, so a million transactions take a minute or two and bounded memory. Rule counters
and holds are not written: this is history for reports, not a live budget.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pricing import default_book, quote
from pricing.money import to_nano

CHUNK = 50_000
HOLD_TTL = 900
DEFAULT_END = datetime(2026, 11, 25, tzinfo=UTC)

#: (endpoint, weight) of generate endpoints; each also gets an image-to-image transform.
GENERATE = [
    ("fal-ai/flux/schnell", 30),
    ("fal-ai/flux/dev", 35),
    ("fal-ai/flux-pro", 8),
    ("fal-ai/stable-diffusion-xl", 10),
    ("fal-ai/fast-sdxl", 4),
]
SIZES = [
    ("landscape_4_3", 40),
    ("square_hd", 25),
    ("portrait_4_3", 10),
    ("landscape_16_9", 10),
    ("portrait_16_9", 5),
    ("square", 5),
    ({"width": 1280, "height": 720}, 5),
]
COUNTS = [(1, 60), (2, 20), (3, 5), (4, 15)]
TRANSFORM_SHARE = 0.08
UPSCALE = "fal-ai/topaz/upscale/image"
UPSCALE_SHARE = 0.05
UPSCALE_INPUTS = [((1024, 768), 40), ((1024, 1024), 30), ((512, 512), 20), ((1920, 1080), 10)]
STATUSES = [("completed", 830), ("denied", 60), ("failed", 40), ("expired", 30), ("voided", 20), ("unknown", 20)]
RULES = [
    ("global-daily", "spend-limit", "day"),
    ("global-monthly", "spend-limit", "month"),
    ("burst", "rate-limit", "minute"),
    ("pro-cap", "request-cap", None),
    ("flux-only", "model-allowlist", None),
    ("hourly-spend", "spend-limit", "hour"),
    ("weekly-spend", "spend-limit", "week"),
    ("big-batch-cap", "request-cap", None),
]
AGENT_RULES = 5  #: the busiest agents each also have a daily budget of their own
NOTES = ["FAL credit", "support refund", "price correction", "duplicate charge reversed", "goodwill credit"]
TX_COLUMNS = (
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
    "idempotency_key",
    "denial_json",
    "upstream_request_id",
    "upstream_status",
    "outcome",
    "response_json",
    "created_at",
    "completed_at",
    "images",
    "billable_mp_nano",
)
LINE_COLUMNS = ("id", "transaction_id", "kind", "amount", "note", "created_at")
FACT_COLUMNS = ("id", "transaction_id", "key", "value", "created_at")


@dataclass(frozen=True, slots=True)
class Variant:
    """One kind of request, priced once."""

    endpoint: str
    model: str
    operation: str
    images: int
    billable_mp_nano: int
    estimate_nano: int
    per_image_nano: int
    size: str  #: "WxH" of each output image
    request_json: str
    request_hash: str


@dataclass
class Stats:
    """What `generate` wrote, and how long it took."""

    transactions: int = 0
    cost_lines: int = 0
    facts: int = 0
    agents: int = 0
    seconds: float = 0.0
    by_status: dict[str, int] | None = None


def catalog() -> tuple[list[Variant], list[float]]:
    """Every request variant with its cumulative weight (for `random.choices`)."""
    book = default_book()
    variants: list[Variant] = []
    weights: list[float] = []

    def add(endpoint: str, body: dict[str, Any], weight: float) -> None:
        q = quote(endpoint, body, book=book)
        stored = dict(body)
        if q.operation == "upscale":
            stored["input_size"] = f"{q.input_width}x{q.input_height}"
        canonical = json.dumps({"endpoint": endpoint, "body": body}, sort_keys=True, separators=(",", ":"))
        variants.append(
            Variant(
                endpoint,
                q.model,
                q.operation,
                q.images,
                to_nano(q.billable_megapixels),
                to_nano(q.amount),
                to_nano(q.amount) // q.images,
                f"{q.width}x{q.height}",
                json.dumps(stored),
                hashlib.sha256(canonical.encode()).hexdigest(),
            )
        )
        weights.append(weight)

    gen_total = sum(w for _, w in GENERATE)
    for endpoint, ew in GENERATE:
        for size, sw in SIZES:
            for count, cw in COUNTS:
                w = (1 - TRANSFORM_SHARE - UPSCALE_SHARE) * ew / gen_total * sw / 100 * cw / 100
                add(endpoint, {"prompt": "a red fox in the snow", "image_size": size, "num_images": count}, w)
            if isinstance(size, str) and size in ("landscape_4_3", "square_hd", "portrait_4_3"):
                body = {
                    "prompt": "the same, as a watercolour",
                    "image_url": "https://example.com/in.png",
                    "image_size": size,
                    "strength": 0.75,
                }
                add(endpoint + "/image-to-image", body, TRANSFORM_SHARE * ew / gen_total / 3)
    for (w_in, h_in), iw in UPSCALE_INPUTS:
        for scale, scw in ((2, 80), (4, 20)):
            body = {"image_url": "https://example.com/photo.jpg", "scale": scale, "input_size": f"{w_in}x{h_in}"}
            add(UPSCALE, body, UPSCALE_SHARE * iw / 100 * scw / 100)
    return variants, list(accumulate(weights))


def timestamps(n: int, end: datetime, days: float, rng: random.Random) -> list[float]:
    """n sorted epoch seconds in (end - days, end), denser towards the end (a growing business)."""
    stop = end.timestamp()
    span = days * 86400
    return sorted(stop - span * (1 - math.sqrt(rng.random())) for _ in range(n))


def rows(
    n: int,
    *,
    agents: int,
    end: datetime,
    days: float,
    seed: int,
    book_version: str,
    rule_names: Sequence[tuple[str, str]],
) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Chunks of (transactions, cost lines, facts) rows, timestamps as epoch seconds."""
    rng = random.Random(seed)
    variants, cum = catalog()
    agent_cum = list(accumulate(1 / (i + 1) ** 1.1 for i in range(agents)))
    status_names = [s for s, _ in STATUSES]
    status_cum = list(accumulate(w for _, w in STATUSES))
    stop = end.timestamp()
    times = timestamps(n, end, days, rng)
    line_id = fact_id = 0
    choices, rand = rng.choices, rng.random
    for start in range(0, n, CHUNK):
        txs: list[tuple[Any, ...]] = []
        lines: list[tuple[Any, ...]] = []
        notes: list[tuple[Any, ...]] = []
        count = min(CHUNK, n - start)
        picked = choices(variants, cum_weights=cum, k=count)
        owners = choices(range(1, agents + 1), cum_weights=agent_cum, k=count)
        statuses = choices(status_names, cum_weights=status_cum, k=count)
        for j in range(count):
            tx_id = start + j + 1
            v = picked[j]
            created = times[start + j]
            status = statuses[j]
            if stop - created < HOLD_TTL and rand() < 0.6:
                status = "pending"
            elif status == "expired" and stop - created < HOLD_TTL:
                status = "completed"
            est = v.estimate_nano
            actual = completed = upstream_status = outcome = denial = upstream_id = None
            if status == "completed":
                r = rand()
                if r < 0.85:
                    actual = est
                elif r < 0.93 and v.images > 1:
                    actual = v.per_image_nano * (v.images - 1)  # fewer images came back
                else:
                    actual = est * 5 // 4  # a larger size than asked for
                completed = created + 1.5 + rand() * 25
                upstream_status, upstream_id = 200, f"req-{tx_id}"
            elif status == "failed":
                completed = created + 0.5 + rand() * 5
                upstream_status = choices((422, 500, 503), k=1)[0]
                outcome = f"upstream returned {upstream_status}"
            elif status == "expired":
                completed = created + HOLD_TTL + rand() * 3600
                outcome = "hold expired (older than the hold TTL)"
            elif status == "voided":
                completed = created + 60 + rand() * 600
                outcome = "never sent"
            elif status == "unknown":
                outcome = "no answer from the upstream (timeout after sending)"
            elif status == "denied":
                failing = rng.sample(rule_names, 2 if rand() < 0.1 else 1)
                entries = [{"rule": name, "type": kind, "reason": f"{name}: limit reached"} for name, kind in failing]
                denial = json.dumps({**entries[0], "denials": entries})
            txs.append(
                (
                    tx_id,
                    owners[j],
                    v.endpoint,
                    v.model,
                    v.operation,
                    v.request_json,
                    v.request_hash,
                    book_version,
                    est,
                    actual,
                    status,
                    f"job-{tx_id}" if rand() < 0.2 else None,
                    denial,
                    upstream_id,
                    upstream_status,
                    outcome,
                    None,
                    created,
                    completed,
                    v.images,
                    v.billable_mp_nano,
                )
            )
            if status == "denied":
                continue
            line_id += 1
            lines.append((line_id, tx_id, "estimate", est, None, created))
            if status != "completed":
                continue
            line_id += 1
            lines.append((line_id, tx_id, "actual", actual, None, completed))
            fact_id += 1
            sizes = ",".join([v.size] * max(1, v.images if actual >= est else v.images - 1))
            notes.append((fact_id, tx_id, "output_sizes", sizes, completed))
            if actual > est:
                fact_id += 1
                notes.append((fact_id, tx_id, "variance", str(actual - est), completed))
            if rand() < 0.012:
                for _ in range(2 if rand() < 0.15 else 1):
                    r = rand()
                    if r < 0.03:
                        amount = -(actual * 3 // 2)  # a credit larger than the charge
                    elif r < 0.18:
                        amount = max(1, est // 10)  # a correction upwards
                    else:
                        amount = -(actual * choices((1, 2, 4, 10), k=1)[0] // 10)
                    line_id += 1
                    when = min(stop - 1, completed + 3600 + rand() * 20 * 86400)
                    lines.append((line_id, tx_id, "adjustment", amount, choices(NOTES, k=1)[0], when))
        yield txs, lines, notes


# --- writers ---------------------------------------------------------------------------------


class SqliteWriter:
    """Rows through sqlite3 `executemany`, all in one transaction (foreign keys checked once, at the end)."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute("PRAGMA cache_size=-200000")
        self.conn.execute("BEGIN IMMEDIATE")

    @staticmethod
    def ts(epoch: float | None) -> str | None:
        if epoch is None:
            return None
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    def count(self, table: str) -> int:
        return self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def write(
        self, table: str, columns: Sequence[str], values: Sequence[Sequence[Any]], ts_columns: Sequence[str] = ()
    ) -> None:
        idx = [columns.index(c) for c in ts_columns]
        if idx:
            values = [self._convert(row, idx) for row in values]
        cols = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("?" * len(columns))
        self.conn.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", values)

    def _convert(self, row: Sequence[Any], idx: list[int]) -> list[Any]:
        out = list(row)
        for i in idx:
            out[i] = self.ts(out[i])
        return out

    def finish(self) -> None:
        problems = self.conn.execute("PRAGMA foreign_key_check").fetchall()
        if problems:
            raise RuntimeError(f"foreign key problems: {problems[:5]}")
        self.conn.execute("COMMIT")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()


class PgWriter:
    """Rows through PostgreSQL `COPY`, in one transaction; sequences moved past the ids written."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn)

    @staticmethod
    def ts(epoch: float | None) -> datetime | None:
        return None if epoch is None else datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)

    def count(self, table: str) -> int:
        return self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]

    def write(
        self, table: str, columns: Sequence[str], values: Sequence[Sequence[Any]], ts_columns: Sequence[str] = ()
    ) -> None:
        idx = [columns.index(c) for c in ts_columns]
        cols = ", ".join(f'"{c}"' for c in columns)
        with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
            ts = self.ts
            for row in values:
                if idx:
                    row = list(row)
                    for i in idx:
                        row[i] = ts(row[i])
                copy.write_row(row)

    def finish(self) -> None:
        for table in ("agents", "spending_rules", "transactions", "cost_lines", "facts"):
            self.conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), GREATEST((SELECT max(id) FROM {table}), 1))"
            )
        self.conn.commit()
        self.conn.autocommit = True
        self.conn.execute("ANALYZE")  # what autovacuum would do shortly after a load this size
        self.conn.close()


def writer_for(url: str) -> SqliteWriter | PgWriter:
    if url.startswith("sqlite"):
        return SqliteWriter(url.split(":///", 1)[1])
    if url.startswith("postgresql"):
        from sqlalchemy.engine import make_url

        return PgWriter(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    raise SystemExit(f"unsupported database URL {url!r}: sqlite:///FILE or postgresql+psycopg://…")


def migrate(url: str) -> None:
    """Bring the database to the code's schema with Alembic (as `pixelgov db upgrade` does)."""
    from alembic import command

    from ledger.store.db import alembic_config

    if url.startswith("sqlite"):
        Path(url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")


def generate(
    url: str,
    n: int,
    *,
    agents: int = 50,
    days: float = 180,
    end: datetime = DEFAULT_END,
    seed: int = 1,
    progress: Callable[[str], None] | None = None,
) -> Stats:
    """Migrate the database at `url` and fill it with `n` transactions (it must hold none)."""
    began = time.perf_counter()
    migrate(url)
    out = writer_for(url)
    if out.count("transactions"):
        raise SystemExit(f"{url} already holds transactions: generate into an empty database")
    stats = Stats(agents=agents, by_status={})
    created = end - timedelta(days=days + 1)
    out.write(
        "agents",
        ("id", "name", "description", "status", "created_at", "updated_at"),
        [
            (i, f"agent-{i:03d}", "generated", "active", created.timestamp(), created.timestamp())
            for i in range(1, agents + 1)
        ],
        ("created_at", "updated_at"),
    )
    rules = [(name, kind, period, None) for name, kind, period in RULES]
    rules += [(f"agent-{i:03d}-daily", "spend-limit", "day", i) for i in range(1, min(agents, AGENT_RULES) + 1)]
    out.write(
        "spending_rules",
        (
            "id",
            "name",
            "type",
            "limit_amount",
            "limit_count",
            "period",
            "models_json",
            "agent_id",
            "action",
            "enabled",
            "version",
            "created_at",
            "updated_at",
        ),
        [
            (
                i,
                name,
                kind,
                None if kind in ("rate-limit", "model-allowlist") else 50 * 10**9,
                600 if kind == "rate-limit" else None,
                period,
                json.dumps(["fal-ai/flux/*"]) if kind == "model-allowlist" else None,
                agent_id,
                "deny",
                True,
                1,
                created.timestamp(),
                created.timestamp(),
            )
            for i, (name, kind, period, agent_id) in enumerate(rules, 1)
        ],
        ("created_at", "updated_at"),
    )
    rule_names = [(name, kind) for name, kind, _, _ in rules]
    for txs, lines, notes in rows(
        n, agents=agents, end=end, days=days, seed=seed, book_version=default_book().version, rule_names=rule_names
    ):
        out.write("transactions", TX_COLUMNS, txs, ("created_at", "completed_at"))
        out.write("cost_lines", LINE_COLUMNS, lines, ("created_at",))
        out.write("facts", FACT_COLUMNS, notes, ("created_at",))
        stats.transactions += len(txs)
        stats.cost_lines += len(lines)
        stats.facts += len(notes)
        for row in txs:
            stats.by_status[row[10]] = stats.by_status.get(row[10], 0) + 1  # type: ignore[index]
        if progress:
            progress(f"  {stats.transactions:,} transactions ({time.perf_counter() - began:.0f} s)")
    out.finish()
    stats.seconds = time.perf_counter() - began
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="sqlite:///FILE or postgresql+psycopg://user@host/db")
    parser.add_argument("--transactions", "-n", type=int, default=50_000)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--days", type=float, default=180)
    parser.add_argument("--end", default=DEFAULT_END.date().isoformat(), help="UTC date the history ends at")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    end = datetime.fromisoformat(args.end)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    stats = generate(
        args.db,
        args.transactions,
        agents=args.agents,
        days=args.days,
        end=end,
        seed=args.seed,
        progress=lambda line: print(line, file=sys.stderr),
    )
    print(
        f"{stats.transactions:,} transactions, {stats.cost_lines:,} cost lines, {stats.facts:,} facts, "
        f"{stats.agents} agents in {stats.seconds:.1f} s"
    )
    print("by status: " + ", ".join(f"{k} {v:,}" for k, v in sorted((stats.by_status or {}).items())))


if __name__ == "__main__":
    main()
