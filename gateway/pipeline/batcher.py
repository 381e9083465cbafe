"""Collect readings into batches, closed by count or by age, and hand them on in order.

Drivers call `add` (synchronous, cheap: a list extend). A batch closes when it
holds `max_readings` or when its first reading is `max_age` old. Closed batches
are written, one at a time and in order, by `run` through the `write` coroutine
(the durable buffer). `close` seals the open batch and waits until everything
handed in is written: the shutdown path that keeps the promise "the open batch
is flushed into the buffer".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from gateway.model import Reading

WriteBatch = Callable[[list[Reading]], Awaitable[None]]


class Batcher:
    def __init__(self, max_readings: int, max_age: float, write: WriteBatch) -> None:
        self.max_readings = max_readings
        self.max_age = max_age
        self._write = write
        self._open: list[Reading] = []
        self._opened_at = 0.0
        self._sealed: asyncio.Queue[list[Reading] | None] = asyncio.Queue()
        self._first_reading = asyncio.Event()
        self.readings_in = 0
        self.batches_written = 0
        self.readings_written = 0

    def add(self, readings: Sequence[Reading]) -> None:
        if not readings:
            return
        self.readings_in += len(readings)
        if not self._open:
            self._opened_at = time.monotonic()
            self._first_reading.set()
        self._open.extend(readings)
        while len(self._open) >= self.max_readings:
            self._sealed.put_nowait(self._open[: self.max_readings])
            del self._open[: self.max_readings]
            self._opened_at = time.monotonic()

    def _seal(self) -> None:
        if self._open:
            self._sealed.put_nowait(self._open)
            self._open = []

    @property
    def pending(self) -> int:
        """Readings handed in but not yet written to the buffer."""
        return self.readings_in - self.readings_written

    async def run(self) -> None:
        """Write sealed batches until `close`; seal the open batch when it gets old."""
        async with asyncio.TaskGroup() as tg:
            ager = tg.create_task(self._age_out(), name="batcher-age")
            while (batch := await self._sealed.get()) is not None:
                await self._write(batch)
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
        self._sealed.put_nowait(None)
        await run_task
