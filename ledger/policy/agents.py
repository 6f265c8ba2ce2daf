"""Agents: created, paused and resumed, with API keys that are shown once and stored hashed."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import Conflict, InvalidRequest, NotFound
from ..records import Agent, AgentStatus
from ..store.db import reading, writing
from ..store.models import agents
from ..validation import validate_agent_name
from .audit import Administration, write_audit

API_KEY_PREFIX = "pgv_"


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def agent_record(row: Any, api_key: str | None = None) -> Agent:
    """An `Agent` from an agents row (`api_key` only right after it was made: shown once)."""
    return Agent(
        id=row.id,
        name=row.name,
        description=row.description,
        status=AgentStatus(row.status),
        has_api_key=row.api_key_hash is not None,
        api_key_prefix=row.api_key_prefix,
        created_at=row.created_at,
        updated_at=row.updated_at,
        api_key=api_key,
    )


class AgentBook(Administration):
    """Agents and their API keys."""

    def create_agent(self, name: str, description: str | None = None, *, with_key: bool = True) -> Agent:
        """Create an agent; with `with_key` its new API key is on the returned record (stored hashed)."""
        validate_agent_name(name)
        now = self.clock()
        key = new_api_key() if with_key else None
        try:
            with writing(self.engine) as conn:
                agent_id = conn.execute(
                    insert(agents)
                    .values(
                        name=name,
                        description=description,
                        status=AgentStatus.active,
                        api_key_hash=hash_api_key(key) if key else None,
                        api_key_prefix=key[:10] if key else None,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(agents.c.id)
                ).scalar_one()
                agent = agent_record(self._agent_row(conn, agent_id))
                write_audit(conn, "agent", agent_id, name, "create", None, agent.to_json(), now)
        except IntegrityError:
            raise Conflict(f"agent {name!r} already exists", field="name", reason="duplicate") from None
        return replace(agent, api_key=key) if key else agent

    def rotate_key(self, name: str) -> Agent:
        """Replace an agent's API key (the old one stops working); the new key is on the record."""
        key = new_api_key()
        now = self.clock()
        with writing(self.engine) as conn:
            row = self._agent_by_name(conn, name)
            conn.execute(
                update(agents)
                .where(agents.c.id == row.id)
                .values(api_key_hash=hash_api_key(key), api_key_prefix=key[:10], updated_at=now)
            )
            write_audit(
                conn,
                "agent",
                row.id,
                name,
                "rotate-key",
                {"api_key_prefix": row.api_key_prefix},
                {"api_key_prefix": key[:10]},
                now,
            )
            return agent_record(self._agent_row(conn, row.id), key)

    def update_agent(self, name: str, *, status: str | None = None, description: str | None = None) -> Agent:
        """Pause or resume an agent (`status` active|paused), or change its description."""
        if status is not None and status not in AgentStatus.__members__:
            raise InvalidRequest(f"status: {status!r}; allowed: active, paused", field="status")
        now = self.clock()
        with writing(self.engine) as conn:
            row = self._agent_by_name(conn, name)
            before = agent_record(row).to_json()
            values: dict[str, Any] = {"updated_at": now}
            if status is not None:
                values["status"] = AgentStatus(status)
            if description is not None:
                values["description"] = description
            conn.execute(update(agents).where(agents.c.id == row.id).values(**values))
            after = agent_record(self._agent_row(conn, row.id))
            write_audit(conn, "agent", row.id, name, "update", before, after.to_json(), now)
            return after

    def agent(self, name: str) -> Agent:
        """One agent by name; NotFound."""
        with reading(self.engine) as conn:
            return agent_record(self._agent_by_name(conn, name))

    def agent_by_id(self, agent_id: int) -> Agent:
        """One agent by id; NotFound."""
        with reading(self.engine) as conn:
            row = conn.execute(select(agents).where(agents.c.id == agent_id)).first()
        if row is None:
            raise NotFound(f"unknown agent id {agent_id}", agent_id=agent_id)
        return agent_record(row)

    def agents(self) -> list[Agent]:
        """Every agent, by name."""
        with reading(self.engine) as conn:
            return [agent_record(r) for r in conn.execute(select(agents).order_by(agents.c.name))]

    def agent_by_api_key(self, key: str) -> Agent | None:
        """The agent whose API key this is (compared by hash), or None."""
        with reading(self.engine) as conn:
            row = conn.execute(select(agents).where(agents.c.api_key_hash == hash_api_key(key))).first()
            return agent_record(row) if row else None

    def _agent_by_name(self, conn: Connection, name: str) -> Any:
        validate_agent_name(name)
        row = conn.execute(select(agents).where(agents.c.name == name)).first()
        if row is None:
            raise NotFound(f"unknown agent {name!r}", agent=name)
        return row

    def _agent_row(self, conn: Connection, agent_id: int) -> Any:
        return conn.execute(select(agents).where(agents.c.id == agent_id)).one()
