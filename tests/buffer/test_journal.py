"""The outage journal (buffer/journal.py): what ``append_reserved`` stores goes to
append-only segment files first, costing the SD card each page once; it is read and
acknowledged from there, folded into the database at close, at the next open after a
crash, before any other write and when it has no room; damage is caught by CRC."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import zlib
from pathlib import Path

import pytest

import buffer.files
import buffer.journal
import buffer.transaction
from buffer import BufferError, DiskFullError, DurableQueue
from buffer.journal import GROUP_ALIGN, SEGMENT_BYTES
from tests.buffer.helpers import FakeClock, footprint, payload_for, read_all, run_python

MAX = 64 * 2**20


def segments(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.journal-*"))


def rows_in_database(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [seq for (seq,) in conn.execute("SELECT seq FROM batches ORDER BY seq")]


def test_reserved_entries_are_journalled_read_and_acked_without_touching_the_database(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    clock = FakeClock()
    with DurableQueue(path, max_bytes=MAX, clock=clock) as q:
        entries = q.reserve([lambda seq: payload_for(seq, 700)] * 5)
        q.append_reserved(entries[:2])
        q.append_reserved(entries[3:])  # seq 3 was acknowledged from memory: a gap
        assert rows_in_database(path) == []
        (segment,) = segments(path)
        assert segment.stat().st_size == 2 * GROUP_ALIGN  # one padded page per group
        assert segment.stat().st_mode & 0o777 == 0o600
        assert [(e.seq, e.payload) for e in read_all(q)] == [
            (s, payload_for(s, 700)) for s in (1, 2, 4, 5)
        ]
        assert [e.seq for e in q.read(after_seq=2, limit=1)] == [4]
        stats = q.stats()
        assert (stats.batches, stats.bytes, stats.oldest_seq) == (4, 2800, 1)
        assert stats.oldest_created_at == clock.now
        assert stats.disk_bytes == footprint(path)
        assert q.ack([1, 2, 3]) == 2  # 3 was never stored: ignored
        assert q.stats().oldest_seq == 4
        assert q.ack([4, 5]) == 2
        assert segments(path) == []  # nothing live: the segment is deleted
        assert q.stats().batches == 0
        assert q.append(payload_for) == 6  # seqs go on above the journal's
    assert rows_in_database(path) == [6]


def test_a_clean_close_folds_the_journal_into_the_database_with_its_stamps(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    clock = FakeClock()
    with DurableQueue(path, max_bytes=MAX, clock=clock) as q:
        entries = q.reserve([payload_for] * 3)
        clock.now += 50
        q.append_reserved(entries)
        q.ack([2])
    assert segments(path) == []
    assert rows_in_database(path) == [1, 3]  # the acknowledged one is not folded
    with DurableQueue(path, max_bytes=MAX, clock=clock) as q:
        assert [(e.seq, e.created_at) for e in read_all(q)] == [(1, 1e6), (3, 1e6)]
        assert q.reserve([payload_for])[0].seq == 4


_KILLED = """
import os, sys
from buffer import DurableQueue
from tests.buffer.helpers import payload_for
q = DurableQueue(sys.argv[1], max_bytes=64 * 2**20, synchronous=sys.argv[2])
groups = []
for _ in range(int(sys.argv[3])):
    entries = q.reserve([lambda seq: payload_for(seq, 70)] * 40)  # a group fills one page
    q.append_reserved(entries)
    groups.append(entries)
