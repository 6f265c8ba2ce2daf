"""Load and faults through `pixelgov serve --workers 2` on PostgreSQL (loopback only, bounded in count
and time): 32 concurrent clients against one shared budget — zero overspend, no 5xx from the
gateway's own code, every request accounted for in the ledger; the same with the upstream failing
and timing out mid-load; a worker killed mid-load leaves only holds that expire."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import serve_subprocess
from support import rule_usage, spec

pytestmark = pytest.mark.slow

ENDPOINT = "fal-ai/flux/schnell"  # landscape_4_3: 0.79 MP × 0.004 = 0.00316 per request
PRICE = Decimal("0.00316")
CLIENTS = 32
PER_CLIENT = 8
LIMIT = Decimal("0.3")  # room for 94 of the 256 requests


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _workers(pid: int) -> list[int]:
    return [c for c in _children(pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _load(url: str, keys: list[str], on_progress: Any = None) -> list[tuple[int | str, str | None]]:
    """CLIENTS threads, each sending PER_CLIENT governed runs: [(status or exception name, tx id)]."""
    results: list[tuple[int | str, str | None]] = []
    lock = threading.Lock()
    sent = [0]

    def client(i: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Key {keys[i % len(keys)]}"}, timeout=20) as http:
            for _ in range(PER_CLIENT):
                try:
                    r = http.post(f"/{ENDPOINT}", json={"prompt": "load"})
                    item: tuple[int | str, str | None] = (r.status_code, r.headers.get("X-Pixelgov-Transaction"))
                except httpx.HTTPError as exc:
                    item = (type(exc).__name__, None)
                with lock:
                    results.append(item)
                    sent[0] += 1
                    if on_progress is not None:
                        on_progress(sent[0])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def _setup(pg_url: str) -> tuple[Any, list[str], int]:
    from ledger import Ledger

    ledger = Ledger(pg_url)
    keys = [str(ledger.admin.create_agent(f"agent-{i}").api_key) for i in range(8)]
    rule = ledger.admin.create_rule(spec(name="shared", type="spend-limit", limit=str(LIMIT), period="day"))
    return ledger, keys, rule.id


def _assert_ledger_matches(ledger: Any, results: list[tuple[int | str, str | None]], rule_id: int) -> None:
    statuses = Counter(status for status, _ in results)
    txs = ledger.governor.transactions(limit=10_000)
    by_status = Counter(t.status.value for t in txs)
    # Every request answered with a transaction id is that transaction, once.
    answered = [int(tx) for _, tx in results if tx is not None]
    assert len(answered) == len(set(answered))
    assert statuses[200] == by_status["completed"]
    assert statuses[402] == by_status["denied"]
    assert statuses[502] == by_status["failed"]
    assert statuses[504] == by_status["unknown"]
    # Zero overspend: settled + held within the shared limit (schnell answers cost their estimate).
    spent, held, _ = rule_usage(ledger.engine, rule_id)
    assert spent + held <= LIMIT
    counted = sum((t.actual_cost or Decimal(0)) for t in txs if t.status.value == "completed") + sum(
        (t.estimated_cost for t in txs if t.status.value in ("unknown", "pending")), Decimal(0)
    )
    assert counted == spent + held


def test_32_clients_through_2_workers_never_overspend_a_shared_budget(pg_url: str, fake_fal: Any) -> None:
    ledger, keys, rule_id = _setup(pg_url)
    try:
        with serve_subprocess(pg_url, fake_fal.url, workers=2, env={"PIXELGOV_UPSTREAM_TIMEOUT": "1"}) as (url, _, _):
            started = time.monotonic()

            def faults(done: int) -> None:
                # Mid-load: the upstream fails (500) for a while, then stops answering in time.
                if done == 40:
                    fake_fal.set_mode("fail_times", times=12, status=500)
                elif done == 80:
                    fake_fal.set_mode("slow", delay=1.5)
                elif done == 90:
                    fake_fal.set_mode(None)

            results = _load(url, keys, faults)
            elapsed = time.monotonic() - started
        assert len(results) == CLIENTS * PER_CLIENT
        statuses = Counter(status for status, _ in results)
        assert set(statuses) <= {200, 402, 502, 504}, statuses  # no 500/503 and no dropped connections
        assert statuses[200] > 0 and statuses[402] > 0 and statuses[502] > 0
        _assert_ledger_matches(ledger, results, rule_id)
        assert elapsed < 120
    finally:
        ledger.close()


def test_a_worker_killed_mid_load_leaves_only_holds_that_expire_still_counted(pg_url: str, fake_fal: Any) -> None:
    ledger, keys, rule_id = _setup(pg_url)
    try:
        with serve_subprocess(pg_url, fake_fal.url, workers=2) as (url, proc, _):
            fake_fal.set_mode("slow", delay=0.3)  # requests in flight when the worker dies
            victims = _workers(proc.pid)
            assert len(victims) == 2

            def kill(done: int) -> None:
                if done == 30:
                    os.kill(victims[0], signal.SIGKILL)

            results = _load(url, keys, kill)
        statuses = Counter(status for status, _ in results)
        assert set(statuses) - {200, 402} <= {"RemoteProtocolError", "ReadError", "ConnectError"}, statuses
        txs = ledger.governor.transactions(limit=10_000)
        pending = [t for t in txs if t.status.value == "pending"]
        dropped = sum(1 for status, _ in results if isinstance(status, str))
        assert len(pending) <= dropped  # only the killed worker's in-flight requests
        spent, held, _ = rule_usage(ledger.engine, rule_id)
        assert spent + held <= LIMIT
        expired = ledger.governor.expire(older_than=0)
        assert sorted(expired) == sorted(t.id for t in pending)
        # They may have been served: they become `unknown`, their estimates counted as spent.
        assert {ledger.governor.transaction(t).status.value for t in expired} <= {"unknown"}
        spent_after, held_after, _ = rule_usage(ledger.engine, rule_id)
        assert held_after == 0 and spent_after == spent + held
    finally:
        ledger.close()


def test_sigterm_lets_in_flight_requests_finish(pg_url: str, fake_fal: Any) -> None:
    from ledger import Ledger

    with Ledger(pg_url) as ledger:
        key = ledger.admin.create_agent("bot").api_key
        with serve_subprocess(pg_url, fake_fal.url, workers=1) as (url, proc, log):
            fake_fal.set_mode("slow", delay=1.0)
            answers: list[int] = []

            def one() -> None:
                with httpx.Client(base_url=url, headers={"Authorization": f"Key {key}"}, timeout=20) as http:
                    answers.append(http.post(f"/{ENDPOINT}", json={"prompt": "x"}).status_code)

            threads = [threading.Thread(target=one) for _ in range(3)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 20
            while fake_fal.count() < 3 and time.monotonic() < deadline:  # all three sent upstream
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            for t in threads:
                t.join(30)
            assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it is done
        assert answers == [200, 200, 200]
        assert {t.status.value for t in ledger.governor.transactions()} == {"completed"}
        # One JSON access-log line per request, without the agent's key or the server's.
        import json

        from gateway_support import SERVER_FAL_KEY

        text = log.read_text()
        lines = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
        assert sum(1 for x in lines if x["route"] == "/{endpoint:path}" and x["status"] == 200) == 3
        assert key not in text and SERVER_FAL_KEY not in text


def test_metrics_sum_every_worker_whichever_answers_the_scrape(sqlite_url: str, fake_fal: Any) -> None:
    """With two workers, every scrape shows the counts of both (prometheus-client's multiprocess
    mode in a private directory), and the directory goes when the server stops."""
    import json

    from ledger import Ledger

    with Ledger(sqlite_url) as ledger:
        key = ledger.admin.create_agent("bot").api_key
    runs = 24
    with serve_subprocess(sqlite_url, fake_fal.url, workers=2) as (url, proc, log):
        for _ in range(runs):
            with httpx.Client(base_url=url, timeout=10) as client:  # a new connection each time
                r = client.post(f"/{ENDPOINT}", json={"prompt": "p"}, headers={"Authorization": f"Key {key}"})
                assert r.status_code == 200
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"ts"')]
        served_by = {line["worker"] for line in lines if line["method"] == "POST"}
        assert len(served_by) == 2, "one worker served every run: the scrape below proves nothing"
        for _ in range(8):
            with httpx.Client(base_url=url, timeout=10) as client:
                text = client.get("/metrics").text
            assert f'pixelgov_runs_total{{status="completed"}} {float(runs)}' in text
            assert f"pixelgov_settled_usd_total {float(PRICE * runs)}" in text
            assert f"pixelgov_authorized_usd_total {float(PRICE * runs)}" in text
        environ = Path(f"/proc/{_workers(proc.pid)[0]}/environ").read_bytes().split(b"\0")
        shared = Path(next(v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")).split(b"=", 1)[1].decode())
        assert shared.is_dir()
    assert not shared.exists()


def test_an_operators_metrics_directory_is_emptied_at_start_and_kept(
    sqlite_url: str, fake_fal: Any, tmp_path: Path
) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    stale = shared / "counter_99999.db"
    stale.write_bytes(b"counts of an earlier run")
    (shared / "notes.txt").write_text("not ours")
    with serve_subprocess(sqlite_url, fake_fal.url, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(shared)}) as (
        url,
        _,
        _,
    ):
        assert not stale.exists()
        r = httpx.get(f"{url}/metrics", timeout=10)
        assert r.status_code == 200 and "pixelgov_http_requests_total" in r.text
    assert shared.is_dir() and (shared / "notes.txt").exists()
