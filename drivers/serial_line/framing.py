"""Framing: cut the byte stream of a serial line into frames (pure, no I/O).

A framer is fed whatever a read returned (any number of bytes, frames split at
any byte boundary) and answers, in stream order, the frames it completed and
the bytes it threw away while resynchronising. The line is noisy: expect
garbage, partial frames and dropped bytes.

Contract of every framer
------------------------
* :meth:`Framer.feed` never raises, whatever the bytes.
* The outcome does not depend on how the stream is chunked: the same frames
  come out in the same order, and the discarded bytes, concatenated, are the
  same. Only the way junk is split into :class:`Discard` events may differ
  (one ``feed`` never reports one :class:`Discard` per byte of a burst of
  noise; consecutive junk with the same reason is batched).
* What a framer keeps between calls is bounded: :attr:`Framer.buffered` stays
  below ``max_length`` plus the lengths of the start and end markers.
* Resynchronisation skips one byte: when a candidate frame turns out bad
  (length out of range, end marker missing, check failed) only its first byte
  is discarded and the search for a start marker goes on from the next byte,
  so a real frame hidden right after a false start byte is still found.
* :meth:`Framer.reset` drops partial state (after a poll timeout, say); the
  bytes it drops are not reported.

The framers
-----------
:class:`DelimiterFramer`
    Lines ending in a delimiter (``\\r\\n``), the delimiter excluded from the
    frame and never reported. Empty lines are skipped silently; lines longer
    than ``max_length`` are discarded. With a ``start`` marker (``$`` for
    NMEA) the frame is the part of the line from the *last* start marker on:
    bytes before the first marker are junk (``no start byte``), a frame cut
    short by a new start marker (a dropped delimiter) is discarded, and the
    frame after it is kept.
:class:`FixedLengthFramer`
    Frames of exactly ``length`` bytes, optionally beginning with ``sync``.
:class:`LengthFieldFramer`
    ``start ... length field ... [end]``: the length field says how long the
    frame is; a bad length or a missing end marker is a false start.

The two fixed-size framers take an optional ``check(frame) -> bool`` (for
example ``BinaryParser.checksum_ok``): a candidate that fails it is a false
start too, which lets a framer resynchronise inside a frame that lost a byte.
``check`` must not raise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

__all__ = [
    "CHECK_FAILED",
    "END_MISSING",
    "INTERRUPTED",
    "NO_START",
    "DelimiterFramer",
    "Discard",
    "FixedLengthFramer",
    "Frame",
    "FrameCheck",
    "FrameEvent",
    "Framer",
    "LengthFieldFramer",
]

NO_START: Final = "no start byte"
"""Reason for bytes that precede any start marker."""
INTERRUPTED: Final = "frame cut short by a new start marker"
"""Reason for a delimited frame whose delimiter was lost before the next frame began."""
END_MISSING: Final = "end byte missing"
"""Reason for a false start whose frame does not end with the end marker."""
CHECK_FAILED: Final = "check failed"
"""Reason for a false start whose frame the ``check`` function rejected."""

FrameCheck = Callable[[bytes], bool]
"""Whether a complete candidate frame is good (typically: its checksum matches)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame as on the wire (delimiter excluded for :class:`DelimiterFramer`)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Discard:
    """Bytes thrown away while resynchronising, and why."""

    data: bytes
    reason: str


FrameEvent = Frame | Discard


class Framer(Protocol):
    """Turns a byte stream, fed in chunks of any size, into frames."""

    def feed(self, data: bytes) -> list[FrameEvent]:
        """Frames completed and bytes discarded thanks to ``data``, in stream order."""
        ...

    def reset(self) -> None:
        """Drop partial state, e.g. after a poll timeout."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes kept for the next :meth:`feed` (a partial frame)."""
        ...


def _too_long(max_length: int) -> str:
    return f"frame longer than {max_length} bytes"


