"""The values that flow through the pipeline.

The hot path carries plain named tuples: a reading costs one tuple allocation,
packs into msgpack as an array, and needs no validation model per value
(see the cost model in DESIGN.md).
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

Value = bool | int | float | str


class Quality(IntEnum):
    """How far a reading can be trusted. Codes are part of the wire format
    (docs/wire-format.md); a code, once published, keeps its meaning."""

    GOOD = 0
    OUT_OF_RANGE = 1  # outside the configured plausible range: kept, flagged
    SPIKE = 2  # changed faster than the configured rate: kept (or dropped), flagged
    STALE = 3  # the value has not been refreshed when it should have been
    COMM_ERROR = 4  # the device did not answer for this point (value is None)
    DEVICE_OFFLINE = 5  # the device is offline (value is None)
    BAD_CHECKSUM = 6  # the frame carrying the value failed its checksum: value is suspect
    INVALID_VALUE = 7  # the device sent a value that cannot be used (value is None): below


class Reading(NamedTuple):
    """One value of one point of one device at one instant."""

    device: str
    point: str
    ts_ms: int  # unix time in milliseconds, taken when the response arrived
    value: Value | None  # None only with a quality saying why (COMM_ERROR, DEVICE_OFFLINE)
    quality: int = Quality.GOOD


# What a value may be on the wire (docs/wire-format.md, "Values a device can send").
MIN_INT = -(2**63)
MAX_INT = 2**64 - 1  # msgpack holds int64 and uint64
MAX_TEXT = 1024  # characters of a string value


def value_problem(value: object) -> str | None:
    """Why `value` cannot go on the wire as it is, or None when it can.

    Usable: None, a bool, an int in [-2**63, 2**64), a finite float, a str of at most
    `MAX_TEXT` characters that is valid Unicode. Anything else becomes no value with
    quality INVALID_VALUE (`invalid_reading`). Costs about 60 ns for a number.
    """
    kind = type(value)
    if isinstance(value, float) and kind is float:
        if value - value == 0.0:  # NaN and +-inf give NaN here
            return None
        return "not a number (NaN)" if value != value else "an infinite number"
    if isinstance(value, int) and kind is int:
        if MIN_INT <= value <= MAX_INT:
            return None
        return "an integer beyond 64 bits"
    if kind is bool or value is None:
        return None
    if isinstance(value, str) and kind is str:
        if len(value) > MAX_TEXT:
            return f"text of {len(value)} characters (at most {MAX_TEXT})"
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "text that is not valid Unicode"
        return None
    return f"a {kind.__name__}, not a number, bool or text"


def all_usable(values: list[object]) -> bool:
    """Whether every value can go on the wire as it is (finite floats take a fast path)."""
    for value in values:
        kind = type(value)
        if kind is float:
            if value - value == 0.0:  # type: ignore[operator]
                continue
            return False
        if kind is int and MIN_INT <= value <= MAX_INT:  # type: ignore[operator]
            continue
        if value_problem(value) is not None:
            return False
    return True


def invalid_reading(reading: Reading) -> Reading:
    """The reading without its unusable value: None, quality INVALID_VALUE."""
    return Reading(reading.device, reading.point, reading.ts_ms, None, Quality.INVALID_VALUE)
