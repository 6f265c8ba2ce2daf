"""`pixelgov price` and `pixelgov models` (SPEC §5): outputs, --params, user price books,
errors (exit 2, JSON on stdout with --format json, one line on stderr otherwise) and a
light import path — through click's CliRunner and through the installed console script."""

from __future__ import annotations

import base64
import copy
import csv
import io
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from pixelgov.cli import cli
from pricing import quote

sys.path.insert(0, str(Path(__file__).parent))
from fake_fal import FakeFal

DEV = "fal-ai/flux/dev"
T2I = "fal-ai/flux/dev/image-to-image"
UPSCALE = "fal-ai/topaz/upscale/image"
PIXELGOV = Path(sys.executable).with_name("pixelgov")
QUOTE_KEYS = {
    "endpoint",
    "operation",
    "images",
    "width",
    "height",
    "megapixels_per_image",
    "billable_megapixels",
    "rate_per_megapixel",
    "amount",
    "price",
    "currency",
    "price_book",
}
DEFAULT_BOOK = json.loads((Path(__file__).parents[1] / "pricing" / "default_book.json").read_text())
DEFAULT_ENDPOINTS = {
    "fal-ai/flux/schnell",
    "fal-ai/flux/dev",
    "fal-ai/flux-pro",
    "fal-ai/stable-diffusion-xl",
    "fal-ai/fast-sdxl",
    "fal-ai/flux/schnell/image-to-image",
    "fal-ai/flux/dev/image-to-image",
    "fal-ai/flux-pro/image-to-image",
    "fal-ai/stable-diffusion-xl/image-to-image",
    "fal-ai/fast-sdxl/image-to-image",
    "fal-ai/topaz/upscale/image",
}


def invoke(*args: str) -> Result:
    # No cache to clear: each invocation reads PIXELGOV_PRICE_BOOK afresh (Settings.from_env at the edge).
    return CliRunner().invoke(cli, list(args))


