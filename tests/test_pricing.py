"""Quotes against SPEC §2: worked examples, the default book's every endpoint × preset,
custom sizes, other books, display rounding, upscale sizes, validation and actual cost.

Expected amounts are computed here independently, with integer / Fraction math.
"""

from __future__ import annotations

import copy
import json
import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from pricing import (
    ImageTooLarge,
    InvalidRequest,
    ModelNotFound,
    actual_cost,
    default_book,
    load_book,
    parse_book,
    quote,
    require_runnable,
    upstream_body,
    validate_request,
)
from pricing.money import display_price

DEV = "fal-ai/flux/dev"
UPSCALE = "fal-ai/topaz/upscale/image"

#: SPEC §2, the default book, written out independently of default_book.json.
PRESETS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
GENERATE_RATES = {
    "fal-ai/flux/schnell": "0.004",
    "fal-ai/flux/dev": "0.015",
    "fal-ai/flux-pro": "0.04",
    "fal-ai/stable-diffusion-xl": "0.007",
    "fal-ai/fast-sdxl": "0.007",
}
TRANSFORM_RATE = "0.045"
UPSCALE_RATE = "0.03"
#: every generate/transform path of the default book with its rate
PRICED = {**GENERATE_RATES, **{f"{e}/image-to-image": TRANSFORM_RATE for e in GENERATE_RATES}}

DEFAULT_BOOK_JSON = json.loads((Path(__file__).parents[1] / "pricing" / "default_book.json").read_text())


