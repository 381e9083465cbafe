"""The on-disk format: an SQLite file whose ``PRAGMA user_version`` is the format version.

Format version 2::

    meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL)        -- WITHOUT ROWID
        'last_seq'                high-water mark of deleted entries
        'evicted_batches'         entries dropped by either bound, ever
        'evicted_bytes'           their payload bytes, ever
        'evicted_by_age_batches'  of those, dropped by the age bound       (absent = 0)
        'evicted_by_age_bytes'    their payload bytes                       (absent = 0)
        'corrupt_batches'         entries removed because their CRC failed  (absent = 0)
        'corrupt_bytes'           their payload bytes                       (absent = 0)
        'unchecked_until'         rows with seq <= this may lack a CRC      (absent = 0)
    batches(seq INTEGER PRIMARY KEY,     -- the rowid: lookups and range scans by seq
            created_at REAL NOT NULL,     -- the clock (time.time()) at append
            size INTEGER NOT NULL,        -- length(payload); before the blob, so eviction
            payload BLOB NOT NULL,        --   and the open-time count never read overflow pages
            crc INTEGER)                  -- zlib.crc32(payload); NULL: seq <= unchecked_until

Version 1 is the same without ``crc`` and ``unchecked_until``. A version-1 file is
migrated in place at open, in one transaction: ``ALTER TABLE batches ADD COLUMN crc``
(which rewrites no row), ``unchecked_until`` = the highest seq stored, ``user_version =
2``. Its rows keep no checksum (NULL: read unchecked); every row written since carries
one, and a row above ``unchecked_until`` without one is damaged. The column comes last
because ``ALTER TABLE`` can only put it there, and costs nothing there: only ``read``
needs it, and ``read`` reads the payload anyway. See DESIGN.md, "On-disk format".
"""

from __future__ import annotations

import math
import sqlite3
import zlib
from collections.abc import Callable, Iterator
from typing import Final, NamedTuple, TypeVar

from buffer.errors import CorruptDatabaseError
from buffer.stats import BufferStats, Entry

__all__ = [
    "FORMAT_VERSION",
    "INSERT_BATCH",
    "META_KEYS",
    "OUR_TABLES",
    "PAGE_SIZE",
    "SQLITE_MAGIC",
    "Damaged",
    "check_rows",
    "checksum",
    "damage",
    "front",
    "in_transaction",
    "load_stats",
    "migrate",
    "rows_in_seq_order",
    "tables",
    "unchecked_until",
    "user_version",
    "write_meta",
    "write_schema",
]

FORMAT_VERSION: Final = 2
"""The on-disk format this package writes; files with a higher version are refused."""

PAGE_SIZE: Final = 2048  # of new files (measured in DESIGN.md, "Page size")
SQLITE_MAGIC: Final = b"SQLite format 3\x00"  # the first bytes of every SQLite database
WAL_HEADER: Final = 32  # bytes of a -wal file's header, and of each frame's
FRAME_HEADER: Final = 24

REQUIRED_META: Final = ("last_seq", "evicted_batches", "evicted_bytes")
OPTIONAL_META: Final = (  # added later, inside a version: absent = 0
    "evicted_by_age_batches",
    "evicted_by_age_bytes",
    "corrupt_batches",
    "corrupt_bytes",
    "unchecked_until",
)
META_KEYS: Final = frozenset(REQUIRED_META + OPTIONAL_META)
OUR_TABLES: Final = frozenset({"batches", "meta"})  # how a buffer without its .seq is known

INSERT_BATCH: Final = (
    "INSERT INTO batches (seq, created_at, size, payload, crc) VALUES (?, ?, ?, ?, ?)"
)
_T = TypeVar("_T")
_EVICT_SCAN: Final = 256  # rows fetched per step while choosing what to evict

Row = tuple[int, float, int]
"""(seq, created_at, size) of a stored entry: what eviction reads, never the payload."""


def checksum(payload: bytes) -> int:
    """The ``crc`` stored with a payload: CRC-32 (``zlib.crc32``), unsigned."""
    return zlib.crc32(payload)


class Damaged(NamedTuple):
    """A stored batch whose payload must not be returned, and why."""

    seq: int
    created_at: float
    size: int
    why: str


