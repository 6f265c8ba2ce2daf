"""`Ledger`: one ledger database, its settings, its price book and its caches.

The CLI, the gateway and a Python user all start here:

    with Ledger("sqlite:///spend.db", migrate=True) as ledger:
        quote = ledger.quote("fal-ai/flux/dev", {"image_size": "square_hd"})
        decision = ledger.governor.check("bot", quote)
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from pricing import PriceBook, Quote, book_for

from .clock import Clock, utcnow
from .forward.quoting import quote_body
from .settings import Settings
from .store.db import check_schema, default_url, make_engine

if TYPE_CHECKING:
    from .policy.admin import Admin
    from .policy.governor import Governor
    from .reports import Reports


class Ledger:
    """A pixelgov ledger: `governor` (check, authorize, settle, …), `admin` (agents, rules,
    alerts, audit) and `reports` (finance), sharing one engine, price book and clock.

    `target` is a database URL or a SQLAlchemy `Engine` (None: `settings.database_url`, else the
    default SQLite file in the user data directory, which is created and migrated on first use).
    Any other database must already be at this pixelgov's schema (`SchemaBehind` otherwise)
    unless `migrate=True`. `clock` returns aware UTC datetimes (tests pass a fake one).
    A Ledger made from a URL owns its engine: `close()` (or `with`) disposes it.
    """

    def __init__(
        self,
        target: str | Engine | None = None,
        *,
        settings: Settings | None = None,
        clock: Clock | None = None,
        migrate: bool = False,
    ) -> None:
        self.settings = settings or Settings()
        self.clock: Clock = clock or utcnow
        if isinstance(target, Engine):
            self.engine, self._owns_engine, is_default = target, False, False
        else:
            url = target or self.settings.database_url
            is_default = url is None
            self.engine = make_engine(url or default_url(), timeout=self.settings.db_timeout)
            self._owns_engine = True
        try:
            check_schema(self.engine, migrate=migrate or is_default)
        except BaseException:
            self.close()
            raise

    @cached_property
    def book(self) -> PriceBook:
        """The price book in force (`settings.price_book_path`, else the shipped one)."""
        return book_for(self.settings.price_book_path)

    @cached_property
    def governor(self) -> Governor:
        """Check, authorize, settle, fail, void, expire; transactions."""
        from .policy.governor import Governor

        return Governor(
            self.engine,
            clock=self.clock,
            hold_ttl=self.settings.hold_ttl,
            auto_create=self.settings.auto_create_agents,
            book=self.book,
        )

    @cached_property
    def admin(self) -> Admin:
        """Agents, spending rules, alerts and the audit log."""
        from .policy.admin import Admin

        return Admin(self.engine, clock=self.clock)

    @cached_property
    def reports(self) -> Reports:
        """Finance reports: summary, spend, leaderboards, charts, statements, FOCUS export."""
        from .reports import Reports

        return Reports(self.engine, clock=self.clock, book=self.book)

    def quote(self, endpoint: str, body: Mapping[str, Any], *, remote: bool = False, measure: bool = False) -> Quote:
        """The exact price of a request from this ledger's price book (reads an upscale input's
        size from its image when `input_size` is not given). `remote`: the request came from the
        network, so its `image_url` may name neither a local file nor a non-public host. Raises
        ModelNotFound, InvalidRequest, ImageTooLarge. `measure`: price an upscale from its image's
        own size even when `input_size` is given (a claim that disagrees is refused): for requests
        pixelgov forwards itself."""
        return quote_body(endpoint, body, book=self.book, remote=remote, measure=measure)

    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Dispose the engine if this Ledger made it."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
