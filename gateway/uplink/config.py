"""The `[mqtt]` section: how the gateway reaches the city centre's broker."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, FilePath, model_validator

from gateway.config_types import Duration, StrictModel


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
    keepalive: Annotated[Duration, Field(ge=1.0)] = 30.0
    topic_prefix: str = Field("city", pattern=r"^[^#+]+$")
    max_inflight: int = Field(20, ge=1, le=1000, description="QoS 1 publishes awaiting PUBACK")
    publish_timeout: Annotated[Duration, Field(ge=1.0)] = Field(
        30.0, description="an unacknowledged publish older than this drops the connection"
    )
    reconnect_min: Duration = 0.5
    reconnect_max: Duration = 60.0
    health_interval: Annotated[Duration, Field(ge=1.0)] = 30.0

    @model_validator(mode="after")
    def _backoff_order(self) -> MqttConfig:
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("reconnect_min must not exceed reconnect_max")
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not")
        return self
