"""Value kinds of the simulator: what a point reads over time (pure)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from drivers.sim.values import (
    Constant,
    Counter,
    Ramp,
    RandomWalk,
    Replay,
    Sine,
    ValueConfig,
    read_trace,
)

VALUE: TypeAdapter[ValueConfig] = TypeAdapter(ValueConfig)


def build(doc: object, base_dir: Path = Path()) -> object:
    config = VALUE.validate_python(doc, context={"base_dir": base_dir})
    return config.build(random.Random(7))


def test_a_bare_number_true_false_or_text_is_a_constant() -> None:
    for given in (230.5, 3, True, "PS7-0412"):
        source = build(given)
        assert isinstance(source, Constant)
        assert source.sample(0.0) == given == source.sample(1e6)


def test_a_ramp_rises_from_start_to_stop_over_its_period_and_starts_again() -> None:
    ramp = Ramp(start=10.0, stop=20.0, period=10.0)
    assert [ramp.sample(t) for t in (0, 2.5, 5, 9.999, 10, 12.5)] == pytest.approx(
        [10.0, 12.5, 15.0, 19.999, 10.0, 12.5]
    )
    assert Ramp(start=5.0, stop=-5.0, period=2.0).sample(1.0) == 0.0


def test_a_counter_without_every_counts_the_reads_from_start_plus_step() -> None:
    counter = Counter(start=0, step=1)
    assert [counter.sample(0.0) for _ in range(4)] == [1, 2, 3, 4]


def test_a_counter_with_every_counts_time_and_rolls_over_after_max() -> None:
    counter = Counter(start=1000, step=1, every=5.0, maximum=1002)
    assert [counter.sample(t) for t in (0, 4.9, 5, 10, 15, 20)] == [
        1000,
        1000,
        1001,
        1002,
        1000,
        1001,
    ]
    wrapping = Counter(start=0, step=1, maximum=65535)
    wrapping.reads = 65535
    assert wrapping.sample(0.0) == 0


def test_a_sine_follows_mean_amplitude_period_and_phase() -> None:
    sine = Sine(mean=230.0, amplitude=3.0, period=60.0)
    assert sine.sample(0) == pytest.approx(230.0)
    assert sine.sample(15) == pytest.approx(233.0)
    assert sine.sample(45) == pytest.approx(227.0)
    assert Sine(mean=0.0, amplitude=1.0, period=60.0, phase=90.0).sample(0) == pytest.approx(1.0)


def test_sine_noise_has_its_standard_deviation_and_repeats_with_the_seed() -> None:
    def samples(seed: int) -> list[float]:
        sine = Sine(mean=10.0, amplitude=0.0, period=60.0, noise=0.5, rng=random.Random(seed))
        return [sine.sample(t) for t in range(2000)]

    first = samples(7)
    mean = sum(first) / len(first)
    deviation = (sum((x - mean) ** 2 for x in first) / len(first)) ** 0.5
    assert mean == pytest.approx(10.0, abs=0.05)
    assert deviation == pytest.approx(0.5, rel=0.1)
    assert samples(7) == first != samples(8)


def test_a_random_walk_steps_with_time_and_stays_between_min_and_max() -> None:
    walk = RandomWalk(
        start=50.0, step=5.0, every=1.0, minimum=40.0, maximum=60.0, rng=random.Random(1)
    )
    values = [walk.sample(t * 0.5) for t in range(4000)]
    assert values[0] == values[1] == 50.0  # no step before the first `every`
    assert all(40.0 <= v <= 60.0 for v in values)
    assert len(set(values)) > 500  # it moves
    asleep = RandomWalk(
        start=0.0, step=1.0, every=1.0, minimum=-3.0, maximum=3.0, rng=random.Random(2)
    )
    assert -3.0 <= asleep.sample(1e9) <= 3.0  # a long silence is one draw, still inside


def test_a_csv_trace_is_replayed_at_its_times_and_looped(tmp_path: Path) -> None:
    (tmp_path / "trace.csv").write_text("t,temp\n100,41.0\n110,42.5\n130,43.0\n")
    source = build(
        {"kind": "csv", "file": "trace.csv", "column": "temp", "time_column": "t"}, tmp_path
    )
    assert isinstance(source, Replay)
    # rows at 0, 10, 30 s; the last held for the gap before it (20 s): 50 s a loop
    assert [source.sample(t) for t in (0, 9.9, 10, 29, 30, 49.9, 50, 60)] == [
        41.0,
        41.0,
        42.5,
        42.5,
        43.0,
        43.0,
        41.0,
        42.5,
    ]


def test_a_csv_trace_without_times_takes_a_row_every_every_and_may_hold_its_last(
    tmp_path: Path,
) -> None:
    (tmp_path / "trace.csv").write_text("level\n1\n2\n3\n")
    held = build(
        {"kind": "csv", "file": "trace.csv", "column": "level", "every": "2s", "loop": False},
        tmp_path,
    )
    assert [held.sample(t) for t in (0, 2, 4, 100)] == [1.0, 2.0, 3.0, 3.0]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "column", "says"),
    [
        ("t,temp\n0,1\n", "level", "has no column 'level'; its header names 't', 'temp'"),
        ("t,temp\n0,1\n1,warm\n", "temp", "line 3, 'temp': 'warm' is not a number"),
        ("t,temp\n", "temp", "has no rows below its header"),
    ],
)
def test_a_csv_trace_that_cannot_be_replayed_says_where_and_why(
    tmp_path: Path, text: str, column: str, says: str
) -> None:
    (tmp_path / "trace.csv").write_text(text)
    with pytest.raises(ValueError, match=says):
        read_trace(tmp_path / "trace.csv", column, None, 1.0)


def test_times_that_do_not_rise_are_refused(tmp_path: Path) -> None:
    (tmp_path / "trace.csv").write_text("t,v\n0,1\n5,2\n5,3\n")
    with pytest.raises(ValueError, match="must rise"):
        read_trace(tmp_path / "trace.csv", "v", "t", 1.0)


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({"kind": "ramp", "stop": 1.0}, "period"),
        ({"kind": "counter", "step": 0}, "0 never counts"),
        ({"kind": "counter", "start": 10, "max": 5}, "rolls over"),
        ({"kind": "random_walk", "min": 5.0, "max": 1.0, "start": 3.0}, "is not above min"),
        ({"kind": "sine", "noise": -1.0}, "greater than or equal to 0"),
        (
            {"kind": "csv", "file": "x.csv", "column": "a", "every": "1s", "time_column": "t"},
            "not both",
        ),
        ({"kind": "constant", "value": [1, 2]}, "is not a number, true or false, or text"),
    ],
)
def test_a_value_that_makes_no_sense_is_refused_with_the_reason(doc: object, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        VALUE.validate_python(doc, context={"base_dir": Path()})