class DelimiterFramer:
    """Frames that end at ``delimiter``; see the module docstring."""

    __slots__ = (
        "_junk_reason",
        "_pending",
        "_scanned",
        "_skipping",
        "_too_long",
        "delimiter",
        "max_length",
        "start",
    )

    def __init__(
        self,
        delimiter: bytes = b"\r\n",
        *,
        max_length: int = 1024,
        start: bytes | None = None,
    ) -> None:
        if not delimiter:
            raise ValueError("delimiter must not be empty")
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        if start is not None:
            if not start:
                raise ValueError("start marker must not be empty; leave it out instead")
            if delimiter in start:
                raise ValueError(f"start marker {start!r} contains the delimiter {delimiter!r}")
            if len(start) > max_length:
                raise ValueError(f"start marker {start!r} is longer than max_length {max_length}")
        self.delimiter: Final = bytes(delimiter)
        self.max_length: Final = max_length
        self.start: Final = None if start is None else bytes(start)
        self._too_long: Final = _too_long(max_length)
        self._pending = b""
        # Bytes of _pending before this offset hold no delimiter.
        self._scanned = 0
        # Without start marker: the rest of the current line belongs to an
        # over-long frame that was partly discarded already.
        self._skipping = False
        # With start marker: why bytes of the current line before a start are junk.
        self._junk_reason = NO_START

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def reset(self) -> None:
        self._pending = b""
        self._scanned = 0
        self._skipping = False
        self._junk_reason = NO_START

    def feed(self, data: bytes) -> list[FrameEvent]:
        buf = self._pending + data if self._pending else bytes(data)
        events: list[FrameEvent] = []
        delimiter = self.delimiter
        step = len(delimiter)
        find = buf.find
        pos = 0
        end = find(delimiter, self._scanned)
        if self.start is None:
            max_length = self.max_length
            while end >= 0:
                if self._skipping:
                    if end > pos:
                        events.append(Discard(buf[pos:end], self._too_long))
                    self._skipping = False
                elif end - pos > max_length:
                    events.append(Discard(buf[pos:end], self._too_long))
                elif end > pos:
                    events.append(Frame(buf[pos:end]))
                pos = end + step
                end = find(delimiter, pos)
        else:
            while end >= 0:
                self._line_with_start(buf, pos, end, events)
                pos = end + step
                end = find(delimiter, pos)
        pos = self._bound(buf, pos, events)
        self._pending = buf[pos:]
        self._scanned = max(0, len(self._pending) - step + 1)
        return events

    def _line_with_start(self, buf: bytes, pos: int, end: int, events: list[FrameEvent]) -> None:
        """Handle the complete line ``buf[pos:end]`` when frames begin with a start marker."""
        assert self.start is not None
        begin = buf.rfind(self.start, pos, end)
        if begin < 0:
            if end > pos:
                events.append(Discard(buf[pos:end], self._junk_reason))
        else:
            if begin > pos:
                events.append(Discard(buf[pos:begin], self._reason_before(buf, pos, begin)))
            if end - begin > self.max_length:
                events.append(Discard(buf[begin:end], self._too_long))
            else:
                events.append(Frame(buf[begin:end]))
        self._junk_reason = NO_START

    def _reason_before(self, buf: bytes, pos: int, begin: int) -> str:
        assert self.start is not None
        return INTERRUPTED if buf.find(self.start, pos, begin) >= 0 else self._junk_reason

    def _bound(self, buf: bytes, pos: int, events: list[FrameEvent]) -> int:
        """Discard what cannot belong to a frame from the partial line ``buf[pos:]``.

        Returns the new start of the partial line. Keeps the last bytes that
        may be the beginning of a delimiter or start marker.
        """
        keep = len(self.delimiter) - 1
        limit = self.max_length + keep  # longest partial line that can still end well
        if self.start is None:
            if self._skipping or len(buf) - pos > limit:
                cut = len(buf) - keep
                if cut > pos:
                    events.append(Discard(buf[pos:cut], self._too_long))
                    pos = cut
                self._skipping = True
            return pos
        # With a start marker, everything before the last start of the line is
        # junk already. Discarding it at once (not only when the buffer grows
        # large) keeps the outcome independent of the chunking.
        keep = max(keep, len(self.start) - 1)
        begin = buf.rfind(self.start, pos)
        if begin > pos:
            events.append(Discard(buf[pos:begin], self._reason_before(buf, pos, begin)))
            pos = begin
        if begin < 0 or len(buf) - begin > limit:
            cut = len(buf) - keep
            if cut > pos:
                reason = self._junk_reason if begin < 0 else self._too_long
                events.append(Discard(buf[pos:cut], reason))
                pos = cut
            if begin >= 0:
                self._junk_reason = self._too_long
        return pos


