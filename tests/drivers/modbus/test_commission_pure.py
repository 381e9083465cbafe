"""The pure parts of the commissioning tools: where a typed start reads, every
interpretation of a block of registers, what exceptions mean, what a scan tries."""

from __future__ import annotations

import math

import pytest

from drivers.modbus.decode import ByteOrder, DataType, Table, encode_value
from drivers.modbus.exceptions import EXCEPTION_MEANINGS, describe_exception, exception_name
from drivers.modbus.interpret import ORDERS, interpret, parse_start, shown
from drivers.modbus.scanning import (
    COMMON_SETTINGS,
    answer_timeout,
    format_units,
    parse_units,
    scan_seconds,
)
from drivers.serial_port import LineSettings


@pytest.mark.parametrize(
    ("written", "table", "address", "said"),
    [
        ("30001", Table.INPUT, 0, "datasheet 30001 = input register 0 (0-based)"),
        ("30053", Table.INPUT, 52, "datasheet 30053 = input register 52 (0-based)"),
        ("300001", Table.INPUT, 0, "datasheet 300001 = input register 0 (0-based)"),
        ("365536", Table.INPUT, 65535, "datasheet 365536 = input register 65535 (0-based)"),
        ("40001", Table.HOLDING, 0, "datasheet 40001 = holding register 0 (0-based)"),
        ("400001", Table.HOLDING, 0, "datasheet 400001 = holding register 0 (0-based)"),
        ("410000", Table.HOLDING, 9999, "datasheet 410000 = holding register 9999 (0-based)"),
        ("10001", Table.DISCRETE_INPUT, 0, "datasheet 10001 = discrete input 0 (0-based)"),
        ("00001", Table.COIL, 0, "datasheet 00001 = coil 0 (0-based)"),
        ("000100", Table.COIL, 99, "datasheet 000100 = coil 99 (0-based)"),
    ],
)
def test_a_datasheet_number_reads_its_table_and_0_based_address_and_says_so(
    written: str, table: Table, address: int, said: str
) -> None:
    start = parse_start(written, None)
    assert (start.table, start.address) == (table, address)
    assert start.describe() == said
    assert start.datasheet.lstrip("0") == written.lstrip("0") or len(written) == 6


@pytest.mark.parametrize("written", ["1", "100", "9999", "40000", "200001", "366000", "x1", ""])
def test_a_start_that_names_no_table_is_refused_with_the_notation_explained(written: str) -> None:
    with pytest.raises(ValueError, match="30001 input registers, 40001 holding registers"):
        parse_start(written, None)


def test_with_a_table_the_start_is_the_0_based_address_and_a_datasheet_look_is_noted() -> None:
    plain = parse_start("52", Table.HOLDING)
    assert (plain.table, plain.address, plain.note) == (Table.HOLDING, 52, "")
    assert plain.describe() == "holding register 52 (0-based; datasheet 40053)"
    looks = parse_start("30001", Table.INPUT)
    assert (looks.table, looks.address) == (Table.INPUT, 30001)
    assert "datasheet 30001 is input register 0 without --table" in looks.note
    with pytest.raises(ValueError, match=r"above 65535.*datasheet 300053 is input register 52"):
        parse_start("300053", Table.INPUT)


def test_every_interpretation_of_a_block_sits_side_by_side() -> None:
    registers = encode_value(230.5, DataType.FLOAT32, ByteOrder.CDAB) + encode_value(
        "AB", DataType.STRING, length=1
    )
    result = interpret(Table.INPUT, 52, registers)
    rows = [(r.address, r.datasheet, r.hex, r.value, r.int16, r.text) for r in result.registers]
    assert rows == [
        (52, "30053", "0x8000", 0x8000, -32768, ".."),
        (53, "30054", "0x4366", 0x4366, 0x4366, "Cf"),
        (54, "30055", "0x4142", 0x4142, 0x4142, "AB"),
    ]
    pairs = {(w.address, w.dtype): dict(w.values) for w in result.wide}
    assert set(pairs) == {(a, t) for a in (52, 53) for t in ("int32", "uint32", "float32")}
    assert pairs[52, DataType.FLOAT32][ByteOrder.CDAB] == 230.5
    assert pairs[52, DataType.UINT32][ByteOrder.ABCD] == 0x80004366
    assert pairs[52, DataType.INT32][ByteOrder.ABCD] == 0x80004366 - 2**32
    assert [o for o, _ in result.wide[0].values] == list(ORDERS)
    assert (result.text, result.text_swapped) == ("..CfAB", "..fCBA")


