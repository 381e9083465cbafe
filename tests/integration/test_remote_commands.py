"""Signed commands to a running gateway, end to end: `edge-gateway command send` at the
centre, a real mosquitto, the gateway as a process with a pymodbus device. Each verb
does what docs/operations.md says; a command nobody trusted signed is refused, counted,
audited and heard of at the centre, and changes nothing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rig import REPO, GatewayProcess, Subscriber, gateway_config, modbus_device

from drivers.modbus.decode import Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from gateway.devtools.broker import Mosquitto

GATEWAY = "test-gw"
POINTS = '{ name = "polls", address = 0, type = "uint32" }'


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def broker(tmp_path: Path):
    b = Mosquitto(tmp_path / "broker")
    b.start()
    yield b
    b.kill()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """ops.key at the centre, ops.pub trusted by the gateway; rogue.key trusted by nobody."""
    for name in ("ops", "rogue"):
        made = cli("command", "keygen", "--out", str(tmp_path / "centre"), "--name", name)
        assert made.returncode == 0, made.stderr
    trusted = tmp_path / "trusted-keys"
    trusted.mkdir()
    (trusted / "ops.pub").write_bytes((tmp_path / "centre" / "ops.pub").read_bytes())
    return tmp_path / "centre"


def config(broker: Mosquitto, tmp_path: Path, device_port: int, *, extra: str = "") -> str:
    text = gateway_config(
        broker_port=broker.port,
        buffer_path=tmp_path / "buffer.db",
        devices=modbus_device("pump", device_port, 1, POINTS) + extra,
    )
    return text.replace(
        "[batch]", f'[commands]\ntrusted_keys = "{tmp_path / "trusted-keys"}"\n\n[batch]', 1
    )


def send(broker: Mosquitto, key: Path, verb: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli(
        "command",
        "send",
        "--broker",
        f"127.0.0.1:{broker.port}",
        "--gateway",
        GATEWAY,
        "--key",
        str(key),
        "--json",
        "--timeout",
        "60s",
        *args,
        verb,
    )
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def counting_device() -> SimulatedDevice:
    device = SimulatedDevice(unit=1)
    device.add_read_counter(Table.HOLDING, 0)
    return device


async def started(gp: GatewayProcess, sub: Subscriber) -> None:
    gp.start()
    await sub.wait_async(lambda: len(sub.readings("pump", "polls")) >= 3, 20, "readings")
    await sub.wait_async(
        lambda: any(
            json.loads(p)["uplink"].get("commands") == "subscribed" for p in sub.on("/health")
        ),
        20,
        "the command subscription",
    )


async def test_ping_health_and_read_answer_with_what_the_gateway_knows(
    tmp_path: Path, broker: Mosquitto, keys: Path, gateway_process
) -> None:
    sub = Subscriber(broker)
    try:
        async with ModbusSimServer([counting_device()]) as sim:
            gp: GatewayProcess = gateway_process(config(broker, tmp_path, sim.port))
            await started(gp, sub)
            code, reply = await asyncio.to_thread(send, broker, keys / "ops.key", "ping")
            assert code == 0 and reply["outcome"] == "ok", reply
            assert reply["result"]["gateway_id"] == GATEWAY
            assert len(reply["result"]["config_hash"]) == 12

            code, reply = await asyncio.to_thread(send, broker, keys / "ops.key", "health")
            assert code == 0, reply
            assert reply["result"]["devices"][0]["name"] == "pump"
            assert reply["result"]["commands"]["accepted"] == 2  # ping, and this one

            code, reply = await asyncio.to_thread(
                send, broker, keys / "ops.key", "read", "--body", '{"device": "pump"}'
            )
            assert code == 0, reply
            (reading,) = reply["result"]["readings"]
            assert reading["point"] == "polls" and reading["quality"] == "good"
            assert reading["value"] >= 3

            code, reply = await asyncio.to_thread(
                send, broker, keys / "ops.key", "read", "--body", '{"device": "nope"}'
            )
            assert code == 1 and reply["outcome"] == "failed"
            assert "no device 'nope'" in reply["reason"]
            assert await asyncio.to_thread(gp.stop) == 0, gp.log
    finally:
        sub.close()


async def test_a_command_signed_by_an_untrusted_key_is_refused_counted_and_heard_of(
    tmp_path: Path, broker: Mosquitto, keys: Path, gateway_process
) -> None:
    sub = Subscriber(broker)
    try:
        async with ModbusSimServer([counting_device()]) as sim:
            gp: GatewayProcess = gateway_process(config(broker, tmp_path, sim.port))
            await started(gp, sub)
            new = tmp_path / "new.toml"
            new.write_text(gp.config.read_text().replace('"200ms"', '"300ms"'))
            code, reply = await asyncio.to_thread(
                send, broker, keys / "rogue.key", "config-apply", "--config", str(new)
            )
            assert code == 1, reply
            assert reply["outcome"] == "refused" and reply["code"] == "unknown_key"
            await sub.wait_async(
                lambda: any(
                    (json.loads(p).get("commands") or {}).get("refused", {}).get("unknown_key")
                    for p in sub.on("/health")
                ),
                10,
                "the refusal counted on health",
            )
            kinds = [json.loads(p)["kind"] for p in sub.on("/event")]
            assert "command_refused" in kinds
            assert "config_applied" not in kinds, "a refused command changed the config"
            assert "unknown_key" in gp.log
            assert await asyncio.to_thread(gp.stop) == 0, gp.log
    finally:
        sub.close()


async def test_config_apply_by_command_commits_a_config_that_works(
    tmp_path: Path, broker: Mosquitto, keys: Path, gateway_process
) -> None:
    sub = Subscriber(broker)
    try:
        async with ModbusSimServer([counting_device()]) as sim:
            gp: GatewayProcess = gateway_process(config(broker, tmp_path, sim.port))
            await started(gp, sub)
            new = tmp_path / "new.toml"
            new.write_text(gp.config.read_text().replace('max_age = "200ms"', 'max_age = "300ms"'))
            code, reply = await asyncio.to_thread(
                send, broker, keys / "ops.key", "config-apply", "--config", str(new)
            )
            assert code == 0, reply
            assert reply["result"]["outcome"] == "committed"
            assert gp.config.read_text() == new.read_text()

            code, reply = await asyncio.to_thread(send, broker, keys / "ops.key", "config-rollback")
            assert code == 0, reply
            assert reply["result"]["config_hash"] == reply["result"]["previous"] or (
                reply["result"]["outcome"] == "committed"
            )
            assert gp.config.read_text() != new.read_text()

            code, reply = await asyncio.to_thread(
                send,
                broker,
                keys / "ops.key",
                "log-level",
                "--body",
                '{"level": "debug", "for": 30}',
            )
            assert code == 0 and reply["result"]["level"] == "debug", reply
            assert await asyncio.to_thread(gp.stop) == 0, gp.log
    finally:
        sub.close()
    assert "log level debug for 30s" in gp.log
