"""What every driver offers the gateway, and what every protocol plugin is made of.

A driver polls or listens to field devices and hands readings to a sink (the
batcher's `add`). It runs until cancelled and never raises for device trouble:
a device that fails is marked offline, logged once, retried with back-off. It says
what it will do before it runs (`plan()`: the lines `edge-gateway validate` prints,
requests and line time) and how its devices are doing while it runs (`health()`).

A protocol is a `DriverPlugin`: its device config models, its build step (configs to
drivers) and its checks across devices. drivers/registry.py lists the plugins; the
gateway knows protocols only through them (drivers/README.md: adding a protocol).
"""

from __future__ import annotations

import logging
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from drivers.core.model import Reading
from drivers.core.words import Loc

if TYPE_CHECKING:  # the daemon runs without the config's validation (gateway/loaded.py)
    from pydantic import BaseModel

    from drivers.core.processing import ProcessingConfig

ReadingSink = Callable[[Sequence[Reading]], None]


def discard(readings: Sequence[Reading]) -> None:
    """The sink of drivers that are built only to be asked for their plan, never run."""


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
    # Told of every change of state (the gateway publishes events and retained states).
    on_change: Callable[[DeviceHealth, str], None] | None = field(default=None, repr=False)

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
        if self.on_change is not None:
            self.on_change(self, previous)
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


# --- what a driver will do ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """What one device's driver will do, as `edge-gateway validate` reports it."""

    name: str
    summary: str  # the line validate prints: 'pump: 6 point(s) in 4 request(s) every 1s (...)'
    points: int
    requests: int  # requests sent per poll cycle (0 for an instrument that talks on its own)
    line_time: float | None = None  # seconds on a serial bus one poll takes (see BusEstimate)
    details: tuple[str, ...] = ()
    """Lines `validate` prints under `summary` (Modbus: each request, the points it
    serves, the line time); each relative to the device, indented by the printer."""
    reads: tuple[dict[str, Any], ...] = ()
    """What each request reads, as plain data (`validate --json`)."""


@dataclass(frozen=True, slots=True)
class BusEstimate:
    """The line time a serial bus (several slaves on one port) needs, with every request
    answered at once and no retries: a lower bound.

    `line_time` is what the bus needs per `cycle`, the shortest poll interval on it
    (slaves polled less often count in proportion); above `cycle`, polls fall behind."""

    port: str
    baudrate: int
    devices: tuple[str, ...]
    cycle: float
    line_time: float

    @property
    def load(self) -> float:
        """The share of the line's time the polls need (above 1: more than there is)."""
        return self.line_time / self.cycle

    @property
    def summary(self) -> str:
        """The line `validate` prints for the bus."""
        return (
            f"bus {self.port} at {self.baudrate} baud: {seconds_text(self.line_time)} of line "
            f"time per {seconds_text(self.cycle)} cycle ({self.load:.1%}), with every request "
            f"answered and no retries ({', '.join(self.devices)})"
        )


@dataclass(frozen=True, slots=True)
class DriverPlan:
    """What one driver (one line: a connection or a port) will do."""

    devices: tuple[DevicePlan, ...]
    bus: BusEstimate | None = None  # for a driver that shares a serial bus among slaves


class Driver(Protocol):
    """A running connection to one or more field devices."""

    name: str

    async def run(self) -> None:
        """Poll or listen until cancelled."""

    def health(self) -> list[DeviceHealth]:
        """Current per-device state and counters."""

    def plan(self) -> DriverPlan:
        """What it will poll, compiled at start-up (`validate` prints it)."""


# --- what a protocol is -------------------------------------------------------------------------

Problem = tuple[Loc, str]
"""A problem or warning: the key path in the file (('devices', 3, 'unit')) and the reason."""


class PointSettings(Protocol):
    """What the gateway reads of any protocol's point config (processing, alarms)."""

    @property
    def name(self) -> str: ...

    @property
    def unit(self) -> str | None: ...

    @property
    def process(self) -> ProcessingConfig | None: ...


class DeviceSettings(Protocol):
    """What the gateway reads of any protocol's device config (cross-checks, processing)."""

    @property
    def name(self) -> str: ...

    @property
    def protocol(self) -> str: ...

    @property
    def points(self) -> Sequence[PointSettings]: ...

    @property
    def line(self) -> str:
        """The port or host:port the device is reached through (devices on one line share
        it: only devices of one protocol of a plugin with `shares_lines` may)."""


D = TypeVar("D", bound=DeviceSettings)
Indexed = Sequence[tuple[int, D]]
"""Devices of one plugin, each with its index in the file's [[devices]]."""


def no_problems(devices: Indexed[Any]) -> list[Problem]:
    return []


@dataclass(frozen=True)
class DriverPlugin(Generic[D]):
    """One protocol (one folder under drivers/): all the gateway needs to know of it.

    `configs` are the device config models, one per `protocol = "..."` value (a
    `Literal` field named `protocol`); the gateway's [[devices]] list is the union of
    every plugin's models. `check` and `warn` look across its devices (each with its
    index in [[devices]]) for problems and for what is valid but probably not meant;
    what concerns one device alone belongs in its model's validators.

    Its drivers come from `build(devices, sink)` in the folder's `build.py`, found by
    the folder's name (gateway/build.py): the daemon builds from the config's records
    without importing the plugin, its models or pydantic (gateway/loaded.py).
    """

    name: str  # the folder: 'modbus'
    title: str  # in sentences: 'Modbus'
    configs: tuple[type[BaseModel], ...]
    check: Callable[[Indexed[D]], list[Problem]] = no_problems
    warn: Callable[[Indexed[D]], list[Problem]] = no_problems
    shares_lines: bool = False  # devices of one protocol may share a port or host:port

    @property
    def protocols(self) -> tuple[str, ...]:
        """The `protocol` values of its devices, from its config models."""
        return tuple(
            tag
            for model in self.configs
            for tag in typing.get_args(model.model_fields["protocol"].annotation)
        )


# --- warnings several protocols give -----------------------------------------------------------


class Polled(Protocol):
    """A device config that waits `timeout` for each answer, every `poll_interval`."""

    @property
    def timeout(self) -> float: ...

    @property
    def poll_interval(self) -> float: ...

    @property
    def model_fields_set(self) -> set[str]: ...


def late_poll_warnings(devices: Sequence[tuple[int, Polled]]) -> list[Problem]:
    """A warning for each device whose `timeout` is not shorter than its `poll_interval`
    (when either is set: the defaults are the same and fine)."""
    found: list[Problem] = []
    for i, dev in devices:
        chosen = bool({"timeout", "poll_interval"} & dev.model_fields_set)
        if chosen and dev.timeout >= dev.poll_interval:
            found.append(
                (
                    ("devices", i, "timeout"),
                    f"{seconds_text(dev.timeout)} is not shorter than poll_interval "
                    f"{seconds_text(dev.poll_interval)}: a device that does not answer makes "
                    "polls late (and on a shared line, its neighbours' polls too); make "
                    "timeout shorter than poll_interval",
                )
            )
    return found


def seconds_text(seconds: float) -> str:
    """A duration as a technician writes it: '300ms', '1.5s'."""
    if seconds < 1:
        return f"{seconds * 1000:.3g}ms"
    return f"{seconds:.3g}s"
