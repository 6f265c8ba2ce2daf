"""`pixelgov models` and `pixelgov price`: the price book and quotes, no ledger access."""

from __future__ import annotations

from typing import Any

import click

from ledger.forward.quoting import quote_body
from pricing import book_for
from pricing.money import usd_str

from .common import emit_record, emit_rows, output_options, pop_request_options, price_book_of, request_options


@click.command()
@output_options("table", "json", "csv")
@click.pass_context
def models(ctx: click.Context, fmt: str) -> None:
    """The price book: endpoints, operations, rates and size presets.

    \b
    pixelgov models
    pixelgov models --format json
    """
    book = book_for(price_book_of(ctx))
    rows = [
        {"endpoint": e.endpoint, "model": e.model, "operation": e.operation, "rate_per_megapixel": usd_str(e.rate)}
        for e in sorted(book.endpoints.values(), key=lambda e: (e.model, e.endpoint))
    ]
    presets = [{"name": name, "width": w, "height": h} for name, (w, h) in book.presets.items()]
    doc = {
        "price_book": book.version,
        "source": book.source,
        "currency": book.currency,
        "megapixel_step": usd_str(book.megapixel_step) if book.megapixel_step is not None else "exact",
        "pixels_per_megapixel": book.pixels_per_megapixel,
        "default_image_size": book.default_image_size,
        "limits": {
            "max_side": book.max_side,
            "max_megapixels_per_image": usd_str(book.max_megapixels_per_image),
            "max_images": book.max_images,
        },
        "endpoints": rows,
        "presets": presets,
    }
    if fmt != "table":
        emit_rows(rows, list(rows[0]), fmt, doc=doc)
        return
    click.echo(
        f"price book {book.version} ({book.source}), USD per megapixel, "
        f"billed per {doc['megapixel_step']} MP per image\n"
    )
    emit_rows(rows, ["endpoint", "operation", "rate_per_megapixel"], fmt)
    click.echo("")
    emit_rows(presets, ["name", "width", "height"], fmt)


@click.command()
@click.argument("endpoint")
@request_options
@output_options("table", "json")
@click.pass_context
def price(ctx: click.Context, /, endpoint: str, fmt: str, **options: Any) -> None:
    """Quote a request exactly, offline: no ledger, nothing sent.

    \b
    pixelgov price fal-ai/flux/dev
    pixelgov price fal-ai/flux/dev --image-size square_hd --num-images 4 --format json
    pixelgov price fal-ai/topaz/upscale/image --input-size 1024x768 --scale 2
    """
    book = book_for(price_book_of(ctx))
    q = quote_body(endpoint, pop_request_options(options), book=book)
    doc = q.to_json()
    if fmt == "json":
        emit_record(doc, fmt)
        return
    emit_record(doc, fmt, title=f"{q.price}  {q.endpoint} ({q.operation})")
