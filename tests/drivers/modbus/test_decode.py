"""Type conversion between Modbus registers and values: fixed vectors and round trips."""

from __future__ import annotations

import math
import struct
from itertools import product

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.decode import (
    ByteOrder,
    DataType,
    Table,
    Value,
    decode_registers,
    encode_value,
    is_bit_table,
    register_count,
    scale_value,
)

ABCD, CDAB, BADC, DCBA = ByteOrder.ABCD, ByteOrder.CDAB, ByteOrder.BADC, ByteOrder.DCBA

# (type, byte order, value, registers on the wire): each row both decodes and encodes.
VECTORS: list[tuple[DataType, ByteOrder, Value, list[int]]] = [
    # float32 123.456 = 0x42F6E979
    (DataType.FLOAT32, ABCD, 123.456, [0x42F6, 0xE979]),
    (DataType.FLOAT32, CDAB, 123.456, [0xE979, 0x42F6]),
    (DataType.FLOAT32, BADC, 123.456, [0xF642, 0x79E9]),
    (DataType.FLOAT32, DCBA, 123.456, [0x79E9, 0xF642]),
    # float32 -1.5 = 0xBFC00000
    (DataType.FLOAT32, ABCD, -1.5, [0xBFC0, 0x0000]),
    (DataType.FLOAT32, CDAB, -1.5, [0x0000, 0xBFC0]),
    (DataType.FLOAT32, BADC, -1.5, [0xC0BF, 0x0000]),
    (DataType.FLOAT32, DCBA, -1.5, [0x0000, 0xC0BF]),
    # int32 -2 = 0xFFFFFFFE
    (DataType.INT32, ABCD, -2, [0xFFFF, 0xFFFE]),
    (DataType.INT32, CDAB, -2, [0xFFFE, 0xFFFF]),
    (DataType.INT32, BADC, -2, [0xFFFF, 0xFEFF]),
    (DataType.INT32, DCBA, -2, [0xFEFF, 0xFFFF]),
    # uint32 0xDEADBEEF
    (DataType.UINT32, ABCD, 0xDEADBEEF, [0xDEAD, 0xBEEF]),
    (DataType.UINT32, CDAB, 0xDEADBEEF, [0xBEEF, 0xDEAD]),
    (DataType.UINT32, BADC, 0xDEADBEEF, [0xADDE, 0xEFBE]),
    (DataType.UINT32, DCBA, 0xDEADBEEF, [0xEFBE, 0xADDE]),
    # int64 -1234567890123 = 0xFFFFFEE08E04FB35
    (DataType.INT64, ABCD, -1234567890123, [0xFFFF, 0xFEE0, 0x8E04, 0xFB35]),
    (DataType.INT64, CDAB, -1234567890123, [0xFB35, 0x8E04, 0xFEE0, 0xFFFF]),
    (DataType.INT64, BADC, -1234567890123, [0xFFFF, 0xE0FE, 0x048E, 0x35FB]),
    (DataType.INT64, DCBA, -1234567890123, [0x35FB, 0x048E, 0xE0FE, 0xFFFF]),
    # uint64 0x0102030405060708
    (DataType.UINT64, ABCD, 0x0102030405060708, [0x0102, 0x0304, 0x0506, 0x0708]),
    (DataType.UINT64, CDAB, 0x0102030405060708, [0x0708, 0x0506, 0x0304, 0x0102]),
    (DataType.UINT64, BADC, 0x0102030405060708, [0x0201, 0x0403, 0x0605, 0x0807]),
    (DataType.UINT64, DCBA, 0x0102030405060708, [0x0807, 0x0605, 0x0403, 0x0201]),
    # float64 123.456 = 0x405EDD2F1A9FBE77
    (DataType.FLOAT64, ABCD, 123.456, [0x405E, 0xDD2F, 0x1A9F, 0xBE77]),
    (DataType.FLOAT64, CDAB, 123.456, [0xBE77, 0x1A9F, 0xDD2F, 0x405E]),
    (DataType.FLOAT64, BADC, 123.456, [0x5E40, 0x2FDD, 0x9F1A, 0x77BE]),
    (DataType.FLOAT64, DCBA, 123.456, [0x77BE, 0x9F1A, 0x2FDD, 0x5E40]),
    # float64 -2.5 = 0xC004000000000000
    (DataType.FLOAT64, ABCD, -2.5, [0xC004, 0x0000, 0x0000, 0x0000]),
    (DataType.FLOAT64, DCBA, -2.5, [0x0000, 0x0000, 0x0000, 0x04C0]),
    # 16-bit types: ABCD and CDAB as is, BADC and DCBA byte-swapped
    (DataType.INT16, ABCD, -1, [0xFFFF]),
    (DataType.INT16, DCBA, -1, [0xFFFF]),
    (DataType.INT16, ABCD, -2, [0xFFFE]),
    (DataType.INT16, CDAB, -2, [0xFFFE]),
    (DataType.INT16, BADC, -2, [0xFEFF]),
    (DataType.INT16, DCBA, -2, [0xFEFF]),
    (DataType.UINT16, ABCD, 0x1234, [0x1234]),
    (DataType.UINT16, CDAB, 0x1234, [0x1234]),
    (DataType.UINT16, BADC, 0x1234, [0x3412]),
    (DataType.UINT16, DCBA, 0x1234, [0x3412]),
    # bools from bit tables
    (DataType.BOOL, ABCD, True, [1]),
    (DataType.BOOL, ABCD, False, [0]),
]

