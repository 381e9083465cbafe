"""What a running gateway publishes matches the schemas the centre is given (docs/schemas/)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from rig import Subscriber, gateway_config, modbus_device

from drivers.modbus.decode import DataType, Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from gateway.devtools.broker import Mosquitto

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
ALARM = """
[[alarms]]
name = "methane-high"
kind = "threshold"
device = "gas"
point = "ch4"
high = 20.0
severity = "critical"
"""


async def test_status_health_and_alarm_messages_on_the_wire_match_their_schemas(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    gas = SimulatedDevice(unit=1)
    gas.set_value(Table.HOLDING, 0, 25.0, DataType.FLOAT32)
    async with ModbusSimServer([gas]) as sim:
        gp = gateway_process(
            gateway_config(
                broker_port=broker.port,
                buffer_path=tmp_path / "buffer.db",
                devices=modbus_device(
                    "gas", sim.port, 1, '{ name = "ch4", address = 0, type = "float32" }'
                )
                + modbus_device("dead", 9, 1, '{ name = "p", address = 0 }')
                + ALARM,
            )
        )
        gp.start()
        await subscriber.wait_async(
            lambda: bool(subscriber.on("/alarm")) and len(subscriber.on("/health")) >= 2,
            20,
            "an alarm and two health reports",
        )
        assert gp.stop() == 0
    checked = 0
    for suffix, name in (("/status", "status"), ("/health", "health"), ("/alarm", "alarm")):
        schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
        for payload in subscriber.on(suffix):
            jsonschema.validate(json.loads(payload), schema)
            checked += 1
    statuses = [json.loads(p)["state"] for p in subscriber.on("/status")]
    assert statuses[0] == "online" and statuses[-1] == "offline"
    assert checked >= 5
