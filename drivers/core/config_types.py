"""Small types the config models share: durations and sizes with units, numbers and
booleans that are not silently converted, host names, names, the strict base model.
Every part that owns a config section builds on these.

Parsing is total: whatever a TOML file holds, these types either produce a value in
a bounded range or a problem in words (never an OverflowError or a traceback).
TOML already tells numbers, booleans and text apart, so a value of the wrong kind
(`port = "15020"`, `scale = "0.1"`, `verify_hostname = "false"`, `require_checksum = 1`)
is a mistake to point out, not to convert:

- `Int`, `Float`, `Bool`: use them for every number and flag of a config model
  (`Float` takes an integer too: `scale = 2`; never inf or nan). `WholeNumber` goes on
  a `Literal` of integers (`Annotated[Literal[7, 8], WholeNumber]`), which pydantic
  would otherwise match with `true` or `8.0`.
- `Duration` (positive, at least 1ms), `DurationOrZero`: at most 8760h (a year).
- `Size`: at most 1TB.
- `Host`: a host name, an IPv4 or an IPv6 address; no scheme, no `:port`, no spaces.

Problems of these types carry their own error types; `input_problem` turns one into
the sentence to print, with the key the user wrote (`port = 15020`).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from drivers.core.words import Loc as Loc
from drivers.core.words import shown as shown

# --- durations and sizes ---------------------------------------------------------------

_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)\s*$")
_DURATION_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
MAX_DURATION_HOURS: Final = 8760
"""The longest duration a config may give: a year (timers, windows and back-offs beyond
it are mistakes, and much longer ones overflow the millisecond clocks that use them)."""
_MAX_SECONDS = Decimal(MAX_DURATION_HOURS * 3600)
_MIN_POSITIVE_SECONDS = Decimal("0.001")

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$")
_SIZE_UNITS = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}
MAX_SIZE: Final = 1000**4
"""The largest size a config may give: 1TB."""


def parse_duration(text: object) -> float:
    """'500ms' -> 0.5 (seconds). Bare numbers are refused: units are required.

    At most MAX_DURATION_HOURS; raises ValueError with the reason otherwise."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(
            f"{shown(text)} is not a duration; write it with a unit, e.g. '500ms' or '5s'"
        )
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(
            f"{shown(text)} is not a duration; use a number and ms, s, m or h, e.g. '5s'"
        )
    seconds = Decimal(match[1]) * _DURATION_UNITS[match[2]]
    if seconds > _MAX_SECONDS:
        raise ValueError(
            f"{shown(text)} is too long: durations are at most {MAX_DURATION_HOURS}h (a year)"
        )
    return float(seconds)


