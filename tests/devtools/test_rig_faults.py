"""A rig test as a rig engineer writes one: the shipped library (its pytest plugin) and
the CLI alone, no private imports. A simulated pump, the gateway as a process, the
centre's collector; each fault the simulator injects over Modbus TCP is switched on and
off while the gateway runs, and what arrives at the centre says so: the device's state
and counters on health, readings without a value while it lasts, good readings after."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.devtools.rig import modbus_device

pytestmark = pytest.mark.rig

PUMP = """
[[devices]]
name = "pump"
protocol = "modbus_tcp"
port = 0
unit = 1
points = [{ name = "pressure", address = 0, type = "float32", value = 4.5 }]
"""
POINT = '{ name = "pressure", address = 0, type = "float32", unit = "bar" }'


def pump_health(collector: Any) -> dict[str, Any]:
    """The pump's section of the newest health report."""
    reports = [json.loads(p) for p in collector.on("/health")]
    devices = reports[-1]["devices"] if reports else []
    return next((d for d in devices if d["name"] == "pump"), {})


# fault, its arguments, and what the centre sees while it lasts (on the pump's health)
FAULTS = [
    ("silent", (), lambda h: h.get("state") == "offline" and h.get("timeouts", 0) > 0),
    ("exception", (2,), lambda h: h.get("modbus_exceptions", {}).get("2", 0) > 0),
    ("delay", (900,), lambda h: h.get("timeouts", 0) > 0),
    ("txid", (), lambda h: h.get("malformed", 0) + h.get("timeouts", 0) > 0),
    ("garbage", (), lambda h: h.get("malformed", 0) + h.get("errors", 0) > 0),
    ("drop", (), lambda h: h.get("errors", 0) + h.get("timeouts", 0) > 0),
]


@pytest.mark.parametrize(("kind", "args", "seen"), FAULTS, ids=[f[0] for f in FAULTS])
def test_each_fault_the_simulator_injects_is_seen_at_the_centre_and_then_clears(
    edge_simulator: Any, edge_gateway: Any, edge_collector: Any, kind: str, args: tuple, seen: Any
) -> None:
    pump = edge_simulator(PUMP)
    gateway = edge_gateway(modbus_device("pump", pump.port("pump"), 1, POINT))
    readings = edge_collector.readings
    edge_collector.wait(lambda: len(readings("pump")) >= 3, 20, "good readings")
    pump.fault("pump", kind, *args)
    edge_collector.wait(lambda: seen(pump_health(edge_collector)), 20, f"{kind} on health")
    edge_collector.wait(lambda: readings("pump")[-1].value is None, 20, f"{kind}: no value")
    pump.clear("pump")
    edge_collector.wait(
        lambda: (
            readings("pump")[-1].value == 4.5 and pump_health(edge_collector)["state"] == "online"
        ),
        30,
        "the pump read again",
    )
    assert gateway.stop() == 0, gateway.log
    assert edge_collector.completeness("gw-1")["complete"], "a batch went missing"
    assert "Traceback" not in gateway.log
