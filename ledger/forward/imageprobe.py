"""The size of an upscale's input image, read from its first bytes only.

A local path, a `file://` or `data:` URI, or an `http(s)` URL. Reads are bounded
in bytes (`HEADER_LIMIT`), in total time and in redirects, so a hostile or slow
server cannot hold a quote hostage. httpx is imported only when a URL is read.

A request from the network (the gateway: `remote=True`) may name neither a local file
nor a host on a private, loopback, link-local or otherwise non-public address (checked
for the URL and for every redirect), so an agent cannot make the server read its own
files or reach its internal network; the CLI, run by the machine's own user, may.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from urllib.parse import unquote, urlparse

from pricing.errors import InvalidRequest
from pricing.imagesize import HEADER_LIMIT, NotAnImage, decode_data_uri, size_from_header

DEFAULT_TIMEOUT = 5.0
MAX_REDIRECTS = 3


def probe_size(
    image_url: str,
    *,
    max_bytes: int = HEADER_LIMIT,
    timeout: float = DEFAULT_TIMEOUT,
    max_redirects: int = MAX_REDIRECTS,
    remote: bool = False,
) -> tuple[int, int]:
    """(width, height) of the image at `image_url`; InvalidRequest when it cannot be known.

    `remote`: the URL came from the network, so only `data:` URIs and public http(s) hosts."""
    try:
        if image_url.startswith("data:"):
            return _final(decode_data_uri(image_url, max_bytes))
        parsed = urlparse(image_url)
        if parsed.scheme in ("http", "https"):
            return _from_url(image_url, max_bytes, timeout, max_redirects, remote)
        if remote:
            raise _refuse("only http(s) and data: URLs are read for requests from the network")
        path = unquote(parsed.path) if parsed.scheme == "file" else image_url
        if parsed.scheme not in ("", "file") and not os.path.exists(image_url):
            raise _refuse(f"cannot read image_url with scheme {parsed.scheme!r}")
        with open(path, "rb") as fh:
            return _final(fh.read(max_bytes))
    except NotAnImage as exc:
        raise _refuse(str(exc)) from None
    except OSError as exc:
        raise _refuse(f"cannot read {image_url!r} ({exc.strerror or exc})") from None


def _final(data: bytes) -> tuple[int, int]:
    size = size_from_header(data, final=True)
    assert size is not None
    return size


def _refuse(reason: str) -> InvalidRequest:
    return InvalidRequest(
        f"image_url: the input image's size cannot be read: {reason}; give input_size WxH",
        field="image_url",
        reason="input_size_unknown",
    )


def check_public_host(host: str | None) -> None:
    """InvalidRequest unless every address `host` resolves to is a public (global) one."""
    if not host:
        raise _refuse("the URL names no host")
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise _refuse(f"cannot resolve {host!r}") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not address.is_global:
            raise _refuse(f"{host!r} is not a public address; requests from the network may not read it")


def _from_url(url: str, max_bytes: int, timeout: float, max_redirects: int, remote: bool) -> tuple[int, int]:
    import httpx

    def public_only(request: httpx.Request) -> None:  # the URL and every redirect
        check_public_host(request.url.host)

    deadline = time.monotonic() + timeout
    data = b""
    try:
        with (
            httpx.Client(
                follow_redirects=True,
                max_redirects=max_redirects,
                timeout=httpx.Timeout(timeout),
                event_hooks={"request": [public_only]} if remote else None,
            ) as client,
            client.stream("GET", url, headers={"Range": f"bytes=0-{max_bytes - 1}"}) as resp,
        ):
            if resp.status_code >= 400:
                raise _refuse(f"{url} answered HTTP {resp.status_code}")
            for chunk in resp.iter_bytes():  # as received: a chunk size would buffer past the deadline
                data += chunk
                size = size_from_header(data[:max_bytes])
                if size is not None:
                    return size
                if len(data) >= max_bytes:
                    raise _refuse(f"no image size in the first {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise _refuse(f"reading the header took longer than {timeout:g}s")
    except httpx.TooManyRedirects:
        raise _refuse(f"more than {max_redirects} redirects") from None
    except httpx.TimeoutException:
        raise _refuse(f"no answer within {timeout:g}s") from None
    except httpx.HTTPError as exc:
        raise _refuse(f"{type(exc).__name__}: {exc}") from None
    return _final(data)
