"""A hostile agent against the gateway (issue 19): every cent spent with the server's FAL key is
counted against the rules that allowed it, and no agent sees or moves another's money.

Each attack runs over HTTP against a real gateway and the fake FAL, on SQLite and PostgreSQL, and
ends with the ledger recounted: for every request that reached the upstream, spent + held covers
its cost, and no budget ends above its limit by more than one request's bounded variance.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from gateway_support import RunningGateway, gateway_server, serve_subprocess
from support import row_counts, spec

from ledger import Ledger
from ledger.records import TxStatus
from ledger.store.spend import counted

FLUX = "fal-ai/flux/dev"
UPSCALE = "fal-ai/topaz/upscale/image"
BODY = {"prompt": "a red fox in the snow"}  # landscape_4_3: 0.79 MP x 0.015 = 0.01185
EST = Decimal("0.01185")


@pytest.fixture
def gw(db_url: str, fake_fal: Any) -> Iterator[RunningGateway]:
    with gateway_server(db_url, fake_fal.url) as running:
        yield running


def fal_posts(fake: Any) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST"]


def counted_total(ledger: Any) -> Decimal:
    """What the ledger counts (spent + held) over every transaction, recounted from its rows."""
    total = Decimal(0)
    for tx in ledger.governor.transactions(limit=10_000):
        c = counted(tx.status, tx.estimated_cost, tx.actual_cost)
        total += c.spent + c.held
    return total


def wait_for(predicate: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def png_data_uri(width: int, height: int) -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def test_an_agent_cannot_void_or_complete_queue_requests_the_gateway_sent(gw: RunningGateway, fake_fal: Any) -> None:
    key = str(gw.ledger.admin.create_agent("bot").api_key)
    gw.ledger.admin.create_rule(spec(name="four", type="spend-limit", limit=str(EST * 4), period="day"))
    fake_fal.set_mode("slow", delay=1.0)
    with gw.client(key) as client:
        answers = [client.post(f"/queue/{FLUX}", json=BODY) for _ in range(8)]
        assert sorted(a.status_code for a in answers) == [200] * 4 + [402] * 4
        tx_ids = [int(a.headers["X-Pixelgov-Transaction"]) for a in answers if a.status_code == 200]
        wait_for(lambda: len(fal_posts(fake_fal)) == 4)  # all four are at FAL now
        for tx_id in tx_ids:
            voided = client.post(f"/v1/transactions/{tx_id}/void", json={})
            assert voided.status_code == 409 and voided.json()["error"]["status"] == "pending", voided.text
            completed = client.post(f"/v1/transactions/{tx_id}/complete", json={"actual": "0"})
            assert completed.status_code == 409 and "forwarded" in completed.json()["error"]["message"]
    wait_for(lambda: all(gw.ledger.governor.transaction(t).status == TxStatus.completed for t in tx_ids))
    assert len(fal_posts(fake_fal)) == 4
    assert counted_total(gw.ledger) == EST * 4  # every request FAL served is counted, at its real cost


def test_an_agent_cannot_void_a_synchronous_run_in_flight(gw: RunningGateway, fake_fal: Any) -> None:
    key = str(gw.ledger.admin.create_agent("bot").api_key)
    fake_fal.set_mode("slow", delay=1.0)
    result: dict[str, Any] = {}

    def run() -> None:
        with gw.client(key) as client:
            result["r"] = client.post(f"/v1/run/{FLUX}", json=BODY)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: bool(gw.ledger.governor.transactions(status="pending")))
    [tx] = gw.ledger.governor.transactions(status="pending")
    with gw.client(key) as client:
        assert client.post(f"/v1/transactions/{tx.id}/void", json={}).status_code == 409
    thread.join(15)
    assert result["r"].status_code == 200
    assert gw.ledger.governor.transaction(tx.id).actual_cost == EST


def test_a_callers_own_hold_is_still_its_own_to_settle(gw: RunningGateway) -> None:
    key = str(gw.ledger.admin.create_agent("bot").api_key)
    with gw.client(key) as client:
        tx_id = client.post("/v1/transactions", json={"endpoint": FLUX, "request": BODY}).json()["id"]
        done = client.post(f"/v1/transactions/{tx_id}/complete", json={"actual": "0.01"})
        assert done.status_code == 200 and done.json()["actual_cost"] == "0.01"


@pytest.mark.parametrize("amount", ["\u0661", "1e-3", "+1", "0.0000000001", " 1", "1.", ".5", "١٠"])
def test_complete_takes_only_ascii_decimal_amounts(gw: RunningGateway, amount: str) -> None:
    key = str(gw.ledger.admin.create_agent("bot").api_key)
    with gw.client(key) as client:
        tx_id = client.post("/v1/transactions", json={"endpoint": FLUX, "request": BODY}).json()["id"]
        before = row_counts(gw.ledger.engine)
        r = client.post(f"/v1/transactions/{tx_id}/complete", json={"actual": amount})
    assert r.status_code == 400, (amount, r.text)
    assert gw.ledger.governor.transaction(tx_id).status == TxStatus.pending
    assert row_counts(gw.ledger.engine) == before


def test_an_upscale_is_priced_from_the_image_not_the_claimed_size(gw: RunningGateway, fake_fal: Any) -> None:
    key = str(gw.ledger.admin.create_agent("bot").api_key)
    gw.ledger.admin.create_rule(spec(name="small", type="spend-limit", limit="0.05", period="day"))
    image = png_data_uri(640, 480)  # x2 -> 1280x960 = 1.23 MP x 0.03 = 0.0369: the budget pays for one
    lie = {"image_url": image, "input_size": "64x64", "scale": 2}

    def claim(_: int) -> httpx.Response:
        with gw.client(key) as client:
            return client.post(f"/v1/run/{UPSCALE}", json=lie)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(claim, range(16)))
    assert [a.status_code for a in answers] == [400] * 16
    assert "not the image's size" in answers[0].json()["error"]["message"]
    assert fal_posts(fake_fal) == [] and gw.ledger.governor.transactions() == []
    with gw.client(key) as client:
        honest = client.post(f"/v1/run/{UPSCALE}", json={"image_url": image, "scale": 2})
        assert honest.status_code == 200 and honest.headers["X-Pixelgov-Estimated-Cost"] == "0.0369"
        assert client.post(f"/v1/run/{UPSCALE}", json={"image_url": image, "scale": 2}).status_code == 402
    assert len(fal_posts(fake_fal)) == 1


def test_an_answer_with_more_images_than_asked_settles_at_the_estimate(gw: RunningGateway, fake_fal: Any) -> None:
    key = str(gw.ledger.admin.create_agent("bot").api_key)
    fake_fal.set_mode("extra_images", count=1000)
    with gw.client(key) as client:
        r = client.post(f"/v1/run/{FLUX}", json=BODY)
    assert r.status_code == 200
    tx = gw.ledger.governor.transaction(int(r.headers["X-Pixelgov-Transaction"]), detail=True)
    assert tx.status == TxStatus.completed and tx.actual_cost == EST  # never 1000 x the estimate
    assert tx.detail is not None and "1000 images" in (tx.detail.fact("anomaly") or "")
    assert [a.kind for a in gw.ledger.admin.alerts()] == ["anomaly"]


@pytest.mark.parametrize("path", [f"/{FLUX}", f"/v1/run/{FLUX}", f"/queue/{FLUX}"])
def test_a_body_with_a_repeated_key_is_refused_not_resolved(gw: RunningGateway, fake_fal: Any, path: str) -> None:
    """pixelgov would price the last `num_images` and FAL might make the first: neither is read."""
    key = str(gw.ledger.admin.create_agent("bot").api_key)
    raw = b'{"prompt": "a fox", "num_images": 1, "num_images": 4}'
    with gw.client(key) as client:
        for _ in range(2):  # the second time through the hot route's fast path
            r = client.post(path, content=raw, headers={"Content-Type": "application/json"})
            assert r.status_code == 400 and "given twice" in r.text, r.text
    assert fal_posts(fake_fal) == [] and gw.ledger.governor.transactions() == []


def test_a_service_key_sees_only_the_agent_it_names(gw: RunningGateway, fake_fal: Any) -> None:
    a_key = str(gw.ledger.admin.create_agent("a").api_key)
    gw.ledger.admin.create_agent("b")
    service = gw.ledger.admin.create_service_key("fleet").key
    with gw.client(a_key) as client:
        handle = client.post(f"/queue/{FLUX}", json=BODY).json()
        tx_id = client.post("/v1/transactions", json={"endpoint": FLUX, "request": BODY}).json()["id"]
    status_path = f"/queue/fal-ai/flux/requests/{handle['request_id']}/status"
    result_path = f"/queue/fal-ai/flux/requests/{handle['request_id']}"
    for named in ("b", None):
        headers = {"Authorization": f"Key {service}", **({"X-Pixelgov-Agent": named} if named else {})}
        with gw.client(headers=headers) as client:
            assert client.get(status_path).status_code == 404
            assert client.get(result_path).status_code == 404
            assert client.put(f"{result_path}/cancel").status_code == 404
            assert client.get(f"/v1/transactions/{tx_id}").status_code == 404
            assert client.post(f"/v1/transactions/{tx_id}/void", json={}).status_code == 404
    with gw.client(headers={"Authorization": f"Key {service}", "X-Pixelgov-Agent": "a"}) as client:
        assert client.get(status_path).status_code in (200, 202)
        assert client.get(f"/v1/transactions/{tx_id}").status_code == 200


def test_an_agent_keeps_at_most_its_share_of_a_workers_queue(db_url: str, fake_fal: Any) -> None:
    with gateway_server(db_url, fake_fal.url, max_queued_per_agent=2) as gw:
        greedy = str(gw.ledger.admin.create_agent("greedy").api_key)
        polite = str(gw.ledger.admin.create_agent("polite").api_key)
        fake_fal.set_mode("slow", delay=1.0)
        with gw.client(greedy) as client:
            statuses = [client.post(f"/queue/{FLUX}", json=BODY).status_code for _ in range(4)]
            full = client.post(f"/queue/{FLUX}", json=BODY)
        assert statuses == [200, 200, 429, 429] and full.headers["Retry-After"] == "1"
        assert "PIXELGOV_MAX_QUEUED_PER_AGENT" in full.json()["error"]["message"]
        with gw.client(polite) as client:
            assert client.post(f"/queue/{FLUX}", json=BODY).status_code == 200  # another agent still gets in
        assert len(gw.ledger.governor.transactions()) == 3  # the refused submits authorized nothing


def test_a_killed_gateway_loses_no_spend(db_url: str, fake_fal: Any) -> None:
    """SIGKILL with five requests at FAL: they may have been served and billed, so their holds
    expire to `unknown`, still counted, never to released."""
    with Ledger(db_url) as ledger:
        key = str(ledger.admin.create_agent("bot").api_key)
        ledger.admin.create_rule(spec(name="daily", type="spend-limit", limit="1", period="day"))
    fake_fal.set_mode("slow", delay=5)
    with serve_subprocess(db_url, fake_fal.url) as (url, proc, _log):

        def send(_: int) -> None:
            try:
                httpx.post(f"{url}/v1/run/{FLUX}", json=BODY, headers={"Authorization": f"Key {key}"}, timeout=10)
            except httpx.HTTPError:
                pass  # the gateway died under it

        pool = concurrent.futures.ThreadPoolExecutor(5)
        for i in range(5):
            pool.submit(send, i)
        wait_for(lambda: len(fal_posts(fake_fal)) == 5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        pool.shutdown(wait=True)
    with Ledger(db_url) as ledger:
        pending = ledger.governor.transactions(status="pending")
        assert len(pending) == 5 and {t.forwarder for t in pending} == {"gateway"}
        resolved = ledger.governor.expire(older_than=0)
        assert sorted(resolved) == sorted(t.id for t in pending)
        assert {t.status for t in ledger.governor.transactions()} == {TxStatus.unknown}
        assert counted_total(ledger) == EST * 5  # FAL served (and billed) five: five are counted
        summary = ledger.reports.summary()
        assert summary.totals.unknown == EST * 5
