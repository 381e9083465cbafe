"""The async face of the durable buffer.

`buffer.DurableQueue` is synchronous and does its own fsyncs; the event loop must
never wait on the disk, so every call runs on one dedicated worker thread (the
buffer's threading contract). `appended` wakes the uplink when new batches land.

A store may start closed: when the disk is full at start-up the gateway does not
refuse to start; it keeps collecting in memory (bounded by the batcher) and opens
the buffer as soon as there is room (`reopen`, on a timer). Until then appends
raise `BufferUnavailableError` (a BufferError: the writer keeps the data and
retries) and reads wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from buffer import BufferError, BufferStats, DiskFullError, DurableQueue, Entry, EvictionEpisode
from gateway.wire.messages import BufferHealth, EvictionHealth

T = TypeVar("T")

_EMPTY = BufferStats(
    batches=0,
    bytes=0,
    oldest_created_at=None,
    last_seq=0,
    evicted_batches=0,
    evicted_bytes=0,
)


class BufferUnavailableError(BufferError):
    """The buffer could not be opened (a full disk); data stays in memory meanwhile."""


class Store:
    """One durable queue on its worker thread: give it an open queue, or a way to open
    one (`open` / `reopen` then open it, and may find the disk full)."""

    def __init__(
        self, source: DurableQueue | Callable[[], DurableQueue], name: str = "data"
    ) -> None:
        self.name = name
        self.queue: DurableQueue | None = None
        self.appended = asyncio.Event()
        self.ready = asyncio.Event()  # set once the queue is open
        self.open_error: str | None = None  # why it is not open, while it is not
        self.opened_seq = 0  # the last seq on disk when the queue was opened (this boot)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"buffer-{name}")
        self._stats = _EMPTY
        if isinstance(source, DurableQueue):
            self._opener: Callable[[], DurableQueue] = lambda: source
            self._opened(source)
        else:
            self._opener = source

    # --- opening ---------------------------------------------------------------------

    def open(self) -> bool:
        """Open the queue now (at start-up). False when the disk is full: the store stays
        closed and `reopen` tries again later. Any other BufferError is raised."""
        try:
            queue = self._opener()
        except DiskFullError as err:
            self.open_error = str(err)
            return False
        self._opened(queue)
        return True

    async def reopen(self) -> bool:
        """Try to open a store that could not be opened; True once it is open."""
        if self.queue is not None:
            return True
        try:
            queue = await asyncio.get_running_loop().run_in_executor(self._executor, self._opener)
        except BufferError as err:
            self.open_error = str(err)
            return False
        self._opened(queue)
        return True

    def _opened(self, queue: DurableQueue) -> None:
        self.queue = queue
        self.open_error = None
        self._stats = queue.stats()
        self.opened_seq = self._stats.last_seq
        self.ready.set()
        if self._stats.batches:
            self.appended.set()

    # --- calls on the worker thread -----------------------------------------------------

    def _queue(self) -> DurableQueue:
        if self.queue is None:
            raise BufferUnavailableError(
                f"the {self.name} buffer is not open ({self.open_error or 'not opened yet'})"
            )
        return self.queue

    async def _call(self, fn: Callable[[DurableQueue], T]) -> T:
        queue = self._queue()
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, queue)

    async def append(self, make_payload: Callable[[int], bytes]) -> int:
        seq, self._stats = await self._call(lambda q: (q.append(make_payload), q.stats()))
        self.appended.set()
        return seq

    async def append_many(self, make_payloads: list[Callable[[int], bytes]]) -> list[int]:
        """Several entries in one transaction: one fsync for all of them."""
        seqs, self._stats = await self._call(lambda q: (q.append_many(make_payloads), q.stats()))
        self.appended.set()
        return seqs

    async def read(self, after_seq: int, limit: int) -> list[Entry]:
        """Entries to publish. A read may drop a batch whose CRC fails (bit rot): the
        counters are refreshed with it."""
        await self.ready.wait()
        entries, self._stats = await self._call(lambda q: (q.read(after_seq, limit), q.stats()))
        return entries

    async def ack(self, seqs: Iterable[int]) -> int:
        seqs = list(seqs)
        if self.queue is None or not seqs:
            return 0
        deleted, self._stats = await self._call(lambda q: (q.ack(seqs), q.stats()))
        return deleted

    async def sync(self) -> None:
        """Make every commit so far survive a power cut (sync = "normal": on a timer)."""
        if self.queue is not None:
            await self._call(lambda q: q.sync())

    async def evict_older_than(self) -> int:
        """Apply the age bound now (on a timer, so a silent gateway ages out too)."""
        if self.queue is None:
            return 0
        evicted, self._stats = await self._call(lambda q: (q.evict_older_than(), q.stats()))
        return evicted

    async def shift_created_at(self, delta: float) -> int:
        """The wall clock stepped by `delta` seconds: re-date what this boot stored before."""
        if self.queue is None:
            return 0
        after = self.opened_seq
        shifted, self._stats = await self._call(
            lambda q: (q.shift_created_at(after, delta), q.stats())
        )
        return shifted

    @property
    def stats(self) -> BufferStats:
        """The latest counters, without touching the disk."""
        return self._stats

    def health(self, now: float, max_bytes: int) -> BufferHealth:
        """This buffer's section of the health report (`now`: the wall clock)."""
        stats = self._stats
        age = stats.oldest_age(now)  # never negative, whatever the clock did
        return BufferHealth(
            open=self.queue is not None,
            open_error=self.open_error,
            batches=stats.batches,
            bytes=stats.bytes,
            disk_bytes=stats.disk_bytes,
            max_bytes=max_bytes,
            oldest_unsent_age_s=None if age is None else round(age, 1),
            last_seq=stats.last_seq,
            evicted_batches=stats.evicted_batches,
            evicted_bytes=stats.evicted_bytes,
            evicted_by_age_batches=stats.evicted_by_age_batches,
            recovered_from=stats.recovered_from,
            salvaged_batches=stats.salvaged_batches,
            unreadable_batches=stats.unreadable_batches,
            corrupt_batches=stats.corrupt_batches,
            corrupt_bytes=stats.corrupt_bytes,
            eviction=_episode(stats.eviction),
            first_unsent_seq=stats.oldest_seq,
            boot_first_seq=self.opened_seq + 1 if self.queue is not None else None,
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self.queue is not None:
            self.queue.close()


def _episode(episode: EvictionEpisode | None) -> EvictionHealth | None:
    if episode is None:
        return None
    return EvictionHealth(
        cause=episode.cause,
        active=episode.active,
        started_at=round(episode.started_at, 3),
        ended_at=None if episode.ended_at is None else round(episode.ended_at, 3),
        first_seq=episode.first_seq,
        last_seq=episode.last_seq,
        batches=episode.batches,
        bytes=episode.bytes,
        oldest_created_at=round(episode.oldest_created_at, 3),
        newest_created_at=round(episode.newest_created_at, 3),
    )
