"""A fake of FAL's synchronous HTTP API (https://fal.run) for tests and benchmarks.

``FakeFal`` runs a real HTTP/1.1 server on 127.0.0.1 (ephemeral port) in a daemon
thread, using only the standard library and Pillow.

Endpoints
---------
``POST /{endpoint}``
    Any path.  Paths ending in ``/image-to-image`` are *transform* calls, paths
    containing ``upscale`` are *upscale* calls, anything else is *generate*.
    Responses use FAL's JSON shapes and carry ``x-fal-request-id`` and
    ``x-fal-billable-units`` headers.  Every POST is recorded in
    ``FakeFal.requests`` before the response is written.
``GET /files/{id}.{ext}``
    The image behind a URL returned by a POST, rendered lazily at its exact size.
``GET /fixtures/{W}x{H}.png`` / ``.jpg``
    A real image of that size.
``GET /fixtures/big-header``
    A chunked ``image/png`` body that begins like a PNG but never yields a usable
    header; it trickles junk (up to ~50 MB or 60 s) until the client hangs up.
``GET /fixtures/redirect-loop``
    ``302`` to itself.
``GET /fixtures/redirect/{n}/{W}x{H}.png``
    A chain of ``n`` redirects ending at ``/fixtures/{W}x{H}.png``.

Failure modes are selected with :meth:`FakeFal.set_mode`; see its docstring.

Standalone::

    python tests/fake_fal.py [--port N] [--mode slow --delay 3] ...

prints ``FAKE_FAL_URL=http://127.0.0.1:PORT`` and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from PIL import Image

__all__ = ["MODES", "PRESETS", "FakeFal", "RecordedRequest", "billable_units"]

PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
DEFAULT_IMAGE_SIZE = "landscape_4_3"
DEFAULT_UPSCALE = 2

MODES = frozenset(
    {"status", "slow", "drop", "malformed", "wrong_size", "no_size", "fail_times", "echo", "extra_images"}
)

_DEFAULT_DETAILS: dict[int, str] = {
    400: "Bad request",
    404: "Application not found",
    413: "Request entity too large",
    429: "Rate limit exceeded, please retry later",
    500: "Internal server error",
    503: "Service temporarily unavailable",
}

FETCH_TIMEOUT = 5.0
FETCH_MAX_BYTES = 32 * 1024 * 1024
BIG_BODY_MAX_BYTES = 50 * 1024 * 1024
BIG_BODY_MAX_SECONDS = 60.0
BIG_BODY_CHUNK = 32 * 1024
BIG_BODY_INTERVAL = 0.02
STOP_JOIN_TIMEOUT = 1.0

_FILE_RE = re.compile(r"^/files/([0-9a-f]{32})\.(png|jpg)$")
_FIXTURE_RE = re.compile(r"^/fixtures/(\d+)x(\d+)\.(png|jpe?g)$")
_REDIRECT_RE = re.compile(r"^/fixtures/redirect/(\d+)/(\d+)x(\d+)\.(png|jpe?g)$")

_FORMATS: dict[str, tuple[str, str, str]] = {
    "png": ("PNG", "png", "image/png"),
    "jpg": ("JPEG", "jpg", "image/jpeg"),
    "jpeg": ("JPEG", "jpg", "image/jpeg"),
}


def billable_units(width: int, height: int) -> int:
    """Billable hundredths of a megapixel for one image: ``ceil(w*h / 10_000)``."""
    return -(-width * height // 10_000)


def _format_units(hundredths: int) -> str:
    return f"{hundredths // 100}.{hundredths % 100:02d}"


def _render(width: int, height: int, color: tuple[int, int, int], pil_format: str) -> bytes:
    buf = io.BytesIO()
    image = Image.new("RGB", (width, height), color)
    if pil_format == "PNG":
        image.save(buf, format="PNG", compress_level=1)
    else:
        image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


@dataclass(frozen=True)
class RecordedRequest:
    """One POST received by the fake.  ``path`` has no leading slash and no query."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes
    query: str = ""


@dataclass
class _StoredImage:
    id: str
    width: int
    height: int
    color: tuple[int, int, int]
    pil_format: str
    ext: str
    content_type: str
    data: bytes | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class _InputError(Exception):
    """A request validation failure, reported as FAL's 422 body."""

    def __init__(self, loc: list[str], msg: str, type_: str) -> None:
        super().__init__(msg)
        self.item = {"loc": loc, "msg": msg, "type": type_}


