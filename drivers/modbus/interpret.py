"""Where a technician says to read, and every way the registers read there can be meant (pure).

`edge-gateway probe` reads a block of registers from a device nobody has configured
yet; the datasheet says "30053, float" and nothing about byte order. This module
turns what was typed into the table and 0-based address actually read
(`parse_start`), and the registers that came back into every interpretation side by
side (`interpret`), all decoded by decode.py:

- each register: hex, uint16, int16, its two characters;
- each pair of neighbouring registers: int32, uint32 and float32 in the four byte
  orders (ABCD, CDAB, BADC, DCBA; decode.py's docstring says what they mean);
- each run of four registers: float64 in the four byte orders;
- the whole block as ASCII text, as sent and with the bytes of each register swapped.

Pairs and runs start at every register, not only at even ones: the technician does
not know yet where a value begins.

Datasheet notation
------------------
Datasheets number registers from 1 with the table in the leading digit: 00001
coils, 10001 discrete inputs, 30001 input registers, 40001 holding registers, and
six digits for the whole 16-bit range (300001 … 365536). Without ``--table``, the
start must be written that way (`30053` is input register 52); a coil needs its
leading zero (`00001`), because a bare `1`…`9999` names no table and is refused
rather than guessed. With ``--table`` the start is the 0-based address, taken as it
is; when it also reads like a datasheet number the result says so. The numbering is
the config's own (`register = 30053`): config.py's `datasheet_address`, `coil_address`
and `datasheet_number`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from drivers.modbus.decode import ByteOrder, DataType, Table, Value, decode_registers
from drivers.modbus.notation import coil_address, datasheet_address, datasheet_number

__all__ = [
    "ORDERS",
    "Interpretation",
    "RegisterRow",
    "Start",
    "WideValue",
    "datasheet_number",
    "interpret",
    "parse_start",
    "shown",
]

ORDERS: Final = (ByteOrder.ABCD, ByteOrder.CDAB, ByteOrder.BADC, ByteOrder.DCBA)
"""The byte orders, in the order the tools show them."""
_PAIR_TYPES: Final = (DataType.INT32, DataType.UINT32, DataType.FLOAT32)
_NOTATION_HELP: Final = (
    "write the datasheet's number (00001 coils, 10001 discrete inputs, 30001 input "
    "registers, 40001 holding registers; 6 digits above 9999: 300001), or give --table "
    "with the 0-based address"
)


@dataclass(frozen=True, slots=True)
class Start:
    """The first address of a read: its table, 0-based address, and how it was written."""

    table: Table
    address: int
    written: str
    from_datasheet: bool
    note: str = ""

    @property
    def datasheet(self) -> str:
        return datasheet_number(self.table, self.address)

    def describe(self) -> str:
        """'datasheet 30053 = input register 52 (0-based)', or with --table
        'input register 52 (0-based; datasheet 30053)'."""
        what = "register" if not self.table.is_bit_table else ""
        name = f"{self.table.replace('_', ' ')} {what}".strip()
        if self.from_datasheet:
            return f"datasheet {self.written} = {name} {self.address} (0-based)"
        return f"{name} {self.address} (0-based; datasheet {self.datasheet})"


def parse_start(text: str, table: Table | None) -> Start:
    """The start typed on the command line; ValueError with a sentence when it cannot be read."""
    written = text.strip()
    if not written.isdigit():
        raise ValueError(f"{text!r} is not a register number: {_NOTATION_HELP}")
    number = int(written)
    if table is not None:
        if number > 0xFFFF:
            notation = datasheet_address(number)
            hint = f" ({_describe_notation(number)})" if notation is not None else ""
            raise ValueError(
                f"{number} is above 65535, the last 0-based address{hint}: with --table give "
                "the 0-based address, or leave --table out and write the datasheet's number"
            )
        note = ""
        if datasheet_address(number) is not None or coil_address(written) is not None:
            note = (
                f"{written} is read as {table} address {number} (0-based) because --table is "
                f"given; {_describe_notation(number, written)} without --table"
            )
        return Start(table, number, written, False, note)
    coil = coil_address(written)
    if coil is not None:
        return Start(Table.COIL, coil, written, True)
    notation = datasheet_address(number)
    if notation is None:
        problem = "does not say which table to read" if number <= 9999 else "is no datasheet number"
        raise ValueError(f"{written} {problem}: {_NOTATION_HELP}")
    found_table, address, _digits = notation
    return Start(found_table, address, written, True)


def _describe_notation(number: int, written: str = "") -> str:
    coil = coil_address(written) if written else None
    if coil is not None:
        return f"datasheet {written} is coil {coil}"
    notation = datasheet_address(number)
    if notation is None:
        return f"{number} is no datasheet number"
    table, address, _digits = notation
    return f"datasheet {number} is {table} register {address}"


@dataclass(frozen=True, slots=True)
class RegisterRow:
    """One register (or bit) as read."""

    address: int
    datasheet: str
    value: int
    int16: int | None  # None in bit tables
    text: str  # its two characters, '.' for what does not print; '' in bit tables

    @property
    def hex(self) -> str:
        return f"0x{self.value:04X}" if self.int16 is not None else str(self.value)


@dataclass(frozen=True, slots=True)
class WideValue:
    """A value of several registers from `address` on, in every byte order."""

    address: int
    dtype: DataType
    values: tuple[tuple[ByteOrder, Value], ...]


@dataclass(frozen=True, slots=True)
class Interpretation:
    """A block of registers and every way it can be read."""

    table: Table
    registers: tuple[RegisterRow, ...]
    wide: tuple[WideValue, ...]  # int32, uint32, float32 per pair, then float64 per four
    text: str  # the whole block as ASCII, high byte first ('.' for what does not print)
    text_swapped: str  # the same with the two bytes of each register swapped


def interpret(table: Table, address: int, values: Sequence[int]) -> Interpretation:
    """Every interpretation of `values` read from `table` at `address` (0-based).

    Bit tables (coils, discrete inputs) have nothing to interpret: one row per bit.
    """
    if table.is_bit_table:
        rows = tuple(
            RegisterRow(address + i, datasheet_number(table, address + i), int(bool(v)), None, "")
            for i, v in enumerate(values)
        )
        return Interpretation(table, rows, (), "", "")
    registers = list(values)
    rows = tuple(
        RegisterRow(
            address + i,
            datasheet_number(table, address + i),
            word,
            int(decode_registers([word], DataType.INT16)),
            _text([word]),
        )
        for i, word in enumerate(registers)
    )
    wide: list[WideValue] = []
    for size, types in ((2, _PAIR_TYPES), (4, (DataType.FLOAT64,))):
        for i in range(len(registers) - size + 1):
            window = registers[i : i + size]
            wide.extend(
                WideValue(
                    address + i,
                    dtype,
                    tuple((order, decode_registers(window, dtype, order)) for order in ORDERS),
                )
                for dtype in types
            )
    return Interpretation(table, rows, tuple(wide), _text(registers), _text(registers, True))


def _text(registers: Sequence[int], swapped: bool = False) -> str:
    """The bytes of the registers as they came on the wire (high byte first), or with the
    two bytes of each register swapped; '.' for what is not printable ASCII."""
    data = struct.pack(f"{'<' if swapped else '>'}{len(registers)}H", *registers)
    return "".join(chr(b) if 32 <= b < 127 else "." for b in data)


def shown(value: Value, dtype: DataType) -> str:
    """A value as the tools print it: floats to the digits their type holds."""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.7g}" if dtype is DataType.FLOAT32 else f"{value:.15g}"
    return str(value)
