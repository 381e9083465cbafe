"""Events and the present state at the centre: a device that goes silent is an event within
one poll timeout plus a second; a dashboard that subscribes late sees each device's state,
the active alarms and the config's metadata at once (retained); batches name the config
version whose metadata describes them."""

from __future__ import annotations

import json
import time
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


def schema(name: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return loaded


async def test_a_silent_device_is_an_event_at_once_and_a_late_subscriber_sees_the_present(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, gateway_process
) -> None:
    pump, gas = SimulatedDevice(unit=1), SimulatedDevice(unit=2)
    pump.add_read_counter(Table.HOLDING, 0)
    gas.set_value(Table.HOLDING, 0, 25.0, DataType.FLOAT32)
    async with ModbusSimServer([pump, gas]) as sim:
        gp = gateway_process(
            gateway_config(
                broker_port=broker.port,
                buffer_path=tmp_path / "buffer.db",
                devices=modbus_device(
                    "pump", sim.port, 1, '{ name = "n", address = 0, type = "uint32" }',
                    interval="200ms", timeout="300ms",
                )
                + modbus_device("gas", sim.port, 2, '{ name = "ch4", address = 0, type = "float32" }')
                + ALARM,
            )
        )  # fmt: skip
        gp.start()
        await subscriber.wait_async(
            lambda: bool(subscriber.on("/alarms/active")) and bool(subscriber.readings("pump")),
            20,
            "data and the active alarm",
        )
        pump.silent = True
        silent_at = time.time()
        await subscriber.wait_async(
            lambda: any(json.loads(p)["kind"] == "device_offline" for p in subscriber.on("/event")),
            10,
            "the offline event",
        )
        late = Subscriber(broker)  # a dashboard connecting now
        try:
            await late.wait_async(
                lambda: bool(late.on("/device/pump")) and bool(late.on("/alarms/active")),
                10,
                "the retained present",
            )
            pump_state = json.loads(late.on("/device/pump")[-1])
            gas_state = json.loads(late.on("/device/gas")[-1])
            active = json.loads(late.on("/alarms/active")[-1])
            metas = [(t, p) for t, p in late.messages if "/meta/" in t]
        finally:
            late.close()
        assert gp.stop() == 0

    events = [json.loads(p) for p in subscriber.on("/event")]
    offline = next(e for e in events if e["kind"] == "device_offline")
    arrived = subscriber.arrived[
        next(i for i, (t, p) in enumerate(subscriber.messages) if t.endswith("/event")
             and json.loads(p)["kind"] == "device_offline")
    ]  # fmt: skip
    assert arrived - silent_at <= 0.2 + 0.3 + 1.0, "later than one poll timeout plus a second"
    assert offline["data"]["device"] == "pump" and "no answer" in offline["message"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    for event in events:
        jsonschema.validate(event, schema("event"))

    assert pump_state["state"] == "offline" and pump_state["reason"]
    assert gas_state["state"] == "online"
    assert [a["alarm"] for a in active["alarms"]] == ["methane-high"]
    jsonschema.validate(pump_state, schema("device-state"))
    jsonschema.validate(active, schema("alarms-active"))

    assert len(metas) == 1
    topic, payload = metas[0]
    meta = json.loads(payload)
    jsonschema.validate(meta, schema("metadata"))
    assert topic.endswith(f"/meta/{meta['config_hash']}")
    assert {d["name"] for d in meta["devices"]} == {"pump", "gas"}
    batches = subscriber.batches()
    assert batches and all(b.config_hash == meta["config_hash"] for b in batches)
