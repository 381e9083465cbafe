"""Per-point processing, stage by stage: readings in, readings out."""

from __future__ import annotations

import math
from typing import Any

import pytest

from drivers.core.model import Quality, Reading
from drivers.core.processing import ProcessingSpec
from gateway.pipeline.filters import STEP_CONFIRMATIONS, PointProcessor, is_passthrough

G, OOR, SPIKE = Quality.GOOD, Quality.OUT_OF_RANGE, Quality.SPIKE
COMM, CHECKSUM = Quality.COMM_ERROR, Quality.BAD_CHECKSUM

Row = tuple[Any, ...]  # (ts_ms, value) or (ts_ms, value, quality)


def feed(processor: PointProcessor, rows: list[Row]) -> list[Reading]:
    out: list[Reading] = []
    for ts_ms, value, *quality in rows:
        out += processor.process(Reading("pump-7", "flow", ts_ms, value, *quality))
    return out


def run(spec: ProcessingSpec, rows: list[Row]) -> list[Row]:
    """(ts_ms, value, quality) of every reading out."""
    return [(r.ts_ms, r.value, r.quality) for r in feed(PointProcessor(spec), rows)]


# -- range check -------------------------------------------------------------------------


def test_an_out_of_range_reading_is_kept_and_flagged_not_dropped() -> None:
    processor = PointProcessor(ProcessingSpec(range_low=0.0, range_high=25.0))
    out = feed(processor, [(1, 3.0), (2, 31.5), (3, -0.1), (4, 4.0)])
    assert [(r.ts_ms, r.value, r.quality) for r in out] == [
        (1, 3.0, G),
        (2, 31.5, OOR),
        (3, -0.1, OOR),
        (4, 4.0, G),
    ]
    assert processor.out_of_range == 2


def test_a_reading_on_a_range_limit_is_good() -> None:
    spec = ProcessingSpec(range_low=0.0, range_high=25.0)
    assert run(spec, [(1, 0.0), (2, 25), (3, 25.000001)]) == [
        (1, 0.0, G),
        (2, 25, G),
        (3, 25.000001, OOR),
    ]


def test_a_single_limit_checks_only_its_side() -> None:
    spec = ProcessingSpec(range_low=-1.0)
    assert run(spec, [(1, 1e9), (2, -2.0)]) == [(1, 1e9, G), (2, -2.0, OOR)]


def test_nan_and_infinity_are_out_of_range_even_without_limits() -> None:
    out = run(
        ProcessingSpec(deadband=1.0),
        [(1, 5.0), (2, math.nan), (3, math.inf), (4, -math.inf), (5, 10**400)],
    )
    assert [q for _, _, q in out] == [G, OOR, OOR, OOR, OOR]
    assert math.isnan(out[1][1]) and out[2][1] == math.inf and out[4][1] == 10**400


def test_a_reading_that_arrives_with_bad_quality_keeps_it_and_is_not_counted() -> None:
    processor = PointProcessor(ProcessingSpec(range_high=25.0))
    out = feed(processor, [(1, 99.0, CHECKSUM), (2, None, COMM)])
    assert [(r.value, r.quality) for r in out] == [(99.0, CHECKSUM), (None, COMM)]
    assert processor.out_of_range == 0


def test_text_and_booleans_skip_the_range_check() -> None:
    spec = ProcessingSpec(range_low=5.0, range_high=10.0)
    assert run(spec, [(1, True), (2, "RUN")]) == [(1, True, G), (2, "RUN", G)]


def test_an_untouched_reading_is_passed_on_as_the_same_object() -> None:
    reading = Reading("pump-7", "flow", 1, 3.0)
    assert PointProcessor(ProcessingSpec(range_high=25.0)).process(reading)[0] is reading


# -- spike -------------------------------------------------------------------------------

SPIKES = ProcessingSpec(spike_max_rate=1.0)  # 1 unit per second


def test_the_first_reading_is_never_a_spike() -> None:
    assert run(SPIKES, [(0, 1000.0)]) == [(0, 1000.0, G)]


def test_a_jump_faster_than_the_max_rate_is_flagged_and_keeps_its_value() -> None:
    processor = PointProcessor(SPIKES)
    out = feed(processor, [(0, 10.0), (1000, 10.9), (2000, 50.0)])
    assert [(r.value, r.quality) for r in out] == [(10.0, G), (10.9, G), (50.0, SPIKE)]
    assert (processor.spikes, processor.dropped_spikes) == (1, 0)


