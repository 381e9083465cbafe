"""Conversion between Modbus registers and typed values (pure, no I/O).

Registers are 16-bit words; on the wire each word is sent high byte first.
``pymodbus`` hands them to us as unsigned ints in ``0..0xFFFF``, one per
register, in address order. Bit tables (coils, discrete inputs) hold one bool
per address.

Byte order
----------
The letters of a :class:`ByteOrder` name the bytes of the value from most
significant (``A``) to least significant, in the order they appear on the
wire, register after register, high byte first.

For 32-bit types (``int32``, ``uint32``, ``float32``):

========  =====================  ==========================================
order     registers              meaning
========  =====================  ==========================================
``ABCD``  ``[AB, CD]``           big-endian, most significant word first
                                 (the Modbus "standard")
``CDAB``  ``[CD, AB]``           word swap: least significant word first
                                 (common on energy meters)
``BADC``  ``[BA, DC]``           byte swap inside each register
``DCBA``  ``[DC, BA]``           little-endian: word swap and byte swap
========  =====================  ==========================================

64-bit types (``int64``, ``uint64``, ``float64``) generalise this: a word swap
(``CDAB``, ``DCBA``) reverses the order of all four registers, a byte swap
(``BADC``, ``DCBA``) swaps the two bytes inside each register. So for the
value ``0x0102030405060708`` ``CDAB`` reads ``[0x0708, 0x0506, 0x0304, 0x0102]``.

16-bit types (``int16``, ``uint16``, ``bit``) have no words to swap: ``ABCD``
and ``CDAB`` take the register as is, ``BADC`` and ``DCBA`` byte-swap it.

Strings hold two ASCII characters per register, high byte first for ``ABCD``
and ``CDAB``; ``BADC`` and ``DCBA`` swap the two characters inside each
register. Decoding strips trailing NULs and spaces and replaces non-ASCII
bytes with U+FFFD; encoding pads with NULs.

Types and tables
----------------
``bool`` is the value of one coil or discrete input and is valid only in bit
tables. ``bit`` is one bit of a 16-bit register (bit 0 is the least
significant, after the byte order is applied) and is valid only in register
tables. A ``string`` occupies ``length`` registers (``2 * length``
characters); every other type has a fixed size.

Every decoding error (wrong number of registers, a register outside
``0..0xFFFF``, a bit index outside ``0..15``) raises :class:`ValueError`.
:func:`encode_value` is the exact inverse of :func:`decode_registers`; device
simulators and tests use it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from enum import StrEnum
from typing import Final

__all__ = [
    "ByteOrder",
    "DataType",
    "Table",
    "Value",
    "decode_registers",
    "encode_value",
    "is_bit_table",
    "register_count",
    "scale_value",
]

Value = bool | int | float | str
"""A decoded point value."""


class Table(StrEnum):
    """The four Modbus data tables."""

    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    HOLDING = "holding"
    INPUT = "input"

    @property
    def is_bit_table(self) -> bool:
        """Whether the table holds single bits (coils, discrete inputs)."""
        return self in _BIT_TABLES


_BIT_TABLES: Final = frozenset({Table.COIL, Table.DISCRETE_INPUT})


def is_bit_table(table: Table) -> bool:
    """Whether ``table`` holds single bits (coils, discrete inputs): ``table.is_bit_table``."""
    return table.is_bit_table


class DataType(StrEnum):
    """How the registers (or bit) of a point are interpreted."""

    BOOL = "bool"
    BIT = "bit"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


class ByteOrder(StrEnum):
    """Byte order of a multi-byte value; see the module docstring."""

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


# struct codes and register counts of the fixed-size numeric types.
_NUMERIC: Final = {
    DataType.INT16: ("h", 1),
    DataType.UINT16: ("H", 1),
    DataType.INT32: ("i", 2),
    DataType.UINT32: ("I", 2),
    DataType.INT64: ("q", 4),
    DataType.UINT64: ("Q", 4),
    DataType.FLOAT32: ("f", 2),
    DataType.FLOAT64: ("d", 4),
}

# Per byte order: (endianness the registers are packed with, endianness the
# value is then read with). Packing the registers little-endian swaps the bytes
# inside each register; reading the value little-endian reverses the whole byte
# string, i.e. reverses the register order and swaps the bytes once more. The
# two combined give all four orders without touching individual registers.
_ENDIANNESS: Final = {
    ByteOrder.ABCD: (">", ">"),
    ByteOrder.CDAB: ("<", "<"),
    ByteOrder.BADC: ("<", ">"),
    ByteOrder.DCBA: (">", "<"),
}


class _Codec:
    """Precompiled structs for one numeric type in one byte order."""

    __slots__ = ("count", "value", "words")

    def __init__(self, code: str, count: int, order: ByteOrder) -> None:
        words_endian, value_endian = _ENDIANNESS[order]
        self.count: Final = count
        self.words: Final = struct.Struct(f"{words_endian}{count}H")
        self.value: Final = struct.Struct(f"{value_endian}{code}")


_CODECS: Final = {
    (dtype, order): _Codec(code, count, order)
    for dtype, (code, count) in _NUMERIC.items()
    for order in ByteOrder
}

# Strings are never word-swapped: only the byte swap matters.
_STRING_WORDS_ENDIAN: Final = {
    ByteOrder.ABCD: ">",
    ByteOrder.CDAB: ">",
    ByteOrder.BADC: "<",
    ByteOrder.DCBA: "<",
}

_STRING_PADDING: Final = b"\x00 "


def register_count(dtype: DataType, length: int | None = None) -> int:
    """Number of registers (or bits, for ``bool``) a value of ``dtype`` occupies.

    ``length`` is the number of registers of a string (two characters each) and
    is required for ``string``; it is ignored for every other type.
    """
    if dtype is DataType.STRING:
        if length is None or length < 1:
            raise ValueError(f"string needs a length of at least 1 register, got {length}")
        return length
    numeric = _NUMERIC.get(dtype)
    if numeric is not None:
        return numeric[1]
    if dtype is DataType.BOOL or dtype is DataType.BIT:
        return 1
    raise ValueError(f"unknown data type {dtype!r}")


def decode_registers(
    registers: Sequence[int],
    dtype: DataType,
    order: ByteOrder = ByteOrder.ABCD,
    *,
    bit: int | None = None,
) -> Value:
    """Decode the registers of one value.

    ``registers`` are exactly :func:`register_count` unsigned 16-bit values (for
    a string, any number of at least one), as ``pymodbus`` returns them; for
    ``bool`` a single coil or discrete input. ``bit`` selects the bit of a
    ``bit`` point and must be omitted for every other type.
    """
    codec = _CODECS.get((dtype, order))
    if codec is not None:
        if len(registers) != codec.count:
            raise ValueError(f"{dtype} needs {codec.count} registers, got {len(registers)}")
        if bit is not None:
            raise ValueError(f"bit index given for {dtype}; only 'bit' points take one")
        try:
            value: int | float = codec.value.unpack(codec.words.pack(*registers))[0]
        except struct.error as err:
            raise ValueError(f"register out of range 0..0xFFFF in {list(registers)}") from err
        return value
    if dtype is DataType.BIT:
        if bit is None or not 0 <= bit <= 15:
            raise ValueError(f"bit index must be in 0..15, got {bit}")
        word = decode_registers(registers, DataType.UINT16, order)
        return bool(int(word) >> bit & 1)
    if bit is not None:
        raise ValueError(f"bit index given for {dtype}; only 'bit' points take one")
    if dtype is DataType.BOOL:
        if len(registers) != 1:
            raise ValueError(f"bool needs 1 bit, got {len(registers)}")
        return bool(registers[0])
    if dtype is DataType.STRING:
        if not registers:
            raise ValueError("string needs at least 1 register, got 0")
        return _string_bytes(registers, order).rstrip(_STRING_PADDING).decode("ascii", "replace")
    raise ValueError(f"unknown data type {dtype!r} or byte order {order!r}")


def _string_bytes(registers: Sequence[int], order: ByteOrder) -> bytes:
    try:
        return struct.pack(f"{_STRING_WORDS_ENDIAN[order]}{len(registers)}H", *registers)
    except struct.error as err:
        raise ValueError(f"register out of range 0..0xFFFF in {list(registers)}") from err


def encode_value(
    value: Value,
    dtype: DataType,
    order: ByteOrder = ByteOrder.ABCD,
    *,
    length: int | None = None,
    bit: int | None = None,
) -> list[int]:
    """Encode one value into registers; the exact inverse of :func:`decode_registers`.

    ``length`` (registers) is required for ``string``; the text is padded with
    NULs. For ``bit`` the result is one register with only bit ``bit`` set (or
    no bit, for a false value). For ``bool`` the result is ``[1]`` or ``[0]``.
    """
    if bit is not None and dtype is not DataType.BIT:
        raise ValueError(f"bit index given for {dtype}; only 'bit' points take one")
    codec = _CODECS.get((dtype, order))
    if codec is not None:
        if isinstance(value, str):
            raise ValueError(f"{dtype} cannot hold the string {value!r}")
        try:
            return list(codec.words.unpack(codec.value.pack(value)))
        except (struct.error, OverflowError) as err:
            raise ValueError(f"{value!r} does not fit in {dtype}: {err}") from err
    if dtype is DataType.BIT:
        if bit is None or not 0 <= bit <= 15:
            raise ValueError(f"bit index must be in 0..15, got {bit}")
        return encode_value((1 << bit) if _as_bool(value, dtype) else 0, DataType.UINT16, order)
    if dtype is DataType.BOOL:
        return [int(_as_bool(value, dtype))]
    if dtype is DataType.STRING:
        count = register_count(dtype, length)
        if not isinstance(value, str):
            raise ValueError(f"string point needs a str, got {value!r}")
        try:
            raw = value.encode("ascii")
        except UnicodeEncodeError as err:
            raise ValueError(f"string {value!r} is not ASCII") from err
        if len(raw) > 2 * count:
            raise ValueError(f"string {value!r} is longer than {2 * count} characters")
        padded = raw.ljust(2 * count, b"\x00")
        return list(struct.unpack(f"{_STRING_WORDS_ENDIAN[order]}{count}H", padded))
    raise ValueError(f"unknown data type {dtype!r} or byte order {order!r}")


def _as_bool(value: Value, dtype: DataType) -> bool:
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"{dtype} needs a bool, got {value!r}")


def scale_value(raw: Value, scale: float, offset: float) -> Value:
    """Apply ``raw * scale + offset`` to numbers; bools and strings pass untouched.

    With ``scale == 1`` and ``offset == 0`` the value is returned as is, so
    integers stay integers; any other scaling yields a float.
    """
    if isinstance(raw, bool | str) or (scale == 1 and offset == 0):
        return raw
    return raw * scale + offset
