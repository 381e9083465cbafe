"""Batches close at a count or an age, keep order, and nothing is left behind on close."""

from __future__ import annotations

import asyncio
import time

from drivers.core.model import Reading
from gateway.pipeline.batcher import Batcher


def readings(n: int, start: int = 0) -> list[Reading]:
    return [Reading("d", "p", i, i) for i in range(start, start + n)]


class Written:
    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[Reading]] = []
        self.groups: list[int] = []  # batches per commit
        self.times: list[float] = []
        self.delay = delay

    async def __call__(self, group: list[list[Reading]]) -> None:
        await asyncio.sleep(self.delay)
        self.groups.append(len(group))
        for batch in group:
            self.batches.append(batch)
            self.times.append(time.monotonic())


async def test_a_batch_closes_when_it_reaches_the_maximum_count() -> None:
    written = Written()
    batcher = Batcher(10, 60.0, written)
    task = asyncio.create_task(batcher.run())
    batcher.add(readings(25))
    await asyncio.sleep(0.05)
    assert [len(b) for b in written.batches] == [10, 10]
    await batcher.close(task)
    assert [len(b) for b in written.batches] == [10, 10, 5]
    assert [r.value for b in written.batches for r in b] == list(range(25))


async def test_a_batch_closes_when_its_first_reading_reaches_the_maximum_age() -> None:
    written = Written()
    batcher = Batcher(1000, 0.2, written)
    task = asyncio.create_task(batcher.run())
    started = time.monotonic()
    batcher.add(readings(3))
    await asyncio.sleep(0.1)
    batcher.add(readings(3, 3))  # does not extend the deadline of the open batch
    async with asyncio.timeout(2):
        while not written.batches:
            await asyncio.sleep(0.01)
    assert 0.15 <= written.times[0] - started <= 0.6
    assert len(written.batches[0]) == 6
    await batcher.close(task)


async def test_close_writes_the_open_batch_and_everything_queued_in_order() -> None:
    written = Written(delay=0.01)  # a slow disk: several batches queue up
    batcher = Batcher(5, 60.0, written)
    task = asyncio.create_task(batcher.run())
    for i in range(7):
        batcher.add(readings(3, i * 3))
    assert batcher.pending == 21
    await batcher.close(task)
    assert task.done()
    assert batcher.pending == 0
    assert [r.value for b in written.batches for r in b] == list(range(21))
    assert batcher.batches_written == len(written.batches) == 5


async def test_an_idle_batcher_writes_nothing() -> None:
    written = Written()
    batcher = Batcher(5, 0.05, written)
    task = asyncio.create_task(batcher.run())
    await asyncio.sleep(0.2)
    batcher.add([])
    await batcher.close(task)
    assert written.batches == []


async def test_when_the_buffer_refuses_writes_memory_stays_bounded_and_drops_are_counted() -> None:
    release = asyncio.Event()

    async def stuck_disk(group: list[list[Reading]]) -> None:
        await release.wait()

    batcher = Batcher(10, 60.0, stuck_disk, max_pending=100)
    task = asyncio.create_task(batcher.run())
    for i in range(50):
        batcher.add(readings(10, i * 10))
        await asyncio.sleep(0)
    assert batcher.pending <= 110
    assert batcher.readings_dropped >= 390
    assert batcher.pending + batcher.readings_dropped == 500
    release.set()
    await batcher.close(task)
    assert batcher.readings_written + batcher.readings_dropped == 500


async def test_a_durability_window_commits_the_batches_closed_within_it_together() -> None:
    written = Written()
    batcher = Batcher(10, 60.0, written, commit_interval=0.2)
    task = asyncio.create_task(batcher.run())
    for i in range(5):
        batcher.add(readings(10, i * 10))  # five batches close within the window
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.4)
    assert written.groups == [5]  # one commit for all five
    await batcher.close(task)
    assert [r.value for b in written.batches for r in b] == list(range(50))


async def test_without_a_window_a_lone_batch_is_committed_at_once() -> None:
    written = Written()
    batcher = Batcher(10, 60.0, written)
    task = asyncio.create_task(batcher.run())
    started = time.monotonic()
    batcher.add(readings(10))
    async with asyncio.timeout(1):
        while not written.batches:
            await asyncio.sleep(0.005)
    assert written.times[0] - started < 0.1
    await batcher.close(task)