def test_a_spike_does_not_become_the_reference() -> None:
    # 11.5 is 1.5 above 10 after 2 s (0.75/s: fine), though 38.5 below the spike
    assert run(SPIKES, [(0, 10.0), (1000, 50.0), (2000, 11.5)]) == [
        (0, 10.0, G),
        (1000, 50.0, SPIKE),
        (2000, 11.5, G),
    ]


def test_a_step_change_is_accepted_after_three_spikes() -> None:
    assert STEP_CONFIRMATIONS == 3
    rows: list[Row] = [
        (0, 10.0),
        (1000, 10.0),
        (2000, 80.0),
        (3000, 80.2),
        (4000, 80.1),
        (5000, 80.3),
        (6000, 80.0),
    ]
    assert [q for _, _, q in run(SPIKES, rows)] == [G, G, SPIKE, SPIKE, SPIKE, G, G]


def test_spikes_in_alternating_directions_never_become_a_step() -> None:
    rows: list[Row] = [(0, 10.0)] + [(i * 1000, 10.0 + (50 if i % 2 else -50)) for i in range(1, 9)]
    assert [q for _, _, q in run(SPIKES, rows)] == [G] + [SPIKE] * 8


def test_a_good_reading_between_spikes_restarts_the_count_towards_a_step() -> None:
    rows: list[Row] = [
        (0, 10.0),
        (1000, 90.0),
        (2000, 90.0),
        (3000, 10.5),
        (4000, 90.0),
        (5000, 90.0),
        (6000, 90.0),
    ]
    assert [q for _, _, q in run(SPIKES, rows)] == [G, SPIKE, SPIKE, G, SPIKE, SPIKE, SPIKE]


def test_a_dropped_spike_is_not_emitted_and_is_counted() -> None:
    processor = PointProcessor(ProcessingSpec(spike_max_rate=1.0, spike_action="drop"))
    out = feed(processor, [(0, 10.0), (1000, 50.0), (2000, 10.5)])
    assert [(r.value, r.quality) for r in out] == [(10.0, G), (10.5, G)]
    assert (processor.spikes, processor.dropped_spikes) == (1, 1)


def test_a_change_at_the_same_timestamp_is_a_spike_but_a_repeat_is_not() -> None:
    assert [q for _, _, q in run(SPIKES, [(5, 1.0), (5, 1.0), (5, 1.001)])] == [G, G, SPIKE]


def test_the_rate_is_measured_from_the_reference_timestamp() -> None:
    # 10 units in 20 s since the last good value is 0.5/s: not a spike
    rows: list[Row] = [(0, 0.0), (20_000, 10.0)]
    assert [q for _, _, q in run(SPIKES, rows)] == [G, G]


def test_readings_flagged_out_of_range_do_not_take_part_in_the_spike_check() -> None:
    spec = ProcessingSpec(range_high=100.0, spike_max_rate=1.0)
    rows: list[Row] = [(0, 10.0), (1000, 500.0), (2000, 10.5)]
    assert [q for _, _, q in run(spec, rows)] == [G, OOR, G]


# -- smoothing ---------------------------------------------------------------------------


def test_mean_smoothing_averages_the_last_n_good_values() -> None:
    spec = ProcessingSpec(smoothing="mean", smoothing_samples=3)
    assert [v for _, v, _ in run(spec, [(1, 3.0), (2, 6.0), (3, 9.0), (4, 30.0)])] == [
        3.0,
        4.5,
        6.0,
        15.0,
    ]


def test_median_smoothing_ignores_a_single_outlier() -> None:
    spec = ProcessingSpec(smoothing="median", smoothing_samples=3)
    assert [v for _, v, _ in run(spec, [(1, 5.0), (2, 7.0), (3, 900.0), (4, 6.0)])] == [
        5.0,
        6.0,
        7.0,
        7.0,
    ]


def test_int_inputs_produce_float_means_and_medians() -> None:
    for spec in (ProcessingSpec(smoothing="mean"), ProcessingSpec(smoothing="median")):
        out = run(spec, [(1, 4), (2, 5), (3, 9)])
        assert all(type(v) is float for _, v, _ in out), out


def test_readings_that_are_not_good_are_not_smoothed_and_do_not_enter_the_window() -> None:
    spec = ProcessingSpec(range_high=100.0, smoothing="mean", smoothing_samples=2)
    rows: list[Row] = [(1, 10.0), (2, 500.0), (3, None, COMM), (4, 7.0, CHECKSUM), (5, 20.0)]
    assert run(spec, rows) == [
        (1, 10.0, G),
        (2, 500.0, OOR),
        (3, None, COMM),
        (4, 7.0, CHECKSUM),
        (5, 15.0, G),
    ]


