"""Durable store-and-forward queue for batches: on disk before publish, deleted after PUBACK.

See ``buffer/DESIGN.md`` for the on-disk format, the durability window and the
threading contract.
"""

from buffer.queue import BufferError, BufferStats, DurableQueue, Entry, PayloadTooLargeError

__all__ = [
    "BufferError",
    "BufferStats",
    "DurableQueue",
    "Entry",
    "PayloadTooLargeError",
]
