"""The buffer's errors: one small tree, every message one sentence that names the path.

``BufferError`` alone is about the machine (it does not let the buffer open or write);
its subclasses say what the caller may do: retry when space is back
(``DiskFullError``), refuse the path (``NotABufferError``, ``BufferInUseError``), move
a file aside (``NewerFormatError``), halve a batch (``PayloadTooLargeError``). See
DESIGN.md, "Errors".
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

__all__ = [
    "BufferError",
    "BufferInUseError",
    "CorruptDatabaseError",
    "DiskFullError",
    "ForeignFileError",
    "NewerFormatError",
    "NotABufferError",
    "PayloadTooLargeError",
    "translating",
]


class BufferError(Exception):  # shadows the builtin of that name inside this package only
    """Base of this package's errors: the buffer cannot be opened or written."""


class ForeignFileError(BufferError):
    """The file is a buffer this gateway cannot use. It is left untouched; the caller
    decides whether to move it aside. Raised as ``NewerFormatError``."""


class NewerFormatError(ForeignFileError):
    """A buffer written by a newer gateway (a higher format version), e.g. after a
    downgrade. It is ours, so the caller may move it aside and start a fresh one."""


class NotABufferError(BufferError):
    """Something at the buffer path that this gateway did not create: a directory, a
    device, a socket or FIFO, another program's file or database. Nothing was touched;
    the caller must not move it either."""


class DiskFullError(BufferError):
    """The disk (or a file-size limit) has no room for a write. Not damage: nothing was
    quarantined; retry when space is back."""


class BufferInUseError(BufferError):
    """Another process (or this one) has the buffer open: two writers would duplicate
    and reorder data, so this is never worked around."""


class PayloadTooLargeError(BufferError):
    """A single payload is larger than the queue can hold; nothing was stored.

    ``max_payload`` is the largest payload this queue accepts: what fits in the data
    budget and in one transaction of the WAL reserve (see DESIGN.md, "Footprint").
    """

    def __init__(self, size: int, max_bytes: int, max_payload: int | None = None) -> None:
        limit = max_bytes if max_payload is None else max_payload
        super().__init__(
            f"payload of {size} bytes is larger than the {limit} bytes a buffer of"
            f" max_bytes {max_bytes} can hold in one entry"
        )
        self.size = size
        self.max_bytes = max_bytes
        self.max_payload = limit

    def __reduce__(self) -> tuple[type[PayloadTooLargeError], tuple[int, int, int]]:
        return type(self), (self.size, self.max_bytes, self.max_payload)


class CorruptDatabaseError(Exception):
    """Internal, never raised to callers: the file at the buffer path is a damaged buffer;
    the open salvages it and moves it aside (see ``buffer.recovery``)."""


@contextlib.contextmanager
def translating(path: str, action: str) -> Iterator[None]:
    """An SQLite error while doing ``action`` becomes ``BufferError`` naming the buffer."""
    try:
        yield
    except sqlite3.Error as err:
        raise BufferError(f"buffer {path}: {action} failed: {err}") from err