def test_a_flagged_spike_is_not_smoothed() -> None:
    spec = ProcessingSpec(spike_max_rate=1.0, smoothing="mean", smoothing_samples=4)
    assert run(spec, [(0, 10.0), (1000, 99.0), (2000, 10.0)]) == [
        (0, 10.0, G),
        (1000, 99.0, SPIKE),
        (2000, 10.0, G),
    ]


# -- deadband and heartbeat --------------------------------------------------------------

DEADBAND = ProcessingSpec(deadband=0.5, heartbeat_ms=60_000)


def test_the_first_reading_is_always_emitted() -> None:
    assert run(ProcessingSpec(deadband=1e9), [(7, 1.0)]) == [(7, 1.0, G)]


def test_changes_within_the_deadband_are_suppressed_and_counted() -> None:
    processor = PointProcessor(DEADBAND)
    out = feed(processor, [(0, 10.0), (1, 10.4), (2, 9.6), (3, 10.5), (4, 10.6)])
    assert [r.value for r in out] == [10.0, 10.6]
    assert processor.suppressed_by_deadband == 3


def test_the_deadband_compares_with_the_last_emitted_value_not_the_last_reading() -> None:
    # a slow drift is sent once it has moved a whole deadband away from what was sent
    rows: list[Row] = [(i, 0.2 * i) for i in range(8)]
    assert [ts for ts, _, _ in run(DEADBAND, rows)] == [0, 3, 6]


def test_heartbeat_resends_an_unchanged_value() -> None:
    rows: list[Row] = [
        (0, 10.0),
        (30_000, 10.0),
        (59_999, 10.0),
        (60_000, 10.0),
        (90_000, 10.1),
        (120_000, 10.0),
    ]
    assert [ts for ts, _, _ in run(DEADBAND, rows)] == [0, 60_000, 120_000]


def test_a_deadband_of_zero_sends_every_change_and_no_repeat() -> None:
    rows: list[Row] = [(0, 1.0), (1, 1.0), (2, 1.5), (3, 1.5)]
    assert [ts for ts, _, _ in run(ProcessingSpec(deadband=0.0), rows)] == [0, 2]


def test_percent_deadband_is_relative_to_the_last_emitted_value() -> None:
    spec = ProcessingSpec(deadband_percent=10.0)
    rows: list[Row] = [(0, 200.0), (1, 219.0), (2, 221.0), (3, 200.0), (4, 198.0)]
    assert [v for _, v, _ in run(spec, rows)] == [200.0, 221.0, 198.0]


def test_percent_deadband_after_a_zero_emits_any_change() -> None:
    spec = ProcessingSpec(deadband_percent=50.0)
    assert [v for _, v, _ in run(spec, [(0, 0.0), (1, 0.0), (2, 1e-9)])] == [0.0, 1e-9]


def test_bad_quality_readings_are_never_suppressed_and_recovery_emits_at_once() -> None:
    rows: list[Row] = [
        (0, 10.0),
        (1, None, COMM),
        (2, None, COMM),
        (3, 10.0, CHECKSUM),
        (4, 10.0, CHECKSUM),
        (5, 10.0),
        (6, 10.0),
    ]
    assert run(DEADBAND, rows) == [
        (0, 10.0, G),
        (1, None, COMM),
        (2, None, COMM),
        (3, 10.0, CHECKSUM),
        (4, 10.0, CHECKSUM),
        (5, 10.0, G),
    ]


def test_out_of_range_readings_are_never_suppressed() -> None:
    spec = ProcessingSpec(range_high=20.0, deadband=1.0)
    rows: list[Row] = [(0, 25.0), (1, 25.0), (2, 19.0), (3, 19.5)]
    assert run(spec, rows) == [(0, 25.0, OOR), (1, 25.0, OOR), (2, 19.0, G)]


def test_none_values_pass_through_every_stage_unchanged() -> None:
    spec = ProcessingSpec(range_low=0.0, spike_max_rate=1.0, smoothing="median", deadband=1.0)
    reading = Reading("pump-7", "flow", 1, None, Quality.DEVICE_OFFLINE)
    assert PointProcessor(spec).process(reading) == [reading]


