"""Publish buffered batches to the broker: QoS 1, several in flight, delete on PUBACK.

The uplink never holds data of its own: it reads batches from the durable buffer
in seq order, publishes up to `max_inflight` at once, and acks each batch to the
buffer only when the broker's PUBACK said it stored it. When the connection drops,
every unacknowledged batch is still in the buffer and is sent again, oldest first,
after a reconnect with jittered exponential back-off. So delivery is
at-least-once; the centre drops duplicates by (gateway_id, boot_id, seq).

What the broker can say, and what the uplink does about it (docs/topics.md):

- A PUBACK with a reason code >= 0x80 (MQTT 5; an ACL denial is 0x87) means the
  broker did not store the message. The batch stays on disk; its lane sends nothing
  newer, lets what is in flight settle, and offers the refused batch again after a
  pause that grows from `DENIED_RETRY` (each lane stays in order; what was in flight
  may be sent again). Health says `denied`, with the topic, the reason and a count.
- A DISCONNECT "Session taken over" (0x8E), or a broker that closes our connection
  without a word several times in a row just after accepting it, means another
  client uses our client id: the uplink says so and reconnects only every minute
  or more (`TAKEOVER_BACKOFF`), so two gateways do not knock each other off every
  few seconds.
- Anything else (a refused CONNECT, bad credentials, a disconnect with any reason, a
  malformed packet, a silent link) is logged once as a sentence, and the uplink
  reconnects within `reconnect_max`: nothing the broker does ends it.

A retained status topic carries a birth message on connect and the MQTT last
will ("offline") when the gateway disappears without saying goodbye.

Signed commands come in on `{prefix}/{id}/cmd/{verb}` (docs/topics.md, "Commands"):
when the app sets `on_command`, every session subscribes to them at QoS 1; the
handler judges and carries out each one, one at a time in arrival order, in a task of
the uplink's lifetime, and the reply goes out in the session the command came in on; or,
for a command whose session ended while it was carried out (a config apply that changes
[mqtt] always ends it), in the next session, if that begins within `REPLY_CARRY`.
The transport only moves bytes: it never looks inside a command or a reply.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from buffer import Entry
from drivers.core.backoff import backoff_delay
from drivers.core.clock import Clock, SystemClock, wait_event
from gateway.store import Store
from gateway.uplink.topics import Topics, is_topic_name
from gateway.wire.messages import DenialHealth, Identity, Status, UplinkHealth, encode

if TYPE_CHECKING:  # the daemon runs on the config's records (gateway/loaded.py)
    from gateway.uplink.config import MqttConfig

log = logging.getLogger("gateway.uplink")

SIDE_BACKLOG = 1000  # events and state changes kept in memory while offline
PROBE_SPREAD = 4.0  # the quick probe after a silent drop: within reconnect_min x this
WEDGED_SLACK = 60.0  # seconds beyond every bound before the uplink counts as wedged
ACK_FLUSH_INTERVAL = 0.2  # seconds between grouped deletes of acknowledged batches
ALARM_WINDOW = 5  # alarm publishes in flight at once, on top of the data window
HISTORY_WINDOW = 8  # backlog publishes in flight at once (measured: bench/drain_bench.py)
HISTORY_PAUSE = 0.002  # seconds the backlog yields between chunks of 2 x its window
STOP_DRAIN_SECONDS = 5.0  # on stop, how long to keep publishing what is on disk
GOODBYE_TIMEOUT = 2.0  # on stop, how long the 'offline' status may wait for its PUBACK
DISCONNECT_WAIT = 2.0  # on stop, how long a clean DISCONNECT may take
STABLE_SESSION = 10.0  # a session up this long (seconds) resets the reconnect back-off
# A lane whose publish was refused offers it again after 1-2 s, then 2-4 s, ... up to
# 30-60 s: an operator who fixes an ACL sees data within a minute, and a denied
# gateway costs the link one batch a minute.
DENIED_RETRY = (2.0, 60.0)
# PUBACK 0x10: the broker took a publish that matched no subscription and so delivered it
# to nobody (mosquitto after a restart, before the centre's consumers are back: it does
# not restore shared subscriptions). A batch it took so has not reached the centre: it
# stays on disk and is offered again like a refused one.
NO_MATCHING_SUBSCRIBERS = 0x10
# After another client took our session: 30-60 s, then 60-120 s, ... up to 2.5-5 min.
TAKEOVER_BACKOFF = (60.0, 300.0)
TAKEOVER_QUIET = 600.0  # a session that lasts this long (seconds) ends a takeover episode
# A broker that closes our connection without a word SUSPECT_DROPS times in a row, each
# time sooner than SUSPECT_SESSION seconds after accepting it, and accepts the quick
# reconnect that follows each drop, is handing our session to another client:
# mosquitto 2.0 and every MQTT 3.1.1 broker do that without sending "Session taken
# over". A broker that went away refuses the quick reconnect, which breaks the chain.
SUSPECT_SESSION = 15.0
SUSPECT_DROPS = 3
SESSION_TAKEN_OVER = 0x8E
NOT_AUTHORIZED = 0x87  # PUBACK: the broker's ACL refused the topic
OVERTAKEN_GRACE = 1.0  # seconds a publish may stay unanswered after later ones were answered
COMMAND_QUEUE = 16  # commands waiting their turn; beyond it a command is dropped
REPLY_CARRY = 300.0  # seconds a reply made after its session ended waits for the next one


class _Stopping(Exception):
    """Raised inside a session to leave it after a clean goodbye."""


class _ClosedBeforeConnack(aiomqtt.MqttError):
    """The broker (or whatever listens there) ended the connection before accepting it."""


class _Reconfigured(Exception):
    """Raised inside a session to leave it, after saying so, for a new configuration."""


class _LinkDead(Exception):
    """Publishes are in flight but no PUBACK came for `publish_timeout`: a silent link."""


# --- what the broker said, in words --------------------------------------------------


def reason_text(code: ReasonCode | int | None) -> str:
    """'Not authorized (reason code 0x87)': the name the MQTT 5 standard gives, and the number."""
    if code is None:
        return "no reason given"
    if isinstance(code, ReasonCode):
        try:
            name = code.getName()
        except (KeyError, ValueError):
            name = "an unknown reason"
        return f"{name} (reason code 0x{code.value:02X})"
    return f"reason code {code}"


_CONNACK_HINTS = {
    0x84: ': the broker does not speak MQTT 5; set [mqtt] protocol = "3.1.1"',
    0x85: ": the broker does not accept our client id; check [mqtt] client_id",
    0x86: ": check [mqtt] username and password",
    0x87: ": check [mqtt] username and password, and that the broker lets this user connect",
    0x8A: ": the broker has banned this client",
    0x9C: ": the broker asks us to use another server; point [mqtt] host at it",
    0x9D: ": the broker has moved; point [mqtt] host at its new address",
}

_DISCONNECT_HINTS = {
    0x87: ": this user may not do what we did (check the broker's ACL)",
    0x8B: ": the broker is shutting down",
    0x89: ": the broker is overloaded",
    0x93: ": we had more publishes in flight than the broker allows (lower [mqtt] max_inflight)",
    0x95: ": a batch was larger than the broker accepts (lower [batch] max_readings)",
    0x97: ": we exceeded a quota the broker enforces",
    0x98: ": an administrator disconnected us",
    0x9C: ": the broker asks us to use another server; point [mqtt] host at it",
    0x9D: ": the broker has moved; point [mqtt] host at its new address",
    0xA0: ": the broker limits how long a connection may last",
}


def describe_connect_failure(
    err: BaseException,
    cause: BaseException | None,
    where: str,
    timeout: float,
    ending: Ending | None = None,
) -> tuple[str, int | None]:
    """Why a connect attempt failed, as a sentence, and the CONNACK reason code if any.
    `cause` is what the socket raised, `ending` how paho saw the connection end."""
    if isinstance(err, _ClosedBeforeConnack) and ending is not None:
        if ending.from_broker:
            return f"the broker disconnected us before accepting us: {reason_text(ending.code)}", (
                ending.code.value
            )
        if ending.code.value == 0x82:
            return (
                f"{where} answered our CONNECT with something that is not MQTT "
                "(the wrong port, or a proxy in the way?)",
                None,
            )
        return f"{where} closed the connection before accepting our CONNECT", None
    rc = getattr(err, "rc", None)
    if isinstance(err, aiomqtt.MqttCodeError) and isinstance(rc, ReasonCode):
        # A CONNACK that refused us.
        return f"the broker refused the connection: {reason_text(rc)}" + _CONNACK_HINTS.get(
            rc.value, ""
        ), rc.value
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            "TLS: the broker's certificate was not accepted (certificate verify failed: "
            f"{cause.verify_message}); check [mqtt.tls] ca_file and the broker's name",
            None,
        )
    if isinstance(cause, ssl.SSLError):
        return (
            f"TLS handshake with {where} failed ({getattr(cause, 'reason', None) or cause})",
            None,
        )
    if isinstance(cause, ConnectionRefusedError):
        return f"nothing accepts connections at {where} (connection refused)", None
    if isinstance(cause, TimeoutError):
        return f"{where} did not answer within {timeout:g}s (TCP connect timed out)", None
    if isinstance(cause, socket.gaierror):
        return f"cannot resolve the broker's host name ({cause.strerror})", None
    if isinstance(cause, OSError):
        return f"cannot connect to {where} ({cause.strerror or cause})", None
    if str(err) == "Operation timed out":
        return f"the broker did not answer our CONNECT within {timeout:g}s", None
    return f"cannot connect to {where} ({err})", None


@dataclass(frozen=True, slots=True)
class Ending:
    """How a connection ended, as paho reported it."""

    from_broker: bool  # a DISCONNECT packet from the broker, not a socket event
    code: ReasonCode
    text: str | None  # the broker's ReasonString, if it sent one (MQTT 5)


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """Why a session (or a connect attempt) ended. `kind` drives the back-off:
    connect, stopped, reconfigured, takeover, disconnected, closed, keepalive, protocol,
    link_dead, internal."""

    kind: str
    reason: str  # a sentence for the log and health's last_error
    code: int | None = None


def describe_ending(ending: Ending, *, keepalive: float, refused: bool) -> SessionEnd:
    """A connection that ended while up: what the broker (or the socket) said, in words."""
    code = ending.code.value
    said = f" ('{ending.text}')" if ending.text else ""
    if ending.from_broker:
        if code == SESSION_TAKEN_OVER:
            return SessionEnd("takeover", f"the broker said {reason_text(ending.code)}{said}", code)
        hint = _DISCONNECT_HINTS.get(code, "")
        return SessionEnd(
            "disconnected",
            f"the broker disconnected us: {reason_text(ending.code)}{said}{hint}",
            code,
        )
    if code == 0x8D:  # paho: no PINGRESP or any other byte within the keepalive
        return SessionEnd(
            "keepalive", f"the broker did not answer within the keepalive ({keepalive:g}s)", None
        )
    if code == 0x82:  # paho: a packet it could not decode, or one out of place
        return SessionEnd(
            "protocol", "the broker sent a packet we could not read (malformed or out of place)"
        )
    if refused:
        return SessionEnd(
            "closed", "the broker closed the connection right after refusing a publish"
        )
    return SessionEnd("closed", "the broker or the network closed the connection without a word")


# --- the client: aiomqtt plus what it does not expose --------------------------------


class _QuietFilter(logging.Filter):
    """paho and aiomqtt log every failed attempt (some at ERROR); the uplink says what
    happened in sentences itself. Their lines are kept for debug logging only."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return log.isEnabledFor(logging.DEBUG)


