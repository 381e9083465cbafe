"""RTU slaves and a line instrument on pseudo-terminals, through the gateway process, to the broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rig import Subscriber, gateway_config, rtu_device

from drivers.core.model import Quality
from drivers.modbus.decode import DataType, Table
from drivers.serial_port import LineSettings
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from drivers.sim.rfc2217_line import Rfc2217Line
from drivers.sim.serial_line import LineInstrument, gas_detector_line
from drivers.sim.serial_link import NullModem
from gateway.devtools.broker import Mosquitto

RTU_POINTS = '{ name = "polls", address = 0, type = "uint32" }, { name = "level", address = 2, type = "float32", byte_order = "CDAB" }'


GAS = """
[[devices]]
name = "gas"
protocol = "serial_line"
port = "{path}"
framing = {{ kind = "delimiter" }}
parser = {{ kind = "regex", pattern = 'CH4=(?P<ch4>[-\\d.]+);H2S=(?P<h2s>\\d+);T=[-\\d.]+;N=(?P<n>\\d+)' }}
points = [{{ name = "ch4" }}, {{ name = "n", type = "int" }}]
"""


async def test_rtu_slaves_and_a_line_instrument_on_ptys_reach_the_centre(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    slaves = []
    for unit in (1, 2, 3):
        d = SimulatedDevice(unit=unit)
        d.add_read_counter(Table.HOLDING, 0)
        d.set_value(Table.HOLDING, 2, 1.5 * unit, DataType.FLOAT32, order="CDAB")  # type: ignore[arg-type]
        slaves.append(d)
    slaves[2].silent = True  # a dead slave on the bus
    async with (
        NullModem() as line,
        ModbusSimServer(slaves, serial_port=line.b.path),
        LineInstrument(gas_detector_line, period=0.05) as gas,
    ):
        gp = gateway_process(
            gateway_config(
                broker_port=broker.port,
                buffer_path=tmp_path / "buffer.db",
                devices="".join(
                    rtu_device(f"rtu{u}", line.a.path, u, RTU_POINTS) for u in (1, 2, 3)
                )
                + GAS.format(path=gas.path),
            )
        )
        gp.start()
        await subscriber.wait_async(
            lambda: (
                all(len(subscriber.readings(f"rtu{u}", "polls")) >= 10 for u in (1, 2))
                and len(subscriber.readings("gas", "n")) >= 10
            ),
            30,
            "readings from both RTU slaves and the gas detector",
        )
        assert await asyncio.to_thread(gp.stop) == 0, gp.log
    for unit in (1, 2):
        polls = [int(r.value) for r in subscriber.readings(f"rtu{unit}", "polls") if r.quality == 0]
        assert polls == list(range(1, len(polls) + 1))
        assert {r.value for r in subscriber.readings(f"rtu{unit}", "level")} == {1.5 * unit}
    # The dead slave's points are reported unknown, once, with the reason.
    dead = subscriber.readings("rtu3")
    assert {(r.point, r.value, r.quality) for r in dead} == {
        ("polls", None, Quality.DEVICE_OFFLINE),
        ("level", None, Quality.DEVICE_OFFLINE),
    }
    assert len(dead) == 2
    n = [int(r.value) for r in subscriber.readings("gas", "n")]
    assert n == list(range(n[0], n[0] + len(n)))
    assert "'rtu3'" in gp.log and "is offline" in gp.log


async def test_rtu_slaves_behind_a_serial_device_server_reach_the_centre_across_a_dropped_session(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    slaves = []
    for unit in (1, 2):
        d = SimulatedDevice(unit=unit)
        d.add_read_counter(Table.HOLDING, 0)
        d.set_value(Table.HOLDING, 2, 1.5 * unit, DataType.FLOAT32, order="CDAB")  # type: ignore[arg-type]
        slaves.append(d)
    async with (
        Rfc2217Line(LineSettings(19200)) as server,
        ModbusSimServer(slaves, serial_port=server.bus_path),
    ):
        gp = gateway_process(
            gateway_config(
                broker_port=broker.port,
                buffer_path=tmp_path / "buffer.db",
                devices="".join(
                    # the default retry: a request lost in the drop is sent again at once
                    rtu_device(f"rtu{u}", server.url, u, RTU_POINTS).replace(
                        "retries = 0", "retries = 1"
                    )
                    for u in (1, 2)
                ),
            )
        )
        gp.start()

        def polls(unit: int) -> list[int]:
            return [
                int(r.value) for r in subscriber.readings(f"rtu{unit}", "polls") if r.quality == 0
            ]

        await subscriber.wait_async(
            lambda: all(len(polls(u)) >= 10 for u in (1, 2)), 30, "readings through the server"
        )
        before = {u: len(polls(u)) for u in (1, 2)}
        assert server.drop_client()
        await subscriber.wait_async(
            lambda: all(len(polls(u)) >= before[u] + 10 for u in (1, 2)),
            30,
            "readings after the server dropped the session",
        )
        assert await asyncio.to_thread(gp.stop) == 0, gp.log
        assert server.connections == 2
    for unit in (1, 2):
        got = polls(unit)
        assert got == sorted(set(got))  # in order, none twice; a request lost in the drop skips one
        assert got[: before[unit]] == list(range(1, before[unit] + 1))
        # Never offline: the drop cost a retry at most, not a reading.
        assert {r.value for r in subscriber.readings(f"rtu{unit}", "level")} == {1.5 * unit}
    assert "offline" not in gp.log, gp.log
    assert "Traceback" not in gp.log, gp.log
