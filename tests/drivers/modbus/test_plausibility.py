"""Values that look like a wrong byte order or an off-by-one address: the table of cases
`edge-gateway check` warns on, and the ones it must leave alone."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.decode import ByteOrder, DataType, Table, encode_value
from drivers.modbus.plausibility import Tier, advice, significant_digits, suspect, tier

ABCD, CDAB, BADC, DCBA = ByteOrder.ABCD, ByteOrder.CDAB, ByteOrder.BADC, ByteOrder.DCBA
F32, F64, U32, I32, U16 = (
    DataType.FLOAT32,
    DataType.FLOAT64,
    DataType.UINT32,
    DataType.INT32,
    DataType.UINT16,
)


def words(*values: float, dtype: DataType = F32, order: ByteOrder = ABCD) -> list[int]:
    """Consecutive values as a device holds them, register after register."""
    return [w for v in values for w in encode_value(v, dtype, order)]


# (case, window, at, type, configured order, expected best: (order, shift, value) or None)
CASES = [
    (
        "a word-swapped float read as ABCD is named CDAB",
        words(2.31, order=CDAB),
        0,
        F32,
        ABCD,
        (CDAB, 0, 2.31),
    ),
    (
        "a byte-swapped float read as ABCD is named BADC",
        words(1013.2, order=BADC),
        0,
        F32,
        ABCD,
        (BADC, 0, 1013.2),
    ),
    (
        "a little-endian float read as CDAB is named DCBA",
        words(-17.5, order=DCBA),
        0,
        F32,
        CDAB,
        (DCBA, 0, -17.5),
    ),
    (
        "a float read one register too high is found one register lower",
        words(229.8, 5.12, 1234.5),
        1,
        F32,
        ABCD,
        (ABCD, -1, 229.8),
    ),
    (
        "a float read one register too low is found one register higher",
        [0x1234, *words(48.7)],
        0,
        F32,
        ABCD,
        (ABCD, 1, 48.7),
    ),
    (
        "a word-swapped float64 is named CDAB",
        words(6543.21, dtype=F64, order=CDAB),
        0,
        F64,
        ABCD,
        (CDAB, 0, 6543.21),
    ),
    (
        "a word-swapped counter is named by the order that makes it small",
        words(100_000, dtype=U32, order=ABCD),
        0,
        U32,
        CDAB,
        (ABCD, 0, 100_000),
    ),
    ("a plain float read right is left alone", words(2.31), 0, F32, ABCD, None),
    (
        "a computed float with every digit is left alone",
        words(229.83125305175781, 230.1),
        0,
        F32,
        ABCD,
        None,
    ),
    ("zero is never suspected", [0, 0, 0, 0], 1, F32, ABCD, None),
    (
        "a NaN sentinel with nothing plausible around it is left alone",
        [0xFFFF, 0xFFFF],
        0,
        F32,
        ABCD,
        None,
    ),
    ("16-bit values are never judged", [0x0A00], 0, U16, ABCD, None),
    (
        "a large counter whose words are both busy is left alone",
        words(3_000_000_123, dtype=U32),
        0,
        U32,
        ABCD,
        None,
    ),
    (
        "integers get no address alternatives",
        [0, *words(70_000_000, dtype=U32)],
        1,
        U32,
        ABCD,
        None,
    ),
]


@pytest.mark.parametrize(
    ("window", "at", "dtype", "order", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_suspicion_table(
    window: list[int],
    at: int,
    dtype: DataType,
    order: ByteOrder,
    expected: tuple[ByteOrder, int, float] | None,
) -> None:
    found = suspect(window, at, dtype, order)
    if expected is None:
        assert found is None
        return
    assert found is not None
    best = found.best
    assert (best.order, best.shift) == expected[:2]
    assert best.value == pytest.approx(expected[2], rel=1e-6)


def test_the_warning_names_the_order_that_reads_a_plausible_number() -> None:
    found = suspect(words(2.31, order=CDAB), 0, F32, ABCD)
    assert found is not None
    assert advice("pump.pressure", Table.HOLDING, 0, found) == (
        "pump.pressure: float32 ABCD at holding 0 gives -1.520078e+14 (magnitude 2e+14); "
        'CDAB gives 2.31: byte_order = "CDAB"?'
    )


def test_the_warning_names_the_address_that_reads_a_plausible_number() -> None:
    found = suspect(words(229.8, 5.12, 1234.5), 1, F32, ABCD)
    assert found is not None
    text = advice("meter.voltage", Table.INPUT, 1, found)
    assert text.startswith("meter.voltage: float32 ABCD at input 1 gives ")
    assert text.endswith("; input 0 gives 229.8: address = 0?")


def test_neighbours_of_one_size_leave_both_readings_to_the_datasheet() -> None:
    """Three phase voltages one register off: the word-swapped registers give the next
    phase's whole volts with this phase's fraction, as plain as the truth."""
    found = suspect(words(229.8, 230.1, 231.4), 1, F32, ABCD)
    assert found is not None
    text = advice("meter.l1", Table.INPUT, 1, found)
    assert 'CDAB gives 230.8: byte_order = "CDAB"?' in text
    assert "or input 0 gives 229.8: address = 0?" in text


@pytest.mark.parametrize(
    ("value", "dtype", "expected"),
    [
        (float("nan"), F32, (Tier.IMPLAUSIBLE, "NaN")),
        (float("inf"), F32, (Tier.IMPLAUSIBLE, "infinite")),
        (1.401298464324817e-41, F32, (Tier.IMPLAUSIBLE, "a denormal")),
        (1e-30, F64, (Tier.IMPLAUSIBLE, "magnitude 1e-30")),
        (3e12, F32, (Tier.IMPLAUSIBLE, "magnitude 3e+12")),
        (-107617072.0, F32, (Tier.NOISY, "8 significant digits")),
        (1234.5678, F64, (Tier.USUAL, "")),
        (123.456, F32, (Tier.USUAL, "")),
        (2.31, F64, (Tier.PLAIN, "")),
        (2**30, U32, (Tier.NOISY, "magnitude 1.1e+09")),
        (70_000, U32, (Tier.PLAIN, "")),
        (0, F32, None),
        (7, U16, None),
    ],
)
def test_how_values_look(value: float, dtype: DataType, expected: tuple[Tier, str] | None) -> None:
    assert tier(value, dtype) == expected


@pytest.mark.parametrize(
    ("value", "bits", "digits"),
    [(229.8, 64, 4), (1e-30, 64, 1), (1000.0, 64, 1), (-0.0125, 64, 3), (0.0, 64, 1)],
)
def test_significant_digits_of_doubles(value: float, bits: int, digits: int) -> None:
    assert significant_digits(value, bits) == digits


def test_significant_digits_of_a_float32_are_those_it_carries() -> None:
    import struct

    widened = struct.unpack(">f", struct.pack(">f", 229.8))[0]  # 229.8000030517578
    assert significant_digits(widened, 32) == 4


tenths = st.integers(min_value=1, max_value=99_999).map(lambda n: n / 10)
signs = st.sampled_from([1, -1])


@given(tenths, signs, st.sampled_from(list(ByteOrder)), st.sampled_from([F32, F64]))
def test_a_reading_decoded_in_its_own_order_is_never_suspected(
    value: float, sign: int, order: ByteOrder, dtype: DataType
) -> None:
    assert suspect(words(sign * value, dtype=dtype, order=order), 0, dtype, order) is None


@given(tenths, st.sampled_from([CDAB, BADC, DCBA]))
def test_a_suspected_misread_offers_the_true_order(value: float, truth: ByteOrder) -> None:
    found = suspect(words(value, order=truth), 0, F32, ABCD)
    if found is not None:  # a misread that still looks like a reading is not suspected
        assert any(
            a.order is truth and a.shift == 0 and math.isclose(a.value, value, rel_tol=1e-6)
            for a in found.better
        )


def test_a_window_too_short_for_the_point_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        suspect([1], 0, F32, ABCD)
