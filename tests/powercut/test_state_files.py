"""Every small file the gateway writes survives a power cut whole, and what a write had
returned is still there: TinyDB state files (gateway/state.py), config files written
atomically and kept configs (gateway/flashing.py), and the buffer itself in a directory
it had to create. A child process writes in a loop and reports each write that
returned; at a random moment it is stopped dead, the power is cut (half the time
tearing the last unsynced write), the child killed, and the filesystem mounted again.
"""

from __future__ import annotations

import hashlib
import json
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from powercut.mount import LazyMount, require_fuse

pytestmark = pytest.mark.rig

CUTS = 3  # per test; each is a child process, a cut and a remount

WRITER = r"""
import os, random, sys
from pathlib import Path
kind, target = sys.argv[1], Path(sys.argv[2])
rnd = random.Random(int(sys.argv[3]))
start = int(sys.argv[4])
if kind == "state":
    from gateway.state import open_state
    db = open_state(target)
elif kind in ("queue", "journal"):
    from buffer import DurableQueue
    queue = DurableQueue(target, max_bytes=2_000_000, synchronous=sys.argv[5])
    stored = []
elif kind == "kept":
    from gateway.flashing import KeptConfigs
    kept = KeptConfigs(target)
for n in range(start, start + 100_000):
    pad = "x" * rnd.randint(0, 3000)
    if kind == "state":
        db.storage.write({"t": {"1": {"v": n, "pad": pad}}})
    elif kind == "atomic":
        from gateway.flashing import write_atomically
        write_atomically(target, f"v = {n}\n# {pad}\n".encode())
    elif kind == "kept":
        n = kept.keep(f"v = {n}\n# {pad}\n".encode()).stem
    elif kind == "queue":
        n = queue.append(lambda seq: f"{seq} {pad}".encode())
    elif kind == "journal":  # an outage: stored in the journal, folded when it is full
        entries = queue.reserve([lambda seq: f"{seq} {pad}".encode()] * rnd.randint(1, 8))
        kept = [e for e in entries if rnd.random() < 0.8]  # the rest acked from memory
        queue.append_reserved(kept)
        stored += [e.seq for e in kept]
        acked = stored[: rnd.randint(0, 3)] if rnd.random() < 0.3 else []
        del stored[: len(acked)]
        n = " ".join([*map(str, (e.seq for e in kept)), *(f"-{seq}" for seq in acked)])
        print(n, flush=True)  # before the ack: an ack cut short may or may not count
        queue.ack(acked)
        continue
    print(n, flush=True)
"""


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[LazyMount]:
    require_fuse()
    mount = LazyMount(tmp_path / "lazyfs")
    try:
        mount.mount()
        yield mount
    finally:
        mount.close()


def cut_while_writing(
    fs: LazyMount, kind: str, target: Path, rnd: random.Random, start: int, *extra: str
) -> list[str]:
    """Run the writer until a random moment, cut the power, remount; returns what the
    writer reported as written (each write had returned)."""
    seed = str(rnd.randrange(2**32))
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, kind, str(target), seed, str(start), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # unbuffered: the first line read leaves the rest in the pipe
    )
    try:
        assert child.stdout is not None
        first = child.stdout.readline()  # the writer is under way (its imports took time)
        assert first, child.stderr.read().decode() if child.stderr else ""
        time.sleep(rnd.uniform(0.0, 0.3))
        child.send_signal(signal.SIGSTOP)
        fs.cut(tear=rnd.random() < 0.5, seed=rnd.randrange(2**32))
        child.kill()
        rest, _ = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    fs.remount()
    return [*first.decode().split(), *rest.decode().split()]


