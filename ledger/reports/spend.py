"""`pixelgov report spend`: spend grouped by agent, model, operation and a period."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

from ..errors import InvalidRequest
from .filters import PERIODS, check_filter
from .reader import ReportReader, collector_paused, column_sums
from .records import SpendReport, SpendRow, Totals

GROUP_KEYS = ("agent", "model", "operation")


class SpendReports(ReportReader):
    """Spend grouped by agent, model, operation and a period."""

    @collector_paused
    def spend(
        self,
        by: Sequence[str] = ("agent",),
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        agent: str | None = None,
        model: str | None = None,
        operation: str | None = None,
        status: str | None = None,
    ) -> SpendReport:
        """Spend grouped by any of agent, model, operation and at most one of day, week, month."""
        by, keys, period = _parse_by(by)
        with self._read() as conn:
            f = check_filter(conn, self.book, since, until, agent, model, operation, status)
            groups = self._fold(conn, f, keys, period)
            names = self._agent_names(conn) if "agent" in keys else {}
        order = [*keys] + ([period] if period else [])
        at = [order.index(k) for k in by]
        agent_at = order.index("agent") if "agent" in keys else None
        month_at = len(order) - 1 if period == "month" else None
        agent_label: dict[Any, str] = {}
        labelled = []
        for key, acc in groups.items():
            shown = []
            for i in at:
                value = key[i]
                if i == agent_at:
                    label = agent_label.get(value)
                    if label is None:
                        label = agent_label[value] = names.get(value, str(value))
                    value = label
                elif i == month_at:
                    value = value[:7]  # 2026-11-01 → 2026-11
                shown.append(value)
            labelled.append((tuple(shown), acc))
        labelled.sort(key=itemgetter(0))
        of = Totals.of
        rows = tuple(SpendRow(dict(zip(by, shown)), of(acc)) for shown, acc in labelled)
        return SpendReport(tuple(by), f.window(), f.shown, rows, Totals.of(column_sums(groups.values())))


def _parse_by(by: Sequence[str] | str) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """(every key in the order given, the grouping keys, the period or None); InvalidRequest if bad."""
    if isinstance(by, str):
        by = [part.strip() for part in by.split(",") if part.strip()]
    allowed = (*GROUP_KEYS, *PERIODS)
    if not by:
        raise InvalidRequest(f"by: give at least one of {', '.join(allowed)}", field="by")
    unknown = [k for k in by if k not in allowed]
    if unknown:
        raise InvalidRequest(f"by: unknown {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}", field="by")
    if len(set(by)) != len(by):
        raise InvalidRequest("by: a key is given twice", field="by")
    periods = [k for k in by if k in PERIODS]
    if len(periods) > 1:
        raise InvalidRequest(f"by: at most one of {', '.join(PERIODS)} (got {', '.join(periods)})", field="by")
    return tuple(by), tuple(k for k in by if k in GROUP_KEYS), (periods[0] if periods else None)
