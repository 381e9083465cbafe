"""What the buffer tests share: payloads that name their seq, reading everything, children."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from buffer import DurableQueue, Entry

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
