"""Durable store-and-forward queue for batches: on disk before publish, deleted after PUBACK.

Bounded by bytes and optionally by age (oldest first); what a damaged file still holds
is salvaged at open. See ``buffer/DESIGN.md`` for the on-disk format, the eviction
policy, the durability window, corruption recovery and the threading contract.
"""

from buffer.queue import (
    BufferError,
    BufferInUseError,
    BufferStats,
    DurableQueue,
    Entry,
    ForeignFileError,
    PayloadTooLargeError,
)

__all__ = [
    "BufferError",
    "BufferInUseError",
    "BufferStats",
    "DurableQueue",
    "Entry",
    "ForeignFileError",
    "PayloadTooLargeError",
]
