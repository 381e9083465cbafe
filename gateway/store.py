"""The async face of the durable buffer.

`buffer.DurableQueue` is synchronous and does its own fsyncs; the event loop must
never wait on the disk, so every call runs on one dedicated worker thread (the
buffer's threading contract). `appended` wakes the uplink when new batches land.

**Publish first, write only what is not acknowledged in time** (`[buffer] write =
"unacked"`, the default): `stage` hands batches out under seqs the buffer reserved
(never reused, buffer/DESIGN.md) and keeps them in memory, where the uplink reads
them at once; a batch the broker acknowledges before its `due` time is never written
to the SD card. `run_commits` writes the rest, every staged batch in one commit, when
the first of them falls due (the gateway makes that its first reading's time plus
`[batch] max_age`, so a power cut loses at most that much, as with an open batch);
`close` writes whatever is still staged. Those writes go to the buffer's outage
journal, an append-only file that costs the card each page once (buffer/DESIGN.md,
"Outage journal"), and from there into SQLite only if the outage outlives it. Memory
is bounded: `stage` waits while `MAX_STAGED_BYTES` are staged (a disk that refuses
writes), and the batcher's own bound takes over.

A store may start closed: when the disk is full at start-up the gateway does not
refuse to start; it keeps collecting in memory (bounded by the batcher) and opens
the buffer as soon as there is room (`reopen`, on a timer). Until then appends
raise `BufferUnavailableError` (a BufferError: the writer keeps the data and
retries) and reads wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from buffer import BufferError, BufferStats, DiskFullError, DurableQueue, Entry, EvictionEpisode
from drivers.core.clock import Clock, SystemClock, wait_event
from gateway.wire.messages import BufferHealth, EvictionHealth

log = logging.getLogger("gateway.store")

T = TypeVar("T")

_EMPTY = BufferStats(
    batches=0,
    bytes=0,
    oldest_created_at=None,
    last_seq=0,
    evicted_batches=0,
    evicted_bytes=0,
)


MAX_STAGED_BYTES = 32 << 20
"""Payload bytes staged in memory at most; `stage` waits for room beyond it."""
COMMIT_RETRY_SECONDS = 1.0  # after the disk refused a commit of staged batches
DISK_TROUBLE = (BufferError, OSError, sqlite3.Error)  # what a full or failing disk raises


@dataclasses.dataclass(slots=True)
class _Staged:
    entry: Entry
    due: float  # monotonic: written to disk then, unless acknowledged before


class BufferUnavailableError(BufferError):
    """The buffer could not be opened (a full disk); data stays in memory meanwhile."""


class Store:
    """One durable queue on its worker thread: give it an open queue, or a way to open
    one (`open` / `reopen` then open it, and may find the disk full)."""

    def __init__(
        self,
        source: DurableQueue | Callable[[], DurableQueue],
        name: str = "data",
        *,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self._clock: Clock = clock or SystemClock()
        # Staged batches by seq, in seq order: published from memory, not on disk yet.
        self._staged: dict[int, _Staged] = {}
        self._staged_bytes = 0
        self._staged_more = asyncio.Event()  # wakes run_commits
        self._room = asyncio.Event()  # set while there is room to stage
        self._room.set()
        self._committing: set[int] = set()  # staged seqs being written now
        self._acked_meanwhile: list[int] = []  # ... and acknowledged during that write
        self._commit_failing = False
        self._closing = False  # the gateway stops: stage no longer waits for room
        self._closed = False  # close() did the last writes and acks itself
        # Staged seqs up to here may be on disk too: a write of them failed, perhaps after
        # committing part of them. An ack of one deletes it from the disk as well.
        self._maybe_on_disk = 0
        self._tasks: set[asyncio.Future[None]] = set()  # acks after a write, running
        self._acks_pending: set[int] = set()  # ... and their seqs
        self._disk_last = 0  # no seq above this is on disk: reads above it stay in memory
        self.staged_written = 0  # staged batches that had to be written (not acked in time)
        self.staged_acked = 0  # staged batches acknowledged from memory, never written
        self.queue: DurableQueue | None = None
        self.appended = asyncio.Event()
        self.ready = asyncio.Event()  # set once the queue is open
        self.open_error: str | None = None  # why it is not open, while it is not
        self.opened_seq = 0  # the last seq on disk when the queue was opened (this boot)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"buffer-{name}")
        self._busy_since: float | None = None  # monotonic: the call on the worker began
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
        self.opened_seq = self._disk_last = self._stats.last_seq
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

    async def _call(self, fn: Callable[[DurableQueue], T], *, watched: bool = True) -> T:
        """`fn(queue)` on the worker thread; `watched`: counted by `busy_for` (the calls of
        the data path, each bounded in size; not the rare rewrites of a whole backlog)."""
        queue = self._queue()
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._timed if watched else _untimed, fn, queue
        )

    def _timed(self, fn: Callable[[DurableQueue], T], queue: DurableQueue) -> T:
        """`fn(queue)` on the worker thread, with its start kept for `busy_for`."""
        self._busy_since = self._clock.monotonic()
        try:
            return fn(queue)
        finally:
            self._busy_since = None

    def busy_for(self) -> float:
        """Seconds the call now on the worker thread has been running (0 when none is): a
        disk that stopped answering shows here (the watchdog's question). Not counted, as
        they may take minutes on a slow card by design: opening (a compaction, a salvage),
        the age bound's eviction and the re-dating of a backlog after a clock step."""
        since = self._busy_since
        return 0.0 if since is None else max(0.0, self._clock.monotonic() - since)

    async def append(self, make_payload: Callable[[int], bytes]) -> int:
        seq, self._stats = await self._call(lambda q: (q.append(make_payload), q.stats()))
        self._disk_last = max(self._disk_last, seq)
        self.appended.set()
        return seq

    async def append_many(self, make_payloads: list[Callable[[int], bytes]]) -> list[int]:
        """Several entries in one transaction: one fsync for all of them."""
        seqs, self._stats = await self._call(lambda q: (q.append_many(make_payloads), q.stats()))
        self._disk_last = max(self._disk_last, *seqs, 0)
        self.appended.set()
        return seqs

    # --- staging: publish first, write what is not acknowledged in time --------------

    async def stage(
        self, make_payloads: Sequence[Callable[[int], bytes]], dues: Sequence[float]
    ) -> list[int]:
        """Hand out seqs to these payloads and keep them in memory for the uplink; each is
        written to disk at its `due` (monotonic) unless acknowledged before. Raises as
        `append_many` does (PayloadTooLargeError, BufferUnavailableError, ...)."""
        while self._staged_bytes >= MAX_STAGED_BYTES and not self._closing:
            self._room.clear()
            await self._room.wait()
        entries, self._stats = await self._call(lambda q: (q.reserve(make_payloads), q.stats()))
        for entry, due in zip(entries, dues, strict=True):
            self._staged[entry.seq] = _Staged(entry, due)
            self._staged_bytes += len(entry.payload)
        self._staged_more.set()
        self.appended.set()
        return [entry.seq for entry in entries]

    @property
    def staged(self) -> int:
        """Batches in memory: handed out, neither acknowledged nor written to disk yet."""
        return len(self._staged)

    async def run_commits(self) -> None:
        """Write staged batches to disk when the first of them falls due: all of them, in
        one commit (an outage writes in groups, not batch by batch)."""
        while True:
            if not self._staged:
                self._staged_more.clear()
                await self._staged_more.wait()
                continue
            wait = min(s.due for s in self._staged.values()) - self._clock.monotonic()
            if wait > 0:
                self._staged_more.clear()
                await wait_event(self._clock, self._staged_more, wait)
                continue
            if not await self.commit_staged():
                await self._clock.sleep(COMMIT_RETRY_SECONDS)

    async def commit_staged(self) -> bool:
        """Write every staged batch to disk now, in one commit; False if the disk refused
        (they stay staged; logged once until a commit succeeds). The write itself is
        shielded: cancelled (the gateway stopping), it still finishes and is accounted."""
        group = [s.entry for s in self._staged.values()]
        if not group:
            return True
        self._committing = {e.seq for e in group}
        writing = asyncio.ensure_future(self._call(partial(_write_then_stats, group)))
        writing.add_done_callback(partial(self._written, group))
        try:
            await asyncio.shield(writing)
        except Exception:  # disk trouble, or a bug: logged by _written; kept, tried again
            return False
        return True

    def _written(self, group: list[Entry], writing: asyncio.Future[BufferStats]) -> None:
        """The bookkeeping of a write of staged batches, on the event loop, whoever waits."""
        if self._closed:  # a write the stop cut short: close() wrote and acked what was left
            return
        self._committing = set()
        acked, self._acked_meanwhile = self._acked_meanwhile, []
        err = None if writing.cancelled() else writing.exception()
        if writing.cancelled() or err is not None:
            # Part of the group may be on disk (a write is split into transactions) or
            # all of it (a COMMIT that failed late): the next write skips what is stored,
            # reads look on disk too, and acks delete there too.
            self._maybe_on_disk = max(self._maybe_on_disk, group[-1].seq)
            self._disk_last = max(self._disk_last, group[-1].seq)
            if acked:
                self._ack_later(acked)  # dropped from memory, and from disk
            if not self._commit_failing:
                self._commit_failing = True
                log.error(
                    "cannot write %d unacknowledged batch(es) to the %s buffer (%s); they "
                    "stay in memory and are published meanwhile; retrying",
                    len(group),
                    self.name,
                    err or "cancelled",
                    exc_info=None if isinstance(err, DISK_TROUBLE) else err,  # a bug: trace
                )
            return
        self._stats = writing.result()
        if self._commit_failing:
            self._commit_failing = False
            log.info("the %s buffer takes writes again", self.name)
        for entry in group:
            staged = self._staged.pop(entry.seq, None)
            if staged is not None:
                self._staged_bytes -= len(staged.entry.payload)
        self.staged_written += len(group)
        self._disk_last = max(self._disk_last, group[-1].seq)
        self._room.set()
        if acked:
            self._ack_later(acked)

    def _ack_later(self, seqs: list[int]) -> None:
        """Ack these once the loop gets to it; `close` does it for those still pending."""
        self._acks_pending.update(seqs)

        async def ack() -> None:
            try:
                await self.ack(seqs)  # close() cancels it, and acks them itself
            finally:
                self._acks_pending.difference_update(seqs)

        task = asyncio.ensure_future(ack())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def read(self, after_seq: int, limit: int) -> list[Entry]:
        """Entries to publish. A read may drop a batch whose CRC fails (bit rot): the
        counters are refreshed with it."""
        await self.ready.wait()
        entries: list[Entry] = []
        if after_seq < self._disk_last:
            entries, self._stats = await self._call(lambda q: (q.read(after_seq, limit), q.stats()))
        if len(entries) < limit and self._staged:
            after = entries[-1].seq if entries else after_seq
            for seq, staged in self._staged.items():  # in seq order
                if seq > after:
                    entries.append(staged.entry)
                    if len(entries) == limit:
                        break
        return entries

    async def ack(self, seqs: Iterable[int]) -> int:
        on_disk: list[int] = []
        dropped = 0
        for seq in seqs:
            staged = self._staged.get(seq)
            if staged is None:
                on_disk.append(seq)
            elif seq in self._committing:  # being written: delete it once it is
                self._acked_meanwhile.append(seq)
            else:
                del self._staged[seq]
                self._staged_bytes -= len(staged.entry.payload)
                dropped += 1
                if seq <= self._maybe_on_disk:
                    on_disk.append(seq)
        if dropped:
            self.staged_acked += dropped
            self._room.set()
        on_disk = [seq for seq in on_disk if seq <= self._disk_last]
        if self.queue is None or not on_disk:
            return dropped
        deleted, self._stats = await self._call(lambda q: (q.ack(on_disk), q.stats()))
        return dropped + deleted

    async def sync(self) -> None:
        """Make every commit so far survive a power cut (sync = "normal": on a timer)."""
        if self.queue is not None:
            await self._call(lambda q: q.sync())

    async def evict_older_than(self) -> int:
        """Apply the age bound now (on a timer, so a silent gateway ages out too)."""
        if self.queue is None:
            return 0
        evicted, self._stats = await self._call(
            lambda q: (q.evict_older_than(), q.stats()), watched=False
        )
        return evicted

    async def shift_created_at(self, delta: float) -> int:
        """The wall clock stepped by `delta` seconds: re-date what this boot stored before."""
        if self.queue is None:
            return 0
        for staged in self._staged.values():
            staged.entry = dataclasses.replace(
                staged.entry, created_at=staged.entry.created_at + delta
            )
        after = self.opened_seq
        shifted, self._stats = await self._call(
            lambda q: (q.shift_created_at(after, delta), q.stats()), watched=False
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
        if self._staged:  # not acknowledged either, in memory (a disk that refuses writes)
            first = next(iter(self._staged.values())).entry.created_at
            age = max(age or 0.0, now - first, 0.0)
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
            in_memory_batches=len(self._staged),
            acked_from_memory=self.staged_acked,
            written_from_memory=self.staged_written,
        )

    def closing(self) -> None:
        """The gateway stops: `stage` takes what comes without waiting for room (`close`
        writes it all)."""
        self._closing = True
        self._room.set()

    def close(self) -> None:
        """Write what is still staged, then close the queue (the clean stop's promise).
        A write cancelled by the stop may have stored part of it: those are skipped, and
        what was acknowledged meanwhile is deleted. Acks and writes still scheduled on
        the loop find the store closed and leave it be."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        self._executor.shutdown(wait=True)
        if self.queue is None:
            return
        try:
            acked = set(self._acked_meanwhile) | self._acks_pending
            left = [s.entry for seq, s in self._staged.items() if seq not in acked]
            if left:
                self.queue.append_reserved(left)
                self.staged_written += len(left)
            if acked:
                self.queue.ack(acked)
            self._staged.clear()
        finally:
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


def _untimed(fn: Callable[[DurableQueue], T], queue: DurableQueue) -> T:
    return fn(queue)


def _write_then_stats(entries: list[Entry], queue: DurableQueue) -> BufferStats:
    queue.append_reserved(entries)
    return queue.stats()
