"""Configuration: one TOML file, validated by pydantic models before anything starts.

Unknown keys are errors; durations carry units ("500ms", "5s", "2m"); sizes carry
units ("64MB"); numbers, booleans and text are never converted into each other
(gateway/config_types.py). `load_config` returns a validated `GatewayConfig` with
its warnings, or raises `ConfigError` listing every problem as
`key.path[index]: reason`, in this order:

1. names used twice (device names, point names of a device, alarm names), found on
   the TOML document itself, so that they are named even when the rest is broken;
2. the problems of single keys and sections (types, ranges, coherence);
3. the cross-checks between sections (alarms naming real points, devices sharing a
   line agreeing on it), run on every device and alarm that is valid on its own.

Warnings are for configs that are valid but probably not what was meant (a timeout
as long as the poll interval, a datasheet register number, a serial port that is not
there, an RS-485 bus with more traffic than line time, a password anyone can read);
each is `key.path: message`, in `LoadedConfig.warnings`.

The JSON Schema in `config/edge-gateway.schema.json` is generated from these models
(`edge-gateway schema`); a test fails when it is stale.
"""

from __future__ import annotations

import hashlib
import re
import stat
import sys
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from drivers.modbus.decode import ByteOrder, DataType, Table, register_count
from drivers.serial_port import line_rate
from gateway.core.config_types import (
    PROBLEM,
    Bool,
    Duration,
    DurationOrZero,
    Float,
    Host,
    Int,
    Loc,
    Name,
    Problems,
    Size,
    StrictModel,
    WholeNumber,
    input_problem,
    name_problem,
    path_text_problem,
    shown,
)
from gateway.errors import ConfigError
from gateway.pipeline.filters import ProcessingSpec
from gateway.uplink.config import MqttConfig

# --- sections ----------------------------------------------------------------------------


class GatewaySectionConfig(StrictModel):
    id: Name = Field(description="Gateway id; part of every topic and every batch")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    clock_sync: Literal["kernel", "assume"] = Field(
        "kernel",
        description="kernel: readings taken while the kernel says the clock is not "
        "synchronised (no NTP yet after boot) are marked on the wire; assume: trust the "
        "clock (an RTC without NTP)",
    )


_BUFFER_EXAMPLE = "/var/lib/edge-gateway/buffer.db"


