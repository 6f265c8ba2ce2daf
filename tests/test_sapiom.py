"""The Sapiom-compatible transactions API and the seed SDK's service call, over plain HTTP (issue 18).

The exchange `@sapiom/fetch` 0.3.0 makes, request by request (read from its `dist/`): `POST
/sapiom/v1/transactions` with `x-api-key` and `requestFacts` (no body, no price), then the service
call `POST /v1/run/{endpoint}` with `X-Sapiom-Transaction-Id` and no key, then `POST
…/complete`. The Node test (`test_sapiom_sdk.py`) runs the real package; this one pins the
contract where Node is missing, on SQLite and PostgreSQL, against a real gateway and fake FAL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from gateway_support import RunningGateway, gateway_server
from support import row_counts, snapshot, spec

FLUX = "fal-ai/flux/dev"
BODY = {"prompt": "a red fox in the snow", "image_size": "landscape_4_3"}  # 0.79 MP x 0.015 = 0.01185


@pytest.fixture
def gw(db_url: str, fake_fal: Any) -> Iterator[RunningGateway]:
    with gateway_server(db_url, fake_fal.url) as running:
        yield running


def sapiom(gw: RunningGateway, key: str) -> httpx.Client:
    return httpx.Client(base_url=gw.url + "/sapiom", headers={"x-api-key": key}, timeout=10)


def create_body(gw: RunningGateway, endpoint: str = FLUX, **extra: Any) -> dict[str, Any]:
    """What the SDK's handleAuthorization sends for `fetch(url, {method: "POST", ...})`."""
    url = f"{gw.url}/v1/run/{endpoint}"
    return {
        "requestFacts": {
            "source": "http-client",
            "version": "v1",
            "sdk": {"name": "@sapiom/fetch", "version": "1.0.0"},
            "request": {
                "method": "POST",
                "url": url,
                "urlParsed": {"protocol": "http", "hostname": "127.0.0.1", "pathname": f"/v1/run/{endpoint}"},
                "headers": {"content-type": "application/json"},
                "hasBody": True,
                "contentType": "application/json",
                "clientType": "fetch",
                "timestamp": "2026-12-04T12:00:00.000Z",
            },
        },
        "metadata": {"preemptiveAuthorization": True},
        **extra,
    }


def service_call(gw: RunningGateway, pre_id: str, endpoint: str = FLUX, body: Any = None) -> httpx.Response:
    with httpx.Client(base_url=gw.url, timeout=10) as plain:
        return plain.post(
            f"/v1/run/{endpoint}", json=BODY if body is None else body, headers={"X-Sapiom-Transaction-Id": pre_id}
        )


def fal_posts(fake: Any) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST"]


def test_the_sdk_exchange_with_an_agent_key_forwards_once_and_settles_exactly(
    gw: RunningGateway, fake_fal: Any
) -> None:
    key = str(gw.ledger.admin.create_agent("bot").api_key)
    with sapiom(gw, key) as api:
        created = api.post("/v1/transactions", json=create_body(gw))
        assert created.status_code == 201, created.text
        doc = created.json()
        assert doc["status"] == "authorized" and doc["costs"] == [] and doc["requiresPayment"] is False
        pre_id = doc["id"]
        assert pre_id.startswith("pa_") and len(pre_id) >= 35  # 192 random bits
        assert gw.ledger.governor.transactions() == []  # nothing held before the body is known
        assert api.get(f"/v1/transactions/{pre_id}").json()["status"] == "authorized"  # the SDK's poll

        r = service_call(gw, pre_id)
        assert r.status_code == 200, r.text
        assert r.json()["images"][0]["url"].startswith("http")  # the seed's data.images[0].url
        assert r.headers["X-Pixelgov-Actual-Cost"] == "0.01185"

        got = api.get(f"/v1/transactions/{pre_id}").json()
        assert got["status"] == "completed" and got["outcome"] == "success"
        active = [c for c in got["costs"] if c["isActive"]]
        assert [(c["fiatAmount"], c["fiatAssetSymbol"], c["isEstimate"]) for c in active] == [("0.01185", "USD", False)]
        estimate = next(c for c in got["costs"] if c["isEstimate"])
        assert active[0]["supersedesCostId"] == estimate["id"] and estimate["isActive"] is False

        for _ in range(2):  # the SDK's fire-and-forget complete, and a retry: never moves money
            done = api.post(f"/v1/transactions/{pre_id}/complete", json={"outcome": "error", "responseFacts": {}})
            assert done.status_code == 200 and done.json()["transaction"]["status"] == "completed"
        assert api.get(f"/v1/transactions/{pre_id}/costs").json() == got["costs"]

    again = service_call(gw, pre_id)  # the id is used: a second request is refused, nothing forwarded
    assert again.status_code == 403 and "already used" in again.json()["error"]["message"]
    assert len(fal_posts(fake_fal)) == 1
    [tx] = gw.ledger.governor.transactions()
    assert tx.agent == "bot" and tx.status.value == "completed" and tx.actual_cost == Decimal("0.01185")


