"""Every stored payload carries a CRC-32; a payload that no longer matches it is never published.

SQLite notices a damaged page structure, not bit rot inside a blob. The damage here is
done the way an SD card does it: one bit flipped in the database file while the gateway
is off, on the page found by the payload's marker bytes (its seq, see ``payload_for``).
"""

from __future__ import annotations

import logging
import sqlite3
import zlib
from pathlib import Path

import pytest

from buffer import DurableQueue
from tests.buffer.helpers import PAGE, flip_a_bit, payload_for, read_all

MB = 1_000_000


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "buffer" / "queue.db"


def stored(path: Path, sizes: list[int]) -> list[bytes]:
    """A cleanly closed buffer holding seqs 1..len(sizes) of these payload sizes."""
    with DurableQueue(path, max_bytes=MB) as queue:
        for size in sizes:
            queue.append(lambda seq, size=size: payload_for(seq, size))
        return [e.payload for e in read_all(queue)]


def damage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]


def test_a_bit_flipped_inside_a_stored_payload_is_counted_and_never_returned_and_its_neighbours_are(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    payloads = stored(path, [1000] * 10)  # several to a leaf page: neighbours share its page
    flip_a_bit(path, payloads[4])  # seq 5

    with caplog.at_level(logging.INFO, logger="buffer"), DurableQueue(path, max_bytes=MB) as queue:
        assert queue.recovered_from is None, "the file is sound: only the blob changed"
        assert queue.stats().batches == 10, "nothing is judged before a read reaches it"
        entries = read_all(queue)
        assert [e.seq for e in entries] == [1, 2, 3, 4, 6, 7, 8, 9, 10]
        assert [e.payload for e in entries] == payloads[:4] + payloads[5:]
        stats = queue.stats()
        assert (stats.corrupt_batches, stats.corrupt_bytes) == (1, 1000)
        assert (stats.batches, stats.bytes, stats.evicted_batches) == (9, 9000, 0)
    [line] = damage_lines(caplog)
    assert "batch seq 5 (1000 bytes" in line
    assert "no longer matches its CRC-32" in line
    assert "never published" in line


def test_a_bit_flipped_on_an_overflow_page_is_caught_like_one_on_the_leaf(path: Path) -> None:
    payloads = stored(path, [100, 9000, 100])  # seq 2: a leaf cell and two overflow pages
    at = flip_a_bit(path, payloads[1], "end")
    conn = sqlite3.connect(path)
    kind = conn.execute("SELECT pagetype FROM dbstat WHERE pageno = ?", (at // PAGE + 1,))
    assert kind.fetchone() == ("overflow",)
    conn.close()

    with DurableQueue(path, max_bytes=MB) as queue:
        assert [e.payload for e in read_all(queue)] == [payloads[0], payloads[2]]
        assert (queue.stats().corrupt_batches, queue.stats().corrupt_bytes) == (1, 9000)


def test_a_bit_flipped_in_the_stored_checksum_is_caught_too(path: Path) -> None:
    payloads = stored(path, [100, 100, 100])
    data = bytearray(path.read_bytes())
    after = data.find(payloads[1]) + len(payloads[1])  # the crc column follows the payload
    data[after + 2] ^= 0x10
    path.write_bytes(bytes(data))

    with DurableQueue(path, max_bytes=MB) as queue:
        assert [e.seq for e in read_all(queue)] == [1, 3]
        assert queue.stats().corrupt_batches == 1


def test_a_window_with_a_damaged_batch_is_filled_with_the_batches_after_it(path: Path) -> None:
    payloads = stored(path, [500] * 6)
    flip_a_bit(path, payloads[1])  # seq 2

    with DurableQueue(path, max_bytes=MB) as queue:
        assert [e.seq for e in queue.read(after_seq=0, limit=3)] == [1, 3, 4]
        assert [e.seq for e in queue.read(after_seq=1, limit=1)] == [3]
        assert [e.seq for e in queue.read(after_seq=4, limit=10)] == [5, 6]


def test_a_run_of_damaged_batches_is_logged_once_with_its_first_seq_and_once_with_its_totals(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    payloads = stored(path, [700] * 12)
    for seq in range(3, 8):  # a bad stretch of the card
        flip_a_bit(path, payloads[seq - 1])
    flip_a_bit(path, payloads[10])  # and later, seq 11 alone

    with caplog.at_level(logging.INFO, logger="buffer"), DurableQueue(path, max_bytes=MB) as queue:
        cursor, seen = 0, []
        while window := queue.read(after_seq=cursor, limit=2):  # as the uplink reads
            seen += [e.seq for e in window]
            cursor = window[-1].seq
        assert seen == [1, 2, 8, 9, 10, 12]
        assert queue.stats().corrupt_batches == 6
    first, totals, alone = damage_lines(caplog)
    assert "batch seq 3 (700 bytes" in first
    assert "with it in this read: 2 batches (1400 bytes), seqs 3-4" in first
    assert "no longer found" in totals
    assert "5 batches (3500 bytes), seqs 3-7" in totals
    assert "batch seq 11 (700 bytes" in alone  # a run of one: its first line says it all
    assert [r.levelname for r in caplog.records if "damaged" in r.getMessage()] == [
        "ERROR",
        "WARNING",
        "ERROR",
    ]


def test_the_corrupt_counters_survive_a_restart_and_a_removed_batch_is_not_found_again(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    payloads = stored(path, [300] * 4)
    with DurableQueue(path, max_bytes=MB) as queue:
        in_flight = [e.seq for e in queue.read()]  # the uplink publishes them all
    flip_a_bit(path, payloads[2])  # seq 3 rots before its PUBACK is acked

    with DurableQueue(path, max_bytes=MB) as queue:
        assert [e.seq for e in read_all(queue)] == [1, 2, 4]
        assert queue.ack(in_flight) == 3, "seq 3 is gone: its ack is ignored"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="buffer"), DurableQueue(path, max_bytes=MB) as queue:
        stats = queue.stats()
        assert (stats.corrupt_batches, stats.corrupt_bytes, stats.batches) == (1, 300, 0)
        assert read_all(queue) == []
        assert queue.append(lambda seq: payload_for(seq, 300)) == 5
    assert damage_lines(caplog) == []


def test_a_row_of_this_format_without_a_checksum_is_damaged_not_unchecked(path: Path) -> None:
    stored(path, [200, 200, 200])
    conn = sqlite3.connect(path)
    conn.execute("UPDATE batches SET crc = NULL WHERE seq = 2")  # what a mangled record reads as
    conn.commit()
    conn.close()

    with DurableQueue(path, max_bytes=MB) as queue:
        assert [e.seq for e in read_all(queue)] == [1, 3]
        assert queue.stats().corrupt_batches == 1


def test_reading_sound_batches_checks_them_without_writing_anything(path: Path) -> None:
    stored(path, [8400] * 20)
    with DurableQueue(path, max_bytes=MB) as queue:
        statements: list[str] = []
        assert queue._conn is not None
        queue._conn.set_trace_callback(statements.append)
        assert len(read_all(queue)) == 20
        queue._conn.set_trace_callback(None)
    assert statements and all(s.startswith("SELECT") for s in statements), statements


def test_every_stored_batch_carries_the_crc_32_of_its_payload(path: Path) -> None:
    stored(path, [0, 1, 100, 5000, 9000])
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT payload, crc FROM batches ORDER BY seq").fetchall()
    conn.close()
    assert len(rows) == 5
    assert all(crc == zlib.crc32(payload) for payload, crc in rows)


# -- damaged files: the salvage keeps each batch's checksum ---------------------------------------


def write_garbage_on_the_tree_root(path: Path) -> None:
    with path.open("r+b") as f:
        f.seek(2 * PAGE)  # page 3: the root of batches (meta is page 2)
        f.write(b"\xff" * PAGE)


def test_the_salvage_of_a_damaged_file_copies_each_batch_with_its_checksum(path: Path) -> None:
    payloads = stored(path, [100, 3000, 9000] * 10)
    write_garbage_on_the_tree_root(path)

    with DurableQueue(path, max_bytes=MB) as queue:
        assert queue.recovered_from is not None
        assert [e.payload for e in read_all(queue)] == payloads
        assert queue.stats().corrupt_batches == 0
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT payload, crc FROM batches").fetchall()
    conn.close()
    assert len(rows) == 30
    assert all(crc == zlib.crc32(payload) for payload, crc in rows)


def test_a_rotten_batch_in_a_damaged_file_is_counted_unreadable_not_salvaged(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    payloads = stored(path, [100, 3000, 9000] * 10)
    flip_a_bit(path, payloads[7])  # seq 8
    write_garbage_on_the_tree_root(path)

    with caplog.at_level(logging.ERROR, logger="buffer"), DurableQueue(path, max_bytes=MB) as queue:
        assert queue.recovered_from is not None
        assert (queue.salvaged_batches, queue.unreadable_batches) == (29, 1)
        assert [e.seq for e in read_all(queue)] == [s for s in range(1, 31) if s != 8]
    assert "salvaged 29 batches into a new file, 1 unreadable" in caplog.text
