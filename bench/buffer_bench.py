"""Throughput of the durable queue with gateway-sized batches; prints a table, asserts nothing.

    python bench/buffer_bench.py            # backlogs 0 and 10k, < 60 s on a 2-core VM
    python bench/buffer_bench.py --large    # adds a 100k backlog (~840 MB on disk)
    python bench/buffer_bench.py --dir /mnt/sd/tmp   # measure on the card the gateway uses

Unless a row says otherwise every append is its own durable commit, as in the gateway;
every read checks each payload against its CRC-32.
"written/payload" is the bytes this process sent to the page cache for writing
(``/proc/self/io`` write_bytes: counted when a clean page becomes dirty, so ext4's own
journal is not included) divided by the payload bytes appended: the write amplification
to watch on SD cards. The "commit modes" rows compare the durability settings of
buffer/DESIGN.md ("Durability window") on fresh queues; the last table turns them into
disk bytes per reading.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from buffer import DurableQueue
from buffer.queue import Synchronous

PAYLOAD_BYTES = 8400  # a batch of 200 readings in msgpack
READINGS_PER_BATCH = 200
TIMED_APPENDS = 2000
ACK_GROUP = 50
GROUP = 10  # batches per group commit / per sync() in the commit-mode rows
UNBOUNDED = 1 << 40

_BODY = os.urandom(PAYLOAD_BYTES - 8)


def make_payload(seq: int) -> bytes:
    return seq.to_bytes(8, "big") + _BODY


def written_bytes() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, scenario: str, ops: int, seconds: float, lat: list[float], written: str) -> None:
        p50 = f"{statistics.median(lat) * 1e6:,.0f}" if lat else "-"
        p99 = f"{statistics.quantiles(lat, n=100)[98] * 1e6:,.0f}" if len(lat) > 1 else "-"
        self.rows.append((scenario, f"{ops:,}", f"{ops / seconds:,.0f}", p50, p99, written))

    def add_text(self, scenario: str, value: str) -> None:
        self.rows.append((scenario, "", value, "", "", ""))

    def print(self) -> None:
        head = ("scenario", "ops", "ops/s", "p50 µs", "p99 µs", "written/payload")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(len(head))]
        for row in [head, *self.rows]:
            cells = [row[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
            ]
            print("  ".join(cells).rstrip())


def timed(
    n: int, op: Callable[[], object], batches_per_op: int = 1
) -> tuple[float, list[float], str]:
    """Run ``op`` n times; return total seconds, per-call latencies and write amplification."""
    lat = []
    w0 = written_bytes()
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        op()
        lat.append(time.perf_counter() - t)
    seconds = time.perf_counter() - start
    w1 = written_bytes()
    payload = n * batches_per_op * PAYLOAD_BYTES
    amp = "n/a" if w0 is None or w1 is None else f"{(w1 - w0) / payload:.2f}x"
    return seconds, lat, amp


def drop_from_page_cache(path: Path) -> None:
    """Make the next open read from the device, like the first open after a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fill(queue: DurableQueue, backlog: int) -> None:
    while queue.stats().batches < backlog:
        queue.append(make_payload)


def bench_backlogs(root: Path, backlogs: list[int], table: Table) -> None:
    path = root / "grow" / "queue.db"
    queue = DurableQueue(path, max_bytes=UNBOUNDED)
    try:
        for backlog in backlogs:
            fill(queue, backlog)
            seconds, lat, amp = timed(TIMED_APPENDS, lambda: queue.append(make_payload))
            table.add(f"append, backlog {backlog:,}", TIMED_APPENDS, seconds, lat, amp)

        batches = queue.stats().batches
        size_mb = path.stat().st_size / 1e6
        for cache in ("warm", "cold"):
            queue.close()
            if cache == "cold":
                drop_from_page_cache(path)
            else:
                bench_salvage(path, root / "salvage" / "queue.db", table)
            start = time.perf_counter()
            queue = DurableQueue(path, max_bytes=UNBOUNDED)
            reopen_ms = (time.perf_counter() - start) * 1e3
            scenario = f"reopen at backlog {batches:,} ({size_mb:,.0f} MB), {cache} cache"
            table.add_text(scenario, f"{reopen_ms:,.0f} ms")

        read_lat: list[float] = []
        cursor = 0
        while cursor < TIMED_APPENDS:  # what the uplink does before it publishes
            t = time.perf_counter()
            window = queue.read(after_seq=cursor, limit=ACK_GROUP)
            read_lat.append(time.perf_counter() - t)
            cursor = window[-1].seq
        read = len(read_lat) * ACK_GROUP
        table.add(f"read, windows of {ACK_GROUP} (read only)", read, sum(read_lat), read_lat, "")

        ack_lat: list[float] = []
        acked = 0
        start = time.perf_counter()
        while acked < TIMED_APPENDS:
            seqs = [e.seq for e in queue.read(limit=ACK_GROUP)]  # what the uplink publishes
            t = time.perf_counter()
            acked += queue.ack(seqs)
            ack_lat.append(time.perf_counter() - t)
        seconds = time.perf_counter() - start
        table.add(f"ack, groups of {ACK_GROUP} (ack only)", acked, sum(ack_lat), ack_lat, "")
        table.add(f"read {ACK_GROUP} + ack {ACK_GROUP} (uplink loop)", acked, seconds, [], "")
    finally:
        queue.close()


