"""The `process = { ... }` table of a point (`ProcessingConfig`): what local processing
of one point is asked to do, checked as the file is read. Its compiled form, and the
rules a combination must follow, are in drivers/core/spec.py (pure: the daemon runs
on it without this module's pydantic).

Every driver's point model carries a `process` table, so this lives in the bottom
layer: drivers describe processing without importing the pipeline that runs it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from drivers.core.config_types import Duration, Float, Int, Problems, StrictModel
from drivers.core.spec import (
    AGGREGATE_FUNCTIONS,
    AggregateFunction,
    ProcessingSpec,
    milliseconds,
    spec_of,
    spec_problem,
)

__all__ = [
    "AGGREGATE_FUNCTIONS",
    "AggregateFunction",
    "ProcessingConfig",
    "ProcessingSpec",
    "milliseconds",
    "spec_problem",
]


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
        return spec_of(self)
