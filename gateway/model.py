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
    BAD_CHECKSUM = 6  # the frame carrying the value failed its checksum: value is suspect


class Reading(NamedTuple):
    """One value of one point of one device at one instant."""

    device: str
    point: str
    ts_ms: int  # unix time in milliseconds, taken when the response arrived
    value: Value
    quality: int = Quality.GOOD
