"""What every driver offers the gateway, and the per-device health it keeps.

A driver polls or listens to field devices and hands readings to a sink (the
batcher's `add`). It runs until cancelled and never raises for device trouble:
a device that fails is marked offline, logged once, retried with back-off.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.model import Reading

ReadingSink = Callable[[Sequence[Reading]], None]


@dataclass(slots=True)
class DeviceHealth:
    """Counters and state of one field device, published on the health topic."""

    name: str
    address: str  # human-readable: 'unit 3 at 10.0.0.5:502'
    online: bool | None = None  # None until the first poll completed
    requests: int = 0
    responses: int = 0
    timeouts: int = 0
    crc_errors: int = 0  # answers that arrived garbled (bad CRC / checksum)
    framing_errors: int = 0  # bytes discarded while looking for a frame
    errors: int = 0  # connection errors and malformed responses
    modbus_exceptions: dict[int, int] = field(default_factory=dict)
    readings: int = 0
    last_error: str | None = None
    last_latency_ms: float | None = None
    offline_since: float | None = None  # unix time

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "state": {True: "online", False: "offline", None: "unknown"}[self.online],
            "requests": self.requests,
            "responses": self.responses,
            "timeouts": self.timeouts,
            "crc_errors": self.crc_errors,
            "framing_errors": self.framing_errors,
            "errors": self.errors,
            "modbus_exceptions": {str(k): v for k, v in self.modbus_exceptions.items()},
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


def backoff_delay(failures: int, base: float, maximum: float) -> float:
    """Jittered exponential back-off: base * 2^(failures-1), capped, +/-20 % jitter."""
    exponent = min(max(0, failures - 1), 30)  # capped: days of failures must not overflow
    delay: float = min(maximum, base * 2.0**exponent)
    return delay * random.uniform(0.8, 1.2)
