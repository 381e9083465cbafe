"""A device's read plan in words and as data, for `edge-gateway validate` (pure).

Each request one poll sends: its table, 0-based address range and size, and the same
range as the datasheet numbers it; under it each point it serves with its 0-based
address, datasheet number and type. On a serial bus, the line time of one poll.

    holding 0..11 (12 registers) = 40001..40012
      voltage_l1  0 = 40001  float32 ABCD
      voltage_l2  2 = 40003  float32 ABCD

Datasheet numbers use five digits (40001) while the request's last address has one,
six (400001 …) otherwise, the same width for a request and its points.
`validate --json` carries `read_data` per device (drivers/modbus/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drivers.base import seconds_text
from drivers.modbus.decode import DataType, Table
from drivers.modbus.notation import datasheet_number
from drivers.modbus.plan import PointSpec, ReadRequest

__all__ = ["line_time_text", "read_data", "read_lines"]

_UNITS = {Table.COIL: "coil", Table.DISCRETE_INPUT: "input"}


def _six_digits(request: ReadRequest) -> bool:
    return request.address + request.count > 9999


def _span(request: ReadRequest) -> tuple[str, str]:
    """The request's 0-based range and its datasheet numbers: ('0..11', '40001..40012')."""
    six = _six_digits(request)
    first, last = request.address, request.address + request.count - 1
    numbers = [datasheet_number(request.table, a, six_digits=six) for a in (first, last)]
    if first == last:
        return str(first), numbers[0]
    return f"{first}..{last}", f"{numbers[0]}..{numbers[1]}"


def _size(request: ReadRequest) -> str:
    unit = _UNITS.get(request.table, "register")
    return f"{request.count} {unit}{'' if request.count == 1 else 's'}"


def _type_text(point: PointSpec) -> str:
    if point.dtype is DataType.BIT:
        return f"bit {point.bit}"
    if point.dtype is DataType.STRING:
        return f"string of {point.length} registers, {point.order}"
    if point.span > 1:
        return f"{point.dtype} {point.order}"
    return str(point.dtype)


def read_lines(requests: Sequence[ReadRequest]) -> list[str]:
    """Each request and, indented under it, each point it serves."""
    lines: list[str] = []
    width = max((len(p.name) for r in requests for p, _ in r.points), default=0)
    for request in requests:
        span, numbers = _span(request)
        lines.append(f"{request.table} {span} ({_size(request)}) = {numbers}")
        six = _six_digits(request)
        where = [
            f"{p.address} = {datasheet_number(p.table, p.address, six_digits=six)}"
            for p, _ in request.points
        ]
        pad = max(map(len, where))
        for (point, _), at in zip(request.points, where, strict=True):
            lines.append(f"  {point.name:<{width}}  {at:<{pad}}  {_type_text(point)}")
    return lines


def read_data(requests: Sequence[ReadRequest]) -> list[dict[str, Any]]:
    """The same as plain data: per request its table, address, count, datasheet range
    and points (name, address, datasheet register, type, byte order, bit, length)."""
    data: list[dict[str, Any]] = []
    for request in requests:
        six = _six_digits(request)
        data.append(
            {
                "table": str(request.table),
                "address": request.address,
                "count": request.count,
                "registers": _span(request)[1],
                "points": [
                    {
                        "name": point.name,
                        "address": point.address,
                        "register": datasheet_number(point.table, point.address, six_digits=six),
                        "type": str(point.dtype),
                        "byte_order": None if point.table.is_bit_table else str(point.order),
                        "bit": point.bit,
                        "length": point.length,
                    }
                    for point, _ in request.points
                ],
            }
        )
    return data


def line_time_text(line_time: float, interval: float) -> str:
    """A slave's share of its serial bus: 'one poll: 4.2ms of line time, every 1s (0.42% of
    the bus)'."""
    return (
        f"one poll: {seconds_text(line_time)} of line time, every {seconds_text(interval)} "
        f"({line_time / interval:.2%} of the bus)"
    )