def hundredths(width: int, height: int) -> int:
    """Billable hundredths of a megapixel for one image: ceil(w*h / 10,000)."""
    return -(-width * height // 10_000)


def expected_amount(width: int, height: int, images: int, rate: str) -> Fraction:
    return Fraction(hundredths(width, height) * images, 100) * Fraction(rate)


def half_up_display(amount: Fraction) -> str:
    thousandths = math.floor(amount * 1000 + Fraction(1, 2))
    return f"${thousandths // 1000}.{thousandths % 1000:03d}"


def user_book(tmp_path: Path, name: str = "book.json", **changes: Any) -> Path:
    """A user's price book: the default one with top-level keys replaced, written to a file."""
    data = copy.deepcopy(DEFAULT_BOOK_JSON)
    data["version"] = f"test-{name}"
    data.update(changes)
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def with_rate(tmp_path: Path, rate: str, **changes: Any) -> Path:
    endpoints = copy.deepcopy(DEFAULT_BOOK_JSON["endpoints"])
    endpoints[DEV]["rate_per_megapixel"] = rate
    return user_book(tmp_path, f"rate-{rate}.json", endpoints=endpoints, **changes)


def custom(width: int, height: int) -> dict[str, Any]:
    return {"image_size": {"width": width, "height": height}}


# --- SPEC §2 worked examples ------------------------------------------------------------------


def test_flux_dev_landscape_4_3_is_0_79_megapixels_costing_0_01185_shown_as_0_012():
    q = quote(DEV, {"image_size": "landscape_4_3"})
    assert (q.width, q.height, q.images) == (1024, 768, 1)
    assert q.megapixels_per_image == Decimal("0.786432")
    assert q.billable_megapixels_per_image == Decimal("0.79")
    assert q.billable_megapixels == Decimal("0.79")
    assert q.rate_per_megapixel == Decimal("0.015")
    assert q.amount == Decimal("0.01185")
    assert q.price == "$0.012"
    assert q.to_json()["amount"] == "0.01185"


def test_default_request_is_one_landscape_4_3_image():
    q = quote(DEV, {})
    assert (q.width, q.height, q.images) == (1024, 768, 1)
    assert q.amount == Decimal("0.01185")
    assert quote(DEV).amount == Decimal("0.01185")


def test_flux_dev_square_hd_times_four_costs_0_063():
    q = quote(DEV, {"image_size": "square_hd", "num_images": 4})
    assert q.billable_megapixels_per_image == Decimal("1.05")
    assert q.billable_megapixels == Decimal("4.2")
    assert q.amount == Decimal("0.063")
    assert q.price == "$0.063"


def test_upscale_1024x768_by_2_is_3_15_megapixels_costing_0_0945_shown_as_0_095():
    q = quote(UPSCALE, {"input_size": {"width": 1024, "height": 768}})
    assert (q.width, q.height, q.images, q.scale) == (2048, 1536, 1, 2)
    assert (q.input_width, q.input_height) == (1024, 768)
    assert q.megapixels_per_image == Decimal("3.145728")
    assert q.billable_megapixels_per_image == Decimal("3.15")
    assert q.amount == Decimal("0.0945")
    assert q.price == "$0.095"


@pytest.mark.parametrize(
    ("endpoint", "amount", "price"),
    [("fal-ai/flux/schnell", "0.00316", "$0.003"), ("fal-ai/flux-pro", "0.0316", "$0.032")],
)
def test_schnell_and_pro_at_landscape_4_3_match_the_fal_docs(endpoint, amount, price):
    q = quote(endpoint, {"image_size": "landscape_4_3"})
    assert q.amount == Decimal(amount)
    assert q.price == price


# --- every endpoint × every preset × every count of the default book ---------------------------


@pytest.mark.parametrize("images", [1, 2, 3, 4])
@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("endpoint", sorted(PRICED))
def test_every_default_endpoint_and_preset_costs_ceil_hundredths_times_rate(endpoint, preset, images):
    width, height = PRESETS[preset]
    q = quote(endpoint, {"image_size": preset, "num_images": images})
    expected = expected_amount(width, height, images, PRICED[endpoint])
    assert Fraction(q.amount) == expected
    assert (q.width, q.height, q.images) == (width, height, images)
    assert q.operation == ("transform" if endpoint.endswith("/image-to-image") else "generate")
    assert q.rate_per_megapixel == Decimal(PRICED[endpoint])
    assert q.price == half_up_display(expected)
    assert q.endpoint == endpoint


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_upscale_of_every_preset_sized_input_costs_its_scaled_output(preset, scale):
    w, h = PRESETS[preset]
    q = quote(UPSCALE, {"input_size": {"width": w, "height": h}, "scale": scale})
    assert (q.width, q.height, q.images) == (w * scale, h * scale, 1)
    assert Fraction(q.amount) == expected_amount(w * scale, h * scale, 1, UPSCALE_RATE)


def test_fast_sdxl_alias_prices_as_stable_diffusion_xl_and_keeps_its_own_path():
    q = quote("fal-ai/fast-sdxl", {"image_size": "square"})
    assert q.endpoint == "fal-ai/fast-sdxl"
    assert q.model == "fal-ai/stable-diffusion-xl"
    assert q.amount == quote("fal-ai/stable-diffusion-xl", {"image_size": "square"}).amount


def test_transform_costs_the_transform_rate_whatever_the_base_model():
    amounts = {quote(f"{e}/image-to-image", {"image_size": "square_hd"}).amount for e in GENERATE_RATES}
    assert amounts == {Decimal("1.05") * Decimal(TRANSFORM_RATE)}


# --- custom sizes and the 0.01 MP step --------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "billable"),
    [
        (1, 1, "0.01"),  # the smallest image still bills one step
        (100, 100, "0.01"),  # exactly one step: no rounding up
        (100, 101, "0.02"),  # one pixel over a step: the next step
        (1280, 720, "0.93"),  # 0.9216
        (1000, 1000, "1"),
        (1001, 1000, "1.01"),
        (14142, 7071, "100"),  # 99.998082 MP: both limits respected
        (10000, 10000, "100"),  # exactly the 100 MP limit
    ],
)
def test_custom_size_bills_megapixels_rounded_up_to_a_hundredth(width, height, billable):
    q = quote(DEV, custom(width, height))
    assert (q.width, q.height) == (width, height)
    assert q.billable_megapixels_per_image == Decimal(billable)
    assert q.megapixels_per_image == Decimal(width * height) / Decimal(1_000_000)
    assert q.amount == Decimal(billable) * Decimal("0.015")


