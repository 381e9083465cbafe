"""Datasheet register numbers: `40001` is holding register 0, `30053` input register 52,
`"00001"` coil 0, both ways. Pure: the config reads them (drivers/modbus/config.py),
the plan and the commissioning tools print them."""

from __future__ import annotations

from typing import Final

from drivers.core.words import shown
from drivers.modbus.decode import Table

# Datasheets number registers from 1 with the table in the first digit: 0xxxx coils, 1xxxx
# discrete inputs, 3xxxx input registers, 4xxxx holding registers (6-digit forms for the
# whole 16-bit range: 0xxxxx, 1xxxxx, 3xxxxx, 4xxxxx).
_DATASHEET_TABLES: Final = {1: Table.DISCRETE_INPUT, 3: Table.INPUT, 4: Table.HOLDING}
_TABLE_DIGITS: Final = {Table.COIL: 0, Table.DISCRETE_INPUT: 1, Table.INPUT: 3, Table.HOLDING: 4}
NOTATION: Final = (
    "a datasheet's number is 1xxxx, 3xxxx or 4xxxx (discrete input, input or holding "
    'register) from x0001, or 6 digits (300001); a coil\'s is written in quotes: "00001"'
)


def datasheet_address(address: int) -> tuple[Table, int, str] | None:
    """(table, 0-based address, notation) when `address` reads like a datasheet's number
    of a discrete input, input or holding register (coils cannot be told apart)."""
    for base, digits in ((100_000, "6-digit"), (10_000, "5-digit")):
        table = _DATASHEET_TABLES.get(address // base)
        offset = address % base
        limit = 65536 if base == 100_000 else 9999
        if table is not None and 1 <= offset <= limit:
            return table, offset - 1, digits
    return None


def coil_address(written: str) -> int | None:
    """The 0-based address of a coil written as a datasheet prints it, with its leading
    zero: '00001' … '09999' or '000001' … '065536'; None for anything else."""
    if len(written) in (5, 6) and written.startswith("0") and written.isdigit():
        number = int(written)
        if 1 <= number <= (9999 if len(written) == 5 else 65536):
            return number - 1
    return None


def datasheet_number(table: Table, address: int, *, six_digits: bool = False) -> str:
    """A 0-based address as a datasheet numbers it: input 52 is '30053', coil 0 '00001';
    six digits when asked, or when five do not reach (holding 9999 is '410000')."""
    number = address + 1
    width = 5 if six_digits or number > 9999 else 4
    return f"{_TABLE_DIGITS[table]}{number:0{width}d}"


def register_address(register: int | str) -> tuple[Table, int]:
    """The table and 0-based address of a datasheet's register number (an int, or a
    coil's number as text); ValueError saying why it is none."""
    if isinstance(register, str):
        coil = coil_address(register)
        if coil is not None:
            return Table.COIL, coil
        if register.strip().isdigit():
            raise ValueError(
                f"{shown(register)} is text; write numbers without quotes: "
                f"register = {int(register)} (only a coil's number, 00001 …, goes in "
                "quotes, for its leading zeros)"
            )
        raise ValueError(f"{shown(register)} is not a register number; {NOTATION}")
    if isinstance(register, bool) or not isinstance(register, int):
        raise ValueError(f"{shown(register)} is not a register number; {NOTATION}")
    notation = datasheet_address(register)
    if notation is not None:
        return notation[0], notation[1]
    if 1 <= register <= 10_000:
        raise ValueError(
            f"{register} does not say which table it is in; {NOTATION}; or write table "
            "and the 0-based address"
        )
    raise ValueError(f"{register} is no datasheet register number; {NOTATION}")
