"""The gateway process against hostile devices beside a healthy one (issue 8's acceptance):
a serial instrument sending unusable values and then flooding its port, a Modbus TCP
device for each kind of malformed answer. The gateway stays up, the healthy device
keeps its schedule, the log holds no traceback, and every fault is counted on the
health topic."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from pathlib import Path

from rig import Subscriber, gateway_config, modbus_device

from drivers.core.model import Quality
from drivers.modbus.decode import Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from drivers.sim.modbus_faults import FAULTS, FaultyModbusTcpServer
from drivers.sim.serial_link import TalkingPort
from gateway.devtools.broker import Mosquitto

PERIOD = 0.5  # the healthy device's poll interval, seconds
MALFORMED = [f for f in FAULTS if f not in ("exception", "silent")]

SERIAL = """
[[devices]]
name = "counter"
protocol = "serial_line"
port = "{path}"
baudrate = 9600
stale_after = "3s"
framing = {{ kind = "delimiter", delimiter = "\\n", max_length = 8000 }}
parser = {{ kind = "regex", pattern = 'N=(?P<n>\\d*);V=(?P<v>[^;]*);S=(?P<s>.*)' }}
points = [
  {{ name = "n", type = "int" }},
  {{ name = "v", type = "float" }},
  {{ name = "s", type = "string" }},
]
"""
HOSTILE = [
    b"N=123456789012345678901234567890;V=1.5;S=ok\n",
    b"N=" + b"9" * 5000 + b";V=1e999;S=ok\n",
    b"N=7;V=inf;S=ok\n",
    b"N=8;V=nan;S=" + b"x" * 3000 + b"\n",
    b"N=;V=;S=\n",
]


class HostileInstrument:
    """Good lines, now and then the hostile values of issue 8 §1, and a flood on demand."""

    def __init__(self) -> None:
        self.flooding = threading.Event()

    def __call__(self, turn: int) -> bytes:
        if self.flooding.is_set():
            return b"N=1;V=2.5;S=flood\n" * 500
        time.sleep(0.05)
        line = f"N={turn};V={turn / 2};S=fine\n".encode()
        return line + (HOSTILE[(turn // 5) % len(HOSTILE)] if turn % 5 == 0 else b"")


async def test_hostile_devices_never_stop_the_gateway_nor_delay_a_healthy_neighbour(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    healthy = SimulatedDevice(unit=1)
    healthy.add_read_counter(Table.HOLDING, 0)
    bad = {fault: FaultyModbusTcpServer(fault=fault) for fault in MALFORMED}  # type: ignore[arg-type]
    for server in bad.values():
        await server.start()
    try:
        hostile = HostileInstrument()
        with TalkingPort(hostile) as instrument:
            async with ModbusSimServer([healthy]) as sim:
                devices = modbus_device(
                    "healthy",
                    sim.port,
                    1,
                    '{ name = "n", address = 0, type = "uint32" }',
                    interval=f"{PERIOD}s",
                    timeout="300ms",
                )
                for fault, server in bad.items():
                    devices += modbus_device(
                        f"bad-{fault}",
                        server.port,
                        1,
                        '{ name = "a", address = 0 }, { name = "b", address = 1 }',
                        interval="200ms",
                        timeout="200ms",
                        backoff_max="1s",
                    )
                devices += SERIAL.format(path=instrument.path)
                gp = gateway_process(
                    gateway_config(
                        broker_port=broker.port,
                        buffer_path=tmp_path / "buffer.db",
                        devices=devices,
                    )
                )
                gp.start()
                await subscriber.wait_async(
                    lambda: len(subscriber.readings("healthy", "n")) >= 4, 20, "healthy data"
                )
                await asyncio.sleep(4.0)  # hostile values
                hostile.flooding.set()
                await asyncio.sleep(5.0)  # the flood
                hostile.flooding.clear()
                await asyncio.sleep(2.0)
                health = json.loads(subscriber.on("/health")[-1])
                assert gp.proc is not None and gp.proc.poll() is None, "the gateway stopped"
                assert gp.stop() == 0
    finally:
        for server in bad.values():
            await server.stop()

    # The healthy device kept its schedule through all of it.
    stamps = [r.ts_ms for r in subscriber.readings("healthy", "n") if r.quality == Quality.GOOD]
    gaps = sorted((b - a) / 1000 for a, b in itertools.pairwise(stamps))
    assert len(gaps) >= 15
    p95 = gaps[int(0.95 * (len(gaps) - 1))]
    assert p95 <= 1.2 * PERIOD, f"healthy poll interval p95 {p95:.3f}s for a {PERIOD}s period"

    # No traceback, whatever the devices did.
    assert "Traceback" not in gp.log and "Fatal error" not in gp.log

    # Every fault is counted on the health topic.
    devices = {d["name"]: d for d in health["devices"]}
    assert devices["healthy"]["state"] == "online"
    for fault in MALFORMED:
        device = devices[f"bad-{fault}"]
        assert device["state"] == "offline", fault
        assert device["malformed"] >= 1, fault
        assert device["crc_errors"] == 0, fault  # Modbus TCP has no CRC
    counter = devices["counter"]
    assert counter["invalid_values"] >= 3
    assert counter["shed_bytes"] > 10_000
    assert health["processing"]["invalid_values"] >= 2  # inf, nan, the long string
    invalid = [r for r in subscriber.readings("counter") if r.quality == Quality.INVALID_VALUE]
    assert invalid and all(r.value is None for r in invalid)
