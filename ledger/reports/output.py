"""Report files: a path checked before anything is read, written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TextIO

from ..errors import CannotWrite


def check_writable(path: str | os.PathLike[str], field_name: str) -> Path:
    """`path` if a file can be written there; CannotWrite ("cannot write PATH: why", exit 1) otherwise."""
    target = Path(path)
    parent = target.parent
    if str(target) in ("", ".") or target.is_dir():
        raise CannotWrite(f"cannot write {target}: it is a directory, not a file", field=field_name)
    if not parent.is_dir():
        raise CannotWrite(f"cannot write {target}: the directory {parent} does not exist", field=field_name)
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise CannotWrite(f"cannot write {target}: permission denied", field=field_name)
    return target


@contextmanager
def atomic_output(path: Path, field_name: str, *, binary: bool = False) -> Iterator[IO[Any]]:
    """A stream whose content replaces `path` only when the block succeeds (else nothing is written)."""
    check_writable(path, field_name)
    handle: IO[Any]
    try:  # closed below, then renamed into place or removed
        if binary:
            handle = tempfile.NamedTemporaryFile(
                "wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
            )
        else:
            handle = tempfile.NamedTemporaryFile(
                "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False, encoding="utf-8", newline=""
            )
    except OSError as exc:
        raise CannotWrite(f"cannot write {path}: {exc.strerror}", field=field_name) from None
    try:
        with handle:
            yield handle
        os.replace(handle.name, path)
    except OSError as exc:  # a full disk, a file system gone read-only: nothing is left half-written
        Path(handle.name).unlink(missing_ok=True)
        raise CannotWrite(f"cannot write {path}: {exc.strerror or exc}", field=field_name) from None
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def cast_text(stream: IO[Any]) -> TextIO:
    """A text stream opened by `atomic_output` (typed as such)."""
    return stream  # type: ignore[return-value]