@pytest.mark.parametrize("images", [1, 2, 3, 4])
def test_num_images_multiplies_a_custom_size(images):
    q = quote(DEV, {**custom(1280, 720), "num_images": images})
    assert q.images == images
    assert q.amount == Decimal("0.93") * images * Decimal("0.015")
    assert q.billable_megapixels == Decimal("0.93") * images


def test_steps_guidance_seed_and_output_format_do_not_change_the_price():
    plain = quote(DEV, {"image_size": "square_hd"})
    tuned = quote(
        DEV,
        {
            "image_size": "square_hd",
            "num_inference_steps": 100,
            "guidance_scale": 20.5,
            "seed": 123456,
            "output_format": "png",
            "prompt": "a fox",
        },
    )
    assert tuned == plain


# --- other books ------------------------------------------------------------------------------


def test_whole_megapixel_book_rounds_each_image_up_to_one_megapixel(tmp_path):
    book = load_book(user_book(tmp_path, megapixel_step=1))
    small = quote(DEV, {"image_size": "landscape_4_3"}, book=book)
    assert small.billable_megapixels_per_image == 1
    assert small.amount == Decimal("0.015")
    assert small.price_book == "test-book.json"
    hd = quote(DEV, {"image_size": "square_hd", "num_images": 3}, book=book)  # 1.048576 MP → 2
    assert hd.billable_megapixels_per_image == 2
    assert hd.amount == Decimal("0.09")
    exact_one = quote(DEV, custom(1000, 1000), book=book)
    assert exact_one.billable_megapixels_per_image == 1


def test_exact_book_bills_the_exact_megapixels(tmp_path):
    book = load_book(user_book(tmp_path, megapixel_step="exact"))
    q = quote(DEV, {"image_size": "landscape_4_3", "num_images": 2}, book=book)
    assert q.billable_megapixels_per_image == Decimal("0.786432")
    assert q.amount == Decimal("0.786432") * 2 * Decimal("0.015")
    assert q.amount == Decimal("0.02359296")
    assert q.price == "$0.024"


def test_another_pixels_per_megapixel_changes_the_megapixels(tmp_path):
    book = load_book(user_book(tmp_path, pixels_per_megapixel=1_048_576))
    q = quote(DEV, {"image_size": "landscape_4_3"}, book=book)
    assert q.megapixels_per_image == Decimal("0.75")
    assert q.billable_megapixels_per_image == Decimal("0.75")
    assert q.amount == Decimal("0.01125")
    assert quote(DEV, {"image_size": "square_hd"}, book=book).amount == Decimal("0.015")
    # ceil(1 000 001 / 10 485.76) = 96 hundredths of this book's megapixel
    assert quote(DEV, custom(1000, 1000), book=book).billable_megapixels_per_image == Decimal("0.96")


def test_parse_book_and_load_book_give_the_same_book(tmp_path):
    path = user_book(tmp_path, megapixel_step="0.05")
    from_file = load_book(path)
    from_text = parse_book(path.read_text(), str(path))
    assert from_file == from_text
    assert quote(DEV, {}, book=from_file).billable_megapixels_per_image == Decimal("0.8")


def test_a_book_max_images_below_four_is_enforced(tmp_path):
    book = load_book(user_book(tmp_path, limits={"max_images": 2}))
    assert quote(DEV, {"num_images": 2}, book=book).images == 2
    with pytest.raises(InvalidRequest) as exc:
        quote(DEV, {"num_images": 3}, book=book)
    assert (exc.value.code, exc.value.field) == ("invalid_request", "num_images")


