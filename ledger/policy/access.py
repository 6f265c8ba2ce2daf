"""Gateway access beyond agents' own keys: service keys (one for a fleet, each request naming its
agent) and dashboard logouts recorded for every worker.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..clock import iso
from ..errors import Conflict, InvalidRequest, NotFound
from ..store.db import dialect_insert, reading, writing
from ..store.models import dashboard_logouts, service_keys
from ..validation import validate_agent_name
from .agents import hash_api_key
from .audit import Administration, write_audit


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """An admin-issued gateway key for a fleet of agents (each request names its agent).
    `key` is set only on the record `create_service_key` returns (shown once; stored hashed)."""

    id: int
    name: str
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None
    key: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "key_prefix": self.key_prefix,
            "created_at": iso(self.created_at),
            "revoked_at": iso(self.revoked_at),
            "active": self.revoked_at is None,
        }
        if self.key is not None:
            doc["key"] = self.key
        return doc


SERVICE_KEY_PREFIX = "pgs_"


class AccessBook(Administration):
    """Service keys and dashboard logouts."""

    def create_service_key(self, name: str) -> ServiceKey:
        """Issue a service key named `name`; the key is on the returned record (shown once, stored hashed)."""
        validate_agent_name(name)

        key = SERVICE_KEY_PREFIX + secrets.token_urlsafe(32)
        now = self.clock()
        try:
            with writing(self.engine) as conn:
                key_id = conn.execute(
                    insert(service_keys)
                    .values(
                        name=name,
                        key_hash=hash_api_key(key),
                        key_prefix=key[:10],
                        created_at=now,
                    )
                    .returning(service_keys.c.id)
                ).scalar_one()
                write_audit(conn, "service-key", key_id, name, "create", None, {"key_prefix": key[:10]}, now)
        except IntegrityError:
            raise Conflict(f"service key {name!r} already exists", field="name", reason="duplicate") from None
        return ServiceKey(key_id, name, key[:10], now, None, key)

    def service_keys(self) -> list[ServiceKey]:
        """Every service key (revoked ones too), by name."""

        with reading(self.engine) as conn:
            rows = conn.execute(select(service_keys).order_by(service_keys.c.name)).all()
        return [ServiceKey(r.id, r.name, r.key_prefix, r.created_at, r.revoked_at) for r in rows]

    def revoke_service_key(self, name: str) -> ServiceKey:
        """Revoke a service key: it stops working at once. NotFound."""

        now = self.clock()
        with writing(self.engine) as conn:
            row = conn.execute(select(service_keys).where(service_keys.c.name == name)).first()
            if row is None:
                raise NotFound(f"unknown service key {name!r}", service_key=name)
            if row.revoked_at is None:
                conn.execute(update(service_keys).where(service_keys.c.id == row.id).values(revoked_at=now))
                write_audit(conn, "service-key", row.id, name, "revoke", None, None, now)
            return ServiceKey(row.id, row.name, row.key_prefix, row.created_at, row.revoked_at or now)

    def end_dashboard_session(self, session_id: str, expires_at: datetime) -> None:
        """Record a dashboard logout, so that every gateway worker and host refuses the session from
        now on (`dashboard_session_ended`). Logging out twice is fine. Records of sessions that
        have expired anyway are purged here. InvalidRequest for a malformed id."""

        _session_id(session_id)
        if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
            raise InvalidRequest("expires_at: a timezone-aware datetime", field="expires_at")
        now = self.clock()
        with writing(self.engine) as conn:
            conn.execute(delete(dashboard_logouts).where(dashboard_logouts.c.expires_at <= now))
            conn.execute(
                dialect_insert(conn.dialect.name)(dashboard_logouts)
                .values(session_id=session_id, expires_at=expires_at, created_at=now)
                .on_conflict_do_nothing()  # logged out already (here or elsewhere at the same moment)
            )

    def dashboard_session_ended(self, session_id: str) -> bool:
        """Whether the dashboard session was logged out (on any worker). InvalidRequest for a malformed id."""

        _session_id(session_id)
        with reading(self.engine) as conn:
            found = conn.execute(
                select(dashboard_logouts.c.session_id).where(dashboard_logouts.c.session_id == session_id)
            ).first()
        return found is not None

    def service_key_by_secret(self, key: str) -> ServiceKey | None:
        """The active service key this secret is (compared by hash), or None."""

        with reading(self.engine) as conn:
            row = conn.execute(
                select(service_keys).where(
                    service_keys.c.key_hash == hash_api_key(key), service_keys.c.revoked_at.is_(None)
                )
            ).first()
        return ServiceKey(row.id, row.name, row.key_prefix, row.created_at, row.revoked_at) if row else None


MAX_SESSION_ID = 64  #: dashboard session ids are `String(64)`


def _session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_SESSION_ID or not session_id.isascii():
        raise InvalidRequest(f"session_id: 1–{MAX_SESSION_ID} ASCII characters", field="session_id")
    return session_id