def _file_kind(path: Path) -> Literal["missing", "file", "directory", "other"]:
    """What is at `path` now (an unreadable parent counts as missing: the run will say)."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        return "missing"
    if stat.S_ISDIR(mode):
        return "directory"
    return "file" if stat.S_ISREG(mode) else "other"


class BufferConfig(StrictModel):
    """The durable queue on disk (buffer/DESIGN.md has the contract)."""

    path: Path = Field(
        Path(_BUFFER_EXAMPLE),
        description="the buffer file (created when missing); alarms get their own file next to it",
    )
    max_age: Duration | None = Field(
        None, description="age bound: batches older than this are evicted, counted"
    )
    commit_interval: DurationOrZero = Field(
        0.0,
        description="durability window: closed batches wait this long to share one commit "
        "(fewer SD-card writes; a power cut can lose that much more)",
    )
    sync: Literal["full", "normal"] = Field(
        "full",
        description="full: every commit is fsynced; normal: not (a power cut can lose the "
        "last commits; a crash cannot)",
    )
    max_bytes: Size = Field(
        256_000_000,
        ge=1_000_000,
        description="bound on the buffer's whole footprint on disk (database, WAL, index, "
        "side files; at least 1MB); the oldest batches are evicted first",
    )

    @field_validator("path", mode="before")
    @classmethod
    def _path_names_a_file(cls, value: object) -> object:
        problem = path_text_problem(value)
        if problem is not None:
            raise ValueError(f"{problem}; name a file, e.g. {_BUFFER_EXAMPLE}")
        if isinstance(value, str) and value.rstrip().endswith("/"):
            name = Path(value) / "buffer.db"
            raise ValueError(
                f"{shown(value)} names a directory (it ends with '/'); name a file in it, "
                f"e.g. {name}"
            )
        return value

    @field_validator("path")
    @classmethod
    def _path_is_not_a_directory(cls, path: Path) -> Path:
        kind = _file_kind(path)
        if kind == "directory":
            raise ValueError(f"{path} is a directory; name a file in it, e.g. {path / 'buffer.db'}")
        if kind == "other":
            raise ValueError(
                f"{path} is not a regular file (a device, a socket or a pipe); name a file, "
                f"e.g. {_BUFFER_EXAMPLE}"
            )
        return path


class BatchConfig(StrictModel):
    max_readings: Int = Field(500, ge=1, le=100_000)
    max_age: Duration = Field(
        5.0, description="a batch is closed at most this long after its first reading"
    )


AggregateFunction = Literal["min", "max", "mean", "count", "last"]
AGGREGATE_FUNCTIONS: tuple[AggregateFunction, ...] = ("min", "max", "mean", "count", "last")


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


class ProcessingConfig(StrictModel):
    """Local processing of one point (gateway/pipeline/filters.py has the exact rules)."""

    min: Float | None = Field(None, description="plausible range: below is flagged out_of_range")
    max: Float | None = Field(None, description="plausible range: above is flagged out_of_range")
    spike_max_rate: Float | None = Field(
        None, gt=0, description="units per second; faster changes are spikes"
    )
    spike_action: Literal["flag", "drop"] = "flag"
    smoothing: Literal["mean", "median"] | None = None
    smoothing_samples: Int = Field(5, ge=1, le=1000)
    deadband: Float | None = Field(None, ge=0, description="send only changes larger than this")
    deadband_percent: Float | None = Field(None, ge=0, le=1000)
    heartbeat: Duration | None = Field(
        None, description="with a deadband: resend at least this often"
    )
    aggregate: Duration | None = Field(None, description="send min/max/mean/count/last per window")
    aggregate_functions: list[AggregateFunction] = Field(
        default_factory=lambda: list(AGGREGATE_FUNCTIONS), min_length=1
    )

    @model_validator(mode="after")
    def _coherent(self) -> ProcessingConfig:
        problems = Problems()
        if self.min is not None and self.max is not None and self.min >= self.max:
            problems.add(("max",), f"min {self.min:g} must be below max {self.max:g}")
        if self.deadband is not None and self.deadband_percent is not None:
            problems.add(("deadband_percent",), "set deadband or deadband_percent, not both")
        if self.heartbeat is not None and self.deadband is None and self.deadband_percent is None:
            problems.add(
                ("heartbeat",), "heartbeat goes with a deadband (without one every value is sent)"
            )
        if not problems.found:
            try:
                self.spec()  # the processor's own checks, e.g. no deadband before an aggregation
            except ValueError as err:
                problems.add((), str(err))
        problems.raise_any(self)
        return self

    def spec(self) -> ProcessingSpec:
        """The compiled form the pipeline runs (gateway/pipeline/filters.py)."""
        return ProcessingSpec(
            range_low=self.min,
            range_high=self.max,
            spike_max_rate=self.spike_max_rate,
            spike_action=self.spike_action,
            smoothing=self.smoothing,
            smoothing_samples=self.smoothing_samples,
            deadband=self.deadband,
            deadband_percent=self.deadband_percent,
            heartbeat_ms=_ms(self.heartbeat),
            aggregate_ms=_ms(self.aggregate),
            aggregate=tuple(self.aggregate_functions),
        )


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
        bit_table = self.table in (Table.COIL, Table.DISCRETE_INPUT)
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


class SerialPortConfig(StrictModel):
    """Line settings of a serial port (RS-485 / RS-232)."""

    port: str = Field(description="serial device, e.g. /dev/ttyUSB0 or /dev/ttyAMA0")
    baudrate: Int = Field(9600, ge=50, le=4_000_000)
    bytesize: Annotated[Literal[7, 8], WholeNumber] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Annotated[Literal[1, 2], WholeNumber] = 1

    @field_validator("port")
    @classmethod
    def _port_names_a_device(cls, port: str) -> str:
        problem = path_text_problem(port)
        if problem is not None:
            raise ValueError(f"{problem}; name the serial device, e.g. /dev/ttyUSB0")
        return port

    def line_settings(self) -> tuple[int, int, str, int]:
        return (self.baudrate, self.bytesize, self.parity, self.stopbits)

    @property
    def character_time(self) -> float:
        """Seconds one byte takes on the wire."""
        return 1 / line_rate(self.baudrate, self.bytesize, self.parity, self.stopbits)


class ModbusRtuDeviceConfig(_ModbusDeviceConfig, SerialPortConfig):
    """A Modbus RTU slave on a serial bus; slaves on the same port share the bus."""

    protocol: Literal["modbus_rtu"]
    unit: SerialUnit = 1
    inter_frame_delay: DurationOrZero | None = Field(
        None, description="silence between requests; default 3.5 character times (min 1.75ms)"
    )


# --- serial line instruments ---------------------------------------------------------------


def _hex_bytes(value: str | None, key: str) -> bytes | None:
    if value is None:
        return None
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{key} {shown(value)} is not hex bytes, e.g. 'AA55'") from None
    if not data:
        raise ValueError(f"{key} must not be empty")
    return data


def _text_bytes(value: str, key: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{key} must be bytes 0-255 (use \\xNN escapes or a *_hex key)") from None


class DelimiterFramingConfig(StrictModel):
    """Frames end with a delimiter (lines); optionally start with a marker ('$' for NMEA)."""

    kind: Literal["delimiter"]
    delimiter: str = Field("\r\n", min_length=1, description='TOML escapes: "\\r\\n"')
    start: str | None = Field(None, min_length=1, description="a frame begins with this")
    max_length: Int = Field(1024, ge=2, le=65536)


class FixedFramingConfig(StrictModel):
    """Frames of a fixed number of bytes, optionally beginning with sync bytes."""

    kind: Literal["fixed"]
    length: Int = Field(ge=1, le=65536)
    sync_hex: str | None = Field(None, description="e.g. 'AA55'")


class LengthFieldFramingConfig(StrictModel):
    """start bytes, a length field, the payload (and checksum, end bytes)."""

    kind: Literal["length_field"]
    start_hex: str = Field(description="e.g. 'AA55'")
    length_offset: Int = Field(ge=0, le=64, description="bytes from the frame start")
    length_size: Annotated[Literal[1, 2], WholeNumber] = 1
    byteorder: Literal["big", "little"] = "big"
    length_adjust: Int = Field(
        0, ge=-64, le=64, description="bytes the length field does not count (checksum, end)"
    )
    end_hex: str | None = None
    max_length: Int = Field(1024, ge=2, le=65536)


class RegexParserConfig(StrictModel):
    kind: Literal["regex"]
    pattern: str = Field(description="named groups become fields, e.g. 'CH4=(?P<ch4>[-\\d.]+)'")
    encoding: str = "ascii"


class DelimitedParserConfig(StrictModel):
    kind: Literal["delimited"]
    fields: list[str] = Field(min_length=1, description="field names in order; '' skips one")
    separator: str = Field(",", min_length=1)
    encoding: str = "ascii"


NmeaIndex = Annotated[Int, Field(ge=0, le=255)]


class NmeaParserConfig(StrictModel):
    kind: Literal["nmea"]
    sentence: str | None = Field(
        None,
        description="e.g. 'GGA' (any talker); others are skipped. Required with fields or "
        "coordinates: field numbers mean something else in each sentence type",
    )
    fields: dict[str, NmeaIndex] = Field(default_factory=dict, description="name -> comma index")
    coordinates: dict[str, tuple[NmeaIndex, NmeaIndex]] = Field(
        default_factory=dict, description="name -> [value index, hemisphere index]"
    )
    require_checksum: Bool = True

    @model_validator(mode="after")
    def _sentence_with_fields(self) -> NmeaParserConfig:
        if self.sentence is None and (self.fields or self.coordinates):
            keys = " and ".join(k for k in ("fields", "coordinates") if getattr(self, k))
            problems = Problems()
            problems.add(
                ("sentence",),
                f"required with {keys}: field numbers mean something else in each sentence "
                "type (GGA field 7 is the number of satellites, RMC field 7 the speed), so "
                "without it every sentence the receiver sends fills the same points; "
                'set e.g. sentence = "GGA"',
            )
            problems.raise_any(self)
        return self


class BinaryParserConfig(StrictModel):
    kind: Literal["binary"]
    layout: str = Field(description="struct layout with byte order, e.g. '>HhI'")
    fields: list[str] = Field(min_length=1, description="names of the unpacked values; '' skips")
    offset: Int = Field(0, ge=0, le=65535, description="where the layout starts in the frame")
    checksum: Literal["crc16_modbus", "crc16_ccitt", "xor8"] | None = None
    checksum_start: Int = Field(0, ge=0, le=65535, description="first byte the checksum covers")


FramingConfig = Annotated[
    DelimiterFramingConfig | FixedFramingConfig | LengthFieldFramingConfig,
    Field(discriminator="kind"),
]
ParserConfig = Annotated[
    RegexParserConfig | DelimitedParserConfig | NmeaParserConfig | BinaryParserConfig,
    Field(discriminator="kind"),
]


class SerialLinePointConfig(StrictModel):
    name: Name
    field: str | None = Field(None, description="parser field; defaults to the point name")
    type: Literal["float", "int", "bool", "string"] = "float"
    scale: Float = 1.0
    offset: Float = 0.0
    unit: str | None = None
    process: ProcessingConfig | None = None


class SerialLineDeviceConfig(SerialPortConfig):
    """An instrument with its own line protocol (not Modbus)."""

    name: Name
    protocol: Literal["serial_line"]
    mode: Literal["streaming", "polled"] = Field(
        "streaming", description="streaming: it talks on its own; polled: we send poll_command"
    )
    poll_command: str | None = Field(None, description="text with TOML escapes, e.g. 'R\\r\\n'")
    poll_command_hex: str | None = None
    poll_interval: Duration = 1.0
    timeout: Duration = Field(1.0, description="polled: wait this long for the reply")
    stale_after: Duration = Field(
        10.0, description="streaming: silence this long marks the instrument offline"
    )
    backoff_max: Duration = 60.0
    max_input_rate: Int | None = Field(
        None,
        ge=10,
        le=100_000_000,
        description="bytes per second accepted from the port; default: twice what the line "
        "can carry at its baud rate (a real UART never reaches it; a virtual COM port has no "
        "such limit); the excess is shed and counted",
    )
    framing: FramingConfig
    parser: ParserConfig
    points: list[SerialLinePointConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _coherent(self) -> SerialLineDeviceConfig:
        from drivers.serial_line.build import build_framer, build_parser, parser_fields

        problems = Problems()
        has_command = self.poll_command is not None or self.poll_command_hex is not None
        if self.mode == "polled" and not has_command:
            problems.add(("mode",), "mode 'polled' needs poll_command or poll_command_hex")
        if self.mode == "streaming" and has_command:
            key = "poll_command" if self.poll_command is not None else "poll_command_hex"
            problems.add((key,), f"{key} is only for mode 'polled'")
        if self.poll_command is not None and self.poll_command_hex is not None:
            problems.add(("poll_command_hex",), "set poll_command or poll_command_hex, not both")
        try:
            _hex_bytes(self.poll_command_hex, "poll_command_hex")
        except ValueError as err:
            problems.add(("poll_command_hex",), str(err))
        try:
            _text_bytes(self.poll_command or "", "poll_command")
        except ValueError as err:
            problems.add(("poll_command",), str(err))
        try:
            build_framer(self.framing)
        except ValueError as err:
            problems.add(("framing",), str(err))
        try:
            build_parser(self.parser)
        except ValueError as err:
            problems.add(("parser",), str(err))
        else:
            produced = parser_fields(self.parser)
            for j, point in enumerate(self.points):
                if (point.field or point.name) not in produced:
                    problems.add(*_unproduced_field(j, point, produced))
        problems.raise_any(self)
        return self

    def command_bytes(self) -> bytes | None:
        if self.poll_command_hex is not None:
            return _hex_bytes(self.poll_command_hex, "poll_command_hex")
        if self.poll_command is not None:
            return _text_bytes(self.poll_command, "poll_command")
        return None


def _unproduced_field(
    index: int, point: SerialLinePointConfig, produced: Sequence[str]
) -> tuple[Loc, str]:
    offer = f"the parser produces {', '.join(map(repr, produced))}"
    if point.field is not None:
        return (
            ("points", index, "field"),
            f"{shown(point.field)} is not a field of the parser; {offer}",
        )
    return (
        ("points", index, "name"),
        f"the point reads the field {point.name!r} (its name, as no `field` is set), which "
        f"the parser does not produce; {offer}: set `field` to one of them",
    )


DeviceConfig = Annotated[
    ModbusTcpDeviceConfig
    | ModbusRtuOverTcpDeviceConfig
    | ModbusRtuDeviceConfig
    | SerialLineDeviceConfig,
    Field(discriminator="protocol"),
]
ModbusConfig = ModbusTcpDeviceConfig | ModbusRtuOverTcpDeviceConfig | ModbusRtuDeviceConfig


Severity = Literal["info", "warning", "critical"]


class ThresholdAlarmConfig(StrictModel):
    """Raise when a point is above `high` (or below `low`) for `on_delay`."""

    name: Name
    kind: Literal["threshold"]
    device: str
    point: str
    high: Float | None = None
    low: Float | None = None
    hysteresis: Float = Field(0.0, ge=0, description="clear only this far back inside the limit")
    on_delay: DurationOrZero = 0.0
    off_delay: DurationOrZero = 0.0
    severity: Severity = "warning"

    @model_validator(mode="after")
    def _limits(self) -> ThresholdAlarmConfig:
        problems = Problems()
        if self.high is None and self.low is None:
            problems.add((), "a threshold alarm needs high, low or both")
        if self.high is not None and self.low is not None and self.low >= self.high:
            problems.add(("low",), f"low {self.low:g} must be below high {self.high:g}")
        problems.raise_any(self)
        return self


class RateOfRiseAlarmConfig(StrictModel):
    """Raise when a point rises more than `max_rise` within `per` (a flood gauge)."""

    name: Name
    kind: Literal["rate_of_rise"]
    device: str
    point: str
    max_rise: Float = Field(gt=0)
    per: Duration
    on_delay: DurationOrZero = 0.0
    off_delay: DurationOrZero = 0.0
    severity: Severity = "warning"


AlarmConfig = Annotated[ThresholdAlarmConfig | RateOfRiseAlarmConfig, Field(discriminator="kind")]

CROSS_CHECK = "config_cross_check"
"""The error type of problems between sections (GatewayConfig's cross-checks)."""


class GatewayConfig(StrictModel):
    """The whole configuration file."""

    gateway: GatewaySectionConfig
    mqtt: MqttConfig = MqttConfig()
    buffer: BufferConfig = BufferConfig()
    batch: BatchConfig = BatchConfig()
    devices: list[DeviceConfig] = Field(min_length=1)
    alarms: list[AlarmConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_checks(self) -> GatewayConfig:
        problems = Problems(CROSS_CHECK)
        problems.extend(cross_check_problems(enumerate(self.devices), enumerate(self.alarms)))
        problems.raise_any(self)
        return self


# --- cross-checks ---------------------------------------------------------------------------


def duplicate_names(what: str, named: Iterable[tuple[Loc, object]]) -> list[tuple[Loc, str]]:
    """A problem at each repeat of a name, with both key paths; non-text names are skipped
    (their own check reports them)."""
    first: dict[str, Loc] = {}
    found: list[tuple[Loc, str]] = []
    for loc, name in named:
        if not isinstance(name, str):
            continue
        if name in first:
            found.append(
                (
                    loc,
                    f"{what} {shown(name)} is used twice "
                    f"({_key_path(first[name])} and {_key_path(loc)})",
                )
            )
        else:
            first[name] = loc
    return found


def _names_used_twice(
    devices: Sequence[tuple[int, object]],
    points: Sequence[tuple[int, Sequence[tuple[int, object]]]],
    alarms: Sequence[tuple[int, object]],
) -> list[tuple[Loc, str]]:
    """Device names, point names of each device and alarm names used twice."""
    found = duplicate_names("device name", ((("devices", i, "name"), n) for i, n in devices))
    for i, names in points:
        found += duplicate_names(
            "point name", ((("devices", i, "points", j, "name"), n) for j, n in names)
        )
    found += duplicate_names("alarm name", ((("alarms", i, "name"), n) for i, n in alarms))
    return found


def raw_duplicate_names(doc: object) -> list[tuple[Loc, str]]:
    """Names used twice, found on the TOML document before any validation."""

    def items(value: object) -> list[tuple[int, dict[str, Any]]]:
        if not isinstance(value, list):
            return []
        return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)]

    doc = doc if isinstance(doc, dict) else {}
    devices = items(doc.get("devices"))
    return _names_used_twice(
        [(i, d.get("name")) for i, d in devices],
        [(i, [(j, p.get("name")) for j, p in items(d.get("points"))]) for i, d in devices],
        [(i, a.get("name")) for i, a in items(doc.get("alarms"))],
    )