_client_log = logging.getLogger("gateway.uplink.client")
_client_log.addFilter(_QuietFilter())


class _Client(aiomqtt.Client):
    """aiomqtt's client, plus what the uplink needs and aiomqtt 2.x does not expose: the
    PUBACK reason code of each publish, why the connection ended, a connect attempt
    bounded as a whole, the broker's Receive Maximum honoured, and a socket that is
    closed, never left behind, however the session ended.

    It overrides aiomqtt's private callbacks (`_on_connect`, `_on_publish`,
    `_on_disconnect`, the `_on_socket_*` registrations) and `_client_connect`, and calls
    paho's `_sock_close` and sets its `_max_inflight_messages`: acceptable
    because aiomqtt is pinned < 3 (pyproject.toml), and tests/integration/test_broker_*.py
    exercise each against a real broker.
    """

    def __init__(self, *args: Any, connect_timeout: float, inflight: int, **kwargs: Any) -> None:
        super().__init__(*args, logger=_client_log, **kwargs)
        self.connect_timeout = connect_timeout
        self._inflight_wanted = inflight
        self._client.max_inflight_messages_set(inflight)
        self._client.connect_timeout = connect_timeout  # TCP connect, and TLS handshake
        self._acks: dict[int, asyncio.Future[ReasonCode]] = {}
        self.connect_error: BaseException | None = None  # what paho's connect raised
        self.ending: Ending | None = None

    # Connecting and closing.

    def _client_connect(self) -> None:
        # Runs on an executor thread. The CONNACK wait (aiomqtt's `timeout`) gets what
        # the TCP connect left of the attempt's budget.
        started = time.monotonic()
        try:
            super()._client_connect()
        except Exception as err:
            self.connect_error = err
            raise
        self.timeout = max(0.5, self.connect_timeout - (time.monotonic() - started))

    async def connect(self) -> None:
        disconnected = self._disconnected
        try:
            await self.__aenter__()
        except BaseException:
            self._drop_socket()
            raise
        # aiomqtt replaces a `_disconnected` that completed while it connected (a broker
        # that sends DISCONNECT right after CONNACK) with a fresh one, losing the news.
        # This client connects once: keep it, so the session ends at once, and why.
        if disconnected.done():
            self._disconnected = disconnected
        self.timeout = DISCONNECT_WAIT

    async def close(self, *, graceful: bool) -> None:
        """graceful: a DISCONNECT first (the broker then discards our last will). Otherwise
        only the socket closes, so that the broker publishes the will if we stay away."""
        if graceful:
            with contextlib.suppress(Exception):
                await self.__aexit__(None, None, None)
        self._drop_socket()
        for future in (self._connected, self._disconnected):
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: asyncio must not complain about it later

    def _drop_socket(self) -> None:
        # paho's socket, its reader and aiomqtt's misc task go away together; a socket left
        # open could complete a CONNECT later and fight our next session for the client id.
        self._client._sock_close()

    # Publishing with the reason code.

    async def publish_acked(
        self,
        topic: str,
        payload: bytes | str,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> ReasonCode:
        """Publish at QoS 1; return the PUBACK's reason code (MQTT 3.1.1: always Success).
        No timeout of its own: the uplink's watchdog judges the link. `properties`: MQTT 5
        PUBLISH properties (a reply's correlation data)."""
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        # The PUBACK is read by a callback of this event loop, so it cannot have arrived
        # between paho's publish() above and this line.
        future: asyncio.Future[ReasonCode] = self._loop.create_future()
        self._acks[info.mid] = future
        try:
            return await future
        finally:
            self._acks.pop(info.mid, None)

    # paho's callbacks (aiomqtt registers these bound methods with paho).

    # aiomqtt registers the socket's reader and writer with call_soon_threadsafe; when the
    # broker hangs up in between (mosquitto does, right after refusing a publish), the
    # registration runs on a closed descriptor and asyncio prints a traceback. These two
    # do what aiomqtt's do, only on the socket that is still paho's.

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        def read() -> None:
            while True:
                client.loop_read()
                # An SSL socket may hold decoded bytes that select() does not see.
                pending = getattr(client.socket(), "pending", None)
                if pending is None or pending() <= 0:
                    return

        self._register(client, sock, self._loop.add_reader, read, with_misc_task=True)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._register(client, sock, self._loop.add_writer, client.loop_write)

    def _register(
        self,
        client: paho.Client,
        sock: Any,
        add: Callable[..., None],
        step: Callable[[], object],
        *,
        with_misc_task: bool = False,
    ) -> None:
        """Watch paho's socket for `step` (a read or a write), once the loop gets to it and
        only if the socket is still paho's; an error in `step` ends the connection."""

        def on_ready() -> None:
            try:
                step()
            except Exception as exc:  # a broken socket, or paho choking on a packet
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def register() -> None:
            current = client.socket()
            if current is not None and current is sock and current.fileno() >= 0:
                add(current.fileno(), on_ready)
                if with_misc_task:
                    self._misc_task = self._loop.create_task(self._misc_loop())

        self._loop.call_soon_threadsafe(register)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if sock.fileno() >= 0:
            self._loop.remove_writer(sock.fileno())

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        receive_maximum = getattr(properties, "ReceiveMaximum", None)
        if isinstance(receive_maximum, int) and receive_maximum > 0:
            # paho does not honour the broker's Receive Maximum (a broker that gets more
            # unacknowledged publishes than it allows disconnects us: 0x93), and its public
            # setter refuses a connected client; nothing has been published yet here.
            self._client._max_inflight_messages = min(self._inflight_wanted, receive_maximum)
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        future = self._acks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        if self.ending is None:
            text = getattr(properties, "ReasonString", None)
            self.ending = Ending(flags.is_disconnect_packet_from_server, reason_code, text)
        for future in self._acks.values():
            if not future.done():
                future.set_exception(aiomqtt.MqttError("the connection ended"))
        if not self._connected.done():
            # Closed before the CONNACK: fail the attempt now, not after connect_timeout.
            self._connected.set_exception(_ClosedBeforeConnack())
        super()._on_disconnect(client, userdata, flags, reason_code, properties)


# --- lanes and refusals ------------------------------------------------------------


@dataclass(slots=True)
class Denial:
    """A topic the broker refuses to store publishes on (MQTT 5 PUBACK reason >= 0x80)."""

    topic: str
    reason_code: int
    reason: str
    since: float  # unix time of the first refusal of this episode
    refused: int = 0

    def health(self) -> DenialHealth:
        return DenialHealth(
            self.topic, self.reason_code, self.reason, round(self.since, 3), self.refused
        )


class Lane:
    """One durable queue published to one topic, oldest first, with its own window.

    The data lane carries the backlog; the alarm lane is small and has its own
    window, so an alarm never waits behind batches of data. A lane whose publish is
    refused sends nothing newer: it rewinds to the refused entry and offers it again,
    alone, after a pause; once the broker accepts it, the full window opens again.
    """

    def __init__(
        self,
        name: str,
        store: Store,
        topic: str,
        window: int,
        *,
        history: bool = False,
        what: str = "batch",
    ) -> None:
        self.name = name
        self.store = store
        self.topic = topic
        self.window = window
        self.history = history  # carries only what was on disk when the session began
        self.what = what  # what one entry is, for the log
        self.start = 0  # this session: publish entries with seq > start ...
        self.upper: int | None = None  # ... and <= upper (None: no end, follow new data)
        self.acked: list[int] = []
        self.inflight = 0
        self.idle = False  # everything on disk has been handed to the client
        self.paused = False  # waiting to offer a refused entry again
        self.limit = window  # publishes allowed in flight now (1 while probing a refusal)
        self.rewind_to: int | None = None  # the oldest refused seq, not yet rewound to
        self.refusals = 0  # refused probes in a row
        self.retry_at = 0.0  # monotonic time before which a refused lane stays quiet
        self.changed = asyncio.Event()  # a publish finished or was refused
        self.wake = asyncio.Event()  # what the pump waits on when it has nothing to send
        self.published = 0
        self.published_bytes = 0

    def begin_session(self, *, refused_before: bool) -> None:
        self.inflight = 0
        self.idle = False
        self.paused = False
        self.rewind_to = None
        self.limit = 1 if refused_before else self.window
        self.changed = asyncio.Event()
        self.wake = asyncio.Event() if self.history else self.store.appended

    @property
    def busy(self) -> bool:
        if self.inflight:
            return True
        if self.paused:  # nothing will move before the broker accepts again
            return False
        if self.history:
            return not self.idle
        return not self.idle or self.store.appended.is_set()

    async def wait_for_slot(self) -> None:
        while self.inflight >= self.limit and self.rewind_to is None:
            self.changed.clear()
            await self.changed.wait()

    async def wait_settled(self) -> None:
        while self.inflight:
            self.changed.clear()
            await self.changed.wait()

    def accepted(self, entry: Entry) -> None:
        self.published += 1
        self.published_bytes += len(entry.payload)
        self.acked.append(entry.seq)
        self.refusals = 0
        self.limit = self.window

    def refused(self, seq: int) -> None:
        self.rewind_to = seq if self.rewind_to is None else min(self.rewind_to, seq)
        self.wake.set()  # a pump waiting for new data must come back for this one

    async def flush_acks(self) -> None:
        # The seqs leave `acked` only once the store took them: a flush cancelled halfway
        # (the session ending) leaves them to the session's last flush, which deletes them
        # and reads the counters after the delete (a seq acked twice is ignored).
        if self.acked:
            acked = list(self.acked)
            await self.store.ack(acked)
            del self.acked[: len(acked)]


@dataclass(slots=True)
class _Takeover:
    since: float  # unix time
    count: int = 0


CommandHandler = Callable[[str, bytes], Awaitable[bytes]]
"""(verb, payload) -> the reply's payload. Judges and carries out one command; never raises
by contract (a handler that does is a bug: logged with its traceback, no reply sent)."""


@dataclass(frozen=True, slots=True)
class _Command:
    """A command as it arrived, and where its reply goes."""

    verb: str
    payload: bytes
    reply_topic: str  # the MQTT 5 response topic, or the gateway's reply topic
    correlation: bytes | None  # MQTT 5 correlation data, copied onto the reply
    # The replies of the session it came in on. A reply made after that session ended,
    # or not yet sent when it ended, is carried to the next one (`REPLY_CARRY`).
    replies: asyncio.Queue[tuple[_Command, bytes]]


def probe_delay(reconnect_min: float, reconnect_max: float) -> float:
    """The delay of the quick probe after a silent drop: uniform between half of
    `reconnect_min` and `PROBE_SPREAD` times it (at most `reconnect_max`). A broker that
    restarts drops every gateway at the same instant; spread over 0.25-2 s at the defaults,
    a thousand of them come back at ~50 per 100 ms instead of ~300 (which overflowed
    mosquitto's listen queue of 100 with TLS: bench/fleet_bench.py)."""
    upper = min(reconnect_max, PROBE_SPREAD * reconnect_min)
    return random.uniform(reconnect_min / 2, max(upper, reconnect_min / 2))


# --- the uplink ----------------------------------------------------------------------


class MqttUplink:
    def __init__(
        self,
        config: MqttConfig,
        topics: Topics,
        store: Store,
        *,
        alarm_store: Store | None = None,
        identity: Identity,
        health: Callable[[], bytes],
        clock: Clock | None = None,
    ) -> None:
        # Timers and timestamps run on `clock` (tests can drive it); waits bounded by
        # asyncio.timeout (connect, goodbye) stay on the event loop's own clock.
        self.clock: Clock = clock or SystemClock()
        self.config = config
        self.topics = topics
        self.store = store
        # Data goes out on two lanes: what is produced while connected (live) and the
        # backlog found on disk at connect time (history), drained side by side so
        # live data never waits behind hours of backlog.
        self.data = Lane("data", store, topics.data, config.max_inflight)
        self.history = Lane("history", store, topics.history, HISTORY_WINDOW, history=True)
        self.lanes = [self.data, self.history]
        if alarm_store is not None:  # first: its publishes go out before the data's
            self.lanes.insert(
                0, Lane("alarm", alarm_store, topics.alarm, ALARM_WINDOW, what="alarm event")
            )
        self.identity = identity
        self.client_id = config.client_id or f"edge-gateway-{identity.gateway_id}"
        self._health = health  # the encoded health report, built by the gateway
        self._stop = asyncio.Event()
        self._reconfigure = asyncio.Event()  # a new config waits: end the session
        self._tls = _tls_context(config)  # built once: a bad certificate path fails at start
        self._progress = asyncio.Event()  # a publish finished, or a pump ran dry
        self._ack_clock = self.clock.monotonic()  # last PUBACK, or when the window became busy
        self._sent = 0  # publishes handed to the client, numbered in the order sent
        self._pending: set[int] = set()  # their numbers, while they await their PUBACK
        self._answered_upto = 0  # the highest number whose PUBACK came
        self._link = "connecting"  # connecting (never connected yet), online, offline, stopped
        self._down_announced = False  # a warning said we are down; say when we are back
        self._short_drops = 0  # silent drops in a row, each followed by an instant re-accept
        self._drop_probe = False  # the next attempt is the quick one after a silent drop
        self._session_refused = False  # a publish was refused in the current session
        self._takeover: _Takeover | None = None
        self._last_loss: str | None = None  # the reason of the last loss logged
        self._health_failing = False
        self._side_retry: dict[str, tuple[int, float]] = {}  # topic: refusals, retry time
        self.connected_since: float | None = None
        self.connects = 0
        self.last_error: str | None = None
        self.last_reason_code: int | None = None
        self.denials: dict[str, Denial] = {}
        self.refused_publishes = 0
        self.session_takeovers = 0
        self.first_attempt_done = asyncio.Event()  # the first connect was tried (READY)
        # Events and retained state, published in order as soon as connected. Events
        # wait in memory while offline (the oldest dropped beyond the bound, counted);
        # retained state is published afresh at every connect (`retained`).
        self._side: collections.deque[tuple[str, bytes, bool]] = collections.deque()
        self._side_ready = asyncio.Event()
        self.side_dropped = 0
        self.retained: Callable[[], list[tuple[str, bytes]]] = list
        # Signed commands (docs/topics.md, "Commands"): set by the app before `run`; when
        # None, the uplink does not subscribe to commands at all.
        self.on_command: CommandHandler | None = None
        self._commands: asyncio.Queue[_Command] = asyncio.Queue(COMMAND_QUEUE)
        self._replies: asyncio.Queue[tuple[_Command, bytes]] | None = None  # this session's
        # Replies made while no session was up: (made at, command, reply), for the next.
        self._carried: list[tuple[float, _Command, bytes]] = []
        self._subscription = "pending"  # see `command_subscription`
        self._refusal_logged = False  # the command subscription's refusal has been said
        self._retained_logged: set[str] = set()  # retained command topics said
        self._bad_response_logged = False
        self._burst_dropped = 0  # commands dropped since the queue was last empty
        self.commands_received = 0  # commands that arrived (retained ones not counted)
        self.commands_dropped = 0  # never carried out: the queue was full, or the session ended
        self.commands_retained_ignored = 0
        self.command_subscription_refusals = 0  # SUBACKs with a failure reason code
        self.command_handler_failures = 0  # the handler raised: a bug
        self._attempt_started: float | None = None  # monotonic; None between attempts
        self._ticked = self.clock.monotonic()  # the last sign of life of a session

    @property
    def state(self) -> str:
        """connecting, online, denied (online, but the broker refuses some publishes),
        offline, stopped."""
        if self._link == "online" and self.denials:
            return "denied"
        return self._link

    @property
    def command_subscription(self) -> str:
        """`off` (no command handler), `pending` (not connected, or no SUBACK yet in this
        session), `subscribed`, or `refused: <reason>` (the broker's SUBACK refused the
        subscription, e.g. `refused: Not authorized (reason code 0x87)`)."""
        return "off" if self.on_command is None else self._subscription

    @property
    def _inflight(self) -> int:
        return len(self._pending)

    @property
    def _where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    # --- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            commands = tg.create_task(self._carry_out_commands(), name="uplink-commands")
            try:
                await self._connect_and_serve()
            finally:
                commands.cancel()  # at stop, a command still being carried out is cancelled

    async def _connect_and_serve(self) -> None:
        if self.config.protocol == "3.1.1":
            log.info(
                "speaking MQTT 3.1.1: a publish the broker refuses (an ACL denial) is "
                'acknowledged all the same and deleted from disk; set [mqtt] protocol = "5" '
                "if the broker supports it (docs/topics.md)"
            )
        failures = 0
        while not self._stop.is_set():
            attempt_started = self.clock.monotonic()
            try:
                end, up_for = await self._attempt()
            except Exception as err:  # a bug must not end the uplink: say it, try again
                log.exception("uplink attempt failed unexpectedly; trying again")
                end, up_for = SessionEnd("internal", f"internal error: {_describe(err)}"), None
            if end.kind == "stopped" or self._stop.is_set():
                break
            if up_for is not None and up_for >= STABLE_SESSION:
                failures = 0
            failures += 1
            delay = self._after(end, up_for, failures)
            # A failed connect counts its delay from the start of the attempt: an attempt
            # that hung for connect_timeout is not followed by a full delay on top.
            start = attempt_started if up_for is None else self.clock.monotonic()
            wait = max(0.0, start + delay - self.clock.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._stop.wait()
        self._link = "stopped"
        self.connected_since = None

    def stop(self) -> None:
        """Say goodbye (retained 'offline' status), close the connection, end `run`."""
        self._stop.set()

    def send(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish an event or a state message when connected (in order, QoS 1). Not
        kept on disk: at most `SIDE_BACKLOG` wait while offline, the oldest dropped."""
        self._side.append((topic, payload, retain))
        while len(self._side) > SIDE_BACKLOG:
            self._side.popleft()
            self.side_dropped += 1
        self._side_ready.set()

    def reconfigure(self, config: MqttConfig, topics: Topics, identity: Identity) -> None:
        """Switch to a new [mqtt] section or gateway id (a config reload). The current
        session says 'offline' (reason "reconfigured") on its status topic and ends; the
        next connects at once with the new settings. Nothing on disk is affected."""
        self._tls = _tls_context(config)
        self.config = config
        self.topics = topics
        self.identity = identity
        self.client_id = config.client_id or f"edge-gateway-{identity.gateway_id}"
        self.data.window = config.max_inflight
        for lane, topic in zip(
            self.lanes, self._lane_topics(topics, alarm=len(self.lanes) > 2), strict=True
        ):
            lane.topic = topic
        self.denials.clear()
        self._side_retry.clear()
        self._reconfigure.set()

    @staticmethod
    def _lane_topics(topics: Topics, *, alarm: bool) -> list[str]:
        return [*([topics.alarm] if alarm else []), topics.data, topics.history]

    async def _attempt(self) -> tuple[SessionEnd, float | None]:
        """One connect attempt and, if it succeeds, one session. Never raises for anything
        the broker or the network does; returns why it ended and how long it was up."""
        client = self._new_client()
        self._attempt_started = self.clock.monotonic()
        try:
            await client.connect()
        except Exception as err:
            self._attempt_started = None
            self.first_attempt_done.set()
            reason, code = describe_connect_failure(
                err, client.connect_error, self._where, self.config.connect_timeout, client.ending
            )
            end = SessionEnd("connect", reason, code)
            self._connect_failed(end)
            return end, None
        self._attempt_started = None
        self.first_attempt_done.set()
        connected_at = self.clock.monotonic()
        # Accepted at once after a silent drop: the broker never went away.
        self._short_drops = self._short_drops + 1 if self._drop_probe else 0
        self._drop_probe = False
        leaves: list[BaseException] = []
        try:
            await self._session(client)
        except Exception as err:
            leaves = _leaves(err)
        finally:
            # A goodbye was said (stop, new config): a clean DISCONNECT, so no last will.
            stopping = any(isinstance(e, _Stopping | _Reconfigured) for e in leaves)
            await client.close(graceful=stopping)
            self._commands_session_ended()
            with contextlib.suppress(Exception):
                await self._flush_acks()
        up_for = self.clock.monotonic() - connected_at
        end = self._classify(client, leaves)
        self._link = "offline"
        self.connected_since = None
        return end, up_for

    def _classify(self, client: _Client, leaves: list[BaseException]) -> SessionEnd:
        if any(isinstance(e, _Stopping) for e in leaves):
            return SessionEnd("stopped", "stopped")
        if any(isinstance(e, _Reconfigured) for e in leaves):
            return SessionEnd("reconfigured", "a new configuration")
        bugs = [e for e in leaves if not isinstance(e, aiomqtt.MqttError | _LinkDead)]
        if bugs:  # a bug or a disk error: logged with its traceback, the uplink carries on
            log.error("uplink session failed unexpectedly; reconnecting", exc_info=bugs[0])
            return SessionEnd("internal", f"internal error: {_describe(bugs[0])}")
        dead = [e for e in leaves if isinstance(e, _LinkDead)]
        if dead:
            return SessionEnd("link_dead", str(dead[0]))
        if client.ending is not None:
            return describe_ending(
                client.ending, keepalive=self.config.keepalive, refused=self._session_refused
            )
        # paho raised inside aiomqtt's socket callbacks: a socket error, or a packet it
        # could not make sense of.
        cause = next((e.__cause__ for e in leaves if e.__cause__ is not None), None)
        if isinstance(cause, OSError):
            return SessionEnd("closed", f"the connection broke ({_describe(cause)})")
        if cause is not None:
            return SessionEnd(
                "protocol", f"the broker sent something we could not read ({_describe(cause)})"
            )
        return SessionEnd("closed", _describe(leaves[0]) if leaves else "the session ended")

    # --- after a session or a failed attempt ------------------------------------------

    def _connect_failed(self, end: SessionEnd) -> None:
        self.last_error, self.last_reason_code = end.reason, end.code
        self._short_drops, self._drop_probe = 0, False  # the broker is not simply there
        if self._down_announced or self._takeover is not None:
            log.debug("connect attempt failed: %s", end.reason)
            return
        self._down_announced = True
        log.warning(
            "cannot reach the MQTT broker %s (%s); readings are kept on disk; retrying every "
            "few seconds (at most %gs apart)",
            self._where,
            end.reason,
            self.config.reconnect_max,
        )

    def _after(self, end: SessionEnd, up_for: float | None, failures: int) -> float:
        """Log a session's end once, in words, and choose the delay before the next attempt."""
        if end.kind == "reconfigured":
            log.info("reconnecting to %s with the new [mqtt] settings", self._where)
            return 0.0
        normal = backoff_delay(failures, self.config.reconnect_min, self.config.reconnect_max)
        if up_for is None:  # a failed connect: logged already
            return normal
        self.last_error, self.last_reason_code = end.reason, end.code
        # A broker that hangs up after refusing by its ACL (mosquitto) can close the
        # socket before its refusal reaches us: while a topic is denied as not authorized,
        # a quick close "without a word" is most likely that, not a session handed to
        # another client (whose publishes mosquitto refuses with 0x80 "unspecified").
        acl_denied = any(d.reason_code == NOT_AUTHORIZED for d in self.denials.values())
        after_denial = end.kind == "closed" and acl_denied and up_for < SUSPECT_SESSION
        silent = end.kind == "closed" and not self._session_refused and not after_denial
        if not silent or up_for >= SUSPECT_SESSION:
            self._short_drops = 0
        if end.kind == "takeover" or (
            silent and (self._takeover is not None or self._short_drops >= SUSPECT_DROPS - 1)
        ):
            return self._taken_over(end)
        if silent:
            # Come back quickly once: a broker that is still there accepts at once (a
            # takeover, counted above), one that went away refuses (the chain breaks).
            self._drop_probe = True
            normal = probe_delay(self.config.reconnect_min, self.config.reconnect_max)
        if end.kind == "closed" and (self._session_refused or after_denial) and self.denials:
            # Some brokers (mosquitto 2.0 with max_queued_messages 0) hang up after a
            # refusal; the denial has been logged and explains it.
            log.debug("the broker closed the connection after refusing a publish; reconnecting")
            return normal
        if up_for >= STABLE_SESSION:
            self._last_loss = None
        if end.reason == self._last_loss:
            # A broker that accepts and drops us again and again for the same reason: said
            # once (and once that we were back); the rest are repeats, counted in health.
            log.debug("lost the MQTT broker again (%s)", end.reason)
            return normal
        self._last_loss = end.reason
        self._down_announced = True
        log.warning(
            "lost the MQTT broker %s (%s); batches stay on disk (%d waiting); reconnecting "
            "within %gs",
            self._where,
            end.reason,
            self.store.stats.batches,
            self.config.reconnect_max,
        )
        return normal

    def _taken_over(self, end: SessionEnd) -> float:
        self.session_takeovers += 1
        episode = self._takeover
        first = episode is None
        if episode is None:
            episode = self._takeover = _Takeover(since=self.clock.time())
        episode.count += 1
        delay = backoff_delay(episode.count, *TAKEOVER_BACKOFF)
        gateway_id = self.identity.gateway_id
        who = (
            f"is a second gateway configured with id '{gateway_id}'?"
            if self.config.client_id is None
            else f"is another gateway or program configured with client_id '{self.client_id}'?"
        )
        if end.kind == "takeover":
            what = (
                "the broker handed our session to another client with the same client id "
                f"'{self.client_id}': {who}"
            )
        else:
            what = (
                f"the broker closed our connection {self._short_drops + 1} times in a row soon "
                "after accepting it, without saying why, and accepted us again at once each "
                "time: that is how it hands our session to another "
                f"client with the same client id '{self.client_id}': {who}"
            )
        self.last_error = what
        if not first:
            log.debug(
                "session taken over again (%d this episode); reconnecting in %.0fs",
                episode.count,
                delay,
            )
            return delay
        self._down_announced = True
        log.warning(
            "%s Reconnecting in %.0fs, then less often (up to every %.0f min) so that the two "
            "do not knock each other off every few seconds; batches stay on disk (%d waiting)",
            what,
            delay,
            TAKEOVER_BACKOFF[1] / 60,
            self.store.stats.batches,
        )
        return delay

    async def _end_takeover_when_quiet(self) -> None:
        await self.clock.sleep(TAKEOVER_QUIET)
        if self._takeover is not None:
            log.info(
                "no other client has taken our session for %.0f min: the duplicate client id "
                "'%s' seems resolved; reconnecting normally again",
                TAKEOVER_QUIET / 60,
                self.client_id,
            )
            self._takeover = None
            self._short_drops = 0

    # --- one connection ---------------------------------------------------------------

    def _new_client(self) -> _Client:
        cfg = self.config
        v5 = cfg.protocol == "5"
        will = aiomqtt.Will(
            self.topics.status,
            self._status("offline", reason="connection lost"),
            qos=1,
            retain=True,
        )
        # MQTT 5: clean start and no session expiry (a new session every connect, as
        # clean_session does under 3.1.1): what is not acknowledged is still on disk.
        session: dict[str, Any] = {"clean_start": True} if v5 else {"clean_session": True}
        return _Client(
            cfg.host,
            cfg.port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            username=cfg.username,
            password=cfg.password,
            tls_context=self._tls,
            keepalive=max(1, round(cfg.keepalive)),
            will=will,
            timeout=cfg.connect_timeout,
            connect_timeout=cfg.connect_timeout,
            # Room for every window, so paho never queues an alarm behind data.
            inflight=cfg.max_inflight + HISTORY_WINDOW + ALARM_WINDOW + 2,
            **session,
        )

    async def _session(self, client: _Client) -> None:
        self.connects += 1
        self._session_refused = False
        backlog_end = self.store.stats.last_seq  # on disk now: history; newer: live
        self.history.start, self.history.upper = 0, backlog_end
        self.data.start, self.data.upper = backlog_end, None
        for lane in self.lanes:
            if lane.store is not self.store:  # the alarm lane: all of it, in order
                lane.start, lane.upper = 0, None
            lane.begin_session(refused_before=lane.topic in self.denials)
        self._link = "online"
        self._ticked = self.clock.monotonic()
        self.connected_since = self.clock.time()
        self._replies = asyncio.Queue() if self.on_command is not None else None
        self._carry_replies()
        level = logging.INFO if self._down_announced or self.connects == 1 else logging.DEBUG
        self._down_announced = False
        log.log(
            level,
            "connected to MQTT broker %s (MQTT %s); %d batch(es) waiting on disk",
            self._where,
            self.config.protocol,
            self.store.stats.batches,
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_connection(client), name="uplink-watch")
            tg.create_task(self._ack_watchdog(), name="uplink-watchdog")
            if self._takeover is not None:
                tg.create_task(self._end_takeover_when_quiet(), name="uplink-takeover")
            # The birth message goes first; a refusal of it is reported, not fatal (and
            # while refused, it is offered again only on its own back-off schedule).
            if self._side_due(self.topics.status) <= self.clock.monotonic():
                await self._publish_side(
                    client,
                    self.topics.status,
                    self._status("online"),
                    "the online status; the retained status may be stale",
                    retain=True,
                )
            if self._replies is not None:
                tg.create_task(self._subscribe_commands(client), name="uplink-subscribe")
                tg.create_task(self._send_replies(client, self._replies), name="uplink-replies")
            for lane in self.lanes:
                tg.create_task(self._pump(client, lane), name=f"uplink-{lane.name}")
            tg.create_task(self._ack_flusher(), name="uplink-acks")
            tg.create_task(self._health_loop(client), name="uplink-health")
            tg.create_task(self._goodbye_on_stop(client), name="uplink-goodbye")
            tg.create_task(
                self._leave_for_new_config(client, self.topics.status), name="uplink-reconfigure"
            )
            tg.create_task(self._publish_state(client), name="uplink-state")

    async def _publish_state(self, client: _Client) -> None:
        """The present (retained states) at once, then events and changes as they come.

        A topic the broker refused is offered again on its own back-off (`_side_due`),
        in this session too: an ACL fixed without a reconnect clears its denial. A
        refused event waits at the head of the queue (events keep their order); a
        refused retained state is replaced by a newer one for the same topic."""
        present = dict(self.retained())
        while True:
            for topic, _payload, retain in self._side:
                if retain:
                    present.pop(topic, None)  # a newer state for it is queued
            now = self.clock.monotonic()
            for topic, payload in list(present.items()):
                if self._side_due(topic) <= now:
                    await self._publish_side(
                        client, topic, payload, "a retained state", retain=True
                    )
                    if topic not in self._side_retry:
                        del present[topic]
            while self._side:
                topic, payload, retain = self._side[0]
                if self._side_due(topic) > self.clock.monotonic():
                    break
                await self._publish_side(client, topic, payload, "an event", retain=retain)
                if topic in self._side_retry:
                    break  # refused: it stays first and is offered again after its pause
                self._side.popleft()  # only once the broker answered: none lost to a drop
            due = [self._side_due(t) for t in present]
            if self._side:
                due.append(self._side_due(self._side[0][0]))
            self._side_ready.clear()
            wait = max(min(due) - self.clock.monotonic(), 0.05) if due else None
            await wait_event(self.clock, self._side_ready, wait)

    async def _leave_for_new_config(self, client: _Client, old_status: str) -> None:
        await self._reconfigure.wait()
        self._reconfigure.clear()
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(GOODBYE_TIMEOUT):
                await client.publish_acked(
                    old_status, self._status("offline", reason="reconfigured"), retain=True
                )
        raise _Reconfigured

    async def _watch_connection(self, client: _Client) -> None:
        # The message iterator raises MqttError when the connection is lost; that
        # tears the session down, cancelling publishes still waiting for PUBACK.
        async for message in client.messages:
            self._command_arrived(message)

    # --- commands (docs/topics.md, "Commands") ----------------------------------------

    async def _subscribe_commands(self, client: _Client) -> None:
        """Subscribe to every verb at QoS 1. A refusal is said once, counted and shown in
        health; the session carries on without commands."""
        topic = self.topics.command("+")
        limit = self.config.publish_timeout
        try:
            async with asyncio.timeout(limit):
                granted = await client.subscribe(topic, qos=1, timeout=math.inf)
        except TimeoutError:
            raise _LinkDead(
                f"no SUBACK for {limit:g}s to our subscription to {topic}: the link carries "
                "nothing back"
            ) from None
        code = granted[0]
        value = code if isinstance(code, int) else code.value
        if value >= 0x80:
            self.command_subscription_refusals += 1
            self._subscription = f"refused: {reason_text(code)}"
            if not self._refusal_logged:
                self._refusal_logged = True
                log.warning(
                    "the broker refused our subscription to %s (%s): commands cannot reach "
                    "this gateway; data flows as before (the broker's ACL must let this user "
                    "subscribe to %s); tried again at every connect",
                    topic,
                    reason_text(code),
                    topic,
                )
            return
        self._subscription = "subscribed"
        if self._refusal_logged:
            self._refusal_logged = False
            log.info("subscribed to %s: commands can reach this gateway again", topic)

    def _command_arrived(self, message: aiomqtt.Message) -> None:
        """Route one received message: a command joins the queue, or is dropped if it is
        full; anything else (a retained command, another topic) is not carried out."""
        topic = str(message.topic)
        verb = self.topics.command_verb(topic)
        replies = self._replies
        if verb is None or replies is None:
            return  # not subscribed to anything else
        if message.retain:
            # A command is an act in time; a retained one is a broker artefact that every
            # subscribe would replay.
            self.commands_retained_ignored += 1
            if topic not in self._retained_logged:
                self._retained_logged.add(topic)
                log.warning(
                    "ignored a retained command on %s: commands are acts in time, never "
                    "retained (the broker replays it at every connect; clear it by "
                    "publishing an empty retained message there)",
                    topic,
                )
            return
        self.commands_received += 1
        props = message.properties
        correlation = getattr(props, "CorrelationData", None)
        command = _Command(
            verb,
            bytes(message.payload),
            self._reply_topic(topic, verb, getattr(props, "ResponseTopic", None)),
            bytes(correlation) if isinstance(correlation, bytes | bytearray) else None,
            replies,
        )
        try:
            self._commands.put_nowait(command)
        except asyncio.QueueFull:
            self.commands_dropped += 1
            self._burst_dropped += 1
            if self._burst_dropped == 1:
                log.warning(
                    "dropped a command on %s: %d are already waiting their turn (commands "
                    "are carried out one at a time); more are dropped until they are done",
                    topic,
                    COMMAND_QUEUE,
                )

    def _reply_topic(self, topic: str, verb: str, asked: object) -> str:
        """The command's MQTT 5 response topic, wherever it points (MQTT 5 semantics: the
        broker's ACL bounds where we may publish); the gateway's reply topic when there is
        none, or when it is not a topic name one can publish to."""
        default = self.topics.reply(verb)
        if asked is None:
            return default
        if is_topic_name(asked):
            return asked
        if not self._bad_response_logged:
            self._bad_response_logged = True
            log.warning(
                "a command on %s named a response topic that cannot be published to (%.80r: "
                "empty, a wildcard, or too long); replying on %s instead (said once)",
                topic,
                asked,
                default,
            )
        return default

    async def _carry_out_commands(self) -> None:
        """One command at a time, in arrival order, for the uplink's whole life: a
        connection that drops does not cancel the command being carried out (a config
        apply is not cut in half), and the next session's commands wait for it. Its reply
        goes out in the session that is up when it is made, or in the next one if that
        begins within `REPLY_CARRY` (a config apply that changes [mqtt] reconnects before
        its health window closes: its sender, waiting on the broker, still hears the
        outcome). Later than that it is lost: its sender has timed out and may ask again
        (the command's nonce keeps a resend of the same command from acting twice)."""
        while True:
            command = await self._commands.get()
            reply = await self._handle(command)
            if reply is not None:
                if command.replies is self._replies:
                    command.replies.put_nowait((command, reply))
                else:
                    self._carried.append((self.clock.monotonic(), command, reply))
                    log.info(
                        "the connection ended while a '%s' command was carried out; its "
                        "reply goes out in the next session (if one begins within %gs)",
                        command.verb,
                        REPLY_CARRY,
                    )
                    self._carry_replies()
            if self._burst_dropped and self._commands.empty():
                log.info(
                    "every waiting command has been carried out; %d were dropped meanwhile",
                    self._burst_dropped,
                )
                self._burst_dropped = 0

    async def _handle(self, command: _Command) -> bytes | None:
        handler = self.on_command
        if handler is None:  # taken away after subscribing: nobody to judge it
            return None
        try:
            reply = await handler(command.verb, command.payload)
            if not isinstance(reply, bytes | bytearray):
                raise TypeError(f"the command handler returned {type(reply).__name__}, not bytes")
        except (Exception, asyncio.CancelledError) as err:
            # The handler never raises by contract: a bug, said, not fatal. A CancelledError
            # nobody asked for would end this task for good (a task group lets it go).
            task = asyncio.current_task()
            if isinstance(err, asyncio.CancelledError) and task is not None and task.cancelling():
                raise
            self.command_handler_failures += 1
            log.error(
                "the command handler failed on a '%s' command (a bug); no reply is sent",
                command.verb,
                exc_info=self.command_handler_failures == 1 or log.isEnabledFor(logging.DEBUG),
            )
            return None
        return bytes(reply)

    async def _send_replies(
        self, client: _Client, replies: asyncio.Queue[tuple[_Command, bytes]]
    ) -> None:
        """Publish each reply (QoS 1, not retained) with its command's correlation data, as
        a side publish: in flight for the watchdog, and a refused one is a denial in health.

        A reply is sent once: refused, or not yet acknowledged when the connection drops,
        it is not sent again (its sender times out and may ask again; the command's nonce
        keeps a resend of the same command from acting twice). One still waiting here when
        the session ends is carried to the next (`_commands_session_ended`)."""
        while True:
            command, reply = await replies.get()
            properties = None
            if command.correlation is not None:  # MQTT 5 only
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.CorrelationData = command.correlation
            await self._publish_side(
                client,
                command.reply_topic,
                reply,
                f"the reply to a '{command.verb}' command (not sent again: its sender times "
                "out and may ask again)",
                properties=properties,
            )

    def _carry_replies(self) -> None:
        """Hand the replies made while no session was up to this session's queue (those
        younger than `REPLY_CARRY`; older ones are lost, said once each)."""
        if self._replies is None or not self._carried:
            return
        carried, self._carried = self._carried, []
        now = self.clock.monotonic()
        for made, command, reply in carried:
            if now - made <= REPLY_CARRY:
                self._replies.put_nowait((command, reply))
            else:
                log.info(
                    "the reply to a '%s' command is lost: no session began within %gs of "
                    "it (its sender has timed out and may ask again)",
                    command.verb,
                    REPLY_CARRY,
                )

    def _commands_session_ended(self) -> None:
        """What the ended session received and did not carry out is dropped (a sender that
        times out may ask again); the replies it had not sent yet are carried to the next
        session, as those made after it ended (`REPLY_CARRY`)."""
        replies, self._replies = self._replies, None
        self._subscription = "pending"
        if replies is not None and not replies.empty():
            now, unsent = self.clock.monotonic(), replies.qsize()
            while not replies.empty():
                command, reply = replies.get_nowait()
                self._carried.append((now, command, reply))
            log.info(
                "the connection ended before %d reply(ies) to commands were sent; they go out "
                "in the next session (if one begins within %gs)",
                unsent,
                REPLY_CARRY,
            )
        waiting = 0
        while not self._commands.empty():
            self._commands.get_nowait()
            waiting += 1
        if waiting:
            self.commands_dropped += waiting
            log.warning(
                "the connection ended with %d command(s) waiting their turn: dropped, not "
                "carried out (their senders time out and may ask again)",
                waiting,
            )

    async def _goodbye_on_stop(self, client: _Client) -> None:
        await self._stop.wait()
        # Publish what is on disk (the batch flushed at stop, a short backlog) before
        # saying goodbye, for a bounded time; the rest waits on disk for the next start.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_DRAIN_SECONDS):
                while any(lane.busy for lane in self.lanes):
                    self._progress.clear()
                    await self._progress.wait()
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT):
                code = await client.publish_acked(
                    self.topics.status, self._status("offline", reason="stopped"), retain=True
                )
            if code.is_failure and self.topics.status not in self.denials:
                log.warning(
                    "the broker refused the offline status (%s); the retained status may be stale",
                    reason_text(code),
                )
        except (aiomqtt.MqttError, TimeoutError) as err:
            log.warning(
                "could not publish the offline status before stopping (%s)",
                _describe(err) if str(err) else "no PUBACK in time",
            )
        raise _Stopping

    async def _publish_side(
        self,
        client: _Client,
        topic: str,
        payload: bytes,
        what: str,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """A status, health or reply publish: awaited without a timeout of its own, but
        counted in flight, so that the watchdog gives the link up if its PUBACK never comes.
        A refused one is next offered after a growing pause (`_side_due`): some brokers hang
        up on every refusal, and a reconnect must not bring the refusal straight back."""
        code = await self._send(client, topic, payload, retain=retain, properties=properties)
        if code.is_failure:
            refusals = self._side_retry.get(topic, (0, 0.0))[0] + 1
            due = self.clock.monotonic() + backoff_delay(refusals, *DENIED_RETRY)
            self._side_retry[topic] = (refusals, due)
            self._refused(topic, code, f"the broker did not store {what}")
        else:
            self._side_retry.pop(topic, None)
            self._accepted(topic)

    def _side_due(self, topic: str) -> float:
        """Monotonic time from which a refused status or health topic may be tried again."""
        return self._side_retry.get(topic, (0, 0.0))[1]

    async def _pump(self, client: _Client, lane: Lane) -> None:
        cursor = lane.start  # highest seq handed to the client in this session
        async with asyncio.TaskGroup() as tg:
            while True:
                if lane.rewind_to is not None:
                    cursor = await self._rewind(lane)
                wait = lane.retry_at - self.clock.monotonic()
                if wait > 0:  # a refused lane waits before offering its oldest entry again
                    lane.paused = True
                    self._progress.set()
                    await self.clock.sleep(wait)
                    lane.paused = False
                lane.wake.clear()
                entries = await lane.store.read(cursor, lane.window * 2)
                if lane.upper is not None:
                    entries = [e for e in entries if e.seq <= lane.upper]
                if not entries:
                    lane.idle = True
                    self._progress.set()
                    await lane.wake.wait()  # the history lane wakes only for a refusal
                    lane.idle = False
                    continue
                if lane.history:
                    # Live first: the backlog pauses between chunks so that polling,
                    # batching and live publishes keep their latency during a drain.
                    await self.clock.sleep(HISTORY_PAUSE)
                for entry in entries:
                    await lane.wait_for_slot()
                    if lane.rewind_to is not None:
                        break  # nothing newer goes out before the refused entry
                    cursor = entry.seq
                    lane.inflight += 1
                    tg.create_task(self._publish(client, lane, entry))

    async def _rewind(self, lane: Lane) -> int:
        """After a refusal: let what is in flight get its answers, then go back to the
        oldest refused entry and offer it, alone, after a growing pause."""
        lane.paused = True
        self._progress.set()
        await lane.wait_settled()
        assert lane.rewind_to is not None
        seq, lane.rewind_to = lane.rewind_to, None
        lane.refusals += 1
        lane.retry_at = self.clock.monotonic() + backoff_delay(lane.refusals, *DENIED_RETRY)
        lane.limit = 1
        lane.paused = False
        return seq - 1  # read() returns entries after this seq

    async def _send(
        self,
        client: _Client,
        topic: str,
        payload: bytes | str,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> ReasonCode:
        """Publish and await the PUBACK, keeping the books the watchdog reads."""
        if not self._pending:
            self._ack_clock = self.clock.monotonic()  # the window goes from empty to busy
        self._sent += 1
        number = self._sent
        self._pending.add(number)
        try:
            code = await client.publish_acked(topic, payload, retain=retain, properties=properties)
        finally:
            self._pending.discard(number)
        self._ack_clock = self.clock.monotonic()
        self._answered_upto = max(self._answered_upto, number)
        return code

    async def _publish(self, client: _Client, lane: Lane, entry: Entry) -> None:
        try:
            code = await self._send(client, lane.topic, entry.payload)
        finally:
            lane.inflight -= 1
            lane.changed.set()
            self._progress.set()
        unheard = code.value == NO_MATCHING_SUBSCRIBERS  # the broker kept it for nobody
        if code.is_failure or unheard:
            low, high = DENIED_RETRY
            what = (
                f"nobody subscribes to it (no centre consumer is connected): the broker "
                f"dropped the {lane.what}"
                if unheard
                else f"the broker did not store the {lane.what}"
            )
            self._refused(
                lane.topic,
                code,
                f"{what}; it stays on disk, nothing newer goes out on this topic before it, "
                f"and it is offered again after {low / 2:g}-{low:g}s, then less often (up to "
                f"every {high:g}s)",
            )
            lane.refused(entry.seq)
            return
        self._accepted(lane.topic)
        lane.accepted(entry)

    def _refused(self, topic: str, code: ReasonCode, consequence: str) -> None:
        self.refused_publishes += 1
        self._session_refused = True
        denial = self.denials.get(topic)
        name = reason_text(code)
        if denial is None:
            denial = Denial(topic, code.value, name, since=self.clock.time())
            self.denials[topic] = denial
            log.warning("denied: %s, %s: %s", topic, name, consequence)
        denial.reason_code, denial.reason = code.value, name
        denial.refused += 1

    def _accepted(self, topic: str) -> None:
        denial = self.denials.pop(topic, None)
        if denial is not None:
            log.info(
                "accepted again: %s: the broker stores publishes on it again, after %d "
                "refused over %.0fs",
                topic,
                denial.refused,
                self.clock.time() - denial.since,
            )

    async def _ack_watchdog(self) -> None:
        """Tear the session down when publishes wait and no PUBACK arrives for a while,
        or when a PUBACK is missing while later publishes have theirs.

        The clock restarts at every PUBACK and whenever the window goes from empty
        to busy, so time spent queued behind a slow but working link never counts:
        only a link that carries nothing back does (a blackholed cellular path).
        A broker answers QoS 1 publishes in the order it received them (MQTT
        [MQTT-4.6.0-2]), so one left behind by later answers was lost on the way
        (a link that dropped bytes and came back): it would hold its place in the
        window for ever, and the lane's order behind it.
        """
        limit = self.config.publish_timeout
        overtaken_since: float | None = None
        while True:
            await self.clock.sleep(min(0.25, limit / 4))
            if not self._pending:
                overtaken_since = None
                continue
            now = self.clock.monotonic()
            silent = now - self._ack_clock
            if silent > limit:
                raise _LinkDead(
                    f"no PUBACK for {silent:.0f}s with {self._inflight} publish(es) in flight: "
                    "the link carries nothing back"
                )
            if min(self._pending) > self._answered_upto:
                overtaken_since = None
            elif overtaken_since is None:
                overtaken_since = now
            elif now - overtaken_since > OVERTAKEN_GRACE:
                raise _LinkDead(
                    "the broker answered later publishes but not an earlier one: the link "
                    "lost it on the way"
                )

    async def _ack_flusher(self) -> None:
        while True:
            await self.clock.sleep(ACK_FLUSH_INTERVAL)
            await self._flush_acks()
            self._ticked = self.clock.monotonic()

    def stalled(self) -> str | None:
        """Why the uplink looks wedged (for the systemd watchdog), or None.

        A connect attempt is bounded by connect_timeout (a TLS handshake may double
        it); a session ticks every ACK_FLUSH_INTERVAL. Far beyond either, something
        hangs that no timeout covers (a name lookup, a library's close)."""
        now = self.clock.monotonic()
        cfg = self.config
        if self._attempt_started is not None:
            limit = 4 * cfg.connect_timeout + WEDGED_SLACK
            hung = now - self._attempt_started
            if hung > limit:
                return f"a connect attempt to {self._where} has hung for {hung:.0f}s"
        elif self._link == "online" and now - self._ticked > WEDGED_SLACK:
            return f"the MQTT session has not ticked for {now - self._ticked:.0f}s"
        return None

    async def _flush_acks(self) -> None:
        for lane in self.lanes:
            await lane.flush_acks()

    async def _health_loop(self, client: _Client) -> None:
        interval = self.config.health_interval
        while True:
            wait = self._side_due(self.topics.health) - self.clock.monotonic()
            if wait > 0:  # refused before: not again until its pause is over
                await self.clock.sleep(wait)
            try:
                payload = self._health()
            except Exception:  # a bug in a health source must not cost the data path
                if not self._health_failing:
                    log.exception("cannot build the health report; will try again")
                self._health_failing = True
            else:
                self._health_failing = False
                await self._publish_side(
                    client,
                    self.topics.health,
                    payload,
                    "the health report; it is offered again after a pause of "
                    f"{DENIED_RETRY[0] / 2:g}s or more, doubling up to {DENIED_RETRY[1]:g}s",
                )
            await self.clock.sleep(interval)

    # --- helpers ----------------------------------------------------------------------

    def _status(self, state: Literal["online", "offline"], reason: str | None = None) -> bytes:
        return encode(Status(state, self.identity, self.clock.time(), reason))

    def health(self) -> UplinkHealth:
        return UplinkHealth(
            state=self.state,
            protocol=self.config.protocol,
            connected_since=self.connected_since,
            connects=self.connects,
            published_batches=self.data.published + self.history.published,
            published_history_batches=self.history.published,
            published_bytes=self.data.published_bytes + self.history.published_bytes,
            published_alarms=sum(
                lane.published for lane in self.lanes if lane.store is not self.store
            ),
            last_error=self.last_error,
            last_reason_code=self.last_reason_code,
            denied=[denial.health() for denial in self.denials.values()],
            refused_publishes=self.refused_publishes,
            session_takeovers=self.session_takeovers,
            takeover_since=self._takeover.since if self._takeover is not None else None,
            events_dropped=self.side_dropped,
            commands=self.command_subscription,
            commands_received=self.commands_received,
            commands_dropped=self.commands_dropped,
        )


def _leaves(err: BaseException) -> list[BaseException]:
    if isinstance(err, BaseExceptionGroup):
        return [leaf for inner in err.exceptions for leaf in _leaves(inner)]
    return [err]


def _describe(err: BaseException | None) -> str:
    if err is None:
        return "unknown"
    reason = str(err) or type(err).__name__
    cause = err.__cause__
    if cause is not None and str(cause) and str(cause) not in reason:
        reason = f"{reason}: {cause}"
    return reason


def _tls_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    if cfg.tls is None:
        return None
    context = ssl.create_default_context(cafile=str(cfg.tls.ca_file))
    if cfg.tls.cert_file is not None and cfg.tls.key_file is not None:
        context.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file))
    context.check_hostname = cfg.tls.verify_hostname
    return context
