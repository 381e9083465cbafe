"""What the gateway finds at its buffer path: a buffer written by a newer gateway is
moved aside (it is ours) and a fresh one started; anything that is not ours is
refused and left untouched, never moved (it could be another program's data)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from buffer import BufferInUseError, DurableQueue, NotABufferError
from gateway.app import open_queue


def test_a_database_that_is_not_a_buffer_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        other.execute("INSERT INTO invoices VALUES (1, 99.5)")
    other.close()
    before = path.read_bytes()
    with pytest.raises(NotABufferError, match="not a buffer"):
        open_queue(path, max_bytes=1_000_000)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["buffer.db"]


def test_a_directory_at_the_buffer_path_is_refused_and_nothing_in_it_moves(
    tmp_path: Path,
) -> None:
    """Seen: a buffer path naming a directory renamed it, and everything in it, aside."""
    path = tmp_path / "buffer.db"
    path.mkdir()
    (path / "another-gateways-buffer.db").write_bytes(b"precious")
    with pytest.raises(NotABufferError):
        open_queue(path, max_bytes=1_000_000)
    assert (path / "another-gateways-buffer.db").read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["buffer.db"]


def test_a_buffer_from_a_newer_gateway_is_kept_aside_not_destroyed(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    with DurableQueue(path, max_bytes=1_000_000) as queue:
        queue.append(lambda seq: b"from the newer version")
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    with open_queue(path, max_bytes=1_000_000) as fresh:
        assert fresh.stats().batches == 0
    assert (
        len(
            [
                p
                for p in tmp_path.glob("buffer.db.refused-*")
                if p.suffix == ".db" or p.name[-1].isdigit()
            ]
        )
        == 1
    )


def test_a_buffer_held_by_another_gateway_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    with DurableQueue(path, max_bytes=1_000_000), pytest.raises(BufferInUseError):
        open_queue(path, max_bytes=1_000_000)
