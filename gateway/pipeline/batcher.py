"""Collect readings into batches, closed by count or by age, and hand them on in order.

Drivers call `add` (synchronous, cheap: a list extend). A batch closes when it
holds `max_readings`, when its first reading is `max_age` old, or when no reading has
come for `idle` seconds: a poll cycle is over, and its readings leave at once instead of
waiting for the next cycle (the latency at the centre is then the cycle's own, not
max_age's). Closed batches
are written in order by `run` through the `write` coroutine (the durable buffer),
as a group of everything closed so far: one commit for all of them. With a
`commit_interval` (the durability window) `run` waits that long before each
commit so that more batches share it: fewer fsyncs on the SD card, at the price
of that much more data in memory at a power cut. `close` seals the open batch
and waits until everything handed in is written: the shutdown path that keeps
the promise "the open batch is flushed into the buffer".

Memory is bounded: if the buffer stops accepting writes (a read-only SD card) or
readings arrive faster than it stores them, and more than `max_pending` readings
wait in memory, the oldest closed batches are dropped and counted in
`readings_dropped` (reported on the health topic); the log says which of the two
it is, once per episode.

Each closed batch says whether the clock was synchronised while its readings were
taken (`SealedBatch.clock_synced`): `mark_clock` closes the open batch when that
changes, so a batch never mixes the two (docs/wire-format.md, envelope key `tu`).
The batcher measures and waits on an injectable clock (`drivers.core.clock`): tests
drive it with a ManualClock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence

from drivers.core.clock import Clock, SystemClock
from drivers.core.model import Reading

log = logging.getLogger("gateway.batcher")

MAX_GROUP = 200  # batches committed together at most
WRITE_RETRY_SECONDS = 1.0  # after a write failed unexpectedly (a bug): try again this late


class SealedBatch(list[Reading]):
    """A closed batch: its readings, whether the clock was synchronised for them, and
    the config version they were taken under."""

    __slots__ = ("clock_synced", "config_hash", "opened_at")

    def __init__(
        self,
        readings: Iterable[Reading] = (),
        *,
        clock_synced: bool = True,
        config_hash: str | None = None,
        opened_at: float | None = None,
    ) -> None:
        super().__init__(readings)
        self.clock_synced = clock_synced
        self.config_hash = config_hash
        self.opened_at = opened_at  # monotonic: when its first reading was added


WriteBatches = Callable[[list[SealedBatch]], Awaitable[None]]


class Batcher:
    def __init__(
        self,
        max_readings: int,
        max_age: float,
        write: WriteBatches,
        *,
        max_pending: int = 1_000_000,
        commit_interval: float = 0.0,
        idle: float = 0.0,
        ack_room: float = 0.0,
        clock: Clock | None = None,
    ) -> None:
        self.max_readings = max_readings
        self.max_age = max_age
        self.idle = idle
        # Close an ageing batch this much before max_age: with [buffer] write = "unacked"
        # it is due on disk at max_age, and the broker's answer needs a moment to arrive.
        self.ack_room = ack_room
        self.max_pending = max_pending
        self.commit_interval = commit_interval
        self._writing = 0  # batches at the head of _sealed being written now
        self._write = write
        self._clock: Clock = clock or SystemClock()
        self._open: list[Reading] = []
        self._opened_at = 0.0
        self._added_at = 0.0  # when the last reading was added (monotonic)
        self._clock_synced = True  # the state the open batch's readings were taken in
        self.config_hash: str | None = None  # the config version readings are taken under
        self._write_started = 0.0  # when the write in progress began (clock)
        self._dropping = False  # a drop episode is on (logged once)
        self._sealed: deque[SealedBatch] = deque()
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
        now = self._added_at = self._clock.monotonic()
        if not self._open:
            self._opened_at = now
            self._first_reading.set()
        self._open.extend(readings)
        while len(self._open) >= self.max_readings:
            self._push(self._sealed_batch(self._open[: self.max_readings]))
            del self._open[: self.max_readings]
            self._opened_at = now

    def _sealed_batch(self, readings: list[Reading]) -> SealedBatch:
        return SealedBatch(
            readings,
            clock_synced=self._clock_synced,
            config_hash=self.config_hash,
            opened_at=self._opened_at,
        )

    def seal(self, config_hash: str | None = None) -> None:
        """Close the open batch now (a new config: what follows is taken under it)."""
        self._seal()
        if config_hash is not None:
            self.config_hash = config_hash

    def mark_clock(self, synchronised: bool) -> None:
        """The clock became (un)synchronised, or stepped (False): close the open batch
        under the state its readings were taken in, then carry on with `synchronised`."""
        if not synchronised:
            self._clock_synced = False  # readings before a step or a loss of sync are suspect
        self._seal()
        self._clock_synced = synchronised

    def _push(self, batch: SealedBatch) -> None:
        self._sealed.append(batch)
        self._sealed_ready.set()
        # Never drop batches being written (the leftmost ones): drop the next oldest.
        keep = max(1, self._writing)
        if self.pending > self.max_pending and len(self._sealed) > keep + 1:
            self._start_dropping()
        while self.pending > self.max_pending and len(self._sealed) > keep + 1:
            dropped = self._sealed[keep]
            del self._sealed[keep]
            self.readings_dropped += len(dropped)
        if self._dropping and self.pending < self.max_pending // 2:
            self._dropping = False
            log.info(
                "readings fit in memory again; %d dropped so far (counted on the health topic)",
                self.readings_dropped,
            )

    def _start_dropping(self) -> None:
        if self._dropping:
            return
        self._dropping = True
        stuck = self._clock.monotonic() - self._write_started if self._writing else 0.0
        if stuck > 2 * WRITE_RETRY_SECONDS:
            cause = f"the buffer has not accepted a write for {stuck:.0f}s (a full or failing disk)"
        else:
            cause = (
                "readings arrive faster than the buffer stores them (a device sending far "
                "more than usual, or a slow disk)"
            )
        log.error(
            "more than %d readings wait in memory: %s; dropping the oldest batches, counted "
            "on the health topic",
            self.max_pending,
            cause,
        )

    def _seal(self) -> None:
        if self._open:
            self._push(self._sealed_batch(self._open))
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
                if self.commit_interval and not self._closing:
                    # The durability window: let more batches close, then commit them
                    # together (one fsync). Power cut risk grows by this much.
                    await self._clock.sleep(self.commit_interval)
                group = [self._sealed[i] for i in range(min(len(self._sealed), MAX_GROUP))]
                self._writing = len(group)  # stay queued (and counted) until written
                self._write_started = self._clock.monotonic()
                try:
                    await self._write(group)
                except Exception:
                    # The writer keeps data through disk errors itself; anything reaching
                    # here is a bug. It must not end the pipeline: keep the group, retry.
                    log.exception("writing %d batch(es) failed unexpectedly; retrying", len(group))
                    await self._clock.sleep(WRITE_RETRY_SECONDS)
                    continue
                finally:
                    self._writing = 0
                for batch in group:
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
            deadline = self._opened_at + max(self.max_age - self.ack_room, 0.0)
            if self.idle:
                deadline = min(deadline, self._added_at + self.idle)
            remaining = deadline - self._clock.monotonic()
            if remaining > 0:
                await self._clock.sleep(remaining)
                continue
            self._seal()
            self._first_reading.clear()

    async def close(self, run_task: asyncio.Task[None]) -> None:
        """Seal the open batch, let `run` write everything, and wait for it to finish."""
        self._seal()
        self._closing = True
        self._sealed_ready.set()
        await run_task
