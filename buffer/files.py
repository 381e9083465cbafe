"""What the buffer asks of the operating system: private files, fsync, the process lock,
the ``.seq`` lease, and telling a full disk or an unwritable directory from damage.

One implementation of each: every fsync of a file or a directory goes through
``fsync``; every file the buffer creates is made by ``create_private`` or written by
``write_private`` (mode 0600 whatever the umask); every error about the machine becomes
one sentence in ``environment_error``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pwd
import sqlite3
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from buffer.errors import BufferError, BufferInUseError, DiskFullError

__all__ = [
    "DATABASE_SUFFIXES",
    "PRIVATE",
    "SeqFile",
    "WalSync",
    "about_the_machine",
    "acquire_process_lock",
    "create_private",
    "environment_error",
    "fsync",
    "fsync_dir",
    "make_directory",
    "make_private",
    "move_database",
    "release_process_lock",
    "remove_database",
    "sizes",
]

PRIVATE: Final = 0o600
DATABASE_SUFFIXES: Final = ("", "-wal", "-shm")  # the database and SQLite's files beside it
DISK_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
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

_log = logging.getLogger("buffer")


# -- files ---------------------------------------------------------------------------------


def create_private(path: str) -> None:
    """Create an empty file of mode 0600 (whatever the umask) that SQLite will fill."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE)
    try:
        os.fchmod(fd, PRIVATE)
    finally:
        os.close(fd)


def write_private(fd: int, data: bytes, offset: int = 0) -> None:
    """Write all of ``data`` at ``offset`` of a file we own, making it 0600 first."""
    if os.fstat(fd).st_mode & 0o077:
        os.fchmod(fd, PRIVATE)
    if os.pwrite(fd, data, offset) != len(data):
        raise OSError(errno.ENOSPC, "short write")


def make_private(paths: Iterable[str]) -> None:
    """Files of a buffer left by an older version (mode 0644) are made 0600."""
    for name in paths:
        with contextlib.suppress(OSError):
            if Path(name).stat().st_mode & 0o077:
                Path(name).chmod(PRIVATE)


def make_directory(path: str) -> None:
    """Create the buffer's directory (mode 0700) if it is missing, and its missing parents,
    durably: each directory made is fsynced into its parent before the next step, so a
    power cut cannot take the directory back with every batch committed in it."""
    directory = Path(path).absolute().parent
    if directory.is_dir():
        return
    missing = []
    while not os.path.lexists(directory):
        missing.append(directory)
        directory = directory.parent
    try:
        for made in reversed(missing):
            made.mkdir(mode=0o700 if made == missing[0] else 0o777)
            fsync(str(made.parent), directory=True)
    except OSError as err:
        raise environment_error(path, err, "create the directory of") from err


def fsync(path: str, *, directory: bool = False) -> None:
    """Flush ``path`` (a file, or with ``directory`` a directory's entries) to the device."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Flush the entries of the directory that holds ``path`` (a creation or a rename)."""
    fsync(str(Path(path).absolute().parent), directory=True)


def sizes(path: str) -> list[int]:
    """``st_size`` of the database at ``path`` and of its ``-wal`` and ``-shm`` that exist."""
    found = []
    for suffix in DATABASE_SUFFIXES:
        with contextlib.suppress(OSError):
            found.append(Path(path + suffix).stat().st_size)
    return found


def move_database(path: str, target: str) -> list[str]:
    """Rename the database and its -wal and -shm (in that order) to ``target``."""
    moved = []
    for suffix in DATABASE_SUFFIXES:
        if os.path.lexists(path + suffix):
            Path(path + suffix).replace(target + suffix)
            moved.append(target + suffix)
            with contextlib.suppress(OSError):
                Path(target + suffix).chmod(PRIVATE)
    return moved