def cross_check_problems(
    devices: Iterable[tuple[int, DeviceConfig]],
    alarms: Iterable[tuple[int, AlarmConfig]],
    *,
    unchecked: frozenset[str] | None = frozenset(),
) -> list[tuple[Loc, str]]:
    """Problems between sections, for the devices and alarms given with their indices.

    `unchecked` names devices present in the file but not valid on their own: alarms on
    them are not checked (their own problems are reported). None: the device list itself
    is unusable, so no alarm is checked against it."""
    device_list: list[tuple[int, DeviceConfig]] = list(devices)
    alarm_list: list[tuple[int, AlarmConfig]] = list(alarms)
    found = _names_used_twice(
        [(i, d.name) for i, d in device_list],
        [(i, list(enumerate([p.name for p in d.points]))) for i, d in device_list],
        [(i, a.name) for i, a in alarm_list],
    )
    if unchecked is not None:
        found += _alarms_name_real_points(device_list, alarm_list, unchecked)
    found += _shared_lines_agree(device_list)
    return found


def _listing(names: Iterable[str], limit: int = 12) -> str:
    names = sorted(set(names))
    shown_names = ", ".join(map(shown, names[:limit]))
    return shown_names + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _alarms_name_real_points(
    devices: Sequence[tuple[int, DeviceConfig]],
    alarms: Sequence[tuple[int, AlarmConfig]],
    unchecked: frozenset[str],
) -> list[tuple[Loc, str]]:
    points: dict[str, set[str]] = {}
    for _, dev in devices:  # a name used twice: its points are the points of both
        points.setdefault(dev.name, set()).update(p.name for p in dev.points)
    found: list[tuple[Loc, str]] = []
    for i, alarm in alarms:
        if alarm.device in unchecked:
            continue
        if alarm.device not in points:
            names = set(points) | unchecked
            listing = f" (devices: {_listing(names)})" if names else ""
            found.append(
                (("alarms", i, "device"), f"there is no device {shown(alarm.device)}{listing}")
            )
        elif alarm.point not in points[alarm.device]:
            found.append(
                (
                    ("alarms", i, "point"),
                    f"device {alarm.device!r} has no point {shown(alarm.point)} "
                    f"(its points: {_listing(points[alarm.device])})",
                )
            )
    return found


