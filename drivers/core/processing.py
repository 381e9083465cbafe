"""What local processing of one point is asked to do: the `process = { ... }` table of
a point (`ProcessingConfig`) and its compiled form (`ProcessingSpec`), with the rules
a combination must follow. Pure: nothing here runs; gateway/pipeline/filters.py runs
a spec (`PointProcessor`) and its module docstring has the exact stages.

Every driver's point model carries a `process` table, so this lives in the bottom
layer: drivers describe processing without importing the pipeline that runs it.

A spec is rejected (`ValueError`, from `spec_problem`) for: non-finite numbers,
`range_low` not below `range_high`, a `spike_max_rate` not above 0, negative
deadbands, both deadband kinds, a heartbeat without a deadband (without one every
reading is sent), a deadband with aggregation (it would bias min/max/mean/count),
`smoothing_samples < 1`, non-positive durations, and unknown or repeated aggregate
functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import isfinite
from typing import Final, Literal

from pydantic import Field, model_validator

from drivers.core.config_types import Duration, Float, Int, Problems, StrictModel

__all__ = [
    "AGGREGATE_FUNCTIONS",
    "AggregateFunction",
    "ProcessingConfig",
    "ProcessingSpec",
    "milliseconds",
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


class ProcessingConfig(StrictModel):
    """Local processing of one point (gateway/pipeline/filters.py has the exact rules)."""

    min: Float | None = Field(None, description="plausible range: below is flagged out_of_range")
    max: Float | None = Field(None, description="plausible range: above is flagged out_of_range")
    spike_max_rate: Float | None = Field(
        None, gt=0, description="units per second; faster changes are spikes"
    )
    spike_action: Literal["flag", "drop"] = "flag"
    smoothing: Literal["mean", "median"] | None = None
    smoothing_samples: Int = Field(5, ge=1, le=1000)
    deadband: Float | None = Field(None, ge=0, description="send only changes larger than this")
    deadband_percent: Float | None = Field(None, ge=0, le=1000)
    heartbeat: Duration | None = Field(
        None, description="with a deadband: resend at least this often"
    )
    aggregate: Duration | None = Field(None, description="send min/max/mean/count/last per window")
    aggregate_functions: list[AggregateFunction] = Field(
        default_factory=lambda: list(AGGREGATE_FUNCTIONS), min_length=1
    )

    @model_validator(mode="after")
    def _coherent(self) -> ProcessingConfig:
        problems = Problems()
        if self.min is not None and self.max is not None and self.min >= self.max:
            problems.add(("max",), f"min {self.min:g} must be below max {self.max:g}")
        if self.deadband is not None and self.deadband_percent is not None:
            problems.add(("deadband_percent",), "set deadband or deadband_percent, not both")
        if self.heartbeat is not None and self.deadband is None and self.deadband_percent is None:
            problems.add(
                ("heartbeat",), "heartbeat goes with a deadband (without one every value is sent)"
            )
        if not problems.found:
            try:
                self.spec()  # the processor's own checks, e.g. no deadband before an aggregation
            except ValueError as err:
                problems.add((), str(err))
        problems.raise_any(self)
        return self

    def spec(self) -> ProcessingSpec:
        """The compiled form the pipeline runs (gateway/pipeline/filters.py)."""
        return ProcessingSpec(
            range_low=self.min,
            range_high=self.max,
            spike_max_rate=self.spike_max_rate,
            spike_action=self.spike_action,
            smoothing=self.smoothing,
            smoothing_samples=self.smoothing_samples,
            deadband=self.deadband,
            deadband_percent=self.deadband_percent,
            heartbeat_ms=milliseconds(self.heartbeat),
            aggregate_ms=milliseconds(self.aggregate),
            aggregate=tuple(self.aggregate_functions),
        )
