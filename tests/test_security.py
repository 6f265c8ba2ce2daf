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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from conftest import scratch_engine
from sqlalchemy import text

from ledger import Ledger, RuleSpec, Settings, TxStatus
from ledger.errors import InvalidRequest, UpstreamError
from ledger.forward.imageprobe import probe_size
from ledger.forward.runner import run_governed
from ledger.forward.upstream import Upstream, UpstreamConfig
from pixelgov.cli import cli

sys.path.insert(0, str(Path(__file__).parent))

DEV = "fal-ai/flux/dev"
UPSCALE = "fal-ai/topaz/upscale/image"
BOUND = 10.0  # seconds: far below the hostile server's 60 s stream; a bound, not a performance figure


@pytest.fixture
def fal_key() -> str:
    return "falkey-" + secrets.token_hex(24)


def invoke(db_url: str, *args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, ["--db", db_url, *args], env=env)


@contextmanager
def opened(db_url: str) -> Iterator[Ledger]:
    with Ledger(db_url, settings=Settings(hold_ttl=900, auto_create_agents=True)) as ledger:
        yield ledger


def ledger_text(db_url: str) -> bytes:
    """Everything the ledger holds, as bytes: the SQLite files, or every PostgreSQL row as text."""
    if db_url.startswith("sqlite"):
        path = Path(db_url.split(":///", 1)[1])
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        return b"".join(f.read_bytes() for f in files if f.exists())
    chunks: list[str] = []
    with scratch_engine(db_url) as engine, engine.connect() as conn:
        tables = (
            conn.execute(
                text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
                )
            )
            .scalars()
            .all()
        )
        assert "transactions" in tables and "facts" in tables
        for table in tables:
            chunks += conn.execute(text(f'SELECT t::text FROM "{table}" t')).scalars().all()
    return "\n".join(chunks).encode()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the FAL key -----------------------------------------------------------------------------


