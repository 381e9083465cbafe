"""A durable FIFO of opaque batches on SQLite (WAL), bounded by bytes and optionally by age.

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

Side files: ``<path>.lock`` (``flock``-ed by the owning process, holds its pid),
``<path>.seq`` (an upper bound of every seq ever handed out, in decimal) and, after
damage, ``<path>.corrupt-<time>`` (the damaged file, kept as evidence).

Invariants, true after every committed transaction and so after any crash:

1. ``max(meta.last_seq, max(batches.seq))`` is the last seq handed out. Appends do not
   write ``meta`` (one page less per append); every transaction that deletes entries
   writes ``meta.last_seq``. A seq is never handed out twice.
2. ``sum(size) <= max_bytes`` as of the last append; ``size == length(payload)``.
3. The evicted counters never decrease; eviction removes the lowest seqs first (by
   age: the longest prefix older than the bound; by bytes: the shortest prefix that
   makes room).
4. ``<path>.seq`` >= every seq ever returned by ``append`` (a lease, renewed ahead of
   use), so a quarantined database, or commits lost by ``synchronous="normal"``, do
   not make seqs restart.

The full contract (durability window, eviction policy, corruption recovery,
threading) is in ``buffer/DESIGN.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import glob
import logging
import math
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self, TypeVar

from buffer.salvage import DamagedFile, wal_damage

__all__ = [
    "BufferError",
    "BufferStats",
    "DurableQueue",
    "Entry",
    "PayloadTooLargeError",
]

FORMAT_VERSION: Final = 1
"""The on-disk format this module writes; files with a higher version are refused."""

_SEQ_LEASE: Final = 1_000_000
"""How far ahead of the last seq the ``.seq`` side file is written while the queue is open."""

_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_ACK_CHUNK: Final = 500  # bound parameters per statement; SQLite < 3.32 allows 999
_EVICT_SCAN: Final = 256  # rows fetched per step while choosing what to evict
_REQUIRED_META: Final = ("last_seq", "evicted_batches", "evicted_bytes")
_OPTIONAL_META: Final = ("evicted_by_age_batches", "evicted_by_age_bytes")  # added later: 0
_MAX_INT64: Final = 2**63 - 1
_SALVAGE_SUFFIX: Final = ".salvage"
_SIDE_SUFFIXES: Final = ("", "-wal", "-shm")
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

Synchronous = Literal["full", "normal"]

_log = logging.getLogger("buffer")
_T = TypeVar("_T")


class BufferError(Exception):  # shadows the builtin of that name inside this package only
    """Base of this package's errors: the buffer cannot be opened or written."""


class ForeignFileError(BufferError):
    """The file is sound but not ours to use: a newer format, or not a buffer at all.
    It is left untouched; the caller decides whether to move it aside."""


class BufferInUseError(BufferError):
    """Another process (or this one) has the buffer open: two writers would duplicate
    and reorder data, so this is never worked around."""


class PayloadTooLargeError(BufferError):
    """A single payload is larger than the queue's whole byte bound; nothing was stored."""

    def __init__(self, size: int, max_bytes: int) -> None:
        super().__init__(
            f"payload of {size} bytes is larger than the buffer's max_bytes {max_bytes}"
        )
        self.size = size
        self.max_bytes = max_bytes

    def __reduce__(self) -> tuple[type[PayloadTooLargeError], tuple[int, int]]:
        return type(self), (self.size, self.max_bytes)


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored batch. ``created_at`` is the queue's clock (``time.time()``) at append."""

    seq: int
    created_at: float
    payload: bytes


