"""`pixelgov report summary`: totals, counts by status and denials by rule, against the previous
period of the same length.
"""

from __future__ import annotations

from contextlib import suppress
from datetime import UTC, datetime, timedelta

from ..errors import InvalidRequest
from .filters import (
    MONTH,
    PERIODS,
    Filter,
    bucket_start,
    check_filter,
    check_window,
    midnight,
    next_bucket,
    parse_month,
)
from .reader import ReportReader, collector_paused, status_totals
from .records import Summary, Window


class Summaries(ReportReader):
    """The summary of a window against its previous period."""

    @collector_paused
    def summary(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        period: str | None = None,
        agent: str | None = None,
        model: str | None = None,
    ) -> Summary:
        """Totals, counts by status and denials by rule, against the previous period of the same length.

        `period` is day, week or month (the current one, by the clock) or a month `YYYY-MM`; its
        previous period is the calendar period before it. With `since` and `until` the previous
        period is the same length just before `since` (`until` defaults to now when `since` is given)."""
        since, until, previous = self._summary_windows(since, until, period)
        with self._read() as conn:
            f = check_filter(conn, self.book, since, until, agent, model, None, None)
            current = self._fold(conn, f, ("agent", "status"), None)
            denials = self._denials_by_rule(conn, f)
            before = None
            if previous is not None:
                pf = Filter(previous.since, previous.until, f.agent_id, f.model)
                before = self._fold(conn, pf, ("agent", "status"), None)
        totals, by_status, active = status_totals(current)
        summary = Summary(f.window(), totals, by_status, active, denials)
        if before is not None:
            prev_totals, _, prev_active = status_totals(before)
            summary = Summary(f.window(), totals, by_status, active, denials, previous, prev_totals, prev_active)
        return summary

    def _summary_windows(
        self, since: datetime | None, until: datetime | None, period: str | None
    ) -> tuple[datetime | None, datetime | None, Window | None]:
        if period is not None:
            if since is not None or until is not None:
                raise InvalidRequest("period: give a period, or since/until, not both", field="period")
            if period in PERIODS:
                start = bucket_start(period, self.clock().astimezone(UTC).date())
                before = {
                    "day": start - timedelta(days=1),
                    "week": start - timedelta(days=7),
                    "month": (start - timedelta(days=1)).replace(day=1),
                }[period]
                return (
                    midnight(start),
                    midnight(next_bucket(period, start)),
                    Window(midnight(before), midnight(start)),
                )
            if not MONTH.match(period.strip()):
                raise InvalidRequest(
                    f"period: {period!r} is not day, week, month or a month like 2026-11", field="period"
                )
            first, after = parse_month(period, "period")
            before = (first - timedelta(days=1)).replace(day=1)
            return first, after, Window(before, first)
        since, until = check_window(since, until)
        if since is not None and until is None:
            with suppress(OverflowError):  # since at the very end of year 9999: no end, no previous period
                until = max(self.clock().astimezone(UTC), since + timedelta(microseconds=1))
        previous = None
        if since is not None and until is not None:
            with suppress(OverflowError):  # a window reaching back to year 1 has no previous period
                previous = Window(since - (until - since), since)
        return since, until, previous
