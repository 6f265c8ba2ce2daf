"""Property-based fuzzing of the whole command line (issue 8, "Tests that hunt").

Hypothesis draws argv for every command from `fuzz_grammar.py` (each option's valid
values mixed with hostile ones) and runs it in-process with click's `CliRunner` against a
real SQLite ledger, migrated once per module and seeded (through the CLI itself) with
agents, rules and transactions in every state, so `tx`/`rules`/`agents` commands hit real
rows. Runs go only to 127.0.0.1: a fake upstream in this module (answers, refusals,
dropped connections, absurd sizes, a body echoing the request headers) or a closed port;
any other host name is refused by a guard on `socket.getaddrinfo`.

For every example (SPEC §5, issue 8):
- no traceback (`result.exception` is None or SystemExit; no "Traceback" in the output);
- exit code in {0, 1, 2, 3}, and 3 only from check/authorize/run;
- on failure exactly one stderr line (alert lines aside) and nothing on stdout, or with
  `--format json` one strict JSON document `{"error": {"code", "message"}}` on stdout,
  its code one of SPEC §5's and its exit code the code's;
- JSON output (success or error) is strict JSON (no bare NaN/Infinity);
- the ledger (every row of every table) is unchanged when the exit code is not 0 — except
  the writes SPEC §4/§6 document for a failure: a `denied` transaction (exit 3) and a run's
  `failed`/`unknown` transaction (exit 1) — and unchanged by read-only commands whatever
  their exit code (price, check, run --dry-run, lists, shows);
- no rule counter ever goes negative (a credit must not raise a budget's headroom above its limit);
- the FAL key, a URL's password and secret-looking request fields are never printed or stored;
- an unusable `--db` is never a success; a name with a control character is never accepted;
  `--params` with NaN/Infinity/overflowing numbers or absurd nesting is never accepted;
- `check` predicts `authorize` (the same exit code for the same request: one validator).

Every violation of every example is collected; each test fails at its end with the distinct
failure classes (the shortest argv of each). Knobs (environment):
  PIXELGOV_FUZZ_EXAMPLES=5000   total examples over all commands (default 500: CI, well under a minute)
  PIXELGOV_FUZZ_SEED=N          a different (still reproducible) sequence; default derandomized
  PIXELGOV_FUZZ_LOG=path.jsonl  append every violating example, in full
  PIXELGOV_FUZZ_SHRINK=1        raise at the first violation so Hypothesis shrinks it
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import ipaddress
import json
import os
import socket
import sqlite3
import struct
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

import fuzz_grammar as g

TOTAL_EXAMPLES = int(os.environ.get("PIXELGOV_FUZZ_EXAMPLES", "500"))
FUZZ_SEED = os.environ.get("PIXELGOV_FUZZ_SEED")
FUZZ_LOG = os.environ.get("PIXELGOV_FUZZ_LOG")
SHRINK = bool(os.environ.get("PIXELGOV_FUZZ_SHRINK"))

#: SPEC §5's error codes and their exit codes (`conflict`: an idempotent retry in flight is exit 1;
#: a state conflict may be reported as bad input), and the ones pixelgov adds: an output file that
#: cannot be written (`cannot_write`, exit 1), a server that cannot start (`cannot_start`, exit 1).
ERROR_EXITS: dict[str, set[int]] = {
    "invalid_request": {2},
    "model_not_found": {2},
    "image_too_large": {2},
    "not_found": {2},
    "denied": {3},
    "rate_limited": {3},
    "upstream_error": {1},
    "conflict": {1, 2},
    "database_unavailable": {1},
    "schema_behind": {1},
    "cannot_write": {1},
    "cannot_start": {1},
}
PROJECT_DIRS = ("ledger", "pixelgov", "pricing", "migrations")


# --- helpers ----------------------------------------------------------------------------------------


class _NonStrict(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonStrict(f"bare {name} is not JSON")


def strict_json(text: str) -> Any:
    """One JSON document, strictly: bare NaN/Infinity refused, nothing after it."""
    return json.loads(text, parse_constant=_refuse_constant)


def make_runner() -> CliRunner:
    """stdout and stderr apart: click 8.1 needs mix_stderr=False; click ≥ 8.2 always keeps stderr."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


def dump(path: Path) -> dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
    """Every row of every table of the SQLite file (columns, rows sorted), read by sqlite3 itself."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        out = {}
        for table in tables:
            cur = conn.execute(f'SELECT * FROM "{table}"')
            cols = tuple(d[0] for d in cur.description)
            out[table] = (cols, sorted(cur.fetchall(), key=repr))
        return out
    finally:
        conn.close()


def copy_db(src: Path, dst: Path) -> None:
    """SQLite's online backup: the destination's other connections (the product's pool) see the copy."""
    a = sqlite3.connect(str(src), timeout=10)
    b = sqlite3.connect(str(dst), timeout=10)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()


def table_diff(before: dict, after: dict) -> dict[str, tuple[list[dict], list[dict]]]:
    """table -> (rows removed, rows added), rows as {column: value}."""
    out = {}
    for table in sorted(set(before) | set(after)):
        cols_b, rows_b = before.get(table, ((), []))
        cols_a, rows_a = after.get(table, ((), []))
        if cols_b != cols_a:
            out[table] = ([dict(zip(cols_b, r)) for r in rows_b], [dict(zip(cols_a, r)) for r in rows_a])
            continue
        rest = list(rows_a)
        removed = []
        for r in rows_b:
            if r in rest:
                rest.remove(r)
            else:
                removed.append(r)
        if removed or rest:
            out[table] = ([dict(zip(cols_b, r)) for r in removed], [dict(zip(cols_a, r)) for r in rest])
    return out


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
        + b"\x00" * 64
    )


