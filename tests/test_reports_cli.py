"""`pixelgov report …`: the click skin over the reports. Formats (CSV round-trips through the csv
module, JSON amounts as decimal strings), chart images of the stated size with one bar per period,
and bad input: exit 2, one line (or the JSON error), nothing written.
"""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from report_data import LedgerWriter, utc

from pixelgov.cli import cli

WINDOW = ["--since", "2026-11-01", "--until", "2026-12-01"]


def invoke(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--db", url, "report", *args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result


def as_json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


def as_csv(result: Result) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(ok(result).stdout)))


@pytest.fixture
def month(engine) -> LedgerWriter:  # type: ignore[no-untyped-def]
    """A November: two agents, three models, every outcome, an adjustment; and one October transaction."""
    w = LedgerWriter(engine)
    w.add("alpha", at=utc(2026, 11, 2, 9), adjustments=[(Decimal("-0.002"), "FAL credit, ticket 7")])
    w.add("alpha", "fal-ai/flux/schnell", at=utc(2026, 11, 2, 10), status="unknown")
    w.add("alpha", "fal-ai/flux-pro", at=utc(2026, 11, 9, 23, 59), actual=Decimal("0.05"))
    w.add("beta", "fal-ai/flux/schnell", at=utc(2026, 11, 10), status="denied", denied_by=["daily"])
    w.add("beta", at=utc(2026, 11, 16), status="expired")
    w.add("beta", at=utc(2026, 11, 30, 23, 59, 59))
    w.add("beta", at=utc(2026, 10, 31, 12))
    return w


def test_every_report_command_has_help_with_an_example() -> None:
    for command in ("summary", "spend", "leaderboard", "chart", "statement", "export"):
        result = CliRunner().invoke(cli, ["report", command, "--help"])
        assert result.exit_code == 0, result.output
        assert f"pixelgov report {command}" in result.output


def test_spend_csv_round_trips_to_the_json_rows(db_url, month) -> None:
    args = ["spend", "--by", "agent,model", *WINDOW]
    doc = as_json(invoke(db_url, *args, "--format", "json"))
    rows = as_csv(invoke(db_url, *args, "--format", "csv"))
    assert rows == [{k: str(v) for k, v in row.items()} for row in doc["rows"]]
    assert [(r["agent"], r["model"]) for r in rows] == [
        ("alpha", "fal-ai/flux-pro"),
        ("alpha", "fal-ai/flux/dev"),
        ("alpha", "fal-ai/flux/schnell"),
        ("beta", "fal-ai/flux/dev"),
        ("beta", "fal-ai/flux/schnell"),
    ]
    # alpha: 0.01185 - 0.002 credit, unknown schnell 0.00316, pro at 0.05; beta: 0.01185 (expired, denied: 0)
    assert doc["total"]["net"] == "0.07486"
    assert sum(Decimal(r["net"]) for r in rows) == Decimal(doc["total"]["net"])


def test_spend_table_ends_with_a_total_line(db_url, month) -> None:
    lines = ok(invoke(db_url, "spend", "--by", "day", *WINDOW)).stdout.splitlines()
    assert lines[0].split()[:3] == ["DAY", "TRANSACTIONS", "DENIALS"]
    assert lines[1].startswith("2026-11-02 ") and lines[-1].startswith("TOTAL ")


