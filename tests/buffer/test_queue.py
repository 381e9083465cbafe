"""Behaviour of the durable queue as the uplink and the batcher see it."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from buffer import (
    MIN_MAX_BYTES,
    BufferError,
    DurableQueue,
    ForeignFileError,
    NewerFormatError,
    NotABufferError,
    PayloadTooLargeError,
)
from tests.buffer.helpers import (
    FakeClock,
    counters,
    footprint,
    payload_for,
    read_all,
    run_python,
)

SMALL = MIN_MAX_BYTES  # 512 KiB: 55 pages of data; a 30 KB payload takes about 7.3 of them


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
    with DurableQueue(path, max_bytes=SMALL) as queue:
        seqs = [queue.append(lambda s: payload_for(s, 40_000)) for _ in range(10)]
        assert queue.stats().evicted_batches > 0
        queue.ack(seqs)

    with DurableQueue(path, max_bytes=SMALL) as queue:
        assert queue.append(payload_for) > max(seqs)


def test_failing_make_payload_stores_nothing_and_consumes_no_seq(path: Path) -> None:
    def explode(seq: int) -> bytes:
        raise RuntimeError("encoder broke")

    with DurableQueue(path, max_bytes=SMALL) as queue:
        first = queue.append(payload_for)
        with pytest.raises(RuntimeError, match="encoder broke"):
            queue.append(explode)
        with pytest.raises(TypeError, match="bytes"):
            queue.append(lambda seq: "not bytes")  # type: ignore[arg-type,return-value]
        assert queue.stats().batches == 1
        assert queue.append(payload_for) == first + 1


def test_closed_queue_refuses_every_call_and_close_is_idempotent(path: Path) -> None:
    queue = DurableQueue(path, max_bytes=SMALL, max_age=60)
    queue.close()
    queue.close()
    for call in (
        lambda: queue.append(payload_for),
        queue.read,
        lambda: queue.ack([1]),
        queue.evict_older_than,
        lambda: queue.shift_created_at(0, 1.0),
        queue.sync,
    ):
        with pytest.raises(BufferError, match="closed"):
            call()


# -- the byte bound and eviction ---------------------------------------------------------


def test_appending_past_max_bytes_evicts_the_oldest_first_and_counts_them(path: Path) -> None:
    with DurableQueue(path, max_bytes=SMALL) as queue:
        seqs = []
        while queue.stats().evicted_batches == 0:
            seqs.append(queue.append(lambda s: payload_for(s, 30_000)))
            assert len(seqs) < 50, "the byte bound never evicted"

        kept = read_all(queue)
        stats = queue.stats()
        lost = len(seqs) - len(kept)
        assert [e.seq for e in kept] == seqs[lost:], "the newest are kept, oldest first"
        assert (stats.evicted_batches, stats.evicted_bytes) == (lost, lost * 30_000)
        assert (stats.batches, stats.bytes) == (len(kept), len(kept) * 30_000)
        assert footprint(path) <= SMALL


def test_eviction_counts_survive_reopen(path: Path) -> None:
    with DurableQueue(path, max_bytes=SMALL) as queue:
        for _ in range(12):
            queue.append(lambda s: payload_for(s, 30_000))
        counted = queue.stats()
    assert counted.evicted_batches > 0

    with DurableQueue(path, max_bytes=SMALL) as queue:
        assert counters(queue.stats()) == counters(counted)
        queue.append(lambda s: payload_for(s, 30_000))
        reopened = queue.stats()
    assert reopened.evicted_batches == counted.evicted_batches + 1
    assert reopened.evicted_bytes == counted.evicted_bytes + 30_000


def test_payload_larger_than_max_payload_is_refused_and_changes_nothing(path: Path) -> None:
    with DurableQueue(path, max_bytes=SMALL) as queue:
        kept = queue.append(lambda s: payload_for(s, 600))
        before = queue.stats()
        too_large = queue.max_payload + 1
        assert 100_000 < too_large < SMALL

        with pytest.raises(PayloadTooLargeError) as refused:
            queue.append(lambda s: payload_for(s, too_large))

        error = refused.value
        assert (error.size, error.max_bytes, error.max_payload) == (too_large, SMALL, too_large - 1)
        assert isinstance(error, BufferError)
        assert queue.stats() == before
        assert [e.seq for e in queue.read()] == [kept]
        assert queue.append(payload_for) == kept + 1


def test_payload_of_max_payload_fits_by_evicting_what_is_in_its_way(path: Path) -> None:
    with DurableQueue(path, max_bytes=SMALL) as queue:
        older = [queue.append(lambda s: payload_for(s, 30_000)) for _ in range(5)]
        whole = queue.append(lambda s: payload_for(s, queue.max_payload))
        kept = [e.seq for e in queue.read()]
        assert kept[-1] == whole
        assert kept[:-1] == older[len(older) - len(kept) + 1 :], "what remains is the newest"
        assert queue.stats().evicted_batches == len(older) - len(kept) + 1 > 0
        assert footprint(path) <= SMALL


def test_lowering_max_bytes_evicts_the_oldest_and_shrinks_the_files_at_open(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with DurableQueue(path, max_bytes=4_000_000) as queue:
        seqs = [queue.append(lambda s: payload_for(s, 8400)) for _ in range(300)]
    assert footprint(path) > 2_000_000

    with (
        caplog.at_level(logging.WARNING, logger="buffer"),
        DurableQueue(path, max_bytes=1_000_000) as queue,
    ):
        kept = [e.seq for e in read_all(queue)]
        assert kept == seqs[len(seqs) - len(kept) :]
        assert queue.stats().evicted_batches == len(seqs) - len(kept) > 200
        assert footprint(path) <= 1_000_000
        assert queue.stats().disk_bytes == footprint(path)
    assert "evicting the oldest batches" in caplog.text
    assert "compacted from" in caplog.text


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
    with DurableQueue(path, max_bytes=SMALL) as queue:
        assert counters(queue.stats()) == (0, 0, None, 0, 0, 0, 0, 0)

        a = queue.append(lambda s: payload_for(s, 100))
        b = queue.append(lambda s: payload_for(s, 200))
        c = queue.append(lambda s: payload_for(s, 300))
        entries = {e.seq: e for e in queue.read()}
        assert counters(queue.stats()) == (3, 600, entries[a].created_at, c, 0, 0, 0, 0)

        queue.ack([a])
        assert counters(queue.stats()) == (2, 500, entries[b].created_at, c, 0, 0, 0, 0)

        while queue.stats().evicted_batches < 2:  # b and c go, oldest first
            d = queue.append(lambda s: payload_for(s, 30_000))
        stats = queue.stats()
        assert stats.evicted_bytes == 500 + 30_000 * (stats.evicted_batches - 2)
        assert stats.last_seq == d
        assert stats.bytes == 30_000 * stats.batches
        assert stats.disk_bytes == footprint(path)
        in_memory = queue.stats()

    with DurableQueue(path, max_bytes=SMALL) as queue:
        assert counters(queue.stats()) == counters(in_memory)
        queue.ack(e.seq for e in queue.read(limit=1000))
        assert counters(queue.stats())[:2] == (0, 0)
        assert queue.stats().last_seq == d


# -- one process per buffer ----------------------------------------------------------------

OPEN_IN_CHILD = """
import sys
from buffer import BufferError, DurableQueue
try:
    DurableQueue(sys.argv[1], max_bytes=600_000).close()