@pytest.mark.parametrize("fresh_directory", [False, True], ids=["in its directory", "in a new one"])
def test_a_state_file_holds_the_last_write_that_returned_or_a_later_one_never_a_torn_one(
    fs: LazyMount, fresh_directory: bool
) -> None:
    rnd = random.Random(1)
    for n in range(CUTS):
        parent = fs.mountpoint / (f"new-{n}" if fresh_directory else "state")
        if not fresh_directory and not parent.exists():
            parent.mkdir()
            fs.request({"op": "sync"})
        path = parent / "command-nonces.json"
        written = cut_while_writing(fs, "state", path, rnd, start=n * 100_000)
        doc = json.loads(path.read_bytes())  # whole, or this raises
        assert doc["t"]["1"]["v"] >= int(written[-1])
        assert sorted(p.name for p in parent.iterdir()) == ["command-nonces.json"]


def test_a_file_written_atomically_is_the_old_or_the_new_never_a_mixture(fs: LazyMount) -> None:
    rnd = random.Random(2)
    path = fs.mountpoint / "gateway.toml"
    for n in range(CUTS):
        written = cut_while_writing(fs, "atomic", path, rnd, start=n * 100_000)
        text = path.read_text()
        assert text.endswith("\n") and text.startswith("v = ")
        assert int(text.split()[2]) >= int(written[-1])


def test_a_kept_config_survives_a_cut_once_keep_returned_even_in_a_new_configs_directory(
    fs: LazyMount,
) -> None:
    rnd = random.Random(3)
    for n in range(CUTS):
        state_dir = fs.mountpoint / f"state-{n}"
        state_dir.mkdir()
        fs.request({"op": "sync"})
        written = cut_while_writing(fs, "kept", state_dir, rnd, start=n * 100_000)
        for config_hash in written:
            raw = (state_dir / "configs" / f"{config_hash}.toml").read_bytes()
            assert hashlib.sha256(raw).hexdigest()[:12] == config_hash


def test_every_batch_appended_with_sync_full_survives_even_in_a_directory_the_buffer_made(
    fs: LazyMount,
) -> None:
    from buffer import DurableQueue

    rnd = random.Random(4)
    path = fs.mountpoint / "var" / "lib" / "edge-gateway" / "buffer.db"
    highest = 0
    for n in range(CUTS):
        written = [int(s) for s in cut_while_writing(fs, "queue", path, rnd, 0, "full")]
        assert written[0] > highest, "a seq was handed out again after the cut"
        with DurableQueue(path, max_bytes=2_000_000) as queue:
            stored = {e.seq: e.payload for e in queue.read(0, 1_000_000)}
            assert set(written) <= set(stored), f"cut {n + 1}: appended, then lost"
            assert all(p.startswith(f"{s} ".encode()) for s, p in stored.items())
            queue.ack(list(stored))
            highest = queue.stats().last_seq
        fs.request({"op": "sync"})


def test_every_batch_in_the_outage_journal_survives_unless_acknowledged_folds_included(
    fs: LazyMount,
) -> None:
    from buffer import DurableQueue

    rnd = random.Random(6)
    path = fs.mountpoint / "buffer.db"
    highest = evicted = 0
    for n in range(CUTS):
        report = cut_while_writing(fs, "journal", path, rnd, 0, "full")
        written = {int(s) for s in report if not s.startswith("-")}
        acked = {int(s[1:]) for s in report if s.startswith("-")}
        assert min(written) > highest, "a seq was handed out again after the cut"
        with DurableQueue(path, max_bytes=2_000_000) as queue:
            stored = {e.seq: e.payload for e in queue.read(0, 1_000_000)}
            gone = written - acked - set(stored)
            # A fast writer fills the 2 MB bound within its 0.3 s: the byte bound then
            # evicts the oldest batches, counted (by design, buffer/DESIGN.md). Only
            # those may be missing: the oldest ones, no more than the count says.
            newly_evicted = queue.stats().evicted_batches - evicted
            lost = {seq for seq in gone if seq > min(stored, default=0)}
            assert not lost, f"cut {n + 1}: stored in the journal, then lost: {sorted(lost)}"
            assert len(gone) <= newly_evicted, f"cut {n + 1}: {len(gone)} gone, not evicted"
            assert all(p.startswith(f"{s} ".encode()) for s, p in stored.items())
            assert not list(path.parent.glob("buffer.db.journal-*")), "folded at open"
            queue.ack(list(stored))
            highest = queue.stats().last_seq
            evicted = queue.stats().evicted_batches
        fs.request({"op": "sync"})


