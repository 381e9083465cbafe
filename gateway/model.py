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


class Reading(NamedTuple):
    """One value of one point of one device at one instant."""

    device: str
    point: str
    ts_ms: int  # unix time in milliseconds, taken when the response arrived
    value: Value | None  # None only with a quality saying why (COMM_ERROR, DEVICE_OFFLINE)
    quality: int = Quality.GOOD