_LINE_SETTINGS = ("baudrate", "bytesize", "parity", "stopbits")


def _shared_lines_agree(devices: Sequence[tuple[int, DeviceConfig]]) -> list[tuple[Loc, str]]:
    """Devices on one serial port or one host:port share a line: they must agree on it,
    and each Modbus slave on it needs its own unit id."""
    owners: dict[object, tuple[int, DeviceConfig]] = {}
    units: dict[tuple[object, int], int] = {}
    found: list[tuple[Loc, str]] = []
    for i, dev in devices:
        if isinstance(dev, SerialPortConfig):
            key: object = ("serial", dev.port)
            where = dev.port
        else:
            key = ("tcp", dev.host, dev.port)
            where = f"{dev.host}:{dev.port}"
        first, first_dev = owners.setdefault(key, (i, dev))
        if first == i:
            pass
        elif dev.protocol != first_dev.protocol or dev.protocol == "serial_line":
            found.append(
                (
                    ("devices", i, "port"),
                    f"devices[{i}] and devices[{first}] both use {where}: only Modbus devices "
                    "of one protocol can share a port",
                )
            )
            continue
        elif isinstance(dev, SerialPortConfig):
            for setting in _LINE_SETTINGS:
                mine, theirs = getattr(dev, setting), getattr(first_dev, setting)
                if mine != theirs:
                    found.append(
                        (
                            ("devices", i, setting),
                            f"devices[{i}] and devices[{first}] share the bus on {where} but "
                            f"their {setting} differs ({mine} and {theirs}); one bus has one "
                            "set of line settings",
                        )
                    )
        if not isinstance(dev, SerialLineDeviceConfig):
            other = units.setdefault((key, dev.unit), i)
            if other != i:
                found.append(
                    (
                        ("devices", i, "unit"),
                        f"devices[{i}] and devices[{other}] are both unit {dev.unit} on "
                        f"{where}: each slave on a line answers to its own unit id",
                    )
                )
    return found


