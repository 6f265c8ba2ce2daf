"""`pixelgov serve`: the governed HTTP gateway (SPEC §7), served by uvicorn."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ledger.errors import InvalidRequest, PixelgovError

from .common import Integer, settings_of

#: The ASGI factory uvicorn imports in each worker (`--workers N` starts processes that import it).
FACTORY = "pixelgov.cli.serve_cmd:worker_app"


def worker_app() -> Any:
    """One worker's app: settings and the gateway's config read from the environment, once, here
    (the edge); one `Ledger` per worker process, closed when the worker exits."""
    import atexit

    from ledger.core import Ledger
    from ledger.settings import Settings

    from ..gateway import GatewayConfig, create_app

    settings = Settings.from_env()
    ledger = Ledger(settings=settings)
    atexit.register(ledger.close)
    ledger.book  # noqa: B018 - loaded (and checked) before the first request
    return create_app(ledger, GatewayConfig.from_env())


def _log_config(access_log: bool) -> dict[str, Any]:
    """Logging as JSON lines on stderr: pixelgov's access log (one line per request, no secrets)
    replaces uvicorn's, whose lines carry the query string."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(message)s"},
            "default": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        },
        "handlers": {
            "access": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
            "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "pixelgov.access": {
                "handlers": ["access"],
                "level": "INFO" if access_log else "WARNING",
                "propagate": False,
            },
            "pixelgov.gateway": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=Integer(1, 65535), help="Port to listen on.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=Integer(1, 64),
    help="Worker processes; they share the database, and the budget invariant holds across them.",
)
@click.option("--ssl-certfile", default=None, metavar="FILE", help="Serve HTTPS with this certificate (PEM).")
@click.option("--ssl-keyfile", default=None, metavar="FILE", help="The certificate's private key (PEM).")
@click.option(
    "--graceful-timeout",
    default=30,
    show_default=True,
    type=Integer(0, 3600),
    help="Seconds a stopping worker (SIGTERM) lets in-flight requests finish; the rest end "
    "failed (not sent) or unknown (sent).",
)
@click.option("--no-access-log", is_flag=True, help="Do not write the JSON access log.")
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    workers: int,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
    graceful_timeout: int,
    no_access_log: bool,
) -> None:
    """Serve the gateway: FAL-compatible routes, the /v1 API and the admin API.

    Agents send their own key (Authorization: Key …); the gateway forwards with the
    server's FAL_KEY, which they never see. The admin API needs PIXELGOV_ADMIN_TOKEN.

    \b
    pixelgov serve --port 8000
    FAL_KEY=... PIXELGOV_ADMIN_TOKEN=... pixelgov serve --port 8000 --workers 2
    # an unmodified fal_client through it:
    FAL_RUN_HOST=127.0.0.1:8443 FAL_QUEUE_RUN_HOST=127.0.0.1:8443/queue FAL_KEY=<agent key> python agent.py
    """
    import uvicorn

    from ledger.core import Ledger

    from ..gateway import GatewayConfig

    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise InvalidRequest("--ssl-certfile and --ssl-keyfile go together", field="ssl")
    for path in (ssl_certfile, ssl_keyfile):
        if path is not None and not os.path.isfile(path):
            raise InvalidRequest(f"cannot read {path}", field="ssl")
    if ssl_certfile is not None and ssl_keyfile is not None:
        check_tls(ssl_certfile, ssl_keyfile)
    given_metrics_dir = _operator_metrics_dir()
    settings = settings_of(ctx)
    config = GatewayConfig.from_env()  # validated here, so a bad value stops the start with one line
    # The database is checked (and the default SQLite file created) before any worker starts.
    with Ledger(settings=settings) as ledger:
        where = ledger.url
        ledger.book  # noqa: B018 - a malformed PIXELGOV_PRICE_BOOK stops the start, not the first request
    if settings.database_url is None:
        os.environ["PIXELGOV_DATABASE_URL"] = where  # every worker opens the same default file
    elif ctx.find_root().obj.get("db_url"):
        os.environ["PIXELGOV_DATABASE_URL"] = settings.database_url  # --db reaches the workers
    check_bind(host, port)
    scheme = "https" if ssl_certfile else "http"
    click.echo(f"pixelgov gateway on {scheme}://{host}:{port} ({workers} worker(s)), ledger {where}", err=True)
    if not config.admin_token:
        click.echo("admin API off: set PIXELGOV_ADMIN_TOKEN to turn it on", err=True)
    if not config.fal_key:
        click.echo("FAL_KEY is not set: prices and checks work, runs answer 502", err=True)
    sys.stderr.flush()
    with _shared_metrics(workers, given_metrics_dir):
        uvicorn.run(
            FACTORY,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            timeout_graceful_shutdown=graceful_timeout,
            log_config=_log_config(not no_access_log),
            access_log=False,
            server_header=False,
            proxy_headers=False,
            lifespan="on",
        )
    logging.shutdown()


class CannotStart(PixelgovError):
    """The server cannot start (exit 1): its address cannot be bound."""

    code = "cannot_start"


def check_tls(certfile: str, keyfile: str) -> None:
    """InvalidRequest (exit 2), in one line, unless the certificate and key load and match."""
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        raise InvalidRequest(
            f"--ssl-certfile/--ssl-keyfile: {certfile} and {keyfile} are not a certificate and its key ({reason})",
            field="ssl",
        ) from None
    except OSError as exc:
        raise InvalidRequest(f"--ssl-certfile/--ssl-keyfile: cannot read them: {exc.strerror}", field="ssl") from None


def check_bind(host: str, port: int) -> None:
    """CannotStart (exit 1), in one line, when `host:port` cannot be bound: an unresolvable host, a
    port in use, no permission. Bound and released at once, as uvicorn will bind it (SO_REUSEADDR)."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        raise CannotStart(f"cannot start: --host {host!r} does not resolve to an address of this machine") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            why = {
                errno.EADDRINUSE: "the port is in use",
                errno.EACCES: "permission denied (ports below 1024 need privileges)",
                errno.EADDRNOTAVAIL: "the address is not one of this machine's",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise CannotStart(f"cannot start: cannot listen on {host}:{port}: {why}") from None


def _operator_metrics_dir() -> Path | None:
    """The operator's `PROMETHEUS_MULTIPROC_DIR`, checked (a writable directory) and emptied of the
    counts of earlier runs, which prometheus-client would otherwise add in; None when unset."""
    from ..gateway.metrics import MULTIPROCESS_ENV

    given = os.environ.get(MULTIPROCESS_ENV)
    if not given:
        return None
    directory = Path(given)
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        raise InvalidRequest(f"{MULTIPROCESS_ENV}: {given} is not a writable directory", field=MULTIPROCESS_ENV)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    return directory


@contextmanager
def _shared_metrics(workers: int, given: Path | None) -> Iterator[None]:
    """Several workers count their metrics in one private directory, so that a scrape answered
    by any of them sums them all (`gateway.metrics`); it goes when the server stops. A directory
    the operator set (`given`) is used as it is and never removed."""
    from ..gateway.metrics import MULTIPROCESS_ENV

    if workers < 2 or given is not None:
        yield
        return
    directory = tempfile.mkdtemp(prefix="pixelgov-metrics-")
    os.environ[MULTIPROCESS_ENV] = directory
    try:
        yield
    finally:
        os.environ.pop(MULTIPROCESS_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)
