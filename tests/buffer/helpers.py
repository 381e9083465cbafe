"""What the buffer tests share: payloads that name their seq, reading everything, children."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from buffer import BufferStats, DurableQueue, Entry
from buffer.schema import PAGE_SIZE

REPO_ROOT = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT = 20.0


def payload_for(seq: int, size: int = 100) -> bytes:
    """A payload that can only belong to this seq (the batcher embeds seq the same way)."""
    return (seq.to_bytes(8, "big") * (size // 8 + 1))[:size]


def read_all(queue: DurableQueue) -> list[Entry]:
    entries: list[Entry] = []
    while page := queue.read(entries[-1].seq if entries else 0, limit=500):
        entries.extend(page)
    return entries


def child_env() -> dict[str, str]:
    """The environment of a child Python that imports this checkout's packages."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child Python and wait for it."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=child_env(),
        check=False,
    )


class FakeClock:
    """An injected wall clock: ``created_at`` and the age bound both follow it."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


FOOTPRINT_SUFFIXES = ("", "-wal", "-shm", ".lock", ".seq", ".seq.tmp")


def footprint(path: Path) -> int:
    """Bytes of every file of the buffer at ``path``, measured on disk (st_size)."""
    total = 0
    for suffix in FOOTPRINT_SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            total += Path(f"{path}{suffix}").stat().st_size
    for segment in Path(path).parent.glob(f"{Path(path).name}.journal-*"):  # the outage journal
        with contextlib.suppress(FileNotFoundError):
            total += segment.stat().st_size
    return total


class FootprintWatch:
    """The largest footprint seen before every SQL statement the queue runs: catches a
    WAL that grew past the bound inside a call and was truncated before it returned."""

    def __init__(self, queue: DurableQueue, path: Path) -> None:
        self.path = path
        self.peak = footprint(path)
        assert queue._conn is not None
        queue._conn.set_trace_callback(self._statement)

    def _statement(self, sql: str) -> None:
        self.peak = max(self.peak, footprint(self.path))


def counters(stats: BufferStats) -> tuple[int, int, float | None, int, int, int, int, int]:
    """The fields of a snapshot that the database keeps (not disk_bytes, the episode...)."""
    return (
        stats.batches,
        stats.bytes,
        stats.oldest_created_at,
        stats.last_seq,
        stats.evicted_batches,
        stats.evicted_bytes,
        stats.evicted_by_age_batches,
        stats.evicted_by_age_bytes,
    )


PAGE = PAGE_SIZE  # of every new buffer file


def flip_a_bit(path: Path, payload: bytes, where: str = "start") -> int:
    """Flip one bit of ``payload`` where it is stored in the database file at ``path``
    (closed: no WAL), as bit rot on an SD card would; returns the file offset changed.

    The payload is found by its marker bytes: its first 16, which name its seq (see
    ``payload_for``); ``where`` says which copy: ``"start"`` the first in the file (its
    leaf page), ``"end"`` the last (the last overflow page of a large payload). Stale
    copies (a split page keeps the rows it gave away, a freed page its old rows) and
    marker bytes that run into a page's structure are skipped: a flip counts once SQLite
    reads the row's payload changed by that one bit and ``quick_check`` still says ok.
    """
    assert len(payload) >= 16, "too short to carry its marker"
    seq = int.from_bytes(payload[:8], "big")
    data = bytearray(path.read_bytes())
    found = []
    at = data.find(payload[:16])
    while at >= 0:
        found.append(at)
        at = data.find(payload[:16], at + 1)
    for at in found if where == "start" else found[::-1]:
        data[at + 3] ^= 0x01  # a zero byte of the marker
        path.write_bytes(bytes(data))
        if _one_bit_changed(path, seq, payload):
            return at
        data[at + 3] ^= 0x01
    path.write_bytes(bytes(data))
    raise AssertionError(f"no live copy of seq {seq} found in {path}")


def _one_bit_changed(path: Path, seq: int, payload: bytes) -> bool:
    conn = sqlite3.connect(path)
    try:
        ok = conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        row = conn.execute("SELECT payload FROM batches WHERE seq = ?", (seq,)).fetchone()
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()
    if not ok or row is None or len(row[0]) != len(payload):
        return False
    return [a ^ b for a, b in zip(row[0], payload, strict=True) if a != b] == [0x01]