def test_summary_leaderboard_chart_and_statement_round_trip_through_csv(db_url, month) -> None:
    summary = {r["metric"]: r for r in as_csv(invoke(db_url, "summary", *WINDOW, "--format", "csv"))}
    doc = as_json(invoke(db_url, "summary", *WINDOW, "--format", "json"))
    assert summary["total_spend"]["value"] == doc["total_spend"] == "0.07486"
    assert summary["total_transactions"]["previous"] == "1" and summary["status:denied"]["value"] == "1"
    assert summary["denials:daily"]["value"] == "1"

    board = as_csv(invoke(db_url, "leaderboard", "--by", "agent", *WINDOW, "--format", "csv"))
    assert [(r["rank"], r["name"], r["transactions"], r["spend"], r["denials"]) for r in board] == [
        ("1", "alpha", "3", "0.06301", "0"),
        ("2", "beta", "2", "0.01185", "1"),
    ]

    points = as_csv(invoke(db_url, "chart", "--by", "week", *WINDOW, "--format", "csv"))
    assert [p["date"] for p in points] == [
        "2026-10-26",
        "2026-11-02",
        "2026-11-09",
        "2026-11-16",
        "2026-11-23",
        "2026-11-30",
    ]
    assert sum(Decimal(p["spend"]) for p in points) == Decimal("0.07486")

    lines = as_csv(invoke(db_url, "statement", "--month", "2026-11", "--format", "csv"))
    adjustment = [r for r in lines if r["line"] == "adjustment"]
    assert adjustment == [
        {
            **{k: "" for k in lines[0]},
            "agent": "alpha",
            "line": "adjustment",
            "model": "fal-ai/flux/dev",
            "transaction_id": adjustment[0]["transaction_id"],
            "note": "FAL credit, ticket 7",
            "adjustments": "-0.002",
        }
    ]
    grand = [r for r in lines if r["line"] == "total" and not r["agent"]]
    assert grand[0]["net"] == "0.07486"


def test_statement_reconciles_with_spend_for_the_month(db_url, month) -> None:
    statement = as_json(invoke(db_url, "statement", "--month", "2026-11", "--format", "json"))
    spend = as_json(invoke(db_url, "spend", "--by", "agent,model", *WINDOW, "--format", "json"))
    assert statement["total"] == spend["total"]
    lines = {(a["agent"], line["model"]): line for a in statement["agents"] for line in a["lines"]}
    assert {k: {c: v for c, v in line.items() if c not in ("model", "operation")} for k, line in lines.items()} == {
        (r["agent"], r["model"]): {c: v for c, v in r.items() if c not in ("agent", "model")} for r in spend["rows"]
    }
    table = ok(invoke(db_url, "statement", "--month", "2026-11", "--agent", "alpha")).stdout
    assert "agent alpha" in table and "FAL credit, ticket 7" in table and "agent beta" not in table


def test_json_amounts_are_decimal_strings(db_url, month) -> None:
    doc = as_json(invoke(db_url, "spend", "--by", "operation", "--format", "json"))
    for row in doc["rows"]:
        for column in ("estimated", "actual", "adjustments", "held", "unknown", "net", "variance", "billable_mp"):
            assert isinstance(row[column], str) and Decimal(row[column]) == Decimal(row[column]).normalize()


def test_export_writes_a_focus_file_and_reports_what_it_wrote(db_url, month, tmp_path) -> None:
    target = tmp_path / "nov.csv"
    doc = as_json(invoke(db_url, "export", "--focus", str(target), *WINDOW, "--format", "json"))
    rows = list(csv.DictReader(target.open(encoding="utf-8")))
    assert (doc["rows"], doc["usage_rows"], doc["adjustment_rows"]) == (len(rows), 4, 1)
    assert sum(Decimal(r["EffectiveCost"]) for r in rows) == Decimal("0.07486")  # = net
    assert doc["effective_cost"] == "0.07486" and doc["billed_cost"] == "0.07486"
    assert {r["x_Agent"] for r in rows} == {"alpha", "beta"}


# --- chart images --------------------------------------------------------------------------------

SPEND_RGB = (0x1F, 0x6F, 0xEB)


