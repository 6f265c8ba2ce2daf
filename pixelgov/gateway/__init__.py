"""`pixelgov serve`: the governed HTTP gateway, a FastAPI skin over the same `Ledger`.

    from ledger import Ledger, Settings
    from pixelgov.gateway import GatewayConfig, create_app

    app = create_app(Ledger(settings=Settings.from_env()), GatewayConfig.from_env())

Routes (every one calls the library the CLI calls; no rule lives here):

- FAL-compatible: `POST /{endpoint}` (a governed run), and FAL's queue API under
  `/queue/` (or on a `queue.` host): submit, `GET …/requests/{id}/status`,
  `GET …/requests/{id}`, `PUT …/requests/{id}/cancel` (`fal.py`);
- the seed's API: `/v1/run`, `/v1/price/run`, `/v1/check`, `/v1/transactions` (`seed.py`);
- the admin API under `/v1/` (`admin.py`); `/healthz`, `/metrics`, `/` (`status.py`, `metrics.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import GatewayConfig

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["GatewayConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'pixelgov.gateway' has no attribute {name!r}")
