"""Tests for the FakeFal HTTP fixture (tests/fake_fal.py), over real sockets with httpx."""

from __future__ import annotations

import base64
import io
import pathlib
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from fake_fal import FakeFal

GENERATE = "fal-ai/flux/dev"
TRANSFORM = "fal-ai/flux/dev/image-to-image"
UPSCALE = "fal-ai/clarity-upscaler"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeFal]:
    with FakeFal() as fake:
        yield fake


@pytest.fixture()
def fal(server: FakeFal) -> Iterator[FakeFal]:
    server.reset()
    yield server
    server.reset()


@pytest.fixture()
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as c:
        yield c


def _post(client: httpx.Client, fal: FakeFal, path: str, body: object) -> httpx.Response:
    return client.post(f"{fal.url}/{path}", json=body)


def _decoded_size(client: httpx.Client, url: str) -> tuple[int, int]:
    resp = client.get(url)
    assert resp.status_code == 200
    assert resp.headers["content-length"] == str(len(resp.content))
    with Image.open(io.BytesIO(resp.content)) as im:
        assert im.format == "PNG"
        assert resp.headers["content-type"] == "image/png"
        return im.size


def _data_uri(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (1, 2, 3)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# normal behaviour


def test_generate_preset_returns_real_png(fal: FakeFal, client: httpx.Client) -> None:
    resp = _post(client, fal, GENERATE, {"prompt": "a cat", "image_size": "portrait_16_9"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["x-fal-request-id"]
    data = resp.json()
    assert data["prompt"] == "a cat"
    assert data["has_nsfw_concepts"] == [False]
    assert isinstance(data["seed"], int)
    assert data["timings"] == {"inference": 0.01}
    (image,) = data["images"]
    assert (image["width"], image["height"], image["content_type"]) == (576, 1024, "image/png")
    assert image["url"].startswith(f"{fal.url}/files/") and image["url"].endswith(".png")
    assert _decoded_size(client, image["url"]) == (576, 1024)


def test_generate_custom_size(fal: FakeFal, client: httpx.Client) -> None:
    body = {"prompt": "x", "image_size": {"width": 300, "height": 200}}
    (image,) = _post(client, fal, GENERATE, body).json()["images"]
    assert (image["width"], image["height"]) == (300, 200)
    assert _decoded_size(client, image["url"]) == (300, 200)


def test_default_size_and_billable_units(fal: FakeFal, client: httpx.Client) -> None:
    resp = _post(client, fal, GENERATE, {"prompt": "x"})
    (image,) = resp.json()["images"]
    assert (image["width"], image["height"]) == (1024, 768)
    assert resp.headers["x-fal-billable-units"] == "0.79"


def test_num_images(fal: FakeFal, client: httpx.Client) -> None:
    resp = _post(client, fal, GENERATE, {"prompt": "x", "image_size": "square", "num_images": 3})
    data = resp.json()
    assert len(data["images"]) == 3
    assert len({im["url"] for im in data["images"]}) == 3
    assert data["has_nsfw_concepts"] == [False] * 3
    assert resp.headers["x-fal-billable-units"] == "0.81"


def test_transform_endpoint(fal: FakeFal, client: httpx.Client) -> None:
    body = {"prompt": "x", "image_url": _data_uri(10, 10), "image_size": "square_hd"}
    (image,) = _post(client, fal, TRANSFORM, body).json()["images"]
    assert (image["width"], image["height"]) == (1024, 1024)


def test_upscale_data_uri(fal: FakeFal, client: httpx.Client) -> None:
    resp = _post(client, fal, UPSCALE, {"image_url": _data_uri(100, 50), "scale": 4})
    assert resp.status_code == 200
    image = resp.json()["image"]
    assert (image["width"], image["height"]) == (400, 200)
    assert resp.headers["x-fal-billable-units"] == "0.08"
    assert _decoded_size(client, image["url"]) == (400, 200)


def test_upscale_fixture_url_and_own_file(fal: FakeFal, client: httpx.Client) -> None:
    resp = _post(client, fal, UPSCALE, {"image_url": f"{fal.url}/fixtures/64x32.png"})
    first = resp.json()["image"]
    assert (first["width"], first["height"]) == (128, 64)
    resp = _post(client, fal, UPSCALE, {"image_url": first["url"], "upscale_factor": 3})
    second = resp.json()["image"]
    assert (second["width"], second["height"]) == (384, 192)


def test_upscale_bad_input_is_422(fal: FakeFal, client: httpx.Client) -> None:
    resp = _post(client, fal, UPSCALE, {"image_url": f"{fal.url}/nope.png"})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "image_url"]


def test_fixtures(fal: FakeFal, client: httpx.Client) -> None:
    assert _decoded_size(client, f"{fal.url}/fixtures/64x32.png") == (64, 32)
    jpg = client.get(f"{fal.url}/fixtures/20x10.jpg")
    assert jpg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpg.content)).size == (20, 10)
    assert client.get(f"{fal.url}/files/{'0' * 32}.png").status_code == 404