def test_a_book_max_megapixels_limit_is_image_too_large(tmp_path):
    book = load_book(user_book(tmp_path, limits={"max_megapixels_per_image": "1"}))
    assert quote(DEV, custom(1000, 1000), book=book).amount == Decimal("0.015")
    with pytest.raises(ImageTooLarge) as exc:
        quote(DEV, {"image_size": "square_hd"}, book=book)  # 1.048576 MP
    assert (exc.value.code, exc.value.field) == ("image_too_large", "image_size")


# --- display price: half-up to three decimals -------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "price"),
    [("0.0125", "$0.013"), ("0.0105", "$0.011"), ("0.0115", "$0.012"), ("0.0124999", "$0.012")],
)
def test_display_price_rounds_half_up_at_the_midpoint(tmp_path, rate, price):
    book = load_book(with_rate(tmp_path, rate, megapixel_step=1))
    q = quote(DEV, custom(1000, 1000), book=book)  # exactly 1 MP
    assert q.amount == Decimal(rate)
    assert q.price == price


def test_default_book_midpoint_0_0045_is_shown_as_0_005():
    q = quote(DEV, custom(600, 500))  # 0.30 MP × 0.015
    assert q.amount == Decimal("0.0045")
    assert q.price == "$0.005"


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        ("0.0125", "$0.013"),
        ("0.0105", "$0.011"),
        ("0.0005", "$0.001"),
        ("0.00049999", "$0.000"),
        ("0", "$0.000"),
        ("12.3455", "$12.346"),
        ("0.063", "$0.063"),
    ],
)
def test_display_price_of_an_amount(amount, shown):
    assert display_price(Decimal(amount)) == shown


# --- upscale ----------------------------------------------------------------------------------


def test_upscale_input_size_as_text_is_read_like_the_cli():
    q = quote(UPSCALE, {"input_size": "1024x768"})
    assert (q.input_width, q.input_height, q.width, q.height) == (1024, 768, 2048, 1536)


def test_upscale_input_size_argument_wins_over_the_body():
    q = quote(UPSCALE, {"input_size": "10x10"}, input_size=(1024, 768))
    assert q.amount == Decimal("0.0945")


def test_upscale_by_4_quadruples_each_side():
    q = quote(UPSCALE, {"input_size": "1024x768", "scale": 4})
    assert (q.width, q.height, q.scale) == (4096, 3072, 4)
    assert q.billable_megapixels_per_image == Decimal("12.59")  # 12.582912
    assert q.amount == Decimal("0.3777")
    assert q.price == "$0.378"


def test_upscale_factor_is_read_as_scale():
    assert quote(UPSCALE, {"input_size": "1024x768", "upscale_factor": 4}) == quote(
        UPSCALE, {"input_size": "1024x768", "scale": 4}
    )


def test_upscale_scale_and_upscale_factor_agreeing_is_fine():
    assert quote(UPSCALE, {"input_size": "1024x768", "scale": 4, "upscale_factor": 4}).scale == 4


def test_upscale_scale_and_upscale_factor_disagreeing_is_invalid():
    with pytest.raises(InvalidRequest) as exc:
        quote(UPSCALE, {"input_size": "1024x768", "scale": 2, "upscale_factor": 4})
    assert (exc.value.code, exc.value.field) == ("invalid_request", "scale")


def test_upscale_is_one_image_whatever_num_images_says():
    assert quote(UPSCALE, {"input_size": "1024x768", "num_images": 4}).images == 1


def test_upscale_of_an_unknown_size_is_refused_never_guessed():
    with pytest.raises(InvalidRequest) as exc:
        quote(UPSCALE, {"image_url": "https://example.invalid/x.png"})
    assert (exc.value.code, exc.value.field) == ("invalid_request", "input_size")


@pytest.mark.parametrize("size", ["14143x1", "1x14143", "10001x10001"])
def test_upscale_input_too_large_is_image_too_large(size):
    with pytest.raises(ImageTooLarge) as exc:
        quote(UPSCALE, {"input_size": size})
    assert (exc.value.code, exc.value.field) == ("image_too_large", "input_size")


