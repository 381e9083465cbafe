"""Publish first, write only what the broker has not acknowledged in time ([buffer] write =
"unacked"): the store's staged batches on a real buffer file and virtual time."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from pathlib import Path

import pytest

from buffer import DiskFullError, DurableQueue, Entry
from drivers.core.clock import ManualClock
from gateway.store import Store


def payload(seq: int) -> bytes:
    return f"batch {seq}".encode()


def store(tmp_path: Path, clock: ManualClock) -> Store:
    queue = DurableQueue(tmp_path / "b.db", max_bytes=8 << 20, clock=clock.time)
    return Store(queue, clock=clock)


async def test_a_batch_acknowledged_before_it_is_due_is_never_written(tmp_path: Path) -> None:
    clock = ManualClock()
    s = store(tmp_path, clock)
    try:
        seqs = await s.stage([payload, payload], [clock.monotonic() + 5] * 2)
        assert seqs == [1, 2]
        assert [e.payload for e in await s.read(0, 10)] == [b"batch 1", b"batch 2"]
        assert s.stats.batches == 0 and s.staged == 2  # in memory only
        assert await s.ack([1, 2]) == 2
        assert s.staged == 0 and s.staged_acked == 2
        assert await s.read(0, 10) == []
    finally:
        s.close()
    with DurableQueue(tmp_path / "b.db", max_bytes=8 << 20) as q:
        assert q.read() == [] and q.append(payload) == 3  # never written, never reused


async def test_what_falls_due_unacknowledged_is_written_in_one_commit(tmp_path: Path) -> None:
    clock = ManualClock()
    s = store(tmp_path, clock)
    commits = asyncio.create_task(s.run_commits())
    try:
        now = clock.monotonic()
        await s.stage([payload], [now + 5])
        await s.stage([payload, payload], [now + 6, now + 7])
        await s.ack([2])
        await clock.advance(4.9)
        assert s.stats.batches == 0
        await clock.advance(0.2)  # the first falls due: both left go to disk together
        for _ in range(100):
            if s.stats.batches == 2:
                break
            await asyncio.sleep(0.01)
        assert (s.stats.batches, s.staged, s.staged_written) == (2, 0, 2)
        entries = await s.read(0, 10)
        assert [e.seq for e in entries] == [1, 3]  # 2 was acknowledged from memory
        assert await s.ack([1, 3]) == 2
        assert s.stats.batches == 0
    finally:
        commits.cancel()
        s.close()


async def test_reads_merge_disk_and_memory_in_seq_order(tmp_path: Path) -> None:
    clock = ManualClock()
    s = store(tmp_path, clock)
    try:
        await s.append_many([payload, payload])  # (write = "all", or an older backlog)
        await s.stage([payload, payload], [clock.monotonic() + 5] * 2)
        assert [e.seq for e in await s.read(0, 3)] == [1, 2, 3]
        assert [e.seq for e in await s.read(1, 10)] == [2, 3, 4]
        assert [e.seq for e in await s.read(3, 10)] == [4]
    finally:
        s.close()


async def test_a_clean_close_writes_what_is_still_in_memory(tmp_path: Path) -> None:
    clock = ManualClock()
    s = store(tmp_path, clock)
    await s.stage([payload, payload], [clock.monotonic() + 5] * 2)
    await s.ack([1])
    s.close()
    with DurableQueue(tmp_path / "b.db", max_bytes=8 << 20) as q:
        assert [(e.seq, e.payload) for e in q.read()] == [(2, b"batch 2")]


async def test_an_ack_during_the_write_deletes_the_batch_once_it_is_written(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    s = store(tmp_path, clock)
    try:
        await s.stage([payload], [clock.monotonic()])
        writing = asyncio.create_task(s.commit_staged())
        await asyncio.sleep(0)  # the write is on the worker thread now
        await s.ack([1])
        assert await writing
        for _ in range(100):
            if s.stats.batches == 0:
                break
            await asyncio.sleep(0.01)
        assert s.stats.batches == 0 and await s.read(0, 10) == []
    finally:
        s.close()


async def test_a_refused_write_keeps_the_batches_in_memory_and_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "gateway.store")
    clock = ManualClock()
    s = store(tmp_path, clock)
    assert s.queue is not None
    real = s.queue.append_reserved

    def full_disk(entries: list[Entry]) -> None:
        raise DiskFullError("buffer b.db: the disk is full")

    try:
        await s.stage([payload, payload], [clock.monotonic()] * 2)
        monkeypatch.setattr(s.queue, "append_reserved", full_disk)
        assert not await s.commit_staged()
        assert not await s.commit_staged()
        assert sum("cannot write 2 unacknowledged" in m for m in caplog.messages) == 1  # once
        assert s.staged == 2  # kept, still published from memory
        await s.ack([1])
        monkeypatch.setattr(s.queue, "append_reserved", real)
        assert await s.commit_staged()
        assert [e.seq for e in await s.read(0, 10)] == [2]
        assert s.stats.batches == 1
        assert any("takes writes again" in m for m in caplog.messages)
    finally:
        s.close()


async def test_a_stop_that_cancels_a_write_loses_nothing_and_writes_nothing_twice(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    s = store(tmp_path, clock)
    await s.stage([payload, payload, payload], [clock.monotonic()] * 3)
    writing = asyncio.create_task(s.commit_staged())
    await asyncio.sleep(0)  # the write is on the worker thread now
    writing.cancel()  # the gateway stops: run_commits is cancelled mid-write
    await s.ack([2])  # the broker's answer arrives during the write
    s.closing()
    await s.stage([payload], [clock.monotonic() + 5])  # the open batch, sealed at the stop
    s.close()  # writes what is left: skips what the cancelled write stored
    with DurableQueue(tmp_path / "b.db", max_bytes=8 << 20) as q:
        assert [e.seq for e in q.read()] == [1, 3, 4]


async def test_a_write_the_stop_cuts_short_is_no_error_and_leaves_no_failing_task(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """CI saw it once after 'stopped': the write's task, cancelled by asyncio.run's end,
    logged "cannot write ... (cancelled)" and scheduled an ack on the closed executor
    ("Task exception was never retrieved", a traceback in the service's log)."""
    caplog.set_level(logging.INFO, "gateway.store")
    failures: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, c: failures.append(c))
    clock = ManualClock()
    s = store(tmp_path, clock)
    await s.stage([payload, payload], [clock.monotonic()] * 2)
    committing = asyncio.create_task(s.commit_staged())
    await asyncio.sleep(0)  # the write is on the worker thread now
    await s.ack([1])  # acknowledged during the write
    committing.cancel()  # the gateway stops
    s.closing()
    s.close()  # the write has ended on the worker; the loop has not seen it yet
    # what asyncio.run does with the tasks still there at its end
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)
    for _ in range(5):
        await asyncio.sleep(0)
    gc.collect()
    assert failures == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    with DurableQueue(tmp_path / "b.db", max_bytes=8 << 20) as q:
        assert [e.seq for e in q.read()] == [2]


