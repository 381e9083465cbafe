"""The power-cut filesystem (lazyfs.py) against the POSIX rules it models, through real
system calls on a real FUSE mount: what a file's fsync makes durable and what a
directory's does, renames, creates, unlinks, O_APPEND, truncation, a torn write, and
SQLite in WAL mode with each synchronous setting (fsync, fdatasync, ftruncate, and the
file sizes SQLite reads back)."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from powercut.mount import LazyMount, require_fuse

pytestmark = pytest.mark.rig  # a FUSE daemon of its own


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[LazyMount]:
    require_fuse()
    mount = LazyMount(tmp_path / "lazyfs")
    try:
        mount.mount()
        yield mount
    finally:
        mount.close()


def write(path: Path, data: bytes, *, fsync: bool = False, flags: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o600)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def power_cut(fs: LazyMount, **options: object) -> dict[str, object]:
    report = fs.cut(**options)  # type: ignore[arg-type]
    fs.remount()
    return report


def durable_file(fs: LazyMount, name: str, data: bytes) -> Path:
    """A file whose data and name are both on the disk."""
    path = fs.mountpoint / name
    write(path, data, fsync=True)
    fsync_dir(path.parent)
    return path


# --- files and names ---------------------------------------------------------------------------


def test_fsync_of_a_file_makes_its_data_durable_but_not_its_name(fs: LazyMount) -> None:
    write(fs.mountpoint / "new", b"data", fsync=True)
    power_cut(fs)
    assert not (fs.mountpoint / "new").exists()


def test_fsync_of_the_directory_makes_the_names_durable_with_the_data_fsynced_before(
    fs: LazyMount,
) -> None:
    write(fs.mountpoint / "new", b"data", fsync=True)
    fsync_dir(fs.mountpoint)
    power_cut(fs)
    assert (fs.mountpoint / "new").read_bytes() == b"data"


def test_a_name_made_durable_before_its_file_was_fsynced_names_an_empty_file(
    fs: LazyMount,
) -> None:
    write(fs.mountpoint / "new", b"data")
    fsync_dir(fs.mountpoint)
    power_cut(fs)
    assert (fs.mountpoint / "new").read_bytes() == b""


def test_an_unsynced_create_vanishes_and_durable_neighbours_stay(fs: LazyMount) -> None:
    durable_file(fs, "old", b"kept")
    write(fs.mountpoint / "new", b"lost")
    report = power_cut(fs)
    assert names(fs.mountpoint) == ["old"]
    assert (fs.mountpoint / "old").read_bytes() == b"kept"
    assert report["unsynced_directories"] == 1


def test_writes_after_the_last_fsync_are_lost(fs: LazyMount) -> None:
    path = durable_file(fs, "f", b"version 1")
    write(path, b"VERSION 2 and more")
    assert path.read_bytes() == b"VERSION 2 and more"
    power_cut(fs)
    assert path.read_bytes() == b"version 1"


def test_an_unsynced_unlink_comes_back_and_a_synced_one_does_not(fs: LazyMount) -> None:
    durable_file(fs, "a", b"a")
    durable_file(fs, "b", b"b")
    (fs.mountpoint / "a").unlink()
    fsync_dir(fs.mountpoint)
    (fs.mountpoint / "b").unlink()
    power_cut(fs)
    assert names(fs.mountpoint) == ["b"]


def test_a_file_unlinked_while_open_is_gone_after_the_cut_even_if_fsynced(fs: LazyMount) -> None:
    path = durable_file(fs, "f", b"old")
    fd = os.open(path, os.O_RDWR)
    try:
        path.unlink()
        fsync_dir(fs.mountpoint)
        os.pwrite(fd, b"new", 0)
        os.fsync(fd)
        assert os.pread(fd, 3, 0) == b"new"
    finally:
        os.close(fd)
    power_cut(fs)
    assert names(fs.mountpoint) == []


def test_a_rename_over_a_file_is_durable_with_its_directory_and_never_half_done(
    fs: LazyMount,
) -> None:
    target = durable_file(fs, "state.json", b'{"v": 1}')
    temp = fs.mountpoint / ".state.json.tmp"
    write(temp, b'{"v": 2}', fsync=True)
    temp.replace(target)
    power_cut(fs)  # the rename was never made durable
    assert target.read_bytes() == b'{"v": 1}'
    assert not temp.exists()

    write(temp, b'{"v": 2}', fsync=True)
    temp.replace(target)
    fsync_dir(fs.mountpoint)
    power_cut(fs)
    assert target.read_bytes() == b'{"v": 2}'
    assert names(fs.mountpoint) == ["state.json"]


def test_a_rename_without_fsync_of_the_new_file_can_leave_the_target_empty(
    fs: LazyMount,
) -> None:
    """Why the temp file must be fsynced before the rename: otherwise the durable name
    points at an inode whose data never reached the disk."""
    target = durable_file(fs, "state.json", b'{"v": 1}')
    temp = fs.mountpoint / ".state.json.tmp"
    write(temp, b'{"v": 2}')  # no fsync
    temp.replace(target)
    fsync_dir(fs.mountpoint)
    power_cut(fs)
    assert target.read_bytes() == b""


def test_a_move_between_directories_is_durable_in_each_by_its_own_fsync(fs: LazyMount) -> None:
    for name in ("a", "b"):
        (fs.mountpoint / name).mkdir()
    fsync_dir(fs.mountpoint)
    moved = durable_file(fs, "a/x", b"x")
    moved.rename(fs.mountpoint / "b" / "x")
    fsync_dir(fs.mountpoint / "b")  # but not a/
    power_cut(fs)
    # The model keeps each directory's own durable entries: the inode has both names.
    assert (fs.mountpoint / "a" / "x").read_bytes() == b"x"
    assert (fs.mountpoint / "b" / "x").read_bytes() == b"x"


def test_a_directory_is_durable_only_once_its_parent_is_fsynced(fs: LazyMount) -> None:
    (fs.mountpoint / "d").mkdir()
    durable_file(fs, "d/f", b"f")  # fsyncs d/, not the mount's root
    power_cut(fs)
    assert not (fs.mountpoint / "d").exists()

    (fs.mountpoint / "d").mkdir()
    fsync_dir(fs.mountpoint)
    write(fs.mountpoint / "d" / "f", b"f", fsync=True)  # d/ itself never fsynced
    power_cut(fs)
    assert (fs.mountpoint / "d").is_dir()
    assert names(fs.mountpoint / "d") == []


def test_chmod_is_durable_with_an_fsync_of_the_file(fs: LazyMount) -> None:
    path = durable_file(fs, "f", b"f")
    path.chmod(0o640)
    power_cut(fs)
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o640)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    power_cut(fs)
    assert path.stat().st_mode & 0o777 == 0o640


# --- appends, truncation, sizes ------------------------------------------------------------------


def test_o_append_writes_land_at_the_end_and_last_only_once_fsynced(fs: LazyMount) -> None:
    path = durable_file(fs, "log", b"one\n")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"two\n")
        os.fsync(fd)
        os.write(fd, b"three\n")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"one\ntwo\nthree\n"
    power_cut(fs)
    assert path.read_bytes() == b"one\ntwo\n"


def test_a_truncation_lasts_only_once_fsynced(fs: LazyMount) -> None:
    path = durable_file(fs, "f", bytes(range(256)) * 40)
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, 100)
        os.fdatasync(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"after", 5000)
        assert os.fstat(fd).st_size == 5005
    finally:
        os.close(fd)
    power_cut(fs)
    assert path.read_bytes() == bytes(range(100))


def test_a_truncation_then_a_write_beyond_it_leaves_zeros_between_on_the_disk(
    fs: LazyMount,
) -> None:
    path = durable_file(fs, "f", b"\xff" * 8192)
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, 10)
        os.pwrite(fd, b"end", 6000)
        os.fsync(fd)
    finally:
        os.close(fd)
    power_cut(fs)
    assert path.read_bytes() == b"\xff" * 10 + bytes(5990) + b"end"


def test_fdatasync_makes_the_data_and_the_size_durable(fs: LazyMount) -> None:
    path = durable_file(fs, "wal", b"")
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, b"a" * 8192, 0)
        os.fdatasync(fd)
        os.pwrite(fd, b"b" * 4096, 8192)
        assert os.fstat(fd).st_size == 12288  # what SQLite reads back to count frames
    finally:
        os.close(fd)
    power_cut(fs)
    assert path.stat().st_size == 8192
    assert path.read_bytes() == b"a" * 8192


def test_fallocate_grows_the_file_with_zeros(fs: LazyMount) -> None:
    path = durable_file(fs, "f", b"abc")
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, 65536)
        assert os.fstat(fd).st_size == 65536
        os.fsync(fd)
    finally:
        os.close(fd)
    power_cut(fs)
    assert path.read_bytes() == b"abc" + bytes(65533)


# --- the cut itself -----------------------------------------------------------------------------


def test_every_operation_fails_after_the_cut_until_the_remount(fs: LazyMount) -> None:
    path = durable_file(fs, "f", b"f")
    fd = os.open(path, os.O_RDWR)
    fs.cut()
    for attempt in (
        lambda: os.pwrite(fd, b"x", 0),
        lambda: os.fsync(fd),
        lambda: os.pread(fd, 1, 0),
        lambda: path.stat(),
        lambda: write(fs.mountpoint / "g", b"g"),
    ):
        with pytest.raises(OSError) as raised:
            attempt()
        assert raised.value.errno == errno.EIO
    with pytest.raises(OSError):
        os.close(fd)  # its flush fails too (the descriptor is closed all the same)
    fs.remount()
    assert path.read_bytes() == b"f"


def test_a_clean_unmount_keeps_everything_as_a_clean_shutdown_does(fs: LazyMount) -> None:
    (fs.mountpoint / "d").mkdir()
    (fs.mountpoint / "d" / "f").write_bytes(b"never fsynced")
    fs.remount()
    assert (fs.mountpoint / "d" / "f").read_bytes() == b"never fsynced"


def test_a_torn_write_reaches_the_disk_in_whole_512_byte_sectors(fs: LazyMount) -> None:
    path = durable_file(fs, "f", bytes(4096))
    seen: set[tuple[bool, ...]] = set()
    for seed in range(6):
        write(path, b"\xff" * 4096)  # unsynced, the last write before the cut
        report = power_cut(fs, tear=True, seed=seed)
        data = path.read_bytes()
        assert len(data) == 4096
        sectors = [data[i : i + 512] for i in range(0, 4096, 512)]
        assert all(s in (bytes(512), b"\xff" * 512) for s in sectors)
        written = {tuple(r) for r in report["torn"]["written"]}  # type: ignore[index]
        assert written == {(i * 512, i * 512 + 512) for i, s in enumerate(sectors) if s[0]}
        seen.add(tuple(bool(s[0]) for s in sectors))
        write(path, bytes(4096), fsync=True)
    assert len(seen) > 3  # whole, none, and mixtures


def test_an_unaligned_write_is_torn_at_the_sector_boundaries_of_the_file(fs: LazyMount) -> None:
    path = durable_file(fs, "f", bytes(2048))
    write_at = 100
    fd = os.open(path, os.O_RDWR)
    os.pwrite(fd, b"\x01" * 1000, write_at)
    os.close(fd)
    report = power_cut(fs, tear=True, seed=3)
    torn = report["torn"]
    assert torn["sectors"] == 3  # type: ignore[index]  # [100, 512), [512, 1024), [1024, 1100)
    data = path.read_bytes()
    for start, end in ((100, 512), (512, 1024), (1024, 1100)):
        assert data[start:end] in (bytes(end - start), b"\x01" * (end - start))


def test_a_write_to_a_file_not_on_the_disk_cannot_tear_anything(fs: LazyMount) -> None:
    write(fs.mountpoint / "new", b"x" * 4096)
    assert power_cut(fs, tear=True, seed=1)["torn"] is None
    assert names(fs.mountpoint) == []


# --- SQLite in WAL mode --------------------------------------------------------------------------


def open_db(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA journal_size_limit=65536")
    conn.execute("PRAGMA wal_autocheckpoint=20")
    return conn


def test_sqlite_wal_with_synchronous_full_keeps_every_commit_across_torn_cuts(
    fs: LazyMount,
) -> None:
    """Every commit that returned is there after the cut, the file is sound, and the
    WAL's restarts and truncations (checkpoints, journal_size_limit) are crossed."""
    rnd = random.Random(13)
    db = fs.mountpoint / "q.db"
    committed = 0
    for _ in range(4):
        conn = open_db(db, "FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, b BLOB)")
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == committed
        for _ in range(rnd.randint(5, 60)):
            conn.execute(
                "INSERT INTO t (n, b) VALUES (?, ?)",
                (committed + 1, rnd.randbytes(rnd.randint(10, 9000))),
            )
            committed += 1
            if rnd.random() < 0.1:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # an open transaction, never committed, whose pages reach the WAL
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (n, b) VALUES (?, ?)", (committed + 1, bytes(50_000)))
        fs.cut(tear=True, seed=rnd.randrange(1000))
        with contextlib.suppress(sqlite3.Error):
            conn.close()  # as a killed process lets go of its files
        fs.remount()
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*), max(n) FROM t").fetchone() == (committed, committed)
        conn.close()