@pytest.mark.parametrize(("size", "scale"), [("8000x8000", 2), ("6000x6000", 2), ("3000x3000", 4)])
def test_upscale_output_too_large_is_image_too_large(size, scale):
    with pytest.raises(ImageTooLarge) as exc:
        quote(UPSCALE, {"input_size": size, "scale": scale})
    assert exc.value.code == "image_too_large"


@pytest.mark.parametrize(
    ("size", "field"),
    [("0x5", "input_size.width"), ("5x0", "input_size.height"), ("axb", "input_size"), ("1024", "input_size")],
)
def test_upscale_bad_input_size_is_invalid(size, field):
    with pytest.raises(InvalidRequest) as exc:
        quote(UPSCALE, {"input_size": size})
    assert (exc.value.code, exc.value.field) == ("invalid_request", field)


# --- validation (SPEC §2) ---------------------------------------------------------------------

T2I = "fal-ai/flux/dev/image-to-image"


@pytest.mark.parametrize(
    ("endpoint", "body", "code", "field"),
    [
        (DEV, {"prompt": ""}, "invalid_request", "prompt"),
        (DEV, {"prompt": 7}, "invalid_request", "prompt"),
        (DEV, {"num_images": 0}, "invalid_request", "num_images"),
        (DEV, {"num_images": 5}, "invalid_request", "num_images"),
        (DEV, {"num_images": "2"}, "invalid_request", "num_images"),
        (DEV, {"num_images": True}, "invalid_request", "num_images"),
        (DEV, {"num_images": 2.0}, "invalid_request", "num_images"),
        (DEV, {"num_inference_steps": 0}, "invalid_request", "num_inference_steps"),
        (DEV, {"num_inference_steps": 101}, "invalid_request", "num_inference_steps"),
        (DEV, {"guidance_scale": -1}, "invalid_request", "guidance_scale"),
        (DEV, {"guidance_scale": "3"}, "invalid_request", "guidance_scale"),
        (DEV, {"output_format": "gif"}, "invalid_request", "output_format"),
        (DEV, {"seed": -1}, "invalid_request", "seed"),
        (DEV, {"seed": 1.5}, "invalid_request", "seed"),
        (DEV, {"image_size": "huge"}, "invalid_request", "image_size"),
        (DEV, {"image_size": ""}, "invalid_request", "image_size"),
        (DEV, {"image_size": 1024}, "invalid_request", "image_size"),
        (DEV, custom(0, 768), "invalid_request", "image_size.width"),
        (DEV, custom(1024, -1), "invalid_request", "image_size.height"),
        (DEV, {"image_size": {"width": 1024}}, "invalid_request", "image_size.height"),
        (DEV, {"image_size": {"width": "1024", "height": 768}}, "invalid_request", "image_size.width"),
        (DEV, custom(14143, 1), "image_too_large", "image_size"),
        (DEV, custom(1, 14143), "image_too_large", "image_size"),
        (DEV, custom(14142, 14142), "image_too_large", "image_size"),  # 199.99 MP > 100
        (DEV, custom(10000, 10001), "image_too_large", "image_size"),
        (T2I, {"strength": 1.5}, "invalid_request", "strength"),
        (T2I, {"strength": -0.1}, "invalid_request", "strength"),
        (T2I, {"image_url": ""}, "invalid_request", "image_url"),
        (UPSCALE, {"input_size": "10x10", "scale": 3}, "invalid_request", "scale"),
        (UPSCALE, {"input_size": "10x10", "upscale_factor": 8}, "invalid_request", "upscale_factor"),
        (UPSCALE, {"input_size": "10x10", "output_format": "gif"}, "invalid_request", "output_format"),
    ],
)
def test_invalid_request_names_its_field(endpoint, body, code, field):
    with pytest.raises(InvalidRequest) as exc:
        quote(endpoint, body)
    assert exc.value.code == code
    assert exc.value.field == field
    assert exc.value.to_json()["error"]["field"] == field


