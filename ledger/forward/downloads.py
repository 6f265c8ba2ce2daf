"""Saving a run's images to a directory (`pixelgov run --out DIR`)."""

from __future__ import annotations

import base64
import mimetypes
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from ..errors import CannotWrite

MAX_IMAGE_BYTES = 256 * 1024 * 1024
DOWNLOAD_TIMEOUT = 60.0


def ensure_writable(directory: str) -> Path:
    """Create DIR if needed and prove it is writable, before anything is authorized or sent."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".pixelgov-write-test-"):
            pass
    except OSError as exc:
        raise CannotWrite(f"cannot write {directory}: {exc.strerror or exc}", field="out") from None
    return path


def image_urls(result: Any) -> list[str]:
    """Every image URL in a FAL response (`images[].url`, or upscale's `image.url`)."""
    if not isinstance(result, Mapping):
        return []
    images = result.get("images")
    items = images if isinstance(images, list) else [result.get("image")]
    return [i["url"] for i in items if isinstance(i, Mapping) and isinstance(i.get("url"), str)]


def _extension(url: str, content_type: str | None) -> str:
    if content_type:
        ext = mimetypes.guess_extension(content_type.split(";")[0].strip())
        if ext:
            return ".jpg" if ext == ".jpe" else ext
    suffix = Path(url.split("?")[0]).suffix
    return suffix if suffix and len(suffix) <= 5 else ".bin"


def download(url: str, target_stem: Path, client: httpx.Client) -> Iterator[tuple[int, int | None, Path]]:
    """Stream one image to `target_stem` + its extension; yields (bytes so far, total, path)."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        content_type = header[5:].split(";")[0] or None
        data = base64.b64decode(payload) if header.endswith(";base64") else payload.encode()
        path = target_stem.with_suffix(_extension(url, content_type))
        path.write_bytes(data)
        yield len(data), len(data), path
        return
    with client.stream("GET", url) as response:
        response.raise_for_status()
        total = int(response.headers["content-length"]) if "content-length" in response.headers else None
        path = target_stem.with_suffix(_extension(url, response.headers.get("content-type")))
        tmp = path.with_suffix(path.suffix + ".part")
        done = 0
        with open(tmp, "wb") as fh:
            for chunk in response.iter_bytes(65536):
                done += len(chunk)
                if done > MAX_IMAGE_BYTES:
                    raise httpx.HTTPError(f"image larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
                fh.write(chunk)
                yield done, total, path
        os.replace(tmp, path)
        yield done, total, path


def save_images(result: Any, directory: Path, tx_id: int, *, progress: bool) -> list[Path]:
    """Download every image of `result` as `tx{ID}-{INDEX}.{ext}`; a rich progress bar when asked."""
    urls = image_urls(result)
    saved: list[Path] = []
    with httpx.Client(timeout=DOWNLOAD_TIMEOUT, follow_redirects=True) as client:
        if not progress:
            for i, url in enumerate(urls):
                *_, (_, _, path) = download(url, directory / f"tx{tx_id}-{i}", client)
                saved.append(path)
            return saved
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        with Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=False
        ) as bar:
            for i, url in enumerate(urls):
                task = bar.add_task(f"tx{tx_id}-{i}", total=None)
                path = directory
                for done, total, path in download(url, directory / f"tx{tx_id}-{i}", client):  # noqa: B007
                    bar.update(task, completed=done, total=total)
                saved.append(path)
    return saved
