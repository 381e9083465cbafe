"""Damaged buffer files: what is still readable is kept, the rest is quarantined, start-up never fails.

The expected outcome of each damage is computed independently of the salvage code:
SQLite's ``dbstat`` table tells on which leaf and overflow pages each row of the sound
file lives, so the test knows exactly which rows a cut or a destroyed page leaves
readable.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import shutil
import sqlite3
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buffer import DurableQueue, Entry, NotABufferError, opening
from buffer.salvage import DamagedFile
from buffer.schema import PAGE_SIZE
from tests.buffer.helpers import payload_for as sized_payload
from tests.buffer.helpers import read_all, run_python

PAGE = PAGE_SIZE  # of new buffer files
SIZES = (0, 100, 1000, 3000, 5000, 9000)  # none, small, several per page, one or two overflow pages


def payload_for(seq: int) -> bytes:
    """A payload that can only belong to this seq, its size cycling through SIZES."""
    return sized_payload(seq, SIZES[seq % len(SIZES)])


APPEND_AND_DIE = """
import os, sys
from buffer import DurableQueue
q = DurableQueue(sys.argv[1], max_bytes=10**7)
q.ack(range(1, int(sys.argv[3]) + 1))
for _ in range(int(sys.argv[2])):
    seq = q.append(lambda s: (s.to_bytes(8, "big") * 700)[: 100 + s * 97 % 5000])