class FakeFal:
    """A fake FAL synchronous API server.  Use as a context manager or start()/stop()."""

    def __init__(self, *, image_format: str = "png", port: int = 0) -> None:
        key = image_format.lower()
        if key not in _FORMATS:
            raise ValueError(f"unsupported image_format {image_format!r}; use 'png' or 'jpeg'")
        self._pil_format, self._ext, self._content_type = _FORMATS[key]
        self._port = port
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._mode: str | None = None
        self._options: dict[str, Any] = {}
        self._once = False
        self._fail_remaining = 0
        self._files: dict[str, _StoredImage] = {}
        self._fixtures: dict[tuple[int, int, str], bytes] = {}
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> FakeFal:
        if self._server is not None:
            raise RuntimeError("FakeFal is already running")
        self._stopping = threading.Event()
        server = _Server(("127.0.0.1", self._port), self)
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-fal-{server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if thread is not None:
            thread.join(STOP_JOIN_TIMEOUT)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeFal:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeFal is not running")
        return int(self._server.server_address[1])

    # modes and recording

    @property
    def mode(self) -> str | None:
        with self._lock:
            return self._mode

    def set_mode(self, mode: str | None, *, once: bool = False, **options: Any) -> None:
        """Select how subsequent POSTs are answered (sticky until changed or reset).

        ``None``                                normal behaviour
        ``"status", status=, detail=, retry_after=``  error status with FAL's error body
        ``"slow", delay=2.0``                   respond normally after ``delay`` seconds
        ``"drop"``                              read the request, close without a response
        ``"malformed"``                         200 ``application/json`` that is not JSON
        ``"wrong_size", width=, height=``       every image is (and reports) W×H
        ``"no_size"``                           image objects omit width/height
        ``"fail_times", times=1, status=503, detail=``  next N POSTs fail, then normal
        ``"extra_images", count=1000``           a hostile answer: `count` images (of the requested size)

        ``once=True`` applies the mode to the next POST only.
        """
        if mode is None:
            if options:
                raise ValueError("normal mode takes no options")
            with self._lock:
                self._clear_mode()
            return
        normalised = _normalise_options(mode, options)
        with self._lock:
            self._mode = mode
            self._options = normalised
            self._once = once
            self._fail_remaining = normalised.get("times", 0)

    def reset(self) -> None:
        with self._lock:
            self._clear_mode()
            self.requests.clear()

    def count(self, path_prefix: str = "") -> int:
        prefix = path_prefix.lstrip("/")
        with self._lock:
            return sum(1 for r in self.requests if r.path.startswith(prefix))

    def _clear_mode(self) -> None:
        self._mode = None
        self._options = {}
        self._once = False
        self._fail_remaining = 0

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _take_mode(self) -> tuple[str, dict[str, Any]] | None:
        with self._lock:
            mode, options = self._mode, self._options
            if mode is None:
                return None
            if mode == "fail_times":
                if self._fail_remaining <= 0:
                    self._clear_mode()
                    return None
                self._fail_remaining -= 1
                if self._fail_remaining == 0 or self._once:
                    self._clear_mode()
                return "status", {k: v for k, v in options.items() if k != "times"}
            if self._once:
                self._clear_mode()
            return mode, options

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    # images

    def _store_image(self, width: int, height: int) -> _StoredImage:
        image = _StoredImage(
            id=uuid.uuid4().hex,
            width=width,
            height=height,
            color=(random.randrange(256), random.randrange(256), random.randrange(256)),
            pil_format=self._pil_format,
            ext=self._ext,
            content_type=self._content_type,
        )
        with self._lock:
            self._files[image.id] = image
        return image

    def _image_json(self, image: _StoredImage, *, with_size: bool) -> dict[str, Any]:
        obj: dict[str, Any] = {"url": f"{self.url}/files/{image.id}.{image.ext}"}
        if with_size:
            obj["width"] = image.width
            obj["height"] = image.height
        obj["content_type"] = image.content_type
        return obj

    def _file(self, image_id: str) -> _StoredImage | None:
        with self._lock:
            return self._files.get(image_id)

    def _file_bytes(self, image: _StoredImage) -> bytes:
        with image.lock:
            if image.data is None:
                image.data = _render(image.width, image.height, image.color, image.pil_format)
            return image.data

    def _fixture_bytes(self, width: int, height: int, ext: str) -> bytes:
        pil_format = _FORMATS[ext][0]
        key = (width, height, pil_format)
        with self._lock:
            cached = self._fixtures.get(key)
        if cached is None:
            cached = _render(width, height, (200, 120, 40), pil_format)
            with self._lock:
                self._fixtures[key] = cached
        return cached

    def _input_size(self, image_url: str) -> tuple[int, int]:
        loc = ["body", "image_url"]
        if image_url.startswith("data:"):
            header, sep, payload = image_url.partition(",")
            if not sep:
                raise _InputError(loc, "Invalid data URI", "image_load_error")
            try:
                data = (
                    base64.b64decode(payload, validate=False)
                    if header.endswith(";base64")
                    else urllib.parse.unquote_to_bytes(payload)
                )
                with Image.open(io.BytesIO(data)) as im:
                    return im.size
            except Exception as exc:
                raise _InputError(loc, f"Could not decode image: {exc}", "image_load_error") from exc
        parts = urllib.parse.urlsplit(image_url)
        if parts.scheme not in ("http", "https"):
            raise _InputError(loc, "Unsupported image URL", "image_load_error")
        if self._server is not None and parts.netloc in (
            f"127.0.0.1:{self.port}",
            f"localhost:{self.port}",
        ):
            match = _FILE_RE.match(parts.path)
            if match:
                image = self._file(match.group(1))
                if image is None:
                    raise _InputError(loc, "Image not found", "image_load_error")
                return image.width, image.height
        return _fetch_size(image_url)


def _fetch_size(url: str) -> tuple[int, int]:
    """Size of the image at ``url``, reading no more than the header needs (bounded)."""
    loc = ["body", "image_url"]
    deadline = time.monotonic() + FETCH_TIMEOUT
    buf = bytearray()
    next_attempt = 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "FakeFal/1.0"})
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as resp:
            while True:
                if time.monotonic() > deadline:
                    raise _InputError(loc, "Timed out reading image", "image_load_error")
                chunk = resp.read1(64 * 1024)
                buf += chunk
                if len(buf) > FETCH_MAX_BYTES:
                    raise _InputError(loc, "Image too large", "image_load_error")
                if chunk and len(buf) < next_attempt:
                    continue
                if len(buf) >= 256 * 1024:
                    next_attempt = 2 * len(buf)
                try:
                    with Image.open(io.BytesIO(bytes(buf))) as im:
                        return im.size
                except Exception:
                    if not chunk:
                        raise
    except _InputError:
        raise
    except Exception as exc:
        raise _InputError(loc, f"Could not load image from URL: {exc}", "image_load_error") from exc


