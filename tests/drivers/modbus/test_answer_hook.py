"""The Modbus driver's answer hook: what `edge-gateway check` sees of every answer."""

from __future__ import annotations

import asyncio

import pytest

from drivers.base import discard
from drivers.modbus.decode import ByteOrder, DataType, Table, encode_value
from drivers.modbus.driver import ModbusDevice, ModbusEndpoint
from drivers.modbus.plan import ReadRequest
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from gateway.build import build_drivers
from gateway.settings import parse_config
from gateway.tasks import cancel_and_wait

pytestmark = pytest.mark.rig  # a real pymodbus server on loopback


def endpoint(port: int, points: str) -> ModbusEndpoint:
    text = (
        f'[gateway]\nid = "t"\n[[devices]]\nname = "pump"\nprotocol = "modbus_tcp"\n'
        f'host = "127.0.0.1"\nport = {port}\ntimeout = "300ms"\nretries = 0\n'
        f"points = [{points}]\n"
    )
    (driver,) = build_drivers(parse_config(text.encode()).config, discard)
    assert isinstance(driver, ModbusEndpoint)
    return driver


async def test_the_hook_sees_each_answer_s_raw_registers_and_latency_and_refusals_not() -> None:
    device = SimulatedDevice(unit=1)
    device.set_value(Table.HOLDING, 0, 2.31, DataType.FLOAT32, ByteOrder.CDAB)
    device.set_value(Table.INPUT, 0, 7, DataType.UINT16)
    heard: list[tuple[str, ReadRequest, list[int], float]] = []

    def hook(dev: ModbusDevice, request: ReadRequest, values: list[int], ms: float) -> None:
        heard.append((dev.name, request, values, ms))

    async with ModbusSimServer([device]) as server:
        driver = endpoint(
            server.port,
            '{ name = "p", address = 0, type = "float32", byte_order = "CDAB" }, '
            '{ name = "q", table = "input", address = 0 }, '
            '{ name = "refused", table = "input", address = 40 }',
        )
        assert driver.on_answer is None  # the daemon's endpoints carry no hook
        driver.on_answer = hook
        task = asyncio.create_task(driver.run())
        try:
            async with asyncio.timeout(5):
                while driver.health()[0].state == "unknown":
                    await asyncio.sleep(0.02)
        finally:
            await cancel_and_wait([task])
    assert [(name, r.table, r.address, v) for name, r, v, _ in heard] == [
        ("pump", Table.HOLDING, 0, encode_value(2.31, DataType.FLOAT32, ByteOrder.CDAB)),
        ("pump", Table.INPUT, 0, [7]),
    ]
    assert all(ms > 0 for *_, ms in heard)
