"""A durable, byte-bounded FIFO of opaque batches on SQLite (WAL, ``synchronous=FULL``).

On-disk format, version 1 (kept in ``PRAGMA user_version``)::

    meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL)        -- WITHOUT ROWID
        'last_seq'         high-water mark of deleted entries (see invariant 1)
        'evicted_batches'  entries dropped by the byte bound, ever
        'evicted_bytes'    their payload bytes, ever
    batches(seq INTEGER PRIMARY KEY,     -- the rowid: lookups and range scans by seq
            created_at REAL NOT NULL,     -- time.time() at append
            size INTEGER NOT NULL,        -- length(payload); before the blob, so eviction
            payload BLOB NOT NULL)        --   and the open-time count never read overflow pages

Side files: ``<path>.lock`` (``flock``-ed by the owning process, holds its pid) and
``<path>.seq`` (an upper bound of every seq ever handed out, in decimal).

Invariants, true after every committed transaction and so after any crash:

1. ``max(meta.last_seq, max(batches.seq))`` is the last seq handed out. Appends do not
   write ``meta`` (one page less per append); every transaction that deletes entries
   writes ``meta.last_seq``. A seq is never handed out twice.
2. ``sum(size) <= max_bytes`` as of the last append; ``size == length(payload)``.
3. The evicted counters never decrease; eviction removes the lowest seqs first.
4. ``<path>.seq`` >= every seq ever returned by ``append`` (a lease, renewed ahead of
   use), so a quarantined database does not make seqs restart.

The full contract (durability window, eviction policy, corruption handling,
threading) is in ``buffer/DESIGN.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

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
_META_KEYS: Final = ("last_seq", "evicted_batches", "evicted_bytes")
_MAX_INT64: Final = 2**63 - 1

_log = logging.getLogger("buffer")
_T = TypeVar("_T")


class BufferError(Exception):  # shadows the builtin of that name inside this package only
    """Base of this package's errors: the buffer cannot be opened or written."""


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
    """One stored batch. ``created_at`` is ``time.time()`` at append (wall clock)."""

    seq: int
    created_at: float
    payload: bytes


@dataclass(frozen=True, slots=True)
class BufferStats:
    """A snapshot of the queue; ``oldest_created_at`` belongs to the lowest stored seq."""

    batches: int
    bytes: int
    oldest_created_at: float | None
    last_seq: int
    evicted_batches: int
    evicted_bytes: int


class _CorruptDatabaseError(Exception):
    """Internal: the file at the buffer path cannot be used as a buffer and is moved aside."""