def parse_size(text: object) -> int:
    """'64MB' -> 64000000 (bytes), at most 1TB; raises ValueError with the reason otherwise."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f"{shown(text)} is not a size; write it with a unit, e.g. '64MB'")
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(
            f"{shown(text)} is not a size; use a number and B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
        )
    size = Decimal(match[1]) * _SIZE_UNITS[match[2]]
    if size > MAX_SIZE:
        raise ValueError(f"{shown(text)} is too large: sizes are at most 1TB")
    return int(size)


def _positive_duration(text: object) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"{shown(text)} must be longer than zero")
    if seconds < _MIN_POSITIVE_SECONDS:
        raise ValueError(f"{shown(text)} is shorter than 1ms, the finest time the gateway keeps")
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

# --- numbers and booleans, as TOML wrote them --------------------------------------------

_INT_TEXT = re.compile(r"^\s*[-+]?[0-9][0-9_]*\s*$")
_FLOAT_TEXT = re.compile(r"^\s*[-+]?[0-9][0-9_]*(?:\.[0-9_]+)?(?:[eE][-+]?[0-9]+)?\s*$")
_TRUE_TEXT = frozenset({"true", "yes", "on", "1"})
_FALSE_TEXT = frozenset({"false", "no", "off", "0"})


def _not_a(kind: str, value: object) -> PydanticCustomError:
    """An error for a value of the wrong kind; `input_problem` words it with the key."""
    return PydanticCustomError(
        f"config_{kind}", "{given} is not " + _KIND_WORDS[kind], {"given": shown(value)}
    )


_KIND_WORDS = {
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "finite": "a finite number",
}


def _int_input(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _not_a("int", value)
    return value


def _float_input(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _not_a("float", value)
    try:
        number = float(value)
    except OverflowError:
        raise _not_a("finite", value) from None
    if not math.isfinite(number):
        raise _not_a("finite", value)
    return number


def _bool_input(value: object) -> object:
    if not isinstance(value, bool):
        raise _not_a("bool", value)
    return value


WholeNumber: Final = BeforeValidator(_int_input)
"""On a Literal of integers: `Annotated[Literal[7, 8], WholeNumber]` refuses `true`, `8.0`."""
Int = Annotated[int, WholeNumber, Strict()]
"""A whole number written as one (not `"5"`, `5.0` or `true`)."""
Float = Annotated[float, BeforeValidator(_float_input)]
"""A finite number written as one (`2` or `2.5`; not `"2.5"`, `true`, `inf` or `nan`)."""
Bool = Annotated[bool, BeforeValidator(_bool_input), Strict()]
"""`true` or `false` (not `"true"` or `1`)."""


def input_problem(error: Any) -> str | None:
    """The reason to print for a pydantic error of `Int`, `Float` or `Bool`, or None.

    The hint spells the line as it should be written, under the key the user wrote."""
    kind = str(error["type"]).removeprefix("config_")
    if kind not in _KIND_WORDS or not error["type"].startswith("config_"):
        return None
    given = error.get("input")
    loc = error.get("loc") or ()
    key = loc[-1] if loc and isinstance(loc[-1], str) else None

    def line(value: str) -> str:
        return f"{key} = {value}" if key is not None else value

    text = shown(given)
    if kind == "finite":
        return f"{text} is too large or not a finite number; write an ordinary number"
    if kind == "bool":
        if isinstance(given, str):
            word = given.strip().lower()
            if word in _TRUE_TEXT or word in _FALSE_TEXT:
                value = "true" if word in _TRUE_TEXT else "false"
                return f"{text} is text; write true or false without quotes: {line(value)}"
            return f"{text} is not true or false; write {line('true')} or {line('false')}"
        if isinstance(given, int | float) and given in (0, 1):
            return f"{text} is a number; write true or false: {line(str(bool(given)).lower())}"
        return f"{text} is not true or false; write {line('true')} or {line('false')}"
    if isinstance(given, str):
        if (_FLOAT_TEXT if kind == "float" else _INT_TEXT).match(given):
            return f"{text} is text; write numbers without quotes: {line(given.strip())}"
        return f"{text} is text, not {_KIND_WORDS[kind]}"
    if isinstance(given, bool):
        return f"{text} is true or false, not {_KIND_WORDS[kind]}"
    if kind == "int" and isinstance(given, float) and math.isfinite(given):
        if given.is_integer() and abs(given) < 1e15:
            whole = line(str(int(given)))
            return f"{text} has a decimal point; write whole numbers without one: {whole}"
        return f"{text} is not a whole number"
    return f"{text} is not {_KIND_WORDS[kind]}"


# --- host names ---------------------------------------------------------------------------

_HOST_HINT = "write the name alone and the port in `port`"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def host_problem(text: str) -> str | None:
    """Why `text` is not a host name, an IPv4 or an IPv6 address (None when it is one)."""
    given = shown(text)
    if not text.strip():
        return "is empty; write the device's host name or IP address"
    scheme = _SCHEME.match(text)
    if scheme:
        rest = scheme[2].split("/", 1)[0]
        name = _without_port(rest)[0] or "the name"
        return f"{given} has a scheme ({scheme[1]}://); {_HOST_HINT}: {name}"
    if any(c.isspace() for c in text):
        return f"{given} contains spaces; {_HOST_HINT}"
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return f"{given} contains control characters; {_HOST_HINT}"
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return None
    name, port = _without_port(text)
    if port is not None:
        return f"{given} has a port (:{port}); {_HOST_HINT}: {name}"
    if text.startswith("[") and text.endswith("]"):
        return f"{given}: write an IPv6 address without brackets: {text[1:-1]}"
    if "/" in text:
        return f"{given} is not a host name (it has a '/'); {_HOST_HINT}"
    if ":" in text:
        return f"{given} is not a valid IPv6 address"
    if re.fullmatch(r"[0-9.]+", text):
        return f"{given} is not a valid IPv4 address"
    labels = text.removesuffix(".").split(".")
    if len(text) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        return (
            f"{given} is not a host name, an IPv4 or an IPv6 address "
            "(a host name is letters, digits and '-' between dots)"
        )
    return None


def _without_port(text: str) -> tuple[str, str | None]:
    """('name', '502') from 'name:502' or '[::1]:502'; (text, None) without a port."""
    bracketed = re.fullmatch(r"\[([^\]]*)\]:([0-9]+)", text)
    if bracketed:
        return bracketed[1], bracketed[2]
    if text.count(":") == 1:
        name, port = text.split(":")
        if port.isdigit():
            return name, port
    return text, None


def _host(text: str) -> str:
    problem = host_problem(text)
    if problem is not None:
        raise PydanticCustomError("config_host", "{reason}", {"reason": problem})
    return text


Host = Annotated[str, AfterValidator(_host)]
"""A host name, an IPv4 or an IPv6 address: never a URL, never with `:port`."""

# --- file paths ----------------------------------------------------------------------------


def path_text_problem(value: object) -> str | None:
    """Why a text cannot name a file or device (None when it can)."""
    if not isinstance(value, str):
        return None  # the type check reports it
    if not value.strip():
        return "is empty"
    if "\x00" in value:
        return f"{shown(value)} contains a NUL character"
    if len(value) > 4096:
        return f"{shown(value)} is longer than a path can be (4096 characters)"
    return None


# --- names and the base model ----------------------------------------------------------------

_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
Name = Annotated[str, Field(pattern=_NAME_PATTERN)]


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
            f"{shown(error.get('input'))} is not a valid name: "
            "use 1-64 letters, digits, '_', '.' or '-'"
        )
    return None


# --- several problems at once ----------------------------------------------------------------

PROBLEM = "config_problem"
CROSS_CHECK = "config_cross_check"  # a problem between sections (gateway/settings.py)
"""The error type of problems found by a model's own checks (`Problems`)."""