def price_json(*args: str) -> dict[str, Any]:
    result = invoke("price", *args, "--format", "json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stderr == ""
    return json.loads(result.stdout)


def error_json(*args: str) -> dict[str, Any]:
    """A failing command with --format json: exit 2, one JSON error document on stdout."""
    result = invoke(*args, "--format", "json")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    assert set(doc) == {"error"}
    assert {"code", "message"} <= set(doc["error"])
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    return doc["error"]


def error_line(*args: str) -> str:
    """A failing command without --format json: exit 2, nothing on stdout, one line on stderr."""
    result = invoke(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert isinstance(result.exception, SystemExit)
    return lines[0]


def write_book(tmp_path: Path, *, filename: str = "book.json", **changes: Any) -> Path:
    data = copy.deepcopy(DEFAULT_BOOK)
    data["version"] = "user-book-1"
    data.update(changes)
    path = tmp_path / filename
    path.write_text(json.dumps(data))
    return path


def png(tmp_path: Path, size: tuple[int, int], name: str = "in.png") -> Path:
    path = tmp_path / name
    Image.new("RGB", size, (1, 2, 3)).save(path, "PNG")
    return path


# --- price ------------------------------------------------------------------------------------


def test_price_table_leads_with_the_display_price():
    result = invoke("price", DEV)
    assert result.exit_code == 0
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["$0.012", DEV, "(generate)"]
    fields = dict(line.split(None, 1) for line in lines[1:])
    assert fields["amount"] == "0.01185"
    assert fields["billable_megapixels"] == "0.79"
    assert fields["price"] == "$0.012"
    assert fields["price_book"] == DEFAULT_BOOK["version"]


def test_price_json_has_every_promised_quote_key():
    doc = price_json(DEV)
    assert QUOTE_KEYS <= set(doc)
    assert doc["endpoint"] == DEV
    assert doc["operation"] == "generate"
    assert (doc["images"], doc["width"], doc["height"]) == (1, 1024, 768)
    assert doc["megapixels_per_image"] == "0.786432"
    assert doc["billable_megapixels"] == "0.79"
    assert doc["rate_per_megapixel"] == "0.015"
    assert doc["amount"] == "0.01185"
    assert doc["price"] == "$0.012"
    assert doc["currency"] == "USD"
    assert doc["price_book"] == DEFAULT_BOOK["version"]


def test_price_json_money_is_decimal_strings():
    raw = invoke("price", DEV, "--image-size", "square_hd", "--num-images", "4", "--format", "json").stdout
    doc = json.loads(raw, parse_float=lambda s: pytest.fail(f"a JSON float in the quote: {s}"))
    for key in ("megapixels_per_image", "billable_megapixels", "rate_per_megapixel", "amount", "price"):
        assert isinstance(doc[key], str), key


@pytest.mark.parametrize(
    ("args", "amount", "price"),
    [
        ([DEV, "--image-size", "landscape_4_3"], "0.01185", "$0.012"),
        ([DEV, "--image-size", "square_hd", "--num-images", "4"], "0.063", "$0.063"),
        (["fal-ai/flux/schnell"], "0.00316", "$0.003"),
        (["fal-ai/flux-pro"], "0.0316", "$0.032"),
        (["fal-ai/fast-sdxl", "--image-size", "square"], "0.00189", "$0.002"),
        ([T2I, "--image-size", "square_hd", "--strength", "0.3"], "0.04725", "$0.047"),
        ([UPSCALE, "--input-size", "1024x768"], "0.0945", "$0.095"),
        ([UPSCALE, "--input-size", "1024x768", "--scale", "4"], "0.3777", "$0.378"),
        ([DEV, "--image-size", "600x500"], "0.0045", "$0.005"),
    ],
)
def test_price_of_the_spec_examples(args, amount, price):
    doc = price_json(*args)
    assert (doc["amount"], doc["price"]) == (amount, price)


@pytest.mark.parametrize("size", ["1280x720", "1280X720"])
def test_custom_image_size_on_the_command_line_is_width_x_height(size):
    doc = price_json(DEV, "--image-size", size)
    assert (doc["width"], doc["height"]) == (1280, 720)
    assert Decimal(doc["amount"]) == quote(DEV, {"image_size": {"width": 1280, "height": 720}}).amount


@pytest.mark.parametrize("images", ["1", "2", "3", "4"])
def test_num_images_on_the_command_line(images):
    doc = price_json(DEV, "--image-size", "square_hd", "--num-images", images)
    assert doc["images"] == int(images)
    assert Decimal(doc["amount"]) == Decimal("1.05") * int(images) * Decimal("0.015")


def test_options_that_do_not_change_the_price_are_accepted():
    doc = price_json(
        DEV, "--prompt", "a red fox", "--steps", "50", "--guidance", "7.5", "--seed", "42", "--output-format", "png"
    )
    assert doc["amount"] == "0.01185"


# --- --params ---------------------------------------------------------------------------------


def test_params_json_is_a_whole_request_body():
    doc = price_json(DEV, "--params", '{"image_size": {"width": 1280, "height": 720}, "num_images": 3}')
    assert (doc["width"], doc["height"], doc["images"]) == (1280, 720, 3)


def test_params_from_a_file(tmp_path):
    path = tmp_path / "req.json"
    path.write_text(json.dumps({"prompt": "x", "image_size": "square_hd", "num_images": 4, "loras": []}))
    doc = price_json(DEV, "--params", f"@{path}")
    assert (doc["images"], doc["amount"]) == (4, "0.063")


def test_options_override_params_fields(tmp_path):
    path = tmp_path / "req.json"
    path.write_text(json.dumps({"image_size": "square_hd", "num_images": 4}))
    doc = price_json(DEV, "--params", f"@{path}", "--num-images", "2", "--image-size", "square")
    assert (doc["images"], doc["width"], doc["height"]) == (2, 512, 512)
    doc = price_json(DEV, "--params", '{"num_images": 4}', "--num-images", "1")
    assert doc["images"] == 1


def test_params_can_carry_an_upscale_input_size_and_upscale_factor():
    doc = price_json(UPSCALE, "--params", '{"input_size": "1024x768", "upscale_factor": 4}')
    assert (doc["width"], doc["height"], doc["amount"]) == (4096, 3072, "0.3777")


@pytest.mark.parametrize("params", ["{not json", "[1, 2]", '"square_hd"', "null", "{'single': 'quotes'}"])
def test_malformed_params_is_invalid_request(params):
    error = error_json("price", DEV, "--params", params)
    assert (error["code"], error["field"]) == ("invalid_request", "params")
    assert error_line("price", DEV, "--params", params)


def test_missing_params_file_is_invalid_request(tmp_path):
    missing = tmp_path / "nope.json"
    error = error_json("price", DEV, "--params", f"@{missing}")
    assert (error["code"], error["field"]) == ("invalid_request", "params")
    assert str(missing) in error["message"]
    error_line("price", DEV, "--params", f"@{missing}")


def test_params_file_with_invalid_json_is_invalid_request(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"num_images": 2,}')
    assert error_json("price", DEV, "--params", f"@{path}")["field"] == "params"


# --- every bad input exits 2 ------------------------------------------------------------------

BAD_INPUTS = [
    ([DEV, "--prompt", ""], "invalid_request", "prompt"),
    ([DEV, "--num-images", "0"], "invalid_request", "num_images"),
    ([DEV, "--num-images", "5"], "invalid_request", "num_images"),
    ([DEV, "--num-images", "two"], "invalid_request", "num_images"),
    ([DEV, "--num-images", "2.5"], "invalid_request", "num_images"),
    ([DEV, "--params", '{"num_images": "2"}'], "invalid_request", "num_images"),
    ([DEV, "--params", '{"num_images": true}'], "invalid_request", "num_images"),
    ([DEV, "--steps", "0"], "invalid_request", "num_inference_steps"),
    ([DEV, "--steps", "101"], "invalid_request", "num_inference_steps"),
    ([DEV, "--guidance", "-1"], "invalid_request", "guidance_scale"),
    ([DEV, "--guidance", "lots"], "invalid_request", "guidance_scale"),
    ([DEV, "--guidance", "nan"], "invalid_request", "guidance_scale"),
    ([DEV, "--output-format", "gif"], "invalid_request", "output_format"),
    ([DEV, "--seed", "-1"], "invalid_request", "seed"),
    ([DEV, "--image-size", "huge"], "invalid_request", "image_size"),
    ([DEV, "--image-size", "0x768"], "invalid_request", "image_size.width"),
    ([DEV, "--image-size", "1024x"], "invalid_request", "image_size"),
    ([DEV, "--image-size", "14143x1"], "image_too_large", "image_size"),
    ([DEV, "--image-size", "10000x10001"], "image_too_large", "image_size"),
    ([T2I, "--strength", "1.5"], "invalid_request", "strength"),
    ([UPSCALE, "--input-size", "1024x768", "--scale", "3"], "invalid_request", "scale"),
    (
        [UPSCALE, "--input-size", "1024x768", "--params", '{"upscale_factor": 4}', "--scale", "2"],
        "invalid_request",
        "scale",
    ),
    ([UPSCALE], "invalid_request", "input_size"),
    ([UPSCALE, "--input-size", "big"], "invalid_request", "input_size"),
    ([UPSCALE, "--input-size", "14143x1"], "image_too_large", "input_size"),
    ([UPSCALE, "--input-size", "8000x8000"], "image_too_large", "scale"),
    (["fal-ai/flux/nope"], "model_not_found", None),
    (["fal-ai/flux-pro/v1.1-ultra"], "model_not_found", None),
]


@pytest.mark.parametrize(("args", "code", "field"), BAD_INPUTS)
def test_bad_input_is_a_json_error_with_exit_2(args, code, field):
    error = error_json("price", *args)
    assert error["code"] == code
    if field is not None:
        assert error["field"] == field


#: The hint the command line adds to the library's message (in parentheses, on stderr only):
#: the flag that sets the field the error is about.
FIELD_HINTS = {
    "prompt": "(--prompt)",
    "num_images": "(--num-images)",
    "num_inference_steps": "(--steps)",
    "guidance_scale": "(--guidance)",
    "seed": "(--seed)",
    "output_format": "(--output-format)",
    "image_size": "(--image-size)",
    "image_url": "(--image-url)",
    "strength": "(--strength)",
    "scale": "(--scale)",
    "input_size": "(--input-size)",
    "params": "(--params)",
}
CODE_HINTS = {"model_not_found": "(see `pixelgov models`)"}


@pytest.mark.parametrize(("args", "code", "field"), BAD_INPUTS)
def test_bad_input_without_json_is_one_line_on_stderr_with_exit_2(args, code, field):
    line = error_line("price", *args)
    # The line is the same error as the JSON document: its code and field, its message, and the CLI's hint.
    error = error_json("price", *args)
    assert error["code"] == code
    assert error.get("field") == field
    hint = CODE_HINTS.get(code) or (
        "(give --input-size WxH)" if error.get("reason") == "missing" else FIELD_HINTS.get(field)
    )
    assert line == f"error: {error['message']}" + (f" {hint}" if hint else "")
    if field is not None:
        assert line.startswith(f"error: {field}: ")  # the message leads with the field it is about
    if hint:
        assert hint not in error["message"]  # the JSON message carries no CLI hint


def test_unknown_endpoint_error_names_the_endpoint():
    error = error_json("price", "fal-ai/flux/nope")
    assert error["endpoint"] == "fal-ai/flux/nope"
    assert "fal-ai/flux/nope" in error["message"] and "pixelgov models" not in error["message"]
    line = error_line("price", "fal-ai/flux/nope")
    assert "fal-ai/flux/nope" in line and line.endswith("(see `pixelgov models`)")


def test_an_unknown_option_is_a_usage_error_with_exit_2():
    result = invoke("price", DEV, "--colour", "red")
    assert result.exit_code == 2
    assert "Traceback" not in result.output


# --- upscale input on the command line --------------------------------------------------------


def test_upscale_reads_a_local_image_file(tmp_path):
    doc = price_json(UPSCALE, "--image-url", str(png(tmp_path, (1024, 768))))
    assert (doc["input_width"], doc["input_height"], doc["width"], doc["height"]) == (1024, 768, 2048, 1536)
    assert (doc["amount"], doc["price"]) == ("0.0945", "$0.095")


def test_upscale_reads_a_data_uri(tmp_path):
    uri = "data:image/png;base64," + base64.b64encode(png(tmp_path, (512, 512)).read_bytes()).decode()
    doc = price_json(UPSCALE, "--image-url", uri, "--scale", "4")
    assert (doc["width"], doc["height"]) == (2048, 2048)


def test_upscale_reads_an_http_url():
    with FakeFal() as fake:
        doc = price_json(UPSCALE, "--image-url", f"{fake.url}/fixtures/1024x768.jpg")
        assert doc["amount"] == "0.0945"
        error = error_json("price", UPSCALE, "--image-url", f"{fake.url}/fixtures/redirect-loop")
        assert (error["code"], error["field"]) == ("invalid_request", "image_url")


def test_upscale_input_size_wins_over_the_image(tmp_path):
    doc = price_json(UPSCALE, "--image-url", str(png(tmp_path, (100, 100))), "--input-size", "1024x768")
    assert doc["amount"] == "0.0945"


def test_upscale_of_an_unreadable_image_is_invalid_request(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    for url in (str(text), str(tmp_path / "missing.png")):
        error = error_json("price", UPSCALE, "--image-url", url)
        assert (error["code"], error["field"]) == ("invalid_request", "image_url")
        assert "--input-size" not in error["message"]  # the library's message names no flag
        line = error_line("price", UPSCALE, "--image-url", url)
        assert line == f"error: {error['message']} (give --input-size WxH)"


def test_upscale_of_a_too_large_image_file_is_image_too_large(tmp_path):
    error = error_json("price", UPSCALE, "--image-url", str(png(tmp_path, (14143, 2))))
    assert (error["code"], error["field"]) == ("image_too_large", "input_size")


# --- a user's price book ----------------------------------------------------------------------


def test_price_uses_the_book_in_pixelgov_price_book(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELGOV_PRICE_BOOK", str(write_book(tmp_path, megapixel_step=1)))
    doc = price_json(DEV)
    assert (doc["price_book"], doc["billable_megapixels"], doc["amount"], doc["price"]) == (
        "user-book-1",
        "1",
        "0.015",
        "$0.015",
    )


def test_price_with_an_exact_book(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELGOV_PRICE_BOOK", str(write_book(tmp_path, megapixel_step="exact")))
    doc = price_json(DEV, "--image-size", "1024x768")
    assert (doc["billable_megapixels"], doc["amount"]) == ("0.786432", "0.01179648")


def test_price_with_another_pixels_per_megapixel(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELGOV_PRICE_BOOK", str(write_book(tmp_path, pixels_per_megapixel=1_048_576)))
    doc = price_json(DEV, "--image-size", "square_hd", "--num-images", "2")
    assert (doc["megapixels_per_image"], doc["billable_megapixels"], doc["amount"]) == ("1", "2", "0.03")


def test_a_bad_price_book_is_an_error_naming_its_field(tmp_path, monkeypatch):
    endpoints = copy.deepcopy(DEFAULT_BOOK["endpoints"])
    endpoints[DEV]["rate_per_megapixel"] = "-0.015"
    monkeypatch.setenv("PIXELGOV_PRICE_BOOK", str(write_book(tmp_path, endpoints=endpoints)))
    for command in (["price", DEV], ["models"]):
        error = error_json(*command)
        assert (error["code"], error["field"]) == ("invalid_request", f"endpoints.{DEV}.rate_per_megapixel")
        error_line(*command)


def test_a_missing_price_book_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELGOV_PRICE_BOOK", str(tmp_path / "nope.json"))
    error = error_json("price", DEV)
    assert (error["code"], error["field"]) == ("invalid_request", "(file)")


def test_every_invocation_reads_pixelgov_price_book_afresh(tmp_path, monkeypatch):
    # One process, no cache clearing: what each command prices with follows the environment it starts in.
    def priced() -> tuple[str, str]:
        doc = price_json(DEV)
        return doc["price_book"], doc["amount"]

    def models_source() -> str:
        result = invoke("models", "--format", "json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["source"]

    assert priced() == (DEFAULT_BOOK["version"], "0.01185")
    first = write_book(tmp_path, filename="first.json", megapixel_step=1)
    monkeypatch.setenv("PIXELGOV_PRICE_BOOK", str(first))
    assert priced() == ("user-book-1", "0.015")
    assert models_source() == str(first)
    second = write_book(tmp_path, filename="second.json", version="user-book-2", megapixel_step="exact")
    monkeypatch.setenv("PIXELGOV_PRICE_BOOK", str(second))
    assert priced() == ("user-book-2", "0.01179648")
    assert models_source() == str(second)
    endpoints = copy.deepcopy(DEFAULT_BOOK["endpoints"])
    endpoints[DEV]["rate_per_megapixel"] = "0.03"
    write_book(tmp_path, filename="second.json", version="user-book-3", megapixel_step="exact", endpoints=endpoints)
    assert priced() == ("user-book-3", "0.02359296")  # the same path, edited: read again
    monkeypatch.setenv("PIXELGOV_PRICE_BOOK", str(first))
    assert priced() == ("user-book-1", "0.015")
    monkeypatch.delenv("PIXELGOV_PRICE_BOOK")
    assert priced() == (DEFAULT_BOOK["version"], "0.01185")
    assert models_source() == "default"


# --- models -----------------------------------------------------------------------------------


def test_models_table_lists_every_endpoint_rate_and_preset():
    result = invoke("models")
    assert result.exit_code == 0
    out = result.stdout
    assert DEFAULT_BOOK["version"] in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("fal-ai/")}
    assert set(rows) == DEFAULT_ENDPOINTS
    assert rows[DEV] == ["generate", "0.015"]
    assert rows[T2I] == ["transform", "0.045"]
    assert rows[UPSCALE] == ["upscale", "0.03"]
    presets = {
        line.split()[0]: line.split()[1:]
        for line in out.splitlines()
        if line.split()[:1] and line.split()[0] in DEFAULT_BOOK["presets"]
    }
    assert presets == {name: [str(w), str(h)] for name, (w, h) in DEFAULT_BOOK["presets"].items()}


def test_models_json_is_the_price_book():
    result = invoke("models", "--format", "json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["price_book"] == DEFAULT_BOOK["version"]
    assert doc["megapixel_step"] == "0.01"
    rates = {row["endpoint"]: (row["operation"], row["rate_per_megapixel"]) for row in doc["endpoints"]}
    assert set(rates) == DEFAULT_ENDPOINTS
    assert rates["fal-ai/fast-sdxl"] == ("generate", "0.007")
    assert rates["fal-ai/flux-pro/image-to-image"] == ("transform", "0.045")
    assert {p["name"]: (p["width"], p["height"]) for p in doc["presets"]} == {
        name: tuple(size) for name, size in DEFAULT_BOOK["presets"].items()
    }


def test_models_csv_has_one_row_per_endpoint():
    result = invoke("models", "--format", "csv")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {"endpoint", "operation", "rate_per_megapixel"} <= set(rows[0])
    assert {r["endpoint"] for r in rows} == DEFAULT_ENDPOINTS
    assert len(rows) == len(DEFAULT_ENDPOINTS)
    assert {r["endpoint"]: r["rate_per_megapixel"] for r in rows}["fal-ai/flux/schnell"] == "0.004"


def test_models_shows_a_user_book(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELGOV_PRICE_BOOK", str(write_book(tmp_path, megapixel_step="exact")))
    doc = json.loads(invoke("models", "--format", "json").stdout)
    assert (doc["price_book"], doc["megapixel_step"], doc["source"]) == (
        "user-book-1",
        "exact",
        str(tmp_path / "book.json"),
    )


# --- the installed console script -------------------------------------------------------------


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELGOV_")}
    env.update(extra)
    return env


def test_installed_pixelgov_prices_a_request():
    proc = subprocess.run(
        [str(PIXELGOV), "price", DEV, "--image-size", "square_hd", "--num-images", "4", "--format", "json"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert QUOTE_KEYS <= set(doc)
    assert (doc["amount"], doc["price"]) == ("0.063", "$0.063")


def test_installed_pixelgov_reports_bad_input_in_one_line_with_exit_2():
    proc = subprocess.run(
        [str(PIXELGOV), "price", DEV, "--num-images", "9"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(
        [str(PIXELGOV), "price", "nope/nope", "--format", "json"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"]["code"] == "model_not_found"


def test_installed_pixelgov_reads_pixelgov_price_book(tmp_path):
    env = subprocess_env(PIXELGOV_PRICE_BOOK=str(write_book(tmp_path, megapixel_step=1)))
    proc = subprocess.run(
        [str(PIXELGOV), "price", DEV, "--format", "json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["amount"] == "0.015"


IMPORT_PROBE = """
import sys
from pixelgov.cli import main
sys.argv = ["pixelgov", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
print("MODULES", "sqlalchemy" in sys.modules, "httpx" in sys.modules, code)
"""


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["price", DEV], 0),
        (["price", DEV, "--image-size", "1280x720", "--num-images", "2", "--format", "json"], 0),
        (["price", UPSCALE, "--input-size", "1024x768"], 0),
        (["price", UPSCALE, "--image-url", "{png}"], 0),
        (["price", "nope/nope"], 2),
        (["price", DEV, "--num-images", "7", "--format", "json"], 2),
        (["models", "--format", "csv"], 0),
    ],
)
def test_pricing_commands_import_neither_sqlalchemy_nor_httpx(tmp_path, args, code):
    image = png(tmp_path, (64, 64))
    argv = [a.replace("{png}", str(image)) for a in args]
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, *argv], capture_output=True, text=True, env=subprocess_env(), timeout=60
    )
    last = proc.stdout.strip().splitlines()[-1]
    assert last == f"MODULES False False {code}", (proc.stdout, proc.stderr)


@pytest.mark.parametrize(
    ("args", "code"), [(["price", DEV, "--format", "json"], 0), (["models"], 0), (["price", "nope/nope"], 2)]
)
def test_pricing_commands_with_a_user_book_stay_light(tmp_path, args, code):
    # Reading the settings (PIXELGOV_PRICE_BOOK and the rest) at the edge must not pull in the ledger's stack.
    env = subprocess_env(
        PIXELGOV_PRICE_BOOK=str(write_book(tmp_path, megapixel_step=1)), PIXELGOV_HOLD_TTL="60", PIXELGOV_DB_TIMEOUT="5"
    )
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, *args], capture_output=True, text=True, env=env, timeout=60
    )
    last = proc.stdout.strip().splitlines()[-1]
    assert last == f"MODULES False False {code}", (proc.stdout, proc.stderr)
    if code == 0 and args[0] == "price":
        assert json.loads(proc.stdout.rsplit("MODULES", 1)[0])["price_book"] == "user-book-1"