except BufferError as err:
    print(err)
    sys.exit(3)
print("opened")
"""


def test_a_second_process_is_refused_while_the_buffer_is_open(path: Path) -> None:
    with DurableQueue(path, max_bytes=SMALL):
        refused = run_python(OPEN_IN_CHILD, str(path))
    assert refused.returncode == 3, refused.stderr
    assert "already in use by another process" in refused.stdout
    assert f"pid {os.getpid()}" in refused.stdout

    after_close = run_python(OPEN_IN_CHILD, str(path))
    assert after_close.returncode == 0, after_close.stdout + after_close.stderr
    assert after_close.stdout.strip() == "opened"


def test_a_second_open_in_the_same_process_is_refused(path: Path) -> None:
    with DurableQueue(path, max_bytes=SMALL), pytest.raises(BufferError, match="already in use"):
        DurableQueue(path, max_bytes=SMALL)


async def test_one_worker_thread_serves_the_event_loop_and_stats_need_no_hop(path: Path) -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer") as worker:
            opening = functools.partial(DurableQueue, path, max_bytes=SMALL)
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


def test_newer_format_version_is_refused_and_the_file_left_alone(path: Path) -> None:
    DurableQueue(path, max_bytes=SMALL).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    before = path.read_bytes()

    with pytest.raises(NewerFormatError, match="format version 3, newer than the 2") as refused:
        DurableQueue(path, max_bytes=SMALL)

    assert isinstance(refused.value, ForeignFileError), "ours: the gateway may move it aside"
    assert path.read_bytes() == before
    assert not list(path.parent.glob("*.corrupt-*"))
    with pytest.raises(NewerFormatError):  # not "in use": the lock was released
        DurableQueue(path, max_bytes=SMALL)


def test_an_unrelated_sqlite_database_is_refused_and_nothing_is_created_beside_it(
    path: Path,
) -> None:
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")  # the kind that gets -wal and -shm files
    conn.execute("CREATE TABLE inventory (device TEXT)")
    conn.commit()
    conn.close()
    before = path.read_bytes()

    with pytest.raises(NotABufferError, match="not a buffer") as refused:
        DurableQueue(path, max_bytes=SMALL)

    assert not isinstance(refused.value, ForeignFileError), "not ours: never to be moved"
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["queue.db"]


def test_invalid_max_bytes_is_refused(path: Path) -> None:
    for bad in (0, -1, 1.5, True, 1000, MIN_MAX_BYTES - 1):
        with pytest.raises(ValueError, match="max_bytes"):
            DurableQueue(path, max_bytes=bad)  # type: ignore[arg-type]
    assert not path.parent.exists()


# -- the age bound -----------------------------------------------------------------------------


def test_entries_older_than_max_age_are_evicted_oldest_first_and_counted_by_cause(
    path: Path,
) -> None:
    clock = FakeClock()
    with DurableQueue(path, max_bytes=SMALL, max_age=60, clock=clock) as queue:
        seqs = []
        for size in (100, 200, 300):
            seqs.append(queue.append(lambda s, size=size: payload_for(s, size)))
            clock.now += 30  # created at 0, 30 and 60 s

        assert queue.evict_older_than(now=clock.now) == 1  # 90 s: only the first is > 60 s old
        assert [e.seq for e in queue.read()] == seqs[1:]
        clock.now += 15
        assert queue.evict_older_than() == 1  # the clock by default: 105 s, cutoff 45 s
        assert queue.evict_older_than() == 0

        stats = queue.stats()
        assert (stats.batches, stats.bytes, stats.oldest_created_at) == (1, 300, 1_000_060.0)
        assert (stats.evicted_batches, stats.evicted_bytes) == (2, 300)
        assert (stats.evicted_by_age_batches, stats.evicted_by_age_bytes) == (2, 300)


def test_append_evicts_expired_entries_in_its_own_transaction(path: Path) -> None:
    clock = FakeClock()
    with DurableQueue(path, max_bytes=SMALL, max_age=60, clock=clock) as queue:
        old = queue.append(payload_for)
        clock.now += 61
        new = queue.append(payload_for)

        assert [e.seq for e in queue.read()] == [new]
        assert queue.stats().evicted_by_age_batches == 1
        assert old < new


def test_age_eviction_stops_at_the_first_young_entry_when_the_clock_stepped_back(
    path: Path,
) -> None:
    clock = FakeClock()
    with DurableQueue(path, max_bytes=SMALL, max_age=200, clock=clock) as queue:
        stamps = (1000.0, 1100.0, 900.0, 1000.0)  # NTP set the clock back after the second
        seqs = []
        for stamp in stamps:
            clock.now = stamp
            seqs.append(queue.append(payload_for))

        assert queue.evict_older_than(now=1210.0) == 1  # cutoff 1010: 900 waits behind 1100
        assert [e.seq for e in queue.read()] == seqs[1:]
        assert queue.evict_older_than(now=1310.0) == 3  # cutoff 1110: everything has expired


def test_an_append_that_evicts_for_age_and_for_bytes_removes_one_prefix_only(
    path: Path,
) -> None:
    clock = FakeClock()
    with DurableQueue(path, max_bytes=SMALL, max_age=100, clock=clock) as queue:
        seqs = []
        for stamp in (1000.0, 1090.0, 950.0):  # the clock stepped back before the third
            clock.now = stamp
            seqs.append(queue.append(lambda s: payload_for(s, 64_000)))  # 16 of 55 pages each
        clock.now = 1150.0  # cutoff 1050: the first and third have expired, not the second
        newest = queue.append(lambda s: payload_for(s, 100_000))  # 25 pages: one more must go

        # First by age (the first), then by bytes (the second); the third, behind a young
        # entry, waits for its turn although it is old enough.
        assert [e.seq for e in queue.read()] == [seqs[2], newest]
        stats = queue.stats()
        assert (stats.evicted_batches, stats.evicted_by_age_batches) == (2, 1)


def test_byte_and_age_evictions_are_counted_apart_and_survive_reopen(path: Path) -> None:
    clock = FakeClock()
    with DurableQueue(path, max_bytes=SMALL, max_age=60, clock=clock) as queue:
        for _ in range(4):
            queue.append(lambda s: payload_for(s, 64_000))  # the byte bound drops the first
        clock.now += 61
        queue.append(lambda s: payload_for(s, 100))  # the age bound drops the other three
        counted = queue.stats()
    assert (counted.evicted_batches, counted.evicted_bytes) == (4, 4 * 64_000)
    assert (counted.evicted_by_age_batches, counted.evicted_by_age_bytes) == (3, 3 * 64_000)

    with DurableQueue(path, max_bytes=SMALL, max_age=60, clock=clock) as queue:
        assert counters(queue.stats()) == counters(counted)


def test_a_backlog_that_expired_while_the_gateway_was_off_is_evicted_at_open(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    with DurableQueue(path, max_bytes=SMALL, clock=clock) as queue:
        seqs = [queue.append(payload_for) for _ in range(3)]
        clock.now += 3600
        fresh = queue.append(payload_for)

    with (
        caplog.at_level(logging.WARNING, logger="buffer"),
        DurableQueue(path, max_bytes=SMALL, max_age=600, clock=clock) as queue,
    ):
        assert [e.seq for e in queue.read()] == [fresh]
        assert queue.stats().evicted_by_age_batches == len(seqs)
    started = caplog.records[0].getMessage()
    assert "older than max_age (600 s)" in started
    assert f"3 batches (300 bytes), seqs {seqs[0]}-{seqs[-1]}" in started


def test_without_max_age_nothing_is_evicted_for_its_age(path: Path) -> None:
    clock = FakeClock()
    with DurableQueue(path, max_bytes=SMALL, clock=clock) as queue:
        queue.append(payload_for)
        clock.now += 10**9
        queue.append(payload_for)
        assert queue.evict_older_than() == 0
        assert queue.stats().batches == 2


def test_invalid_max_age_is_refused(path: Path) -> None:
    for bad in (0, -1, float("nan"), float("inf"), True, "60"):
        with pytest.raises(ValueError, match="max_age"):
            DurableQueue(path, max_bytes=SMALL, max_age=bad)  # type: ignore[arg-type]


# -- group commit --------------------------------------------------------------------------------


def test_append_many_stores_consecutive_seqs_in_one_transaction(path: Path) -> None:
    with DurableQueue(path, max_bytes=SMALL) as queue:
        first = queue.append(payload_for)
        statements: list[str] = []
        queue._conn.set_trace_callback(statements.append)  # type: ignore[union-attr]
        seqs = queue.append_many([payload_for] * 10)
        queue._conn.set_trace_callback(None)  # type: ignore[union-attr]

        assert seqs == list(range(first + 1, first + 11))
        assert statements.count("COMMIT") == 1
        entries = queue.read()
        assert [(e.seq, e.payload) for e in entries[1:]] == [(s, payload_for(s)) for s in seqs]
        assert len({e.created_at for e in entries[1:]}) == 1
        assert queue.stats().last_seq == seqs[-1]
        assert queue.append_many([]) == []

    with DurableQueue(path, max_bytes=SMALL) as queue:
        assert [e.seq for e in queue.read()] == [first, *seqs]


def test_append_many_stores_nothing_if_any_payload_fails(path: Path) -> None:
    def explode(seq: int) -> bytes:
        raise RuntimeError("encoder broke")

    with DurableQueue(path, max_bytes=SMALL) as queue:
        first = queue.append(payload_for)
        before = queue.stats()
        with pytest.raises(RuntimeError, match="encoder broke"):
            queue.append_many([payload_for, explode, payload_for])
        with pytest.raises(PayloadTooLargeError):
            queue.append_many([payload_for, lambda s: payload_for(s, queue.max_payload + 1)])
        with pytest.raises(TypeError, match="bytes"):
            queue.append_many([payload_for, lambda s: bytearray(10)])  # type: ignore[list-item]

        assert queue.stats() == before
        assert [e.seq for e in queue.read()] == [first]
        assert queue.append_many([payload_for, payload_for]) == [first + 1, first + 2]


def test_a_group_larger_than_the_buffer_keeps_what_the_same_appends_one_by_one_keep(
    tmp_path: Path,
) -> None:
    sizes = [30_000, 0, 40_000, 25_000, 60_000, 0, 100, 30_000, 35_000, 50_000] * 2
    group = [lambda s, n=n: payload_for(s, n) for n in sizes]
    with DurableQueue(tmp_path / "one.db", max_bytes=SMALL) as one_by_one:
        one_by_one.append(lambda s: payload_for(s, 70_000))
        singles = [one_by_one.append(make) for make in group]
        expected = read_all(one_by_one)
    with DurableQueue(tmp_path / "many.db", max_bytes=SMALL) as grouped:
        grouped.append(lambda s: payload_for(s, 70_000))
        assert grouped.append_many(group) == singles  # every seq, stored or not
        got = read_all(grouped)
        stats = grouped.stats()

    assert [(e.seq, e.payload) for e in got] == [(e.seq, e.payload) for e in expected]
    assert [e.seq for e in got] == singles[len(singles) - len(got) :], "a suffix is kept"
    assert stats.evicted_batches == 1 + len(singles) - len(got)
    assert stats.evicted_bytes == 70_000 + sum(sizes) - sum(len(e.payload) for e in got)
    assert footprint(tmp_path / "many.db") <= SMALL


# -- synchronous="normal" ------------------------------------------------------------------------

APPEND_AND_DIE = """
import os, sys
from buffer import DurableQueue
q = DurableQueue(sys.argv[1], max_bytes=10**6, synchronous=sys.argv[2])
for _ in range(20):
    seq = q.append(lambda s: s.to_bytes(8, "big"))