async def test_health_counts_what_is_in_memory_and_how_old_it_is(tmp_path: Path) -> None:
    clock = ManualClock()
    s = store(tmp_path, clock)
    commits = asyncio.create_task(s.run_commits())
    try:
        await s.stage([payload], [clock.monotonic() + 5])
        await clock.advance(3.0)
        health = s.health(clock.time(), 8 << 20)
        assert (health.in_memory_batches, health.batches) == (1, 0)
        assert health.oldest_unsent_age_s == 3.0
        assert health.last_seq == 1
        assert (health.acked_from_memory, health.written_from_memory) == (0, 0)
        await s.stage([payload], [clock.monotonic() + 5])
        assert await s.ack([2]) == 1
        await clock.advance(2.5)  # the first is due: written
        for _ in range(500):  # the commit runs on the worker thread: up to 5 s
            if s.stats.batches == 1:
                break
            await asyncio.sleep(0.01)
        health = s.health(clock.time(), 8 << 20)
        assert (health.acked_from_memory, health.written_from_memory) == (1, 1)
        assert (health.in_memory_batches, health.batches) == (0, 1)
    finally:
        commits.cancel()
        s.close()


async def test_a_disk_call_that_does_not_return_shows_in_busy_for_and_clears_when_it_does(
    tmp_path: Path,
) -> None:
    """What the systemd watchdog asks (GatewayApp.alive): how long the call on the
    worker thread has been running; a storage that stopped answering keeps it growing."""
    clock = ManualClock()
    s = store(tmp_path, clock)
    release = threading.Event()
    entered = threading.Event()

    def stuck_payload(seq: int) -> bytes:  # made on the worker thread, in the transaction
        entered.set()
        release.wait(10)
        return payload(seq)

    try:
        assert s.busy_for() == 0.0
        appending = asyncio.ensure_future(s.append(stuck_payload))
        assert await asyncio.to_thread(entered.wait, 10)
        clock.mono += 130.0
        assert s.busy_for() == pytest.approx(130.0)
        release.set()
        assert await appending == 1
        assert s.busy_for() == 0.0
    finally:
        release.set()
        s.close()
