"""Readings as InfluxDB line protocol: what `edge-gateway tail --format influx` prints, for
Telegraf's `inputs.execd` or a pipe into InfluxDB's `/write`. Pure, no I/O.

One line per reading (InfluxDB 1.x line protocol, which InfluxDB 2 and Telegraf read too)::

    pump-7,device=pump-7,gateway=cab-0412,point=pressure,quality=good value=6.25 1795430000013000000

- **measurement**: the device's name, or one fixed name (`measurement=`);
- **tags**, in key order: `clock=unsynchronised` (only for a batch taken before the
  gateway's clock was known right), `device`, `gateway`, `point`, `quality` (the quality
  code's name, docs/wire-format.md; `quality_<code>` for a code this version does not
  know);
- **field**: a number (int or float) as the float field `value`; a bool as `value` 1 or
  0; text as the string field `text`; no value (a nil with `comm_error`,
  `device_offline`, `invalid_value`) as the integer field `quality_code` alone, or no
  line at all with `empty="skip"`. Every number is a float because InfluxDB fixes a
  field's type per measurement and shard: a device with an int point and a float point
  would otherwise have half its writes refused as a field type conflict. Integers beyond
  2**53 lose precision in a float;
- **timestamp**: nanoseconds (the reading's `ts_ms` times 1,000,000).

Escaping follows the line protocol reference: in the measurement, commas and spaces;
in tag keys and values, commas, equals signs and spaces; in a string field, double
quotes and backslashes. Line protocol cannot carry a newline, nor a backslash before an
escaped character or at the end of a tag: in names, newlines, carriage returns and tabs
become spaces and backslashes become `/`; in text, a newline becomes the two characters
`\\n` (names from a gateway's config hold none of these). A reading whose time lies
outside what InfluxDB stores (before 1677 or after 2262) gives no line.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

from drivers.core.model import Quality, Reading
from gateway.wire import Batch

__all__ = ["QUALITY_NAMES", "EmptyValues", "batch_lines", "reading_line"]

EmptyValues = Literal["field", "skip"]

QUALITY_NAMES: dict[int, str] = {int(q): q.name.lower() for q in Quality}

_NS_PER_MS = 1_000_000
_MIN_NS, _MAX_NS = -(2**63) + 2, 2**63 - 2  # InfluxDB's time range
_EXACT_FLOAT_INT = 2**53

_NAME_CLEAN = str.maketrans({"\n": " ", "\r": " ", "\t": " ", "\\": "/"})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})
_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\\\n", "\r": "\\\\r"})


def measurement_name(name: str) -> str:
    text = name.translate(_NAME_CLEAN).translate(_MEASUREMENT_ESCAPES)
    return "_" + text if text.startswith("#") else text  # "#" starts a comment line


def tag(text: str) -> str:
    """A tag key or value (or a field key), escaped."""
    return text.translate(_NAME_CLEAN).translate(_TAG_ESCAPES)


def string_field(text: str) -> str:
    return '"' + text.translate(_STRING_ESCAPES) + '"'


def quality_name(code: int) -> str:
    return QUALITY_NAMES.get(code, f"quality_{code}")


def reading_line(
    reading: Reading,
    gateway: str,
    *,
    measurement: str | None = None,
    synced: bool = True,
    empty: EmptyValues = "field",
) -> str | None:
    """The line of one reading, or None when it gives none (module docstring)."""
    ns = reading.ts_ms * _NS_PER_MS
    if not _MIN_NS <= ns <= _MAX_NS:
        return None
    value = reading.value
    if value is None:
        if empty == "skip":
            return None
        field = f"quality_code={int(reading.quality)}i"
    elif isinstance(value, str):
        field = "text=" + string_field(value)
    elif isinstance(value, bool):
        field = "value=1" if value else "value=0"
    elif isinstance(value, int):
        field = f"value={float(value)!r}" if abs(value) > _EXACT_FLOAT_INT else f"value={value}"
    elif math.isfinite(value):
        field = f"value={value!r}"
    else:  # the decoder never gives one; a Reading made by hand might
        field = f"quality_code={int(Quality.INVALID_VALUE)}i"
    tags = "" if synced else ",clock=unsynchronised"
    tags += f",device={tag(reading.device)}" if reading.device else ""
    tags += f",gateway={tag(gateway)}" if gateway else ""
    tags += f",point={tag(reading.point)}" if reading.point else ""
    tags += f",quality={quality_name(reading.quality)}"
    name = measurement_name(measurement or reading.device or "reading")
    return f"{name}{tags} {field} {ns}"


def batch_lines(
    batch: Batch, *, measurement: str | None = None, empty: EmptyValues = "field"
) -> Iterator[str]:
    """The lines of a batch's readings, in their order."""
    for reading in batch.readings:
        line = reading_line(
            reading,
            batch.gateway_id,
            measurement=measurement,
            synced=batch.clock_synced,
            empty=empty,
        )
        if line is not None:
            yield line
