"""Every value a driver can produce has a documented outcome, and no value can stop the
pipeline or make a batch unencodable (docs/wire-format.md, "Values a device can send")."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.core.model import MAX_TEXT, Quality, Reading, value_problem
from gateway.pipeline.processing import Processing
from gateway.wire import decode_batch, encode_batch

HOSTILE = [
    123456789012345678901234567890,  # a regex \d+ group read as int
    -(2**63) - 1,
    2**64,
    10**5000,
    math.inf,
    -math.inf,
    math.nan,
    "x" * (MAX_TEXT + 1),
    "\ud800 lone surrogate",
    b"bytes",
    [1, 2],
    object(),
]


def _id(value: object) -> str:
    if isinstance(value, int) and abs(value) > 10**30:
        return f"int of {len(str(abs(value)) if abs(value) < 10**4000 else 'many')} digits"
    if type(value) is object:
        return "a plain object"  # its repr holds an address: ids must be the same every run
    return repr(value)[:30]


FINE = [0, -(2**63), 2**64 - 1, 1.5, -0.0, 1e300, True, False, None, "", "x" * MAX_TEXT, "ü€"]


@pytest.mark.parametrize("value", HOSTILE, ids=_id)
def test_a_value_the_wire_cannot_carry_has_a_problem_in_words(value: object) -> None:
    problem = value_problem(value)
    assert problem is not None and problem[0].isalpha()


@pytest.mark.parametrize("value", FINE, ids=_id)
def test_values_the_wire_carries_have_no_problem(value: object) -> None:
    assert value_problem(value) is None


def test_hostile_values_become_no_value_with_quality_invalid_value_and_are_reported() -> None:
    out: list[Reading] = []
    reported: list[tuple[str, str]] = []
    processing = Processing(
        {}, {}, out.extend, lambda e: None, on_invalid=lambda r, p: reported.append((r.point, p))
    )
    readings = [Reading("gas", f"p{i}", 1_000 + i, v) for i, v in enumerate(HOSTILE)]
    good = Reading("gas", "ok", 2_000, 4.5)
    processing.add([good, *readings, good])
    assert out[0] is good and out[-1] is good
    for reading in out[1:-1]:
        assert reading.value is None and reading.quality == Quality.INVALID_VALUE
    assert [point for point, _ in reported] == [f"p{i}" for i in range(len(HOSTILE))]
    assert processing.counters()["invalid_values"] == len(HOSTILE)


def test_a_batch_of_only_good_values_passes_through_as_the_same_object() -> None:
    out: list[object] = []
    processing = Processing({}, {}, out.append, lambda e: None)
    batch = [Reading("d", "p", 1, 1.0), Reading("d", "q", 1, 2)]
    processing.add(batch)
    assert out == [batch] and out[0] is batch


def test_an_int_beyond_64_bits_does_not_stop_the_encoder() -> None:
    """Seen: OverflowError from msgpack escaped the batcher and stopped the whole gateway."""
    payload = encode_batch("gw", "b", 1, [Reading("gas", "n", 1, 123456789012345678901234567890)])
    (reading,) = decode_batch(payload).readings
    assert reading.value is None and reading.quality == Quality.INVALID_VALUE


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(codec=None, categories=None), max_size=50),
    st.text(max_size=3000),
    st.binary(max_size=10),
)
readings = st.lists(
    st.builds(
        Reading,
        st.sampled_from(["pump", "gauge", "gas-3", "ü-device"]),
        st.sampled_from(["p", "q", "level", "ch4"]),
        st.integers(min_value=0, max_value=2**53),
        values,
        st.sampled_from(list(Quality)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(readings, st.booleans(), st.sampled_from(["auto", "never", "always"]))
def test_the_encoder_never_raises_on_any_reading_and_keeps_every_reading(
    batch: list[Reading], synced: bool, compress: str
) -> None:
    payload = encode_batch("gw", "boot", 7, batch, compress=compress, clock_synced=synced)  # type: ignore[arg-type]
    decoded = decode_batch(payload)
    assert decoded.clock_synced is synced
    assert len(decoded.readings) == len(batch)
    for sent, got in zip(batch, decoded.readings, strict=True):
        assert (got.device, got.point, got.ts_ms) == (sent.device, sent.point, sent.ts_ms)
        if value_problem(sent.value) is None:
            assert got.value == sent.value or (got.value != got.value and sent.value != sent.value)
            assert got.quality == sent.quality
        else:
            assert got.value is None and got.quality == Quality.INVALID_VALUE


def test_a_batch_taken_before_the_clock_was_synchronised_says_so_on_the_wire() -> None:
    from gateway.wire import batch_to_json_lines

    batch = decode_batch(
        encode_batch("gw", "b", 1, [Reading("d", "p", 5, 1.0)], clock_synced=False)
    )
    assert batch.clock_synced is False
    assert '"time_unsynchronised":true' in next(batch_to_json_lines(batch))
    synced = decode_batch(encode_batch("gw", "b", 2, [Reading("d", "p", 5, 1.0)]))
    assert synced.clock_synced is True
    assert "time_unsynchronised" not in next(batch_to_json_lines(synced))
