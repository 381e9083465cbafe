"""Signed commands to a running gateway, end to end: `edge-gateway command send` at the
centre, a real mosquitto, the gateway as a process with a pymodbus device. Each verb
does what docs/operations.md says; a command nobody trusted signed is refused, counted,
audited and heard of at the centre, and changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from rig import GatewayProcess, Subscriber, cli, gateway_config, modbus_device

from drivers.modbus.decode import Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice, free_tcp_port
from gateway.control import load_private_key
from gateway.control.signing import envelope_bytes, new_command, sign
from gateway.devtools.broker import Mosquitto

GATEWAY = "test-gw"
POINTS = '{ name = "polls", address = 0, type = "uint32" }'


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
    text = text.replace('log_level = "info"', 'log_level = "info"\nclock_sync = "assume"', 1)
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


@contextlib.asynccontextmanager
async def cabinet(
    tmp_path: Path, broker: Mosquitto, gateway_process: Callable[[str], GatewayProcess]
) -> AsyncIterator[tuple[GatewayProcess, Subscriber]]:
    """A gateway with commands on, reading a counting pump, its subscription up; it must
    stop cleanly at the end."""
    sub = Subscriber(broker)
    try:
        async with ModbusSimServer([counting_device()]) as sim:
            gp = gateway_process(config(broker, tmp_path, sim.port))
            await started(gp, sub)
            yield gp, sub
            assert await asyncio.to_thread(gp.stop) == 0, gp.log
    finally:
        sub.close()


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
    async with cabinet(tmp_path, broker, gateway_process) as (_gp, _sub):
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


async def test_a_command_signed_by_an_untrusted_key_is_refused_counted_and_heard_of(
    tmp_path: Path, broker: Mosquitto, keys: Path, gateway_process
) -> None:
    async with cabinet(tmp_path, broker, gateway_process) as (gp, sub):
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


async def test_config_apply_by_command_commits_a_config_that_works(
    tmp_path: Path, broker: Mosquitto, keys: Path, gateway_process
) -> None:
    async with cabinet(tmp_path, broker, gateway_process) as (gp, _sub):
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
    assert "log level debug for 30s" in gp.log


async def test_config_apply_that_changes_mqtt_reconnects_commits_and_its_reply_still_arrives(
    tmp_path: Path, broker: Mosquitto, keys: Path, gateway_process
) -> None:
    """An [mqtt] change ends the session the command came in on before the health window
    closes; the sender, still waiting on the broker, hears the outcome all the same."""
    async with cabinet(tmp_path, broker, gateway_process) as (gp, sub):
        new = tmp_path / "new.toml"
        new.write_text(
            gp.config.read_text().replace('health_interval = "1s"', 'health_interval = "2s"')
        )
        assert new.read_text() != gp.config.read_text()
        code, reply = await asyncio.to_thread(
            send, broker, keys / "ops.key", "config-apply", "--config", str(new)
        )
        assert code == 0, reply
        assert reply["result"]["outcome"] == "committed"
        assert gp.config.read_text() == new.read_text()
        online = [p for p in sub.on("/status") if b"online" in p]
        assert len(online) >= 2, "the gateway reconnected for the new [mqtt]"
    assert "goes out in the next session" in gp.log


def publish_and_wait(
    broker: Mosquitto, verb: str, payload: bytes, timeout: float = 20
) -> dict[str, Any]:
    """Publish a raw command payload (no response topic: the reply comes on reply/{verb})
    and return the first reply carrying its nonce."""
    nonce = json.loads(payload)["command"]["nonce"]
    got: list[dict[str, Any]] = []
    done = threading.Event()

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        reply = json.loads(msg.payload)
        if reply.get("nonce") == nonce:
            got.append(reply)
            done.set()

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.subscribe(f"city/{GATEWAY}/reply/{verb}", qos=1)
    client.loop_start()
    try:
        time.sleep(0.3)  # the SUBACK
        client.publish(f"city/{GATEWAY}/cmd/{verb}", payload, qos=1).wait_for_publish(5)
        assert done.wait(timeout), f"no reply to {verb} within {timeout}s"
    finally:
        client.loop_stop()
        client.disconnect()
    return got[0]


async def test_an_expired_command_and_a_replayed_one_are_refused_with_the_reason(
    tmp_path: Path, broker: Mosquitto, keys: Path, gateway_process
) -> None:
    key = load_private_key(keys / "ops.key")
    async with cabinet(tmp_path, broker, gateway_process) as (gp, sub):
        old = new_command("ping", GATEWAY, {}, "ops", now=time.time() - 3600)
        reply = await asyncio.to_thread(
            publish_and_wait, broker, "ping", envelope_bytes(sign(old, key))
        )
        assert reply["outcome"] == "refused" and reply["code"] == "expired", reply

        fresh = envelope_bytes(sign(new_command("ping", GATEWAY, {}, "ops", now=time.time()), key))
        first = await asyncio.to_thread(publish_and_wait, broker, "ping", fresh)
        assert first["outcome"] == "ok", first
        boot = json.loads(sub.on("/health")[-1])["boot_id"]
        assert await asyncio.to_thread(gp.stop) == 0, gp.log
        gp.start()  # nonces are remembered across a restart
        await sub.wait_async(
            lambda: any(
                h["boot_id"] != boot and h["uplink"]["commands"] == "subscribed"
                for h in map(json.loads, sub.on("/health"))
            ),
            20,
            "the restarted gateway subscribed",
        )
        again = await asyncio.to_thread(publish_and_wait, broker, "ping", fresh)
        assert again["outcome"] == "refused" and again["code"] == "replayed", again


async def test_config_apply_of_a_config_whose_device_never_answers_is_rolled_back_losing_nothing(
    tmp_path: Path, broker: Mosquitto, keys: Path, gateway_process
) -> None:
    async with cabinet(tmp_path, broker, gateway_process) as (gp, sub):
        good = gp.config.read_text()
        bad = tmp_path / "bad.toml"
        bad.write_text(config(broker, tmp_path, free_tcp_port()))
        code, reply = await asyncio.to_thread(
            send, broker, keys / "ops.key", "config-apply", "--config", str(bad)
        )
        assert code == 1 and reply["outcome"] == "failed", reply
        assert reply["result"]["outcome"] == "rolled_back"
        assert "device 'pump' was online" in reply["reason"]
        assert gp.config.read_text() == good
        seen = len(sub.readings("pump", "polls"))
        await sub.wait_async(
            lambda: len(sub.readings("pump", "polls")) > seen + 5, 20, "readings go on"
        )
    batches = sub.batches()
    assert len({b.boot_id for b in batches}) == 1
    assert [b.seq for b in batches] == list(range(1, len(batches) + 1)), "a batch was lost"
    polls = [int(r.value) for r in sub.readings("pump", "polls") if r.quality == 0]
    assert polls == sorted(set(polls)), "a reading doubled or out of order"
    # Each switch (to the new config, and back) may cancel one poll in flight: the
    # device counted it, the gateway never got its answer. Nothing read is lost.
    assert len(set(range(polls[0], polls[-1] + 1)) - set(polls)) <= 2


async def test_a_key_installed_later_is_trusted_after_a_reload_of_the_same_config(
    tmp_path: Path, broker: Mosquitto, keys: Path, gateway_process
) -> None:
    trusted = tmp_path / "trusted-keys" / "ops.pub"
    pub = trusted.read_bytes()
    trusted.unlink()
    async with cabinet(tmp_path, broker, gateway_process) as (gp, sub):
        code, reply = await asyncio.to_thread(send, broker, keys / "ops.key", "ping")
        assert code == 1 and reply["code"] == "unknown_key", reply
        trusted.write_bytes(pub)
        assert gp.proc is not None
        gp.proc.send_signal(signal.SIGHUP)  # systemctl reload, the config unchanged
        await sub.wait_async(lambda: "trusted-keys: ops (" in gp.log, 10, "the key read again")
        code, reply = await asyncio.to_thread(send, broker, keys / "ops.key", "ping")
        assert code == 0, reply
