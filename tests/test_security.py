"""Secrets and hostile inputs (SPEC §4, §6): the FAL key travels only in the upstream's
`Authorization: Key …` header — never in the ledger (every byte of the SQLite file and its
WAL, every row of every PostgreSQL table), the CLI's output or the logs, whatever way a run
ends; secret-like request parameters are not stored; agent API keys are stored hashed;
and reading an upscale input's header is bounded in bytes, time and redirects."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from ledger.admin import Admin
from ledger.cli import cli
from ledger.db import open_ledger
from ledger.errors import InvalidRequest, UpstreamError
from ledger.governor import Governor
from ledger.imageprobe import probe_size
from ledger.quoting import quote_body
from ledger.rules import RuleSpec
from ledger.runner import run_governed
from ledger.upstream import Upstream, UpstreamConfig
from pricing import active_book

sys.path.insert(0, str(Path(__file__).parent))

DEV = "fal-ai/flux/dev"
UPSCALE = "fal-ai/topaz/upscale/image"
BOUND = 10.0  # seconds: far below the hostile server's 60 s stream; a bound, not a performance figure


@pytest.fixture
def fal_key() -> str:
    return "falkey-" + secrets.token_hex(24)


def invoke(db_url: str, *args: str, env: dict[str, str | None] | None = None) -> Result:
    active_book.cache_clear()
    return CliRunner().invoke(cli, ["--db", db_url, *args], env=env)


def ledger_text(db_url: str) -> bytes:
    """Everything the ledger holds, as bytes: the SQLite files, or every PostgreSQL row as text."""
    if db_url.startswith("sqlite"):
        path = Path(db_url.split(":///", 1)[1])
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        return b"".join(f.read_bytes() for f in files if f.exists())
    engine = open_ledger(db_url)
    chunks: list[str] = []
    with engine.connect() as conn:
        tables = conn.execute(text("SELECT table_name FROM information_schema.tables "
                                   "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")).scalars().all()
        assert "transactions" in tables and "facts" in tables
        for table in tables:
            chunks += conn.execute(text(f'SELECT t::text FROM "{table}" t')).scalars().all()
    return "\n".join(chunks).encode()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the FAL key -----------------------------------------------------------------------------

def test_the_fal_key_appears_only_in_the_upstream_authorization_header(db_url, fake_fal, fal_key, caplog,
                                                                      capfd, tmp_path):
    logging.basicConfig(level=logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    admin = Admin(open_ledger(db_url))
    admin.create_agent("capped")
    admin.create_rule(RuleSpec(name="cap", type="request-cap", limit="0.001", agent="capped",
                               given={"name", "type", "limit", "agent"}))
    env = {"FAL_KEY": fal_key, "PIXELGOV_UPSTREAM_URL": fake_fal.url}
    request = ("--prompt", "a fox")
    outputs: list[str] = []
    exits: list[int] = []

    def run(*args: str, mode: tuple[str, dict[str, Any]] | None = None, upstream: str | None = None) -> None:
        fake_fal.set_mode(mode[0], **mode[1]) if mode else fake_fal.set_mode(None)
        result = invoke(db_url, "run", DEV, *args, env={**env, **({"PIXELGOV_UPSTREAM_URL": upstream}
                                                                   if upstream else {})})
        outputs.extend([result.stdout, result.stderr, repr(result.exception)])
        exits.append(result.exit_code)

    for fmt in ("table", "json"):
        run("--agent", "bot", *request, "--format", fmt, "--out", str(tmp_path / fmt))  # completed
        run("--agent", "bot", *request, "--format", fmt, "--idempotency-key", f"k-{fmt}")  # completed
        run("--agent", "bot", *request, "--format", fmt, "--idempotency-key", f"k-{fmt}")  # replayed
        run("--agent", "bot", *request, "--format", fmt,
            mode=("status", {"status": 401, "detail": "Invalid API key"}))  # failed
        run("--agent", "bot", *request, "--format", fmt, mode=("status", {"status": 422}))  # failed
        run("--agent", "bot", *request, "--format", fmt, mode=("drop", {}))  # unknown
        run("--agent", "bot", *request, "--format", fmt, mode=("malformed", {}))  # unknown
        run("--agent", "bot", *request, "--format", fmt, "--timeout", "0.2", mode=("slow", {"delay": 3}))  # unknown
        run("--agent", "capped", *request, "--format", fmt)  # denied
        run("--agent", "bot", *request, "--format", fmt, "--dry-run")
    # unreachable, and a bad key, through the runner itself
    gov = Governor(open_ledger(db_url))
    body = {"prompt": "a fox"}
    config = UpstreamConfig(url=f"http://127.0.0.1:{closed_port()}", timeout=5, retries=1, backoff=0.01)
    with Upstream(config) as upstream, pytest.raises(UpstreamError) as raised:
        run_governed(gov, upstream, agent="bot", quote=quote_body(DEV, body), body=body, fal_key=fal_key)
    outputs.append(str(raised.value.to_json()))
    with Upstream(UpstreamConfig(url=fake_fal.url)) as upstream, pytest.raises(InvalidRequest) as bad:
        run_governed(gov, upstream, agent="bot", quote=quote_body(DEV, body), body=body,
                     fal_key=f"{fal_key}\nX-Leak: 1")
    outputs.append(str(bad.value.to_json()))
    for tx in Governor(open_ledger(db_url)).transactions(limit=1000):
        for fmt in ("table", "json"):
            shown = invoke(db_url, "tx", "show", str(tx["id"]), "--format", fmt)
            outputs.append(shown.output)

    assert exits == [0, 0, 0, 1, 1, 1, 1, 1, 3, 0] * 2
    statuses = {tx["status"] for tx in Governor(open_ledger(db_url)).transactions(limit=1000)}
    assert statuses == {"completed", "failed", "unknown", "denied"}
    # Where the key must be: every request the upstream received carried it, exactly so.
    assert fake_fal.requests and fake_fal.count() == len(fake_fal.requests)
    for sent in fake_fal.requests:
        assert sent.headers["authorization"] == f"Key {fal_key}"
        others = {k: v for k, v in sent.headers.items() if k != "authorization"}
        assert fal_key not in json.dumps(others) and fal_key.encode() not in sent.raw
    # Where it must not be.
    captured = capfd.readouterr()
    assert fal_key not in "\n".join(outputs) + captured.out + captured.err
    assert {r.name.split(".")[0] for r in caplog.records} >= {"httpx", "httpcore"}  # logging really was on
    for record in caplog.records:
        assert fal_key not in record.getMessage()
        assert fal_key not in repr(record.args) and fal_key not in (record.exc_text or "")
    assert fal_key not in caplog.text
    assert fal_key.encode() not in ledger_text(db_url)


def test_secret_like_request_parameters_are_forwarded_but_never_stored(db_url, fake_fal, fal_key):
    hidden = {name: f"{name}-{secrets.token_hex(12)}" for name in
              ("api_key", "token", "client_secret", "password", "Authorization", "access_token")}
    params = json.dumps({"prompt": "a fox", **hidden})
    result = invoke(db_url, "run", DEV, "--agent", "bot", "--params", params, "--format", "json",
                    env={"FAL_KEY": fal_key, "PIXELGOV_UPSTREAM_URL": fake_fal.url})
    assert result.exit_code == 0, result.output
    tx_id = json.loads(result.stdout)["transaction"]["id"]
    assert fake_fal.requests[0].body == {"prompt": "a fox", **hidden}  # passed through untouched
    shown = invoke(db_url, "tx", "show", str(tx_id), "--format", "json")
    assert json.loads(shown.stdout)["request"] == {"prompt": "a fox"}
    stored = ledger_text(db_url)
    for value in hidden.values():
        assert value.encode() not in stored


def test_secret_like_parameters_nested_in_the_request_are_not_stored(sqlite_url, fake_fal, fal_key):
    token = "nested-" + secrets.token_hex(12)
    params = json.dumps({"prompt": "a fox", "loras": [{"path": "https://x.example/l.safetensors", "token": token}]})
    result = invoke(sqlite_url, "run", DEV, "--agent", "bot", "--params", params,
                    env={"FAL_KEY": fal_key, "PIXELGOV_UPSTREAM_URL": fake_fal.url})
    assert result.exit_code == 0, result.output
    assert token.encode() not in ledger_text(sqlite_url)


def test_agent_api_keys_are_stored_only_as_hashes(db_url):
    created = invoke(db_url, "agents", "create", "gateway-bot", "--format", "json")
    assert created.exit_code == 0, created.output
    first = json.loads(created.stdout)["api_key"]
    rotated = invoke(db_url, "agents", "rotate-key", "gateway-bot", "--format", "json")
    assert rotated.exit_code == 0, rotated.output
    second = json.loads(rotated.stdout)["api_key"]
    assert first != second and len(second) >= 32
    shown = invoke(db_url, "agents", "show", "gateway-bot", "--format", "json")
    assert first not in shown.output and second not in shown.output
    stored = ledger_text(db_url)
    assert first.encode() not in stored and second.encode() not in stored
    assert hashlib.sha256(second.encode()).hexdigest().encode() in stored
    admin = Admin(open_ledger(db_url))
    assert admin.agent_by_api_key(second)["name"] == "gateway-bot"
    assert admin.agent_by_api_key(first) is None  # a rotated-away key no longer works


# --- bounded reads of an upscale input --------------------------------------------------------

def test_a_header_that_never_ends_is_refused_within_bounds(fake_fal):
    started = time.monotonic()
    with pytest.raises(InvalidRequest) as raised:
        probe_size(f"{fake_fal.url}/fixtures/big-header")
    assert time.monotonic() - started < BOUND
    assert raised.value.field == "image_url"
    assert "--input-size" in raised.value.message  # refused, never guessed


@pytest.mark.parametrize("path", ["/fixtures/redirect-loop", "/fixtures/redirect/4/64x48.png",
                                  "/fixtures/redirect/50/64x48.png"])
def test_redirect_loops_and_long_chains_are_refused_quickly(fake_fal, path):
    started = time.monotonic()
    with pytest.raises(InvalidRequest) as raised:
        probe_size(fake_fal.url + path)
    assert time.monotonic() - started < BOUND
    assert "more than 3 redirects" in raised.value.message


def test_a_short_redirect_chain_is_followed(fake_fal):
    assert probe_size(f"{fake_fal.url}/fixtures/redirect/3/64x48.png") == (64, 48)


def test_an_upscale_of_a_hostile_image_url_is_refused_before_anything_is_authorized(sqlite_url, fake_fal, fal_key):
    started = time.monotonic()
    result = invoke(sqlite_url, "run", UPSCALE, "--agent", "bot", "--image-url",
                    f"{fake_fal.url}/fixtures/big-header", "--format", "json",
                    env={"FAL_KEY": fal_key, "PIXELGOV_UPSTREAM_URL": fake_fal.url})
    assert time.monotonic() - started < BOUND
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["code"] == "invalid_request"
    assert fake_fal.count() == 0
    assert Governor(open_ledger(sqlite_url)).transactions() == []
