"""Operations: `GET /healthz` (database reachable, schema current), `GET /metrics`, `GET /`."""

from __future__ import annotations

import html
import os
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ledger.store.db import SCHEMA_HEAD, current_revision

from .auth import gateway
from .metrics import CONTENT_TYPE
from .routing import GatewayRoute
from .schemas import Health
from .service import Gateway

router = APIRouter(route_class=GatewayRoute, tags=["operations"])
GW = Annotated[Gateway, Depends(gateway)]


def health(gw: Gateway) -> tuple[dict[str, object], int]:
    try:
        revision = current_revision(gw.ledger.engine)
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        return {
            "status": "unavailable",
            "database": f"unreachable ({type(exc).__name__})",
            "schema_revision": None,
        }, 503
    if revision != SCHEMA_HEAD:
        return {
            "status": "unavailable",
            "database": f"schema {revision} is not {SCHEMA_HEAD} (pixelgov db upgrade)",
            "schema_revision": revision,
        }, 503
    return {"status": "ok", "database": "reachable", "schema_revision": revision}, 200


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "not ready"}},
    summary="Database reachable and schema current",
)
async def healthz(gw: GW) -> JSONResponse:
    doc, status = await gw.db(health, gw)
    return JSONResponse(doc, status_code=status)


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics of the server (every worker's counts summed)",
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(gw: GW) -> Response:
    body = await gw.db(gw.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)


@router.get("/", response_class=HTMLResponse, summary="Status page", responses={200: {"content": {"text/html": {}}}})
async def index(gw: GW) -> HTMLResponse:
    doc, _ = await gw.db(health, gw)
    cfg = gw.config
    rows = [
        ("database", f"{gw.ledger.url.split('://')[0]} — {doc['database']}"),
        ("schema", str(doc["schema_revision"])),
        ("price book", gw.ledger.book.version),
        ("upstream", gw.upstream_config.url),
        ("upstream key", "configured" if cfg.fal_key else "missing (FAL_KEY): runs answer 502"),
        ("admin API", "on" if cfg.admin_token else "off (no PIXELGOV_ADMIN_TOKEN)"),
        ("worker", f"pid {os.getpid()}, up since {gw.started_at:%Y-%m-%d %H:%M:%S} UTC"),
    ]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>pixelgov gateway</title></head><body>"
        f"<h1>pixelgov gateway: {html.escape(str(doc['status']))}</h1><table>{table}</table>"
        "<p><a href='/docs'>API documentation</a> · <a href='/metrics'>metrics</a> · "
        "<a href='/healthz'>health</a></p></body></html>"
    )
    return HTMLResponse(page)
