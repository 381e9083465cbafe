"""How ``max_bytes`` is shared between the files of a buffer, and page accounting.

``max_bytes`` bounds every file on disk: the database (at most ``data_pages`` pages),
its WAL (a reserve of ``max_bytes / 8`` within [256 KiB, 4 MiB]), the ``-shm`` index,
``.lock`` and ``.seq``. Space is counted in SQLite pages, and the WAL frames a
transaction may write are bounded before it starts; work larger than one transaction
of the reserve is split by the ``*_chunks`` functions here. Pure arithmetic, no I/O.
See DESIGN.md, "Footprint".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from buffer.schema import FRAME_HEADER, WAL_HEADER, Row, stored_as_integer

__all__ = ["MIN_MAX_BYTES", "Budget", "NewRow", "check_max_bytes", "members_that_fit"]

MIN_MAX_BYTES: Final = 512 * 1024
"""The smallest ``max_bytes``: the WAL reserve, the ``-shm`` index and a few pages."""

WAL_MIN: Final = 256 * 1024  # WAL reserve: max_bytes / 8 within these bounds
WAL_MAX: Final = 4 * 1024 * 1024
SHM_REGION: Final = 32 * 1024  # the -shm grows by 32 KiB per 4096 WAL frames
SHM_FRAMES: Final = 4096
SIDE_RESERVE: Final = 512  # .lock (a pid), .seq and its .tmp (a number each)
RECORD_OVERHEAD: Final = 23  # a row's record header, created_at, size and crc, typically
RECORD_MAX_OVERHEAD: Final = 32  # ... at most
CELL_OVERHEAD: Final = 24  # length and rowid varints, cell pointer, overflow pointer
TXN_FIXED_FRAMES: Final = 8  # page 1, meta, interior and boundary pages of a transaction
MIN_EVICT_FRAMES: Final = 16  # what any transaction keeps for evicting in its own right


def check_max_bytes(max_bytes: int) -> int:
    """``max_bytes``, if it is an int of at least ``MIN_MAX_BYTES``; else ValueError."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < MIN_MAX_BYTES:
        raise ValueError(
            f"max_bytes must be an int of at least {MIN_MAX_BYTES} (the WAL, its index"
            f" and a few pages), got {max_bytes!r}"
        )
    return max_bytes


NewRow = tuple[int, float, bytes, int]
"""(seq, created_at, payload, crc) of an entry about to be inserted."""


