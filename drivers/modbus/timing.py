"""Modbus RTU on a serial line: frame sizes, silences, and the line time polls need (pure).

A serial bus carries one frame at a time, so the line time of every poll on it adds
up. The estimate here is a lower bound: every request answered at once, no retries,
no exceptions. `edge-gateway validate` prints it and warns when a bus needs more than
its poll cycle (docs: drivers/modbus/README.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from drivers.base import BusEstimate
from drivers.modbus.plan import ReadRequest

RTU_REQUEST_BYTES: Final = 8
"""A Modbus RTU read request: unit, function, address, count, CRC."""


def rtu_response_bytes(request: ReadRequest) -> int:
    """The answer to a read: unit, function, byte count, the data, CRC."""
    if request.table.is_bit_table:
        return 5 + math.ceil(request.count / 8)
    return 5 + 2 * request.count


def default_inter_frame_delay(baudrate: int) -> float:
    """Modbus RTU: 3.5 character times of silence (11 bits each), at least 1.75 ms."""
    return max(0.00175, 3.5 * 11 / baudrate)


def poll_line_time(requests: Sequence[ReadRequest], character_time: float, silence: float) -> float:
    """Seconds on the wire one poll takes: each request and its answer, and the silence
    between frames."""
    return sum(
        (RTU_REQUEST_BYTES + rtu_response_bytes(r)) * character_time + silence for r in requests
    )


def bus_estimate(
    port: str, baudrate: int, polls: Sequence[tuple[str, float, float]]
) -> BusEstimate:
    """The bus on `port` per cycle, from each slave's (name, poll interval, line time of
    one poll); the cycle is the shortest interval, slaves polled less often count in
    proportion."""
    cycle = min(interval for _, interval, _ in polls)
    need = sum(line_time * cycle / interval for _, interval, line_time in polls)
    return BusEstimate(port, baudrate, tuple(name for name, _, _ in polls), cycle, need)