def check_rows(
    rows: list[tuple[int, float, bytes, int | None]], unchecked_until: int
) -> tuple[list[Entry], list[Damaged]]:
    """``read``'s rule for rows of (seq, created_at, payload, crc): the entries that may
    be returned, and the damaged ones (whatever a damaged row holds instead)."""
    sound: list[Entry] = []
    damaged: list[Damaged] = []
    for seq, created_at, payload, crc in rows:
        if (why := damage(payload, crc, unchecked=seq <= unchecked_until)) is None:
            sound.append(Entry(seq, created_at, payload))
        else:
            size = len(payload) if isinstance(payload, bytes) else 0
            stamp = created_at if isinstance(created_at, int | float) else math.nan
            damaged.append(Damaged(seq, stamp, size, why))
    return sound, damaged


def damage(payload: object, crc: object, *, unchecked: bool) -> str | None:
    """Why a stored payload must not be returned, or None: it is a blob that matches its
    CRC-32, or a blob without a CRC from before a migration (``unchecked``)."""
    if not isinstance(payload, bytes):
        return f"its payload is not a blob but {type(payload).__name__}"
    if crc is None:
        return None if unchecked else "it carries no CRC-32 (stored by format 2, it had one)"
    if not isinstance(crc, int):
        return f"its CRC-32 is not an integer but {type(crc).__name__}"
    if (found := checksum(payload)) != crc:
        return f"its payload no longer matches its CRC-32 (stored {crc:08x}, read {found:08x})"
    return None


def write_schema(conn: sqlite3.Connection, **meta: int) -> None:
    """Create the tables of a new file inside the caller's transaction."""
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")
    conn.execute(
        "CREATE TABLE batches (seq INTEGER PRIMARY KEY, created_at REAL NOT NULL,"
        " size INTEGER NOT NULL, payload BLOB NOT NULL, crc INTEGER)"
    )
    write_meta(conn, **{key: meta.get(key, 0) for key in REQUIRED_META + OPTIONAL_META})
    conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a file of an older ``version`` to ``FORMAT_VERSION`` inside the caller's
    transaction. 1 -> 2: the ``crc`` column, NULL in every row already stored, which
    ``unchecked_until`` (the highest seq stored) marks as read unchecked."""
    if version < 2:
        conn.execute("ALTER TABLE batches ADD COLUMN crc INTEGER")
        stored = conn.execute("SELECT coalesce(max(seq), 0) FROM batches").fetchone()[0]
        write_meta(conn, unchecked_until=stored)
    conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def tables(conn: sqlite3.Connection) -> set[str]:
    return {
        str(name) for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }


def write_meta(conn: sqlite3.Connection, **values: int) -> None:
    # An upsert: files written before a key existed gain it the first time it is written.
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
        if user_version(conn) >= 2:
            conn.execute("SELECT crc FROM batches LIMIT 0")
    except sqlite3.OperationalError as err:  # "no such table", "no such column"
        raise CorruptDatabaseError(f"schema damaged: {err}") from err
    for key in OPTIONAL_META:
        meta.setdefault(key, 0)
    damaged = [k for k in REQUIRED_META + OPTIONAL_META if not isinstance(meta.get(k), int)]
    if damaged:
        raise CorruptDatabaseError(f"meta table lacks {', '.join(damaged)}")
    oldest_seq, oldest_at = front(conn)
    return BufferStats(
        batches=count,
        bytes=size,
        oldest_created_at=oldest_at,
        last_seq=max(meta["last_seq"], max_seq),
        evicted_batches=meta["evicted_batches"],
        evicted_bytes=meta["evicted_bytes"],
        evicted_by_age_batches=meta["evicted_by_age_batches"],
        evicted_by_age_bytes=meta["evicted_by_age_bytes"],
        corrupt_batches=meta["corrupt_batches"],
        corrupt_bytes=meta["corrupt_bytes"],
        oldest_seq=oldest_seq,
    )


def unchecked_until(conn: sqlite3.Connection) -> int:
    """Rows with a seq up to this were stored by format 1, without a CRC (0: none)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'unchecked_until'").fetchone()
    return int(row[0]) if row is not None and isinstance(row[0], int) else 0


def front(conn: sqlite3.Connection) -> tuple[int | None, float | None]:
    """The lowest stored seq and its ``created_at``; (None, None) when empty."""
    row = conn.execute("SELECT seq, created_at FROM batches ORDER BY seq LIMIT 1").fetchone()
    return (None, None) if row is None else (int(row[0]), float(row[1]))


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
