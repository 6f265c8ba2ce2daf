"""The gateway's pydantic I/O models: they validate request bodies and feed the OpenAPI schema.

Responses are written by the records' own `to_json()` (SPEC §5 shapes); the response models
here document those shapes (extra keys allowed) so schemathesis checks what users see.
Money travels as decimal strings ("0.01185"), never JSON numbers: no float touches money.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Usd = Annotated[str, Field(max_length=40, description='USD as a decimal string, e.g. "0.05"')]
Text = Annotated[str, Field(max_length=2000)]
Name = Annotated[str, Field(min_length=1, max_length=200)]


class Schema(BaseModel):
    """Request bodies: unknown keys are refused, so a typo is an error, not a no-op."""

    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    """Response shapes: the keys promised; more may come."""

    model_config = ConfigDict(extra="allow")


# --- errors ---------------------------------------------------------------------------------------


class ErrorObject(Out):
    code: str
    message: str


class ErrorBody(Out):
    """FAL's error shape (`detail`, `error_type`) with pixelgov's `error` object."""

    detail: Any
    error_type: str
    error: ErrorObject


# --- requests ---------------------------------------------------------------------------------------

FalRequest = dict[str, Any]  #: a FAL request body, forwarded as given (pixelgov-only keys removed)


class AuthorizeIn(Schema):
    endpoint: Name
    request: dict[str, Any] = Field(default_factory=dict, description="the request body to be forwarded")
    idempotency_key: Annotated[str, Field(min_length=1, max_length=200)] | None = None


class CompleteIn(Schema):
    actual: Usd | None = Field(None, description="the actual cost; or give `response`; neither: the estimate")
    response: dict[str, Any] | None = Field(None, description="the upstream's JSON answer, priced by its sizes")


class VoidIn(Schema):
    reason: Text | None = None


class CostIn(Schema):
    amount: Usd
    kind: Literal["adjustment"] = "adjustment"
    note: Text | None = None


class FactIn(Schema):
    key: Annotated[str, Field(min_length=1, max_length=100)]
    value: Any


class AgentIn(Schema):
    name: Name
    description: Text | None = None
    with_key: bool = True


class AgentPatch(Schema):
    status: Literal["active", "paused"] | None = None
    description: Text | None = None


class RuleFields(Schema):
    name: Name | None = None
    type: Literal["spend-limit", "request-cap", "rate-limit", "model-allowlist"] | None = None
    limit: Annotated[str, Field(max_length=40)] | int | None = Field(
        None, description="USD as a decimal string (spend-limit, request-cap) or a count (rate-limit)"
    )
    period: Literal["minute", "hour", "day", "week", "month", "total"] | None = None
    window: Annotated[str, Field(max_length=20)] | None = None
    models: list[Annotated[str, Field(max_length=200)]] | None = Field(None, max_length=100)
    agent: Name | None = None
    model: Annotated[str, Field(max_length=200)] | None = None
    operation: Literal["generate", "transform", "upscale"] | None = None
    action: Literal["deny", "alert"] | None = None
    alert_at: Annotated[int, Field(ge=1, le=100)] | None = None
    enabled: bool | None = None


class RuleIn(RuleFields):
    name: Name
    type: Literal["spend-limit", "request-cap", "rate-limit", "model-allowlist"]


class RulePatch(RuleFields):
    version: Annotated[int, Field(ge=1, description="the rule's current version (a stale one: 409)")]


class ServiceKeyIn(Schema):
    name: Name


# --- responses ----------------------------------------------------------------------------------------


class QuoteOut(Out):
    endpoint: str
    operation: str
    images: int
    width: int
    height: int
    megapixels_per_image: str
    billable_megapixels: str
    rate_per_megapixel: str
    amount: str
    price: str
    currency: str
    price_book: str


class DenialOut(Out):
    rule: str | None
    type: str
    reason: str


class DecisionOut(Out):
    allowed: bool
    agent: str
    quote: QuoteOut
    denials: list[DenialOut]
    alerts: list[DenialOut]


class TransactionOut(Out):
    id: int
    agent: str
    endpoint: str
    operation: str
    status: str
    estimated_cost: str
    actual_cost: str | None
    created_at: str
    completed_at: str | None
    idempotency_key: str | None
    denial: dict[str, Any] | None


class TransactionPage(Out):
    transactions: list[TransactionOut]
    limit: int
    offset: int
    has_more: bool


class AgentOut(Out):
    id: int
    name: str
    description: str | None
    status: str
    has_api_key: bool
    created_at: str


class RuleOut(Out):
    id: int
    name: str
    type: str
    limit: str | int | None
    period: str | None
    window: str | None
    models: list[str] | None
    agent: str | None
    model: str | None
    operation: str | None
    action: str
    enabled: bool
    version: int


class ServiceKeyOut(Out):
    id: int
    name: str
    key_prefix: str
    created_at: str
    revoked_at: str | None
    active: bool


class QueueSubmitted(Out):
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    status: str
    queue_position: int


class QueueStatus(Out):
    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    logs: list[Any] | None


class CancelOut(Out):
    status: str


class Health(Out):
    status: str
    database: str
    schema_revision: str | None
