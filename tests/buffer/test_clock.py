"""Clock steps: a Raspberry Pi has no real-time clock, boots at a stale time, and NTP
steps it later, by up to years either way. ``created_at`` follows that wall clock; the
age bound must neither evict a fresh backlog because the clock jumped forward, nor be
stopped for ever by an entry stamped in the future. And the timers that apply the age
bound and flush the WAL must cost nothing while there is nothing to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buffer import DurableQueue
from tests.buffer.helpers import FakeClock, payload_for, read_all

MB = 1_000_000
YEAR = 365 * 86400.0
HOUR = 3600.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


def stamps(queue: DurableQueue) -> dict[int, float]:
    return {e.seq: e.created_at for e in read_all(queue)}


def test_shift_created_at_moves_the_entries_after_a_seq_and_no_others(path: Path) -> None:
    clock = FakeClock(1_700_000_000.25)
    with DurableQueue(path, max_bytes=MB, clock=clock) as queue:
        earlier_boot = [queue.append(payload_for) for _ in range(3)]
        clock.now += 1
        this_boot = [queue.append(payload_for) for _ in range(4)]
        before = stamps(queue)

        assert queue.shift_created_at(earlier_boot[-1], 12.5) == 4

        after = stamps(queue)
        assert all(after[s] == before[s] for s in earlier_boot)
        assert all(after[s] == before[s] + 12.5 for s in this_boot)
        assert [e.payload for e in read_all(queue)] == [
            payload_for(s) for s in earlier_boot + this_boot
        ]
        assert queue.shift_created_at(this_boot[-1], 5.0) == 0
        assert queue.shift_created_at(0, 0.0) == 0
        for bad in (float("nan"), float("inf"), True, "1"):
            with pytest.raises(ValueError, match="delta"):
                queue.shift_created_at(0, bad)  # type: ignore[arg-type]


def test_shifting_the_oldest_entry_moves_oldest_created_at(path: Path) -> None:
    clock = FakeClock(1_700_000_000.5)
    with DurableQueue(path, max_bytes=MB, clock=clock) as queue:
        queue.append(payload_for)
        queue.shift_created_at(0, YEAR)
        assert queue.stats().oldest_created_at == 1_700_000_000.5 + YEAR


def test_a_clock_stepped_a_year_forward_does_not_evict_the_backlog_of_this_boot(
    path: Path,
) -> None:
    clock = FakeClock(1_600_000_000.5)  # the stale time the Pi booted at
    with DurableQueue(path, max_bytes=MB, max_age=6 * HOUR, clock=clock) as queue:
        boot_started_after = queue.stats().last_seq
        seqs = [queue.append(payload_for) for _ in range(5)]  # the uplink is not up yet
        clock.now += YEAR  # NTP: it is a year later than the Pi thought

        # The gateway sees the step and corrects this boot's stamps before the age check.
        assert queue.shift_created_at(boot_started_after, YEAR) == 5
        assert queue.evict_older_than() == 0
        assert [e.seq for e in read_all(queue)] == seqs
        assert queue.stats().oldest_age(clock.now) == 0.0


def test_without_the_shift_a_forward_step_would_have_evicted_the_backlog(path: Path) -> None:
    clock = FakeClock(1_600_000_000.5)
    with DurableQueue(path, max_bytes=MB, max_age=6 * HOUR, clock=clock) as queue:
        for _ in range(5):
            queue.append(payload_for)
        clock.now += YEAR
        assert queue.evict_older_than() == 5  # the reason shift_created_at exists


def test_an_entry_stamped_a_year_ahead_does_not_shield_older_entries_from_the_age_bound(
    path: Path,
) -> None:
    clock = FakeClock(1_700_000_000.5 + YEAR)  # an earlier boot ran a year ahead
    with DurableQueue(path, max_bytes=MB, max_age=HOUR, clock=clock) as queue:
        ahead = queue.append(payload_for)
        clock.now -= YEAR  # NTP set it right; no gateway was running to shift the stamp
        behind = [queue.append(payload_for) for _ in range(3)]
        clock.now += 2 * HOUR  # the uplink stayed down: everything is two hours old

        assert queue.evict_older_than() == 4, "the future stamp goes with what follows it"
        assert read_all(queue) == []
        stats = queue.stats()
        assert (stats.evicted_by_age_batches, stats.oldest_created_at) == (4, None)
        assert ahead < behind[0]


def test_a_future_stamp_waits_while_no_expired_entry_follows_it(path: Path) -> None:
    clock = FakeClock(1_700_000_000.5 + YEAR)
    with DurableQueue(path, max_bytes=MB, max_age=HOUR, clock=clock) as queue:
        queue.append(payload_for)  # stamped a year ahead
        clock.now -= YEAR
        queue.append(payload_for)  # stamped right: young
        clock.now += HOUR / 2
        assert queue.evict_older_than() == 0
        assert queue.stats().oldest_age(clock.now) == 0.0, "never negative"
        clock.now += HOUR
        assert queue.evict_older_than() == 2


def test_the_clock_stepping_back_a_year_makes_the_stamps_future_not_expired(path: Path) -> None:
    clock = FakeClock(1_700_000_000.5)
    with DurableQueue(path, max_bytes=MB, max_age=HOUR, clock=clock) as queue:
        seqs = [queue.append(payload_for) for _ in range(3)]
        clock.now -= YEAR  # a bad time source: everything stored is "a year ahead"
        assert queue.evict_older_than() == 0
        assert queue.append(payload_for) > seqs[-1]
        clock.now += HOUR / 2
        assert queue.evict_older_than() == 0
        assert [e.seq for e in read_all(queue)][:3] == seqs
        assert queue.stats().oldest_age(clock.now) == 0.0


def test_the_age_check_on_a_timer_reads_nothing_while_nothing_has_expired(path: Path) -> None:
    clock = FakeClock(1_700_000_000.5)
    with DurableQueue(path, max_bytes=MB, max_age=HOUR, clock=clock) as queue:
        for _ in range(50):
            queue.append(payload_for)
        statements: list[str] = []
        assert queue._conn is not None
        queue._conn.set_trace_callback(statements.append)

        for _ in range(600):  # ten minutes of a one-second timer
            clock.now += 1
            assert queue.evict_older_than() == 0
        assert statements == []

        clock.now -= 700  # back before the front entry was judged: it may be in the future
        assert queue.evict_older_than() == 0  # so the check is made once, then free again
        assert statements
        statements.clear()
        clock.now += 1
        assert queue.evict_older_than() == 0
        assert statements == []

        clock.now += 2 * HOUR  # now every entry has expired
        assert queue.evict_older_than() == 50


def test_a_future_stamp_at_the_front_costs_one_walk_not_one_per_tick(path: Path) -> None:
    clock = FakeClock(1_700_000_000.5 + YEAR)
    with DurableQueue(path, max_bytes=MB, max_age=HOUR, clock=clock) as queue:
        for _ in range(20):
            queue.append(payload_for)  # a year ahead
        clock.now -= YEAR
        queue.append(payload_for)
        statements: list[str] = []
        assert queue._conn is not None
        queue._conn.set_trace_callback(statements.append)
        assert queue.evict_older_than() == 0  # walks past the 20 future stamps once
        walked = len(statements)
        for _ in range(100):
            clock.now += 1
            queue.evict_older_than()
        assert len(statements) == walked


def test_sync_on_a_timer_flushes_only_when_something_was_committed(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushed: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        flushed.append(fd)
        real_fsync(fd)

    with DurableQueue(path, max_bytes=MB, synchronous="normal") as queue:
        queue.append(payload_for)
        monkeypatch.setattr(os, "fsync", counting_fsync)
        queue.sync()
        assert len(flushed) == 2  # the WAL, and the first time its directory entry
        for _ in range(10):
            queue.sync()
        assert len(flushed) == 2, "nothing committed since: nothing to flush"
        queue.ack([1])
        queue.sync()
        assert len(flushed) == 3
