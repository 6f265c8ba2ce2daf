"""How the dashboard writes amounts: exact USD (`pricing.money.usd_str`, to the nano-USD) with
thousands separators, so a page's figure is the report's figure digit for digit."""

from __future__ import annotations

from decimal import Decimal

from ledger.reports.records import percent_change
from pricing.money import usd_str


def usd(amount: Decimal | int | None) -> str:
    """`$1,234.01185`, `-$0.5`, `$0`; an em dash for None."""
    if amount is None:
        return "—"
    text = usd_str(Decimal(amount)) or "0"
    sign = "-" if text.startswith("-") else ""
    whole, _, frac = text.lstrip("-").partition(".")
    grouped = f"{int(whole):,}"
    return f"{sign}${grouped}{'.' + frac if frac else ''}"


def exact(amount: Decimal | int | None) -> str:
    """The report's own string for an amount (`usd_str`): what `data-usd` attributes carry."""
    if amount is None:
        return ""
    return usd_str(Decimal(amount)) or "0"


def change(now: Decimal | int, before: Decimal | int | None) -> dict[str, str] | None:
    """The change from `before` to `now`: signed difference and percentage (one decimal, half-up,
    None when `before` is zero), as the reports' summary computes it; None without a previous period."""
    if before is None:
        return None
    delta = Decimal(now) - Decimal(before)
    percent = percent_change(now, before)
    direction = "up" if delta > 0 else ("down" if delta < 0 else "flat")
    money = isinstance(now, Decimal)
    shown = (("+" if delta > 0 else "") + usd(delta)) if money else f"{'+' if delta > 0 else ''}{int(delta):,}"
    return {
        "delta": shown,
        "percent": "" if percent is None else f"{'+' if percent > 0 else ''}{percent}%",
        "direction": direction,
    }
