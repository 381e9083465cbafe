"""Read planning: which points share a Modbus read, and decoding what a read returned."""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.decode import ByteOrder, DataType, Table, Value, encode_value
from drivers.modbus.plan import (
    MAX_BITS,
    MAX_REGISTERS,
    PointSpec,
    ReadRequest,
    decode_response,
    plan_reads,
)

HOLDING, INPUT, COIL, DISCRETE = Table.HOLDING, Table.INPUT, Table.COIL, Table.DISCRETE_INPUT
TABLE_ORDER = [COIL, DISCRETE, HOLDING, INPUT]


def reg(
    name: str,
    address: int,
    dtype: DataType = DataType.UINT16,
    *,
    table: Table = HOLDING,
    order: ByteOrder = ByteOrder.ABCD,
    bit: int | None = None,
    length: int | None = None,
    scale: float = 1.0,
    offset: float = 0.0,
) -> PointSpec:
    return PointSpec(name, table, address, dtype, order, bit, length, scale, offset)


def bit(name: str, address: int, table: Table = COIL) -> PointSpec:
    return PointSpec(name, table, address, DataType.BOOL)


def shape(requests: Sequence[ReadRequest]) -> list[tuple[Table, int, int]]:
    return [(r.table, r.address, r.count) for r in requests]


def layout(request: ReadRequest) -> list[tuple[str, int]]:
    return [(p.name, index) for p, index in request.points]


# ---------------------------------------------------------------------------- merging


def test_no_points_need_no_reads() -> None:
    assert plan_reads([]) == []


def test_adjacent_points_are_read_in_one_request() -> None:
    points = [reg("a", 0), reg("b", 1, DataType.FLOAT32), reg("c", 3)]
    [request] = plan_reads(points)
    assert shape([request]) == [(HOLDING, 0, 4)]
    assert layout(request) == [("a", 0), ("b", 1), ("c", 3)]


@pytest.mark.parametrize(
    ("second_address", "max_gap", "expected"),
    [
        (1, 0, [(HOLDING, 0, 2)]),
        (2, 0, [(HOLDING, 0, 1), (HOLDING, 2, 1)]),
        (2, 1, [(HOLDING, 0, 3)]),
        (11, 10, [(HOLDING, 0, 12)]),
        (12, 10, [(HOLDING, 0, 1), (HOLDING, 12, 1)]),
    ],
    ids=[
        "no gap merges",
        "a gap of one splits when no gap is allowed",
        "a gap of one merges when one is allowed",
        "a gap equal to the limit merges",
        "a gap one above the limit splits",
    ],
)
def test_points_merge_while_the_gap_is_within_max_gap(
    second_address: int, max_gap: int, expected: list[tuple[Table, int, int]]
) -> None:
    points = [reg("a", 0), reg("b", second_address)]
    assert shape(plan_reads(points, max_gap_registers=max_gap)) == expected


def test_the_gap_is_measured_from_the_end_of_a_multi_register_point() -> None:
    points = [reg("a", 0, DataType.FLOAT64), reg("b", 6)]
    assert shape(plan_reads(points, max_gap_registers=2)) == [(HOLDING, 0, 7)]
    assert shape(plan_reads(points, max_gap_registers=1)) == [(HOLDING, 0, 4), (HOLDING, 6, 1)]


def test_the_bit_gap_applies_to_bit_tables_and_the_register_gap_to_registers() -> None:
    points = [bit("c1", 0), bit("c2", 5), reg("h1", 0), reg("h2", 5)]
    requests = plan_reads(points, max_gap_bits=4, max_gap_registers=3)
    assert shape(requests) == [(COIL, 0, 6), (HOLDING, 0, 1), (HOLDING, 5, 1)]


def test_the_request_covers_the_whole_span_of_its_last_point() -> None:
    points = [reg("a", 0), reg("b", 3, DataType.FLOAT64)]
    [request] = plan_reads(points, max_gap_registers=2)
    assert (request.address, request.count) == (0, 7)


def test_a_long_point_keeps_the_request_open_past_shorter_points_inside_it() -> None:
    points = [reg("serial", 0, DataType.STRING, length=10), reg("inside", 3)]
    [request] = plan_reads(points)
    assert (request.address, request.count) == (0, 10)
    assert layout(request) == [("serial", 0), ("inside", 3)]


# ---------------------------------------------------------------------------- limits


