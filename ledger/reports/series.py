"""`pixelgov report chart`'s data: requests, spend and denials per day, week or month, every
period of the window present (the images are drawn by `ledger.reports.charts`).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from pricing.money import ZERO

from ..errors import InvalidRequest
from .filters import PERIODS, bucket_start, check_filter, next_bucket
from .reader import ReportReader, collector_paused
from .records import ACC_DENIED, ACC_NET, ACC_TX, Chart, ChartPoint, from_nano

#: A chart of more points than this asks for a coarser period or a shorter window.
MAX_POINTS = 20_000


class Series(ReportReader):
    """Requests, spend and denials per period."""

    @collector_paused
    def chart(
        self,
        by: str = "day",
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        agent: str | None = None,
        model: str | None = None,
    ) -> Chart:
        """Requests, spend and denials per day, week or month, every period of the window present."""
        if by not in PERIODS:
            raise InvalidRequest(f"by: {by!r} is not one of {', '.join(PERIODS)}", field="by")
        with self._read() as conn:
            f = check_filter(conn, self.book, since, until, agent, model, None, None)
            groups = {date.fromisoformat(k[0]): acc for k, acc in self._fold(conn, f, (), by).items()}
        points: list[ChartPoint] = []
        if groups or (f.since and f.until):
            first = bucket_start(by, f.since.date()) if f.since else min(groups)
            last = bucket_start(by, (f.until - timedelta(microseconds=1)).date()) if f.until else max(groups)
            day = first
            while day <= last:
                if len(points) >= MAX_POINTS:
                    raise InvalidRequest(
                        f"by: more than {MAX_POINTS} {by}s in the window; choose a coarser period or a shorter window",
                        field="by",
                    )
                acc = groups.get(day)
                points.append(
                    ChartPoint(day, acc[ACC_TX], from_nano(acc[ACC_NET]), acc[ACC_DENIED])
                    if acc
                    else ChartPoint(day, 0, ZERO, 0)
                )
                try:
                    day = next_bucket(by, day)
                except OverflowError:  # the last period of year 9999
                    break
        return Chart(by, f.window(), tuple(points))
