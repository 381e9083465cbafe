"""Device profiles through the gateway process: an RS-485 bus on a pty with one slave per
shipped profile, each a simulator built from its profile; every point of every profile
reaches the centre with the value its simulator holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rig import Subscriber, gateway_config

from drivers.core.model import Quality
from drivers.modbus.profile import profile_names
from drivers.sim.modbus import ModbusSimServer
from drivers.sim.modbus_profile import profile_device
from drivers.sim.serial_link import NullModem
from gateway.devtools.broker import Mosquitto

DEVICE = """
[[devices]]
name = "{name}"
protocol = "modbus_rtu"
port = "{port}"
baudrate = 19200
unit = {unit}
poll_interval = "1s"
timeout = "300ms"
retries = 0
backoff_max = "1s"
profile = "{profile}"
"""


async def test_every_point_of_every_shipped_profile_reaches_the_centre_over_rs485(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    profiles = profile_names()
    built = {name: profile_device(name, unit) for unit, name in enumerate(profiles, start=1)}
    async with (
        NullModem() as line,
        ModbusSimServer([simulated for simulated, _ in built.values()], serial_port=line.b.path),
    ):
        devices = "".join(
            DEVICE.format(name=name, port=line.a.path, unit=unit, profile=name)
            for unit, name in enumerate(profiles, start=1)
        )
        gp = gateway_process(
            gateway_config(
                broker_port=broker.port, buffer_path=tmp_path / "buffer.db", devices=devices
            )
        )
        gp.start()

        def arrived() -> bool:
            return all(
                {r.point for r in subscriber.readings(name)} >= set(expected)
                for name, (_, expected) in built.items()
            )

        await subscriber.wait_async(arrived, 30, "every point of every profile")
        assert await asyncio.to_thread(gp.stop) == 0, gp.log
    for name, (_, expected) in built.items():
        readings = subscriber.readings(name)
        assert {r.point for r in readings} == set(expected), name
        for reading in readings:
            assert (reading.value, reading.quality) == (expected[reading.point], Quality.GOOD), (
                name,
                reading,
            )
