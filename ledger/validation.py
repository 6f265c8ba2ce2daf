"""The one validator of names users give: agent names, the same for every command and API."""

from __future__ import annotations

import re

from .errors import InvalidRequest

__all__ = ["validate_agent_name"]

_AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,199}")


def validate_agent_name(name: str) -> None:
    """InvalidRequest unless `name` is a valid agent name (the whole string: no trailing newline)."""
    if not isinstance(name, str) or not _AGENT_NAME.fullmatch(name):
        raise InvalidRequest(
            f"agent: {name!r} is not a valid agent name (letters, digits and . _ : @ / -, "
            "starting with a letter or digit, at most 200)",
            field="agent",
        )
