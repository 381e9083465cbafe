"""Opening a buffer: what may be opened at all, how SQLite is set up, the format version.

Before anything is created next to the path, ``refuse_anything_but_a_file`` and
``refuse_what_is_not_ours`` raise ``NotABufferError`` for what the gateway did not
create (see DESIGN.md, "Ownership"). Under the process lock, ``open_database`` checks
the file (``check_existing_file``: damaged, not ours, newer), has a damaged buffer
salvaged and moved aside (``buffer.recovery``), then opens it with the engine's
settings, creating the schema of a new file or migrating an older format in place.
``compact_if_oversized`` rewrites a database larger than its data budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from buffer.errors import (
    BufferError,
    CorruptDatabaseError,
    NewerFormatError,
    NotABufferError,
    translating,
)
from buffer.files import (
    DATABASE_SUFFIXES,
    SeqFile,
    about_the_machine,
    create_private,
    environment_error,
    fsync,
    fsync_dir,
    make_private,
    remove_database,
)
from buffer.footprint import Budget
from buffer.recovery import Recovery, finish_interrupted_recovery, recover
from buffer.salvage import DamagedFile, wal_damage
from buffer.schema import (
    FORMAT_VERSION,
    OUR_TABLES,
    PAGE_SIZE,
    SQLITE_MAGIC,
    in_transaction,
    load_stats,
    migrate,
    tables,
    unchecked_until,
    user_version,
    write_meta,
    write_schema,
)
from buffer.stats import BufferStats

__all__ = [
    "Opened",
    "Synchronous",
    "compact_if_oversized",
    "open_checked_file",
    "open_database",
    "refuse_anything_but_a_file",
    "refuse_what_is_not_ours",
]

Synchronous = Literal["full", "normal"]

COMPACT_SUFFIX: Final = ".compact"

_log = logging.getLogger("buffer")


@dataclass(frozen=True, slots=True)
class Opened:
    """An open, checked, configured database and what the queue needs to know of it."""

    conn: sqlite3.Connection
    stats: BufferStats
    budget: Budget
    file_pages: int  # page_count
    used_pages: int  # page_count - freelist_count
    unchecked_until: int  # rows up to this seq were stored by format 1, without a CRC


# -- ownership: before anything is created ------------------------------------------------


def refuse_anything_but_a_file(path: str) -> None:
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
        raise environment_error(path, err, "open") from err
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


def refuse_what_is_not_ours(path: str, has_seq: bool) -> None:
    """NotABufferError, before anything is created next to ``path``, if the file there is
    not recognisably a buffer: no ``<path>.seq`` beside it, and not an SQLite database
    with our tables (read with ``immutable=1``: no lock, no -wal or -shm created). A
    missing or empty file, or an SQLite database without tables, becomes a new buffer.
    The full check runs again under the process lock (``check_existing_file``)."""
    if has_seq:
        return
    try:
        header = _header(path)
    except OSError as err:
        raise environment_error(path, err, "read") from err
    if header is None:
        if os.path.lexists(path + "-wal"):
            raise not_ours(path, f"there is a {path}-wal but no database")
        return
    if not header:
        return
    if header != SQLITE_MAGIC:
        raise not_ours(path, "not an SQLite database: no SQLite header")
    try:
        with _peek(path, immutable=True) as conn:
            version, names = user_version(conn), tables(conn)
    except sqlite3.Error as err:
        if pages_look_like_a_buffer(path):
            return  # a damaged buffer: salvaged under the process lock
        raise not_ours(path, f"an SQLite file whose schema cannot be read: {err}") from err
    if names >= OUR_TABLES or (version == 0 and not names):
        return
    raise not_ours(path, _what(version, names))


def not_ours(path: str, what: str) -> NotABufferError:
    return NotABufferError(
        f"{path} is not a buffer of this gateway ({what}; no {path}.seq beside it): refusing"
        " to use, move or change it; check [buffer] path, or move it away by hand"
    )


def pages_look_like_a_buffer(path: str) -> bool:
    """Is a damaged SQLite file with no ``<path>.seq`` beside it a buffer after all? Its
    pages, read one by one as the salvage does, hold a row with the exact shape of a
    batch (NULL, a number, an integer n, a blob of n bytes, a CRC or nothing) or a
    ``meta`` row with one of our keys."""
    try:
        with DamagedFile(path) as pages:
            for _ in pages.batches():
                return True
            return bool(pages.meta)
    except Exception:  # unreadable in any way: no evidence
        return False


def _header(path: str) -> bytes | None:
    """The first bytes of the file at ``path`` (b"" if it is empty), None if missing."""
    try:
        with Path(path).open("rb") as f:
            return f.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _peek(path: str, *, immutable: bool) -> Iterator[sqlite3.Connection]:
    """A read-only connection that writes nothing beside the file (no checkpoint; with
    ``immutable``, no lock and no -wal or -shm either)."""
    uri = Path(path).resolve().as_uri() + "?mode=ro" + ("&immutable=1" if immutable else "")
    conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)
    conn.text_factory = _lenient_text
    try:
        yield conn
    finally:
        conn.close()


def _what(version: int, names: set[str]) -> str:
    described = f" and tables {', '.join(sorted(names))}" if names else ""
    return f"an SQLite database with format version {version}{described}"


# -- the check under the process lock -----------------------------------------------------


def check_existing_file(path: str, has_seq: bool) -> None:
    """Raise CorruptDatabaseError if ``path`` holds a damaged buffer, NotABufferError if it
    holds something that is not recognisably a buffer, NewerFormatError for a buffer of a
    newer format, and a BufferError for a file the machine does not let us read.

    A buffer is recognised by its ``<path>.seq`` side file (``has_seq``); a readable
    SQLite database by its ``batches`` and ``meta`` tables; a damaged SQLite file by
    rows of our shape on its pages. Runs on a read-only connection so that nothing is
    written to (or checkpointed into) a file that is about to be kept aside as
    evidence, or that is not ours.
    """
    header: bytes | None = b""

    def damaged(reason: str) -> Exception:
        if has_seq or (header == SQLITE_MAGIC and pages_look_like_a_buffer(path)):
            return CorruptDatabaseError(reason)
        return not_ours(path, reason)

    damaged_wal = wal_damage(path + "-wal")
    try:
        header = _header(path)
    except PermissionError as err:
        raise environment_error(path, err, "read") from err
    except OSError as err:  # EIO: the card fails under this file
        raise damaged(f"cannot read the file: {err}") from err
    if header is None:
        if os.path.lexists(path + "-wal"):
            # SQLite would replay these frames into a new, empty file: a torso of the old one.
            raise damaged("a -wal file without its database")
        return
    if not header:
        if damaged_wal:
            raise damaged(damaged_wal)
        return  # an empty file is an empty database
    if header != SQLITE_MAGIC:
        raise damaged("not an SQLite database: no SQLite header")
    with open_errors(path, damaged), _peek(path, immutable=False) as conn:
        version, names = user_version(conn), tables(conn)
        ours = has_seq or names >= OUR_TABLES
        if version > FORMAT_VERSION:
            if not ours:
                raise not_ours(path, _what(version, names))
            raise NewerFormatError(
                f"buffer {path} has format version {version}, newer than the"
                f" {FORMAT_VERSION} this gateway understands; run a newer gateway or move"
                " the file away"
            )
        if names and (version == 0 or not ours):
            raise not_ours(path, _what(version, names))
        if damaged_wal:
            raise damaged(damaged_wal)
        problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise damaged("PRAGMA quick_check: " + "; ".join(problems[:5]))
        if version >= 1:
            try:
                load_stats(conn)
            except CorruptDatabaseError as err:
                raise damaged(str(err)) from err


@contextlib.contextmanager
def open_errors(path: str, damaged: Callable[[str], Exception]) -> Iterator[None]:
    """While opening: an SQLite error about the file means damage, about the machine not."""
    try:
        yield
    except sqlite3.Error as err:
        if about_the_machine(err):
            raise environment_error(path, err, "open") from err
        raise damaged(str(err)) from err


# -- opening -------------------------------------------------------------------------------


def open_database(
    path: str, *, max_bytes: int, synchronous: Synchronous, seq: SeqFile
) -> tuple[Opened, Recovery | None]:
    """Check the file, salvage and quarantine it if it is a damaged buffer, open it."""
    recovery = finish_interrupted_recovery(path)
    remove_database(path + COMPACT_SUFFIX)  # an interrupted compaction
    ours = seq.present()
    try:
        try:
            check_existing_file(path, ours)
        except (BufferError, CorruptDatabaseError):
            raise
        except Exception as err:  # whatever else the file makes us trip over
            reason = f"{type(err).__name__}: {err}"
            if not (ours or pages_look_like_a_buffer(path)):
                raise not_ours(path, reason) from err
            raise CorruptDatabaseError(reason) from err
        return open_checked_file(path, max_bytes, synchronous, seq), recovery
    except CorruptDatabaseError as why:
        recovery = recover(path, str(why), seq.read())
    try:
        return open_checked_file(path, max_bytes, synchronous, seq), recovery
    except CorruptDatabaseError as err:
        raise BufferError(f"buffer {path} is unusable after recovery: {err}") from err


def open_checked_file(path: str, max_bytes: int, synchronous: Synchronous, seq: SeqFile) -> Opened:
    """Open a file that passed the checks (or a new one): settings, budget, schema."""
    try:
        if os.path.lexists(path):
            make_private(path + s for s in DATABASE_SUFFIXES)
        else:
            create_private(path)
    except OSError as err:
        raise environment_error(path, err, "create") from err
    conn = _connect(path)
    try:
        with open_errors(path, CorruptDatabaseError):
            _configure(conn, synchronous)
            budget = Budget.of(max_bytes, int(conn.execute("PRAGMA page_size").fetchone()[0]))
            if budget.max_payload < 1024:
                raise BufferError(
                    f"buffer {path}: max_bytes {max_bytes} is too small for a"
                    f" file of {budget.page_size}-byte pages"
                )
            conn.execute(f"PRAGMA wal_autocheckpoint = {budget.checkpoint_frames}")
            conn.execute(f"PRAGMA journal_size_limit = {budget.wal_bytes}")
            _reset_wal(conn, path)
            version = user_version(conn)
            if version == 0:
                _create_schema(conn, path, seq)
            elif version < FORMAT_VERSION:
                in_transaction(conn, functools.partial(migrate, conn, version))
            stats = load_stats(conn)
            stats = _skip_seqs_a_power_cut_may_have_lost(conn, path, stats, seq, synchronous)
            unchecked = unchecked_until(conn)
            count = int(conn.execute("PRAGMA page_count").fetchone()[0])
            free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    except OSError as err:
        conn.close()
        raise environment_error(path, err, "open") from err
    except BaseException:
        conn.close()
        raise
    if 0 < version < FORMAT_VERSION:
        _log.info(
            "buffer %s: format version %d migrated in place to %d; the %d batches stored"
            " before carry no CRC-32 and are read unchecked",
            path,
            version,
            FORMAT_VERSION,
            stats.batches,
        )
    return Opened(conn, stats, budget, count, count - free, unchecked)


def _skip_seqs_a_power_cut_may_have_lost(
    conn: sqlite3.Connection, path: str, stats: BufferStats, seq: SeqFile, synchronous: str
) -> BufferStats:
    """With ``synchronous="normal"`` a power cut can take back commits whose seqs were
    handed out (and maybe published). The fsynced lease in ``.seq`` bounds them: after
    an unclean stop, continue above it. After a clean close it equals ``last_seq``.

    Opened with ``"full"``, the database's own high-water mark is trusted, but for the
    lease a ``"normal"`` writer recorded in ``meta.normal_lease`` (fsynced; see
    ``DurableQueue._write_seq_file``): the setting changed, and the restart that applies
    it may follow a power cut that took back seqs the ``"normal"`` run had handed out.
    """
    if synchronous == "normal":
        floor = seq.read()
    else:
        row = conn.execute("SELECT value FROM meta WHERE key = 'normal_lease'").fetchone()
        floor = row[0] if row is not None and isinstance(row[0], int) else 0
    if floor <= stats.last_seq:
        return stats
    in_transaction(conn, functools.partial(write_meta, conn, last_seq=floor))
    _log.info(
        "buffer %s was not closed cleanly: seqs continue after %d, the lease of seqs the"
        " last run may have handed out without storing",
        path,
        floor,
    )  # ("normal" commits a power cut took back, or seqs reserved and never stored)
    return dataclasses.replace(stats, last_seq=floor)


def _create_schema(conn: sqlite3.Connection, path: str, seq: SeqFile) -> None:
    objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if objects:
        raise not_ours(path, f"an SQLite database with {objects} schema objects")
    floor = seq.read()
    in_transaction(conn, functools.partial(write_schema, conn, last_seq=floor))
    fsync_dir(path)  # SQLite syncs the -wal's directory entry, not the database's
    if floor:
        _log.info("buffer %s: new file, seqs continue after %d", path, floor)


def _connect(path: str) -> sqlite3.Connection:
    try:
        # isolation_level=None: no implicit transactions; BEGIN/COMMIT are explicit.
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as err:
        raise environment_error(path, err, "open") from err
    conn.text_factory = _lenient_text
    return conn


def _lenient_text(raw: bytes) -> str:
    """TEXT from a damaged page (a meta key, a quick_check message) must not raise."""
    return raw.decode("utf-8", "replace")


def _configure(conn: sqlite3.Connection, synchronous: Synchronous) -> None:
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # only takes effect on a new file
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise BufferError(f"SQLite refused WAL mode (got {mode!r}); is the filesystem local?")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.execute("PRAGMA secure_delete = OFF")
    conn.execute("PRAGMA temp_store = MEMORY")  # savepoint journals: no temp files


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


# -- compaction ------------------------------------------------------------------------------


def compact_if_oversized(
    conn: sqlite3.Connection,
    path: str,
    budget: Budget,
    reopen: Callable[[], Opened],
    disk_bytes: Callable[[], int],
) -> Opened | None:
    """A database file larger than the data budget (a lowered max_bytes, a file of an
    older version) is rewritten without its free pages: ``VACUUM INTO`` a new file,
    then renamed over the old one. It needs free space for the new file; without it
    the file keeps its size (and only reuses its free pages) until the next open.

    None: nothing was done, ``conn`` is still open. Otherwise ``conn`` was closed (which
    checkpoints and removes the WAL) and the file is open again: the result of ``reopen``.
    """
    count = int(conn.execute("PRAGMA page_count").fetchone()[0])
    if count <= budget.data_pages:
        return None
    target = path + COMPACT_SUFFIX
    before = disk_bytes()
    started = time.monotonic()
    try:
        remove_database(target)
        create_private(target)
        conn.execute("VACUUM INTO ?", (target,))
        fsync(target)
    except (sqlite3.Error, OSError) as err:
        remove_database(target)
        _log.warning(
            "buffer %s: its database is larger than max_bytes allows (%d pages, budget %d)"
            " and cannot be compacted now (%s); it only reuses its free pages until the"
            " next open",
            path,
            count,
            budget.data_pages,
            err,
        )
        return None
    with translating(path, "close"):
        conn.close()  # we hold the only connection
    try:
        if os.path.lexists(path + "-wal"):
            raise OSError(errno.EBUSY, "another connection keeps the WAL")
        Path(target).replace(path)
        fsync_dir(path)
    except OSError as err:
        remove_database(target)
        _log.warning("buffer %s: cannot compact its database (%s)", path, err)
    opened = reopen()
    _log.warning(
        "buffer %s: compacted from %d to %d bytes on disk to fit max_bytes %d (%.0f ms)",
        path,
        before,
        disk_bytes(),
        budget.max_bytes,
        (time.monotonic() - started) * 1e3,
    )
    return opened
