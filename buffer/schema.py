"""The on-disk format: an SQLite file whose ``PRAGMA user_version`` is the format version.

Format version 1::

    meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL)        -- WITHOUT ROWID
        'last_seq'                high-water mark of deleted entries
        'evicted_batches'         entries dropped by either bound, ever
        'evicted_bytes'           their payload bytes, ever
        'evicted_by_age_batches'  of those, dropped by the age bound (absent = 0)
        'evicted_by_age_bytes'    their payload bytes (absent = 0)
    batches(seq INTEGER PRIMARY KEY,     -- the rowid: lookups and range scans by seq
            created_at REAL NOT NULL,     -- the clock (time.time()) at append
            size INTEGER NOT NULL,        -- length(payload); before the blob, so eviction
            payload BLOB NOT NULL)        --   and the open-time count never read overflow pages

See DESIGN.md, "On-disk format".
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Final, TypeVar

from buffer.errors import CorruptDatabaseError
from buffer.stats import BufferStats

__all__ = [
    "FORMAT_VERSION",
    "INSERT_BATCH",
    "META_KEYS",
    "OUR_TABLES",
    "PAGE_SIZE",
    "SQLITE_MAGIC",
    "in_transaction",
    "load_stats",
    "oldest_created_at",
    "rows_in_seq_order",
    "tables",
    "user_version",
    "write_meta",
    "write_schema",
]

FORMAT_VERSION: Final = 1
"""The on-disk format this package writes; files with a higher version are refused."""

PAGE_SIZE: Final = 4096  # of new files (SQLite's default, measured in DESIGN.md)
SQLITE_MAGIC: Final = b"SQLite format 3\x00"  # the first bytes of every SQLite database
WAL_HEADER: Final = 32  # bytes of a -wal file's header, and of each frame's
FRAME_HEADER: Final = 24

REQUIRED_META: Final = ("last_seq", "evicted_batches", "evicted_bytes")
OPTIONAL_META: Final = (  # added later, inside a version: absent = 0
    "evicted_by_age_batches",
    "evicted_by_age_bytes",
)
META_KEYS: Final = frozenset(REQUIRED_META + OPTIONAL_META)
OUR_TABLES: Final = frozenset({"batches", "meta"})  # how a buffer without its .seq is known

INSERT_BATCH: Final = "INSERT INTO batches (seq, created_at, size, payload) VALUES (?, ?, ?, ?)"
_T = TypeVar("_T")
_EVICT_SCAN: Final = 256  # rows fetched per step while choosing what to evict

Row = tuple[int, float, int]
"""(seq, created_at, size) of a stored entry: what eviction reads, never the payload."""


def write_schema(conn: sqlite3.Connection, **meta: int) -> None:
    """Create the tables of a new file inside the caller's transaction."""
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")
    conn.execute(
        "CREATE TABLE batches (seq INTEGER PRIMARY KEY, created_at REAL NOT NULL,"
        " size INTEGER NOT NULL, payload BLOB NOT NULL)"
    )
    write_meta(conn, **{key: meta.get(key, 0) for key in REQUIRED_META + OPTIONAL_META})
    conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def tables(conn: sqlite3.Connection) -> set[str]:
    return {
        str(name) for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }


def write_meta(conn: sqlite3.Connection, **values: int) -> None:
    # An upsert: files written before a key existed gain it at their first eviction.
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        values.items(),
    )


def load_stats(conn: sqlite3.Connection) -> BufferStats:
    """Read the counters: one pass over the b-tree's leaf pages, never over the payloads.
    ``CorruptDatabaseError`` if a table or a required ``meta`` key is missing."""
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        count, size, max_seq = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0), coalesce(max(seq), 0) FROM batches"
        ).fetchone()
    except sqlite3.OperationalError as err:  # "no such table"
        raise CorruptDatabaseError(f"schema damaged: {err}") from err
    for key in OPTIONAL_META:
        meta.setdefault(key, 0)
    damaged = [k for k in REQUIRED_META + OPTIONAL_META if not isinstance(meta.get(k), int)]
    if damaged:
        raise CorruptDatabaseError(f"meta table lacks {', '.join(damaged)}")
    return BufferStats(
        batches=count,
        bytes=size,
        oldest_created_at=oldest_created_at(conn),
        last_seq=max(meta["last_seq"], max_seq),
        evicted_batches=meta["evicted_batches"],
        evicted_bytes=meta["evicted_bytes"],
        evicted_by_age_batches=meta["evicted_by_age_batches"],
        evicted_by_age_bytes=meta["evicted_by_age_bytes"],
    )


def oldest_created_at(conn: sqlite3.Connection) -> float | None:
    row = conn.execute("SELECT created_at FROM batches ORDER BY seq LIMIT 1").fetchone()
    return None if row is None else float(row[0])


def rows_in_seq_order(conn: sqlite3.Connection, after: int = 0) -> Iterator[Row]:
    """(seq, created_at, size) of every entry after ``after``, oldest first, fetched a few
    at a time."""
    while rows := conn.execute(
        "SELECT seq, created_at, size FROM batches WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, _EVICT_SCAN),
    ).fetchall():
        yield from rows
        after = rows[-1][0]


def stored_as_integer(value: float) -> bool:
    """SQLite stores a REAL that has an integral value (within +-2**51) as an integer."""
    return value.is_integer() and abs(value) < 2**51


def in_transaction(conn: sqlite3.Connection, work: Callable[[], _T]) -> _T:
    """``BEGIN IMMEDIATE``, ``work()``, ``COMMIT``; rolled back if anything in it raises.
    (A plain function, not a context manager: it runs on every append.)"""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result
