"""Quotes: what a request will cost, and what a response did cost.

`quote()` is the one place the price of a request is decided; `actual_cost()`
applies the same arithmetic to the sizes the upstream returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, NamedTuple

from .book import PRODUCT_CONTEXT, PriceBook, default_book
from .errors import ImageTooLarge, InvalidRequest
from .money import display_price, usd_str
from .schemas import validate_request

_multiply = PRODUCT_CONTEXT.multiply  # exact products (bound once: this is the hot path)


class Quote(NamedTuple):
    """An immutable, exact quote for one request."""

    endpoint: str  #: as requested (and forwarded)
    model: str  #: the price book's canonical endpoint
    operation: str  #: generate | transform | upscale
    images: int
    width: int  #: of each output image
    height: int
    megapixels_per_image: Decimal  #: exact
    billable_megapixels_per_image: Decimal  #: rounded up to the book's step
    rate_per_megapixel: Decimal
    amount: Decimal  #: billable MP × images × rate, exact
    currency: str
    price_book: str  #: the book's version
    input_width: int | None = None  #: upscale only
    input_height: int | None = None
    scale: int | None = None

    @property
    def billable_megapixels(self) -> Decimal:
        return PRODUCT_CONTEXT.multiply(self.billable_megapixels_per_image, self.images)

    @property
    def price(self) -> str:
        """Display price, half-up to three decimals ("$0.012")."""
        return display_price(self.amount)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "endpoint": self.endpoint,
            "model": self.model,
            "operation": self.operation,
            "images": self.images,
            "width": self.width,
            "height": self.height,
            "megapixels_per_image": usd_str(self.megapixels_per_image),
            "billable_megapixels_per_image": usd_str(self.billable_megapixels_per_image),
            "billable_megapixels": usd_str(self.billable_megapixels),
            "rate_per_megapixel": usd_str(self.rate_per_megapixel),
            "amount": usd_str(self.amount),
            "price": self.price,
            "currency": self.currency,
            "price_book": self.price_book,
        }
        if self.operation == "upscale":
            doc.update(input_width=self.input_width, input_height=self.input_height, scale=self.scale)
        return doc


class ActualCost(NamedTuple):
    """What a response cost, from the sizes it reports."""

    amount: Decimal
    sizes: tuple[tuple[int, int], ...]  #: (width, height) of each returned image
    sizes_known: bool  #: False → the response lacked sizes and amount = the estimate


def quote(
    endpoint: str,
    request: Mapping[str, Any] | None = None,
    *,
    book: PriceBook | None = None,
    input_size: tuple[int, int] | None = None,
) -> Quote:
    """Price a request exactly. Raises ModelNotFound, InvalidRequest or ImageTooLarge."""
    book = book or default_book()
    entry = book.endpoint(endpoint)
    req = validate_request(entry.operation, {} if request is None else request)
    if entry.operation == "upscale":
        w_in, h_in = _upscale_input(req, input_size, book)
        scale = req["scale"]
        width, height, images = w_in * scale, h_in * scale, 1
    else:
        width, height = _output_size(req["image_size"], book)
        images, w_in, h_in, scale = req["num_images"], None, None, None
        if images > book.max_images:
            raise InvalidRequest(
                f"num_images: the price book allows at most {book.max_images} (got {images})",
                field="num_images",
                reason="less_than_equal",
            )
    area = book.area(width, height)
    if area.too_large:
        raise ImageTooLarge(
            f"{'image_size' if scale is None else 'scale'}: {area.too_large}",
            field="image_size" if scale is None else "scale",
        )
    return Quote(
        entry.endpoint,
        entry.model,
        entry.operation,
        images,
        width,
        height,
        area.megapixels,
        area.billable,
        entry.rate,
        _multiply(_multiply(area.billable, images), entry.rate),
        book.currency,
        book.version,
        w_in,
        h_in,
        scale,
    )


def actual_cost(estimate: Quote, response: Mapping[str, Any], *, book: PriceBook | None = None) -> ActualCost:
    """The cost of a response: each returned image's size at the estimate's rate."""
    book = book or default_book()
    images = response.get("images") if estimate.operation != "upscale" else [response.get("image")]
    sizes: list[tuple[int, int]] = []
    for image in images if isinstance(images, list) else []:
        w = image.get("width") if isinstance(image, Mapping) else None
        h = image.get("height") if isinstance(image, Mapping) else None
        if not (type(w) is int and type(h) is int and w > 0 and h > 0):
            return ActualCost(estimate.amount, (), False)
        sizes.append((w, h))
    if not sizes:
        return ActualCost(estimate.amount, (), False)
    total = Decimal(0)
    for w, h in sizes:
        total = PRODUCT_CONTEXT.add(total, book.area(w, h).billable)
    return ActualCost(PRODUCT_CONTEXT.multiply(total, estimate.rate_per_megapixel), tuple(sizes), True)


def _output_size(size: str | dict[str, int] | None, book: PriceBook) -> tuple[int, int]:
    if size is None:
        return book.presets[book.default_image_size]
    if isinstance(size, dict):
        return size["width"], size["height"]
    try:
        return book.presets[size]
    except KeyError:
        raise InvalidRequest(
            f"image_size: unknown preset {size!r}; allowed: {', '.join(book.presets)} or {{width, height}}",
            field="image_size",
            reason="enum",
        ) from None


def _upscale_input(req: dict[str, Any], given: tuple[int, int] | None, book: PriceBook) -> tuple[int, int]:
    if given is None and req["input_size"] is not None:
        given = (req["input_size"]["width"], req["input_size"]["height"])
    if given is None:
        raise InvalidRequest(
            "input_size: the upscale input's size is unknown; give input_size WxH "
            "or an image_url whose header pixelgov can read",
            field="input_size",
            reason="missing",
        )
    w, h = given
    if w <= 0 or h <= 0:
        raise InvalidRequest("input_size: sides must be positive", field="input_size")
    too_large = book.area(w, h).too_large
    if too_large:
        raise ImageTooLarge(f"input_size: {too_large}", field="input_size")
    return w, h