FLOAT32_TOLERANCE = 1e-7


def _matches(decoded: Value, expected: Value, dtype: DataType) -> bool:
    if dtype is DataType.FLOAT32:
        assert isinstance(decoded, float)
        assert isinstance(expected, float)
        return math.isclose(decoded, expected, rel_tol=FLOAT32_TOLERANCE)
    return type(decoded) is type(expected) and decoded == expected


@pytest.mark.parametrize(("dtype", "order", "value", "registers"), VECTORS)
def test_known_registers_decode_to_their_value(
    dtype: DataType, order: ByteOrder, value: Value, registers: list[int]
) -> None:
    assert _matches(decode_registers(registers, dtype, order), value, dtype)


@pytest.mark.parametrize(("dtype", "order", "value", "registers"), VECTORS)
def test_known_value_encodes_to_its_registers(
    dtype: DataType, order: ByteOrder, value: Value, registers: list[int]
) -> None:
    assert encode_value(value, dtype, order) == registers


STRING_VECTORS: list[tuple[ByteOrder, str, int, list[int]]] = [
    (ABCD, "Hello", 3, [0x4865, 0x6C6C, 0x6F00]),
    (CDAB, "Hello", 3, [0x4865, 0x6C6C, 0x6F00]),
    (BADC, "Hello", 3, [0x6548, 0x6C6C, 0x006F]),
    (DCBA, "Hello", 3, [0x6548, 0x6C6C, 0x006F]),
    (ABCD, "AB", 3, [0x4142, 0x0000, 0x0000]),
    (BADC, "AB", 3, [0x4241, 0x0000, 0x0000]),
    (ABCD, "", 1, [0x0000]),
]


@pytest.mark.parametrize(("order", "text", "length", "registers"), STRING_VECTORS)
def test_string_encodes_nul_padded_and_decodes_without_padding(
    order: ByteOrder, text: str, length: int, registers: list[int]
) -> None:
    assert encode_value(text, DataType.STRING, order, length=length) == registers
    assert decode_registers(registers, DataType.STRING, order) == text


@pytest.mark.parametrize(
    ("registers", "text"),
    [
        ([0x4F4B, 0x2020], "OK"),
        ([0x4F4B, 0x2000], "OK"),
        ([0x4120, 0x4200], "A B"),
        ([0x41FF], "A\ufffd"),
    ],
    ids=["trailing spaces", "space then NUL", "inner space kept", "non-ascii replaced"],
)
def test_string_decoding_strips_trailing_padding_and_replaces_non_ascii(
    registers: list[int], text: str
) -> None:
    assert decode_registers(registers, DataType.STRING) == text


BIT_VECTORS: list[tuple[int, ByteOrder, int, bool]] = [
    (0x0001, ABCD, 0, True),
    (0x0001, ABCD, 15, False),
    (0x8000, ABCD, 15, True),
    (0x8000, ABCD, 0, False),
    (0x8000, CDAB, 15, True),
    (0x0080, BADC, 15, True),
    (0x0100, DCBA, 0, True),
    (0x0100, ABCD, 8, True),
    (0xFFFE, ABCD, 0, False),
]


@pytest.mark.parametrize(("register", "order", "bit", "expected"), BIT_VECTORS)
def test_bit_is_read_from_the_register_after_byte_order(
    register: int, order: ByteOrder, bit: int, expected: bool
) -> None:
    assert decode_registers([register], DataType.BIT, order, bit=bit) is expected


