"""Finance reports (`ledger.reports`): totals reconcile to the nano-USD with a recount of the ledger's
own rows through `ledger.store.spend.counted`, on SQLite and PostgreSQL; period boundaries; empty ledgers;
what adjustments, unknown and expired outcomes count; bad input.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from report_data import DAY, LedgerWriter, recount, total, utc, via_governor

from ledger.errors import InvalidRequest, NotFound
from ledger.records import TxStatus
from ledger.reports import Reports
from ledger.reports.records import Totals, from_nano, usd_text
from ledger.store.spend import counted
from pricing.money import usd_str

D = Decimal
EST = D("0.01185")  # flux/dev landscape_4_3: 0.79 MP x 0.015


@pytest.fixture
def writer(engine) -> LedgerWriter:  # type: ignore[no-untyped-def]
    return LedgerWriter(engine)


@pytest.fixture
def reports(ledger) -> Reports:  # type: ignore[no-untyped-def]
    return ledger.reports


# --- what each outcome counts ------------------------------------------------------------------


def test_each_status_counts_as_the_one_definition_of_spend_says(writer, reports) -> None:
    at = utc(2026, 11, 10, 12)
    writer.add("bot", at=at, status="completed", actual=D("0.02"))  # variance +0.00815
    writer.add("bot", at=at, status="completed", adjustments=[(D("-0.005"), "FAL credit")])
    writer.add("bot", at=at, status="completed", adjustments=[(D("-1"), "credit larger than the charge")])
    writer.add("bot", at=at, status="unknown")
    writer.add("bot", at=at, status="pending")
    for status in ("failed", "voided", "expired"):
        writer.add("bot", at=at, status=status)
    writer.add("bot", at=at, status="denied")
    t = reports.spend(["agent"]).total
    assert t.transactions == 8 and t.denials == 1
    assert t.actual == D("0.02") + EST + EST
    assert t.adjustments == D("-1.005")  # every adjustment line, in full
    assert t.held == EST  # the pending estimate
    assert t.unknown == EST  # the unknown estimate counts as spent
    # 0.02 + (0.01185 - 0.005) + max(0, 0.01185 - 1) + unknown 0.01185; failed/voided/expired/denied: nothing
    assert t.net == D("0.02") + (EST - D("0.005")) + 0 + EST
    assert t.variance == D("0.02") - EST
    assert t.estimated == EST * 5  # completed x3, unknown, pending
    assert t.images == 4 and t.billable_mp == D("0.79") * 4  # completed and unknown


amounts = st.integers(0, 10**12).map(lambda n: D(n).scaleb(-9))


@given(st.sampled_from(list(TxStatus)), st.lists(st.tuples(amounts, amounts), max_size=6))
def test_without_adjustments_what_a_status_counts_is_additive(status, pairs) -> None:
    """The reports sum estimates and actuals per status in SQL and apply `spend.sql_held` /
    `sql_spent` to the sums: that is exact only because, without adjustments, the count of the
    sums is the sum of the counts (an actual is never negative)."""
    each = [counted(status, est, act) for est, act in pairs]
    whole = counted(status, sum((e for e, _ in pairs), D(0)), sum((a for _, a in pairs), D(0)))
    assert whole.held == sum((c.held for c in each), D(0))
    assert whole.spent == sum((c.spent for c in each), D(0))


@given(st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1))
def test_amounts_convert_exactly_from_nano(nano: int) -> None:
    from pricing.money import from_nano as reference

    assert from_nano(nano) == reference(nano)
    assert usd_text(nano) == usd_str(reference(nano))


# --- reconciliation with a recount over random ledgers -----------------------------------------

ENDPOINTS = ["fal-ai/flux/dev", "fal-ai/flux/schnell", "fal-ai/fast-sdxl", "fal-ai/flux-pro/image-to-image"]
START = utc(2026, 10, 26)  # a Monday, six days before a month end


def _instants() -> st.SearchStrategy[datetime]:
    midnights = st.integers(0, 20).map(lambda d: START + d * DAY)
    anywhere = st.integers(0, 20 * 86400 * 1000).map(lambda ms: START + timedelta(milliseconds=ms))
    just_before = midnights.map(lambda m: m - timedelta(microseconds=1))
    return st.one_of(midnights, just_before, anywhere)


transaction = st.fixed_dictionaries(
    {
        "agent": st.sampled_from(["a", "b", "c"]),
        "endpoint": st.sampled_from(ENDPOINTS),
        "status": st.sampled_from([s.value for s in TxStatus]),
        "at": _instants(),
        "actual": st.one_of(st.none(), st.integers(0, 200_000_000).map(lambda n: D(n).scaleb(-9))),
        "adjustments": st.lists(
            st.tuples(st.integers(-60_000_000, 30_000_000).map(lambda n: D(n).scaleb(-9)), st.just("note")), max_size=2
        ),
    }
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(transaction, max_size=25),
    st.sampled_from(
        [
            ("agent",),
            ("model",),
            ("operation",),
            ("agent", "model", "day"),
            ("week",),
            ("month", "agent"),
            ("operation", "model", "week"),
        ]
    ),
    st.sampled_from([None, (utc(2026, 11, 1), utc(2026, 11, 9))]),
)
def test_spend_reconciles_to_the_nano_usd_with_a_recount_of_the_ledger(writer, reports, txs, by, window) -> None:
    writer.clear()
    for tx in txs:
        adjustments = tx["adjustments"] if tx["status"] == "completed" else []
        writer.add(
            tx["agent"], tx["endpoint"], at=tx["at"], status=tx["status"], actual=tx["actual"], adjustments=adjustments
        )
    since, until = window or (None, None)
    report = reports.spend(by, since=since, until=until)
    expected = recount(writer.engine, by, since=since, until=until)
    got = {tuple(row.key[k] for k in by): row.totals.to_json() for row in report.rows}
    assert got == {k: v.to_json() for k, v in expected.items()}
    assert report.total.to_json() == total(expected).to_json()
    # Every other report folds the same sums: they agree with the recount too.
    everything = total(recount(writer.engine, since=since, until=until)).to_json()
    summary = reports.summary(since=since, until=until) if since else reports.summary()
    assert summary.totals.to_json() == everything
    chart = reports.chart("day", since=since, until=until)
    assert sum(p.spend for p in chart.points) == D(everything["net"])
    assert sum(p.usage for p in chart.points) == everything["transactions"]
    board = reports.leaderboard("agent", top=10, since=since, until=until)
    assert sum(e.spend for e in board.entries) == D(everything["net"])
    statement = reports.statement("2026-11")
    assert (
        statement.total.to_json()
        == total(recount(writer.engine, since=utc(2026, 11, 1), until=utc(2026, 12, 1))).to_json()
    )


def test_reports_reconcile_with_the_ledger_written_by_the_governor(ledger, clock, admin, reports) -> None:
    from ledger.policy.rules import RuleSpec

    admin.create_agent("blocked", with_key=False)
    fields = {"name": "schnell-only", "type": "model-allowlist", "models": ["fal-ai/flux/schnell"], "agent": "blocked"}
    admin.create_rule(RuleSpec(**fields, given=set(fields)))
    ids = via_governor(
        ledger,
        clock,
        [
            ("a", "bot", "completed"),
            ("b", "bot", "completed+credit"),
            ("c", "bot", "completed+big-credit"),
            ("d", "bot", "completed+charge"),
            ("e", "bot", "over"),
            ("f", "bot", "unknown"),
            ("g", "bot", "failed"),
            ("h", "bot", "voided"),
            ("i", "other", "expired"),
            ("j", "blocked", "denied"),
            ("k", "other", "pending"),
        ],
    )
    assert len(ids) == 11
    report = reports.spend(["agent"])
    expected = recount(ledger.engine, ("agent",))
    assert {row.key["agent"]: row.totals.to_json() for row in report.rows} == {
        k[0]: v.to_json() for k, v in expected.items()
    }
    t = report.total
    # completed 0.0118 x4 (+0.02 over), credits -0.005 and -1 (floored), +0.003, unknown 0.01185, pending held
    assert t.net == D("0.0118") * 3 - D("0.005") + D("0.003") + D("0.02") + EST
    assert t.adjustments == D("-1.002")
    assert t.held == EST and t.unknown == EST
    assert (t.transactions, t.denials) == (10, 1)
    summary = reports.summary().to_json()
    assert summary["transactions_by_status"] == {
        "pending": 1,
        "completed": 5,
        "failed": 1,
        "voided": 1,
        "expired": 1,
        "unknown": 1,
        "denied": 1,
    }
    assert summary["denials_by_rule"] == [{"rule": "schnell-only", "type": "model-allowlist", "denials": 1}]
    rules = reports.leaderboard("rule").to_json()["top_rules"]
    assert rules == [{"name": "schnell-only", "transactions": 0, "spend": "0", "denials": 1, "type": "model-allowlist"}]


def test_the_governor_records_the_images_and_megapixels_it_priced(ledger, clock, reports) -> None:
    via_governor(ledger, clock, [("a", "bot", "completed")])
    t = reports.spend(["agent"]).total
    assert (t.images, t.billable_mp) == (1, D("0.79"))


# --- periods -----------------------------------------------------------------------------------


def test_a_transaction_at_midnight_belongs_to_the_day_it_starts(writer, reports) -> None:
    writer.add(at=utc(2026, 10, 31, 23, 59, 59, 999999))
    writer.add(at=utc(2026, 11, 1))
    writer.add(at=utc(2026, 11, 1, 0, 0, 0, 1))
    days = {r.key["day"]: r.totals.transactions for r in reports.spend(["day"]).rows}
    assert days == {"2026-10-31": 1, "2026-11-01": 2}
    months = {r.key["month"]: r.totals.transactions for r in reports.spend(["month"]).rows}
    assert months == {"2026-10": 1, "2026-11": 2}


def test_since_is_inclusive_and_until_exclusive(writer, reports) -> None:
    for at in (utc(2026, 11, 1), utc(2026, 11, 7, 23, 59, 59, 999999), utc(2026, 11, 8)):
        writer.add(at=at)
    report = reports.spend(["day"], since=utc(2026, 11, 1), until=utc(2026, 11, 8))
    assert [r.key["day"] for r in report.rows] == ["2026-11-01", "2026-11-07"]
    assert report.total.net == EST * 2


def test_weeks_are_iso_weeks_starting_monday_across_month_and_year_ends(writer, reports) -> None:
    for at in (
        utc(2026, 11, 29, 23, 59),
        utc(2026, 11, 30),
        utc(2026, 12, 31, 12),
        utc(2027, 1, 3, 23),
        utc(2027, 1, 4),
    ):
        writer.add(at=at)
    weeks = {r.key["week"]: r.totals.transactions for r in reports.spend(["week"]).rows}
    # Sun 29 Nov is in the week of Mon 23 Nov; Thu 31 Dec and Sun 3 Jan in the week of Mon 28 Dec.
    assert weeks == {"2026-11-23": 1, "2026-11-30": 1, "2026-12-28": 2, "2027-01-04": 1}


def test_month_ends_of_every_length(writer, reports) -> None:
    for at in (utc(2027, 2, 28, 23, 59), utc(2027, 3, 1), utc(2028, 2, 29, 12), utc(2026, 4, 30, 23, 59, 59)):
        writer.add(at=at)
    months = {r.key["month"]: r.totals.transactions for r in reports.spend(["month"]).rows}
    assert months == {"2026-04": 1, "2027-02": 1, "2027-03": 1, "2028-02": 1}
    statement = reports.statement("2028-02")
    assert statement.window.since == utc(2028, 2, 1) and statement.window.until == utc(2028, 3, 1)
    assert statement.total.transactions == 1


def test_chart_fills_every_period_of_the_window_with_zeros(writer, reports) -> None:
    writer.add(at=utc(2026, 11, 3, 10))
    writer.add(at=utc(2026, 11, 5, 10), status="denied")
    chart = reports.chart("day", since=utc(2026, 11, 2), until=utc(2026, 11, 7))
    assert [(p.date.isoformat(), p.usage, usd_str(p.spend), p.denials) for p in chart.points] == [
        ("2026-11-02", 0, "0", 0),
        ("2026-11-03", 1, "0.01185", 0),
        ("2026-11-04", 0, "0", 0),
        ("2026-11-05", 0, "0", 1),
        ("2026-11-06", 0, "0", 0),
    ]
    months = reports.chart("month")
    assert [p.date.isoformat() for p in months.points] == ["2026-11-01"]


def test_summary_compares_with_the_previous_period_of_the_same_length(writer, ledger, clock) -> None:
    clock.set(utc(2026, 11, 20, 15))
    writer.add("a", at=utc(2026, 10, 5))
    writer.add("a", at=utc(2026, 11, 2))
    writer.add("b", at=utc(2026, 11, 3))
    writer.add("b", at=utc(2026, 11, 4), status="denied")
    doc = ledger.reports.summary(period="month").to_json()
    assert (doc["since"], doc["until"]) == ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")
    assert doc["previous"]["since"] == "2026-10-01T00:00:00Z"
    assert (doc["total_transactions"], doc["total_denials"], doc["total_agents"]) == (2, 1, 2)
    assert doc["total_spend"] == "0.0237"
    assert doc["change"]["total_transactions"] == {"delta": 1, "percent": "100"}
    assert doc["change"]["total_spend"] == {"delta": "0.01185", "percent": "100"}
    assert doc["change"]["total_denials"] == {"delta": 1, "percent": None}
    week = ledger.reports.summary(since=utc(2026, 11, 2), until=utc(2026, 11, 4)).to_json()
    assert (week["previous"]["since"], week["previous"]["until"]) == ("2026-10-31T00:00:00Z", "2026-11-02T00:00:00Z")
    assert week["previous"]["total_transactions"] == 0 and week["total_transactions"] == 2


# --- edges -------------------------------------------------------------------------------------


def test_an_empty_ledger_reports_zeros_and_no_rows(reports) -> None:
    assert reports.spend(["agent", "model", "day"]).rows == ()
    assert reports.spend(["agent"]).total == Totals()
    summary = reports.summary(period="2026-11").to_json()
    assert (summary["total_transactions"], summary["total_spend"], summary["total_agents"]) == (0, "0", 0)
    assert summary["change"]["total_spend"] == {"delta": "0", "percent": None}
    assert summary["transactions_by_status"]["completed"] == 0
    assert reports.leaderboard("agent").entries == ()
    assert reports.leaderboard("rule").entries == ()
    assert reports.chart("week").points == ()
    assert len(reports.chart("day", since=utc(2026, 11, 1), until=utc(2026, 11, 4)).points) == 3
    assert reports.statement("2026-11").agents == ()


def test_one_agent_is_the_whole_leaderboard_and_the_whole_statement(writer, reports) -> None:
    writer.add("solo", at=utc(2026, 11, 2))
    writer.add("solo", "fal-ai/flux/schnell", at=utc(2026, 11, 3), adjustments=[(D("-0.001"), "credit")])
    board = reports.leaderboard("agent")
    assert [(e.name, e.transactions) for e in board.entries] == [("solo", 2)]
    statement = reports.statement("2026-11", agent="solo")
    (only,) = statement.agents
    assert [line.model for line in only.lines] == ["fal-ai/flux/dev", "fal-ai/flux/schnell"]
    assert [(a.amount, a.note) for a in only.adjustments] == [(D("-0.001"), "credit")]
    assert only.total == statement.total
    assert statement.total == reports.spend(["agent"], since=utc(2026, 11, 1), until=utc(2026, 12, 1)).total


def test_filters_narrow_every_report(writer, reports) -> None:
    writer.add("a", at=utc(2026, 11, 2))
    writer.add("a", "fal-ai/fast-sdxl", at=utc(2026, 11, 2))
    writer.add("b", "fal-ai/stable-diffusion-xl", at=utc(2026, 11, 2), status="unknown")
    sdxl = reports.spend(["agent"], model="fal-ai/fast-sdxl")  # an alias names its model
    assert sdxl.filters == {"model": "fal-ai/stable-diffusion-xl"}
    assert {r.key["agent"]: r.totals.transactions for r in sdxl.rows} == {"a": 1, "b": 1}
    assert reports.spend(["model"], agent="a", status="completed").total.transactions == 2
    assert reports.spend(["agent"], operation="upscale").rows == ()
    assert reports.summary(agent="b").totals.unknown == D("0.007") * D("0.79")


def test_rule_leaderboard_ranks_rules_by_denials_with_their_scope(writer, admin, reports) -> None:
    from ledger.policy.rules import RuleSpec

    admin.create_agent("a", with_key=False)
    for fields in (
        {"name": "a-daily", "type": "spend-limit", "limit": "5", "period": "day", "agent": "a"},
        {"name": "pro-cap", "type": "request-cap", "limit": "0.01", "model": "fal-ai/flux-pro*"},
    ):
        admin.create_rule(RuleSpec(**fields, given=set(fields)))
    writer.add("a", at=utc(2026, 11, 2))
    writer.add("b", "fal-ai/flux-pro", at=utc(2026, 11, 2), status="denied", denied_by=["pro-cap"])
    writer.add("b", "fal-ai/flux-pro", at=utc(2026, 11, 2), status="denied", denied_by=["pro-cap", "gone-rule"])
    writer.add("a", at=utc(2026, 11, 2), status="denied", denied_by=["a-daily"])
    entries = [e.to_json() for e in reports.leaderboard("rule").entries]
    assert entries == [
        {"name": "pro-cap", "transactions": 0, "spend": "0", "denials": 2, "type": "request-cap"},
        {"name": "a-daily", "transactions": 1, "spend": "0.01185", "denials": 1, "type": "spend-limit"},
        {"name": "gone-rule", "transactions": None, "spend": None, "denials": 1, "type": "spend-limit"},
    ]


def test_windows_at_the_ends_of_the_calendar_are_reported_not_crashed(writer, reports) -> None:
    writer.add(at=utc(2026, 11, 2))
    first, last = datetime(1970, 1, 1, tzinfo=UTC), datetime(8999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    whole = reports.summary(since=first, until=last)
    assert whole.totals.transactions == 1 and whole.previous is None  # nothing before 1970 to compare with
    assert reports.summary(since=last).totals.transactions == 0
    assert [p.date.isoformat() for p in reports.chart("month", since=datetime(8999, 11, 5, tzinfo=UTC)).points] == []
    points = reports.chart("day", since=datetime(8999, 12, 30, tzinfo=UTC), until=last).points
    assert [p.date.isoformat() for p in points] == ["8999-12-30", "8999-12-31"]
    assert reports.spend(["month"], since=first, until=last).total.transactions == 1


@pytest.mark.parametrize(
    "since",
    [datetime(1, 1, 1, tzinfo=UTC), datetime(1969, 12, 31, 23, 59, tzinfo=UTC), datetime(9000, 1, 2, tzinfo=UTC)],
)
def test_a_window_outside_the_calendar_is_refused_naming_it(reports, since: datetime) -> None:
    with pytest.raises(InvalidRequest) as error:
        reports.summary(since=since)
    assert error.value.field == "since" and "1970 to 8999" in error.value.message
    for month in ("0001-01", "1969-12", "9000-01", "9999-12"):
        with pytest.raises(InvalidRequest, match="1970 to 8999"):
            reports.statement(month)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "field"),
    [
        (lambda r: r.spend(["agent", "colour"]), InvalidRequest, "by"),
        (lambda r: r.spend(["day", "month"]), InvalidRequest, "by"),
        (lambda r: r.spend([]), InvalidRequest, "by"),
        (lambda r: r.spend(["agent"], since=utc(2026, 11, 2), until=utc(2026, 11, 1)), InvalidRequest, "until"),
        (lambda r: r.spend(["agent"], since=utc(2026, 11, 2), until=utc(2026, 11, 2)), InvalidRequest, "until"),
        (lambda r: r.spend(["agent"], agent="nobody"), NotFound, "agent"),
        (lambda r: r.spend(["agent"], model="fal-ai/nope"), NotFound, "model"),
        (lambda r: r.spend(["agent"], operation="paint"), InvalidRequest, "operation"),
        (lambda r: r.spend(["agent"], status="lost"), InvalidRequest, "status"),
        (lambda r: r.leaderboard("colour"), InvalidRequest, "by"),
        (lambda r: r.leaderboard("agent", top=0), InvalidRequest, "top"),
        (lambda r: r.chart("hour"), InvalidRequest, "by"),
        (lambda r: r.statement("2026-13"), InvalidRequest, "month"),
        (lambda r: r.statement("November"), InvalidRequest, "month"),
        (lambda r: r.summary(period="fortnight"), InvalidRequest, "period"),
        (lambda r: r.summary(period="day", since=utc(2026, 11, 1)), InvalidRequest, "period"),
    ],
)
def test_bad_input_is_refused_naming_the_field_not_a_flag(reports, call, error, field) -> None:
    with pytest.raises(error) as caught:
        call(reports)
    assert caught.value.to_json()["error"]["field"] == field
    assert "--" not in caught.value.message
