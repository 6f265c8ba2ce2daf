"""The hot route's plain-ASGI fast path (`pixelgov.gateway.fal.FastRun`) answers exactly what the
FastAPI route answers: every request below is sent to two gateways, one with the fast path and
one without, each on its own fresh ledger in front of the same fake FAL; statuses, bodies, the
headers clients read and what the ledgers recorded must be the same. Each request is sent twice
in a row (the router teaches the fast path a path on its first visit)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from gateway_support import ADMIN_TOKEN, SERVER_FAL_KEY

FLUX = "/fal-ai/flux/dev"
BODY = json.dumps({"prompt": "a red fox in the snow"}).encode()
HEADERS = ("content-type", "www-authenticate", "retry-after", "x-pixelgov-replayed")
TX_HEADERS = ("x-pixelgov-transaction", "x-pixelgov-estimated-cost", "x-pixelgov-actual-cost")
LIMIT = 4096


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 1000):
        yield data[i : i + 1000]


def _cases(agent: str, service: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, httpx request arguments) — sent in this order to both gateways."""
    key = {"Authorization": f"Key {agent}"}
    json_ = {"Content-Type": "application/json"}
    return [
        ("run", {"content": BODY, "headers": {**key, **json_}}),
        ("bearer", {"content": BODY, "headers": {"Authorization": f"Bearer {agent}", **json_}}),
        ("json charset", {"content": BODY, "headers": {**key, "Content-Type": "application/json; charset=utf-8"}}),
        ("no key", {"content": BODY, "headers": json_}),
        ("unknown key", {"content": BODY, "headers": {"Authorization": "Key nope", **json_}}),
        ("malformed authorization", {"content": BODY, "headers": {"Authorization": "Basic x", **json_}}),
        ("malformed json", {"content": b"{nope", "headers": {**key, **json_}}),
        ("malformed json, no key", {"content": b"{nope", "headers": json_}),
        ("a list", {"content": b"[1, 2]", "headers": {**key, **json_}}),
        ("empty body", {"content": b"", "headers": {**key, **json_}}),
        ("no content type", {"content": BODY, "headers": key}),
        ("text/plain", {"content": BODY, "headers": {**key, "Content-Type": "text/plain"}}),
        ("NaN", {"content": b'{"prompt": NaN}', "headers": {**key, **json_}}),
        ("invalid request", {"content": b'{"prompt": 5}', "headers": {**key, **json_}}),
        ("unknown endpoint", {"url": "/fal-ai/no-such-model", "content": BODY, "headers": {**key, **json_}}),
        ("empty endpoint", {"url": "/", "content": BODY, "headers": {**key, **json_}}),
        ("idempotency", {"content": BODY, "headers": {**key, **json_, "Idempotency-Key": "k-1"}}),
        ("idempotency too long", {"content": BODY, "headers": {**key, **json_, "Idempotency-Key": "k" * 201}}),
        ("idempotency too long, no key", {"content": BODY, "headers": {**json_, "Idempotency-Key": "k" * 201}}),
        ("idempotency empty", {"content": BODY, "headers": {**key, **json_, "Idempotency-Key": ""}}),
        ("another agent's name", {"content": BODY, "headers": {**key, **json_, "X-Pixelgov-Agent": "other"}}),
        ("service key without agent", {"content": BODY, "headers": {"Authorization": f"Key {service}", **json_}}),
        (
            "service key with agent",
            {"content": BODY, "headers": {"Authorization": f"Key {service}", **json_, "X-Pixelgov-Agent": "bot"}},
        ),
        ("bad agent name", {"content": BODY, "headers": {**key, **json_, "X-Pixelgov-Agent": "not a name!"}}),
        ("admin token", {"content": BODY, "headers": {"Authorization": f"Bearer {ADMIN_TOKEN}", **json_}}),
        ("queue host", {"content": BODY, "headers": {**key, **json_, "Host": "queue.example"}}),
        ("chunked over the limit", {"content": b'{"prompt": "' + b"x" * LIMIT + b'"}', "headers": {**key, **json_}}),
        ("paused", {"content": BODY, "headers": {**key, **json_}, "pause": True}),
    ]


def _shape(r: httpx.Response) -> dict[str, Any]:
    """What a client reads: the status, the headers above, the body (FAL's answer by its shape)."""
    try:
        body: Any = r.json()
    except ValueError:
        body = r.text
    if r.status_code == 200 and isinstance(body, dict) and "images" in body:
        body = {"images": [(i["width"], i["height"]) for i in body["images"]], "keys": sorted(body)}
    if isinstance(body, dict) and "request_id" in body:  # a queue submit: a new id each time
        body = json.loads(json.dumps(body).replace(body["request_id"], "(id)"))
    return {
        "status": r.status_code,
        "body": _timeless(body),
        "headers": {h: r.headers.get(h) for h in HEADERS + TX_HEADERS},
    }


