"""Behaviour the rest of the suite let mutants change (tools/mutation.py, issue 8).

Each test pins one promise of the money, pricing, spend, rule or period code that a surviving
mutant broke without any other test noticing. Pure tests (no database, no subprocess).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from ledger.policy.periods import buckets, parse_window, period_start
from ledger.policy.rules import Rule, RuleSpec, validate_spec
from ledger.records import TxStatus
from ledger.store.spend import COUNTS_REQUEST, Counted, counted, movement, settled_amount, sql_held, sql_spent
from pricing import quote
from pricing.money import MAX_USD, D, display_price, parse_usd, to_nano, usd_str

# --- pricing/money.py ------------------------------------------------------------------------


def test_d_keeps_a_decimal_as_is_and_converts_strings_and_ints() -> None:
    amount = Decimal("0.011850")
    assert D(amount) is amount
    assert D("0.01185") == Decimal("0.01185")
    assert str(D("0.010")) == "0.010"  # the string's own exponent, not a float's
    assert D(7) == Decimal(7)


def test_d_refuses_a_float_by_name() -> None:
    with pytest.raises(TypeError) as info:
        D(0.1)  # type: ignore[arg-type]
    assert str(info.value) == "money must not be a float"


def test_parse_usd_accepts_zero_by_default_and_refuses_it_when_asked() -> None:
    assert parse_usd("0") == Decimal(0)
    with pytest.raises(ValueError, match="must be greater than zero"):
        parse_usd("0", allow_zero=False)


def test_parse_usd_strips_a_leading_dollar_sign_only() -> None:
    assert parse_usd("$5.5") == Decimal("5.5")
    assert parse_usd("$0.000000001") == Decimal("0.000000001")
    for text in ("5.5$", " $0.000000001 ", "$$5"):
        with pytest.raises(ValueError, match="is not a decimal amount"):
            parse_usd(text)


def test_parse_usd_refuses_floats_and_bools_as_such() -> None:
    for value in (1.5, 0.0, True, False):
        with pytest.raises(ValueError) as info:
            parse_usd(value)  # type: ignore[arg-type]
        assert str(info.value) == "amounts must be decimal strings, not floats"


def test_parse_usd_accepts_the_largest_storable_amount_and_no_more() -> None:
    assert parse_usd(str(MAX_USD)) == Decimal("9223372036.854775807")
    with pytest.raises(ValueError, match=r"above the largest amount the ledger holds \(9223372036\.854775807\)"):
        parse_usd("9223372036.854775808")


def test_parse_usd_says_why_it_refuses() -> None:
    cases = {
        "abc": "'abc' is not a decimal amount: ASCII digits like 0.05 (no exponent, sign or space)",
        "NaN": "'NaN' is not a decimal amount: ASCII digits like 0.05 (no exponent, sign or space)",
        "1e-3": "'1e-3' is not a decimal amount: ASCII digits like 0.05 (no exponent, sign or space)",
        "\u0661": "'\u0661' is not a decimal amount: ASCII digits like 0.05 (no exponent, sign or space)",
        "0.0000000001": "'0.0000000001' has more precision than one nano-USD (9 decimals)",
        "-1": "'-1' must not be negative",
    }
    for text, message in cases.items():
        with pytest.raises(ValueError) as info:
            parse_usd(text)
        assert str(info.value) == message
    assert parse_usd("-1", allow_negative=True) == Decimal(-1)


def test_to_nano_is_exact_beyond_the_default_decimal_precision() -> None:
    # 31 significant digits: the thread's 28-digit context would round the 1e-30 away first.
    assert to_nano(Decimal("1.123456789000000000000000000001")) == 1_123_456_790
    assert to_nano(Decimal("1.123456789000000000000000000000")) == 1_123_456_789
    assert to_nano(Decimal("9223372036.8547758070000000000000000001")) == 2**63


def test_to_nano_rounds_a_fraction_of_a_nano_up_even_below_the_half() -> None:
    assert to_nano(Decimal("0.0000000001")) == 1
    assert to_nano(Decimal("0.0000000025")) == 3
    assert to_nano(Decimal("-0.0000000015")) == -1  # towards +inf


def test_display_price_of_an_amount_wider_than_the_default_precision() -> None:
    amount = Decimal("1234567890123456789012345678.9015")  # 32 digits
    assert display_price(amount) == "$1234567890123456789012345678.902"


def test_usd_str_never_writes_a_negative_zero() -> None:
    assert usd_str(Decimal("-0")) == "0"
    assert usd_str(Decimal("-0.000")) == "0"
    assert usd_str(Decimal("0E-9")) == "0"
    assert usd_str(Decimal("1.2300")) == "1.23"
    assert usd_str(Decimal("100")) == "100"
    assert usd_str(None) is None


# --- ledger/periods.py -----------------------------------------------------------------------

NOW = datetime(2026, 11, 25, 3, 17, 42, 123456, tzinfo=UTC)  # a Wednesday, with microseconds


def test_period_starts_drop_the_microseconds_too() -> None:
    assert period_start("minute", NOW) == datetime(2026, 11, 25, 3, 17, tzinfo=UTC)
    assert period_start("hour", NOW) == datetime(2026, 11, 25, 3, tzinfo=UTC)
    assert period_start("day", NOW) == datetime(2026, 11, 25, tzinfo=UTC)
    assert period_start("week", NOW) == datetime(2026, 11, 23, tzinfo=UTC)
    assert period_start("month", NOW) == datetime(2026, 11, 1, tzinfo=UTC)
    assert period_start("total", NOW) == datetime(1970, 1, 1, tzinfo=UTC)


def test_period_starts_are_utc_whatever_the_machine_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(time, "tzset"):
        pytest.skip("no time.tzset on this platform")
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        # 03:17 UTC on the 25th is still the 24th in New York; the budget day is the UTC one.
        assert period_start("day", NOW) == datetime(2026, 11, 25, tzinfo=UTC)
        assert period_start("hour", NOW) == datetime(2026, 11, 25, 3, tzinfo=UTC)
        assert period_start("day", NOW).tzinfo is UTC
    finally:
        monkeypatch.undo()
        time.tzset()


def test_an_unknown_period_is_named() -> None:
    with pytest.raises(ValueError) as info:
        period_start("fortnight", NOW)
    assert str(info.value) == "unknown period 'fortnight'"


def test_a_rule_without_period_or_window_counts_in_the_total_bucket() -> None:
    assert buckets(None, None, NOW) == (0, 0)
    assert buckets("total", None, NOW) == (0, 0)


def test_parse_window_says_what_is_allowed() -> None:
    with pytest.raises(ValueError) as info:
        parse_window("ten minutes")
    assert str(info.value) == "window 'ten minutes' is not a number and a unit (s, m, h, d, w), e.g. 30m, 24h, 7d"
    with pytest.raises(ValueError) as info:
        parse_window("59s")
    assert str(info.value) == "window '59s' must be between 1m and 366d"


# --- ledger/spend.py -------------------------------------------------------------------------

EST, ACTUAL, CREDIT = Decimal("0.02"), Decimal("0.015"), Decimal("-0.005")


def test_a_settled_transaction_spends_actual_plus_adjustments_never_below_zero() -> None:
    assert settled_amount(ACTUAL, CREDIT) == Decimal("0.010")
    assert settled_amount(None) == Decimal(0)
    assert settled_amount(None, Decimal("0.003")) == Decimal("0.003")
    assert settled_amount(ACTUAL, Decimal("-0.5")) == Decimal(0)


def test_each_status_counts_what_the_spend_table_says() -> None:
    expected = {
        TxStatus.pending: Counted(EST, Decimal(0)),
        TxStatus.completed: Counted(Decimal(0), Decimal("0.010")),
        TxStatus.unknown: Counted(Decimal(0), EST),
        TxStatus.failed: Counted(Decimal(0), Decimal(0)),
        TxStatus.voided: Counted(Decimal(0), Decimal(0)),
        TxStatus.expired: Counted(Decimal(0), Decimal(0)),
        TxStatus.denied: Counted(Decimal(0), Decimal(0)),
    }
    for status, want in expected.items():
        assert counted(status, EST, ACTUAL, CREDIT) == want, status
        assert counted(status.value, EST, ACTUAL, CREDIT) == want, status
    assert counted("completed", EST) == Counted(Decimal(0), Decimal(0))  # settled at nothing
    assert counted("completed", EST, ACTUAL) == Counted(Decimal(0), ACTUAL)


def test_a_transition_moves_counters_by_the_difference() -> None:
    before, after = counted("pending", EST), counted("completed", EST, ACTUAL, CREDIT)
    assert movement(before, after) == Counted(Decimal("-0.02"), Decimal("0.010"))
    assert after.total == Decimal("0.010") and before.total == EST


def test_every_status_but_denied_counts_as_a_request() -> None:
    assert frozenset(TxStatus) - COUNTS_REQUEST == {TxStatus.denied}


def test_the_sql_sums_agree_with_counted_row_by_row() -> None:
    from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, create_engine, func, select

    from ledger.store.models import Money

    meta = MetaData()
    t = Table(
        "tx",
        meta,
        Column("id", Integer, primary_key=True),
        Column("status", String),
        Column("est", BigInteger),
        Column("actual", BigInteger),
        Column("adj", BigInteger),
    )
    # the ledger's own column type: the sums must still come back as raw nano-USD integers
    money = Table(
        "tx_money",
        meta,
        Column("id", Integer, primary_key=True),
        Column("status", String),
        Column("est", Money),
        Column("actual", Money),
        Column("adj", Money),
    )
    rows = [  # nano-USD
        ("pending", 20_000_000, None, None),
        ("completed", 20_000_000, 15_000_000, -5_000_000),
        ("completed", 20_000_000, 15_000_000, -50_000_000),  # a credit larger than the spend
        ("completed", 20_000_000, None, 3_000_000),
        ("completed", 20_000_000, 15_000_000, None),
        ("completed", 20_000_000, 1, -1),  # exactly zero
        ("completed", 20_000_000, 2, -1),  # exactly one nano-USD
        ("unknown", 7_000_000, None, None),
        ("failed", 9_000_000, None, None),
        ("denied", 9_000_000, None, None),
    ]
    engine = create_engine("sqlite://")
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), [dict(status=s, est=e, actual=a, adj=j) for s, e, a, j in rows])
        per_row = conn.execute(
            select(
                sql_held(t.c.status, t.c.est, t.c.actual, t.c.adj), sql_spent(t.c.status, t.c.est, t.c.actual, t.c.adj)
            ).order_by(t.c.id)
        ).all()
        sums = conn.execute(
            select(
                func.sum(sql_held(t.c.status, t.c.est, t.c.actual, t.c.adj)),
                func.sum(sql_spent(t.c.status, t.c.est, t.c.actual, t.c.adj)),
            )
        ).one()
        conn.execute(
            money.insert(),
            [
                dict(
                    status=s,
                    est=Decimal(e).scaleb(-9),
                    actual=None if a is None else Decimal(a).scaleb(-9),
                    adj=None if j is None else Decimal(j).scaleb(-9),
                )
                for s, e, a, j in rows
            ],
        )
        m = money.c
        money_rows = conn.execute(
            select(sql_held(m.status, m.est, m.actual, m.adj), sql_spent(m.status, m.est, m.actual, m.adj)).order_by(
                m.id
            )
        ).all()
    engine.dispose()
    assert [tuple(r) for r in per_row] == [
        (20_000_000, 0),
        (0, 10_000_000),
        (0, 0),
        (0, 3_000_000),
        (0, 15_000_000),
        (0, 0),
        (0, 1),
        (0, 7_000_000),
        (0, 0),
        (0, 0),
    ]
    assert all(type(v) is int for r in per_row for v in r)  # never NULL, never a float
    assert tuple(sums) == (20_000_000, 35_000_001)
    assert money_rows == per_row
    assert all(type(v) is int for r in money_rows for v in r)
    for (s, e, a, j), (held, spent) in zip(rows, per_row):
        c = counted(s, Decimal(e), None if a is None else Decimal(a), Decimal(j or 0))
        assert (held, spent) == (c.held, c.spent)


# --- pricing/quote.py ------------------------------------------------------------------------


def test_a_quote_json_names_every_field() -> None:
    q = quote("fal-ai/flux/dev", {"image_size": "square_hd", "num_images": 2})
    assert q.to_json() == {
        "endpoint": "fal-ai/flux/dev",
        "model": "fal-ai/flux/dev",
        "operation": "generate",
        "images": 2,
        "width": 1024,
        "height": 1024,
        "megapixels_per_image": "1.048576",
        "billable_megapixels_per_image": "1.05",
        "billable_megapixels": "2.1",
        "rate_per_megapixel": "0.015",
        "amount": "0.0315",
        "price": "$0.032",
        "currency": "USD",
        "price_book": "fal-image-2026-11",
    }


def test_an_upscale_quote_json_also_names_its_input_and_scale() -> None:
    q = quote("fal-ai/topaz/upscale/image", {"scale": 2}, input_size=(640, 480))
    assert q.to_json() == {
        "endpoint": "fal-ai/topaz/upscale/image",
        "model": "fal-ai/topaz/upscale/image",
        "operation": "upscale",
        "images": 1,
        "width": 1280,
        "height": 960,
        "megapixels_per_image": "1.2288",
        "billable_megapixels_per_image": "1.23",
        "billable_megapixels": "1.23",
        "rate_per_megapixel": "0.03",
        "amount": "0.0369",
        "price": "$0.037",
        "currency": "USD",
        "price_book": "fal-image-2026-11",
        "input_width": 640,
        "input_height": 480,
        "scale": 2,
    }


def test_an_upscale_of_unknown_input_size_says_how_to_give_it() -> None:
    from pricing import InvalidRequest

    with pytest.raises(InvalidRequest) as info:
        quote("fal-ai/topaz/upscale/image", {"scale": 2})
    assert info.value.to_json() == {
        "error": {
            "code": "invalid_request",
            "field": "input_size",
            "reason": "missing",
            "message": "input_size: the upscale input's size is unknown; give input_size WxH "
            "or an image_url whose header pixelgov can read",
        }
    }


@pytest.mark.parametrize("size", [(0, 480), (640, 0), (-1, 480), (640, -1)])
def test_an_upscale_input_needs_two_positive_sides(size: tuple[int, int]) -> None:
    from pricing import InvalidRequest

    with pytest.raises(InvalidRequest) as info:
        quote("fal-ai/topaz/upscale/image", {"scale": 2}, input_size=size)
    assert (info.value.field, info.value.message) == ("input_size", "input_size: sides must be positive")


def test_a_returned_image_of_zero_height_is_not_a_size() -> None:
    from pricing import actual_cost

    q = quote("fal-ai/flux/dev", {"image_size": "square_hd"})
    cost = actual_cost(q, {"images": [{"width": 1024, "height": 0}]})
    assert (cost.amount, cost.sizes, cost.sizes_known) == (Decimal("0.01575"), (), False)
    cost = actual_cost(q, {"images": [{"width": 0, "height": 1024}]})
    assert (cost.amount, cost.sizes, cost.sizes_known) == (Decimal("0.01575"), (), False)


MINIMAL_BOOK = (
    '{"version": "v", "limits": {"max_images": 2}, "presets": {"landscape_4_3": [1024, 768]}, '
    '"endpoints": {"a/b": {"operation": "generate", "rate_per_megapixel": "0.01"}}}'
)


def test_an_unknown_preset_lists_the_allowed_ones() -> None:
    from pricing import InvalidRequest

    with pytest.raises(InvalidRequest) as info:
        quote("fal-ai/flux/dev", {"image_size": "huge"})
    assert info.value.to_json() == {
        "error": {
            "code": "invalid_request",
            "field": "image_size",
            "reason": "enum",
            "message": "image_size: unknown preset 'huge'; allowed: square_hd, square, portrait_4_3, portrait_16_9, "
            "landscape_4_3, landscape_16_9 or {width, height}",
        }
    }


def test_a_book_may_allow_fewer_images_than_the_schema() -> None:
    from pricing import InvalidRequest, parse_book

    book = parse_book(MINIMAL_BOOK)
    assert quote("a/b", {"num_images": 2}, book=book).amount == Decimal("0.0158")
    with pytest.raises(InvalidRequest) as info:
        quote("a/b", {"num_images": 3}, book=book)
    assert info.value.to_json() == {
        "error": {
            "code": "invalid_request",
            "field": "num_images",
            "reason": "less_than_equal",
            "message": "num_images: the price book allows at most 2 (got 3)",
        }
    }


def test_a_too_large_output_names_the_option_that_made_it() -> None:
    from pricing import ImageTooLarge

    with pytest.raises(ImageTooLarge) as info:
        quote("fal-ai/flux/dev", {"image_size": {"width": 14000, "height": 14000}})
    assert (info.value.field, info.value.message) == ("image_size", "image_size: 14000x14000 is above 100 MP per image")
    with pytest.raises(ImageTooLarge) as info:
        quote("fal-ai/topaz/upscale/image", {"scale": 4}, input_size=(8000, 8000))
    assert (info.value.field, info.value.message) == ("scale", "scale: 32000x32000 has a side above 14142 pixels")


def test_one_side_above_the_limit_is_enough_to_refuse() -> None:
    from pricing import parse_book

    book = parse_book(MINIMAL_BOOK)  # a fresh book: the default one caches its areas across tests
    assert book.area(14143, 100).too_large == "14143x100 has a side above 14142 pixels"
    assert book.area(100, 14143).too_large == "100x14143 has a side above 14142 pixels"
    assert book.area(14142, 100).too_large is None
    assert book.area(1024, 1024).too_large is None


def test_an_upscale_input_above_the_limits_is_refused_by_name() -> None:
    from pricing import ImageTooLarge, parse_book

    with pytest.raises(ImageTooLarge) as info:
        quote("fal-ai/topaz/upscale/image", {"scale": 2}, input_size=(20000, 100))
    assert info.value.to_json() == {
        "error": {
            "code": "image_too_large",
            "field": "input_size",
            "message": "input_size: 20000x100 has a side above 14142 pixels",
        }
    }
    assert parse_book(MINIMAL_BOOK).area(20000, 100).too_large == "20000x100 has a side above 14142 pixels"


def test_a_book_s_own_default_size_and_limits_are_read() -> None:
    import json

    from pricing import ImageTooLarge, parse_book

    data = {
        **json.loads(MINIMAL_BOOK),
        "default_image_size": "square",
        "presets": {"square": [512, 512], "landscape_4_3": [1024, 768]},
        "limits": {"max_side": 2048, "max_images": 3, "max_megapixels_per_image": "4"},
    }
    book = parse_book(json.dumps(data))
    assert (book.default_image_size, book.max_side, book.max_images) == ("square", 2048, 3)
    q = quote("a/b", None, book=book)
    assert (q.width, q.height, q.currency) == (512, 512, "USD")
    with pytest.raises(ImageTooLarge) as info:
        quote("a/b", {"image_size": {"width": 2049, "height": 64}}, book=book)
    assert info.value.message == "image_size: 2049x64 has a side above 2048 pixels"


def test_a_book_without_optional_fields_gets_the_documented_defaults() -> None:
    import json

    from pricing import parse_book

    data = json.loads(MINIMAL_BOOK)
    del data["limits"]
    book = parse_book(json.dumps(data))
    assert (book.currency, book.megapixel_step, book.pixels_per_megapixel, book.default_image_size) == (
        "USD",
        Decimal("0.01"),
        1_000_000,
        "landscape_4_3",
    )
    assert (book.max_side, book.max_megapixels_per_image, book.max_images) == (14142, Decimal(100), 4)
    assert book.raw == data
    q = quote("a/b", None, book=book)  # the default size, 1024x768 = 0.786432 MP, billed as 0.79
    assert (q.width, q.height, q.billable_megapixels_per_image, q.amount, q.currency) == (
        1024,
        768,
        Decimal("0.79"),
        Decimal("0.0079"),
        "USD",
    )
    limits_only = parse_book(json.dumps({**data, "limits": {"max_megapixels_per_image": "50"}}))
    assert (limits_only.max_side, limits_only.max_images) == (14142, 4)


# --- ledger/rules.py -------------------------------------------------------------------------


def _rule(**fields: object) -> Rule:
    base: dict[str, object] = dict(
        id=1,
        name="r",
        type="spend-limit",
        limit_amount=Decimal("5"),
        limit_count=None,
        period="day",
        window_seconds=None,
        models=(),
        agent_id=None,
        model_glob=None,
        operation=None,
        action="deny",
        alert_at=None,
        enabled=True,
        version=1,
    )
    base.update(fields)
    return Rule(**base)  # type: ignore[arg-type]


def test_renaming_a_rule_keeps_everything_else_it_had() -> None:
    existing = _rule(
        period="day", model_glob="fal-ai/flux/*", operation="generate", action="alert", alert_at=80, enabled=False
    )
    values = validate_spec(RuleSpec(name="renamed", given={"name"}), existing=existing)
    assert values == {
        "name": "renamed",
        "type": "spend-limit",
        "limit_amount": Decimal("5"),
        "limit_count": None,
        "period": "day",
        "window_seconds": None,
        "models_json": None,
        "alert_at": 80,
        "operation": "generate",
        "model_glob": "fal-ai/flux/*",
        "action": "alert",
        "enabled": False,
    }


def test_renaming_a_windowed_rate_limit_keeps_its_count_and_window() -> None:
    existing = _rule(type="rate-limit", limit_amount=None, limit_count=30, period=None, window_seconds=7200)
    values = validate_spec(RuleSpec(name="renamed", given={"name"}), existing=existing)
    assert (values["limit_count"], values["limit_amount"], values["window_seconds"], values["period"]) == (
        30,
        None,
        7200,
        None,
    )


def test_renaming_a_model_allowlist_keeps_its_models() -> None:
    existing = _rule(type="model-allowlist", limit_amount=None, period=None, models=("fal-ai/flux/*", "x/y"))
    values = validate_spec(RuleSpec(name="renamed", given={"name"}), existing=existing)
    assert values["models_json"] == '["fal-ai/flux/*", "x/y"]'


def test_each_rule_type_describes_its_limit() -> None:
    assert _rule(period="day").describe_limit() == "$5.000 per day"
    assert _rule(period=None, window_seconds=86400).describe_limit() == "$5.000 per rolling 1d"
    assert _rule(type="rate-limit", limit_amount=None, limit_count=3, period="minute").describe_limit() == (
        "3 requests per minute"
    )
    assert _rule(type="request-cap", limit_amount=Decimal("0.25"), period=None).describe_limit() == (
        "$0.250 per request"
    )
    assert (
        _rule(type="model-allowlist", limit_amount=None, period=None, models=("a/*", "b")).describe_limit()
        == "models a/*, b"
    )


def _spec(**fields: object) -> RuleSpec:
    return RuleSpec(**fields, given=set(fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"type": "spend-limit", "limit": "1"}, "name", "name: a rule needs a name"),
        ({"name": "x" * 201, "type": "spend-limit", "limit": "1"}, "name", "name: at most 200 characters"),
        (
            {"name": "r", "type": "budget", "limit": "1"},
            "type",
            "type: unknown rule type 'budget'; allowed: spend-limit, request-cap, rate-limit, model-allowlist",
        ),
        (
            {"name": "r", "type": "spend-limit", "limit": "1", "models": ["x"]},
            "models",
            "models: a spend-limit rule does not take models",
        ),
        ({"name": "r", "type": "spend-limit", "period": "day"}, "limit", "limit: a spend-limit rule needs a limit"),
        (
            {"name": "r", "type": "rate-limit", "limit": "2.5", "period": "day"},
            "limit",
            "limit: a rate-limit counts requests: a whole number of ASCII digits (got '2.5')",
        ),
        (
            {"name": "r", "type": "rate-limit", "limit": "0", "period": "day"},
            "limit",
            "limit: must be greater than zero (got '0')",
        ),
        (
            {"name": "r", "type": "rate-limit", "limit": "2147483648", "period": "day"},
            "limit",
            "limit: at most 2147483647 requests (got '2147483648')",
        ),
        (
            {"name": "r", "type": "spend-limit", "limit": "ten", "period": "day"},
            "limit",
            "limit: 'ten' is not a decimal amount: ASCII digits like 0.05 (no exponent, sign or space)",
        ),
        (
            {"name": "r", "type": "spend-limit", "limit": "1", "period": "day", "window": "24h"},
            "period",
            "period: give a period or a window, not both",
        ),
        (
            {"name": "r", "type": "spend-limit", "limit": "1", "window": "5x"},
            "window",
            "window: window '5x' is not a number and a unit (s, m, h, d, w), e.g. 30m, 24h, 7d",
        ),
        (
            {"name": "r", "type": "spend-limit", "limit": "1", "period": "minute"},
            "period",
            "period: 'minute' is not a spend-limit period; allowed: hour, day, week, month, total or a rolling window",
        ),
        (
            {"name": "r", "type": "rate-limit", "limit": "5", "period": "week"},
            "period",
            "period: 'week' is not a rate-limit period; allowed: minute, hour, day or a rolling window",
        ),
        (
            {"name": "r", "type": "model-allowlist", "models": ["", " "]},
            "models",
            "models: a model-allowlist needs a list of model globs",
        ),
        (
            {"name": "r", "type": "spend-limit", "limit": "1", "alert_at": "half"},
            "alert_at",
            "alert_at: a percentage 1–100 (got 'half')",
        ),
        (
            {"name": "r", "type": "spend-limit", "limit": "1", "alert_at": "101%"},
            "alert_at",
            "alert_at: a percentage 1–100 (got 101)",
        ),
        (
            {"name": "r", "type": "request-cap", "limit": "1", "operation": "paint"},
            "operation",
            "operation: 'paint'; allowed: generate, transform, upscale",
        ),
        (
            {"name": "r", "type": "request-cap", "limit": "1", "model": "m" * 201},
            "model",
            "model: a glob of at most 200 characters",
        ),
        (
            {"name": "r", "type": "request-cap", "limit": "1", "action": "block"},
            "action",
            "action: 'block'; allowed: deny, alert",
        ),
    ],
)
def test_an_invalid_rule_definition_says_exactly_what_is_wrong(
    fields: dict[str, object], field: str, message: str
) -> None:
    from ledger.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as error:
        validate_spec(_spec(**fields))
    assert (error.value.field, error.value.message) == (field, message)


def test_a_rule_type_cannot_change_on_update() -> None:
    from ledger.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as error:
        validate_spec(RuleSpec(type="request-cap", given={"type"}), existing=_rule())
    assert (error.value.field, error.value.message) == ("type", "type: a rule's type cannot change; create a new rule")
    assert validate_spec(RuleSpec(type="spend-limit", given={"type"}), existing=_rule())["type"] == "spend-limit"


def test_rule_defaults_a_monthly_spend_limit_that_denies_and_is_enabled() -> None:
    values = validate_spec(_spec(name="r", type="spend-limit", limit="1", alert_at="", operation="", model=""))
    assert (values["period"], values["action"], values["enabled"], values["alert_at"]) == ("month", "deny", True, None)
    assert (values["operation"], values["model_glob"]) == (None, None)
    assert validate_spec(_spec(name="r", type="request-cap", limit="1", enabled=0))["enabled"] is False
    assert validate_spec(_spec(name="r", type="spend-limit", limit="1", alert_at=100))["alert_at"] == 100
    assert validate_spec(_spec(name="r", type="spend-limit", limit="1", alert_at="1%"))["alert_at"] == 1
    assert validate_spec(_spec(name="r", type="rate-limit", limit="2147483647", period="minute"))["limit_count"] == (
        2**31 - 1
    )
    assert validate_spec(_spec(name="x" * 200, type="request-cap", limit="1", model="m" * 200))["model_glob"] == (
        "m" * 200
    )


# evaluate: a 1024x1024 FLUX dev image is 1.05 billable MP x 0.015 = 0.01575


def test_a_spend_limit_allows_up_to_the_limit_exactly_and_says_why_it_denies() -> None:
    from ledger.policy.rules import Usage, evaluate

    q = quote("fal-ai/flux/dev", {"image_size": "square_hd"})
    assert q.amount == Decimal("0.01575")
    at_limit = evaluate(_rule(limit_amount=Decimal("0.05")), q, Usage(Decimal("0.02"), Decimal("0.01425"), 3))
    assert (at_limit.ok, at_limit.reason, at_limit.usage_after) == (True, "", Decimal("0.05000"))
    over = evaluate(
        _rule(limit_amount=Decimal("0.05"), period=None, window_seconds=3600),
        q,
        Usage(Decimal("0.03"), Decimal("0.01"), 3),
    )
    assert (over.ok, over.usage_after) == (False, Decimal("0.05575"))
    assert over.reason == ("spent 0.03 + held 0.01 + estimate 0.01575 = 0.05575 is above the limit 0.05 per rolling 1h")
    fresh = evaluate(_rule(limit_amount=Decimal("0.01575")), q, None)
    assert (fresh.ok, fresh.usage_after) == (True, Decimal("0.01575"))
    day = evaluate(_rule(limit_amount=Decimal("0.01")), q, None)
    assert day.reason == "spent 0 + held 0 + estimate 0.01575 = 0.01575 is above the limit 0.01 per day"


def test_a_request_cap_allows_the_cap_exactly_and_names_both_amounts() -> None:
    from ledger.policy.rules import evaluate

    q = quote("fal-ai/flux/dev", {"image_size": "square_hd"})
    cap = _rule(type="request-cap", period=None, limit_amount=Decimal("0.01575"))
    assert evaluate(cap, q, None)[1:] == (True, "", None)
    denied = evaluate(cap._replace(limit_amount=Decimal("0.015749999")), q, None)
    assert (denied.ok, denied.reason) == (False, "estimate $0.016 (0.01575) is above the per-request cap $0.016")


def test_a_rate_limit_allows_the_nth_request_and_refuses_the_next() -> None:
    from ledger.policy.rules import Usage, evaluate

    q = quote("fal-ai/flux/dev", {"image_size": "square_hd"})
    rate = _rule(type="rate-limit", limit_amount=None, limit_count=3, period="hour")
    assert evaluate(rate, q, Usage(Decimal(0), Decimal(0), 2))[1:] == (True, "", None)
    assert evaluate(rate, q, None).ok
    assert evaluate(rate, q, Usage(Decimal(0), Decimal(0), 3))[1:] == (
        False,
        "3 of 3 requests per hour already used",
        None,
    )


def test_a_model_allowlist_matches_endpoint_or_model_by_glob() -> None:
    from ledger.policy.rules import evaluate

    q = quote("fal-ai/flux/dev", {"image_size": "square_hd"})
    allow = _rule(type="model-allowlist", limit_amount=None, period=None, models=("fal-ai/sdxl*", "x"))
    assert evaluate(allow, q, None)[1:] == (
        False,
        "fal-ai/flux/dev is not in the allowed models (fal-ai/sdxl*, x)",
        None,
    )
    assert evaluate(allow._replace(models=("x", "fal-ai/flux/*")), q, None)[1:] == (True, "", None)


def test_an_update_naming_a_window_replaces_the_period_and_vice_versa() -> None:
    daily = _rule(period="day")
    to_window = validate_spec(RuleSpec(window="1h", given={"window"}), existing=daily)
    assert (to_window["period"], to_window["window_seconds"]) == (None, 3600)
    hourly = _rule(period=None, window_seconds=3600)
    to_period = validate_spec(RuleSpec(period="week", given={"period"}), existing=hourly)
    assert (to_period["period"], to_period["window_seconds"]) == ("week", None)


def test_a_rule_applies_only_to_its_agent_operation_and_models() -> None:
    gen = quote("fal-ai/flux/dev", {"image_size": "square_hd"})
    up = quote("fal-ai/topaz/upscale/image", {"scale": 2}, input_size=(640, 480))
    anyone = _rule()
    assert anyone.applies_to(None, gen) and anyone.applies_to(7, up)
    mine = _rule(agent_id=7)
    assert mine.applies_to(7, gen) and not mine.applies_to(8, gen) and not mine.applies_to(None, gen)
    generating = _rule(operation="generate")
    assert generating.applies_to(1, gen) and not generating.applies_to(1, up)
    flux = _rule(model_glob="fal-ai/flux/*")
    assert flux.applies_to(1, gen) and not flux.applies_to(1, up)
    assert _rule(model_glob="fal-ai/topaz/upscale/image").applies_to(1, up)


def test_a_rate_limit_without_a_count_allows_nothing() -> None:
    from ledger.policy.rules import evaluate

    q = quote("fal-ai/flux/dev", {"image_size": "square_hd"})
    rate = _rule(type="rate-limit", limit_amount=None, limit_count=None, period="hour")
    assert evaluate(rate, q, None)[1:3] == (False, "0 of None requests per hour already used")


def test_a_request_cap_without_an_amount_allows_nothing() -> None:
    from ledger.policy.rules import evaluate

    q = quote("fal-ai/flux/dev", {"image_size": "square_hd"})
    cap = _rule(type="request-cap", period=None, limit_amount=None)
    assert evaluate(cap, q, None)[1:] == (False, "estimate $0.016 (0.01575) is above the per-request cap $0.000", None)


def test_empty_options_a_rule_type_does_not_take_are_ignored() -> None:
    values = validate_spec(
        _spec(name="cap", type="request-cap", limit="1", period="", window="", alert_at="", models=[])
    )
    assert (values["limit_amount"], values["period"], values["window_seconds"], values["alert_at"]) == (
        Decimal(1),
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"name": "r", "type": "spend-limit", "limit": ""}, "limit", "limit: a spend-limit rule needs a limit"),
        ({"name": "r", "type": "request-cap", "limit": "0"}, "limit", "limit: '0' must be greater than zero"),
        (
            {"name": "r", "type": "rate-limit", "limit": "5"},
            "period",
            "period: None is not a rate-limit period; allowed: minute, hour, day or a rolling window",
        ),
        ({"name": "   ", "type": "request-cap", "limit": "1"}, "name", "name: a rule needs a name"),
        (
            {"name": "r", "type": "request-cap", "limit": "1", "period": "day"},
            "period",
            "period: a request-cap rule does not take period",
        ),
        (
            {"name": "r", "type": "spend-limit", "limit": "1", "alert_at": "80X"},
            "alert_at",
            "alert_at: a percentage 1–100 (got '80X')",
        ),
        (
            {"name": "r", "type": "spend-limit", "limit": "1", "window": "30s"},
            "window",
            "window: window '30s' must be between 1m and 366d",
        ),
    ],
)
def test_more_invalid_rule_definitions_say_exactly_what_is_wrong(
    fields: dict[str, object], field: str, message: str
) -> None:
    from ledger.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as error:
        validate_spec(_spec(**fields))
    assert (error.value.field, error.value.message) == (field, message)


def test_a_rule_name_with_a_control_character_inside_is_refused() -> None:
    from ledger.errors import InvalidRequest

    for name in ("a\x07b", "a\tb", "r\n"):
        with pytest.raises(InvalidRequest) as error:
            validate_spec(_spec(name=name, type="request-cap", limit="1"))
        assert error.value.field == "name"
        assert error.value.message.startswith(f"name: {name!r} ")