def bmp(width: int, height: int) -> bytes:
    header = b"BM" + struct.pack("<IHHI", 70, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return header + info + b"\x00" * 16


def command_formats(cli: click.Group) -> dict[tuple[str, ...], tuple[str, ...]]:
    """The --format choices of every command, read from the click objects themselves."""
    out: dict[tuple[str, ...], tuple[str, ...]] = {}
    ctx = click.Context(cli)

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                try:
                    sub = cmd.get_command(ctx, name)
                except Exception:  # a command that cannot load: its fuzz test reports it
                    continue
                if sub is not None:
                    walk(sub, (*path, name))
            return
        for param in cmd.params:
            if "--format" in getattr(param, "opts", ()) and isinstance(param.type, click.Choice):
                out[path] = tuple(str(c) for c in param.type.choices)

    walk(cli, ())
    return out


# --- the fake upstream (127.0.0.1 only) ---------------------------------------------------------------

PNG_1024x768 = png(1024, 768)
DATA_URI = "data:image/png;base64," + base64.b64encode(PNG_1024x768).decode()


class _Upstream(BaseHTTPRequestHandler):
    """POST /{mode}/{endpoint}: ok | 500 | drop | echo | huge | nan | notjson | empty.
    GET /png, /huge.png, /bin: image headers for an upscale's input."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # stderr is the CLI's, under CliRunner
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/png"):
            self._send(200, PNG_1024x768, "image/png")
        elif self.path.startswith("/huge.png"):
            self._send(200, png(2**31 - 1, 2**31 - 1), "image/png")
        elif self.path.startswith("/bin"):
            self._send(200, bytes(range(256)), "application/octet-stream")
        else:
            self._send(404, b'{"detail": "not found"}')

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        mode = self.path.strip("/").split("/", 1)[0]
        try:
            body = json.loads(raw or b"{}")
            n = body.get("num_images") if isinstance(body, dict) else 1
            n = n if isinstance(n, int) and 1 <= n <= 4 else 1
        except ValueError:
            n = 1
        image = {"url": DATA_URI, "width": 1024, "height": 768, "content_type": "image/png"}
        if mode == "ok":
            doc = {"images": [image] * n, "image": image, "seed": 1, "has_nsfw_concepts": [False] * n}
            self._send(200, json.dumps(doc).encode(), x_fal_request_id="req-fuzz", x_fal_billable_units="0.79")
        elif mode == "empty":
            self._send(200, b"{}")
        elif mode == "huge":
            big = {**image, "width": 10**9, "height": 10**9}
            self._send(200, json.dumps({"images": [big], "image": big}).encode())
        elif mode == "nan":
            self._send(200, b'{"images": [{"url": "%s", "width": NaN, "height": Infinity}]}' % DATA_URI.encode())
        elif mode == "notjson":
            self._send(200, b"<html>hello</html>", "text/html")
        elif mode == "echo":  # a hostile upstream echoing the request, Authorization header included
            echoed = "; ".join(f"{k}: {v}" for k, v in self.headers.items())
            self._send(
                400,
                json.dumps({"detail": f"bad request, you sent {echoed}"}).encode(),
                x_echo=self.headers.get("Authorization", ""),
            )
        elif mode == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self._send(500, b'{"detail": "internal error (fuzz upstream)"}')


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the network guard -----------------------------------------------------------------------------

_LOCAL_NAMES = {"localhost", "", None}


def _is_local(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).strip("[]")).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def network_guard(blocked: list[str]) -> Iterator[None]:
    """Name resolution of anything but loopback fails (as offline) and is recorded."""
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_local(host):
            blocked.append(repr(host))
            raise socket.gaierror(socket.EAI_NONAME, f"blocked by the fuzz test: {host!r} is not 127.0.0.1")
        return real(host, *args, **kwargs)

    socket.getaddrinfo = guarded  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.getaddrinfo = real  # type: ignore[assignment]


# --- the world: files, servers, the seeded ledger ---------------------------------------------------


@dataclass
class Failure:
    command: str
    kind: str
    signature: str
    argv: list[str]
    env: dict[str, Any]
    exit_code: int
    stdout: str
    stderr: str
    exception: str
    details: list[str] = field(default_factory=list)


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ledger = root / "ledger.db"
        self.url = f"sqlite:///{self.ledger}"
        self.template = root / "template.db"
        self.failures: list[Failure] = []
        self.seed_problems: list[str] = []
        self.blocked: list[str] = []
        self.examples = 0
        self.exits: dict[str, dict[int, int]] = {}  # command -> exit code -> examples
        self.alias = 0
        self.fx: g.Fixtures | None = None
        self.cli: click.Group = importlib.import_module("pixelgov.cli").cli
        self._files()
        self.port_closed = closed_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.upstream = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.base_env: dict[str, str | None] = {
            "HOME": str(root / "home"),
            "XDG_DATA_HOME": str(root / "xdg"),
            "XDG_CONFIG_HOME": str(root / "xdgc"),
            "PIXELGOV_DATABASE_URL": None,
            "PIXELGOV_UPSTREAM_URL": f"http://127.0.0.1:{self.port_closed}",
            "PIXELGOV_UPSTREAM_TIMEOUT": "5",
            "PIXELGOV_DB_TIMEOUT": "5",
            "PIXELGOV_HOLD_TTL": "86400",
            "PIXELGOV_AUTO_CREATE_AGENTS": None,
            "PIXELGOV_PRICE_BOOK": None,
            "PIXELGOV_ADMIN_TOKEN": None,
            "FAL_KEY": None,
            "NO_COLOR": "1",
            "COLUMNS": "100",
        }

    def _files(self) -> None:
        r = self.root
        f: dict[str, str] = {}

        def put(name: str, data: bytes | str, filename: str | None = None) -> None:
            path = r / "files" / (filename or name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data.encode() if isinstance(data, str) else data)
            f[name] = str(path)

        (r / "files" / "a-directory").mkdir(parents=True)
        f["dir"] = str(r / "files" / "a-directory")
        put("binary", bytes(range(256)) * 4 + b"\xff\xfe\x00{")
        put("deep", "[" * 100_000 + "]" * 100_000, "deep.json")
        put("deep_obj", '{"a":' * 100_000 + "1" + "}" * 100_000, "deep_obj.json")
        put("nan_json", '{"prompt": "x", "extra": NaN, "guidance_scale": Infinity}', "nan.json")
        f["missing"] = str(r / "files" / "missing.json")
        put("empty", b"", "empty.json")
        put("utf16", '{"prompt": "x"}'.encode("utf-16"), "utf16.json")
        put("latin1", '{"prompt": "caf\xe9"}'.encode("latin-1"), "latin1.json")
        put("params_ok", '{"prompt": "a fox", "image_size": "square_hd"}', "params.json")
        put("regular_file", "not a directory")
        f["under_file"] = f["regular_file"] + "/sub.db"
        put("png", PNG_1024x768, "in.png")
        f["png_b64"] = base64.b64encode(PNG_1024x768).decode()
        put("png_huge", png(2**31 - 1, 2**31 - 1), "huge.png")
        put("png_zero", png(0, 768), "zero.png")
        put("png_truncated", PNG_1024x768[:20], "truncated.png")
        put("bmp_negative", bmp(-1024, 768), "negative.bmp")
        image = {"url": "https://example.invalid/a.png", "width": 1024, "height": 768, "content_type": "image/png"}
        put("response_ok", json.dumps({"images": [image], "image": image}), "response_ok.json")
        put("response_nosizes", '{"images": [{"url": "https://example.invalid/a.png"}]}', "response_nosizes.json")
        put(
            "response_huge",
            json.dumps(
                {
                    "images": [{**image, "width": 10**9, "height": 10**9}],
                    "image": {**image, "width": 10**9, "height": 10**9},
                }
            ),
            "response_huge.json",
        )
        put("response_nan", '{"images": [{"url": "u", "width": NaN, "height": 768}]}', "response_nan.json")
        negative = {**image, "width": -1024}
        put("response_negative", json.dumps({"images": [negative], "image": negative}), "response_negative.json")
        put("response_float", json.dumps({"images": [{**image, "width": 1024.5}]}), "response_float.json")
        put("response_list", "[]", "response_list.json")
        put(
            "response_str_sizes",
            json.dumps({"images": [{**image, "width": "1024", "height": "768"}]}),
            "response_str.json",
        )
        put(
            "response_bool_sizes",
            json.dumps({"images": [{**image, "width": True, "height": True}]}),
            "response_bool.json",
        )
        (r / "out").mkdir()
        f["out_dir"] = str(r / "out")
        f["out_new"] = str(r / "out-new" / "sub")
        book_path = Path(importlib.import_module("pricing").__file__).parent / "default_book.json"
        try:
            book = json.loads(book_path.read_text())
            bad = json.loads(json.dumps(book))
            huge = json.loads(json.dumps(book))
            for entry in bad.get("endpoints", {}).values():
                entry["rate_per_megapixel"] = "NaN"
            for entry in huge.get("endpoints", {}).values():
                entry["rate_per_megapixel"] = "1" + "0" * 29 + ".000000000000000000000000000001"
            put("book_bad_rate", json.dumps(bad), "book_nan.json")
            put("book_huge_rate", json.dumps(huge), "book_huge.json")
        except (OSError, ValueError):
            f["book_bad_rate"] = f["binary"]
            f["book_huge_rate"] = f["deep"]
        self.files = f

    # -- running one argv

    def invoke(self, argv: list[str], env: dict[str, str | None] | None = None) -> Any:
        full = dict(self.base_env)
        full.update(env or {})
        if full.get("PIXELGOV_PRICE_BOOK") or self._book_dirty:
            self._clear_book_caches()
            self._book_dirty = bool(full.get("PIXELGOV_PRICE_BOOK"))
        return make_runner().invoke(self.cli, argv, env=full, catch_exceptions=True, prog_name="pixelgov")

    _book_dirty = False

    @staticmethod
    def _clear_book_caches() -> None:
        """The price book is read once per process; a fuzzed PIXELGOV_PRICE_BOOK must be read again."""
        for name, module in list(sys.modules.items()):
            if module is None or not name.startswith(("pricing", "ledger", "pixelgov")):
                continue
            for obj in list(vars(module).values()):
                if callable(getattr(obj, "cache_clear", None)) and "book" in getattr(obj, "__name__", ""):
                    obj.cache_clear()

    # -- seeding through the CLI

    def seed(self) -> None:
        up = self.upstream

        def step(*args: str, codes: tuple[int, ...] = (0,), env: dict[str, str | None] | None = None) -> Any:
            result = self.invoke(["--db", self.url, *args], {"FAL_KEY": g.SECRET_FAL_KEY, **(env or {})})
            if result.exit_code not in codes or (result.exception and not isinstance(result.exception, SystemExit)):
                self.seed_problems.append(
                    f"pixelgov {' '.join(args)} -> exit {result.exit_code}: "
                    f"{(result.stderr or result.stdout).strip()[-500:]} {result.exception!r}"
                )
            return result

        def tx_id(result: Any) -> int | None:
            try:
                doc = json.loads(result.stdout)
            except ValueError:
                return None
            doc = doc.get("transaction", doc) if isinstance(doc, dict) else {}
            return doc.get("id") if isinstance(doc, dict) else None

        first = step("db", "upgrade")
        if first.exit_code != 0:
            pytest.fail(f"cannot migrate the fuzz ledger: {first.stderr or first.stdout} {first.exception!r}")
        step("agents", "create", "bot", "--description", "the fuzz test's agent")
        step("agents", "create", "paused-bot")
        step("agents", "update", "paused-bot", "--status", "paused")
        step("agents", "create", "other", "--no-key")
        step("rules", "create", "--name", "cap", "--type", "request-cap", "--limit", "0.05", "--agent", "bot")
        step(
            "rules",
            "create",
            "--name",
            "daily",
            "--type",
            "spend-limit",
            "--limit",
            "1",
            "--period",
            "day",
            "--agent",
            "bot",
            "--alert-at",
            "50",
        )
        step(
            "rules",
            "create",
            "--name",
            "watch",
            "--type",
            "spend-limit",
            "--limit",
            "0.001",
            "--period",
            "month",
            "--action",
            "alert",
            "--model",
            "fal-ai/flux-pro*",
        )
        step("rules", "create", "--name", "burst", "--type", "rate-limit", "--limit", "1000", "--window", "1h")
        step(
            "rules",
            "create",
            "--name",
            "only-flux",
            "--type",
            "model-allowlist",
            "--models",
            "fal-ai/flux*,fal-ai/topaz/*",
            "--agent",
            "other",
        )
        step("rules", "create", "--name", "off", "--type", "request-cap", "--limit", "0.001", "--disable")
        dev = ["fal-ai/flux/dev", "--agent", "bot", "--prompt", "a fox", "--format", "json"]
        step("authorize", *dev)  # -> expired
        step("tx", "expire", "--older-than", "0")
        voided = tx_id(step("authorize", *dev))
        completed = tx_id(step("authorize", *dev))
        given = tx_id(step("authorize", *dev))
        step("authorize", "fal-ai/flux-pro", "--agent", "bot", "--num-images", "2", "--format", "json", codes=(3,))
        step("run", *dev, "--upstream-url", f"{up}/500", codes=(1,))  # -> failed
        step("run", *dev, "--upstream-url", f"{up}/drop", codes=(1,))  # -> unknown
        step("run", *dev, "--upstream-url", f"{up}/ok")  # -> completed, with facts and a result
        step("authorize", *dev, "--idempotency-key", "job-1")  # -> pending
        step("authorize", "fal-ai/flux/schnell", "--agent", "other", "--format", "json")  # -> pending
        step("authorize", "fal-ai/topaz/upscale/image", "--agent", "bot", "--input-size", "512x512", "--format", "json")
        step("authorize", "fal-ai/flux-pro", "--agent", "bot", "--format", "json")  # pending, alert from `watch`
        if voided:
            step("tx", "void", str(voided), "--reason", "seed")
        if completed:
            step("tx", "complete", str(completed), "--response", self.files["response_ok"])
            step("tx", "add-cost", str(completed), "-0.001", "--note", "credit")
            step("tx", "add-fact", str(completed), "reviewer=alice")
        if given:
            step("tx", "complete", str(given), "--actual", "0.02")
        # A request with a non-finite passthrough field: refused (as issue 8 asks) or, if the product
        # still takes it, a row whose JSON every later `tx show --format json` must still print strictly.
        step(
            "authorize",
            "fal-ai/flux/dev",
            "--agent",
            "other",
            "--params",
            '{"prompt": "x", "extra": NaN}',
            codes=(0, 2),
        )
        txs = self.invoke(["--db", self.url, "tx", "list", "--limit", "1000", "--format", "json"])
        rules = self.invoke(["--db", self.url, "rules", "list", "--format", "json"])
        self.tx_by_status: dict[str, list[int]] = {}
        try:
            for t in strict_json(txs.stdout):
                self.tx_by_status.setdefault(str(t["status"]), []).append(int(t["id"]))
            self.tx_ids = sorted(int(t["id"]) for t in strict_json(txs.stdout))
            rule_docs = strict_json(rules.stdout)
            self.rule_names = [r["name"] for r in rule_docs]
            self.rule_ids = [int(r["id"]) for r in rule_docs]
        except (ValueError, KeyError, TypeError) as exc:
            self.seed_problems.append(
                f"cannot list the seeded ledger: {exc!r}: {txs.stdout[:300]} {rules.stdout[:300]}"
            )
            self.tx_ids, self.rule_names, self.rule_ids = list(range(1, 13)), ["cap", "daily", "watch"], [1, 2, 3]
        statuses = {t.get("status") for t in (strict_json(txs.stdout) if txs.exit_code == 0 else [])}
        missing = {"pending", "completed", "failed", "voided", "expired", "unknown", "denied"} - statuses
        if missing:
            self.seed_problems.append(f"the seeded ledger has no transaction in state(s) {sorted(missing)}")
        copy_db(self.ledger, self.template)
        self.template_dump = dump(self.template)
        if any(s in repr(self.template_dump) for s in g.SECRETS):
            self.seed_problems.append("a secret is stored in the seeded ledger")

    def fixtures(self) -> g.Fixtures:
        return g.Fixtures(
            root=self.root,
            ledger_url=self.url,
            upstream=self.upstream,
            closed=f"http://127.0.0.1:{self.port_closed}",
            closed_port=self.port_closed,
            tx_ids=self.tx_ids,
            tx_by_status=self.tx_by_status,
            rule_names=self.rule_names,
            rule_ids=self.rule_ids,
            files=self.files,
            formats=command_formats(self.cli),
        )

    def restore(self) -> None:
        copy_db(self.template, self.ledger)
        assert dump(self.ledger) == self.template_dump, "the fuzz harness could not restore the ledger"

    # -- one example, judged

    def run(self, ex: g.Example) -> tuple[Any, list[tuple[str, str]]]:
        self.examples += 1
        argv = list(ex.argv)
        if "PIXELGOV_DB_TIMEOUT" in ex.env and self.url in argv:
            # engines are cached per URL in-process: an alias of the same file makes this one read the variable
            self.alias += 1
            argv[argv.index(self.url)] = f"sqlite:///{self.ledger.parent}/{'./' * self.alias}{self.ledger.name}"
        blocked_before = len(self.blocked)
        started = time.monotonic()
        result = self.invoke(argv, ex.env)
        elapsed = time.monotonic() - started
        per_exit = self.exits.setdefault(" ".join(ex.command), {})
        per_exit[result.exit_code] = per_exit.get(result.exit_code, 0) + 1
        try:
            after = dump(self.ledger)
        except sqlite3.Error as exc:
            after = {"<unreadable>": ((), [(repr(exc),)])}
        problems = judge(ex, result, self.template_dump, after)
        if len(self.blocked) > blocked_before:
            problems.append(("network", f"tried to resolve {self.blocked[blocked_before:]} (only 127.0.0.1 allowed)"))
        if elapsed > 20:
            problems.append(("slow", f"took {elapsed:.1f}s (a bounded wait should end sooner)"))
        if after != self.template_dump:
            self.restore()
        if problems:
            self.record(ex, argv, result, problems)
        return result, problems

    def record(self, ex: g.Example, argv: list[str], result: Any, problems: list[tuple[str, str]]) -> None:
        exc = ""
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            exc = "".join(traceback.format_exception(*result.exc_info))[-3000:]
        for kind, detail in problems:
            failure = Failure(
                command=" ".join(ex.command),
                kind=kind,
                signature=signature(ex, result, kind, detail),
                argv=argv,
                env={k: v for k, v in ex.env.items() if k != "FAL_KEY" or v != g.SECRET_FAL_KEY},
                exit_code=result.exit_code,
                stdout=result.stdout[-2000:],
                stderr=result.stderr[-2000:],
                exception=exc,
                details=[detail],
            )
            self.failures.append(failure)
            if FUZZ_LOG:
                with open(FUZZ_LOG, "a", encoding="utf-8", errors="backslashreplace") as fh:
                    fh.write(json.dumps(failure.__dict__, ensure_ascii=True) + "\n")
        if SHRINK:
            raise AssertionError(f"{argv!r}: {problems}")


# --- the oracles -----------------------------------------------------------------------------------


def _project_frame(tb: Any) -> str:
    """The innermost frame of pixelgov's own code in a traceback, as path:line."""
    where = "?"
    for frame in traceback.extract_tb(tb):
        parts = Path(frame.filename).parts
        for d in PROJECT_DIRS:
            if d in parts:
                i = len(parts) - 1 - parts[::-1].index(d)
                where = f"{'/'.join(parts[i:])}:{frame.lineno}"
    return where


def signature(ex: g.Example, result: Any, kind: str, detail: str) -> str:
    if kind == "traceback" and result.exc_info:
        return f"traceback {type(result.exception).__name__} at {_project_frame(result.exc_info[2])}"
    code = ""
    with contextlib.suppress(Exception):
        doc = strict_json(result.stdout)
        code = doc["error"]["code"]
    crash = (
        f" after {type(result.exception).__name__}"
        if result.exc_info and not isinstance(result.exception, SystemExit) and result.exception is not None
        else ""
    )
    why = f": {detail.rsplit(': ', 1)[-1][:70]}" if kind == "wrote-on-failure" else ""
    return f"{kind} [{' '.join(ex.command)}] exit {result.exit_code} {code}{crash}{why}".replace("  ", " ").strip()


def _error_doc_problem(doc: Any, exit_code: int) -> str | None:
    if not (isinstance(doc, dict) and set(doc) >= {"error"} and isinstance(doc["error"], dict)):
        return 'is not {"error": {...}}'
    err = doc["error"]
    if not isinstance(err.get("code"), str) or not isinstance(err.get("message"), str) or not err["message"].strip():
        return "lacks a string code and a non-empty message"
    if err["code"] not in ERROR_EXITS:
        return f"code {err['code']!r} is not one of SPEC §5's codes"
    if exit_code not in ERROR_EXITS[err["code"]]:
        return f"code {err['code']!r} with exit {exit_code} (SPEC: exit {sorted(ERROR_EXITS[err['code']])})"
    return None


def _negative_amounts(doc: Any, path: str = "") -> list[str]:
    """Quote/transaction amounts and sizes that are negative or not finite."""
    from decimal import Decimal, InvalidOperation

    found = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if (
                k in ("amount", "estimated_cost", "billable_megapixels", "width", "height", "rate_per_megapixel")
                and isinstance(v, (str, int))
                and not isinstance(v, bool)
            ):
                with contextlib.suppress(InvalidOperation):
                    d = Decimal(str(v).lstrip("$"))
                    if not d.is_finite() or d < 0:
                        found.append(f"{path}{k}={v}")
            if k != "result":  # the upstream's own JSON, printed unchanged
                found += _negative_amounts(v, f"{path}{k}.")
    elif isinstance(doc, list):
        for item in doc:
            found += _negative_amounts(item, path)
    return found


def judge(ex: g.Example, result: Any, before: dict, after: dict) -> list[tuple[str, str]]:
    """Every property of SPEC §5 / issue 8 this example breaks, as (kind, detail)."""
    p: list[tuple[str, str]] = []
    code = result.exit_code
    out, err = result.stdout, result.stderr
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        p.append(("traceback", f"{type(exc).__name__}: {str(exc)[:300]}"))
    if "Traceback (most recent call last)" in out + err:
        p.append(("traceback-text", "a traceback was printed"))
    if code not in (0, 1, 2, 3):
        p.append(("exit-code", f"exit code {code} (SPEC: 0, 1, 2 or 3)"))
    if code == 3 and ex.command not in g.MAY_DENY:
        p.append(("exit-code", f"exit 3 (denied) from {' '.join(ex.command)}"))

    # secrets: the FAL key and a URL's password are never printed
    for secret in (g.SECRET_FAL_KEY, g.URL_PASSWORD):
        if secret in out or secret in err:
            p.append(("secret-printed", f"{secret[:10]}… appears in the output"))
    changed = after != before
    stored = repr(after) if changed else ""
    for secret in g.SECRETS:
        if secret in stored:
            p.append(("secret-stored", f"{secret[:10]}… is stored in the ledger"))

    # output shape
    other_lines = [line for line in err.split("\n") if line and not line.startswith("alert:")]
    decision = ex.command == ("check",) or (ex.command == ("run",) and ex.dry_run)
    crashed = exc is not None and not isinstance(exc, SystemExit)
    if ex.help or crashed:  # a crash is reported once, not again as its missing error line
        pass
    elif ex.bare_group and (out + err).lstrip().startswith("Usage:"):
        pass
    elif code != 0 and decision and code == 3:
        if ex.json_mode:
            try:
                doc = strict_json(out)
                if not (isinstance(doc, dict) and doc.get("allowed") is False) and _error_doc_problem(doc, code):
                    p.append(
                        (
                            "json-shape",
                            "a denied check printed neither the decision (allowed: false) nor the JSON error",
                        )
                    )
            except ValueError as e:
                p.append(("json-invalid", f"a denied check's stdout is not one strict JSON document: {e}"))
        elif not ((out.strip() and not other_lines) or (not out.strip() and len(other_lines) == 1)):
            p.append(("stderr-shape", f"a denied check printed {len(other_lines)} non-alert stderr line(s)"))
    elif code != 0 and ex.json_mode:
        try:
            doc = strict_json(out)
        except ValueError as e:
            p.append(
                (
                    "json-error-missing",
                    f"--format json failure: stdout is not one strict JSON document ({e}); stderr: {other_lines[:1]!r}",
                )
            )
        else:
            problem = _error_doc_problem(doc, code)
            if problem:
                p.append(("json-error-shape", f"the JSON error {problem}"))
            if other_lines:
                p.append(("json-error-stderr", f"--format json failure also printed {len(other_lines)} stderr line(s)"))
    elif code != 0:
        if out.strip():
            p.append(("stdout-on-failure", "a failure printed on stdout"))
        if len(other_lines) != 1:
            p.append(("stderr-lines", f"a failure printed {len(other_lines)} stderr lines (SPEC: one clear line)"))
        elif not err.endswith("\n") or not other_lines[0].strip():
            p.append(("stderr-lines", "the error line is blank or unterminated"))
    elif ex.json_mode:
        try:
            doc = strict_json(out)
            if isinstance(doc, dict) and set(doc) == {"error"}:
                p.append(("json-shape", "exit 0 with a JSON error document"))
            negative = _negative_amounts(doc)
            if negative and ex.command in (("price",), ("check",), ("authorize",), ("run",)):
                p.append(("negative-amount", f"a quote with negative or non-finite values: {negative[:3]}"))
        except ValueError as e:
            p.append(("json-invalid", f"--format json success: stdout is not one strict JSON document ({e})"))

    # the ledger
    if changed and "rule_counters" in after:
        cols, rows = after["rule_counters"]
        for row in rows:
            negative = {
                c: v
                for c, v in zip(cols, row)
                if c in ("spent", "held", "requests") and isinstance(v, (int, float)) and v < 0
            }
            if negative:
                p.append(
                    (
                        "negative-counter",
                        f"a rule counter went negative: {dict(zip(cols, row))} (a budget's "
                        "headroom can then exceed its limit)",
                    )
                )
                break
    if changed:
        diff = table_diff(before, after)
        summary = ", ".join(f"{t}: -{len(r)} +{len(a)}" for t, (r, a) in diff.items())
        if ex.read_only:
            p.append(("read-only-wrote", f"{' '.join(ex.command)} changed the ledger ({summary})"))
        elif code != 0:
            why = _allowed_failure_write(ex, code, out, diff)
            if why:
                p.append(("wrote-on-failure", f"exit {code} but the ledger changed ({summary}): {why}"))

    if not ex.help:
        if ex.db == "bad" and code == 0 and ex.command not in g.NO_DB and ex.command != ("junk",):
            p.append(("bad-db-accepted", f"--db {ex.argv[1]!r} was accepted (exit 0)"))
        bad_names = [n for n in ex.names if g.has_bad_name_char(n)]
        if bad_names and code == 0:
            p.append(("bad-name-accepted", f"name(s) with control/undecodable characters accepted: {bad_names!r}"))
        if ex.params_bad and code == 0 and ex.command in (("price",), ("check",), ("authorize",), ("run",)):
            p.append(("nonfinite-params-accepted", "--params with NaN/Infinity/overflow/absurd nesting accepted"))
    return p


DERIVED = ("rule_counters", "spend_rollups", "denial_rollups")


def _allowed_failure_write(ex: g.Example, code: int, out: str, diff: dict) -> str | None:
    """None if the write is one SPEC documents for this failure (a denied transaction, exit 3; a run's
    failed or unknown transaction, exit 1), else why it is not."""
    if ex.params_bad or ex.env_bad:
        return "the input should have been refused before anything was written"
    if code == 3 and ex.command in (("authorize",), ("run",)) and not ex.dry_run:
        statuses = {"denied"}
    elif code == 1 and ex.command == ("run",) and not ex.dry_run:
        if not ex.run_ok:
            return "an unusable upstream URL, FAL key, --timeout or --out must be refused before authorizing"
        statuses = {"failed", "unknown"}
    else:
        return "only a denial or a run's upstream failure may record a transaction"
    # Counters and report rollups are derived: upserted with the transaction (tests/test_rollups.py
    # checks the rollups against the ledger).
    removed_any = {t for t, (removed, _added) in diff.items() if removed and t not in DERIVED}
    if removed_any:
        return f"existing rows changed in {sorted(removed_any)}"
    new_tx = diff.get("transactions", ([], []))[1]
    bad_status = [t.get("status") for t in new_tx if t.get("status") not in statuses]
    if bad_status:
        return f"new transaction(s) in state {bad_status}, expected {sorted(statuses)}"
    if len(new_tx) > 1:
        return f"{len(new_tx)} new transactions"
    ids = {t.get("id") for t in new_tx}
    for table in ("cost_lines", "facts", "holds", "alerts"):
        stray = [r for r in diff.get(table, ([], []))[1] if r.get("transaction_id") not in ids]
        if stray:
            return f"{table} rows not of the new transaction"
    for table in set(diff) - {
        "transactions",
        "cost_lines",
        "facts",
        "holds",
        "alerts",
        "agents",
        "audit_log",
        *DERIVED,
    }:
        return f"{table} changed"
    new_agents = diff.get("agents", ([], []))[1]
    if new_agents and code == 3:
        return "a denied request created an agent"
    if "audit_log" in diff and any(r.get("entity") != "agent" for r in diff["audit_log"][1]):
        return "audit_log rows other than an agent's creation"
    if "rule_counters" in diff:
        if code == 3:
            return "a denial moved rule counters (SPEC: a denied request holds nothing)"
        if {t.get("status") for t in new_tx} == {"failed"}:
            removed, added = diff["rule_counters"]
            for col in ("spent", "held"):

                def total(rows: list[dict], col: str = col) -> dict:
                    acc: dict = {}
                    for r in rows:
                        acc[r.get("rule_id")] = acc.get(r.get("rule_id"), 0) + (r.get(col) or 0)
                    return acc

                gone, new = total(removed), total(added)
                for rule in set(gone) | set(new):
                    if gone.get(rule, 0) != new.get(rule, 0):
                        return f"a failed run moved rule {rule}'s {col} counter (SPEC: failed = nothing spent)"
    return None


# --- the tests -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # relative paths (e.g. --out '') land here, never in the repository
        blocked: list[str] = []
        with network_guard(blocked):
            w = World(root)
            w.blocked = blocked
            w.seed()
            w.fx = w.fixtures()
            yield w
            w.server.shutdown()
    if FUZZ_LOG:
        with open(FUZZ_LOG, "a", encoding="utf-8") as fh:
            fh.write(
                json.dumps({"summary": {"examples": w.examples, "violations": len(w.failures), "exit_codes": w.exits}})
                + "\n"
            )


def _exists(world: World, path: tuple[str, ...]) -> bool:
    ctx = click.Context(world.cli)
    cmd: Any = world.cli
    for name in path:
        if not isinstance(cmd, click.Group):
            return False
        if name not in cmd.list_commands(ctx):
            return False
        try:
            cmd = cmd.get_command(ctx, name)
        except Exception:  # listed but broken: fuzz it, the traceback is the finding
            return True
        if cmd is None:
            return False
    return True


ALL_COMMANDS = list(g.COMMANDS) + list(g.REPORT_COMMANDS) + [("pair",)]


def examples_for(command: tuple[str, ...]) -> int:
    """`command`'s share of PIXELGOV_FUZZ_EXAMPLES (run, authorize, rules … get more: they have more paths)."""
    total_weight = sum(g.WEIGHTS.get(c, 1) for c in ALL_COMMANDS)
    return max(4, round(TOTAL_EXAMPLES * g.WEIGHTS.get(command, 1) / total_weight))


def _settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=FUZZ_SEED is None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


def _report(world: World, failures: list[Failure], what: str) -> str:
    by_sig: dict[str, list[Failure]] = {}
    for f in failures:
        by_sig.setdefault(f.signature, []).append(f)
    lines = [f"{len(by_sig)} distinct failure(s) of {what} ({len(failures)} violations):"]
    for sig, items in sorted(by_sig.items(), key=lambda kv: -len(kv[1])):
        f = min(items, key=lambda f: len(repr(f.argv)))
        argv = repr(f.argv) if len(repr(f.argv)) < 400 else repr(f.argv)[:400] + "…"
        lines.append(
            f"\n* {sig}  (x{len(items)})\n  pixelgov {argv}  env={f.env}\n  -> {f.details[0]}"
            f"\n  exit {f.exit_code}; stdout: {f.stdout[:300]!r}\n  stderr: {f.stderr[:300]!r}"
        )
        if f.exception:
            lines.append("  " + f.exception.strip().splitlines()[-1][:300])
    return "\n".join(lines)


def _maybe_seed(fn: Any) -> Any:
    return seed(int(FUZZ_SEED))(fn) if FUZZ_SEED is not None else fn


def test_the_fuzz_ledger_is_seeded_in_every_state(world: World) -> None:
    """The fuzz ledger holds agents, rules and a transaction in every state, seeded through the CLI."""
    assert not world.seed_problems, "\n".join(world.seed_problems)


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: "-".join(c))
def test_fuzz_cli(world: World, command: tuple[str, ...]) -> None:
    """Random hostile argv for one command: every property of the module docstring holds."""
    if command[0] == "report" and not _exists(world, command):
        pytest.skip(f"pixelgov has no `{' '.join(command)}` command yet")
    start = len(world.failures)
    fx = world.fx

    if command == ("pair",):
        strategy = pair_example(fx)

        @_settings(examples_for(command))
        @_maybe_seed
        @given(st.data())
        def pair(data: st.DataObject) -> None:
            check_ex, auth_ex = data.draw(strategy)
            checked, _ = world.run(check_ex)
            authorized, _ = world.run(auth_ex)
            verdict = pair_verdict(checked.exit_code, authorized.exit_code)
            if verdict:
                world.record(auth_ex, auth_ex.argv, authorized, [("check-vs-authorize", verdict)])

        pair()
    else:
        strategy = g.example(fx, command)

        @_settings(examples_for(command))
        @_maybe_seed
        @given(st.data())
        def fuzz(data: st.DataObject) -> None:
            world.run(data.draw(strategy))

        fuzz()
    failures = world.failures[start:]
    assert not failures, _report(world, failures, " ".join(command))


