"""What the buffer tests share: payloads that name their seq, reading everything, children."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from buffer import BufferStats, DurableQueue, Entry

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
