"""What every driver offers the gateway, and the per-device health it keeps.

A driver polls or listens to field devices and hands readings to a sink (the
batcher's `add`). It runs until cancelled and never raises for device trouble:
a device that fails is marked offline, logged once, retried with back-off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from gateway.core.model import Reading

ReadingSink = Callable[[Sequence[Reading]], None]


DeviceState = Literal["unknown", "online", "degraded", "offline"]

_log = logging.getLogger("drivers")


@dataclass(slots=True)
class DeviceHealth:
    """State and counters of one field device, published on the health topic.

    The state machine every driver shares: ``unknown`` until the first poll ends,
    ``online`` (everything read), ``degraded`` (the device answers, but part of what
    it says is unusable: refused or malformed answers, values that fail to convert),
    ``offline`` (no usable answer at all). `set_state` logs each change once, in
    words, with how long the previous trouble lasted; counters say how often.
    """

    name: str
    address: str  # human-readable: 'unit 3 at 10.0.0.5:502'
    state: DeviceState = "unknown"
    requests: int = 0
    responses: int = 0
    timeouts: int = 0
    crc_errors: int = 0  # answers that arrived garbled (bad CRC / checksum)
    framing_errors: int = 0  # bytes discarded while looking for a frame
    malformed: int = 0  # whole answers that break the protocol (length, ids, function)
    errors: int = 0  # connection errors (cannot open, connection lost)
    modbus_exceptions: dict[int, int] = field(default_factory=dict)
    invalid_values: int = 0  # values sent as nil + invalid_value (docs/wire-format.md)
    shed_bytes: int = 0  # bytes dropped because the device sent faster than allowed
    readings: int = 0
    last_error: str | None = None
    last_latency_ms: float | None = None
    offline_since: float | None = None  # unix time the device went offline
    trouble_since: float | None = None  # monotonic time the device left 'online'
    log: logging.Logger = field(default=_log, repr=False)  # the driver's logger

    @property
    def online(self) -> bool | None:
        """True while the device answers (fully or degraded), False offline, None unknown."""
        return None if self.state == "unknown" else self.state != "offline"

    def set_state(self, state: DeviceState, reason: str | None = None, *, action: str = "") -> bool:
        """Move to `state`, logging the change once; True when it changed.

        `reason` says what happened (kept as `last_error`), `action` what the driver
        does about it ("retrying with back-off up to 60s").
        """
        if reason is not None:
            self.last_error = reason
        previous = self.state
        if state == previous:
            return False
        now = time.monotonic()
        self.state = state
        where = f"device {self.name!r} ({self.address})"
        tail = f"; {action}" if action else ""
        if state == "online":
            if previous == "unknown":
                self.log.info("%s is answering%s", where, f": {action}" if action else "")
            else:
                lasted = now - (self.trouble_since or now)
                again = "answers again" if previous == "offline" else "is fully readable again"
                self.log.info("%s %s after %.1fs %s", where, again, lasted, previous)
            self.trouble_since = None
            self.offline_since = None
            return True
        if self.trouble_since is None:
            self.trouble_since = now
        if state == "offline":
            self.offline_since = time.time()
        else:
            self.offline_since = None
        self.log.warning("%s is %s: %s%s", where, state, reason or self.last_error or "", tail)
        return True

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "state": self.state,
            "requests": self.requests,
            "responses": self.responses,
            "timeouts": self.timeouts,
            "crc_errors": self.crc_errors,
            "framing_errors": self.framing_errors,
            "malformed": self.malformed,
            "errors": self.errors,
            "modbus_exceptions": {str(k): v for k, v in self.modbus_exceptions.items()},
            "invalid_values": self.invalid_values,
            "shed_bytes": self.shed_bytes,
            "readings": self.readings,
            "last_error": self.last_error,
            "last_latency_ms": self.last_latency_ms,
            "offline_since": self.offline_since,
        }


class Driver(Protocol):
    """A running connection to one or more field devices."""

    name: str

    async def run(self) -> None:
        """Poll or listen until cancelled."""

    def health(self) -> list[DeviceHealth]:
        """Current per-device state and counters."""
