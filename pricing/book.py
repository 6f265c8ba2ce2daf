"""The price book: which endpoints exist, what operation each is, its rate, sizes and limits.

The default book ships as `default_book.json`; `PIXELGOV_PRICE_BOOK=path` replaces
it with a user's file, validated field by field. A book is immutable once loaded,
and everything a quote needs is precomputed into plain dictionaries so that a
quote costs two lookups and a cached size computation.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Context, Decimal
from fractions import Fraction
from functools import lru_cache
from importlib import resources
from typing import Any, NamedTuple

from .errors import InvalidRequest, ModelNotFound, PriceBookError

OPERATIONS = ("generate", "transform", "upscale")
_EXACT_CONTEXT = Context(prec=40, rounding=ROUND_CEILING)
#: Products of megapixels, counts and rates: exact for any realistic book, and should a
#: product ever need more digits, rounded up (never under-charge). Not the thread's context.
PRODUCT_CONTEXT = Context(prec=100, rounding=ROUND_CEILING)


class Endpoint(NamedTuple):
    """One priced endpoint as a request names it."""

    endpoint: str  #: the path as requested (forwarded unchanged)
    model: str  #: the book's canonical name (aliases resolve to it)
    operation: str  #: generate | transform | upscale
    rate: Decimal  #: USD per billable megapixel


class ImageArea(NamedTuple):
    """The megapixels of one image, exact and billable."""

    megapixels: Decimal  #: width × height / pixels_per_megapixel
    billable: Decimal  #: rounded up to the book's megapixel step
    too_large: str | None  #: why the book's limits refuse this size, if they do


@dataclass(frozen=True)
class PriceBook:
    version: str
    currency: str
    megapixel_step: Decimal | None  #: None means exact (no rounding)
    pixels_per_megapixel: int
    default_image_size: str
    max_side: int
    max_megapixels_per_image: Decimal
    max_images: int
    presets: dict[str, tuple[int, int]]
    endpoints: dict[str, Endpoint]  #: every accepted path, aliases and /image-to-image included
    source: str = "default"
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _areas: dict[tuple[int, int], ImageArea] = field(default_factory=dict, repr=False, compare=False)

    def endpoint(self, name: str) -> Endpoint:
        try:
            return self.endpoints[name]
        except KeyError:
            raise ModelNotFound(
                f"unknown endpoint {name!r}: the price book ({self.version}) has no price for it",
                endpoint=name,
            ) from None

    def area(self, width: int, height: int) -> ImageArea:
        """Megapixels of a width × height image (cached: a book is immutable)."""
        try:
            return self._areas[width, height]
        except KeyError:
            if len(self._areas) > 65536:
                self._areas.clear()
            area = self._areas[width, height] = _area(self, width, height)
            return area


def _area(book: PriceBook, width: int, height: int) -> ImageArea:
    pixels = width * height
    exact = Fraction(pixels, book.pixels_per_megapixel)
    megapixels = _EXACT_CONTEXT.divide(Decimal(pixels), Decimal(book.pixels_per_megapixel))
    if book.megapixel_step is None:
        billable = megapixels
    else:
        units = math.ceil(exact / Fraction(book.megapixel_step))
        billable = PRODUCT_CONTEXT.multiply(units, book.megapixel_step)
    too_large = None
    if width > book.max_side or height > book.max_side:
        too_large = f"{width}x{height} has a side above {book.max_side} pixels"
    elif exact > Fraction(book.max_megapixels_per_image):
        too_large = f"{width}x{height} is above {book.max_megapixels_per_image} MP per image"
    return ImageArea(megapixels.normalize(), billable, too_large)


def _build(data: dict[str, Any], source: str) -> PriceBook:
    step_raw = data.get("megapixel_step", "0.01")
    step = None if str(step_raw) == "exact" else Decimal(str(step_raw))
    limits = data.get("limits", {})
    transform = data.get("transform")
    endpoints: dict[str, Endpoint] = {}
    for name, entry in data["endpoints"].items():
        rate = Decimal(str(entry["rate_per_megapixel"]))
        operation = entry["operation"]
        for path in (name, *entry.get("aliases", ())):
            endpoints[path] = Endpoint(path, name, operation, rate)
            if operation == "generate" and transform:
                t_path = path + transform["suffix"]
                endpoints[t_path] = Endpoint(
                    t_path, name + transform["suffix"], "transform", Decimal(str(transform["rate_per_megapixel"]))
                )
    return PriceBook(
        version=str(data["version"]),
        currency=data.get("currency", "USD"),
        megapixel_step=step,
        pixels_per_megapixel=int(data.get("pixels_per_megapixel", 1_000_000)),
        default_image_size=data.get("default_image_size", "landscape_4_3"),
        max_side=int(limits.get("max_side", 14142)),
        max_megapixels_per_image=Decimal(str(limits.get("max_megapixels_per_image", "100"))),
        max_images=int(limits.get("max_images", 4)),
        presets={k: (int(v[0]), int(v[1])) for k, v in data["presets"].items()},
        endpoints=endpoints,
        source=source,
        raw=data,
    )


MAX_BOOK_BYTES = 4 * 1024 * 1024


def parse_book(text: str, source: str = "<string>") -> PriceBook:
    """Parse and validate a price book document; a bad field raises PriceBookError naming it."""
    from .jsondoc import parse_json

    try:
        data = parse_json(
            text, source=f"price book {source}", field="price_book", decimals=True, max_bytes=MAX_BOOK_BYTES
        )
    except InvalidRequest as exc:
        position = {k: exc.details[k] for k in ("line", "column") if k in exc.details}
        raise PriceBookError(exc.message.removeprefix("price_book: "), field="(top level)", **position) from None
    from ._book_schema import validate_book

    validate_book(data, source)
    return _build(data, source)


def load_book(path: str | os.PathLike[str]) -> PriceBook:
    """Read and validate a price book file (UTF-8 JSON, at most 4 MiB); PriceBookError naming the problem."""
    where = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BOOK_BYTES + 1)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PriceBookError(f"price book {where}: cannot be read ({reason})", field="(file)", path=where) from None
    if len(data) > MAX_BOOK_BYTES:
        raise PriceBookError(
            f"price book {where}: larger than {MAX_BOOK_BYTES // (1024 * 1024)} MiB", field="(file)", path=where
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PriceBookError(f"price book {where}: not UTF-8 text", field="(file)", path=where) from None
    return parse_book(text, where)


@lru_cache(maxsize=1)
def default_book() -> PriceBook:
    """The book shipped in the package (validated by the test suite, not at every start)."""
    text = resources.files(__package__).joinpath("default_book.json").read_text(encoding="utf-8")
    return _build(json.loads(text, parse_float=Decimal), "default")


def book_for(path: str | os.PathLike[str] | None) -> PriceBook:
    """The book at `path` (None: the default book), read once per process per file version.

    The caller passes the path it was configured with (`Settings.price_book_path`, read from
    `PIXELGOV_PRICE_BOOK` at the edge); pricing itself never reads the environment. A file
    changed on disk (another size or modification time) is read again.
    """
    if path is None or os.fspath(path) == "":
        return default_book()
    try:
        st = os.stat(path)
        version: tuple[int, int] = (st.st_mtime_ns, st.st_size)
    except OSError:
        version = (0, -1)  # load_book reports the problem
    return _cached_book(os.fspath(path), version)


@lru_cache(maxsize=8)
def _cached_book(path: str, _version: tuple[int, int]) -> PriceBook:
    return load_book(path)