def pair_verdict(check_code: int, auth_code: int) -> str | None:
    """check is authorize's pre-flight: the same request gets the same answer."""
    if check_code in (0, 3) and auth_code == 2:
        return f"check answered exit {check_code} but authorize refused the same request as bad input (exit 2)"
    if check_code == 2 and auth_code in (0, 3):
        return f"check refused the request as bad input but authorize answered exit {auth_code}"
    if {check_code, auth_code} == {0, 3}:
        return f"check answered exit {check_code}, authorize exit {auth_code} for the same request"
    return None


@st.composite
def pair_example(draw: Any, fx: g.Fixtures) -> tuple[g.Example, g.Example]:
    """The same request (hostile agent names and options, a runnable prompt and input image)
    for check and for authorize."""
    base = draw(g.example(fx, ("check",)))
    argv = [a for a in base.argv]
    # --format json for both, and the fields a run needs, so only names and numbers differ
    i = argv.index("check")
    head, tail = argv[: i + 1], argv[i + 1 :]
    clean: list[str] = []
    skip = False
    for tok in tail:
        if skip:
            skip = False
            continue
        if tok in ("--format", "--prompt", "--image-url"):
            skip = True
            continue
        if tok in ("--help", "-h", "--bogus", "--bogus=1", "extra-arg", "-z", "--agentx"):
            continue
        clean.append(tok)
    clean += ["--prompt", "a fox", "--image-url", fx.f("png"), "--format", "json"]
    check_ex = g.Example(
        command=("check",),
        argv=head + clean,
        env=base.env,
        fmt="json",
        formats=fx.formats.get(("check",), ()),
        db=base.db,
        names=base.names,
        params_bad=base.params_bad,
        env_bad=base.env_bad,
    )
    auth_argv = [*head[:-1], "authorize", *clean]
    auth_ex = g.Example(
        command=("authorize",),
        argv=auth_argv,
        env=base.env,
        fmt="json",
        formats=fx.formats.get(("authorize",), ()),
        db=base.db,
        names=base.names,
        params_bad=base.params_bad,
        env_bad=base.env_bad,
    )
    return check_ex, auth_ex