def test_a_buffer_reopened_with_sync_full_after_a_cut_under_normal_hands_out_no_seq_again(
    fs: LazyMount,
) -> None:
    """`[buffer] sync` changed from "normal" to "full", and the restart that applies it
    comes after a power cut: the seqs "normal" handed out and the cut took back (maybe
    published already) must not be handed out again."""
    from buffer import DurableQueue

    rnd = random.Random(5)
    path = fs.mountpoint / "buffer.db"
    highest = 0
    for _ in range(CUTS):
        written = [int(s) for s in cut_while_writing(fs, "queue", path, rnd, 0, "normal")]
        assert written[0] > highest
        with DurableQueue(path, max_bytes=2_000_000, synchronous="full") as queue:
            seq = queue.append(lambda seq: b"after the cut")
            assert seq > max(written), f"seq {seq} was handed out before the cut"
            highest = seq
        fs.request({"op": "sync"})


ACK_THEN_WAIT = r"""
import sys, time
from buffer import DurableQueue
queue = DurableQueue(sys.argv[1], max_bytes=2_000_000, synchronous=sys.argv[2])
entries = queue.reserve([lambda seq: f"{seq} x".encode()] * 3)
queue.append_reserved(entries)  # in the journal
if sys.argv[3] == "ack":  # acked there: the segment is deleted
    queue.ack([e.seq for e in entries])
elif sys.argv[3] == "fold-then-ack":  # folded into the database (and the journal deleted)
    seq = queue.append(lambda seq: f"{seq} x".encode())
    queue.ack([*(e.seq for e in entries), seq])
elif sys.argv[3] == "sync":  # "normal": promised by sync()
    queue.sync()
print(" ".join(str(e.seq) for e in entries), flush=True)
time.sleep(60)  # the power goes now
"""


def cut_after(fs: LazyMount, target: Path, *args: str) -> list[int]:
    """Run ACK_THEN_WAIT to its end, cut the power, remount; returns the seqs it reserved."""
    child = subprocess.Popen(
        [sys.executable, "-c", ACK_THEN_WAIT, str(target), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 20)
        line = child.stdout.readline() if ready else b""
        assert line, (
            child.stderr.read().decode() if child.poll() is not None and child.stderr else ""
        )
        child.send_signal(signal.SIGSTOP)
        fs.cut()
    finally:
        child.kill()
        child.wait(10)
    fs.remount()
    return [int(s) for s in line.split()]


@pytest.mark.parametrize("how", ["ack", "fold-then-ack"])
def test_batches_acknowledged_before_a_cut_do_not_come_back_from_a_deleted_journal(
    fs: LazyMount, how: str
) -> None:
    from buffer import DurableQueue

    path = fs.mountpoint / "buffer.db"
    reserved = cut_after(fs, path, "full", how)
    assert reserved
    with DurableQueue(path, max_bytes=2_000_000) as queue:
        back = [e.seq for e in queue.read(0, 1000)]
        assert not set(back) & set(reserved), f"acked, then published again: {back}"


@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_journalled_batches_survive_a_cut_once_append_reserved_or_sync_returned(
    fs: LazyMount, synchronous: str
) -> None:
    """With "full" once append_reserved returned, with "normal" once sync() returned."""
    from buffer import DurableQueue

    path = fs.mountpoint / "buffer.db"
    reserved = cut_after(fs, path, synchronous, "sync" if synchronous == "normal" else "-")
    with DurableQueue(path, max_bytes=2_000_000) as queue:
        stored = {e.seq: e.payload for e in queue.read(0, 1000)}
    assert sorted(stored) == reserved
    assert all(p == f"{s} x".encode() for s, p in stored.items())