@pytest.mark.parametrize("body", [[], [1], "x", 3])
def test_a_body_that_is_not_an_object_is_invalid(body):
    with pytest.raises(InvalidRequest) as exc:
        quote(DEV, body)
    assert (exc.value.code, exc.value.field) == ("invalid_request", "body")


@pytest.mark.parametrize(
    "endpoint",
    [
        "fal-ai/flux/nope",
        "fal-ai/flux",
        "FAL-AI/FLUX/DEV",
        "fal-ai/flux/dev/",
        "fal-ai/topaz/upscale/image/image-to-image",
        "",
    ],
)
def test_unknown_endpoint_is_model_not_found(endpoint):
    with pytest.raises(ModelNotFound) as exc:
        quote(endpoint, {})
    assert exc.value.code == "model_not_found"
    assert exc.value.details["endpoint"] == endpoint
    assert "`pixelgov" not in exc.value.message  # a library message: the CLI adds "see `pixelgov models`"


def test_guidance_scale_may_be_an_integer_and_strength_a_bound():
    assert quote(DEV, {"guidance_scale": 0}).amount == Decimal("0.01185")
    assert quote(T2I, {"strength": 0}).operation == "transform"
    assert quote(T2I, {"strength": 1}).operation == "transform"


def test_pricing_does_not_need_a_prompt_or_image_url():
    assert quote(DEV, {}).amount == Decimal("0.01185")
    assert quote(T2I, {}).amount == Decimal("0.79") * Decimal(TRANSFORM_RATE)


def test_unknown_fields_pass_through_validation_untouched_and_do_not_change_the_price():
    extra = {"loras": [{"path": "x", "scale": 0.5}], "enable_safety_checker": False, "sync_mode": True}
    request = validate_request("generate", {"prompt": "a fox", **extra})
    for key, value in extra.items():
        assert request[key] == value
    assert quote(DEV, {"prompt": "a fox", **extra}).amount == quote(DEV, {"prompt": "a fox"}).amount


def test_validate_request_fills_the_defaults():
    request = validate_request("generate", {})
    assert request["num_images"] == 1
    assert request["num_inference_steps"] == 28
    assert request["guidance_scale"] == 3.5
    assert request["output_format"] == "jpeg"
    assert validate_request("transform", {})["strength"] == 0.75
    upscale = validate_request("upscale", {})
    assert (upscale["scale"], upscale["model"]) == (2, "topaz")


def test_upstream_body_keeps_unknown_fields_and_strips_input_size():
    body = {
        "prompt": "a fox",
        "image_url": "u",
        "input_size": "1024x768",
        "loras": [{"path": "x"}],
        "num_images": 2,
        "custom": {"nested": [1, 2]},
    }
    sent = upstream_body(body)
    assert sent == {
        "prompt": "a fox",
        "image_url": "u",
        "loras": [{"path": "x"}],
        "num_images": 2,
        "custom": {"nested": [1, 2]},
    }
    assert "input_size" in body  # the caller's body is not modified


@pytest.mark.parametrize(
    ("operation", "request_body", "missing"),
    [
        ("generate", {}, "prompt"),
        ("generate", {"prompt": None}, "prompt"),
        ("transform", {"image_url": "u"}, "prompt"),
        ("transform", {"prompt": "p"}, "image_url"),
        ("upscale", {"input_size": "1x1"}, "image_url"),
    ],
)
def test_require_runnable_names_what_a_run_still_needs(operation, request_body, missing):
    with pytest.raises(InvalidRequest) as exc:
        require_runnable(operation, request_body)
    assert (exc.value.code, exc.value.field) == ("invalid_request", missing)


@pytest.mark.parametrize(
    ("operation", "request_body"),
    [("generate", {"prompt": "p"}), ("transform", {"prompt": "p", "image_url": "u"}), ("upscale", {"image_url": "u"})],
)
def test_require_runnable_accepts_a_complete_request(operation, request_body):
    assert require_runnable(operation, request_body) is None


