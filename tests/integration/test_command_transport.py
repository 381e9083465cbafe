"""The transport of signed commands in the uplink (gateway/uplink/mqtt.py), on a real
mosquitto.

The uplink runs in this process, on a real buffer file, with a stub handler: an async
function that records what it was given, when it started and ended, and answers JSON.
Judging and carrying out commands is the dispatcher's, tested on its own; here only the
bytes move (the uplink is test_broker_misbehaviour.py's `uplink_running`, gateway gw-1).
The centre's side is the centre's own client (gateway/centre/client.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from integration.test_broker_misbehaviour import uplink_running

from gateway.centre.client import BrokerAddress, CentreClient, CentreError, Connection, Received
from gateway.devtools.broker import Mosquitto
from gateway.devtools.rig import LinkProxy
from gateway.uplink import mqtt
from gateway.uplink.mqtt import MqttUplink
from gateway.uplink.topics import Topics

GATEWAY = "gw-1"
TOPICS = Topics("city", GATEWAY)
WITHIN = 5.0  # seconds any one expected thing may take on loopback


class Handler:
    """A stand-in for the dispatcher: answers `{"verb", "echo"}`; raises `failure` on the
    verbs in `fail_on`; waits for `release` (when given) before answering."""

    def __init__(
        self,
        *,
        delay: float = 0.0,
        fail_on: frozenset[str] = frozenset(),
        failure: type[BaseException] = RuntimeError,
    ) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.failure = failure
        self.release: asyncio.Event | None = None
        self.calls: list[tuple[str, bytes, float, float]] = []  # verb, payload, start, end
        self.started: list[str] = []
        self.running = 0
        self.most_at_once = 0

    async def __call__(self, verb: str, payload: bytes) -> bytes:
        start = time.monotonic()
        self.started.append(verb)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            if verb in self.fail_on:
                raise self.failure("a bug in the dispatcher")
            await asyncio.sleep(self.delay)
            if self.release is not None:
                await self.release.wait()
        finally:
            self.running -= 1
        self.calls.append((verb, payload, start, time.monotonic()))
        return json.dumps({"verb": verb, "echo": payload.decode()}).encode()


async def until(condition: Callable[[], bool], what: str, within: float = WITHIN) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {within:g}s")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running_uplink(
    tmp_path: Path, port: int, handler: Handler, *, protocol: str = "5"
) -> AsyncIterator[MqttUplink]:
    """An uplink with `handler` on commands, once the broker has answered its subscription."""
    async with uplink_running(
        tmp_path, port, batches=0, on_command=handler, protocol=protocol
    ) as uplink:
        await until(lambda: uplink.command_subscription != "pending", "SUBACK for commands")
        yield uplink


class Centre:
    """The centre's side: sends commands and keeps every message it receives."""

    def __init__(self, client: CentreClient) -> None:
        self.client = client
        self.received: list[Received] = []

    async def send(
        self,
        verb: str,
        payload: bytes = b"{}",
        *,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        retain: bool = False,
    ) -> None:
        await self.client.publish(
            TOPICS.command(verb),
            payload,
            retain=retain,
            response_topic=response_topic,
            correlation_data=correlation,
        )

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.received if m.topic == topic]

    async def read(self) -> None:
        with contextlib.suppress(CentreError):
            async for message in self.client.messages():
                self.received.append(message)


@asynccontextmanager
async def centre(port: int, *topics: str) -> AsyncIterator[Centre]:
    connection = Connection(BrokerAddress("127.0.0.1", port))  # MQTT 5
    async with CentreClient(connection) as client:
        for topic in topics:
            await client.subscribe(topic)
        side = Centre(client)
        reader = asyncio.create_task(side.read())
        try:
            yield side
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def data_flows(uplink: MqttUplink, side: Centre) -> None:
    """A batch appended to the buffer reaches the centre's data subscription."""
    before = len(side.on(TOPICS.data))
    await uplink.store.append(lambda seq: f"batch {seq}".encode())
    await until(lambda: len(side.on(TOPICS.data)) > before, "data batch at the centre")


