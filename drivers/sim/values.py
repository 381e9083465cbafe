"""The values a simulated point takes over time, and how a simulator file writes them.

A value source answers `sample(elapsed)`: the point's value (in engineering units, as
the gateway will report it) `elapsed` seconds after the simulator started. Sources are
pure apart from their own state (a counter, a random walk) and the random generator
they are given, so a seeded simulator repeats itself run after run.

=============  ====================================================================
kind           the value
=============  ====================================================================
constant       `value` (a number, true/false or text); a bare `value = 230.5` is one
ramp           from `start` to `stop` in a straight line over `period`, then again
counter        `start` + `step` for every read (every frame), or every `every`;
               after `max` it starts again at `start` (a register that rolls over)
sine           `mean` + `amplitude` · sin(2π·t/`period` + `phase` degrees), plus
               Gaussian noise of standard deviation `noise`
random_walk    from `start`, a Gaussian step of standard deviation `step` every
               `every`, kept between `min` and `max` (reflected at them)
csv            the column `column` of a CSV file with a header row, one row every
               `every` or at the seconds of `time_column`; with `loop` from the
               start again after the last row (held for the gap before it)
=============  ====================================================================
"""

from __future__ import annotations

import csv
import math
import random
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from drivers.core.config_types import (
    Bool,
    Duration,
    Float,
    Int,
    Problems,
    StrictModel,
    path_text_problem,
    shown,
)

__all__ = [
    "Constant",
    "Counter",
    "Ramp",
    "RandomWalk",
    "Replay",
    "Scalar",
    "Sine",
    "ValueConfig",
    "ValueSource",
]

Scalar = float | int | bool | str


class ValueSource(Protocol):
    def sample(self, elapsed: float) -> Scalar:
        """The value `elapsed` seconds after the simulator started."""
        ...


# --- the sources ---------------------------------------------------------------------------


@dataclass(slots=True)
class Constant:
    value: Scalar

    def sample(self, elapsed: float) -> Scalar:
        return self.value


@dataclass(slots=True)
class Ramp:
    start: float
    stop: float
    period: float

    def sample(self, elapsed: float) -> float:
        share = (elapsed % self.period) / self.period
        return self.start + (self.stop - self.start) * share


