"""An image's width and height from its first bytes (PNG, JPEG, GIF, WebP, BMP).

Pure: callers fetch the bytes (bounded) and hand them over. `size_from_header`
returns None while the bytes seen so far are not enough, so a caller can read
a little more and ask again; `NotAnImage` means more bytes would not help.
"""

from __future__ import annotations

import base64
import binascii
import struct
from urllib.parse import unquote_to_bytes

#: Enough for the header of every supported format, with room for JPEG metadata before SOF.
HEADER_LIMIT = 256 * 1024


class NotAnImage(ValueError):
    """The bytes are not a supported image format."""


def size_from_header(data: bytes, *, final: bool = False) -> tuple[int, int] | None:
    """(width, height), or None if more bytes are needed. Raises NotAnImage."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 24:
            return _need(final)
        if data[12:16] != b"IHDR":
            raise NotAnImage("corrupt PNG: the first chunk is not IHDR")
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) < 10:
            return _need(final)
        return struct.unpack("<HH", data[6:10])
    if data.startswith(b"\xff\xd8"):
        return _jpeg(data, final)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data, final)
    if data.startswith(b"BM"):
        if len(data) < 26:
            return _need(final)
        w, h = struct.unpack("<ii", data[18:26])
        return w, abs(h)
    if len(data) < 12 and not final:
        return None
    raise NotAnImage("not a PNG, JPEG, GIF, WebP or BMP image")


def _need(final: bool) -> tuple[int, int] | None:
    """None (more bytes needed), or NotAnImage when no more bytes will come."""
    if final:
        raise NotAnImage("the image header is truncated")
    return None


_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _jpeg(data: bytes, final: bool) -> tuple[int, int] | None:
    i = 2
    while True:
        while i < len(data) and data[i] == 0xFF and i + 1 < len(data) and data[i + 1] == 0xFF:
            i += 1  # fill bytes
        if i + 4 > len(data):
            return _need(final)
        if data[i] != 0xFF:
            raise NotAnImage("corrupt JPEG: marker expected")
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xD9:
            raise NotAnImage("JPEG ends before a frame header")
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF:
            if i + 9 > len(data):
                return _need(final)
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length


def _webp(data: bytes, final: bool) -> tuple[int, int] | None:
    if len(data) < 30:
        return _need(final)
    chunk = data[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        b = data[21:25]
        w = 1 + (((b[1] & 0x3F) << 8) | b[0])
        h = 1 + (((b[3] & 0x0F) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
        return w, h
    raise NotAnImage("unsupported WebP chunk")


def decode_data_uri(uri: str, limit: int = HEADER_LIMIT) -> bytes:
    """The first `limit` bytes of a `data:` URI's payload (base64 or percent-encoded)."""
    header, sep, payload = uri.partition(",")
    if not header.startswith("data:") or not sep:
        raise NotAnImage("malformed data: URI")
    if header.endswith(";base64"):
        chunk = payload[: (limit * 4 // 3) + 4]
        chunk = chunk[: len(chunk) - len(chunk) % 4]
        try:
            return base64.b64decode(chunk, validate=False)
        except (binascii.Error, ValueError):
            raise NotAnImage("data: URI is not valid base64") from None
    return unquote_to_bytes(payload)[:limit]