def commands_refused_broker(workdir: Path) -> Mosquitto:
    """A mosquitto that refuses anyone's subscription to command topics. Its acl_file
    never refuses a SUBSCRIBE (mosquitto 2.0 filters deliveries instead), so this uses
    the dynamic-security plugin that ships with it."""
    found = [*Path("/usr/lib").glob("*/mosquitto_dynamic_security.so")]
    plugin = found[0] if found else None
    if plugin is None:
        pytest.skip("mosquitto's dynamic-security plugin is not installed")
    workdir.mkdir(parents=True)
    rules = workdir / "dynamic-security.json"
    allow_all = {"publishClientSend": True, "publishClientReceive": True}
    rules.write_text(
        json.dumps(
            {
                "defaultACLAccess": {**allow_all, "subscribe": True, "unsubscribe": True},
                "clients": [],
                "groups": [{"groupname": "anonymous", "roles": [{"rolename": "no-commands"}]}],
                "roles": [
                    {
                        "rolename": "no-commands",
                        "acls": [
                            {
                                "acltype": "subscribePattern",
                                "topic": "city/+/cmd/#",
                                "priority": 0,
                                "allow": False,
                            }
                        ],
                    }
                ],
                "anonymousGroup": "anonymous",
            }
        )
    )
    return Mosquitto(workdir, extra_config=f"plugin {plugin}\nplugin_opt_config_file {rules}\n")


# --- where the reply goes -------------------------------------------------------------


async def test_a_reply_goes_to_the_response_topic_with_the_commands_correlation_data(
    tmp_path: Path, broker: Mosquitto
) -> None:
    handler = Handler()
    # A response topic outside the gateway's tree is honoured (MQTT 5 semantics).
    asked = "centre/replies/ops-1"
    async with (
        running_uplink(tmp_path, broker.port, handler) as uplink,
        centre(broker.port, asked, TOPICS.reply("#")) as side,
    ):
        assert uplink.command_subscription == "subscribed"
        await side.send("ping", b'{"n": 1}', response_topic=asked, correlation=b"nonce-0001")
        await until(lambda: bool(side.on(asked)), "reply on the response topic")
        await asyncio.sleep(0.2)  # nothing else is coming
    [reply] = side.on(asked)
    assert reply.correlation_data == b"nonce-0001"
    assert json.loads(reply.payload) == {"verb": "ping", "echo": '{"n": 1}'}
    assert side.on(TOPICS.reply("ping")) == [], "replied twice"
    assert [(verb, payload) for verb, payload, *_ in handler.calls] == [("ping", b'{"n": 1}')]
    assert uplink.commands_received == 1


