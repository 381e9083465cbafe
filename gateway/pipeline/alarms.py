"""Alarm rules as small state machines over the readings of one point (pure).

Each rule sees every reading of its point (raw, before filters) through
``update`` and returns an :class:`AlarmEvent` when its state changes, else
``None``. ``update`` never raises, whatever the reading.

**Which readings count.** A reading counts when its value is a number (``int``
or ``float``, not ``bool``; not ``nan``) and its quality is GOOD or
OUT_OF_RANGE. OUT_OF_RANGE counts on purpose: a gas reading beyond the
detector's plausible range is exactly when the alarm matters. Every other
reading (``None`` from a silent device, text, a bad checksum, a spike, ``nan``)
changes nothing: no raise, no clear, and a running delay timer keeps running —
the gap says nothing about the value, and an alarm condition seen on both sides
of a gap is raised once the delay has passed.

**Delays** are measured on reading timestamps. A rule is *violating*, *normal*
or (threshold rules only) *in between*. It raises once it has been violating
continuously for ``on_delay_ms`` — with 0, the first violating reading raises —
and clears once it has been normal continuously for ``off_delay_ms``. A reading
that does not go on with the condition being timed restarts the timer: a
normal or in-between reading while raising, a violating or in-between one
while clearing. A timestamp earlier than the timer's start restarts it too
(the clock stepped back).

**ThresholdAlarm**: violating above ``high`` (or below ``low``); normal below
``high - hysteresis`` (and above ``low + hysteresis``); in between otherwise —
which keeps the state as it is. With both limits, the normal band must not be
empty (``2 * hysteresis < high - low``).

**RateOfRiseAlarm**: the rise is the value now minus the lowest value among the
counted readings of the last ``per_ms`` (``ts_ms >= now - per_ms``, this reading
included); violating when the rise is above ``max_rise``, normal otherwise.
``±inf`` does not count here (a rise from or to infinity means nothing). The
window is a monotonic deque (O(1) per reading), at most
:data:`RISE_WINDOW_LIMIT` entries; a timestamp earlier than the last one (the
clock stepped back) starts the window afresh.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from math import isfinite
from typing import Final, Literal

from drivers.core.model import Quality, Reading

__all__ = [
    "RISE_WINDOW_LIMIT",
    "SEVERITIES",
    "AlarmEvent",
    "RateOfRiseAlarm",
    "ThresholdAlarm",
]

SEVERITIES: Final = ("info", "warning", "critical")
RISE_WINDOW_LIMIT: Final = 65_536
"""Most (timestamp, value) pairs a rate-of-rise rule keeps; more only when values
rise on every reading at a high rate, and then the oldest minimum is forgotten."""

_GOOD: Final = int(Quality.GOOD)
_OUT_OF_RANGE: Final = int(Quality.OUT_OF_RANGE)

State = Literal["raised", "cleared"]


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """An alarm was raised or cleared, at ``ts_ms`` of the reading that decided it."""

    alarm: str
    device: str
    point: str
    state: State
    ts_ms: int
    value: float | None
    severity: str
    message: str  # for people: "gas-3/ch4 = 21.4 %LEL is above 20 for 5s (raised)"

    def as_dict(self) -> dict[str, object]:
        return {
            "alarm": self.alarm,
            "device": self.device,
            "point": self.point,
            "state": self.state,
            "ts_ms": self.ts_ms,
            "value": self.value,
            "severity": self.severity,
            "message": self.message,
        }


def _counted(reading: Reading, *, finite: bool) -> float | None:
    """The reading's value as a float if it counts for alarms, else None."""
    quality = reading.quality
    if quality != _GOOD and quality != _OUT_OF_RANGE:
        return None
    value = reading.value
    if type(value) is float:
        number = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond the float range
            number = float("inf") if value > 0 else float("-inf")
    else:
        return None
    if number != number or (finite and not isfinite(number)):
        return None
    return number


class _Rule:
    """What every rule has: its names, severity and unit, and the raised/cleared
    state with its on- and off-delay."""

    __slots__ = (
        "_since",
        "_unit",
        "active",
        "device",
        "name",
        "off_delay_ms",
        "on_delay_ms",
        "point",
        "severity",
    )

    def __init__(
        self,
        name: str,
        device: str,
        point: str,
        on_delay_ms: int,
        off_delay_ms: int,
        severity: str,
        unit: str | None,
    ) -> None:
        if not name:
            raise ValueError("an alarm needs a name")
        if on_delay_ms < 0 or off_delay_ms < 0:
            raise ValueError(
                f"alarm {name!r}: delays must not be negative ({on_delay_ms=}, {off_delay_ms=})"
            )
        if severity not in SEVERITIES:
            raise ValueError(
                f"alarm {name!r}: severity must be one of {SEVERITIES}, got {severity!r}"
            )
        self.name, self.device, self.point = name, device, point
        self.on_delay_ms, self.off_delay_ms = on_delay_ms, off_delay_ms
        self.severity = severity
        self.active = False
        self._unit = f" {unit}" if unit else ""
        self._since: int | None = None  # when the condition that would flip the state began

    def _flips(self, ts_ms: int, violating: bool | None) -> bool:
        """Feed one counted reading (None: in between); True when the state flipped."""
        if violating is None or violating == self.active:
            self._since = None
            return False
        since = self._since
        if since is None or ts_ms < since:
            self._since = since = ts_ms
        if ts_ms - since < (self.off_delay_ms if self.active else self.on_delay_ms):
            return False
        self.active = violating
        self._since = None
        return True

    def _event(self, reading: Reading, value: float, condition: str) -> AlarmEvent:
        """The event for the flip just made; ``condition`` completes the sentence."""
        state: State = "raised" if self.active else "cleared"
        delay = _for(self.on_delay_ms if self.active else self.off_delay_ms)
        message = (
            f"{reading.device}/{reading.point} = {_number(value)}{self._unit} "
            f"{condition}{delay} ({state})"
        )
        return AlarmEvent(
            self.name,
            reading.device,
            reading.point,
            state,
            reading.ts_ms,
            value,
            self.severity,
            message,
        )