class _Junk:
    """Batches contiguous discarded ranges of one buffer that share a reason."""

    __slots__ = ("begin", "buf", "end", "events", "reason")

    def __init__(self, buf: bytes, events: list[FrameEvent]) -> None:
        self.buf = buf
        self.events = events
        self.begin = self.end = 0
        self.reason = ""

    def add(self, begin: int, end: int, reason: str) -> None:
        if reason != self.reason or begin != self.end:
            self.flush()
            self.begin = begin
            self.reason = reason
        self.end = end

    def flush(self) -> None:
        if self.end > self.begin:
            self.events.append(Discard(self.buf[self.begin : self.end], self.reason))
        self.begin = self.end


def _partial_marker(buf: bytes, pos: int, marker: bytes) -> int:
    """Length of the longest proper prefix of ``marker`` that ``buf[pos:]`` ends with."""
    for size in range(min(len(marker) - 1, len(buf) - pos), 0, -1):
        if buf.endswith(marker[:size]):
            return size
    return 0


class _MeasuredFramer:
    """Frames that begin with a start marker and whose length is known from their head.

    Subclasses say, for a candidate starting at ``buf[begin]``, how long the
    frame is (:meth:`_measure`). The candidate is then checked for the end
    marker and with ``check``; a bad candidate costs one byte.
    """

    __slots__ = ("_check", "_end", "_pending", "_start")

    def __init__(self, start: bytes, end: bytes | None, check: FrameCheck | None) -> None:
        self._start: Final = bytes(start)
        self._end: Final = None if end is None else bytes(end)
        self._check: Final = check
        self._pending = b""

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def reset(self) -> None:
        self._pending = b""

    def _measure(self, buf: bytes, begin: int) -> int | str | None:
        """Frame length, the reason the start is false, or None while the head is incomplete."""
        raise NotImplementedError

    def feed(self, data: bytes) -> list[FrameEvent]:
        buf = self._pending + data if self._pending else bytes(data)
        size = len(buf)
        start, end, check = self._start, self._end, self._check
        events: list[FrameEvent] = []
        junk = _Junk(buf, events)
        pos = 0
        while True:
            begin = buf.find(start, pos)
            if begin < 0:
                begin = size - _partial_marker(buf, pos, start)
                junk.add(pos, begin, NO_START)
                pos = begin
                break
            if begin > pos:
                junk.add(pos, begin, NO_START)
                pos = begin
            length = self._measure(buf, begin)
            if length is None:
                break
            if isinstance(length, str):
                reason = length
            elif size - begin < length:
                break
            else:
                frame = buf[begin : begin + length]
                if end is not None and not frame.endswith(end):
                    reason = END_MISSING
                elif check is not None and not check(frame):
                    reason = CHECK_FAILED
                else:
                    junk.flush()
                    events.append(Frame(frame))
                    pos = begin + length
                    continue
            junk.add(begin, begin + 1, reason)
            pos = begin + 1
        junk.flush()
        self._pending = buf[pos:]
        return events


