"""Readings as InfluxDB line protocol (gateway/centre/influx.py): one line per reading,
escaped per the line protocol reference, numbers as floats so that no field conflicts."""

from __future__ import annotations

import pytest

from drivers.core.model import Quality, Reading
from gateway.centre.influx import batch_lines, reading_line
from gateway.wire import Batch

TS = 1_795_430_000_013


def line(value: object, quality: int = Quality.GOOD, **kwargs: object) -> str | None:
    return reading_line(Reading("pump-7", "pressure", TS, value, quality), "cab-0412", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (6.25, "value=6.25"),
        (0.1, "value=0.1"),
        (1e-05, "value=1e-05"),
        (-12, "value=-12"),
        (2**64 - 1, "value=1.8446744073709552e+19"),
        (True, "value=1"),
        (False, "value=0"),
        ("FG-204", 'text="FG-204"'),
        ('say "hi" \\ now', 'text="say \\"hi\\" \\\\ now"'),
        ("two\nlines", 'text="two\\\\nlines"'),
    ],
)
def test_each_kind_of_value_becomes_its_field(value: object, field: str) -> None:
    expected = (
        f"pump-7,device=pump-7,gateway=cab-0412,point=pressure,quality=good {field} {TS}000000"
    )
    assert line(value) == expected


def test_a_reading_without_a_value_carries_its_quality_code_or_is_skipped() -> None:
    assert line(None, Quality.COMM_ERROR) == (
        "pump-7,device=pump-7,gateway=cab-0412,point=pressure,quality=comm_error "
        f"quality_code=4i {TS}000000"
    )
    assert line(None, Quality.DEVICE_OFFLINE, empty="skip") is None


def test_a_fixed_measurement_an_unknown_quality_and_an_unsynchronised_clock_show_in_the_line() -> (
    None
):
    assert line(1.5, 42, measurement="field data", synced=False) == (
        "field\\ data,clock=unsynchronised,device=pump-7,gateway=cab-0412,point=pressure,"
        f"quality=quality_42 value=1.5 {TS}000000"
    )


def test_names_are_escaped_and_what_line_protocol_cannot_carry_is_replaced() -> None:
    got = reading_line(Reading("#a b,c=d", "p\\q\nr", TS, 1), "g w")
    assert got == (
        "_#a\\ b\\,c=d,device=#a\\ b\\,c\\=d,gateway=g\\ w,point=p/q\\ r,quality=good "
        f"value=1 {TS}000000"
    )


def test_a_time_influxdb_cannot_store_gives_no_line() -> None:
    assert reading_line(Reading("d", "p", 2**62, 1.0), "g") is None


def test_a_batch_gives_its_readings_lines_in_order() -> None:
    batch = Batch(
        2,
        "cab-0412",
        "00112233445566aa",
        42,
        [Reading("pump-7", "a", TS, 1.0), Reading("gauge", "b", TS + 1, None, Quality.COMM_ERROR)],
    )
    assert [text.split(",")[0] for text in batch_lines(batch)] == ["pump-7", "gauge"]
    assert len(list(batch_lines(batch, empty="skip"))) == 1
