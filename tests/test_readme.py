"""The README is the user's manual: its examples must stay true.

Every `pixelgov …` line in its shell blocks names a real command and only options that
command accepts; the examples that need no network or FAL key run against a fresh SQLite
ledger and succeed (or exit with the code the text promises); the Python example runs
as written and prints what its comments say.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pixelgov.cli import cli

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = README.read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", TEXT, flags=re.S)


def _pixelgov_lines() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        for raw in block.splitlines():
            line = raw.split("  #")[0].strip()
            line = re.sub(r"^(\S+=\S+\s+)+", "", line)  # FAL_KEY=... prefixes
            for prefix in (".venv/bin/pixelgov ", "pixelgov "):
                if prefix in line:
                    lines.append("pixelgov " + line.split(prefix, 1)[1])
                    break
    return lines


def _resolve(args: list[str]) -> tuple[click.Command, list[str]]:
    """The (sub)command an argv names and the rest of the argv."""
    ctx = click.Context(cli)
    command: click.Command = cli
    rest = list(args)
    while isinstance(command, click.Group) and rest:
        if rest[0].startswith("-"):
            opt = rest.pop(0)
            if opt == "--db":
                rest.pop(0)
            continue
        sub = command.get_command(ctx, rest[0])
        assert sub is not None, f"unknown command {rest[0]!r} in {args}"
        command, rest = sub, rest[1:]
    return command, rest


LINES = _pixelgov_lines()


def test_the_readme_has_examples() -> None:
    assert len(LINES) > 30


@pytest.mark.parametrize("line", LINES)
def test_every_readme_command_exists_and_takes_the_options_it_is_shown_with(line: str) -> None:
    args = shlex.split(line)[1:]
    command, rest = _resolve(args)
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for arg in rest:
        if arg.startswith("--"):
            assert arg.split("=")[0] in known, f"{line}: {command.name} has no option {arg}"


# The examples that need neither the network nor a FAL key, in README order, with the exit code
# the README promises for each (check/authorize of a denied request: 3).
RUNNABLE = [
    ("pixelgov models", 0),
    ("pixelgov price fal-ai/flux/dev", 0),
    ("pixelgov price fal-ai/flux/dev --image-size square_hd --num-images 4 --format json", 0),
    ("pixelgov price fal-ai/flux/schnell --image-size 1280x720", 0),
    ("pixelgov price fal-ai/topaz/upscale/image --input-size 1024x768 --scale 2", 0),
    ("pixelgov run fal-ai/flux/dev --agent demo --prompt 'a red fox in the snow' --dry-run", 0),
    ("pixelgov agents create demo", 0),
    (
        "pixelgov rules create --name demo-daily --type spend-limit --limit 0.05 --period day --agent demo "
        "--alert-at 80",
        0,
    ),
    ("pixelgov rules create --name flux-only --type model-allowlist --models 'fal-ai/flux/*'", 0),
    ("pixelgov check fal-ai/flux-pro --agent demo", 3),
    ("pixelgov agents create marketing-bot --description 'social images'", 0),
    ("pixelgov agents list", 0),
    ("pixelgov agents update marketing-bot --status paused", 0),
    ("pixelgov agents rotate-key marketing-bot", 0),
    ("pixelgov rules create --name bot-daily --type spend-limit --limit 5 --period day --agent marketing-bot", 0),
    ("pixelgov rules create --name burst --type rate-limit --limit 60 --window 1h", 0),
    ("pixelgov rules update bot-daily --limit 10", 0),
    ("pixelgov rules update bot-daily --disable", 0),
    ("pixelgov rules list --format json", 0),
    ("pixelgov rules delete burst", 0),
    ("pixelgov authorize fal-ai/flux/dev --agent bot --prompt 'a fox'", 0),
    ("pixelgov tx list --agent bot --status pending --since 24h --format csv", 0),
    ("pixelgov tx show 1", 0),
    ("pixelgov tx complete 1 --actual 0.0118", 0),
    ("pixelgov tx add-cost 1 -0.002 --note 'FAL credit'", 0),
    ("pixelgov tx add-fact 1 reviewer=alice", 0),
    ("pixelgov tx expire --older-than 60", 0),
    ("pixelgov alerts list", 0),
    ("pixelgov audit --entity rule", 0),
    ("pixelgov db current", 0),
]


def test_the_runnable_examples_are_in_the_readme() -> None:
    shown = {" ".join(shlex.split(line)) for line in LINES}
    for line, _ in RUNNABLE:
        assert " ".join(shlex.split(line)) in shown, f"not in the README any more: {line}"


def test_the_readme_examples_that_need_no_network_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The default ledger, as a new user has it: a SQLite file in the (temporary) user data directory.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    runner = CliRunner()
    for line, expected in RUNNABLE:
        done = runner.invoke(cli, shlex.split(line)[1:], catch_exceptions=False)
        assert done.exit_code == expected, f"{line}: exit {done.exit_code}\n{done.output}"
    assert (tmp_path / "data" / "pixelgov" / "pixelgov.db").exists()


def test_the_python_example_runs_and_prints_what_its_comments_say(tmp_path: Path) -> None:
    example = next(b for b in _blocks("python") if "from ledger import Ledger" in b)
    expected = [
        line.split("# ", 1)[1].strip()
        for line in example.splitlines()
        if line.strip().startswith("print(") and "# " in line
    ]
    done = subprocess.run(
        [sys.executable, "-c", example],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected
