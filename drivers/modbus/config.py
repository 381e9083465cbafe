"""The Modbus device sections of the config file (`protocol = "modbus_tcp"`,
`"modbus_rtu_over_tcp"`, `"modbus_rtu"`), the device profiles they may name, and what
one device's section must satisfy.

Where a point is read is written either as `table` + a 0-based `address` (as on the
wire), or as `register`: the number a datasheet prints, whose leading digit names the
table (`datasheet_address`): 1xxxx discrete inputs, 3xxxx input registers, 4xxxx
holding registers, each from x0001 (address 0) to x9999; six digits for the whole
16-bit range (300001 … 365536); coils (0xxxx) in quotes, because TOML drops a number's
leading zeros (`register = "00001"` is coil 0). A bare 1 … 10000 names no table and is
refused. Setting both `register` and `address` is refused; so is a `table` that
disagrees with the register. An `address` above 65535 that reads like a datasheet's
number (`300053`) is refused with both ways to write it.

`profile = "<name>"` pulls a device's register map from a shipped profile
(profile.py finds the files): `points` may choose profile points by name (all of them
when it names none) and add points of the device's own; `[devices.overrides.<point>]`
replaces keys of a profile point. The profile's `byte_order` and `max_registers` are
the device's defaults. The composed points are what the rest of the gateway sees.

Unit 0 on a serial bus (RTU, RTU over TCP) is the broadcast address no slave answers.
What concerns several devices (a shared bus, unit ids on one line) is in checks.py.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from drivers.core.config_types import (
    PROBLEM,
    Duration,
    DurationOrZero,
    Float,
    Host,
    Int,
    Loc,
    Name,
    Problems,
    StrictModel,
    shown,
)
from drivers.core.processing import ProcessingConfig
from drivers.modbus.decode import ByteOrder, DataType, Table, register_count
from drivers.modbus.notation import (
    datasheet_address,
    register_address,
)
from drivers.modbus.plan import MAX_REGISTERS
from drivers.modbus.profile import ProfileFileError, profile_names, read_profile
from drivers.serial_port_config import SerialPortConfig

# --- datasheet notation (drivers/modbus/notation.py) -----------------------------------


def _register_input(value: object) -> object:
    register_address(value)  # type: ignore[arg-type]  # says why anything else is wrong
    return value


DatasheetRegister = Annotated[
    int | str,
    BeforeValidator(_register_input),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "examples": [30001, 40001, 300001]},
                {"type": "string", "pattern": "^0[0-9]{4,5}$", "examples": ["00001"]},
            ]
        }
    ),
]

# --- points ------------------------------------------------------------------------------

_LOCATION_KEYS: Final = frozenset({"register", "table", "address"})


def _point_schema(schema: dict[str, Any]) -> None:
    """`address` or `register`: the JSON Schema says one of them is required."""
    schema["required"] = [key for key in schema.get("required", []) if key != "address"]
    schema["anyOf"] = [{"required": ["address"]}, {"required": ["register"]}]


class ModbusPointConfig(StrictModel):
    model_config = ConfigDict(json_schema_extra=_point_schema)

    name: Name
    table: Table = Table.HOLDING
    address: Int = Field(ge=0, le=65535, description="0-based, as on the wire")
    datasheet_register: DatasheetRegister | None = Field(
        None,
        alias="register",
        description="instead of table + address: the register number as the datasheet "
        'prints it (30001 = input 0, 40001 = holding 0, 300001, 10001; coils "00001")',
    )
    type: DataType = DataType.UINT16
    byte_order: ByteOrder | None = Field(None, description="defaults to the device's byte_order")
    bit: Int | None = Field(None, ge=0, le=15, description="bit index for type 'bit'")
    length: Int | None = Field(None, ge=1, le=125, description="registers for type 'string'")
    scale: Float = 1.0
    offset: Float = 0.0
    unit: str | None = Field(None, description="engineering unit, for people (e.g. 'bar')")
    process: ProcessingConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _register_is_the_location(cls, data: object) -> object:
        """`register` sets table and address; written with `address` or a table it
        disagrees with, it is refused."""
        if not isinstance(data, dict) or "register" not in data:
            return data
        try:
            table, address = register_address(data["register"])
        except ValueError:
            return {"address": 0, **data}  # the field says why; no second problem for it
        problems = Problems()
        if "address" in data:
            problems.add(
                ("register",),
                f"register = {data['register']!r} and address = {data['address']!r} both say "
                "where the point is; write register (the datasheet's number) or table and "
                "address (0-based), not both",
            )
        elif data.get("table", table.value) != table.value:
            problems.add(
                ("table",),
                f'table = "{data["table"]}" disagrees with register = '
                f"{data['register']!r}, which is {table} {address} (0-based); leave table out: "
                "the register says it",
            )
        problems.raise_any(data)
        return {**data, "table": table.value, "address": address}

    @field_validator("address", mode="before")
    @classmethod
    def _datasheet_notation(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool) and value > 65535:
            notation = datasheet_address(value)
            if notation is not None:
                table, address, digits = notation
                raise ValueError(
                    f"{value} is above 65535; it looks like register {value} of a datasheet "
                    f"({digits} notation); addresses here are 0-based: write register = "
                    f'{value}, or table = "{table}", address = {address}'
                )
        return value

    @model_validator(mode="after")
    def _type_fits_table(self) -> ModbusPointConfig:
        problems = Problems()
        bit_table = self.table.is_bit_table
        if bit_table and self.type is not DataType.BOOL:
            problems.add(
                (),
                f"type '{self.type}' cannot be read from table '{self.table}': coils and "
                "discrete inputs hold single bits, use type 'bool'",
            )
        if not bit_table and self.type is DataType.BOOL:
            problems.add(
                (),
                f"type 'bool' reads coils and discrete inputs; for one bit of a "
                f"{self.table} register use type 'bit' with bit = 0..15",
            )
        if (self.type is DataType.BIT) != (self.bit is not None):
            problems.add((), "type 'bit' needs bit = 0..15, and bit is only for type 'bit'")
        if (self.type is DataType.STRING) != (self.length is not None):
            problems.add((), "type 'string' needs length (in registers), and only strings take it")
        elif not bit_table:
            last = self.address + register_count(self.type, self.length) - 1
            if last > 65535:
                problems.add((), f"the point runs past address 65535 (ends at {last})")
        problems.raise_any(self)
        return self


# --- profiles ----------------------------------------------------------------------------


class ModbusProfileConfig(StrictModel):
    """A device profile: one device model's register map, from its manufacturer's
    document (a file in drivers/modbus/profiles/, linked from config/profiles/)."""

    manufacturer: str
    model: str
    source: str = Field(description="the document the map is taken from, with its version")
    byte_order: ByteOrder = Field(ByteOrder.ABCD, description="the device's byte_order default")
    max_registers: Int = Field(
        MAX_REGISTERS, ge=1, le=MAX_REGISTERS, description="the device's max_registers default"
    )
    points: list[ModbusPointConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _names_are_unique(self) -> ModbusProfileConfig:
        problems = Problems()
        seen: set[str] = set()
        for j, point in enumerate(self.points):
            if point.name in seen:
                problems.add(("points", j, "name"), f"point name {point.name!r} is used twice")
            seen.add(point.name)
        problems.raise_any(self)
        return self


@functools.cache
def load_profile(name: str) -> tuple[ModbusProfileConfig, tuple[dict[str, Any], ...]]:
    """The profile `name`, validated, and its points as the file writes them (what a
    device composes its own from); ValueError naming the shipped ones, or the file's
    problems."""
    try:
        document = read_profile(name)
        profile = ModbusProfileConfig.model_validate(document)
    except ProfileFileError as err:
        raise ValueError(str(err)) from err
    except ValidationError as err:
        found = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors(include_url=False)
        )
        raise ValueError(f"profile {name!r} is broken: {found}") from err
    return profile, tuple(dict(point) for point in document["points"])


def _profile_name_schema() -> dict[str, Any]:
    return {"type": "string", "enum": list(profile_names())}


ProfileName = Annotated[str, WithJsonSchema(_profile_name_schema())]


def _relocated(err: ValidationError, prefix: Loc = ()) -> list[InitErrorDetails]:
    """The errors of `err`, as if found at `prefix` (their own types, inputs and context)."""
    return [
        InitErrorDetails(
            type=PydanticCustomError(e["type"], e["msg"], e.get("ctx")),
            loc=(*prefix, *e["loc"]),
            input=e["input"],
        )
        for e in err.errors(include_url=False)
    ]


def _problem(loc: Loc, reason: str, data: object) -> InitErrorDetails:
    return InitErrorDetails(
        type=PydanticCustomError(PROBLEM, "{reason}", {"reason": reason}), loc=loc, input=data
    )


def _no_such_point(profile: str, name: object, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"its {len(known)} points are in "
    where = "" if close else f"config/profiles/{profile}.toml"
    return f"profile {profile!r} has no point {shown(name)} ({hint}{where})"


def _stand_in(i: int) -> dict[str, Any]:
    """A valid point in the place of an entry that is refused, so that the entries after
    it keep their index in the errors."""
    return {"name": f"refused-entry-{i}", "address": 0}


def _compose(data: dict[str, Any]) -> tuple[dict[str, Any], list[InitErrorDetails]]:
    """The device section with its points composed from its profile (see the module
    docstring), and the problems of the composition at their keys."""
    found: list[InitErrorDetails] = []
    entries = data.get("points", [])
    overrides = data.get("overrides", {})
    name = data.get("profile")
    if not isinstance(entries, list) or not isinstance(overrides, dict):
        return data, found  # the fields say what is wrong
    if name is None:
        for i, entry in enumerate(entries):
            if isinstance(entry, str):
                reason = (
                    f"{shown(entry)} names a profile point, but the device has no profile; "
                    "write a point as a table: { name = ..., register = ..., type = ... }"
                )
                found.append(_problem(("points", i), reason, entry))
        if overrides:
            reason = "overrides change the points of a profile: set profile = ..."
            found.append(_problem(("overrides",), reason, overrides))
        points = [_stand_in(i) if isinstance(e, str) else e for i, e in enumerate(entries)]
        return {**data, "points": points} if found else data, found
    if not isinstance(name, str):
        return data, found  # the field says what is wrong
    try:
        profile, profile_points = load_profile(name)
    except ValueError as err:
        found.append(_problem(("profile",), str(err), name))
        points = [_stand_in(i) if not isinstance(e, dict) else e for i, e in enumerate(entries)]
        return {**data, "points": points or [_stand_in(0)]}, found
    known = [point.name for point in profile.points]
    chosen: list[str] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            continue
        if entry not in known:
            found.append(_problem(("points", i), _no_such_point(name, entry, known), entry))
        elif entry in chosen:
            found.append(_problem(("points", i), f"{shown(entry)} is chosen twice", entry))
        else:
            chosen.append(entry)
    read = chosen or known
    for point_name, override in overrides.items():
        if point_name not in known:
            reason = _no_such_point(name, point_name, known)
            found.append(_problem(("overrides", point_name), reason, override))
        elif point_name not in read:
            reason = f"{shown(point_name)} is not read: points chooses {', '.join(read)}"
            found.append(_problem(("overrides", point_name), reason, override))
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and entry.get("name") in read:
            reason = (
                f"{shown(entry['name'])} is a point of profile {name!r} too; change it with "
                f"[devices.overrides.{entry['name']}], or give yours another name"
            )
            found.append(_problem(("points", i, "name"), reason, entry["name"]))
    composed: dict[str, dict[str, Any]] = {}
    for raw in profile_points:
        override = overrides.get(raw["name"])
        composed[raw["name"]] = raw
        if raw["name"] not in read or not isinstance(override, dict):
            continue
        if "name" in override:
            reason = "a profile point keeps its name"
            found.append(_problem(("overrides", raw["name"], "name"), reason, override["name"]))
            continue
        moved = _LOCATION_KEYS & override.keys()  # the override says where: all of it
        point = {**{k: v for k, v in raw.items() if not moved or k not in _LOCATION_KEYS}}
        point.update(override)
        try:
            ModbusPointConfig.model_validate(point)
        except ValidationError as err:
            found += _relocated(err, ("overrides", raw["name"]))
        else:
            composed[raw["name"]] = point
    points = [
        composed.get(entry, _stand_in(i)) if isinstance(entry, str) else entry
        for i, entry in enumerate(entries)
    ]
    if not chosen:
        points += [composed[point_name] for point_name in known]
    defaults = {"byte_order": profile.byte_order.value, "max_registers": profile.max_registers}
    return {**defaults, **data, "points": points}, found


def _device_schema(schema: dict[str, Any]) -> None:
    """`points` or `profile`; a point of `points` may be a profile point's name."""
    schema["required"] = [key for key in schema.get("required", []) if key != "points"]
    schema["anyOf"] = [{"required": ["points"]}, {"required": ["profile"]}]
    points = schema["properties"]["points"]
    points["items"] = {
        "anyOf": [
            points["items"],
            {"type": "string", "description": "the name of a point of the device's profile"},
        ]
    }


