"""Shared fixtures: a price book, databases (SQLite files, PostgreSQL), a clock, the fake FAL."""

from __future__ import annotations

import os

import pytest

from pricing import book as book_module


@pytest.fixture(autouse=True)
def _fresh_price_book(monkeypatch: pytest.MonkeyPatch):
    """Each test reads PIXELGOV_PRICE_BOOK afresh (the book is cached per process)."""
    monkeypatch.delenv("PIXELGOV_PRICE_BOOK", raising=False)
    book_module.active_book.cache_clear()
    yield
    book_module.active_book.cache_clear()


def running_on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
