"""max_bytes bounds every file of the buffer on disk, not the sum of its payloads.

Seen in the field: ``max_bytes = 1MB`` occupied 5.2 MB, 4.1 MB of it WAL. Every test
here measures the files themselves (``st_size`` of the database, ``-wal``, ``-shm``,
``.lock``, ``.seq``), before every SQL statement the queue runs where it matters, so
that a WAL that grew past the bound inside a call and shrank before it returned is
caught too.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from buffer import DurableQueue
from tests.buffer.helpers import FootprintWatch, footprint, payload_for, read_all

MB = 1_000_000
PAGE = 4096


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_wal_and_every_side_file_count_against_max_bytes(path: Path, synchronous: str) -> None:
    rng = random.Random(8)
    sizes = [10, PAGE - 100, PAGE, 8_400, 100_000]  # small, about a page, a batch, large
    appended: list[int] = []
    with DurableQueue(path, max_bytes=MB, synchronous=synchronous) as queue:  # type: ignore[arg-type]
        watch = FootprintWatch(queue, path)
        for _ in range(400):
            size = rng.choice(sizes)
            appended.append(queue.append(lambda s, size=size: payload_for(s, size)))
            assert footprint(path) <= MB, f"after append #{len(appended)}"
            assert queue.stats().disk_bytes == footprint(path)
        assert watch.peak <= MB, "inside an append"

        kept = [e.seq for e in read_all(queue)]
        stats = queue.stats()
    assert kept == appended[len(appended) - len(kept) :], "eviction kept the newest"
    assert stats.evicted_batches == len(appended) - len(kept) > 100
    assert stats.bytes < MB


def test_the_files_stay_within_max_bytes_across_close_and_reopen(path: Path) -> None:
    for _ in range(3):
        with DurableQueue(path, max_bytes=MB) as queue:
            for _ in range(60):
                queue.append(lambda s: payload_for(s, 8_400))
            assert footprint(path) <= MB
        assert footprint(path) <= MB


@pytest.mark.parametrize("max_bytes", [MB, 4 * MB, 64 * MB])
def test_a_group_commit_of_200_batches_keeps_the_wal_within_the_bound(
    path: Path, max_bytes: int
) -> None:
    with DurableQueue(path, max_bytes=max_bytes) as queue:
        watch = FootprintWatch(queue, path)
        for _ in range(3):
            seqs = queue.append_many([lambda s: payload_for(s, 8_400)] * 200)
            assert len(seqs) == 200
        assert watch.peak <= max_bytes
        kept = [e.seq for e in read_all(queue)]
        assert kept == list(range(seqs[-1] - len(kept) + 1, seqs[-1] + 1)), "the newest"
        if max_bytes >= 64 * MB:
            assert queue.stats().evicted_batches == 0


def test_a_group_larger_than_the_buffer_writes_only_the_members_that_can_stay(
    path: Path,
) -> None:
    with DurableQueue(path, max_bytes=MB) as queue:
        statements: list[str] = []
        assert queue._conn is not None
        queue._conn.set_trace_callback(statements.append)
        seqs = queue.append_many([lambda s: payload_for(s, 8_400)] * 200)
        kept = [e.seq for e in read_all(queue)]
        inserted = sum(s.count("INSERT INTO batches") for s in statements)

    assert kept == seqs[len(seqs) - len(kept) :]
    assert 50 < len(kept) < 110
    # The members evicted on arrival are counted, never written (the trace sees one
    # INSERT per row; a few more where an insert was retried after making more room).
    assert inserted < len(kept) + 10 < len(seqs)


def test_acks_of_scattered_seqs_keep_the_wal_within_the_bound(path: Path) -> None:
    rng = random.Random(3)
    with DurableQueue(path, max_bytes=MB) as queue:
        watch = FootprintWatch(queue, path)
        for _ in range(5):
            seqs = [
                queue.append(lambda s: payload_for(s, rng.choice([100, 3_000]))) for _ in range(150)
            ]
            stored = [e.seq for e in read_all(queue)]
            acked = rng.sample(stored, k=len(stored) // 2)
            assert queue.ack(acked) == len(acked)
        assert watch.peak <= MB
        assert seqs


def test_a_year_of_clock_shift_on_many_entries_keeps_the_files_within_the_bound(
    path: Path,
) -> None:
    with DurableQueue(path, max_bytes=MB, clock=lambda: 1_000_000.0) as queue:  # integral
        for _ in range(75):  # about 155 of the 172 pages of data
            queue.append(lambda s: payload_for(s, 8_400))
        before = read_all(queue)
        assert queue.stats().evicted_batches == 0
        watch = FootprintWatch(queue, path)

        assert queue.shift_created_at(0, 365 * 86400.0) == 75  # rewritten, not in place
        assert watch.peak <= MB
        after = read_all(queue)
        assert queue.stats().evicted_batches == 0, "shifting stamps loses nothing"
    assert [(e.seq, e.payload) for e in after] == [(e.seq, e.payload) for e in before]
    assert {e.created_at for e in after} == {1_000_000.0 + 365 * 86400.0}


def test_a_file_grown_by_an_older_version_is_compacted_to_fit(path: Path) -> None:
    with DurableQueue(path, max_bytes=8 * MB) as queue:
        for _ in range(600):
            queue.append(lambda s: payload_for(s, 8_400))
        queue.ack(range(1, 551))  # the file keeps its high-water size
    assert path.stat().st_size > 4 * MB

    with DurableQueue(path, max_bytes=MB) as queue:
        assert [e.seq for e in read_all(queue)] == list(range(551, 601)), "nothing lost"
        assert queue.stats().evicted_batches == 0
        assert footprint(path) <= MB
    assert not Path(f"{path}.compact").exists()


def test_disk_bytes_is_the_size_of_every_file_and_bytes_the_payloads(path: Path) -> None:
    with DurableQueue(path, max_bytes=MB) as queue:
        queue.append_many([lambda s: payload_for(s, 1_000)] * 5)
        stats = queue.stats()
        assert stats.bytes == 5_000
        assert stats.disk_bytes == footprint(path) > stats.bytes
        files = {p.name for p in path.parent.iterdir()}
        assert files == {
            "queue.db",
            "queue.db-wal",
            "queue.db-shm",
            "queue.db.lock",
            "queue.db.seq",
        }