def test_text_and_booleans_are_sent_on_change() -> None:
    spec = ProcessingSpec(deadband=5.0, heartbeat_ms=100)
    rows: list[Row] = [
        (0, "RUN"),
        (1, "RUN"),
        (2, "STOP"),
        (3, True),
        (4, True),
        (5, 1),
        (6, 1.0),
        (7, 1.0),
        (106, 1.0),
    ]
    assert [v for _, v, _ in run(spec, rows)] == ["RUN", "STOP", True, 1, 1.0]
    assert [type(v) for _, v, _ in run(spec, rows)][-3:] == [bool, int, float]
    assert [ts for ts, _, _ in run(spec, rows)] == [0, 2, 3, 5, 106]


def test_the_deadband_sees_the_smoothed_value() -> None:
    spec = ProcessingSpec(smoothing="mean", smoothing_samples=2, deadband=1.0)
    assert run(spec, [(0, 0.0), (1, 1.8), (2, 1.8)]) == [(0, 0.0, G), (2, 1.8, G)]


# -- aggregation -------------------------------------------------------------------------

AGG = ProcessingSpec(aggregate_ms=10_000)


def points(readings: list[Reading]) -> list[tuple[str, int, Any, int]]:
    return [(r.point, r.ts_ms, r.value, r.quality) for r in readings]


def test_aggregation_emits_one_reading_per_function_when_a_window_closes() -> None:
    processor = PointProcessor(AGG)
    assert feed(processor, [(20_000, 4.0), (21_000, 1.0), (29_999, 7)]) == []
    out = feed(processor, [(30_000, 100.0)])
    assert points(out) == [
        ("flow.min", 20_000, 1.0, G),
        ("flow.max", 20_000, 7, G),
        ("flow.mean", 20_000, 4.0, G),
        ("flow.count", 20_000, 3, G),
        ("flow.last", 20_000, 7, G),
    ]
    assert {r.device for r in out} == {"pump-7"}


def test_windows_are_aligned_to_multiples_of_the_window_length() -> None:
    processor = PointProcessor(ProcessingSpec(aggregate_ms=1000, aggregate=("count",)))
    out = feed(processor, [(1500, 1.0), (1999, 1.0), (2000, 1.0), (5250, 1.0)]) + processor.flush(
        6000
    )
    assert points(out) == [
        ("flow.count", 1000, 2, G),
        ("flow.count", 2000, 1, G),
        ("flow.count", 5000, 1, G),
    ]


def test_only_the_chosen_functions_are_reported_in_their_order() -> None:
    processor = PointProcessor(ProcessingSpec(aggregate_ms=1000, aggregate=("last", "max")))
    out = feed(processor, [(0, 3.0), (1, 5.0), (2, 4.0)]) + processor.flush(2)
    assert points(out) == [("flow.last", 0, 4.0, G), ("flow.max", 0, 5.0, G)]


def test_a_window_with_a_bad_reading_carries_the_worst_quality_and_leaves_it_out_of_the_statistics() -> (
    None
):
    processor = PointProcessor(ProcessingSpec(range_high=50.0, aggregate_ms=1000))
    out = feed(processor, [(0, 1.0), (1, 99.0), (2, None, COMM), (3, 3.0)]) + processor.flush(1000)
    assert points(out) == [
        ("flow.min", 0, 1.0, COMM),
        ("flow.max", 0, 3.0, COMM),
        ("flow.mean", 0, 2.0, COMM),
        ("flow.count", 0, 4, COMM),
        ("flow.last", 0, 3.0, COMM),
    ]


def test_a_window_without_good_numbers_reports_only_count_and_last() -> None:
    processor = PointProcessor(AGG)
    out = feed(processor, [(0, None, COMM), (1, None, Quality.DEVICE_OFFLINE)]) + processor.flush(1)
    assert points(out) == [
        ("flow.count", 0, 2, Quality.DEVICE_OFFLINE),
        ("flow.last", 0, None, Quality.DEVICE_OFFLINE),
    ]


def test_text_counts_in_a_window_and_can_be_the_last_value() -> None:
    processor = PointProcessor(AGG)
    out = feed(processor, [(0, 2.0), (1, "RUN")]) + processor.flush(1)
    assert points(out)[-2:] == [("flow.count", 0, 2, G), ("flow.last", 0, "RUN", G)]
    assert points(out)[2] == ("flow.mean", 0, 2.0, G)


def test_flush_closes_the_open_window_at_shutdown() -> None:
    processor = PointProcessor(AGG)
    feed(processor, [(1000, 5.0)])
    assert [r.point for r in processor.flush(2000)] == [
        "flow.min",
        "flow.max",
        "flow.mean",
        "flow.count",
        "flow.last",
    ]
    assert processor.flush(2000) == []


