"""Model-based test: random operation sequences against the real queue and a trivial model.

The model is an ordered dict of seq -> (created_at, payload) plus four counters. It
knows the eviction policy only as DESIGN.md states it (age: the longest prefix
created before ``now - max_age``; bytes: the shortest prefix whose removal makes the
rest fit), and nothing of SQLite. Limits are test-sized (1.5 KB, 100 s) so that byte
and age evictions happen in most sequences.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from buffer import DurableQueue, PayloadTooLargeError
from tests.buffer.helpers import FakeClock, payload_for, read_all

MAX_BYTES = 1500
MAX_AGE = 100.0
SIZES = st.one_of(st.integers(0, 700), st.integers(MAX_BYTES - 50, MAX_BYTES + 50))


class EncoderError(Exception):
    pass


def abandon(queue: DurableQueue) -> None:
    """Leave the queue as a killed process would: no checkpoint, no ``.seq`` update.

    The SQLite connection and the lock file descriptor are closed directly (the kernel
    does both for a dead process); the caller holds another connection open so that
    this close is not the last one and the WAL is neither checkpointed nor deleted.
    """
    conn, queue._conn = queue._conn, None
    assert conn is not None
    conn.close()
    os.close(queue._lock_fd)


class BufferModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="buffer-model-"))
        self.path = self.dir / "queue.db"
        self.clock = FakeClock()
        self.queue: DurableQueue | None = None
        self.synchronous: str = "full"
        self.model: dict[int, tuple[float, bytes]] = {}  # insertion order is seq order
        self.last_seq = 0  # the queue's high-water mark: the next append gets last_seq + 1
        self.handed_out = 0  # the highest seq any append ever returned
        self.evicted = [0, 0]  # batches, bytes
        self.evicted_by_age = [0, 0]
        self.cursor = 0  # the uplink's read position
        self.taken: set[int] = set()  # read by the uplink, not acked yet

    # -- the model -------------------------------------------------------------------------

    def model_bytes(self) -> int:
        return sum(len(payload) for _, payload in self.model.values())

    def model_evict(self, cutoff: float | None) -> int:
        """The documented policy: the age bound first, then the byte bound; oldest first."""
        count = 0
        while self.model and cutoff is not None and next(iter(self.model.values()))[0] < cutoff:
            size = len(self.model.pop(next(iter(self.model)))[1])
            self.evicted_by_age[0] += 1
            self.evicted_by_age[1] += size
            self.evicted[0] += 1
            self.evicted[1] += size
            count += 1
        while self.model_bytes() > MAX_BYTES:
            size = len(self.model.pop(next(iter(self.model)))[1])
            self.evicted[0] += 1
            self.evicted[1] += size
            count += 1
        return count

    def model_append(self, sizes: list[int]) -> list[int]:
        seqs = list(range(self.last_seq + 1, self.last_seq + 1 + len(sizes)))
        for seq, size in zip(seqs, sizes, strict=True):
            self.model[seq] = (self.clock.now, payload_for(seq, size))
        self.last_seq = seqs[-1]
        self.model_evict(self.clock.now - MAX_AGE)
        return seqs

    def open(self) -> None:
        self.queue = DurableQueue(
            self.path,
            max_bytes=MAX_BYTES,
            max_age=MAX_AGE,
            synchronous="normal" if self.synchronous == "normal" else "full",
            clock=self.clock,
        )
        assert self.queue.recovered_from is None
        self.model_evict(self.clock.now - MAX_AGE)  # the bounds apply at open
        self.cursor = 0

    def q(self) -> DurableQueue:
        assert self.queue is not None
        return self.queue

    def handed(self, seqs: list[int]) -> None:
        assert seqs[0] > self.handed_out, "a seq was handed out twice"
        assert seqs == sorted(set(seqs))
        self.handed_out = seqs[-1]

    # -- rules -----------------------------------------------------------------------------

    @initialize(synchronous=st.sampled_from(["full", "normal"]))
    def start(self, synchronous: str) -> None:
        self.synchronous = synchronous
        self.open()

    def teardown(self) -> None:
        if self.queue is not None:
            self.queue.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(size=SIZES)
    def append(self, size: int) -> None:
        if size > MAX_BYTES:
            with pytest.raises(PayloadTooLargeError):
                self.q().append(lambda s: payload_for(s, size))
            return
        seq = self.q().append(lambda s: payload_for(s, size))
        assert [seq] == self.model_append([size])
        self.handed([seq])

    @rule(sizes=st.lists(SIZES, max_size=6), fail_at=st.none() | st.integers(0, 5))
    def append_many(self, sizes: list[int], fail_at: int | None) -> None:
        def maker(i: int, size: int):  # type: ignore[no-untyped-def]
            def make(seq: int) -> bytes:
                if i == fail_at:
                    raise EncoderError
                return payload_for(seq, size)

            return make

        makers = [maker(i, size) for i, size in enumerate(sizes)]
        failures = [
            EncoderError if i == fail_at else PayloadTooLargeError
            for i, size in enumerate(sizes)
            if i == fail_at or size > MAX_BYTES
        ]
        if failures:  # the first payload that fails decides; nothing is stored
            with pytest.raises(failures[0]):
                self.q().append_many(makers)
        elif sizes:
            seqs = self.q().append_many(makers)
            assert seqs == self.model_append(sizes)
            self.handed(seqs)
        else:
            assert self.q().append_many(makers) == []

    @rule(limit=st.integers(1, 8))
    def take(self, limit: int) -> None:
        """What the uplink does: read a window after its cursor, publish, move the cursor."""
        got = self.q().read(after_seq=self.cursor, limit=limit)
        expected = [(s, p) for s, (_, p) in self.model.items() if s > self.cursor][:limit]
        assert [(e.seq, e.payload) for e in got] == expected
        if got:
            self.cursor = got[-1].seq
            self.taken.update(e.seq for e in got)

    @precondition(lambda self: self.taken)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        """PUBACKs for some of what was taken, some of it evicted meanwhile."""
        acked = data.draw(st.lists(st.sampled_from(sorted(self.taken)), unique=True))
        expected = len(set(acked) & self.model.keys())
        assert self.q().ack(acked) == expected
        for seq in acked:
            self.model.pop(seq, None)
        self.taken -= set(acked)

    @rule()
    def nack(self) -> None:
        """The connection dropped: everything not acked is read again from the start."""
        self.cursor = 0

    # Time moves in steps of 10 s against a 100 s bound, so entries exactly at the bound
    # are common.

    @rule(tens=st.integers(0, 12))
    def time_passes(self, tens: int) -> None:
        self.clock.now += 10 * tens

    @rule(tens=st.integers(1, 6))
    def clock_steps_back(self, tens: int) -> None:
        """NTP corrects the wall clock: later entries can be older than earlier ones."""
        self.clock.now -= 10 * tens

    @rule(tens=st.none() | st.integers(-5, 25))
    def evict_older_than(self, tens: int | None) -> None:
        now = self.clock.now if tens is None else self.clock.now + 10 * tens
        expected = self.model_evict(now - MAX_AGE)
        got = self.q().evict_older_than() if tens is None else self.q().evict_older_than(now)
        assert got == expected

    @rule()
    def restart(self) -> None:
        self.q().close()
        self.open()
        assert self.q().stats().last_seq == self.last_seq, "a clean close keeps the mark"

    @rule()
    def crash(self) -> None:
        witness = sqlite3.connect(self.path)  # keeps the WAL as a killed process leaves it
        try:
            witness.execute("SELECT count(*) FROM batches").fetchone()
            abandon(self.q())
            self.open()
        finally:
            witness.close()
        mark = self.q().stats().last_seq
        if self.synchronous == "full":
            assert mark == self.last_seq
        else:  # commits since the last fsync might have been lost: skip the whole lease
            assert mark > self.last_seq
        self.last_seq = mark

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def queue_holds_exactly_the_model(self) -> None:
        if self.queue is None:
            return
        entries = read_all(self.queue)
        assert [(e.seq, e.created_at, e.payload) for e in entries] == [
            (seq, created_at, payload) for seq, (created_at, payload) in self.model.items()
        ]

    @invariant()
    def stats_match_the_model(self) -> None:
        if self.queue is None:
            return
        stats = self.queue.stats()
        oldest = next(iter(self.model.values()))[0] if self.model else None
        assert (stats.batches, stats.bytes, stats.oldest_created_at, stats.last_seq) == (
            len(self.model),
            self.model_bytes(),
            oldest,
            self.last_seq,
        )
        assert stats.bytes <= MAX_BYTES
        assert [stats.evicted_batches, stats.evicted_bytes] == self.evicted
        assert [stats.evicted_by_age_batches, stats.evicted_by_age_bytes] == self.evicted_by_age


CI = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
BufferModel.TestCase.settings = CI
TestQueueMatchesAnInMemoryModel = BufferModel.TestCase


@pytest.mark.soak
@pytest.mark.timeout(1800)
class TestQueueMatchesAnInMemoryModelAtLength(BufferModel.TestCase):  # type: ignore[misc,valid-type]
    """``.ci/test -m soak tests/buffer/test_model.py``: many more and longer sequences."""

    settings = settings(CI, max_examples=2000, stateful_step_count=100)
