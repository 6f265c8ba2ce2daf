"""What every dashboard route goes through before and after its page is built.

`DashboardRoute` wraps each handler: with no admin token configured the dashboard is off (404);
without a valid session a page redirects (303) to the login form; a POST without the session's
CSRF token is refused (403); a library error becomes an HTML page with the error's status (400,
404, 409, 503 …: never a stack trace); and every answer carries the security headers below.
Routes mark themselves public with `openapi_extra={"x-public": True}` (login, static files).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import FormData

from pricing.errors import PixelgovError

from ..errors import http_status
from .money import exact, usd
from .session import SESSION_COOKIE, Session, Signer

log = logging.getLogger("pixelgov.dashboard")

#: Nothing is loaded from anywhere but this server; no inline script or style; never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

NAV = (
    ("overview", "Overview", "/dashboard"),
    ("budgets", "Budgets", "/dashboard/budgets"),
    ("agents", "Agents", "/dashboard/agents"),
    ("transactions", "Transactions", "/dashboard/transactions"),
    ("denials", "Denials and alerts", "/dashboard/denials"),
)


def _when(value: Any) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters.update(usd=usd, exact=exact, when=_when)


def signer(request: Request, token: str) -> Signer:
    """The app's signer for its admin token (made on first use)."""
    state = request.app.state
    found: Signer | None = getattr(state, "dashboard_signer", None)
    if found is None or getattr(state, "dashboard_signer_token", None) != token:
        found = Signer(token)
        state.dashboard_signer, state.dashboard_signer_token = found, token
    return found


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page: `template` with the layout's context (navigation, the session's CSRF token)."""
    session: Session | None = getattr(request.state, "session", None)
    body = templates.get_template(template).render(
        nav=NAV,
        csrf=session.csrf if session else "",
        logged_in=session is not None,
        **context,
    )
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def error_page(request: Request, status: int, message: str, *, title: str | None = None) -> HTMLResponse:
    titles = {400: "Bad request", 403: "Forbidden", 404: "Not found", 409: "Conflict", 503: "Unavailable"}
    return render(
        request,
        "error.html",
        status,
        title=title or titles.get(status, "Error"),
        message=message,
        active="",
    )


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path
    if request.method == "GET" and request.url.query:
        target += "?" + request.url.query
    return RedirectResponse(f"/dashboard/login?next={quote(target[:1000], safe='')}", status_code=303)


async def form_of(request: Request) -> FormData | None:
    try:
        return await request.form()
    except Exception as exc:  # noqa: BLE001 - any malformed body is the client's
        log.debug("dashboard form: %s", type(exc).__name__)
        return None


def field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


async def ended_elsewhere(request: Request, session: Session) -> bool:
    """Whether the session was logged out on any worker or host (the ledger keeps logouts); this
    worker then remembers it and asks no more."""
    gw = request.app.state.gateway
    if await gw.db(gw.ledger.admin.dashboard_session_ended, session.id):
        request.state.signer.revoke(session)
        return True
    return False


class DashboardRoute(APIRoute):
    """A dashboard route: session, CSRF, HTML errors and security headers (see the module docstring)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()
        public = bool((self.openapi_extra or {}).get("x-public"))

        async def handler(request: Request) -> Response:
            response = await self._answer(request, original, public)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return handler

    async def _answer(
        self, request: Request, original: Callable[[Request], Coroutine[Any, Any, Response]], public: bool
    ) -> Response:
        token = request.app.state.gateway.config.admin_token
        request.state.agent = "(dashboard)"
        if not token:
            return render(request, "disabled.html", 404, title="Dashboard off", active="")
        sign = signer(request, token)
        request.state.signer = sign
        session = sign.verify(request.cookies.get(SESSION_COOKIE))
        request.state.session = session
        if not public:
            if session is not None:
                try:
                    if await ended_elsewhere(request, session):
                        session = request.state.session = None
                except SQLAlchemyError as exc:
                    log.warning("dashboard: database error %s", type(exc).__name__)
                    return error_page(request, 503, "The database is unavailable; try again shortly.")
            if session is None:
                return login_redirect(request)
            if request.method == "POST":
                form = await form_of(request)
                if form is None:
                    return error_page(request, 400, "The form could not be read.")
                if not sign.csrf_ok(session, field(form, "csrf")):
                    return error_page(
                        request, 403, "The form's security token is missing or wrong: reload the page and try again."
                    )
        try:
            return await original(request)
        except PixelgovError as exc:
            return error_page(request, http_status(exc), str(exc))
        except RequestValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'input'}: {e.get('msg', 'invalid')}"
                for e in exc.errors()
            )
            return error_page(request, 400, problems or "invalid input")
        except SQLAlchemyError as exc:
            log.warning("dashboard: database error %s", type(exc).__name__)
            return error_page(request, 503, "The database is unavailable; try again shortly.")
