"""Small state on disk: TinyDB documents in files that a power cut cannot tear.

The gateway keeps a few small, rarely written documents beside its data buffer: the
nonces of remote commands, their audit log, the history of applied configs. TinyDB is
the right size for them (DESIGN.md: never for the data buffer). Its own JSONStorage
rewrites the file in place, so a power cut in the middle of a write leaves half a
document and the next start finds nothing it can read. `AtomicJSONStorage` is the
storage to give TinyDB instead; `open_state(path)` opens a database on it.

The contract, for every state file:

- **A write is whole or absent.** Each write serialises the whole database to
  `.<name>.tmp` in the same directory (created 0600), `fsync`s it, renames it over
  `<name>` (`os.replace`, atomic on POSIX) and `fsync`s the directory, so that the
  rename itself is on disk. When `write()` returns, the new state survives a power
  cut; if the power goes before, the file holds the previous state. Never a mixture.
- **Files are 0600**, in a directory created 0700 when missing (and fsynced into its
  parent, so that it lasts as long as the files written into it): state may name keys
  and configs, and nobody but the gateway's user needs it.
- **Unreadable is not fatal.** A file that is not a TinyDB JSON document (torn by a
  filesystem that lied about fsync, bit rot on the card, an editor's accident) is
  moved aside to `<name>.unreadable-<unix time>` and a fresh, empty database is
  started. That is logged as a warning and counted (`set_aside`); the gateway keeps
  running. A temp file left by a crash mid-write is removed when the file is opened.
- **One writer.** One process writes a state file (the daemon); others may read it.
  Reads go to the file every time (no cache), so a reader sees each committed write.
- **Small.** Every write rewrites the whole file: keep state files to kilobytes or
  hundreds of kilobytes and their writes to a few a minute (an SD card wears by bytes
  written). A caller that must absorb bursts (refused commands) holds them back and
  writes them together.

Errors writing (a full or read-only disk) raise `OSError` from `write()`, with the
previous state intact on disk: the caller decides what a state it could not record
means (the command gate refuses the command).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage

log = logging.getLogger("gateway.state")

FILE_MODE = 0o600
DIR_MODE = 0o700

Tables = dict[str, dict[str, Any]]


class AtomicJSONStorage(Storage):
    """TinyDB storage: one JSON file, replaced whole by temp file, fsync, rename, fsync of
    the directory (the module docstring states the contract)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self.temp = self.path.with_name(f".{self.path.name}.tmp")
        self.set_aside: list[Path] = []  # unreadable files moved out of the way, this run
        make_directory(self.path.parent)
        with contextlib.suppress(FileNotFoundError):
            self.temp.unlink()  # a write that a crash interrupted: never renamed, never used

    def read(self) -> Tables | None:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if not text:
            # Never written by us (every write holds at least '{}'): a file created and
            # not filled, as an in-place writer leaves it after a power cut.
            self._set_aside("it is empty")
            return None
        try:
            tables = json.loads(text)
        except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
            self._set_aside(f"it is not JSON ({err})")
            return None
        if not _is_tables(tables):
            self._set_aside("it is JSON, but not TinyDB tables of documents")
            return None
        return tables  # type: ignore[no-any-return]  # checked by _is_tables

    def write(self, data: Tables) -> None:
        encoded = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            with os.fdopen(fd, "wb", closefd=True) as handle:
                handle.write(encoded.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            self.temp.replace(self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                self.temp.unlink()
            raise
        fsync_directory(self.path.parent)

    def _set_aside(self, why: str) -> None:
        target = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}-{n}")
            n += 1
        try:
            self.path.replace(target)
        except FileNotFoundError:
            return  # another reader moved it first
        fsync_directory(self.path.parent)
        self.set_aside.append(target)
        log.warning(
            "state file %s could not be read (%s): moved aside to %s, starting afresh",
            self.path,
            why,
            target.name,
        )


def _is_tables(value: object) -> bool:
    """TinyDB's layout: {table: {doc_id: document}}, every document an object."""
    return isinstance(value, dict) and all(
        isinstance(table, dict) and all(isinstance(doc, dict) for doc in table.values())
        for table in value.values()
    )


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new name in `directory` durable (POSIX: fsync the directory)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directory(directory: Path, mode: int = DIR_MODE) -> None:
    """Create `directory` (and its missing parents) if it is missing, durably: each
    directory made is fsynced into its parent, so that a file written into it and
    fsynced is not taken back by a power cut together with its directory."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for made in reversed(missing):  # parents as mkdir -p makes them, the last with `mode`
        made.mkdir(mode=mode if made == missing[0] else 0o777, exist_ok=True)
        fsync_directory(made.parent)


def open_state(path: str | os.PathLike[str]) -> TinyDB:
    """A TinyDB database on `AtomicJSONStorage` at `path` (created on first write).

    What was set aside while reading is in `storage_of(db).set_aside`. The file is read
    once here, so an unreadable one is set aside (and logged) at open, not at first use.
    """
    db = TinyDB(path, storage=AtomicJSONStorage)
    storage_of(db).read()
    return db


def storage_of(db: TinyDB) -> AtomicJSONStorage:
    storage = db.storage
    if not isinstance(storage, AtomicJSONStorage):
        raise TypeError(f"{db!r} is not a state file opened with open_state()")
    return storage