def _normalise_options(mode: str, options: dict[str, Any]) -> dict[str, Any]:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(MODES)}")
    allowed: dict[str, tuple[str, ...]] = {
        "status": ("status", "detail", "retry_after"),
        "slow": ("delay",),
        "drop": (),
        "malformed": (),
        "wrong_size": ("width", "height"),
        "no_size": (),
        "fail_times": ("times", "status", "detail", "retry_after"),
        "echo": ("status",),
        "extra_images": ("count",),
    }
    unexpected = set(options) - set(allowed[mode])
    if unexpected:
        raise ValueError(f"mode {mode!r} does not take {sorted(unexpected)}")
    out: dict[str, Any] = {}
    if mode in ("status", "fail_times"):
        status = int(options.get("status", 500 if mode == "status" else 503))
        if not 400 <= status <= 599:
            raise ValueError(f"status must be 4xx or 5xx, got {status}")
        out["status"] = status
        out["detail"] = options.get("detail")
        out["retry_after"] = options.get("retry_after", 1)
    if mode == "echo":
        out["status"] = int(options.get("status", 400))
    if mode == "fail_times":
        out["times"] = int(options.get("times", 1))
        if out["times"] < 0:
            raise ValueError("times must be >= 0")
    if mode == "extra_images":
        out["count"] = int(options.get("count", 1000))
        if out["count"] < 1:
            raise ValueError("count must be >= 1")
    if mode == "slow":
        out["delay"] = float(options.get("delay", 2.0))
        if out["delay"] < 0:
            raise ValueError("delay must be >= 0")
    if mode == "wrong_size":
        try:
            out["width"], out["height"] = int(options["width"]), int(options["height"])
        except KeyError as exc:
            raise ValueError("wrong_size needs width and height") from exc
        if out["width"] < 1 or out["height"] < 1:
            raise ValueError("width and height must be positive")
    return out