print(seq, flush=True)
os._exit(0)  # no close(): like a SIGKILL after the last append, the WAL stays
"""


def appended_by_child(seq: int) -> bytes:
    return (seq.to_bytes(8, "big") * 700)[: 100 + seq * 97 % 5000]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "buffer" / "queue.db"


def fill(path: Path, count: int) -> list[Entry]:
    """An append-only buffer of ``count`` rows (seqs 1..count), cleanly closed."""
    with DurableQueue(path, max_bytes=10**8) as queue:
        for _ in range(count):
            queue.append(payload_for)
        return read_all(queue)


def pages_of_each_row(path: Path) -> list[tuple[int, set[int]]]:
    """(leaf page, overflow pages) of each row of an append-only buffer, in seq order."""
    conn = sqlite3.connect(path)
    try:
        pages = conn.execute(
            "SELECT path, pageno, pagetype, ncell FROM dbstat WHERE name = 'batches' ORDER BY path"
        ).fetchall()
    finally:
        conn.close()
    leaves = [(where, page, cells) for where, page, kind, cells in pages if kind == "leaf"]
    overflow: dict[tuple[str, int], set[int]] = defaultdict(set)
    for where, page, kind, _ in pages:
        if kind == "overflow":  # "/001/002+000001": cell 2 of leaf "/001/", its 2nd page
            leaf, _, cell = where.rpartition("/")
            overflow[(leaf + "/", int(cell.split("+")[0], 16))].add(page)
    return [
        (page, overflow[(where, cell)]) for where, page, cells in leaves for cell in range(cells)
    ]


def only_error_line(caplog: pytest.LogCaptureFixture) -> str:
    assert [r.levelname for r in caplog.records] == ["ERROR"], caplog.text
    return caplog.records[0].getMessage()


# -- a file cut short ---------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_a_file_cut_short_keeps_every_row_still_readable_and_seqs_continue_above_all_seen(
    path: Path, fraction: float, caplog: pytest.LogCaptureFixture
) -> None:
    written = fill(path, 300)
    layout = pages_of_each_row(path)
    assert len(layout) == len(written)
    cut = int(path.stat().st_size * fraction)
    on_disk = cut // PAGE  # pages left whole
    leaf_left = {e.seq for e, (leaf, _) in zip(written, layout, strict=True) if leaf <= on_disk}
    readable = {
        e.seq
        for e, (leaf, chain) in zip(written, layout, strict=True)
        if leaf <= on_disk and all(page <= on_disk for page in chain)
    }
    assert 0 < len(readable) < len(written)
    with path.open("r+b") as f:
        f.truncate(cut)
    damaged = path.read_bytes()

    with (
        caplog.at_level(logging.ERROR, logger="buffer"),
        DurableQueue(path, max_bytes=10**8) as queue,
    ):
        kept = read_all(queue)
        stats = queue.stats()
        assert [e.seq for e in kept] == sorted(readable)
        assert kept == [e for e in written if e.seq in readable], "seq, created_at, payload"
        assert (stats.salvaged_batches, stats.unreadable_batches) == (
            len(readable),
            len(leaf_left - readable),  # their cell survived, an overflow page did not
        )
        assert stats.batches == len(readable)
        assert queue.append(payload_for) == written[-1].seq + 1

    assert queue.recovered_from is not None
    assert Path(queue.recovered_from).read_bytes() == damaged, "the damaged file is kept as is"
    message = only_error_line(caplog)
    assert f"salvaged {len(readable)} batches" in message
    assert f"{len(leaf_left - readable)} unreadable" in message
    assert queue.recovered_from in message


# -- a page of garbage -------------------------------------------------------------------------------


def write_garbage_page(path: Path, page: int) -> None:
    garbage = random.Random(page).randbytes(PAGE)
    assert garbage[0] not in (0x0D, 0x0A)  # deterministic: it cannot pass for a leaf page
    with path.open("r+b") as f:
        f.seek((page - 1) * PAGE)
        f.write(garbage)


def test_a_page_of_garbage_on_a_leaf_loses_only_the_rows_on_that_leaf(path: Path) -> None:
    written = fill(path, 300)
    layout = pages_of_each_row(path)
    leaves = sorted({leaf for leaf, _ in layout})
    middle = next(
        leaf
        for leaf in leaves[len(leaves) // 2 :]
        if sum(1 for other, _ in layout if other == leaf) >= 3
    )
    lost = {e.seq for e, (leaf, _) in zip(written, layout, strict=True) if leaf == middle}
    write_garbage_page(path, middle)

    with DurableQueue(path, max_bytes=10**8) as queue:
        assert queue.recovered_from is not None
        assert read_all(queue) == [e for e in written if e.seq not in lost]
        assert (queue.salvaged_batches, queue.unreadable_batches) == (len(written) - len(lost), 0)


def test_a_page_of_garbage_on_the_tree_root_hides_no_row(path: Path) -> None:
    written = fill(path, 300)
    root = 3  # meta is created first (page 2), batches second
    assert root not in {leaf for leaf, _ in pages_of_each_row(path)}
    write_garbage_page(path, root)

    with DurableQueue(path, max_bytes=10**8) as queue:
        assert queue.recovered_from is not None
        assert read_all(queue) == written
        assert queue.append(payload_for) == written[-1].seq + 1


def test_a_damaged_meta_table_keeps_every_row_and_seqs_continue_from_the_seq_file(
    path: Path,
) -> None:
    written = fill(path, 40)
    write_garbage_page(path, 2)  # the meta table's only page

    with DurableQueue(path, max_bytes=10**8) as queue:
        assert queue.recovered_from is not None
        assert read_all(queue) == written
        assert queue.append(payload_for) == 41


# -- the write-ahead log --------------------------------------------------------------------------


def test_a_garbage_wal_is_kept_aside_and_the_checkpointed_rows_are_kept(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    written = fill(path, 30)
    died = run_python(APPEND_AND_DIE, str(path), "20", "0")
    assert died.returncode == 0, died.stderr
    wal = Path(f"{path}-wal")
    garbage = random.Random(1).randbytes(wal.stat().st_size)
    wal.write_bytes(garbage)

    with (
        caplog.at_level(logging.ERROR, logger="buffer"),
        DurableQueue(path, max_bytes=10**8) as queue,
    ):
        assert read_all(queue) == written, "the WAL's commits are gone; the rest is intact"
        assert queue.append(payload_for) > int(died.stdout)

    assert queue.recovered_from is not None
    assert Path(f"{queue.recovered_from}-wal").read_bytes() == garbage
    assert "no valid WAL header" in only_error_line(caplog)


def test_rows_still_in_the_wal_are_salvaged_when_the_database_header_is_destroyed(
    path: Path,
) -> None:
    fill(path, 10)
    died = run_python(APPEND_AND_DIE, str(path), "30", "3")  # acks 1-3, appends 11-40
    assert died.returncode == 0, died.stderr
    with path.open("r+b") as f:
        f.write(random.Random(2).randbytes(100))

    with DurableQueue(path, max_bytes=10**8) as queue:
        kept = read_all(queue)
        assert [e.seq for e in kept] == list(range(4, 41)), "acked rows do not come back"
        assert all(e.payload == payload_for(e.seq) for e in kept if e.seq <= 10)
        assert all(e.payload == appended_by_child(e.seq) for e in kept if e.seq > 10)


@pytest.mark.parametrize("page_size", [4096, 2048, 1024])
def test_a_file_without_its_header_nor_a_wal_is_salvaged_whatever_its_page_size(
    path: Path, page_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files made before 2026-11-30 have 4 KiB pages, later ones 2 KiB: with page 1's
    header gone and no WAL to say it, the salvage finds the size from the pages."""
    monkeypatch.setattr(opening, "PAGE_SIZE", page_size)
    rows = fill(path, 60)
    monkeypatch.undo()
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    with path.open("r+b") as f:
        f.write(bytes(100))

    with DurableQueue(path, max_bytes=10**8) as queue:
        assert queue.recovered_from is not None
        assert queue.salvaged_batches == 60
        assert read_all(queue) == rows


