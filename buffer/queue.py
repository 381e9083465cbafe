"""A durable FIFO of opaque batches on SQLite (WAL), bounded on disk and optionally by age.

On-disk format, version 1 (kept in ``PRAGMA user_version``)::

    meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL)        -- WITHOUT ROWID
        'last_seq'                high-water mark of deleted entries (see invariant 1)
        'evicted_batches'         entries dropped by either bound, ever
        'evicted_bytes'           their payload bytes, ever
        'evicted_by_age_batches'  of those, dropped by the age bound (absent = 0)
        'evicted_by_age_bytes'    their payload bytes (absent = 0)
    batches(seq INTEGER PRIMARY KEY,     -- the rowid: lookups and range scans by seq
            created_at REAL NOT NULL,     -- the clock (time.time()) at append
            size INTEGER NOT NULL,        -- length(payload); before the blob, so eviction
            payload BLOB NOT NULL)        --   and the open-time count never read overflow pages

Side files: ``<path>-wal`` and ``<path>-shm`` (SQLite's), ``<path>.lock`` (``flock``-ed
by the owning process, holds its pid), ``<path>.seq`` (an upper bound of every seq ever
handed out, in decimal; also the mark that the files at ``<path>`` are ours) and, after
damage, ``<path>.corrupt-<time>`` (the damaged file, kept as evidence). Every file the
queue creates is mode 0600.

Invariants, true after every committed transaction and so after any crash:

1. ``max(meta.last_seq, max(batches.seq))`` is the last seq handed out. Appends do not
   write ``meta`` (one page less per append); every transaction that deletes entries
   writes ``meta.last_seq``. A seq is never handed out twice.
2. The files fit in ``max_bytes``: the database file never holds more than the data
   budget's pages, the WAL never grows past its reserve (no transaction writes more
   frames than the reserve leaves room for), the ``-shm`` index and the side files fit
   in theirs. ``stats().bytes`` (payload bytes) is therefore below ``max_bytes`` too.
3. The evicted counters never decrease; eviction removes the lowest seqs first (by
   age: the longest prefix of expired entries, a future stamp counting as expired
   when an expired entry follows it; by space: the shortest prefix that makes room).
4. ``<path>.seq`` >= every seq ever returned by ``append`` (a lease, renewed ahead of
   use), so a quarantined database, or commits lost by ``synchronous="normal"``, do
   not make seqs restart.
5. Nothing at ``<path>`` is moved, renamed or written unless it is a buffer: a file
   with ``<path>.seq`` beside it or with this schema, an empty file, or nothing.

The full contract (footprint, eviction policy and episodes, clock steps, durability
window, ownership, corruption recovery, errors, threading) is in ``buffer/DESIGN.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import glob
import logging
import math
import operator
import os
import pwd
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self, TypeVar

from buffer.salvage import DamagedFile, wal_damage

__all__ = [
    "MIN_MAX_BYTES",
    "BufferError",
    "BufferInUseError",
    "BufferStats",
    "DiskFullError",
    "DurableQueue",
    "Entry",
    "EvictionEpisode",
    "ForeignFileError",
    "NewerFormatError",
    "NotABufferError",
    "PayloadTooLargeError",
]

FORMAT_VERSION: Final = 1
"""The on-disk format this module writes; files with a higher version are refused."""

MIN_MAX_BYTES: Final = 512 * 1024
"""The smallest ``max_bytes``: the WAL reserve, the ``-shm`` index and a few pages."""

_SEQ_LEASE: Final = 1_000_000
"""How far ahead of the last seq the ``.seq`` side file is written while the queue is open."""

_PAGE_SIZE: Final = 4096  # of new files (SQLite's default, measured in DESIGN.md)
_WAL_MIN: Final = 256 * 1024  # WAL reserve: max_bytes / 8 within these bounds
_WAL_MAX: Final = 4 * 1024 * 1024
_WAL_HEADER: Final = 32
_FRAME_HEADER: Final = 24
_SHM_REGION: Final = 32 * 1024  # the -shm grows by 32 KiB per 4096 WAL frames
_SHM_FRAMES: Final = 4096
_SIDE_RESERVE: Final = 512  # .lock (a pid), .seq and its .tmp (a number each)
_RECORD_OVERHEAD: Final = 17  # a row's record header and created_at/size, typically
_RECORD_MAX_OVERHEAD: Final = 25  # ... at most
_CELL_OVERHEAD: Final = 24  # length and rowid varints, cell pointer, overflow pointer
_TXN_FIXED_FRAMES: Final = 8  # page 1, meta, interior and boundary pages of a transaction
_MIN_EVICT_FRAMES: Final = 16  # what any transaction keeps for evicting in its own right
_LOW_WATER: Final = 15 / 16  # an eviction episode ends below this share of a bound

_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_ACK_CHUNK: Final = 500  # bound parameters per statement; SQLite < 3.32 allows 999
_EVICT_SCAN: Final = 256  # rows fetched per step while choosing what to evict
_REQUIRED_META: Final = ("last_seq", "evicted_batches", "evicted_bytes")
_OPTIONAL_META: Final = ("evicted_by_age_batches", "evicted_by_age_bytes")  # added later: 0
_MAX_INT64: Final = 2**63 - 1
_SALVAGE_SUFFIX: Final = ".salvage"
_COMPACT_SUFFIX: Final = ".compact"
_SIDE_SUFFIXES: Final = ("", "-wal", "-shm")
_OUR_TABLES: Final = frozenset({"batches", "meta"})  # how a buffer without its .seq is known
_PRIVATE: Final = 0o600
# SQLite result codes that say something about the machine, not about the file: a file
# that fails to open with one of these is refused, never quarantined.
_ENVIRONMENT_ERRORS: Final = frozenset(
    {
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_INTERRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_AUTH,
    }
)
# I/O errors while reading say the file (or the card under it) is damaged; any other
# I/O error (writing, syncing, growing the -shm, locking) is about the machine.
_READ_ERRORS: Final = frozenset({sqlite3.SQLITE_IOERR_READ, sqlite3.SQLITE_IOERR_SHORT_READ})
_DISK_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

Synchronous = Literal["full", "normal"]
EvictionCause = Literal["max_bytes", "max_age", "both"]

_log = logging.getLogger("buffer")
_T = TypeVar("_T")
_Row = tuple[int, float, int]  # (seq, created_at, size)


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


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored batch. ``created_at`` is the queue's clock (``time.time()``) at append."""

    seq: int
    created_at: float
    payload: bytes


@dataclass(frozen=True, slots=True)
class EvictionEpisode:
    """A run of evictions, from the first eviction to the moment the backlog is clearly
    below its bounds again (see DESIGN.md, "Eviction episodes").

    ``cause`` is the bound that evicted: ``"max_bytes"``, ``"max_age"`` or ``"both"``.
    ``first_seq``..``last_seq`` is the range of seqs lost (acked seqs in between were
    delivered); ``oldest_created_at``/``newest_created_at`` the ``created_at`` range of
    the batches lost. ``started_at`` and ``ended_at`` are the queue's clock;
    ``ended_at`` is None while ``active``.
    """

    cause: EvictionCause
    started_at: float
    first_seq: int
    last_seq: int
    batches: int
    bytes: int
    oldest_created_at: float
    newest_created_at: float
    active: bool = True
    ended_at: float | None = None


@dataclass(frozen=True, slots=True)
class BufferStats:
    """A snapshot of the queue: taken after its last write, ``disk_bytes`` when asked.

    ``oldest_created_at`` is the stamp of the lowest stored seq. It can be later than
    the caller's clock (a clock that was ahead when it was stamped, or that stepped
    back since): use ``oldest_age(now)``, which is never negative. ``bytes`` is the
    sum of payload lengths; ``disk_bytes`` the size of every file of the buffer (the
    database, ``-wal``, ``-shm``, ``.lock``, ``.seq``), which ``max_bytes`` bounds.
    ``evicted_*`` count both bounds and are persisted; ``evicted_by_age_*`` are the
    part of them the age bound dropped. ``eviction`` is the current or last eviction
    episode of this open (None if nothing was evicted since). ``recovered_from``,
    ``salvaged_batches`` and ``unreadable_batches`` describe a damaged file found at
    this open (see ``DurableQueue.recovered_from``); they are not persisted.
    """

    batches: int
    bytes: int
    oldest_created_at: float | None
    last_seq: int
    evicted_batches: int
    evicted_bytes: int
    evicted_by_age_batches: int = 0
    evicted_by_age_bytes: int = 0
    recovered_from: str | None = None
    salvaged_batches: int = 0
    unreadable_batches: int = 0
    disk_bytes: int = 0
    eviction: EvictionEpisode | None = None

    def oldest_age(self, now: float) -> float | None:
        """Seconds since ``oldest_created_at`` by ``now``, never negative; None if empty."""
        if self.oldest_created_at is None:
            return None
        return max(0.0, now - self.oldest_created_at)


class _CorruptDatabaseError(Exception):
    """Internal: the file at the buffer path is a damaged buffer and is moved aside."""


# -- the footprint: how max_bytes is shared between the files --------------------------------