def test_the_fal_key_appears_only_in_the_upstream_authorization_header(
    db_url, fake_fal, fal_key, caplog, capfd, tmp_path
):
    logging.basicConfig(level=logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    with opened(db_url) as ledger:
        ledger.admin.create_agent("capped")
        ledger.admin.create_rule(
            RuleSpec(
                name="cap", type="request-cap", limit="0.001", agent="capped", given={"name", "type", "limit", "agent"}
            )
        )
    env = {"FAL_KEY": fal_key, "PIXELGOV_UPSTREAM_URL": fake_fal.url}
    request = ("--prompt", "a fox")
    outputs: list[str] = []
    exits: list[int] = []

    def run(*args: str, mode: tuple[str, dict[str, Any]] | None = None, upstream: str | None = None) -> None:
        fake_fal.set_mode(mode[0], **mode[1]) if mode else fake_fal.set_mode(None)
        result = invoke(
            db_url, "run", DEV, *args, env={**env, **({"PIXELGOV_UPSTREAM_URL": upstream} if upstream else {})}
        )
        outputs.extend([result.stdout, result.stderr, repr(result.exception)])
        exits.append(result.exit_code)

    for fmt in ("table", "json"):
        run("--agent", "bot", *request, "--format", fmt, "--out", str(tmp_path / fmt))  # completed
        run("--agent", "bot", *request, "--format", fmt, "--idempotency-key", f"k-{fmt}")  # completed
        run("--agent", "bot", *request, "--format", fmt, "--idempotency-key", f"k-{fmt}")  # replayed
        run(
            "--agent", "bot", *request, "--format", fmt, mode=("status", {"status": 401, "detail": "Invalid API key"})
        )  # failed
        run("--agent", "bot", *request, "--format", fmt, mode=("status", {"status": 422}))  # failed
        run("--agent", "bot", *request, "--format", fmt, mode=("drop", {}))  # unknown
        run("--agent", "bot", *request, "--format", fmt, mode=("malformed", {}))  # unknown
        run("--agent", "bot", *request, "--format", fmt, "--timeout", "0.2", mode=("slow", {"delay": 3}))  # unknown
        run("--agent", "capped", *request, "--format", fmt)  # denied
        run("--agent", "bot", *request, "--format", fmt, "--dry-run")
    # unreachable, and a bad key, through the runner itself
    body = {"prompt": "a fox"}
    with opened(db_url) as ledger:
        gov = ledger.governor
        config = UpstreamConfig(url=f"http://127.0.0.1:{closed_port()}", timeout=5, retries=1, backoff=0.01)
        with Upstream(config) as upstream, pytest.raises(UpstreamError) as raised:
            run_governed(gov, upstream, agent="bot", quote=ledger.quote(DEV, body), body=body, fal_key=fal_key)
        outputs.append(json.dumps(raised.value.to_json()))
        with Upstream(UpstreamConfig(url=fake_fal.url)) as upstream, pytest.raises(InvalidRequest) as bad:
            run_governed(
                gov, upstream, agent="bot", quote=ledger.quote(DEV, body), body=body, fal_key=f"{fal_key}\nX-Leak: 1"
            )
        outputs.append(json.dumps(bad.value.to_json()))
        every = gov.transactions(limit=1000)
        outputs += [json.dumps(gov.transaction(tx.id, detail=True).to_json()) for tx in every]
    for tx in every:
        for fmt in ("table", "json"):
            shown = invoke(db_url, "tx", "show", str(tx.id), "--format", fmt)
            outputs.append(shown.output)

    assert exits == [0, 0, 0, 1, 1, 1, 1, 1, 3, 0] * 2
    assert {tx.status for tx in every} == {TxStatus.completed, TxStatus.failed, TxStatus.unknown, TxStatus.denied}
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


# --- a hostile upstream that echoes the key back ------------------------------------------------


class _Echo(BaseHTTPRequestHandler):
    """Answers every POST by echoing the request's Authorization header back, in the way its
    server's `mode` says: in a JSON error detail, in an HTML error page, in the headers of a
    success, or in a success's JSON body (an image URL with the key as its password)."""

    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        auth = self.headers.get("Authorization", "")
        key = auth.removeprefix("Key ")
        mode = self.server.mode
        headers = {"x-fal-request-id": "req-1"}
        if mode == "error-detail":
            status, body = 401, json.dumps({"detail": f"invalid credentials: Authorization: {auth}"}).encode()
        elif mode == "error-html":
            status, body = 502, f"<html><body>Bad gateway for {auth}</body></html>".encode()
        elif mode == "answer-headers":
            status = 200
            body = json.dumps(
                {"images": [{"url": "http://127.0.0.1:9/files/a.png", "width": 1024, "height": 768}]}
            ).encode()
            headers = {"x-fal-request-id": auth, "x-fal-billable-units": key}
        else:  # answer-body
            status = 200
            body = json.dumps(
                {
                    "images": [{"url": f"http://user:{key}@127.0.0.1:9/a.png", "width": 1024, "height": 768}],
                    "echo": {"authorization": auth},
                }
            ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html" if mode == "error-html" else "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def echo_server() -> Iterator[Any]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    server.mode = "error-detail"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mode", ["error-detail", "error-html", "answer-headers", "answer-body"])
def test_an_upstream_that_echoes_the_key_back_never_gets_it_printed_logged_or_stored(
    db_url, echo_server, fal_key, mode, caplog, capfd
):
    """Whatever comes back from the upstream (bodies, headers, URLs with credentials) is scrubbed of
    the key before it is printed, logged or stored (issue 8)."""
    caplog.set_level(logging.DEBUG)
    echo_server.mode = mode
    outputs: list[str] = []
    for fmt in ("table", "json"):
        result = invoke(
            db_url,
            "run",
            DEV,
            "--agent",
            "bot",
            "--prompt",
            "a fox",
            "--format",
            fmt,
            env={"FAL_KEY": fal_key, "PIXELGOV_UPSTREAM_URL": echo_server.url},
        )
        outputs += [result.stdout, result.stderr, repr(result.exception)]
        assert result.exit_code == (0 if mode.startswith("answer") else 1), result.output
    with opened(db_url) as ledger:
        every = ledger.governor.transactions(limit=10)
        assert len(every) == 2
        expected = TxStatus.completed if mode.startswith("answer") else TxStatus.failed
        assert {tx.status for tx in every} == {expected}
        outputs += [json.dumps(ledger.governor.transaction(tx.id, detail=True).to_json()) for tx in every]
    for tx in every:
        outputs.append(invoke(db_url, "tx", "show", str(tx.id), "--format", "json").output)
    captured = capfd.readouterr()
    leaks = [
        where
        for where, found in (
            ("output", fal_key in "\n".join(outputs) + captured.out + captured.err),
            ("logs", fal_key in caplog.text),
            ("ledger", fal_key.encode() in ledger_text(db_url)),
        )
        if found
    ]
    assert leaks == [], f"the FAL key echoed by the upstream leaked into: {', '.join(leaks)}"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (httpx.ConnectError, TxStatus.failed),  # nothing sent: unreachable
        (httpx.ReadError, TxStatus.unknown),  # sent, then the connection broke
        (httpx.RemoteProtocolError, TxStatus.unknown),
    ],
)
def test_a_transport_error_that_quotes_the_key_is_masked(db_url, fal_key, error, kind):
    """Transport errors may quote the request (its Authorization header): the key is masked in
    the error, its JSON and the transaction's stored outcome."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise error(f"failed sending {request.headers['authorization']!r} to {request.url}", request=request)

    body = {"prompt": "a fox"}
    config = UpstreamConfig(url="http://upstream.invalid", timeout=5, retries=1, backoff=0.01)
    with opened(db_url) as ledger, Upstream(config, transport=httpx.MockTransport(handler)) as upstream:
        with pytest.raises(UpstreamError) as raised:
            run_governed(
                ledger.governor, upstream, agent="bot", quote=ledger.quote(DEV, body), body=body, fal_key=fal_key
            )
        tx = ledger.governor.transaction(raised.value.details["transaction"].id, detail=True)
    assert tx.status == kind
    assert "***" in raised.value.message  # the quoted header is there, masked
    assert fal_key not in raised.value.message
    assert fal_key not in json.dumps(raised.value.to_json())
    assert tx.outcome is not None and fal_key not in tx.outcome
    assert fal_key.encode() not in ledger_text(db_url)


def test_secret_like_request_parameters_are_forwarded_but_never_stored(db_url, fake_fal, fal_key):
    hidden = {
        name: f"{name}-{secrets.token_hex(12)}"
        for name in ("api_key", "token", "client_secret", "password", "Authorization", "access_token")
    }
    params = json.dumps({"prompt": "a fox", **hidden})
    result = invoke(
        db_url,
        "run",
        DEV,
        "--agent",
        "bot",
        "--params",
        params,
        "--format",
        "json",
        env={"FAL_KEY": fal_key, "PIXELGOV_UPSTREAM_URL": fake_fal.url},
    )
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
    result = invoke(
        sqlite_url,
        "run",
        DEV,
        "--agent",
        "bot",
        "--params",
        params,
        env={"FAL_KEY": fal_key, "PIXELGOV_UPSTREAM_URL": fake_fal.url},
    )
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
    with opened(db_url) as ledger:
        found = ledger.admin.agent_by_api_key(second)
        assert found is not None and found.name == "gateway-bot"
        assert found.api_key is None and found.has_api_key  # the key is shown once, never read back
        assert ledger.admin.agent_by_api_key(first) is None  # a rotated-away key no longer works


# --- bounded reads of an upscale input --------------------------------------------------------


def test_a_header_that_never_ends_is_refused_within_bounds(fake_fal):
    started = time.monotonic()
    with pytest.raises(InvalidRequest) as raised:
        probe_size(f"{fake_fal.url}/fixtures/big-header")
    assert time.monotonic() - started < BOUND
    assert raised.value.field == "image_url"
    assert raised.value.details.get("reason") == "input_size_unknown"  # refused, never guessed
    assert "input_size" in raised.value.message


@pytest.mark.parametrize(
    "path", ["/fixtures/redirect-loop", "/fixtures/redirect/4/64x48.png", "/fixtures/redirect/50/64x48.png"]
)
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
    result = invoke(
        sqlite_url,
        "run",
        UPSCALE,
        "--agent",
        "bot",
        "--image-url",
        f"{fake_fal.url}/fixtures/big-header",
        "--format",
        "json",
        env={"FAL_KEY": fal_key, "PIXELGOV_UPSTREAM_URL": fake_fal.url},
    )
    assert time.monotonic() - started < BOUND
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["code"] == "invalid_request"
    assert fake_fal.count() == 0
    with opened(sqlite_url) as ledger:
        assert ledger.governor.transactions() == []