class DurableQueue:
    """Store-and-forward queue: ``append`` durably, ``read`` in seq order, ``ack`` to delete.

    Every method commits before it returns. Calls may come from any thread but are
    serialised by an internal lock; the gateway makes them all from one worker thread.
    ``stats()`` never waits for that lock or touches the disk.
    """

    recovered_from: str | None
    """Where a corrupt file found at open was moved to, or None."""

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
        self._path = os.fspath(path)
        self._seq_path = self._path + ".seq"
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._seq_ceiling = 0
        self.recovered_from = None

        try:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BufferError(f"cannot create the directory of buffer {self._path}: {err}") from err
        self._lock_fd = _acquire_process_lock(self._path)
        try:
            conn = self._open_database()
            try:
                with self._translate_errors("open"):
                    self._stats = _load_stats(conn)
                self._stats = self._evict_to_bound(conn)
                self._write_seq_file(self._stats.last_seq + _SEQ_LEASE)
            except BaseException:
                conn.close()
                raise
        except _CorruptDatabaseError as err:  # damaged between the check and the open
            _release_process_lock(self._lock_fd)
            raise BufferError(f"buffer {self._path} is unusable: {err}") from err
        except BaseException:
            _release_process_lock(self._lock_fd)
            raise
        self._conn = conn

    # -- public API ------------------------------------------------------------------

    def append(self, make_payload: Callable[[int], bytes]) -> int:
        """Store ``make_payload(seq)`` under the next seq and commit; return that seq.

        When this returns, the entry survives SIGKILL and power loss. If the queue
        would go over ``max_bytes``, the oldest entries are evicted in the same
        transaction. If ``make_payload`` raises, or the payload alone is larger than
        ``max_bytes`` (``PayloadTooLargeError``), nothing changes and the seq is not
        consumed.
        """
        with self._lock:
            conn = self._open_connection()
            before = self._stats
            seq = before.last_seq + 1
            payload = make_payload(seq)
            if not isinstance(payload, bytes):
                raise TypeError(f"make_payload must return bytes, not {type(payload).__name__}")
            size = len(payload)
            if size > self._max_bytes:
                raise PayloadTooLargeError(size, self._max_bytes)
            if seq > self._seq_ceiling:
                self._write_seq_file(seq + _SEQ_LEASE)
            created_at = time.time()

            def work(conn: sqlite3.Connection) -> BufferStats:
                stats = _evict(conn, before, incoming=size, max_bytes=self._max_bytes)
                conn.execute(
                    "INSERT INTO batches (seq, created_at, size, payload) VALUES (?, ?, ?, ?)",
                    (seq, created_at, size, payload),
                )
                oldest = created_at if stats.batches == 0 else stats.oldest_created_at
                return dataclasses.replace(
                    stats,
                    batches=stats.batches + 1,
                    bytes=stats.bytes + size,
                    oldest_created_at=oldest,
                    last_seq=seq,
                )

            self._stats = self._commit(conn, work)
            return seq

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

    # -- opening -----------------------------------------------------------------------

    def _open_database(self) -> sqlite3.Connection:
        """Check the file, quarantine it if it is damaged, and open it read-write."""
        try:
            _check_existing_file(self._path)
        except _CorruptDatabaseError as why:
            try:
                self._quarantine(str(why))
            except OSError as err:
                raise BufferError(
                    f"buffer {self._path} is unusable ({why}) and could not be moved aside: {err}"
                ) from err
        conn = _connect(self._path)
        try:
            with self._translate_errors("open"):
                _configure(conn)
                if _user_version(conn) == 0:
                    self._create_schema(conn)
        except OSError as err:
            conn.close()
            raise BufferError(f"cannot open buffer {self._path}: {err}") from err
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables:
            raise BufferError(
                f"{self._path} is an SQLite database but not a buffer (user_version 0, "
                f"{tables} schema objects); refusing to use or move it"
            )
        floor = self._read_seq_file()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID"
            )
            conn.execute(
                "CREATE TABLE batches (seq INTEGER PRIMARY KEY, created_at REAL NOT NULL,"
                " size INTEGER NOT NULL, payload BLOB NOT NULL)"
            )
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("last_seq", floor), ("evicted_batches", 0), ("evicted_bytes", 0)],
            )
            conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        _fsync_dir(self._path)  # SQLite syncs the -wal's directory entry, not the database's
        if floor:
            _log.info("buffer %s: new file, seqs continue after %d", self._path, floor)

    def _quarantine(self, reason: str) -> None:
        stamp = int(time.time())
        target = f"{self._path}.corrupt-{stamp}"
        n = 0
        while any(os.path.lexists(target + s) for s in ("", "-wal", "-shm")):
            n += 1
            target = f"{self._path}.corrupt-{stamp}-{n}"
        moved = []
        for suffix in ("", "-wal", "-shm"):
            if os.path.lexists(self._path + suffix):
                Path(self._path + suffix).replace(target + suffix)
                moved.append(target + suffix)
        _fsync_dir(self._path)
        self.recovered_from = target
        _log.error(
            "buffer %s is unusable (%s); kept it aside as %s and started an empty buffer,"
            " seqs continue after %d",
            self._path,
            reason,
            ", ".join(moved),
            self._read_seq_file(),
        )

    def _evict_to_bound(self, conn: sqlite3.Connection) -> BufferStats:
        """At open: a lowered max_bytes applies at once, not only at the next append."""
        before = self._stats
        if before.bytes <= self._max_bytes:
            return before
        after = self._commit(conn, lambda c: _evict(c, before, 0, self._max_bytes))
        _log.warning(
            "buffer %s holds %d bytes, more than max_bytes %d: evicted the oldest %d batches"
            " (%d bytes)",
            self._path,
            before.bytes,
            self._max_bytes,
            after.evicted_batches - before.evicted_batches,
            after.evicted_bytes - before.evicted_bytes,
        )
        return after

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
                self._stats = _load_stats(conn)
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
        return sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as err:
        raise BufferError(f"cannot open buffer {path}: {err}") from err


