"""Collect readings into batches, closed by count or by age, and hand them on in order.

Drivers call `add` (synchronous, cheap: a list extend). A batch closes when it
holds `max_readings` or when its first reading is `max_age` old. Closed batches
are written, one at a time and in order, by `run` through the `write` coroutine
(the durable buffer). `close` seals the open batch and waits until everything
handed in is written: the shutdown path that keeps the promise "the open batch
is flushed into the buffer".

Memory is bounded: if the buffer stops accepting writes (a read-only SD card)
and more than `max_pending` readings wait in memory, the oldest closed batches
are dropped and counted in `readings_dropped` (reported on the health topic).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from gateway.model import Reading

log = logging.getLogger("gateway.batcher")

WriteBatch = Callable[[list[Reading]], Awaitable[None]]


class Batcher:
    def __init__(
        self,
        max_readings: int,
        max_age: float,
        write: WriteBatch,
        *,
        max_pending: int = 1_000_000,
    ) -> None:
        self.max_readings = max_readings
        self.max_age = max_age
        self.max_pending = max_pending
        self._write = write
        self._open: list[Reading] = []
        self._opened_at = 0.0
        self._sealed: deque[list[Reading]] = deque()
        self._sealed_ready = asyncio.Event()
        self._first_reading = asyncio.Event()
        self._closing = False
        self.readings_in = 0
        self.readings_written = 0
        self.readings_dropped = 0
        self.batches_written = 0

    def add(self, readings: Sequence[Reading]) -> None:
        if not readings:
            return
        self.readings_in += len(readings)
        if not self._open:
            self._opened_at = time.monotonic()
            self._first_reading.set()
        self._open.extend(readings)
        while len(self._open) >= self.max_readings:
            self._push(self._open[: self.max_readings])
            del self._open[: self.max_readings]
            self._opened_at = time.monotonic()

    def _push(self, batch: list[Reading]) -> None:
        self._sealed.append(batch)
        self._sealed_ready.set()
        # Never drop the batch being written (the leftmost one): drop the next oldest.
        while self.pending > self.max_pending and len(self._sealed) > 2:
            dropped = self._sealed[1]
            del self._sealed[1]
            if not self.readings_dropped:
                log.error(
                    "more than %d readings wait in memory because the buffer refuses writes; "
                    "dropping the oldest batches (counted on the health topic)",
                    self.max_pending,
                )
            self.readings_dropped += len(dropped)

    def _seal(self) -> None:
        if self._open:
            self._push(self._open)
            self._open = []

    @property
    def pending(self) -> int:
        """Readings handed in but neither written to the buffer nor dropped."""
        return self.readings_in - self.readings_written - self.readings_dropped

    async def run(self) -> None:
        """Write sealed batches until `close`; seal the open batch when it gets old."""
        async with asyncio.TaskGroup() as tg:
            ager = tg.create_task(self._age_out(), name="batcher-age")
            while True:
                if not self._sealed:
                    if self._closing:
                        break
                    self._sealed_ready.clear()
                    await self._sealed_ready.wait()
                    continue
                batch = self._sealed[0]  # stays queued (and counted) until written
                await self._write(batch)
                self._sealed.popleft()
                self.batches_written += 1
                self.readings_written += len(batch)
            ager.cancel()

    async def _age_out(self) -> None:
        while True:
            await self._first_reading.wait()
            if not self._open:
                self._first_reading.clear()
                continue
            remaining = self._opened_at + self.max_age - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
                continue
            self._seal()
            self._first_reading.clear()

    async def close(self, run_task: asyncio.Task[None]) -> None:
        """Seal the open batch, let `run` write everything, and wait for it to finish."""
        self._seal()
        self._closing = True
        self._sealed_ready.set()
        await run_task