def test_a_service_key_names_its_agent_and_sees_only_what_it_asked(gw: RunningGateway, fake_fal: Any) -> None:
    service = gw.ledger.admin.create_service_key("fleet").key
    other_service = gw.ledger.admin.create_service_key("other-fleet").key
    bystander = str(gw.ledger.admin.create_agent("bystander").api_key)
    with sapiom(gw, service) as api:
        created = api.post("/v1/transactions", json=create_body(gw, agentName="worker-7"))
        assert created.status_code == 201 and created.json()["status"] == "authorized"
        pre_id = created.json()["id"]
        assert gw.ledger.admin.agent("worker-7").name == "worker-7"  # created on first use
        assert service_call(gw, pre_id).status_code == 200
        listed = api.get("/v1/transactions").json()
        assert [d["id"] for d in listed] == [pre_id] and listed[0]["pixelgov"]["agent"] == "worker-7"
        assert api.post("/v1/transactions", json=create_body(gw)).status_code == 400  # no agent named
    for intruder in (other_service, bystander):
        with sapiom(gw, intruder) as api:
            assert api.get(f"/v1/transactions/{pre_id}").status_code == 404
            assert api.post(f"/v1/transactions/{pre_id}/complete", json={"outcome": "success"}).status_code == 404
            assert api.get("/v1/transactions").json() == []
    [tx] = gw.ledger.governor.transactions()
    assert tx.agent == "worker-7" and tx.actual_cost == Decimal("0.01185")


def test_an_agent_key_cannot_speak_for_another_agent(gw: RunningGateway) -> None:
    key = str(gw.ledger.admin.create_agent("bot").api_key)
    victim = gw.ledger.admin.create_agent("victim")
    before = snapshot(gw.ledger.engine)
    with sapiom(gw, key) as api:
        assert api.post("/v1/transactions", json=create_body(gw, agentName="victim")).status_code == 403
        assert api.post("/v1/transactions", json=create_body(gw, agentId=str(victim.id))).status_code == 403
    assert snapshot(gw.ledger.engine) == before


