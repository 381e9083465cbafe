"""The MQTT topic scheme (documented in docs/topics.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    gateway_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.gateway_id}"

    @property
    def data(self) -> str:
        """msgpack batches (docs/wire-format.md), QoS 1."""
        return f"{self.base}/data"

    @property
    def history(self) -> str:
        """Backlog batches found on disk at connect time: same format as data, sent
        alongside live data. Subscribe to `{prefix}/+/data/#` for both."""
        return f"{self.base}/data/history"

    @property
    def alarm(self) -> str:
        """JSON alarm events (raised / cleared), QoS 1, published ahead of the data backlog."""
        return f"{self.base}/alarm"

    @property
    def status(self) -> str:
        """Retained JSON: online (birth) / offline (last will or clean stop)."""
        return f"{self.base}/status"

    @property
    def health(self) -> str:
        """Periodic JSON health report."""
        return f"{self.base}/health"

    @property
    def event(self) -> str:
        """JSON events (a device went offline, eviction started, a config was applied...)."""
        return f"{self.base}/event"

    def device(self, name: str) -> str:
        """Retained JSON: the present state of one device."""
        return f"{self.base}/device/{name}"

    @property
    def alarms_active(self) -> str:
        """Retained JSON: every alarm raised now."""
        return f"{self.base}/alarms/active"

    def meta(self, config_hash: str) -> str:
        """Retained JSON: devices and points of one config version."""
        return f"{self.base}/meta/{config_hash}"

    def command(self, verb: str) -> str:
        """Signed commands to this gateway ('+' for every verb)."""
        return f"{self.base}/cmd/{verb}"

    def reply(self, verb: str) -> str:
        """Replies to commands, unless the command named an MQTT 5 response topic."""
        return f"{self.base}/reply/{verb}"
