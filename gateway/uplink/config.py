"""The `[mqtt]` section: how the gateway reaches the city centre's broker."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, FilePath, model_validator

from gateway.core.config_types import Duration, StrictModel


class TlsConfig(StrictModel):
    # FilePath: a missing certificate is a config error naming the key, not a crash at start.
    ca_file: FilePath = Field(description="CA certificate(s) that signed the broker's certificate")
    cert_file: FilePath | None = Field(None, description="client certificate, for mutual TLS")
    key_file: FilePath | None = Field(None, description="client private key, for mutual TLS")
    verify_hostname: bool = True

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together for mutual TLS; set both or none")
        return self


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
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
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
    topic_prefix: str = Field("city", pattern=r"^[^#+]+$")
    max_inflight: int = Field(20, ge=1, le=1000, description="QoS 1 publishes awaiting PUBACK")
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
    def _backoff_order(self) -> MqttConfig:
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("reconnect_min must not exceed reconnect_max")
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not")
        return self
