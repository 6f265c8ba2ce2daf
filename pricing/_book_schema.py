"""Validation of a user's price book (imported only when a user's book is loaded)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import PriceBookError

PositiveRate = Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]


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
    megapixel_step: Literal["exact"] | Annotated[Decimal, Field(gt=0, allow_inf_nan=False)] = Decimal("0.01")
    pixels_per_megapixel: int = Field(1_000_000, gt=0)
    default_image_size: str = "landscape_4_3"
    limits: _Limits = _Limits()
    presets: dict[str, tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]]]
    endpoints: dict[str, _Entry] = Field(min_length=1)
    transform: _Transform | None = None

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

    @model_validator(mode="after")
    def _default_preset(self) -> "_Book":
        if self.default_image_size not in self.presets:
            raise ValueError(f"default_image_size {self.default_image_size!r} is not one of the presets")
        return self


def validate_book(data: Any, source: str) -> None:
    try:
        _Book.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise PriceBookError(f"price book {source}: field {where}: {err['msg']}", field=where) from None
