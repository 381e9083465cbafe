"""The Modbus device sections of the config file (`protocol = "modbus_tcp"`,
`"modbus_rtu_over_tcp"`, `"modbus_rtu"`) and what one device's section must satisfy.

Where a point is read is written either as `table` + a 0-based `address` (as on the
wire), or as `register`: the number a datasheet prints, whose leading digit names the
table (`datasheet_address`): 1xxxx discrete inputs, 3xxxx input registers, 4xxxx
holding registers, each from x0001 (address 0) to x9999; six digits for the whole
16-bit range (300001 … 365536); coils (0xxxx) in quotes, because TOML drops a number's
leading zeros (`register = "00001"` is coil 0). A bare 1 … 10000 names no table and is
refused. Setting both `register` and `address` is refused; so is a `table` that
disagrees with the register. An `address` above 65535 that reads like a datasheet's
number (`300053`) is refused with both ways to write it.

Unit 0 on a serial bus (RTU, RTU over TCP) is the broadcast address no slave answers.
What concerns several devices (a shared bus, unit ids on one line) is in checks.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from drivers.core.config_types import (
    Duration,
    DurationOrZero,
    Float,
    Host,
    Int,
    Name,
    Problems,
    StrictModel,
    shown,
)
from drivers.core.processing import ProcessingConfig
from drivers.modbus.decode import ByteOrder, DataType, Table, register_count
from drivers.serial_port import SerialPortConfig

# --- datasheet notation ------------------------------------------------------------------

# Datasheets number registers from 1 with the table in the first digit: 0xxxx coils, 1xxxx
# discrete inputs, 3xxxx input registers, 4xxxx holding registers (6-digit forms for the
# whole 16-bit range: 0xxxxx, 1xxxxx, 3xxxxx, 4xxxxx).
_DATASHEET_TABLES: Final = {1: Table.DISCRETE_INPUT, 3: Table.INPUT, 4: Table.HOLDING}
_TABLE_DIGITS: Final = {Table.COIL: 0, Table.DISCRETE_INPUT: 1, Table.INPUT: 3, Table.HOLDING: 4}
_NOTATION: Final = (
    "a datasheet's number is 1xxxx, 3xxxx or 4xxxx (discrete input, input or holding "
    'register) from x0001, or 6 digits (300001); a coil\'s is written in quotes: "00001"'
)


def datasheet_address(address: int) -> tuple[Table, int, str] | None:
    """(table, 0-based address, notation) when `address` reads like a datasheet's number
    of a discrete input, input or holding register (coils cannot be told apart)."""
    for base, digits in ((100_000, "6-digit"), (10_000, "5-digit")):
        table = _DATASHEET_TABLES.get(address // base)
        offset = address % base
        limit = 65536 if base == 100_000 else 9999
        if table is not None and 1 <= offset <= limit:
            return table, offset - 1, digits
    return None


def coil_address(written: str) -> int | None:
    """The 0-based address of a coil written as a datasheet prints it, with its leading
    zero: '00001' … '09999' or '000001' … '065536'; None for anything else."""
    if len(written) in (5, 6) and written.startswith("0") and written.isdigit():
        number = int(written)
        if 1 <= number <= (9999 if len(written) == 5 else 65536):
            return number - 1
    return None


def datasheet_number(table: Table, address: int, *, six_digits: bool = False) -> str:
    """A 0-based address as a datasheet numbers it: input 52 is '30053', coil 0 '00001';
    six digits when asked, or when five do not reach (holding 9999 is '410000')."""
    number = address + 1
    width = 5 if six_digits or number > 9999 else 4
    return f"{_TABLE_DIGITS[table]}{number:0{width}d}"


def register_address(register: int | str) -> tuple[Table, int]:
    """The table and 0-based address of a datasheet's register number (an int, or a
    coil's number as text); ValueError saying why it is none."""
    if isinstance(register, str):
        coil = coil_address(register)
        if coil is not None:
            return Table.COIL, coil
        if register.strip().isdigit():
            raise ValueError(
                f"{shown(register)} is text; write numbers without quotes: "
                f"register = {int(register)} (only a coil's number, 00001 …, goes in "
                "quotes, for its leading zeros)"
            )
        raise ValueError(f"{shown(register)} is not a register number; {_NOTATION}")
    if isinstance(register, bool) or not isinstance(register, int):
        raise ValueError(f"{shown(register)} is not a register number; {_NOTATION}")
    notation = datasheet_address(register)
    if notation is not None:
        return notation[0], notation[1]
    if 1 <= register <= 10_000:
        raise ValueError(
            f"{register} does not say which table it is in; {_NOTATION}; or write table "
            "and the 0-based address"
        )
    raise ValueError(f"{register} is no datasheet register number; {_NOTATION}")


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


class _ModbusDeviceConfig(StrictModel):
    """What every Modbus device has, whatever the transport."""

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
    points: list[ModbusPointConfig] = Field(min_length=1)


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

    protocol: Literal["modbus_rtu"]
    unit: SerialUnit = 1
    inter_frame_delay: DurationOrZero | None = Field(
        None, description="silence between requests; default 3.5 character times (min 1.75ms)"
    )


ModbusConfig = ModbusTcpDeviceConfig | ModbusRtuOverTcpDeviceConfig | ModbusRtuDeviceConfig
