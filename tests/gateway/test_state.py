"""Small state files (gateway/state.py): whole or absent at a crash, 0600, and an
unreadable one is moved aside and counted, never the end of the gateway."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway import state
from gateway.state import AtomicJSONStorage, open_state, storage_of


def test_a_write_is_fsynced_then_renamed_then_the_directory_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_state(tmp_path / "small.json")
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, Path.replace

    def fsync(fd: int) -> None:
        target = Path(f"/proc/self/fd/{fd}").readlink()
        calls.append(f"fsync {Path(target).name}")
        real_fsync(fd)

    def replace(self: Path, target: Path) -> Path:
        calls.append(f"rename {self.name} -> {Path(target).name}")
        return real_replace(self, target)

    monkeypatch.setattr(state.os, "fsync", fsync)
    monkeypatch.setattr(Path, "replace", replace)
    db.insert({"a": 1})
    assert calls == [
        "fsync .small.json.tmp",
        "rename .small.json.tmp -> small.json",
        f"fsync {tmp_path.name}",
    ]


def test_state_files_are_0600_in_a_0700_directory(tmp_path: Path) -> None:
    os.umask(0o022)
    db = open_state(tmp_path / "new" / "small.json")
    db.insert({"a": 1})
    assert stat.S_IMODE((tmp_path / "new" / "small.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "empty"),
        (b'{"_default": {"1": {"a": 1}}, "x": {"2": {"b"', "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        (b"[1, 2, 3]", "not TinyDB tables"),
        (b'{"_default": {"1": 5}}', "not TinyDB tables"),
        (b"[" * 100_000, "not JSON"),
    ],
    ids=["empty", "torn", "garbage", "a-list", "not-documents", "deep"],
)
def test_an_unreadable_file_is_moved_aside_counted_and_started_afresh(
    tmp_path: Path, content: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "small.json"
    path.write_bytes(content)
    db = open_state(path)
    (aside,) = storage_of(db).set_aside
    assert aside.name.startswith("small.json.unreadable-") and aside.read_bytes() == content
    assert db.all() == []
    db.insert({"fresh": True})
    assert open_state(path).all() == [{"fresh": True}]
    assert why in caplog.text and "moved aside" in caplog.text


def test_a_temp_file_left_by_a_crash_is_never_read_and_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "small.json"
    open_state(path).insert({"committed": 1})
    temp = tmp_path / ".small.json.tmp"
    temp.write_bytes(b'{"_default": {"1": {"half')  # torn mid-write, never renamed
    db = open_state(path)
    assert db.all() == [{"committed": 1}] and not temp.exists()
    assert storage_of(db).set_aside == []


def test_a_failed_write_leaves_the_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "small.json"
    db = open_state(path)
    db.insert({"n": 1})

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(state.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        db.insert({"n": 2})
    monkeypatch.undo()
    assert open_state(path).all() == [{"n": 1}]
    assert not (tmp_path / ".small.json.tmp").exists()


WRITER = """
import sys
from tinydb.table import Document
from gateway.state import open_state
table = open_state(sys.argv[1]).table("counter")
previous = table.get(doc_id=1)
n = previous["n"] if previous else 0
print("ready", flush=True)
while True:
    n += 1
    table.upsert(Document({"n": n, "padding": "x" * 20000}, doc_id=1))
"""


@pytest.mark.rig
def test_a_process_killed_mid_write_never_leaves_a_torn_database(tmp_path: Path) -> None:
    path = tmp_path / "small.json"
    rng = random.Random(13)
    last = 0
    for _ in range(15):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.01, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        document = json.loads(path.read_bytes())  # whole: the last renamed version
        (counter,) = document["counter"].values()
        db = open_state(path)
        assert storage_of(db).set_aside == []
        assert counter["n"] >= last  # a fresh start would count from 1 again
        last = counter["n"]
    assert last > 15


def test_the_storage_refuses_a_database_not_opened_on_it(tmp_path: Path) -> None:
    from tinydb import TinyDB
    from tinydb.storages import MemoryStorage

    with pytest.raises(TypeError):
        storage_of(TinyDB(storage=MemoryStorage))
    assert isinstance(storage_of(open_state(tmp_path / "x.json")), AtomicJSONStorage)
