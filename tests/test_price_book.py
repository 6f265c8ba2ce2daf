"""The price book: the default book's contents and validity, a user's book from a file
(`book_for(path)`, the path the edge read from PIXELGOV_PRICE_BOOK), and a loader that names
the bad field of a malformed book."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pricing import PriceBookError, book_for, default_book, load_book, parse_book, quote
from pricing import book as book_module
from pricing._book_schema import validate_book

DEFAULT_PATH = Path(__file__).parents[1] / "pricing" / "default_book.json"
DEFAULT = json.loads(DEFAULT_PATH.read_text(), parse_float=Decimal)

#: SPEC §2's table, independently.
EXPECTED_ENDPOINTS = {
    "fal-ai/flux/schnell": ("generate", "0.004"),
    "fal-ai/flux/dev": ("generate", "0.015"),
    "fal-ai/flux-pro": ("generate", "0.04"),
    "fal-ai/stable-diffusion-xl": ("generate", "0.007"),
    "fal-ai/fast-sdxl": ("generate", "0.007"),
    "fal-ai/flux/schnell/image-to-image": ("transform", "0.045"),
    "fal-ai/flux/dev/image-to-image": ("transform", "0.045"),
    "fal-ai/flux-pro/image-to-image": ("transform", "0.045"),
    "fal-ai/stable-diffusion-xl/image-to-image": ("transform", "0.045"),
    "fal-ai/fast-sdxl/image-to-image": ("transform", "0.045"),
    "fal-ai/topaz/upscale/image": ("upscale", "0.03"),
}
EXPECTED_PRESETS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}


def mutated(change: Callable[[dict[str, Any]], None]) -> str:
    data = copy.deepcopy(DEFAULT)
    change(data)
    return json.dumps(data, default=str)


def book_error(text: str) -> PriceBookError:
    with pytest.raises(PriceBookError) as exc:
        parse_book(text, "user.json")
    assert (exc.value.code, exc.value.details["reason"]) == ("invalid_request", "invalid_price_book")
    return exc.value


# --- the default book -------------------------------------------------------------------------


def test_default_book_validates_against_the_user_book_schema():
    assert validate_book(json.loads(DEFAULT_PATH.read_text(), parse_float=Decimal), "default") is None
    assert parse_book(DEFAULT_PATH.read_text(), "default") == default_book()


def test_default_book_prices_exactly_the_spec_table():
    book = default_book()
    got = {path: (e.operation, e.rate) for path, e in book.endpoints.items()}
    assert got == {path: (op, Decimal(rate)) for path, (op, rate) in EXPECTED_ENDPOINTS.items()}


def test_default_book_presets_limits_and_rounding():
    book = default_book()
    assert book.presets == EXPECTED_PRESETS
    assert book.default_image_size == "landscape_4_3"
    assert book.megapixel_step == Decimal("0.01")
    assert book.pixels_per_megapixel == 1_000_000
    assert book.max_side == 14142
    assert book.currency == "USD"
    assert book.version


def test_default_book_rates_are_decimals_not_floats():
    for entry in default_book().endpoints.values():
        assert type(entry.rate) is Decimal
    assert type(default_book().max_megapixels_per_image) is Decimal


def test_alias_and_transform_paths_resolve_to_their_model():
    book = default_book()
    assert book.endpoint("fal-ai/fast-sdxl").model == "fal-ai/stable-diffusion-xl"
    assert book.endpoint("fal-ai/fast-sdxl/image-to-image").model == "fal-ai/stable-diffusion-xl/image-to-image"


# --- a user's book ----------------------------------------------------------------------------


def write(path: Path, **changes: Any) -> Path:
    path.write_text(mutated(lambda d: d.update(changes)))
    return path


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths `book_for` actually reads from disk (its cache misses), in order."""
    seen: list[str] = []
    real = book_module.load_book

    def counting(path: Any) -> Any:
        seen.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(book_module, "load_book", counting)
    return seen


def test_book_for_none_is_the_default_book(loads):
    assert book_for(None) is default_book()
    assert book_for(None).source == "default"
    assert book_for("") is default_book()  # an empty setting is no setting
    assert loads == []