# A value per type for the every-type x every-order round trip.
SAMPLES: dict[DataType, list[Value]] = {
    DataType.BOOL: [True, False],
    DataType.INT16: [-32768, -1, 0, 32767],
    DataType.UINT16: [0, 0xABCD, 0xFFFF],
    DataType.INT32: [-(2**31), -2, 2**31 - 1],
    DataType.UINT32: [0, 0xDEADBEEF, 2**32 - 1],
    DataType.INT64: [-(2**63), -2, 2**63 - 1],
    DataType.UINT64: [0, 0x0102030405060708, 2**64 - 1],
    DataType.FLOAT32: [0.0, -1.5, 3.0e38, -(2.0**-126), math.inf],
    DataType.FLOAT64: [0.0, 123.456, -1.0e308, 5e-324, -math.inf],
}


@pytest.mark.parametrize(
    ("dtype", "order", "value"),
    [(d, o, v) for (d, values), o in product(SAMPLES.items(), ByteOrder) for v in values],
)
def test_every_numeric_type_round_trips_in_every_byte_order(
    dtype: DataType, order: ByteOrder, value: Value
) -> None:
    registers = encode_value(value, dtype, order)
    assert len(registers) == register_count(dtype)
    assert all(0 <= r <= 0xFFFF for r in registers)
    decoded = decode_registers(registers, dtype, order)
    expected = (
        struct.unpack(">f", struct.pack(">f", value))[0] if dtype is DataType.FLOAT32 else value
    )
    assert decoded == expected


@pytest.mark.parametrize("order", list(ByteOrder))
@pytest.mark.parametrize("text", ["", "A", "AB", "Serial 0042", "x" * 20])
def test_every_string_round_trips_in_every_byte_order(order: ByteOrder, text: str) -> None:
    registers = encode_value(text, DataType.STRING, order, length=10)
    assert len(registers) == 10
    assert decode_registers(registers, DataType.STRING, order) == text


@pytest.mark.parametrize("order", list(ByteOrder))
@pytest.mark.parametrize("bit", [0, 7, 8, 15])
def test_every_bit_round_trips_in_every_byte_order(order: ByteOrder, bit: int) -> None:
    registers = encode_value(True, DataType.BIT, order, bit=bit)
    assert decode_registers(registers, DataType.BIT, order, bit=bit) is True
    assert [decode_registers(registers, DataType.BIT, order, bit=b) for b in range(16)].count(
        True
    ) == 1
    cleared = encode_value(False, DataType.BIT, order, bit=bit)
    assert cleared == [0]
    assert decode_registers(cleared, DataType.BIT, order, bit=bit) is False


_INT_RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}


@given(data=st.data(), order=st.sampled_from(ByteOrder))
def test_any_integer_in_range_round_trips(data: st.DataObject, order: ByteOrder) -> None:
    dtype = data.draw(st.sampled_from(list(_INT_RANGES)))
    low, high = _INT_RANGES[dtype]
    value = data.draw(st.integers(low, high))
    assert decode_registers(encode_value(value, dtype, order), dtype, order) == value


@given(order=st.sampled_from(ByteOrder), value=st.floats(width=32, allow_nan=False))
def test_any_float32_round_trips(order: ByteOrder, value: float) -> None:
    assert (
        decode_registers(encode_value(value, DataType.FLOAT32, order), DataType.FLOAT32, order)
        == value
    )


@given(order=st.sampled_from(ByteOrder), value=st.floats(allow_nan=False))
def test_any_float64_round_trips(order: ByteOrder, value: float) -> None:
    assert (
        decode_registers(encode_value(value, DataType.FLOAT64, order), DataType.FLOAT64, order)
        == value
    )


@pytest.mark.parametrize("order", list(ByteOrder))
def test_nan_survives_a_round_trip(order: ByteOrder) -> None:
    for dtype in (DataType.FLOAT32, DataType.FLOAT64):
        decoded = decode_registers(encode_value(math.nan, dtype, order), dtype, order)
        assert isinstance(decoded, float)
        assert math.isnan(decoded)


@pytest.mark.parametrize(
    ("dtype", "length", "count"),
    [
        (DataType.BOOL, None, 1),
        (DataType.BIT, None, 1),
        (DataType.INT16, None, 1),
        (DataType.UINT16, None, 1),
        (DataType.INT32, None, 2),
        (DataType.UINT32, None, 2),
        (DataType.FLOAT32, None, 2),
        (DataType.INT64, None, 4),
        (DataType.UINT64, None, 4),
        (DataType.FLOAT64, None, 4),
        (DataType.STRING, 1, 1),
        (DataType.STRING, 10, 10),
    ],
)
def test_register_count_matches_the_type_size(
    dtype: DataType, length: int | None, count: int
) -> None:
    assert register_count(dtype, length) == count


