"""Seqs handed out before their batch is stored (``reserve``, ``append_reserved``): the
gateway publishes a batch from memory and stores it only if the broker has not
acknowledged it in time. A reserved seq is never handed out again, after a clean close
or a SIGKILL, whatever ``synchronous`` says."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from buffer import BufferError, DurableQueue, Entry, PayloadTooLargeError
from tests.buffer.helpers import FakeClock, payload_for, read_all, run_python

MAX = 8 * 2**20


def test_reserved_seqs_come_before_appends_and_store_only_what_is_given(tmp_path: Path) -> None:
    with DurableQueue(tmp_path / "b.db", max_bytes=MAX) as q:
        one, two, three = q.reserve([payload_for] * 3)
        assert [one.seq, two.seq, three.seq] == [1, 2, 3]
        assert one.payload == payload_for(1)
        assert q.stats().last_seq == 3
        assert q.read() == []  # nothing stored yet
        q.append_reserved([replace(one, created_at=10.0), replace(three, created_at=12.0)])
        assert q.append(payload_for) == 4
        entries = read_all(q)
        assert [(e.seq, e.created_at) for e in entries[:2]] == [(1, 10.0), (3, 12.0)]
        assert [e.seq for e in entries] == [1, 3, 4]
        assert q.ack([2, 3]) == 1  # 2 was never stored: ignored
        assert [e.seq for e in read_all(q)] == [1, 4]
        assert q.reserve([]) == []
        assert q.stats().last_seq == 4


def test_append_reserved_refuses_seqs_not_reserved_or_out_of_order(tmp_path: Path) -> None:
    with DurableQueue(tmp_path / "b.db", max_bytes=MAX) as q:
        one, two = q.reserve([payload_for] * 2)
        with pytest.raises(ValueError, match="seq 3 was not reserved"):
            q.append_reserved([Entry(3, 1.0, b"x")])
        with pytest.raises(ValueError, match="out of order"):
            q.append_reserved([two, one])
        with pytest.raises(PayloadTooLargeError):
            q.reserve([lambda seq: b"x" * (q.max_payload + 1)])
        assert q.stats().last_seq == 2  # nothing reserved by the refused call
        assert read_all(q) == []  # nothing of a refused group is stored


def test_a_clean_close_continues_right_after_the_last_reserved_seq(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with DurableQueue(path, max_bytes=MAX) as q:
        *_, five = q.reserve([payload_for] * 5)
        q.append_reserved([five])
    with DurableQueue(path, max_bytes=MAX) as q:
        assert q.append(payload_for) == 6


@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_seqs_reserved_before_a_sigkill_are_never_handed_out_again(
    tmp_path: Path, synchronous: str
) -> None:
    path = tmp_path / "b.db"
    # The child reserves (and perhaps publishes) seqs, stores one of them, and dies.
    code = (
        "import os, signal, sys\n"
        "from buffer import DurableQueue\n"
        f"q = DurableQueue(sys.argv[1], max_bytes={MAX}, synchronous={synchronous!r})\n"
        "q.append(lambda seq: b'stored')\n"
        "entries = q.reserve([lambda seq: b'reserved'] * 10)\n"
        "q.append_reserved(entries[:1])\n"
        "q.reserve([bytes] * 3)\n"
        "print(q.stats().last_seq, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = run_python(code, str(path))
    assert done.stdout.split() == ["14"]
    with DurableQueue(path, max_bytes=MAX) as q:  # reopened with "full"
        assert [e.payload for e in read_all(q)] == [b"stored", b"reserved"]
        assert q.append(payload_for) > 14


def test_a_reserved_entry_stored_below_the_first_one_becomes_the_front(tmp_path: Path) -> None:
    clock = FakeClock()
    with DurableQueue(tmp_path / "b.db", max_bytes=MAX, max_age=100.0, clock=clock) as q:
        (one,) = q.reserve([payload_for])
        clock.now += 10
        q.append(payload_for)  # seq 2, stored first
        q.append_reserved([one])
        stats = q.stats()
        assert (stats.oldest_seq, stats.oldest_created_at) == (1, one.created_at)


def test_a_reserved_entry_stored_after_max_age_is_evicted_by_the_age_bound(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    with DurableQueue(tmp_path / "b.db", max_bytes=MAX, max_age=100.0, clock=clock) as q:
        entries = q.reserve([payload_for])
        clock.now += 200  # kept in memory that long (a disk that refused writes)
        q.append_reserved(entries)
        assert q.evict_older_than() == 1
        assert read_all(q) == []


def test_entries_a_failed_call_already_stored_are_skipped_when_tried_again(
    tmp_path: Path,
) -> None:
    with DurableQueue(tmp_path / "b.db", max_bytes=MAX) as q:
        entries = q.reserve([payload_for] * 3)
        q.append_reserved(entries[:1])  # a call that committed its first chunk, then failed
        q.append_reserved(entries)  # the caller tries again with everything it holds
        assert [e.seq for e in read_all(q)] == [1, 2, 3]
        assert q.stats().batches == 3


def test_a_lease_that_could_not_be_written_is_written_at_the_next_reserve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import buffer.queue as queue_module

    real = queue_module.write_meta
    calls = {"n": 0}

    def failing_once(conn: sqlite3.Connection, **values: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("database or disk is full")
        real(conn, **values)

    with DurableQueue(tmp_path / "b.db", max_bytes=MAX) as q:
        monkeypatch.setattr(queue_module, "write_meta", failing_once)
        with pytest.raises(BufferError):
            q.reserve([payload_for])
        (entry,) = q.reserve([payload_for])  # the lease is written now, before this seq
        assert calls["n"] == 2
        row = q._conn.execute("SELECT value FROM meta WHERE key = 'normal_lease'").fetchone()  # type: ignore[union-attr]
        assert row[0] >= entry.seq