@pytest.mark.parametrize(
    ("setup", "endpoint", "reason"),
    [
        ("paused", FLUX, "paused"),
        ("allowlist", FLUX, "schnell-only"),
        ("spent", FLUX, "daily"),
        ("none", "fal-ai/not-a-model", "unknown endpoint"),
    ],
)
def test_what_needs_no_price_is_denied_at_creation_and_nothing_is_forwarded(
    gw: RunningGateway, fake_fal: Any, setup: str, endpoint: str, reason: str
) -> None:
    key = str(gw.ledger.admin.create_agent("bot").api_key)
    if setup == "paused":
        gw.ledger.admin.update_agent("bot", status="paused")
    elif setup == "allowlist":
        gw.ledger.admin.create_rule(spec(name="schnell-only", type="model-allowlist", models=["fal-ai/flux/schnell"]))
    elif setup == "spent":
        gw.ledger.admin.create_rule(spec(name="daily", type="spend-limit", limit="0.01185", period="day", agent="bot"))
        with gw.client(key) as client:
            assert client.post(f"/{FLUX}", json=BODY).status_code == 200  # the day's budget, all of it
    posts = len(fal_posts(fake_fal))
    with sapiom(gw, key) as api:
        doc = api.post("/v1/transactions", json=create_body(gw, endpoint)).json()
        assert doc["status"] == "denied" and reason in doc["declineReason"], doc
        assert api.get(f"/v1/transactions/{doc['id']}").json()["status"] == "denied"
    r = service_call(gw, doc["id"], endpoint)
    assert r.status_code in (403, 404) and len(fal_posts(fake_fal)) == posts


def test_a_budget_spent_meanwhile_is_a_402_at_the_service_call(gw: RunningGateway, fake_fal: Any) -> None:
    key = str(gw.ledger.admin.create_agent("bot").api_key)
    gw.ledger.admin.create_rule(spec(name="daily", type="spend-limit", limit="0.02", period="day", agent="bot"))
    with sapiom(gw, key) as api:
        first, second = (api.post("/v1/transactions", json=create_body(gw)).json()["id"] for _ in range(2))
        assert service_call(gw, first).status_code == 200
        r = service_call(gw, second)
        assert r.status_code == 402 and "daily" in r.json()["error"]["message"]
        doc = api.get(f"/v1/transactions/{second}").json()
        assert doc["status"] == "denied" and "daily" in doc["declineReason"]
    assert len(fal_posts(fake_fal)) == 1
    spent = sum((t.actual_cost or Decimal(0)) for t in gw.ledger.governor.transactions())
    assert spent == Decimal("0.01185")


def test_two_requests_racing_with_one_id_forward_once(gw: RunningGateway, fake_fal: Any) -> None:
    import concurrent.futures

    key = str(gw.ledger.admin.create_agent("bot").api_key)
    with sapiom(gw, key) as api:
        pre_id = api.post("/v1/transactions", json=create_body(gw)).json()["id"]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = sorted(r.status_code for r in pool.map(lambda _: service_call(gw, pre_id), range(8)))
    assert statuses == [200] + [403] * 7
    assert len(fal_posts(fake_fal)) == 1 and len(gw.ledger.governor.transactions()) == 1


def test_an_unused_authorization_is_cancelled_by_complete(gw: RunningGateway, fake_fal: Any) -> None:
    key = str(gw.ledger.admin.create_agent("bot").api_key)
    with sapiom(gw, key) as api:
        pre_id = api.post("/v1/transactions", json=create_body(gw)).json()["id"]
        done = api.post(f"/v1/transactions/{pre_id}/complete", json={"outcome": "error"})
        assert done.status_code == 200 and done.json()["transaction"]["status"] == "cancelled"
    assert service_call(gw, pre_id).status_code == 403 and fal_posts(fake_fal) == []


def test_an_authorization_expires_after_the_hold_ttl(db_url: str, fake_fal: Any) -> None:
    with gateway_server(db_url, fake_fal.url, settings={"hold_ttl": 1}) as gw:
        key = str(gw.ledger.admin.create_agent("bot").api_key)
        with sapiom(gw, key) as api:
            pre_id = api.post("/v1/transactions", json=create_body(gw)).json()["id"]
            time.sleep(1.2)
            assert api.get(f"/v1/transactions/{pre_id}").json()["status"] == "cancelled"
        r = service_call(gw, pre_id)
        assert r.status_code == 403 and "expired" in r.json()["error"]["message"]
        assert fal_posts(fake_fal) == []


