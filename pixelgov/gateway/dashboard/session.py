"""Dashboard sessions and CSRF tokens: signed, expiring, never the admin token itself.

A session cookie is `<session id>.<expiry epoch>.<HMAC-SHA256>`: the HMAC key is derived from the
admin token (`HMAC(admin token, purpose)`), so every worker of a server verifies every other's
cookies without shared state, and changing `PIXELGOV_ADMIN_TOKEN` ends every session. The cookie
holds no secret: knowing it proves only that the server issued it, until it expires (8 hours)
or its owner logs out. A logout is recorded in the ledger (`Admin.end_dashboard_session`), which
every page request of every worker and host consults; a worker also remembers the logouts it has
seen until the sessions would have expired.

A CSRF token is the HMAC of the session id under a second derived key: a form that writes
carries it in a hidden field and a POST without the right one is refused (403). The login form,
which has no session yet, carries the HMAC of a random nonce set in a short-lived cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass

SESSION_COOKIE = "pixelgov_session"
LOGIN_COOKIE = "pixelgov_login"
COOKIE_PATH = "/dashboard"
SESSION_SECONDS = 8 * 3600
LOGIN_SECONDS = 3600
_MAX_COOKIE = 200
_MAX_REVOKED = 100_000


@dataclass(frozen=True, slots=True)
class Session:
    """A verified dashboard session."""

    id: str
    expires: int  #: epoch seconds
    csrf: str  #: the token its forms carry


_EXPIRY = re.compile(r"[0-9]{1,12}")  #: a cookie's expiry: Unix seconds, ASCII digits


class Signer:
    """Issues and verifies sessions and CSRF tokens for one admin token (see the module docstring)."""

    def __init__(self, admin_token: str) -> None:
        secret = admin_token.encode()
        self._session_key = hmac.new(secret, b"pixelgov dashboard session v1", hashlib.sha256).digest()
        self._csrf_key = hmac.new(secret, b"pixelgov dashboard csrf v1", hashlib.sha256).digest()
        self._revoked: dict[str, int] = {}
        self._lock = threading.Lock()

    def _mac(self, key: bytes, text: str) -> str:
        return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()

    def issue(self, now: float | None = None) -> tuple[str, Session]:
        """A new session: (cookie value, session)."""
        sid = secrets.token_urlsafe(18)
        expires = int(now if now is not None else time.time()) + SESSION_SECONDS
        payload = f"{sid}.{expires}"
        return f"{payload}.{self._mac(self._session_key, payload)}", self._session(sid, expires)

    def verify(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session of a cookie, or None if it is missing, malformed, forged, expired or logged out."""
        if not cookie or len(cookie) > _MAX_COOKIE or not cookie.isascii():
            return None
        parts = cookie.split(".")
        if len(parts) != 3 or not _EXPIRY.fullmatch(parts[1]):
            return None
        sid, expiry, mac = parts
        if not hmac.compare_digest(mac, self._mac(self._session_key, f"{sid}.{expiry}")):
            return None
        expires = int(expiry)
        if expires <= (now if now is not None else time.time()):
            return None
        with self._lock:
            if sid in self._revoked:
                return None
        return self._session(sid, expires)

    def revoke(self, session: Session) -> None:
        """Log a session out: this worker refuses its cookie from now on."""
        now = int(time.time())
        with self._lock:
            if len(self._revoked) >= _MAX_REVOKED:
                self._revoked = {k: v for k, v in self._revoked.items() if v > now}
            self._revoked[session.id] = session.expires

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), session.csrf)

    def login_nonce(self) -> str:
        return secrets.token_urlsafe(18)

    def login_csrf(self, nonce: str) -> str:
        return self._mac(self._csrf_key, f"login.{nonce}")

    def login_csrf_ok(self, nonce: str | None, token: str | None) -> bool:
        if not nonce or not token or len(nonce) > _MAX_COOKIE:
            return False
        return hmac.compare_digest(str(token), self.login_csrf(nonce))

    def _session(self, sid: str, expires: int) -> Session:
        return Session(sid, expires, self._mac(self._csrf_key, f"session.{sid}"))
