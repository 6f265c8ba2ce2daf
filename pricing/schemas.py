"""Request schemas mirroring FAL's request tables, one per operation.

They are pydantic v2 core schemas (`pydantic_core`), declared field by field with
every constraint: the same validator engine and error types (`loc`, `type`) as a
`BaseModel`, without the model-class machinery, so `pixelgov price` starts in
little more than the time it takes to import click and pydantic.

Schemas validate what they know and keep every other field (`extra="allow"`):
the upstream receives the caller's body untouched, minus pixelgov's own keys.
Pricing needs only what changes the price, so `prompt` and `image_url` are
checked for presence by `require_runnable`, not by the schemas.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic_core import CoreSchema, SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from . import grammar
from .errors import InvalidRequest

#: Keys that pixelgov reads itself and never forwards upstream.
PIXELGOV_KEYS = frozenset({"input_size"})


def _field(schema: CoreSchema, default: Any = None, description: str | None = None) -> cs.TypedDictField:
    return cs.typed_dict_field(
        cs.with_default_schema(schema, default=default),
        required=False,
        metadata={"description": description} if description else None,
    )


def _optional(schema: CoreSchema, description: str | None = None) -> cs.TypedDictField:
    return _field(cs.nullable_schema(schema), None, description)


IMAGE_DIMS = cs.typed_dict_schema(
    {
        "width": cs.typed_dict_field(cs.int_schema(gt=0, strict=True)),
        "height": cs.typed_dict_field(cs.int_schema(gt=0, strict=True)),
    },
    extra_behavior="forbid",
    ref="ImageDims",
)
_TEXT = cs.str_schema(min_length=1, strict=True)
#: A preset name or a custom {width, height}; the tag decides which errors a user sees.
IMAGE_SIZE = cs.tagged_union_schema(
    {"preset": _TEXT, "custom": IMAGE_DIMS},
    discriminator=lambda v: "custom" if isinstance(v, dict) else "preset",
)
OUTPUT_FORMAT = cs.literal_schema(["jpeg", "png"])
SCALE = cs.literal_schema([2, 4])

_GENERATE_FIELDS: dict[str, cs.TypedDictField] = {
    "prompt": _optional(_TEXT, "what to draw; required to run, not to price"),
    "image_size": _optional(IMAGE_SIZE, "a preset name or {width, height}; default landscape_4_3"),
    "num_images": _field(cs.int_schema(ge=1, le=4, strict=True), 1, "images per request, 1–4"),
    "num_inference_steps": _field(cs.int_schema(ge=1, le=100, strict=True), 28, "1–100"),
    "guidance_scale": _field(cs.float_schema(ge=0, allow_inf_nan=False, strict=True), 3.5, "≥ 0"),
    "seed": _optional(cs.int_schema(ge=0, strict=True), "integer ≥ 0"),
    "output_format": _field(OUTPUT_FORMAT, "jpeg"),
}
_TRANSFORM_FIELDS = {
    **_GENERATE_FIELDS,
    "image_url": _optional(_TEXT, "the input image; required to run"),
    "strength": _field(cs.float_schema(ge=0, le=1, allow_inf_nan=False, strict=True), 0.75, "0.0–1.0"),
}
_UPSCALE_FIELDS = {
    "image_url": _optional(_TEXT, "the image to upscale; required to run"),
    "scale": _optional(SCALE, "2 or 4 (default 2)"),
    "upscale_factor": _optional(SCALE, "FAL's name for scale"),
    "model": _field(_TEXT, "topaz"),
    "output_format": _field(OUTPUT_FORMAT, "jpeg"),
    "input_size": _optional(IMAGE_DIMS, "pixelgov's own: the input's size when the image cannot be read"),
}

#: The schema of each operation's request body.
SCHEMAS: dict[str, CoreSchema] = {
    op: cs.typed_dict_schema(fields, extra_behavior="allow", ref=f"{op.title()}Request")
    for op, fields in (("generate", _GENERATE_FIELDS), ("transform", _TRANSFORM_FIELDS), ("upscale", _UPSCALE_FIELDS))
}
_VALIDATORS = {op: SchemaValidator(schema) for op, schema in SCHEMAS.items()}

_UNION_TAGS = frozenset({"preset", "custom"})
_ALLOWED = {
    "literal_error": "allowed: {expected}",
    "less_than_equal": "allowed: ≤ {le}",
    "greater_than_equal": "allowed: ≥ {ge}",
    "greater_than": "allowed: > {gt}",
    "less_than": "allowed: < {lt}",
}


def parse_size(text: str, *, field: str = "image_size") -> dict[str, int]:
    """`"1280x720"` → `{"width": 1280, "height": 720}` (`pricing.grammar`); anything else is invalid_request."""
    width, height = grammar.parse_size(text, field)
    return {"width": width, "height": height}


def validate_request(operation: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a request body for an operation: the body with defaults filled in.

    Raises InvalidRequest naming the field, the constraint and the value given.
    """
    if type(body) is not dict:
        if not isinstance(body, Mapping):
            raise InvalidRequest("the request body must be a JSON object", field="body")
        body = dict(body)
    if operation == "upscale" and type(body.get("input_size")) is str:
        body = {**body, "input_size": parse_size(body["input_size"], field="input_size")}
    try:
        request = _VALIDATORS[operation].validate_python(body)
    except ValidationError as exc:
        raise _invalid(exc) from None
    if operation == "upscale":
        scale, factor = request["scale"], request["upscale_factor"]
        if scale is not None and factor is not None and scale != factor:
            raise InvalidRequest("scale: scale and upscale_factor disagree; give one", field="scale")
        request["scale"] = scale or factor or 2
    validated: dict[str, Any] = request
    return validated


def _invalid(exc: ValidationError) -> InvalidRequest:
    err = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in err["loc"] if p not in _UNION_TAGS) or "body"
    ctx = err.get("ctx") or {}
    try:
        hint = _ALLOWED.get(err["type"], "").format(**ctx)
    except (KeyError, IndexError):
        hint = ""
    got = err.get("input")
    shown = f" (got {got!r})" if err["type"] != "missing" and not isinstance(got, Mapping) else ""
    return InvalidRequest(
        f"{field}: {err['msg']}{shown}" + (f"; {hint}" if hint else ""), field=field, reason=err["type"]
    )


def require_runnable(operation: str, request: Mapping[str, Any]) -> None:
    """To run (not just price), a request needs everything FAL requires."""
    needed = {"generate": ("prompt",), "transform": ("prompt", "image_url"), "upscale": ("image_url",)}
    for name in needed[operation]:
        if request.get(name) is None:
            raise InvalidRequest(f"{name}: required to run a {operation} request", field=name, reason="missing")


def upstream_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body forwarded upstream: the caller's own, minus pixelgov's keys."""
    return {k: v for k, v in body.items() if k not in PIXELGOV_KEYS}
