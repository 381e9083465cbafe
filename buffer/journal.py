"""The outage journal: entries stored by ``append_reserved`` go here first, not into the
database, because an append-only file costs the SD card about a third of SQLite's
writes for the same batches (DESIGN.md, "Outage journal").

Segment files ``<path>.journal-<n>`` (n from 1, in order) hold *groups*: one group per
``write`` call, written with one ``pwrite`` at a 4 KiB boundary, padded with zeros to
the next one, then ``fdatasync``-ed (``durable``; else by ``sync``). A group never
shares a page with another, so the page cache dirties each page once: a group of B
bytes costs the card B rounded up to 4 KiB, nothing else (no page written twice, no
checkpoint, no delete; an ack costs nothing but, once a segment holds no live entry,
its unlink).

A group, little-endian::

    header  magic b"EGJ1", count u32, body length u32, CRC-32 of the body u32,
            CRC-32 of the 16 bytes before u32
    body    count records: seq u64, created_at f64, payload length u32,
            CRC-32 of the payload u32, then the payload

A group whose header or body CRC fails was torn by a crash before its fsync (the
write had not returned: nothing was promised) or rotted since: ``scan`` skips to the
next 4 KiB boundary and keeps every record of a rotten body whose payload still
matches its CRC. A seq met twice (a write reported failed that reached the disk all
the same, then written again) counts once. What is kept in memory: per group its
place and per entry its seq, stamp, size and a live flag (21 bytes an entry).

The queue folds the journal into the database (and deletes it) at every open and
close, before any other write to the database, and when the journal has no room
left: so every seq in the journal is above every seq in the database, and the
database's order, bounds and counters apply unchanged (``buffer.queue``).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import errno
import os
import re
import struct
import zlib
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from buffer.files import PRIVATE, fsync_dir
from buffer.schema import Damaged, checksum, damage
from buffer.stats import Entry

__all__ = ["GROUP_ALIGN", "JOURNAL_MAX", "SEGMENT_BYTES", "Journal", "group_bytes"]

GROUP_ALIGN: Final = 4096  # every group starts on a page of the page cache
SEGMENT_BYTES: Final = 256 * 1024  # a segment is closed past this; its unlink frees it
JOURNAL_MAX: Final = 16 * 1024 * 1024  # the journal's bytes at most (and see queue.py)
_MAGIC: Final = b"EGJ1"
_HEADER: Final = struct.Struct("<4sIII")  # magic, count, body length, body CRC
_HEADER_CRC: Final = struct.Struct("<I")
_HEADER_BYTES: Final = _HEADER.size + _HEADER_CRC.size
_RECORD: Final = struct.Struct("<QdII")  # seq, created_at, payload length, payload CRC
_NAME: Final = re.compile(r"\.journal-(\d+)$")

Row = tuple[int, float, bytes, int]  # seq, created_at, payload, crc: NewRow of footprint.py


def group_bytes(payload_sizes: Sequence[int]) -> int:
    """Bytes on disk of one group of payloads of these sizes, padding included."""
    raw = _HEADER_BYTES + sum(_RECORD.size + size for size in payload_sizes)
    return -(-raw // GROUP_ALIGN) * GROUP_ALIGN


@dataclasses.dataclass(slots=True)
class _Group:
    segment: int
    offset: int
    length: int  # header and body, padding excluded
    seqs: array[int]
    created: array[float]
    sizes: array[int]
    live: bytearray
    alive: int


@dataclasses.dataclass(slots=True)
class Scanned:
    """What ``scan`` dropped from the journal left by the last run (counted as it goes)."""

    damaged: int = 0  # records dropped: a payload that no longer matches its CRC
    damaged_bytes: int = 0  # ... their payload bytes
    torn_groups: int = 0  # groups whose header or body did not check (a crash, or rot)


class Journal:
    """The segments of one buffer's journal, and the index of what is live in them."""

    def __init__(self, path: str, *, durable: bool) -> None:
        self._path = path
        self._durable = durable
        self._groups: list[_Group] = []
        self._firsts: list[int] = []  # first seq of each group, for bisect
        self._fds: dict[int, int] = {}  # segment number -> open descriptor
        self._sizes: dict[int, int] = {}  # segment number -> bytes written to it
        self._live_in: dict[int, int] = {}  # segment number -> live entries
        self._segment = 0  # the segment groups are appended to (0: none yet)
        self._unsynced: set[int] = set()  # segments written since the last sync
        self._disk_bytes = 0
        self._floor = 0  # seqs up to this are the database's (a fold that failed part way)
        self.batches = 0  # live entries
        self.bytes = 0  # their payload bytes

    # -- what is there -----------------------------------------------------------------

    @property
    def disk_bytes(self) -> int:
        """Bytes of the segments on disk (an int kept up to date: ``stats()`` reads it
        from another thread)."""
        return self._disk_bytes

    @property
    def last_seq(self) -> int:
        return self._groups[-1].seqs[-1] if self._groups else 0

    def first_seq(self) -> int | None:
        """The lowest seq that may be in the journal (live or not), or None when empty."""
        return max(self._firsts[0], self._floor + 1) if self._groups else None

    def front(self) -> tuple[int, float] | None:
        """(seq, created_at) of the lowest live entry, or None. Safe from another thread
        (``stats()``): it may see the state just before or after a concurrent call."""
        for group in self._groups:
            if (i := group.live.find(1)) >= 0:
                return group.seqs[i], group.created[i]
        return None

    def expired(self, cutoff: float) -> bool:
        """Is a live entry stamped before ``cutoff``? Not only the front: after a clock
        step back, an entry stamped in the future may come before an expired one.
        (Judged group by group: a released entry of a live group may make it say yes.)"""
        return any(group.alive and min(group.created) < cutoff for group in self._groups)

    def holds(self, seq: int) -> bool:
        """Is ``seq`` stored here and not yet released?"""
        found = self._find(seq)
        return found is not None and bool(found[0].live[found[1]])

    # -- scanning what a previous run left ----------------------------------------------

    def segment_paths(self) -> list[tuple[int, str]]:
        """(number, path) of the segments on disk, in order."""
        directory = Path(self._path).absolute().parent
        base = Path(self._path).name
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(directory):
                if entry.name.startswith(base) and (m := _NAME.fullmatch(entry.name[len(base) :])):
                    found.append((int(m.group(1)), entry.path))
        return sorted(found)

    def scan(self, report: Scanned) -> Iterator[list[Row]]:
        """The records of the segments on disk that check, segment by segment (for the
        fold at open: one segment in memory at a time), each seq once; what was dropped
        is counted in ``report``."""
        seen: set[int] = set()
        for _, name in self.segment_paths():
            data = Path(name).read_bytes()
            rows: list[Row] = []
            offset = 0
            while offset + _HEADER_BYTES <= len(data):
                parsed = _parse_group(data, offset)
                if parsed is None:
                    if any(data[offset : offset + GROUP_ALIGN]):
                        report.torn_groups += 1
                    offset += GROUP_ALIGN
                    continue
                records, bad, length = parsed
                if bad:
                    report.torn_groups += 1
                for row in records:
                    if checksum(row[2]) != row[3]:
                        report.damaged += 1
                        report.damaged_bytes += len(row[2])
                    elif row[0] not in seen:
                        seen.add(row[0])
                        rows.append(row)
                offset += -(-length // GROUP_ALIGN) * GROUP_ALIGN
            yield sorted(rows)

    def remove_all(self) -> None:
        """Delete every segment (after a fold committed them to the database), durably:
        a segment that came back after a power cut would publish its batches again."""
        self._close_fds()
        paths = self.segment_paths()
        try:
            for _, name in paths:
                with contextlib.suppress(FileNotFoundError):
                    Path(name).unlink()
        finally:  # the descriptors are closed: the index must not point into them any more
            self._groups, self._firsts = [], []
            self._sizes, self._live_in, self._unsynced = {}, {}, set()
            self._segment = self._floor = 0
            self.batches = self.bytes = self._disk_bytes = 0
        if paths:
            fsync_dir(self._path)

    # -- writing -----------------------------------------------------------------------

    def write(self, rows: Sequence[Row]) -> None:
        """Append one group of rows (seqs above every seq here), durable when it returns
        if ``durable``. On an OSError nothing is indexed; the segment it was written to
        is not written again (its tail may hold part of the group)."""
        body = bytearray()
        for seq, created_at, payload, crc in rows:
            body += _RECORD.pack(seq, created_at, len(payload), crc)
            body += payload
        header = _HEADER.pack(_MAGIC, len(rows), len(body), zlib.crc32(body))
        data = header + _HEADER_CRC.pack(zlib.crc32(header)) + body
        length = len(data)
        padded = -(-length // GROUP_ALIGN) * GROUP_ALIGN
        data += bytes(padded - length)
        segment = self._segment
        if not segment or (self._sizes[segment] and self._sizes[segment] + padded > SEGMENT_BYTES):
            segment = self._new_segment()
        fd, offset = self._fds[segment], self._sizes[segment]
        try:
            if os.pwrite(fd, data, offset) != padded:
                raise OSError(errno.ENOSPC, "short write")
            if self._durable:
                os.fdatasync(fd)
            else:
                self._unsynced.add(segment)
        except OSError:
            self._segment = 0  # never write into a tail that may hold a torn group
            if not offset:  # nothing else in it: deleted (a disk that refuses every write
                with contextlib.suppress(OSError):  # would pile up files and descriptors)
                    self._drop_segments({segment})
                raise
            with contextlib.suppress(OSError):
                size = os.fstat(fd).st_size
                self._disk_bytes += size - self._sizes[segment]
                self._sizes[segment] = size
            raise
        self._sizes[segment] = offset + padded
        self._disk_bytes += padded
        group = _Group(
            segment,
            offset,
            length,
            array("q", [r[0] for r in rows]),
            array("d", [r[1] for r in rows]),
            array("I", [len(r[2]) for r in rows]),
            bytearray(b"\x01" * len(rows)),
            len(rows),
        )
        self._groups.append(group)
        self._firsts.append(group.seqs[0])
        self._live_in[segment] += len(rows)
        self.batches += len(rows)
        self.bytes += sum(group.sizes)

    def _new_segment(self) -> int:
        number = max(self._sizes, default=0) + 1
        name = f"{self._path}.journal-{number}"
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE)
        try:
            os.fchmod(fd, PRIVATE)
            fsync_dir(self._path)  # the name, durably, before any group in it is promised
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                Path(name).unlink()
            raise
        self._fds[number], self._sizes[number], self._live_in[number] = fd, 0, 0
        self._segment = number
        return number

    def sync(self) -> None:
        """fdatasync the segments written since the last call (``durable=False``)."""
        for segment in sorted(self._unsynced):
            if (fd := self._fds.get(segment)) is not None:
                os.fdatasync(fd)
        self._unsynced.clear()

    # -- reading and releasing ---------------------------------------------------------

    def read(self, after_seq: int, limit: int) -> tuple[list[Entry], list[Damaged]]:
        """Up to ``limit`` live entries with ``seq > after_seq``, in seq order, each payload
        read back and checked against its CRC-32; and the live ones that failed (to be
        released and counted by the caller: they are never returned)."""
        sound: list[Entry] = []
        damaged: list[Damaged] = []
        start = max(bisect.bisect_right(self._firsts, after_seq) - 1, 0)
        for group in self._groups[start:]:
            if len(sound) + len(damaged) >= limit:
                break
            if group.alive and group.seqs[-1] > after_seq:
                good, bad = self._read_group(group, after_seq, limit - len(sound) - len(damaged))
                sound += (Entry(seq, created_at, payload) for seq, created_at, payload, _ in good)
                damaged += bad
        return sound, damaged

    def live(self) -> Iterator[tuple[list[Row], list[Damaged]]]:
        """Every live entry, group by group, in seq order, as rows with the CRC they were
        written with (for a fold), and those that failed their CRC."""
        for group in self._groups:
            if group.alive:
                yield self._read_group(group, 0, len(group.seqs))

    def _read_group(
        self, group: _Group, after_seq: int, limit: int
    ) -> tuple[list[Row], list[Damaged]]:
        """The live entries of ``group`` above ``after_seq`` (``limit`` at most, sound and
        damaged together), read back from the segment now: a payload may have rotted.
        Sound ones as rows with the CRC they were written with."""
        data = os.pread(self._fds[group.segment], group.length, group.offset)
        parsed = _parse_group(data, 0)
        on_disk = {} if parsed is None else {row[0]: row for row in parsed[0]}
        sound: list[Row] = []
        damaged: list[Damaged] = []
        for i, seq in enumerate(group.seqs):
            if seq <= after_seq or not group.live[i]:
                continue
            if len(sound) + len(damaged) >= limit:
                break
            row = on_disk.get(seq)
            if row is None:
                why = "its journal group can no longer be framed (damaged on disk)"
            elif (found := damage(row[2], row[3], unchecked=False)) is not None:
                why = found
            else:
                sound.append((seq, group.created[i], row[2], row[3]))
                continue
            damaged.append(Damaged(seq, group.created[i], group.sizes[i], why))
        return sound, damaged

    def release(self, seqs: Sequence[int]) -> list[tuple[int, float, int]]:
        """Mark these seqs gone (acknowledged, or found damaged); a segment left without
        a live entry is deleted. Returns (seq, created_at, size) of those released."""
        released = []
        emptied: set[int] = set()
        for seq in seqs:
            found = self._find(seq)
            if found is None or not found[0].live[found[1]]:
                continue
            group, i = found
            group.live[i] = 0
            group.alive -= 1
            self.batches -= 1
            self.bytes -= group.sizes[i]
            released.append((seq, group.created[i], group.sizes[i]))
            self._live_in[group.segment] -= 1
            if not self._live_in[group.segment] and group.segment != self._segment:
                emptied.add(group.segment)
        if not self.batches:
            emptied.update(self._sizes)  # all gone: the next group starts a new segment
        if emptied:
            self._drop_segments(emptied)
        return released

    def forget(self, through: int) -> None:
        """A fold that failed part way committed every live seq up to ``through`` to the
        database: they are the database's now (read, acked and evicted there). Their
        segments stay until the next fold deletes the journal."""
        for group in self._groups:
            for i, seq in enumerate(group.seqs):
                if seq <= through and group.live[i]:
                    group.live[i] = 0
                    group.alive -= 1
                    self.batches -= 1
                    self.bytes -= group.sizes[i]
                    self._live_in[group.segment] -= 1
        self._floor = max(self._floor, through)

    def _drop_segments(self, segments: set[int]) -> None:
        for segment in segments:
            with contextlib.suppress(OSError):
                os.close(self._fds.pop(segment))
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self._path}.journal-{segment}").unlink()
            self._disk_bytes -= self._sizes.pop(segment, 0)
            self._live_in.pop(segment, None)
            self._unsynced.discard(segment)
            if segment == self._segment:
                self._segment = 0
        kept = [
            (f, g)
            for f, g in zip(self._firsts, self._groups, strict=True)
            if g.segment not in segments
        ]
        self._firsts = [f for f, _ in kept]
        self._groups = [g for _, g in kept]
        with contextlib.suppress(OSError):
            fsync_dir(self._path)  # else a power cut brings the segment back: repeats

    def close(self) -> None:
        self._close_fds()

    # -- internals ---------------------------------------------------------------------

    def _find(self, seq: int) -> tuple[_Group, int] | None:
        g = bisect.bisect_right(self._firsts, seq) - 1
        if g < 0:
            return None
        group = self._groups[g]
        i = bisect.bisect_left(group.seqs, seq)
        if i < len(group.seqs) and group.seqs[i] == seq:
            return group, i
        return None

    def _close_fds(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


def _parse_group(data: bytes, offset: int) -> tuple[list[Row], bool, int] | None:
    """(records, body damaged, header + body length) of the group at ``offset``, or None
    when no group header checks there. A damaged body yields the records that can still
    be framed (each payload to be checked against its CRC by the caller)."""
    end = offset + _HEADER.size
    if len(data) < end + _HEADER_CRC.size:
        return None
    magic, count, body_length, body_crc = _HEADER.unpack_from(data, offset)
    (header_crc,) = _HEADER_CRC.unpack_from(data, end)
    if magic != _MAGIC or header_crc != zlib.crc32(data[offset:end]):
        return None
    start = end + _HEADER_CRC.size
    body = data[start : start + body_length]
    damaged = len(body) != body_length or zlib.crc32(body) != body_crc
    records: list[Row] = []
    at = 0
    previous = 0
    for _ in range(count):
        if at + _RECORD.size > len(body):
            break
        seq, created_at, size, crc = _RECORD.unpack_from(body, at)
        at += _RECORD.size
        if seq <= previous or at + size > len(body):
            break  # seqs rise within a group: past here the framing cannot be trusted
        previous = seq
        records.append((seq, created_at, bytes(body[at : at + size]), crc))
        at += size
    return records, damaged, _HEADER_BYTES + body_length
