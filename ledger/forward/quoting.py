"""Quote a request as a user gives it: reads an upscale's input size when it must.

Shared by `price`, `check`, `authorize`, `run` and the gateway, so every path
prices the same way. Light: httpx is imported only to read a URL's header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pricing import PriceBook, Quote, default_book, quote, validate_request
from pricing.errors import InvalidRequest


def quote_body(
    endpoint: str,
    body: Mapping[str, Any],
    *,
    book: PriceBook | None = None,
    remote: bool = False,
    measure: bool = False,
) -> Quote:
    """The quote of a request as given; `remote`: it came from the network (see `imageprobe`).

    `measure`: pixelgov forwards this request on someone else's word, so an upscale is priced from
    the size of the image itself, read here, never from the `input_size` a caller claims: a claim
    that disagrees is refused, and an image whose size cannot be read is refused (InvalidRequest)."""
    book = book or default_book()
    entry = book.endpoint(endpoint)
    input_size = None
    if entry.operation == "upscale":
        request = validate_request("upscale", body)
        claimed = request["input_size"]
        if (claimed is None or measure) and request["image_url"] is not None:
            from .imageprobe import probe_size

            input_size = probe_size(request["image_url"], remote=remote)
            if claimed is not None and (claimed["width"], claimed["height"]) != input_size:
                raise InvalidRequest(
                    f"input_size: {claimed['width']}x{claimed['height']} is not the image's size "
                    f"({input_size[0]}x{input_size[1]}, read from image_url): the price comes from the image",
                    field="input_size",
                    reason="disagrees",
                )
    return quote(endpoint, body, book=book, input_size=input_size)