@dataclass(frozen=True, slots=True)
class Budget:
    """How ``max_bytes`` is split between the database, its WAL, the -shm and side files."""

    max_bytes: int
    page_size: int
    wal_bytes: int  # the -wal never grows beyond this
    shm_bytes: int  # the -shm index of a WAL of that size
    data_pages: int  # the database file never grows beyond this many pages
    wal_frames: int  # frames the WAL reserve holds
    headroom: int  # frames a transaction may write with no checkpoint first
    checkpoint_frames: int  # wal_autocheckpoint: leaves headroom frames before wal_frames
    txn_frames: int  # frames any one transaction may write (after a checkpoint)
    max_payload: int  # the largest payload that fits in both

    @classmethod
    def of(cls, max_bytes: int, page_size: int) -> Budget:
        wal_bytes = min(max(max_bytes // 8, WAL_MIN), WAL_MAX)
        wal_frames = (wal_bytes - WAL_HEADER) // (page_size + FRAME_HEADER)
        shm_bytes = SHM_REGION * (1 + (wal_frames + 34) // SHM_FRAMES)
        data_pages = (max_bytes - wal_bytes - shm_bytes - SIDE_RESERVE) // page_size
        headroom = max(wal_frames // 4, 2 * MIN_EVICT_FRAMES)
        txn_frames = wal_frames - 1
        geometry = cls(
            max_bytes=max_bytes,
            page_size=page_size,
            wal_bytes=wal_bytes,
            shm_bytes=shm_bytes,
            data_pages=data_pages,
            wal_frames=wal_frames,
            headroom=headroom,
            checkpoint_frames=wal_frames - headroom + 1,
            txn_frames=txn_frames,
            max_payload=0,
        )
        return dataclasses.replace(geometry, max_payload=geometry.largest_payload())

    @property
    def usable(self) -> int:
        return self.page_size  # buffer files reserve no bytes at the end of their pages

    @property
    def trunk_entries(self) -> int:
        """Free pages one freelist trunk page lists (fileformat2.html, 1.5)."""
        return self.usable // 4 - 2

    def overflow_pages(self, size: int, overhead: int = RECORD_OVERHEAD) -> int:
        """Overflow pages of a row with a ``size``-byte payload (fileformat2.html, 1.6)."""
        record, usable = size + overhead, self.usable
        max_local = usable - 35
        if record <= max_local:
            return 0
        min_local = (usable - 12) * 32 // 255 - 23
        local = min_local + (record - min_local) % (usable - 4)
        if local > max_local:
            local = min_local
        return -(-(record - local) // (usable - 4))

    def cell_bytes(self, size: int, overhead: int = RECORD_OVERHEAD) -> int:
        """Bytes a row takes on its leaf page."""
        record = size + overhead
        spilled = self.overflow_pages(size, overhead) * (self.usable - 4)
        return record - min(spilled, record) + CELL_OVERHEAD

    def row_pages(self, size: int) -> float:
        """Pages a row occupies, its share of a leaf included: what evicting it frees."""
        return self.overflow_pages(size) + self.cell_bytes(size) / self.usable

    def freed_pages(self, size: int) -> int:
        """Pages deleting a row frees at most: its overflow pages and (a share of) a leaf."""
        return self.overflow_pages(size) + 1

    def data_pages_for(self, sizes: Iterable[int]) -> int:
        """Pages new rows of these sizes take (a close estimate; the insert checks)."""
        sizes = list(sizes)
        cells = sum(self.cell_bytes(s) for s in sizes)
        return sum(self.overflow_pages(s) for s in sizes) + -(-cells // (self.usable - 8))

    def insert_frames(self, sizes: Iterable[int]) -> int:
        """An upper bound of the WAL frames an insert of rows of these sizes writes."""
        overflow = cells = 0
        for size in sizes:
            row_overflow, row_cells = self.insert_parts(size)
            overflow, cells = overflow + row_overflow, cells + row_cells
        return self.frames_of(overflow, cells)

    def insert_parts(self, size: int) -> tuple[int, int]:
        """(overflow pages, leaf bytes) a new row takes, at most; see ``frames_of``."""
        overhead = RECORD_MAX_OVERHEAD
        return self.overflow_pages(size, overhead) + 1, self.cell_bytes(size, overhead)

    def frames_of(self, overflow: int, cells: int) -> int:
        """WAL frames of an insert whose rows take these pages and leaf bytes: overflow
        pages, leaves (at least half full: appends fill them), interior pages, page 1,
        the freelist's trunk pages."""
        leaves = -(-cells // (self.usable // 2)) + 1
        return overflow + leaves + TXN_FIXED_FRAMES + overflow // self.trunk_entries + 1

    def delete_frames(self, runs: int, rows: int, freed_pages: int) -> int:
        """An upper bound of the WAL frames deleting ``rows`` rows in ``runs`` runs of
        consecutive seqs writes: the pages that keep rows (a deleted leaf is freed, not
        written), interior pages and the freelist's trunk pages."""
        return 3 * runs + -(-rows // 10) + freed_pages // self.trunk_entries + 1

    def largest_payload(self) -> int:
        def fits(size: int) -> bool:
            frames = self.insert_frames([size]) + MIN_EVICT_FRAMES
            pages = 3 + self.overflow_pages(size, RECORD_MAX_OVERHEAD) + 2
            return frames <= self.txn_frames and pages <= self.data_pages

        low, high = 0, self.max_bytes
        while low < high:
            middle = (low + high + 1) // 2
            if fits(middle):
                low = middle
            else:
                high = middle - 1
        return low

    # -- work split into transactions that fit the WAL reserve -------------------------------

    def insert_chunks(self, rows: list[NewRow]) -> Iterator[list[NewRow]]:
        """Consecutive runs of new rows whose insert (and the evictions it may need) fits
        one transaction each; at least one run."""
        chunk: list[NewRow] = []
        overflow = cells = 0
        for row in rows:
            row_overflow, row_cells = self.insert_parts(len(row[2]))
            frames = self.frames_of(overflow + row_overflow, cells + row_cells)
            if chunk and frames > self.txn_frames - MIN_EVICT_FRAMES:
                yield chunk
                chunk, overflow, cells = [], 0, 0
            chunk.append(row)
            overflow, cells = overflow + row_overflow, cells + row_cells
        yield chunk

    def delete_chunks(self, wanted: list[int]) -> Iterator[list[int]]:
        """Split sorted seqs into groups whose deletion fits in the WAL's headroom."""
        per_row = self.freed_pages(self.max_payload)
        room = self.headroom - TXN_FIXED_FRAMES
        start = 0
        while start < len(wanted):
            end, runs = start + 1, 1
            while end < len(wanted):
                runs += wanted[end] != wanted[end - 1] + 1
                freed = min(self.data_pages, (end + 1 - start) * per_row)
                if self.delete_frames(runs, end + 1 - start, freed) > room:
                    break
                end += 1
            yield wanted[start:end]
            start = end

    def shift_chunks(
        self, rows: Sequence[Row], delta: float
    ) -> Iterator[tuple[list[Row], bool, int]]:
        """Split rows to shift into runs that fit one transaction each: (rows, in place,
        WAL frames). A record that keeps its size is overwritten in place by SQLite (its
        leaf page only); one that does not (an integral stamp, stored as an integer) is
        deleted and inserted again, so that its pages are freed before new ones are
        taken and the file does not grow."""
        limit = self.txn_frames - MIN_EVICT_FRAMES
        chunk: list[Row] = []
        frames = TXN_FIXED_FRAMES
        chunk_in_place = True
        for row in rows:
            _, created_at, size = row
            in_place = not (stored_as_integer(created_at) or stored_as_integer(created_at + delta))
            cost = 1 if in_place else self.insert_frames([size]) - TXN_FIXED_FRAMES
            if chunk and (frames + cost > limit or in_place != chunk_in_place):
                yield chunk, chunk_in_place, frames
                chunk, frames = [], TXN_FIXED_FRAMES
            chunk.append(row)
            chunk_in_place = in_place
            frames += cost
        if chunk:
            yield chunk, chunk_in_place, frames


def members_that_fit(budget: Budget, sizes: list[int]) -> int:
    """Index of the first member of a group that fits the data budget together with all
    the members after it (0: all of them); the ones before it can never be stored."""
    capacity = budget.data_pages - 5 - budget.data_pages // 200  # schema, interior pages
    total = 0.0
    for index in range(len(sizes) - 1, -1, -1):
        total += budget.row_pages(sizes[index])
        if total > capacity:
            return index + 1 if index + 1 < len(sizes) else len(sizes) - 1
    return 0
