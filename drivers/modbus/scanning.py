"""What a bus scan tries, in which order, and how long it may wait (pure).

`edge-gateway scan` looks for the unit ids that answer on a line, and on a serial
bus with unknown settings for the baud rate and parity too. Everything here is
decided before the first byte is sent:

- `COMMON_SETTINGS`: the line settings devices ship with, most common first: 9600,
  19200, 38400, 115200, 4800, 2400, 57600 baud, each as 8N1, 8E1, 8O1 and 8N2
  (Modbus RTU sends 8 data bits). A device set to two stop bits answers a master
  sending one, and the other way round (a UART checks the first stop bit only),
  so 8N2 rarely finds what 8N1 did not.
- `answer_timeout`: how long to wait for one answer on a serial line: the request
  and the longest answer expected on the wire at the baud rate, plus
  `DEVICE_TURNAROUND` for the device to think (most answer within 5-50 ms; one that
  needs longer is found with a longer ``--timeout``).
- `parse_units`: '1-247', '1,5,10-20'.
- `scan_seconds`: how long a scan of silent units takes at most, to say so before it
  starts and to tell what a time limit leaves out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from drivers.modbus.timing import RTU_REQUEST_BYTES, default_inter_frame_delay
from drivers.serial_port import LineSettings

__all__ = [
    "COMMON_BAUDRATES",
    "COMMON_SETTINGS",
    "DEVICE_TURNAROUND",
    "MAX_UNIT",
    "answer_timeout",
    "format_units",
    "parse_units",
    "scan_seconds",
]

COMMON_BAUDRATES: Final = (9600, 19200, 38400, 115200, 4800, 2400, 57600)
_FRAMINGS: Final = (("N", 1), ("E", 1), ("O", 1), ("N", 2))
COMMON_SETTINGS: Final = tuple(
    LineSettings(baudrate, 8, parity, stopbits)
    for baudrate in COMMON_BAUDRATES
    for parity, stopbits in _FRAMINGS
)
MAX_UNIT: Final = 247  # 248-255 are reserved; 0 is broadcast, which no slave answers

DEVICE_TURNAROUND: Final = 0.1
"""Seconds a device may take between the end of a request and the start of its answer."""

_LONGEST_ANSWER_BYTES: Final = 7  # one register: unit, function, byte count, 2 data, CRC


def answer_timeout(settings: LineSettings) -> float:
    """Seconds to wait for the answer to a one-register read at these settings."""
    wire = (RTU_REQUEST_BYTES + _LONGEST_ANSWER_BYTES) * settings.character_time
    return round(wire + DEVICE_TURNAROUND, 3)


def scan_seconds(units: int, timeout: float, settings: LineSettings | None = None) -> float:
    """The longest a scan of `units` silent unit ids takes: a timeout each, and on a
    serial line the silence between frames."""
    silence = default_inter_frame_delay(settings.baudrate) if settings is not None else 0.0
    return units * (timeout + silence)


def parse_units(text: str) -> list[int]:
    """'1-247', '3', '1,5,10-20' → the unit ids, in order, each once; ValueError in words."""
    units: list[int] = []
    for part in text.replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{text!r}: write unit ids as 1-247, or 1,5,10-20")
        low, high = int(first), int(last or first)
        if not 1 <= low <= high <= MAX_UNIT:
            raise ValueError(
                f"{part!r}: unit ids on a bus run from 1 to {MAX_UNIT}, low to high "
                "(0 is the broadcast address, which no slave answers)"
            )
        units.extend(u for u in range(low, high + 1) if u not in units)
    return units


def format_units(units: Sequence[int]) -> str:
    """[1, 2, 3, 7] → '1-3, 7'."""
    runs: list[list[int]] = []
    for unit in sorted(units):
        if runs and unit == runs[-1][1] + 1:
            runs[-1][1] = unit
        else:
            runs.append([unit, unit])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
