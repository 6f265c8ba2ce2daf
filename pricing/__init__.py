"""pixelgov's pure pricing core: price book, request schemas and quotes.

No I/O at import, no SQLAlchemy, no HTTP. Everything here is exact (`Decimal`).
"""

from .book import Endpoint, PriceBook, book_for, default_book, load_book, parse_book
from .errors import ImageTooLarge, InvalidRequest, ModelNotFound, PixelgovError, PriceBookError
from .quote import ActualCost, Quote, actual_cost, quote
from .schemas import require_runnable, upstream_body, validate_request

__all__ = [
    "ActualCost",
    "Endpoint",
    "ImageTooLarge",
    "InvalidRequest",
    "ModelNotFound",
    "PixelgovError",
    "PriceBook",
    "PriceBookError",
    "Quote",
    "actual_cost",
    "book_for",
    "default_book",
    "load_book",
    "parse_book",
    "quote",
    "require_runnable",
    "upstream_body",
    "validate_request",
]
