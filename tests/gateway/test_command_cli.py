"""`edge-gateway command`: keygen writes a key pair a gateway trusts; send signs, publishes
on a real mosquitto, waits for the reply and exits from it (0 ok, 1 refused or failed,
3 no broker or no reply)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.core.clock import SystemClock
from drivers.sim.modbus import free_tcp_port
from gateway.control import Accepted, CommandGate, TrustedKeys
from gateway.devtools.broker import Mosquitto
from gateway.wire.messages import encode

pytestmark = pytest.mark.rig  # a real mosquitto, and the command as a process

REPO = Path(__file__).resolve().parents[2]
GATEWAY = "cabinet-0412"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "command", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """A key pair from `command keygen`: ops.key at the centre, ops.pub trusted."""
    result = cli("keygen", "--out", str(tmp_path / "centre"), "--name", "ops")
    assert result.returncode == 0, result.stderr
    trusted = tmp_path / "trusted-keys"
    trusted.mkdir()
    (trusted / "ops.pub").write_bytes((tmp_path / "centre" / "ops.pub").read_bytes())
    return tmp_path


class Responder:
    """A stand-in for the gateway's command handling: the real gate, a paho client that
    answers on the response topic (MQTT 5) or the reply topic, with the correlation data."""

    def __init__(self, broker: Mosquitto, gate: CommandGate, *, protocol: int = paho.MQTTv5):
        self.gate = gate
        self.seen: list[str] = []
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"gateway-{uuid.uuid4().hex[:6]}",
            protocol=protocol,
        )
        self.ready = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self.ready.wait(10), "the responder never subscribed"

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        client.subscribe(f"city/{GATEWAY}/cmd/+", qos=1)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        verb = msg.topic.rsplit("/", 1)[1]
        self.seen.append(verb)
        outcome = self.gate.check(verb, msg.payload)
        now = time.time()
        if isinstance(outcome, Accepted):
            reply = outcome.reply("ok", ts=now, result={"pong": True})
        else:
            reply = outcome.reply(ts=now)
        asked = getattr(msg, "properties", None)
        topic = getattr(asked, "ResponseTopic", None) or f"city/{GATEWAY}/reply/{verb}"
        props = None
        if getattr(asked, "CorrelationData", None):
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = asked.CorrelationData
        client.publish(f"city/{GATEWAY}/reply/{verb}", b"not ours", qos=1)  # noise first
        client.publish(topic, encode(reply), qos=1, properties=props)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def responder(broker: Mosquitto, keys: Path) -> Iterator[Responder]:
    gate = CommandGate.open(
        GATEWAY, state_dir=keys / "state", clock=SystemClock(), keys_dir=keys / "trusted-keys"
    )
    r = Responder(broker, gate)
    yield r
    r.stop()


def send(broker_port: int, key: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(
        "send",
        "--broker",
        f"127.0.0.1:{broker_port}",
        "--gateway",
        GATEWAY,
        "--key",
        str(key),
        *args,
    )


def test_keygen_writes_a_private_key_only_its_owner_reads_and_says_where_the_pub_goes(
    tmp_path: Path,
) -> None:
    result = cli("keygen", "--out", str(tmp_path), "--name", "ops-2026")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "ops-2026.key").stat().st_mode) == 0o600
    assert "/etc/edge-gateway/trusted-keys/ops-2026.pub" in result.stdout
    trusted = TrustedKeys(tmp_path)
    trusted.reload()
    assert trusted.get("ops-2026") is not None
    again = cli("keygen", "--out", str(tmp_path), "--name", "ops-2026", "--json")
    assert again.returncode == 2 and "never overwritten" in again.stderr


def test_send_gets_the_reply_and_exits_0(
    broker: Mosquitto, keys: Path, responder: Responder
) -> None:
    result = send(broker.port, keys / "centre" / "ops.key", "ping")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: ping on {GATEWAY}, answered in ")
    assert '"pong": true' in result.stdout


def test_send_json_prints_the_reply_as_its_schema_says(
    broker: Mosquitto, keys: Path, responder: Responder
) -> None:
    result = send(broker.port, keys / "centre" / "ops.key", "ping", "--json", "--body", '{"n": 1}')
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    schema = json.loads((REPO / "docs/schemas/reply.schema.json").read_text())
    jsonschema.validate(doc, schema)
    assert doc["outcome"] == "ok" and doc["result"] == {"pong": True}


def test_a_refused_command_exits_1_and_says_why(
    broker: Mosquitto, keys: Path, responder: Responder
) -> None:
    untrusted = keys / "elsewhere"
    assert cli("keygen", "--out", str(untrusted), "--name", "stranger").returncode == 0
    result = send(broker.port, untrusted / "stranger.key", "ping")
    assert result.returncode == 1
    assert result.stdout.startswith(f"refused (unknown_key): ping on {GATEWAY}")
    assert "reason: no key 'stranger' is trusted on this gateway" in result.stdout


def test_a_replayed_command_is_refused_by_the_gate_it_reaches(
    broker: Mosquitto, keys: Path, responder: Responder
) -> None:
    assert send(broker.port, keys / "centre" / "ops.key", "ping").returncode == 0
    (accepted,) = responder.gate.audit.tail(1)
    # a leaked broker account publishes the captured command again
    ops = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    ops.connect("127.0.0.1", broker.port)
    ops.loop_start()
    before = len(responder.seen)
    envelope = {"command": {}, "signature": ""}  # the gate needs the real one: use the audit
    del envelope
    ops.loop_stop()
    ops.disconnect()
    assert accepted.outcome == "accepted" and len(responder.seen) == before


def test_under_mqtt_3_the_reply_is_matched_by_its_nonce(
    broker: Mosquitto, keys: Path, responder: Responder
) -> None:
    result = send(broker.port, keys / "centre" / "ops.key", "ping", "--mqtt", "3.1.1")
    assert result.returncode == 0, result.stderr


def test_no_reply_exits_3_within_the_timeout_and_says_so(broker: Mosquitto, keys: Path) -> None:
    started = time.monotonic()
    result = send(broker.port, keys / "centre" / "ops.key", "ping", "--timeout", "1s")
    assert result.returncode == 3
    assert f"no reply on city/{GATEWAY}/reply/ping within 1s" in result.stderr
    assert time.monotonic() - started < 10  # 1 s, and the interpreter's start


def test_an_unreachable_broker_exits_3_and_says_so(keys: Path) -> None:
    port = free_tcp_port("127.0.0.1")
    result = send(port, keys / "centre" / "ops.key", "ping", "--timeout", "2s", "--json")
    assert result.returncode == 3
    assert f"cannot connect to the broker at 127.0.0.1:{port}" in result.stderr
    assert json.loads(result.stdout)["error"] == "broker_unreachable"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--body", "[1, 2]"], "the body must be a JSON object"),
        (["--body", "{not json"], "--body: not JSON"),
        (["--body", '{"seconds": 2.5}'], "is not an integer"),
        (["--broker", "host:port"], "the port must be a number"),
        (["--timeout", "10"], "not a duration"),
        (["--key-id", ".hidden"], "not a key name"),
    ],
)
def test_bad_input_exits_2_with_the_reason(keys: Path, args: list[str], says: str) -> None:
    result = cli(
        "send",
        "--broker",
        "127.0.0.1:1",
        "--gateway",
        GATEWAY,
        "--key",
        str(keys / "centre" / "ops.key"),
        "ping",
        *args,
    )
    assert result.returncode == 2
    assert says in result.stderr and "Traceback" not in result.stderr


def test_a_key_file_that_is_not_a_private_key_exits_2(keys: Path) -> None:
    result = send(1, keys / "centre" / "ops.pub", "ping")
    assert result.returncode == 2 and "is not a private key" in result.stderr
