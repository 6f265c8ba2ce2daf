"""The upscale input's size, read from a local file, a data: URI or an http URL — bounded in
bytes, time and redirects — and an upscale quote that uses it (`ledger.forward.quoting.quote_body`)."""

from __future__ import annotations

import base64
import io
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from ledger.forward import imageprobe
from ledger.forward.imageprobe import probe_size
from ledger.forward.quoting import quote_body
from pricing import InvalidRequest, ModelNotFound

sys.path.insert(0, str(Path(__file__).parent))
from fake_fal import BIG_BODY_MAX_SECONDS, FakeFal

UPSCALE = "fal-ai/topaz/upscale/image"


def image_bytes(fmt: str, size: tuple[int, int] = (321, 123), mode: str = "RGB", **save: object) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (10, 20, 30, 40)[: len(mode)]).save(buf, fmt, **save)
    return buf.getvalue()


def jpeg_with_big_comment(size: tuple[int, int], comment_bytes: int) -> bytes:
    """A valid JPEG whose frame header comes after `comment_bytes` of COM segments."""
    jpeg = image_bytes("JPEG", size)
    segments = b""
    while len(segments) < comment_bytes:
        segments += b"\xff\xfe\xff\xff" + b"c" * 65533
    return jpeg[:2] + segments + jpeg[2:]


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


FORMATS = {
    "png": ("PNG", {}),
    "jpeg": ("JPEG", {}),
    "progressive-jpeg": ("JPEG", {"progressive": True}),
    "gif": ("GIF", {}),
    "bmp": ("BMP", {}),
    "webp-lossy": ("WEBP", {}),
    "webp-lossless": ("WEBP", {"lossless": True}),
}


# --- hostile servers --------------------------------------------------------------------------


class _Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stop: threading.Event
    big_jpeg = jpeg_with_big_comment((640, 480), 300_000)

    def log_message(self, *args: object) -> None:
        pass

    def _chunked_headers(self, content_type: str) -> None:
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self) -> None:
        try:
            if self.path == "/trickle.jpg":  # a JPEG header that never ends, 10 bytes every 0.1 s for 20 s
                self._chunked_headers("image/jpeg")
                self._chunk(b"\xff\xd8\xff\xfe\xff\xff")
                end = time.monotonic() + 20
                while time.monotonic() < end and not self.stop.wait(0.1):
                    self._chunk(b"c" * 10)
            elif self.path == "/flood.jpg":  # JPEG comment segments as fast as the socket takes them
                self._chunked_headers("image/jpeg")
                self._chunk(b"\xff\xd8")
                segment = b"\xff\xfe\xff\xff" + b"c" * 65533
                end = time.monotonic() + 20
                while time.monotonic() < end and not self.stop.is_set():
                    self._chunk(segment)
            elif self.path == "/big-comment.jpg":
                body = self.big_jpeg
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:  # 200, but not an image
                body = b"<html><body>hello, not an image</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        except OSError:
            pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client hanging up is the point
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def hostile() -> Iterator[str]:
    stop = threading.Event()
    handler = type("Handler", (_Hostile,), {"stop": stop})
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    stop.set()
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def fal() -> Iterator[FakeFal]:
    with FakeFal() as fake:
        yield fake


def refused(url: str, **kwargs: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as exc:
        probe_size(url, **kwargs)  # type: ignore[arg-type]
    assert (exc.value.code, exc.value.field) == ("invalid_request", "image_url")
    # The caller can fall back to an explicit input size; the library's message names no CLI flag.
    assert exc.value.details["reason"] == "input_size_unknown"
    assert "input_size" in exc.value.message and "--" not in exc.value.message
    return exc.value


# --- local files and data: URIs ---------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_local_file_size_is_read_from_its_header(tmp_path, kind):
    fmt, save = FORMATS[kind]
    path = tmp_path / f"in.{kind}"
    path.write_bytes(image_bytes(fmt, (321, 123), **save))
    assert probe_size(str(path)) == (321, 123)


def test_webp_extended_format_with_alpha_is_read(tmp_path):
    data = image_bytes("WEBP", (777, 55), mode="RGBA")
    assert data[12:16] == b"VP8X"
    path = tmp_path / "alpha.webp"
    path.write_bytes(data)
    assert probe_size(str(path)) == (777, 55)


def test_file_uri_is_read(tmp_path):
    path = tmp_path / "with space.png"
    path.write_bytes(image_bytes("PNG", (64, 48)))
    assert probe_size(path.as_uri()) == (64, 48)


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_base64_data_uri_is_read(fmt, mime):
    assert probe_size(data_uri(image_bytes(fmt, (200, 100)), mime)) == (200, 100)


def test_percent_encoded_data_uri_is_read():
    uri = "data:image/png," + urllib.parse.quote_from_bytes(image_bytes("PNG", (33, 44)))
    assert probe_size(uri) == (33, 44)


def test_a_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are not the pixels you are looking for")
    refused(str(path))


def test_a_truncated_png_is_refused(tmp_path):
    path = tmp_path / "cut.png"
    path.write_bytes(image_bytes("PNG")[:20])
    refused(str(path))


def test_a_png_signature_without_ihdr_is_refused(tmp_path):
    path = tmp_path / "fake.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x7f\xff\xff\xf0zzzz" + b"\xab" * 64)
    refused(str(path))


