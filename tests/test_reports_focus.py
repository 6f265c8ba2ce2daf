"""`pixelgov report export --focus`: a FOCUS 1.0 CSV that the published validator accepts, and
whose costs reconcile with the reports.

The validator is `focus-validator` 1.0.0 (the release for FOCUS 1.0), installed once into a
throwaway virtualenv under ~/.cache/pixelgov-tests (it pulls pandas), reused by later runs.
Its quirks: it needs `multimethod<1.11`; it exits 0 even when validation fails, so its output is
read; it finds its currency list only with its own package directory as the working directory.
"""

from __future__ import annotations

import csv
import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import running_on_ci
from report_data import LedgerWriter, recount, total, utc

from pixelgov.cli import cli

#: Read at import, before the test fixtures point HOME at a temporary directory.
CACHE = Path(os.environ.get("PIXELGOV_TEST_CACHE") or Path.home() / ".cache" / "pixelgov-tests")
VALIDATOR = CACHE / "focus-validator-1.0.0"
REQUIREMENTS = ["focus-validator==1.0.0", "multimethod<1.11"]
D = Decimal


def _unavailable(message: str) -> None:
    if running_on_ci():
        pytest.fail(f"{message}: CI requires the FOCUS validator", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def focus_validator() -> tuple[Path, Path]:
    """(the validator's executable, its site-packages directory), installed on first use."""
    CACHE.mkdir(parents=True, exist_ok=True)
    ready = VALIDATOR / ".ready"
    with (CACHE / ".focus-validator.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time; the others wait and reuse it
        if not ready.exists():
            shutil.rmtree(VALIDATOR, ignore_errors=True)
            try:
                subprocess.run(
                    [sys.executable, "-m", "venv", str(VALIDATOR)], check=True, capture_output=True, timeout=300
                )
                subprocess.run(
                    [str(VALIDATOR / "bin" / "pip"), "install", "-q", *REQUIREMENTS],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                shutil.rmtree(VALIDATOR, ignore_errors=True)
                detail = getattr(exc, "stderr", "") or ""
                _unavailable(f"cannot install {' '.join(REQUIREMENTS)}: {str(detail).strip()[-300:]}")
            ready.touch()
    site = subprocess.run(
        [
            str(VALIDATOR / "bin" / "python"),
            "-c",
            "import focus_validator, os; print(os.path.dirname(os.path.dirname(focus_validator.__file__)))",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.strip()
    return VALIDATOR / "bin" / "focus-validator", Path(site)


def validate(tool: tuple[Path, Path], data: Path) -> str:
    """The validator's output for `data` (it exits 0 whatever it finds)."""
    executable, site = tool
    done = subprocess.run(
        [str(executable), "--data-file", str(data), "--validate-version", "1.0"],
        cwd=site,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.stdout + done.stderr


@pytest.fixture
def exported(db_url: str, engine, tmp_path: Path) -> Iterator[tuple[Path, LedgerWriter]]:  # type: ignore[no-untyped-def]
    """A month of every kind of charge, exported through the CLI."""
    w = LedgerWriter(engine)
    w.add("design-team", at=utc(2026, 11, 2, 9, 30), adjustments=[(D("-0.002"), 'credit, "ticket" 7')])
    w.add(
        "design-team",
        "fal-ai/flux-pro",
        at=utc(2026, 11, 3),
        actual=D("0.05"),
        adjustments=[(D("-1"), "refund larger than the charge"), (D("0.01"), "correction")],
    )
    w.add(
        "design-team",
        "fal-ai/topaz/upscale/image",
        at=utc(2026, 11, 4),
        body={"image_url": "https://example.com/a.png", "input_size": "1024x768", "scale": 2},
    )
    w.add(
        "social-bot",
        "fal-ai/flux/schnell/image-to-image",
        at=utc(2026, 11, 5),
        body={"image_url": "https://example.com/b.png", "prompt": "x"},
        status="unknown",
    )
    w.add(
        "social-bot",
        "fal-ai/fast-sdxl",
        at=utc(2026, 11, 30, 23, 59),
        adjustments=[(D("-0.001"), "late credit")],
        adjusted_at=utc(2026, 12, 3),
    )  # a correction in December
    for status in ("pending", "failed", "voided", "expired", "denied"):
        w.add("social-bot", at=utc(2026, 11, 6), status=status)
    w.add("social-bot", at=utc(2026, 10, 30))  # outside the window
    target = tmp_path / "november.csv"
    result = CliRunner().invoke(
        cli,
        ["--db", db_url, "report", "export", "--focus", str(target), "--since", "2026-11-01", "--until", "2026-12-01"],
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    yield target, w


def test_focus_export_passes_the_published_validator(exported, focus_validator) -> None:
    path, _ = exported
    output = validate(focus_validator, path)
    assert "Validation succeeded." in output, output[-3000:]


def test_the_validator_is_read_for_its_verdict_not_its_exit_code(exported, focus_validator, tmp_path) -> None:
    path, _ = exported
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    broken = tmp_path / "broken.csv"
    with broken.open("w", encoding="utf-8", newline="") as out:
        columns = [c for c in rows[0] if c != "BillingCurrency"]
        writer = csv.DictWriter(out, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    output = validate(focus_validator, broken)
    assert "Validation succeeded." not in output and "BillingCurrency" in output


def test_focus_rows_reconcile_with_the_reports(exported) -> None:
    path, w = exported
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    expected = total(recount(w.engine, since=utc(2026, 11, 1), until=utc(2026, 12, 1)))
    usage = [r for r in rows if r["ChargeCategory"] == "Usage"]
    assert len(usage) == 5 and len(rows) == 9  # completed x4, unknown; four adjustment lines
    # EffectiveCost: what counts as spent (a credit never below zero); BilledCost: every line in full.
    assert sum(D(r["EffectiveCost"]) for r in rows) == expected.net
    assert sum(D(r["BilledCost"]) for r in rows) == expected.actual + expected.unknown + expected.adjustments
    assert sum(D(r["ConsumedQuantity"]) for r in usage) == expected.billable_mp
    by_tx = {r["x_TransactionId"]: r for r in usage}
    credits = [r for r in rows if r["ChargeCategory"] == "Credit"]
    assert {r["ChargeDescription"].split(" (")[0] for r in credits} == {
        'credit, "ticket" 7',
        "refund larger than the charge",
        "late credit",
    }
    late = next(r for r in credits if r["ChargeDescription"].startswith("late"))
    assert (late["ChargeClass"], late["BillingPeriodStart"], late["ChargePeriodStart"]) == (
        "Correction",
        "2026-12-01T00:00:00Z",
        "2026-11-30T23:00:00Z",
    )
    first = next(r for r in usage if r["x_Agent"] == "design-team" and r["SkuId"] == "fal-ai/flux/dev")
    assert (first["BilledCost"], first["ListUnitPrice"], first["ConsumedQuantity"], first["ConsumedUnit"]) == (
        "0.01185",
        "0.015",
        "0.79",
        "Megapixels",
    )
    assert (first["ChargePeriodStart"], first["ChargePeriodEnd"], first["BillingPeriodEnd"]) == (
        "2026-11-02T09:00:00Z",
        "2026-11-02T10:00:00Z",
        "2026-12-01T00:00:00Z",
    )
    assert by_tx[first["x_TransactionId"]]["SubAccountId"] == "design-team"
    unknown = next(r for r in usage if r["x_Status"] == "unknown")
    assert unknown["BilledCost"] == unknown["x_EstimatedCost"] == "0.03555"  # 0.79 MP at the transform rate
