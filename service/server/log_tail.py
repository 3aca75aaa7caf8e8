"""Parts of a log to send: its last bytes by default, or a window from an offset (``/logs``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from service.storage.paths import AnyPath


@dataclass(frozen=True)
class LogSlice:
    """Bytes ``offset`` to ``offset + len(text bytes)`` of a log of ``size`` bytes."""

    text: str
    offset: int
    size: int


def _start(size: int, offset: int | None, max_bytes: int) -> int:
    """Where a slice of at most ``max_bytes`` starts: ``offset``, or the log's last bytes."""
    return max(0, size - max_bytes) if offset is None else min(offset, size)


def log_slice(data: bytes, offset: int | None, max_bytes: int) -> LogSlice:
    """``max_bytes`` of ``data`` from ``offset``, or without one its last ``max_bytes``."""
    start = _start(len(data), offset, max_bytes)
    # A cut may split a UTF-8 character: shown as a replacement character, never an error.
    return LogSlice(data[start : start + max_bytes].decode(errors="replace"), start, len(data))


def file_slice(path: AnyPath, offset: int | None, max_bytes: int) -> LogSlice:
    """As ``log_slice``, reading only the bytes sent (a trial's log may be large).

    A log on a bucket is read whole (one request; a trial's log is one line per epoch).
    """
    if not path.is_file():
        return LogSlice("", 0, 0)
    if not isinstance(path, Path):
        return log_slice(path.read_bytes(), offset, max_bytes)
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        start = _start(size, offset, max_bytes)
        handle.seek(start)
        data = handle.read(max_bytes)
    return LogSlice(data.decode(errors="replace"), start, size)