# --- warnings -------------------------------------------------------------------------------


def seconds_text(seconds: float) -> str:
    """A duration as a technician writes it: '300ms', '1.5s'."""
    if seconds < 1:
        return f"{seconds * 1000:.3g}ms"
    return f"{seconds:.3g}s"


def config_warnings(config: GatewayConfig) -> list[str]:
    """What is valid but probably not what was meant, as 'key.path: message' lines."""
    from gateway.build import line_time_warnings

    found: list[tuple[Loc, str]] = []
    ports: set[str] = set()
    for i, dev in enumerate(config.devices):
        waits = not isinstance(dev, SerialLineDeviceConfig) or dev.mode == "polled"
        chosen = bool({"timeout", "poll_interval"} & dev.model_fields_set)  # not both defaults
        if waits and chosen and dev.timeout >= dev.poll_interval:
            found.append(
                (
                    ("devices", i, "timeout"),
                    f"{seconds_text(dev.timeout)} is not shorter than poll_interval "
                    f"{seconds_text(dev.poll_interval)}: a device that does not answer makes "
                    "polls late (and on a shared line, its neighbours' polls too); make "
                    "timeout shorter than poll_interval",
                )
            )
        if isinstance(dev, SerialPortConfig) and dev.port not in ports:
            ports.add(dev.port)
            if _file_kind(Path(dev.port)) == "missing":
                found.append(
                    (
                        ("devices", i, "port"),
                        f"{dev.port} does not exist now: is the adapter plugged in? "
                        "(the gateway keeps trying to open it)",
                    )
                )
        if not isinstance(dev, SerialLineDeviceConfig):
            for j, point in enumerate(dev.points):
                notation = datasheet_address(point.address)
                if notation is not None and notation[0] is point.table:
                    found.append(
                        (
                            ("devices", i, "points", j, "address"),
                            f"{point.address} looks like register {point.address} of a "
                            f"datasheet; addresses here are 0-based: {point.table} {notation[1]}",
                        )
                    )
    found += line_time_warnings(config)
    return [_line(loc, message) for loc, message in found]


