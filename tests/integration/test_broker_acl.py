"""A broker whose ACL refuses the gateway's publishes, on a real mosquitto.

Under MQTT 5 (the default) a refused publish comes back as a PUBACK with reason
code 0x87 "Not authorized": the batch must stay on disk, the lane must wait and
try again, health must say `denied`, and once the ACL is fixed every batch must
arrive, in order. mosquitto 2.0.11 with `max_queued_messages 0` (the rig's
setting) also hangs up after each refusal; with a bounded queue it keeps the
connection: both are tested.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from rig import GatewayProcess, Subscriber, gateway_config, modbus_device

from drivers.core.model import Quality
from drivers.modbus.decode import DataType, Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from gateway.devtools.broker import Mosquitto

POINTS = '{ name = "polls", address = 0, type = "uint32" }'
DENY_DATA = """\
topic read #
topic write city/+/status
topic write city/+/health
topic write city/+/alarm
"""
DENY_ALARM_AND_HEALTH = """\
topic read #
topic write city/+/status
topic write city/+/data/#
topic write city/+/data
"""
# A pattern, not `topic readwrite #`: mosquitto 2.0.11 looks a client's `topic` lines up
# when it connects, so after a restart the centre's session, restored from persistence but
# not yet reconnected, may read nothing; what the gateway publishes in that moment is
# acknowledged (PUBACK 0) and dropped. Patterns apply to every session (broker.py).
ALLOW_ALL = "pattern readwrite #\n"
KEEPS_CONNECTION = "max_queued_messages 100000\n"  # mosquitto then does not hang up on a refusal

ALARMS = """
[[alarms]]
name = "level-high"
kind = "threshold"
device = "pump"
point = "level"
high = 20.0
severity = "critical"
"""


def counting_device() -> SimulatedDevice:
    device = SimulatedDevice(unit=1)
    device.add_read_counter(Table.HOLDING, 0)
    device.set_value(Table.HOLDING, 2, 25.0, DataType.FLOAT32)  # above the alarm's limit
    return device


def poll_counts(sub: Subscriber) -> list[int]:
    return [int(r.value) for r in sub.readings("pump", "polls") if r.quality == Quality.GOOD]


def uplink_health(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(p)["uplink"] for p in sub.on("/health")]


def denied_topics(health: dict[str, Any]) -> set[str]:
    return {d["topic"] for d in health["denied"]}


async def stop(gp: GatewayProcess) -> int:
    return await asyncio.to_thread(gp.stop)


@pytest.mark.parametrize(
    ("broker_config", "fix"),
    [(KEEPS_CONNECTION, "reload"), ("", "restart")],
    ids=["acl-reloaded-broker-keeps-the-connection", "broker-restarted-after-hanging-up"],
)
async def test_a_denied_data_topic_keeps_every_batch_on_disk_until_the_acl_is_fixed(
    tmp_path: Path, gateway_process, broker_config: str, fix: str
) -> None:
    broker = Mosquitto(tmp_path / "broker", acl=DENY_DATA, extra_config=broker_config)
    broker.start()
    sub = Subscriber(broker)
    try:
        async with ModbusSimServer([counting_device()]) as sim:
            gp: GatewayProcess = gateway_process(
                gateway_config(
                    broker_port=broker.port,
                    buffer_path=tmp_path / "buffer.db",
                    devices=modbus_device("pump", sim.port, 1, POINTS),
                )
            )
            gp.start()
            await sub.wait_async(
                lambda: any(
                    h["state"] == "denied" and "city/test-gw/data" in denied_topics(h)
                    for h in uplink_health(sub)
                ),
                20,
                "health saying the data topic is denied",
            )
            await asyncio.sleep(4.0)  # several refusals and retries
            assert sub.data_messages() == [], "the broker stored data its ACL denies?"
            denied = uplink_health(sub)[-1]
            entry = next(d for d in denied["denied"] if d["topic"] == "city/test-gw/data")
            assert entry["reason_code"] == 0x87 and entry["reason"].startswith("Not authorized")
            assert entry["refused"] >= 1 and entry["since"] > 0
            waiting = json.loads(sub.on("/health")[-1])["buffer"]["batches"]
            assert waiting >= 10, "batches were deleted although the broker refused them"
            # Refusals are retried with a pause, not in a busy loop.
            assert denied["refused_publishes"] < 200, denied

            if fix == "reload":
                await asyncio.to_thread(broker.set_acl, ALLOW_ALL)
            else:
                await asyncio.to_thread(broker.set_acl, ALLOW_ALL)
                await asyncio.to_thread(broker.restart)
            fixed_at = sim.devices[1].reads // 2
            await sub.wait_async(
                lambda: bool(poll_counts(sub)) and poll_counts(sub)[-1] > fixed_at,
                60,
                "every batch after the ACL was fixed",
            )
            await sub.wait_async(
                lambda: uplink_health(sub)[-1]["state"] == "online", 20, "health back online"
            )
            assert await stop(gp) == 0, gp.log
    finally:
        sub.close()
        broker.kill()
    counts = poll_counts(sub)
    assert counts == list(range(1, counts[-1] + 1)), "readings lost or out of order"
    assert [b.seq for b in sub.batches()] == list(range(1, len(sub.batches()) + 1))
    log = gp.log
    assert log.count("denied: city/test-gw/data, Not authorized (reason code 0x87)") == 1, log
    assert log.count("accepted again: city/test-gw/data:") == 1, log
    assert "it stays on disk" in log
    assert "Traceback" not in log, log
    assert "stopped; 0 batch(es) remain on disk" in log, log


async def test_denied_alarm_and_health_topics_are_reported_while_data_flows(
    tmp_path: Path, gateway_process
) -> None:
    broker = Mosquitto(tmp_path / "broker", acl=DENY_ALARM_AND_HEALTH)
    broker.start()
    sub = Subscriber(broker)
    try:
        async with ModbusSimServer([counting_device()]) as sim:
            points = POINTS + ',\n  { name = "level", address = 2, type = "float32" }'
            gp: GatewayProcess = gateway_process(
                gateway_config(
                    broker_port=broker.port,
                    buffer_path=tmp_path / "buffer.db",
                    devices=modbus_device("pump", sim.port, 1, points) + ALARMS,
                )
            )
            gp.start()
            await sub.wait_async(
                lambda: (
                    "denied: city/test-gw/alarm" in gp.log
                    and "denied: city/test-gw/health" in gp.log
                ),
                20,
                "the alarm and health refusals logged",
            )
            await sub.wait_async(lambda: len(poll_counts(sub)) >= 20, 20, "data meanwhile")
            assert sub.on("/alarm") == [] and sub.on("/health") == []
            await asyncio.to_thread(broker.set_acl, ALLOW_ALL)
            await sub.wait_async(lambda: len(sub.on("/alarm")) >= 1, 60, "the alarm")
            await sub.wait_async(lambda: len(sub.on("/health")) >= 1, 60, "a health report")
            assert await stop(gp) == 0, gp.log
    finally:
        sub.close()
        broker.kill()
    alarm = json.loads(sub.on("/alarm")[0])
    assert alarm["alarm"] == "level-high" and alarm["state"] == "raised" and alarm["seq"] == 1
    counts = poll_counts(sub)
    assert counts == list(range(1, counts[-1] + 1)), "data lost while other topics were denied"
    log = gp.log
    assert log.count("denied: city/test-gw/alarm, Not authorized") == 1, log
    assert log.count("denied: city/test-gw/health, Not authorized") == 1, log
    assert "Traceback" not in log, log


async def test_batches_nobody_subscribes_to_stay_on_disk_until_the_centre_is_back(
    tmp_path: Path, gateway_process
) -> None:
    # PUBACK 0x10 "No matching subscribers": mosquitto took the batch and gave it to
    # nobody (after a restart it does not restore the centre's shared subscriptions).
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        async with ModbusSimServer([counting_device()]) as sim:
            gp: GatewayProcess = gateway_process(
                gateway_config(
                    broker_port=broker.port,
                    buffer_path=tmp_path / "buffer.db",
                    devices=modbus_device("pump", sim.port, 1, POINTS),
                )
            )
            gp.start()
            # No subscriber at all yet: only the gateway's log can tell.
            for _ in range(200):
                if "nobody subscribes to it" in gp.log:
                    break
                await asyncio.sleep(0.1)
            assert "denied: city/test-gw/data, No matching subscribers" in gp.log, gp.log
            sub = Subscriber(broker, "city/+/data/#")  # the centre comes back
            try:
                await sub.wait_async(
                    lambda: bool(poll_counts(sub)) and poll_counts(sub)[0] == 1,
                    60,
                    "the batches kept while nobody listened",
                )
                assert await stop(gp) == 0, gp.log
            finally:
                sub.close()
    finally:
        broker.kill()
    counts = poll_counts(sub)
    assert counts == list(range(1, counts[-1] + 1)), "readings lost or out of order"
    assert "accepted again: city/test-gw/data:" in gp.log
