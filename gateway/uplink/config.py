"""The `[mqtt]` section: how the gateway reaches the city centre's broker."""

from __future__ import annotations

import ssl
import unicodedata
from typing import Annotated, Literal

from pydantic import Field, FilePath, model_validator

from drivers.core.config_types import (
    Bool,
    Duration,
    Host,
    Int,
    Problems,
    StrictModel,
    shown,
)

MAX_MQTT_STRING = 65535  # bytes of UTF-8 in any MQTT string (topic, client id, user name)
MAX_TOPIC_PREFIX = 1000  # bytes: room left for the gateway id and the topic's tail
MQTT_311_CLIENT_ID = 23  # characters a 3.1.1 broker must accept; longer may be refused


class TlsConfig(StrictModel):
    # FilePath: a missing certificate is a config error naming the key, not a crash at start.
    ca_file: FilePath = Field(description="CA certificate(s) that signed the broker's certificate")
    cert_file: FilePath | None = Field(None, description="client certificate, for mutual TLS")
    key_file: FilePath | None = Field(None, description="client private key, for mutual TLS")
    verify_hostname: Bool = True

    @model_validator(mode="after")
    def _usable(self) -> TlsConfig:
        """The files must be what they claim: a CA file that exists but holds no
        certificate would otherwise fail at start, with a traceback."""
        problems = Problems()
        if (self.cert_file is None) != (self.key_file is None):
            problems.add(
                ("cert_file" if self.cert_file is None else "key_file",),
                "cert_file and key_file go together for mutual TLS; set both or none",
            )
        try:
            context = ssl.create_default_context(cafile=str(self.ca_file))
        except (ssl.SSLError, OSError, ValueError) as err:
            problems.add(("ca_file",), f"{self.ca_file} holds no usable CA certificate ({err})")
        else:
            if self.cert_file is not None and self.key_file is not None:
                try:
                    context.load_cert_chain(str(self.cert_file), str(self.key_file))
                except (ssl.SSLError, OSError, ValueError) as err:
                    problems.add(
                        ("cert_file",),
                        f"{self.cert_file} and {self.key_file} are not a certificate and its "
                        f"private key ({err})",
                    )
        problems.raise_any(self)
        return self


def mqtt_string_problem(text: str, what: str) -> str | None:
    """Why `text` cannot be sent as an MQTT string (UTF-8, at most 65,535 bytes, no NUL
    and, as MQTT 5 asks, no control characters), or None."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_MQTT_STRING:
        return f"{what} of {size} bytes is longer than MQTT allows ({MAX_MQTT_STRING} bytes)"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in text):
        return f"{shown(text)}: {what} must not hold control characters (NUL, newline, ...)"
    return None


# The defaults below keep a promise: data flows again within 10 s of the link or the
# broker returning, whatever the length of the outage (measured: bench/recovery_bench.py,
# docs/performance.md). The worst case after the way back opens is the longer of one
# connect attempt (`connect_timeout`, an attempt begun just before) and one back-off
# delay (`reconnect_max`, a hard cap), plus a round trip; and a connection that died
# without a reset is given up `publish_timeout` after its last PUBACK.
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_RECONNECT_MAX = 5.0
DEFAULT_PUBLISH_TIMEOUT = 5.0
DEFAULT_KEEPALIVE = 10.0


class MqttConfig(StrictModel):
    host: Host = "127.0.0.1"
    port: Annotated[Int, Field(ge=1, le=65535)] = 1883
    protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description="MQTT version: 5 tells a refused publish (PUBACK reason code) from a "
        "stored one; 3.1.1 for brokers that lack 5",
    )
    client_id: str | None = Field(None, description="defaults to 'edge-gateway-<gateway id>'")
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = None
    keepalive: Annotated[Duration, Field(ge=1.0, le=65535.0)] = Field(
        DEFAULT_KEEPALIVE,
        description="MQTT keepalive: an idle link is checked this often; the broker "
        "publishes the last will after 1.5x this of silence",
    )
    topic_prefix: str = Field(
        "city", description="first level(s) of every topic: <topic_prefix>/<gateway id>/..."
    )
    max_inflight: Annotated[Int, Field(ge=1, le=1000)] = Field(
        20, description="QoS 1 publishes awaiting PUBACK"
    )
    publish_timeout: Annotated[Duration, Field(ge=1.0, le=3600.0)] = Field(
        DEFAULT_PUBLISH_TIMEOUT,
        description="publishes in flight and no PUBACK for this long: the link is dead; "
        "reconnect and send again",
    )
    connect_timeout: Annotated[Duration, Field(ge=0.5, le=300.0)] = Field(
        DEFAULT_CONNECT_TIMEOUT,
        description="one connect attempt (TCP, then the broker's CONNACK) gives up after "
        "this; a TLS handshake may add as much again",
    )
    reconnect_min: Annotated[Duration, Field(le=3600.0)] = Field(
        0.5, description="first reconnect delay; doubles on each failure up to reconnect_max"
    )
    reconnect_max: Annotated[Duration, Field(le=3600.0)] = Field(
        DEFAULT_RECONNECT_MAX,
        description="hard cap of the reconnect delay (jitter only shortens it); delays "
        "count from the start of the failed attempt",
    )
    health_interval: Annotated[Duration, Field(ge=1.0)] = 30.0

    @model_validator(mode="after")
    def _deliverable(self) -> MqttConfig:
        """Everything the broker would refuse (or never deliver) is refused here."""
        problems = Problems()
        if self.reconnect_min > self.reconnect_max:
            problems.add(("reconnect_min",), "reconnect_min must not exceed reconnect_max")
        if self.password is not None and self.username is None:
            problems.add(("password",), "password is set but username is not")
        for key in ("client_id", "username", "password"):
            value = getattr(self, key)
            if value is not None and (why := mqtt_string_problem(value, key)) is not None:
                problems.add((key,), why)
        if self.client_id == "":
            problems.add(("client_id",), "is empty; leave it out for 'edge-gateway-<gateway id>'")
        why = topic_prefix_problem(self.topic_prefix)
        if why is not None:
            problems.add(("topic_prefix",), why)
        problems.raise_any(self)
        return self


def topic_prefix_problem(prefix: str) -> str | None:
    """Why topics starting with `prefix` would never be delivered, or None."""
    if not prefix:
        return "is empty; topics would start with '/' (the default is 'city')"
    if prefix.startswith("$"):
        return (
            f"{shown(prefix)} starts with '$': brokers keep such topics for themselves "
            "($SYS) and never deliver them to '#' subscribers"
        )
    if "+" in prefix or "#" in prefix:
        return f"{shown(prefix)} holds a wildcard ('+' or '#'), which no published topic may"
    why = mqtt_string_problem(prefix, "topic_prefix")
    if why is not None:
        return why
    size = len(prefix.encode("utf-8"))
    if size > MAX_TOPIC_PREFIX:
        return f"is {size} bytes long; at most {MAX_TOPIC_PREFIX} (the topic adds more)"
    if prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        return f"{shown(prefix)} makes empty topic levels; write levels like 'city/north'"
    return None
