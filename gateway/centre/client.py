"""A small MQTT client for the centre's side: connect, subscribe, publish, receive.

The gateway's own MQTT client is gateway/uplink/mqtt.py (lanes, the buffer, reconnects
that never end). The centre's tools need much less: one connection that either works
or says in a sentence why not, QoS 1 publishes that report a broker's refusal (MQTT 5
PUBACK reason codes), and the messages that arrive, with their MQTT 5 properties.
`edge-gateway command send` stands on it, and so can the tools that watch gateways.

    connection = Connection(BrokerAddress.parse("broker:8883"), tls=tls_context(ca_file))
    async with CentreClient(connection) as c:
        await c.subscribe("city/+/status")
        await c.publish("city/gw/cmd/ping", payload, response_topic=..., correlation_data=...)
        async for message in c.messages(): ...

It overrides one private callback of aiomqtt (`_on_publish`, to see PUBACK reason codes,
which aiomqtt 2.x drops) and sets paho's TCP connect timeout: aiomqtt is pinned < 3.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
DEFAULT_CONNECT_TIMEOUT = 5.0


class CentreError(Exception):
    """Something about the broker, in one sentence (str(error))."""


class BrokerUnreachable(CentreError):
    """No connection: nothing listens, TLS failed, the broker refused us, no CONNACK."""


class PublishRefused(CentreError):
    """The broker answered a publish with a failure reason code (MQTT 5), e.g. an ACL."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, tls: bool = False) -> BrokerAddress:
        """'host', 'host:port', '[v6 address]:port'; the port defaults to 1883 (8883 with
        TLS). Raises ValueError with the reason."""
        default = DEFAULT_TLS_PORT if tls else DEFAULT_PORT
        host, port_text = text, ""
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest and not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected [address]:port")
            port_text = rest[1:]
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        if not host:
            raise ValueError(f"{text!r} names no host")
        if not port_text:
            return cls(host, default)
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
        return cls(host, int(port_text))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Connection:
    """How to reach the broker."""

    address: BrokerAddress
    tls: ssl.SSLContext | None = None  # TLS on (`tls_context(ca_file)` makes one)
    username: str | None = None
    password: str | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    client_id: str | None = None  # default: edge-gateway-centre-<random>


@dataclass(frozen=True, slots=True)
class Received:
    """A message as it arrived."""

    topic: str
    payload: bytes
    correlation_data: bytes | None  # MQTT 5 properties, None when absent
    response_topic: str | None


class _Client(aiomqtt.Client):
    def __init__(self, *args: Any, connect_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client.connect_timeout = connect_timeout  # TCP connect and TLS handshake
        self.refusals: list[ReasonCode] = []

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode, props: Any
    ) -> None:
        if reason_code.is_failure:
            self.refusals.append(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, props)


class CentreClient:
    """One connection to the broker, as an async context manager (module docstring)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._v5 = connection.protocol == "5"
        self._publishing = asyncio.Lock()
        self._client: _Client | None = None

    @property
    def client(self) -> _Client:
        if self._client is None:
            raise CentreError("not connected (use `async with CentreClient(...)`)")
        return self._client

    async def __aenter__(self) -> CentreClient:
        c = self.connection
        where = f"the broker at {c.address}"
        client = _Client(
            c.address.host,
            c.address.port,
            identifier=c.client_id or f"edge-gateway-centre-{secrets.token_hex(4)}",
            protocol=aiomqtt.ProtocolVersion.V5 if self._v5 else aiomqtt.ProtocolVersion.V311,
            username=c.username,
            password=c.password,
            tls_context=c.tls,
            timeout=c.connect_timeout,
            connect_timeout=c.connect_timeout,
            keepalive=30,
        )
        try:
            async with asyncio.timeout(c.connect_timeout * 2):  # TCP + TLS, then CONNACK
                await client.__aenter__()
        except TimeoutError:
            raise BrokerUnreachable(
                f"{where} did not accept a connection within {c.connect_timeout * 2:g}s"
            ) from None
        except aiomqtt.MqttError as err:
            raise BrokerUnreachable(_connect_failure(err, where, c.connect_timeout)) from err
        self._client = client
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await client.__aexit__(exc_type, exc, tb)

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        await self.client.subscribe(topic, qos=qos)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        """Publish; at QoS 1, return once the broker has acknowledged it. Raises
        PublishRefused when the broker's PUBACK says it did not take it (MQTT 5), and
        CentreError when the connection ends first. The MQTT 5 properties are left out
        under 3.1.1."""
        properties = None
        if self._v5 and (response_topic is not None or correlation_data is not None):
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic is not None:
                properties.ResponseTopic = response_topic
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
        async with self._publishing:  # one at a time: a refusal belongs to this publish
            refused_before = len(self.client.refusals)
            try:
                await self.client.publish(
                    topic, payload, qos=qos, retain=retain, properties=properties
                )
            except aiomqtt.MqttError as err:
                raise CentreError(
                    f"the connection ended while publishing to {topic} ({err})"
                ) from err
            if len(self.client.refusals) > refused_before:
                code = self.client.refusals[-1]
                raise PublishRefused(
                    f"the broker refused to take the message on {topic}: {reason_text(code)}"
                    + (" (check the broker's ACL for this user)" if code.value == 0x87 else "")
                )

    async def messages(self) -> AsyncIterator[Received]:
        """Every message on the subscribed topics, as it arrives; ends with CentreError
        when the connection is lost."""
        try:
            async for message in self.client.messages:
                payload = message.payload
                props = message.properties
                correlation = getattr(props, "CorrelationData", None)
                response = getattr(props, "ResponseTopic", None)
                yield Received(
                    str(message.topic),
                    bytes(payload) if isinstance(payload, bytes | bytearray) else b"",
                    bytes(correlation) if isinstance(correlation, bytes | bytearray) else None,
                    response if isinstance(response, str) else None,
                )
        except aiomqtt.MqttError as err:
            raise CentreError(f"the connection to the broker was lost ({err})") from err


def tls_context(ca_file: Path) -> ssl.SSLContext:
    """TLS that trusts the CA certificate(s) in `ca_file` and checks the broker's name.
    Raises ValueError with the reason when the file holds no usable certificate."""
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as err:
        raise ValueError(f"{ca_file}: not a usable CA certificate file ({err})") from err


def reason_text(code: ReasonCode) -> str:
    """'Not authorized (reason code 0x87)'."""
    try:
        name = code.getName()
    except (KeyError, ValueError):
        name = "an unknown reason"
    return f"{name} (reason code 0x{code.value:02X})"


_CONNACK_HINTS = {
    0x84: ": the broker does not speak MQTT 5; try --mqtt 3.1.1",
    0x86: ": check --username and --password",
    0x87: ": check --username and --password, and that the broker lets this user connect",
}


def _connect_failure(err: aiomqtt.MqttError, where: str, timeout: float) -> str:
    rc = getattr(err, "rc", None)
    if isinstance(err, aiomqtt.MqttCodeError) and isinstance(rc, ReasonCode):
        return f"{where} refused the connection: {reason_text(rc)}" + _CONNACK_HINTS.get(
            rc.value, ""
        )
    if str(err) == "Operation timed out":
        return f"{where} did not answer our CONNECT within {timeout:g}s"
    return f"cannot connect to {where} ({err})"