def _positive_int(value: Any, loc: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _InputError(loc, "Input should be a positive integer", "int_type")
    return value


def _parse_image_size(value: Any) -> tuple[int, int]:
    loc = ["body", "image_size"]
    if isinstance(value, str):
        if value not in PRESETS:
            raise _InputError(loc, f"Unknown image_size preset {value!r}", "enum")
        return PRESETS[value]
    if isinstance(value, dict):
        return (
            _positive_int(value.get("width"), [*loc, "width"]),
            _positive_int(value.get("height"), [*loc, "height"]),
        )
    raise _InputError(loc, "Input should be a preset name or {width, height}", "type_error")


def _parse_scale(body: dict[str, Any]) -> float:
    value = body.get("scale", body.get("upscale_factor", DEFAULT_UPSCALE))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise _InputError(["body", "scale"], "Input should be a positive number", "float_type")
    return float(value)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], fake: FakeFal) -> None:
        self.fake = fake
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeFal/1.0"
    disable_nagle_algorithm = True  # headers and body go out at once: no delayed-ACK stall on keep-alive
    timeout = 30
    server: _Server

    @property
    def fake(self) -> FakeFal:
        return self.server.fake

    def setup(self) -> None:
        super().setup()
        self.fake._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # plumbing

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        *,
        head: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None, *, head: bool = False) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers, head=head)

    def _redirect(self, location: str, *, head: bool) -> None:
        self._send(302, b"", "text/plain", {"Location": f"{self.fake.url}{location}"}, head=head)

    # POST

    def do_POST(self) -> None:
        raw = self._read_body()
        path, _, query = self.path.partition("?")
        path = path.lstrip("/")
        body: Any = None
        invalid_json = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                invalid_json = True
        self.fake._record(
            RecordedRequest(
                method="POST",
                path=path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                raw=raw,
                query=query,
            )
        )
        taken = self.fake._take_mode()
        mode, options = taken if taken is not None else (None, {})
        headers = {"x-fal-request-id": str(uuid.uuid4())}

        if mode == "drop":
            self.close_connection = True
            return
        if mode == "status":
            self._send_failure(options, headers)
            return
        if mode == "malformed":
            self._send(200, b'{"images": [', "application/json", headers)
            return
        if mode == "echo":
            # A hostile upstream: every request header (the key included) comes back in the body,
            # in the detail message, in a response header and in an image URL's user info.
            seen = {k: v for k, v in self.headers.items()}
            auth = seen.get("Authorization", "")
            headers["x-fal-request-id"] = f"echo {auth}"
            headers["x-fal-billable-units"] = auth
            obj = {
                "detail": f"echoing your request: Authorization: {auth}",
                "headers": seen,
                "images": [
                    {"url": f"https://user:{auth.split(' ')[-1]}@cdn.example/x.png", "width": 1024, "height": 768}
                ],
            }
            self._send_json(options["status"], obj, headers)
            return
        if mode == "slow" and self.fake._stopping.wait(options["delay"]):
            self.close_connection = True
            return

        try:
            if invalid_json:
                raise _InputError(["body"], "Input should be valid JSON", "json_invalid")
            if body is None:
                body = {}
            if not isinstance(body, dict):
                raise _InputError(["body"], "Input should be a valid dictionary", "dict_type")
            override = (options["width"], options["height"]) if mode == "wrong_size" else None
            with_size = mode != "no_size"
            if path.endswith("/image-to-image") or "upscale" not in path:
                payload, units = self._generate(body, override, with_size)
                if mode == "extra_images":  # the same image, listed `count` times
                    payload["images"] = payload["images"][:1] * options["count"]
            else:
                payload, units = self._upscale(body, override, with_size)
        except _InputError as exc:
            self._send_json(422, {"detail": [exc.item]}, headers)
            return
        headers["x-fal-billable-units"] = _format_units(units)
        self._send_json(200, payload, headers)

    def _send_failure(self, options: dict[str, Any], headers: dict[str, str]) -> None:
        status: int = options["status"]
        detail: str | None = options.get("detail")
        if status == 422:
            obj: dict[str, Any] = {
                "detail": [{"loc": ["body", "prompt"], "msg": detail or "field required", "type": "missing"}]
            }
        else:
            default = _DEFAULT_DETAILS.get(status) or HTTPStatus(status).phrase
            obj = {"detail": detail or default}
        if status == 429:
            headers["Retry-After"] = str(options.get("retry_after", 1))
        self._send_json(status, obj, headers)

    def _generate(
        self, body: dict[str, Any], override: tuple[int, int] | None, with_size: bool
    ) -> tuple[dict[str, Any], int]:
        width, height = _parse_image_size(body.get("image_size", DEFAULT_IMAGE_SIZE))
        count = _positive_int(body.get("num_images", 1), ["body", "num_images"])
        if override is not None:
            width, height = override
        images = [self.fake._store_image(width, height) for _ in range(count)]
        seed = body.get("seed")
        payload = {
            "images": [self.fake._image_json(im, with_size=with_size) for im in images],
            "timings": {"inference": 0.01},
            "seed": seed if isinstance(seed, int) else random.randrange(2**31),
            "has_nsfw_concepts": [False] * count,
            "prompt": body.get("prompt"),
        }
        return payload, sum(billable_units(im.width, im.height) for im in images)

    def _upscale(
        self, body: dict[str, Any], override: tuple[int, int] | None, with_size: bool
    ) -> tuple[dict[str, Any], int]:
        image_url = body.get("image_url")
        if not isinstance(image_url, str) or not image_url:
            raise _InputError(["body", "image_url"], "field required", "missing")
        scale = _parse_scale(body)
        width, height = self.fake._input_size(image_url)
        out = override or (max(1, round(width * scale)), max(1, round(height * scale)))
        image = self.fake._store_image(*out)
        payload = {"image": self.fake._image_json(image, with_size=with_size)}
        return payload, billable_units(image.width, image.height)

    # GET / HEAD

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, *, head: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if match := _FILE_RE.match(path):
            image = self.fake._file(match.group(1))
            if image is not None and image.ext == match.group(2):
                self._send(200, self.fake._file_bytes(image), image.content_type, head=head)
                return
        elif match := _FIXTURE_RE.match(path):
            width, height, ext = int(match.group(1)), int(match.group(2)), match.group(3)
            if width > 0 and height > 0:
                data = self.fake._fixture_bytes(width, height, ext)
                self._send(200, data, _FORMATS[ext][2], head=head)
                return
        elif path == "/fixtures/big-header":
            self._stream_junk(head=head)
            return
        elif path == "/fixtures/redirect-loop":
            self._redirect("/fixtures/redirect-loop", head=head)
            return
        elif match := _REDIRECT_RE.match(path):
            hops, size = int(match.group(1)), f"{match.group(2)}x{match.group(3)}.{match.group(4)}"
            if hops == 0:
                self.path = f"/fixtures/{size}"
                self._serve(head=head)
            elif hops == 1:
                self._redirect(f"/fixtures/{size}", head=head)
            else:
                self._redirect(f"/fixtures/redirect/{hops - 1}/{size}", head=head)
            return
        self._send_json(404, {"detail": "Not Found"}, head=head)

    def _stream_junk(self, *, head: bool) -> None:
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        if head:
            return
        first = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 0x7FFFFFF0) + b"zzzz"
        junk = b"\xab" * BIG_BODY_CHUNK
        deadline = time.monotonic() + BIG_BODY_MAX_SECONDS
        sent = 0
        try:
            self._write_chunk(first)
            while sent < BIG_BODY_MAX_BYTES and time.monotonic() < deadline:
                if self.fake._stopping.wait(BIG_BODY_INTERVAL):
                    return
                self._write_chunk(junk)
                sent += len(junk)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the fake FAL API server in the foreground.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--image-format", default="png", choices=sorted(_FORMATS))
    parser.add_argument("--mode", choices=sorted(MODES))
    parser.add_argument("--once", action="store_true", help="apply --mode to the first POST only")
    parser.add_argument("--status", type=int)
    parser.add_argument("--detail")
    parser.add_argument("--delay", type=float)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--times", type=int)
    args = parser.parse_args(argv)

    fake = FakeFal(image_format=args.image_format, port=args.port)
    if args.mode:
        names = ("status", "detail", "delay", "width", "height", "times")
        options = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
        try:
            fake.set_mode(args.mode, once=args.once, **options)
        except ValueError as exc:
            parser.error(str(exc))

    done = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    fake.start()
    print(f"FAKE_FAL_URL={fake.url}", flush=True)
    try:
        while not done.wait(0.2):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