def _number(value: float) -> str:
    return f"{value:g}"


def _duration(ms: int) -> str:
    if ms >= 60_000 and ms % 60_000 == 0:
        return f"{ms // 60_000}min"
    if ms >= 1000:
        return f"{ms / 1000:g}s"
    return f"{ms}ms"


def _for(ms: int) -> str:
    return f" for {_duration(ms)}" if ms else ""


class ThresholdAlarm(_Rule):
    """Raised above ``high`` / below ``low`` (after ``on_delay_ms``); cleared back
    inside the limits by ``hysteresis`` (after ``off_delay_ms``)."""

    __slots__ = ("_clear_high", "_clear_low", "high", "hysteresis", "low")

    def __init__(
        self,
        name: str,
        device: str,
        point: str,
        *,
        high: float | None = None,
        low: float | None = None,
        hysteresis: float = 0.0,
        on_delay_ms: int = 0,
        off_delay_ms: int = 0,
        severity: str = "warning",
        unit: str | None = None,
    ) -> None:
        super().__init__(name, device, point, on_delay_ms, off_delay_ms, severity, unit)
        if high is None and low is None:
            raise ValueError(f"alarm {name!r}: a threshold alarm needs high, low or both")
        for limit in (high, low, hysteresis):
            if limit is not None and not isfinite(limit):
                raise ValueError(f"alarm {name!r}: limits must be finite numbers, got {limit}")
        if hysteresis < 0:
            raise ValueError(f"alarm {name!r}: hysteresis must not be negative, got {hysteresis}")
        if high is not None and low is not None:
            if low >= high:
                raise ValueError(f"alarm {name!r}: low {low} must be below high {high}")
            if 2 * hysteresis >= high - low:
                raise ValueError(
                    f"alarm {name!r}: hysteresis {hysteresis} leaves no normal band "
                    f"between low {low} and high {high}"
                )
        self.high, self.low, self.hysteresis = high, low, hysteresis
        self._clear_high = None if high is None else high - hysteresis
        self._clear_low = None if low is None else low + hysteresis

    def update(self, reading: Reading, now_ms: int | None = None) -> AlarmEvent | None:
        """Feed one reading; `now_ms` is a monotonic clock for the delays (default:
        the reading's own timestamp, for tests and replays)."""
        value = _counted(reading, finite=False)
        if value is None:
            return None
        high, low = self.high, self.low
        violating: bool | None
        if (high is not None and value > high) or (low is not None and value < low):
            violating = True
        elif (self._clear_high is None or value < self._clear_high) and (
            self._clear_low is None or value > self._clear_low
        ):
            violating = False
        else:
            violating = None
        if not self._flips(reading.ts_ms if now_ms is None else now_ms, violating):
            return None
        if self.active:
            if high is not None and value > high:
                condition = f"is above {_number(high)}"
            else:
                condition = f"is below {_number(low)}"  # type: ignore[arg-type]
        else:
            limits = []
            if self._clear_high is not None:
                limits.append(f"below {_number(self._clear_high)}")
            if self._clear_low is not None:
                limits.append(f"above {_number(self._clear_low)}")
            condition = f"is back {' and '.join(limits)}"
        return self._event(reading, value, condition)


class RateOfRiseAlarm(_Rule):
    """Raised when the value rises more than ``max_rise`` within ``per_ms``."""

    __slots__ = ("_last_ts", "_window", "max_rise", "per_ms")

    def __init__(
        self,
        name: str,
        device: str,
        point: str,
        *,
        max_rise: float,
        per_ms: int,
        on_delay_ms: int = 0,
        off_delay_ms: int = 0,
        severity: str = "warning",
        unit: str | None = None,
    ) -> None:
        super().__init__(name, device, point, on_delay_ms, off_delay_ms, severity, unit)
        if not (isfinite(max_rise) and max_rise > 0):
            raise ValueError(f"alarm {name!r}: max_rise must be above 0, got {max_rise}")
        if per_ms <= 0:
            raise ValueError(f"alarm {name!r}: per_ms must be above 0, got {per_ms}")
        self.max_rise, self.per_ms = max_rise, per_ms
        # (ts_ms, value) with values strictly increasing from the left: the left end
        # is the lowest value of the window.
        self._window: deque[tuple[int, float]] = deque(maxlen=RISE_WINDOW_LIMIT)
        self._last_ts: int | None = None

    def update(self, reading: Reading, now_ms: int | None = None) -> AlarmEvent | None:
        """Feed one reading; `now_ms` is a monotonic clock for the window and the delays
        (default: the reading's own timestamp, for tests and replays)."""
        value = _counted(reading, finite=True)
        if value is None:
            return None
        ts_ms = reading.ts_ms if now_ms is None else now_ms
        window = self._window
        if self._last_ts is not None and ts_ms < self._last_ts:
            window.clear()
        self._last_ts = ts_ms
        while window and window[-1][1] >= value:
            window.pop()
        window.append((ts_ms, value))
        oldest = ts_ms - self.per_ms
        while window[0][0] < oldest:
            window.popleft()
        rise = value - window[0][1]
        if not self._flips(ts_ms, rise > self.max_rise):
            return None
        limit = f"{'more' if self.active else 'not more'} than {_number(self.max_rise)}"
        return self._event(
            reading,
            value,
            f"rose {_number(rise)}{self._unit} within {_duration(self.per_ms)}, {limit}",
        )
