from decimal import Decimal

from pricing import quote


def test_third_request_is_denied_when_daily_budget_is_spent(gov, admin):
    from ledger.rules import RuleSpec

    admin.create_agent("bot")
    admin.create_rule(RuleSpec(name="daily", type="spend-limit", limit="0.03", period="day", agent="bot",
                               given={"name", "type", "limit", "period", "agent"}))
    q = quote("fal-ai/flux/dev", {})
    assert gov.authorize("bot", q, {}).allowed
    assert gov.authorize("bot", q, {}).allowed
    third = gov.authorize("bot", q, {})
    assert not third.allowed
    assert third.transaction["denial"]["rule"] == "daily"
    assert q.amount == Decimal("0.01185")
