"""Behaviour of the durable queue as the uplink and the batcher see it."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from buffer import BufferError, BufferStats, DurableQueue, Entry, PayloadTooLargeError

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


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=env,
        check=False,
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "buffer" / "queue.db"


# -- appending and reopening -------------------------------------------------------------


def test_appended_entries_survive_reopen_oldest_first_with_payload_intact(path: Path) -> None:
    given: list[int] = []

    def make(seq: int) -> bytes:
        given.append(seq)
        return payload_for(seq, 300)

    before = time.time()
    with DurableQueue(path, max_bytes=1_000_000) as queue:
        returned = [queue.append(make) for _ in range(5)]
    after = time.time()

    assert returned == given
    with DurableQueue(path, max_bytes=1_000_000) as queue:
        entries = queue.read()
    assert [e.seq for e in entries] == returned
    assert [e.payload for e in entries] == [payload_for(s, 300) for s in returned]
    assert all(before <= e.created_at <= after for e in entries)
    assert [e.created_at for e in entries] == sorted(e.created_at for e in entries)


def test_seq_keeps_increasing_after_every_entry_was_acked_and_the_queue_reopened(
    path: Path,
) -> None:
    with DurableQueue(path, max_bytes=1_000_000) as queue:
        first = [queue.append(payload_for) for _ in range(3)]
        assert queue.ack(first) == 3
        assert queue.stats().batches == 0

    with DurableQueue(path, max_bytes=1_000_000) as queue:
        again = queue.append(payload_for)
        assert queue.stats().last_seq == again

    assert again > max(first)


def test_seq_keeps_increasing_after_evictions_and_reopen(path: Path) -> None:
    with DurableQueue(path, max_bytes=1000) as queue:
        seqs = [queue.append(lambda s: payload_for(s, 400)) for _ in range(10)]
        assert queue.stats().evicted_batches == 8
        queue.ack(seqs)

    with DurableQueue(path, max_bytes=1000) as queue:
        assert queue.append(payload_for) > max(seqs)


def test_failing_make_payload_stores_nothing_and_consumes_no_seq(path: Path) -> None:
    def explode(seq: int) -> bytes:
        raise RuntimeError("encoder broke")

    with DurableQueue(path, max_bytes=1000) as queue:
        first = queue.append(payload_for)
        with pytest.raises(RuntimeError, match="encoder broke"):
            queue.append(explode)
        with pytest.raises(TypeError, match="bytes"):
            queue.append(lambda seq: "not bytes")  # type: ignore[arg-type,return-value]
        assert queue.stats().batches == 1
        assert queue.append(payload_for) == first + 1


def test_closed_queue_refuses_every_call_and_close_is_idempotent(path: Path) -> None:
    queue = DurableQueue(path, max_bytes=1000)
    queue.close()
    queue.close()
    for call in (lambda: queue.append(payload_for), queue.read, lambda: queue.ack([1])):
        with pytest.raises(BufferError, match="closed"):
            call()


# -- the byte bound and eviction ---------------------------------------------------------


def test_appending_past_max_bytes_evicts_the_oldest_first_and_counts_them(path: Path) -> None:
    with DurableQueue(path, max_bytes=1000) as queue:
        seqs = [queue.append(lambda s: payload_for(s, 300)) for _ in range(3)]
        assert queue.stats().evicted_batches == 0

        newest = queue.append(lambda s: payload_for(s, 500))  # 900 + 500 > 1000: two must go

        assert [e.seq for e in queue.read()] == [seqs[2], newest]
        stats = queue.stats()
        assert (stats.batches, stats.bytes) == (2, 800)
        assert (stats.evicted_batches, stats.evicted_bytes) == (2, 600)


def test_eviction_counts_survive_reopen(path: Path) -> None:
    with DurableQueue(path, max_bytes=1000) as queue:
        for _ in range(7):
            queue.append(lambda s: payload_for(s, 300))
        counted = queue.stats()
    assert (counted.evicted_batches, counted.evicted_bytes) == (4, 1200)

    with DurableQueue(path, max_bytes=1000) as queue:
        queue.append(lambda s: payload_for(s, 300))
        reopened = queue.stats()
    assert (reopened.evicted_batches, reopened.evicted_bytes) == (5, 1500)


def test_payload_larger_than_max_bytes_is_refused_and_changes_nothing(path: Path) -> None:
    with DurableQueue(path, max_bytes=1000) as queue:
        kept = queue.append(lambda s: payload_for(s, 600))
        before = queue.stats()

        with pytest.raises(PayloadTooLargeError) as refused:
            queue.append(lambda s: payload_for(s, 1001))

        assert (refused.value.size, refused.value.max_bytes) == (1001, 1000)
        assert isinstance(refused.value, BufferError)
        assert queue.stats() == before
        assert [e.seq for e in queue.read()] == [kept]
        assert queue.append(payload_for) == kept + 1


def test_payload_of_exactly_max_bytes_fits_by_evicting_everything_else(path: Path) -> None:
    with DurableQueue(path, max_bytes=1000) as queue:
        queue.append(lambda s: payload_for(s, 10))
        queue.append(lambda s: payload_for(s, 1))
        whole = queue.append(lambda s: payload_for(s, 1000))
        assert [e.seq for e in queue.read()] == [whole]
        assert queue.stats().evicted_batches == 2


def test_lowering_max_bytes_evicts_the_oldest_at_open(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with DurableQueue(path, max_bytes=10_000) as queue:
        seqs = [queue.append(lambda s: payload_for(s, 400)) for _ in range(5)]

    with (
        caplog.at_level(logging.WARNING, logger="buffer"),
        DurableQueue(path, max_bytes=1000) as queue,
    ):
        assert [e.seq for e in queue.read()] == seqs[3:]
        assert queue.stats().bytes == 800
        assert queue.stats().evicted_batches == 3
    assert "evicted the oldest 3 batches" in caplog.text


# -- reading and acking ------------------------------------------------------------------


def test_ack_is_idempotent_and_ignores_unknown_seqs(path: Path) -> None:
    with DurableQueue(path, max_bytes=1_000_000) as queue:
        seqs = [queue.append(payload_for) for _ in range(4)]

        assert queue.ack([seqs[0], seqs[1], 10_000, -5, 0, 2**80]) == 2
        assert queue.ack([seqs[0], seqs[1]]) == 0
        assert queue.ack([]) == 0
        assert queue.ack(iter([seqs[2], seqs[2]])) == 1

        assert [e.seq for e in queue.read()] == [seqs[3]]


def test_read_after_seq_skips_older_entries_and_limit_caps_the_count(path: Path) -> None:
    with DurableQueue(path, max_bytes=1_000_000) as queue:
        seqs = [queue.append(payload_for) for _ in range(6)]
        queue.ack([seqs[3]])

        assert [e.seq for e in queue.read(after_seq=seqs[1])] == [seqs[2], seqs[4], seqs[5]]
        assert [e.seq for e in queue.read(limit=2)] == seqs[:2]
        assert [e.seq for e in queue.read(after_seq=seqs[2], limit=1)] == [seqs[4]]
        assert queue.read(after_seq=seqs[-1]) == []
        assert queue.read(after_seq=2**80) == []
        assert len(queue.read(after_seq=-7, limit=2**80)) == 5
        assert queue.read(limit=0) == []
        with pytest.raises(ValueError, match="limit"):
            queue.read(limit=-1)
        assert len(queue.read()) == 5, "read must not delete anything"


# -- stats ---------------------------------------------------------------------------------


def test_stats_track_appends_acks_and_evictions_and_match_a_reopen(path: Path) -> None:
    with DurableQueue(path, max_bytes=1000) as queue:
        assert queue.stats() == BufferStats(0, 0, None, 0, 0, 0)

        a = queue.append(lambda s: payload_for(s, 100))
        b = queue.append(lambda s: payload_for(s, 200))
        c = queue.append(lambda s: payload_for(s, 300))
        entries = {e.seq: e for e in queue.read()}
        assert queue.stats() == BufferStats(3, 600, entries[a].created_at, c, 0, 0)

        queue.ack([a])
        assert queue.stats() == BufferStats(2, 500, entries[b].created_at, c, 0, 0)

        d = queue.append(lambda s: payload_for(s, 600))  # 500 + 600 > 1000: b goes
        assert queue.stats() == BufferStats(2, 900, entries[c].created_at, d, 1, 200)
        in_memory = queue.stats()

    with DurableQueue(path, max_bytes=1000) as queue:
        assert queue.stats() == in_memory
        queue.ack([c, d])
        assert queue.stats() == BufferStats(0, 0, None, d, 1, 200)


# -- one process per buffer ----------------------------------------------------------------

OPEN_IN_CHILD = """
import sys
from buffer import BufferError, DurableQueue
try:
    DurableQueue(sys.argv[1], max_bytes=1000).close()