q.ack([e.seq for group in groups[: int(sys.argv[4])] for e in group])
print(q.stats().last_seq, flush=True)
os._exit(9)  # no close: as a SIGKILL leaves it
"""


def killed_with_groups(path: Path, groups: int) -> Path:
    """A process journals ``groups`` groups of 40 (none acked) and is killed; its segment."""
    done = run_python(_KILLED, str(path), "full", str(groups), "0")
    assert done.returncode == 9, done.stderr
    (segment,) = segments(path)
    return segment


@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_a_killed_process_leaves_its_journal_to_the_next_open(
    tmp_path: Path, synchronous: str
) -> None:
    path = tmp_path / "b.db"
    per_segment = SEGMENT_BYTES // GROUP_ALIGN
    # Two segments; every entry of the first, and the first group of the second, acked.
    done = run_python(_KILLED, str(path), synchronous, str(per_segment + 3), str(per_segment + 1))
    assert done.returncode == 9, done.stderr
    last = int(done.stdout)
    assert last == 40 * (per_segment + 3)
    assert [s.name for s in segments(path)] == ["b.db.journal-2"]  # the first one deleted
    with DurableQueue(path, max_bytes=MAX, synchronous="full") as q:
        assert segments(path) == []
        entries = read_all(q)
        assert all(e.payload == payload_for(e.seq, 70) for e in entries)
        # The first segment was deleted when its last entry was acknowledged: never
        # repeated. The second comes back whole: its acknowledged group is published
        # again (the duplicates a crash may cause, buffer/DESIGN.md).
        assert [e.seq for e in entries] == list(range(40 * per_segment + 1, last + 1))
        assert q.append(payload_for) > last  # above the lease the killed run held


def test_a_group_torn_by_the_crash_keeps_only_the_batches_that_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "b.db"
    segment = killed_with_groups(path, 3)
    data = bytearray(segment.read_bytes())
    # The last group as a write cut off by a power cut leaves it: its second half never
    # reached the disk (zeros), so 21 records (94 bytes each after a 20-byte header) are whole.
    data[2 * GROUP_ALIGN + 2048 : 3 * GROUP_ALIGN] = bytes(2048)
    segment.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="buffer"), DurableQueue(path, max_bytes=MAX) as q:
        assert [e.seq for e in read_all(q)] == list(range(1, 81 + 21))
        assert all(e.payload == payload_for(e.seq, 70) for e in read_all(q))
    assert "1 group(s) cut off by the crash or damaged" in caplog.text


def test_a_payload_that_rotted_in_the_journal_is_never_returned_and_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "b.db"
    with DurableQueue(path, max_bytes=MAX) as q:
        q.append_reserved(q.reserve([lambda seq: payload_for(seq, 500)] * 3))
        (segment,) = segments(path)
        with segment.open("r+b") as f:
            f.seek(20 + 24 + 500 + 24 + 10)  # header, record 1, record 2's header: its payload
            f.write(b"rot")
        with caplog.at_level(logging.ERROR, logger="buffer"):
            assert [e.seq for e in read_all(q)] == [1, 3]
        stats = q.stats()
        assert (stats.corrupt_batches, stats.corrupt_bytes, stats.batches) == (1, 500, 2)
        assert "batch seq 2 (500 bytes" in caplog.text
    with DurableQueue(path, max_bytes=MAX) as q:
        assert q.stats().corrupt_batches == 1  # persisted
        assert [e.seq for e in read_all(q)] == [1, 3]


def test_any_write_to_the_database_folds_the_journal_first_so_seq_order_holds(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    with DurableQueue(path, max_bytes=MAX) as q:
        q.append_reserved(q.reserve([payload_for] * 2))
        assert q.append(payload_for) == 3
        assert segments(path) == []
        assert rows_in_database(path) == [1, 2, 3]
        q.append_reserved(q.reserve([payload_for] * 2))  # the journal again: above 3
        assert rows_in_database(path) == [1, 2, 3]
        assert [e.seq for e in read_all(q)] == [1, 2, 3, 4, 5]
        assert q.ack([1, 4]) == 2
        assert [e.seq for e in read_all(q)] == [2, 3, 5]


def test_an_entry_reserved_before_a_stored_one_goes_to_the_database_in_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    with DurableQueue(path, max_bytes=MAX) as q:
        (one,) = q.reserve([payload_for])
        q.append(payload_for)  # seq 2 stored first
        q.append_reserved([one])
        assert segments(path) == []
        assert [e.seq for e in read_all(q)] == [1, 2]


def test_a_journal_out_of_room_is_folded_and_the_files_stay_within_max_bytes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    small = 2 * 2**20
    peak = 0
    with DurableQueue(path, max_bytes=small) as q:
        for _ in range(60):
            q.append_reserved(q.reserve([lambda seq: payload_for(seq, 3000)] * 10))
            peak = max(peak, footprint(path))
        assert rows_in_database(path)  # folded at least once
        seqs = [e.seq for e in read_all(q)]
        stats = q.stats()
        assert seqs == list(range(stats.oldest_seq or 0, 601))
        assert stats.evicted_batches + len(seqs) == 600
    assert peak <= small


def test_an_expired_journal_is_evicted_by_the_age_bound(tmp_path: Path) -> None:
    clock = FakeClock()
    with DurableQueue(tmp_path / "b.db", max_bytes=MAX, max_age=100.0, clock=clock) as q:
        q.append_reserved(q.reserve([payload_for] * 2))
        clock.now += 50
        assert q.evict_older_than() == 0
        clock.now += 60
        assert q.evict_older_than() == 2
        assert read_all(q) == []
        assert q.stats().evicted_by_age_batches == 2


def test_a_clock_step_re_dates_journalled_entries_too(tmp_path: Path) -> None:
    clock = FakeClock()
    with DurableQueue(tmp_path / "b.db", max_bytes=MAX, clock=clock) as q:
        q.append_reserved(q.reserve([payload_for] * 2))
        assert q.shift_created_at(0, 30.0) == 2
        assert [e.created_at for e in read_all(q)] == [clock.now + 30, clock.now + 30]


# -- found in review -------------------------------------------------------------------------


def test_a_fold_only_moves_entries_so_evict_older_than_and_shifts_count_what_they_did(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    with DurableQueue(tmp_path / "b.db", max_bytes=MAX, max_age=100.0, clock=clock) as q:
        q.append_reserved(q.reserve([payload_for]))  # seq 1, stamped T
        clock.now += 60
        q.append_reserved(q.reserve([payload_for]))  # seq 2, stamped T + 60
        clock.now += 100
        # At T + 120 only seq 1 has expired; the fold must not judge by the clock (T + 160).
        assert q.evict_older_than(clock.now - 40) == 1
        assert [e.seq for e in read_all(q)] == [2]
        assert q.stats().evicted_by_age_batches == 1
    with DurableQueue(tmp_path / "c.db", max_bytes=MAX, max_age=100.0, clock=clock) as q:
        q.append_reserved(q.reserve([payload_for]))
        clock.now += 60
        q.append_reserved(q.reserve([payload_for]))
        clock.now += 100
        assert q.shift_created_at(0, 100.0) == 2  # a shift evicts nothing by age
        assert q.stats().evicted_by_age_batches == 0
        assert len(read_all(q)) == 2


def test_append_reserved_applies_the_age_bound_as_append_many_does(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    clock = FakeClock()
    with DurableQueue(path, max_bytes=MAX, max_age=100.0, clock=clock) as q:
        q.append(payload_for)  # seq 1, in the database
        clock.now += 150
        q.append_reserved(q.reserve([payload_for]))  # seq 2: seq 1 has expired
        assert q.stats().evicted_by_age_batches == 1
        assert [e.seq for e in read_all(q)] == [2]
        clock.now += 150
        q.append_reserved(q.reserve([payload_for]))  # seq 3: seq 2, in the journal, expired
        assert q.stats().evicted_by_age_batches == 2
        assert [e.seq for e in read_all(q)] == [3]


def test_an_expired_journal_entry_behind_one_stamped_in_the_future_is_evicted(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    with DurableQueue(tmp_path / "b.db", max_bytes=MAX, max_age=100.0, clock=clock) as q:
        q.append_reserved(q.reserve([payload_for]))  # seq 1, stamped T
        clock.now -= 1000  # NTP steps the clock back
        q.append_reserved(q.reserve([payload_for]))  # seq 2, stamped T - 1000
        clock.now += 150
        # seq 2 has expired; seq 1 is stamped in the future before it: expired too (DESIGN).
        assert q.evict_older_than() == 2
        assert read_all(q) == []


def test_with_synchronous_normal_a_fold_fsyncs_the_wal_before_it_deletes_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "b.db"
    events: list[str] = []
    real_fsync, real_unlink = buffer.files.fsync, os.unlink

    def fsync(name: str, *, directory: bool = False) -> None:
        events.append(f"fsync {name}")
        real_fsync(name, directory=directory)

    def unlink(name: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        events.append(f"unlink {os.fspath(name)}")
        real_unlink(name, *args, **kwargs)  # type: ignore[arg-type]

    with DurableQueue(path, max_bytes=MAX, synchronous="normal") as q:
        q.append_reserved(q.reserve([payload_for] * 3))
        q.sync()  # promised: they survive a power cut from here on
        monkeypatch.setattr(buffer.files, "fsync", fsync)
        monkeypatch.setattr(os, "unlink", unlink)
        assert q._conn is not None
        q._conn.set_trace_callback(lambda sql: events.append(sql))
        q.append(payload_for)  # folds the journal into the (unsynced) WAL first
        q._conn.set_trace_callback(None)
    gone = next(i for i, e in enumerate(events) if e.startswith("unlink") and ".journal-" in e)
    last_commit = max(i for i, e in enumerate(events[:gone]) if e == "COMMIT")
    assert f"fsync {path}-wal" in events[last_commit:gone], events


def test_stats_from_another_thread_never_count_an_entry_twice_during_a_fold(
    tmp_path: Path,
) -> None:
    with DurableQueue(tmp_path / "b.db", max_bytes=MAX) as q:
        for _ in range(3):
            q.append_reserved(q.reserve([payload_for]))
        seen: list[int] = []
        assert q._conn is not None
        # Every statement of the fold is a moment another thread may call stats() at.
        q._conn.set_trace_callback(lambda sql: seen.append(q.stats().batches))
        q.append(payload_for)
        q._conn.set_trace_callback(None)
        assert seen
        assert set(seen) <= {3, 4}, seen
        assert q.stats().batches == 4


def test_a_full_disk_for_the_journal_falls_back_to_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "b.db"
    with DurableQueue(path, max_bytes=MAX) as q:
        q.append_reserved(q.reserve([payload_for]))  # seq 1 in the journal

        def full(fd: int, data: bytes, offset: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        # The disk is full, but the database has room in the pages it already holds (as
        # before the journal existed, append_reserved still stores).
        monkeypatch.setattr(os, "pwrite", full)
        q.append_reserved(q.reserve([payload_for]))
        monkeypatch.undo()
        assert rows_in_database(path) == [1, 2]
        assert segments(path) == []
        assert [e.seq for e in read_all(q)] == [1, 2]


def test_a_disk_refusing_every_write_leaves_no_pile_of_empty_segments_or_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "b.db"
    with DurableQueue(path, max_bytes=MAX) as q:

        def full(fd: int, data: bytes, offset: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def no_room(*args: object, **kwargs: object) -> None:
            raise DiskFullError(f"cannot write to buffer {path}: the disk is full")

        entries = q.reserve([payload_for] * 20)  # (the lease is written before the disk fills)
        monkeypatch.setattr(os, "pwrite", full)
        monkeypatch.setattr(DurableQueue, "_fold", no_room)  # the database is full as well
        fds = len(list(Path("/proc/self/fd").iterdir()))
        for entry in entries:  # the gateway tries again every few seconds
            with pytest.raises(DiskFullError):
                q.append_reserved([entry])
        assert len(list(Path("/proc/self/fd").iterdir())) <= fds + 1
        assert len(segments(path)) <= 1
        monkeypatch.undo()


def test_an_append_that_fails_after_its_fold_leaves_a_queue_that_still_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "b.db"
    with DurableQueue(path, max_bytes=MAX) as q:
        for _ in range(3):
            q.append_reserved(q.reserve([payload_for]))  # three groups
        real = buffer.transaction.Tx.evict_and_insert
        calls = 0

        def failing(tx: buffer.transaction.Tx, *args: object, **kwargs: object) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:  # the fold (one call: 3 small groups) commits; the append's fails
                raise sqlite3.OperationalError("disk I/O error")
            real(tx, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(buffer.transaction.Tx, "evict_and_insert", failing)
        with pytest.raises(BufferError):
            q.append(payload_for)
        monkeypatch.undo()
        seq = q.append(payload_for)  # the disk is back
        assert [e.seq for e in read_all(q)] == [1, 2, 3, seq]
        assert q.ack([1, 2, 3, seq]) == 4
        assert read_all(q) == []
        assert q.stats().batches == 0
    assert rows_in_database(path) == []


def test_a_journal_whose_deletion_failed_is_still_read_and_folded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "b.db"
    with DurableQueue(path, max_bytes=MAX) as q:
        q.append_reserved(q.reserve([payload_for] * 2))

        def eio(name: str) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(buffer.journal, "fsync_dir", eio)
        with pytest.raises(BufferError):
            q.append(payload_for)  # folded and committed; the directory's fsync failed
        monkeypatch.undo()
        seq = q.append(payload_for)  # (the call that failed consumed no seq: 3)
        assert [e.seq for e in read_all(q)] == [1, 2, seq] == [1, 2, 3]
        assert q.ack([1, 2, 3]) == 3
        assert read_all(q) == []
    assert rows_in_database(path) == []


# -- found by mutation testing -----------------------------------------------------------------


def test_a_reader_paging_through_a_group_gets_every_entry_of_it(tmp_path: Path) -> None:
    with DurableQueue(tmp_path / "b.db", max_bytes=MAX) as q:
        for _ in range(3):
            q.append_reserved(q.reserve([payload_for] * 3))  # groups 1-3, 4-6, 7-9
        pages, after = [], 0
        while page := q.read(after, limit=2):  # a window smaller than a group
            pages.append([e.seq for e in page])
            after = page[-1].seq
        assert pages == [[1, 2], [3, 4], [5, 6], [7, 8], [9]]
        assert [e.seq for e in q.read(after_seq=5, limit=10)] == [6, 7, 8, 9]


def test_a_group_the_last_run_wrote_twice_is_folded_once(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    segment = killed_with_groups(path, 2)
    # A write reported failed (its fdatasync) that reached the disk all the same, then
    # written again into a new segment: the second group is on the disk twice.
    second = segment.read_bytes()[GROUP_ALIGN : 2 * GROUP_ALIGN]
    Path(f"{path}.journal-2").write_bytes(second)
    with DurableQueue(path, max_bytes=MAX) as q:
        assert [e.seq for e in read_all(q)] == list(range(1, 81))
    assert rows_in_database(path) == list(range(1, 81))


def test_a_rotted_payload_in_a_journal_left_by_a_crash_never_enters_the_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "b.db"
    segment = killed_with_groups(path, 2)
    with segment.open("r+b") as f:
        f.seek(GROUP_ALIGN + 20 + 24 + 10)  # the second group: the payload of seq 41
        f.write(b"rot")
    with caplog.at_level(logging.WARNING, logger="buffer"), DurableQueue(path, max_bytes=MAX) as q:
        assert 41 not in rows_in_database(path)  # dropped by the scan, not stored
        assert [e.seq for e in read_all(q)] == [*range(1, 41), *range(42, 81)]
        stats = q.stats()
        assert (stats.corrupt_batches, stats.corrupt_bytes) == (1, 70)  # counted, as by read
    assert "1 group(s) cut off by the crash or damaged, and 1 batch(es)" in caplog.text
    with DurableQueue(path, max_bytes=MAX) as q:
        assert q.stats().corrupt_batches == 1  # persisted


def test_a_group_whose_header_rotted_costs_that_group_only(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    segment = killed_with_groups(path, 3)
    with segment.open("r+b") as f:
        f.seek(11)  # the high byte of the first group's body length: a huge length
        f.write(b"\x40")
    with DurableQueue(path, max_bytes=MAX) as q:
        assert [e.seq for e in read_all(q)] == list(range(41, 121))


def test_a_group_written_after_a_short_write_is_found_by_the_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "b.db")
    journal = buffer.journal.Journal(path, durable=True)

    def rows(first: int) -> list[buffer.journal.Row]:
        return [
            (seq, 1e6, payload_for(seq, 700), zlib.crc32(payload_for(seq, 700)))
            for seq in range(first, first + 3)
        ]

    journal.write(rows(1))
    real = os.pwrite

    def short(fd: int, data: bytes, offset: int) -> int:
        return real(fd, data[:100], offset)  # the disk filled up after 100 bytes

    monkeypatch.setattr(os, "pwrite", short)
    with pytest.raises(OSError):
        journal.write(rows(4))
    monkeypatch.undo()
    journal.write(rows(7))  # (room again): must start on a 4 KiB boundary the scan visits
    journal.close()
    scanned = buffer.journal.Journal(path, durable=True).scan(buffer.journal.Scanned())
    assert [row[0] for rows_ in scanned for row in rows_] == [1, 2, 3, 7, 8, 9]


def test_a_fold_cut_short_between_its_transactions_leaves_each_entry_in_one_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "b.db"
    with DurableQueue(path, max_bytes=MAX) as q:
        for _ in range(3):  # three groups of 600 KB: a fold stores the first two (past
            # 1 MiB) in one call and the third in another
            q.append_reserved(q.reserve([lambda seq: payload_for(seq, 150_000)] * 4))
        real = buffer.transaction.Tx.evict_and_insert

        def failing(tx: buffer.transaction.Tx, *args: object, **kwargs: object) -> None:
            chunk = kwargs["chunk"]
            assert isinstance(chunk, list)
            if chunk[0][0] == 9:  # the third group: the disk fails
                raise sqlite3.OperationalError("disk I/O error")
            real(tx, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(buffer.transaction.Tx, "evict_and_insert", failing)
        with pytest.raises(BufferError):
            q.append(payload_for)
        monkeypatch.undo()
        assert rows_in_database(path) == list(range(1, 9))  # the fold's first call
        assert [e.seq for e in read_all(q)] == list(range(1, 13))
        # No other write in between: seq 1 is acked in the database, 12 in the journal.
        assert q.ack([1, 12]) == 2
        assert [e.seq for e in read_all(q)] == list(range(2, 12))
        assert rows_in_database(path) == list(range(2, 9))
        assert q.stats().batches == 10
    assert rows_in_database(path) == list(range(2, 12))
    assert segments(path) == []


def test_a_journal_that_outlived_its_fold_is_not_stored_twice_at_the_next_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    segment = killed_with_groups(path, 2)
    left = segment.read_bytes()
    with DurableQueue(path, max_bytes=MAX):
        pass  # the fold at open committed 1-80 and deleted the segment
    # A cut between that commit and the deletion (or the deletion never made durable):
    # the segment is back, and the database holds its batches already.
    segment.write_bytes(left)
    with DurableQueue(path, max_bytes=MAX) as q:
        assert [e.seq for e in read_all(q)] == list(range(1, 81))
    assert segments(path) == []