def test_costs_cannot_be_added_and_x402_is_refused(gw: RunningGateway) -> None:
    key = str(gw.ledger.admin.create_agent("bot").api_key)
    with sapiom(gw, key) as api:
        pre_id = api.post("/v1/transactions", json=create_body(gw)).json()["id"]
        cost = {"fiatAmount": "0", "fiatAssetSymbol": "USD", "isEstimate": False}
        r = api.post(f"/v1/transactions/{pre_id}/costs", json=cost)
        assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
        r = api.post(f"/v1/transactions/{pre_id}/reauthorize", json={"x402": {}})
        assert r.status_code == 400 and "x402" in r.json()["error"]["message"]
        facts = api.post(f"/v1/transactions/{pre_id}/facts", json={"source": "agent", "facts": {"step": 1}})
        assert facts.status_code == 201 and facts.json()["success"] is True


def test_v1_run_without_key_or_id_is_401_and_forwards_nothing(gw: RunningGateway, fake_fal: Any) -> None:
    with httpx.Client(base_url=gw.url, timeout=10) as plain:
        assert plain.post(f"/v1/run/{FLUX}", json=BODY).status_code == 401
    assert fal_posts(fake_fal) == []


@pytest.mark.parametrize(
    "case",
    ["no request facts", "facts not an object", "another host", "not a URL", "huge facts", "huge body"],
)
def test_bad_transaction_requests_are_4xx_and_authorize_nothing(gw: RunningGateway, case: str) -> None:
    key = str(gw.ledger.admin.create_agent("bot").api_key)
    body: Any = create_body(gw)
    if case == "no request facts":
        del body["requestFacts"]
    elif case == "facts not an object":
        body["requestFacts"] = "POST /v1/run/fal-ai/flux/dev"
    elif case == "another host":
        body["requestFacts"]["request"]["url"] = f"https://fal.run/{FLUX}"
    elif case == "not a URL":
        body["requestFacts"]["request"]["url"] = "javascript:alert(1)"
    elif case == "huge facts":
        body["requestFacts"]["request"]["note"] = "x" * 20_000
    elif case == "huge body":
        body["metadata"] = {"pad": "x" * 2_000_000}
    before = row_counts(gw.ledger.engine)
    with sapiom(gw, key) as api:
        r = api.post("/v1/transactions", json=body)
    assert 400 <= r.status_code < 500 and r.json()["error"]["code"], r.text
    assert row_counts(gw.ledger.engine) == before


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"X-Sapiom-Transaction-Id": "pa_" + "x" * 10_240}, {400, 401}),  # a 10 kB id
        ({"X-Sapiom-Transaction-Id": "pa_unknown"}, {401}),
        ({"X-Sapiom-Transaction-Id": "pa_x", "Authorization": "Key pgv_x"}, {400}),
        ({"X-Sapiom-Transaction-Id": ""}, {401}),
    ],
)
def test_bad_transaction_ids_forward_nothing(
    gw: RunningGateway, fake_fal: Any, headers: dict[str, str], status: set[int]
) -> None:
    before = row_counts(gw.ledger.engine)
    with httpx.Client(base_url=gw.url, timeout=10) as plain:
        r = plain.post(f"/v1/run/{FLUX}", json=BODY, headers=headers)
    assert r.status_code in status and r.json()["error"]["code"], r.text
    assert fal_posts(fake_fal) == [] and row_counts(gw.ledger.engine) == before


def test_an_id_for_one_endpoint_does_not_run_another(gw: RunningGateway, fake_fal: Any) -> None:
    key = str(gw.ledger.admin.create_agent("bot").api_key)
    with sapiom(gw, key) as api:
        pre_id = api.post("/v1/transactions", json=create_body(gw, "fal-ai/flux/schnell")).json()["id"]
    r = service_call(gw, pre_id, "fal-ai/flux-pro")
    assert r.status_code == 403 and fal_posts(fake_fal) == []
    assert service_call(gw, pre_id, "fal-ai/flux/schnell").status_code == 200  # still unused
