"""The processing stage between drivers and the batcher.

Drivers hand every reading here (synchronously, like the batcher's `add`). For
each reading, the alarm rules on its point see the raw value first — so a
deadband or a dropped spike can never hide an alarm transition — then the
point's processor (range check, spike, smoothing, deadband/heartbeat,
aggregation; `filters.py`) decides what goes on to the batcher. Points without
processing and without alarms pass straight through at the cost of a dict lookup.

Every reading is checked first (`drivers.core.model.value_problem`): a value the wire
cannot carry, or that would poison filters and alarms (NaN, infinities, integers
beyond 64 bits, over-long or broken text), becomes no value with quality
invalid_value, and `on_invalid` hears of it (the gateway counts it per device and
logs it once per point). So what leaves here is always encodable.

Alarm delays, heartbeats and spike rates are measured on the monotonic clock
(`clock`, milliseconds), never on the readings' wall-clock timestamps, which
step when NTP sets the clock.

Everything is compiled once at start-up from the config (`compile_processing`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from drivers.base import ReadingSink
from drivers.core.model import Reading, all_usable, invalid_reading, value_problem
from drivers.core.spec import milliseconds, spec_of
from gateway.pipeline.alarms import AlarmEvent, RateOfRiseAlarm, ThresholdAlarm
from gateway.pipeline.filters import PointProcessor, is_passthrough

if TYPE_CHECKING:  # the daemon runs on the config's records (gateway/loaded.py)
    from gateway.settings import GatewayConfig

Alarm = ThresholdAlarm | RateOfRiseAlarm
PointKey = tuple[str, str]
OnInvalid = Callable[[Reading, str], None]


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def _ignore_invalid(reading: Reading, problem: str) -> None:
    pass


def checked(readings: Sequence[Reading], on_invalid: OnInvalid) -> Sequence[Reading]:
    """`readings` with every unusable value replaced (no value, quality invalid_value).

    The common case, every value fine, returns `readings` itself after one pass."""
    if all_usable([r.value for r in readings]):
        return readings
    return _replaced(readings, on_invalid)


def _replaced(readings: Sequence[Reading], on_invalid: OnInvalid) -> list[Reading]:
    out = []
    for reading in readings:
        problem = value_problem(reading.value)
        if problem is None:
            out.append(reading)
        else:
            on_invalid(reading, problem)
            out.append(invalid_reading(reading))
    return out


class Processing:
    def __init__(
        self,
        processors: dict[PointKey, PointProcessor],
        alarms: dict[PointKey, list[Alarm]],
        out: ReadingSink,
        on_alarm: Callable[[AlarmEvent], None],
        *,
        on_invalid: OnInvalid = _ignore_invalid,
        clock_ms: Callable[[], int] = _monotonic_ms,
    ) -> None:
        self.processors = processors
        self.alarms = alarms
        self._out = out
        self._on_alarm = on_alarm
        self._on_invalid = on_invalid
        self._clock_ms = clock_ms
        self._idle = not processors and not alarms
        self.alarm_events = 0
        self.invalid_values = 0

    def _invalid(self, reading: Reading, problem: str) -> None:
        self.invalid_values += 1
        self._on_invalid(reading, problem)

    def add(self, readings: Sequence[Reading]) -> None:
        readings = checked(readings, self._invalid)
        if self._idle:
            self._out(readings)
            return
        processors, alarms = self.processors, self.alarms
        now_ms = self._clock_ms()
        result: list[Reading] = []
        for reading in readings:
            key = (reading.device, reading.point)
            rules = alarms.get(key)
            if rules is not None:
                for rule in rules:
                    event = rule.update(reading, now_ms)
                    if event is not None:
                        self.alarm_events += 1
                        self._on_alarm(event)
            processor = processors.get(key)
            if processor is None:
                result.append(reading)
            else:
                # Processors compute (means, aggregates): check what they make too.
                result.extend(checked(processor.process(reading, now_ms), self._invalid))
        if result:
            self._out(result)

    def flush(self, now_ms: int, *, only: Sequence[PointProcessor] | None = None) -> None:
        """Close open aggregation windows (at shutdown; `only` these at a reload)."""
        result: list[Reading] = []
        for processor in self.processors.values() if only is None else only:
            result.extend(checked(processor.flush(now_ms), self._invalid))
        if result:
            self._out(result)

    def counters(self) -> dict[str, int]:
        totals = {"alarm_events": self.alarm_events, "invalid_values": self.invalid_values}
        for processor in self.processors.values():
            for name, value in processor.counters().items():
                totals[name] = totals.get(name, 0) + value
        return totals


def compile_processing(
    config: GatewayConfig,
    out: ReadingSink,
    on_alarm: Callable[[AlarmEvent], None],
    *,
    on_invalid: OnInvalid = _ignore_invalid,
    clock_ms: Callable[[], int] = _monotonic_ms,
    previous: Processing | None = None,
) -> Processing:
    """Compile the processing of every point and the alarm rules. With `previous` (a
    reload), processors and rules whose configuration did not change are carried over
    with their state: an active alarm stays active, a deadband keeps its reference."""
    old_processors = previous.processors if previous is not None else {}
    old_rules = {
        rule.name: rule
        for rules in (previous.alarms if previous else {}).values()
        for rule in rules
    }
    processors: dict[PointKey, PointProcessor] = {}
    units: dict[PointKey, str | None] = {}
    for device in config.devices:
        for point in device.points:
            key = (device.name, point.name)
            units[key] = point.unit
            if point.process is None:
                continue
            spec = spec_of(point.process)
            if not is_passthrough(spec):
                old = old_processors.get(key)
                processors[key] = (
                    old if old is not None and old.spec == spec else PointProcessor(spec)
                )
    alarms: dict[PointKey, list[Alarm]] = {}
    for a in config.alarms:
        key = (a.device, a.point)
        rule: Alarm
        if a.kind == "threshold":
            rule = ThresholdAlarm(
                a.name,
                a.device,
                a.point,
                high=a.high,
                low=a.low,
                hysteresis=a.hysteresis,
                on_delay_ms=milliseconds(a.on_delay) or 0,
                off_delay_ms=milliseconds(a.off_delay) or 0,
                severity=a.severity,
                unit=units.get(key),
            )
        else:
            rule = RateOfRiseAlarm(
                a.name,
                a.device,
                a.point,
                max_rise=a.max_rise,
                per_ms=milliseconds(a.per) or 1,
                on_delay_ms=milliseconds(a.on_delay) or 0,
                off_delay_ms=milliseconds(a.off_delay) or 0,
                severity=a.severity,
                unit=units.get(key),
            )
        old_rule = old_rules.get(a.name)
        if old_rule is not None and _rule_key(old_rule) == _rule_key(rule):
            rule = old_rule
        alarms.setdefault(key, []).append(rule)
    return Processing(processors, alarms, out, on_alarm, on_invalid=on_invalid, clock_ms=clock_ms)


def _rule_key(rule: Alarm) -> tuple[object, ...]:
    """What defines a rule: two rules with equal keys behave the same."""
    return (type(rule), *(getattr(rule, name, None) for name in _RULE_FIELDS))


_RULE_FIELDS = (
    "name",
    "device",
    "point",
    "on_delay_ms",
    "off_delay_ms",
    "severity",
    "_unit",
    "high",
    "low",
    "hysteresis",
    "max_rise",
    "per_ms",
)