def test_a_wal_left_without_its_database_is_salvaged_not_replayed(path: Path) -> None:
    died = run_python(APPEND_AND_DIE, str(path), "20", "0")
    assert died.returncode == 0, died.stderr
    path.unlink()  # an operator "cleaning up", or a crash in the middle of a quarantine

    with DurableQueue(path, max_bytes=10**8) as queue:
        assert queue.recovered_from is not None
        assert Path(f"{queue.recovered_from}-wal").exists()
        kept = read_all(queue)
        assert [(e.seq, e.payload) for e in kept] == [
            (seq, appended_by_child(seq)) for seq in range(1, 21)
        ]
        assert queue.append(payload_for) > int(died.stdout)


# -- files that are not damaged buffers -----------------------------------------------------------


def test_a_zero_length_file_is_just_a_new_buffer_whose_seqs_continue_after_the_seq_file(
    path: Path,
) -> None:
    fill(path, 57)
    path.write_bytes(b"")

    with DurableQueue(path, max_bytes=10**8) as queue:
        assert queue.recovered_from is None
        assert queue.stats().batches == 0
        assert queue.append(payload_for) == 58
    assert not list(path.parent.glob("*.corrupt-*"))


def test_a_garbage_file_with_our_seq_file_beside_it_is_kept_aside_and_a_fresh_queue_starts(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = os.urandom(8192)
    path.parent.mkdir(parents=True)
    path.write_bytes(garbage)
    Path(f"{path}.seq").write_text("41\n")  # what makes it ours: a buffer whose header died

    with (
        caplog.at_level(logging.ERROR, logger="buffer"),
        DurableQueue(path, max_bytes=10**6) as queue,
    ):
        assert queue.recovered_from is not None
        assert queue.stats().batches == 0
        seq = queue.append(payload_for)
        assert [e.seq for e in queue.read()] == [seq] == [42]

    kept = Path(queue.recovered_from)
    assert kept.name.startswith("queue.db.corrupt-")
    assert kept.read_bytes() == garbage, "the damaged file must be kept byte for byte"
    assert kept.stat().st_mode & 0o777 == 0o600
    message = only_error_line(caplog)
    assert str(kept) in message
    assert "no SQLite header" in message
    assert "salvaged 0 batches" in message


def test_a_garbage_file_without_our_seq_file_is_refused_and_left_untouched(path: Path) -> None:
    garbage = os.urandom(8192)
    path.parent.mkdir(parents=True)
    path.write_bytes(garbage)

    with pytest.raises(NotABufferError, match="no SQLite header"):
        DurableQueue(path, max_bytes=10**6)

    assert path.read_bytes() == garbage
    assert [p.name for p in path.parent.iterdir()] == ["queue.db"], "nothing created beside it"


def test_seqs_after_quarantine_continue_above_the_last_seq_of_the_lost_file(path: Path) -> None:
    lost = fill(path, 7)
    path.write_bytes(b"\x00garbage" * 100)

    with DurableQueue(path, max_bytes=1_000_000) as queue:
        assert queue.recovered_from is not None
        assert queue.append(payload_for) == lost[-1].seq + 1


# -- the recovery itself fails or is interrupted ---------------------------------------------------


def test_an_error_while_salvaging_still_starts_an_empty_queue_and_keeps_the_file_aside(
    path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = fill(path, 20)
    write_garbage_page(path, 3)

    def broken(path: str) -> DamagedFile:
        raise MemoryError("no memory for the salvage")

    monkeypatch.setattr("buffer.recovery.DamagedFile", broken)
    with (
        caplog.at_level(logging.ERROR, logger="buffer"),
        DurableQueue(path, max_bytes=10**8) as queue,
    ):
        assert queue.stats().batches == 0
        assert queue.stats().recovered_from == queue.recovered_from is not None
        assert queue.append(payload_for) == written[-1].seq + 1
    assert "salvage failed (MemoryError: no memory for the salvage)" in only_error_line(caplog)
    assert not list(path.parent.glob("*.salvage"))


def test_a_recovery_interrupted_before_the_quarantine_runs_again(path: Path) -> None:
    written = fill(path, 30)
    write_garbage_page(path, 3)
    stale = Path(f"{path}.corrupt-1.salvage")  # a half-written salvage; the file is still here
    stale.write_bytes(b"half a database")

    with DurableQueue(path, max_bytes=10**8) as queue:
        assert read_all(queue) == written
        assert queue.recovered_from != f"{path}.corrupt-1"
    assert not stale.exists()


def test_a_recovery_interrupted_after_the_quarantine_is_completed_at_the_next_open(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    salvaged = fill(path, 30)  # the complete salvage file the interrupted run had written
    target = Path(f"{path}.corrupt-1")
    path.replace(f"{target}.salvage")
    target.write_bytes(b"the damaged file, moved aside")
    Path(f"{path}-wal").write_bytes(b"its WAL, not yet moved")

    with (
        caplog.at_level(logging.ERROR, logger="buffer"),
        DurableQueue(path, max_bytes=10**8) as queue,
    ):
        assert queue.recovered_from == str(target)
        assert read_all(queue) == salvaged
    assert Path(f"{target}-wal").read_bytes() == b"its WAL, not yet moved"
    assert "interrupted" in only_error_line(caplog)


# -- the page reader against SQLite -------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_the_page_reader_sees_exactly_what_sqlite_sees_in_a_sound_file(
    path: Path, seed: int
) -> None:
    """Appends, acks and evictions, read while the WAL holds uncheckpointed commits."""
    rng = random.Random(seed)
    with DurableQueue(path, max_bytes=600_000) as queue:
        for _ in range(500):
            queue.append(lambda s: sized_payload(s, rng.choice(SIZES)))
            if rng.random() < 0.2:
                live = [e.seq for e in queue.read(limit=30)]
                queue.ack(rng.sample(live, k=min(len(live), rng.randrange(6))))
        sqlite = sqlite3.connect(path)
        meta = dict(sqlite.execute("SELECT key, value FROM meta").fetchall())
        expected = {
            seq: (created_at, payload, crc)
            for seq, created_at, payload, crc in sqlite.execute(
                "SELECT seq, created_at, payload, crc FROM batches"
            )
        }
        sqlite.close()
        assert {e.seq: (e.created_at, e.payload) for e in read_all(queue)} == {
            seq: (created_at, payload) for seq, (created_at, payload, _) in expected.items()
        }
        assert Path(f"{path}-wal").stat().st_size > 0
        assert queue.stats().evicted_batches > 0

        with DamagedFile(str(path)) as pages:
            found: dict[int, tuple[float, bytes, int | None]] = {}
            for row in pages.batches():
                copy = (row.created_at, row.payload, row.crc)
                assert found.setdefault(row.seq, copy) == copy
            assert pages.unreadable_seqs == set()
            assert pages.meta == meta
    assert found == expected


# -- any damage at all ------------------------------------------------------------------------------

TEMPLATE_ROWS = 60
USER_VERSION = range(60, 64)  # header bytes: damage there reads as a newer format (refused)


@functools.cache
def template() -> tuple[bytes, bytes]:
    """A sound buffer file (after a clean close) and its .seq, built once per session."""
    where = Path(tempfile.mkdtemp(prefix="buffer-template-"))
    try:
        fill(where / "queue.db", TEMPLATE_ROWS)
        return (where / "queue.db").read_bytes(), (where / "queue.db.seq").read_bytes()
    finally:
        shutil.rmtree(where)


DAMAGE = st.lists(
    st.tuples(
        st.integers(0, 200 * PAGE).filter(lambda at: at not in USER_VERSION),
        st.binary(min_size=1, max_size=PAGE),
    ),
    max_size=6,
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(damage=DAMAGE, cut=st.none() | st.floats(0, 1))
def test_any_damage_still_opens_with_only_rows_and_bytes_that_were_written(
    tmp_path: Path, damage: list[tuple[int, bytes]], cut: float | None
) -> None:
    sound, seq_file = template()
    data = bytearray(sound)
    for at, garbage in damage:
        at %= len(data)
        if USER_VERSION.start <= at + len(garbage) and at < USER_VERSION.stop:
            garbage = garbage[: max(0, USER_VERSION.start - at)]
        data[at : at + len(garbage)] = garbage
    if cut is not None:
        del data[int(len(data) * cut) :]
    where = Path(tempfile.mkdtemp(dir=tmp_path))
    path = where / "queue.db"
    path.write_bytes(bytes(data))
    (where / "queue.db.seq").write_bytes(seq_file)

    logging.disable(logging.ERROR)
    try:
        with DurableQueue(path, max_bytes=10**8) as queue:
            kept = read_all(queue)
            assert {e.seq for e in kept} <= set(range(1, TEMPLATE_ROWS + 1))
            assert queue.stats().batches == len(kept)
            written = {payload_for(seq) for seq in range(1, TEMPLATE_ROWS + 1)}
            assert all(e.payload in written for e in kept), "damaged bytes are never read"
            assert queue.append(payload_for) == TEMPLATE_ROWS + 1
    finally:
        logging.disable(logging.NOTSET)
