"""Durable store-and-forward queue for batches: on disk before publish, deleted after PUBACK.

``max_bytes`` bounds every file of the buffer on disk (database, WAL, index, side files);
an optional age bound evicts old batches; both evict oldest first, count what they drop
and log each eviction episode once when it starts and once when it stops. What a
damaged file still holds is salvaged at open; anything at the buffer path that is not
a buffer is refused and left untouched. See ``buffer/DESIGN.md`` for the on-disk
format, the footprint, the eviction policy, clock steps, the durability window,
corruption recovery, errors and the threading contract.
"""

from buffer.queue import (
    MIN_MAX_BYTES,
    BufferError,
    BufferInUseError,
    BufferStats,
    DiskFullError,
    DurableQueue,
    Entry,
    EvictionEpisode,
    ForeignFileError,
    NewerFormatError,
    NotABufferError,
    PayloadTooLargeError,
)

__all__ = [
    "MIN_MAX_BYTES",
    "BufferError",
    "BufferInUseError",
    "BufferStats",
    "DiskFullError",
    "DurableQueue",
    "Entry",
    "EvictionEpisode",
    "ForeignFileError",
    "NewerFormatError",
    "NotABufferError",
    "PayloadTooLargeError",
]
