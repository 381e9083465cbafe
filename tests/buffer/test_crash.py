"""SIGKILL a process that is appending as fast as it can, then check what the disk kept.

The child prints a seq only after ``append`` returned it, so every printed seq is a
promise: it must be on disk after the kill, with its payload, unless we acked it.
"""

from __future__ import annotations

import inspect
import queue
import random
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from buffer import DurableQueue
from tests.buffer.helpers import child_env, footprint, read_all

pytestmark = pytest.mark.rig  # processes of their own, killed


def payload_for(seq: int) -> bytes:
    """8 to 2400 bytes that can only belong to this seq; the child runs this same source."""
    return seq.to_bytes(8, "big") * (1 + seq % 300)


APPEND_FOREVER = (
    inspect.getsource(payload_for)
    + """
import sys
from buffer import DurableQueue
queue = DurableQueue(sys.argv[1], max_bytes=int(sys.argv[2]))
print("ready", flush=True)
while True:
    seq = queue.append(payload_for)
    print(seq, flush=True)
"""
)


def append_until_killed(path: Path, max_bytes: int, rng: random.Random, log: Path) -> list[int]:
    """Run the appending child for 0.2-1.0 s after it is ready, SIGKILL it, return its seqs."""
    lines: queue.Queue[str | None] = queue.Queue()
    with log.open("a") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", APPEND_FOREVER, str(path), str(max_bytes)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=child_env(),
        )
    assert child.stdout is not None
    stdout = child.stdout

    def drain() -> None:
        for line in stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=drain, name="crash-child-stdout", daemon=True)
    reader.start()
    try:
        first = lines.get(timeout=10)
        assert first == "ready\n", f"child failed to start: {log.read_text()}"
        time.sleep(rng.uniform(0.2, 1.0))
    finally:
        child.kill()  # SIGKILL
        child.wait(timeout=5)
        reader.join(timeout=5)
        stdout.close()

    seqs = []
    while (line := lines.get_nowait()) is not None:
        if line.endswith("\n"):  # a line cut by the kill was never a promise
            seqs.append(int(line))
    return seqs


def assert_database_is_sound(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


def test_every_seq_reported_before_a_sigkill_is_still_there_after_reopen(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    path = tmp_path / "queue.db"
    promised: set[int] = set()  # printed by a child and not acked since
    highest = 0
    started = time.monotonic()

    for round_no in range(5):
        printed = append_until_killed(path, 10**9, rng, tmp_path / "child.log")
        context = f"seed {seed}, round {round_no}"
        assert printed, f"the child appended nothing ({context})"
        assert printed == sorted(set(printed)), f"seqs must strictly increase ({context})"
        assert printed[0] > highest, f"a seq was reused after a restart ({context})"
        promised |= set(printed)

        with DurableQueue(path, max_bytes=10**9) as q:
            assert q.recovered_from is None, f"the kill damaged the file ({context})"
            assert_database_is_sound(path)
            entries = read_all(q)
            stored = [e.seq for e in entries]
            assert stored == sorted(set(stored))
            missing = promised - set(stored)
            assert not missing, f"{len(missing)} acknowledged appends lost ({context})"
            assert all(e.payload == payload_for(e.seq) for e in entries), context
            stats = q.stats()
            assert stats.batches == len(entries)
            assert stats.bytes == sum(len(e.payload) for e in entries)
            assert stats.last_seq >= max(printed)
            highest = max(stored + printed)

            acked = rng.sample(stored, k=rng.randrange(len(stored) + 1))
            assert q.ack(acked) == len(acked)
            promised -= set(acked)

    assert time.monotonic() - started < 15


def test_eviction_under_sigkill_keeps_the_newest_and_accounts_for_every_batch(
    tmp_path: Path,
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    path = tmp_path / "queue.db"
    max_bytes = 600_000  # a few hundred batches: the child evicts within milliseconds
    printed_ever: set[int] = set()
    promised: set[int] = set()
    acked_total = 0
    evicted_before = 0
    rounds = 3

    for round_no in range(rounds):
        printed = append_until_killed(path, max_bytes, rng, tmp_path / "child.log")
        context = f"seed {seed}, round {round_no}"
        assert printed, context
        printed_ever |= set(printed)
        promised |= set(printed)

        assert footprint(path) <= max_bytes, f"a kill left the files over the bound ({context})"
        with DurableQueue(path, max_bytes=max_bytes) as q:
            assert q.recovered_from is None, context
            assert_database_is_sound(path)
            entries = read_all(q)
            stored = {e.seq for e in entries}
            stats = q.stats()
            assert stats.bytes == sum(len(e.payload) for e in entries) <= max_bytes
            assert stats.batches == len(entries)
            assert stats.evicted_batches >= evicted_before, context
            evicted_before = stats.evicted_batches
            # Eviction only ever removes a prefix: above the oldest survivor nothing is missing.
            missing = {s for s in promised if s >= min(stored)} - stored
            assert not missing, f"lost without being evicted: {sorted(missing)[:10]} ({context})"
            assert all(e.payload == payload_for(e.seq) for e in entries), context
            # Every batch ever appended is buffered, acked or counted as evicted. Up to one
            # append per kill committed without being printed.
            accounted = stats.batches + acked_total + stats.evicted_batches
            assert len(printed_ever) <= accounted <= len(printed_ever) + round_no + 1, context

            acked = rng.sample(sorted(stored), k=rng.randrange(len(stored) + 1))
            assert q.ack(acked) == len(acked)
            acked_total += len(acked)
            promised = stored - set(acked)  # what was promised and is not stored was evicted

    assert evicted_before > 0, "the byte bound was never reached; the test proved nothing"
