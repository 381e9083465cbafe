"""What the buffer finds at its path, and what the machine lets it do there.

Nothing it did not create is moved, renamed or written; the files it creates are
private; a full disk is not damage; and every other failure of the machine is one
sentence that names the path and the reason. The full disk is a file-size limit
(``RLIMIT_FSIZE``) in a child process, which needs no privilege; unwritable directories
are tested in a child without ``CAP_DAC_OVERRIDE`` when the tests run as root.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from buffer import (
    BufferError,
    DiskFullError,
    DurableQueue,
    ForeignFileError,
    NotABufferError,
)
from tests.buffer.helpers import SUBPROCESS_TIMEOUT, child_env, payload_for, read_all, run_python

MB = 1_000_000


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "buffer" / "queue.db"


def listing(directory: Path) -> dict[str, tuple[int, int, float]]:
    """Every file below ``directory``: (mode, size, mtime), to show nothing was touched."""
    return {
        str(p.relative_to(directory)): (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime)
        for p in sorted(directory.rglob("*"))
    }


# -- never move or rename anything the gateway did not create -------------------------------


def test_a_directory_at_the_buffer_path_is_refused_and_nothing_in_it_is_touched(
    tmp_path: Path,
) -> None:
    live = tmp_path / "buffer.db"  # another gateway's buffer directory, say
    live.mkdir()
    with DurableQueue(live / "queue.db", max_bytes=MB) as other:
        other.append(payload_for)
    before = listing(tmp_path)

    with pytest.raises(NotABufferError) as refused:
        DurableQueue(live, max_bytes=MB)

    assert str(live) in str(refused.value)
    assert "is a directory" in str(refused.value)
    assert listing(tmp_path) == before


@pytest.mark.parametrize("kind", ["FIFO (named pipe)", "socket", "character device", "link"])
def test_a_fifo_a_socket_a_device_or_a_dangling_link_at_the_path_is_refused(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "queue.db"
    keep: socket.socket | None = None
    if kind == "FIFO (named pipe)":
        os.mkfifo(path)
    elif kind == "socket":
        keep = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        keep.bind(str(path))
    elif kind == "character device":
        path.symlink_to("/dev/null")
    else:
        path.symlink_to(tmp_path / "nowhere")
    before = listing(tmp_path)
    try:
        with pytest.raises(NotABufferError) as refused:
            DurableQueue(path, max_bytes=MB)
    finally:
        if keep is not None:
            keep.close()
    expected = "symbolic link to nothing" if kind == "link" else f"is a {kind}"
    assert expected in str(refused.value)
    assert str(path) in str(refused.value)
    assert listing(tmp_path) == before


def test_a_file_that_is_not_ours_is_refused_and_nothing_is_created_beside_it(
    path: Path,
) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("site notes: pump 3 replaced\n")
    before = listing(path.parent)

    with pytest.raises(NotABufferError, match="not a buffer of this gateway"):
        DurableQueue(path, max_bytes=MB)

    assert listing(path.parent) == before


def test_a_database_of_another_program_with_a_high_user_version_is_not_a_newer_buffer(
    path: Path,
) -> None:
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 70")  # as browsers and many apps do
    conn.execute("CREATE TABLE moz_places (url TEXT)")
    conn.commit()
    conn.close()

    with pytest.raises(NotABufferError) as refused:
        DurableQueue(path, max_bytes=MB)
    assert not isinstance(refused.value, ForeignFileError), "must not be moved aside"


def test_a_wal_without_its_database_and_without_our_seq_file_is_refused(path: Path) -> None:
    path.parent.mkdir(parents=True)
    Path(f"{path}-wal").write_bytes(os.urandom(5000))
    before = listing(path.parent)

    with pytest.raises(NotABufferError, match="-wal but no database"):
        DurableQueue(path, max_bytes=MB)
    assert listing(path.parent) == before


def test_a_buffer_whose_seq_file_was_lost_is_still_recognised_by_its_tables(path: Path) -> None:
    with DurableQueue(path, max_bytes=MB) as queue:
        seqs = [queue.append(payload_for) for _ in range(3)]
    Path(f"{path}.seq").unlink()

    with DurableQueue(path, max_bytes=MB) as queue:
        assert [e.seq for e in read_all(queue)] == seqs
        assert queue.append(payload_for) == seqs[-1] + 1


def test_a_damaged_buffer_whose_seq_file_was_lost_is_recognised_by_its_rows_and_salvaged(
    path: Path,
) -> None:
    with DurableQueue(path, max_bytes=MB) as queue:
        seqs = [queue.append(lambda s: payload_for(s, 3_000)) for _ in range(40)]
    Path(f"{path}.seq").unlink()
    with path.open("r+b") as f:  # cut short: SQLite cannot read even the schema
        f.truncate(path.stat().st_size // 2)

    with DurableQueue(path, max_bytes=MB) as queue:
        assert queue.recovered_from is not None
        kept = [e.seq for e in read_all(queue)]
    assert kept and set(kept) <= set(seqs)


def test_a_damaged_database_of_another_program_is_refused_and_left_untouched(
    path: Path,
) -> None:
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE readings (device TEXT, value REAL)")
    conn.executemany("INSERT INTO readings VALUES (?, ?)", [("pump", i / 3) for i in range(5000)])
    conn.commit()
    conn.close()
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
    before = listing(path.parent)

    with pytest.raises(NotABufferError, match="not a buffer of this gateway"):
        DurableQueue(path, max_bytes=MB)
    assert listing(path.parent) == before


# -- files are private ----------------------------------------------------------------------


def test_every_file_the_buffer_creates_is_mode_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "new" / "queue.db"
        with DurableQueue(path, max_bytes=MB, synchronous="normal") as queue:
            queue.append(payload_for)
            queue.sync()
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        assert modes == {
            "queue.db": 0o600,
            "queue.db-wal": 0o600,
            "queue.db-shm": 0o600,
            "queue.db.lock": 0o600,
            "queue.db.seq": 0o600,
        }
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

        path.write_bytes(b"\x00" * 100)  # damaged: salvaged into a new file, kept aside
        with DurableQueue(path, max_bytes=MB) as queue:
            assert queue.recovered_from is not None
            aside = Path(queue.recovered_from)
        assert stat.S_IMODE(aside.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_the_files_of_a_buffer_left_by_an_older_version_are_made_private(path: Path) -> None:
    with DurableQueue(path, max_bytes=MB) as queue:
        queue.append(payload_for)
    for suffix in ("", ".lock"):
        Path(f"{path}{suffix}").chmod(0o644)

    with DurableQueue(path, max_bytes=MB) as queue:
        queue.append(payload_for)
        for suffix in ("", "-wal", "-shm", ".lock", ".seq"):
            assert stat.S_IMODE(Path(f"{path}{suffix}").stat().st_mode) == 0o600, suffix


# -- a full disk is not damage ------------------------------------------------------------------

OPEN_UNDER_A_FILE_SIZE_LIMIT = """
import os, resource, signal, sys
from buffer import BufferError, DiskFullError, DurableQueue
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
path, limit, appends = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
try:
    queue = DurableQueue(path, max_bytes=4_000_000)
    print("opened", queue.stats().batches, flush=True)
    for _ in range(appends):
        queue.append(lambda s: os.urandom(8_400))
    print("appended", flush=True)
