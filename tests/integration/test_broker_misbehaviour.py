"""Nothing a broker does ends the uplink or prints a traceback; and what each MQTT
version lets the uplink know.

mosquitto behaves; to see the uplink meet a broker that refuses, hangs up, says
"Session taken over" (mosquitto 2.0.11 never sends it) or sends bytes that are
not MQTT, these tests talk to a scripted peer: a real TCP server on loopback that
speaks just enough MQTT 5 to misbehave on cue. The uplink runs in this process,
on a real buffer file, so its health and log can be read directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from rig import Subscriber, TcpProxy

from buffer import DurableQueue
from gateway.devtools.broker import Mosquitto
from gateway.store import Store
from gateway.uplink.config import MqttConfig
from gateway.uplink.mqtt import CommandHandler, MqttUplink
from gateway.uplink.topics import Topics
from gateway.wire.messages import Identity

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return header, await reader.readexactly(length)


def connack(reason: int) -> bytes:
    return bytes([0x20, 3, 0, reason, 0])  # flags, reason code, no properties


def disconnect(reason: int) -> bytes:
    return bytes([0xE0, 2, reason, 0])


async def refuse(reason: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(connack(reason))
    await writer.drain()
    await asyncio.sleep(0.2)


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    return  # closes without a CONNACK


async def not_mqtt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"\xf0\x00")  # a packet type no broker sends to a client
    await writer.drain()
    await asyncio.sleep(5)


async def accept_then(
    then: Callable[[int, bytes], bytes | None],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    after: bytes = b"",
) -> None:
    """CONNACK success, optionally a packet at once, then answer each packet via `then`."""
    writer.write(connack(0) + after)
    await writer.drain()
    while True:
        header, body = await read_packet(reader)
        answer = then(header, body)
        if answer is not None:
            writer.write(answer)
            await writer.drain()


def publish_mid(header: int, body: bytes) -> int | None:
    if header >> 4 != 3 or not header & 0x06:
        return None
    topic_length = int.from_bytes(body[:2], "big")
    return int.from_bytes(body[2 + topic_length : 4 + topic_length], "big")


def malformed_puback(header: int, body: bytes) -> bytes | None:
    return b"\x40\x01\x00" if publish_mid(header, body) is not None else None


def puback_unknown_reason(header: int, body: bytes) -> bytes | None:
    mid = publish_mid(header, body)
    return None if mid is None else bytes([0x40, 4, mid >> 8, mid & 0xFF, 0xFE, 0])


def never_answer(header: int, body: bytes) -> bytes | None:
    return None


class ScriptedBroker:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.connects = 0
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connects += 1
        try:
            await read_packet(reader)  # CONNECT
            await self.behaviour(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # the test is over; a cancelled handler would make asyncio log an error
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield
        finally:
            server.close()


@asynccontextmanager
async def uplink_running(
    tmp_path: Path,
    port: int,
    *,
    batches: int = 3,
    on_command: CommandHandler | None = None,
    **mqtt: object,
) -> AsyncIterator[MqttUplink]:
    """Gateway gw-1's uplink in this process, on a real buffer file holding `batches`
    batches, fast reconnects, `mqtt` settings on top; `on_command` takes its commands.
    Stopped after, within 15 s; the test fails if it ended on its own."""
    config = MqttConfig.model_validate(
        {"port": port, "reconnect_min": "100ms", "reconnect_max": "300ms", **mqtt}
    )
    store = Store(DurableQueue(tmp_path / "buffer.db", max_bytes=10_000_000))
    for i in range(batches):
        await store.append(lambda seq, i=i: f"batch {i}".encode())
    uplink = MqttUplink(
        config,
        Topics("city", "gw-1"),
        store,
        identity=Identity("gw-1", "b", "0", "c"),
        health=lambda: b'{"uplink": "..."}',
    )
    uplink.on_command = on_command
    task = asyncio.create_task(uplink.run())
    try:
        yield uplink
        assert not task.done(), "the uplink task ended"
    finally:
        uplink.stop()
        async with asyncio.timeout(15):
            await task
        store.close()


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Tracebacks, and what asyncio complains about (callbacks that raised, futures whose
    exception nobody retrieved)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.exc_info or r.name == "asyncio" or "Traceback" in r.getMessage()
    ]


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        (lambda r, w: refuse(0x86, r, w), "Bad user name or password (reason code 0x86)"),
        (lambda r, w: refuse(0x87, r, w), "Not authorized (reason code 0x87)"),
        (lambda r, w: refuse(0x84, r, w), 'set [mqtt] protocol = "3.1.1"'),
        (lambda r, w: refuse(0x8A, r, w), "Banned (reason code 0x8A)"),
        (lambda r, w: refuse(0x89, r, w), "Server busy (reason code 0x89)"),
        (hang_up, "closed the connection before accepting our CONNECT"),
        (not_mqtt, "answered our CONNECT with something that is not MQTT"),
        (
            lambda r, w: accept_then(never_answer, r, w, after=disconnect(0x8B)),
            "the broker disconnected us: Server shutting down (reason code 0x8B)",
        ),
        (
            lambda r, w: accept_then(never_answer, r, w, after=disconnect(0x97)),
            "Quota exceeded (reason code 0x97)",
        ),
        (
            lambda r, w: accept_then(never_answer, r, w, after=disconnect(0x00)),
            "Normal disconnection (reason code 0x00)",
        ),
        (
            lambda r, w: accept_then(malformed_puback, r, w),
            "the broker sent a packet we could not read",
        ),
        (
            lambda r, w: accept_then(puback_unknown_reason, r, w),
            "the broker sent a packet we could not read",
        ),
    ],
    ids=[
        "connack-bad-password",
        "connack-not-authorized",
        "connack-unsupported-protocol",
        "connack-banned",
        "connack-server-busy",
        "closes-before-connack",
        "answers-with-garbage",
        "disconnect-server-shutting-down",
        "disconnect-quota-exceeded",
        "disconnect-normal",
        "malformed-puback",
        "puback-with-unknown-reason-code",
    ],
)
async def test_whatever_the_broker_does_the_uplink_keeps_trying_and_says_why_in_words(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, behaviour: Behaviour, expected: str
) -> None:
    caplog.set_level(logging.INFO)
    peer = ScriptedBroker(behaviour)
    async with peer.running(), uplink_running(tmp_path, peer.port) as uplink:
        # The scripts that accept the CONNECT are online for a moment after each one.
        await _wait(
            lambda: peer.connects >= 3 and uplink.state in ("connecting", "offline"),
            15,
            "three connect attempts, and the third one over",
        )
        assert uplink.last_error is not None and expected in uplink.last_error
        assert "[code:" not in uplink.last_error
        assert uplink.store.stats.batches == 3  # nothing was taken off the disk
    assert problems(caplog) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings  # said once, not at every attempt
    assert expected in warnings[0]


async def test_a_broker_that_says_session_taken_over_is_believed_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def take_over(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_then(never_answer, reader, writer, after=disconnect(0x8E))

    peer = ScriptedBroker(take_over)
    async with peer.running(), uplink_running(tmp_path, peer.port) as uplink:
        await _wait(lambda: uplink.session_takeovers == 1, 10, "the takeover")
        await asyncio.sleep(5.0)  # the normal back-off here is at most 0.3 s
        assert peer.connects == 1, "reconnected at once: two gateways would flap"
        health = uplink.health()
        assert health.session_takeovers == 1 and health.takeover_since is not None
    assert problems(caplog) == []
    said = [r.getMessage() for r in caplog.records if "same client id" in r.getMessage()]
    assert len(said) == 1, said
    assert (
        "the broker handed our session to another client with the same client id "
        "'edge-gateway-gw-1': is a second gateway configured with id 'gw-1'?" in said[0]
    )


async def test_a_connect_to_a_silent_address_gives_up_within_the_connect_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, broker: Mosquitto, subscriber: Subscriber
) -> None:
    # The centre listens: a batch nobody subscribes to is not delivered (PUBACK 0x10).
    proxy = TcpProxy(broker.port)
    proxy.start()
    proxy.blackhole()  # accepts the TCP connection, then carries nothing: no CONNACK ever
    try:
        async with uplink_running(tmp_path, proxy.port, connect_timeout="1s") as uplink:
            started = time.monotonic()
            await _wait(lambda: proxy.connections >= 4, 10, "four connect attempts")
            assert time.monotonic() - started < 6.0  # ~1 s each, back to back
            assert uplink.last_error == ("the broker did not answer our CONNECT within 1s"), (
                uplink.last_error
            )
            proxy.restore()
            await _wait(lambda: uplink.state == "online", 15, "connected once the link is back")
            await _wait(lambda: uplink.store.stats.batches == 0, 15, "the batches delivered")
    finally:
        proxy.stop()
    assert problems(caplog) == []


async def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {what}")
        await asyncio.sleep(0.05)


# --- which MQTT version, against a real mosquitto -------------------------------------

DENY_DATA = "topic read #\ntopic write city/+/status\ntopic write city/+/health\n"


@pytest.mark.parametrize(("protocol", "mark"), [("5", "(p5,"), ("3.1.1", "(p2,")])
async def test_the_uplink_speaks_the_configured_mqtt_version_and_delivers(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, protocol: str, mark: str
) -> None:
    async with uplink_running(tmp_path, broker.port, protocol=protocol) as uplink:
        await _wait(lambda: len(subscriber.on("/data/history")) == 3, 10, "the three batches")
        assert uplink.health().protocol == protocol
    assert f"as edge-gateway-gw-1 {mark}" in broker.log.read_text()


async def test_under_mqtt_3_1_1_a_denied_publish_looks_stored_which_is_why_5_is_the_default(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(
        tmp_path / "broker", acl=DENY_DATA, extra_config="max_queued_messages 1000\n"
    )
    broker.start()
    sub = Subscriber(broker)
    try:
        async with uplink_running(tmp_path, broker.port, protocol="3.1.1") as uplink:
            await _wait(lambda: uplink.store.stats.batches == 0, 10, "the batches 'acknowledged'")
            assert uplink.state == "online" and uplink.health().denied == []
        await asyncio.sleep(0.5)
        assert sub.data_messages() == []  # deleted from disk, and the centre has none
    finally:
        sub.close()
        broker.kill()
