"""Batches close at a count or an age, keep order, and nothing is left behind on close.

Time is virtual (drivers.core.clock.ManualClock): ages and windows are tested to the
millisecond without sleeping, whatever else the machine is doing."""

from __future__ import annotations

import asyncio

from drivers.core.clock import ManualClock, settle
from drivers.core.model import Reading
from gateway.pipeline.batcher import Batcher, SealedBatch


def readings(n: int, start: int = 0) -> list[Reading]:
    return [Reading("d", "p", i, i) for i in range(start, start + n)]


class Written:
    """The buffer, as the batcher sees it: records each commit and when it happened."""

    def __init__(self, clock: ManualClock, delay: float = 0.0) -> None:
        self.clock = clock
        self.batches: list[SealedBatch] = []
        self.groups: list[int] = []  # batches per commit
        self.times: list[float] = []
        self.delay = delay

    async def __call__(self, group: list[SealedBatch]) -> None:
        await self.clock.sleep(self.delay)
        self.groups.append(len(group))
        for batch in group:
            self.batches.append(batch)
            self.times.append(self.clock.monotonic())


def batcher_for(written: Written, max_readings: int, max_age: float, **kw: object) -> Batcher:
    return Batcher(max_readings, max_age, written, clock=written.clock, **kw)  # type: ignore[arg-type]


async def test_a_batch_closes_when_it_reaches_the_maximum_count() -> None:
    written = Written(ManualClock())
    batcher = batcher_for(written, 10, 60.0)
    task = asyncio.create_task(batcher.run())
    await settle()  # the batcher is waiting before anything happens
    batcher.add(readings(25))
    await settle()
    assert [len(b) for b in written.batches] == [10, 10]
    await batcher.close(task)
    assert [len(b) for b in written.batches] == [10, 10, 5]
    assert [r.value for b in written.batches for r in b] == list(range(25))


async def test_a_batch_closes_when_its_first_reading_reaches_the_maximum_age() -> None:
    clock = ManualClock()
    written = Written(clock)
    batcher = batcher_for(written, 1000, 0.2)
    task = asyncio.create_task(batcher.run())
    await settle()  # the batcher is waiting before anything happens
    started = clock.monotonic()
    batcher.add(readings(3))
    await clock.advance(0.1)
    batcher.add(readings(3, 3))  # does not extend the deadline of the open batch
    await clock.advance(0.099)
    assert written.batches == []
    await clock.advance(0.002)
    assert written.times == [started + 0.2]
    assert len(written.batches[0]) == 6
    await batcher.close(task)


async def test_a_poll_cycle_over_closes_the_batch_after_the_idle_time() -> None:
    clock = ManualClock()
    written = Written(clock)
    batcher = batcher_for(written, 1000, 5.0, idle=0.02)
    task = asyncio.create_task(batcher.run())
    await settle()
    started = clock.monotonic()
    batcher.add(readings(3))  # one device of the cycle answers ...
    await clock.advance(0.015)
    batcher.add(readings(3, 3))  # ... and the next one, within the idle time
    await clock.advance(0.019)
    assert written.batches == []
    await clock.advance(0.002)  # nothing for 20 ms: the cycle is over
    assert written.times == [started + 0.035]
    assert [len(b) for b in written.batches] == [6]
    assert written.batches[0].opened_at == started
    await batcher.close(task)


async def test_an_ageing_batch_leaves_room_for_the_brokers_answer_before_max_age() -> None:
    clock = ManualClock()
    written = Written(clock)
    batcher = batcher_for(written, 1000, 2.0, idle=0.5, ack_room=0.5)
    task = asyncio.create_task(batcher.run())
    await settle()
    started = clock.monotonic()
    for _ in range(10):  # readings keep coming: idle never closes it
        batcher.add(readings(1))
        await clock.advance(0.2)
    assert written.times == [started + 1.5]  # max_age 2 s minus the room for the answer
    await batcher.close(task)


async def test_close_writes_the_open_batch_and_everything_queued_in_order() -> None:
    clock = ManualClock()
    written = Written(clock, delay=0.01)  # a slow disk: several batches queue up
    batcher = batcher_for(written, 5, 60.0)
    task = asyncio.create_task(batcher.run())
    await settle()  # the batcher is waiting before anything happens
    for i in range(7):
        batcher.add(readings(3, i * 3))
    assert batcher.pending == 21
    closing = asyncio.create_task(batcher.close(task))
    while not closing.done():
        await clock.advance(0.01)
    assert task.done()
    assert batcher.pending == 0
    assert [r.value for b in written.batches for r in b] == list(range(21))
    assert batcher.batches_written == len(written.batches) == 5


async def test_an_idle_batcher_writes_nothing() -> None:
    clock = ManualClock()
    written = Written(clock)
    batcher = batcher_for(written, 5, 0.05)
    task = asyncio.create_task(batcher.run())
    await settle()  # the batcher is waiting before anything happens
    await clock.advance(3600)
    batcher.add([])
    await batcher.close(task)
    assert written.batches == []


async def test_when_the_buffer_refuses_writes_memory_stays_bounded_and_drops_are_counted() -> None:
    release = asyncio.Event()

    async def stuck_disk(group: list[SealedBatch]) -> None:
        await release.wait()

    batcher = Batcher(10, 60.0, stuck_disk, max_pending=100, clock=ManualClock())
    task = asyncio.create_task(batcher.run())
    await settle()  # the batcher is waiting before anything happens
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
    clock = ManualClock()
    written = Written(clock)
    batcher = batcher_for(written, 10, 60.0, commit_interval=0.2)
    task = asyncio.create_task(batcher.run())
    await settle()  # the batcher is waiting before anything happens
    for i in range(5):
        batcher.add(readings(10, i * 10))  # five batches close within the window
        await clock.advance(0.01)
    await clock.advance(0.149)
    assert written.groups == []  # the window is still open
    await clock.advance(0.002)
    assert written.groups == [5]  # one commit for all five, when the window ends
    await batcher.close(task)
    assert [r.value for b in written.batches for r in b] == list(range(50))


async def test_without_a_window_a_lone_batch_is_committed_at_once() -> None:
    clock = ManualClock()
    written = Written(clock)
    batcher = batcher_for(written, 10, 60.0)
    task = asyncio.create_task(batcher.run())
    await settle()  # the batcher is waiting before anything happens
    started = clock.monotonic()
    batcher.add(readings(10))
    await settle()
    assert written.times == [started]  # no virtual time passed
    await batcher.close(task)