# --- actual cost ------------------------------------------------------------------------------


def image(width: int | None = None, height: int | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"url": "https://example.invalid/i.png", "content_type": "image/png"}
    if width is not None:
        obj["width"] = width
    if height is not None:
        obj["height"] = height
    return obj


def test_actual_cost_of_the_sizes_requested_equals_the_estimate():
    est = quote(DEV, {"image_size": "square_hd", "num_images": 4})
    actual = actual_cost(est, {"images": [image(1024, 1024)] * 4})
    assert actual.amount == Decimal("0.063") == est.amount
    assert actual.sizes == ((1024, 1024),) * 4
    assert actual.sizes_known is True


def test_actual_cost_of_fewer_images_than_requested_is_less():
    est = quote(DEV, {"image_size": "square_hd", "num_images": 4})
    actual = actual_cost(est, {"images": [image(1024, 1024), image(1024, 1024)]})
    assert actual.amount == Decimal("0.0315")
    assert actual.sizes_known is True


def test_actual_cost_uses_each_returned_size_at_the_estimates_rate():
    est = quote(T2I, {"image_size": "square"})
    actual = actual_cost(est, {"images": [image(1024, 768), image(512, 512)]})
    assert actual.amount == (Decimal("0.79") + Decimal("0.27")) * Decimal(TRANSFORM_RATE)
    assert actual.sizes == ((1024, 768), (512, 512))


@pytest.mark.parametrize(
    "response",
    [
        {"images": [image()]},
        {"images": [image(1024)]},
        {"images": [image(1024, 768), image(height=768)]},
        {"images": [image(1024, "768")]},
        {"images": [image(True, 768)]},
        {"images": [image(0, 768)]},
        {"images": ["https://example.invalid/i.png"]},
        {"images": []},
        {"images": None},
        {},
    ],
)
def test_actual_cost_without_sizes_is_the_estimate_and_says_so(response):
    est = quote(DEV, {"image_size": "square_hd", "num_images": 2})
    actual = actual_cost(est, response)
    assert actual.amount == est.amount
    assert actual.sizes_known is False
    assert actual.sizes == ()


def test_actual_cost_of_an_upscale_reads_the_image_object():
    est = quote(UPSCALE, {"input_size": "1024x768"})
    actual = actual_cost(est, {"image": image(2048, 1536)})
    assert actual.amount == Decimal("0.0945")
    assert actual.sizes == ((2048, 1536),)
    assert actual.sizes_known is True
    bigger = actual_cost(est, {"image": image(4096, 3072)})
    assert bigger.amount == Decimal("0.3777")


def test_actual_cost_of_an_upscale_without_sizes_is_the_estimate():
    est = quote(UPSCALE, {"input_size": "1024x768"})
    for response in ({"image": image()}, {}, {"images": [image(2048, 1536)]}):
        actual = actual_cost(est, response)
        assert (actual.amount, actual.sizes_known) == (est.amount, False)


def test_actual_cost_of_a_fake_fal_response(fake_fal_response):
    est = quote(DEV, {"image_size": "landscape_16_9", "num_images": 3})
    response = fake_fal_response(DEV, {"prompt": "a fox", "image_size": "landscape_16_9", "num_images": 3})
    actual = actual_cost(est, response)
    assert actual.sizes == ((1024, 576),) * 3
    assert actual.amount == est.amount == Decimal("0.59") * 3 * Decimal("0.015")


@pytest.fixture()
def fake_fal_response():
    import sys

    import httpx

    sys.path.insert(0, str(Path(__file__).parent))
    from fake_fal import FakeFal

    with FakeFal() as fake, httpx.Client(timeout=5) as client:

        def post(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
            resp = client.post(f"{fake.url}/{endpoint}", json=body)
            assert resp.status_code == 200
            return json.loads(resp.text, parse_float=Decimal)

        yield post


def test_default_book_is_the_one_in_the_package():
    assert default_book().version == DEFAULT_BOOK_JSON["version"]
