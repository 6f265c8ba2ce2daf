"""Finance reporting: summary, spend, leaderboards, charts, statements, FOCUS export and the
filtered transaction history, read from the report rollups and the ledger."""

from .reader import Reports

__all__ = ["Reports"]
