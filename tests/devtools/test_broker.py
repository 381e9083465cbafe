"""The rig's mosquitto across a restart, with an ACL: what a persistent subscriber gets of
the messages published after the restart and before it is back (gateway/devtools/broker.py).

mosquitto 2.0.11 finds a client's `topic` lines when it connects: a session restored from
persistence has none until its client reconnects, so a message published in that moment is
acknowledged (reason code 0) and dropped. `pattern` lines apply to every session.
"""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.devtools.rig import Collector, Mosquitto

pytestmark = pytest.mark.rig


def publish_acked(broker: Mosquitto, payloads: list[bytes]) -> list[int]:
    """Publish each at QoS 1 under MQTT 5, as the gateway does; the PUBACKs' reason codes."""
    codes: list[int] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_publish = lambda _c, _u, _mid, code, _p: codes.append(code.value)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for payload in payloads:
            client.publish("city/gw-1/data", payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return codes


def published_while_the_collector_was_away(tmp_path: Path, acl: str) -> tuple[list[int], int]:
    """The PUBACK codes of five messages published after a broker restart, before the
    collector reconnected, and how many of them the collector then received."""
    broker = Mosquitto(tmp_path / "broker", acl=acl)
    broker.start()
    collector = Collector(broker)
    try:
        collector.client.loop_stop()  # the collector stays away until told
        broker.restart()
        away = [f"while away {i}".encode() for i in range(5)]
        codes = publish_acked(broker, away)
        collector.subscribed = False
        collector.client.loop_start()  # it reconnects to its persistent session
        collector.wait(lambda: collector.subscribed, 10, "the collector back")
        publish_acked(broker, [b"after"])
        collector.wait(lambda: b"after" in collector.on("/data"), 10, "the message after")
        return codes, sum(p in away for p in collector.on("/data"))
    finally:
        collector.close()
        broker.kill()


def test_a_pattern_acl_lets_a_restored_session_have_what_was_published_before_it_was_back(
    tmp_path: Path,
) -> None:
    codes, received = published_while_the_collector_was_away(tmp_path, "pattern readwrite #\n")
    assert codes == [0] * 5
    assert received == 5


def test_a_topic_acl_drops_what_a_restored_session_was_sent_before_it_was_back(
    tmp_path: Path,
) -> None:
    # mosquitto 2.0.11's behaviour, pinned: acknowledged, then lost. Should this fail, a
    # newer mosquitto delivers them, and broker.py's note can go.
    codes, received = published_while_the_collector_was_away(tmp_path, "topic readwrite #\n")
    assert codes == [0] * 5, "acknowledged as delivered to a subscription"
    assert received == 0
