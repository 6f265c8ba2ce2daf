"""pixelgov's stateful half: the ledger of holds and settlements, spending rules, reports.

The public API:

    from ledger import Ledger, Settings
    with Ledger("sqlite:///spend.db", migrate=True) as ledger:
        quote = ledger.quote("fal-ai/flux/dev", {"image_size": "square_hd"})
        decision = ledger.governor.check("bot", quote)

`Ledger` owns the engine, the price book and the caches and gives `governor`, `admin`
and `reports`; the records (`Transaction`, `Decision`, `SpendingRule`, …) are frozen and
typed, with `to_json()`; the errors carry a `code` (and a `field` for bad input).

Importing this package imports nothing heavy: `Ledger` (and SQLAlchemy with it) is
loaded on first use, so the pricing-only CLI path stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pricing.errors import ImageTooLarge, InvalidRequest, ModelNotFound, PixelgovError, PriceBookError

from .errors import Conflict, DatabaseUnavailable, Denied, NotFound, RateLimited, SchemaBehind, UpstreamError
from .records import (
    Agent,
    AgentRef,
    AgentStatus,
    Alert,
    AuditEntry,
    Authorization,
    CostLine,
    Decision,
    Denial,
    Fact,
    RuleAction,
    RuleType,
    SpendingRule,
    Transaction,
    TransactionDetail,
    TxStatus,
)
from .settings import Settings

if TYPE_CHECKING:
    from .core import Ledger
    from .policy.rules import RuleSpec

__all__ = [
    "Agent",
    "AgentRef",
    "AgentStatus",
    "Alert",
    "AuditEntry",
    "Authorization",
    "Conflict",
    "CostLine",
    "DatabaseUnavailable",
    "Decision",
    "Denial",
    "Denied",
    "Fact",
    "ImageTooLarge",
    "InvalidRequest",
    "Ledger",
    "ModelNotFound",
    "NotFound",
    "PixelgovError",
    "PriceBookError",
    "RateLimited",
    "RuleAction",
    "RuleSpec",
    "RuleType",
    "SchemaBehind",
    "Settings",
    "SpendingRule",
    "Transaction",
    "TransactionDetail",
    "TxStatus",
    "UpstreamError",
]


def __getattr__(name: str) -> Any:
    if name == "Ledger":
        from .core import Ledger

        return Ledger
    if name == "RuleSpec":
        from .policy.rules import RuleSpec

        return RuleSpec
    raise AttributeError(f"module 'ledger' has no attribute {name!r}")