def _timeless(doc: Any) -> Any:
    """`doc` without timestamps (`*_at`): the two ledgers write at different times."""
    if isinstance(doc, dict):
        return {k: _timeless(v) for k, v in doc.items() if not k.endswith("_at")}
    if isinstance(doc, list):
        return [_timeless(v) for v in doc]
    return doc


async def _exchange(
    url: str, fake_url: str, fast: bool, requests: Callable[[str, str], list[tuple[str, dict[str, Any]]]]
) -> tuple[list[tuple[str, dict[str, Any]]], list[Any]]:
    from sqlalchemy import select

    from ledger import Ledger, Settings
    from ledger.forward.upstream import UpstreamConfig
    from ledger.store.models import transactions
    from pixelgov.gateway import GatewayConfig, create_app

    config = GatewayConfig(admin_token=ADMIN_TOKEN, fal_key=SERVER_FAL_KEY, max_body_bytes=LIMIT)
    with Ledger(url, settings=Settings(hold_ttl=900, auto_create_agents=True)) as ledger:
        agent = str(ledger.admin.create_agent("bot").api_key)
        service = str(ledger.admin.create_service_key("fleet").key)
        app = create_app(ledger, config, upstream=UpstreamConfig(url=fake_url, timeout=5), fast_path=fast)
        seen = []
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
                for name, args in requests(agent, service):
                    args = dict(args)
                    if args.pop("pause", False):
                        ledger.admin.update_agent("bot", status="paused")
                    path = args.pop("url", FLUX)
                    for attempt in (1, 2):
                        sent = dict(args)
                        if name.startswith("chunked"):  # no Content-Length: the limit is met while reading
                            sent["content"] = _chunks(args["content"])
                        r = await client.post(path, **sent)
                        seen.append((f"{name} #{attempt}", _shape(r)))
        with ledger.engine.connect() as conn:
            t = transactions.c
            rows = conn.execute(
                select(
                    t.id,
                    t.agent_id,
                    t.endpoint,
                    t.status,
                    t.estimated_cost,
                    t.actual_cost,
                    t.idempotency_key,
                    t.upstream_status,
                ).order_by(t.id)
            ).all()
        return seen, [tuple(r) for r in rows]


def test_the_fast_path_answers_what_the_fastapi_route_answers(
    _sqlite_template: Path, tmp_path: Path, fake_fal: Any
) -> None:
    urls = []
    for name in ("fast", "slow"):
        path = tmp_path / f"{name}.db"
        shutil.copy(_sqlite_template, path)
        urls.append(f"sqlite:///{path}")
    fast, fast_rows = asyncio.run(_exchange(urls[0], fake_fal.url, True, _cases))
    slow, slow_rows = asyncio.run(_exchange(urls[1], fake_fal.url, False, _cases))
    assert [n for n, _ in fast] == [n for n, _ in slow]
    for (name, got), (_, want) in zip(fast, slow, strict=True):
        assert got == want, name
    assert fast_rows == slow_rows
    statuses = {name: shape["status"] for name, shape in fast}
    # The battery covers what it claims to (and the second visits went through the fast path).
    assert statuses["run #2"] == 200 and statuses["no key #2"] == 401 and statuses["paused #2"] == 402
    assert statuses["malformed json #2"] == 400 and statuses["unknown endpoint #2"] == 404
    assert statuses["chunked over the limit #2"] == 413 and statuses["idempotency #2"] == 200
    assert dict(fast)["idempotency #2"]["headers"]["x-pixelgov-replayed"] == "true"


def test_the_fast_path_takes_only_paths_the_router_sent_to_the_run_route(sqlite_url: str, fake_fal: Any) -> None:
    from ledger import Ledger
    from pixelgov.gateway import GatewayConfig, create_app
    from pixelgov.gateway.fal import FastRun

    with Ledger(sqlite_url) as ledger:
        app = create_app(ledger, GatewayConfig(admin_token=ADMIN_TOKEN, fal_key=SERVER_FAL_KEY))
        fast = FastRun(app)

        async def go() -> None:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
                    for path in ("/v1/price/run/fal-ai/flux/dev", "/healthz", "/queue/fal-ai/flux/dev", FLUX):
                        await client.post(path, json={"prompt": "x"})

        asyncio.run(go())
        edge = app.middleware_stack
        while edge is not None and type(edge).__name__ != "Edge":
            edge = getattr(edge, "app", None)
        assert edge is not None
        # The price and queue routes stay theirs; a POST to the GET-only /healthz is the router's
        # `run` (an unknown endpoint, 404) as it always was.
        assert edge.fast.paths == {FLUX, "/healthz"}
        scope: dict[str, Any] = {"method": "POST", "path": "/v1/price/run/x", "root_path": ""}
        assert not fast.takes(scope)
        fast.learn({**scope, "route": None})
        assert not fast.takes(scope)
