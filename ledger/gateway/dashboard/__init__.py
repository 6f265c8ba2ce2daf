"""The browser dashboard under `/dashboard` (server-rendered Jinja2, static assets in the package)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/dashboard", include_in_schema=False)
