"""The async face of the durable buffer.

`buffer.DurableQueue` is synchronous and does its own fsyncs; the event loop must
never wait on the disk, so every call runs on one dedicated worker thread (the
buffer's threading contract). `appended` wakes the uplink when new batches land.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from buffer import BufferStats, DurableQueue, Entry

T = TypeVar("T")


class Store:
    def __init__(self, queue: DurableQueue) -> None:
        self.queue = queue
        self.appended = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        self._stats = queue.stats()

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def append(self, make_payload: Callable[[int], bytes]) -> int:
        seq, self._stats = await self._call(
            lambda: (self.queue.append(make_payload), self.queue.stats())
        )
        self.appended.set()
        return seq

    async def append_many(self, make_payloads: list[Callable[[int], bytes]]) -> list[int]:
        """Several entries in one transaction: one fsync for all of them."""
        seqs, self._stats = await self._call(
            lambda: (self.queue.append_many(make_payloads), self.queue.stats())
        )
        self.appended.set()
        return seqs

    async def read(self, after_seq: int, limit: int) -> list[Entry]:
        return await self._call(lambda: self.queue.read(after_seq, limit))

    async def ack(self, seqs: Iterable[int]) -> int:
        seqs = list(seqs)
        deleted, self._stats = await self._call(lambda: (self.queue.ack(seqs), self.queue.stats()))
        return deleted

    @property
    def stats(self) -> BufferStats:
        """The latest counters, without touching the disk."""
        return self._stats

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.queue.close()