except DiskFullError as err:
    print("DiskFullError", err, flush=True)
    sys.exit(3)
except BufferError as err:
    print("BufferError", err, flush=True)
    sys.exit(4)
"""

APPEND_AND_DIE = """
import os, sys
from buffer import DurableQueue
queue = DurableQueue(sys.argv[1], max_bytes=4_000_000)
for _ in range(int(sys.argv[2])):
    queue.append(lambda s: os.urandom(8_400))
os._exit(0)  # like a SIGKILL: the WAL stays, uncheckpointed
"""


@pytest.mark.parametrize("limit", [0, 100, 16_384])
def test_a_full_disk_when_creating_the_buffer_is_a_disk_full_error(path: Path, limit: int) -> None:
    opened = run_python(OPEN_UNDER_A_FILE_SIZE_LIMIT, str(path), str(limit), "0")
    assert opened.returncode == 3, opened.stdout + opened.stderr
    assert f"buffer {path}" in opened.stdout
    assert "a file would grow past the largest size allowed" in opened.stdout


def test_a_full_disk_at_open_quarantines_nothing_and_loses_nothing(path: Path) -> None:
    assert run_python(APPEND_AND_DIE, str(path), "100").returncode == 0
    assert run_python(APPEND_AND_DIE, str(path), "20").returncode == 0  # leaves a WAL
    assert Path(f"{path}-wal").stat().st_size > 0
    # The checkpoint at open has to grow the database: not one byte more is allowed.
    limit = path.stat().st_size

    opened = run_python(OPEN_UNDER_A_FILE_SIZE_LIMIT, str(path), str(limit), "0")

    assert opened.returncode == 3, opened.stdout + opened.stderr
    assert not list(path.parent.glob("*.corrupt-*")), "a full disk is not damage"
    with DurableQueue(path, max_bytes=4_000_000) as queue:  # the space is back
        assert queue.recovered_from is None
        assert [e.seq for e in read_all(queue)] == list(range(1, 121))


def test_a_full_disk_while_appending_is_a_disk_full_error_and_keeps_what_was_stored(
    path: Path,
) -> None:
    appending = run_python(OPEN_UNDER_A_FILE_SIZE_LIMIT, str(path), "300000", "1000")

    assert appending.returncode == 3, appending.stdout + appending.stderr
    assert appending.stdout.startswith("opened 0\nDiskFullError cannot write to buffer")
    with DurableQueue(path, max_bytes=4_000_000) as queue:
        assert queue.recovered_from is None
        kept = [e.seq for e in read_all(queue)]
    assert kept == list(range(1, len(kept) + 1)), "every append that returned is there"
    assert len(kept) > 10


# -- the machine, in one sentence --------------------------------------------------------------


def test_an_empty_path_is_refused_in_one_clear_sentence() -> None:
    with pytest.raises(BufferError, match=r"^the buffer path is empty"):
        DurableQueue("", max_bytes=MB)


def test_a_parent_that_is_a_file_is_named_in_one_clear_sentence(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    for path in (tmp_path / "state" / "queue.db", tmp_path / "state" / "sub" / "queue.db"):
        with pytest.raises(BufferError) as refused:
            DurableQueue(path, max_bytes=MB)
        assert not isinstance(refused.value, DiskFullError)
        assert str(refused.value) == (
            f"cannot open buffer {path}: {tmp_path / 'state'} is a file, not a directory"
        ) or str(refused.value).endswith(f"{tmp_path / 'state'} is a file, not a directory")


OPEN_IN_CHILD = """
import sys
from buffer import BufferError, DurableQueue
try:
    DurableQueue(sys.argv[1], max_bytes=1_000_000).close()
