"""Who is asking: FastAPI dependencies, declared once and reused by every route.

- `agent`: an agent's own key (`Authorization: Key …` or `Bearer …`), or a service key (or
  the admin token) plus `X-Pixelgov-Agent: NAME`; 401 for a missing or unknown key.
- `caller`: the same, without requiring an agent (a service key's status polls name none).
- `admin`: `Authorization: Bearer $PIXELGOV_ADMIN_TOKEN`, compared in constant time; with no
  token configured the admin API is off and answers 401 saying so.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from .errors import Unauthorized
from .identity import Identity
from .service import Gateway


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def _key(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("missing API key: send Authorization: Key <your key> (or Bearer <your key>)")
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() not in ("key", "bearer") or not key or len(key) > 512:
        raise Unauthorized("malformed Authorization header: expected Key <your key> or Bearer <your key>")
    return key


AuthorizationHeader = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]
AgentHeader = Annotated[
    str | None,
    Header(
        alias="X-Pixelgov-Agent",
        description=(
            "with a service key: the agent this request speaks for (created on first use when auto-create is on)"
        ),
    ),
]


async def caller(
    request: Request, authorization: AuthorizationHeader = None, x_pixelgov_agent: AgentHeader = None
) -> Identity:
    identity = await gateway(request).identify(_key(authorization), x_pixelgov_agent)
    request.state.agent = identity.agent
    return identity


async def agent(identity: Annotated[Identity, Depends(caller)]) -> Identity:
    identity.require_agent()
    return identity


async def admin(request: Request, authorization: AuthorizationHeader = None) -> None:
    gw = gateway(request)
    if not gw.config.admin_token:
        raise Unauthorized("the admin API is off: the server has no PIXELGOV_ADMIN_TOKEN")
    if not authorization:
        raise Unauthorized("missing admin token: send Authorization: Bearer <PIXELGOV_ADMIN_TOKEN>")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not gw.is_admin_token(token.strip()):
        raise Unauthorized("invalid admin token")
    request.state.agent = "(admin)"


Caller = Annotated[Identity, Depends(caller)]
AgentIdentity = Annotated[Identity, Depends(agent)]
Admin = Depends(admin)
