"""`pixelgov report leaderboard`: the top agents or models by spend, or rules by denials."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Connection, select

from pricing.money import ZERO

from ..errors import InvalidRequest
from ..store.models import spending_rules
from .filters import Filter, check_filter
from .reader import ReportReader, collector_paused, merge
from .records import ACC_DENIED, ACC_NET, ACC_TX, ACC_WIDTH, Leaderboard, LeaderboardEntry, from_nano

LEADERBOARDS = ("agent", "model", "rule")


MAX_TOP = 1000


class _Scope(NamedTuple):
    """What `Rule.applies_to` reads of a request: its endpoint, model and operation."""

    endpoint: str
    model: str
    operation: str


class Leaderboards(ReportReader):
    """The top agents, models and rules."""

    @collector_paused
    def leaderboard(
        self, by: str = "agent", *, top: int = 10, since: datetime | None = None, until: datetime | None = None
    ) -> Leaderboard:
        """The top `top` agents or models by spend, or rules by denials."""
        if by not in LEADERBOARDS:
            raise InvalidRequest(f"by: {by!r} is not one of {', '.join(LEADERBOARDS)}", field="by")
        if not 1 <= top <= MAX_TOP:
            raise InvalidRequest(f"top: must be between 1 and {MAX_TOP} (got {top})", field="top")
        with self._read() as conn:
            f = check_filter(conn, self.book, since, until, None, None, None, None)
            if by == "rule":
                entries = self._rule_entries(conn, f)
            else:
                groups = self._fold(conn, f, (by,), None)
                names = self._agent_names(conn) if by == "agent" else {}
                entries = [
                    LeaderboardEntry(
                        names.get(k[0], str(k[0])) if by == "agent" else k[0],
                        acc[ACC_TX],
                        from_nano(acc[ACC_NET]),
                        acc[ACC_DENIED],
                    )
                    for k, acc in groups.items()
                ]
                entries.sort(key=lambda e: (-(e.spend or ZERO), -(e.transactions or 0), -e.denials, e.name or ""))
        return Leaderboard(by, f.window(), top, tuple(entries[:top]))

    def _rule_entries(self, conn: Connection, f: Filter) -> list[LeaderboardEntry]:
        from ..policy.rules import Rule

        denials = {(d.rule, d.type): d.denials for d in self._denials_by_rule(conn, f)}
        scope = self._fold(conn, f, ("agent", "endpoint", "model", "operation"), None)
        entries = []
        for row in conn.execute(select(spending_rules).order_by(spending_rules.c.id)):
            rule = Rule.from_row(row)
            acc = [0] * ACC_WIDTH
            for (agent_id, endpoint, model_name, op), group in scope.items():
                if rule.applies_to(agent_id, _Scope(endpoint, model_name, op)):
                    merge(acc, group)
            count = sum(n for (name, _kind), n in denials.items() if name == rule.name)
            entries.append(LeaderboardEntry(rule.name, acc[ACC_TX], from_nano(acc[ACC_NET]), count, rule.type))
        known = {e.name for e in entries}
        for (name, kind), n in denials.items():
            if name not in known:  # a deleted rule, or a paused agent (no rule)
                entries.append(LeaderboardEntry(name, None, None, n, kind))
        entries.sort(key=lambda e: (-e.denials, -(e.spend or ZERO), e.name or ""))
        return entries
