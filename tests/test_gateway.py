"""`pixelgov serve`: a real uvicorn server on 127.0.0.1 in front of the fake FAL, on SQLite and
PostgreSQL. Every test asserts what the HTTP client sees and what the ledger recorded."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from gateway_support import ADMIN_TOKEN, SERVER_FAL_KEY, RunningGateway, gateway_server
from support import row_counts, snapshot, spec

FLUX = "fal-ai/flux/dev"
BODY = {"prompt": "a red fox in the snow"}  # landscape_4_3: 0.79 MP × 0.015 = 0.01185


@pytest.fixture
def gw(db_url: str, fake_fal: Any) -> Iterator[RunningGateway]:
    with gateway_server(db_url, fake_fal.url) as running:
        yield running


@pytest.fixture
def bot(gw: RunningGateway) -> str:
    """The API key of agent `bot`."""
    return str(gw.ledger.admin.create_agent("bot").api_key)


def fal_posts(fake: Any) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST"]


# --- the FAL-compatible route ----------------------------------------------------------------------


def test_a_governed_run_answers_fals_body_and_settles_the_actual_cost(
    gw: RunningGateway, bot: str, fake_fal: Any
) -> None:
    with gw.client(bot) as client:
        r = client.post(f"/{FLUX}", json=BODY)
    assert r.status_code == 200
    assert r.json()["images"][0]["width"] == 1024
    tx_id = int(r.headers["X-Pixelgov-Transaction"])
    assert r.headers["X-Pixelgov-Estimated-Cost"] == "0.01185"
    assert r.headers["X-Pixelgov-Actual-Cost"] == "0.01185"
    tx = gw.ledger.governor.transaction(tx_id, detail=True)
    assert tx.status.value == "completed" and tx.agent == "bot"
    assert tx.actual_cost == Decimal("0.01185")
    assert tx.detail.result == r.json()  # FAL's answer, unchanged
    assert len(fal_posts(fake_fal)) == 1


def test_the_upstream_sees_the_servers_key_and_never_the_agents(gw: RunningGateway, bot: str, fake_fal: Any) -> None:
    with gw.client(bot) as client:
        assert client.post(f"/{FLUX}", json=BODY).status_code == 200
    sent = fal_posts(fake_fal)[0]
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert headers["authorization"] == f"Key {SERVER_FAL_KEY}"
    assert bot not in json.dumps(sent.headers) and bot.encode() not in sent.raw


def test_bearer_works_like_key(gw: RunningGateway, bot: str) -> None:
    with gw.client(headers={"Authorization": f"Bearer {bot}"}) as client:
        assert client.post(f"/{FLUX}", json=BODY).status_code == 200


@pytest.mark.parametrize("auth", [None, "Key pgv_not-a-real-key", "Basic abc", "Key", "Bearer pgs_unknown"])
def test_a_missing_or_unknown_key_is_401_and_nothing_is_written(
    gw: RunningGateway, fake_fal: Any, auth: str | None
) -> None:
    gw.ledger.admin.create_agent("bot")
    before = snapshot(gw.ledger.engine)
    headers = {"Authorization": auth} if auth is not None else {}
    with gw.client(headers=headers) as client:
        r = client.post(f"/{FLUX}", json=BODY)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized" and r.json()["detail"]
    assert snapshot(gw.ledger.engine) == before
    assert fal_posts(fake_fal) == []


def test_over_budget_is_402_and_the_upstream_sees_nothing(gw: RunningGateway, bot: str, fake_fal: Any) -> None:
    gw.ledger.admin.create_rule(spec(name="bot-daily", type="spend-limit", limit="0.02", period="day", agent="bot"))
    with gw.client(bot) as client:
        assert client.post(f"/{FLUX}", json=BODY).status_code == 200
        r = client.post(f"/{FLUX}", json=BODY)
    assert r.status_code == 402
    doc = r.json()
    assert doc["error_type"] == "denied" and doc["error"]["denials"][0]["rule"] == "bot-daily"
    assert "bot-daily" in doc["detail"]
    tx = gw.ledger.governor.transaction(int(r.headers["X-Pixelgov-Transaction"]))
    assert tx.status.value == "denied"
    assert len(fal_posts(fake_fal)) == 1


def test_a_paused_agent_is_402(gw: RunningGateway, bot: str, fake_fal: Any) -> None:
    gw.ledger.admin.update_agent("bot", status="paused")
    with gw.client(bot) as client:
        r = client.post(f"/{FLUX}", json=BODY)
    assert r.status_code == 402 and r.json()["error"]["denials"][0]["type"] == "agent-paused"
    assert fal_posts(fake_fal) == []


def test_a_rate_limit_is_429_with_retry_after(gw: RunningGateway, bot: str, fake_fal: Any) -> None:
    gw.ledger.admin.create_rule(spec(name="burst", type="rate-limit", limit=1, period="minute"))
    with gw.client(bot) as client:
        assert client.post(f"/{FLUX}", json=BODY).status_code == 200
        r = client.post(f"/{FLUX}", json=BODY)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 61
    assert len(fal_posts(fake_fal)) == 1


@pytest.mark.parametrize(
    ("path", "content", "status", "code"),
    [
        ("/fal-ai/nope", json.dumps(BODY).encode(), 404, "model_not_found"),
        (f"/{FLUX}", b"{not json", 400, "invalid_request"),
        (f"/{FLUX}", b"[1, 2]", 400, "invalid_request"),
        (f"/{FLUX}", b'{"prompt": "x", "num_images": "many"}', 400, "invalid_request"),
        (f"/{FLUX}", b'{"prompt": "x", "guidance_scale": NaN}', 400, "invalid_request"),
        (f"/{FLUX}", b"[" * 100_000, 400, "invalid_request"),
        (f"/{FLUX}", b'{"prompt": "x", "image_size": {"width": 20000, "height": 20000}}', 413, "image_too_large"),
        (f"/{FLUX}", b'{"prompt": ""}', 400, "invalid_request"),
        (f"/{FLUX}", b"\xff\xfe", 400, "invalid_request"),
        ("/fal-ai/flux/dev/image-to-image", b'{"prompt": "x", "image_url": "/etc/passwd"}', 400, "invalid_request"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_authorized_or_sent(
    gw: RunningGateway, bot: str, fake_fal: Any, path: str, content: bytes, status: int, code: str
) -> None:
    before = row_counts(gw.ledger.engine)
    with gw.client(bot, headers={"Content-Type": "application/json"}) as client:
        r = client.post(path, content=content)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and "detail" in r.json()
    assert row_counts(gw.ledger.engine) == before
    assert fal_posts(fake_fal) == []


def test_an_upscale_image_on_the_servers_own_network_is_not_read(gw: RunningGateway, bot: str, fake_fal: Any) -> None:
    """Pricing an upscale reads its image's header; an agent may not aim that read at the server's
    own network (loopback here; cloud metadata, internal hosts) — it gives `input_size` instead."""
    before = row_counts(gw.ledger.engine)
    for url in (f"{fake_fal.url}/fixtures/320x240.png", "http://169.254.169.254/latest/meta-data/a.png"):
        with gw.client(bot) as client:
            r = client.post("/fal-ai/topaz/upscale/image", json={"image_url": url})
        assert r.status_code == 400, r.text
        assert "not a public address" in r.json()["error"]["message"]
    assert row_counts(gw.ledger.engine) == before
    assert fal_posts(fake_fal) == []


def test_a_body_over_the_limit_is_413_before_it_is_parsed(db_url: str, fake_fal: Any) -> None:
    with gateway_server(db_url, fake_fal.url, max_body_bytes=2048) as gw:
        key = gw.ledger.admin.create_agent("bot").api_key
        with gw.client(key) as client:
            r = client.post(f"/{FLUX}", json={"prompt": "x" * 5000})
            assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

            def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
                yield b'{"prompt": "'
                for _ in range(10):
                    yield b"y" * 1000
                yield b'"}'

            r = client.post(f"/{FLUX}", content=chunks(), headers={"Content-Type": "application/json"})
            assert r.status_code == 413
    assert fal_posts(fake_fal) == []


def test_an_upstream_error_is_502_and_the_transaction_failed(gw: RunningGateway, bot: str, fake_fal: Any) -> None:
    fake_fal.set_mode("status", status=500, detail="boom")
    with gw.client(bot) as client:
        r = client.post(f"/{FLUX}", json=BODY)
    assert r.status_code == 502
    assert "boom" in r.json()["detail"] and r.json()["error"]["upstream_status"] == 500
    tx = gw.ledger.governor.transaction(int(r.headers["X-Pixelgov-Transaction"]))
    assert tx.status.value == "failed" and tx.actual_cost is None


def test_an_upstream_validation_error_passes_through_as_fal_answered_it(
    gw: RunningGateway, bot: str, fake_fal: Any
) -> None:
    fake_fal.set_mode("status", status=422, detail="bad seed")
    with gw.client(bot) as client:
        r = client.post(f"/{FLUX}", json=BODY)
        assert r.status_code == 422 and "bad seed" in r.json()["detail"]
        fake_fal.set_mode("status", status=422, detail="bad seed")
        r = client.post(f"/v1/run/{FLUX}", json=BODY)  # pixelgov's own API: an upstream failure is 502
        assert r.status_code == 502


def test_no_answer_from_the_upstream_is_504_and_the_estimate_stays_counted(db_url: str, fake_fal: Any) -> None:
    with gateway_server(db_url, fake_fal.url, upstream_timeout=0.5) as gw:
        key = gw.ledger.admin.create_agent("bot").api_key
        fake_fal.set_mode("slow", delay=2)
        with gw.client(key) as client:
            r = client.post(f"/{FLUX}", json=BODY)
        assert r.status_code == 504
        tx = gw.ledger.governor.transaction(int(r.headers["X-Pixelgov-Transaction"]))
        assert tx.status.value == "unknown"


def test_a_server_without_fal_key_refuses_runs_with_502_and_authorizes_nothing(db_url: str, fake_fal: Any) -> None:
    with gateway_server(db_url, fake_fal.url, fal_key=None) as gw:
        key = gw.ledger.admin.create_agent("bot").api_key
        before = row_counts(gw.ledger.engine)
        with gw.client(key) as client:
            r = client.post(f"/{FLUX}", json=BODY)
            assert r.status_code == 502 and "FAL_KEY" in r.json()["detail"]
            assert client.post(f"/v1/check/{FLUX}", json=BODY).status_code == 200
        assert row_counts(gw.ledger.engine) == before
    assert fal_posts(fake_fal) == []


def test_a_hostile_upstream_never_makes_the_gateway_leak_the_servers_key(
    gw: RunningGateway, bot: str, fake_fal: Any
) -> None:
    for status in (200, 400, 500):
        fake_fal.set_mode("echo", status=status)
        with gw.client(bot) as client:
            r = client.post(f"/{FLUX}", json=BODY)
        assert SERVER_FAL_KEY not in r.text and SERVER_FAL_KEY not in json.dumps(dict(r.headers))


# --- idempotency -------------------------------------------------------------------------------------


def test_a_retry_with_the_same_idempotency_key_returns_the_first_result_without_sending(
    gw: RunningGateway, bot: str, fake_fal: Any
) -> None:
    with gw.client(bot, headers={"Idempotency-Key": "job-42"}) as client:
        first = client.post(f"/{FLUX}", json=BODY)
        second = client.post(f"/{FLUX}", json=BODY)
        other = client.post(f"/{FLUX}", json={"prompt": "something else"})
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json() and second.headers["X-Pixelgov-Replayed"] == "true"
    assert second.headers["X-Pixelgov-Transaction"] == first.headers["X-Pixelgov-Transaction"]
    assert other.status_code == 400  # the same key for another request
    assert len(fal_posts(fake_fal)) == 1


def test_the_same_idempotency_key_in_flight_is_409(gw: RunningGateway, bot: str, fake_fal: Any) -> None:
    fake_fal.set_mode("slow", delay=1.0)
    results: list[httpx.Response] = []

    def first() -> None:
        with gw.client(bot, headers={"Idempotency-Key": "job-7"}) as client:
            results.append(client.post(f"/{FLUX}", json=BODY))

    thread = threading.Thread(target=first)
    thread.start()
    deadline = time.monotonic() + 10
    while not fal_posts(fake_fal) and time.monotonic() < deadline:  # the first is held and sent
        time.sleep(0.01)
    with gw.client(bot, headers={"Idempotency-Key": "job-7"}) as client:
        r = client.post(f"/{FLUX}", json=BODY)
    thread.join(10)
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    assert results[0].status_code == 200
    assert len(fal_posts(fake_fal)) == 1


# --- the seed API ------------------------------------------------------------------------------------


def test_a_price_needs_no_key_and_writes_nothing(gw: RunningGateway) -> None:
    before = row_counts(gw.ledger.engine)
    with gw.client() as client:
        r = client.post(f"/v1/price/run/{FLUX}", json={"image_size": "square_hd", "num_images": 4})
    assert r.status_code == 200
    assert r.json()["price"] == "$0.063" and r.json()["currency"] == "USD" and r.json()["amount"] == "0.063"
    assert row_counts(gw.ledger.engine) == before


def test_check_answers_the_decision_and_writes_nothing(gw: RunningGateway, bot: str) -> None:
    gw.ledger.admin.create_rule(spec(name="cap", type="request-cap", limit="0.01"))
    before = snapshot(gw.ledger.engine)
    with gw.client(bot) as client:
        r = client.post(f"/v1/check/{FLUX}", json=BODY)
    assert r.status_code == 200
    doc = r.json()
    assert doc["allowed"] is False and doc["denials"][0]["rule"] == "cap" and doc["quote"]["amount"] == "0.01185"
    assert snapshot(gw.ledger.engine) == before


def test_v1_run_answers_the_upstreams_body_with_the_transaction_in_headers(gw: RunningGateway, bot: str) -> None:
    with gw.client(bot) as client:
        r = client.post(f"/v1/run/{FLUX}", json=BODY)
    assert r.status_code == 200
    doc = r.json()
    assert doc["images"][0]["url"].startswith("http") and "transaction" not in doc  # the seed's data.images[0].url
    tx = gw.ledger.governor.transaction(int(r.headers["X-Pixelgov-Transaction"]), detail=True)
    assert tx.status.value == "completed" and tx.actual_cost == Decimal("0.01185")
    assert r.headers["X-Pixelgov-Estimated-Cost"] == r.headers["X-Pixelgov-Actual-Cost"] == "0.01185"
    assert tx.detail.result == doc  # exactly what the upstream answered


def test_a_self_forwarding_agent_holds_settles_and_sees_only_its_own(gw: RunningGateway, bot: str) -> None:
    other = gw.ledger.admin.create_agent("other").api_key
    with gw.client(bot) as client:
        r = client.post("/v1/transactions", json={"endpoint": FLUX, "request": BODY, "idempotency_key": "k1"})
        assert r.status_code == 201 and r.json()["status"] == "pending"
        tx_id = r.json()["id"]
        again = client.post("/v1/transactions", json={"endpoint": FLUX, "request": BODY, "idempotency_key": "k1"})
        assert again.status_code == 200 and again.json()["id"] == tx_id
        with gw.client(other) as intruder:
            assert intruder.post(f"/v1/transactions/{tx_id}/complete", json={}).status_code == 404
            assert intruder.get(f"/v1/transactions/{tx_id}").status_code == 404
        done = client.post(f"/v1/transactions/{tx_id}/complete", json={"actual": "0.0118"})
        assert done.status_code == 200 and done.json()["actual_cost"] == "0.0118"
        assert done.headers["X-Pixelgov-Actual-Cost"] == "0.0118"
        assert client.post(f"/v1/transactions/{tx_id}/void", json={}).status_code == 400  # completed already
        listed = client.get("/v1/transactions").json()
        assert [t["id"] for t in listed["transactions"]] == [tx_id]
        second = client.post("/v1/transactions", json={"endpoint": FLUX, "request": BODY}).json()["id"]
        voided = client.post(f"/v1/transactions/{second}/void", json={"reason": "not sent"})
        assert voided.status_code == 200 and voided.json()["status"] == "voided"


def test_a_service_key_speaks_for_the_agent_it_names(db_url: str, fake_fal: Any) -> None:
    with gateway_server(db_url, fake_fal.url, key_cache_seconds=0.5) as gw:
        with gw.admin() as admin:
            r = admin.post("/v1/service-keys", json={"name": "fleet"})
            assert r.status_code == 201
            key = r.json()["key"]
        with gw.client(key, headers={"X-Pixelgov-Agent": "worker-1"}) as client:
            r = client.post(f"/{FLUX}", json=BODY)
        assert r.status_code == 200
        assert gw.ledger.governor.transaction(int(r.headers["X-Pixelgov-Transaction"])).agent == "worker-1"
        with gw.client(key) as client:  # no agent named
            assert client.post(f"/{FLUX}", json=BODY).status_code == 400
        with gw.admin() as admin:
            assert admin.delete("/v1/service-keys/fleet").json()["active"] is False
        time.sleep(0.6)  # a worker remembers a known key for key_cache_seconds
        with gw.client(key, headers={"X-Pixelgov-Agent": "worker-1"}) as client:
            assert client.post(f"/{FLUX}", json=BODY).status_code == 401


def test_a_rotated_agent_key_stops_working_once_the_key_cache_expires(db_url: str, fake_fal: Any) -> None:
    with gateway_server(db_url, fake_fal.url, key_cache_seconds=0.5) as gw:
        old = gw.ledger.admin.create_agent("bot").api_key
        with gw.client(old) as client:
            assert client.post(f"/v1/check/{FLUX}", json=BODY).status_code == 200
            new = gw.ledger.admin.rotate_key("bot").api_key
            time.sleep(0.6)
            assert client.post(f"/v1/check/{FLUX}", json=BODY).status_code == 401
        with gw.client(new) as client:
            assert client.post(f"/v1/check/{FLUX}", json=BODY).status_code == 200


# --- the admin API -----------------------------------------------------------------------------------


def test_the_admin_api_manages_agents_and_rules(gw: RunningGateway) -> None:
    with gw.admin() as admin:
        r = admin.post("/v1/agents", json={"name": "marketing-bot", "description": "social"})
        assert r.status_code == 201 and r.json()["api_key"].startswith("pgv_")
        assert "api_key" not in admin.get("/v1/agents/marketing-bot").json()
        assert admin.post("/v1/agents", json={"name": "marketing-bot"}).status_code == 400
        assert admin.patch("/v1/agents/marketing-bot", json={"status": "paused"}).json()["status"] == "paused"
        assert admin.post("/v1/agents/marketing-bot/rotate-key").json()["api_key"].startswith("pgv_")
        rule = admin.post(
            "/v1/spending-rules",
            json={"name": "daily", "type": "spend-limit", "limit": "5", "period": "day", "agent": "marketing-bot"},
        )
        assert rule.status_code == 201 and rule.json()["version"] == 1
        updated = admin.patch("/v1/spending-rules/daily", json={"limit": "10", "version": 1})
        assert updated.status_code == 200 and updated.json()["limit"] == "10" and updated.json()["version"] == 2
        stale = admin.patch("/v1/spending-rules/daily", json={"limit": "20", "version": 1})
        assert stale.status_code == 409 and stale.json()["error"]["current_version"] == 2
        assert admin.get("/v1/spending-rules").json()[0]["limit"] == "10"
        assert (
            admin.post(
                "/v1/spending-rules",
                json={"name": "x", "type": "spend-limit", "limit": "1", "period": "day", "agent": "ghost"},
            ).status_code
            == 404
        )
        assert admin.delete("/v1/spending-rules/daily").status_code == 200
        assert admin.get("/v1/spending-rules/daily").status_code == 404
        assert admin.get("/v1/audit").json()[0]["action"] == "delete"


def test_the_admin_api_settles_adjusts_and_annotates_any_transaction(gw: RunningGateway, bot: str) -> None:
    with gw.client(bot) as client:
        tx_id = client.post(f"/{FLUX}", json=BODY).headers["X-Pixelgov-Transaction"]
    with gw.admin() as admin:
        page = admin.get("/v1/transactions", params={"agent": "bot", "status": "completed", "limit": 1}).json()
        assert [t["id"] for t in page["transactions"]] == [int(tx_id)] and page["has_more"] is False
        r = admin.post(f"/v1/transactions/{tx_id}/costs", json={"amount": "-0.002", "note": "FAL credit"})
        assert r.status_code == 200
        assert (
            admin.post(f"/v1/transactions/{tx_id}/facts", json={"key": "reviewer", "value": "alice"}).status_code == 200
        )
        detail = admin.get(f"/v1/transactions/{tx_id}").json()
        assert [c["kind"] for c in detail["cost_lines"]] == ["estimate", "actual", "adjustment"]
        assert {"key": "reviewer", "value": "alice"}.items() <= detail["facts"][-1].items()


@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Key {ADMIN_TOKEN}", "Bearer"])
def test_admin_routes_without_the_token_are_401(gw: RunningGateway, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    with gw.client(headers=headers) as client:
        assert client.get("/v1/agents").status_code == 401
        assert client.post("/v1/agents", json={"name": "x"}).status_code == 401
    assert gw.ledger.admin.agents() == []


def test_an_agent_key_is_not_an_admin_token(gw: RunningGateway, bot: str) -> None:
    with gw.client(headers={"Authorization": f"Bearer {bot}"}) as client:
        assert client.get("/v1/agents").status_code == 401


def test_the_admin_api_is_off_without_a_token(db_url: str, fake_fal: Any) -> None:
    with (
        gateway_server(db_url, fake_fal.url, admin_token=None) as gw,
        gw.client(headers={"Authorization": "Bearer anything"}) as client,
    ):
        r = client.get("/v1/agents")
        assert r.status_code == 401 and "PIXELGOV_ADMIN_TOKEN" in r.json()["detail"]


# --- the queue API -----------------------------------------------------------------------------------


def _wait_status(client: httpx.Client, url: str, want: str, timeout: float = 10) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(url, params={"logs": "true"})
        if r.json().get("status") == want or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def test_a_queued_request_is_held_forwarded_and_settled(gw: RunningGateway, bot: str, fake_fal: Any) -> None:
    fake_fal.set_mode("slow", delay=0.5)
    with gw.client(bot) as client:
        r = client.post(f"/queue/{FLUX}", json=BODY)
        assert r.status_code == 200
        handle = r.json()
        assert handle["status_url"] == f"{gw.url}/queue/fal-ai/flux/requests/{handle['request_id']}/status"
        tx_id = int(r.headers["X-Pixelgov-Transaction"])
        assert gw.ledger.governor.transaction(tx_id).status.value == "pending"
        polled = client.get(handle["status_url"])
        assert polled.status_code == 202 and polled.json()["status"] in ("IN_QUEUE", "IN_PROGRESS")
        assert "logs" in polled.json()
        done = _wait_status(client, handle["status_url"], "COMPLETED")
        assert done.status_code == 200 and done.json()["logs"] == []
        result = client.get(handle["response_url"])
        assert result.status_code == 200 and result.json()["images"]
        assert result.headers["X-Pixelgov-Actual-Cost"] == "0.01185"
        with gw.client(gw.ledger.admin.create_agent("other").api_key) as other:
            assert other.get(handle["status_url"]).status_code == 404
    assert gw.ledger.governor.transaction(tx_id).status.value == "completed"
    assert len(fal_posts(fake_fal)) == 1


def test_a_status_poll_writes_nothing(gw: RunningGateway, bot: str) -> None:
    with gw.client(bot) as client:
        handle = client.post(f"/queue/{FLUX}", json=BODY).json()
        _wait_status(client, handle["status_url"], "COMPLETED")
        before = snapshot(gw.ledger.engine)
        for _ in range(5):
            assert client.get(handle["status_url"]).status_code == 200
            assert client.get(handle["response_url"]).status_code == 200
        assert snapshot(gw.ledger.engine) == before


def test_cancel_releases_a_request_not_yet_sent(db_url: str, fake_fal: Any) -> None:
    with gateway_server(db_url, fake_fal.url, upstream_connections=1) as gw:
        key = gw.ledger.admin.create_agent("bot").api_key
        fake_fal.set_mode("slow", delay=1.0)
        with gw.client(key) as client:
            first = client.post(f"/queue/{FLUX}", json=BODY).json()
            second = client.post(f"/queue/{FLUX}", json=BODY)
            handle = second.json()
            assert client.get(handle["status_url"]).json()["status"] == "IN_QUEUE"
            r = client.put(handle["cancel_url"])
            assert r.status_code == 202 and r.json()["status"] == "CANCELLATION_REQUESTED"
            tx = gw.ledger.governor.transaction(int(second.headers["X-Pixelgov-Transaction"]))
            assert tx.status.value == "voided"
            done = _wait_status(client, handle["status_url"], "COMPLETED")
            assert done.json()["error_type"] == "cancelled"
            assert client.get(handle["response_url"]).status_code == 400
            assert client.put(first["cancel_url"]).status_code == 400  # already sent: not recalled
            _wait_status(client, first["status_url"], "COMPLETED")
    assert len(fal_posts(fake_fal)) == 1


def test_a_failed_queued_request_reports_the_error_on_its_result(gw: RunningGateway, bot: str, fake_fal: Any) -> None:
    fake_fal.set_mode("status", status=500, detail="exploded")
    with gw.client(bot) as client:
        handle = client.post(f"/queue/{FLUX}", json=BODY).json()
        status = _wait_status(client, handle["status_url"], "COMPLETED")
        assert status.json()["error_type"] == "upstream_error"
        r = client.get(handle["response_url"])
        assert r.status_code == 502 and "exploded" in r.json()["detail"]


def test_a_submit_over_budget_is_402_and_nothing_is_queued(gw: RunningGateway, bot: str, fake_fal: Any) -> None:
    gw.ledger.admin.create_rule(spec(name="cap", type="request-cap", limit="0.01"))
    with gw.client(bot) as client:
        r = client.post(f"/queue/{FLUX}", json=BODY)
    assert r.status_code == 402
    assert fal_posts(fake_fal) == []


def test_a_submit_to_a_full_queue_is_429_and_authorizes_nothing(db_url: str, fake_fal: Any) -> None:
    with gateway_server(db_url, fake_fal.url, max_queued=1) as gw:
        key = gw.ledger.admin.create_agent("bot").api_key
        fake_fal.set_mode("slow", delay=1.0)
        with gw.client(key) as client:
            first = client.post(f"/queue/{FLUX}", json=BODY)
            assert first.status_code == 200
            before = row_counts(gw.ledger.engine)
            full = client.post(f"/queue/{FLUX}", json=BODY)
            assert full.status_code == 429 and full.headers["Retry-After"] == "1"
            assert full.json()["error"]["code"] == "queue_full"
            assert "nothing was authorized" in full.json()["detail"]
            assert row_counts(gw.ledger.engine) == before  # no transaction, hold or denial
            _wait_status(client, first.json()["status_url"], "COMPLETED")
            fake_fal.set_mode(None)
            # Room again once the first run's task has ended (a moment after its settlement).
            deadline = time.monotonic() + 5
            while (again := client.post(f"/queue/{FLUX}", json=BODY)).status_code == 429:
                assert time.monotonic() < deadline, "the queue never had room again"
                time.sleep(0.02)
            assert again.status_code == 200
            _wait_status(client, again.json()["status_url"], "COMPLETED")
    assert len(fal_posts(fake_fal)) == 2


def test_a_burst_of_submits_never_queues_more_than_the_cap(db_url: str, fake_fal: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with gateway_server(db_url, fake_fal.url, max_queued=2) as gw:
        key = gw.ledger.admin.create_agent("bot").api_key
        fake_fal.set_mode("slow", delay=1.0)

        def submit(_: int) -> int:
            with gw.client(key) as client:
                return client.post(f"/queue/{FLUX}", json=BODY).status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = sorted(pool.map(submit, range(16)))
        assert statuses == [200, 200] + [429] * 14
        assert row_counts(gw.ledger.engine)["transactions"] == 2


def test_a_full_queue_still_answers_a_retry_of_a_submit_it_took(db_url: str, fake_fal: Any) -> None:
    with gateway_server(db_url, fake_fal.url, max_queued=1) as gw:
        key = gw.ledger.admin.create_agent("bot").api_key
        fake_fal.set_mode("slow", delay=1.0)
        with gw.client(key) as client:
            first = client.post(f"/queue/{FLUX}", json=BODY, headers={"Idempotency-Key": "job-1"})
            assert first.status_code == 200
            retry = client.post(f"/queue/{FLUX}", json=BODY, headers={"Idempotency-Key": "job-1"})
            assert retry.status_code == 200
            assert retry.headers["X-Pixelgov-Transaction"] == first.headers["X-Pixelgov-Transaction"]
            other = client.post(f"/queue/{FLUX}", json=BODY, headers={"Idempotency-Key": "job-2"})
            assert other.status_code == 429  # a new key is a new run: no room for it
            assert row_counts(gw.ledger.engine)["transactions"] == 1


def test_a_cancelled_submit_frees_its_place_in_the_queue(db_url: str, fake_fal: Any) -> None:
    with gateway_server(db_url, fake_fal.url, max_queued=2, upstream_connections=1) as gw:
        key = gw.ledger.admin.create_agent("bot").api_key
        fake_fal.set_mode("slow", delay=1.0)
        with gw.client(key) as client:
            client.post(f"/queue/{FLUX}", json=BODY)  # sent: holds the one upstream slot
            waiting = client.post(f"/queue/{FLUX}", json=BODY).json()  # waits for the slot
            assert client.post(f"/queue/{FLUX}", json=BODY).status_code == 429
            assert client.put(waiting["cancel_url"]).status_code == 202
            assert client.post(f"/queue/{FLUX}", json=BODY).status_code == 200


def test_an_unknown_request_id_is_404(gw: RunningGateway, bot: str) -> None:
    with gw.client(bot) as client:
        assert client.get("/queue/fal-ai/flux/requests/nope/status").status_code == 404
        assert client.get("/queue/fal-ai/flux/requests/nope").status_code == 404
        assert client.put("/queue/fal-ai/flux/requests/nope/cancel").status_code == 404


# --- operations --------------------------------------------------------------------------------------


def test_healthz_metrics_and_the_status_page(gw: RunningGateway, bot: str) -> None:
    with gw.client(bot) as client:
        client.post(f"/{FLUX}", json=BODY)
        assert client.get("/healthz").json()["status"] == "ok"
        metrics = client.get("/metrics").text
        assert 'pixelgov_decisions_total{outcome="allowed"} 1.0' in metrics
        assert 'pixelgov_runs_total{status="completed"} 1.0' in metrics
        assert "pixelgov_upstream_seconds_count 1.0" in metrics
        assert 'pixelgov_ledger_usd{kind="held"} 0.0' in metrics
        page = client.get("/")
        assert page.status_code == 200 and "pixelgov gateway: ok" in page.text
        assert SERVER_FAL_KEY not in page.text and ADMIN_TOKEN not in page.text


def test_the_access_log_has_one_json_line_per_request_and_no_secrets(
    gw: RunningGateway, bot: str, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="pixelgov.access"), gw.client(bot) as client:
        client.post(f"/{FLUX}?secret=shh", json=BODY)
        client.get("/healthz")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "pixelgov.access"]
    assert [(x["method"], x["route"], x["status"]) for x in lines] == [
        ("POST", "/{endpoint:path}", 200),
        ("GET", "/healthz", 200),
    ]
    assert lines[0]["agent"] == "bot" and isinstance(lines[0]["transaction"], int)
    text = caplog.text
    assert bot not in text and SERVER_FAL_KEY not in text and "shh" not in text


def test_the_analytics_api_serves_the_reports(gw: RunningGateway, bot: str) -> None:
    gw.ledger.admin.create_rule(spec(name="cap", type="request-cap", limit="0.01", agent="bot"))
    with gw.client(bot) as client:
        assert client.post("/fal-ai/flux/schnell", json=BODY).status_code == 200
        assert client.post(f"/{FLUX}", json=BODY).status_code == 402
    with gw.admin() as admin:
        summary = admin.get("/v1/analytics/summary").json()
        assert summary["total_transactions"] >= 1 and summary["total_denials"] == 1
        chart = admin.get("/v1/analytics/chart", params={"by": "day"}).json()
        assert chart["points"] and {"date", "usage", "spend", "denials"} <= set(chart["points"][0])
        boards = admin.get("/v1/analytics/leaderboards", params={"top": 5}).json()
        assert boards["top_agents"][0]["name"] == "bot" and boards["top_rules"][0]["name"] == "cap"
        assert admin.get("/v1/analytics/chart", params={"by": "year"}).status_code == 400


def test_a_queue_host_takes_submits_on_the_plain_path(gw: RunningGateway, bot: str) -> None:
    with gw.client(bot, headers={"Host": "queue.pixelgov.test"}) as client:
        r = client.post(f"/{FLUX}", json=BODY)
        assert r.status_code == 200
        handle = r.json()
        assert handle["status_url"] == f"http://queue.pixelgov.test/fal-ai/flux/requests/{handle['request_id']}/status"
        status = _wait_status(client, f"/fal-ai/flux/requests/{handle['request_id']}/status", "COMPLETED")
        assert status.status_code == 200
        assert client.get(f"/fal-ai/flux/requests/{handle['request_id']}").json()["images"]


# --- the command ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--ssl-certfile", "cert.pem"], {}),
        (["--ssl-certfile", "missing.pem", "--ssl-keyfile", "missing.pem"], {}),
        ([], {"PIXELGOV_MAX_BODY_BYTES": "lots"}),
        ([], {"PIXELGOV_DB_THREADS": "0"}),
        ([], {"PIXELGOV_MAX_QUEUED": "0"}),
        ([], {"PIXELGOV_MAX_QUEUED": "many"}),
        (["--workers", "2"], {"PROMETHEUS_MULTIPROC_DIR": "/nonexistent/pixelgov-metrics"}),
    ],
)
def test_serve_refuses_bad_options_with_one_line(
    args: list[str], env: dict[str, str], sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from pixelgov.cli import cli

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "serve", *args])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_a_locked_database_is_503_and_nothing_is_sent(sqlite_url: str, fake_fal: Any) -> None:
    import sqlite3

    with gateway_server(sqlite_url, fake_fal.url, settings={"db_timeout": 0.3}) as gw:
        key = gw.ledger.admin.create_agent("bot").api_key
        blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with gw.client(key) as client:
                r = client.post(f"/{FLUX}", json=BODY)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable"
        assert r.headers["Retry-After"] == "1"
    assert fal_posts(fake_fal) == []


@pytest.mark.parametrize("ref", ["¹", "٣", "١٢"])
def test_a_rule_reference_of_non_ascii_digits_is_404_not_500(gw: RunningGateway, ref: str) -> None:
    with gw.admin() as admin:
        assert admin.get(f"/v1/spending-rules/{ref}").status_code == 404
        assert admin.patch(f"/v1/spending-rules/{ref}", json={"version": 1, "limit": "1"}).status_code == 404
        assert admin.delete(f"/v1/spending-rules/{ref}").status_code == 404


def test_a_stopping_worker_ends_its_queued_runs_after_the_grace_period(db_url: str, fake_fal: Any) -> None:
    fake_fal.set_mode("slow", delay=3)
    with gateway_server(db_url, fake_fal.url, shutdown_grace=0.3, upstream_connections=1) as gw:
        key = gw.ledger.admin.create_agent("bot").api_key
        with gw.client(key) as client:
            sent = client.post(f"/queue/{FLUX}", json=BODY)
            waiting = client.post(f"/queue/{FLUX}", json=BODY)
        time.sleep(0.3)
        ids = int(sent.headers["X-Pixelgov-Transaction"]), int(waiting.headers["X-Pixelgov-Transaction"])
    from ledger import Ledger

    with Ledger(db_url) as after:
        statuses = [after.governor.transaction(i).status.value for i in ids]
    assert statuses == ["unknown", "failed"]  # sent: its estimate stays counted; never sent: released


def test_serve_refuses_a_malformed_price_book_at_start(
    sqlite_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from pixelgov.cli import cli

    book = tmp_path / "book.json"
    book.write_text('{"version": 1}')
    monkeypatch.setenv("PIXELGOV_PRICE_BOOK", str(book))
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "serve"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_usd_counters_sum_exactly_and_convert_only_when_scraped() -> None:
    from decimal import Decimal

    from prometheus_client import generate_latest

    from pixelgov.gateway.metrics import Metrics

    metrics = Metrics()
    for _ in range(10):
        metrics.estimated.inc(Decimal("0.1"))
    assert metrics.estimated.total == Decimal("1.0")  # ten float increments of 0.1 would not sum to 1
    assert "pixelgov_authorized_usd_total 1.0" in generate_latest(metrics.registry).decode()
    # Past 2**53 nano-USD (about 9 million USD) a float64 count of nano-USD would round: this one is exact.
    metrics.spend.inc(Decimal("9007199.254740992"))
    metrics.spend.inc(Decimal("0.000000001"))
    assert metrics.spend.total == Decimal("9007199.254740993")


def test_shared_usd_counters_are_put_back_together_exactly_from_every_workers_parts() -> None:
    from prometheus_client.core import GaugeMetricFamily

    from pixelgov.gateway.metrics import usd_families

    # Two workers' parts, summed by prometheus-client: 5.5 USD and 3.75 USD.
    whole = GaugeMetricFamily("pixelgov_settled_usd_whole", "d", value=5 + 3)
    nano = GaugeMetricFamily("pixelgov_settled_usd_nano", "d", value=500_000_000 + 750_000_000)
    other = GaugeMetricFamily("pixelgov_other", "d", value=1)
    out = {f.name: f for f in usd_families([whole, nano, other], {"pixelgov_settled_usd": "settled"})}
    assert set(out) == {"pixelgov_settled_usd", "pixelgov_other"}
    assert out["pixelgov_settled_usd"].samples[0].value == 9.25
