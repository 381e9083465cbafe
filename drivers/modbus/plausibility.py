"""Does a decoded value look like a wrong byte order or an off-by-one address? (pure)

`edge-gateway check` asks this of every multi-register point it reads. The two
mistakes a register map invites are a wrong `byte_order` (an energy meter that sends
its floats word-swapped) and an address one register off (a datasheet's 1-based
register number written as the 0-based address). Both still read, with quality good,
and give a number that is wrong; most of the time it is also absurd, and the same
registers in another order, or the registers one address lower or higher, give a
number that looks like a measurement.

How a value looks (`Tier`, judged on the value before scale and offset):

=============== ===============================================================
``IMPLAUSIBLE``  float NaN, infinite, denormal, or magnitude outside 1e-6..1e9
``NOISY``        float with as many significant digits as its type carries (7+ of
                 float32's 9, 13+ of float64's 17): the digits of a bit pattern more
                 than of a reading; integer of 2^24 or more (2^48 for 64 bits): the
                 high word of a counter below 2^24 is below 256
``USUAL``        any other number
``PLAIN``        float with few significant digits (4 for float32, 6 for float64);
                 integer below 2^20 (2^40 for 64 bits)
=============== ===============================================================

Zero says nothing either way: it is never suspected and never offered.

The rule (`suspect`): a value is suspected when it is ``IMPLAUSIBLE`` and an
alternative is ``USUAL`` or ``PLAIN``, or when it is ``NOISY`` and an alternative is
``PLAIN`` (a computed reading has many digits too: only a strikingly plain
alternative outweighs that; about 3 in 10,000 random bit patterns look that plain).
The alternatives are the type's other byte orders of the same registers and, for
floats, the configured order one register lower and one register higher, where the
registers read around the point (`window`) hold them. Integers get no address
alternatives: a counter next to a register holding 0 would always look better one
register lower.

The alternatives come best first: the higher tier, then a byte order (CDAB, BADC,
DCBA, ABCD), one register lower, one register higher. A map of neighbouring floats
of one size (three phase voltages) is ambiguous: the registers one off give the
neighbour, and the word-swapped registers give the neighbour's whole part with this
one's fraction, both plain. So `advice` names the best byte order and the best
address when both look as good: the datasheet decides.

16-bit types, bits, bools and strings are never suspected: every bit pattern is a
fine number there.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from drivers.modbus.decode import ByteOrder, DataType, Table, decode_registers, register_count

__all__ = [
    "Alternative",
    "Suspicion",
    "Tier",
    "advice",
    "shown",
    "significant_digits",
    "suspect",
    "tier",
]


class Tier(IntEnum):
    """How much a decoded value looks like a measurement (the module docstring)."""

    IMPLAUSIBLE = 0
    NOISY = 1
    USUAL = 2
    PLAIN = 3


@dataclass(frozen=True, slots=True)
class Alternative:
    """Another reading of the registers: `order`, and `shift` registers from the address."""

    order: ByteOrder
    shift: int
    value: int | float
    tier: Tier


@dataclass(frozen=True, slots=True)
class Suspicion:
    """A value that looks wrong (`problem` says why) and what would look right, best first."""

    dtype: DataType
    order: ByteOrder
    value: int | float
    problem: str
    better: tuple[Alternative, ...]

    @property
    def best(self) -> Alternative:
        return self.better[0]


_FLOATS: Final = {DataType.FLOAT32: 32, DataType.FLOAT64: 64}
_INTEGERS: Final = {
    DataType.INT32: 32,
    DataType.UINT32: 32,
    DataType.INT64: 64,
    DataType.UINT64: 64,
}
_ORDER_PREFERENCE: Final = (ByteOrder.CDAB, ByteOrder.BADC, ByteOrder.DCBA, ByteOrder.ABCD)
_SHIFT_PREFERENCE: Final = (0, -1, 1)
_SMALLEST_NORMAL: Final = {32: 2.0**-126, 64: 2.0**-1022}
_NOISY_DIGITS: Final = {32: 7, 64: 13}
_PLAIN_DIGITS: Final = {32: 4, 64: 6}
SMALLEST: Final = 1e-6
"""Smaller magnitudes (zero excepted) are implausible for a float reading."""
LARGEST: Final = 1e9
"""Larger magnitudes are implausible for a float reading."""


def significant_digits(value: float, bits: int = 64) -> int:
    """Digits of the shortest decimal that reads back as `value` at its precision
    (`bits` 32: a float32 widened to a Python float). 229.8 has 4, 1e-30 has 1."""
    if value == 0 or not math.isfinite(value):
        return 1
    text = repr(value)
    if bits == 32:
        for digits in range(1, 10):
            text = f"{value:.{digits - 1}e}"
            if struct.unpack(">f", struct.pack(">f", float(text)))[0] == value:
                break
    mantissa = text.lower().split("e")[0].lstrip("-").replace(".", "")
    return max(1, len(mantissa.strip("0")))


def tier(value: int | float, dtype: DataType) -> tuple[Tier, str] | None:
    """How `value` (decoded as `dtype`) looks, and in words why; None for zero and for
    types that are never judged."""
    if value == 0:
        return None
    bits = _FLOATS.get(dtype)
    if bits is not None:
        return _float_tier(float(value), bits)
    bits = _INTEGERS.get(dtype)
    if bits is not None:
        if abs(value) >= 2 ** (bits * 3 // 4):
            return Tier.NOISY, f"magnitude {abs(value):.1e}"
        return (Tier.PLAIN, "") if abs(value) < 2 ** (bits * 5 // 8) else (Tier.USUAL, "")
    return None


def _float_tier(value: float, bits: int) -> tuple[Tier, str]:
    if math.isnan(value):
        return Tier.IMPLAUSIBLE, "NaN"
    if math.isinf(value):
        return Tier.IMPLAUSIBLE, "infinite"
    size = abs(value)
    if size < _SMALLEST_NORMAL[bits]:
        return Tier.IMPLAUSIBLE, "a denormal"
    if size < SMALLEST or size > LARGEST:
        return Tier.IMPLAUSIBLE, f"magnitude {size:.0e}"
    digits = significant_digits(value, bits)
    if digits >= _NOISY_DIGITS[bits]:
        return Tier.NOISY, f"{digits} significant digits"
    return (Tier.PLAIN, "") if digits <= _PLAIN_DIGITS[bits] else (Tier.USUAL, "")


def suspect(window: Sequence[int], at: int, dtype: DataType, order: ByteOrder) -> Suspicion | None:
    """Whether the point whose registers start at `window[at]` looks misread, and how it
    would read right; None when it looks fine (or cannot be judged).

    `window` is what one read returned (the request's registers, in address order);
    the point occupies `register_count(dtype)` of them from `at`."""
    if dtype not in _FLOATS and dtype not in _INTEGERS:
        return None
    span = register_count(dtype)
    if not 0 <= at <= len(window) - span:
        raise ValueError(f"{dtype} at index {at} does not fit in a window of {len(window)}")
    value = _decode(window[at : at + span], dtype, order)
    judged = tier(value, dtype)
    if judged is None or judged[0] >= Tier.USUAL:
        return None
    own, problem = judged
    need = Tier.USUAL if own is Tier.IMPLAUSIBLE else Tier.PLAIN
    found = [
        alternative
        for alternative in _alternatives(window, at, span, dtype, order)
        if alternative.tier >= need
    ]
    if not found:
        return None
    found.sort(
        key=lambda a: (-a.tier, _SHIFT_PREFERENCE.index(a.shift), _ORDER_PREFERENCE.index(a.order))
    )
    return Suspicion(dtype, order, value, problem, tuple(found))


def _alternatives(
    window: Sequence[int], at: int, span: int, dtype: DataType, order: ByteOrder
) -> list[Alternative]:
    tries = [(other, 0) for other in _ORDER_PREFERENCE if other is not order]
    if dtype in _FLOATS:
        tries += [(order, shift) for shift in (-1, 1) if 0 <= at + shift <= len(window) - span]
    found = []
    for other, shift in tries:
        value = _decode(window[at + shift : at + shift + span], dtype, other)
        judged = tier(value, dtype)
        if judged is not None:
            found.append(Alternative(other, shift, value, judged[0]))
    return found


def _decode(registers: Sequence[int], dtype: DataType, order: ByteOrder) -> int | float:
    value = decode_registers(registers, dtype, order)
    assert isinstance(value, int | float)
    return value


def shown(value: int | float, dtype: DataType) -> str:
    """A value as short as its type lets it be said: 2.31, 1.4e-45, 1234567."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    digits = min(7, significant_digits(value, _FLOATS.get(dtype, 64)))
    return f"{value:.{digits}g}"


def advice(name: str, table: Table, address: int, suspicion: Suspicion) -> str:
    """The warning for a technician, e.g.
    'pump.pressure: float32 ABCD at holding 0 gives 1.401e-41 (a denormal); CDAB gives
    2.31: byte_order = "CDAB"?' — with the best address after the best byte order (or
    the other way round) when both look as good."""
    s = suspicion
    best = s.best
    ways = [_way(best, table, address, s.dtype)]
    rival = next((a for a in s.better if (a.shift == 0) != (best.shift == 0)), None)
    if rival is not None and rival.tier == best.tier:
        ways.append(_way(rival, table, address, s.dtype))
    return (
        f"{name}: {s.dtype} {s.order} at {table} {address} gives {shown(s.value, s.dtype)} "
        f"({s.problem}); " + " or ".join(ways)
    )


def _way(alternative: Alternative, table: Table, address: int, dtype: DataType) -> str:
    value = shown(alternative.value, dtype)
    if alternative.shift == 0:
        return f'{alternative.order} gives {value}: byte_order = "{alternative.order}"?'
    moved = address + alternative.shift
    return f"{table} {moved} gives {value}: address = {moved}?"