class FixedLengthFramer(_MeasuredFramer):
    """Frames of exactly ``length`` bytes, beginning with ``sync`` if given.

    Without ``sync`` (and without ``check``) every ``length`` bytes make a
    frame and nothing is ever discarded. With ``sync``, bytes up to the next
    sync occurrence are discarded. A ``check`` makes a failing candidate a
    false start (one byte discarded), with or without ``sync``.
    """

    __slots__ = ("length",)

    def __init__(
        self, length: int, *, sync: bytes | None = None, check: FrameCheck | None = None
    ) -> None:
        if length < 1:
            raise ValueError(f"frame length must be at least 1, got {length}")
        if sync is not None:
            if not sync:
                raise ValueError("sync bytes must not be empty; leave them out instead")
            if len(sync) > length:
                raise ValueError(f"sync {sync!r} is longer than the frame length {length}")
        super().__init__(sync or b"", None, check)
        self.length: Final = length

    @property
    def sync(self) -> bytes | None:
        return self._start or None

    def _measure(self, buf: bytes, begin: int) -> int:
        return self.length


class LengthFieldFramer(_MeasuredFramer):
    """Frames ``start ... length field ... [end]`` whose head says how long they are.

    The length field holds ``length_size`` (1 or 2) bytes at ``length_offset``
    from the frame's first byte; the whole frame is ``length_offset +
    length_size + value + length_adjust`` bytes (``length_adjust`` covers what
    the device does not count, e.g. a trailing CRC and end byte). A length
    outside ``length_offset + length_size + len(end)`` .. ``max_length``, a
    frame not ending with ``end`` or failing ``check`` is a false start: its
    first byte is discarded and the search goes on from the next byte.
    """

    __slots__ = (
        "_adjust",
        "_byteorder",
        "_field_end",
        "_minimum",
        "_offset",
        "max_length",
    )

    def __init__(
        self,
        *,
        start: bytes,
        length_offset: int,
        length_size: int = 1,
        byteorder: Literal["big", "little"] = "big",
        length_adjust: int = 0,
        end: bytes | None = None,
        max_length: int = 1024,
        check: FrameCheck | None = None,
    ) -> None:
        if not start:
            raise ValueError("start marker must not be empty")
        if end is not None and not end:
            raise ValueError("end marker must not be empty; leave it out instead")
        if length_size not in (1, 2):
            raise ValueError(f"length_size must be 1 or 2 bytes, got {length_size}")
        if byteorder not in ("big", "little"):
            raise ValueError(f"byteorder must be 'big' or 'little', got {byteorder!r}")
        if length_offset < len(start):
            raise ValueError(
                f"length_offset {length_offset} overlaps the {len(start)}-byte start marker"
            )
        minimum = length_offset + length_size + (len(end) if end else 0)
        largest = length_offset + length_size + (1 << 8 * length_size) - 1 + length_adjust
        if max_length < minimum:
            raise ValueError(f"max_length {max_length} is below the minimal frame of {minimum}")
        if largest < minimum:
            raise ValueError(
                f"length_adjust {length_adjust} leaves no length field value that makes "
                f"a frame of at least {minimum} bytes"
            )
        super().__init__(start, end, check)
        self._offset: Final = length_offset
        self._field_end: Final = length_offset + length_size
        self._byteorder: Final = byteorder
        self._adjust: Final = length_adjust
        self._minimum: Final = minimum
        self.max_length: Final = max_length

    def _measure(self, buf: bytes, begin: int) -> int | str | None:
        field_end = begin + self._field_end
        if len(buf) < field_end:
            return None
        value = int.from_bytes(buf[begin + self._offset : field_end], self._byteorder)
        length = self._field_end + value + self._adjust
        if length > self.max_length:
            return (
                f"length field {value} exceeds max_length {self.max_length} "
                f"(frame of {length} bytes)"
            )
        if length < self._minimum:
            return (
                f"length field {value} is too small (frame of {length} bytes, "
                f"at least {self._minimum} needed)"
            )
        return length
