"""The compiled form of a point's local processing (`ProcessingSpec`) and the rules a
combination must follow. Pure, and free of pydantic: the running daemon builds its
processors from it (gateway/pipeline/filters.py runs a spec; its module docstring has
the exact stages); drivers/core/processing.py holds the config table it comes from.

A spec is rejected (`ValueError`, from `spec_problem`) for: non-finite numbers,
`range_low` not below `range_high`, a `spike_max_rate` not above 0, negative
deadbands, both deadband kinds, a heartbeat without a deadband (without one every
reading is sent), a deadband with aggregation (it would bias min/max/mean/count),
`smoothing_samples < 1`, non-positive durations, and unknown or repeated aggregate
functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import isfinite
from typing import Final, Literal, Protocol

__all__ = [
    "AGGREGATE_FUNCTIONS",
    "AggregateFunction",
    "ProcessingSpec",
    "milliseconds",
    "spec_of",
    "spec_problem",
]

AggregateFunction = Literal["min", "max", "mean", "count", "last"]
AGGREGATE_FUNCTIONS: Final[tuple[AggregateFunction, ...]] = ("min", "max", "mean", "count", "last")
"""The functions a window can report, in their default order."""


def milliseconds(seconds: float | None) -> int | None:
    """A configured duration as the whole milliseconds the pipeline's clocks count in."""
    return None if seconds is None else round(seconds * 1000)


@dataclass(frozen=True, slots=True)
class ProcessingSpec:
    """What to do with the readings of one point (gateway/pipeline/filters.py runs it).

    Raises :class:`ValueError` on construction when the combination makes no sense.
    """

    range_low: float | None = None
    range_high: float | None = None
    spike_max_rate: float | None = None
    spike_action: Literal["flag", "drop"] = "flag"
    smoothing: Literal["mean", "median"] | None = None
    smoothing_samples: int = 5
    deadband: float | None = None
    deadband_percent: float | None = None
    heartbeat_ms: int | None = None
    aggregate_ms: int | None = None
    aggregate: tuple[str, ...] = AGGREGATE_FUNCTIONS

    def __post_init__(self) -> None:
        problem = spec_problem(self)
        if problem is not None:
            raise ValueError(f"processing: {problem}")


def spec_problem(spec: ProcessingSpec) -> str | None:
    """Why `spec` makes no sense, or None (see the module docstring)."""
    for name in ("range_low", "range_high", "spike_max_rate", "deadband", "deadband_percent"):
        number = getattr(spec, name)
        if number is not None and not isfinite(number):
            return f"{name} must be a finite number, got {number}"
    low, high = spec.range_low, spec.range_high
    if low is not None and high is not None and not low < high:
        return f"range_low {low} must be below range_high {high}"
    if spec.spike_max_rate is not None and spec.spike_max_rate <= 0:
        return f"spike_max_rate must be above 0 units per second, got {spec.spike_max_rate}"
    if spec.spike_action not in ("flag", "drop"):
        return f"spike_action must be 'flag' or 'drop', got {spec.spike_action!r}"
    if spec.smoothing not in (None, "mean", "median"):
        return f"smoothing must be 'mean' or 'median', got {spec.smoothing!r}"
    if spec.smoothing_samples < 1:
        return f"smoothing_samples must be at least 1, got {spec.smoothing_samples}"
    for name in ("deadband", "deadband_percent"):
        number = getattr(spec, name)
        if number is not None and number < 0:
            return f"{name} must not be negative, got {number}"
    has_deadband = spec.deadband is not None or spec.deadband_percent is not None
    if spec.deadband is not None and spec.deadband_percent is not None:
        return "set deadband or deadband_percent, not both"
    for name in ("heartbeat_ms", "aggregate_ms"):
        ms = getattr(spec, name)
        if ms is not None and ms <= 0:
            return f"{name} must be above 0, got {ms}"
    if spec.heartbeat_ms is not None and not has_deadband:
        return "heartbeat_ms goes with a deadband (without one every reading is sent)"
    if spec.aggregate_ms is not None and has_deadband:
        return "a deadband cannot feed an aggregation (it would bias min, max, mean and count)"
    if not spec.aggregate:
        return "aggregate needs at least one function"
    unknown = [fn for fn in spec.aggregate if fn not in AGGREGATE_FUNCTIONS]
    if unknown:
        return f"unknown aggregate function(s) {unknown}; known: {list(AGGREGATE_FUNCTIONS)}"
    if len(set(spec.aggregate)) != len(spec.aggregate):
        return f"aggregate lists a function twice: {list(spec.aggregate)}"
    return None


class ProcessingTable(Protocol):
    """The keys of a point's `process = { ... }` table (drivers/core/processing.py)."""

    @property
    def min(self) -> float | None: ...

    @property
    def max(self) -> float | None: ...

    @property
    def spike_max_rate(self) -> float | None: ...

    @property
    def spike_action(self) -> Literal["flag", "drop"]: ...

    @property
    def smoothing(self) -> Literal["mean", "median"] | None: ...

    @property
    def smoothing_samples(self) -> int: ...

    @property
    def deadband(self) -> float | None: ...

    @property
    def deadband_percent(self) -> float | None: ...

    @property
    def heartbeat(self) -> float | None: ...

    @property
    def aggregate(self) -> float | None: ...

    @property
    def aggregate_functions(self) -> Sequence[str]: ...


def spec_of(table: ProcessingTable) -> ProcessingSpec:
    """The compiled form the pipeline runs of a point's `process` table."""
    return ProcessingSpec(
        range_low=table.min,
        range_high=table.max,
        spike_max_rate=table.spike_max_rate,
        spike_action=table.spike_action,
        smoothing=table.smoothing,
        smoothing_samples=table.smoothing_samples,
        deadband=table.deadband,
        deadband_percent=table.deadband_percent,
        heartbeat_ms=milliseconds(table.heartbeat),
        aggregate_ms=milliseconds(table.aggregate),
        aggregate=tuple(table.aggregate_functions),
    )