@dataclass(slots=True)
class Counter:
    """Counts reads (`every` None: the first read is `start + step`) or time (`start` at 0)."""

    start: int = 0
    step: int = 1
    every: float | None = None
    maximum: int | None = None
    reads: int = 0

    def sample(self, elapsed: float) -> int:
        if self.every is None:
            self.reads += 1
            count = self.reads
        else:
            count = int(elapsed // self.every)
        value = self.start + count * self.step
        if self.maximum is not None:
            value = self.start + (value - self.start) % (self.maximum - self.start + 1)
        return value


@dataclass(slots=True)
class Sine:
    mean: float
    amplitude: float
    period: float
    phase: float = 0.0  # degrees
    noise: float = 0.0
    rng: random.Random = field(default_factory=random.Random)

    def sample(self, elapsed: float) -> float:
        angle = 2 * math.pi * elapsed / self.period + math.radians(self.phase)
        value = self.mean + self.amplitude * math.sin(angle)
        return value + self.rng.gauss(0.0, self.noise) if self.noise else value


@dataclass(slots=True)
class RandomWalk:
    start: float
    step: float
    every: float
    minimum: float | None = None
    maximum: float | None = None
    rng: random.Random = field(default_factory=random.Random)
    value: float | None = None
    _steps: int = 0

    def sample(self, elapsed: float) -> float:
        if self.value is None:
            self.value = self.start
        due = int(elapsed // self.every)
        if due > self._steps:
            # n steps of deviation s add up to one of deviation s·√n: one draw, however long
            # nobody asked
            self.value = self._reflected(
                self.value + self.rng.gauss(0.0, self.step * math.sqrt(due - self._steps))
            )
            self._steps = due
        return self.value

    def _reflected(self, value: float) -> float:
        low, high = self.minimum, self.maximum
        if low is not None and high is not None and high > low:
            span = high - low
            folded = (value - low) % (2 * span)
            return low + (folded if folded <= span else 2 * span - folded)
        if low is not None and value < low:
            return 2 * low - value
        if high is not None and value > high:
            return 2 * high - value
        return value


@dataclass(slots=True)
class Replay:
    """Recorded values at times (seconds from the first row, rising); each is held until
    the next; the last for the gap before it; then, with `loop`, the trace starts again."""

    times: list[float]
    values: list[float]
    loop: bool = True

    @property
    def length(self) -> float:
        last_gap = self.times[-1] - self.times[-2] if len(self.times) > 1 else 1.0
        return self.times[-1] + last_gap

    def sample(self, elapsed: float) -> float:
        t = elapsed % self.length if self.loop else elapsed
        return self.values[max(0, bisect_right(self.times, t) - 1)]


# --- as a simulator file writes them -------------------------------------------------------


class ConstantValueConfig(StrictModel):
    kind: Literal["constant"]
    value: Any = Field(description="a number, true or false, or text")

    @field_validator("value")
    @classmethod
    def _scalar(cls, value: object) -> object:
        if isinstance(value, bool | str):
            return value
        if isinstance(value, int | float) and math.isfinite(value):
            return value
        raise ValueError(f"{shown(value)} is not a number, true or false, or text")

    def build(self, rng: random.Random) -> ValueSource:
        return Constant(self.value)


class RampValueConfig(StrictModel):
    kind: Literal["ramp"]
    start: Float = 0.0
    stop: Float
    period: Duration = Field(description="from start to stop in this long, then again")

    def build(self, rng: random.Random) -> ValueSource:
        return Ramp(self.start, self.stop, self.period)


class CounterValueConfig(StrictModel):
    kind: Literal["counter"]
    start: Int = 0
    step: Int = 1
    every: Duration | None = Field(None, description="count time; without it, count reads")
    max: Int | None = Field(None, description="after this the counter starts again at start")

    @model_validator(mode="after")
    def _wraps_upwards(self) -> CounterValueConfig:
        problems = Problems()
        if self.step == 0:
            problems.add(("step",), "0 never counts; write a step of 1 or more (or -1 ...)")
        if self.max is not None and (self.step < 0 or self.max <= self.start):
            problems.add(
                ("max",), f"max = {self.max} rolls over a counter that counts up from start"
            )
        problems.raise_any(self)
        return self

    def build(self, rng: random.Random) -> ValueSource:
        return Counter(self.start, self.step, self.every, self.max)


class SineValueConfig(StrictModel):
    kind: Literal["sine"]
    mean: Float = 0.0
    amplitude: Float = 1.0
    period: Duration = 60.0
    phase: Float = Field(0.0, description="degrees")
    noise: Float = Field(0.0, ge=0, description="standard deviation of Gaussian noise")

    def build(self, rng: random.Random) -> ValueSource:
        return Sine(self.mean, self.amplitude, self.period, self.phase, self.noise, rng)


class RandomWalkValueConfig(StrictModel):
    kind: Literal["random_walk"]
    start: Float = 0.0
    step: Float = Field(1.0, ge=0, description="standard deviation of one step")
    every: Duration = 1.0
    min: Float | None = None
    max: Float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> RandomWalkValueConfig:
        problems = Problems()
        if self.min is not None and self.max is not None and self.min >= self.max:
            problems.add(("max",), f"max = {self.max} is not above min = {self.min}")
        for key in ("min", "max"):
            bound = getattr(self, key)
            outside = bound is not None and (
                self.start < bound if key == "min" else self.start > bound
            )
            if outside:
                problems.add(("start",), f"start = {self.start} is outside {key} = {bound}")
        problems.raise_any(self)
        return self

    def build(self, rng: random.Random) -> ValueSource:
        return RandomWalk(self.start, self.step, self.every, self.min, self.max, rng)


class CsvValueConfig(StrictModel):
    kind: Literal["csv"]
    file: str = Field(description="a CSV file with a header row; relative to the simulator file")
    column: str = Field(description="the header of the column replayed")
    time_column: str | None = Field(
        None, description="the header of a column of seconds (rising); instead of every"
    )
    every: Duration | None = Field(None, description="one row this often (default 1s)")
    loop: Bool = True
    _trace: Replay | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _readable(self, info: ValidationInfo) -> CsvValueConfig:
        problems = Problems()
        if self.time_column is not None and self.every is not None:
            problems.add(("every",), "set every or time_column, not both")
        wrong = path_text_problem(self.file)
        if wrong is not None:
            problems.add(("file",), wrong)
        problems.raise_any(self)
        base = (info.context or {}).get("base_dir", Path())
        try:
            self._trace = read_trace(
                Path(base) / self.file, self.column, self.time_column, self.every or 1.0
            )
        except ValueError as err:
            problems.add(("file",), str(err))
        problems.raise_any(self)
        return self

    def build(self, rng: random.Random) -> ValueSource:
        assert self._trace is not None
        return Replay(self._trace.times, self._trace.values, self.loop)


def read_trace(path: Path, column: str, time_column: str | None, every: float) -> Replay:
    """A recorded trace from a CSV file; ValueError saying what is wrong with it."""
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            rows = list(csv.DictReader(stream))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from err
    if not rows:
        raise ValueError(f"{path} has no rows below its header")
    for key in (column, time_column):
        if key is not None and key not in rows[0]:
            headers = ", ".join(repr(h) for h in rows[0])
            raise ValueError(f"{path} has no column {key!r}; its header names {headers}")
    times, values = [], []
    for i, row in enumerate(rows):
        line = i + 2  # the header is line 1
        values.append(_number(row[column], path, line, column))
        if time_column is None:
            times.append(i * every)
        else:
            times.append(_number(row[time_column], path, line, time_column))
    if time_column is not None:
        if any(b <= a for a, b in pairwise(times)):
            raise ValueError(f"{path}: the times of {time_column!r} must rise from row to row")
        times = [t - times[0] for t in times]
    return Replay(times, values)


def _number(text: str | None, path: Path, line: int, column: str) -> float:
    try:
        value = float(text or "")
    except ValueError:
        raise ValueError(f"{path} line {line}, {column!r}: {shown(text)} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{path} line {line}, {column!r}: {shown(text)} is not a finite number")
    return value


def _bare_constant(value: object) -> object:
    """`value = 230.5` is `value = { kind = "constant", value = 230.5 }`."""
    return value if isinstance(value, dict) else {"kind": "constant", "value": value}


ValueConfig = Annotated[
    ConstantValueConfig
    | RampValueConfig
    | CounterValueConfig
    | SineValueConfig
    | RandomWalkValueConfig
    | CsvValueConfig,
    Field(discriminator="kind"),
    BeforeValidator(_bare_constant),
]
"""A point's value in a simulator file: a bare number, true/false or text, or a table
with `kind` (see the module docstring)."""