def test_redirects(fal: FakeFal, client: httpx.Client) -> None:
    resp = client.get(f"{fal.url}/fixtures/redirect/3/40x30.png", follow_redirects=True)
    assert len(resp.history) == 3
    assert Image.open(io.BytesIO(resp.content)).size == (40, 30)
    with pytest.raises(httpx.TooManyRedirects):
        client.get(f"{fal.url}/fixtures/redirect-loop", follow_redirects=True)


def test_big_header_streams_junk(fal: FakeFal, client: httpx.Client) -> None:
    with client.stream("GET", f"{fal.url}/fixtures/big-header") as resp:
        assert resp.headers["content-type"] == "image/png"
        assert "content-length" not in resp.headers
        received = b""
        for chunk in resp.iter_bytes():
            received += chunk
            if len(received) >= 100_000:
                break
    assert received.startswith(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(OSError):
        Image.open(io.BytesIO(received))


def test_recording_and_count(fal: FakeFal, client: httpx.Client) -> None:
    client.post(f"{fal.url}/{GENERATE}?x=1", json={"prompt": "one"}, headers={"Authorization": "Key k"})
    _post(client, fal, UPSCALE, {"image_url": _data_uri(4, 4)})
    assert [r.path for r in fal.requests] == [GENERATE, UPSCALE]
    first = fal.requests[0]
    assert first.method == "POST"
    assert first.body == {"prompt": "one"}
    assert first.headers["authorization"] == "Key k"
    assert first.raw == b'{"prompt":"one"}'
    assert first.query == "x=1"
    assert fal.count() == 2
    assert fal.count("fal-ai/flux") == 1
    fal.reset()
    assert fal.count() == 0


# failure modes


@pytest.mark.parametrize("status", [400, 404, 413, 429, 500, 503])
def test_status_mode(fal: FakeFal, client: httpx.Client, status: int) -> None:
    fal.set_mode("status", status=status)
    resp = _post(client, fal, GENERATE, {"prompt": "x"})
    assert resp.status_code == status
    detail = resp.json()["detail"]
    assert isinstance(detail, str) and detail
    assert (resp.headers.get("retry-after") == "1") == (status == 429)
    assert fal.count() == 1
    assert _post(client, fal, GENERATE, {"prompt": "x"}).status_code == status


def test_status_mode_custom_detail_and_422(fal: FakeFal, client: httpx.Client) -> None:
    fal.set_mode("status", status=500, detail="boom")
    assert _post(client, fal, GENERATE, {}).json() == {"detail": "boom"}
    fal.set_mode("status", status=422)
    resp = _post(client, fal, GENERATE, {})
    assert resp.status_code == 422
    assert resp.json() == {"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}]}


def test_slow_mode_times_out(fal: FakeFal) -> None:
    fal.set_mode("slow", delay=2.0)
    with httpx.Client(timeout=0.2) as c, pytest.raises(httpx.ReadTimeout):
        c.post(f"{fal.url}/{GENERATE}", json={"prompt": "x"})
    assert fal.count() == 1


def test_slow_mode_eventually_responds(fal: FakeFal, client: httpx.Client) -> None:
    fal.set_mode("slow", delay=0.3)
    started = time.monotonic()
    resp = _post(client, fal, GENERATE, {"prompt": "x"})
    assert resp.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_drop_mode(fal: FakeFal, client: httpx.Client) -> None:
    fal.set_mode("drop")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        _post(client, fal, GENERATE, {"prompt": "x"})
    assert fal.requests[0].body == {"prompt": "x"}


def test_malformed_mode(fal: FakeFal, client: httpx.Client) -> None:
    fal.set_mode("malformed")
    resp = _post(client, fal, GENERATE, {"prompt": "x"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    with pytest.raises(ValueError):
        resp.json()


def test_wrong_size_mode(fal: FakeFal, client: httpx.Client) -> None:
    fal.set_mode("wrong_size", width=100, height=80)
    (image,) = _post(client, fal, GENERATE, {"prompt": "x", "image_size": "square_hd"}).json()["images"]
    assert (image["width"], image["height"]) == (100, 80)
    assert _decoded_size(client, image["url"]) == (100, 80)
    upscaled = _post(client, fal, UPSCALE, {"image_url": _data_uri(10, 10)}).json()["image"]
    assert (upscaled["width"], upscaled["height"]) == (100, 80)


def test_no_size_mode(fal: FakeFal, client: httpx.Client) -> None:
    fal.set_mode("no_size")
    (image,) = _post(client, fal, GENERATE, {"prompt": "x", "image_size": "square"}).json()["images"]
    assert "width" not in image and "height" not in image
    assert _decoded_size(client, image["url"]) == (512, 512)


def test_fail_times(fal: FakeFal, client: httpx.Client) -> None:
    fal.set_mode("fail_times", times=2, status=503)
    codes = [_post(client, fal, GENERATE, {"prompt": "x"}).status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    assert fal.mode is None


def test_once_reverts(fal: FakeFal, client: httpx.Client) -> None:
    fal.set_mode("status", status=500, once=True)
    assert _post(client, fal, GENERATE, {"prompt": "x"}).status_code == 500
    assert _post(client, fal, GENERATE, {"prompt": "x"}).status_code == 200
    fal.set_mode("drop", once=True)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        _post(client, fal, GENERATE, {"prompt": "x"})
    assert _post(client, fal, GENERATE, {"prompt": "x"}).status_code == 200


def test_invalid_mode_rejected(fal: FakeFal) -> None:
    with pytest.raises(ValueError):
        fal.set_mode("nope")
    with pytest.raises(ValueError):
        fal.set_mode("slow", status=500)
    with pytest.raises(ValueError):
        fal.set_mode("wrong_size", width=10)


def test_stop_interrupts_slow_request() -> None:
    fake = FakeFal().start()
    fake.set_mode("slow", delay=30)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(f"{fake.url}/{GENERATE}", json={"prompt": "x"}, timeout=10)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 2
    while fake.count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 1.0
    worker.join(2)
    assert not worker.is_alive()
    assert errors and isinstance(errors[0], httpx.TransportError)


def test_jpeg_format() -> None:
    with FakeFal(image_format="jpeg") as fake:
        resp = httpx.post(f"{fake.url}/{GENERATE}", json={"image_size": "square"})
        (image,) = resp.json()["images"]
        assert image["content_type"] == "image/jpeg" and image["url"].endswith(".jpg")
        got = httpx.get(image["url"])
        assert got.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(got.content)) as im:
            assert (im.format, im.size) == ("JPEG", (512, 512))


# standalone


def test_standalone_script() -> None:
    script = pathlib.Path(__file__).with_name("fake_fal.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--mode", "status", "--status", "503", "--once"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 5)
        assert ready, "fake_fal.py did not print its URL"
        line = proc.stdout.readline()
        assert line.startswith("FAKE_FAL_URL=http://127.0.0.1:")
        url = line.strip().split("=", 1)[1]
        with httpx.Client(timeout=5) as c:
            assert c.post(f"{url}/{GENERATE}", json={"prompt": "x"}).status_code == 503
            resp = c.post(f"{url}/{GENERATE}", json={"prompt": "x", "image_size": "square"})
            assert resp.status_code == 200
            assert _decoded_size(c, resp.json()["images"][0]["url"]) == (512, 512)
        proc.terminate()
        assert proc.wait(timeout=5) == 0
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