class _ModbusDeviceConfig(StrictModel):
    """What every Modbus device has, whatever the transport."""

    model_config = ConfigDict(json_schema_extra=_device_schema)

    name: Name
    unit: Int = Field(1, ge=0, le=255, description="Modbus unit id (slave id)")
    poll_interval: Duration = 1.0
    timeout: Duration = 1.0
    retries: Int = Field(1, ge=0, le=10, description="extra attempts of a failed request per cycle")
    backoff_max: Duration = Field(
        60.0, description="longest wait between attempts to an offline device"
    )
    byte_order: ByteOrder = ByteOrder.ABCD
    max_gap: Int = Field(8, ge=0, le=124, description="unused registers a request may read across")
    max_gap_bits: Int = Field(
        64, ge=0, le=1999, description="unused coils/inputs a request may read across"
    )
    max_registers: Int = Field(
        MAX_REGISTERS,
        ge=1,
        le=MAX_REGISTERS,
        description="most registers one request reads (some devices refuse more than 125)",
    )
    profile: ProfileName | None = Field(
        None, description="the device's register map from a shipped profile (config/profiles/)"
    )
    points: list[ModbusPointConfig] = Field(
        min_length=1,
        description="the points read; with a profile: names of its points to read (all when "
        "none is named) and points of the device's own",
    )
    overrides: dict[Name, dict[str, Any]] = Field(
        default_factory=dict,
        description="per profile point, keys that replace the profile's (any key of a point "
        "but name)",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _points_of_the_profile(
        cls, data: object, handler: ModelWrapValidatorHandler[_ModbusDeviceConfig]
    ) -> _ModbusDeviceConfig:
        """The points of a device with a profile, composed; the problems of the
        composition and those of the composed section, together."""
        if not isinstance(data, Mapping):
            return handler(data)
        composed, found = _compose(dict(data))
        try:
            device = handler(composed)
        except ValidationError as err:
            if not found:
                raise
            found += _relocated(err)
        if found:
            raise ValidationError.from_exception_data(cls.__name__, found)
        return device


class ModbusTcpDeviceConfig(_ModbusDeviceConfig):
    protocol: Literal["modbus_tcp"]
    host: Host = Field(description="host name or IP address (the port goes in `port`)")
    port: Int = Field(502, ge=1, le=65535)

    @property
    def line(self) -> str:
        return f"{self.host}:{self.port}"


def _serial_unit(unit: int) -> int:
    if unit == 0:
        raise ValueError(
            "unit 0 is the broadcast address on a serial bus: no slave answers a read sent "
            "to it; use the slave's own id (1-247)"
        )
    return unit


SerialUnit = Annotated[
    Int,
    Field(ge=0, le=255, description="Modbus unit id (slave id), 1-247 on a serial bus"),
    AfterValidator(_serial_unit),
]


class ModbusRtuOverTcpDeviceConfig(_ModbusDeviceConfig):
    """Modbus RTU frames carried over TCP by a serial device server."""

    protocol: Literal["modbus_rtu_over_tcp"]
    host: Host = Field(description="host name or IP address (the port goes in `port`)")
    port: Int = Field(4001, ge=1, le=65535)
    unit: SerialUnit = 1

    @property
    def line(self) -> str:
        return f"{self.host}:{self.port}"


class ModbusRtuDeviceConfig(_ModbusDeviceConfig, SerialPortConfig):
    """A Modbus RTU slave on a serial bus; slaves on the same port share the bus."""

    network_ports: ClassVar[bool] = True

    protocol: Literal["modbus_rtu"]
    unit: SerialUnit = 1
    inter_frame_delay: DurationOrZero | None = Field(
        None, description="silence between requests; default 3.5 character times (min 1.75ms)"
    )


ModbusConfig = ModbusTcpDeviceConfig | ModbusRtuOverTcpDeviceConfig | ModbusRtuDeviceConfig
