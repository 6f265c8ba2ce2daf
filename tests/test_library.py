"""The ledger as a library: the public API a Python user sees (issue 7).

`from ledger import Ledger` and the records; every public class and method documented;
the environment read only at the edges; a Ledger owns its engine and caches.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

import ledger
from ledger import Ledger, Settings, TxStatus
from ledger.errors import SchemaBehind

ROOT = Path(__file__).resolve().parent.parent


def test_the_public_api_is_importable_by_name() -> None:
    for name in ledger.__all__:
        assert getattr(ledger, name) is not None, name
    assert Ledger.__module__ == "ledger.core"


def test_the_services_documented_in_the_readme_import_from_the_package(sqlite_url) -> None:
    from ledger import Admin, Budgets, Governor, History, Reports

    with Ledger(sqlite_url) as opened:
        assert isinstance(opened.governor, Governor)
        assert isinstance(opened.admin, Admin)
        assert isinstance(opened.reports, Reports)
        assert Budgets(opened.engine).usage() == []
        assert History(opened.engine).page().transactions == ()


def test_the_layers_hold(tmp_path) -> None:
    """import-linter's contracts (pyproject.toml): pixelgov → ledger → pricing, the library by job,
    pricing pure, no cycles. A new upward import fails here as it fails CI."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-3000:]
    assert done.stdout.count(" KEPT") == 4


def test_importing_the_package_imports_no_database_or_http_library() -> None:
    code = (
        "import sys, ledger, ledger.records, ledger.settings, ledger.store.spend; "
        "print(sorted(m for m in ('sqlalchemy', 'httpx', 'psycopg') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _public_members(cls: type) -> list[tuple[str, object]]:
    """Public methods and properties, inherited ones too (Governor, Admin and Reports are sums of
    one class per step or report)."""
    out = []
    own = [c for c in reversed(cls.__mro__) if c.__module__.startswith(("ledger", "pricing"))]
    members = {name: member for c in own for name, member in vars(c).items()}
    for name, member in members.items():
        if name.startswith("_"):
            continue
        if isinstance(member, staticmethod | classmethod):
            out.append((name, member.__func__))
        elif isinstance(member, property):
            out.append((name, member.fget))
        elif hasattr(member, "func"):  # functools.cached_property
            out.append((name, member.func))
        elif inspect.isfunction(member):
            out.append((name, member))
    return out


def test_every_public_class_and_method_has_a_docstring() -> None:
    from ledger.policy.admin import Admin
    from ledger.policy.governor import Governor
    from ledger.reports import Reports

    classes = [obj for obj in (getattr(ledger, n) for n in ledger.__all__) if inspect.isclass(obj)]
    missing = []
    for cls in [*classes, Governor, Admin, Reports]:
        if not (cls.__doc__ or "").strip():
            missing.append(cls.__qualname__)
        missing += [
            f"{cls.__qualname__}.{name}"
            for name, fn in _public_members(cls)
            if not (getattr(fn, "__doc__", None) or "").strip()
        ]
    assert missing == []


# Modules that are edges: the CLI's commands, the server's start-up, and the settings reader.
_EDGES = ("ledger/settings.py",)


def test_nothing_below_the_edge_reads_the_environment() -> None:
    readers = []
    for path in [*ROOT.joinpath("ledger").rglob("*.py"), *ROOT.joinpath("pricing").rglob("*.py")]:
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(_EDGES):
            continue
        if re.search(r"os\.environ|os\.getenv|getenv\(", path.read_text(encoding="utf-8")):
            readers.append(rel)
    assert readers == []


def test_a_ledger_owns_its_engine_and_closes_it(sqlite_url) -> None:
    with Ledger(sqlite_url) as opened:
        engine = opened.engine
        assert opened.governor is opened.governor  # one governor (and rule cache) per ledger
        assert opened.governor.transactions() == []
        assert engine.pool.checkedin() >= 1
    assert engine.pool.checkedin() == 0  # disposed


def test_a_ledger_takes_an_engine_it_does_not_own(engine) -> None:
    with Ledger(engine) as borrowed:
        assert borrowed.governor.transactions() == []
    with engine.connect():  # still usable: the caller owns it
        pass


def test_a_database_behind_the_schema_is_refused_unless_migrated(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    with pytest.raises(SchemaBehind) as caught:
        Ledger(url)
    assert "pixelgov" not in caught.value.message.split(";")[-1]  # names no CLI command
    with Ledger(url, migrate=True) as opened:
        assert opened.admin.agents() == []


def test_settings_are_taken_as_given_not_from_the_environment(sqlite_url, monkeypatch, clock) -> None:
    monkeypatch.setenv("PIXELGOV_HOLD_TTL", "5")
    monkeypatch.setenv("PIXELGOV_AUTO_CREATE_AGENTS", "false")
    with Ledger(sqlite_url, settings=Settings(hold_ttl=60), clock=clock) as opened:
        assert opened.governor.hold_ttl == 60
        tx = opened.governor.authorize("bot", opened.quote("fal-ai/flux/dev", {}), {}).transaction  # auto-created
        clock.advance(30)
        assert opened.governor.expire() == []
        clock.advance(31)
        assert opened.governor.expire() == [tx.id]
    assert Settings.from_env().hold_ttl == 5 and Settings.from_env().auto_create_agents is False


def test_records_carry_decimal_money_and_aware_times(ledger) -> None:
    quote = ledger.quote("fal-ai/flux/dev", {"image_size": "square_hd"})
    auth = ledger.governor.authorize("bot", quote, {"prompt": "x"})
    tx = auth.transaction
    assert isinstance(tx.estimated_cost, Decimal) and tx.estimated_cost == Decimal("0.01575")
    assert tx.status is TxStatus.pending and tx.created_at.utcoffset() is not None
    assert tx.to_json()["estimated_cost"] == "0.01575"
    with pytest.raises(AttributeError):
        tx.status = TxStatus.completed  # type: ignore[misc]  # frozen