def test_every_seeded_row_reads_back_strictly(world: World) -> None:
    """Every transaction, rule and agent of the seeded ledger (one of each state, and whatever the
    seeding let in) shown and listed in every format: the same properties as the fuzz, deterministically."""
    fx = world.fx
    start = len(world.failures)
    reads: list[list[str]] = [["tx", "show", str(i)] for i in fx.tx_ids]
    reads += [["rules", "show", name] for name in fx.rule_names]
    reads += [["agents", "show", name] for name in ("bot", "paused-bot", "other")]
    reads += [
        ["tx", "list", "--limit", "100000"],
        ["agents", "list"],
        ["rules", "list"],
        ["alerts", "list"],
        ["audit"],
        ["models"],
        ["db", "current"],
    ]
    for args in reads:
        command = tuple(args[:2]) if args[0] in ("tx", "rules", "agents", "alerts", "db") else (args[0],)
        formats = fx.formats.get(command, ())
        for fmt in formats or (None,):
            argv = ["--db", fx.ledger_url, *args] + (["--format", fmt] if fmt else [])
            ex = g.Example(command=command, argv=argv, fmt=fmt, formats=formats)
            result, _ = world.run(ex)
            if result.exit_code != 0:
                world.record(ex, argv, result, [("read-back", f"reading a seeded row failed: exit {result.exit_code}")])
    failures = world.failures[start:]
    assert not failures, _report(world, failures, "reading the seeded ledger back")


