"""Properties of per-point processing over random sequences (hypothesis).

The deadband/heartbeat invariants are checked against the output itself: what
was last emitted is read off the readings that came out, not off the processor.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from drivers.core.model import Quality, Reading
from drivers.core.processing import AGGREGATE_FUNCTIONS, ProcessingSpec
from gateway.pipeline.filters import PLAUSIBLE_MAGNITUDE, PointProcessor

finite = st.floats(-PLAUSIBLE_MAGNITUDE, PLAUSIBLE_MAGNITUDE)
# values that sit on and around a deadband often, plus the odd wild one
near = (
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.5, 2.0, 10.0, -10.0, 100.0])
    | st.floats(-200, 200)
    | finite
)
steps = st.integers(0, 30_000)  # ms between readings (timestamps never go back)


def with_timestamps(gaps: list[int], start: int = 1_700_000_000_000) -> list[int]:
    out, ts = [], start
    for gap in gaps:
        ts += gap
        out.append(ts)
    return out


@st.composite
def good_or_bad(draw: st.DrawFn) -> tuple[float | None, int]:
    """Mostly good numbers; sometimes a silent device or a bad checksum."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return None, Quality.COMM_ERROR
    if kind == 1:
        return draw(near), Quality.BAD_CHECKSUM
    return draw(near), Quality.GOOD


@given(
    deadband=st.floats(0, 50) | st.none(),
    percent=st.floats(0, 200),
    heartbeat_ms=st.integers(1, 120_000) | st.none(),
    rows=st.lists(st.tuples(steps, good_or_bad()), min_size=1, max_size=80),
)
def test_deadband_and_heartbeat_emit_exactly_what_the_invariants_demand(
    deadband: float | None,
    percent: float,
    heartbeat_ms: int | None,
    rows: list[tuple[int, tuple[float | None, int]]],
) -> None:
    """(a) a change beyond the deadband of the last emitted value is emitted; (b) nothing
    waits heartbeat_ms; (c) the first reading goes out; (d) after a 0, any change goes out
    (percent); bad readings and recoveries go out; nothing else does, and nothing is altered."""
    spec = ProcessingSpec(
        deadband=deadband,
        deadband_percent=percent if deadband is None else None,
        heartbeat_ms=heartbeat_ms,
    )
    processor = PointProcessor(spec)
    last: Reading | None = None
    emitted = 0
    for ts_ms, (value, quality) in zip(
        with_timestamps([gap for gap, _ in rows]), [vq for _, vq in rows], strict=True
    ):
        reading = Reading("river", "level", ts_ms, value, quality)
        out = processor.process(reading)
        assert out in ([], [reading])
        if last is None:
            must = True  # (c)
        elif quality != Quality.GOOD or last.quality != Quality.GOOD:
            must = True  # bad readings are never suppressed; a quality change always emits
        else:
            assert value is not None and isinstance(last.value, float)
            band = deadband if deadband is not None else abs(last.value) * percent / 100
            changed = abs(value - last.value) > band  # (a); with a last 0 and percent: (d)
            due = heartbeat_ms is not None and ts_ms - last.ts_ms >= heartbeat_ms  # (b)
            must = changed or due
        assert bool(out) == must, (last, reading)
        if out:
            last = out[0]
            emitted += 1
    assert processor.suppressed_by_deadband == len(rows) - emitted


@given(
    heartbeat_ms=st.integers(1, 60_000),
    rows=st.lists(st.tuples(steps, near), min_size=1, max_size=80),
)
def test_no_value_waits_longer_than_the_heartbeat(
    heartbeat_ms: int, rows: list[tuple[int, float]]
) -> None:
    processor = PointProcessor(ProcessingSpec(deadband=1e9, heartbeat_ms=heartbeat_ms))
    last_sent = None
    for ts_ms, (_, value) in zip(with_timestamps([gap for gap, _ in rows]), rows, strict=True):
        out = processor.process(Reading("river", "level", ts_ms, value))
        if last_sent is None or ts_ms - last_sent >= heartbeat_ms:
            assert out, "a reading due for its heartbeat was held back"
        if out:
            last_sent = ts_ms


def test_percent_deadband_after_zero_sends_the_smallest_change() -> None:
    processor = PointProcessor(ProcessingSpec(deadband_percent=100.0))
    processor.process(Reading("d", "p", 0, 0.0))
    assert processor.process(Reading("d", "p", 1, 5e-324))  # (d) with the smallest float


# -- aggregation -------------------------------------------------------------------------

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=4),
    st.integers(-(2**70), 2**70),
    st.floats(),
)


