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
from typing import Any
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


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Global, and none of the ranges `is_global` lets through (224/4 multicast counts as global)."""
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_loopback or address.is_link_local
    )


def check_public_host(host: str | None) -> str:
    """The address to connect to for `host`: InvalidRequest unless every address it resolves to is
    a public (global) one — not private, loopback, link-local, CGNAT (100.64/10), 0/8, multicast,
    reserved, nor an IPv4-mapped IPv6 form of those."""
    if not host:
        raise _refuse("the URL names no host")
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise _refuse(f"cannot resolve {host!r}") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not all(_public(a) for a in (address, getattr(address, "ipv4_mapped", None)) if a is not None):
            raise _refuse(f"{host!r} is not a public address; requests from the network may not read it")
        addresses.append(str(address))
    if not addresses:
        raise _refuse(f"cannot resolve {host!r}")
    return addresses[0]


class PinnedAddresses:
    """httpx hooks for the URL and every redirect: the request hook checks the host's addresses and
    sends the request to the address it checked (the Host header and the TLS name stay the host's),
    so a second DNS answer between check and connection (DNS rebinding) cannot redirect it; the
    response hook puts the host back, so a relative redirect is resolved against the host again."""

    def __init__(self) -> None:
        self._hosts: dict[int, Any] = {}

    def request(self, request: Any) -> None:
        host = request.url.host
        address = check_public_host(host)
        if address != host:
            self._hosts[id(request)] = request.url
            request.extensions["sni_hostname"] = host  # TLS: server name and certificate check
            request.url = request.url.copy_with(host=address)

    def response(self, response: Any) -> None:
        original = self._hosts.pop(id(response.request), None)
        if original is not None:
            response.request.url = original


def _from_url(url: str, max_bytes: int, timeout: float, max_redirects: int, remote: bool) -> tuple[int, int]:
    import httpx

    pins = PinnedAddresses()
    deadline = time.monotonic() + timeout
    data = b""
    try:
        with (
            httpx.Client(
                follow_redirects=True,
                max_redirects=max_redirects,
                timeout=httpx.Timeout(timeout),
                event_hooks={"request": [pins.request], "response": [pins.response]} if remote else None,
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
