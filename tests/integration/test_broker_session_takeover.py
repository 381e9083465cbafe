"""Two gateways configured with the same id, against a real mosquitto.

They share a client id, so each connect hands the other's session over. Before,
they knocked each other off every few seconds for ever, logging only
"[code:128] Unspecified error". mosquitto 2.0.11 closes the old connection
without the MQTT 5 "Session taken over" DISCONNECT, so the uplink must recognise
the pattern (closed early, without a word, again and again) and back off for
minutes, saying why. (A broker that does send 0x8E: test_broker_misbehaviour.py.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from rig import GatewayProcess, gateway_config, modbus_device

from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from gateway.devtools.broker import Mosquitto

POINT = '{ name = "level", table = "input", address = 0, type = "uint16" }'
WINDOW = 25.0  # seconds both gateways run side by side


async def test_two_gateways_with_one_id_do_not_flap_and_the_log_says_why(
    tmp_path: Path, broker: Mosquitto
) -> None:
    gateways: list[GatewayProcess] = []
    try:
        async with ModbusSimServer([SimulatedDevice(unit=1)]) as sim:
            for name in ("a", "b"):
                (tmp_path / name).mkdir()
                gp = GatewayProcess(
                    tmp_path / name,
                    gateway_config(
                        broker_port=broker.port,
                        buffer_path=tmp_path / name / "buffer.db",
                        devices=modbus_device("gauge", sim.port, 1, POINT),
                    ),
                )
                gateways.append(gp)
                gp.start()
            await asyncio.sleep(WINDOW)
            for gp in gateways:
                assert await asyncio.to_thread(gp.stop) == 0, gp.log
    finally:
        for gp in gateways:
            gp.cleanup()
    connects = broker.log.read_text().count("as edge-gateway-test-gw (p5")
    # With the test rig's 0.1-0.5 s reconnect delay, two gateways flapping would connect
    # about a hundred times in this window; recognising the takeover stops it after a few.
    assert 2 <= connects <= 16, f"{connects} connects in {WINDOW:g}s"
    explained = [
        gp.log.count(
            "another client with the same client id 'edge-gateway-test-gw': "
            "is a second gateway configured with id 'test-gw'?"
        )
        for gp in gateways
    ]
    assert max(explained) == 1 and sum(explained) <= 2, [gp.log for gp in gateways]
    for gp in gateways:
        assert "Traceback" not in gp.log and "[code:" not in gp.log, gp.log
