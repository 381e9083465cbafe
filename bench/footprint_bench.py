"""SD-card writes, wire bytes and latency per reading on the rig of issue 14, at the defaults.

The rig of startup_bench.py: 10 Modbus TCP devices x 50 float32 points (noisy sines)
polled every second, served by `edge-gateway simulate` in its own process; a private
mosquitto; the gateway as `edge-gateway run -c FILE` with a fresh buffer and its
default settings (or the `--buffer` lines given); the rig's subscriber as the centre.
Two windows, after the gateway has settled:

- **link up** (`--seconds`): disk bytes the gateway wrote (/proc/PID/io `write_bytes`:
  the buffer's database, WAL and side files, the state files, everything) per reading
  delivered; wire bytes (data payloads) per reading; readings per batch; the latency
  from a reading's taking to its arrival at the centre (p50, p99, max); CPU;
- **link down** (`--outage`, 0 to skip): the broker is stopped, the readings pile up;
  disk bytes per reading offered while it is down; then the broker comes back and the
  bench waits for the readings taken during the outage to arrive (how many did);
- **the outage's whole cost**: disk bytes per reading offered, counting the rows
  written during the outage, what the gateway wrote from the broker's return until the
  backlog arrived (the acks that delete those rows, and the batches that fell due
  before the gateway had reconnected), and the checkpoint that copies the WAL into the
  database (SQLite runs it when the WAL is full or at close; the bench runs it beside
  the gateway, a `PASSIVE` checkpoint in a process of its own that counts its own
  `/proc/self/io`). What start-up left in the WAL is checkpointed before the outage
  and not counted (printed as "start-up's WAL").

    .venv/bin/python bench/footprint_bench.py                       # the defaults
    .venv/bin/python bench/footprint_bench.py --buffer 'write = "all"'  # before issue 14

Prints a table (or `--json`); asserts nothing. Record the figures in
docs/performance.md with the command line and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.e2e_bench import cpu_seconds, write_bytes  # noqa: E402
from bench.pi_bench import quantile  # noqa: E402
from bench.startup_bench import (  # noqa: E402
    add_rig_arguments,
    data_batches,
    latencies,
    machine,
    rig,
    started_gateway,
)
from gateway.devtools.rig import RigTimeout, wait_until  # noqa: E402

SETTLE = 5.0  # seconds after the first batch before measuring
BACKLOG_WAIT = 120.0  # seconds at most for the outage's readings to arrive
ACK_SETTLE = 3.0  # seconds for the last acks after the backlog arrived


@dataclass
class Figures:
    readings: int
    disk_bytes_per_reading: float
    wire_bytes_per_reading: float
    readings_per_batch: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    cpu_percent: float
    outage_s: float
    outage_offered: int
    outage_disk_bytes_per_reading: float | None
    outage_delivered: int | None
    outage_acks_disk_bytes_per_reading: float | None
    outage_checkpoint_disk_bytes_per_reading: float | None
    startup_checkpoint_bytes: int | None
    outage_cycle_disk_bytes_per_reading: float | None


_CHECKPOINT = """
import sqlite3, sys, time
for db in sys.argv[1:]:
    conn = sqlite3.connect(db, timeout=10)
    for _ in range(50):  # a reader's snapshot can hold part of it back: until it is all done
        busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if log == done:
            break
        time.sleep(0.1)
    else:
        sys.exit(f"{db}: the checkpoint copied {done} of {log} frames")
    conn.close()
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
print(io["write_bytes"])
"""


def checkpoint_bytes(workdir: Path) -> int:
    """Bytes written by checkpointing the buffers' WALs into their databases, as SQLite
    does at close or when a WAL is full: run beside the gateway's connection, in a
    process of its own that counts its own `/proc/self/io`."""
    dbs = [str(db) for db in sorted(workdir.glob("**/*.db")) if Path(f"{db}-wal").exists()]
    done = subprocess.run(
        [sys.executable, "-c", _CHECKPOINT, *dbs], check=True, capture_output=True, text=True
    )
    return int(done.stdout)


def _ms(values: list[float], q: float) -> float | None:
    seconds = quantile(values, q)
    return None if seconds is None else 1000 * seconds


def measure(args: argparse.Namespace, workdir: Path) -> Figures:
    rate = args.devices * args.points  # readings per second, polled every second
    with (
        rig(workdir, args.devices, args.points) as (broker, simulator),
        started_gateway(
            "footprint", workdir, broker, simulator, args, interval="1s", command=[args.command]
        ) as run,
    ):
        time.sleep(SETTLE)
        pid = run.pid
        t0, w0, c0 = time.time(), write_bytes(pid), cpu_seconds(pid)
        time.sleep(args.seconds)
        t1, w1, c1 = time.time(), write_bytes(pid), cpu_seconds(pid)
        time.sleep(2.0)  # the window's last readings on their way
        delays = sorted(latencies(run.collector, t0, t1, time.time()))
        batches = data_batches(run.collector, t0, t1 + 2.0)
        outage_rate = outage_delivered = acks_rate = checkpoint_rate = cycle_rate = None
        offered = 0
        before_checkpoint = None
        if args.outage:
            # What start-up left in the WAL (the new file's schema, the lease) is not the
            # outage's: checkpointed first, and not counted.
            before_checkpoint = checkpoint_bytes(workdir)
            broker.stop()
            o0, ow0 = time.time(), write_bytes(pid)
            time.sleep(args.outage)
            o1, ow1 = time.time(), write_bytes(pid)
            offered = round(rate * (o1 - o0))
            outage_rate = (ow1 - ow0) / max(1, offered)
            broker.start()
            # Readings taken while the broker was down, arriving after it came back.
            with contextlib.suppress(RigTimeout):
                wait_until(
                    lambda: len(latencies(run.collector, o0, o1, time.time())) >= 0.98 * offered,
                    BACKLOG_WAIT,
                    "the outage's readings",
                )
            outage_delivered = len(latencies(run.collector, o0, o1, time.time()))
            time.sleep(ACK_SETTLE)  # the last acks deleted
            acks_rate = (write_bytes(pid) - ow1) / max(1, offered)
            checkpoint_rate = checkpoint_bytes(workdir) / max(1, offered)
            cycle_rate = outage_rate + acks_rate + checkpoint_rate
    readings = len(delays)
    wire = sum(b for b, _ in batches) / max(1, sum(n for _, n in batches))
    return Figures(
        readings=readings,
        disk_bytes_per_reading=(w1 - w0) / max(1, readings),
        wire_bytes_per_reading=wire,
        readings_per_batch=statistics.fmean(n for _, n in batches) if batches else 0.0,
        latency_p50_ms=_ms(delays, 0.50),
        latency_p99_ms=_ms(delays, 0.99),
        latency_max_ms=_ms(delays, 1.0),
        cpu_percent=100 * (c1 - c0) / (t1 - t0),
        outage_s=args.outage,
        outage_offered=offered,
        outage_disk_bytes_per_reading=outage_rate,
        outage_delivered=outage_delivered,
        outage_acks_disk_bytes_per_reading=acks_rate,
        outage_checkpoint_disk_bytes_per_reading=checkpoint_rate,
        startup_checkpoint_bytes=before_checkpoint,
        outage_cycle_disk_bytes_per_reading=cycle_rate,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_rig_arguments(parser)
    parser.add_argument("--seconds", type=float, default=60.0, help="the link-up window")
    parser.add_argument(
        "--outage", type=float, default=20.0, help="seconds with the broker stopped (0: none)"
    )
    parser.add_argument(
        "--buffer",
        dest="buffer_settings",
        default="",
        help="[buffer] lines for the gateway, e.g. 'write = \"all\"' (default: none)",
    )
    parser.set_defaults(commands="off")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="footprint-bench-") as tmp:
        figures = measure(args, Path(tmp))
    result = {"machine": machine(), "args": vars(args), "figures": asdict(figures)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    f = figures
    print(
        f"rig: {args.devices} devices x {args.points} float32 every 1 s; {args.buffer_settings!r}"
    )
    print(
        f"link up, {args.seconds:.0f} s: {f.readings} readings; disk {f.disk_bytes_per_reading:.2f}"
        f" B/reading; wire {f.wire_bytes_per_reading:.2f} B/reading; "
        f"{f.readings_per_batch:.0f} readings/batch; latency p50 {f.latency_p50_ms:.0f} ms, "
        f"p99 {f.latency_p99_ms:.0f} ms, max {f.latency_max_ms:.0f} ms; CPU {f.cpu_percent:.1f} %"
    )
    if f.outage_disk_bytes_per_reading is not None:
        print(
            f"link down, {f.outage_s:.0f} s: disk {f.outage_disk_bytes_per_reading:.2f} B per "
            f"reading offered; {f.outage_delivered} of {f.outage_offered} delivered after"
        )
    if f.outage_cycle_disk_bytes_per_reading is not None:
        print(
            f"the outage's whole cost: disk {f.outage_cycle_disk_bytes_per_reading:.2f} B per "
            f"reading offered (its rows {f.outage_disk_bytes_per_reading:.2f}, after the "
            f"broker's return {f.outage_acks_disk_bytes_per_reading:.2f}, the checkpoint "
            f"{f.outage_checkpoint_disk_bytes_per_reading:.2f}; start-up's WAL, not counted: "
            f"{f.startup_checkpoint_bytes} bytes)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
