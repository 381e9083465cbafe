"""The Modbus TCP driver against real pymodbus servers on loopback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from drivers.core.model import Quality, Reading
from drivers.modbus.decode import ByteOrder, DataType, Table
from drivers.modbus.driver import ModbusEndpoint
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice, free_tcp_port
from gateway.build import build_drivers
from gateway.settings import parse_config
from gateway.tasks import cancel_and_wait

pytestmark = pytest.mark.rig  # real devices, ptys or processes

NUMERIC = {
    DataType.INT16: -1234,
    DataType.UINT16: 65000,
    DataType.INT32: -123456789,
    DataType.UINT32: 4000000000,
    DataType.INT64: -(2**62) + 7,
    DataType.UINT64: 2**64 - 2,
    DataType.FLOAT32: 12.5,
    DataType.FLOAT64: -98765.4321,
}


class Sink:
    def __init__(self) -> None:
        self.readings: list[Reading] = []

    def __call__(self, readings: Sequence[Reading]) -> None:
        self.readings.extend(readings)

    def values(self, device: str) -> dict[str, object]:
        return {r.point: r.value for r in self.readings if r.device == device}


def config(devices: str) -> str:
    return f'[gateway]\nid = "t"\n{devices}'


def device_toml(name: str, port: int, unit: int, points: list[str], **extra: str) -> str:
    settings = "".join(f'{k} = "{v}"\n' for k, v in extra.items())
    body = ",\n".join(points)
    return (
        f'[[devices]]\nname = "{name}"\nprotocol = "modbus_tcp"\nhost = "127.0.0.1"\n'
        f'port = {port}\nunit = {unit}\npoll_interval = "100ms"\ntimeout = "300ms"\n'
        f"retries = 0\n{settings}points = [\n{body}\n]\n"
    )


def endpoints_for(text: str, sink: Sink) -> list[ModbusEndpoint]:
    return build_drivers(parse_config(text.encode()).config, sink)


async def poll_until(endpoints: list[ModbusEndpoint], done, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(e.run()) for e in endpoints]
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    await asyncio.sleep(0.02)
        finally:
            await cancel_and_wait(tasks)


async def test_every_type_in_every_byte_order_is_read_correctly_over_the_wire() -> None:
    device = SimulatedDevice(unit=1)
    points = []
    address = 0
    for dtype, value in NUMERIC.items():
        for order in ByteOrder:
            device.set_value(Table.HOLDING, address, value, dtype, order)
            points.append(
                f'{{ name = "{dtype}_{order}", address = {address}, type = "{dtype}", '
                f'byte_order = "{order}" }}'
            )
            address += 4
    device.set_value(Table.INPUT, 0, "PUMP-7", DataType.STRING, length=4)
    device.set_value(Table.INPUT, 4, "AB", DataType.STRING, ByteOrder.BADC, length=1)
    device.set_value(Table.INPUT, 5, 0b1000_0000_0000_0100)
    device.set_value(Table.COIL, 3, True)
    device.set_value(Table.DISCRETE_INPUT, 9, True)
    device.set_value(Table.HOLDING, 200, 1234, DataType.INT16)
    device.fill(Table.HOLDING, 0, address)
    points += [
        '{ name = "tag", table = "input", address = 0, type = "string", length = 4 }',
        '{ name = "swapped", table = "input", address = 4, type = "string", length = 1,'
        ' byte_order = "BADC" }',
        '{ name = "bit2", table = "input", address = 5, type = "bit", bit = 2 }',
        '{ name = "bit15", table = "input", address = 5, type = "bit", bit = 15 }',
        '{ name = "bit3", table = "input", address = 5, type = "bit", bit = 3 }',
        '{ name = "coil", table = "coil", address = 3, type = "bool" }',
        '{ name = "di", table = "discrete_input", address = 9, type = "bool" }',
        '{ name = "scaled", address = 200, type = "int16", scale = 0.1, offset = -100.0 }',
    ]
    device.fill(Table.COIL, 0, 16)
    device.fill(Table.DISCRETE_INPUT, 0, 16)
    sink = Sink()
    async with ModbusSimServer([device]) as sim:
        eps = endpoints_for(config(device_toml("d", sim.port, 1, points)), sink)
        await poll_until(eps, lambda: len(sink.readings) >= len(points))
    values = sink.values("d")
    for dtype, value in NUMERIC.items():
        for order in ByteOrder:
            assert values[f"{dtype}_{order}"] == pytest.approx(value), (dtype, order)
    assert values["tag"] == "PUMP-7" and values["swapped"] == "AB"
    assert (values["bit2"], values["bit15"], values["bit3"]) == (True, True, False)
    assert values["coil"] is True and values["di"] is True
    assert values["scaled"] == pytest.approx(1234 * 0.1 - 100.0)
    assert eps[0].devices[0].health.online is True


async def test_several_units_behind_one_endpoint_share_one_connection() -> None:
    units = [SimulatedDevice(unit=u) for u in (1, 2, 3)]
    for u in units:
        u.add_read_counter(Table.HOLDING, 0)
    sink = Sink()
    point = ['{ name = "n", address = 0, type = "uint32" }']
    async with ModbusSimServer(units) as sim:
        text = config("".join(device_toml(f"u{u.unit}", sim.port, u.unit, point) for u in units))
        eps = endpoints_for(text, sink)
        assert len(eps) == 1
        await poll_until(eps, lambda: all(u.reads >= 5 for u in units))
        assert sim.connections == 1


async def test_a_silent_unit_goes_offline_and_back_once_while_its_neighbour_keeps_polling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good, flaky = SimulatedDevice(unit=1), SimulatedDevice(unit=2)
    for d in (good, flaky):
        d.add_read_counter(Table.HOLDING, 0)
    sink = Sink()
    point = ['{ name = "n", address = 0, type = "uint32" }']
    caplog.set_level(logging.INFO, logger="drivers.modbus")
    async with ModbusSimServer([good, flaky]) as sim:
        text = config(
            device_toml("good", sim.port, 1, point)
            + device_toml("flaky", sim.port, 2, point, backoff_max="200ms")
        )
        eps = endpoints_for(text, sink)
        health = {d.name: d.health for d in eps[0].devices}
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(eps[0].run())
            await asyncio.sleep(0.5)
            flaky.silent = True
            await asyncio.sleep(1.5)
            assert health["flaky"].online is False
            assert health["flaky"].timeouts >= 2
            good_during = good.reads
            await asyncio.sleep(1.0)
            # 10 polls/s on a 100 ms period, but the line waits out flaky's 300 ms timeout
            # once per back-off period (200 ms at most): ~40 % of the time is good's, ~4
            # polls a second (3 allows a loaded machine's jitter; starved would be 0-1)
            assert good.reads - good_during >= 3
            flaky.silent = False
            await asyncio.sleep(1.0)
            assert health["flaky"].online is True
            await cancel_and_wait([task])
    messages = [r.getMessage() for r in caplog.records]
    assert sum("'flaky'" in m and "is offline" in m for m in messages) == 1
    assert sum("'flaky'" in m and "answers again" in m for m in messages) == 1
    assert not any("'good'" in m and "offline" in m for m in messages)


async def test_a_modbus_exception_is_counted_and_logged_once_and_other_requests_still_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    device = SimulatedDevice(unit=1)
    device.add_read_counter(Table.HOLDING, 0)
    sink = Sink()
    points = [
        '{ name = "n", address = 0, type = "uint32" }',
        '{ name = "missing", address = 500, type = "uint16" }',
    ]
    caplog.set_level(logging.INFO, logger="drivers.modbus")
    async with ModbusSimServer([device]) as sim:
        eps = endpoints_for(config(device_toml("d", sim.port, 1, points)), sink)
        await poll_until(eps, lambda: device.reads >= 5)
    health = eps[0].devices[0].health
    assert health.modbus_exceptions == {2: health.modbus_exceptions[2]}
    assert health.modbus_exceptions[2] >= 4
    assert health.online is True
    assert {r.point for r in sink.readings if r.quality == Quality.GOOD} == {"n"}
    # The refused point is reported once as comm_error, value unknown.
    assert [(r.point, r.value, r.quality) for r in sink.readings if r.quality != Quality.GOOD] == [
        ("missing", None, Quality.COMM_ERROR)
    ]
    refused = [r for r in caplog.records if "cannot read" in r.getMessage()]
    assert len(refused) == 1
    assert (
        "holding 500..500 (missing): Modbus exception 2 (illegal data address)"
        in refused[0].getMessage()
    )


async def test_a_device_that_is_not_there_at_start_is_offline_and_the_driver_keeps_trying() -> None:
    port = free_tcp_port()
    sink = Sink()
    eps = endpoints_for(
        config(
            device_toml(
                "late",
                port,
                1,
                ['{ name = "n", address = 0, type = "uint32" }'],
                backoff_max="200ms",
            )
        ),
        sink,
    )
    device = SimulatedDevice(unit=1)
    device.add_read_counter(Table.HOLDING, 0)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(eps[0].run())
        await asyncio.sleep(0.6)
        assert eps[0].devices[0].health.online is False
        assert eps[0].devices[0].health.errors >= 2
        async with ModbusSimServer([device], port=port):
            async with asyncio.timeout(5):
                while not any(r.quality == Quality.GOOD for r in sink.readings):
                    await asyncio.sleep(0.02)
        await cancel_and_wait([task])
    assert eps[0].devices[0].health.online is True


async def test_a_merged_read_across_unmapped_registers_falls_back_to_point_by_point_reads() -> None:
    device = SimulatedDevice(unit=1)
    device.add_read_counter(Table.HOLDING, 0)
    device.set_value(Table.HOLDING, 6, 77)  # 2..5 are not mapped on this device
    sink = Sink()
    points = ['{ name = "n", address = 0, type = "uint32" }', '{ name = "m", address = 6 }']
    async with ModbusSimServer([device]) as sim:
        eps = endpoints_for(config(device_toml("d", sim.port, 1, points)), sink)
        assert len(eps[0].devices[0].requests) == 1  # planned as one read across the gap
        await poll_until(eps, lambda: sum(r.point == "m" for r in sink.readings) >= 3)
    assert len(eps[0].devices[0].requests) == 2
    assert [r.value for r in sink.readings if r.point == "n"][:3] == [1, 2, 3]
    assert eps[0].devices[0].health.modbus_exceptions == {2: 1}
