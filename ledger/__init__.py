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
    from .policy.admin import Admin
    from .policy.budgets import Budgets
    from .policy.governor import Governor
    from .policy.rules import RuleSpec
    from .reports import Reports
    from .reports.history import History

__all__ = [
    "Admin",
    "Agent",
    "AgentRef",
    "AgentStatus",
    "Alert",
    "AuditEntry",
    "Authorization",
    "Budgets",
    "Conflict",
    "CostLine",
    "DatabaseUnavailable",
    "Decision",
    "Denial",
    "Denied",
    "Fact",
    "Governor",
    "History",
    "ImageTooLarge",
    "InvalidRequest",
    "Ledger",
    "ModelNotFound",
    "NotFound",
    "PixelgovError",
    "PriceBookError",
    "RateLimited",
    "Reports",
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


#: Loaded on first use (each imports SQLAlchemy): name → the module that defines it.
_LAZY = {
    "Ledger": "ledger.core",
    "RuleSpec": "ledger.policy.rules",
    "Governor": "ledger.policy.governor",
    "Admin": "ledger.policy.admin",
    "Budgets": "ledger.policy.budgets",
    "Reports": "ledger.reports",
    "History": "ledger.reports.history",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ledger' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
