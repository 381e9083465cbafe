"""Alarm rules: raise and clear with hysteresis and delays, rate of rise, readable events."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.core.model import Quality, Reading
from gateway.pipeline.alarms import (
    RISE_WINDOW_LIMIT,
    AlarmEvent,
    RateOfRiseAlarm,
    ThresholdAlarm,
)

Alarm = ThresholdAlarm | RateOfRiseAlarm
Row = tuple[Any, ...]  # (ts_ms, value) or (ts_ms, value, quality)


def events(alarm: Alarm, rows: list[Row]) -> list[tuple[int, str]]:
    """(ts_ms, state) of every event."""
    out: list[tuple[int, str]] = []
    for ts_ms, value, *quality in rows:
        event = alarm.update(Reading("gas-3", "ch4", ts_ms, value, *quality))
        if event is not None:
            out.append((event.ts_ms, event.state))
    return out


def methane(**kwargs: Any) -> ThresholdAlarm:
    return ThresholdAlarm(
        "methane-high", "gas-3", "ch4", **{"high": 20.0, "unit": "%LEL", **kwargs}
    )


# -- threshold ---------------------------------------------------------------------------


def test_a_threshold_alarm_raises_above_high_and_clears_below_high_minus_hysteresis() -> None:
    alarm = methane(hysteresis=2.0)
    rows: list[Row] = [(0, 19.0), (1, 20.0), (2, 20.1), (3, 25.0), (4, 18.5), (5, 17.9), (6, 15.0)]
    assert events(alarm, rows) == [(2, "raised"), (5, "cleared")]
    assert not alarm.active


def test_values_inside_the_hysteresis_band_keep_the_alarm_raised() -> None:
    alarm = methane(hysteresis=2.0)
    assert events(alarm, [(0, 21.0), (1, 19.0), (2, 18.0), (3, 19.9), (4, 20.0)]) == [(0, "raised")]
    assert alarm.active


def test_on_delay_suppresses_a_short_excursion() -> None:
    alarm = methane(on_delay_ms=5000)
    assert events(alarm, [(0, 25.0), (2000, 30.0), (4999, 30.0), (5000, 10.0), (8000, 10.0)]) == []


def test_on_delay_raises_a_sustained_excursion_once_it_has_lasted() -> None:
    alarm = methane(on_delay_ms=5000)
    assert events(alarm, [(0, 10.0), (1000, 25.0), (3000, 30.0), (6000, 21.0), (7000, 22.0)]) == [
        (6000, "raised")
    ]


def test_a_reading_in_the_hysteresis_band_restarts_the_on_delay() -> None:
    alarm = methane(hysteresis=1.0, on_delay_ms=5000)
    rows: list[Row] = [(0, 25.0), (4000, 19.5), (5000, 25.0), (9000, 25.0), (10_000, 25.0)]
    assert events(alarm, rows) == [(10_000, "raised")]


def test_off_delay_keeps_the_alarm_raised_through_a_short_dip() -> None:
    alarm = methane(hysteresis=1.0, off_delay_ms=10_000)
    rows: list[Row] = [
        (0, 25.0),
        (1000, 5.0),
        (9000, 5.0),
        (10_000, 21.0),
        (12_000, 5.0),
        (21_999, 5.0),
        (22_000, 5.0),
    ]
    assert events(alarm, rows) == [(0, "raised"), (22_000, "cleared")]


def test_a_reading_in_the_hysteresis_band_restarts_the_off_delay() -> None:
    alarm = methane(hysteresis=1.0, off_delay_ms=10_000)
    rows: list[Row] = [
        (0, 25.0),
        (1000, 5.0),
        (5000, 19.5),
        (6000, 5.0),
        (11_000, 5.0),
        (16_000, 5.0),
    ]
    assert events(alarm, rows) == [(0, "raised"), (16_000, "cleared")]


def test_a_low_alarm_raises_below_low_and_clears_above_low_plus_hysteresis() -> None:
    alarm = ThresholdAlarm("oxygen-low", "gas-3", "o2", low=19.5, hysteresis=0.5)
    assert events(alarm, [(0, 20.9), (1, 19.4), (2, 19.9), (3, 20.1)]) == [
        (1, "raised"),
        (3, "cleared"),
    ]


def test_a_two_sided_alarm_stays_raised_when_the_value_crosses_to_the_other_side() -> None:
    alarm = ThresholdAlarm("band", "d", "p", low=0.0, high=10.0, hysteresis=1.0)
    assert events(alarm, [(0, 11.0), (1, -1.0), (2, 0.5), (3, 5.0)]) == [
        (0, "raised"),
        (3, "cleared"),
    ]


@pytest.mark.parametrize(
    ("value", "quality"),
    [
        (None, Quality.COMM_ERROR),
        (None, Quality.DEVICE_OFFLINE),
        (99.0, Quality.BAD_CHECKSUM),
        (99.0, Quality.SPIKE),
        (99.0, Quality.STALE),
        (math.nan, Quality.GOOD),
        ("99", Quality.GOOD),
        (True, Quality.GOOD),
        (None, Quality.GOOD),
    ],
)
def test_readings_that_do_not_count_neither_raise_nor_clear(value: Any, quality: Quality) -> None:
    calm = methane()
    assert events(calm, [(0, 10.0), (1, value, quality)]) == []
    assert not calm.active
    raised = methane()
    events(raised, [(0, 30.0)])
    would_clear = 0.0 if value == 99.0 else value
    assert events(raised, [(1, would_clear, quality)]) == []
    assert raised.active


def test_a_gap_of_readings_that_do_not_count_does_not_restart_the_on_delay() -> None:
    alarm = methane(on_delay_ms=5000)
    rows: list[Row] = [(0, 25.0), (2000, None, Quality.COMM_ERROR), (6000, 25.0)]
    assert events(alarm, rows) == [(6000, "raised")]


def test_an_out_of_range_reading_counts_for_alarms() -> None:
    assert events(methane(), [(0, 150.0, Quality.OUT_OF_RANGE)]) == [(0, "raised")]


def test_an_integer_value_counts_and_is_reported_as_a_float() -> None:
    alarm = ThresholdAlarm("h2s-high", "gas-3", "h2s", high=10.0)
    event = alarm.update(Reading("gas-3", "h2s", 0, 15))
    assert event is not None and type(event.value) is float and event.value == 15.0


def test_a_clock_step_back_restarts_a_running_delay() -> None:
    alarm = methane(on_delay_ms=5000)
    assert events(alarm, [(100_000, 25.0), (50_000, 25.0), (54_999, 25.0), (55_000, 25.0)]) == [
        (55_000, "raised")
    ]


# -- events ------------------------------------------------------------------------------


def test_events_carry_a_sentence_for_people() -> None:
    alarm = methane(hysteresis=1.0, on_delay_ms=5000, off_delay_ms=90_000, severity="critical")
    messages = []
    for ts_ms, value in [(0, 21.4), (5000, 21.4), (10_000, 12.0), (100_000, 12.25)]:
        event = alarm.update(Reading("gas-3", "ch4", ts_ms, value))
        if event is not None:
            messages.append(event.message)
    assert messages == [
        "gas-3/ch4 = 21.4 %LEL is above 20 for 5s (raised)",
        "gas-3/ch4 = 12.25 %LEL is back below 19 for 90s (cleared)",
    ]


def test_messages_without_delay_or_unit_say_no_more_than_they_know() -> None:
    alarm = ThresholdAlarm("band", "tank-1", "temp", low=5.0, high=80.0, hysteresis=2.5)
    raised = alarm.update(Reading("tank-1", "temp", 0, 3.0))
    cleared = alarm.update(Reading("tank-1", "temp", 1, 40.0))
    assert raised is not None and raised.message == "tank-1/temp = 3 is below 5 (raised)"
    assert (
        cleared is not None
        and cleared.message == "tank-1/temp = 40 is back below 77.5 and above 7.5 (cleared)"
    )


def test_an_event_is_a_dict_for_the_alarm_lane() -> None:
    event = methane(severity="critical").update(Reading("gas-3", "ch4", 1_700_000_000_000, 25.0))
    assert event is not None
    assert event.as_dict() == {
        "alarm": "methane-high",
        "device": "gas-3",
        "point": "ch4",
        "state": "raised",
        "ts_ms": 1_700_000_000_000,
        "value": 25.0,
        "severity": "critical",
        "message": "gas-3/ch4 = 25 %LEL is above 20 (raised)",
    }
    assert isinstance(event, AlarmEvent)


# -- rate of rise ------------------------------------------------------------------------

MINUTE = 60_000


def flood(**kwargs: Any) -> RateOfRiseAlarm:
    return RateOfRiseAlarm(
        "flood-rising-fast",
        "gauge-204",
        "level",
        **{"max_rise": 0.3, "per_ms": 10 * MINUTE, "unit": "m", **kwargs},
    )


def test_a_rate_of_rise_alarm_raises_when_the_level_rises_too_fast_within_the_window() -> None:
    rows: list[Row] = [(0, 2.0), (2 * MINUTE, 2.1), (4 * MINUTE, 2.25), (6 * MINUTE, 2.31)]
    assert events(flood(), rows) == [(6 * MINUTE, "raised")]


def test_a_slow_rise_does_not_raise() -> None:
    rows: list[Row] = [(i * MINUTE, 2.0 + 0.025 * i) for i in range(60)]  # 0.25 m per 10 min
    assert events(flood(), rows) == []


def test_the_rise_is_measured_from_the_lowest_value_in_the_window() -> None:
    rows: list[Row] = [(0, 2.5), (MINUTE, 2.0), (2 * MINUTE, 2.2), (3 * MINUTE, 2.31)]
    assert events(flood(), rows) == [(3 * MINUTE, "raised")]


def test_rate_of_rise_clears_once_the_low_has_left_the_window() -> None:
    rows: list[Row] = [(0, 2.0), (MINUTE, 2.4)] + [(i * MINUTE, 2.4) for i in range(2, 13)]
    assert events(flood(), rows) == [(MINUTE, "raised"), (10 * MINUTE + 1 * MINUTE, "cleared")]


def test_rate_of_rise_honours_its_delays() -> None:
    rows: list[Row] = [(0, 2.0), (MINUTE, 2.4), (2 * MINUTE, 2.45), (3 * MINUTE, 2.5)] + [
        (i * MINUTE, 2.5) for i in range(4, 20)
    ]
    assert events(flood(on_delay_ms=2 * MINUTE, off_delay_ms=5 * MINUTE), rows) == [
        (3 * MINUTE, "raised"),
        (16 * MINUTE, "cleared"),
    ]


def test_rate_of_rise_message_says_how_much_and_how_fast() -> None:
    event = None
    alarm = flood()
    for ts_ms, value in [(0, 2.0), (5 * MINUTE, 2.35)]:
        event = alarm.update(Reading("gauge-204", "level", ts_ms, value)) or event
    assert event is not None
    assert (
        event.message == "gauge-204/level = 2.35 m rose 0.35 m within 10min, more than 0.3 (raised)"
    )


def test_rate_of_rise_ignores_infinity_and_bad_readings() -> None:
    rows: list[Row] = [
        (0, 2.0),
        (1, math.inf, Quality.OUT_OF_RANGE),
        (2, -math.inf),
        (3, 9.0, Quality.BAD_CHECKSUM),
        (4, 2.1),
    ]
    assert events(flood(), rows) == []


def test_rate_of_rise_memory_stays_bounded() -> None:
    alarm = flood(per_ms=1000)
    for i in range(10_000):  # a rise on every reading, 10 readings a second
        alarm.update(Reading("gauge-204", "level", i * 100, i * 0.001))
    assert len(alarm._window) <= 11
    steep = flood(per_ms=10**12)
    for i in range(RISE_WINDOW_LIMIT + 100):
        steep.update(Reading("gauge-204", "level", i, float(i)))
    assert len(steep._window) == RISE_WINDOW_LIMIT


def test_a_clock_step_back_starts_the_rise_window_afresh() -> None:
    rows: list[Row] = [(10 * MINUTE, 1.0), (5 * MINUTE, 1.5)]
    assert events(flood(), rows) == []


# -- construction ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({}, "needs high, low or both"),
        ({"high": 5.0, "low": 5.0}, "low 5.0 must be below high 5.0"),
        ({"high": 10.0, "low": 0.0, "hysteresis": 5.0}, "leaves no normal band"),
        ({"high": 10.0, "hysteresis": -1.0}, "hysteresis must not be negative"),
        ({"high": math.inf}, "finite"),
        ({"high": 10.0, "on_delay_ms": -1}, "delays must not be negative"),
        ({"high": 10.0, "severity": "panic"}, "severity must be one of"),
    ],
)
def test_a_threshold_rule_that_makes_no_sense_is_rejected(
    fields: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match="alarm 'x'") as caught:
        ThresholdAlarm("x", "d", "p", **fields)
    assert complaint in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"max_rise": 0.0, "per_ms": 1000}, "max_rise must be above 0"),
        ({"max_rise": math.nan, "per_ms": 1000}, "max_rise must be above 0"),
        ({"max_rise": 1.0, "per_ms": 0}, "per_ms must be above 0"),
        ({"max_rise": 1.0, "per_ms": 1000, "off_delay_ms": -5}, "delays must not be negative"),
    ],
)
def test_a_rate_of_rise_rule_that_makes_no_sense_is_rejected(
    fields: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match="alarm 'x'") as caught:
        RateOfRiseAlarm("x", "d", "p", **fields)
    assert complaint in str(caught.value)


# -- robustness --------------------------------------------------------------------------

values = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.integers(),
    st.floats(),
    st.sampled_from([10**400, -(10**400)]),
)
readings = st.builds(
    Reading,
    device=st.just("gas-3"),
    point=st.just("ch4"),
    ts_ms=st.integers(-(2**40), 2**45),
    value=values,
    quality=st.integers(-1, 10),
)


@given(st.lists(readings, max_size=60))
def test_update_never_raises_whatever_the_reading(batch: list[Reading]) -> None:
    rules: list[Alarm] = [
        methane(hysteresis=1.0, on_delay_ms=1000, off_delay_ms=500),
        ThresholdAlarm("band", "gas-3", "ch4", low=-5.0, high=5.0),
        flood(per_ms=1000, on_delay_ms=100),
    ]
    for reading in batch:
        for rule in rules:
            event = rule.update(reading)
            if event is not None:
                assert event.state == ("raised" if rule.active else "cleared")
                assert event.message.endswith(f"({event.state})")