def test_book_for_a_path_reads_that_book(tmp_path, loads):
    path = write(tmp_path / "mine.json", version="mine-1", megapixel_step=1)
    book = book_for(path)
    assert (book.version, book.source, book.megapixel_step) == ("mine-1", str(path), Decimal(1))
    assert book_for(str(path)) is book  # a str or a PathLike: the same book
    q = quote("fal-ai/flux/dev", {}, book=book)
    assert (q.price_book, q.amount) == ("mine-1", Decimal("0.015"))
    assert loads == [str(path)]


def test_book_for_the_same_unchanged_file_is_read_once(tmp_path, loads):
    path = write(tmp_path / "mine.json", version="v1")
    first = book_for(path)
    assert all(book_for(path) is first for _ in range(5))
    assert loads == [str(path)]


def test_book_for_reads_a_changed_file_again(tmp_path, loads):
    path = write(tmp_path / "mine.json", version="v1")
    assert book_for(path).version == "v1"
    write(path, version="v22")  # another size
    assert book_for(path).version == "v22"
    before = os.stat(path).st_mtime_ns
    write(path, version="v33")  # the same size: only the modification time tells
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))
    assert book_for(path).version == "v33"
    assert book_for(path).version == "v33"
    assert loads == [str(path)] * 3


def test_book_for_keeps_each_file_apart(tmp_path):
    one = write(tmp_path / "one.json", version="one")
    two = write(tmp_path / "two.json", version="two")
    assert (book_for(one).version, book_for(two).version, book_for(one).version) == ("one", "two", "one")


def test_pricing_never_reads_the_environment(tmp_path, monkeypatch):
    # PIXELGOV_PRICE_BOOK is read at the edge (Settings.from_env) and passed down as a path;
    # a quote without a book is priced with the default one whatever the environment says.
    path = write(tmp_path / "mine.json", version="mine-1", megapixel_step=1)
    monkeypatch.setenv("PIXELGOV_PRICE_BOOK", str(path))
    assert quote("fal-ai/flux/dev", {}).price_book == default_book().version
    assert quote("fal-ai/flux/dev", {}).amount == Decimal("0.01185")


def test_the_settings_carry_the_book_path_from_the_environment(tmp_path):
    from ledger.settings import Settings

    path = write(tmp_path / "mine.json", version="mine-1", megapixel_step=1)
    settings = Settings.from_env({"PIXELGOV_PRICE_BOOK": str(path)})
    assert settings.price_book_path == str(path)
    assert book_for(settings.price_book_path).version == "mine-1"
    assert Settings.from_env({}).price_book_path is None
    assert Settings.from_env({"PIXELGOV_PRICE_BOOK": ""}).price_book_path is None
    assert book_for(Settings.from_env({}).price_book_path) is default_book()


def test_a_ledger_prices_with_the_book_of_its_settings(tmp_path, sqlite_url):
    from ledger import Ledger, Settings

    path = write(tmp_path / "mine.json", version="mine-1", megapixel_step=1)
    with Ledger(sqlite_url, settings=Settings(price_book_path=str(path))) as ledger:
        q = ledger.quote("fal-ai/flux/dev", {})
        assert (q.price_book, q.amount) == ("mine-1", Decimal("0.015"))
        tx = ledger.governor.authorize("bot", q, {}).transaction
        assert (tx.price_book, tx.estimated_cost) == ("mine-1", Decimal("0.015"))
    with Ledger(sqlite_url) as ledger:
        assert ledger.quote("fal-ai/flux/dev", {}).price_book == default_book().version


def test_a_book_without_transform_has_no_image_to_image_endpoints():
    book = parse_book(mutated(lambda d: d.pop("transform")))
    assert not [p for p in book.endpoints if p.endswith("/image-to-image")]
    assert book.endpoint("fal-ai/flux/dev").operation == "generate"


def test_a_book_may_add_endpoints_and_presets():
    def change(d: dict[str, Any]) -> None:
        d["endpoints"]["acme/painter"] = {"operation": "generate", "rate_per_megapixel": "0.1", "aliases": ["acme/p"]}
        d["presets"]["banner"] = [2000, 500]

    book = parse_book(mutated(change))
    assert book.presets["banner"] == (2000, 500)
    q = quote("acme/p", {"image_size": "banner", "num_images": 2}, book=book)
    assert (q.model, q.amount) == ("acme/painter", Decimal("0.2"))
    assert book.endpoint("acme/p/image-to-image").operation == "transform"


def test_a_rate_written_as_a_json_number_is_read_exactly():
    book = parse_book(DEFAULT_PATH.read_text().replace('"0.015"', "0.015"))
    assert book.endpoint("fal-ai/flux/dev").rate == Decimal("0.015")
    assert quote("fal-ai/flux/dev", {}, book=book).amount == Decimal("0.01185")


