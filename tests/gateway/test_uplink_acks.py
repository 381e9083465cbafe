"""The uplink's grouped deletes of acknowledged batches (`Lane.flush_acks`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import cast

from gateway.store import Store
from gateway.uplink.mqtt import Lane


class SlowStore:
    """A store whose deletes wait until released: a flush can be caught halfway."""

    def __init__(self) -> None:
        self.appended = asyncio.Event()
        self.release = asyncio.Event()
        self.deleted: list[int] = []

    async def ack(self, seqs: Iterable[int]) -> int:
        seqs = list(seqs)
        await self.release.wait()
        self.deleted += [s for s in seqs if s not in self.deleted]
        return len(seqs)


async def test_batches_a_cancelled_flush_was_deleting_are_deleted_by_the_next_flush() -> None:
    # The session ends while the ack flusher waits for the buffer: its group must not be
    # forgotten, or those batches stay on disk (sent again) and the counters are stale
    # ("stopped; 1 batch(es) remain on disk" with none there).
    store = SlowStore()
    lane = Lane("data", cast(Store, store), "city/gw-1/data", 4)
    lane.acked += [1, 2, 3]
    flush = asyncio.create_task(lane.flush_acks())
    await asyncio.sleep(0)  # it waits in the store now
    lane.acked.append(4)  # a PUBACK meanwhile
    flush.cancel()
    await asyncio.gather(flush, return_exceptions=True)
    store.release.set()
    await lane.flush_acks()  # the session's last flush
    assert store.deleted == [1, 2, 3, 4]
    assert lane.acked == []
