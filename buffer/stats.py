"""What the queue returns: ``Entry`` (from ``read``), ``BufferStats`` (a snapshot after each
write) and ``EvictionEpisode``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

__all__ = ["BufferStats", "Entry", "EvictionCause", "EvictionEpisode", "with_counters"]

EvictionCause = Literal["max_bytes", "max_age", "both"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored batch. ``created_at`` is the queue's clock (``time.time()``) at append."""

    seq: int
    created_at: float
    payload: bytes


@dataclass(frozen=True, slots=True)
class EvictionEpisode:
    """A run of evictions, from the first eviction to the moment the backlog is clearly
    below its bounds again (see DESIGN.md, "Eviction episodes").

    ``cause`` is the bound that evicted: ``"max_bytes"``, ``"max_age"`` or ``"both"``.
    ``first_seq``..``last_seq`` is the range of seqs lost (acked seqs in between were
    delivered); ``oldest_created_at``/``newest_created_at`` the ``created_at`` range of
    the batches lost. ``started_at`` and ``ended_at`` are the queue's clock;
    ``ended_at`` is None while ``active``.
    """

    cause: EvictionCause
    started_at: float
    first_seq: int
    last_seq: int
    batches: int
    bytes: int
    oldest_created_at: float
    newest_created_at: float
    active: bool = True
    ended_at: float | None = None


@dataclass(frozen=True, slots=True)
class BufferStats:
    """A snapshot of the queue: taken after its last write, ``disk_bytes`` when asked.

    ``oldest_seq`` is the lowest stored seq: the oldest batch not yet acknowledged (None
    when empty); the ones stored are among ``oldest_seq``..``last_seq`` (acks of a later
    lane may have removed some in between). ``oldest_created_at`` is its stamp. It can
    be later than the caller's clock (a clock that was ahead when it was stamped, or
    that stepped back since): use ``oldest_age(now)``, which is never negative. ``bytes`` is the
    sum of payload lengths; ``disk_bytes`` the size of every file of the buffer (the
    database, ``-wal``, ``-shm``, ``.lock``, ``.seq``), which ``max_bytes`` bounds.
    ``evicted_*`` count both bounds and are persisted; ``evicted_by_age_*`` are the
    part of them the age bound dropped. ``eviction`` is the current or last eviction
    episode of this open (None if nothing was evicted since). ``recovered_from``,
    ``salvaged_batches`` and ``unreadable_batches`` describe a damaged file found at
    this open (see ``DurableQueue.recovered_from``); they are not persisted.
    ``corrupt_batches`` and ``corrupt_bytes`` count the stored batches whose payload no
    longer matched its CRC-32 when ``read`` reached them: removed, never returned;
    persisted (see DESIGN.md, "Checksums").
    """

    batches: int
    bytes: int
    oldest_created_at: float | None
    last_seq: int
    evicted_batches: int
    evicted_bytes: int
    evicted_by_age_batches: int = 0
    evicted_by_age_bytes: int = 0
    recovered_from: str | None = None
    salvaged_batches: int = 0
    unreadable_batches: int = 0
    disk_bytes: int = 0
    eviction: EvictionEpisode | None = None
    corrupt_batches: int = 0
    corrupt_bytes: int = 0
    oldest_seq: int | None = None

    def oldest_age(self, now: float) -> float | None:
        """Seconds since ``oldest_created_at`` by ``now``, never negative; None if empty."""
        if self.oldest_created_at is None:
            return None
        return max(0.0, now - self.oldest_created_at)


PERSISTED: tuple[str, ...] = (
    "batches",
    "bytes",
    "oldest_created_at",
    "last_seq",
    "evicted_batches",
    "evicted_bytes",
    "evicted_by_age_batches",
    "evicted_by_age_bytes",
    "corrupt_batches",
    "corrupt_bytes",
    "oldest_seq",
)
"""The fields the database holds; the others describe this open."""


def with_counters(snapshot: BufferStats, stats: BufferStats) -> BufferStats:
    """``snapshot`` with the fields the database holds taken from ``stats`` (the rest,
    per open, kept)."""
    return dataclasses.replace(snapshot, **{name: getattr(stats, name) for name in PERSISTED})
