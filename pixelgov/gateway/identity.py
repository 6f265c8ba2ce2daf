"""Who a request speaks for: an agent's own key, or a service (or admin) key naming the agent."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from ledger.errors import InvalidRequest
from ledger.policy.access import SERVICE_KEY_PREFIX
from ledger.policy.agents import hash_api_key
from ledger.validation import validate_agent_name

from .errors import Unauthorized
from .worker import Worker

#: Known keys remembered per worker (then the cache starts over: a bound, not an LRU).
_KEY_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request speaks for: an agent by its own key, or by a service (or admin) key that
    names the agent in `X-Pixelgov-Agent`."""

    agent: str | None  #: None: a service or admin key without an agent header
    kind: str  #: "agent" | "service" | "admin"
    key_name: str | None = None  #: the service key's name
    key_id: int | None = None  #: the service key's id

    def owns(self, agent: str) -> bool:
        """Whether an object of `agent` is the caller's: an agent's key owns its agent's objects, a
        service key those of the agent it names (`X-Pixelgov-Agent`; naming none, none), the admin
        token every agent's. Every route that reads or moves a transaction, a queue request or a
        Sapiom transaction asks this, and answers 404 when not, as for a missing object."""
        if self.kind == "admin":
            return True
        return self.agent is not None and agent == self.agent

    @property
    def is_agent_side(self) -> bool:
        """The agent asks (its key, or a service key for it), not the admin: it may move only the
        holds it forwards by itself."""
        return self.kind != "admin"

    def require_agent(self) -> str:
        if self.agent is None:
            raise InvalidRequest(
                "X-Pixelgov-Agent: a service key must name the agent it speaks for (header X-Pixelgov-Agent: NAME)",
                field="X-Pixelgov-Agent",
            )
        return self.agent


class Identities(Worker):
    """Callers resolved from their keys (cached per worker, compared by hash)."""

    def is_admin_token(self, token: str) -> bool:
        expected = self.config.admin_token
        return expected is not None and hmac.compare_digest(token.encode(), expected.encode())

    async def identify(self, key: str, agent_header: str | None) -> Identity:
        """The identity of an API key (an agent's, a service key, or the admin token); 401 otherwise.

        A known key is remembered for `key_cache_seconds` (by its hash), saving a database read per
        request: a rotated or revoked key may keep working that long on a worker that saw it."""
        if self.is_admin_token(key):
            return Identity(self._agent_name(agent_header), "admin")
        digest = hash_api_key(key)
        cached = self._keys.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] >= now:
            found: tuple[str, str, int] | None = cached[0]
        else:
            found = await self._lookup(key)
            if found is None:
                self._keys.pop(digest, None)
                raise Unauthorized("unknown API key")
            if self.config.key_cache_seconds > 0:
                if len(self._keys) >= _KEY_CACHE_SIZE:
                    self._keys.clear()
                self._keys[digest] = (found, now + self.config.key_cache_seconds)
        assert found is not None
        kind, name, key_id = found
        if kind == "service":
            return Identity(self._agent_name(agent_header), "service", name, key_id)
        if agent_header is not None and agent_header != name:
            raise Unauthorized(f"X-Pixelgov-Agent: this key belongs to agent {name!r}, not {agent_header!r}")
        return Identity(name, "agent")

    async def _lookup(self, key: str) -> tuple[str, str, int] | None:
        if key.startswith(SERVICE_KEY_PREFIX):
            service = await self.db(self.ledger.admin.service_key_by_secret, key)
            return ("service", service.name, service.id) if service is not None else None
        agent = await self.db(self.ledger.admin.agent_by_api_key, key)
        return ("agent", agent.name, agent.id) if agent is not None else None

    @staticmethod
    def _agent_name(header: str | None) -> str | None:
        if header is None:
            return None
        validate_agent_name(header)
        return header
