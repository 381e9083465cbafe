"""One write transaction of the queue: what it evicts, what it inserts, deletes or shifts,
and the counters it commits with it.

``Tx`` keeps the batch count, payload bytes and pages as the transaction changes them,
and how many more WAL frames it may write (see ``buffer.footprint``). Eviction always
removes a prefix (the lowest seqs): by age, the longest prefix of expired entries; by
space, the shortest prefix that makes room. ``finish`` writes ``meta`` for what was
removed and makes the new ``BufferStats`` snapshot, taken over by the queue after COMMIT.
"""

from __future__ import annotations

import dataclasses
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from buffer.errors import BufferError
from buffer.footprint import TXN_FIXED_FRAMES, Budget, NewRow
from buffer.schema import INSERT_BATCH, Row, front, rows_in_seq_order, write_meta
from buffer.stats import BufferStats, EvictionCause

__all__ = ["Loss", "Tx", "checkpoint"]

_ACK_CHUNK: Final = 500  # bound parameters per statement; SQLite < 3.32 allows 999


@dataclass(slots=True)
class Loss:
    """Entries evicted by one transaction; added to the eviction episode after COMMIT."""

    batches: int = 0
    bytes: int = 0
    by_age_batches: int = 0
    by_age_bytes: int = 0
    first_seq: int = 0
    last_seq: int = 0
    oldest: float = math.inf
    newest: float = -math.inf
    largest: int = 0  # payload bytes of the largest entry evicted

    def add(self, seq: int, created_at: float, size: int, *, by_age: bool) -> None:
        self.batches += 1
        self.bytes += size
        self.largest = max(self.largest, size)
        if by_age:
            self.by_age_batches += 1
            self.by_age_bytes += size
        self.first_seq = seq if not self.first_seq else min(self.first_seq, seq)
        self.last_seq = max(self.last_seq, seq)
        self.oldest = min(self.oldest, created_at)
        self.newest = max(self.newest, created_at)

    @property
    def cause(self) -> EvictionCause:
        if self.by_age_batches == self.batches:
            return "max_age"
        return "both" if self.by_age_batches else "max_bytes"