def test_130_consecutive_registers_take_two_reads_of_125_and_5() -> None:
    points = [reg(f"r{i}", i) for i in range(130)]
    requests = plan_reads(points)
    assert shape(requests) == [(HOLDING, 0, 125), (HOLDING, 125, 5)]
    assert layout(requests[1]) == [(f"r{i}", i - 125) for i in range(125, 130)]


def test_a_value_that_would_cross_the_register_limit_starts_the_next_read() -> None:
    points = [*(reg(f"r{i}", i) for i in range(124)), reg("f", 124, DataType.FLOAT32)]
    assert shape(plan_reads(points)) == [(HOLDING, 0, 124), (HOLDING, 124, 2)]


def test_2010_consecutive_coils_take_two_reads_of_2000_and_10() -> None:
    points = [bit(f"c{i}", i) for i in range(2010)]
    assert shape(plan_reads(points)) == [(COIL, 0, 2000), (COIL, 2000, 10)]


def test_shrunk_limits_split_reads_earlier() -> None:
    points = [reg(f"r{i}", i) for i in range(10)] + [bit(f"c{i}", i) for i in range(5)]
    requests = plan_reads(points, max_registers=4, max_bits=2)
    assert shape(requests) == [
        (COIL, 0, 2),
        (COIL, 2, 2),
        (COIL, 4, 1),
        (HOLDING, 0, 4),
        (HOLDING, 4, 4),
        (HOLDING, 8, 2),
    ]


def test_a_string_longer_than_one_read_is_refused_naming_the_point() -> None:
    with pytest.raises(ValueError, match=r"'long_label'.*126 registers"):
        plan_reads([reg("ok", 0), reg("long_label", 10, DataType.STRING, length=126)])


def test_a_string_longer_than_a_shrunk_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="'label'"):
        plan_reads([reg("label", 0, DataType.STRING, length=5)], max_registers=4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_gap_registers": -1},
        {"max_gap_bits": -1},
        {"max_registers": 0},
        {"max_registers": MAX_REGISTERS + 1},
        {"max_bits": 0},
        {"max_bits": MAX_BITS + 1},
    ],
)
def test_limits_outside_what_modbus_allows_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        plan_reads([reg("a", 0)], **kwargs)


# ---------------------------------------------------------------------------- sharing


def test_different_tables_never_share_a_read_and_come_in_table_order() -> None:
    points = [
        reg("i", 0, table=INPUT),
        reg("h", 0),
        bit("d", 0, table=DISCRETE),
        bit("c", 0),
    ]
    requests = plan_reads(points, max_gap_registers=100, max_gap_bits=100)
    assert shape(requests) == [(COIL, 0, 1), (DISCRETE, 0, 1), (HOLDING, 0, 1), (INPUT, 0, 1)]


def test_a_uint32_and_a_uint16_reading_its_low_word_share_one_read() -> None:
    points = [reg("total", 10, DataType.UINT32), reg("low", 11)]
    [request] = plan_reads(points)
    assert (request.address, request.count) == (10, 2)
    assert layout(request) == [("total", 0), ("low", 1)]


def test_points_at_the_same_address_share_one_read() -> None:
    points = [reg("raw", 7), reg("signed", 7, DataType.INT16)]
    [request] = plan_reads(points)
    assert (request.address, request.count) == (7, 1)
    assert layout(request) == [("raw", 0), ("signed", 0)]


def test_all_sixteen_bits_of_a_status_register_share_one_register() -> None:
    points = [reg(f"flag{b}", 5, DataType.BIT, bit=b) for b in range(16)]
    [request] = plan_reads(points)
    assert (request.address, request.count) == (5, 1)
    assert {index for _, index in request.points} == {0}


def test_the_plan_does_not_depend_on_the_order_points_are_configured_in() -> None:
    points = [reg(f"r{i}", i * 3) for i in range(40)] + [bit(f"c{i}", i * 2) for i in range(40)]
    expected = plan_reads(points, max_gap_registers=2)
    shuffled = points.copy()
    random.Random(1).shuffle(shuffled)
    assert plan_reads(shuffled, max_gap_registers=2) == expected
    assert [r.table for r in expected] == sorted((r.table for r in expected), key=TABLE_ORDER.index)


