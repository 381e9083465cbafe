"""The outage journal (buffer/journal.py): what ``append_reserved`` stores goes to
append-only segment files first, costing the SD card each page once; it is read and
acknowledged from there, folded into the database at close, at the next open after a
crash, before any other write and when it has no room; damage is caught by CRC."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from buffer import DurableQueue
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
    done = run_python(_KILLED, str(path), "full", "3", "0")
    assert done.returncode == 9, done.stderr
    (segment,) = segments(path)
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