except BufferError as err:
    print(type(err).__name__, err)
    sys.exit(3)
print("opened")
"""


def run_unprivileged(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child Python that permission bits apply to, even under root."""
    command = [sys.executable, "-c", code, *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: permission bits do not apply")
        command = [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--", *command]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=child_env(),
        check=False,
    )


@pytest.mark.rig  # a process of its own
def test_a_directory_the_gateway_cannot_write_is_named_in_one_clear_sentence(
    tmp_path: Path,
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for path in (locked / "queue.db", locked / "sub" / "queue.db"):
            refused = run_unprivileged(OPEN_IN_CHILD, str(path))
            assert refused.returncode == 3, refused.stdout + refused.stderr
            line = refused.stdout.strip()
            assert line.startswith("BufferError cannot "), line
            assert f"buffer {path}: " in line
            assert f"the directory {locked} is not writable by user " in line
            assert "\n" not in line
    finally:
        locked.chmod(0o755)


@pytest.mark.rig  # a process of its own
def test_a_buffer_file_the_gateway_cannot_write_is_named_in_one_clear_sentence(
    path: Path,
) -> None:
    with DurableQueue(path, max_bytes=MB) as queue:
        queue.append(payload_for)
    path.chmod(0o400)
    try:
        refused = run_unprivileged(OPEN_IN_CHILD, str(path))
    finally:
        path.chmod(0o600)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert refused.stdout.startswith("BufferError cannot ")
    assert f"buffer {path}: the file {path} is not writable by user " in refused.stdout
    assert not list(path.parent.glob("*.corrupt-*"))
