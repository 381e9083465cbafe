"""Eviction is logged once when it starts and once when it stops, and is on the stats.

An operator must learn that data is being dropped, why, and how much, without a line
per append: a buffer that stays at its bound for a week of outage is one episode.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from buffer import DurableQueue
from tests.buffer.helpers import FakeClock, payload_for, read_all

MB = 1_000_000


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


def buffer_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "buffer"]


def test_an_eviction_episode_is_logged_once_when_it_starts_and_once_when_it_stops(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(1_700_000_000.0)  # 2023-11-14 22:13:20 UTC
    with (
        caplog.at_level(logging.INFO, logger="buffer"),
        DurableQueue(path, max_bytes=MB, clock=clock) as queue,
    ):
        for _ in range(400):  # the bound is reached after about 80: then every append evicts
            queue.append(lambda s: payload_for(s, 8_400))
            clock.now += 1.0
        [started] = buffer_lines(caplog)
        assert "the buffer is full (max_bytes 1000000); evicting the oldest batches" in started
        assert "seqs 1-1, created 2023-11-14 22:13:20 UTC" in started
        episode = queue.stats().eviction
        assert episode is not None and episode.active
        assert (episode.cause, episode.first_seq, episode.started_at) == (
            "max_bytes",
            1,
            episode.started_at,
        )

        queue.ack(e.seq for e in read_all(queue))  # the uplink is back and drains it all

        stats = queue.stats()
        episode = stats.eviction
        assert episode is not None and not episode.active
        assert episode.ended_at == clock.now
        assert (episode.batches, episode.bytes) == (stats.evicted_batches, stats.evicted_bytes)
        assert (episode.first_seq, episode.last_seq) == (1, stats.evicted_batches)
        assert episode.oldest_created_at == 1_700_000_000.0
        assert episode.newest_created_at == 1_700_000_000.0 + stats.evicted_batches - 1
        started_line, stopped = buffer_lines(caplog)
        assert started_line == started
        assert "eviction stopped (the backlog is below its bounds again)" in stopped
        assert f"{stats.evicted_batches} batches ({stats.evicted_bytes} bytes)" in stopped
        assert f"seqs 1-{stats.evicted_batches}" in stopped


def test_a_steady_state_where_every_append_evicts_logs_once_not_per_append(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="buffer"),
        DurableQueue(path, max_bytes=MB) as queue,
    ):
        for n in range(1_000):
            queue.append(lambda s: payload_for(s, 8_400))
            if n % 3 == 0:  # a slow uplink: drains a third of what comes in
                queue.ack([e.seq for e in queue.read(limit=1)])
        assert queue.stats().evicted_batches > 400
        assert len(buffer_lines(caplog)) == 1
        assert queue.stats().eviction is not None and queue.stats().eviction.active


def test_an_episode_still_running_when_the_buffer_closes_is_logged_with_its_totals(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="buffer"):
        with DurableQueue(path, max_bytes=MB) as queue:
            for _ in range(150):
                queue.append(lambda s: payload_for(s, 8_400))
            evicted = queue.stats().evicted_batches
        _, closed = buffer_lines(caplog)
    assert "eviction stopped (the buffer was closed)" in closed
    assert f"{evicted} batches ({evicted * 8_400} bytes)" in closed


def test_the_age_bound_logs_its_episode_with_cause_and_time_range(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(1_700_000_000.0)
    with (
        caplog.at_level(logging.INFO, logger="buffer"),
        DurableQueue(path, max_bytes=MB, max_age=60, clock=clock) as queue,
    ):
        for _ in range(10):  # created at 0, 10, ... 90 s; the uplink is down
            queue.append(lambda s: payload_for(s, 100))
            clock.now += 10
        for _ in range(60):  # the gateway's timer, every second
            queue.evict_older_than()
            clock.now += 1
        # The append at 70 s evicted the first; then one every 10 s, the last at 151 s.
        assert queue.stats().batches == 0
        started, stopped = buffer_lines(caplog)
    assert "batches are older than max_age (60 s); evicting the oldest batches" in started
    assert "1 batch (100 bytes), seqs 1-1, created 2023-11-14 22:13:20 UTC to" in started
    assert "the backlog is below its bounds again" in stopped
    assert "10 batches (1000 bytes), seqs 1-10" in stopped
    assert "created 2023-11-14 22:13:20 UTC to 2023-11-14 22:14:50 UTC" in stopped
    episode = queue.stats().eviction
    assert episode is not None
    assert (episode.cause, episode.active, episode.batches) == ("max_age", False, 10)


def test_an_age_episode_ends_when_what_is_left_is_young_again(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(1_700_000_000.0)
    with (
        caplog.at_level(logging.INFO, logger="buffer"),
        DurableQueue(path, max_bytes=MB, max_age=600, clock=clock) as queue,
    ):
        queue.append(lambda s: payload_for(s, 100))  # one stale batch...
        clock.now += 1_000
        queue.append(lambda s: payload_for(s, 100))  # ...evicted by this append; the rest is new
        assert queue.stats().eviction is not None
        assert not queue.stats().eviction.active
        for _ in range(3):
            queue.append(lambda s: payload_for(s, 100))
        assert len(buffer_lines(caplog)) == 2


def test_eviction_stats_are_none_until_something_is_evicted(path: Path) -> None:
    with DurableQueue(path, max_bytes=MB) as queue:
        queue.append(payload_for)
        assert queue.stats().eviction is None
