"""The processing stage between drivers and the batcher.

Drivers hand every reading here (synchronously, like the batcher's `add`). For
each reading, the alarm rules on its point see the raw value first — so a
deadband or a dropped spike can never hide an alarm transition — then the
point's processor (range check, spike, smoothing, deadband/heartbeat,
aggregation; `filters.py`) decides what goes on to the batcher. Points without
processing and without alarms pass straight through at the cost of a dict lookup.

Everything is compiled once at start-up from the config (`compile_processing`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from drivers.base import ReadingSink
from gateway.model import Reading
from gateway.pipeline.alarms import AlarmEvent, RateOfRiseAlarm, ThresholdAlarm
from gateway.pipeline.filters import PointProcessor, is_passthrough
from gateway.settings import GatewayConfig, ThresholdAlarmConfig

Alarm = ThresholdAlarm | RateOfRiseAlarm
PointKey = tuple[str, str]


class Processing:
    def __init__(
        self,
        processors: dict[PointKey, PointProcessor],
        alarms: dict[PointKey, list[Alarm]],
        out: ReadingSink,
        on_alarm: Callable[[AlarmEvent], None],
    ) -> None:
        self.processors = processors
        self.alarms = alarms
        self._out = out
        self._on_alarm = on_alarm
        self._idle = not processors and not alarms
        self.alarm_events = 0

    def add(self, readings: Sequence[Reading]) -> None:
        if self._idle:
            self._out(readings)
            return
        processors, alarms = self.processors, self.alarms
        result: list[Reading] = []
        for reading in readings:
            key = (reading.device, reading.point)
            rules = alarms.get(key)
            if rules is not None:
                for rule in rules:
                    event = rule.update(reading)
                    if event is not None:
                        self.alarm_events += 1
                        self._on_alarm(event)
            processor = processors.get(key)
            if processor is None:
                result.append(reading)
            else:
                result.extend(processor.process(reading))
        if result:
            self._out(result)

    def flush(self, now_ms: int) -> None:
        """Close open aggregation windows (at shutdown)."""
        result: list[Reading] = []
        for processor in self.processors.values():
            result.extend(processor.flush(now_ms))
        if result:
            self._out(result)

    def counters(self) -> dict[str, int]:
        totals = {"alarm_events": self.alarm_events}
        for processor in self.processors.values():
            for name, value in processor.counters().items():
                totals[name] = totals.get(name, 0) + value
        return totals


def compile_processing(
    config: GatewayConfig, out: ReadingSink, on_alarm: Callable[[AlarmEvent], None]
) -> Processing:
    processors: dict[PointKey, PointProcessor] = {}
    units: dict[PointKey, str | None] = {}
    for device in config.devices:
        for point in device.points:
            key = (device.name, point.name)
            units[key] = point.unit
            if point.process is None:
                continue
            spec = point.process.spec()
            if not is_passthrough(spec):
                processors[key] = PointProcessor(spec)
    alarms: dict[PointKey, list[Alarm]] = {}
    for a in config.alarms:
        key = (a.device, a.point)
        rule: Alarm
        if isinstance(a, ThresholdAlarmConfig):
            rule = ThresholdAlarm(
                a.name,
                a.device,
                a.point,
                high=a.high,
                low=a.low,
                hysteresis=a.hysteresis,
                on_delay_ms=_ms(a.on_delay) or 0,
                off_delay_ms=_ms(a.off_delay) or 0,
                severity=a.severity,
                unit=units.get(key),
            )
        else:
            rule = RateOfRiseAlarm(
                a.name,
                a.device,
                a.point,
                max_rise=a.max_rise,
                per_ms=_ms(a.per) or 1,
                on_delay_ms=_ms(a.on_delay) or 0,
                off_delay_ms=_ms(a.off_delay) or 0,
                severity=a.severity,
                unit=units.get(key),
            )
        alarms.setdefault(key, []).append(rule)
    return Processing(processors, alarms, out, on_alarm)


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)