# ---------------------------------------------------------------------------- point specs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"table": HOLDING, "dtype": DataType.BOOL}, "use type 'bit'"),
        ({"table": COIL, "dtype": DataType.UINT16}, "use type 'bool'"),
        ({"dtype": DataType.BIT}, "needs a bit index"),
        ({"dtype": DataType.UINT16, "bit": 3}, "only type 'bit'"),
        ({"dtype": DataType.BIT, "bit": 16}, "0..15"),
        ({"dtype": DataType.STRING}, "needs a length"),
        ({"dtype": DataType.STRING, "length": 0}, "at least 1"),
        ({"dtype": DataType.UINT16, "length": 2}, "only strings"),
        ({"dtype": DataType.UINT32, "address": 0xFFFF}, "outside 0..65535"),
        ({"dtype": DataType.UINT16, "address": -1}, "outside 0..65535"),
    ],
)
def test_points_that_cannot_be_read_are_refused_naming_the_point(
    kwargs: dict[str, object], message: str
) -> None:
    fields: dict[str, object] = {"table": HOLDING, "address": 0, **kwargs}
    with pytest.raises(ValueError, match=f"point 'p': .*{message}"):
        PointSpec("p", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("point", "span"),
    [
        (bit("coil", 0), 1),
        (reg("flag", 0, DataType.BIT, bit=3), 1),
        (reg("count", 0, DataType.UINT16), 1),
        (reg("power", 0, DataType.FLOAT32), 2),
        (reg("energy", 0, DataType.UINT64), 4),
        (reg("label", 0, DataType.STRING, length=8), 8),
    ],
)
def test_a_point_spans_the_registers_of_its_type(point: PointSpec, span: int) -> None:
    assert point.span == span


def test_the_last_register_can_hold_a_point() -> None:
    assert reg("top", 0xFFFE, DataType.UINT32).span == 2


# ---------------------------------------------------------------------------- decoding


def read_image(request: ReadRequest, image: dict[int, int], padding: int = 0) -> list[int]:
    """What a device whose table holds ``image`` returns for ``request``."""
    stop = request.address + request.count + padding
    return [image.get(address, 0) for address in range(request.address, stop)]


def test_decoding_a_response_scales_each_point_and_keeps_point_order() -> None:
    points = [
        reg("temperature", 0, DataType.INT16, scale=0.1),
        reg("alarm", 1, DataType.BIT, bit=3),
        reg("energy", 2, DataType.UINT32, order=ByteOrder.CDAB, scale=0.01, offset=-5.0),
        reg("model", 4, DataType.STRING, length=2),
        reg("count", 6, DataType.UINT16),
    ]
    image = {
        0: encode_value(-215, DataType.INT16)[0],
        1: 0b1000,
        **dict(enumerate(encode_value(123456, DataType.UINT32, ByteOrder.CDAB), start=2)),
        **dict(enumerate(encode_value("PM5", DataType.STRING, length=2), start=4)),
        6: 42,
    }
    [request] = plan_reads(points)
    decoded = decode_response(request, read_image(request, image))
    assert decoded == [
        ("temperature", pytest.approx(-21.5)),
        ("alarm", True),
        ("energy", pytest.approx(1229.56)),
        ("model", "PM5"),
        ("count", 42),
    ]
    assert type(decoded[-1][1]) is int


def test_coils_are_decoded_from_a_response_padded_to_whole_bytes() -> None:
    points = [bit("pump", 0), bit("valve", 1), bit("fan", 2)]
    [request] = plan_reads(points)
    assert request.count == 3
    padded = [True, False, True, False, False, False, False, False]
    assert decode_response(request, padded) == [("pump", True), ("valve", False), ("fan", True)]


def test_discrete_inputs_are_read_at_their_offset_in_the_request() -> None:
    points = [bit("door", 100, DISCRETE), bit("smoke", 103, DISCRETE)]
    [request] = plan_reads(points, max_gap_bits=8)
    assert (request.address, request.count) == (100, 4)
    response = [False, True, True, True, False, False, False, False]
    assert decode_response(request, response) == [("door", False), ("smoke", True)]


def test_a_response_longer_than_the_request_is_truncated() -> None:
    [request] = plan_reads([reg("a", 0)])
    assert decode_response(request, [7, 99, 99]) == [("a", 7)]


def test_a_short_response_is_refused() -> None:
    [request] = plan_reads([reg("a", 0), reg("b", 1, DataType.FLOAT32)])
    with pytest.raises(ValueError, match="returned only 2"):
        decode_response(request, [1, 2])


# ---------------------------------------------------------------------------- properties

REGISTER_TYPES = [t for t in DataType if t is not DataType.BOOL]


