"""Helpers for the gateway tests: a real uvicorn server on 127.0.0.1 (in a thread, or `pixelgov
serve` as a subprocess), a self-signed certificate made by openssl, free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ADMIN_TOKEN = "admin-token-for-tests"
SERVER_FAL_KEY = "server-fal-key-0123456789"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningGateway:
    url: str
    ledger: Any
    app: Any

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Key {key}"} if key else {}
        headers.update(kwargs.pop("headers", {}))
        return httpx.Client(base_url=self.url, headers=headers, timeout=kwargs.pop("timeout", 10), **kwargs)

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)


@contextmanager
def gateway_server(
    db_url: str,
    upstream_url: str,
    *,
    clock: Any = None,
    settings: Mapping[str, Any] | None = None,
    ssl: tuple[str, str] | None = None,
    upstream_timeout: float = 5.0,
    **config: Any,
) -> Iterator[RunningGateway]:
    """`create_app` served by a real uvicorn server on 127.0.0.1 in a thread, in front of `upstream_url`."""
    import uvicorn

    from ledger import Ledger, Settings
    from ledger.forward.upstream import UpstreamConfig
    from pixelgov.gateway import GatewayConfig, create_app

    cfg = GatewayConfig(**{"admin_token": ADMIN_TOKEN, "fal_key": SERVER_FAL_KEY, "shutdown_grace": 5.0, **config})
    opened = Ledger(db_url, clock=clock, settings=Settings(**{"hold_ttl": 900, **(settings or {})}))
    app = create_app(
        opened,
        cfg,
        upstream=UpstreamConfig(url=upstream_url, timeout=upstream_timeout, connect_timeout=2, retries=1, backoff=0.01),
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    kwargs: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": 5,
    }
    if ssl:
        kwargs.update(ssl_certfile=ssl[0], ssl_keyfile=ssl[1])
    server = uvicorn.Server(uvicorn.Config(app, **kwargs))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.01)
    scheme = "https" if ssl else "http"
    try:
        yield RunningGateway(f"{scheme}://127.0.0.1:{port}", opened, app)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        opened.close()


def ssl_context(cafile: str) -> Any:
    """A client TLS context that trusts `cafile` (a test's self-signed certificate)."""
    import ssl

    return ssl.create_default_context(cafile=cafile)


def self_signed_cert(directory: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and localhost, made by openssl: (certfile, keyfile)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return str(cert), str(key)


@contextmanager
def serve_subprocess(
    db_url: str,
    upstream_url: str,
    *,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
    ssl: tuple[str, str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """`pixelgov serve` as a subprocess (its stderr, the access log, in a file): (url, process, log).
    `ssl`: (certfile, keyfile) to serve HTTPS with."""
    import tempfile

    port = free_port()
    log = Path(tempfile.mkstemp(prefix="gateway-", suffix=".log")[1])
    full_env = {
        **os.environ,
        "PIXELGOV_DATABASE_URL": db_url,
        "PIXELGOV_UPSTREAM_URL": upstream_url,
        "PIXELGOV_ADMIN_TOKEN": ADMIN_TOKEN,
        "FAL_KEY": SERVER_FAL_KEY,
        "PIXELGOV_UPSTREAM_TIMEOUT": "5",
        **(env or {}),
    }
    with open(log, "wb") as err:
        command = [
            sys.executable,
            "-c",
            "from pixelgov.cli import main; main()",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
            *(("--ssl-certfile", ssl[0], "--ssl-keyfile", ssl[1]) if ssl else ()),
            *args,
        ]
        proc = subprocess.Popen(command, env=full_env, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
    url = f"{'https' if ssl else 'http'}://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log, verify=ssl_context(ssl[0]) if ssl else True)
        yield url, proc, log
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30, verify: Any = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pixelgov serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"pixelgov serve did not become healthy: {log.read_text()[-2000:]}")
