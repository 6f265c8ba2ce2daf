"""Validation of a user's price book (imported only when a user's book is loaded)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo, field_validator

from .errors import PriceBookError

PositiveRate = Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]
_STEP = TypeAdapter(PositiveRate)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Entry(_Strict):
    operation: Literal["generate", "upscale"]
    rate_per_megapixel: PositiveRate
    aliases: list[str] = []
    description: str | None = None


class _Transform(_Strict):
    suffix: str = Field(pattern=r"^/[\w./-]+$")
    rate_per_megapixel: PositiveRate


class _Limits(_Strict):
    max_side: int = Field(14142, gt=0)
    max_megapixels_per_image: Annotated[Decimal, Field(gt=0, allow_inf_nan=False)] = Decimal(100)
    max_images: int = Field(4, ge=1)


class _Book(_Strict):
    version: str = Field(min_length=1)
    currency: Literal["USD"] = "USD"
    megapixel_step: Any = Decimal("0.01")  #: "exact" or a positive decimal (checked below, so errors name the field)
    pixels_per_megapixel: int = Field(1_000_000, gt=0)
    limits: _Limits = Field(default_factory=lambda: _Limits())
    presets: dict[str, tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]]]
    #: declared after `presets`, which its validator reads
    default_image_size: str = "landscape_4_3"
    endpoints: dict[str, _Entry] = Field(min_length=1)
    transform: _Transform | None = None

    @field_validator("megapixel_step")
    @classmethod
    def _step(cls, value: Any) -> Any:
        if value == "exact":
            return value
        try:
            step = _STEP.validate_python(value)
        except ValidationError:
            raise ValueError(f'must be "exact" or a positive number, not {value!r}') from None
        return step

    @field_validator("endpoints")
    @classmethod
    def _paths(cls, value: dict[str, _Entry]) -> dict[str, _Entry]:
        seen: set[str] = set()
        for name, entry in value.items():
            for path in (name, *entry.aliases):
                if not path or path.startswith("/") or " " in path:
                    raise ValueError(f"{path!r} is not an endpoint path like 'fal-ai/flux/dev'")
                if path in seen:
                    raise ValueError(f"{path!r} is listed twice")
                seen.add(path)
        return value

    @field_validator("default_image_size")
    @classmethod
    def _default_preset(cls, value: str, info: ValidationInfo) -> str:
        presets = info.data.get("presets")
        if presets is not None and value not in presets:
            raise ValueError(f"{value!r} is not one of the presets")
        return value


def validate_book(data: Any, source: str) -> None:
    try:
        _Book.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise PriceBookError(f"price book {source}: field {where}: {err['msg']}", field=where) from None