@st.composite
def point_specs(draw: st.DrawFn, name: str, max_address: int = 400) -> PointSpec:
    table = draw(st.sampled_from(Table))
    address = draw(st.integers(0, max_address))
    if table.is_bit_table:
        return PointSpec(name, table, address, DataType.BOOL)
    dtype = draw(st.sampled_from(REGISTER_TYPES))
    return PointSpec(
        name,
        table,
        address,
        dtype,
        order=draw(st.sampled_from(ByteOrder)),
        bit=draw(st.integers(0, 15)) if dtype is DataType.BIT else None,
        length=draw(st.integers(1, 12)) if dtype is DataType.STRING else None,
    )


@st.composite
def point_sets(draw: st.DrawFn) -> list[PointSpec]:
    count = draw(st.integers(0, 60))
    return [draw(point_specs(f"p{i}")) for i in range(count)]


@settings(max_examples=300)
@given(
    points=point_sets(),
    max_gap_registers=st.integers(0, 20),
    max_gap_bits=st.integers(0, 20),
    max_registers=st.integers(12, MAX_REGISTERS),
    max_bits=st.integers(1, MAX_BITS),
)
def test_every_point_is_read_whole_by_exactly_one_request_within_limits(
    points: list[PointSpec],
    max_gap_registers: int,
    max_gap_bits: int,
    max_registers: int,
    max_bits: int,
) -> None:
    requests = plan_reads(
        points,
        max_gap_registers=max_gap_registers,
        max_gap_bits=max_gap_bits,
        max_registers=max_registers,
        max_bits=max_bits,
    )

    placed = [p.name for r in requests for p, _ in r.points]
    assert sorted(placed) == sorted(p.name for p in points)

    for request in requests:
        limit = max_bits if request.table.is_bit_table else max_registers
        max_gap = max_gap_bits if request.table.is_bit_table else max_gap_registers
        assert 1 <= request.count <= limit
        covered: set[int] = set()
        for point, index in request.points:
            assert point.table is request.table
            assert index == point.address - request.address
            assert index >= 0 and index + point.span <= request.count
            covered.update(range(point.address, point.address + point.span))
        # The read starts at its first point, ends with its last, and skips no
        # run of unused addresses longer than the allowed gap.
        assert min(covered) == request.address
        assert max(covered) == request.address + request.count - 1
        ordered = sorted(covered)
        assert all(b - a - 1 <= max_gap for a, b in pairwise(ordered))

    keys = [(TABLE_ORDER.index(r.table), r.address) for r in requests]
    assert keys == sorted(keys)


def _sample_value(data: st.DataObject, point: PointSpec) -> Value:
    if point.dtype in (DataType.UINT16, DataType.UINT32, DataType.UINT64):
        return data.draw(st.integers(0, 2 ** (16 * point.span) - 1))
    if point.dtype in (DataType.INT16, DataType.INT32, DataType.INT64):
        half = 2 ** (16 * point.span - 1)
        return data.draw(st.integers(-half, half - 1))
    if point.dtype is DataType.FLOAT32:
        return data.draw(st.floats(width=32, allow_nan=False))
    if point.dtype is DataType.FLOAT64:
        return data.draw(st.floats(allow_nan=False))
    if point.dtype is DataType.STRING:
        assert point.length is not None
        alphabet = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
        return data.draw(st.text(alphabet, max_size=2 * point.length))
    return data.draw(st.booleans())


@settings(max_examples=200)
@given(data=st.data(), max_gap=st.integers(0, 5))
def test_values_written_to_a_device_are_read_back_unchanged(
    data: st.DataObject, max_gap: int
) -> None:
    # Non-overlapping points at random distances, each with a random value.
    images: dict[Table, dict[int, int]] = {table: {} for table in Table}
    points: list[PointSpec] = []
    written: dict[str, Value] = {}
    next_free = dict.fromkeys(Table, 0)
    for i in range(data.draw(st.integers(1, 40))):
        spec = data.draw(point_specs(f"p{i}", max_address=0))
        address = next_free[spec.table] + data.draw(st.integers(0, 8))
        point = PointSpec(
            spec.name, spec.table, address, spec.dtype, spec.order, spec.bit, spec.length
        )
        value = _sample_value(data, point)
        registers = encode_value(
            value, point.dtype, point.order, length=point.length, bit=point.bit
        )
        images[point.table].update(enumerate(registers, start=address))
        next_free[point.table] = address + point.span
        points.append(point)
        written[point.name] = value

    read: dict[str, Value] = {}
    for request in plan_reads(points, max_gap_registers=max_gap, max_gap_bits=max_gap):
        read.update(decode_response(request, read_image(request, images[request.table], 7)))
    assert read == written
