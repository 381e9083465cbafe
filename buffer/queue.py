"""``DurableQueue``: a durable FIFO of opaque batches on SQLite (WAL), bounded on disk
and optionally by age; ``append`` durably, ``read`` in seq order, ``ack`` to delete.

Invariants, true after every committed transaction and so after any crash:

1. ``max(meta.last_seq, max(batches.seq))`` is the last seq handed out. Appends do not
   write ``meta`` (one page less per append); every transaction that deletes entries
   writes ``meta.last_seq``. A seq is never handed out twice.
2. The files fit in ``max_bytes``: the database file never holds more than the data
   budget's pages, the WAL never grows past its reserve (no transaction writes more
   frames than the reserve leaves room for), the ``-shm`` index and the side files fit
   in theirs (``buffer.footprint``). ``stats().bytes`` is therefore below it too.
3. The evicted counters never decrease; eviction removes the lowest seqs first (by
   age: the longest prefix of expired entries, a future stamp counting as expired
   when an expired entry follows it; by space: the shortest prefix that makes room).
4. ``<path>.seq`` >= every seq ever returned by ``append`` (a lease, renewed ahead of
   use), so a quarantined database, or commits lost by ``synchronous="normal"``, do
   not make seqs restart.
5. Nothing at ``<path>`` is moved, renamed or written unless it is a buffer
   (``buffer.opening``).
6. ``read`` never returns a payload that does not match the CRC-32 stored with it: such
   an entry is removed and counted in ``corrupt_batches`` (``buffer.schema``).
7. Every seq in the outage journal (``buffer.journal``: what ``append_reserved``
   stores, while it has room) is above every seq in the database: the journal is
   folded into the database before any other write to it, at open and at close.

The on-disk format is in ``buffer.schema``; the full contract in ``buffer/DESIGN.md``.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import logging
import math
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Final, Self

from buffer.age import AgeBound
from buffer.episodes import DamageLog, EvictionLog
from buffer.errors import BufferError, CorruptDatabaseError, PayloadTooLargeError, translating
from buffer.files import (
    SeqFile,
    WalSync,
    acquire_process_lock,
    environment_error,
    make_directory,
    pid_line,
    release_process_lock,
    sizes,
    write_error,
)
from buffer.footprint import (
    MIN_EVICT_FRAMES,
    SIDE_RESERVE,
    Budget,
    NewRow,
    check_max_bytes,
    members_that_fit,
)
from buffer.journal import JOURNAL_MAX, Journal, Scanned, group_bytes
from buffer.opening import (
    Opened,
    Synchronous,
    compact_if_oversized,
    open_checked_file,
    open_database,
    refuse_anything_but_a_file,
    refuse_what_is_not_ours,
)
from buffer.schema import (
    PAGE_SIZE,
    Damaged,
    Row,
    check_rows,
    checksum,
    in_transaction,
    load_stats,
    rows_in_seq_order,
    write_meta,
)
from buffer.stats import BufferStats, Entry, with_counters
from buffer.transaction import Tx, checkpoint

__all__ = ["DurableQueue", "Synchronous"]

_SEQ_LEASE: Final = 1_000_000
"""How far ahead of the last seq the ``.seq`` side file is written while the queue is open."""

_MAX_INT64: Final = 2**63 - 1
_FOLD_BYTES: Final = 1 << 20
"""A fold moves the journal into the database in calls of about this many payload bytes:
large transactions write each page about once (the journal's own groups are small)."""
_log = logging.getLogger("buffer")


class DurableQueue:
    """Store-and-forward queue: ``append`` durably, ``read`` in seq order, ``ack`` to delete.

    Every method commits before it returns. Calls may come from any thread but are
    serialised by an internal lock; the gateway makes them all from one worker thread.
    ``stats()`` never waits for that lock or touches the disk.

    ``max_bytes`` bounds every file of the buffer on disk (at least ``MIN_MAX_BYTES``);
    ``max_age`` (seconds) adds an age bound; ``synchronous="normal"`` trades the last
    commits before a power cut for fewer flushes (see DESIGN.md, "Durability window");
    ``clock`` stamps ``created_at`` and judges age (tests inject one).
    """

    recovered_from: str | None
    """Where a damaged file found at open was moved to, or None."""
    salvaged_batches: int
    """Batches copied out of that damaged file into the fresh one."""
    unreadable_batches: int
    """Batches known to exist in that damaged file that could not be read."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int,
        max_age: float | None = None,
        synchronous: Synchronous = "full",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._budget = Budget.of(check_max_bytes(max_bytes), PAGE_SIZE)  # until the file's
        self._age = AgeBound(max_age)  # page size is known; both raise ValueError
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        self._path = os.fspath(path)
        if not self._path.strip():
            raise BufferError("the buffer path is empty: set [buffer] path to a file name")
        self._seq = SeqFile(self._path)
        self._side_bytes = 0  # .lock and .seq: the sizes we wrote
        self._max_bytes = max_bytes
        self._synchronous: Synchronous = synchronous
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._seq_ceiling = 0
        self._reserved_to = 0  # the highest seq ``reserve`` handed out (0: none)
        self._lease_in_meta = False  # a lease is in meta.normal_lease (reserve wrote it)
        self._file_pages = self._used_pages = 0  # as of the last commit
        self._unchecked_until = 0  # rows up to this seq carry no CRC (format 1)
        self._evictions = EvictionLog(self._path, max_bytes, max_age)
        self._damage = DamageLog(self._path)
        self._wal = WalSync(self._path)
        self._journal = Journal(self._path, durable=synchronous == "full")
        self._warned_checkpoint = False
        self.recovered_from = None
        self.salvaged_batches = self.unreadable_batches = 0

        refuse_anything_but_a_file(self._path)
        refuse_what_is_not_ours(self._path, self._seq.present())
        make_directory(self._path)
        self._lock_fd = acquire_process_lock(self._path)
        self._side_bytes = len(pid_line())
        try:
            opened, recovery = open_database(
                self._path, max_bytes=max_bytes, synchronous=synchronous, seq=self._seq
            )
            if recovery is not None:
                self.recovered_from = recovery.recovered_from
                self.salvaged_batches = recovery.salvaged_batches
                self.unreadable_batches = recovery.unreadable_batches
            self._stats = self._take(opened)
            try:
                self._fold_left_journal()
                self._evict_to_bounds(self._clock())
                self._write_seq_file(self._stats.last_seq + _SEQ_LEASE)
                self._after_write(self._clock())
                self._shown = self._stats  # (the journal is folded: empty)
            except BaseException:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                raise
        except BaseException:
            release_process_lock(self._lock_fd)
            raise

    # -- public API ------------------------------------------------------------------

    @property
    def max_payload(self) -> int:
        """The largest payload ``append`` accepts (see DESIGN.md, "Footprint")."""
        return self._budget.max_payload

    def append(self, make_payload: Callable[[int], bytes]) -> int:
        """Store ``make_payload(seq)`` under the next seq and commit; return that seq.

        When this returns, the entry survives SIGKILL, and power loss too with
        ``synchronous="full"``. If the files would go over ``max_bytes``, or the oldest
        entries are older than ``max_age``, the oldest entries are evicted in the same
        transaction. If ``make_payload`` raises, or the payload is larger than
        ``max_payload`` (``PayloadTooLargeError``), nothing changes and the seq is not
        consumed.
        """
        return self.append_many([make_payload])[0]

    def append_many(self, make_payloads: Sequence[Callable[[int], bytes]]) -> list[int]:
        """Store several payloads under consecutive seqs with one commit (one fsync).

        The same as calling ``append`` for each, in order, except that nothing is stored
        if any ``make_payload`` raises or returns a payload that is not bytes or larger
        than ``max_payload``; then no seq is consumed. A group larger than the budget
        evicts its own first members, as single appends would (they are counted as
        evicted, never written; their seqs are returned all the same). A group larger
        than one transaction of the WAL reserve is committed in several, in order (a
        crash in between keeps a prefix of the group; see DESIGN.md).
        """
        with self._locked():
            conn = self._open_connection()
            first, payloads = self._hand_out(make_payloads, reserving=False)
            if not payloads:
                return []
            self._fold(conn)
            now = self._clock()
            rows = [(seq, now, p, checksum(p)) for seq, p in enumerate(payloads, start=first)]
            self._store(conn, rows, now)
            return list(range(first, first + len(payloads)))

    def reserve(self, make_payloads: Sequence[Callable[[int], bytes]]) -> list[Entry]:
        """Hand out the next seqs to ``make_payload(seq)`` each, storing nothing; return
        the entries (``created_at`` is the clock now).

        For a caller that publishes a batch from memory first and stores it only if it
        is not acknowledged soon (``append_reserved``; the gateway's default). Payloads
        are made and checked as by ``append_many`` (nothing is reserved if one raises or
        is larger than ``max_payload``). The seqs are never handed out again, whatever
        happens next: they are covered by a lease recorded, fsynced, in ``.seq`` and in
        ``meta.normal_lease`` (one write per million seqs), so an open after a crash
        continues above every seq reserved, whatever ``synchronous`` says; a clean
        ``close`` brings the lease back to ``last_seq``. A seq reserved and never stored
        (acknowledged from memory, or lost with the process) is simply absent; ``ack``
        ignores it.
        """
        with self._locked():
            self._open_connection()
            first, payloads = self._hand_out(make_payloads, reserving=True)
            if not payloads:
                return []
            self._reserved_to = last = first + len(payloads) - 1
            self._stats = dataclasses.replace(self._stats, last_seq=last)
            now = self._clock()
            return [Entry(seq, now, p) for seq, p in enumerate(payloads, start=first)]

    def append_reserved(self, entries: Sequence[Entry]) -> None:
        """Store entries under seqs ``reserve`` handed out, with one commit (one fsync).

        ``entries`` come from ``reserve`` (their ``created_at`` may have been shifted
        since), in increasing seq order; the ones acknowledged meanwhile are left out (a
        stored queue may have gaps). An entry already stored is skipped: a call that
        failed may have committed part of its group (it is split into transactions that
        fit the WAL), or reached the disk though it reported an error, and the caller
        simply tries again with everything it still holds. Otherwise as
        ``append_many``: the bounds evict the oldest entries, members that cannot fit
        are counted as evicted.
        """
        with self._locked():
            conn = self._open_connection()
            if not entries:
                return
            stored = self._stored_between(conn, entries[0].seq, entries[-1].seq)
            rows: list[NewRow] = []
            previous = 0
            for entry in entries:
                seq, created_at, payload = entry.seq, entry.created_at, entry.payload
                if not previous < seq <= self._reserved_to:
                    raise ValueError(
                        f"seq {seq} was not reserved, or is out of order (after {previous})"
                    )
                previous = seq
                if seq in stored or self._journal.holds(seq):
                    continue  # an earlier call stored it, then failed (or was not told)
                payload = self._checked(payload)
                rows.append((seq, float(created_at), payload, checksum(payload)))
            if not rows:
                return
            top = self._top_seq(conn)
            now = self._clock()
            cutoff = self._age.cutoff(now)
            if (
                rows[0][0] > max(top, self._journal.last_seq)  # the journal's invariant
                and self._journal_fits(rows)
                and (cutoff is None or not self._journal.expired(cutoff))
            ):
                # The age bound, as append_many applies it: only to the database here (no
                # journal entry has expired, so the expired prefix ends in the database).
                if self._evict_expired(conn, now):
                    self._after_write(now)
                try:
                    self._journal.write(rows)
                    return
                except OSError as err:  # a full disk: the database may have room in the
                    _log.warning(  # pages it holds, as before the journal existed
                        "buffer %s: cannot write to the outage journal (%s); storing in the"
                        " database",
                        self._path,
                        err,
                    )
            self._fold(conn, rows)

    def evict_older_than(self, now: float | None = None) -> int:
        """Apply the age bound now: evict the entries created before ``now - max_age``.

        Oldest first, stopping at the first entry stamped between that cutoff and
        ``now`` (eviction always removes a prefix; a stamp in the future goes when an
        expired entry follows it). ``now`` defaults to the clock. Returns how many
        entries were evicted; 0 without a ``max_age``. Cheap enough for a timer: without
        an expired entry it reads nothing.
        """
        with self._locked():
            conn = self._open_connection()
            if self._age.max_age is None:
                return 0
            at = self._clock() if now is None else now
            if self._journal.expired(at - self._age.max_age):
                self._fold(conn)  # a journal entry expired too: the database evicts
            evicted = self._evict_expired(conn, at)
            if evicted:
                self._after_write(at)
            else:
                self._maybe_end_episode(at)
            return evicted

    def read(self, after_seq: int = 0, limit: int = 100) -> list[Entry]:
        """Up to ``limit`` entries with ``seq > after_seq``, oldest first. Deletes nothing
        but what it must not return: an entry whose payload no longer matches its CRC-32
        is removed instead (counted in ``corrupt_batches``, logged), and the entries after
        it fill its place (see DESIGN.md, "Checksums")."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        with self._locked():
            conn = self._open_connection()
            entries: list[Entry] = []
            after = min(max(after_seq, 0), _MAX_INT64)
            while len(entries) < limit:
                want = min(limit - len(entries), _MAX_INT64)
                with translating(self._path, "read"):
                    rows = conn.execute(
                        "SELECT seq, created_at, payload, crc FROM batches"
                        " WHERE seq > ? ORDER BY seq LIMIT ?",
                        (after, want),
                    ).fetchall()
                sound, damaged = check_rows(rows, self._unchecked_until)
                entries += sound
                if not damaged:
                    if rows:
                        self._damage.end("a read found none")
                    break
                self._delete(conn, [d.seq for d in damaged], corrupt=True)
                self._damage.removed(damaged)
                if len(rows) < want:
                    break
                after = rows[-1][0]
            # Every seq in the journal is above every seq in the database.
            after = entries[-1].seq if entries else after
            while len(entries) < limit and self._journal.batches:
                sound, damaged = self._journal.read(after, limit - len(entries))
                entries += sound
                if not damaged:
                    if sound:
                        self._damage.end("a read found none")
                    break
                self._journal_damaged(conn, damaged)
                after = max(after, damaged[-1].seq, sound[-1].seq if sound else 0)
            return entries

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete these entries; return how many were deleted.

        Idempotent: seqs already acked, evicted or never handed out are ignored. One
        transaction for a usual group; a group whose deletion would write more than the
        WAL's headroom is committed in several (a crash in between only means some of
        them are published again).
        """
        with self._locked():
            conn = self._open_connection()
            last_seq = self._stats.last_seq
            wanted = sorted({s for s in map(operator.index, seqs) if 0 < s <= last_seq})
            first = self._journal.first_seq()
            if first is None:
                return self._delete(conn, wanted, corrupt=False)
            split = bisect.bisect_left(wanted, first)
            released = len(self._journal.release(wanted[split:]))
            return self._delete(conn, wanted[:split], corrupt=False) + released

    def shift_created_at(self, after_seq: int, delta: float) -> int:
        """Add ``delta`` seconds to ``created_at`` of every entry with ``seq > after_seq``.

        For a clock step: the gateway calls it with the first seq of this boot (minus
        one) and the size of the step, so the entries stamped before the step are judged
        by the corrected clock. Cheap for the few entries of a boot: one transaction
        that rewrites only their leaf pages (several, oldest first, for more entries
        than the WAL's headroom takes). Returns how many entries were shifted.
        """
        after = operator.index(after_seq)
        if (
            isinstance(delta, bool)
            or not isinstance(delta, int | float)
            or not math.isfinite(delta)
        ):
            raise ValueError(f"delta must be a finite number of seconds, got {delta!r}")
        with self._locked():
            conn = self._open_connection()
            if not delta or after >= self._stats.last_seq:
                return 0
            self._fold(conn)  # (rare: a clock step) the entries to re-date are all in SQLite
            with translating(self._path, "read"):
                rows = list(rows_in_seq_order(conn, after=max(after, 0)))
            shifted = 0
            for chunk, in_place, frames in self._budget.shift_chunks(rows, delta):
                if frames > self._budget.headroom:
                    self._checkpoint(conn)
                allowance = self._budget.txn_frames - frames
                tx = self._transact(
                    conn, allowance, functools.partial(self._shift, chunk, delta, in_place)
                )
                self._apply(tx, None)
                shifted += tx.shifted
            now = self._clock()
            self._age.front_changed(self._stats.oldest_created_at, now)
            self._after_write(now)
            return shifted

    def sync(self) -> None:
        """Make every commit so far survive a power cut. A no-op with ``synchronous="full"``
        and when nothing was committed since the last call.

        With ``"normal"`` it fsyncs the WAL (and, the first time, its directory entry):
        calling it every second bounds what a power cut can take back to about a second
        of commits, at one flush per call that had something to flush.
        """
        with self._locked():
            self._open_connection()
            if self._synchronous == "normal":
                self._wal.sync()
                try:
                    self._journal.sync()
                except OSError as err:
                    raise BufferError(f"buffer {self._path}: sync failed: {err}") from err

    def stats(self) -> BufferStats:
        """The snapshot taken after the last write, with ``disk_bytes`` measured now.

        No lock and no SQLite: safe from any thread (the health reporter calls it on the
        event loop). ``disk_bytes`` costs three ``stat`` calls (file metadata, in memory
        for files in use); 0 once the queue is closed.
        """
        shown = self._shown  # one read: the database's counters and the journal's together
        if self._conn is None:
            return shown
        return dataclasses.replace(shown, disk_bytes=self._disk_bytes())

    def close(self) -> None:
        """Checkpoint, close the database and release the process lock. Idempotent."""
        with self._locked():
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                try:
                    try:
                        self._fold(conn)  # the next open finds one file (and no repeats)
                    finally:
                        self._journal.close()
                    self._damage.end("the buffer was closed")
                    if self._evictions.active:
                        now = self._clock()
                        self._evictions.end(now, "the buffer was closed")
                        self._after_write(now)
                    self._write_seq_file(
                        self._stats.last_seq, in_meta=self._lease_in_meta, conn=conn
                    )
                finally:
                    with translating(self._path, "close"):
                        conn.close()
            finally:
                release_process_lock(self._lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"<DurableQueue {self._path!r} {state} max_bytes={self._max_bytes}>"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The lock of every public call; at its end (whatever happened) the snapshot that
        ``stats()`` returns is replaced whole: the database's counters with the journal's
        entries added. Combined as ``stats()`` ran, a fold (the entries committed to the
        database, still in the journal until it is deleted) counted them twice."""
        with self._lock:
            try:
                yield
            finally:
                self._shown = self._with_journal(self._stats)

    # -- appending -----------------------------------------------------------------------

    def _hand_out(
        self, make_payloads: Sequence[Callable[[int], bytes]], *, reserving: bool
    ) -> tuple[int, list[bytes]]:
        """The first of the next seqs and the payloads made for them and checked; the
        lease renewed ahead of them first (into meta too for seqs handed out unstored,
        and for every caller once a reserving one has put it there)."""
        first = self._stats.last_seq + 1
        payloads = [self._checked(make(seq)) for seq, make in enumerate(make_payloads, start=first)]
        last = first + len(payloads) - 1
        in_meta = reserving or self._lease_in_meta
        if payloads and (last > self._seq_ceiling or (reserving and not self._lease_in_meta)):
            self._write_seq_file(last + _SEQ_LEASE, in_meta=in_meta)
        return first, payloads

    def _checked(self, payload: bytes) -> bytes:
        if not isinstance(payload, bytes):
            raise TypeError(f"make_payload must return bytes, not {type(payload).__name__}")
        if len(payload) > self._budget.max_payload:
            raise PayloadTooLargeError(len(payload), self._max_bytes, self._budget.max_payload)
        return payload

    def _store(
        self, conn: sqlite3.Connection, rows: list[NewRow], now: float, *, age: bool = True
    ) -> None:
        """Commit new rows: the members of a group that cannot fit are counted as evicted
        without being written; the rest go in chunks that fit one transaction each.
        ``age=False`` (a fold: entries moved, not appended) leaves the age bound alone."""
        keep = members_that_fit(self._budget, [len(p) for _, _, p, _ in rows])
        unstored, rows = rows[:keep], rows[keep:]
        # The age bound applies once per call, to the entries as they were before it
        # (then the byte bound): entries a byte eviction exposes wait for the next check.
        age_due = age and self._age_due(now)
        for chunk in self._budget.insert_chunks(rows):
            age_due = self._store_chunk(conn, chunk, now, unstored, age_due)
            unstored = []
        # Rows of append_reserved keep the stamp of their reserve: the oldest decides when
        # they can expire (never later than now, which is safe: it only checks sooner).
        self._age.appended(min([now, *(created_at for _, created_at, _, _ in rows)]))
        self._after_write(now)

    def _store_chunk(
        self,
        conn: sqlite3.Connection,
        chunk: list[NewRow],
        now: float,
        unstored: list[NewRow],
        age_due: bool,
    ) -> bool:
        """One transaction (more if evicting needs more WAL than one can write): evict
        what the bounds require, insert the chunk, count everything. Returns whether the
        age bound still has to be applied (its walk was cut short)."""
        budget = self._budget
        frames = budget.insert_frames(len(p) for _, _, p, _ in chunk)
        evict_older = bool(unstored)  # a member did not fit: everything older goes too
        generous = frames + MIN_EVICT_FRAMES > budget.headroom
        while True:
            cutoff = self._age.cutoff(now) if age_due else None
            allowance = (budget.txn_frames if generous else budget.headroom) - frames
            if generous:
                self._checkpoint(conn)
            work = functools.partial(
                Tx.evict_and_insert,
                chunk=chunk,
                now=now,
                cutoff=cutoff,
                unstored=unstored,
                evict_older=evict_older,
            )
            tx = self._transact(conn, allowance, work)
            self._apply(tx, now)
            age_due = age_due and not tx.age_done
            if tx.done:
                if tx.loss.batches:  # the next append of this size must fit without evicting
                    sizes = [len(p) for _, _, p, _ in chunk]
                    room = max(budget.data_pages_for(sizes), 2 * budget.data_pages_for(sizes[-1:]))
                    self._evictions.need_room(room)
                return age_due
            unstored, generous = [], True

    # -- evicting, deleting, shifting ------------------------------------------------------

    def _age_due(self, now: float) -> bool:
        return self._age.due(now, self._stats.batches)

    def _evict_expired(self, conn: sqlite3.Connection, now: float) -> int:
        """Apply the age bound at ``now`` in as many transactions as the WAL needs."""
        evicted = 0
        generous = False
        while (cutoff := self._age.cutoff(now)) is not None and self._age_due(now):
            if generous:
                self._checkpoint(conn)
            allowance = self._budget.txn_frames if generous else self._budget.headroom
            work = functools.partial(Tx.evict, now=now, cutoff=cutoff, to_budget=False)
            tx = self._transact(conn, allowance, work)
            self._apply(tx, now)
            evicted += tx.loss.batches
            if tx.done:
                break
            generous = True
        return evicted

    def _evict_to_bounds(self, now: float) -> None:
        """At open: a lowered max_bytes or an expired backlog is evicted at once (logged as
        an eviction episode), and a file larger than the data budget is compacted."""
        conn = self._open_connection()
        self._age.unknown(now)
        while True:
            self._checkpoint(conn)
            cutoff = self._age.cutoff(now) if self._age_due(now) else None
            work = functools.partial(Tx.evict, now=now, cutoff=cutoff, to_budget=True)
            tx = self._transact(conn, self._budget.txn_frames, work)
            self._apply(tx, now)
            if tx.done:
                break
        self._compact_if_oversized()

    def _delete(self, conn: sqlite3.Connection, seqs: list[int], *, corrupt: bool) -> int:
        """Delete these (sorted) seqs where they exist, in transactions that fit the WAL's
        headroom: acked entries, or entries whose CRC failed (``corrupt``, counted)."""
        deleted = 0
        for chunk in self._budget.delete_chunks(seqs):
            before = self._stats.batches
            work = functools.partial(Tx.delete_seqs, seqs=chunk, corrupt=corrupt)
            tx = self._transact(conn, self._budget.headroom, work)
            self._apply(tx, None)
            deleted += before - tx.stats.batches
        if deleted:
            now = self._clock()
            self._age.front_changed(self._stats.oldest_created_at, now)
            self._after_write(now)
        return deleted

    def _shift(self, chunk: list[Row], delta: float, in_place: bool, tx: Tx) -> None:
        if not tx.shift(chunk, delta, in_place=in_place):
            raise BufferError(  # rows freed their pages first: only a bug gets here
                f"buffer {self._path}: shifting created_at would grow the file past max_bytes"
            )

    # -- the outage journal (buffer/journal.py) -------------------------------------------

    def _journal_fits(self, rows: list[NewRow]) -> bool:
        """Does a group of these rows fit in the journal's room: a third of what the files
        leave free under ``max_bytes`` (a fold copies the journal into the database before
        deleting it), ``JOURNAL_MAX`` at most?"""
        budget = self._budget
        taken = SIDE_RESERVE + budget.wal_bytes + budget.shm_bytes
        free = self._max_bytes - taken - self._file_pages * budget.page_size
        need = group_bytes([len(p) for _, _, p, _ in rows])
        return self._journal.disk_bytes + need <= min(JOURNAL_MAX, free // 3)

    def _fold(self, conn: sqlite3.Connection, rows: Sequence[NewRow] = ()) -> None:
        """Move the journal's live entries into the database (then ``rows``), in order,
        and delete the journal: before any other write to the database, so that every
        seq in the journal stays above every seq in the database."""
        if self._journal.disk_bytes:
            now = self._clock()
            try:
                for moving in _in_fold_chunks(self._live_rows(conn)):
                    self._store(conn, moving, now, age=False)  # moved, not appended
                if self._synchronous == "normal":
                    self._wal.sync_now()  # before the journal goes: a power cut keeps them
            except BaseException:
                # What was committed is the database's now: a retry must not insert it
                # again, nor an ack look for it in the journal.
                with contextlib.suppress(BufferError):
                    self._journal.forget(self._top_seq(conn))
                raise
            try:
                self._journal.remove_all()
            except OSError as err:
                raise environment_error(self._path, err, "write to") from err
        if rows:
            self._store(conn, list(rows), self._clock())

    def _fold_left_journal(self) -> None:
        """At open: the journal a previous run left (it was killed, or lost power) goes
        into the database, about 1 MiB at a time; entries it had stored there already
        are skipped."""
        conn = self._open_connection()
        report = Scanned()
        try:
            moved = sum(
                self._move_left(conn, rows) for rows in _in_fold_chunks(self._journal.scan(report))
            )
        except OSError as err:
            raise environment_error(self._path, err, "read") from err
        if report.damaged:  # counted as read counts the damage it finds
            self._count_corrupt(conn, report.damaged, report.damaged_bytes)
        if report.torn_groups or report.damaged:
            _log.warning(
                "buffer %s: the outage journal left by the last run held %d group(s) cut off"
                " by the crash or damaged, and %d batch(es) that no longer match their CRC-32;"
                " the batches that check are kept",
                self._path,
                report.torn_groups,
                report.damaged,
            )
        if moved:
            _log.info(
                "buffer %s: %d batch(es) the last run left in its outage journal moved into the"
                " database",
                self._path,
                moved,
            )
            if self._synchronous == "normal":
                self._wal.sync_now()  # before the journal goes: a power cut keeps them
        try:
            self._journal.remove_all()
        except OSError as err:
            raise environment_error(self._path, err, "write to") from err

    def _live_rows(self, conn: sqlite3.Connection) -> Iterator[list[NewRow]]:
        """The journal's live entries group by group; the damaged ones are released and
        counted on the way."""
        for group, damaged in self._journal.live():
            if damaged:
                self._journal_damaged(conn, damaged)
            yield group

    def _move_left(self, conn: sqlite3.Connection, rows: list[NewRow]) -> int:
        """Store these rows of a journal left by the last run, but those stored already."""
        stored = self._stored_between(conn, min(r[0] for r in rows), max(r[0] for r in rows))
        rows = sorted(row for row in rows if row[0] not in stored)
        if rows:
            self._store(conn, rows, self._clock(), age=False)  # moved: open applies the bounds
        return len(rows)

    def _stored_between(self, conn: sqlite3.Connection, first: int, last: int) -> set[int]:
        """The seqs from ``first`` to ``last`` that the database holds."""
        with translating(self._path, "read"):
            return {
                seq
                for (seq,) in conn.execute(
                    "SELECT seq FROM batches WHERE seq BETWEEN ? AND ?", (first, last)
                )
            }

    def _top_seq(self, conn: sqlite3.Connection) -> int:
        """The highest seq the database holds (0: none)."""
        with translating(self._path, "read"):
            (top,) = conn.execute("SELECT coalesce(max(seq), 0) FROM batches").fetchone()
        return int(top)

    def _journal_damaged(self, conn: sqlite3.Connection, damaged: list[Damaged]) -> None:
        """Journal entries whose payload failed its CRC-32: released, never returned,
        counted in ``corrupt_*`` (persisted in ``meta``) and logged as a read's are."""
        released = self._journal.release([d.seq for d in damaged])
        self._count_corrupt(conn, len(released), sum(size for _, _, size in released))
        self._damage.removed(damaged)

    def _count_corrupt(self, conn: sqlite3.Connection, batches: int, size: int) -> None:
        """Add journal entries found damaged to ``corrupt_*``, committed to ``meta``."""
        stats = dataclasses.replace(
            self._stats,
            corrupt_batches=self._stats.corrupt_batches + batches,
            corrupt_bytes=self._stats.corrupt_bytes + size,
        )
        counters = {"corrupt_batches": stats.corrupt_batches, "corrupt_bytes": stats.corrupt_bytes}
        with translating(self._path, "write"):
            in_transaction(conn, lambda: write_meta(conn, **counters))
        self._wal.committed()
        self._stats = stats

    def _with_journal(self, stats: BufferStats) -> BufferStats:
        """The database's counters with the journal's live entries added (they are newer)."""
        journal = self._journal
        if not journal.batches:
            return stats
        front = journal.front()
        oldest = stats.oldest_created_at, stats.oldest_seq
        if not stats.batches and front is not None:
            oldest = front[1], front[0]
        return dataclasses.replace(
            stats,
            batches=stats.batches + journal.batches,
            bytes=stats.bytes + journal.bytes,
            oldest_created_at=oldest[0],
            oldest_seq=oldest[1],
        )

    # -- eviction episodes ----------------------------------------------------------------

    def _maybe_end_episode(self, now: float) -> None:
        self._evictions.maybe_end(
            now, self._budget.data_pages, self._used_pages, self._stats.oldest_created_at
        )

    def _after_write(self, now: float) -> None:
        """Refresh the snapshot's episode (ended, perhaps, by this write)."""
        self._maybe_end_episode(now)
        if self._stats.eviction is not self._evictions.episode:
            self._stats = dataclasses.replace(self._stats, eviction=self._evictions.episode)

    # -- opening ----------------------------------------------------------------------------

    def _take(self, opened: Opened) -> BufferStats:
        """Use a freshly opened file; its counters with this open's recovery report."""
        self._conn = opened.conn
        self._budget = opened.budget
        self._file_pages, self._used_pages = opened.file_pages, opened.used_pages
        self._unchecked_until = opened.unchecked_until
        self._wal.reopened()
        return dataclasses.replace(
            opened.stats,
            recovered_from=self.recovered_from,
            salvaged_batches=self.salvaged_batches,
            unreadable_batches=self.unreadable_batches,
        )

    def _compact_if_oversized(self) -> None:
        conn = self._open_connection()
        reopen = functools.partial(
            open_checked_file, self._path, self._max_bytes, self._synchronous, self._seq
        )
        try:
            opened = compact_if_oversized(conn, self._path, self._budget, reopen, self._disk_bytes)
        except BaseException:
            self._conn = None
            with contextlib.suppress(sqlite3.Error):
                conn.close()  # if the compaction had not closed it yet
            raise
        if opened is not None:
            self._stats = with_counters(self._stats, self._take(opened))

    def _write_seq_file(
        self, value: int, *, in_meta: bool = False, conn: sqlite3.Connection | None = None
    ) -> None:
        self._side_bytes = len(pid_line()) + self._seq.write(value)
        conn = conn or self._conn  # (close passes the connection it is closing)
        if (self._synchronous == "normal" or in_meta) and conn is not None:
            # The lease in the database too, fsynced: a later open with "full" (the
            # setting changed, or seqs were reserved) trusts the database, and must still
            # skip the seqs this run hands out and a power cut may take back (opening.py).
            with translating(self._path, "write"):
                in_transaction(conn, lambda: write_meta(conn, normal_lease=value))
            self._wal.sync_now()
            self._lease_in_meta = self._lease_in_meta or in_meta
        # Only once every write above succeeded: a failed one is tried again next time.
        self._seq_ceiling = value

    def _disk_bytes(self) -> int:
        """Bytes of every file of the buffer: three stat calls (the database, -wal and
        -shm); the lock and .seq files are written only by us, their sizes remembered."""
        return self._side_bytes + sum(sizes(self._path)) + self._journal.disk_bytes

    # -- transactions ------------------------------------------------------------------

    def _open_connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BufferError(f"buffer {self._path} is closed")
        return self._conn

    def _transact(
        self, conn: sqlite3.Connection, allowance: int, work: Callable[[Tx], object]
    ) -> Tx:
        """Run ``work`` on a new ``Tx`` that may write ``allowance`` WAL frames, in one write
        transaction. On failure roll back, resync the counters."""
        # Nothing but this connection writes the file: the pages counted at the end of the
        # last transaction are the pages at the start of this one.
        tx = Tx(conn, self._budget, self._stats, allowance, self._file_pages, self._used_pages)

        def run() -> None:
            work(tx)
            tx.finish()

        try:
            in_transaction(conn, run)
        except sqlite3.Error as err:
            # A failed COMMIT may still have reached the WAL: believe the disk, not memory.
            with contextlib.suppress(sqlite3.Error, CorruptDatabaseError):
                stats = with_counters(self._stats, load_stats(conn))
                last = max(stats.last_seq, self._reserved_to)  # never hand those out again
                self._stats = dataclasses.replace(stats, last_seq=last)
            raise write_error(self._path, err) from err
        self._wal.committed()
        return tx

    def _apply(self, tx: Tx, now: float | None) -> None:
        """Take over the outcome of a committed transaction."""
        self._stats = tx.stats
        self._file_pages, self._used_pages = tx.file_pages, tx.used_pages
        at = self._clock() if now is None else now
        if tx.loss.batches > tx.loss.by_age_batches:  # the byte bound moved the front
            self._age.front_changed(tx.stats.oldest_created_at, at)
        elif tx.age_hint is not None:
            self._age.walked(tx.age_hint, at)
        if tx.loss.batches:
            room = 2 * self._budget.data_pages_for([tx.loss.largest])
            self._evictions.note(tx.loss, at, room=room, oldest=tx.stats.oldest_created_at)

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Start the WAL over before a transaction larger than the headroom."""
        try:
            held = checkpoint(conn)
        except sqlite3.Error as err:
            raise write_error(self._path, err) from err
        if held and not self._warned_checkpoint:
            self._warned_checkpoint = True
            _log.warning(
                "buffer %s: another process keeps its WAL open (a reader such as the sqlite3"
                " shell?); the WAL cannot start over and may grow past its share of max_bytes",
                self._path,
            )


def _in_fold_chunks(groups: Iterable[list[NewRow]]) -> Iterator[list[NewRow]]:
    """Groups of rows joined into chunks of about ``_FOLD_BYTES`` payload bytes (the last
    may be smaller; none is empty): a fold's large transactions."""
    chunk: list[NewRow] = []
    size = 0
    for group in groups:
        chunk += group
        size += sum(len(p) for _, _, p, _ in group)
        if size >= _FOLD_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk
