"""Spending rules: every type and period, their boundaries, scopes, filters, alerts and denials.

The database tests run once on SQLite and once on PostgreSQL (`db_url`); the clock is moved by
hand. One flux/dev landscape_4_3 request is estimated at 0.01185 USD.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from support import rule_usage as counted
from support import snapshot

from ledger.errors import InvalidRequest
from ledger.policy.periods import buckets, granularity, parse_window, period_start
from ledger.policy.rules import Rule, RuleSpec, evaluate, rule_record, validate_spec
from ledger.records import Decision, Denial, RuleType, SpendingRule, Transaction, TxStatus
from ledger.store.models import alerts, holds, rule_counters
from pricing import quote

DEV = quote("fal-ai/flux/dev", {})
SDXL = quote("fal-ai/fast-sdxl", {})
SCHNELL = quote("fal-ai/flux/schnell", {})
PRO = quote("fal-ai/flux-pro", {})
I2I = quote("fal-ai/flux/dev/image-to-image", {})
UPSCALE = quote("fal-ai/topaz/upscale/image", {"input_size": "512x512"})
TWO_DEV = "0.0237"  #: exactly two flux/dev estimates


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def make_rule(admin, **fields) -> SpendingRule:  # type: ignore[no-untyped-def]
    return admin.create_rule(RuleSpec(**fields, given=set(fields)))


def spend(gov, agent: str, q=DEV) -> Transaction:  # type: ignore[no-untyped-def]
    """Authorize and settle at the estimate: spend that stays counted (unlike a hold, it never expires)."""
    auth = gov.authorize(agent, q, {"endpoint": q.endpoint})
    assert auth.allowed, auth.transaction.denial
    done = gov.settle(auth.transaction.id, q.amount)
    assert done.status == TxStatus.completed and done.actual_cost == q.amount
    return done


def allowed(gov, agent: str, q=DEV) -> bool:  # type: ignore[no-untyped-def]
    return gov.authorize(agent, q, {"endpoint": q.endpoint}).allowed


# --- periods and windows (pure) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "period, now, start",
    [
        ("minute", at(2026, 11, 25, 12, 34, 56), at(2026, 11, 25, 12, 34)),
        ("hour", at(2026, 11, 25, 12, 34, 56), at(2026, 11, 25, 12)),
        ("day", at(2026, 11, 25, 23, 59, 59), at(2026, 11, 25)),
        ("week", at(2026, 11, 25, 12), at(2026, 11, 23)),  # a Wednesday: its ISO week began on Monday the 23rd
        ("week", at(2026, 11, 29, 23, 59, 59), at(2026, 11, 23)),  # Sunday still belongs to that week
        ("week", at(2026, 11, 30), at(2026, 11, 30)),  # Monday starts the next
        ("week", at(2027, 1, 1, 8), at(2026, 12, 28)),  # a week spans the new year
        ("month", at(2026, 11, 30, 23, 59, 59), at(2026, 11, 1)),
        ("month", at(2026, 12, 1), at(2026, 12, 1)),
        ("total", at(2026, 11, 25, 12), at(1970, 1, 1)),
    ],
)
def test_calendar_periods_start_at_their_utc_boundary(period: str, now: datetime, start: datetime) -> None:
    assert period_start(period, now) == start


def test_period_start_reads_an_aware_time_in_utc() -> None:
    from datetime import timezone

    tokyo = timezone(timedelta(hours=9))
    # 08:00 in Tokyo on the 26th is 23:00 UTC on the 25th: the UTC day decides.
    assert period_start("day", datetime(2026, 11, 26, 8, tzinfo=tokyo)) == at(2026, 11, 25)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("1m", 60),
        ("30m", 1800),
        ("1h", 3600),
        ("24h", 86400),
        ("7d", 604800),
        ("2w", 1209600),
        (" 90 s ", 90),
        ("366d", 366 * 86400),
    ],
)
def test_windows_parse_as_a_number_and_a_unit(text: str, seconds: int) -> None:
    assert parse_window(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "24", "5x", "1.5h", "-1h", "30s", "0m", "367d", "53w"])
def test_windows_outside_one_minute_to_366_days_or_without_a_unit_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_window(text)


@pytest.mark.parametrize("window, bucket", [("1h", 60), ("10m", 60), ("24h", 3600), ("7d", 21600), ("30d", 86400)])
def test_rolling_window_granularity_is_the_largest_bucket_that_cuts_it_into_24(window: str, bucket: int) -> None:
    assert granularity(parse_window(window)) == bucket


def test_a_rolling_window_sums_every_bucket_overlapping_the_window() -> None:
    now = at(2026, 11, 25, 13, 0, 30)
    current, low = buckets(None, 3600, now)
    assert current == int(at(2026, 11, 25, 13).timestamp())
    # The bucket starting 12:00 still overlaps (12:00:30, 13:00:30]; the one starting 11:59 does not.
    assert low <= int(at(2026, 11, 25, 12).timestamp()) < int(at(2026, 11, 25, 12, 1).timestamp())
    assert low > int(at(2026, 11, 25, 11, 59).timestamp())


# --- spend-limit: calendar periods ------------------------------------------------------------


@pytest.mark.parametrize(
    "period, start, last_moment, next_start",
    [
        ("hour", at(2026, 11, 25, 12), at(2026, 11, 25, 12, 59, 59), at(2026, 11, 25, 13)),
        ("day", at(2026, 11, 25), at(2026, 11, 25, 23, 59, 59), at(2026, 11, 26)),
        ("week", at(2026, 11, 23), at(2026, 11, 29, 23, 59, 59), at(2026, 11, 30)),
        ("month", at(2026, 11, 1), at(2026, 11, 30, 23, 59, 59), at(2026, 12, 1)),
        ("month", at(2026, 12, 1), at(2026, 12, 31, 23, 59, 59), at(2027, 1, 1)),
    ],
)
def test_spend_limit_resets_exactly_at_the_calendar_boundary(
    gov, admin, clock, period, start, last_moment, next_start
) -> None:
    make_rule(admin, name="budget", type="spend-limit", limit=TWO_DEV, period=period)
    # Spend in the previous period does not count in this one.
    clock.set(start - timedelta(microseconds=1))
    spend(gov, "bot")
    spend(gov, "bot")
    assert not allowed(gov, "bot")
    clock.set(start)
    spend(gov, "bot")
    spend(gov, "bot")  # exactly at the limit: allowed (settled + held + estimate ≤ limit)
    assert not allowed(gov, "bot")
    clock.set(last_moment)
    assert not allowed(gov, "bot")
    clock.set(next_start)
    assert allowed(gov, "bot")


def test_fifth_request_is_denied_when_daily_budget_is_spent(gov, admin) -> None:
    make_rule(admin, name="daily", type="spend-limit", limit=str(DEV.amount * 4), period="day")
    for _ in range(4):
        spend(gov, "bot")
    fifth = gov.authorize("bot", DEV, {})
    assert not fifth.allowed
    assert fifth.transaction.status == TxStatus.denied
    assert fifth.transaction.denial["rule"] == "daily"
    assert [(d.rule, d.type) for d in fifth.transaction.denials] == [("daily", "spend-limit")]


def test_a_total_spend_limit_never_resets(gov, admin, clock) -> None:
    make_rule(admin, name="lifetime", type="spend-limit", limit=TWO_DEV, period="total")
    spend(gov, "bot")
    spend(gov, "bot")
    clock.advance(days=400)
    assert not allowed(gov, "bot")


def test_a_spend_limit_without_a_period_counts_per_month(gov, admin, clock) -> None:
    rule = make_rule(admin, name="budget", type="spend-limit", limit=TWO_DEV)
    assert rule.period == "month" and rule.window is None
    clock.set(at(2026, 11, 2))
    spend(gov, "bot")
    spend(gov, "bot")
    clock.set(at(2026, 11, 30, 23))
    assert not allowed(gov, "bot")
    clock.set(at(2026, 12, 1))
    assert allowed(gov, "bot")


def test_one_nano_usd_over_the_limit_is_denied(gov, admin) -> None:
    make_rule(
        admin, name="budget", type="spend-limit", limit=str(DEV.amount * 2 - Decimal("0.000000001")), period="day"
    )
    spend(gov, "bot")
    second = gov.authorize("bot", DEV, {})
    assert not second.allowed
    assert "0.0237 is above the limit 0.023699999" in second.transaction.denials[0].reason


@pytest.mark.parametrize("span", [{"period": "day"}, {"window": "24h"}, {"period": "total"}])
def test_a_credit_never_raises_a_budgets_headroom_above_its_limit(gov, admin, engine, span) -> None:
    rule = make_rule(admin, name="budget", type="spend-limit", limit=TWO_DEV, **span)
    credited = spend(gov, "bot")
    gov.add_cost(credited.id, Decimal("-1000"), note="credit")
    assert counted(engine, rule.id) == (0, 0, 1)  # not -999.98815
    spend(gov, "bot")
    spend(gov, "bot")  # the whole limit again…
    assert not allowed(gov, "bot")  # …and not one estimate more
    assert counted(engine, rule.id) == (Decimal(TWO_DEV), 0, 3)


def test_held_estimates_count_against_the_budget_like_settled_spend(gov, admin) -> None:
    make_rule(admin, name="budget", type="spend-limit", limit=TWO_DEV, period="day")
    assert allowed(gov, "bot")  # pending, not settled
    assert allowed(gov, "bot")
    assert not allowed(gov, "bot")


# --- spend-limit: rolling windows -------------------------------------------------------------


@pytest.mark.parametrize(
    "window, spent_at, still_counted_at, dropped_at",
    [
        # 1h: 1-minute buckets. Spend at 12:00:30 sits in the 12:00 bucket, counted while it overlaps the window.
        ("1h", at(2026, 11, 25, 12, 0, 30), at(2026, 11, 25, 13, 0, 59), at(2026, 11, 25, 13, 1)),
        # 24h: 1-hour buckets; the window crosses midnight (a calendar day would have reset).
        ("24h", at(2026, 11, 25, 12, 10), at(2026, 11, 26, 12, 59, 59), at(2026, 11, 26, 13)),
        # 7d: 6-hour buckets.
        ("7d", at(2026, 11, 25, 12, 10), at(2026, 12, 2, 17, 59, 59), at(2026, 12, 2, 18)),
    ],
)
def test_spend_drops_out_of_a_rolling_window_once_its_bucket_leaves_it(
    gov, admin, clock, window, spent_at, still_counted_at, dropped_at
) -> None:
    make_rule(admin, name="rolling", type="spend-limit", limit=TWO_DEV, window=window)
    clock.set(spent_at)
    spend(gov, "bot")
    spend(gov, "bot")
    assert not allowed(gov, "bot")
    clock.set(spent_at + timedelta(seconds=parse_window(window)))  # never under-counted at the window's edge
    assert not allowed(gov, "bot")
    clock.set(still_counted_at)
    assert not allowed(gov, "bot")
    clock.set(dropped_at)
    assert allowed(gov, "bot")


def test_a_rolling_window_does_not_reset_at_midnight(gov, admin, clock) -> None:
    make_rule(admin, name="rolling", type="spend-limit", limit=TWO_DEV, window="1h")
    clock.set(at(2026, 11, 25, 23, 50))
    spend(gov, "bot")
    spend(gov, "bot")
    clock.set(at(2026, 11, 26, 0, 10))
    assert not allowed(gov, "bot")


def test_a_rolling_window_counts_spend_from_several_buckets_together(gov, admin, clock) -> None:
    make_rule(admin, name="rolling", type="spend-limit", limit=TWO_DEV, window="1h")
    clock.set(at(2026, 11, 25, 12, 0))
    spend(gov, "bot")
    clock.set(at(2026, 11, 25, 12, 40))
    spend(gov, "bot")
    assert not allowed(gov, "bot")
    clock.set(at(2026, 11, 25, 13, 1))  # the 12:00 spend left; the 12:40 spend is still in
    assert allowed(gov, "bot")
    assert not allowed(gov, "bot")


# --- request-cap ------------------------------------------------------------------------------


def test_request_cap_allows_an_estimate_equal_to_the_cap(gov, admin) -> None:
    make_rule(admin, name="cap", type="request-cap", limit="0.01185")
    assert allowed(gov, "bot")


def test_request_cap_denies_an_estimate_one_nano_above_the_cap(gov, admin) -> None:
    make_rule(admin, name="cap", type="request-cap", limit="0.011849999")
    denied = gov.authorize("bot", DEV, {})
    assert not denied.allowed
    assert denied.transaction.denials[0].type == RuleType.request_cap
    assert "above the per-request cap" in denied.transaction.denials[0].reason


def test_request_cap_looks_at_each_request_alone_not_at_history(gov, admin, engine) -> None:
    rule = make_rule(admin, name="cap", type="request-cap", limit="0.02")
    for _ in range(5):
        spend(gov, "bot")
    assert not allowed(gov, "bot", quote("fal-ai/flux/dev", {"image_size": "square_hd", "num_images": 2}))
    assert counted(engine, rule.id) == (0, 0, 0)


# --- rate-limit -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "period, start, last_moment, next_start",
    [
        ("minute", at(2026, 11, 25, 12, 0), at(2026, 11, 25, 12, 0, 59, 999999), at(2026, 11, 25, 12, 1)),
        ("hour", at(2026, 11, 25, 12), at(2026, 11, 25, 12, 59, 59), at(2026, 11, 25, 13)),
        ("day", at(2026, 11, 25), at(2026, 11, 25, 23, 59, 59), at(2026, 11, 26)),
    ],
)
def test_rate_limit_allows_n_requests_per_calendar_period(
    gov, admin, clock, period, start, last_moment, next_start
) -> None:
    make_rule(admin, name="rate", type="rate-limit", limit="2", period=period)
    clock.set(start)
    assert allowed(gov, "bot")
    assert allowed(gov, "bot")
    third = gov.authorize("bot", DEV, {})
    assert not third.allowed
    assert third.transaction.denials[0].type == RuleType.rate_limit
    assert "2 of 2 requests per " + period in third.transaction.denials[0].reason
    clock.set(last_moment)
    assert not allowed(gov, "bot")
    clock.set(next_start)
    assert allowed(gov, "bot")


def test_rate_limit_over_a_rolling_window_frees_a_slot_when_the_oldest_bucket_leaves(gov, admin, clock) -> None:
    make_rule(admin, name="rate", type="rate-limit", limit="2", window="10m")  # 1-minute buckets
    clock.set(at(2026, 11, 25, 12, 0, 0))
    assert allowed(gov, "bot")
    clock.set(at(2026, 11, 25, 12, 5, 0))
    assert allowed(gov, "bot")
    clock.set(at(2026, 11, 25, 12, 10, 59))
    assert not allowed(gov, "bot")
    clock.set(at(2026, 11, 25, 12, 11, 0))
    assert allowed(gov, "bot")
    assert not allowed(gov, "bot")


def test_rate_limit_counts_authorized_requests_even_when_released(gov, admin, clock) -> None:
    make_rule(admin, name="rate", type="rate-limit", limit="2", period="hour")
    first = gov.authorize("bot", DEV, {"n": 1})
    gov.void(first.transaction.id)
    second = gov.authorize("bot", DEV, {"n": 2})
    clock.advance(901)
    gov.expire()
    assert gov.transaction(second.transaction.id).status == TxStatus.expired
    assert not allowed(gov, "bot")


def test_denied_requests_do_not_use_up_a_rate_limit(gov, admin) -> None:
    make_rule(admin, name="rate", type="rate-limit", limit="1", period="hour")
    make_rule(admin, name="cap", type="request-cap", limit="0.02")
    big = quote("fal-ai/flux/dev", {"num_images": 4})
    assert not allowed(gov, "bot", big)
    assert allowed(gov, "bot")


# --- model-allowlist --------------------------------------------------------------------------


def _allowlist(*models: str) -> Rule:
    return Rule(1, "allow", "model-allowlist", None, None, None, None, models, None, None, None, "deny", None, True, 1)


@pytest.mark.parametrize(
    "models, q, ok",
    [
        (["fal-ai/flux/*"], DEV, True),
        (["fal-ai/flux/*"], SCHNELL, True),
        (["fal-ai/flux/*"], I2I, True),  # * crosses "/" like a shell glob over names, not paths
        (["fal-ai/flux/*"], PRO, False),
        (["fal-ai/flux/*"], SDXL, False),
        (["fal-ai/flux/dev"], I2I, False),
        (["fal-ai/flux/dev", "fal-ai/flux-pro"], PRO, True),
        (["fal-ai/stable-diffusion-xl"], SDXL, True),  # an alias matches its canonical model
        (["fal-ai/fast-sdxl"], SDXL, True),  # and the endpoint as requested
        (["fal-ai/flux/schnel?"], SCHNELL, True),
        (["FAL-AI/FLUX/*"], DEV, False),  # globs are case-sensitive
    ],
)
def test_model_allowlist_allows_only_endpoints_matching_a_glob(models, q, ok) -> None:
    verdict = evaluate(_allowlist(*models), q, None)
    assert verdict.ok is ok
    assert (q.endpoint in verdict.reason) is not ok


def test_a_model_allowlist_denies_every_other_model(gov, admin) -> None:
    make_rule(admin, name="allow", type="model-allowlist", models=["fal-ai/flux/*", "fal-ai/fast-sdxl"])
    assert allowed(gov, "bot", DEV)
    assert allowed(gov, "bot", SDXL)
    denied = gov.authorize("bot", PRO, {})
    assert not denied.allowed
    assert denied.transaction.denials[0].type == RuleType.model_allowlist
    assert "fal-ai/flux-pro is not in the allowed models (fal-ai/flux/*, fal-ai/fast-sdxl)" in (
        denied.transaction.denials[0].reason
    )


# --- scopes and filters -----------------------------------------------------------------------


def test_an_agent_rule_counts_and_limits_only_that_agent(gov, admin) -> None:
    admin.create_agent("alice")
    make_rule(admin, name="alice-budget", type="spend-limit", limit=TWO_DEV, period="day", agent="alice")
    spend(gov, "alice")
    spend(gov, "alice")
    assert not allowed(gov, "alice")
    for _ in range(3):
        spend(gov, "bob")


def test_a_rule_without_an_agent_counts_every_agents_spend_together(gov, admin, engine) -> None:
    rule = make_rule(admin, name="company", type="spend-limit", limit=TWO_DEV, period="day")
    spend(gov, "alice")
    spend(gov, "bob")
    assert not allowed(gov, "alice")
    assert not allowed(gov, "carol")
    assert counted(engine, rule.id) == (Decimal("0.0237"), 0, 2)


def test_an_agent_rule_and_an_every_agent_rule_both_apply(gov, admin) -> None:
    admin.create_agent("alice")
    make_rule(admin, name="alice-budget", type="spend-limit", limit="1", period="day", agent="alice")
    make_rule(admin, name="company", type="spend-limit", limit=TWO_DEV, period="day")
    spend(gov, "bob")
    spend(gov, "bob")
    denied = gov.authorize("alice", DEV, {})
    assert [d.rule for d in denied.decision.denials] == ["company"]


def test_a_model_glob_filter_limits_and_counts_only_matching_endpoints(gov, admin, engine) -> None:
    rule = make_rule(admin, name="flux-budget", type="spend-limit", limit=TWO_DEV, period="day", model="fal-ai/flux/*")
    spend(gov, "bot", SDXL)
    spend(gov, "bot", DEV)
    spend(gov, "bot", SCHNELL)
    assert not allowed(gov, "bot", DEV)
    assert allowed(gov, "bot", SDXL)
    spent, held, requests = counted(engine, rule.id)
    assert (spent, held, requests) == (DEV.amount + SCHNELL.amount, 0, 2)


def test_an_operation_filter_limits_only_that_operation(gov, admin) -> None:
    make_rule(admin, name="upscale-cap", type="request-cap", limit="0.001", operation="upscale")
    make_rule(admin, name="no-transform", type="model-allowlist", models=["none"], operation="transform")
    assert allowed(gov, "bot", DEV)
    assert not allowed(gov, "bot", UPSCALE)
    assert not allowed(gov, "bot", I2I)


def test_a_rate_limit_filtered_by_model_leaves_other_models_alone(gov, admin) -> None:
    make_rule(admin, name="pro-rate", type="rate-limit", limit="1", period="day", model="fal-ai/flux-pro")
    assert allowed(gov, "bot", PRO)
    assert not allowed(gov, "bot", PRO)
    assert allowed(gov, "bot", DEV)


# --- actions, alerts, enabled -----------------------------------------------------------------


def _alert_rows(engine) -> list:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(select(alerts).order_by(alerts.c.id)).all()


def test_an_alert_rule_allows_the_request_and_records_the_alert(gov, admin, engine) -> None:
    make_rule(admin, name="watch", type="request-cap", limit="0.01", action="alert")
    result = gov.authorize("bot", DEV, {})
    assert result.allowed
    assert result.transaction.status == TxStatus.pending
    assert result.decision.denials == ()
    assert [(a.rule, a.type) for a in result.decision.alerts] == [("watch", "request-cap")]
    rows = _alert_rows(engine)
    assert [(r.rule_name, r.kind, r.transaction_id) for r in rows] == [("watch", "rule", result.transaction.id)]
    assert admin.alerts()[0].agent == "bot"


def test_an_alert_spend_limit_lets_spend_pass_its_limit_and_alerts_each_time(gov, admin, engine) -> None:
    make_rule(admin, name="soft", type="spend-limit", limit=TWO_DEV, period="day", action="alert")
    for _ in range(4):
        spend(gov, "bot")
    assert [r.rule_name for r in _alert_rows(engine)] == ["soft", "soft"]


def test_a_check_reports_alerts_but_records_none(gov, admin, engine) -> None:
    make_rule(admin, name="watch", type="request-cap", limit="0.01", action="alert")
    before = snapshot(engine)
    decision = gov.check("bot", DEV)
    assert decision.allowed and [a.rule for a in decision.alerts] == ["watch"]
    assert decision.to_json() == {
        "allowed": True,
        "agent": "bot",
        "quote": DEV.to_json(),
        "denials": [],
        "alerts": [{"rule": "watch", "type": "request-cap", "reason": decision.alerts[0].reason}],
    }
    assert _alert_rows(engine) == []
    assert snapshot(engine) == before


def test_alert_at_threshold_is_recorded_once_per_period(gov, admin, engine, clock) -> None:
    make_rule(admin, name="budget", type="spend-limit", limit=str(DEV.amount * 10), period="day", alert_at=50)
    for _ in range(4):  # 40 %
        spend(gov, "bot")
    assert _alert_rows(engine) == []
    fifth = gov.authorize("bot", DEV, {"n": 5})  # 50 %: reaches the threshold
    assert [a.type for a in fifth.decision.alerts] == ["threshold"]
    assert "reaches the alert threshold of 50%" in fifth.decision.alerts[0].reason
    sixth = gov.authorize("bot", DEV, {"n": 6})
    assert [a.type for a in sixth.decision.alerts] == ["threshold"]  # still told…
    rows = _alert_rows(engine)
    assert [(r.kind, r.transaction_id) for r in rows] == [("threshold", fifth.transaction.id)]  # …recorded once
    clock.advance(days=1)
    for n in range(5):
        gov.authorize("bot", DEV, {"day": 2, "n": n})
    assert [r.kind for r in _alert_rows(engine)] == ["threshold", "threshold"]


def test_a_disabled_rule_is_ignored(gov, admin, engine) -> None:
    rule = make_rule(admin, name="off", type="request-cap", limit="0.001", enabled=False)
    assert rule.enabled is False
    assert allowed(gov, "bot")
    admin.update_rule("off", RuleSpec(enabled=True, given={"enabled"}))
    assert not allowed(gov, "bot")
    admin.update_rule("off", RuleSpec(enabled=False, given={"enabled"}))
    assert allowed(gov, "bot")


def test_a_disabled_spend_limit_neither_limits_nor_counts(gov, admin, engine) -> None:
    rule = make_rule(admin, name="off", type="spend-limit", limit=TWO_DEV, period="day", enabled=False)
    for _ in range(3):
        spend(gov, "bot")
    assert counted(engine, rule.id) == (0, 0, 0)


def test_a_paused_agent_is_denied_and_allowed_again_when_resumed(gov, admin) -> None:
    admin.create_agent("bot")
    admin.update_agent("bot", status="paused")
    denied = gov.authorize("bot", DEV, {"n": 1})
    assert not denied.allowed
    assert denied.transaction.denials[0].type == "agent-paused"
    assert denied.transaction.denials[0].rule is None
    assert "paused" in denied.transaction.denials[0].reason
    assert not gov.check("bot", DEV).allowed
    admin.update_agent("bot", status="active")
    assert allowed(gov, "bot")


def test_a_denial_names_every_failing_rule_and_holds_nothing(gov, admin, engine) -> None:
    make_rule(admin, name="budget", type="spend-limit", limit="0.01", period="day")
    make_rule(admin, name="cap", type="request-cap", limit="0.005")
    make_rule(admin, name="rate", type="rate-limit", limit="5", period="minute")  # passes
    make_rule(admin, name="allow", type="model-allowlist", models=["fal-ai/flux/schnell"])
    make_rule(admin, name="watch", type="request-cap", limit="0.001", action="alert")  # fails, but only alerts
    admin.create_agent("bot")
    admin.update_agent("bot", status="paused")
    result = gov.authorize("bot", DEV, {})
    assert not result.allowed
    names = [d.rule or d.type for d in result.transaction.denials]
    assert names == ["agent-paused", "budget", "cap", "allow"]
    assert result.transaction.denials == result.decision.denials
    assert result.transaction.denial["rule"] is None  # the first: the paused agent
    assert [d["rule"] for d in result.transaction.to_json()["denial"]["denials"]] == [None, "budget", "cap", "allow"]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(holds)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(rule_counters)).scalar_one() == 0
    assert _alert_rows(engine) == []


def test_a_check_gives_the_same_denials_as_authorize_without_writing(gov, admin, engine) -> None:
    make_rule(admin, name="cap", type="request-cap", limit="0.005")
    make_rule(admin, name="allow", type="model-allowlist", models=["fal-ai/flux/schnell"])
    before = snapshot(engine)
    decision = gov.check("newcomer", DEV)
    assert isinstance(decision, Decision)
    assert [d.rule for d in decision.denials] == ["cap", "allow"]
    assert all(isinstance(d, Denial) for d in decision.denials)
    assert admin.agents() == []  # the agent is not created by a check
    assert snapshot(engine) == before
    authorized = gov.authorize("newcomer", DEV, {})
    assert authorized.decision.denials == decision.denials


# --- rule definitions (pure) ------------------------------------------------------------------


def _spec(**fields) -> RuleSpec:  # type: ignore[no-untyped-def]
    return RuleSpec(**fields, given=set(fields))


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"type": "spend-limit", "limit": "1"}, "name"),
        ({"name": "  ", "type": "spend-limit", "limit": "1"}, "name"),
        ({"name": "r", "type": "budget", "limit": "1"}, "type"),
        ({"name": "r"}, "type"),
        ({"name": "r", "type": "spend-limit", "limit": "0", "period": "day"}, "limit"),
        ({"name": "r", "type": "spend-limit", "limit": "-1", "period": "day"}, "limit"),
        ({"name": "r", "type": "spend-limit", "period": "day"}, "limit"),
        ({"name": "r", "type": "spend-limit", "limit": "0.0000000001", "period": "day"}, "limit"),
        ({"name": "r", "type": "spend-limit", "limit": "ten", "period": "day"}, "limit"),
        ({"name": "r", "type": "spend-limit", "limit": "NaN", "period": "day"}, "limit"),
        ({"name": "r", "type": "spend-limit", "limit": "1e40", "period": "day"}, "limit"),
        ({"name": "r", "type": "spend-limit", "limit": "10000000000", "period": "day"}, "limit"),
        ({"name": "r", "type": "spend-limit", "limit": "1", "period": "fortnight"}, "period"),
        ({"name": "r", "type": "spend-limit", "limit": "1", "period": "minute"}, "period"),
        ({"name": "r", "type": "spend-limit", "limit": "1", "period": "day", "window": "24h"}, "period"),
        ({"name": "r", "type": "spend-limit", "limit": "1", "window": "5x"}, "window"),
        ({"name": "r", "type": "spend-limit", "limit": "1", "window": "30s"}, "window"),
        ({"name": "r", "type": "spend-limit", "limit": "1", "window": "400d"}, "window"),
        ({"name": "r", "type": "spend-limit", "limit": "1", "models": ["x"]}, "models"),
        ({"name": "r", "type": "spend-limit", "limit": "1", "alert_at": "0"}, "alert_at"),
        ({"name": "r", "type": "spend-limit", "limit": "1", "alert_at": "101"}, "alert_at"),
        ({"name": "r", "type": "spend-limit", "limit": "1", "alert_at": "half"}, "alert_at"),
        ({"name": "r", "type": "request-cap", "limit": "1", "period": "day"}, "period"),
        ({"name": "r", "type": "request-cap", "limit": "1", "window": "1h"}, "window"),
        ({"name": "r", "type": "request-cap", "limit": "1", "alert_at": "50"}, "alert_at"),
        ({"name": "r", "type": "request-cap", "limit": "0"}, "limit"),
        ({"name": "r", "type": "rate-limit", "limit": "0", "period": "day"}, "limit"),
        ({"name": "r", "type": "rate-limit", "limit": "-5", "period": "day"}, "limit"),
        ({"name": "r", "type": "rate-limit", "limit": "2.5", "period": "day"}, "limit"),
        ({"name": "r", "type": "rate-limit", "limit": "99999999999", "period": "day"}, "limit"),
        ({"name": "r", "type": "rate-limit", "limit": "5"}, "period"),
        ({"name": "r", "type": "rate-limit", "limit": "5", "period": "week"}, "period"),
        ({"name": "r", "type": "rate-limit", "limit": "5", "period": "month"}, "period"),
        ({"name": "r", "type": "rate-limit", "limit": "5", "period": "day", "alert_at": "50"}, "alert_at"),
        ({"name": "r", "type": "model-allowlist", "models": ["a"], "limit": "5"}, "limit"),
        ({"name": "r", "type": "model-allowlist", "models": ["a"], "period": "day"}, "period"),
        ({"name": "r", "type": "model-allowlist", "models": ["", " "]}, "models"),
        ({"name": "r", "type": "model-allowlist"}, "models"),
        ({"name": "r", "type": "request-cap", "limit": "1", "operation": "paint"}, "operation"),
        ({"name": "r", "type": "request-cap", "limit": "1", "action": "block"}, "action"),
    ],
)
def test_an_invalid_rule_definition_names_the_field(fields: dict, field: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        validate_spec(_spec(**fields))
    assert error.value.field == field
    assert error.value.code == "invalid_request"


def test_a_valid_rule_definition_becomes_column_values() -> None:
    values = validate_spec(
        _spec(
            name=" daily ",
            type="spend-limit",
            limit="$5.5",
            window="24h",
            alert_at="80%",
            model="fal-ai/flux/*",
            operation="generate",
        )
    )
    assert values["name"] == "daily"
    assert values["limit_amount"] == Decimal("5.5") and isinstance(values["limit_amount"], Decimal)
    assert (values["period"], values["window_seconds"]) == (None, 86400)
    assert values["alert_at"] == 80
    assert (values["model_glob"], values["operation"], values["action"], values["enabled"]) == (
        "fal-ai/flux/*",
        "generate",
        "deny",
        True,
    )


def test_a_rate_limit_counts_whole_requests() -> None:
    values = validate_spec(_spec(name="r", type="rate-limit", limit="60", window="1h"))
    assert (values["limit_count"], values["limit_amount"]) == (60, None)


def test_a_rule_record_gives_each_limit_its_type() -> None:
    rate = Rule(
        7, "rate", "rate-limit", None, 60, None, 3600, (), 3, "fal-ai/flux/*", "generate", "deny", None, True, 2
    )
    record = rule_record(rate, "bot")
    assert isinstance(record, SpendingRule)
    assert (record.id, record.type, record.limit, record.window, record.period) == (
        7,
        RuleType.rate_limit,
        60,
        "1h",
        None,
    )
    assert (record.agent, record.model, record.operation, record.version) == ("bot", "fal-ai/flux/*", "generate", 2)
    assert record.models is None
    budget = Rule(
        8, "budget", "spend-limit", Decimal("5.5"), None, "day", None, (), None, None, None, "alert", 80, False, 1
    )
    assert rule_record(budget, None).to_json() == {
        "id": 8,
        "name": "budget",
        "type": "spend-limit",
        "limit": "5.5",
        "period": "day",
        "window": None,
        "models": None,
        "agent": None,
        "model": None,
        "operation": None,
        "action": "alert",
        "alert_at": 80,
        "enabled": False,
        "version": 1,
    }
    assert rule_record(_allowlist("fal-ai/flux/*"), None).models == ("fal-ai/flux/*",)
