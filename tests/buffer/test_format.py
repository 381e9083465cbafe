"""Format 2 (a CRC-32 per payload) opens the version-1 files the gateway wrote before it.

``fixtures/version1/`` holds files written by the code of format 1 itself (commit
0507829, see ``fixtures/make_version1.py``): ``clean.db``, closed cleanly after age
evictions, acks and a clock shift; ``crashed.db``, whose process died with its commits
still in the WAL. Each test opens a copy.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from pathlib import Path

import pytest

from buffer import DurableQueue
from buffer.schema import PAGE_SIZE
from tests.buffer.helpers import flip_a_bit, payload_for, read_all

FIXTURES = Path(__file__).parent / "fixtures" / "version1"
SIZES = (0, 100, 1000, 3000, 9000)  # payload_for(seq, SIZES[seq % 5]), as written
START = 1_700_000_000.0
MB = 1_000_000


def old_payload(seq: int) -> bytes:
    return payload_for(seq, SIZES[seq % 5])


def copy_of(name: str, tmp_path: Path) -> Path:
    path = tmp_path / "queue.db"
    for suffix in ("", "-wal", ".seq"):
        if (FIXTURES / f"{name}{suffix}").exists():
            shutil.copyfile(FIXTURES / f"{name}{suffix}", f"{path}{suffix}")
    return path


def schema_of(path: Path) -> tuple[int, list[str], dict[int, int | None]]:
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        columns = [row[1] for row in conn.execute("PRAGMA table_info(batches)")]
        crcs = dict(conn.execute("SELECT seq, crc FROM batches").fetchall())
    finally:
        conn.close()
    return version, columns, crcs


def test_the_fixtures_are_version_1_files() -> None:
    for name in ("clean.db", "crashed.db"):
        conn = sqlite3.connect(f"{(FIXTURES / name).as_uri()}?immutable=1", uri=True)
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        assert "crc" not in [row[1] for row in conn.execute("PRAGMA table_info(batches)")]
        conn.close()


def test_a_version_1_file_is_migrated_in_place_and_keeps_every_batch_and_counter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = copy_of("clean.db", tmp_path)

    with caplog.at_level(logging.INFO, logger="buffer"), DurableQueue(path, max_bytes=MB) as queue:
        assert queue.recovered_from is None
        entries = read_all(queue)
        stats = queue.stats()
    assert [(e.seq, e.payload) for e in entries] == [(s, old_payload(s)) for s in range(6, 14)]
    assert [e.created_at for e in entries] == [
        START + 4000 + 10 * (seq - 4) + (0.5 if seq > 10 else 0) for seq in range(6, 14)
    ]
    assert (stats.last_seq, stats.evicted_batches, stats.evicted_bytes) == (13, 3, 4100)
    assert (stats.evicted_by_age_batches, stats.evicted_by_age_bytes) == (3, 4100)
    assert (stats.corrupt_batches, stats.corrupt_bytes) == (0, 0)
    version, columns, crcs = schema_of(path)
    assert (version, columns[-1]) == (2, "crc")
    assert set(crcs.values()) == {None}, "no row is rewritten by the migration"
    assert "format version 1 migrated in place to 2" in caplog.text
    assert "the 8 batches stored before carry no CRC-32" in caplog.text


def test_the_batches_of_a_version_1_file_are_read_unchecked_and_every_new_one_is_checked(
    tmp_path: Path,
) -> None:
    path = copy_of("clean.db", tmp_path)
    flip_a_bit(path, old_payload(8))  # stored by format 1: nothing to check it against
    with DurableQueue(path, max_bytes=MB) as queue:
        kept = {e.seq: e.payload for e in read_all(queue)}
        assert kept.keys() == set(range(6, 14))
        assert kept[8] != old_payload(8), "the documented limit: format-1 rows are unchecked"
        assert queue.append(lambda seq: payload_for(seq, 1000)) == 14
    flip_a_bit(path, payload_for(14, 1000))

    with DurableQueue(path, max_bytes=MB) as queue:
        assert [e.seq for e in read_all(queue)] == list(range(6, 14))
        assert queue.stats().corrupt_batches == 1
    _, _, crcs = schema_of(path)
    assert {seq for seq, crc in crcs.items() if crc is None} == set(range(6, 14))


def test_a_version_1_file_left_by_a_killed_process_is_replayed_and_then_migrated(
    tmp_path: Path,
) -> None:
    path = copy_of("crashed.db", tmp_path)
    assert Path(f"{path}-wal").stat().st_size > 0

    with DurableQueue(path, max_bytes=MB) as queue:
        assert queue.recovered_from is None
        assert [(e.seq, e.payload, e.created_at) for e in read_all(queue)] == [
            (seq, old_payload(seq), START) for seq in (1, 2, 3)
        ]
        assert queue.append(lambda seq: payload_for(seq, 100)) == 4
    version, _, crcs = schema_of(path)
    assert version == 2
    assert crcs[1] is None and crcs[4] is not None


def test_a_damaged_version_1_file_is_salvaged_and_its_batches_stay_unchecked(
    tmp_path: Path,
) -> None:
    path = copy_of("clean.db", tmp_path)
    conn = sqlite3.connect(f"{path.as_uri()}?immutable=1", uri=True)
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'batches'").fetchone()[0]
    conn.close()
    with path.open("r+b") as f:  # garbage on the root of batches: SQLite reads no row
        f.seek((root - 1) * 4096)
        f.write(b"\xff" * 4096)

    with DurableQueue(path, max_bytes=MB) as queue:
        assert queue.recovered_from is not None
        assert [(e.seq, e.payload) for e in read_all(queue)] == [
            (s, old_payload(s)) for s in range(6, 14)
        ]
        assert queue.stats().corrupt_batches == 0
        assert queue.append(lambda seq: payload_for(seq, 100)) == 14
    _, _, crcs = schema_of(path)
    assert {seq for seq, crc in crcs.items() if crc is None} == set(range(6, 14))


# -- page size: new files take PAGE_SIZE, older files keep theirs ---------------------------------


def page_size_of(path: Path) -> int:
    conn = sqlite3.connect(f"{path.as_uri()}?immutable=1", uri=True)
    try:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


def test_a_new_file_takes_2_kib_pages_and_a_4_kib_file_keeps_its_own_through_writes(
    tmp_path: Path,
) -> None:
    new = tmp_path / "new" / "queue.db"
    new.parent.mkdir()
    with DurableQueue(new, max_bytes=MB) as queue:
        queue.append(lambda seq: payload_for(seq, 3000))
    assert page_size_of(new) == PAGE_SIZE == 2048

    old = copy_of("clean.db", tmp_path)
    assert page_size_of(old) == 4096
    with DurableQueue(old, max_bytes=MB) as queue:
        before = len(read_all(queue))
        sizes = {
            queue.append(lambda seq, size=size: payload_for(seq, size)): size for size in SIZES * 20
        }
        entries = read_all(queue)
        assert [e.seq for e in entries[before:]] == list(sizes)
        assert all(e.payload == payload_for(e.seq, sizes[e.seq]) for e in entries[before:])
    assert page_size_of(old) == 4096
    assert old.stat().st_size % 4096 == 0