# --- a malformed book names its bad field -----------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.pop("version"), "version"),
        (lambda d: d.update(version=""), "version"),
        (
            lambda d: d["endpoints"]["fal-ai/flux/dev"].update(rate_per_megapixel="-0.015"),
            "endpoints.fal-ai/flux/dev.rate_per_megapixel",
        ),
        (
            lambda d: d["endpoints"]["fal-ai/flux/dev"].update(rate_per_megapixel="0"),
            "endpoints.fal-ai/flux/dev.rate_per_megapixel",
        ),
        (
            lambda d: d["endpoints"]["fal-ai/flux/dev"].update(rate_per_megapixel="NaN"),
            "endpoints.fal-ai/flux/dev.rate_per_megapixel",
        ),
        (
            lambda d: d["endpoints"]["fal-ai/flux/dev"].pop("rate_per_megapixel"),
            "endpoints.fal-ai/flux/dev.rate_per_megapixel",
        ),
        (lambda d: d["endpoints"]["fal-ai/flux/dev"].update(operation="paint"), "endpoints.fal-ai/flux/dev.operation"),
        (lambda d: d["endpoints"]["fal-ai/flux/dev"].update(aliases=["fal-ai/flux/schnell"]), "endpoints"),
        (lambda d: d["endpoints"]["fal-ai/stable-diffusion-xl"].update(aliases=["fal-ai/fast-sdxl"] * 2), "endpoints"),
        (lambda d: d.update(endpoints={}), "endpoints"),
        (lambda d: d.update(default_image_size="huge"), "default_image_size"),
        (lambda d: d.update(megapixel_step="fine"), "megapixel_step"),
        (lambda d: d.update(megapixel_step="-0.01"), "megapixel_step"),
        (lambda d: d.update(megapixel_step=0), "megapixel_step"),
        (lambda d: d.update(pixels_per_megapixel=0), "pixels_per_megapixel"),
        (lambda d: d.update(currency="EUR"), "currency"),
        (lambda d: d["presets"].update(square=[0, 512]), "presets.square.0"),
        (lambda d: d.pop("presets"), "presets"),
        (lambda d: d["limits"].update(max_side=-1), "limits.max_side"),
        (lambda d: d["transform"].update(rate_per_megapixel="-1"), "transform.rate_per_megapixel"),
        (lambda d: d.update(colour="blue"), "colour"),
    ],
)
def test_a_bad_book_field_is_named(change, field):
    error = book_error(mutated(change))
    assert error.details["field"] == field
    assert error.to_json()["error"]["field"] == field


def test_a_book_that_is_not_an_object_is_refused():
    assert book_error("[]").details["field"] == "(top level)"


def test_invalid_json_book_is_refused_with_its_position():
    error = book_error('{"version": "x",,}')
    assert error.details["field"] == "(top level)"
    assert (error.details["line"], error.details["column"]) == (1, 17)


def test_an_unreadable_book_file_is_refused_naming_the_path(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(PriceBookError) as exc:
        load_book(missing)
    assert (exc.value.code, exc.value.details["reason"]) == ("invalid_request", "invalid_price_book")
    assert exc.value.details["field"] == "(file)"
    assert exc.value.details["path"] == str(missing)
    with pytest.raises(PriceBookError) as exc:
        load_book(tmp_path)  # a directory
    assert exc.value.details["field"] == "(file)"


def test_a_malformed_book_fails_when_used_and_is_not_cached(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(mutated(lambda d: d["endpoints"]["fal-ai/flux/dev"].update(rate_per_megapixel="-1")))
    for _ in range(2):  # a failure is not remembered as a book
        with pytest.raises(PriceBookError) as exc:
            book_for(path)
        assert exc.value.details["field"] == "endpoints.fal-ai/flux/dev.rate_per_megapixel"
    write(path, version="fixed")
    assert book_for(path).version == "fixed"  # once fixed, the file is read again


def test_a_missing_book_file_fails_when_used_until_it_exists(tmp_path):
    path = tmp_path / "later.json"
    with pytest.raises(PriceBookError) as exc:
        book_for(path)
    assert (exc.value.details["field"], exc.value.details["path"]) == ("(file)", str(path))
    write(path, version="arrived")
    assert book_for(path).version == "arrived"