def _bars_in_png(path: Path) -> int:
    """The most runs of the spend colour on any one pixel row: the number of spend bars."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
        width, height = rgb.size
        pixels = rgb.load()
        best = 0
        for y in range(height):
            runs, inside = 0, False
            for x in range(width):
                hit = pixels[x, y] == SPEND_RGB
                runs += hit and not inside
                inside = hit
            best = max(best, runs)
    return best


@pytest.fixture
def sqlite_writer(sqlite_url: str) -> Any:
    """Chart images need one database only: the SQLite file."""
    from ledger import Ledger

    with Ledger(sqlite_url) as opened:
        yield LedgerWriter(opened.engine)


def test_png_chart_is_an_image_of_the_stated_size_with_a_bar_per_day(sqlite_url, sqlite_writer, tmp_path) -> None:
    w = sqlite_writer
    for day in range(1, 8):
        w.add(at=utc(2026, 11, day, 12))
    target = tmp_path / "spend.png"
    result = ok(
        invoke(
            sqlite_url,
            "chart",
            "--by",
            "day",
            "--since",
            "2026-11-01",
            "--until",
            "2026-11-08",
            "--png",
            str(target),
            "--width",
            "800",
            "--height",
            "400",
        )
    )
    assert f"wrote {target} (png, 800x400 px, 7 bars per series)" in result.stdout
    from PIL import Image

    with Image.open(target) as image:
        assert image.format == "PNG" and image.size == (800, 400)
    assert _bars_in_png(target) == 7


def test_svg_chart_states_its_size_and_holds_one_bar_per_week(sqlite_url, sqlite_writer, tmp_path) -> None:
    w = sqlite_writer
    for day in (2, 9, 16, 23, 30):
        w.add(at=utc(2026, 11, day))
        w.add(at=utc(2026, 11, day), status="denied")
    target = tmp_path / "spend.svg"
    doc = as_json(
        invoke(
            sqlite_url,
            "chart",
            "--by",
            "week",
            *WINDOW,
            "--svg",
            str(target),
            "--width",
            "1200",
            "--height",
            "600",
            "--format",
            "json",
        )
    )
    assert doc["images"] == [{"path": str(target), "format": "svg", "width": 1200, "height": 600, "bars": 6}]
    root = ET.parse(target).getroot()
    to_px = {"pt": Fraction(4, 3), "px": Fraction(1)}  # CSS: 1 px = 0.75 pt
    size = [re.fullmatch(r"([\d.]+)(pt|px)", root.get(side) or "") for side in ("width", "height")]
    assert [Fraction(m.group(1)) * to_px[m.group(2)] for m in size if m] == [1200, 600]
    ids = [el.get("id") or "" for el in root.iter()]
    assert len([i for i in ids if re.fullmatch(r"spend-\d+", i)]) == 6  # the week of 26 Oct is in the window
    assert len([i for i in ids if re.fullmatch(r"denials-\d+", i)]) == 6


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["spend", "--by", "agent,colour"],
        ["spend", "--by", "day,month"],
        ["spend", "--since", "2026-13-01"],
        ["spend", "--since", "yesterday"],
        ["spend", "--since", "2026-11-02", "--until", "2026-11-01"],
        ["spend", "--agent", "nobody"],
        ["spend", "--model", "fal-ai/nope"],
        ["summary", "--period", "fortnight"],
        ["leaderboard", "--top", "0"],
        ["leaderboard", "--by", "colour"],
        ["statement", "--month", "2026-13"],
        ["statement", "--month", "9999-12"],
        ["statement"],
        ["chart", "--since", "9999-12-31T23:59:59-23:59"],
        ["summary", "--until", "0001-01-01T00:00:00+01:00"],
    ],
)
def test_bad_input_exits_2_with_one_line(db_url, month, args) -> None:
    result = invoke(db_url, *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
    as_json_error = invoke(db_url, *args, "--format", "json")
    if "--format" not in " ".join(args):
        assert as_json_error.exit_code == 2
        assert json.loads(as_json_error.stdout)["error"]["code"] in ("invalid_request", "not_found")


@pytest.mark.parametrize(
    "args",
    [
        lambda d: ["export", "--focus", str(d / "missing" / "out.csv")],
        lambda d: ["export", "--focus", str(d)],
        lambda d: ["export", str(d / "out.csv")],
        lambda d: ["export", "--focus", str(d / "out.csv"), "--since", "2026-11-05", "--until", "2026-11-01"],
        lambda d: ["chart", "--png", str(d / "missing" / "c.png")],
        lambda d: ["chart", "--svg", str(d / "c.svg"), "--width", "10"],
        lambda d: ["chart", "--png", str(d / "c.png"), "--agent", "nobody"],
    ],
)
def test_unwritable_output_or_bad_input_writes_nothing(db_url, month, tmp_path, args) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = invoke(db_url, *args(out))
    cannot_write = "cannot write" in result.stderr
    assert result.exit_code == (1 if cannot_write else 2), (result.stdout, result.stderr)
    if cannot_write:
        assert result.stderr.startswith(f"error: cannot write {out}") and "database" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(out.iterdir()) == []
