"""Drain benchmark: a large backlog on disk drains while live polling continues.

    .venv/bin/python bench/drain_bench.py                 # 1,000,000 readings of backlog
    .venv/bin/python bench/drain_bench.py --readings 5000000

The buffer is pre-filled with batches of 500 readings (wire v2, as an outage
would leave them); then the gateway starts (a child process, as `edge-gateway
run`) with a private mosquitto and a simulated device polled every 100 ms. A
subscriber counts the backlog arriving on `data/history` and measures, for every
live batch arriving on `data` during the drain, the latency from its newest
reading to its arrival. Prints the drain rate and live latency percentiles.
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

from buffer import DurableQueue
from drivers.core.model import Reading
from drivers.modbus.decode import DataType, Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from gateway.devtools.broker import Mosquitto
from gateway.wire import decode_batch, encode_batch

REPO = Path(__file__).resolve().parents[1]
BATCH = 500


class Centre:
    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.history_readings = 0
        self.history_first: float | None = None
        self.history_last = 0.0
        self.live_latencies: list[float] = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="drain-centre")
        self.client.on_connect = lambda c, *a: c.subscribe("city/+/data/#", qos=1)
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        now = time.time()
        batch = decode_batch(msg.payload)
        with self.lock:
            if msg.topic.endswith("/history"):
                self.history_readings += len(batch.readings)
                self.history_first = self.history_first or now
                self.history_last = now
            else:
                newest = max(r.ts_ms for r in batch.readings) / 1000
                self.live_latencies.append(now - newest)


def prefill(path: Path, readings: int) -> None:
    batch = [
        Reading(f"dev{i % 20}", f"p{i % 25}", 1_790_000_000_000 + i * 40, math.sin(i) * 50)
        for i in range(BATCH)
    ]
    with DurableQueue(path, max_bytes=8_000_000_000) as queue:
        for _ in range(readings // BATCH):
            queue.append(lambda seq: encode_batch("bench", "outage-boot", seq, batch))


def config(workdir: Path, broker: int, modbus: int) -> str:
    return f"""
[gateway]
id = "bench"
log_level = "warning"
[mqtt]
port = {broker}
[buffer]
path = "{workdir}/buffer.db"
max_bytes = "8GB"
[batch]
max_readings = 500
max_age = "200ms"
[[devices]]
name = "live"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {modbus}
poll_interval = "100ms"
points = [{{ name = "level", address = 0, type = "float32" }}]
"""


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="drain-bench-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        prefill(workdir / "buffer.db", args.readings)
        fill_s = time.perf_counter() - started
        size_mb = (workdir / "buffer.db").stat().st_size / 1e6
        broker = Mosquitto(workdir / "broker")
        broker.start()
        device = SimulatedDevice(unit=1)
        device.set_value(Table.HOLDING, 0, 1.5, DataType.FLOAT32)
        try:
            async with ModbusSimServer([device]) as sim:
                cfg = workdir / "drain.toml"
                cfg.write_text(config(workdir, broker.port, sim.port))
                centre = Centre(broker.port)
                proc = subprocess.Popen(  # noqa: ASYNC220 - the gateway runs beside us
                    [sys.executable, "-m", "gateway", "run", "-c", str(cfg)], cwd=REPO
                )
                deadline = time.monotonic() + args.timeout
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                    with centre.lock:
                        if centre.history_readings >= args.readings:
                            break
                await asyncio.sleep(1.0)  # a little live traffic after the drain
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
                centre.client.loop_stop()
        finally:
            broker.stop()
    with centre.lock:
        drained = centre.history_readings
        span = (centre.history_last - (centre.history_first or 0)) or 1e-9
        lat = sorted(centre.live_latencies)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"backlog: {args.readings:,} readings in {args.readings // BATCH:,} batches "
        f"({size_mb:.0f} MB on disk, written in {fill_s:.1f}s)"
    )
    print(
        f"drained: {drained:,} readings in {span:.2f}s = {drained / span:,.0f} readings/s "
        f"({drained / BATCH / span:,.0f} batches/s)"
    )
    if lat:

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000

        print(
            f"live batches during and after the drain: {len(lat)}; latency newest reading -> "
            f"centre: p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms, max {lat[-1] * 1000:.0f} ms "
            f"(batch max_age 200 ms included)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--timeout", type=float, default=300.0)
    asyncio.run(main(parser.parse_args()))