@given(
    window_ms=st.integers(1, 100_000),
    functions=st.lists(st.sampled_from(AGGREGATE_FUNCTIONS), min_size=1, unique=True),
    rows=st.lists(
        st.tuples(st.integers(-(10**6), 10**13), anything, st.sampled_from(list(Quality))),
        max_size=80,
    ),
    range_high=st.none() | st.floats(-1e6, 1e6),
)
def test_aggregation_conserves_the_count_and_reports_sane_windows(
    window_ms: int, functions: list[str], rows: list[tuple[int, Any, int]], range_high: float | None
) -> None:
    """Every reading is counted in exactly one window, after a final flush, whatever
    its value, quality or timestamp order; min <= mean <= max; windows start on a multiple."""
    functions = [*functions, "count"] if "count" not in functions else functions
    processor = PointProcessor(
        ProcessingSpec(range_high=range_high, aggregate_ms=window_ms, aggregate=tuple(functions))
    )
    out: list[Reading] = []
    for ts_ms, value, quality in sorted(rows, key=lambda row: row[0]):
        out += processor.process(Reading("pump-7", "flow", ts_ms, value, quality))
    out += processor.flush(2**62)
    counts = [r for r in out if r.point == "flow.count"]
    assert sum(r.value for r in counts) == len(rows)  # type: ignore[misc]
    assert len({r.ts_ms for r in counts}) == len(
        counts
    )  # ordered timestamps: each window closes once
    for window in counts:
        assert window.ts_ms % window_ms == 0
        stats = {r.point.rsplit(".", 1)[1]: r.value for r in out if r.ts_ms == window.ts_ms}
        if "min" in stats and "max" in stats:
            assert stats["min"] <= stats["max"]  # type: ignore[operator]
            if "mean" in stats:
                slack = 1e-9 * max(abs(stats["min"]), abs(stats["max"]), 1)  # type: ignore[arg-type]
                assert stats["min"] - slack <= stats["mean"] <= stats["max"] + slack  # type: ignore[operator]


# -- robustness --------------------------------------------------------------------------


@st.composite
def specs(draw: st.DrawFn) -> ProcessingSpec:
    low = draw(st.none() | st.floats(-1e6, 1e6))
    high = draw(st.none() | st.floats(-1e6, 1e6))
    aggregate_ms = draw(st.none() | st.integers(1, 10_000))
    deadband = None if aggregate_ms else draw(st.none() | st.floats(0, 100))
    percent = None if aggregate_ms or deadband is not None else draw(st.none() | st.floats(0, 100))
    has_deadband = deadband is not None or percent is not None
    try:
        return ProcessingSpec(
            range_low=low,
            range_high=high,
            spike_max_rate=draw(st.none() | st.floats(1e-6, 1e6)),
            spike_action=draw(st.sampled_from(["flag", "drop"])),
            smoothing=draw(st.sampled_from([None, "mean", "median"])),
            smoothing_samples=draw(st.integers(1, 8)),
            deadband=deadband,
            deadband_percent=percent,
            heartbeat_ms=draw(st.none() | st.integers(1, 10_000)) if has_deadband else None,
            aggregate_ms=aggregate_ms,
            aggregate=tuple(
                draw(st.lists(st.sampled_from(AGGREGATE_FUNCTIONS), min_size=1, unique=True))
            ),
        )
    except ValueError:  # low not below high
        assume(False)
        raise


wild_values = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=4),
    st.integers(),
    st.sampled_from(
        [10**400, -(10**400), 2**1024, 1e308, -1e308, float("nan"), float("inf"), -float("inf")]
    ),
    st.floats(),
)


@given(
    spec=specs(),
    rows=st.lists(
        st.tuples(st.integers(-(2**45), 2**45), wild_values, st.integers(-1, 9)), max_size=60
    ),
    flush_at=st.integers(-(2**45), 2**45),
)
def test_a_processor_never_raises_on_random_readings(
    spec: ProcessingSpec, rows: list[tuple[int, Any, int]], flush_at: int
) -> None:
    """A GOOD number that comes out is finite: nan, ±inf and huge numbers are flagged, and
    no mean, difference or sum of plausible numbers overflows. Aggregation counts every
    reading it was given, in whatever order."""
    processor = PointProcessor(spec)
    out: list[Reading] = []
    for ts_ms, value, quality in rows:
        out += processor.process(Reading("pump-7", "flow", ts_ms, value, quality))
    out += processor.flush(flush_at, final=False) + processor.flush(flush_at)
    for reading in out:
        assert isinstance(reading, Reading)
        if reading.quality == Quality.GOOD and type(reading.value) in (int, float):
            assert math.isfinite(reading.value)  # type: ignore[arg-type]
    nothing_dropped = spec.spike_max_rate is None or spec.spike_action == "flag"
    if spec.aggregate_ms is not None and "count" in spec.aggregate and nothing_dropped:
        assert sum(r.value for r in out if r.point == "flow.count") == len(rows)  # type: ignore[misc]
