"""End-to-end throughput of the core path on this machine.

Simulated Modbus TCP devices (in this process) -> the gateway (a child process,
exactly as `edge-gateway run`) -> a private mosquitto -> a subscriber here that
decodes every batch. Prints readings/s delivered, the gateway's CPU % and RSS,
bytes per reading on the wire and disk bytes written per reading.

    .venv/bin/python bench/e2e_bench.py                  # 10 devices x 100 points at 10 Hz
    .venv/bin/python bench/e2e_bench.py --devices 20 --seconds 60

No assertions: record the figures in docs/performance.md with the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

from drivers.modbus.decode import DataType, Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from gateway.devtools.broker import Mosquitto
from gateway.wire import decode_batch

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU of the process, all its threads, and of its children once
    they ended (the child that validates the gateway's config: gateway/loaded.py)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


class Counter:
    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.readings = 0
        self.batches = 0
        self.bytes = 0
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-centre")
        self.client.on_connect = lambda c, *a: c.subscribe("city/+/data", qos=1)
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        n = len(decode_batch(msg.payload).readings)
        with self.lock:
            self.readings += n
            self.batches += 1
            self.bytes += len(msg.payload)

    def snapshot(self) -> tuple[int, int, int]:
        with self.lock:
            return self.readings, self.batches, self.bytes


def make_devices(n_devices: int, n_points: int) -> list[SimulatedDevice]:
    devices = []
    for unit in range(1, n_devices + 1):
        device = SimulatedDevice(unit=unit)
        for i in range(n_points):
            device.set_value(Table.HOLDING, 2 * i, math.sin(i) * 100, DataType.FLOAT32)
        devices.append(device)
    return devices


def config(workdir: Path, broker: int, modbus: int, args: argparse.Namespace) -> str:
    points = ",\n".join(
        f'  {{ name = "p{i}", address = {2 * i}, type = "float32" }}' for i in range(args.points)
    )
    devices = "".join(
        f"""
[[devices]]
name = "dev{unit}"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {modbus}
unit = {unit}
poll_interval = "{args.interval}"
timeout = "{round(_seconds(args.interval) * 900)}ms"
points = [
{points}
]
"""
        for unit in range(1, args.devices + 1)
    )
    return f"""
[gateway]
id = "bench"
log_level = "warning"
[mqtt]
port = {broker}
[buffer]
path = "{workdir}/buffer.db"
max_bytes = "1GB"
write = "{args.write}"
commit_interval = "{args.commit_interval}"
sync = "{args.sync}"
[batch]
max_readings = {args.batch}
max_age = "1s"
{devices}
"""


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="e2e-bench-") as tmp:
        workdir = Path(tmp)
        broker = Mosquitto(workdir / "broker")
        broker.start()
        try:
            async with ModbusSimServer(make_devices(args.devices, args.points)) as sim:
                cfg = workdir / "bench.toml"
                cfg.write_text(config(workdir, broker.port, sim.port, args))
                counter = Counter(broker.port)
                proc = subprocess.Popen(  # noqa: ASYNC220 - the gateway runs beside us
                    [sys.executable, "-m", "gateway", "run", "-c", str(cfg)], cwd=REPO
                )
                await asyncio.sleep(args.warmup)
                r0, b0, y0 = counter.snapshot()
                c0, w0, t0 = cpu_seconds(proc.pid), write_bytes(proc.pid), time.monotonic()
                await asyncio.sleep(args.seconds)
                r1, b1, y1 = counter.snapshot()
                c1, w1, t1 = cpu_seconds(proc.pid), write_bytes(proc.pid), time.monotonic()
                rss, hwm = status_kb(proc.pid, "VmRSS"), status_kb(proc.pid, "VmHWM")
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
                counter.client.loop_stop()
        finally:
            broker.stop()
    elapsed = t1 - t0
    readings = r1 - r0
    offered = args.devices * args.points / _seconds(args.interval)
    python = platform.python_version()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {python}")
    print(
        f"load: {args.devices} devices x {args.points} float32 points every {args.interval} "
        f"= {offered:,.0f} readings/s offered; batches of up to {args.batch}"
    )
    print(
        f"window: {elapsed:.1f}s after {args.warmup:g}s warm-up; buffer write {args.write}, "
        f"commit_interval {args.commit_interval}, sync {args.sync}"
    )
    batch_rate = (b1 - b0) / elapsed
    print(f"delivered:     {readings / elapsed:,.0f} readings/s ({batch_rate:,.1f} batches/s)")
    print(f"gateway CPU:   {100 * (c1 - c0) / elapsed:.1f} % of one core")
    print(f"gateway RSS:   {rss / 1024:.1f} MiB (peak {hwm / 1024:.1f} MiB)")
    print(f"wire:          {(y1 - y0) / max(1, readings):.1f} bytes per reading")
    print(f"disk written:  {(w1 - w0) / max(1, readings):.1f} bytes per reading (/proc/pid/io)")


def _seconds(text: str) -> float:
    from drivers.core.config_types import parse_duration

    return parse_duration(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--interval", default="100ms")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--write", default="unacked", choices=["unacked", "all"], help="[buffer] write"
    )
    parser.add_argument(
        "--commit-interval", default="0s", help="[buffer] commit_interval (with --write all)"
    )
    parser.add_argument("--sync", default="full", choices=["full", "normal"])
    asyncio.run(main(parser.parse_args()))