@pytest.mark.parametrize("uri", ["data:text/plain,hello", "data:image/png;base64,aGVsbG8gd29ybGQ=", "data:image/png"])
def test_a_data_uri_that_is_not_an_image_is_refused(uri):
    refused(uri)


def test_a_missing_file_is_refused(tmp_path):
    refused(str(tmp_path / "nope.png"))


def test_an_unsupported_scheme_is_refused():
    refused("ftp://example.invalid/x.png")


def test_local_reads_are_bounded_in_bytes(tmp_path):
    path = tmp_path / "big-comment.jpg"
    path.write_bytes(jpeg_with_big_comment((640, 480), 300_000))
    assert probe_size(str(path), max_bytes=1_000_000) == (640, 480)
    refused(str(path), max_bytes=64 * 1024)
    refused(str(path))  # the default header limit (256 KiB) is below 300 KB of comments


# --- http URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["640x480.png", "300x200.jpg", "1x1.png"])
def test_http_image_size_is_read(fal, name):
    w, h = (int(v) for v in name.split(".")[0].split("x"))
    assert probe_size(f"{fal.url}/fixtures/{name}") == (w, h)


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_up_to_three_redirects_are_followed(fal, hops):
    assert imageprobe.MAX_REDIRECTS == 3
    assert probe_size(f"{fal.url}/fixtures/redirect/{hops}/320x240.png") == (320, 240)


@pytest.mark.parametrize("hops", [4, 5])
def test_more_than_three_redirects_are_refused(fal, hops):
    refused(f"{fal.url}/fixtures/redirect/{hops}/320x240.png")


def test_a_redirect_loop_is_refused(fal):
    refused(f"{fal.url}/fixtures/redirect-loop")


def test_a_404_is_refused(fal):
    refused(f"{fal.url}/fixtures/no-such-thing.png")


def test_a_non_image_http_answer_is_refused(hostile):
    refused(f"{hostile}/page.html")


def test_big_header_gives_up_quickly(fal):
    started = time.monotonic()
    refused(f"{fal.url}/fixtures/big-header", max_bytes=64 * 1024, timeout=2.0)
    assert time.monotonic() - started < 5 < BIG_BODY_MAX_SECONDS


def test_a_trickling_server_is_given_up_after_the_timeout(hostile):
    started = time.monotonic()
    refused(f"{hostile}/trickle.jpg", timeout=0.5)
    assert time.monotonic() - started < 3  # the server would trickle for 20 s


def test_a_flooding_server_is_given_up_after_max_bytes(hostile):
    started = time.monotonic()
    refused(f"{hostile}/flood.jpg", max_bytes=64 * 1024, timeout=10.0)
    assert time.monotonic() - started < 5  # the server would stream for 20 s


def test_http_reads_are_bounded_in_bytes(hostile):
    assert probe_size(f"{hostile}/big-comment.jpg", max_bytes=1_000_000) == (640, 480)
    refused(f"{hostile}/big-comment.jpg", max_bytes=64 * 1024)


def test_an_unreachable_host_is_refused():
    refused("http://127.0.0.1:9/x.png", timeout=1.0)


# --- an upscale quote reads its input size ----------------------------------------------------


def test_upscale_quote_reads_a_local_file(tmp_path):
    path = tmp_path / "in.png"
    path.write_bytes(image_bytes("PNG", (1024, 768)))
    q = quote_body(UPSCALE, {"image_url": str(path)})
    assert (q.input_width, q.input_height, q.width, q.height) == (1024, 768, 2048, 1536)
    assert q.amount == Decimal("0.0945")
    assert q.price == "$0.095"


def test_upscale_quote_reads_a_jpeg_by_4(tmp_path):
    path = tmp_path / "in.jpg"
    path.write_bytes(image_bytes("JPEG", (1024, 768)))
    q = quote_body(UPSCALE, {"image_url": str(path), "scale": 4})
    assert (q.width, q.height, q.amount) == (4096, 3072, Decimal("0.3777"))


def test_upscale_quote_reads_a_webp_data_uri():
    q = quote_body(UPSCALE, {"image_url": data_uri(image_bytes("WEBP", (1024, 768)), "image/webp")})
    assert q.amount == Decimal("0.0945")