def remove_database(path: str) -> None:
    for suffix in (*DATABASE_SUFFIXES, "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(path + suffix).unlink()


class WalSync:
    """What ``DurableQueue.sync()`` flushes with ``synchronous="normal"``: the WAL, which
    holds every commit so far, and once per open the directory entry that names it."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._pending = False  # a commit since the last sync
        self._dir_synced = False

    def committed(self) -> None:
        self._pending = True

    def reopened(self) -> None:
        self._dir_synced = False

    def sync_now(self) -> None:
        """fsync the WAL and its directory entry now, whatever the timer did: for a commit
        that must be durable before the call returns, whatever ``synchronous`` says."""
        try:
            fsync(self._path + "-wal")
            fsync_dir(self._path)
        except OSError as err:
            raise BufferError(f"buffer {self._path}: sync failed: {err}") from err

    def sync(self) -> None:
        """fsync the WAL if anything was committed since the last call (else no syscall)."""
        if not self._pending:
            return
        try:
            try:
                fsync(self._path + "-wal")
            except FileNotFoundError:
                self._pending = False
                return  # checkpointed and removed: everything is in the (synced) database
            if not self._dir_synced:
                fsync_dir(self._path)
                self._dir_synced = True
        except OSError as err:
            raise BufferError(f"buffer {self._path}: sync failed: {err}") from err
        self._pending = False


# -- the process lock ------------------------------------------------------------------------


def acquire_process_lock(path: str) -> int:
    """``flock`` ``<path>.lock`` (created 0600) and write our pid into it; the fd to hold."""
    lock_path = path + ".lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE)
    except OSError as err:
        raise environment_error(path, err, f"create the lock file {lock_path} of") from err
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
        os.ftruncate(fd, 0)
        write_private(fd, pid_line())
    except OSError as err:
        release_process_lock(fd)
        raise environment_error(path, err, f"write the lock file {lock_path} of") from err
    return fd


def pid_line() -> bytes:
    """What the lock file holds."""
    return f"{os.getpid()}\n".encode("ascii")


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""


def release_process_lock(fd: int) -> None:
    # The lock file itself stays: unlinking it would let two processes lock different inodes.
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


# -- the .seq lease ----------------------------------------------------------------------------


class SeqFile:
    """``<path>.seq``: one decimal number, an upper bound of every seq handed out, and the
    mark that the files at ``path`` are a gateway's (see DESIGN.md, "Seq numbers")."""

    def __init__(self, path: str) -> None:
        self.buffer = path
        self.path = path + ".seq"

    def present(self) -> bool:
        """Is it there and one of ours (a decimal number)?"""
        try:
            int(Path(self.path).read_text(encoding="ascii").strip())
        except (OSError, UnicodeDecodeError, ValueError):
            return False
        return True

    def read(self) -> int:
        """Its value; 0 if missing, or unreadable (logged: seqs of a fresh file restart)."""
        try:
            text = Path(self.path).read_text(encoding="ascii")
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as err:
            _log.error("buffer %s: cannot read %s (%s); ignoring it", self.buffer, self.path, err)
            return 0
        try:
            value = int(text.strip())
        except ValueError:
            _log.error(
                "buffer %s: %s holds %r, not a seq; ignoring it", self.buffer, self.path, text[:40]
            )
            return 0
        return max(value, 0)

    def write(self, value: int) -> int:
        """Atomically replace it: a temp file, fsync, rename, fsync of the directory.
        Returns its size in bytes."""
        tmp = self.path + ".tmp"
        data = f"{value}\n".encode("ascii")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE)
            try:
                write_private(fd, data)
            finally:
                os.close(fd)
            fsync(tmp)
            Path(tmp).replace(self.path)
            fsync_dir(self.path)
        except OSError as err:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise environment_error(self.buffer, err, f"write {self.path} of") from err
        return len(data)


# -- the machine: a full disk, a read-only filesystem, permissions ----------------------------


def about_the_machine(err: sqlite3.Error) -> bool:
    """Does this SQLite error say something about the machine (full, read-only, locked, a
    write or sync that failed) rather than about the file (damage)?"""
    code = getattr(err, "sqlite_errorcode", sqlite3.SQLITE_ERROR)
    primary = code & 0xFF
    return primary in _ENVIRONMENT_ERRORS or (
        primary == sqlite3.SQLITE_IOERR and code not in _READ_ERRORS
    )


def write_error(path: str, err: sqlite3.Error) -> BufferError:
    """A write failed: the machine (full, read-only, locked: one sentence saying so), or
    the file (SQLite's message)."""
    if about_the_machine(err):
        return environment_error(path, err, "write to")
    return BufferError(f"buffer {path}: write failed: {err}")


def environment_error(path: str, err: BaseException, doing: str) -> BufferError:
    """One sentence for an error about the machine, not the file: what could not be done
    with buffer ``path`` and why, in words a technician can act on."""
    code = err.errno if isinstance(err, OSError) else None
    sqlite_code = getattr(err, "sqlite_errorcode", None)
    if sqlite_code is not None and sqlite_code & 0xFF == sqlite3.SQLITE_FULL:
        code = errno.ENOSPC
    elif sqlite_code is not None or code in (errno.EIO, None):
        code = no_room(path, 0) or code  # SQLite reports EFBIG, a full -shm as I/O errors
    cls = DiskFullError if code in DISK_FULL_ERRNOS else BufferError
    return cls(f"cannot {doing} buffer {path}: {_reason(path, code, sqlite_code, err)}")


def no_room(path: str, need: int) -> int | None:
    """Is the disk under ``path`` full, or a file-size limit reached? The errno that says
    so (ENOSPC, EDQUOT, EFBIG) or None. Probes the way a write would: allocating ``need``
    bytes (at least 64 KiB) past the end of the largest buffer file, in an anonymous
    temporary file of the same directory (gone when closed)."""
    directory = str(Path(path).absolute().parent)
    end = max(sizes(path), default=0)
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, PRIVATE)
    except OSError as err:
        if err.errno in DISK_FULL_ERRNOS:
            return err.errno
        try:  # a filesystem without O_TMPFILE
            fd, name = tempfile.mkstemp(prefix=".probe-", dir=directory)
            Path(name).unlink()
        except OSError as err2:
            return err2.errno if err2.errno in DISK_FULL_ERRNOS else None
    try:
        os.posix_fallocate(fd, end, max(need, 65536))
    except OSError as err:
        return err.errno if err.errno in DISK_FULL_ERRNOS else None
    finally:
        os.close(fd)
    return None


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


def _first_file_in_the_way(directory: Path) -> Path | None:
    """The nearest ancestor of ``directory`` (or itself) that exists but is no directory."""
    for candidate in (directory, *directory.parents):
        if os.path.lexists(candidate):
            return None if candidate.is_dir() else candidate
    return None


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