print(seq, flush=True)
os._exit(0)  # no close(): like a SIGKILL after the last append
"""


def test_normal_synchronous_keeps_every_commit_across_close_and_reopen(path: Path) -> None:
    with DurableQueue(path, max_bytes=SMALL, synchronous="normal") as queue:
        seqs = queue.append_many([payload_for] * 5)
        queue.sync()
        queue.ack(seqs[:2])
        queue.sync()
        last = queue.append(payload_for)

    with DurableQueue(path, max_bytes=SMALL, synchronous="normal") as queue:
        assert [e.seq for e in queue.read()] == [*seqs[2:], last]
        assert queue.append(payload_for) == last + 1  # a clean close: no gap


def test_after_an_unclean_stop_in_normal_mode_nothing_is_lost_and_seqs_skip_the_lease(
    path: Path,
) -> None:
    died = run_python(APPEND_AND_DIE, str(path), "normal")
    assert died.returncode == 0, died.stderr
    last = int(died.stdout)

    with DurableQueue(path, max_bytes=10**6, synchronous="normal") as queue:
        assert [e.seq for e in queue.read()] == list(range(1, last + 1)), "SIGKILL loses nothing"
        # A power cut could have taken back commits whose seqs were already published:
        # the next seq is above the lease that was fsynced in <path>.seq.
        assert queue.append(payload_for) > last + 999_000


def test_after_an_unclean_stop_in_full_mode_seqs_continue_without_a_gap(path: Path) -> None:
    died = run_python(APPEND_AND_DIE, str(path), "full")
    assert died.returncode == 0, died.stderr

    with DurableQueue(path, max_bytes=10**6) as queue:
        assert queue.append(payload_for) == int(died.stdout) + 1


def test_invalid_synchronous_is_refused(path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        DurableQueue(path, max_bytes=SMALL, synchronous="off")  # type: ignore[arg-type]


# -- format ----------------------------------------------------------------------------------------


def test_a_version_1_file_written_before_the_age_counters_existed_is_read_and_gains_them(
    path: Path,
) -> None:
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        """
        PRAGMA journal_mode = WAL;
        BEGIN;
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE batches (seq INTEGER PRIMARY KEY, created_at REAL NOT NULL,
                              size INTEGER NOT NULL, payload BLOB NOT NULL);
        INSERT INTO meta VALUES ('last_seq', 7), ('evicted_batches', 3), ('evicted_bytes', 30);
        INSERT INTO batches VALUES (8, 1000.0, 3, x'010203'), (9, 2000.0, 2, x'0405');
        PRAGMA user_version = 1;
        COMMIT;
        """
    )
    conn.close()

    with DurableQueue(path, max_bytes=SMALL, max_age=500, clock=FakeClock(1600.0)) as queue:
        assert queue.recovered_from is None
        assert counters(queue.stats()) == (1, 2, 2000.0, 9, 4, 33, 1, 3)  # 8 expired at open
        assert [(e.seq, e.payload) for e in queue.read()] == [(9, b"\x04\x05")]
        assert queue.append(payload_for) == 10

    with DurableQueue(path, max_bytes=SMALL) as queue:
        assert (queue.stats().evicted_by_age_batches, queue.stats().evicted_by_age_bytes) == (1, 3)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (2,), "migrated in place"
    conn.close()