async def test_without_a_response_topic_the_reply_goes_to_the_gateways_reply_topic(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with (
        running_uplink(tmp_path, broker.port, Handler()),
        centre(broker.port, TOPICS.reply("+")) as side,
    ):
        await side.send("status")
        await until(lambda: bool(side.on(TOPICS.reply("status"))), "reply on reply/status")
    [reply] = side.on(TOPICS.reply("status"))
    assert reply.correlation_data is None
    assert json.loads(reply.payload)["verb"] == "status"


async def test_under_mqtt_3_1_1_the_reply_goes_to_the_reply_topic_as_properties_do_not_exist(
    tmp_path: Path, broker: Mosquitto
) -> None:
    asked = "centre/replies/ops-1"
    async with (
        running_uplink(tmp_path, broker.port, Handler(), protocol="3.1.1") as uplink,
        centre(broker.port, asked, TOPICS.reply("+")) as side,
    ):
        assert uplink.command_subscription == "subscribed"
        # The centre speaks 5 and names a response topic; the gateway never sees it.
        await side.send("ping", response_topic=asked, correlation=b"nonce-0002")
        await until(lambda: bool(side.on(TOPICS.reply("ping"))), "reply on reply/ping")
    assert side.on(asked) == []
    assert json.loads(side.on(TOPICS.reply("ping"))[0].payload)["verb"] == "ping"


async def test_a_response_topic_that_cannot_be_published_to_gets_the_reply_on_the_reply_topic(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.uplink")
    async with (
        running_uplink(tmp_path, broker.port, Handler()),
        centre(broker.port, TOPICS.reply("+")) as side,
    ):
        for n in range(2):
            await side.send("ping", response_topic="centre/+/replies", correlation=b"n%d" % n)
        await until(lambda: len(side.on(TOPICS.reply("ping"))) == 2, "both replies")
    assert [m.correlation_data for m in side.on(TOPICS.reply("ping"))] == [b"n0", b"n1"]
    said = [r for r in caplog.records if "cannot be published to" in r.getMessage()]
    assert len(said) == 1, "said once"
    assert "'centre/+/replies'" in said[0].getMessage()


# --- order, retained commands, a failing handler, a full queue -------------------------


async def test_commands_sent_back_to_back_are_carried_out_one_at_a_time_in_order(
    tmp_path: Path, broker: Mosquitto
) -> None:
    handler = Handler(delay=0.3)
    async with (
        running_uplink(tmp_path, broker.port, handler) as uplink,
        centre(broker.port, TOPICS.reply("+"), TOPICS.data) as side,
    ):
        await side.send("config-apply", b"1")
        await side.send("config-apply", b"2")
        await side.send("ping", b"3")
        # The session keeps reading while a command is carried out: data still flows.
        await data_flows(uplink, side)
        await until(lambda: len(handler.calls) == 3, "three commands carried out")
        await until(lambda: len(side.on(TOPICS.reply("ping"))) == 1, "the last reply")
    assert [payload for _, payload, *_ in handler.calls] == [b"1", b"2", b"3"]
    assert handler.most_at_once == 1
    for (*_, first_end), (_, _, second_start, _) in zip(
        handler.calls, handler.calls[1:], strict=False
    ):
        assert second_start >= first_end, "a command started before the previous one ended"
    echoes = [json.loads(m.payload)["echo"] for m in side.on(TOPICS.reply("config-apply"))]
    assert echoes == ["1", "2"]


async def test_a_retained_command_is_ignored_and_a_live_one_is_answered(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.uplink")
    async with centre(broker.port) as early:
        await early.send("reboot", b"stale", retain=True)  # left behind on the broker
    handler = Handler()
    async with (
        running_uplink(tmp_path, broker.port, handler) as uplink,
        centre(broker.port, TOPICS.reply("+")) as side,
    ):
        await until(lambda: uplink.commands_retained_ignored == 1, "the retained command seen")
        await side.send("ping", b"live")
        await until(lambda: bool(side.on(TOPICS.reply("ping"))), "reply to the live command")
    assert handler.started == ["ping"]
    assert side.on(TOPICS.reply("reboot")) == []
    assert uplink.commands_received == 1
    said = [r for r in caplog.records if "ignored a retained command" in r.getMessage()]
    assert len(said) == 1 and "city/gw-1/cmd/reboot" in said[0].getMessage()


@pytest.mark.parametrize("failure", [RuntimeError, asyncio.CancelledError])
async def test_a_handler_that_raises_does_not_end_the_session_and_sends_no_reply(
    tmp_path: Path,
    broker: Mosquitto,
    caplog: pytest.LogCaptureFixture,
    failure: type[BaseException],
) -> None:
    # A stray CancelledError too: it must not end the task that carries commands out.
    handler = Handler(fail_on=frozenset({"boom"}), failure=failure)
    async with (
        running_uplink(tmp_path, broker.port, handler) as uplink,
        centre(broker.port, TOPICS.reply("+"), TOPICS.data) as side,
    ):
        await side.send("boom")
        await side.send("ping")
        await until(lambda: bool(side.on(TOPICS.reply("ping"))), "reply to the next command")
        await data_flows(uplink, side)
        assert uplink.connects == 1 and uplink.state == "online"
        await side.send("boom")
        await side.send("ping")
        await until(lambda: len(side.on(TOPICS.reply("ping"))) == 2, "reply after a 2nd failure")
    assert side.on(TOPICS.reply("boom")) == []
    assert uplink.command_handler_failures == 2
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, "the bug's traceback is logged once"
    assert "failed on a 'boom' command" in tracebacks[0].getMessage()


async def test_commands_beyond_the_queue_are_dropped_counted_and_said_once(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    monkeypatch.setattr(mqtt, "COMMAND_QUEUE", 2)
    caplog.set_level(logging.INFO, logger="gateway.uplink")
    handler = Handler()
    handler.release = asyncio.Event()
    async with (
        running_uplink(tmp_path, broker.port, handler) as uplink,
        centre(broker.port, TOPICS.reply("+")) as side,
    ):
        await side.send("slow", b"0")
        await until(lambda: handler.started == ["slow"], "the first command begun")
        for n in range(1, 5):
            await side.send("slow", str(n).encode())
        await until(lambda: uplink.commands_received == 5, "every command arrived")
        assert uplink.commands_dropped == 2
        handler.release.set()
        await until(lambda: len(side.on(TOPICS.reply("slow"))) == 3, "three replies")
    assert [payload for _, payload, *_ in handler.calls] == [b"0", b"1", b"2"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("dropped a command" in m for m in messages) == 1, messages
    assert any("2 were dropped meanwhile" in m for m in messages), messages


async def under_way_across_a_restart(
    tmp_path: Path, broker: Mosquitto, handler: Handler
) -> tuple[list[Received], int]:
    """A config-apply under way while the broker restarts, two pings waiting behind it,
    a ping sent in the next session, where the apply then ends. The config-apply replies
    the next session saw, and the commands dropped."""
    handler.release = asyncio.Event()
    async with running_uplink(tmp_path, broker.port, handler) as uplink:
        async with centre(broker.port, TOPICS.reply("+")) as side:
            await side.send("config-apply", b"0")
            await until(lambda: handler.started == ["config-apply"], "the command begun")
            await side.send("ping", b"1")
            await side.send("ping", b"2")
            await until(lambda: uplink.commands_received == 3, "every command arrived")
        await asyncio.to_thread(broker.restart)
        await until(lambda: uplink.connects == 2, "a reconnect", within=10)
        await until(lambda: uplink.command_subscription == "subscribed", "a new subscription")
        async with centre(broker.port, TOPICS.reply("+")) as side:
            await side.send("ping", b"3")
            await asyncio.sleep(0.2)
            assert handler.started == ["config-apply"], "ran beside the command under way"
            handler.release.set()
            await until(lambda: bool(side.on(TOPICS.reply("ping"))), "reply to the new command")
            await asyncio.sleep(0.3)
            dropped = uplink.commands_dropped
    assert [payload for _, payload, *_ in handler.calls] == [b"0", b"3"]
    return side.on(TOPICS.reply("config-apply")), dropped


async def test_a_command_under_way_when_the_connection_drops_is_finished_and_replied_to_next_session(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker restart does not cut a config apply in half, and its sender still hears
    the outcome: the reply goes out in the next session. The commands waiting behind it
    are dropped (their replies could not be sent), and the next session's wait their turn."""
    caplog.set_level(logging.INFO, logger="gateway.uplink")
    replies, dropped = await under_way_across_a_restart(tmp_path, broker, Handler())
    assert len(replies) == 1, "the config-apply's reply, once, in the next session"
    assert dropped == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("ended with 2 command(s) waiting their turn: dropped" in m for m in messages)
    assert any(
        "while a 'config-apply' command was carried out; its reply goes out in the next" in m
        for m in messages
    )


async def test_a_config_apply_that_ends_while_the_link_is_down_is_replied_to_at_the_reconnect(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """What a config apply that changes [mqtt] does: its session ends while it is carried
    out and the outcome is known before the next begins. The sender, still on the broker,
    gets the reply, with its correlation data, once the gateway is back."""
    handler = Handler()
    handler.release = asyncio.Event()
    proxy = LinkProxy(broker.port)
    proxy.start()
    try:
        async with (
            running_uplink(tmp_path, proxy.port, handler) as uplink,
            centre(broker.port, TOPICS.reply("+")) as side,
        ):
            await side.send("config-apply", b"0", correlation=b"apply-1")
            await until(lambda: handler.started == ["config-apply"], "the command begun")
            proxy.down()
            await until(lambda: uplink.state != "online", "the link down")
            handler.release.set()
            await until(lambda: len(handler.calls) == 1, "the apply done, the link down")
            assert side.on(TOPICS.reply("config-apply")) == []
            proxy.restore()
            await until(lambda: bool(side.on(TOPICS.reply("config-apply"))), "the reply", within=15)
            await asyncio.sleep(0.3)
            [reply] = side.on(TOPICS.reply("config-apply"))
            assert reply.correlation_data == b"apply-1"
    finally:
        proxy.stop()


async def test_a_reply_older_than_the_carry_bound_is_lost_and_said(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    monkeypatch.setattr(mqtt, "REPLY_CARRY", -1.0)  # every carried reply is too old
    caplog.set_level(logging.INFO, logger="gateway.uplink")
    replies, _ = await under_way_across_a_restart(tmp_path, broker, Handler())
    assert replies == [], "a stale reply crossed into a new session"
    messages = [r.getMessage() for r in caplog.records]
    assert any("the reply to a 'config-apply' command is lost: no session" in m for m in messages)


# --- the subscription -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "reason"),
    [("5", "Not authorized (reason code 0x87)"), ("3.1.1", "Unspecified error (reason code 0x80)")],
)
async def test_a_refused_command_subscription_is_reported_and_data_still_flows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, protocol: str, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.uplink")
    broker = commands_refused_broker(tmp_path / "broker")
    broker.start()
    try:
        async with (
            running_uplink(tmp_path, broker.port, Handler(), protocol=protocol) as uplink,
            centre(broker.port, TOPICS.data) as side,
        ):
            assert uplink.command_subscription == f"refused: {reason}"
            assert uplink.command_subscription_refusals == 1
            await data_flows(uplink, side)
            assert uplink.state == "online" and uplink.connects == 1
    finally:
        broker.kill()
    said = [r.getMessage() for r in caplog.records if "refused our subscription" in r.getMessage()]
    assert len(said) == 1
    assert "city/gw-1/cmd/+" in said[0] and reason in said[0]
    assert "commands cannot reach this gateway" in said[0]


async def test_the_command_subscription_is_renewed_after_the_broker_restarts(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with running_uplink(tmp_path, broker.port, Handler()) as uplink:
        async with centre(broker.port, TOPICS.reply("+")) as side:
            await side.send("ping", b"before")
            await until(lambda: bool(side.on(TOPICS.reply("ping"))), "reply before the restart")
        await asyncio.to_thread(broker.restart)
        await until(lambda: uplink.connects == 2, "a reconnect", within=10)
        await until(lambda: uplink.command_subscription == "subscribed", "a new subscription")
        async with centre(broker.port, TOPICS.reply("+")) as side:
            await side.send("ping", b"after")
            await until(lambda: bool(side.on(TOPICS.reply("ping"))), "reply after the restart")
        assert json.loads(side.on(TOPICS.reply("ping"))[0].payload)["echo"] == "after"


async def test_without_a_handler_the_uplink_does_not_subscribe_to_commands(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with (
        uplink_running(tmp_path, broker.port, batches=0) as uplink,
        centre(broker.port, TOPICS.reply("+")) as side,
    ):
        await until(lambda: uplink.connects == 1, "a connection")
        await side.send("ping")
        await asyncio.sleep(0.3)
        assert side.on(TOPICS.reply("ping")) == []
        assert uplink.command_subscription == "off" and uplink.commands_received == 0