def bench_salvage(sound: Path, damaged: Path, table: Table, keep: float = 0.7) -> None:
    """Open a copy of ``sound`` cut at 70 %, as a power cut on a bad card may leave it."""
    damaged.parent.mkdir(parents=True)
    with sound.open("rb") as src, damaged.open("wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.truncate(int(sound.stat().st_size * keep))
    shutil.copyfile(f"{sound}.seq", f"{damaged}.seq")  # a buffer's side file: it is ours
    logging.disable(logging.ERROR)  # the one ERROR line is expected
    try:
        start = time.perf_counter()
        queue = DurableQueue(damaged, max_bytes=UNBOUNDED)
        salvage_ms = (time.perf_counter() - start) * 1e3
    finally:
        logging.disable(logging.NOTSET)
    stats = queue.stats()
    queue.close()
    shutil.rmtree(damaged.parent)
    size_mb = sound.stat().st_size / 1e6
    table.add_text(
        f"open {size_mb:,.0f} MB cut at {keep:.0%}: salvage {stats.salvaged_batches:,},"
        f" {stats.unreadable_batches} unreadable",
        f"{salvage_ms:,.0f} ms",
    )


def bench_at_cap(root: Path, table: Table) -> None:
    """Every append evicts: the files are at max_bytes (about 2,000 batches' worth)."""
    max_bytes = 2000 * PAYLOAD_BYTES
    path = root / "cap" / "queue.db"
    queue = DurableQueue(path, max_bytes=max_bytes)
    try:
        while queue.stats().evicted_batches == 0:
            queue.append(make_payload)
        peak = 0

        def append_and_measure() -> None:
            nonlocal peak
            queue.append(make_payload)
            peak = max(peak, queue.stats().disk_bytes)

        seconds, lat, amp = timed(TIMED_APPENDS, append_and_measure)
        stats = queue.stats()
        table.add(
            f"append at byte cap, {stats.evicted_batches:,} evicted",
            TIMED_APPENDS,
            seconds,
            lat,
            amp,
        )
        table.add_text(
            f"  files at the cap: {stats.batches:,} batches, peak {peak / max_bytes:.1%} of max_bytes",
            f"{peak:,} B",
        )
    finally:
        queue.close()


def bench_small_cap(root: Path, table: Table) -> None:
    """The field case of issue 8: max_bytes = 1 MB, appends without acks."""
    max_bytes = 1_000_000
    path = root / "small" / "queue.db"
    queue = DurableQueue(path, max_bytes=max_bytes)
    try:
        peak = 0
        for _ in range(TIMED_APPENDS):
            queue.append(make_payload)
            peak = max(peak, queue.stats().disk_bytes)
        table.add_text(
            f"files at max_bytes 1 MB after {TIMED_APPENDS:,} appends: peak on disk",
            f"{peak:,} B",
        )
    finally:
        queue.close()


def append_one(queue: DurableQueue) -> None:
    queue.append(make_payload)


def append_group(queue: DurableQueue) -> None:
    queue.append_many([make_payload] * GROUP)


def append_group_then_sync(queue: DurableQueue) -> None:
    for _ in range(GROUP):
        queue.append(make_payload)
    queue.sync()


def bench_commit_modes(root: Path, table: Table, per_reading: list[tuple[str, str]]) -> None:
    """The same 2,000 batches committed under each durability setting, fresh queue each.

    Throughput is in batches; latency is per call (a group of 10 is one call).
    """
    modes: list[tuple[str, Synchronous, Callable[[DurableQueue], None], int]] = [
        ("append, synchronous=full", "full", append_one, 1),
        (f"append_many, groups of {GROUP}, full", "full", append_group, GROUP),
        ("append, synchronous=normal", "normal", append_one, 1),
        (f"append x{GROUP} + sync(), normal", "normal", append_group_then_sync, GROUP),
    ]
    for n, (label, synchronous, op, per_call) in enumerate(modes):
        queue = DurableQueue(
            root / f"mode-{n}" / "queue.db", max_bytes=UNBOUNDED, synchronous=synchronous
        )
        try:
            calls = TIMED_APPENDS // per_call
            seconds, lat, amp = timed(calls, functools.partial(op, queue), per_call)
            table.add(label, TIMED_APPENDS, seconds, lat, amp)
        finally:
            queue.close()
        if amp != "n/a":
            per_batch = float(amp.rstrip("x")) * PAYLOAD_BYTES
            per_reading.append(
                (label, f"{amp}  = {per_batch / READINGS_PER_BATCH:,.0f} B per reading")
            )


def bench_outages(root: Path, table: Table, per_reading: list[tuple[str, str]]) -> None:
    """An outage's whole cycle through ``append_reserved`` (the gateway's default): groups
    of GROUP batches stored as the outage goes on, then the backlog read and acked in
    windows of ACK_GROUP, then ``close`` (SQLite checkpoints there). A short outage fits
    the outage journal; a long one (more than its 16 MiB) is folded into SQLite."""
    for label, batches in (("short", TIMED_APPENDS // 2), ("long", 4 * TIMED_APPENDS)):
        queue = DurableQueue(root / f"outage-{label}" / "queue.db", max_bytes=UNBOUNDED)
        w0 = written_bytes()
        start = time.perf_counter()
        try:
            for _ in range(batches // GROUP):
                queue.append_reserved(queue.reserve([make_payload] * GROUP))
            stored = time.perf_counter()
            while window := queue.read(limit=ACK_GROUP):
                queue.ack([e.seq for e in window])
        finally:
            queue.close()
        w1 = written_bytes()
        amp = "n/a" if w0 is None or w1 is None else f"{(w1 - w0) / (batches * PAYLOAD_BYTES):.2f}x"
        mb = batches * PAYLOAD_BYTES / 2**20
        table.add(
            f"outage, {label} ({mb:,.0f} MiB): reserved groups of {GROUP}, drained, closed",
            batches,
            time.perf_counter() - start,
            [],
            amp,
        )
        table.add_text(f"  of which storing the {batches:,} batches", f"{stored - start:.2f} s")
        if amp != "n/a":
            per_batch = float(amp.rstrip("x")) * PAYLOAD_BYTES
            per_reading.append(
                (
                    f"outage, {label}, whole cycle",
                    f"{amp}  = {per_batch / READINGS_PER_BATCH:,.0f} B per reading",
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="also measure at a 100k backlog")
    parser.add_argument(
        "--dir", type=Path, help="where to put the queue files (default: a temp dir)"
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="buffer-bench-", dir=args.dir))
    backlogs = [0, 10_000, *([100_000] if args.large else [])]
    print(
        f"buffer bench: {PAYLOAD_BYTES:,}-byte payloads, one durable commit per append unless"
        " the row says otherwise,"
        f" SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs,"
        f" files in {root}"
    )
    table = Table()
    per_reading: list[tuple[str, str]] = []
    started = time.perf_counter()
    try:
        bench_commit_modes(root, table, per_reading)
        bench_outages(root, table, per_reading)
        bench_backlogs(root, backlogs, table)
        bench_at_cap(root, table)
        bench_small_cap(root, table)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table.print()
    print(
        f"\ndisk bytes written per payload byte, and per reading"
        f" ({READINGS_PER_BATCH} readings = {PAYLOAD_BYTES:,} bytes per batch):"
    )
    for label, figure in per_reading:
        print(f"  {label:<40} {figure}")
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