def test_float64_is_read_from_every_run_of_four_registers() -> None:
    registers = [0, *encode_value(-1.25, DataType.FLOAT64, ByteOrder.DCBA)]
    result = interpret(Table.HOLDING, 0, registers)
    runs = [w for w in result.wide if w.dtype is DataType.FLOAT64]
    assert [w.address for w in runs] == [0, 1]
    assert dict(runs[1].values)[ByteOrder.DCBA] == -1.25
    assert result.wide[-1].dtype is DataType.FLOAT64  # 64-bit values come last


def test_bits_are_listed_one_a_line_without_interpretations() -> None:
    result = interpret(Table.COIL, 0, [1, 0, 1])
    assert [(r.address, r.datasheet, r.value, r.hex) for r in result.registers] == [
        (0, "00001", 1, "1"),
        (1, "00002", 0, "0"),
        (2, "00003", 1, "1"),
    ]
    assert result.wide == () and result.text == ""


def test_floats_are_shown_to_the_digits_their_type_holds() -> None:
    assert shown(230.50000762939453, DataType.FLOAT32) == "230.5"
    assert shown(0.1 + 0.2, DataType.FLOAT64) == "0.3"
    assert shown(math.nan, DataType.FLOAT32) == "nan"
    assert shown(-7, DataType.INT32) == "-7"


def test_every_named_exception_has_a_meaning_and_the_usual_ones_say_what_to_check() -> None:
    assert exception_name(2) == "illegal data address" and exception_name(99) == "unknown"
    assert set(EXCEPTION_MEANINGS) <= set(range(1, 12))
    assert "datasheet counts from 1" in describe_exception(2)
    assert "wrong table (input vs holding" in describe_exception(1)
    assert describe_exception(11).startswith(
        "exception 11 (gateway target device failed to respond): the serial device behind "
        "the TCP gateway did not answer: check its unit id"
    )
    assert "does not define" in describe_exception(42)


def test_a_scan_tries_the_common_settings_most_common_first() -> None:
    names = [str(s) for s in COMMON_SETTINGS]
    assert names[:5] == ["9600 8N1", "9600 8E1", "9600 8O1", "9600 8N2", "19200 8N1"]
    assert [s.baudrate for s in COMMON_SETTINGS[::4]] == [
        9600,
        19200,
        38400,
        115200,
        4800,
        2400,
        57600,
    ]
    assert len(set(names)) == len(names) == 28


def test_the_wait_for_an_answer_follows_the_baud_rate() -> None:
    assert answer_timeout(LineSettings(9600)) == pytest.approx(0.1156, abs=0.001)
    assert answer_timeout(LineSettings(115200)) < answer_timeout(LineSettings(2400)) < 0.2
    # A full scan of silent units at 9600 baud stays near half a minute.
    assert 25 < scan_seconds(247, answer_timeout(LineSettings(9600)), LineSettings(9600)) < 35


@pytest.mark.parametrize(
    ("text", "units"),
    [
        ("1-247", list(range(1, 248))),
        ("3", [3]),
        ("1,5,10-12", [1, 5, 10, 11, 12]),
        ("2,2,1", [2, 1]),
    ],
)
def test_unit_ranges_are_read_as_written(text: str, units: list[int]) -> None:
    assert parse_units(text) == units


@pytest.mark.parametrize("text", ["0", "0-10", "248", "5-3", "a", "1-", ""])
def test_unit_ids_outside_1_to_247_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_units(text)


def test_unit_lists_are_written_back_as_ranges() -> None:
    assert format_units([7, 1, 2, 3, 9, 10]) == "1-3, 7, 9-10"