except BufferError as err:
    print(err)
    sys.exit(3)
print("opened")
"""


def test_a_second_process_is_refused_while_the_buffer_is_open(path: Path) -> None:
    with DurableQueue(path, max_bytes=1000):
        refused = run_python(OPEN_IN_CHILD, str(path))
    assert refused.returncode == 3, refused.stderr
    assert "already in use by another process" in refused.stdout
    assert f"pid {os.getpid()}" in refused.stdout

    after_close = run_python(OPEN_IN_CHILD, str(path))
    assert after_close.returncode == 0, after_close.stdout + after_close.stderr
    assert after_close.stdout.strip() == "opened"


def test_a_second_open_in_the_same_process_is_refused(path: Path) -> None:
    with DurableQueue(path, max_bytes=1000), pytest.raises(BufferError, match="already in use"):
        DurableQueue(path, max_bytes=1000)


async def test_one_worker_thread_serves_the_event_loop_and_stats_need_no_hop(path: Path) -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer") as worker:
            opening = functools.partial(DurableQueue, path, max_bytes=10_000)
            queue = await loop.run_in_executor(worker, opening)
            try:
                seqs = [
                    await loop.run_in_executor(worker, queue.append, payload_for) for _ in "abc"
                ]
                assert await loop.run_in_executor(worker, queue.ack, seqs[:1]) == 1
                entries = await loop.run_in_executor(worker, queue.read)
                assert [e.seq for e in entries] == seqs[1:]
                assert queue.stats().batches == 2  # on the loop thread, no executor hop
            finally:
                await loop.run_in_executor(worker, queue.close)


# -- damaged and foreign files ---------------------------------------------------------------


def test_garbage_file_is_kept_aside_and_a_fresh_queue_starts(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = os.urandom(8192)
    path.parent.mkdir(parents=True)
    path.write_bytes(garbage)

    with (
        caplog.at_level(logging.ERROR, logger="buffer"),
        DurableQueue(path, max_bytes=1000) as queue,
    ):
        assert queue.recovered_from is not None
        assert queue.stats().batches == 0
        seq = queue.append(payload_for)
        assert [e.seq for e in queue.read()] == [seq]

    kept = Path(queue.recovered_from)
    assert kept.name.startswith("queue.db.corrupt-")
    assert kept.read_bytes() == garbage, "the damaged file must be kept byte for byte"
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert str(kept) in caplog.text
    assert "not a database" in caplog.text


def test_seqs_after_quarantine_continue_above_the_last_seq_of_the_lost_file(path: Path) -> None:
    with DurableQueue(path, max_bytes=1_000_000) as queue:
        lost = [queue.append(payload_for) for _ in range(7)]
    path.write_bytes(b"\x00garbage" * 100)

    with DurableQueue(path, max_bytes=1_000_000) as queue:
        assert queue.recovered_from is not None
        assert queue.append(payload_for) == max(lost) + 1


def test_seqs_after_quarantine_stay_above_those_of_a_process_that_died_without_closing(
    path: Path,
) -> None:
    died = run_python(
        """