class Problems:
    """The problems a model's own checks find, each at its key path inside the model.

    A model validator adds every problem it sees and raises them together, so that
    one run of `validate` names them all instead of stopping at the first:

        problems = Problems()
        if ...: problems.add(("deadband_percent",), "set deadband or deadband_percent, not both")
        problems.raise_any(self)
    """

    def __init__(self, kind: str = PROBLEM) -> None:
        self.kind = kind
        self.found: list[tuple[Loc, str]] = []

    def add(self, loc: Loc, reason: str) -> None:
        self.found.append((loc, reason))

    def extend(self, found: Sequence[tuple[Loc, str]]) -> None:
        self.found.extend(found)

    def raise_any(self, model: object) -> None:
        if not self.found:
            return
        raise ValidationError.from_exception_data(
            type(model).__name__,
            [
                InitErrorDetails(
                    type=PydanticCustomError(self.kind, "{reason}", {"reason": reason}),
                    loc=loc,
                    input=model,
                )
                for loc, reason in self.found
            ],
        )


_KIND_OF_VALUE = {
    "string_type": "text; write text in quotes",
    "dict_type": "a table; write { key = value, ... } or a [section]",
    "model_type": "a table; write { key = value, ... } or a [section]",
    "model_attributes_type": "a table; write { key = value, ... } or a [section]",
    "list_type": "a list; write [ ... ]",
    "tuple_type": "a list; write [ ... ]",
    "path_type": "text naming a file",
}
"""What to say for a value of the wrong kind (pydantic's 'Input should be a valid ...')."""


def error_reason(e: Any, *, keys: str) -> str:
    """One pydantic error of a TOML file in words for the person who wrote it: what is
    wrong with the value, never pydantic's wording alone. `keys` says where every key is
    listed (for an unknown key: "see config/example.toml")."""
    kind = e["type"]
    given = e.get("input")
    ctx = e.get("ctx") or {}
    if kind in (PROBLEM, CROSS_CHECK, "config_host"):  # our own messages, already in words
        return str(e["msg"])
    if kind in ("enum", "literal_error"):
        expected = str(ctx.get("expected", ""))
        reason = f"{shown(given)} is not one of {expected}"
        key = e["loc"][-1] if e["loc"] and isinstance(e["loc"][-1], str) else None
        number = isinstance(given, int | float) and not isinstance(given, bool)
        if number and key is not None and f"'{given}'" in expected:  # protocol = 5
            reason += f'; write it in quotes: {key} = "{given}"'
        return reason
    if kind == "extra_forbidden":
        return f"unknown key (check the spelling; {keys})"
    if kind in ("missing", "union_tag_not_found"):
        return "required key is missing"
    if kind == "union_tag_invalid":
        return f"{shown(ctx.get('tag'))} is not one of {ctx.get('expected_tags')}"
    named = name_problem(e) or input_problem(e)
    if named is not None:
        return named
    if kind in _KIND_OF_VALUE and not isinstance(given, dict | list):
        return f"{shown(given)} is not {_KIND_OF_VALUE[kind]}"
    if kind in _KIND_OF_VALUE:
        return f"a {'table' if isinstance(given, dict) else 'list'} is not {_KIND_OF_VALUE[kind]}"
    if kind == "too_short" and isinstance(given, list):
        return f"needs at least {ctx.get('min_length', 1)} entry, has {len(given)}"
    message: str = e["msg"]
    message = message.removeprefix("Value error, ")
    if given is not None and not isinstance(given, dict | list) and kind != "value_error":
        message = f"{message} (got {shown(given)})"
    return message