def test_upscale_quote_reads_an_http_url(fal):
    q = quote_body(UPSCALE, {"image_url": f"{fal.url}/fixtures/1024x768.png", "upscale_factor": 2})
    assert (q.input_width, q.input_height, q.amount) == (1024, 768, Decimal("0.0945"))


def test_upscale_quote_of_a_big_header_is_refused_not_priced(fal):
    with pytest.raises(InvalidRequest) as exc:
        quote_body(UPSCALE, {"image_url": f"{fal.url}/fixtures/big-header"})
    assert (exc.value.code, exc.value.field) == ("invalid_request", "image_url")


def test_upscale_quote_of_a_too_large_input_image_is_image_too_large(tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(image_bytes("PNG", (14143, 1)))
    with pytest.raises(InvalidRequest) as exc:
        quote_body(UPSCALE, {"image_url": str(path)})
    assert (exc.value.code, exc.value.field) == ("image_too_large", "input_size")


def test_upscale_quote_with_input_size_does_not_read_the_image(tmp_path):
    q = quote_body(UPSCALE, {"image_url": str(tmp_path / "missing.png"), "input_size": "1024x768"})
    assert q.amount == Decimal("0.0945")


def test_upscale_quote_without_image_or_size_is_refused():
    with pytest.raises(InvalidRequest) as exc:
        quote_body(UPSCALE, {})
    assert (exc.value.code, exc.value.field) == ("invalid_request", "input_size")
    assert exc.value.details["reason"] == "missing"
    assert "--" not in exc.value.message  # a library message: the CLI adds its own flag hint


def test_transform_quote_never_reads_its_input_image(tmp_path):
    q = quote_body("fal-ai/flux/dev/image-to-image", {"image_url": str(tmp_path / "missing.png")})
    assert q.amount == Decimal("0.79") * Decimal("0.045")


def test_quote_body_of_an_unknown_endpoint_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound):
        quote_body("fal-ai/nope", {"image_url": str(tmp_path / "x.png")})


# --- a request from the network (the gateway) reads no local file and no internal host -------------


def test_a_remote_request_may_not_read_a_local_file(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(image_bytes("PNG"))
    assert probe_size(str(path)) == (321, 123)  # the CLI's own user may
    for url in (str(path), path.as_uri()):
        err = refused(url, remote=True)
        assert "only http(s) and data: URLs" in str(err)
        assert str(tmp_path) not in str(err)  # not even whether it exists


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "10.1.2.3",
        "192.168.0.9",
        "169.254.169.254",
        "[::1]",
        "0.0.0.0",
        "0.1.2.3",
        "100.64.0.1",  # CGNAT
        "224.0.0.1",  # multicast
        "240.0.0.1",  # reserved
        "[::ffff:127.0.0.1]",  # IPv4-mapped loopback
        "[::ffff:10.0.0.1]",
        "[fe80::1]",
        "[fc00::1]",
    ],
)
def test_a_remote_request_may_not_reach_a_non_public_host(host):
    err = refused(f"http://{host}:9/meta-data/image.png", remote=True)
    assert "not a public address" in str(err)


def test_the_public_address_check_runs_before_connecting():
    import http.server
    import threading

    seen: list[str] = []
    png = image_bytes("PNG", (320, 240))

    class Counting(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/a.png"
        assert probe_size(url) == (320, 240)  # served: the CLI's own user reads it
        assert len(seen) == 1
        assert "not a public address" in str(refused(url, remote=True))
        assert len(seen) == 1  # the server never saw the remote request
    finally:
        server.shutdown()
        server.server_close()


def test_the_connection_goes_to_the_address_that_was_checked(monkeypatch):
    """DNS rebinding: a host that resolves to a public address for the check and to a private one a
    moment later is still connected at the checked address (Host and TLS name kept)."""
    import socket

    import httpx

    from ledger.forward.imageprobe import PinnedAddresses

    answers = iter(["93.184.216.34", "127.0.0.1"])

    def resolve(host, *_args, **_kwargs):  # type: ignore[no-untyped-def]
        address = next(answers)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    pins = PinnedAddresses()
    request = httpx.Request("GET", "https://images.example.test/a.png")
    pins.request(request)
    assert request.url.host == "93.184.216.34"  # the checked address, whatever DNS says next
    assert request.headers["Host"] == "images.example.test"
    assert request.extensions["sni_hostname"] == "images.example.test"
    pins.response(httpx.Response(302, headers={"Location": "/b.png"}, request=request))
    assert request.url.host == "images.example.test"  # a relative redirect resolves against the host
    again = httpx.Request("GET", "https://images.example.test/b.png")
    with pytest.raises(InvalidRequest, match="not a public address"):
        pins.request(again)  # the redirect's own check sees the private answer


def test_a_remote_request_still_reads_a_data_uri():
    assert probe_size(data_uri(image_bytes("PNG")), remote=True) == (321, 123)