@pytest.mark.parametrize("length", [None, 0, -1])
def test_a_string_without_a_positive_length_has_no_register_count(length: int | None) -> None:
    with pytest.raises(ValueError, match="length"):
        register_count(DataType.STRING, length)


@pytest.mark.parametrize(
    ("registers", "dtype", "bit", "message"),
    [
        ([0x42F6], DataType.FLOAT32, None, "needs 2 registers, got 1"),
        ([1, 2, 3], DataType.UINT32, None, "needs 2 registers, got 3"),
        ([1, 2], DataType.FLOAT64, None, "needs 4 registers, got 2"),
        ([], DataType.INT16, None, "needs 1 registers, got 0"),
        ([0x10000], DataType.UINT16, None, "out of range"),
        ([-1, 0], DataType.INT32, None, "out of range"),
        ([0x10000], DataType.STRING, None, "out of range"),
        ([1], DataType.BIT, None, "bit index must be in 0..15"),
        ([1], DataType.BIT, 16, "bit index must be in 0..15"),
        ([1], DataType.BIT, -1, "bit index must be in 0..15"),
        ([1, 2], DataType.BIT, 0, "needs 1 registers, got 2"),
        ([1], DataType.UINT16, 3, "only 'bit' points"),
        ([1], DataType.BOOL, 0, "only 'bit' points"),
        ([1, 0], DataType.BOOL, None, "bool needs 1 bit, got 2"),
        ([], DataType.STRING, None, "at least 1 register"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_malformed_input_is_refused_with_a_clear_message(
    registers: list[int], dtype: DataType, bit: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        decode_registers(registers, dtype, bit=bit)


@pytest.mark.parametrize(
    ("value", "dtype", "length", "bit", "message"),
    [
        (40000, DataType.INT16, None, None, "does not fit in int16"),
        (-1, DataType.UINT32, None, None, "does not fit in uint32"),
        (2**64, DataType.UINT64, None, None, "does not fit in uint64"),
        (1.5, DataType.INT32, None, None, "does not fit in int32"),
        (1e39, DataType.FLOAT32, None, None, "does not fit in float32"),
        ("12", DataType.UINT16, None, None, "cannot hold the string"),
        ("Hello", DataType.STRING, 2, None, "longer than 4 characters"),
        ("Grüße", DataType.STRING, 4, None, "not ASCII"),
        (12, DataType.STRING, 4, None, "needs a str"),
        ("AB", DataType.STRING, None, None, "length"),
        (True, DataType.BIT, None, None, "bit index must be in 0..15"),
        (True, DataType.BIT, None, 16, "bit index must be in 0..15"),
        (2, DataType.BIT, None, 1, "needs a bool"),
        ("on", DataType.BOOL, None, None, "needs a bool"),
        (7, DataType.UINT16, None, 3, "only 'bit' points"),
    ],
)
def test_values_that_do_not_fit_are_refused_when_encoding(
    value: Value,
    dtype: DataType,
    length: int | None,
    bit: int | None,
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_value(value, dtype, length=length, bit=bit)


@pytest.mark.parametrize(
    ("raw", "scale", "offset", "expected"),
    [
        (1234, 1.0, 0.0, 1234),
        (1234, 0.1, 0.0, 123.4),
        (1234, 1.0, -34.0, 1200.0),
        (-5, 2.0, 1.0, -9.0),
        (2.5, 1.0, 0.0, 2.5),
        (2.5, 2.0, 0.5, 5.5),
        (True, 10.0, 5.0, True),
        (False, 10.0, 5.0, False),
        ("ABC", 10.0, 5.0, "ABC"),
    ],
)
def test_scaling_applies_to_numbers_only(
    raw: Value, scale: float, offset: float, expected: Value
) -> None:
    scaled = scale_value(raw, scale, offset)
    assert type(scaled) is type(expected)
    assert scaled == pytest.approx(expected)


def test_unscaled_integers_stay_integers() -> None:
    assert type(scale_value(2**63 - 1, 1.0, 0.0)) is int
    assert scale_value(2**63 - 1, 1.0, 0.0) == 2**63 - 1


@pytest.mark.parametrize(
    ("table", "bits"),
    [
        (Table.COIL, True),
        (Table.DISCRETE_INPUT, True),
        (Table.HOLDING, False),
        (Table.INPUT, False),
    ],
)
def test_only_coils_and_discrete_inputs_are_bit_tables(table: Table, bits: bool) -> None:
    assert is_bit_table(table) is bits
    assert table.is_bit_table is bits
