"""Per-point processing: range check, spike, smoothing, deadband/heartbeat, aggregation (pure).

A :class:`ProcessingSpec` (drivers/core/processing.py) is validated when it is built
(start-up); a
:class:`PointProcessor` runs it on the readings of one point, one at a time,
and returns what goes on (0, 1 or, when a window closes, several readings).
Points whose spec does nothing (:func:`is_passthrough`) need no processor.

Stages, in this order; each sees the output of the one before:

1. **Range check.** A GOOD reading with a number (``int`` or ``float``; ``bool``
   is not a number here) outside ``[range_low, range_high]`` gets quality
   ``OUT_OF_RANGE``; its value is kept, it is never dropped. This stage always
   runs, limits or not: ``nan`` and numbers beyond ``±PLAUSIBLE_MAGNITUDE``
   (1e300: ``±inf``, huge integers) are ``OUT_OF_RANGE`` too. No instrument reads
   them; they are decoding garbage that would poison spike references, means and
   deadbands, and keeping them out keeps every sum and difference finite. Counted in
   ``out_of_range``. A passthrough point has no processor, so there ``nan``
   keeps the quality its driver gave it.
2. **Spike check** (``spike_max_rate``, units per second). A GOOD number is
   compared with the reference: the last GOOD accepted value and its timestamp.
   ``rate = |value - reference| / dt_seconds`` (``dt`` on the caller's monotonic
   clock, or on ``ts_ms``, so a clock step is no spike); with ``dt <= 0`` it is a spike
   exactly when the value differs. The first reading is never a spike. A
   non-spike becomes the new reference. A spike gets quality ``SPIKE`` (value
   kept; ``spike_action = "flag"``) or is not emitted at all (``"drop"``, counted
   in ``dropped_spikes``); it does not become the reference — except that the
   :data:`STEP_CONFIRMATIONS`-th consecutive spike in the same direction (3: a
   pump starting, a valve closing) is a real step: it is still flagged (or
   dropped) but becomes the reference, so the readings at the new level that
   follow are GOOD. Every spike counts in ``spikes``, flagged or dropped.
   Readings that skip this stage leave the run of consecutive spikes alone.
3. **Smoothing** (``smoothing`` over ``smoothing_samples``). A reading still
   GOOD and numeric joins a window of the last N such values; its value becomes
   their mean or median (always a float, also for ``int`` inputs).
4. **Deadband / heartbeat** (``deadband`` absolute, or ``deadband_percent`` of
   ``|last emitted value|``). Only a GOOD reading with a value, following a GOOD
   emission, can be suppressed (counted in ``suppressed_by_deadband``); it is
   emitted anyway when

   * numbers: ``|value - last emitted value| > deadband`` (with
     ``deadband_percent`` and a last emitted 0, any change is emitted);
   * anything else (``bool``, ``str``, a change of type): the value differs;
   * ``heartbeat_ms`` is set and ``now - last emission's now >= heartbeat_ms``
     (judged when a reading arrives: this module has no clock; ``now`` is the
     monotonic time the caller passes, or the reading's ``ts_ms``).

   Everything else is emitted: the first reading, any reading whose quality is
   not GOOD (incoming or flagged above), the first GOOD reading after one that
   was not (a quality change always emits), and ``None`` values. Each emission
   becomes the new "last emitted".
5. **Aggregation** (``aggregate_ms`` = W). Replaces per-reading output. Windows
   are ``[k*W, (k+1)*W)`` on ``ts_ms``; a reading in another window (a later
   one, or an earlier one after the clock stepped back) closes the open one.
   A closed window gives one reading per function in ``aggregate`` (in that
   order), point ``f"{point}.{fn}"``, ``ts_ms`` = window start, quality GOOD if
   every reading in the window was GOOD, else the highest quality code seen.
   ``min``/``max``/``mean`` cover GOOD numbers only and are left out when the
   window holds none; ``count`` counts every reading that reached this stage
   (bad quality, ``None``, text included: ``None`` readings of a device that
   went away are counted here, not forwarded one by one); ``last`` is the last
   value, whatever it is. :meth:`PointProcessor.flush` closes the open window.

Readings that skip a stage: non-GOOD readings and non-numbers skip 1-3 (a value
of ``None`` comes with COMM_ERROR or DEVICE_OFFLINE from a driver and passes
1-4 unchanged).

A spec's own rules (what combinations are refused) are in drivers/core/processing.py,
with the spec and the `process = { ... }` config model it is compiled from.

Cost: plain attributes, no allocation per reading beyond the output reading and
its list; a reading the stages leave untouched is passed on as the same object.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from drivers.core.model import Quality, Reading, Value
from drivers.core.spec import ProcessingSpec, spec_problem

__all__ = [
    "PLAUSIBLE_MAGNITUDE",
    "STEP_CONFIRMATIONS",
    "PointProcessor",
    "ProcessingSpec",
    "is_passthrough",
]

STEP_CONFIRMATIONS: Final = 3
"""Consecutive spikes in one direction after which the new level is accepted as real."""

PLAUSIBLE_MAGNITUDE: Final = 1e300
"""A number beyond plus or minus this is out of range, limits or not (see stage 1)."""

_GOOD: Final = int(Quality.GOOD)
_OUT_OF_RANGE: Final = int(Quality.OUT_OF_RANGE)
_SPIKE: Final = int(Quality.SPIKE)
_NOTHING_EMITTED: Final = -1  # a quality no reading has: the next reading is the first


def is_passthrough(spec: ProcessingSpec) -> bool:
    """True when ``spec`` changes nothing: the caller need not run a processor."""
    return (
        spec.range_low is None
        and spec.range_high is None
        and spec.spike_max_rate is None
        and spec.smoothing is None
        and spec.deadband is None
        and spec.deadband_percent is None
        and spec.aggregate_ms is None
    )


def _is_number(value: object) -> bool:
    kind = type(value)
    return kind is float or kind is int or (kind is not bool and isinstance(value, int | float))


class PointProcessor:
    """Runs one :class:`ProcessingSpec` over the readings of one point.

    Counters (plain ints, for the health topic): ``out_of_range``, ``spikes``,
    ``dropped_spikes``, ``suppressed_by_deadband``; :meth:`counters` has them all.
    """

    __slots__ = (
        "_agg_count",
        "_agg_device",
        "_agg_functions",
        "_agg_last",
        "_agg_max",
        "_agg_min",
        "_agg_ms",
        "_agg_names",
        "_agg_numbers",
        "_agg_point",
        "_agg_quality",
        "_agg_start",
        "_agg_sum",
        "_deadband",
        "_deadband_on",
        "_drop_spikes",
        "_heartbeat_ms",
        "_high",
        "_last_is_number",
        "_last_quality",
        "_last_ts",
        "_last_value",
        "_low",
        "_max_rate_per_ms",
        "_median",
        "_percent",
        "_ref_ts",
        "_ref_value",
        "_run_length",
        "_run_rising",
        "_samples",
        "dropped_spikes",
        "out_of_range",
        "spec",
        "spikes",
        "suppressed_by_deadband",
    )

    def __init__(self, spec: ProcessingSpec) -> None:
        problem = spec_problem(spec)  # a spec is checked when built; this catches a forged one
        if problem is not None:
            raise ValueError(f"processing: {problem}")
        self.spec = spec
        self.out_of_range = 0
        self.spikes = 0
        self.dropped_spikes = 0
        self.suppressed_by_deadband = 0
        # 1. range
        low, high = spec.range_low, spec.range_high
        self._low = -PLAUSIBLE_MAGNITUDE if low is None else max(low, -PLAUSIBLE_MAGNITUDE)
        self._high = PLAUSIBLE_MAGNITUDE if high is None else min(high, PLAUSIBLE_MAGNITUDE)
        # 2. spike
        self._max_rate_per_ms: float | None = (
            None if spec.spike_max_rate is None else spec.spike_max_rate / 1000
        )
        self._drop_spikes = spec.spike_action == "drop"
        self._ref_value: int | float | None = None
        self._ref_ts = 0
        self._run_length = 0
        self._run_rising = False
        # 3. smoothing
        self._samples: deque[int | float] | None = (
            None if spec.smoothing is None else deque(maxlen=spec.smoothing_samples)
        )
        self._median = spec.smoothing == "median"
        # 4. deadband / heartbeat
        self._deadband_on = spec.deadband is not None or spec.deadband_percent is not None
        self._deadband = spec.deadband or 0.0
        self._percent: float | None = (
            None if spec.deadband_percent is None else spec.deadband_percent / 100
        )
        self._heartbeat_ms = spec.heartbeat_ms
        self._last_value: Value | None = None
        self._last_is_number = False
        self._last_ts = 0
        self._last_quality = _NOTHING_EMITTED
        # 5. aggregation
        self._agg_ms = spec.aggregate_ms
        self._agg_functions = spec.aggregate
        self._agg_names: tuple[str, ...] = ()
        self._agg_point = ""
        self._agg_device = ""
        self._agg_start = 0
        self._agg_count = 0
        self._agg_quality = _GOOD
        self._agg_last: Value | None = None
        self._agg_numbers = 0
        self._agg_sum: int | float = 0
        self._agg_min: int | float = 0
        self._agg_max: int | float = 0

    def counters(self) -> dict[str, int]:
        return {
            "out_of_range": self.out_of_range,
            "spikes": self.spikes,
            "dropped_spikes": self.dropped_spikes,
            "suppressed_by_deadband": self.suppressed_by_deadband,
        }

    def process(self, reading: Reading, now_ms: int | None = None) -> list[Reading]:
        """Run one reading through the stages; return what goes on (often just it).

        `now_ms` is a monotonic clock for the spike rate and the heartbeat (default:
        the reading's timestamp, for tests and replays); aggregation windows follow
        the readings' wall-clock timestamps."""
        now = reading.ts_ms if now_ms is None else now_ms
        value = reading.value
        quality = reading.quality
        is_number = _is_number(value)
        if is_number and quality == _GOOD:
            number: int | float = value  # type: ignore[assignment]  # _is_number said so
            if number != number or number < self._low or number > self._high:
                quality = _OUT_OF_RANGE
                self.out_of_range += 1
            else:
                max_rate = self._max_rate_per_ms
                if max_rate is not None and self._is_spike(now, number, max_rate):
                    self.spikes += 1
                    if self._drop_spikes:
                        self.dropped_spikes += 1
                        return []
                    quality = _SPIKE
                elif self._samples is not None:
                    value = self._smooth(number)
            if quality != reading.quality or value is not reading.value:
                reading = Reading(reading.device, reading.point, reading.ts_ms, value, quality)

        if self._deadband_on:
            if (
                quality == _GOOD
                and self._last_quality == _GOOD
                and value is not None
                and (self._heartbeat_ms is None or now - self._last_ts < self._heartbeat_ms)
            ):
                last = self._last_value
                if is_number and self._last_is_number:
                    band = self._deadband
                    if self._percent is not None:
                        band = abs(last) * self._percent  # type: ignore[arg-type]
                    changed = abs(value - last) > band  # type: ignore[operator]
                else:
                    changed = type(value) is not type(last) or value != last
                if not changed:
                    self.suppressed_by_deadband += 1
                    return []
            self._last_value = value
            self._last_is_number = is_number
            self._last_ts = now
            self._last_quality = quality

        if self._agg_ms is not None:
            return self._aggregate(reading, is_number)
        return [reading]

    def flush(self, now_ms: int, *, final: bool = True) -> list[Reading]:
        """Close the open aggregation window, if any, and return its readings.

        ``final=True`` (shutdown): close it even if it has not ended yet; its
        readings carry the window's start like any other. ``final=False`` (an
        idle tick): close it only when it has ended at ``now_ms``, so a window
        is never split while readings may still fall into it.
        """
        if not self._agg_count or self._agg_ms is None:
            return []
        if not final and now_ms < self._agg_start + self._agg_ms:
            return []
        return self._close_window()

    # -- stages --------------------------------------------------------------------------

    def _is_spike(self, ts_ms: int, number: int | float, max_rate_per_ms: float) -> bool:
        reference = self._ref_value
        if reference is not None:
            change = number - reference
            elapsed = ts_ms - self._ref_ts
            # dt <= 0 (same instant, or the clock stepped back): any change is a spike.
            spike = abs(change) > max_rate_per_ms * elapsed if elapsed > 0 else change != 0
            if spike:
                rising = change > 0
                if self._run_length and rising == self._run_rising:
                    self._run_length += 1
                else:
                    self._run_length = 1
                    self._run_rising = rising
                if self._run_length < STEP_CONFIRMATIONS:
                    return True
                # A step, not a spike: the new level becomes the reference.
                self._ref_value, self._ref_ts, self._run_length = number, ts_ms, 0
                return True
        self._ref_value, self._ref_ts, self._run_length = number, ts_ms, 0
        return False

    def _smooth(self, number: int | float) -> float:
        samples = self._samples
        assert samples is not None
        samples.append(number)
        if not self._median:
            return sum(samples) / len(samples)
        ordered = sorted(samples)
        middle = len(ordered) // 2
        if len(ordered) % 2:
            return float(ordered[middle])
        return (ordered[middle - 1] + ordered[middle]) / 2

    def _aggregate(self, reading: Reading, is_number: bool) -> list[Reading]:
        assert self._agg_ms is not None
        ts_ms = reading.ts_ms
        start = ts_ms - ts_ms % self._agg_ms
        closed: list[Reading] = []
        if self._agg_count and start != self._agg_start:
            closed = self._close_window()
        quality = reading.quality
        if not self._agg_count:
            self._agg_start = start
            self._agg_quality = quality
            self._agg_numbers = 0
            if reading.point != self._agg_point or not self._agg_names:
                self._agg_point = reading.point
                self._agg_names = tuple(f"{reading.point}.{fn}" for fn in self._agg_functions)
            self._agg_device = reading.device
        elif quality > self._agg_quality:
            self._agg_quality = quality
        self._agg_count += 1
        value = reading.value
        self._agg_last = value
        if is_number and quality == _GOOD:
            number: int | float = value  # type: ignore[assignment]  # is_number said so
            if self._agg_numbers:
                self._agg_sum += number
                if number < self._agg_min:
                    self._agg_min = number
                if number > self._agg_max:
                    self._agg_max = number
            else:
                self._agg_sum = self._agg_min = self._agg_max = number
            self._agg_numbers += 1
        return closed

    def _close_window(self) -> list[Reading]:
        device, start, quality = self._agg_device, self._agg_start, self._agg_quality
        numbers = self._agg_numbers
        out: list[Reading] = []
        for fn, name in zip(self._agg_functions, self._agg_names, strict=True):
            value: Value | None
            if fn == "count":
                value = self._agg_count
            elif fn == "last":
                value = self._agg_last
            elif not numbers:
                continue
            elif fn == "min":
                value = self._agg_min
            elif fn == "max":
                value = self._agg_max
            else:
                value = self._agg_sum / numbers
            out.append(Reading(device, name, start, value, quality))
        self._agg_count = 0
        self._agg_last = None
        return out
