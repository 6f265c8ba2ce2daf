"""Inputs people paste by accident (issue 20): other digits, absurd numbers, calendar edges, a
server that cannot start, files that cannot be written. Each is one clear line on stderr naming the
value, the documented exit code, no traceback, and the ledger as it was (`tx list` unchanged)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from gateway_support import ROOT

from pixelgov.cli import cli

FLUX = "fal-ai/flux/dev"
#: What no CLI module may call on user text: the grammar lives in `pricing.grammar` / `pricing.money`.
LOOSE_NUMBER = re.compile(r"\.isdigit\(\)|\.isnumeric\(\)")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def one_line(result: Result, code: int, *needles: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def tx_list(db: str) -> str:
    result = invoke("--db", db, "tx", "list", "--format", "json")
    assert result.exit_code == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--image-size", "²x768"],
        ["--image-size", "①x768"],
        ["--image-size", "١٠٢٤x٧٦٨"],
        ["--image-size", "9" * 5000 + "x768"],
        ["--num-images", "٢"],
        ["--num-images", "9" * 5000],
        ["--steps", "²"],
        ["--seed", "-1e3"],
        ["--guidance", "1e400"],
        ["--guidance", "٣"],
        ["--params", '{"image_size": {"width": "١٠٢٤", "height": 768}}'],
        ["--params", '{"num_images": "٢"}'],
        ["--params", '{"num_images": 1, "num_images": 4}'],  # which one? neither: refused
    ],
)
@pytest.mark.parametrize("command", ["price", "check"])
def test_numbers_and_sizes_are_ascii_digits_only(sqlite_url: str, command: str, args: list[str]) -> None:
    before = tx_list(sqlite_url)
    extra = ["--agent", "bot"] if command == "check" else []
    one_line(invoke("--db", sqlite_url, command, FLUX, *extra, *args), 2)
    assert tx_list(sqlite_url) == before


@pytest.mark.parametrize("size", ["١٠٢٤x٧٦٨", "²x2", "64x" + "9" * 5000])
def test_an_upscale_input_size_is_ascii_digits_only(size: str) -> None:
    one_line(invoke("price", "fal-ai/topaz/upscale/image", "--input-size", size), 2, "input_size")


@pytest.mark.parametrize("amount", ["١", "1e-3", "+1", "0.0000000001", "²"])
def test_a_settled_amount_is_ascii_digits_only(sqlite_url: str, amount: str) -> None:
    assert invoke("--db", sqlite_url, "authorize", FLUX, "--agent", "bot").exit_code == 0
    before = tx_list(sqlite_url)
    one_line(invoke("--db", sqlite_url, "tx", "complete", "1", "--actual", amount), 2, "actual")
    assert tx_list(sqlite_url) == before


@pytest.mark.parametrize(
    "args",
    [
        ["report", "summary", "--period", "0001-01"],
        ["report", "summary", "--period", "٢٠٢٦-١١"],
        ["report", "statement", "--month", "9999-12"],
        ["report", "summary", "--since", "0001-01-01"],
        ["report", "spend", "--until", "9999-12-31"],
        ["tx", "list", "--since", "1969-12-31"],
        ["tx", "list", "--limit", "٥"],
        ["rules", "create", "--name", "r", "--type", "rate-limit", "--limit", "٥", "--period", "day"],
        ["rules", "create", "--name", "r", "--type", "spend-limit", "--limit", "5", "--window", "٢٤h"],
        [
            "rules",
            "create",
            "--name",
            "r",
            "--type",
            "spend-limit",
            "--limit",
            "5",
            "--period",
            "day",
            "--alert-at",
            "٨٠",
        ],
    ],
)
def test_calendar_edges_and_other_digits_are_refused_in_one_line(sqlite_url: str, args: list[str]) -> None:
    before = tx_list(sqlite_url)
    one_line(invoke("--db", sqlite_url, *args), 2)
    assert tx_list(sqlite_url) == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (lambda d: ["report", "export", "--focus", str(d / "missing" / "x.csv")], "does not exist"),
        (lambda d: ["report", "export", "--focus", str(d)], "is a directory"),
        (lambda d: ["report", "chart", "--svg", str(d / "missing" / "c.svg")], "does not exist"),
        (lambda d: ["report", "chart", "--png", "/proc/c.png"], "cannot write"),
    ],
)
def test_a_file_that_cannot_be_written_is_exit_1_and_says_so(
    sqlite_url: str, tmp_path: Path, args: Any, needle: str
) -> None:
    before = tx_list(sqlite_url)
    result = invoke("--db", sqlite_url, *args(tmp_path))
    one_line(result, 1, "cannot write", needle)
    assert "database" not in result.stderr
    assert tx_list(sqlite_url) == before


# --- `pixelgov serve` start-up ------------------------------------------------------------------


def serve(db: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full = {k: v for k, v in os.environ.items() if k != "FAL_KEY"}
    full.update({"PIXELGOV_DATABASE_URL": db, **(env or {})})
    return subprocess.run(
        [sys.executable, "-c", "from pixelgov.cli import main; main()", "serve", *args],
        env=full,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_on_a_port_in_use_is_one_line_and_exit_1(sqlite_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = serve(sqlite_url, "--port", str(port))
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: cannot start: cannot listen on 127.0.0.1:{port}: the port is in use"
    ]


@pytest.mark.parametrize(
    ("args", "env", "code", "needle"),
    [
        (["--host", "no-such-host.invalid", "--port", "18999"], {}, 1, "does not resolve"),
        (["--port", "٠"], {}, 2, "'٠' is not an integer of ASCII digits"),
        (["--port", "0"], {}, 2, "out of range"),
        (["--port", "65536"], {}, 2, "out of range"),
        (["--workers", "٢"], {}, 2, "--workers"),
        (["--port", "18998"], {"FAL_KEY": "abc\ndef"}, 2, "FAL_KEY"),
        (["--port", "18998"], {"FAL_KEY": "abc def"}, 2, "FAL_KEY"),
        (["--port", "18998"], {"PIXELGOV_MAX_QUEUED": "١٠"}, 2, "PIXELGOV_MAX_QUEUED"),
    ],
)
def test_serve_refuses_what_it_cannot_start_with_in_one_line(
    sqlite_url: str, args: list[str], env: dict[str, str], code: int, needle: str
) -> None:
    done = serve(sqlite_url, *args, env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert "abc" not in done.stderr  # the key itself is never shown


def test_serve_refuses_a_certificate_that_is_not_one(sqlite_url: str, tmp_path: Path) -> None:
    from gateway_support import self_signed_cert

    cert, key = self_signed_cert(tmp_path)
    (tmp_path / "other").mkdir()
    other_cert, _ = self_signed_cert(tmp_path / "other")  # a certificate whose key is not `key`
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    for certfile, keyfile in ((str(junk), key), (cert, str(junk)), (other_cert, key)):
        done = serve(sqlite_url, "--port", "18997", "--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile))
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and "--ssl-certfile" in lines[0], done.stderr


def test_no_module_reads_numbers_with_isdigit() -> None:
    """The grammar is in one place: nothing else calls str.isdigit/isnumeric on user text."""
    offenders = []
    for package in ("pricing", "ledger", "pixelgov"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "grammar.py":
                continue  # the grammar's own docstring says why
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if LOOSE_NUMBER.search(line) and "isascii()" not in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
