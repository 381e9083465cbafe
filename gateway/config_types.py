"""Small types the config models share: durations and sizes with units, names, the
strict base model. Every part that owns a config section builds on these.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)\s*$")
_SIZE_UNITS = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}


def parse_duration(text: object) -> float:
    """'500ms' -> 0.5 (seconds). Bare numbers are refused: units are required."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration; write it with a unit, e.g. '500ms' or '5s'")
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration; use a number and ms, s, m or h, e.g. '5s'")
    return float(match[1]) * _DURATION_UNITS[match[2]]


def parse_size(text: object) -> int:
    """'64MB' -> 64000000 (bytes)."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f"{text!r} is not a size; write it with a unit, e.g. '64MB'")
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size; use a number and B, KB, MB, GB, KiB, MiB or GiB")
    return int(float(match[1]) * _SIZE_UNITS[match[2]])


def _positive_duration(text: object) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds


_DURATION_SCHEMA = WithJsonSchema(
    {"type": "string", "pattern": _DURATION_RE.pattern, "examples": ["500ms"]}
)
Duration = Annotated[float, BeforeValidator(_positive_duration), _DURATION_SCHEMA]
DurationOrZero = Annotated[float, BeforeValidator(parse_duration), _DURATION_SCHEMA]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"type": "string", "pattern": _SIZE_RE.pattern, "examples": ["64MB"]}),
]
_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
Name = Annotated[str, Field(pattern=_NAME_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StrictModel(BaseModel):
    """Unknown keys are errors; a loaded config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def name_problem(error: dict[str, Any]) -> str | None:
    """The reason to print for a pydantic error on a `Name` field, or None."""
    if (
        error["type"] == "string_pattern_mismatch"
        and (error.get("ctx") or {}).get("pattern") == _NAME_PATTERN
    ):
        return (
            f"{error.get('input')!r} is not a valid name: use 1-64 letters, digits, '_', '.' or '-'"
        )
    return None