@dataclass(frozen=True, slots=True)
class BufferStats:
    """A snapshot of the queue; ``oldest_created_at`` belongs to the lowest stored seq.

    ``evicted_*`` count both bounds and are persisted; ``evicted_by_age_*`` are the
    part of them the age bound dropped. The last three fields describe a damaged file
    found at this open (see ``DurableQueue.recovered_from``); they are not persisted.
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


class _CorruptDatabaseError(Exception):
    """Internal: the file at the buffer path cannot be used as a buffer and is moved aside."""


class DurableQueue:
    """Store-and-forward queue: ``append`` durably, ``read`` in seq order, ``ack`` to delete.

    Every method commits before it returns. Calls may come from any thread but are
    serialised by an internal lock; the gateway makes them all from one worker thread.
    ``stats()`` never waits for that lock or touches the disk.

    ``max_age`` (seconds) adds an age bound to the byte bound; ``synchronous="normal"``
    trades the last commits before a power cut for fewer flushes (see DESIGN.md,
    "Durability window"); ``clock`` stamps ``created_at`` and judges age (tests inject
    one).
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
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
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
        self._seq_path = self._path + ".seq"
        self._max_bytes = max_bytes
        self._max_age = max_age
        self._synchronous: Synchronous = synchronous
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._seq_ceiling = 0
        self.recovered_from = None
        self.salvaged_batches = self.unreadable_batches = 0

        try:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BufferError(f"cannot create the directory of buffer {self._path}: {err}") from err
        self._lock_fd = _acquire_process_lock(self._path)
        try:
            conn, self._stats = self._open_database()
            try:
                if synchronous == "normal":
                    self._stats = self._skip_seqs_a_power_cut_may_have_lost(conn)
                self._stats = self._evict_to_bounds(conn)
                self._write_seq_file(self._stats.last_seq + _SEQ_LEASE)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            _release_process_lock(self._lock_fd)
            raise
        self._conn = conn

    # -- public API ------------------------------------------------------------------

    def append(self, make_payload: Callable[[int], bytes]) -> int:
        """Store ``make_payload(seq)`` under the next seq and commit; return that seq.

        When this returns, the entry survives SIGKILL, and power loss too with
        ``synchronous="full"``. If the queue would go over ``max_bytes``, or its oldest
        entries are older than ``max_age``, the oldest entries are evicted in the same
        transaction. If ``make_payload`` raises, or the payload alone is larger than
        ``max_bytes`` (``PayloadTooLargeError``), nothing changes and the seq is not
        consumed.
        """
        return self.append_many([make_payload])[0]

    def append_many(self, make_payloads: Sequence[Callable[[int], bytes]]) -> list[int]:
        """Store several payloads under consecutive seqs in ONE transaction (one fsync).

        The same as calling ``append`` for each, in order, except that it is all or
        nothing: if any ``make_payload`` raises or returns a payload that is not bytes
        or larger than ``max_bytes``, nothing is stored and no seq is consumed. A group
        larger than ``max_bytes`` evicts its own first members, as single appends
        would (they are counted as evicted; their seqs are returned all the same).
        """
        with self._lock:
            conn = self._open_connection()
            before = self._stats
            first = before.last_seq + 1
            payloads = [
                self._checked(make(seq)) for seq, make in enumerate(make_payloads, start=first)
            ]
            if not payloads:
                return []
            last = first + len(payloads) - 1
            if last > self._seq_ceiling:
                self._write_seq_file(last + _SEQ_LEASE)
            created_at = self._clock()
            added = sum(map(len, payloads))

            def work(conn: sqlite3.Connection) -> BufferStats:
                conn.executemany(
                    "INSERT INTO batches (seq, created_at, size, payload) VALUES (?, ?, ?, ?)",
                    [(seq, created_at, len(p), p) for seq, p in enumerate(payloads, start=first)],
                )
                grown = dataclasses.replace(
                    before,
                    batches=before.batches + len(payloads),
                    bytes=before.bytes + added,
                    oldest_created_at=before.oldest_created_at if before.batches else created_at,
                    last_seq=last,
                )
                return _evict(conn, grown, self._max_bytes, self._age_cutoff(created_at))

            self._stats = self._commit(conn, work)
            return list(range(first, last + 1))

    def evict_older_than(self, now: float | None = None) -> int:
        """Apply the age bound now: evict the entries created before ``now - max_age``.

        Oldest first, in one transaction, stopping at the first entry that is young
        enough (eviction always removes a prefix). ``now`` defaults to the clock.
        Returns how many entries were evicted; 0 without a ``max_age``.
        """
        with self._lock:
            conn = self._open_connection()
            before = self._stats
            cutoff = self._age_cutoff(self._clock() if now is None else now)
            if not _has_expired(before, cutoff):
                return 0
            after = self._commit(conn, lambda c: _evict(c, before, self._max_bytes, cutoff))
            self._stats = after
            return before.batches - after.batches

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
        """Delete these entries in one transaction; return how many were deleted.

        Idempotent: seqs already acked, evicted or never handed out are ignored.
        """
        with self._lock:
            conn = self._open_connection()
            before = self._stats
            wanted = sorted(
                {s for s in map(operator.index, seqs) if 0 < s <= before.last_seq},
            )
            if not wanted:
                return 0

            def work(conn: sqlite3.Connection) -> BufferStats:
                count = freed = 0
                for start in range(0, len(wanted), _ACK_CHUNK):
                    chunk = wanted[start : start + _ACK_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    found, size = conn.execute(
                        "SELECT count(*), coalesce(sum(size), 0) FROM batches"
                        f" WHERE seq IN ({marks})",
                        chunk,
                    ).fetchone()
                    if found:
                        conn.execute(f"DELETE FROM batches WHERE seq IN ({marks})", chunk)
                        count += found
                        freed += size
                if not count:
                    return before
                _write_meta(conn, last_seq=before.last_seq)
                return dataclasses.replace(
                    before,
                    batches=before.batches - count,
                    bytes=before.bytes - freed,
                    oldest_created_at=_oldest_created_at(conn),
                )

            after = self._commit(conn, work)
            self._stats = after
            return before.batches - after.batches

    def sync(self) -> None:
        """Make every commit so far survive a power cut. A no-op with ``synchronous="full"``.

        With ``"normal"`` it fsyncs the WAL: calling it every few seconds bounds what a
        power cut can take back by time, at one flush per call instead of one per commit.
        """
        with self._lock:
            self._open_connection()
            if self._synchronous == "full":
                return
            try:
                fd = os.open(self._path + "-wal", os.O_RDONLY)
            except FileNotFoundError:
                return  # checkpointed and removed: everything is in the (synced) database
            except OSError as err:
                raise BufferError(f"buffer {self._path}: sync failed: {err}") from err
            try:
                os.fsync(fd)
            except OSError as err:
                raise BufferError(f"buffer {self._path}: sync failed: {err}") from err
            finally:
                os.close(fd)

    def stats(self) -> BufferStats:
        """Counters kept in memory: no I/O, no lock; safe to call from any thread."""
        return self._stats

    def close(self) -> None:
        """Checkpoint, close the database and release the process lock. Idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                try:
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

    # -- bounds ------------------------------------------------------------------------

    def _checked(self, payload: bytes) -> bytes:
        if not isinstance(payload, bytes):
            raise TypeError(f"make_payload must return bytes, not {type(payload).__name__}")
        if len(payload) > self._max_bytes:
            raise PayloadTooLargeError(len(payload), self._max_bytes)
        return payload

    def _age_cutoff(self, now: float) -> float | None:
        return None if self._max_age is None else now - self._max_age

    def _evict_to_bounds(self, conn: sqlite3.Connection) -> BufferStats:
        """At open: a lowered max_bytes or an expired backlog is evicted at once."""
        before = self._stats
        cutoff = self._age_cutoff(self._clock())
        if not _over_bounds(before, self._max_bytes, cutoff):
            return before
        after = self._commit(conn, lambda c: _evict(c, before, self._max_bytes, cutoff))
        if after.evicted_batches != before.evicted_batches:
            _log.warning(
                "buffer %s holds %d bytes (max_bytes %d), the oldest from %s (max_age %s s):"
                " evicted the oldest %d batches (%d bytes), %d of them for their age",
                self._path,
                before.bytes,
                self._max_bytes,
                _format_time(before.oldest_created_at),
                self._max_age,
                after.evicted_batches - before.evicted_batches,
                after.evicted_bytes - before.evicted_bytes,
                after.evicted_by_age_batches - before.evicted_by_age_batches,
            )
        return after

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
        """Check the file, salvage and quarantine it if it is damaged, open it read-write."""
        self._finish_interrupted_recovery()
        try:
            try:
                _check_existing_file(self._path)
            except (BufferError, _CorruptDatabaseError):
                raise
            except Exception as err:  # whatever else the file makes us trip over
                raise _CorruptDatabaseError(f"{type(err).__name__}: {err}") from err
            return self._open_checked_file()
        except _CorruptDatabaseError as why:
            self._recover(str(why))
        try:
            return self._open_checked_file()
        except _CorruptDatabaseError as err:
            raise BufferError(f"buffer {self._path} is unusable after recovery: {err}") from err

    def _open_checked_file(self) -> tuple[sqlite3.Connection, BufferStats]:
        conn = _connect(self._path)
        try:
            with _open_errors(self._path):
                _configure(conn, self._synchronous)
                if _user_version(conn) == 0:
                    self._create_schema(conn)
                stats = _load_stats(conn)
        except OSError as err:
            conn.close()
            raise BufferError(f"cannot open buffer {self._path}: {err}") from err
        except BaseException:
            conn.close()
            raise
        return conn, dataclasses.replace(
            stats,
            recovered_from=self.recovered_from,
            salvaged_batches=self.salvaged_batches,
            unreadable_batches=self.unreadable_batches,
        )

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables:
            raise ForeignFileError(
                f"{self._path} is an SQLite database but not a buffer (user_version 0, "
                f"{tables} schema objects); refusing to use or move it"
            )
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
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, f"{value}\n".encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            Path(tmp).replace(self._seq_path)
            _fsync_dir(self._seq_path)
        except OSError as err:
            raise BufferError(f"buffer {self._path}: cannot write {self._seq_path}: {err}") from err
        self._seq_ceiling = value

    # -- transactions ------------------------------------------------------------------

    def _open_connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BufferError(f"buffer {self._path} is closed")
        return self._conn

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
                self._stats = dataclasses.replace(
                    _load_stats(conn),
                    recovered_from=self.recovered_from,
                    salvaged_batches=self.salvaged_batches,
                    unreadable_batches=self.unreadable_batches,
                )
            raise BufferError(f"buffer {self._path}: write failed: {err}") from err
        return result

    @contextlib.contextmanager
    def _translate_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as err:
            raise BufferError(f"buffer {self._path}: {action} failed: {err}") from err


# -- helpers on a connection -----------------------------------------------------------


def _connect(path: str) -> sqlite3.Connection:
    try:
        # isolation_level=None: no implicit transactions; BEGIN/COMMIT are explicit.
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as err:
        raise BufferError(f"cannot open buffer {path}: {err}") from err
    conn.text_factory = _lenient_text
    return conn


def _lenient_text(raw: bytes) -> str:
    """TEXT from a damaged page (a meta key, a quick_check message) must not raise."""
    return raw.decode("utf-8", "replace")


def _configure(conn: sqlite3.Connection, synchronous: Synchronous) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise BufferError(f"SQLite refused WAL mode (got {mode!r}); is the filesystem local?")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.execute("PRAGMA secure_delete = OFF")


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


def _check_existing_file(path: str) -> None:
    """Raise _CorruptDatabaseError if ``path`` holds something other than a sound database.

    Runs on a read-only connection so that nothing is written to (or checkpointed
    into) a file that is about to be kept aside as evidence. Raises BufferError for a
    file that is sound but not ours to use (a newer format, another application's
    database) or that the machine does not let us read.
    """
    damaged_wal = wal_damage(path + "-wal")
    if damaged_wal:
        raise _CorruptDatabaseError(damaged_wal)
    try:
        with Path(path).open("rb") as f:
            header = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        if os.path.lexists(path + "-wal"):
            # SQLite would replay these frames into a new, empty file: a torso of the old one.
            raise _CorruptDatabaseError("a -wal file without its database") from None
        return
    except PermissionError as err:
        raise BufferError(f"cannot open buffer {path}: {err}") from err
    except OSError as err:  # EIO: the card fails under this file
        raise _CorruptDatabaseError(f"cannot read the file: {err}") from err
    if not header:
        return  # an empty file is an empty database
    if header != _SQLITE_MAGIC:
        raise _CorruptDatabaseError("file is not a database: no SQLite header")
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    with _open_errors(path):
        conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)
        conn.text_factory = _lenient_text
        try:
            version = _user_version(conn)
            if version > FORMAT_VERSION:
                raise ForeignFileError(
                    f"buffer {path} has format version {version}, newer than the"
                    f" {FORMAT_VERSION} this gateway understands; run a newer gateway or move"
                    " the file away"
                )
            problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise _CorruptDatabaseError("PRAGMA quick_check: " + "; ".join(problems[:5]))
            if version == FORMAT_VERSION:
                _load_stats(conn)
        finally:
            conn.close()


@contextlib.contextmanager
def _open_errors(path: str) -> Iterator[None]:
    """While opening: an SQLite error about the file means damage, about the machine not."""
    try:
        yield
    except sqlite3.Error as err:
        code = getattr(err, "sqlite_errorcode", sqlite3.SQLITE_ERROR) & 0xFF
        if code in _ENVIRONMENT_ERRORS:
            raise BufferError(f"cannot open buffer {path}: {err}") from err
        raise _CorruptDatabaseError(str(err)) from err


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


def _has_expired(stats: BufferStats, cutoff: float | None) -> bool:
    return (
        cutoff is not None
        and stats.oldest_created_at is not None
        and stats.oldest_created_at < cutoff
    )


def _over_bounds(stats: BufferStats, max_bytes: int, cutoff: float | None) -> bool:
    return stats.bytes > max_bytes or _has_expired(stats, cutoff)


def _evict(
    conn: sqlite3.Connection, stats: BufferStats, max_bytes: int, cutoff: float | None
) -> BufferStats:
    """Delete the lowest seqs: those created before ``cutoff``, then more until the queue
    holds at most ``max_bytes``. Call inside a transaction.

    Both bounds remove a prefix: the age bound stops at the first entry young enough
    (``created_at`` follows the wall clock, which can step back), the byte bound at the
    first point where the rest fits. The age check costs nothing unless the oldest
    entry (known in memory) has expired.
    """
    if not _over_bounds(stats, max_bytes, cutoff):
        return stats
    need = stats.bytes - max_bytes
    expiring = _has_expired(stats, cutoff)
    last = count = freed = aged = aged_bytes = 0
    for seq, created_at, size in _rows_in_seq_order(conn):
        if expiring and cutoff is not None and created_at < cutoff:
            aged += 1
            aged_bytes += size
        elif freed >= need:
            break
        else:
            expiring = False
        last, count, freed = seq, count + 1, freed + size
    if not count:
        return stats  # nothing to evict (counters and table disagree: trust the table)
    conn.execute("DELETE FROM batches WHERE seq <= ?", (last,))
    after = dataclasses.replace(
        stats,
        batches=stats.batches - count,
        bytes=stats.bytes - freed,
        oldest_created_at=_oldest_created_at(conn),
        evicted_batches=stats.evicted_batches + count,
        evicted_bytes=stats.evicted_bytes + freed,
        evicted_by_age_batches=stats.evicted_by_age_batches + aged,
        evicted_by_age_bytes=stats.evicted_by_age_bytes + aged_bytes,
    )
    _write_meta(
        conn,
        last_seq=after.last_seq,
        evicted_batches=after.evicted_batches,
        evicted_bytes=after.evicted_bytes,
        evicted_by_age_batches=after.evicted_by_age_batches,
        evicted_by_age_bytes=after.evicted_by_age_bytes,
    )
    return after


def _rows_in_seq_order(conn: sqlite3.Connection) -> Iterator[tuple[int, float, int]]:
    """(seq, created_at, size) of every entry, oldest first, fetched a few at a time."""
    after = 0
    while rows := conn.execute(
        "SELECT seq, created_at, size FROM batches WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, _EVICT_SCAN),
    ).fetchall():
        yield from rows
        after = rows[-1][0]


def _format_time(when: float | None) -> str:
    if when is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when)) + " UTC"


# -- salvage ------------------------------------------------------------------------------


def _salvage(damaged: str, into: str, floor: int) -> tuple[int, int, int]:
    """Copy every readable batch of ``damaged`` into a new buffer file ``into``.

    Returns (batches salvaged, batches known but unreadable, last seq of the new file).
    The new file keeps each batch's seq and created_at, continues seqs above everything
    seen (and above ``floor``) and keeps the eviction counters if they were readable.
    """
    _remove_database(into)
    with DamagedFile(damaged) as source:
        conn = sqlite3.connect(into, isolation_level=None)
        try:
            # No journal: if this fails half-way the file is deleted, never used.
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
    fd = os.open(into, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(saved), len(unreadable), meta["last_seq"]


def _move_database(path: str, target: str) -> list[str]:
    """Rename the database and its -wal and -shm (in that order) to ``target``."""
    moved = []
    for suffix in _SIDE_SUFFIXES:
        if os.path.lexists(path + suffix):
            Path(path + suffix).replace(target + suffix)
            moved.append(target + suffix)
    return moved


def _remove_database(path: str) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(path + suffix).unlink()


# -- process lock and files --------------------------------------------------------------


def _acquire_process_lock(path: str) -> int:
    lock_path = path + ".lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise BufferError(f"cannot create lock file {lock_path}: {err}") from err
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
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
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


def _fsync_dir(path: str) -> None:
    fd = os.open(Path(path).absolute().parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