import os, sys
from buffer import DurableQueue
q = DurableQueue(sys.argv[1], max_bytes=10**6)
for _ in range(50):
    seq = q.append(lambda s: b"x" * 100)
print(seq, flush=True)
os._exit(0)  # no close(): like a SIGKILL after the last append
""",
        str(path),
    )
    assert died.returncode == 0, died.stderr
    last_seq = int(died.stdout)
    assert Path(f"{path}-wal").exists(), "the dead process should have left its WAL"
    with path.open("r+b") as f:
        f.write(b"this is not SQLite anymore")

    with DurableQueue(path, max_bytes=1_000_000) as queue:
        recovered = queue.recovered_from
        assert recovered is not None
        assert queue.append(payload_for) > last_seq

    assert Path(f"{recovered}-wal").exists(), "the WAL is kept aside with its database"


def test_damaged_page_inside_a_valid_database_is_detected_and_kept_aside(path: Path) -> None:
    with DurableQueue(path, max_bytes=1_000_000) as queue:
        for _ in range(40):
            queue.append(lambda s: payload_for(s, 3000))
    with path.open("r+b") as f:
        f.seek(4096)  # page 2: a b-tree root
        f.write(os.urandom(4096))

    with DurableQueue(path, max_bytes=1_000_000) as queue:
        assert queue.recovered_from is not None
        assert queue.stats().batches == 0
        assert queue.append(payload_for) == 41


def test_newer_format_version_is_refused_and_the_file_left_alone(path: Path) -> None:
    DurableQueue(path, max_bytes=1000).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    before = path.read_bytes()

    with pytest.raises(BufferError, match="format version 2, newer than"):
        DurableQueue(path, max_bytes=1000)

    assert path.read_bytes() == before
    assert not list(path.parent.glob("*.corrupt-*"))
    with pytest.raises(BufferError, match="newer"):  # not "in use": the lock was released
        DurableQueue(path, max_bytes=1000)


def test_an_unrelated_sqlite_database_is_refused_and_left_alone(path: Path) -> None:
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE inventory (device TEXT)")
    conn.commit()
    conn.close()

    with pytest.raises(BufferError, match="not a buffer"):
        DurableQueue(path, max_bytes=1000)

    conn = sqlite3.connect(path)
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("inventory",)]
    conn.close()


def test_invalid_max_bytes_is_refused(path: Path) -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_bytes"):
            DurableQueue(path, max_bytes=bad)  # type: ignore[arg-type]


# -- model-based: random appends, acks, reads and reopens against a dict ----------------------

MODEL_MAX_BYTES = 1000


class QueueAgainstModel(RuleBasedStateMachine):
    """The queue must behave like an ordered dict that drops its oldest items past 1000 bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="buffer-model-"))
        self.path = self.dir / "q.db"
        self.queue = DurableQueue(self.path, max_bytes=MODEL_MAX_BYTES)
        self.model: dict[int, bytes] = {}  # insertion order is seq order
        self.last_seq = 0
        self.evicted_batches = 0
        self.evicted_bytes = 0

    def teardown(self) -> None:
        self.queue.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(size=st.integers(min_value=0, max_value=MODEL_MAX_BYTES + 200))
    def append(self, size: int) -> None:
        if size > MODEL_MAX_BYTES:
            with pytest.raises(PayloadTooLargeError):
                self.queue.append(lambda s: payload_for(s, size))
            return
        seq = self.queue.append(lambda s: payload_for(s, size))
        assert seq > self.last_seq
        self.last_seq = seq
        while sum(map(len, self.model.values())) + size > MODEL_MAX_BYTES:
            oldest = next(iter(self.model))
            self.evicted_batches += 1
            self.evicted_bytes += len(self.model.pop(oldest))
        self.model[seq] = payload_for(seq, size)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        known = data.draw(st.lists(st.sampled_from(sorted(self.model)), max_size=5))
        unknown = data.draw(st.lists(st.integers(-3, self.last_seq + 3), max_size=3))
        expected = len(set(known + unknown) & self.model.keys())
        assert self.queue.ack(known + unknown) == expected
        for seq in known + unknown:
            self.model.pop(seq, None)

    @rule(after=st.integers(-1, 60), limit=st.integers(0, 8))
    def read(self, after: int, limit: int) -> None:
        expected = [(s, p) for s, p in self.model.items() if s > after][:limit]
        got = [(e.seq, e.payload) for e in self.queue.read(after_seq=after, limit=limit)]
        assert got == expected

    @rule()
    def reopen(self) -> None:
        self.queue.close()
        self.queue = DurableQueue(self.path, max_bytes=MODEL_MAX_BYTES)

    @invariant()
    def stats_match_the_model(self) -> None:
        stats = self.queue.stats()
        assert stats.batches == len(self.model)
        assert stats.bytes == sum(map(len, self.model.values())) <= MODEL_MAX_BYTES
        assert stats.last_seq == self.last_seq
        assert (stats.evicted_batches, stats.evicted_bytes) == (
            self.evicted_batches,
            self.evicted_bytes,
        )
        head = self.queue.read(limit=1)
        assert stats.oldest_created_at == (head[0].created_at if head else None)


QueueAgainstModel.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueMatchesAnInMemoryModel = QueueAgainstModel.TestCase


def test_a_wal_left_without_its_database_is_kept_aside_not_replayed(path: Path) -> None:
    died = run_python(
        """
import os, sys
from buffer import DurableQueue
q = DurableQueue(sys.argv[1], max_bytes=10**6)
for _ in range(20):
    seq = q.append(lambda s: b"x" * 100)
print(seq, flush=True)
os._exit(0)
""",
        str(path),
    )
    assert died.returncode == 0, died.stderr
    path.unlink()  # an operator "cleaning up", or a crash in the middle of a quarantine

    with DurableQueue(path, max_bytes=1_000_000) as queue:
        assert queue.recovered_from is not None
        assert Path(f"{queue.recovered_from}-wal").exists()
        assert queue.stats().batches == 0
        assert queue.append(payload_for) > int(died.stdout)
