"""A damaged buffer: copy what is readable into a new file, keep the damaged one aside.

The new file is complete and synced before anything is moved, so a crash at any point
leaves either the damaged file in place (the recovery runs again) or the damaged file
aside and the new one next to it (``finish_interrupted_recovery`` completes the swap).
The page-level reading is ``buffer.salvage``; deciding that a file is damaged (and
ours) is ``buffer.opening``. See DESIGN.md, "Damaged files".
"""

from __future__ import annotations

import glob
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from buffer.errors import BufferError
from buffer.files import (
    DATABASE_SUFFIXES,
    create_private,
    fsync,
    fsync_dir,
    move_database,
    remove_database,
)
from buffer.salvage import DamagedFile
from buffer.schema import INSERT_BATCH, META_KEYS, PAGE_SIZE, write_meta, write_schema

__all__ = ["Recovery", "finish_interrupted_recovery", "recover"]

SALVAGE_SUFFIX: Final = ".salvage"

_log = logging.getLogger("buffer")


@dataclass(frozen=True, slots=True)
class Recovery:
    """What an open found damaged: where it went, what was copied, what was lost."""

    recovered_from: str
    salvaged_batches: int = 0
    unreadable_batches: int = 0


def recover(path: str, reason: str, floor: int) -> Recovery:
    """Copy what is readable into a new file, move the damaged one aside, swap them in.
    Seqs of the new file continue above ``floor`` (the ``.seq`` lease) and every seq seen.
    ``BufferError`` only if the damaged file cannot be moved aside."""
    target = _quarantine_target(path)
    salvage_path = target + SALVAGE_SUFFIX
    try:
        salvaged, unreadable, floor = _salvage(path, salvage_path, floor)
        outcome = f"salvaged {salvaged} batches into a new file, {unreadable} unreadable"
    except Exception as err:  # whatever happens, the gateway starts: with an empty queue
        remove_database(salvage_path)
        salvaged = unreadable = 0
        outcome = f"salvage failed ({type(err).__name__}: {err}), started an empty file"
    try:
        moved = move_database(path, target)
        if os.path.lexists(salvage_path):
            Path(salvage_path).replace(path)
        fsync_dir(path)
    except OSError as err:
        remove_database(salvage_path)
        raise BufferError(
            f"buffer {path} is damaged ({reason}) and could not be moved aside: {err}"
        ) from err
    _log.error(
        "buffer %s is damaged (%s): %s; the damaged file is kept aside as %s;"
        " seqs continue after %d",
        path,
        reason,
        outcome,
        ", ".join(moved),
        floor,
    )
    return Recovery(target, salvaged, unreadable)


def finish_interrupted_recovery(path: str) -> Recovery | None:
    """Complete (or discard) the work of a recovery that a crash interrupted."""
    here = Path(path)
    pattern = glob.escape(here.name) + ".corrupt-*" + SALVAGE_SUFFIX
    completed = None
    for salvage_path in sorted(str(p) for p in here.parent.glob(pattern)):
        target = salvage_path.removesuffix(SALVAGE_SUFFIX)
        moving_started = any(os.path.lexists(target + s) for s in DATABASE_SUFFIXES)
        if os.path.lexists(path) or not moving_started:
            remove_database(salvage_path)  # stopped before the quarantine: it runs again
            continue
        try:  # stopped while moving the damaged file aside: the new file is complete
            for suffix in DATABASE_SUFFIXES:
                if os.path.lexists(path + suffix) and not os.path.lexists(target + suffix):
                    Path(path + suffix).replace(target + suffix)
            Path(salvage_path).replace(path)
            fsync_dir(path)
        except OSError as err:
            raise BufferError(
                f"buffer {path}: cannot complete an interrupted recovery: {err}"
            ) from err
        completed = Recovery(target)
        _log.error(
            "buffer %s was damaged and its recovery interrupted by a crash; completed it:"
            " the salvaged batches are in place, the damaged file is kept aside as %s",
            path,
            target,
        )
    return completed


def _quarantine_target(path: str) -> str:
    stamp = int(time.time())
    target = f"{path}.corrupt-{stamp}"
    n = 0
    while any(os.path.lexists(target + s) for s in (*DATABASE_SUFFIXES, SALVAGE_SUFFIX)):
        n += 1
        target = f"{path}.corrupt-{stamp}-{n}"
    return target


def _salvage(damaged: str, into: str, floor: int) -> tuple[int, int, int]:
    """Copy every readable batch of ``damaged`` into a new buffer file ``into``.

    Returns (batches salvaged, batches known but unreadable, last seq of the new file).
    The new file keeps each batch's seq, created_at and CRC, continues seqs above
    everything seen (and above ``floor``) and keeps the counters if they were readable.
    A row without a CRC is kept only if the damaged file's ``unchecked_until`` covers it
    (or that is unknown: a file of format 1, or its meta page lost).
    """
    remove_database(into)
    with DamagedFile(damaged) as source:
        create_private(into)
        conn = sqlite3.connect(into, isolation_level=None)
        try:
            # No journal: if this fails half-way the file is deleted, never used.
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            conn.execute("PRAGMA journal_mode = OFF")
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute("BEGIN")
            saved: set[int] = set()
            without_crc: list[int] = []  # rows of format 1

            def fresh_rows() -> Iterator[tuple[int, float, int, bytes, int | None]]:
                for seq, created_at, payload, crc in source.batches():
                    if seq not in saved:  # copies of a row are alike: the first will do
                        saved.add(seq)
                        if crc is None:
                            without_crc.append(seq)
                        yield seq, created_at, len(payload), payload, crc

            write_schema(conn)
            conn.executemany(INSERT_BATCH, fresh_rows())
            unreadable = source.unreadable_seqs - saved
            meta = {key: source.meta.get(key, 0) for key in sorted(META_KEYS)}
            if "unchecked_until" in source.meta:  # rows above it without a CRC are damaged
                lacking = {s for s in without_crc if s > meta["unchecked_until"]}
                conn.execute(
                    "DELETE FROM batches WHERE crc IS NULL AND seq > ?", (meta["unchecked_until"],)
                )
                saved -= lacking
                unreadable |= lacking
            else:  # a file of format 1, or its meta page is lost
                meta["unchecked_until"] = max(without_crc, default=0)
            meta["last_seq"] = max(
                floor, meta["last_seq"], max(saved, default=0), max(unreadable, default=0)
            )
            write_meta(conn, **meta)
            conn.execute("COMMIT")
        finally:
            conn.close()
    fsync(into)
    return len(saved), len(unreadable), meta["last_seq"]
