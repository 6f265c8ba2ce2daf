"""Properties of every quote, checked with hypothesis against exact Fraction arithmetic:
never below the exact price, at most one step above it, monotonic, and never a float."""

from __future__ import annotations

import copy
import json
import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pricing import ImageTooLarge, Quote, actual_cost, parse_book, quote
from pricing.book import PriceBook

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DEFAULT = json.loads((Path(__file__).parents[1] / "pricing" / "default_book.json").read_text())
DEV = "fal-ai/flux/dev"
UPSCALE = "fal-ai/topaz/upscale/image"
MONEY_KEYS = (
    "megapixels_per_image",
    "billable_megapixels_per_image",
    "billable_megapixels",
    "rate_per_megapixel",
    "amount",
    "price",
)


def make_book(step: str | int, ppm: int, rate: str) -> PriceBook:
    data = copy.deepcopy(DEFAULT)
    data.update(version=f"prop-{step}-{ppm}-{rate}", megapixel_step=step, pixels_per_megapixel=ppm)
    data["limits"]["max_megapixels_per_image"] = "1000000000"  # let the side limit decide
    data["endpoints"][DEV]["rate_per_megapixel"] = rate
    data["endpoints"][UPSCALE]["rate_per_megapixel"] = rate
    data["transform"]["rate_per_megapixel"] = rate
    return parse_book(json.dumps(data))


STEPS = st.sampled_from(["0.01", "0.05", "0.001", 1, "0.25", "exact"])
PPMS = st.sampled_from([1_000_000, 1_048_576, 3, 7, 999_999, 1_000_003])
#: rates from 1e-9 to 1000 USD/MP, with up to 32 significant digits: more than Decimal's
#: default context (28 digits) holds, so an inexact product would show
RATES = st.builds(
    lambda digits, shift: str(Decimal(digits).scaleb(3 - len(str(digits)) - shift)),
    st.one_of(st.integers(min_value=1, max_value=999), st.integers(min_value=1, max_value=10**32)),
    st.integers(min_value=0, max_value=12),
)
SIDE = st.integers(min_value=1, max_value=14142)
IMAGES = st.integers(min_value=1, max_value=4)


def exact_megapixels(width: int, height: int, ppm: int) -> Fraction:
    return Fraction(width * height, ppm)


def step_fraction(book: PriceBook) -> Fraction | None:
    return None if book.megapixel_step is None else Fraction(book.megapixel_step)


@PROPS
@given(step=STEPS, ppm=PPMS, rate=RATES, width=SIDE, height=SIDE, images=IMAGES)
def test_amount_is_never_below_the_exact_price_and_at_most_one_step_per_image_above(
    step, ppm, rate, width, height, images
):
    book = make_book(step, ppm, rate)
    q = quote(DEV, {"image_size": {"width": width, "height": height}, "num_images": images}, book=book)
    exact = exact_megapixels(width, height, ppm) * Fraction(rate) * images
    amount = Fraction(q.amount)
    assert amount >= exact
    unit = step_fraction(book)
    if unit is None:
        assert amount - exact <= exact * Fraction(1, 10**30)
    else:
        billable = math.ceil(exact_megapixels(width, height, ppm) / unit) * unit
        assert amount == billable * Fraction(rate) * images
        assert amount - exact < unit * Fraction(rate) * images


@PROPS
@given(rate=RATES, width=st.integers(1, 10000), height=st.integers(1, 10000), scale=st.sampled_from([2, 4]))
def test_upscale_amount_is_never_below_the_exact_price_of_its_output(rate, width, height, scale):
    book = make_book("0.01", 1_000_000, rate)
    try:
        q = quote(UPSCALE, {"input_size": {"width": width, "height": height}, "scale": scale}, book=book)
    except ImageTooLarge:  # an output side above 14142 is refused, never priced
        assert max(width, height) * scale > 14142
        return
    assert (q.width, q.height, q.images) == (width * scale, height * scale, 1)
    assert Fraction(q.amount) >= exact_megapixels(q.width, q.height, 1_000_000) * Fraction(rate)