def test_an_idle_flush_leaves_an_unfinished_window_open_and_closes_a_finished_one() -> None:
    processor = PointProcessor(AGG)
    feed(processor, [(1000, 5.0)])
    assert processor.flush(9999, final=False) == []
    assert feed(processor, [(9000, 7.0)]) == []
    out = processor.flush(10_000, final=False)
    assert points(out)[3] == ("flow.count", 0, 2, G)


def test_a_clock_step_back_closes_the_open_window() -> None:
    processor = PointProcessor(ProcessingSpec(aggregate_ms=1000, aggregate=("count",)))
    out = feed(processor, [(5000, 1.0), (5100, 1.0), (3000, 1.0)]) + processor.flush(3000)
    assert points(out) == [("flow.count", 5000, 2, G), ("flow.count", 3000, 1, G)]


def test_a_dropped_spike_is_not_counted_in_the_window() -> None:
    processor = PointProcessor(
        ProcessingSpec(spike_max_rate=1.0, spike_action="drop", aggregate_ms=10_000)
    )
    out = feed(processor, [(0, 1.0), (1000, 90.0), (2000, 1.5)]) + processor.flush(2000)
    assert points(out)[3] == ("flow.count", 0, 2, G)


# -- the spec ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"range_low": 5.0, "range_high": 1.0}, "range_low 5.0 must be below range_high 1.0"),
        ({"range_low": 1.0, "range_high": 1.0}, "must be below"),
        ({"range_high": math.nan}, "range_high must be a finite number"),
        ({"spike_max_rate": 0.0}, "spike_max_rate must be above 0"),
        ({"spike_max_rate": 1.0, "spike_action": "ignore"}, "spike_action"),
        ({"smoothing": "mode"}, "smoothing must be 'mean' or 'median'"),
        ({"smoothing": "mean", "smoothing_samples": 0}, "smoothing_samples must be at least 1"),
        ({"deadband": -0.1}, "deadband must not be negative"),
        ({"deadband_percent": -1.0}, "deadband_percent must not be negative"),
        ({"deadband": 1.0, "deadband_percent": 5.0}, "not both"),
        ({"heartbeat_ms": 60_000}, "heartbeat_ms goes with a deadband"),
        ({"deadband": 1.0, "heartbeat_ms": 0}, "heartbeat_ms must be above 0"),
        ({"aggregate_ms": -5}, "aggregate_ms must be above 0"),
        ({"aggregate_ms": 1000, "deadband": 1.0}, "cannot feed an aggregation"),
        (
            {"aggregate_ms": 1000, "aggregate": ("mean", "p95")},
            "unknown aggregate function(s) ['p95']",
        ),
        ({"aggregate_ms": 1000, "aggregate": ()}, "at least one function"),
        ({"aggregate_ms": 1000, "aggregate": ("min", "min")}, "twice"),
    ],
)
def test_a_spec_that_makes_no_sense_is_rejected_with_the_reason(
    fields: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match="processing: ") as caught:
        ProcessingSpec(**fields)
    assert complaint in str(caught.value)


def test_a_forged_spec_is_rejected_by_the_processor() -> None:
    spec = ProcessingSpec()
    object.__setattr__(spec, "smoothing_samples", 0)
    with pytest.raises(ValueError, match="smoothing_samples"):
        PointProcessor(spec)


def test_only_a_spec_that_does_nothing_is_a_passthrough() -> None:
    assert is_passthrough(ProcessingSpec())
    assert is_passthrough(
        ProcessingSpec(spike_action="drop", smoothing_samples=9, aggregate=("min",))
    )
    fields: dict[str, Any]
    for fields in (
        {"range_low": 0.0},
        {"range_high": 0.0},
        {"spike_max_rate": 1.0},
        {"smoothing": "mean"},
        {"deadband": 0.0},
        {"deadband_percent": 1.0},
        {"aggregate_ms": 1000},
    ):
        assert not is_passthrough(ProcessingSpec(**fields)), fields


def test_counters_report_what_each_stage_did() -> None:
    processor = PointProcessor(
        ProcessingSpec(range_high=100.0, spike_max_rate=1.0, spike_action="drop", deadband=1.0)
    )
    feed(processor, [(0, 10.0), (1000, 10.5), (2000, 500.0), (3000, 60.0)])
    assert processor.counters() == {
        "out_of_range": 1,
        "spikes": 1,
        "dropped_spikes": 1,
        "suppressed_by_deadband": 1,
    }