def file_warnings(config: GatewayConfig, path: Path, mode: int) -> list[str]:
    """Warnings about the file itself: a password that others can read."""
    readers = [
        who for who, bit in (("group", stat.S_IRGRP), ("others", stat.S_IROTH)) if mode & bit
    ]
    if config.mqtt.password is None or not readers:
        return []
    return [
        _line(
            ("mqtt", "password"),
            f"{path} holds a password and {' and '.join(readers)} can read it "
            f"(mode {stat.S_IMODE(mode):04o}); chmod 600 {path}",
        )
    ]


# --- loading -----------------------------------------------------------------------------


class LoadedConfig(BaseModel):
    """A validated configuration, where it came from, and what looks wrong in it."""

    model_config = ConfigDict(frozen=True)

    config: GatewayConfig
    source: str
    sha256: str
    warnings: tuple[str, ...] = ()
    """'key.path: message' for what is valid but probably not meant (`run` logs them)."""

    @property
    def config_hash(self) -> str:
        return self.sha256[:12]


def load_config(path: str | Path) -> LoadedConfig:
    """Read and validate a TOML config file; raise ConfigError naming every problem."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
        mode = Path(path).stat().st_mode
    except OSError as err:
        raise ConfigError(source, [f"cannot read the file: {err.strerror or err}"]) from err
    loaded = parse_config(raw, source)
    extra = file_warnings(loaded.config, Path(path), mode)
    if not extra:
        return loaded
    return loaded.model_copy(update={"warnings": (*loaded.warnings, *extra)})


MAX_DEPTH = 16
"""Tables and arrays nested deeper than this are refused (a real config needs 6)."""


def parse_config(raw: bytes, source: str = "<config>") -> LoadedConfig:
    """Validate a TOML document; raise ConfigError naming every problem."""
    doc = _read_toml(raw, source)
    deep = _too_deep(doc)
    if deep is not None:
        where = _key_path(deep[:6]) + ("..." if len(deep) > 6 else "")
        raise ConfigError(source, [f"{where}: nested too deeply (more than {MAX_DEPTH} levels)"])
    duplicates = [_line(loc, reason) for loc, reason in raw_duplicate_names(doc)]
    try:
        config = GatewayConfig.model_validate(doc)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        # in the order of the file (pydantic's is the order of the models' fields)
        errors.sort(key=lambda e: _position(doc, _user_loc(e["loc"])))
        lines = _format_errors(errors)
        if not any(e["type"] == CROSS_CHECK for e in errors):
            lines += _partial_cross_checks(doc)  # the cross-checks did not run: run them here
        raise ConfigError(source, list(dict.fromkeys(duplicates + lines))) from err
    return LoadedConfig(
        config=config,
        source=source,
        sha256=hashlib.sha256(raw).hexdigest(),
        warnings=tuple(config_warnings(config)),
    )


def _read_toml(raw: bytes, source: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(source, [f"the file is not UTF-8 text: {err}"]) from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(source, [f"not valid TOML: {err}"]) from err
    except RecursionError as err:
        raise ConfigError(
            source, [f"not valid TOML: nested too deeply (more than {MAX_DEPTH} levels)"]
        ) from err
    except ValueError as err:  # an integer of more than 4300 digits
        digits = sys.get_int_max_str_digits()
        raise ConfigError(
            source,
            [f"not valid TOML: a number has more than {digits} digits"],
        ) from err


def _too_deep(doc: object) -> Loc | None:
    """The key path of a table or array nested deeper than MAX_DEPTH, or None."""
    stack: list[tuple[Loc, object]] = [((), doc)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, dict | list):
            if len(loc) > MAX_DEPTH:
                return loc
            pairs = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend(((*loc, key), item) for key, item in pairs)
    return None


_DEVICE: TypeAdapter[DeviceConfig] = TypeAdapter(DeviceConfig)
_ALARM: TypeAdapter[AlarmConfig] = TypeAdapter(AlarmConfig)


def _partial_cross_checks(doc: dict[str, Any]) -> list[str]:
    """The cross-checks on each device and alarm that is valid on its own."""

    def valid(items: object, adapter: TypeAdapter[Any]) -> tuple[list[tuple[int, Any]], set[str]]:
        good, bad = [], set()
        for i, item in enumerate(items if isinstance(items, list) else []):
            try:
                good.append((i, adapter.validate_python(item)))
            except ValidationError:
                name = item.get("name") if isinstance(item, dict) else None
                bad.add(name if isinstance(name, str) else "")
        return good, bad

    devices, broken = valid(doc.get("devices"), _DEVICE)
    alarms, _ = valid(doc.get("alarms"), _ALARM)
    # alarms are checked against the devices when every device has its name at least
    usable = isinstance(doc.get("devices"), list) and bool(doc["devices"]) and "" not in broken
    found = cross_check_problems(devices, alarms, unchecked=frozenset(broken) if usable else None)
    return [_line(loc, reason) for loc, reason in found]


def _position(doc: object, loc: Loc) -> tuple[int, ...]:
    """Where `loc` is in the document: the index of each key and item on the way (a key
    the file does not have sorts after its siblings)."""
    position = []
    node = doc
    for part in loc:
        if isinstance(node, dict) and part in node:
            position.append(list(node).index(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            position.append(part)
            node = node[part]
        else:
            position.append(1 << 30)
            break
    return tuple(position)


def format_validation_errors(err: ValidationError) -> list[str]:
    """Turn pydantic errors into 'devices[1].points[3].type: reason' lines."""
    return _format_errors(err.errors(include_url=False))


def _format_errors(errors: Iterable[Any]) -> list[str]:
    lines = []
    for e in errors:
        path = _key_path(e["loc"])
        if e["type"] in ("union_tag_invalid", "union_tag_not_found"):  # name the tag key
            tag_key = str((e.get("ctx") or {}).get("discriminator", "")).strip("'")
            path = f"{path}.{tag_key}" if path else tag_key
        lines.append(f"{path or '(top level)'}: {_reason(e)}")
    return lines


def _line(loc: Loc, reason: str) -> str:
    return f"{_key_path(loc) or '(top level)'}: {reason}"


_DEVICE_TAGS = frozenset({"modbus_tcp", "modbus_rtu_over_tcp", "modbus_rtu", "serial_line"})
_FRAMING_TAGS = frozenset({"delimiter", "fixed", "length_field"})
_PARSER_TAGS = frozenset({"regex", "delimited", "nmea", "binary"})
_ALARM_TAGS = frozenset({"threshold", "rate_of_rise"})


def _key_path(loc: Sequence[int | str]) -> str:
    """'devices[0].parser.fields.lat' from pydantic's location, without the names pydantic
    gives the members of a union (`serial_line`, `nmea`): the user never wrote those."""
    out = ""
    for part in _user_loc(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if _BARE_KEY.fullmatch(part) else shown(part)  # as TOML quotes it
            out += f".{key}" if out else key
    return out


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _user_loc(loc: Sequence[int | str]) -> Loc:
    """pydantic's location without the names of union members."""
    parts = list(loc)
    drop = set()
    if len(parts) > 2 and isinstance(parts[1], int):
        tags = {"devices": _DEVICE_TAGS, "alarms": _ALARM_TAGS}.get(str(parts[0]), frozenset())
        if parts[2] in tags:
            drop.add(2)
            inner = {"framing": _FRAMING_TAGS, "parser": _PARSER_TAGS}
            if (
                parts[0] == "devices"
                and len(parts) > 4
                and parts[4] in inner.get(str(parts[3]), frozenset())
            ):
                drop.add(4)
    return tuple(part for k, part in enumerate(parts) if k not in drop)


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


def _reason(e: Any) -> str:
    kind = e["type"]
    given = e.get("input")
    ctx = e.get("ctx") or {}
    if kind in (PROBLEM, CROSS_CHECK, "config_host"):
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
        return "unknown key (check the spelling; see config/example.toml)"
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


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, as committed in config/."""
    schema = GatewayConfig.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "edge-gateway configuration"
    return schema
