"""Model-based test: random operation sequences against the real queue and a trivial model.

The model is an ordered dict of seq -> (created_at, payload) plus four counters. It
knows the eviction policy only as DESIGN.md states it, and nothing of SQLite:

- the age bound, exactly: the longest prefix of entries created before
  ``now - max_age``, an entry stamped in the future counting as expired when an
  expired entry follows it;
- the byte bound, by its outcome only: it bounds the files on disk, page by page, so
  how many entries it takes is SQLite's business. After each operation the model
  drops as many of its oldest entries as the queue's byte-bound counter grew by, and
  checks their bytes, that they were taken only from a queue that was full, and that
  the files never exceed ``max_bytes``;
- seqs handed out before their batch is stored (``reserve``): the model keeps the
  reserved entries aside until ``append_reserved`` stores an in-order subset of them
  (the rest count as acknowledged from memory and are never stored); a reserved seq is
  never handed out again, whatever restart or crash comes between;
- bit rot, by its rule: a bit flipped on disk in a stored payload (while the gateway is
  off) makes that entry the one explained difference from the model until a read
  reaches it; then it is counted in ``corrupt_batches``/``corrupt_bytes`` and gone,
  never returned, and its neighbours are returned as before.

Limits are test-sized (512 KiB, 100 s) so that byte and age evictions happen in most
sequences; the clock moves in 10 s steps and jumps by a year both ways.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
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

from buffer import MIN_MAX_BYTES, BufferStats, DurableQueue, Entry, PayloadTooLargeError
from tests.buffer.helpers import FakeClock, flip_a_bit, footprint, payload_for, read_all

MAX_BYTES = MIN_MAX_BYTES
MAX_AGE = 100.0
YEAR = 365 * 86400.0
DATA_BYTES = 55 * 4096  # the data budget of MAX_BYTES: what a full queue holds, about
# Sizes: several per page, one to three pages, many pages, and "max"/"over": exactly
# the largest payload the queue accepts, and one byte more.
SIZES = st.one_of(
    st.integers(0, 700),
    st.integers(3_000, 9_000),
    st.integers(20_000, 60_000),
    st.sampled_from(["max", "over"]),
)
Size = int | str


class EncoderError(Exception):
    pass


def unchanged_but_disk(stats: BufferStats) -> BufferStats:
    """The snapshot without ``disk_bytes``, which a lease written to ``.seq`` changes."""
    return dataclasses.replace(stats, disk_bytes=0)


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
        self.handed_out = 0  # the highest seq any append or reserve ever returned
        self.reserved: list[Entry] = []  # handed out by reserve, not stored (yet), in order
        self.reserved_since_open = False  # a lease is in meta: a crash skips it
        self.never_stored: set[int] = set()  # reserved seqs acknowledged from memory
        self.evicted = [0, 0]  # batches, bytes
        self.evicted_by_age = [0, 0]
        self.corrupt = [0, 0]  # batches, bytes: removed by a read because their CRC failed
        self.rotten: set[int] = set()  # flipped on disk, not yet reached by a read
        self.cursor = 0  # the uplink's read position
        self.taken: set[int] = set()  # read by the uplink, not acked yet

    # -- the model -------------------------------------------------------------------------

    def model_bytes(self) -> int:
        return sum(len(payload) for _, payload in self.model.values())

    def model_evict_by_age(self, now: float) -> int:
        """The documented age rule: the expired prefix, future stamps before an expired
        entry included; the walk stops at the first entry stamped in [cutoff, now]."""
        cutoff = now - MAX_AGE
        expired = 0
        for position, (created_at, _) in enumerate(self.model.values()):
            if created_at < cutoff:
                expired = position + 1
            elif created_at <= now:
                break
        for seq in list(self.model)[:expired]:
            size = len(self.model.pop(seq)[1])
            self.evicted_by_age[0] += 1
            self.evicted_by_age[1] += size
            self.evicted[0] += 1
            self.evicted[1] += size
        return expired

    def settle(
        self,
        before: BufferStats,
        age_at: float | None,
        *,
        bytes_may_evict: bool,
        new: dict[int, tuple[float, bytes]] | None = None,
    ) -> None:
        """Apply to the model what the operation evicted: by age, exactly as documented,
        to the entries as they were before the ``new`` ones (appended or stored after a
        reserve); by the byte bound, as many of the oldest entries as the queue says it
        took, the entries stored before first, then the group's own first members."""
        after = self.q().stats()
        by_age = self.model_evict_by_age(age_at) if age_at is not None else 0
        assert after.evicted_by_age_batches - before.evicted_by_age_batches == by_age
        by_bytes = (after.evicted_batches - before.evicted_batches) - by_age
        assert by_bytes >= 0
        if not bytes_may_evict:
            assert by_bytes == 0, "this operation must not evict for space"
        new = new or {}
        order = [*self.model, *new]  # what the byte bound takes first
        self.model.update(new)
        popped = [self.model.pop(seq)[1] for seq in order[:by_bytes]]
        self.model = dict(sorted(self.model.items()))  # a reserved seq may land in front
        self.evicted[0] += by_bytes
        self.evicted[1] += sum(map(len, popped))
        if popped:  # only a full queue evicts for space: what is left plus the last taken
            left = self.model_bytes() + 100 * len(self.model)
            assert left + len(popped[-1]) + 100 > DATA_BYTES // 4, "evicted from a roomy queue"

    def open(self) -> None:
        (evicted, evicted_bytes), (by_age, by_age_bytes) = self.evicted, self.evicted_by_age
        before = BufferStats(0, 0, None, 0, evicted, evicted_bytes, by_age, by_age_bytes)
        self.queue = DurableQueue(
            self.path,
            max_bytes=MAX_BYTES,
            max_age=MAX_AGE,
            synchronous="normal" if self.synchronous == "normal" else "full",
            clock=self.clock,
        )
        assert self.queue.recovered_from is None
        self.settle(before, self.clock.now, bytes_may_evict=False)  # the bounds apply at open
        self.cursor = 0
        self.never_stored.update(e.seq for e in self.reserved)  # lost with the process
        self.reserved = []
        self.reserved_since_open = False

    def q(self) -> DurableQueue:
        assert self.queue is not None
        return self.queue

    def handed(self, seqs: list[int]) -> None:
        """Seqs an append or a reserve returned: next to the mark, above all before them."""
        assert seqs == list(range(self.last_seq + 1, self.last_seq + 1 + len(seqs)))
        assert seqs[0] > self.handed_out, "a seq was handed out twice"
        self.handed_out = self.last_seq = seqs[-1]

    def size(self, spec: Size) -> int:
        if spec == "max":
            return self.q().max_payload
        if spec == "over":
            return self.q().max_payload + 1
        assert isinstance(spec, int)
        return spec

    def makers(
        self, specs: list[Size], fail_at: int | None
    ) -> tuple[list[int], list[Callable[[int], bytes]], list[type[Exception]]]:
        """Sizes, encoders (the one at ``fail_at`` raises) and the errors expected of a
        group: the first decides, and then nothing is stored or reserved."""
        sizes = [self.size(spec) for spec in specs]

        def maker(i: int, size: int) -> Callable[[int], bytes]:
            def make(seq: int) -> bytes:
                if i == fail_at:
                    raise EncoderError
                return payload_for(seq, size)

            return make

        failures: list[type[Exception]] = [
            EncoderError if i == fail_at else PayloadTooLargeError
            for i, size in enumerate(sizes)
            if i == fail_at or size > self.q().max_payload
        ]
        return sizes, [maker(i, size) for i, size in enumerate(sizes)], failures

    # -- rules -----------------------------------------------------------------------------

    @initialize(synchronous=st.sampled_from(["full", "normal"]))
    def start(self, synchronous: str) -> None:
        self.synchronous = synchronous
        self.open()

    def teardown(self) -> None:
        if self.queue is not None:
            self.queue.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(spec=SIZES)
    def append(self, spec: Size) -> None:
        size = self.size(spec)
        before = self.q().stats()
        if size > self.q().max_payload:
            with pytest.raises(PayloadTooLargeError):
                self.q().append(lambda s: payload_for(s, size))
            assert self.q().stats() == before
            return
        seq = self.q().append(lambda s: payload_for(s, size))
        self.handed([seq])
        new = {seq: (self.clock.now, payload_for(seq, size))}
        self.settle(before, self.clock.now, bytes_may_evict=True, new=new)

    @rule(specs=st.lists(SIZES, max_size=8), fail_at=st.none() | st.integers(0, 7))
    def append_many(self, specs: list[Size], fail_at: int | None) -> None:
        sizes, makers, failures = self.makers(specs, fail_at)
        before = self.q().stats()
        if failures:  # the first payload that fails decides; nothing is stored
            with pytest.raises(failures[0]):
                self.q().append_many(makers)
            assert self.q().stats() == before
        elif sizes:
            seqs = self.q().append_many(makers)
            self.handed(seqs)
            new = {s: (self.clock.now, payload_for(s, n)) for s, n in zip(seqs, sizes, strict=True)}
            self.settle(before, self.clock.now, bytes_may_evict=True, new=new)
        else:
            assert self.q().append_many(makers) == []

    @rule(specs=st.lists(SIZES, max_size=4), fail_at=st.none() | st.integers(0, 3))
    def reserve(self, specs: list[Size], fail_at: int | None) -> None:
        """Publish first: seqs handed out for batches kept in memory, nothing stored."""
        sizes, makers, failures = self.makers(specs, fail_at)
        before = unchanged_but_disk(self.q().stats())
        if failures:
            with pytest.raises(failures[0]):
                self.q().reserve(makers)
            assert unchanged_but_disk(self.q().stats()) == before
            return
        entries = self.q().reserve(makers)
        expected = [payload_for(self.last_seq + 1 + i, n) for i, n in enumerate(sizes)]
        assert [e.payload for e in entries] == expected
        assert all(e.created_at == self.clock.now for e in entries)
        if entries:
            self.handed([e.seq for e in entries])
            self.reserved += entries
            self.reserved_since_open = True
        after = unchanged_but_disk(self.q().stats())
        assert after == dataclasses.replace(before, last_seq=self.last_seq), "nothing stored"

    @precondition(lambda self: self.reserved)
    @rule(data=st.data())
    def append_reserved(self, data: st.DataObject) -> None:
        """Not acknowledged in time: store some of what is in memory, in seq order; the
        rest was acknowledged from memory and is never stored."""
        keep = data.draw(st.lists(st.booleans(), min_size=len(self.reserved)))
        chosen = [e for e, kept in zip(self.reserved, keep, strict=False) if kept]
        self.never_stored.update(e.seq for e in self.reserved if e not in chosen)
        self.reserved = []
        before = self.q().stats()
        self.q().append_reserved(chosen)
        if not chosen:
            assert self.q().stats() == before
            return
        new = {e.seq: (e.created_at, e.payload) for e in chosen}
        self.settle(before, self.clock.now, bytes_may_evict=True, new=new)

    @rule(limit=st.integers(1, 8))
    def take(self, limit: int) -> None:
        """What the uplink does: read a window after its cursor, publish, move the cursor."""
        got = self.q().read(after_seq=self.cursor, limit=limit)
        expected = [(s, p) for s, (_, p) in self.model.items() if s > self.cursor][:limit]
        assert [(e.seq, e.payload) for e in got] == expected
        if got:
            self.cursor = got[-1].seq
            self.taken.update(e.seq for e in got)

    @precondition(lambda self: self.taken or self.never_stored)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        """PUBACKs for some of what was taken, some of it evicted meanwhile, and for
        reserved seqs never stored (ignored)."""
        ackable = sorted(self.taken | self.never_stored)
        acked = data.draw(st.lists(st.sampled_from(ackable), unique=True))
        expected = len(set(acked) & self.model.keys())
        before = self.q().stats()
        assert self.q().ack(acked) == expected
        for seq in acked:
            self.model.pop(seq, None)
        self.taken -= set(acked)
        self.never_stored -= set(acked)
        self.settle(before, None, bytes_may_evict=False)

    @rule()
    def nack(self) -> None:
        """The connection dropped: everything not acked is read again from the start."""
        self.cursor = 0

    # Time moves in steps of 10 s against a 100 s bound, so entries exactly at the bound
    # are common; and by a year both ways, as NTP steps the clock of a Pi without an RTC.

    @rule(tens=st.integers(0, 12))
    def time_passes(self, tens: int) -> None:
        self.clock.now += 10 * tens

    @rule(tens=st.integers(1, 6))
    def clock_steps_back(self, tens: int) -> None:
        """NTP corrects the wall clock: later entries can be older than earlier ones."""
        self.clock.now -= 10 * tens

    @rule(years=st.sampled_from([-1, 1]))
    def clock_jumps_a_year(self, years: int) -> None:
        self.clock.now += years * YEAR

    @rule(data=st.data(), delta=st.sampled_from([-YEAR, -30.0, 30.0, YEAR]))
    def shift_created_at(self, data: st.DataObject, delta: float) -> None:
        """The gateway saw the clock step: entries of this boot get the step added, in
        the queue and in memory."""
        after = data.draw(st.sampled_from([0, *self.model, self.last_seq]))
        before = self.q().stats()
        shifted = [seq for seq in self.model if seq > after]
        assert self.q().shift_created_at(after, delta) == len(shifted)
        for seq in shifted:
            created_at, payload = self.model[seq]
            self.model[seq] = (created_at + delta, payload)
        self.reserved = [
            dataclasses.replace(e, created_at=e.created_at + delta) if e.seq > after else e
            for e in self.reserved
        ]
        self.settle(before, None, bytes_may_evict=True)  # rewritten rows may need room

    @rule(tens=st.none() | st.integers(-5, 25))
    def evict_older_than(self, tens: int | None) -> None:
        now = self.clock.now if tens is None else self.clock.now + 10 * tens
        before = self.q().stats()
        expected = len(self.model)
        got = self.q().evict_older_than() if tens is None else self.q().evict_older_than(now)
        self.settle(before, now, bytes_may_evict=False)
        assert got == expected - len(self.model)

    @rule()
    def sync(self) -> None:
        self.q().sync()

    @rule()
    def restart(self) -> None:
        """A clean stop: seqs continue right after the last one handed out, reserved or
        stored (what is still reserved is lost here; the gateway writes it first)."""
        self.q().close()
        self.open()
        assert self.q().stats().last_seq == self.last_seq, "a clean close keeps the mark"

    @precondition(lambda self: any(len(p) >= 16 for _, p in self.model.values()))
    @rule(data=st.data())
    def bits_rot_while_stopped(self, data: st.DataObject) -> None:
        """The card flips a bit in one to three stored payloads while the gateway is off."""
        candidates = [seq for seq, (_, payload) in self.model.items() if len(payload) >= 16]
        seqs = data.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3, unique=True))
        self.q().close()
        for seq in seqs:
            flip_a_bit(self.path, self.model[seq][1])
        self.rotten.update(seqs)
        self.open()  # the bounds may evict a rotten entry at open: then it is just evicted
        assert self.q().stats().last_seq == self.last_seq

    @rule()
    def crash(self) -> None:
        """SIGKILL: every seq handed out after it is above every seq handed out before
        (``handed``), reserved ones never stored included."""
        reserved = self.reserved_since_open  # (open() forgets it)
        witness = sqlite3.connect(self.path)  # keeps the WAL as a killed process leaves it
        try:
            witness.execute("SELECT count(*) FROM batches").fetchall()  # no read left open
            abandon(self.q())
            self.open()
        finally:
            witness.close()
        mark = self.q().stats().last_seq
        if self.synchronous == "full" and not reserved:
            assert mark == self.last_seq
        else:  # commits since the last fsync, or seqs reserved: skip the whole lease
            assert mark > self.last_seq
        self.last_seq = mark

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def queue_holds_exactly_the_model(self) -> None:
        """Reading everything returns the model but its rotten entries, which this read
        reaches, counts and removes."""
        if self.queue is None:
            return
        entries = read_all(self.queue)
        assert [(e.seq, e.created_at, e.payload) for e in entries] == [
            (seq, created_at, payload)
            for seq, (created_at, payload) in self.model.items()
            if seq not in self.rotten
        ]
        for seq in self.rotten & self.model.keys():
            self.corrupt[0] += 1
            self.corrupt[1] += len(self.model.pop(seq)[1])
        self.rotten.clear()

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
        assert [stats.evicted_batches, stats.evicted_bytes] == self.evicted
        assert [stats.evicted_by_age_batches, stats.evicted_by_age_bytes] == self.evicted_by_age
        assert [stats.corrupt_batches, stats.corrupt_bytes] == self.corrupt
        age = stats.oldest_age(self.clock.now)
        assert age is None or age >= 0

    @invariant()
    def the_files_fit_in_max_bytes(self) -> None:
        if self.queue is None:
            return
        assert footprint(self.path) <= MAX_BYTES
        assert self.queue.stats().disk_bytes == footprint(self.path)


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
