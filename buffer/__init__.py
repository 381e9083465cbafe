"""Durable store-and-forward queue for batches: on disk before publish, deleted after PUBACK.

``max_bytes`` bounds every file of the buffer on disk (database, WAL, index, side files);
an optional age bound evicts old batches; both evict oldest first, count what they drop
and log each eviction episode once when it starts and once when it stops. Every payload
is stored with its CRC-32 and checked on ``read``: a damaged one is counted and removed,
never returned. What a damaged file still holds is salvaged at open; anything at the
buffer path that is not a buffer is refused and left untouched.

The modules, one concern each; only the names in ``__all__`` below are public::

    queue.py        DurableQueue: the public class; append, read, ack, evict, shift, sync
    transaction.py  one write transaction: prefix eviction, insert within the budget, counters
    footprint.py    how max_bytes is shared between the files; page and WAL frame accounting
    age.py          the age bound's cutoff and its O(1) check for the 1 s timer
    schema.py       the on-disk format: version, tables, meta keys, CRC, the stats query
    opening.py      ownership checks, SQLite settings, format checks and migration, compaction
    recovery.py     a damaged file: salvage into a new file, quarantine, interrupted recovery
    salvage.py      the page-level reader of a damaged file (no SQLite)
    files.py        the OS: private files, fsync, the flock lock, the .seq lease, a full disk
    episodes.py     logging state changes: eviction episodes, runs of damaged batches
    stats.py        Entry, BufferStats and EvictionEpisode
    errors.py       the exception tree

See ``buffer/DESIGN.md`` for the on-disk format, the footprint, the eviction policy, clock
steps, the durability window, checksums, corruption recovery, errors and the threading
contract. Nothing here imports anything but the standard library and this package.
"""

from buffer.errors import (
    BufferError,
    BufferInUseError,
    DiskFullError,
    ForeignFileError,
    NewerFormatError,
    NotABufferError,
    PayloadTooLargeError,
)
from buffer.footprint import MIN_MAX_BYTES
from buffer.queue import DurableQueue
from buffer.stats import BufferStats, Entry, EvictionEpisode

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
