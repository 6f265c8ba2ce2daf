"""Quote a request as a user gives it: reads an upscale's input size when it must.

Shared by `price`, `check`, `authorize`, `run` and the gateway, so every path
prices the same way. Light: httpx is imported only to read a URL's header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pricing import PriceBook, Quote, default_book, quote, validate_request


def quote_body(endpoint: str, body: Mapping[str, Any], *, book: PriceBook | None = None, remote: bool = False) -> Quote:
    """The quote of a request as given; `remote`: it came from the network (see `imageprobe`)."""
    book = book or default_book()
    entry = book.endpoint(endpoint)
    input_size = None
    if entry.operation == "upscale":
        request = validate_request("upscale", body)
        if request["input_size"] is None and request["image_url"] is not None:
            from .imageprobe import probe_size

            input_size = probe_size(request["image_url"], remote=remote)
    return quote(endpoint, body, book=book, input_size=input_size)
