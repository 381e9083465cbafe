"""Read planning: turn configured points into as few Modbus reads as possible (pure).

The plan is compiled once at start-up; the polling loop only runs it.

:func:`plan_reads` groups points by table, sorts them by address and merges
neighbours into one :class:`ReadRequest` while

* the gap of unread registers (or bits) between the end of the request so far
  and the next point is at most ``max_gap_registers`` (``max_gap_bits``), and
* the request still covers at most ``max_registers`` (``max_bits``) addresses.

Points that overlap or share an address (several ``bit`` points of one
register, a ``uint32`` and a ``uint16`` reading its low word) share a read.

Invariants of the plan:

* every point belongs to exactly one request, which covers its whole span;
* no request is longer than the limit of its table;
* requests come in table order coil, discrete input, holding, input, then by
  address; the points of a request are in address order (ties keep input order).

:func:`decode_response` turns the values read for one request into scaled
point values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from drivers.modbus.decode import (
    ByteOrder,
    DataType,
    Table,
    Value,
    decode_registers,
    register_count,
    scale_value,
)

__all__ = [
    "MAX_BITS",
    "MAX_REGISTERS",
    "PointSpec",
    "ReadRequest",
    "decode_response",
    "plan_reads",
]

MAX_REGISTERS: Final = 125
"""Most registers one read (function 3 or 4) may return."""
MAX_BITS: Final = 2000
"""Most coils or discrete inputs one read (function 1 or 2) may return."""

_LAST_ADDRESS: Final = 0xFFFF
_TABLE_ORDER: Final = (Table.COIL, Table.DISCRETE_INPUT, Table.HOLDING, Table.INPUT)


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One value to read: where it lives and how to decode and scale it.

    Construction fails with :class:`ValueError` (naming the point) for
    combinations that cannot be read: ``bool`` outside a bit table, another
    type inside one, ``bit`` without a bit index in 0..15 (or a bit index on
    another type), ``string`` without a length (or a length on another type),
    or a span past address 0xFFFF.
    """

    name: str
    table: Table
    address: int
    dtype: DataType
    order: ByteOrder = ByteOrder.ABCD
    bit: int | None = None
    length: int | None = None
    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise ValueError(f"point {self.name!r}: {problem}")

    @property
    def span(self) -> int:
        """Registers (or bits, for bit tables) this point occupies."""
        return register_count(self.dtype, self.length)


def _problem(point: PointSpec) -> str | None:
    bit_table = point.table.is_bit_table
    if bit_table != (point.dtype is DataType.BOOL):
        if bit_table:
            return f"{point.table} holds single bits, use type 'bool' (got {point.dtype!r})"
        return f"type 'bool' reads coils and discrete inputs; use type 'bit' in {point.table}"
    if (point.dtype is DataType.BIT) != (point.bit is not None):
        return "type 'bit' needs a bit index, and only type 'bit' takes one"
    if point.bit is not None and not 0 <= point.bit <= 15:
        return f"bit index must be in 0..15, got {point.bit}"
    if (point.dtype is DataType.STRING) != (point.length is not None):
        return "type 'string' needs a length in registers, and only strings take one"
    if point.length is not None and point.length < 1:
        return f"string length must be at least 1 register, got {point.length}"
    if not 0 <= point.address <= _LAST_ADDRESS - point.span + 1:
        return f"address {point.address} with span {point.span} is outside 0..{_LAST_ADDRESS}"
    return None


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read of ``count`` registers (or bits) from ``address`` on.

    ``points`` pairs each point with the index of its first register (or bit)
    in the response.
    """

    table: Table
    address: int
    count: int
    points: tuple[tuple[PointSpec, int], ...]


def plan_reads(
    points: Iterable[PointSpec],
    *,
    max_gap_registers: int = 0,
    max_gap_bits: int = 0,
    max_registers: int = MAX_REGISTERS,
    max_bits: int = MAX_BITS,
) -> list[ReadRequest]:
    """Group ``points`` into as few reads as the gap and size limits allow.

    Raises :class:`ValueError` for a negative gap, a limit outside
    1..``MAX_REGISTERS`` (1..``MAX_BITS``), or a point larger than the limit.
    """
    if max_gap_registers < 0 or max_gap_bits < 0:
        raise ValueError(f"gaps must not be negative: {max_gap_registers=}, {max_gap_bits=}")
    if not 1 <= max_registers <= MAX_REGISTERS:
        raise ValueError(f"max_registers must be in 1..{MAX_REGISTERS}, got {max_registers}")
    if not 1 <= max_bits <= MAX_BITS:
        raise ValueError(f"max_bits must be in 1..{MAX_BITS}, got {max_bits}")

    by_table: dict[Table, list[PointSpec]] = {table: [] for table in _TABLE_ORDER}
    for point in points:
        by_table[point.table].append(point)

    requests: list[ReadRequest] = []
    for table, table_points in by_table.items():
        if table.is_bit_table:
            requests.extend(_plan_table(table, table_points, max_gap_bits, max_bits))
        else:
            requests.extend(_plan_table(table, table_points, max_gap_registers, max_registers))
    return requests


def _plan_table(
    table: Table, points: list[PointSpec], max_gap: int, limit: int
) -> list[ReadRequest]:
    requests: list[ReadRequest] = []
    group: list[PointSpec] = []
    start = end = 0  # addresses [start, end) covered by ``group``
    for point in sorted(points, key=lambda p: p.address):
        span = point.span
        if span > limit:
            unit = "bits" if table.is_bit_table else "registers"
            raise ValueError(
                f"point {point.name!r} spans {span} {unit}, more than one read of {limit} allows"
            )
        point_end = point.address + span
        if group and point.address - end <= max_gap and max(end, point_end) - start <= limit:
            group.append(point)
            end = max(end, point_end)
            continue
        if group:
            requests.append(_request(table, group, start, end))
        group, start, end = [point], point.address, point_end
    if group:
        requests.append(_request(table, group, start, end))
    return requests


def _request(table: Table, group: list[PointSpec], start: int, end: int) -> ReadRequest:
    return ReadRequest(table, start, end - start, tuple((p, p.address - start) for p in group))


def decode_response(
    request: ReadRequest, values: Sequence[int] | Sequence[bool]
) -> list[tuple[str, Value]]:
    """Decode and scale every point of ``request`` from the values it read.

    Returns ``(point name, value)`` in the request's point order. ``values``
    may be longer than ``request.count`` (``pymodbus`` pads bit reads to a
    multiple of 8); extra values are ignored. Raises :class:`ValueError` when
    it is shorter.
    """
    if len(values) < request.count:
        raise ValueError(
            f"read of {request.count} {request.table} values at {request.address} "
            f"returned only {len(values)}"
        )
    decoded: list[tuple[str, Value]] = []
    for point, index in request.points:
        raw = decode_registers(
            values[index : index + point.span], point.dtype, point.order, bit=point.bit
        )
        decoded.append((point.name, scale_value(raw, point.scale, point.offset)))
    return decoded