@PROPS
@given(
    step=STEPS,
    ppm=PPMS,
    width=st.integers(1, 10000),
    height=st.integers(1, 10000),
    dw=st.integers(0, 4142),
    dh=st.integers(0, 4142),
    images=st.integers(1, 3),
)
def test_amount_is_monotonic_in_width_height_and_num_images(step, ppm, width, height, dw, dh, images):
    book = make_book(step, ppm, "0.015")

    def amount(w: int, h: int, n: int) -> Decimal:
        return quote(DEV, {"image_size": {"width": w, "height": h}, "num_images": n}, book=book).amount

    base = amount(width, height, images)
    assert amount(width + dw, height, images) >= base
    assert amount(width, height + dh, images) >= base
    assert amount(width + dw, height + dh, images) >= base
    assert amount(width, height, images + 1) > base


def walk(value: Any, path: str = "") -> None:
    assert not isinstance(value, float), f"float at {path or 'top'}: {value!r}"
    if isinstance(value, dict):
        for key, item in value.items():
            walk(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            walk(item, f"{path}[{i}]")


REQUESTS = st.one_of(
    st.builds(
        lambda p, n: (DEV, {"image_size": p, "num_images": n}), st.sampled_from(sorted(DEFAULT["presets"])), IMAGES
    ),
    st.builds(
        lambda w, h, n: (
            "fal-ai/flux/dev/image-to-image",
            {"image_size": {"width": w, "height": h}, "num_images": n, "strength": 0.5},
        ),
        st.integers(1, 10000),
        st.integers(1, 10000),
        IMAGES,
    ),
    st.builds(
        lambda w, h, s: (UPSCALE, {"input_size": {"width": w, "height": h}, "scale": s}),
        st.integers(1, 3535),
        st.integers(1, 3535),
        st.sampled_from([2, 4]),
    ),
)


@PROPS
@given(request=REQUESTS, step=STEPS, ppm=PPMS, rate=RATES)
def test_a_quote_holds_no_float_and_its_json_carries_money_as_decimal_strings(request, step, ppm, rate):
    endpoint, body = request
    q = quote(endpoint, body, book=make_book(step, ppm, rate))
    walk(tuple(q))
    for name in ("megapixels_per_image", "billable_megapixels_per_image", "rate_per_megapixel", "amount"):
        assert type(getattr(q, name)) is Decimal
    assert type(q.billable_megapixels) is Decimal
    doc = q.to_json()
    walk(doc)
    json.dumps(doc)  # plain JSON, nothing exotic
    for key in MONEY_KEYS:
        assert type(doc[key]) is str, key
    for key in MONEY_KEYS[:-1]:
        assert "e" not in doc[key].lower(), (key, doc[key])  # no exponent notation
    assert Decimal(doc["amount"]) == q.amount
    assert Decimal(doc["rate_per_megapixel"]) == Decimal(rate)
    assert Fraction(Decimal(doc["billable_megapixels"])) == Fraction(q.billable_megapixels_per_image) * q.images


@PROPS
@given(step=STEPS, ppm=PPMS, rate=RATES, width=SIDE, height=SIDE, images=IMAGES)
def test_display_price_is_the_amount_rounded_half_up_to_a_tenth_of_a_cent(step, ppm, rate, width, height, images):
    q = quote(
        DEV, {"image_size": {"width": width, "height": height}, "num_images": images}, book=make_book(step, ppm, rate)
    )
    thousandths = math.floor(Fraction(q.amount) * 1000 + Fraction(1, 2))
    assert q.price == f"${thousandths // 1000}.{thousandths % 1000:03d}"


@PROPS
@given(step=STEPS, ppm=PPMS, rate=RATES, width=SIDE, height=SIDE, images=IMAGES)
def test_actual_cost_of_the_requested_sizes_equals_the_estimate(step, ppm, rate, width, height, images):
    book = make_book(step, ppm, rate)
    est: Quote = quote(DEV, {"image_size": {"width": width, "height": height}, "num_images": images}, book=book)
    response = {"images": [{"url": "u", "width": width, "height": height}] * images}
    actual = actual_cost(est, response, book=book)
    assert actual.sizes_known is True
    assert actual.amount == est.amount
    walk(tuple(actual))