def corpus(fx: g.Fixtures) -> list[g.Example]:
    """The seed corpus: the hostile inputs issue 8 names, one of each class, run every time
    (random generation meets some combinations, e.g. a big credit on a completed transaction,
    only in a long hunt). Judged by the same oracles as the fuzz."""
    ids = fx.tx_by_status
    first = {
        status: str(ids[status][0]) if ids.get(status) else "1"
        for status in ("pending", "completed", "failed", "voided", "expired", "unknown", "denied")
    }
    dev = ["fal-ai/flux/dev", "--agent", "bot", "--prompt", "a fox"]
    up = fx.upstream
    ledger = ["--db", fx.ledger_url]
    key = {"FAL_KEY": g.SECRET_FAL_KEY}
    out: list[g.Example] = []

    def add(
        command: tuple[str, ...],
        args: list[str],
        *,
        db: list[str] | None = None,
        fmt: str | None = None,
        env: dict[str, str | None] | None = None,
        **flags: Any,
    ) -> None:
        argv = (ledger if db is None else db) + list(command) + args + (["--format", fmt] if fmt else [])
        ex = g.Example(
            command=command,
            argv=argv,
            env={**key, **(env or {})},
            fmt=fmt,
            formats=fx.formats.get(command, ()),
            **flags,
        )
        if db is not None:
            ex.db = "bad"
        out.append(ex)

    for fmt in ("table", "json"):
        # money: a credit larger than the transaction, absurd amounts and ages
        add(("tx", "add-cost"), [first["completed"], "-1000", "--note", "credit"], fmt=fmt)
        add(("tx", "add-cost"), [first["completed"], "1e300"], fmt=fmt)
        add(("tx", "complete"), [first["pending"], "--actual", "1e300"], fmt=fmt)
        add(("tx", "complete"), [first["pending"], "--actual", "NaN"], fmt=fmt)
        add(("tx", "complete"), [first["pending"], "--actual", "-0.01"], fmt=fmt)
        add(("tx", "complete"), [first["unknown"], "--response", fx.f("response_huge")], fmt=fmt)
        add(("tx", "complete"), [first["pending"], "--response", fx.f("response_nan")], fmt=fmt)
        add(("tx", "complete"), [first["pending"], "--response", fx.f("response_negative")], fmt=fmt)
        add(("tx", "complete"), [first["pending"], "--response", fx.f("deep")], fmt=fmt)
        add(("tx", "complete"), [first["pending"], "--response", fx.f("deep_obj")], fmt=fmt)
        add(("tx", "complete"), [first["pending"], "--response", fx.f("binary")], fmt=fmt)
        add(("tx", "complete"), [first["voided"]], fmt=fmt)
        add(("tx", "void"), [first["completed"]], fmt=fmt)
        add(("tx", "expire"), ["--older-than", "1e300"], fmt=fmt)
        add(("tx", "expire"), ["--older-than", "1e20"], fmt=fmt)
        add(("tx", "show"), [str(2**63)], fmt=fmt)
        add(("tx", "list"), ["--since", "99999999999d"], fmt=fmt)
        add(("tx", "list"), ["--until", "9999-12-31T23:59:59-23:59"], fmt=fmt)
        # runs: validation before authorizing, hostile upstream answers, secrets
        add(
            ("run",),
            [*dev, "--params", '{"prompt": "x", "extra": NaN}', "--upstream-url", f"{up}/ok"],
            fmt=fmt,
            params_bad=True,
        )
        add(("run",), [*dev, "--upstream-url", "http://[::1"], fmt=fmt, run_ok=False)
        add(("run",), [*dev, "--upstream-url", "http://"], fmt=fmt, run_ok=False)
        add(("run",), [*dev, "--upstream-url", "ftp://127.0.0.1/"], fmt=fmt, run_ok=False)
        add(("run",), [*dev, "--timeout", "1e300", "--upstream-url", f"{up}/ok"], fmt=fmt, run_ok=False)
        add(("run",), [*dev, "--out", fx.f("regular_file"), "--upstream-url", f"{up}/ok"], fmt=fmt, run_ok=False)
        add(("run",), [*dev, "--upstream-url", f"{up}/ok"], fmt=fmt, env={"FAL_KEY": None}, run_ok=False)
        add(
            ("run",), [*dev, "--upstream-url", f"{up}/ok"], fmt=fmt, env={"FAL_KEY": "key\nX-Injected: 1"}, run_ok=False
        )
        add(("run",), [*dev, "--upstream-url", f"{up}/echo"], fmt=fmt)
        add(("run",), [*dev, "--upstream-url", f"{up}/huge"], fmt=fmt)
        add(("run",), [*dev, "--upstream-url", f"{up}/nan"], fmt=fmt)
        add(("run",), [*dev, "--upstream-url", f"{up}/notjson"], fmt=fmt)
        add(("run",), [*dev, "--upstream-url", f"{up}/ok", "--idempotency-key", "job-1"], fmt=fmt)
        add(("run",), [*dev, "--upstream-url", f"{up}/ok", "--out", fx.f("out_dir")], fmt=fmt)
        add(
            ("run",),
            [
                "fal-ai/flux/dev/image-to-image",
                "--agent",
                "bot",
                "--prompt",
                "x",
                "--image-url",
                fx.f("png"),
                "--upstream-url",
                f"{up}/500",
            ],
            fmt=fmt,
        )
        # names: one validator everywhere (a trailing newline, control characters, undecodable bytes)
        for name in ("bot\n", "b\x1bot", "\udcff"):
            add(("check",), ["fal-ai/flux/dev", "--agent", name], fmt=fmt, names=[name])
            add(("authorize",), ["fal-ai/flux/dev", "--agent", name], fmt=fmt, names=[name])
            add(("agents", "create"), [name], fmt=fmt, names=[name])
            add(("agents", "show"), [name], fmt=fmt, names=[name])
            add(("rules", "create"), ["--name", name, "--type", "request-cap", "--limit", "1"], fmt=fmt, names=[name])
            add(("rules", "show"), [name], fmt=fmt, names=[name])
        add(("price",), ["\udcff"], fmt=fmt)
        add(("tx", "add-fact"), [first["completed"], "\udcff=1"], fmt=fmt)
        add(("tx", "void"), [first["pending"], "--reason", "\udcff"], fmt=fmt)
        # numbers in rules
        add(("rules", "create"), ["--name", "r1", "--type", "spend-limit", "--limit", "1e300"], fmt=fmt)
        add(
            ("rules", "create"),
            ["--name", "r2", "--type", "spend-limit", "--limit", "1", "--window", "9" * 30 + "d"],
            fmt=fmt,
        )
        add(("rules", "create"), ["--name", "r3", "--type", "rate-limit", "--limit", str(2**63)], fmt=fmt)
        add(("rules", "update"), [str(2**64), "--disable"], fmt=fmt)
        add(("rules", "show"), ["9" * 5000], fmt=fmt)
        if ("report", "chart") in fx.formats:
            add(("report", "chart"), ["--since", "9999-12-31T23:59:59-23:59"], fmt=fmt)
            add(("report", "summary"), ["--period", "99999-01"], fmt=fmt)
            add(("report", "statement"), ["--month", "0000-00"], fmt=fmt)
        # files
        add(("price",), ["fal-ai/flux/dev", "--params", "@" + fx.f("binary")], fmt=fmt)
        add(("price",), ["fal-ai/flux/dev", "--params", "@" + fx.f("deep")], fmt=fmt, params_bad=True)
        add(("price",), ["fal-ai/flux/dev", "--params", "@" + fx.f("dir")], fmt=fmt)
        add(("price",), ["fal-ai/flux/dev", "--params", '{"num_images": Infinity}'], fmt=fmt, params_bad=True)
        add(
            ("check",),
            ["fal-ai/flux/dev", "--agent", "bot", "--params", '{"prompt": "x", "extra": NaN}'],
            fmt=fmt,
            params_bad=True,
        )
        add(("price",), ["fal-ai/topaz/upscale/image", "--image-url", fx.f("bmp_negative")], fmt=fmt)
        add(("price",), ["fal-ai/topaz/upscale/image", "--image-url", fx.f("png_zero")], fmt=fmt)
        add(("price",), ["fal-ai/topaz/upscale/image", "--image-url", fx.f("png_huge")], fmt=fmt)
        add(("price",), ["fal-ai/flux/dev", "--image-size", f"{2**63}x{2**63}"], fmt=fmt)
        # settings in the environment
        add(("authorize",), dev, fmt=fmt, env={"PIXELGOV_HOLD_TTL": "nan"}, env_bad=True)
        add(("tx", "expire"), [], fmt=fmt, env={"PIXELGOV_HOLD_TTL": "inf"}, env_bad=True)
        add(("price",), ["fal-ai/flux/dev"], fmt=fmt, env={"PIXELGOV_PRICE_BOOK": fx.f("binary")}, env_bad=True)
        add(("price",), ["fal-ai/flux/dev"], fmt=fmt, env={"PIXELGOV_PRICE_BOOK": fx.f("book_huge_rate")}, env_bad=True)
        add(("price",), ["fal-ai/flux/dev"], fmt=fmt, env={"PIXELGOV_PRICE_BOOK": fx.f("book_bad_rate")}, env_bad=True)
        add(
            ("run",),
            [*dev, "--upstream-url", f"{up}/ok"],
            fmt=fmt,
            env={"PIXELGOV_UPSTREAM_TIMEOUT": "inf"},
            env_bad=True,
        )
        # usage errors while JSON was asked for
        add(("tx", "show"), ["-5"], fmt=fmt)
        add(("price",), ["fal-ai/flux/dev", "--bogus"], fmt=fmt)
        # databases that cannot be used
        for db in (
            "mysql://x",
            "postgresql+psycopg2://x",
            "",
            f"sqlite:///{fx.f('under_file')}",
            "sqlite:////proc/pixelgov-fuzz/x.db",
            f"sqlite:///{fx.f('binary')}",
        ):
            add(("tx", "list"), [], db=["--db", db], fmt=fmt)
            add(("db", "current"), [], db=["--db", db], fmt=fmt)
    # credentials in URLs are never shown or stored (a closed port: the product's connect retries, ~2 s)
    add(("run",), [*dev, "--upstream-url", f"http://fzuser:{g.URL_PASSWORD}@127.0.0.1:{fx.closed_port}"], fmt="json")
    add(
        ("tx", "list"),
        [],
        db=["--db", f"postgresql+psycopg://fz:{g.URL_PASSWORD}@127.0.0.1:{fx.closed_port}/x"],
        fmt="json",
    )
    # migrations: revisions that do not exist
    for rev in ("nope", "", "head+1"):
        add(("db", "upgrade"), [rev])
        add(("db", "downgrade"), [rev])
    for db in ("mysql://x", f"sqlite:///{fx.f('under_file')}", ""):
        add(("db", "upgrade"), [], db=["--db", db])
    return out


def test_fuzz_corpus(world: World) -> None:
    """Issue 8's own hostile inputs, one of each class: the fuzz test's properties hold for each."""
    start = len(world.failures)
    for ex in corpus(world.fx):
        world.run(ex)
    failures = world.failures[start:]
    assert not failures, _report(world, failures, "the seed corpus")