@dataclass(frozen=True, slots=True)
class _Budget:
    """How ``max_bytes`` is split between the database, its WAL, the -shm and side files."""

    max_bytes: int
    page_size: int
    wal_bytes: int  # the -wal never grows beyond this
    shm_bytes: int  # the -shm index of a WAL of that size
    data_pages: int  # the database file never grows beyond this many pages
    wal_frames: int  # frames the WAL reserve holds
    headroom: int  # frames a transaction may write with no checkpoint first
    checkpoint_frames: int  # wal_autocheckpoint: leaves headroom frames before wal_frames
    txn_frames: int  # frames any one transaction may write (after a checkpoint)
    max_payload: int  # the largest payload that fits in both

    @classmethod
    def of(cls, max_bytes: int, page_size: int) -> _Budget:
        wal_bytes = min(max(max_bytes // 8, _WAL_MIN), _WAL_MAX)
        wal_frames = (wal_bytes - _WAL_HEADER) // (page_size + _FRAME_HEADER)
        shm_bytes = _SHM_REGION * (1 + (wal_frames + 34) // _SHM_FRAMES)
        data_pages = (max_bytes - wal_bytes - shm_bytes - _SIDE_RESERVE) // page_size
        headroom = max(wal_frames // 4, 2 * _MIN_EVICT_FRAMES)
        txn_frames = wal_frames - 1
        geometry = cls(
            max_bytes=max_bytes,
            page_size=page_size,
            wal_bytes=wal_bytes,
            shm_bytes=shm_bytes,
            data_pages=data_pages,
            wal_frames=wal_frames,
            headroom=headroom,
            checkpoint_frames=wal_frames - headroom + 1,
            txn_frames=txn_frames,
            max_payload=0,
        )
        return dataclasses.replace(geometry, max_payload=geometry.largest_payload())

    @property
    def usable(self) -> int:
        return self.page_size  # buffer files reserve no bytes at the end of their pages

    def overflow_pages(self, size: int, overhead: int = _RECORD_OVERHEAD) -> int:
        """Overflow pages of a row with a ``size``-byte payload (fileformat2.html, 1.6)."""
        record, usable = size + overhead, self.usable
        max_local = usable - 35
        if record <= max_local:
            return 0
        min_local = (usable - 12) * 32 // 255 - 23
        local = min_local + (record - min_local) % (usable - 4)
        if local > max_local:
            local = min_local
        return -(-(record - local) // (usable - 4))

    def cell_bytes(self, size: int, overhead: int = _RECORD_OVERHEAD) -> int:
        """Bytes a row takes on its leaf page."""
        record = size + overhead
        spilled = self.overflow_pages(size, overhead) * (self.usable - 4)
        return record - min(spilled, record) + _CELL_OVERHEAD

    def row_pages(self, size: int) -> float:
        """Pages a row occupies, its share of a leaf included: what evicting it frees."""
        return self.overflow_pages(size) + self.cell_bytes(size) / self.usable

    def data_pages_for(self, sizes: Iterable[int]) -> int:
        """Pages new rows of these sizes take (a close estimate; the insert checks)."""
        sizes = list(sizes)
        cells = sum(self.cell_bytes(s) for s in sizes)
        return sum(self.overflow_pages(s) for s in sizes) + -(-cells // (self.usable - 8))

    def insert_frames(self, sizes: Iterable[int]) -> int:
        """An upper bound of the WAL frames an insert of rows of these sizes writes."""
        overflow = cells = 0
        for size in sizes:
            row_overflow, row_cells = self.insert_parts(size)
            overflow, cells = overflow + row_overflow, cells + row_cells
        return self.frames_of(overflow, cells)

    def insert_parts(self, size: int) -> tuple[int, int]:
        """(overflow pages, leaf bytes) a new row takes, at most; see ``frames_of``."""
        overhead = _RECORD_MAX_OVERHEAD
        return self.overflow_pages(size, overhead) + 1, self.cell_bytes(size, overhead)

    def frames_of(self, overflow: int, cells: int) -> int:
        """WAL frames of an insert whose rows take these pages and leaf bytes: overflow
        pages, leaves (at least half full: appends fill them), interior pages, page 1,
        the freelist's trunk pages."""
        leaves = -(-cells // (self.usable // 2)) + 1
        return overflow + leaves + _TXN_FIXED_FRAMES + overflow // 1000 + 1

    def delete_frames(self, runs: int, rows: int, freed_pages: int) -> int:
        """An upper bound of the WAL frames deleting ``rows`` rows in ``runs`` runs of
        consecutive seqs writes: the pages that keep rows (a deleted leaf is freed, not
        written), interior pages and the freelist's trunk pages."""
        return 3 * runs + -(-rows // 10) + freed_pages // 1000 + 1

    def largest_payload(self) -> int:
        def fits(size: int) -> bool:
            frames = self.insert_frames([size]) + _MIN_EVICT_FRAMES
            pages = 3 + self.overflow_pages(size, _RECORD_MAX_OVERHEAD) + 2
            return frames <= self.txn_frames and pages <= self.data_pages

        low, high = 0, self.max_bytes
        while low < high:
            middle = (low + high + 1) // 2
            if fits(middle):
                low = middle
            else:
                high = middle - 1
        return low


# -- what one transaction evicted ------------------------------------------------------------


@dataclass(slots=True)
class _Loss:
    """Entries evicted by one transaction; added to the eviction episode after COMMIT."""

    batches: int = 0
    bytes: int = 0
    by_age_batches: int = 0
    by_age_bytes: int = 0
    first_seq: int = 0
    last_seq: int = 0
    oldest: float = math.inf
    newest: float = -math.inf
    largest: int = 0  # payload bytes of the largest entry evicted

    def add(self, seq: int, created_at: float, size: int, *, by_age: bool) -> None:
        self.batches += 1
        self.bytes += size
        self.largest = max(self.largest, size)
        if by_age:
            self.by_age_batches += 1
            self.by_age_bytes += size
        self.first_seq = seq if not self.first_seq else min(self.first_seq, seq)
        self.last_seq = max(self.last_seq, seq)
        self.oldest = min(self.oldest, created_at)
        self.newest = max(self.newest, created_at)

    @property
    def cause(self) -> EvictionCause:
        if self.by_age_batches == self.batches:
            return "max_age"
        return "both" if self.by_age_batches else "max_bytes"


@dataclass(slots=True)
class _Tx:
    """The state of one write transaction: the counters as it changes them, what it
    evicted, and how many more WAL frames its evictions may write. ``stats`` is the
    snapshot it started from until ``finish`` makes the new one."""

    conn: sqlite3.Connection
    budget: _Budget
    stats: BufferStats
    frames_left: int
    file_pages: int  # page_count, and pages in use (page_count - freelist_count), as of
    used_pages: int  # the start or of the last measure (see ``counted``)
    page_limit: int = 0  # the file may not grow past this (the budget, or its size if larger)
    batches: int = 0
    payload_bytes: int = 0
    last_seq: int = 0
    counted: bool = True  # file_pages and used_pages are up to date
    front_changed: bool = False  # the lowest seq changed: oldest_created_at is read again
    loss: _Loss = dataclasses.field(default_factory=_Loss)
    age_hint: float | None = None  # set when this transaction walked the age prefix
    age_done: bool = False  # ... and walked all of it
    done: bool = False  # the transaction did all it was asked (else: evictions only)
    shifted: int = 0  # rows shift_created_at rewrote
    deleting: bool = False  # the fixed frames of a deletion are accounted for

    def __post_init__(self) -> None:
        self.page_limit = max(self.budget.data_pages, self.file_pages)
        self.batches, self.payload_bytes = self.stats.batches, self.stats.bytes
        self.last_seq = self.stats.last_seq

    def measure(self) -> None:
        """Read page_count and freelist_count as this transaction sees them."""
        self.file_pages = int(self.conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])
        self.used_pages, self.counted = self.file_pages - free, True

    def free_pages(self) -> int:
        if not self.counted:
            self.measure()
        return self.budget.data_pages - self.used_pages

    def over_budget(self) -> int:
        """Pages by which the (measured) file exceeds its budget; <= 0 if it fits."""
        return max(self.used_pages - self.budget.data_pages, self.file_pages - self.page_limit)

    def changed(self, *, front: bool) -> None:
        self.counted = False
        self.front_changed = self.front_changed or front

    def affordable(self, runs: int, rows: int, freed_pages: int) -> bool:
        fixed = 0 if self.deleting else _TXN_FIXED_FRAMES
        return fixed + self.budget.delete_frames(runs, rows, freed_pages) <= self.frames_left

    def delete_prefix(self, rows: Sequence[_Row], ages: Sequence[bool]) -> None:
        """Evict ``rows`` (the lowest stored seqs, in order), counting each by its cause."""
        if not rows:
            return
        freed = sum(self.budget.overflow_pages(size) + 1 for _, _, size in rows)
        fixed = 0 if self.deleting else _TXN_FIXED_FRAMES
        self.frames_left -= fixed + self.budget.delete_frames(1, len(rows), freed)
        self.deleting = True
        self.conn.execute("DELETE FROM batches WHERE seq <= ?", (rows[-1][0],))
        for (seq, created_at, size), by_age in zip(rows, ages, strict=True):
            self.loss.add(seq, created_at, size, by_age=by_age)
        self.deleted(len(rows), sum(size for _, _, size in rows))

    def deleted(self, count: int, size: int) -> None:
        """Note rows deleted (evicted here, or acked by the caller)."""
        self.batches -= count
        self.payload_bytes -= size
        self.changed(front=True)

    def drop_unstored(self, seq: int, created_at: float, size: int) -> None:
        """Count a member of a group that never fitted as evicted (by the byte bound)."""
        self.loss.add(seq, created_at, size, by_age=False)

    def evict_expired(self, cutoff: float, now: float) -> bool:
        """Evict the expired prefix, as far as the frame allowance goes; True if all of it.

        An entry has expired if ``created_at < cutoff``. A stamp in the future
        (``created_at > now``) cannot be trusted: such an entry goes if an expired entry
        follows it, and otherwise waits. The walk stops at the first entry stamped
        between ``cutoff`` and ``now``: older entries behind it wait for their turn.
        Leaves in ``age_hint`` the stamp whose expiry is the next possible eviction.
        """
        expired = 0  # rows[:expired] go
        rows: list[_Row] = []
        freed = 0  # pages freed by rows[:expired], about
        hint = math.inf
        complete = True
        for row in _rows_in_seq_order(self.conn):
            created_at = row[1]
            rows.append(row)
            if created_at < cutoff:
                more = sum(self.budget.overflow_pages(s) + 1 for _, _, s in rows[expired:])
                if not self.affordable(1, len(rows), freed + more):
                    rows.pop()
                    complete = False
                    break
                expired, freed = len(rows), freed + more
            elif created_at > now:
                continue  # pending: goes only if an expired entry follows
            else:
                hint = created_at
                break
        if complete and len(rows) > expired:  # future stamps after the last expired entry
            hint = min(hint, *(c for _, c, _ in rows[expired:]))
        self.delete_prefix(rows[:expired], [True] * expired)
        self.age_hint = hint if complete else -math.inf
        self.age_done = complete
        return complete

    def evict_pages(self, pages: float) -> bool:
        """Evict the shortest prefix that frees about ``pages`` pages (at least one row),
        as far as the frame allowance goes; False if it could not evict at all."""
        chosen: list[_Row] = []
        estimate = 0.0
        freed = 0
        for row in _rows_in_seq_order(self.conn):
            size = row[2]
            if not self.affordable(
                1, len(chosen) + 1, freed + self.budget.overflow_pages(size) + 1
            ):
                break
            chosen.append(row)
            estimate += self.budget.row_pages(size)
            freed += self.budget.overflow_pages(size) + 1
            if estimate >= pages:
                break
        self.delete_prefix(chosen, [False] * len(chosen))
        return bool(chosen)

    def make_room(self, pages: int) -> bool:
        """Evict until ``pages`` more pages fit in the data budget; False when the frame
        allowance ran out first (what was evicted stays evicted)."""
        while self.batches and (short := pages - self.free_pages()) > 0:
            if not self.evict_pages(short):
                return False
        return True

    def insert(self, rows: list[tuple[int, float, bytes]]) -> bool:
        """Insert ``rows`` (new seqs, in order) within the data budget, evicting older
        entries (or, when nothing older is left, the group's own first members) until
        they fit. False when the frame allowance ran out before they fitted."""
        if not self.make_room(self.budget.data_pages_for(len(p) for _, _, p in rows)):
            return False
        while True:
            self.conn.execute("SAVEPOINT fit")
            self.conn.executemany(
                "INSERT INTO batches (seq, created_at, size, payload) VALUES (?, ?, ?, ?)",
                [(seq, created_at, len(p), p) for seq, created_at, p in rows],
            )
            self.measure()
            over = self.over_budget()
            if over <= 0:
                self.conn.execute("RELEASE fit")
                break
            self.conn.execute("ROLLBACK TO fit")
            self.conn.execute("RELEASE fit")
            self.counted = False
            if self.batches:
                if not self.evict_pages(over):
                    return False
            elif len(rows) > 1:  # nothing older left: the group's first member goes, unstored
                seq, created_at, payload = rows.pop(0)
                self.drop_unstored(seq, created_at, len(payload))
            else:  # max_payload fits in an empty queue: only a bug gets here
                raise BufferError(f"an entry of {len(rows[0][2])} bytes does not fit")
        self.front_changed = self.front_changed or not self.batches
        self.batches += len(rows)
        self.payload_bytes += sum(len(p) for _, _, p in rows)
        self.last_seq = max(self.last_seq, rows[-1][0])
        return True

    def finish(self) -> None:
        """Write the counters of what was evicted; make the new snapshot."""
        loss, old = self.loss, self.stats
        last_seq = max(self.last_seq, loss.last_seq)
        evicted = (
            old.evicted_batches + loss.batches,
            old.evicted_bytes + loss.bytes,
            old.evicted_by_age_batches + loss.by_age_batches,
            old.evicted_by_age_bytes + loss.by_age_bytes,
        )
        if loss.batches:
            _write_meta(
                self.conn,
                last_seq=last_seq,
                evicted_batches=evicted[0],
                evicted_bytes=evicted[1],
                evicted_by_age_batches=evicted[2],
                evicted_by_age_bytes=evicted[3],
            )
        if not self.counted:
            self.measure()
        self.stats = dataclasses.replace(
            old,
            batches=self.batches,
            bytes=self.payload_bytes,
            oldest_created_at=(
                _oldest_created_at(self.conn) if self.front_changed else old.oldest_created_at
            ),
            last_seq=last_seq,
            evicted_batches=evicted[0],
            evicted_bytes=evicted[1],
            evicted_by_age_batches=evicted[2],
            evicted_by_age_bytes=evicted[3],
        )


class DurableQueue:
    """Store-and-forward queue: ``append`` durably, ``read`` in seq order, ``ack`` to delete.

    Every method commits before it returns. Calls may come from any thread but are
    serialised by an internal lock; the gateway makes them all from one worker thread.
    ``stats()`` never waits for that lock or touches the disk.

    ``max_bytes`` bounds every file of the buffer on disk (at least ``MIN_MAX_BYTES``);
    ``max_age`` (seconds) adds an age bound; ``synchronous="normal"`` trades the last
    commits before a power cut for fewer flushes (see DESIGN.md, "Durability window");
    ``clock`` stamps ``created_at`` and judges age (tests inject one).
    """

    recovered_from: str | None
    """Where a damaged file found at open was moved to, or None."""
    salvaged_batches: int
    """Batches copied out of that damaged file into the fresh one."""
    unreadable_batches: int
    """Batches known to exist in that damaged file that could not be read."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int,
        max_age: float | None = None,
        synchronous: Synchronous = "full",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (
            isinstance(max_bytes, bool)
            or not isinstance(max_bytes, int)
            or max_bytes < MIN_MAX_BYTES
        ):
            raise ValueError(
                f"max_bytes must be an int of at least {MIN_MAX_BYTES} (the WAL, its index"
                f" and a few pages), got {max_bytes!r}"
            )
        if max_age is not None and (
            isinstance(max_age, bool)
            or not isinstance(max_age, int | float)
            or not math.isfinite(max_age)
            or max_age <= 0
        ):
            raise ValueError(f"max_age must be a positive number of seconds, got {max_age!r}")
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        self._path = os.fspath(path)
        if not self._path.strip():
            raise BufferError("the buffer path is empty: set [buffer] path to a file name")
        self._seq_path = self._path + ".seq"
        self._files = tuple(Path(self._path + s) for s in _SIDE_SUFFIXES)
        self._side_bytes = 0  # .lock and .seq: the sizes we wrote
        self._max_bytes = max_bytes
        self._max_age = max_age
        self._synchronous: Synchronous = synchronous
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._seq_ceiling = 0
        self._budget = _Budget.of(max_bytes, _PAGE_SIZE)  # until the file's page size is known
        self._file_pages = self._used_pages = 0  # as of the last commit
        self._episode: EvictionEpisode | None = None
        self._episode_room = 0  # free pages that end an episode (see _maybe_end_episode)
        self._episode_gap = 0.0  # the largest gap in created_at the age bound left behind
        self._age_hint = -math.inf  # the stamp that decides the next age eviction (below)
        self._age_hint_at = -math.inf  # the clock when it was worked out
        self._unsynced = False
        self._wal_dir_synced = False
        self._warned_checkpoint = False
        self.recovered_from = None
        self.salvaged_batches = self.unreadable_batches = 0

        _refuse_anything_but_a_file(self._path)
        _refuse_what_is_not_ours(self._path, self._has_seq_file())
        _make_directory(self._path)
        self._lock_fd = _acquire_process_lock(self._path)
        self._side_bytes = len(f"{os.getpid()}\n")
        try:
            self._conn, self._stats = self._open_database()
            try:
                if synchronous == "normal":
                    self._stats = self._skip_seqs_a_power_cut_may_have_lost(self._conn)
                self._evict_to_bounds(self._clock())
                self._write_seq_file(self._stats.last_seq + _SEQ_LEASE)
                self._after_write(self._clock())
            except BaseException:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                raise
        except BaseException:
            _release_process_lock(self._lock_fd)
            raise

    # -- public API ------------------------------------------------------------------

    @property
    def max_payload(self) -> int:
        """The largest payload ``append`` accepts (see DESIGN.md, "Footprint")."""
        return self._budget.max_payload

    def append(self, make_payload: Callable[[int], bytes]) -> int:
        """Store ``make_payload(seq)`` under the next seq and commit; return that seq.

        When this returns, the entry survives SIGKILL, and power loss too with
        ``synchronous="full"``. If the files would go over ``max_bytes``, or the oldest
        entries are older than ``max_age``, the oldest entries are evicted in the same
        transaction. If ``make_payload`` raises, or the payload is larger than
        ``max_payload`` (``PayloadTooLargeError``), nothing changes and the seq is not
        consumed.
        """
        return self.append_many([make_payload])[0]

    def append_many(self, make_payloads: Sequence[Callable[[int], bytes]]) -> list[int]:
        """Store several payloads under consecutive seqs with one commit (one fsync).

        The same as calling ``append`` for each, in order, except that nothing is stored
        if any ``make_payload`` raises or returns a payload that is not bytes or larger
        than ``max_payload``; then no seq is consumed. A group larger than the budget
        evicts its own first members, as single appends would (they are counted as
        evicted, never written; their seqs are returned all the same). A group larger
        than one transaction of the WAL reserve is committed in several, in order (a
        crash in between keeps a prefix of the group; see DESIGN.md).
        """
        with self._lock:
            conn = self._open_connection()
            first = self._stats.last_seq + 1
            payloads = [
                self._checked(make(seq)) for seq, make in enumerate(make_payloads, start=first)
            ]
            if not payloads:
                return []
            last = first + len(payloads) - 1
            if last > self._seq_ceiling:
                self._write_seq_file(last + _SEQ_LEASE)
            now = self._clock()
            self._store(conn, [(seq, now, p) for seq, p in enumerate(payloads, start=first)], now)
            return list(range(first, last + 1))

    def evict_older_than(self, now: float | None = None) -> int:
        """Apply the age bound now: evict the entries created before ``now - max_age``.

        Oldest first, stopping at the first entry stamped between that cutoff and
        ``now`` (eviction always removes a prefix; a stamp in the future goes when an
        expired entry follows it). ``now`` defaults to the clock. Returns how many
        entries were evicted; 0 without a ``max_age``. Cheap enough for a timer: without
        an expired entry it reads nothing.
        """
        with self._lock:
            conn = self._open_connection()
            if self._max_age is None:
                return 0
            at = self._clock() if now is None else now
            evicted = self._evict_expired(conn, at)
            if evicted:
                self._after_write(at)
            else:
                self._maybe_end_episode(at)
            return evicted

    def read(self, after_seq: int = 0, limit: int = 100) -> list[Entry]:
        """Up to ``limit`` entries with ``seq > after_seq``, oldest first. Deletes nothing."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        with self._lock:
            conn = self._open_connection()
            with self._translate_errors("read"):
                rows = conn.execute(
                    "SELECT seq, created_at, payload FROM batches"
                    " WHERE seq > ? ORDER BY seq LIMIT ?",
                    (min(max(after_seq, 0), _MAX_INT64), min(limit, _MAX_INT64)),
                ).fetchall()
            return [Entry(seq, created_at, payload) for seq, created_at, payload in rows]

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete these entries; return how many were deleted.

        Idempotent: seqs already acked, evicted or never handed out are ignored. One
        transaction for a usual group; a group whose deletion would write more than the
        WAL's headroom is committed in several (a crash in between only means some of
        them are published again).
        """
        with self._lock:
            conn = self._open_connection()
            last_seq = self._stats.last_seq
            wanted = sorted({s for s in map(operator.index, seqs) if 0 < s <= last_seq})
            deleted = 0
            for chunk in self._ack_chunks(wanted):
                before = self._stats.batches
                tx = self._commit(conn, functools.partial(self._delete_seqs, chunk))
                self._apply(tx, None)
                deleted += before - tx.stats.batches
            if deleted:
                now = self._clock()
                self._reset_age_hint(now)
                self._after_write(now)
            return deleted

    def shift_created_at(self, after_seq: int, delta: float) -> int:
        """Add ``delta`` seconds to ``created_at`` of every entry with ``seq > after_seq``.

        For a clock step: the gateway calls it with the first seq of this boot (minus
        one) and the size of the step, so the entries stamped before the step are judged
        by the corrected clock. Cheap for the few entries of a boot: one transaction
        that rewrites only their leaf pages (several, oldest first, for more entries
        than the WAL's headroom takes). Returns how many entries were shifted.
        """
        after = operator.index(after_seq)
        if (
            isinstance(delta, bool)
            or not isinstance(delta, int | float)
            or not math.isfinite(delta)
        ):
            raise ValueError(f"delta must be a finite number of seconds, got {delta!r}")
        with self._lock:
            conn = self._open_connection()
            if not delta or after >= self._stats.last_seq:
                return 0
            with self._translate_errors("read"):
                rows = conn.execute(
                    "SELECT seq, created_at, size FROM batches WHERE seq > ? ORDER BY seq",
                    (max(after, 0),),
                ).fetchall()
            shifted = 0
            for chunk, in_place, frames in self._shift_chunks(rows, delta):
                if frames > self._budget.headroom:
                    self._checkpoint(conn)
                allowance = self._budget.txn_frames - frames
                work = functools.partial(self._shift, chunk, in_place, delta, allowance)
                tx = self._commit(conn, work)
                self._apply(tx, None)
                shifted += tx.shifted
            now = self._clock()
            self._reset_age_hint(now)
            self._after_write(now)
            return shifted

    def sync(self) -> None:
        """Make every commit so far survive a power cut. A no-op with ``synchronous="full"``
        and when nothing was committed since the last call.

        With ``"normal"`` it fsyncs the WAL (and, the first time, its directory entry):
        calling it every second bounds what a power cut can take back to about a second
        of commits, at one flush per call that had something to flush.
        """
        with self._lock:
            self._open_connection()
            if self._synchronous == "full" or not self._unsynced:
                return
            try:
                fd = os.open(self._path + "-wal", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self._unsynced = False
                return  # checkpointed and removed: everything is in the (synced) database
            except OSError as err:
                raise BufferError(f"buffer {self._path}: sync failed: {err}") from err
            try:
                os.fsync(fd)
                if not self._wal_dir_synced:
                    _fsync_dir(self._path)
                    self._wal_dir_synced = True
            except OSError as err:
                raise BufferError(f"buffer {self._path}: sync failed: {err}") from err
            finally:
                os.close(fd)
            self._unsynced = False

    def stats(self) -> BufferStats:
        """The snapshot taken after the last write, with ``disk_bytes`` measured now.

        No lock and no SQLite: safe from any thread (the health reporter calls it on the
        event loop). ``disk_bytes`` costs three ``stat`` calls (file metadata, in memory
        for files in use); 0 once the queue is closed.
        """
        if self._conn is None:
            return self._stats
        return dataclasses.replace(self._stats, disk_bytes=self._disk_bytes())

    def close(self) -> None:
        """Checkpoint, close the database and release the process lock. Idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                try:
                    if self._episode is not None and self._episode.active:
                        self._end_episode(self._clock(), "the buffer was closed")
                    self._write_seq_file(self._stats.last_seq)
                finally:
                    with self._translate_errors("close"):
                        conn.close()
            finally:
                _release_process_lock(self._lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"<DurableQueue {self._path!r} {state} max_bytes={self._max_bytes}>"

    # -- appending -----------------------------------------------------------------------

    def _checked(self, payload: bytes) -> bytes:
        if not isinstance(payload, bytes):
            raise TypeError(f"make_payload must return bytes, not {type(payload).__name__}")
        if len(payload) > self._budget.max_payload:
            raise PayloadTooLargeError(len(payload), self._max_bytes, self._budget.max_payload)
        return payload

    def _store(
        self, conn: sqlite3.Connection, rows: list[tuple[int, float, bytes]], now: float
    ) -> None:
        """Commit new rows: the members of a group that cannot fit are counted as evicted
        without being written; the rest go in chunks that fit one transaction each."""
        budget = self._budget
        sizes = [len(p) for _, _, p in rows]
        keep = _members_that_fit(budget, sizes)
        unstored, rows = rows[:keep], rows[keep:]
        # The age bound applies once per call, to the entries as they were before it
        # (then the byte bound): entries a byte eviction exposes wait for the next check.
        age_due = self._age_due(now)
        chunk: list[tuple[int, float, bytes]] = []
        overflow = cells = 0
        for row in rows:
            row_overflow, row_cells = budget.insert_parts(len(row[2]))
            frames = budget.frames_of(overflow + row_overflow, cells + row_cells)
            if chunk and frames > budget.txn_frames - _MIN_EVICT_FRAMES:
                age_due = self._store_chunk(conn, chunk, now, unstored, age_due)
                chunk, unstored, overflow, cells = [], [], 0, 0
            chunk.append(row)
            overflow, cells = overflow + row_overflow, cells + row_cells
        self._store_chunk(conn, chunk, now, unstored, age_due)
        if self._max_age is not None:
            self._age_hint = min(self._age_hint, now)
        self._after_write(now)

    def _store_chunk(
        self,
        conn: sqlite3.Connection,
        chunk: list[tuple[int, float, bytes]],
        now: float,
        unstored: list[tuple[int, float, bytes]],
        age_due: bool,
    ) -> bool:
        """One transaction (more if evicting needs more WAL than one can write): evict
        what the bounds require, insert the chunk, count everything. Returns whether the
        age bound still has to be applied (its walk was cut short)."""
        budget = self._budget
        frames = budget.insert_frames(len(p) for _, _, p in chunk)
        evict_older = bool(unstored)  # a member did not fit: everything older goes too
        generous = frames + _MIN_EVICT_FRAMES > budget.headroom
        while True:
            cutoff = self._age_cutoff(now) if age_due else None
            allowance = (budget.txn_frames if generous else budget.headroom) - frames
            if generous:
                self._checkpoint(conn)
            work = functools.partial(
                self._evict_and_insert, chunk, now, cutoff, unstored, evict_older, allowance
            )
            tx = self._commit(conn, work)
            self._apply(tx, now)
            age_due = age_due and not tx.age_done
            if tx.done:
                if tx.loss.batches:  # the next append of this size must fit without evicting
                    sizes = [len(p) for _, _, p in chunk]
                    room = max(budget.data_pages_for(sizes), 2 * budget.data_pages_for(sizes[-1:]))
                    self._episode_room = max(self._episode_room, room)
                return age_due
            unstored, generous = [], True

    def _evict_and_insert(
        self,
        chunk: list[tuple[int, float, bytes]],
        now: float,
        cutoff: float | None,
        unstored: list[tuple[int, float, bytes]],
        evict_older: bool,
        allowance: int,
        conn: sqlite3.Connection,
    ) -> _Tx:
        tx = self._new_tx(conn, allowance)
        for seq, created_at, payload in unstored:
            tx.drop_unstored(seq, created_at, len(payload))
        ready = cutoff is None or tx.evict_expired(cutoff, now)  # age first, then bytes
        if ready and evict_older:
            while tx.batches and tx.evict_pages(math.inf):
                pass
            ready = not tx.batches
        if ready:
            tx.done = tx.insert(list(chunk))
        tx.finish()
        return tx

    # -- evicting, acking, shifting --------------------------------------------------------

    def _new_tx(self, conn: sqlite3.Connection, allowance: int) -> _Tx:
        # Nothing but this connection writes the file: the pages counted at the end of
        # the last transaction are the pages at the start of this one.
        return _Tx(conn, self._budget, self._stats, allowance, self._file_pages, self._used_pages)

    def _apply(self, tx: _Tx, now: float | None) -> None:
        """Take over the outcome of a committed transaction."""
        self._stats = tx.stats
        self._file_pages, self._used_pages = tx.file_pages, tx.used_pages
        at = self._clock() if now is None else now
        if tx.loss.batches > tx.loss.by_age_batches:  # the byte bound moved the front
            self._reset_age_hint(at)
        elif tx.age_hint is not None:
            self._age_hint, self._age_hint_at = tx.age_hint, at
        if tx.loss.batches:
            self._note_loss(tx.loss, at)
            largest = 2 * self._budget.data_pages_for([tx.loss.largest])
            self._episode_room = max(self._episode_room, largest)
            oldest = tx.stats.oldest_created_at
            if tx.loss.by_age_batches and oldest is not None:
                self._episode_gap = max(self._episode_gap, oldest - tx.loss.newest)

    def _age_cutoff(self, now: float) -> float | None:
        return None if self._max_age is None else now - self._max_age

    def _age_due(self, now: float) -> bool:
        """Could the age bound evict anything at ``now``? O(1), no I/O.

        ``_age_hint`` is the stamp whose expiry is the earliest moment an entry can
        expire: the first entry's stamp when it is sane (not in the future), else what
        the last walk found; -inf when unknown, +inf when empty. A clock that stepped
        back since it was worked out makes it unknown.
        """
        if self._max_age is None or not self._stats.batches:
            return False
        return self._age_hint < now - self._max_age or now < self._age_hint_at

    def _reset_age_hint(self, now: float) -> None:
        oldest = self._stats.oldest_created_at
        if oldest is None:
            self._age_hint = math.inf
        else:
            self._age_hint = oldest if oldest <= now else -math.inf
        self._age_hint_at = now

    def _evict_expired(self, conn: sqlite3.Connection, now: float) -> int:
        """Apply the age bound at ``now`` in as many transactions as the WAL needs."""
        evicted = 0
        generous = False
        while (cutoff := self._age_cutoff(now)) is not None and self._age_due(now):
            if generous:
                self._checkpoint(conn)
            allowance = self._budget.txn_frames if generous else self._budget.headroom
            tx = self._commit(conn, functools.partial(self._evict, now, cutoff, False, allowance))
            self._apply(tx, now)
            evicted += tx.loss.batches
            if tx.done:
                break
            generous = True
        return evicted

    def _evict(
        self,
        now: float,
        cutoff: float | None,
        to_budget: bool,
        allowance: int,
        conn: sqlite3.Connection,
    ) -> _Tx:
        """Evict the expired prefix (if ``cutoff``), then (if ``to_budget``) until the
        entries fit in the data budget."""
        tx = self._new_tx(conn, allowance)
        tx.done = (cutoff is None or tx.evict_expired(cutoff, now)) and (
            not to_budget or tx.make_room(0)
        )
        tx.finish()
        return tx

    def _evict_to_bounds(self, now: float) -> None:
        """At open: a lowered max_bytes or an expired backlog is evicted at once (logged as
        an eviction episode), and a file larger than the data budget is compacted."""
        conn = self._open_connection()
        self._age_hint, self._age_hint_at = -math.inf, now
        while True:
            self._checkpoint(conn)
            cutoff = self._age_cutoff(now) if self._age_due(now) else None
            work = functools.partial(self._evict, now, cutoff, True, self._budget.txn_frames)
            tx = self._commit(conn, work)
            self._apply(tx, now)
            if tx.done:
                break
        self._compact_if_oversized()

    def _ack_chunks(self, wanted: list[int]) -> Iterator[list[int]]:
        """Split sorted seqs into groups whose deletion fits in the WAL's headroom."""
        budget = self._budget
        per_row = budget.overflow_pages(budget.max_payload) + 1
        room = budget.headroom - _TXN_FIXED_FRAMES
        start = 0
        while start < len(wanted):
            end, runs = start + 1, 1
            while end < len(wanted):
                runs += wanted[end] != wanted[end - 1] + 1
                freed = min(budget.data_pages, (end + 1 - start) * per_row)
                if budget.delete_frames(runs, end + 1 - start, freed) > room:
                    break
                end += 1
            yield wanted[start:end]
            start = end

    def _delete_seqs(self, chunk: list[int], conn: sqlite3.Connection) -> _Tx:
        tx = self._new_tx(conn, self._budget.headroom)
        count = freed = 0
        for start in range(0, len(chunk), _ACK_CHUNK):
            part = chunk[start : start + _ACK_CHUNK]
            marks = ",".join("?" * len(part))
            found, size = conn.execute(
                f"SELECT count(*), coalesce(sum(size), 0) FROM batches WHERE seq IN ({marks})",
                part,
            ).fetchone()
            if found:
                conn.execute(f"DELETE FROM batches WHERE seq IN ({marks})", part)
                count += found
                freed += size
        if count:
            _write_meta(conn, last_seq=tx.last_seq)
            tx.deleted(count, freed)
        tx.finish()
        return tx

    def _shift_chunks(
        self, rows: list[_Row], delta: float
    ) -> Iterator[tuple[list[_Row], bool, int]]:
        """Split rows to shift into runs that fit one transaction each: (rows, in place,
        WAL frames). A record that keeps its size is overwritten in place by SQLite (its
        leaf page only); one that does not (an integral stamp, stored as an integer) is
        deleted and inserted again, so that its pages are freed before new ones are
        taken and the file does not grow."""
        budget = self._budget
        limit = budget.txn_frames - _MIN_EVICT_FRAMES
        chunk: list[_Row] = []
        frames = _TXN_FIXED_FRAMES
        chunk_in_place = True
        for row in rows:
            _, created_at, size = row
            in_place = not (
                _stored_as_integer(created_at) or _stored_as_integer(created_at + delta)
            )
            cost = 1 if in_place else budget.insert_frames([size]) - _TXN_FIXED_FRAMES
            if chunk and (frames + cost > limit or in_place != chunk_in_place):
                yield chunk, chunk_in_place, frames
                chunk, frames = [], _TXN_FIXED_FRAMES
            chunk.append(row)
            chunk_in_place = in_place
            frames += cost
        if chunk:
            yield chunk, chunk_in_place, frames

    def _shift(
        self,
        chunk: list[_Row],
        in_place: bool,
        delta: float,
        allowance: int,
        conn: sqlite3.Connection,
    ) -> _Tx:
        tx = self._new_tx(conn, allowance)
        first, last = chunk[0][0], chunk[-1][0]
        if in_place:
            tx.shifted = conn.execute(
                "UPDATE batches SET created_at = created_at + ? WHERE seq BETWEEN ? AND ?",
                (delta, first, last),
            ).rowcount
        else:
            rows = conn.execute(
                "SELECT seq, created_at + ?, size, payload FROM batches"
                " WHERE seq BETWEEN ? AND ? ORDER BY seq",
                (delta, first, last),
            ).fetchall()
            conn.execute("DELETE FROM batches WHERE seq BETWEEN ? AND ?", (first, last))
            conn.executemany(
                "INSERT INTO batches (seq, created_at, size, payload) VALUES (?, ?, ?, ?)", rows
            )
            tx.shifted = len(rows)
        tx.changed(front=True)
        tx.measure()
        if tx.over_budget() > 0:
            raise BufferError(  # rows freed their pages first: only a bug gets here
                f"buffer {self._path}: shifting created_at would grow the file past max_bytes"
            )
        tx.finish()
        return tx

    # -- eviction episodes ----------------------------------------------------------------

    def _note_loss(self, loss: _Loss, now: float) -> None:
        episode = self._episode
        if episode is None or not episode.active:
            self._episode_room, self._episode_gap = 0, 0.0
            self._episode = EvictionEpisode(
                cause=loss.cause,
                started_at=now,
                first_seq=loss.first_seq,
                last_seq=loss.last_seq,
                batches=loss.batches,
                bytes=loss.bytes,
                oldest_created_at=loss.oldest,
                newest_created_at=loss.newest,
            )
            _log.warning(
                "buffer %s: %s; evicting the oldest batches; lost so far: %s",
                self._path,
                self._why(loss.cause),
                _describe_loss(self._episode),
            )
            return
        self._episode = dataclasses.replace(
            episode,
            cause=episode.cause if episode.cause == loss.cause else "both",
            first_seq=min(episode.first_seq, loss.first_seq),
            last_seq=max(episode.last_seq, loss.last_seq),
            batches=episode.batches + loss.batches,
            bytes=episode.bytes + loss.bytes,
            oldest_created_at=min(episode.oldest_created_at, loss.oldest),
            newest_created_at=max(episode.newest_created_at, loss.newest),
        )

    def _why(self, cause: EvictionCause) -> str:
        full = f"the buffer is full (max_bytes {self._max_bytes})"
        old = f"batches are older than max_age ({self._max_age:g} s)" if self._max_age else ""
        return {"max_bytes": full, "max_age": old, "both": f"{full} and {old}"}[cause]

    def _maybe_end_episode(self, now: float) -> None:
        """End the active episode once the backlog is clearly below the bounds that
        evicted, with a margin so that a backlog that stays at its bound (an outage) is
        one episode, not one per append or per timer tick.

        Bytes: free room for twice the largest entry of the episode, for its largest
        group, and for 1/16 of the data budget (at most half of it); without acks an
        eviction leaves less room than the last entry it took. Age: the oldest entry is
        younger than ``max_age`` by 1/16 of it and by twice the largest gap between the
        stamps the bound took and the next (at most half of ``max_age``); without acks
        the oldest left after an eviction is only that gap younger than the bound.
        """
        episode = self._episode
        if episode is None or not episode.active:
            return
        data = self._budget.data_pages
        room = min(data / 2, max(data * (1 - _LOW_WATER), self._episode_room))
        below_bytes = data - self._used_pages >= room
        below_age = True
        oldest = self._stats.oldest_created_at
        if self._max_age is not None and oldest is not None:
            margin = min(
                self._max_age / 2, max(self._max_age * (1 - _LOW_WATER), 2 * self._episode_gap)
            )
            below_age = oldest >= now - (self._max_age - margin)
        if {"max_bytes": below_bytes, "max_age": below_age, "both": below_bytes and below_age}[
            episode.cause
        ]:
            self._end_episode(now, "the backlog is below its bounds again")

    def _end_episode(self, now: float, reason: str) -> None:
        assert self._episode is not None
        self._episode = dataclasses.replace(self._episode, active=False, ended_at=now)
        _log.warning(
            "buffer %s: eviction stopped (%s); lost in this episode, which began %s: %s",
            self._path,
            reason,
            _format_time(self._episode.started_at),
            _describe_loss(self._episode),
        )
        self._stats = dataclasses.replace(self._stats, eviction=self._episode)

    def _after_write(self, now: float) -> None:
        """Refresh the snapshot's episode (ended, perhaps, by this write)."""
        self._maybe_end_episode(now)
        if self._stats.eviction is not self._episode:
            self._stats = dataclasses.replace(self._stats, eviction=self._episode)

    def _disk_bytes(self) -> int:
        """Bytes of every file of the buffer: three stat calls (the database, -wal and
        -shm); the lock and .seq files are written only by us, their sizes remembered."""
        total = self._side_bytes
        for file in self._files:
            with contextlib.suppress(OSError):
                total += file.stat().st_size
        return total

    def _skip_seqs_a_power_cut_may_have_lost(self, conn: sqlite3.Connection) -> BufferStats:
        """With ``synchronous="normal"`` a power cut can take back commits whose seqs were
        handed out (and maybe published). The fsynced lease in ``.seq`` bounds them: after
        an unclean stop, continue above it. After a clean close it equals ``last_seq``.
        """
        stats = self._stats
        floor = self._read_seq_file()
        if floor <= stats.last_seq:
            return stats
        self._commit(conn, lambda c: _write_meta(c, last_seq=floor))
        _log.info(
            "buffer %s was not closed cleanly (synchronous=normal): seqs continue after %d",
            self._path,
            floor,
        )
        return dataclasses.replace(stats, last_seq=floor)

    # -- opening -----------------------------------------------------------------------

    def _open_database(self) -> tuple[sqlite3.Connection, BufferStats]:
        """Check the file, salvage and quarantine it if it is a damaged buffer, open it."""
        self._finish_interrupted_recovery()
        _remove_database(self._path + _COMPACT_SUFFIX)  # an interrupted compaction
        ours = self._has_seq_file()
        try:
            try:
                _check_existing_file(self._path, ours)
            except (BufferError, _CorruptDatabaseError):
                raise
            except Exception as err:  # whatever else the file makes us trip over
                reason = f"{type(err).__name__}: {err}"
                if not (ours or _pages_look_like_a_buffer(self._path)):
                    raise _not_ours(self._path, reason) from err
                raise _CorruptDatabaseError(reason) from err
            return self._open_checked_file()
        except _CorruptDatabaseError as why:
            self._recover(str(why))
        try:
            return self._open_checked_file()
        except _CorruptDatabaseError as err:
            raise BufferError(f"buffer {self._path} is unusable after recovery: {err}") from err

    def _open_checked_file(self) -> tuple[sqlite3.Connection, BufferStats]:
        try:
            if os.path.lexists(self._path):
                _make_private(self._path + s for s in _SIDE_SUFFIXES)
            else:
                _create_private(self._path)
        except OSError as err:
            raise _environment_error(self._path, err, "create") from err
        conn = _connect(self._path)
        try:
            with _open_errors(self._path, _CorruptDatabaseError):
                _configure(conn, self._synchronous)
                self._budget = _Budget.of(self._max_bytes, _page_size(conn))
                if self._budget.max_payload < 1024:
                    raise BufferError(
                        f"buffer {self._path}: max_bytes {self._max_bytes} is too small for a"
                        f" file of {self._budget.page_size}-byte pages"
                    )
                conn.execute(f"PRAGMA wal_autocheckpoint = {self._budget.checkpoint_frames}")
                conn.execute(f"PRAGMA journal_size_limit = {self._budget.wal_bytes}")
                _reset_wal(conn, self._path)
                if _user_version(conn) == 0:
                    self._create_schema(conn)
                stats = _load_stats(conn)
                count, free = (
                    conn.execute("PRAGMA page_count").fetchone()[0],
                    conn.execute("PRAGMA freelist_count").fetchone()[0],
                )
                self._file_pages, self._used_pages = int(count), int(count) - int(free)
        except OSError as err:
            conn.close()
            raise _environment_error(self._path, err, "open") from err
        except BaseException:
            conn.close()
            raise
        self._wal_dir_synced = False
        return conn, dataclasses.replace(
            stats,
            recovered_from=self.recovered_from,
            salvaged_batches=self.salvaged_batches,
            unreadable_batches=self.unreadable_batches,
        )

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables:
            raise _not_ours(self._path, f"an SQLite database with {tables} schema objects")
        floor = self._read_seq_file()
        conn.execute("BEGIN IMMEDIATE")
        try:
            _write_schema(conn, last_seq=floor)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        _fsync_dir(self._path)  # SQLite syncs the -wal's directory entry, not the database's
        if floor:
            _log.info("buffer %s: new file, seqs continue after %d", self._path, floor)

    def _compact_if_oversized(self) -> None:
        """A database file larger than the data budget (a lowered max_bytes, a file of an
        older version) is rewritten without its free pages: ``VACUUM INTO`` a new file,
        then renamed over the old one. It needs free space for the new file; without it
        the file keeps its size (and only reuses its free pages) until the next open."""
        conn = self._open_connection()
        count = int(conn.execute("PRAGMA page_count").fetchone()[0])
        if count <= self._budget.data_pages:
            return
        target = self._path + _COMPACT_SUFFIX
        before = self._disk_bytes()
        started = time.monotonic()
        try:
            _remove_database(target)
            _create_private(target)
            conn.execute("VACUUM INTO ?", (target,))
            _fsync_file(target)
        except (sqlite3.Error, OSError) as err:
            _remove_database(target)
            _log.warning(
                "buffer %s: its database is larger than max_bytes allows (%d pages, budget %d)"
                " and cannot be compacted now (%s); it only reuses its free pages until the"
                " next open",
                self._path,
                count,
                self._budget.data_pages,
                err,
            )
            return
        self._conn = None
        with self._translate_errors("close"):
            conn.close()  # checkpoints and removes the -wal and -shm: we hold the only connection
        try:
            if os.path.lexists(self._path + "-wal"):
                raise OSError(errno.EBUSY, "another connection keeps the WAL")
            Path(target).replace(self._path)
            _fsync_dir(self._path)
        except OSError as err:
            _remove_database(target)
            _log.warning("buffer %s: cannot compact its database (%s)", self._path, err)
        self._conn, stats = self._open_checked_file()
        self._stats = _with_counters(self._stats, stats)
        _log.warning(
            "buffer %s: compacted from %d to %d bytes on disk to fit max_bytes %d (%.0f ms)",
            self._path,
            before,
            self._disk_bytes(),
            self._max_bytes,
            (time.monotonic() - started) * 1e3,
        )

    def _has_seq_file(self) -> bool:
        """Is ``<path>.seq`` there and one of ours (a decimal number)? The mark that the
        files at the buffer path were created by a gateway."""
        try:
            text = Path(self._seq_path).read_text(encoding="ascii")
            int(text.strip())
        except (OSError, UnicodeDecodeError, ValueError):
            return False
        return True

    # -- damaged files -----------------------------------------------------------------

    def _recover(self, reason: str) -> None:
        """Copy what is readable into a new file, move the damaged one aside, swap them in.

        The new file is complete and synced before anything is moved, so a crash at any
        point leaves either the damaged file in place (the recovery runs again) or the
        damaged file aside and the new one next to it (``_finish_interrupted_recovery``).
        """
        target = self._quarantine_target()
        salvage_path = target + _SALVAGE_SUFFIX
        floor = self._read_seq_file()
        try:
            salvaged, unreadable, floor = _salvage(self._path, salvage_path, floor)
            outcome = f"salvaged {salvaged} batches into a new file, {unreadable} unreadable"
        except Exception as err:  # whatever happens, the gateway starts: with an empty queue
            _remove_database(salvage_path)
            salvaged = unreadable = 0
            outcome = f"salvage failed ({type(err).__name__}: {err}), started an empty file"
        try:
            moved = _move_database(self._path, target)
            if os.path.lexists(salvage_path):
                Path(salvage_path).replace(self._path)
            _fsync_dir(self._path)
        except OSError as err:
            _remove_database(salvage_path)
            raise BufferError(
                f"buffer {self._path} is damaged ({reason}) and could not be moved aside: {err}"
            ) from err
        self.recovered_from = target
        self.salvaged_batches, self.unreadable_batches = salvaged, unreadable
        _log.error(
            "buffer %s is damaged (%s): %s; the damaged file is kept aside as %s;"
            " seqs continue after %d",
            self._path,
            reason,
            outcome,
            ", ".join(moved),
            floor,
        )

    def _finish_interrupted_recovery(self) -> None:
        """Complete (or discard) the work of a recovery that a crash interrupted."""
        here = Path(self._path)
        pattern = glob.escape(here.name) + ".corrupt-*" + _SALVAGE_SUFFIX
        for salvage_path in sorted(str(p) for p in here.parent.glob(pattern)):
            target = salvage_path.removesuffix(_SALVAGE_SUFFIX)
            moving_started = any(os.path.lexists(target + s) for s in _SIDE_SUFFIXES)
            if os.path.lexists(self._path) or not moving_started:
                _remove_database(salvage_path)  # stopped before the quarantine: it runs again
                continue
            try:  # stopped while moving the damaged file aside: the new file is complete
                for suffix in _SIDE_SUFFIXES:
                    if os.path.lexists(self._path + suffix) and not os.path.lexists(
                        target + suffix
                    ):
                        Path(self._path + suffix).replace(target + suffix)
                Path(salvage_path).replace(self._path)
                _fsync_dir(self._path)
            except OSError as err:
                raise BufferError(
                    f"buffer {self._path}: cannot complete an interrupted recovery: {err}"
                ) from err
            self.recovered_from = target
            _log.error(
                "buffer %s was damaged and its recovery interrupted by a crash; completed it:"
                " the salvaged batches are in place, the damaged file is kept aside as %s",
                self._path,
                target,
            )

    def _quarantine_target(self) -> str:
        stamp = int(time.time())
        target = f"{self._path}.corrupt-{stamp}"
        n = 0
        while any(os.path.lexists(target + s) for s in (*_SIDE_SUFFIXES, _SALVAGE_SUFFIX)):
            n += 1
            target = f"{self._path}.corrupt-{stamp}-{n}"
        return target

    # -- the .seq side file ------------------------------------------------------------

    def _read_seq_file(self) -> int:
        try:
            text = Path(self._seq_path).read_text(encoding="ascii")
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as err:
            _log.error(
                "buffer %s: cannot read %s (%s); ignoring it", self._path, self._seq_path, err
            )
            return 0
        try:
            value = int(text.strip())
        except ValueError:
            _log.error(
                "buffer %s: %s holds %r, not a seq; ignoring it",
                self._path,
                self._seq_path,
                text[:40],
            )
            return 0
        return max(value, 0)

    def _write_seq_file(self, value: int) -> None:
        """Atomically replace ``<path>.seq``: write a temp file, fsync, rename, fsync the dir."""
        tmp = self._seq_path + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _PRIVATE)
            try:
                os.fchmod(fd, _PRIVATE)
                data = f"{value}\n".encode("ascii")
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, "short write")
                os.fsync(fd)
            finally:
                os.close(fd)
            Path(tmp).replace(self._seq_path)
            _fsync_dir(self._seq_path)
            self._side_bytes = len(f"{os.getpid()}\n") + len(data)
        except OSError as err:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise _environment_error(self._path, err, f"write {self._seq_path} of") from err
        self._seq_ceiling = value

    # -- transactions ------------------------------------------------------------------

    def _open_connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BufferError(f"buffer {self._path} is closed")
        return self._conn

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the database now (PASSIVE: never waits), so that the next
        write starts the WAL over: before a transaction larger than the headroom."""
        try:
            busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as err:
            raise self._write_error(err) from err
        if (busy or log != done) and not self._warned_checkpoint and log > 0:
            self._warned_checkpoint = True
            _log.warning(
                "buffer %s: another process keeps its WAL open (a reader such as the sqlite3"
                " shell?); the WAL cannot start over and may grow past its share of max_bytes",
                self._path,
            )

    def _commit(self, conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work`` in one write transaction. On failure roll back, resync the counters."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            # A failed COMMIT may still have reached the WAL: believe the disk, not memory.
            with contextlib.suppress(sqlite3.Error, _CorruptDatabaseError):
                self._stats = _with_counters(self._stats, _load_stats(conn))
            raise self._write_error(err) from err
        self._unsynced = True
        return result

    def _write_error(self, err: sqlite3.Error) -> BufferError:
        """A write failed: the machine (full, read-only, locked: one sentence saying so),
        or the file (SQLite's message)."""
        code = getattr(err, "sqlite_errorcode", sqlite3.SQLITE_ERROR)
        if code & 0xFF in _ENVIRONMENT_ERRORS or (
            code & 0xFF == sqlite3.SQLITE_IOERR and code not in _READ_ERRORS
        ):
            return _environment_error(self._path, err, "write to")
        return BufferError(f"buffer {self._path}: write failed: {err}")

    @contextlib.contextmanager
    def _translate_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as err:
            raise BufferError(f"buffer {self._path}: {action} failed: {err}") from err


# -- helpers on a connection -----------------------------------------------------------


def _with_counters(snapshot: BufferStats, stats: BufferStats) -> BufferStats:
    """``snapshot`` with the fields the database holds taken from ``stats`` (the rest,
    per open, kept)."""
    return dataclasses.replace(
        snapshot,
        batches=stats.batches,
        bytes=stats.bytes,
        oldest_created_at=stats.oldest_created_at,
        last_seq=stats.last_seq,
        evicted_batches=stats.evicted_batches,
        evicted_bytes=stats.evicted_bytes,
        evicted_by_age_batches=stats.evicted_by_age_batches,
        evicted_by_age_bytes=stats.evicted_by_age_bytes,
    )


def _members_that_fit(budget: _Budget, sizes: list[int]) -> int:
    """Index of the first member of a group that fits the data budget together with all
    the members after it (0: all of them); the ones before it can never be stored."""
    capacity = budget.data_pages - 5 - budget.data_pages // 200  # schema, interior pages
    total = 0.0
    for index in range(len(sizes) - 1, -1, -1):
        total += budget.row_pages(sizes[index])
        if total > capacity:
            return index + 1 if index + 1 < len(sizes) else len(sizes) - 1
    return 0


def _stored_as_integer(value: float) -> bool:
    """SQLite stores a REAL that has an integral value (within +-2**51) as an integer."""
    return value.is_integer() and abs(value) < 2**51


def _connect(path: str) -> sqlite3.Connection:
    try:
        # isolation_level=None: no implicit transactions; BEGIN/COMMIT are explicit.
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as err:
        raise _environment_error(path, err, "open") from err
    conn.text_factory = _lenient_text
    return conn


def _lenient_text(raw: bytes) -> str:
    """TEXT from a damaged page (a meta key, a quick_check message) must not raise."""
    return raw.decode("utf-8", "replace")


def _configure(conn: sqlite3.Connection, synchronous: Synchronous) -> None:
    conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")  # only takes effect on a new file
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise BufferError(f"SQLite refused WAL mode (got {mode!r}); is the filesystem local?")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.execute("PRAGMA secure_delete = OFF")
    conn.execute("PRAGMA temp_store = MEMORY")  # savepoint journals: no temp files


def _page_size(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA page_size").fetchone()[0])


def _reset_wal(conn: sqlite3.Connection, path: str) -> None:
    """Checkpoint a WAL left by a crash (or by an older version, larger than our reserve)
    and truncate it, without waiting for a reader of another process."""
    try:
        if Path(path + "-wal").stat().st_size == 0:
            return
    except FileNotFoundError:
        return
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.execute("PRAGMA busy_timeout = 5000")


def _write_schema(conn: sqlite3.Connection, **meta: int) -> None:
    """Create the tables of a new file inside the caller's transaction."""
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")
    conn.execute(
        "CREATE TABLE batches (seq INTEGER PRIMARY KEY, created_at REAL NOT NULL,"
        " size INTEGER NOT NULL, payload BLOB NOT NULL)"
    )
    _write_meta(conn, **{key: meta.get(key, 0) for key in _REQUIRED_META + _OPTIONAL_META})
    conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {
        str(name) for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }


def _not_ours(path: str, what: str) -> NotABufferError:
    return NotABufferError(
        f"{path} is not a buffer of this gateway ({what}; no {path}.seq beside it): refusing"
        " to use, move or change it; check [buffer] path, or move it away by hand"
    )


def _check_existing_file(path: str, has_seq: bool) -> None:
    """Raise _CorruptDatabaseError if ``path`` holds a damaged buffer, NotABufferError if it
    holds something that is not recognisably a buffer, NewerFormatError for a buffer of a
    newer format, and a BufferError for a file the machine does not let us read.

    A buffer is recognised by its ``<path>.seq`` side file (``has_seq``); a readable
    SQLite database by its ``batches`` and ``meta`` tables; a damaged SQLite file by
    rows of our shape on its pages. Runs on a read-only connection so that nothing is
    written to (or checkpointed into) a file that is about to be kept aside as
    evidence, or that is not ours.
    """
    header = b""

    def damaged(reason: str) -> Exception:
        if has_seq or (header == _SQLITE_MAGIC and _pages_look_like_a_buffer(path)):
            return _CorruptDatabaseError(reason)
        return _not_ours(path, reason)

    damaged_wal = wal_damage(path + "-wal")
    try:
        with Path(path).open("rb") as f:
            header = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        if os.path.lexists(path + "-wal"):
            # SQLite would replay these frames into a new, empty file: a torso of the old one.
            raise damaged("a -wal file without its database") from None
        return
    except PermissionError as err:
        raise _environment_error(path, err, "read") from err
    except OSError as err:  # EIO: the card fails under this file
        raise damaged(f"cannot read the file: {err}") from err
    if not header:
        if damaged_wal:
            raise damaged(damaged_wal)
        return  # an empty file is an empty database
    if header != _SQLITE_MAGIC:
        raise damaged("not an SQLite database: no SQLite header")
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    with _open_errors(path, damaged):
        conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)
        conn.text_factory = _lenient_text
        try:
            version = _user_version(conn)
            tables = _tables(conn)
            ours = has_seq or tables >= _OUR_TABLES
            what = f"an SQLite database with format version {version}" + (
                f" and tables {', '.join(sorted(tables))}" if tables else ""
            )
            if version > FORMAT_VERSION:
                if not ours:
                    raise _not_ours(path, what)
                raise NewerFormatError(
                    f"buffer {path} has format version {version}, newer than the"
                    f" {FORMAT_VERSION} this gateway understands; run a newer gateway or move"
                    " the file away"
                )
            if version == 0 and tables:
                raise _not_ours(path, what)
            if not ours and tables:
                raise _not_ours(path, what)
            if damaged_wal:
                raise damaged(damaged_wal)
            problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise damaged("PRAGMA quick_check: " + "; ".join(problems[:5]))
            if version == FORMAT_VERSION:
                try:
                    _load_stats(conn)
                except _CorruptDatabaseError as err:
                    raise damaged(str(err)) from err
        finally:
            conn.close()


@contextlib.contextmanager
def _open_errors(path: str, damaged: Callable[[str], Exception]) -> Iterator[None]:
    """While opening: an SQLite error about the file means damage, about the machine not."""
    try:
        yield
    except sqlite3.Error as err:
        code = getattr(err, "sqlite_errorcode", sqlite3.SQLITE_ERROR)
        primary = code & 0xFF
        if primary in _ENVIRONMENT_ERRORS or (
            primary == sqlite3.SQLITE_IOERR and code not in _READ_ERRORS
        ):
            raise _environment_error(path, err, "open") from err
        raise damaged(str(err)) from err


def _load_stats(conn: sqlite3.Connection) -> BufferStats:
    """Read the counters: one pass over the b-tree's leaf pages, never over the payloads."""
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        count, size, max_seq = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0), coalesce(max(seq), 0) FROM batches"
        ).fetchone()
    except sqlite3.OperationalError as err:  # "no such table"
        raise _CorruptDatabaseError(f"schema damaged: {err}") from err
    for key in _OPTIONAL_META:
        meta.setdefault(key, 0)
    damaged = [k for k in _REQUIRED_META + _OPTIONAL_META if not isinstance(meta.get(k), int)]
    if damaged:
        raise _CorruptDatabaseError(f"meta table lacks {', '.join(damaged)}")
    return BufferStats(
        batches=count,
        bytes=size,
        oldest_created_at=_oldest_created_at(conn),
        last_seq=max(meta["last_seq"], max_seq),
        evicted_batches=meta["evicted_batches"],
        evicted_bytes=meta["evicted_bytes"],
        evicted_by_age_batches=meta["evicted_by_age_batches"],
        evicted_by_age_bytes=meta["evicted_by_age_bytes"],
    )


def _oldest_created_at(conn: sqlite3.Connection) -> float | None:
    row = conn.execute("SELECT created_at FROM batches ORDER BY seq LIMIT 1").fetchone()
    return None if row is None else float(row[0])


def _write_meta(conn: sqlite3.Connection, **values: int) -> None:
    # An upsert: files written before a key existed gain it at their first eviction.
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        values.items(),
    )


def _rows_in_seq_order(conn: sqlite3.Connection) -> Iterator[_Row]:
    """(seq, created_at, size) of every entry, oldest first, fetched a few at a time."""
    after = 0
    while rows := conn.execute(
        "SELECT seq, created_at, size FROM batches WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, _EVICT_SCAN),
    ).fetchall():
        yield from rows
        after = rows[-1][0]


def _format_time(when: float | None) -> str:
    if when is None or not math.isfinite(when):
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when)) + " UTC"
    except (OverflowError, OSError, ValueError):
        return f"{when:.0f}"


def _describe_loss(episode: EvictionEpisode) -> str:
    batches = "1 batch" if episode.batches == 1 else f"{episode.batches} batches"
    return (
        f"{batches} ({episode.bytes} bytes), seqs"
        f" {episode.first_seq}-{episode.last_seq}, created"
        f" {_format_time(episode.oldest_created_at)} to {_format_time(episode.newest_created_at)}"
    )


# -- salvage ------------------------------------------------------------------------------


def _salvage(damaged: str, into: str, floor: int) -> tuple[int, int, int]:
    """Copy every readable batch of ``damaged`` into a new buffer file ``into``.

    Returns (batches salvaged, batches known but unreadable, last seq of the new file).
    The new file keeps each batch's seq and created_at, continues seqs above everything
    seen (and above ``floor``) and keeps the eviction counters if they were readable.
    """
    _remove_database(into)
    with DamagedFile(damaged) as source:
        _create_private(into)
        conn = sqlite3.connect(into, isolation_level=None)
        try:
            # No journal: if this fails half-way the file is deleted, never used.
            conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            conn.execute("PRAGMA journal_mode = OFF")
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute("BEGIN")
            saved: set[int] = set()

            def fresh_rows() -> Iterator[tuple[int, float, int, bytes]]:
                for seq, created_at, payload in source.batches():
                    if seq not in saved:  # copies of a row are identical: the first will do
                        saved.add(seq)
                        yield seq, created_at, len(payload), payload

            _write_schema(conn)
            conn.executemany(
                "INSERT INTO batches (seq, created_at, size, payload) VALUES (?, ?, ?, ?)",
                fresh_rows(),
            )
            unreadable = source.unreadable_seqs - saved
            meta = {key: source.meta.get(key, 0) for key in _REQUIRED_META + _OPTIONAL_META}
            meta["last_seq"] = max(
                floor, meta["last_seq"], max(saved, default=0), max(unreadable, default=0)
            )
            _write_meta(conn, **meta)
            conn.execute("COMMIT")
        finally:
            conn.close()
    _fsync_file(into)
    return len(saved), len(unreadable), meta["last_seq"]


def _move_database(path: str, target: str) -> list[str]:
    """Rename the database and its -wal and -shm (in that order) to ``target``."""
    moved = []
    for suffix in _SIDE_SUFFIXES:
        if os.path.lexists(path + suffix):
            Path(path + suffix).replace(target + suffix)
            moved.append(target + suffix)
            with contextlib.suppress(OSError):
                Path(target + suffix).chmod(_PRIVATE)
    return moved


def _remove_database(path: str) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(path + suffix).unlink()


# -- files, the process lock and the machine ----------------------------------------------


def _refuse_anything_but_a_file(path: str) -> None:
    """NotABufferError, touching nothing, if ``path`` exists and is not a regular file."""
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        if os.path.lexists(path):
            raise NotABufferError(
                f"buffer path {path} is a symbolic link to nothing; refusing to use or"
                " follow it (check [buffer] path)"
            ) from None
        return
    except OSError as err:  # a parent is a file, or not searchable
        raise _environment_error(path, err, "open") from err
    if stat.S_ISREG(mode):
        return
    kind = (
        "a directory"
        if stat.S_ISDIR(mode)
        else "a character device"
        if stat.S_ISCHR(mode)
        else "a block device"
        if stat.S_ISBLK(mode)
        else "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "not a regular file"
    )
    raise NotABufferError(
        f"buffer path {path} is {kind}, not a buffer file; refusing to use or move it"
        " (check [buffer] path: it names the database file, e.g. .../buffer.db)"
    )


def _refuse_what_is_not_ours(path: str, has_seq: bool) -> None:
    """NotABufferError, before anything is created next to ``path``, if the file there is
    not recognisably a buffer: no ``<path>.seq`` beside it, and not an SQLite database
    with our tables (read with ``immutable=1``: no lock, no -wal or -shm created). A
    missing or empty file, or an SQLite database without tables, becomes a new buffer.
    The full check runs again under the process lock (``_check_existing_file``)."""
    if has_seq:
        return
    try:
        with Path(path).open("rb") as f:
            header = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        if os.path.lexists(path + "-wal"):
            raise _not_ours(path, f"there is a {path}-wal but no database") from None
        return
    except OSError as err:
        raise _environment_error(path, err, "read") from err
    if not header:
        return
    if header != _SQLITE_MAGIC:
        raise _not_ours(path, "not an SQLite database: no SQLite header")
    uri = Path(path).resolve().as_uri() + "?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            version = _user_version(conn)
            tables = _tables(conn)
        finally:
            conn.close()
    except sqlite3.Error as err:
        if _pages_look_like_a_buffer(path):
            return  # a damaged buffer: salvaged under the process lock
        raise _not_ours(path, f"an SQLite file whose schema cannot be read: {err}") from err
    if tables >= _OUR_TABLES or (version == 0 and not tables):
        return
    described = f" and tables {', '.join(sorted(tables))}" if tables else ""
    raise _not_ours(path, f"an SQLite database with format version {version}{described}")


def _pages_look_like_a_buffer(path: str) -> bool:
    """Is a damaged SQLite file with no ``<path>.seq`` beside it a buffer after all? Its
    pages, read one by one as the salvage does, hold a row with the exact shape of a
    batch (NULL, a number, an integer n, a blob of n bytes) or a ``meta`` row with one
    of our keys."""
    try:
        with DamagedFile(path) as pages:
            for _ in pages.batches():
                return True
            return bool(pages.meta)
    except Exception:  # unreadable in any way: no evidence
        return False


def _make_directory(path: str) -> None:
    """Create the buffer's directory (mode 0700) if it is missing."""
    directory = Path(path).parent
    if directory.is_dir():
        return
    try:
        directory.mkdir(parents=True, mode=0o700)
    except FileExistsError as err:
        raise _environment_error(path, err, "create the directory of") from err
    except OSError as err:
        raise _environment_error(path, err, "create the directory of") from err


def _create_private(path: str) -> None:
    """Create an empty file of mode 0600 (whatever the umask) that SQLite will fill."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _PRIVATE)
    try:
        os.fchmod(fd, _PRIVATE)
    finally:
        os.close(fd)


def _make_private(paths: Iterable[str]) -> None:
    """Files of a buffer left by an older version (mode 0644) are made 0600."""
    for name in paths:
        with contextlib.suppress(OSError):
            if Path(name).stat().st_mode & 0o077:
                Path(name).chmod(_PRIVATE)


def _acquire_process_lock(path: str) -> int:
    lock_path = path + ".lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _PRIVATE)
    except OSError as err:
        raise _environment_error(path, err, f"create the lock file {lock_path} of") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = _read_pid(fd)
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise BufferError(f"cannot lock {lock_path}: {err}") from err
        who = "this process" if holder == str(os.getpid()) else "another process"
        raise BufferInUseError(
            f"buffer {path} is already in use by {who} (pid {holder or 'unknown'})"
        ) from None
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, _PRIVATE)
        os.ftruncate(fd, 0)
        pid = f"{os.getpid()}\n".encode("ascii")
        if os.pwrite(fd, pid, 0) != len(pid):
            raise OSError(errno.ENOSPC, "short write")
    except OSError as err:
        _release_process_lock(fd)
        raise _environment_error(path, err, f"write the lock file {lock_path} of") from err
    return fd


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""


def _release_process_lock(fd: int) -> None:
    # The lock file itself stays: unlinking it would let two processes lock different inodes.
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(Path(path).absolute().parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _no_room(path: str, need: int) -> int | None:
    """Is the disk under ``path`` full, or a file-size limit reached? The errno that says
    so (ENOSPC, EDQUOT, EFBIG) or None. Probes the way a write would: allocating ``need``
    bytes (at least 64 KiB) past the end of the largest buffer file, in an anonymous
    temporary file of the same directory (gone when closed)."""
    directory = str(Path(path).absolute().parent)
    end = 0
    for suffix in _SIDE_SUFFIXES:
        with contextlib.suppress(OSError):
            end = max(end, Path(path + suffix).stat().st_size)
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, _PRIVATE)
    except OSError as err:
        if err.errno in _DISK_FULL_ERRNOS:
            return err.errno
        try:  # a filesystem without O_TMPFILE
            fd, name = tempfile.mkstemp(prefix=".probe-", dir=directory)
            Path(name).unlink()
        except OSError as err2:
            return err2.errno if err2.errno in _DISK_FULL_ERRNOS else None
    try:
        os.posix_fallocate(fd, end, max(need, 65536))
    except OSError as err:
        return err.errno if err.errno in _DISK_FULL_ERRNOS else None
    finally:
        os.close(fd)
    return None


def _first_file_in_the_way(directory: Path) -> Path | None:
    """The nearest ancestor of ``directory`` (or itself) that exists but is no directory."""
    for candidate in (directory, *directory.parents):
        if os.path.lexists(candidate):
            return None if candidate.is_dir() else candidate
    return None


def _environment_error(path: str, err: BaseException, doing: str) -> BufferError:
    """One sentence for an error about the machine, not the file: what could not be done
    with buffer ``path`` and why, in words a technician can act on."""
    code = err.errno if isinstance(err, OSError) else None
    sqlite_code = getattr(err, "sqlite_errorcode", None)
    if sqlite_code is not None and sqlite_code & 0xFF == sqlite3.SQLITE_FULL:
        code = errno.ENOSPC
    elif sqlite_code is not None or code in (errno.EIO, None):
        code = _no_room(path, 0) or code  # SQLite reports EFBIG, a full -shm as I/O errors
    cls = DiskFullError if code in _DISK_FULL_ERRNOS else BufferError
    return cls(f"cannot {doing} buffer {path}: {_reason(path, code, sqlite_code, err)}")


def _reason(path: str, code: int | None, sqlite_code: int | None, err: BaseException) -> str:
    directory = Path(path).absolute().parent
    if code == errno.ENOSPC:
        return f"the disk holding {directory} is full (no space left on the device)"
    if code == errno.EDQUOT:
        return f"the disk quota of this user on {directory} is used up"
    if code == errno.EFBIG:
        return (
            "a file would grow past the largest size allowed (a file-size limit of the"
            " process or the filesystem)"
        )
    if (blocker := _first_file_in_the_way(directory)) is not None:
        return f"{blocker} is a file, not a directory"
    if (why := _why_not_writable(directory, code)) is not None:
        return why
    if os.path.lexists(path) and not os.access(path, os.W_OK):
        return f"the file {path} is not writable by {_user()}"
    if code in (errno.EACCES, errno.EPERM) or (
        sqlite_code is not None
        and sqlite_code & 0xFF in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM)
    ):
        return f"permission denied ({err})"
    return str(err)


def _why_not_writable(directory: Path, code: int | None) -> str | None:
    """Why files cannot be created in ``directory`` (or it cannot be created), or None."""
    existing = next((d for d in (directory, *directory.parents) if d.is_dir()), directory)
    if code == errno.EROFS or _read_only_filesystem(existing):
        why = f"the directory {existing} is on a read-only filesystem"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"the directory {existing} is not writable by {_user()}"
    else:
        return None
    return why if existing == directory else f"{directory} cannot be created: {why}"


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _read_only_filesystem(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False
