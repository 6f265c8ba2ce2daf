"""The one bounded JSON reader for every file and body pixelgov reads.

Size and nesting depth are bounded before parsing (a 100k-deep document would exhaust
the recursion limit), bytes must be UTF-8, and `NaN`/`Infinity` are refused: what
pixelgov reads it must be able to write back as strict JSON. With `decimals=True`
(price books: money) numbers with a fraction are read as `Decimal`, never float;
request bodies keep floats (model parameters such as a guidance scale, not money).
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from typing import Any

from .errors import InvalidRequest

MAX_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (JSON numbers must be finite)")


def _depth(text: str, limit: int) -> int:
    """The deepest nesting of arrays/objects, counted outside strings; stops past `limit`."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are each given once. A repeated key is refused, not resolved: pixelgov
    and the upstream could otherwise read different values of one request (the price of one, the
    images of the other)."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"the key {repeated!r} is given twice in one object")
    return doc


def parse_json(
    data: str | bytes,
    *,
    source: str,
    field: str,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    decimals: bool = False,
) -> Any:
    """Parse `data` (UTF-8 bytes or text); InvalidRequest naming `source` and `field` for anything
    too large, too deep, undecodable, non-finite or malformed."""
    size = len(data)
    if size > max_bytes:
        raise InvalidRequest(f"{field}: {source} is larger than {max_bytes // (1024 * 1024)} MiB", field=field)
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"{field}: {source} is not UTF-8 text", field=field) from None
    else:
        text = data
    if _depth(text, max_depth) > max_depth:
        raise InvalidRequest(f"{field}: {source} is nested deeper than {max_depth} levels", field=field)
    try:
        return json.loads(
            text,
            parse_float=Decimal if decimals else float,
            parse_constant=_refuse_constant,
            object_pairs_hook=_unique_keys,
        )
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"{field}: {source} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
            field=field,
            line=exc.lineno,
            column=exc.colno,
        ) from None
    except ValueError as exc:
        raise InvalidRequest(f"{field}: {source}: {exc}", field=field) from None


def read_json_file(
    path: str | os.PathLike[str],
    *,
    field: str,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    decimals: bool = False,
) -> Any:
    """Read and parse a JSON file with the same bounds; InvalidRequest if it cannot be read."""
    where = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise InvalidRequest(f"{field}: cannot read {where} ({exc.strerror or exc})", field=field) from None
    except ValueError as exc:  # e.g. an embedded NUL in the path
        raise InvalidRequest(f"{field}: cannot read {where!r} ({exc})", field=field) from None
    return parse_json(data, source=where, field=field, max_bytes=max_bytes, max_depth=max_depth, decimals=decimals)
