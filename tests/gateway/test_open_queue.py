"""The gateway never refuses to start because of what it finds at its buffer path."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from buffer import BufferInUseError, DurableQueue
from gateway.app import open_queue


def test_a_database_that_is_not_a_buffer_is_moved_aside_and_a_fresh_buffer_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "buffer.db"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        other.execute("INSERT INTO invoices VALUES (1, 99.5)")
    other.close()
    queue = open_queue(path, max_bytes=1_000_000)
    try:
        assert queue.append(lambda seq: b"reading") == 1
    finally:
        queue.close()
    aside = [p for p in tmp_path.glob("buffer.db.refused-*") if p.name[-1].isdigit()]
    assert len(aside) == 1
    with sqlite3.connect(aside[0]) as kept:
        assert kept.execute("SELECT total FROM invoices").fetchone() == (99.5,)
    kept.close()
    assert "not a buffer" in caplog.text and "moved it aside" in caplog.text


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