def _configure(conn: sqlite3.Connection) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise BufferError(f"SQLite refused WAL mode (got {mode!r}); is the filesystem local?")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA secure_delete = OFF")


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _check_existing_file(path: str) -> None:
    """Raise _CorruptDatabaseError if ``path`` holds something other than a sound database.

    Runs on a read-only connection so that nothing is written to (or checkpointed
    into) a file that is about to be kept aside as evidence.
    """
    try:
        with Path(path).open("rb") as f:
            header = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        if os.path.lexists(path + "-wal"):
            # SQLite would replay these frames into a new, empty file: a torso of the old one.
            raise _CorruptDatabaseError("a -wal file without its database") from None
        return
    except OSError as err:
        raise BufferError(f"cannot open buffer {path}: {err}") from err
    if not header:
        return  # an empty file is an empty database
    if header != _SQLITE_MAGIC:
        raise _CorruptDatabaseError("file is not a database: no SQLite header")
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)
    except sqlite3.Error as err:
        raise BufferError(f"cannot open buffer {path}: {err}") from err
    try:
        version = _user_version(conn)
        if version > FORMAT_VERSION:
            raise BufferError(
                f"buffer {path} has format version {version}, newer than the {FORMAT_VERSION}"
                " this gateway understands; run a newer gateway or move the file away"
            )
        problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise _CorruptDatabaseError("PRAGMA quick_check: " + "; ".join(problems[:5]))
        if version == FORMAT_VERSION:
            _load_stats(conn)
    except sqlite3.Error as err:
        if _is_corruption(err):
            raise _CorruptDatabaseError(str(err)) from err
        raise BufferError(f"cannot open buffer {path}: {err}") from err
    finally:
        conn.close()


def _is_corruption(err: sqlite3.Error) -> bool:
    code = getattr(err, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _load_stats(conn: sqlite3.Connection) -> BufferStats:
    """Read the counters: one pass over the b-tree's leaf pages, never over the payloads."""
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        count, size, max_seq = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0), coalesce(max(seq), 0) FROM batches"
        ).fetchone()
    except sqlite3.OperationalError as err:  # "no such table"
        raise _CorruptDatabaseError(f"schema damaged: {err}") from err
    missing = [k for k in _META_KEYS if not isinstance(meta.get(k), int)]
    if missing:
        raise _CorruptDatabaseError(f"meta table lacks {', '.join(missing)}")
    return BufferStats(
        batches=count,
        bytes=size,
        oldest_created_at=_oldest_created_at(conn),
        last_seq=max(meta["last_seq"], max_seq),
        evicted_batches=meta["evicted_batches"],
        evicted_bytes=meta["evicted_bytes"],
    )


def _oldest_created_at(conn: sqlite3.Connection) -> float | None:
    row = conn.execute("SELECT created_at FROM batches ORDER BY seq LIMIT 1").fetchone()
    return None if row is None else float(row[0])


def _write_meta(conn: sqlite3.Connection, **values: int) -> None:
    conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [(v, k) for k, v in values.items()])


def _evict(
    conn: sqlite3.Connection, stats: BufferStats, incoming: int, max_bytes: int
) -> BufferStats:
    """Delete the lowest seqs until ``incoming`` more bytes fit; call inside a transaction."""
    need = stats.bytes + incoming - max_bytes
    if need <= 0:
        return stats
    freed = count = 0
    cutoff = 0
    while freed < need:
        rows = conn.execute(
            "SELECT seq, size FROM batches WHERE seq > ? ORDER BY seq LIMIT ?",
            (cutoff, _EVICT_SCAN),
        ).fetchall()
        if not rows:
            break  # nothing left to evict (counters and table disagree: trust the table)
        for seq, size in rows:
            cutoff = seq
            freed += size
            count += 1
            if freed >= need:
                break
    conn.execute("DELETE FROM batches WHERE seq <= ?", (cutoff,))
    evicted_batches = stats.evicted_batches + count
    evicted_bytes = stats.evicted_bytes + freed
    _write_meta(
        conn,
        last_seq=stats.last_seq,
        evicted_batches=evicted_batches,
        evicted_bytes=evicted_bytes,
    )
    return dataclasses.replace(
        stats,
        batches=stats.batches - count,
        bytes=stats.bytes - freed,
        oldest_created_at=_oldest_created_at(conn),
        evicted_batches=evicted_batches,
        evicted_bytes=evicted_bytes,
    )


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
        raise BufferError(
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