def test_sqlite_wal_with_synchronous_normal_keeps_what_a_checkpoint_synced_and_opens_sound(
    fs: LazyMount,
) -> None:
    rnd = random.Random(5)
    db = fs.mountpoint / "q.db"
    conn = open_db(db, "NORMAL")
    conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, b BLOB)")
    for round_ in range(4):
        n = conn.execute("SELECT count(*) FROM t").fetchone()[0]
        for i in range(rnd.randint(3, 40)):
            conn.execute("INSERT INTO t (n, b) VALUES (?, ?)", (n + i + 1, rnd.randbytes(3000)))
        conn.execute("PRAGMA wal_checkpoint(FULL)")  # fsyncs the WAL and the database
        synced = conn.execute("SELECT count(*) FROM t").fetchone()[0]
        for i in range(rnd.randint(1, 5)):  # fewer than wal_autocheckpoint frames
            conn.execute("INSERT INTO t (n, b) VALUES (?, ?)", (synced + i + 1, b"x"))
        fs.cut(tear=round_ % 2 == 1, seed=round_)
        with contextlib.suppress(sqlite3.Error):
            conn.close()
        fs.remount()
        conn = open_db(db, "NORMAL")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # The commits after the checkpoint were never fsynced: all of them are lost.
        assert conn.execute("SELECT count(*), max(n) FROM t").fetchone() == (synced, synced)
    conn.close()
