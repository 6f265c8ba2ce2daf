"""Finance reporting: summary, spend, leaderboards, charts, statements, FOCUS export and the
filtered transaction history, read from the report rollups and the ledger.

`Reports(engine)` gives every report; each report is one module (`spend`, `summary`,
`leaderboards`, `series`, `statements`, `focus`) over the fold in `reader`, and returns the
records of `ledger.reports.records`.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

from .filters import check_window
from .leaderboards import Leaderboards
from .output import atomic_output, cast_text, check_writable
from .series import Series
from .spend import SpendReports
from .statements import Statements
from .summary import Summaries

if TYPE_CHECKING:
    from .focus import FocusExport

__all__ = ["Reports"]


class Reports(SpendReports, Summaries, Leaderboards, Series, Statements):
    """Finance reports over one ledger database. Every method reads in one read-only transaction.

    `clock` decides "now" (for `summary(period=...)` and an open-ended previous period); `book`
    is the price book that names models (default: the shipped one)."""

    def export_focus(
        self, out: str | os.PathLike[str] | TextIO, *, since: datetime | None = None, until: datetime | None = None
    ) -> FocusExport:
        """The ledger as a FOCUS 1.0 CSV (see `ledger.reports.focus`), for transactions created in the window.

        `out` is a path (written whole or not at all; checked before anything is read) or a text stream."""
        from .focus import write_focus

        since, until = check_window(since, until)
        if isinstance(out, str | os.PathLike):
            path = check_writable(out, "path")
            with self._read() as conn, atomic_output(path, "path") as stream:
                return write_focus(conn, cast_text(stream), since=since, until=until, book=self.book, path=str(path))
        with self._read() as conn:
            return write_focus(conn, out, since=since, until=until, book=self.book)