@dataclass(slots=True)
class Tx:
    """The state of one write transaction: the counters as it changes them, what it
    evicted, and how many more WAL frames its evictions may write. ``stats`` is the
    snapshot it started from until ``finish`` makes the new one."""

    conn: sqlite3.Connection
    budget: Budget
    stats: BufferStats
    frames_left: int
    file_pages: int  # page_count, and pages in use (page_count - freelist_count), as of
    used_pages: int  # the start or of the last measure (see ``counted``)
    page_limit: int = 0  # the file may not grow past this (the budget, or its size if larger)
    batches: int = 0
    payload_bytes: int = 0
    last_seq: int = 0
    counted: bool = True  # file_pages and used_pages are up to date
    front_changed: bool = False  # the lowest seq changed: oldest_seq (and its stamp) read again
    loss: Loss = dataclasses.field(default_factory=Loss)
    removed: bool = False  # rows were deleted: meta.last_seq is written (invariant 1)
    corrupt_batches: int = 0  # rows deleted because their CRC failed, and their bytes
    corrupt_bytes: int = 0
    age_hint: float | None = None  # set when this transaction walked the age prefix
    age_done: bool = False  # ... and walked all of it
    done: bool = False  # the transaction did all it was asked (else: evictions only)
    shifted: int = 0  # rows shift rewrote
    deleting: bool = False  # the fixed frames of a deletion are accounted for

    def __post_init__(self) -> None:
        self.page_limit = max(self.budget.data_pages, self.file_pages)
        self.batches, self.payload_bytes = self.stats.batches, self.stats.bytes
        self.last_seq = self.stats.last_seq

    def measure(self) -> None:
        """Read page_count and freelist_count as this transaction sees them."""
        self.file_pages = int(self.conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])
        self.used_pages, self.counted = self.file_pages - free, True

    def free_pages(self) -> int:
        if not self.counted:
            self.measure()
        return self.budget.data_pages - self.used_pages

    def over_budget(self) -> int:
        """Pages by which the (measured) file exceeds its budget; <= 0 if it fits."""
        return max(self.used_pages - self.budget.data_pages, self.file_pages - self.page_limit)

    def changed(self, *, front: bool) -> None:
        self.counted = False
        self.front_changed = self.front_changed or front

    # -- eviction ---------------------------------------------------------------------------

    def affordable(self, runs: int, rows: int, freed_pages: int) -> bool:
        fixed = 0 if self.deleting else TXN_FIXED_FRAMES
        return fixed + self.budget.delete_frames(runs, rows, freed_pages) <= self.frames_left

    def delete_prefix(self, rows: Sequence[Row], ages: Sequence[bool]) -> None:
        """Evict ``rows`` (the lowest stored seqs, in order), counting each by its cause."""
        if not rows:
            return
        freed = sum(self.budget.freed_pages(size) for _, _, size in rows)
        fixed = 0 if self.deleting else TXN_FIXED_FRAMES
        self.frames_left -= fixed + self.budget.delete_frames(1, len(rows), freed)
        self.deleting = True
        self.conn.execute("DELETE FROM batches WHERE seq <= ?", (rows[-1][0],))
        for (seq, created_at, size), by_age in zip(rows, ages, strict=True):
            self.loss.add(seq, created_at, size, by_age=by_age)
        self.deleted(len(rows), sum(size for _, _, size in rows))

    def deleted(self, count: int, size: int) -> None:
        """Note rows deleted (evicted, acked, or removed as damaged)."""
        self.batches -= count
        self.payload_bytes -= size
        self.removed = True
        self.changed(front=True)

    def drop_unstored(self, seq: int, created_at: float, size: int) -> None:
        """Count a member of a group that never fitted as evicted (by the byte bound)."""
        self.loss.add(seq, created_at, size, by_age=False)

    def evict_expired(self, cutoff: float, now: float) -> bool:
        """Evict the expired prefix, as far as the frame allowance goes; True if all of it.

        An entry has expired if ``created_at < cutoff``. A stamp in the future
        (``created_at > now``) cannot be trusted: such an entry goes if an expired entry
        follows it, and otherwise waits. The walk stops at the first entry stamped
        between ``cutoff`` and ``now``: older entries behind it wait for their turn.
        Leaves in ``age_hint`` the stamp whose expiry is the next possible eviction.
        """
        expired = 0  # rows[:expired] go
        rows: list[Row] = []
        freed = 0  # pages freed by rows[:expired], about
        hint = math.inf
        complete = True
        for row in rows_in_seq_order(self.conn):
            created_at = row[1]
            rows.append(row)
            if created_at < cutoff:
                more = sum(self.budget.freed_pages(s) for _, _, s in rows[expired:])
                if not self.affordable(1, len(rows), freed + more):
                    rows.pop()
                    complete = False
                    break
                expired, freed = len(rows), freed + more
            elif created_at > now:
                continue  # pending: goes only if an expired entry follows
            else:
                hint = created_at
                break
        if complete and len(rows) > expired:  # future stamps after the last expired entry
            hint = min(hint, *(c for _, c, _ in rows[expired:]))
        self.delete_prefix(rows[:expired], [True] * expired)
        self.age_hint = hint if complete else -math.inf
        self.age_done = complete
        return complete

    def evict_pages(self, pages: float) -> bool:
        """Evict the shortest prefix that frees about ``pages`` pages (at least one row),
        as far as the frame allowance goes; False if it could not evict at all."""
        chosen: list[Row] = []
        estimate = 0.0
        freed = 0
        for row in rows_in_seq_order(self.conn):
            size = row[2]
            if not self.affordable(1, len(chosen) + 1, freed + self.budget.freed_pages(size)):
                break
            chosen.append(row)
            estimate += self.budget.row_pages(size)
            freed += self.budget.freed_pages(size)
            if estimate >= pages:
                break
        self.delete_prefix(chosen, [False] * len(chosen))
        return bool(chosen)

    def make_room(self, pages: int) -> bool:
        """Evict until ``pages`` more pages fit in the data budget; False when the frame
        allowance ran out first (what was evicted stays evicted)."""
        while self.batches and (short := pages - self.free_pages()) > 0:
            if not self.evict_pages(short):
                return False
        return True

    def evict(self, now: float, cutoff: float | None, *, to_budget: bool) -> None:
        """Evict the expired prefix (if ``cutoff``), then (if ``to_budget``) until the
        entries fit in the data budget; ``done`` if both got as far as they had to."""
        self.done = (cutoff is None or self.evict_expired(cutoff, now)) and (
            not to_budget or self.make_room(0)
        )

    # -- inserting, deleting, shifting -----------------------------------------------------

    def insert(self, rows: list[NewRow]) -> bool:
        """Insert ``rows`` (new seqs, in order) within the data budget, evicting older
        entries (or, when nothing older is left, the group's own first members) until
        they fit. False when the frame allowance ran out before they fitted."""
        if not self.make_room(self.budget.data_pages_for(len(p) for _, _, p, _ in rows)):
            return False
        while True:
            self.conn.execute("SAVEPOINT fit")
            self.conn.executemany(
                INSERT_BATCH, [(seq, at, len(p), p, crc) for seq, at, p, crc in rows]
            )
            self.measure()
            over = self.over_budget()
            if over <= 0:
                self.conn.execute("RELEASE fit")
                break
            self.conn.execute("ROLLBACK TO fit")
            self.conn.execute("RELEASE fit")
            self.counted = False
            if self.batches:
                if not self.evict_pages(over):
                    return False
            elif len(rows) > 1:  # nothing older left: the group's first member goes, unstored
                seq, created_at, payload, _ = rows.pop(0)
                self.drop_unstored(seq, created_at, len(payload))
            else:  # max_payload fits in an empty queue: only a bug gets here
                raise BufferError(f"an entry of {len(rows[0][2])} bytes does not fit")
        # Rows below the first entry (reserved seqs stored after later appends) are the
        # new front too.
        first = self.stats.oldest_seq
        below = first is not None and rows[0][0] < first
        self.front_changed = self.front_changed or not self.batches or below
        self.batches += len(rows)
        self.payload_bytes += sum(len(p) for _, _, p, _ in rows)
        self.last_seq = max(self.last_seq, rows[-1][0])
        return True

    def evict_and_insert(
        self,
        chunk: list[NewRow],
        now: float,
        cutoff: float | None,
        unstored: list[NewRow],
        *,
        evict_older: bool,
    ) -> None:
        """What an append does in one transaction: count the members of its group that
        cannot be stored, apply the age bound, evict everything older if a member did not
        fit, then insert the chunk (``done``) if the frame allowance lasted."""
        for seq, created_at, payload, _ in unstored:
            self.drop_unstored(seq, created_at, len(payload))
        ready = cutoff is None or self.evict_expired(cutoff, now)  # age first, then bytes
        if ready and evict_older:
            while self.batches and self.evict_pages(math.inf):
                pass
            ready = not self.batches
        if ready:
            self.done = self.insert(list(chunk))

    def delete_seqs(self, seqs: list[int], *, corrupt: bool = False) -> None:
        """Delete these entries where they exist (an ack; or, with ``corrupt``, entries
        whose payload failed its CRC, counted as such)."""
        count = freed = 0
        for start in range(0, len(seqs), _ACK_CHUNK):
            part = seqs[start : start + _ACK_CHUNK]
            marks = ",".join("?" * len(part))
            found, size = self.conn.execute(
                f"SELECT count(*), coalesce(sum(size), 0) FROM batches WHERE seq IN ({marks})",
                part,
            ).fetchone()
            if found:
                self.conn.execute(f"DELETE FROM batches WHERE seq IN ({marks})", part)
                count += found
                freed += size
        if count:
            self.deleted(count, freed)
            if corrupt:
                self.corrupt_batches += count
                self.corrupt_bytes += freed

    def shift(self, chunk: list[Row], delta: float, *, in_place: bool) -> bool:
        """Add ``delta`` to ``created_at`` of the rows of ``chunk`` (consecutive seqs).
        False if the file would outgrow its budget (rows freed their pages first: only a
        bug gets there)."""
        first, last = chunk[0][0], chunk[-1][0]
        if in_place:
            self.shifted = self.conn.execute(
                "UPDATE batches SET created_at = created_at + ? WHERE seq BETWEEN ? AND ?",
                (delta, first, last),
            ).rowcount
        else:
            rows = self.conn.execute(
                "SELECT seq, created_at + ?, size, payload, crc FROM batches"
                " WHERE seq BETWEEN ? AND ? ORDER BY seq",
                (delta, first, last),
            ).fetchall()
            self.conn.execute("DELETE FROM batches WHERE seq BETWEEN ? AND ?", (first, last))
            self.conn.executemany(INSERT_BATCH, rows)
            self.shifted = len(rows)
        self.changed(front=True)
        self.measure()
        return self.over_budget() <= 0

    # -- commit ------------------------------------------------------------------------------

    def finish(self) -> None:
        """Write the counters of what was removed; make the new snapshot."""
        loss, old = self.loss, self.stats
        self.stats = dataclasses.replace(
            old,
            batches=self.batches,
            bytes=self.payload_bytes,
            last_seq=max(self.last_seq, loss.last_seq),
            evicted_batches=old.evicted_batches + loss.batches,
            evicted_bytes=old.evicted_bytes + loss.bytes,
            evicted_by_age_batches=old.evicted_by_age_batches + loss.by_age_batches,
            evicted_by_age_bytes=old.evicted_by_age_bytes + loss.by_age_bytes,
            corrupt_batches=old.corrupt_batches + self.corrupt_batches,
            corrupt_bytes=old.corrupt_bytes + self.corrupt_bytes,
        )
        new = self.stats
        if loss.batches or self.removed:  # every deleting transaction writes last_seq
            written = {"last_seq": new.last_seq}
            if loss.batches:
                written.update(
                    evicted_batches=new.evicted_batches,
                    evicted_bytes=new.evicted_bytes,
                    evicted_by_age_batches=new.evicted_by_age_batches,
                    evicted_by_age_bytes=new.evicted_by_age_bytes,
                )
            if self.corrupt_batches:
                written.update(corrupt_batches=new.corrupt_batches, corrupt_bytes=new.corrupt_bytes)
            write_meta(self.conn, **written)
        if not self.counted:
            self.measure()
        if self.front_changed:
            oldest_seq, oldest_at = front(self.conn)
            self.stats = dataclasses.replace(
                new, oldest_seq=oldest_seq, oldest_created_at=oldest_at
            )


def checkpoint(conn: sqlite3.Connection) -> bool:
    """Copy the WAL into the database now (PASSIVE: never waits), so that the next write
    starts the WAL over. True if another connection held part of it back."""
    busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return bool(busy or log != done) and log > 0
