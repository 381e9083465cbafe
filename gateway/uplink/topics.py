"""The MQTT topic scheme (documented in docs/topics.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard

MAX_TOPIC_BYTES = 65535  # MQTT: a topic name is a UTF-8 string of at most 65,535 bytes


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

    def command_verb(self, topic: str) -> str | None:
        """The verb of a command to this gateway (the last level of `cmd/{verb}`), or None
        when `topic` is not one of this gateway's command topics."""
        head = f"{self.base}/cmd/"
        if not topic.startswith(head):
            return None
        verb = topic[len(head) :]
        return None if "/" in verb else verb


def is_topic_name(name: object) -> TypeGuard[str]:
    """Whether `name` can be published to: a non-empty string without wildcards (`+`, `#`)
    or U+0000, at most 65,535 bytes of UTF-8 (MQTT 5, section 4.7)."""
    if not isinstance(name, str) or not name or any(c in name for c in "+#\0"):
        return False
    try:
        return len(name.encode("utf-8")) <= MAX_TOPIC_BYTES
    except UnicodeEncodeError:  # a lone surrogate: not UTF-8
        return False
