"""The Modbus device sections of the config file (`protocol = "modbus_tcp"`,
`"modbus_rtu_over_tcp"`, `"modbus_rtu"`) and what one device's section must satisfy.

A point must fit its table (bits in coils and discrete inputs, registers elsewhere)
and the 16-bit address space; an address above 65535 that reads like a datasheet's
register number (`300053`) is refused with the 0-based address to write instead;
unit 0 on a serial bus (RTU, RTU over TCP) is the broadcast address no slave answers.
What concerns several devices (a shared bus, unit ids on one line) is in checks.py.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from drivers.core.config_types import (
    Duration,
    DurationOrZero,
    Float,
    Host,
    Int,
    Name,
    Problems,
    StrictModel,
)
from drivers.core.processing import ProcessingConfig
from drivers.modbus.decode import ByteOrder, DataType, Table, register_count
from drivers.serial_port import SerialPortConfig

# Datasheets number registers from 1 with the table in the first digit: 1xxxx discrete
# inputs, 3xxxx input registers, 4xxxx holding registers (6-digit forms for the whole
# 16-bit range: 1xxxxx, 3xxxxx, 4xxxxx). Coils (0xxxx) cannot be told apart.
_DATASHEET_TABLES = {1: Table.DISCRETE_INPUT, 3: Table.INPUT, 4: Table.HOLDING}


def datasheet_address(address: int) -> tuple[Table, int, str] | None:
    """(table, 0-based address, notation) when `address` reads like a datasheet's number."""
    for base, digits in ((100_000, "6-digit"), (10_000, "5-digit")):
        table = _DATASHEET_TABLES.get(address // base)
        offset = address % base
        limit = 65536 if base == 100_000 else 9999
        if table is not None and 1 <= offset <= limit:
            return table, offset - 1, digits
    return None


class ModbusPointConfig(StrictModel):
    name: Name
    table: Table = Table.HOLDING
    address: Int = Field(ge=0, le=65535)
    type: DataType = DataType.UINT16
    byte_order: ByteOrder | None = Field(None, description="defaults to the device's byte_order")
    bit: Int | None = Field(None, ge=0, le=15, description="bit index for type 'bit'")
    length: Int | None = Field(None, ge=1, le=125, description="registers for type 'string'")
    scale: Float = 1.0
    offset: Float = 0.0
    unit: str | None = Field(None, description="engineering unit, for people (e.g. 'bar')")
    process: ProcessingConfig | None = None

    @field_validator("address", mode="before")
    @classmethod
    def _datasheet_notation(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool) and value > 65535:
            notation = datasheet_address(value)
            if notation is not None:
                table, address, digits = notation
                raise ValueError(
                    f"{value} is above 65535; it looks like register {value} of a datasheet "
                    f"({digits} notation); addresses here are 0-based: "
                    f'table = "{table}", address = {address}'
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
