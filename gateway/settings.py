"""Configuration: one TOML file, validated by pydantic models before anything starts.

Unknown keys are errors; durations carry units ("500ms", "5s", "2m"); sizes carry
units ("64MB"). `load_config` returns a validated `GatewayConfig` or raises
`ConfigError` listing every problem as `key.path[index]: reason`.
The JSON Schema in `config/edge-gateway.schema.json` is generated from these models
(`edge-gateway schema`); a test fails when it is stale.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from drivers.modbus.decode import ByteOrder, DataType, Table, register_count
from gateway.config_types import (
    Duration,
    DurationOrZero,
    Name,
    Size,
    StrictModel,
    name_problem,
)
from gateway.errors import ConfigError
from gateway.pipeline.filters import ProcessingSpec
from gateway.uplink.config import MqttConfig

# --- sections ----------------------------------------------------------------------------


class GatewaySectionConfig(StrictModel):
    id: Name = Field(description="Gateway id; part of every topic and every batch")
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class BufferConfig(StrictModel):
    """The durable queue on disk (buffer/DESIGN.md has the contract)."""

    path: Path = Path("/var/lib/edge-gateway/buffer.db")
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
        256_000_000, ge=1_000_000, description="byte bound (at least 1MB); oldest evicted first"
    )


class BatchConfig(StrictModel):
    max_readings: int = Field(500, ge=1, le=100_000)
    max_age: Duration = Field(
        5.0, description="a batch is closed at most this long after its first reading"
    )


AggregateFunction = Literal["min", "max", "mean", "count", "last"]
AGGREGATE_FUNCTIONS: tuple[AggregateFunction, ...] = ("min", "max", "mean", "count", "last")


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


class ProcessingConfig(StrictModel):
    """Local processing of one point (gateway/pipeline/filters.py has the exact rules)."""

    min: float | None = Field(None, description="plausible range: below is flagged out_of_range")
    max: float | None = Field(None, description="plausible range: above is flagged out_of_range")
    spike_max_rate: float | None = Field(
        None, gt=0, description="units per second; faster changes are spikes"
    )
    spike_action: Literal["flag", "drop"] = "flag"
    smoothing: Literal["mean", "median"] | None = None
    smoothing_samples: int = Field(5, ge=1, le=1000)
    deadband: float | None = Field(None, ge=0, description="send only changes larger than this")
    deadband_percent: float | None = Field(None, ge=0, le=1000)
    heartbeat: Duration | None = Field(
        None, description="with a deadband: resend at least this often"
    )
    aggregate: Duration | None = Field(None, description="send min/max/mean/count/last per window")
    aggregate_functions: list[AggregateFunction] = Field(
        default_factory=lambda: list(AGGREGATE_FUNCTIONS), min_length=1
    )

    @model_validator(mode="after")
    def _coherent(self) -> ProcessingConfig:
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"min {self.min} must be below max {self.max}")
        if self.deadband is not None and self.deadband_percent is not None:
            raise ValueError("set deadband or deadband_percent, not both")
        if self.heartbeat is not None and self.deadband is None and self.deadband_percent is None:
            raise ValueError("heartbeat goes with a deadband (without one every value is sent)")
        self.spec()  # the processor's own checks, e.g. no deadband before an aggregation
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


class ModbusPointConfig(StrictModel):
    name: Name
    table: Table = Table.HOLDING
    address: int = Field(ge=0, le=65535)
    type: DataType = DataType.UINT16
    byte_order: ByteOrder | None = Field(None, description="defaults to the device's byte_order")
    bit: int | None = Field(None, ge=0, le=15, description="bit index for type 'bit'")
    length: int | None = Field(None, ge=1, le=125, description="registers for type 'string'")
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = Field(None, description="engineering unit, for people (e.g. 'bar')")
    process: ProcessingConfig | None = None

    @model_validator(mode="after")
    def _type_fits_table(self) -> ModbusPointConfig:
        bit_table = self.table in (Table.COIL, Table.DISCRETE_INPUT)
        if bit_table and self.type is not DataType.BOOL:
            raise ValueError(
                f"type '{self.type}' cannot be read from table '{self.table}': coils and "
                "discrete inputs hold single bits, use type 'bool'"
            )
        if not bit_table and self.type is DataType.BOOL:
            raise ValueError(
                f"type 'bool' reads coils and discrete inputs; for one bit of a "
                f"{self.table} register use type 'bit' with bit = 0..15"
            )
        if (self.type is DataType.BIT) != (self.bit is not None):
            raise ValueError("type 'bit' needs bit = 0..15, and bit is only for type 'bit'")
        if (self.type is DataType.STRING) != (self.length is not None):
            raise ValueError("type 'string' needs length (in registers), and only strings take it")
        last = self.address + (register_count(self.type, self.length) if not bit_table else 1) - 1
        if last > 65535:
            raise ValueError(f"the point runs past address 65535 (ends at {last})")
        return self


class _ModbusDeviceConfig(StrictModel):
    """What every Modbus device has, whatever the transport."""

    name: Name
    unit: int = Field(1, ge=0, le=255, description="Modbus unit id (slave id)")
    poll_interval: Duration = 1.0
    timeout: Duration = 1.0
    retries: int = Field(1, ge=0, le=10, description="extra attempts of a failed request per cycle")
    backoff_max: Duration = Field(
        60.0, description="longest wait between attempts to an offline device"
    )
    byte_order: ByteOrder = ByteOrder.ABCD
    max_gap: int = Field(8, ge=0, le=124, description="unused registers a request may read across")
    max_gap_bits: int = Field(
        64, ge=0, le=1999, description="unused coils/inputs a request may read across"
    )
    points: list[ModbusPointConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_point_names(self) -> _ModbusDeviceConfig:
        _require_unique([p.name for p in self.points], "points", "point name")
        return self


class ModbusTcpDeviceConfig(_ModbusDeviceConfig):
    protocol: Literal["modbus_tcp"]
    host: str
    port: int = Field(502, ge=1, le=65535)


class ModbusRtuOverTcpDeviceConfig(_ModbusDeviceConfig):
    """Modbus RTU frames carried over TCP by a serial device server."""

    protocol: Literal["modbus_rtu_over_tcp"]
    host: str
    port: int = Field(4001, ge=1, le=65535)


class SerialPortConfig(StrictModel):
    """Line settings of a serial port (RS-485 / RS-232)."""

    port: str = Field(description="serial device, e.g. /dev/ttyUSB0 or /dev/ttyAMA0")
    baudrate: int = Field(9600, ge=50, le=4_000_000)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1

    def line_settings(self) -> tuple[int, int, str, int]:
        return (self.baudrate, self.bytesize, self.parity, self.stopbits)


class ModbusRtuDeviceConfig(_ModbusDeviceConfig, SerialPortConfig):
    """A Modbus RTU slave on a serial bus; slaves on the same port share the bus."""

    protocol: Literal["modbus_rtu"]
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
        raise ValueError(f"{key} {value!r} is not hex bytes, e.g. 'AA55'") from None
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
    max_length: int = Field(1024, ge=2, le=65536)


class FixedFramingConfig(StrictModel):
    """Frames of a fixed number of bytes, optionally beginning with sync bytes."""

    kind: Literal["fixed"]
    length: int = Field(ge=1, le=65536)
    sync_hex: str | None = Field(None, description="e.g. 'AA55'")


class LengthFieldFramingConfig(StrictModel):
    """start bytes, a length field, the payload (and checksum, end bytes)."""

    kind: Literal["length_field"]
    start_hex: str = Field(description="e.g. 'AA55'")
    length_offset: int = Field(ge=0, le=64, description="bytes from the frame start")
    length_size: Literal[1, 2] = 1
    byteorder: Literal["big", "little"] = "big"
    length_adjust: int = Field(
        0, ge=-64, le=64, description="bytes the length field does not count (checksum, end)"
    )
    end_hex: str | None = None
    max_length: int = Field(1024, ge=2, le=65536)


class RegexParserConfig(StrictModel):
    kind: Literal["regex"]
    pattern: str = Field(description="named groups become fields, e.g. 'CH4=(?P<ch4>[-\\d.]+)'")
    encoding: str = "ascii"


class DelimitedParserConfig(StrictModel):
    kind: Literal["delimited"]
    fields: list[str] = Field(min_length=1, description="field names in order; '' skips one")
    separator: str = Field(",", min_length=1)
    encoding: str = "ascii"


class NmeaParserConfig(StrictModel):
    kind: Literal["nmea"]
    sentence: str | None = Field(None, description="e.g. 'GGA' (any talker); others are skipped")
    fields: dict[str, int] = Field(default_factory=dict, description="name -> comma index")
    coordinates: dict[str, tuple[int, int]] = Field(
        default_factory=dict, description="name -> [value index, hemisphere index]"
    )
    require_checksum: bool = True


class BinaryParserConfig(StrictModel):
    kind: Literal["binary"]
    layout: str = Field(description="struct layout with byte order, e.g. '>HhI'")
    fields: list[str] = Field(min_length=1, description="names of the unpacked values; '' skips")
    offset: int = Field(0, ge=0, description="where the layout starts in the frame")
    checksum: Literal["crc16_modbus", "crc16_ccitt", "xor8"] | None = None
    checksum_start: int = Field(0, ge=0, description="first byte the checksum covers")


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
    scale: float = 1.0
    offset: float = 0.0
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
    framing: FramingConfig
    parser: ParserConfig
    points: list[SerialLinePointConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _coherent(self) -> SerialLineDeviceConfig:
        _require_unique([p.name for p in self.points], "points", "point name")
        has_command = self.poll_command is not None or self.poll_command_hex is not None
        if self.mode == "polled" and not has_command:
            raise ValueError("mode 'polled' needs poll_command or poll_command_hex")
        if self.mode == "streaming" and has_command:
            raise ValueError("poll_command is only for mode 'polled'")
        if self.poll_command is not None and self.poll_command_hex is not None:
            raise ValueError("set poll_command or poll_command_hex, not both")
        from drivers.serial_line.build import build_framer, build_parser

        build_framer(self.framing)  # raises ValueError with the reason
        build_parser(self.parser)
        return self

    def command_bytes(self) -> bytes | None:
        if self.poll_command_hex is not None:
            return _hex_bytes(self.poll_command_hex, "poll_command_hex")
        if self.poll_command is not None:
            return _text_bytes(self.poll_command, "poll_command")
        return None


DeviceConfig = Annotated[
    ModbusTcpDeviceConfig
    | ModbusRtuOverTcpDeviceConfig
    | ModbusRtuDeviceConfig
    | SerialLineDeviceConfig,
    Field(discriminator="protocol"),
]


Severity = Literal["info", "warning", "critical"]


class ThresholdAlarmConfig(StrictModel):
    """Raise when a point is above `high` (or below `low`) for `on_delay`."""

    name: Name
    kind: Literal["threshold"]
    device: str
    point: str
    high: float | None = None
    low: float | None = None
    hysteresis: float = Field(0.0, ge=0, description="clear only this far back inside the limit")
    on_delay: DurationOrZero = 0.0
    off_delay: DurationOrZero = 0.0
    severity: Severity = "warning"

    @model_validator(mode="after")
    def _limits(self) -> ThresholdAlarmConfig:
        if self.high is None and self.low is None:
            raise ValueError("a threshold alarm needs high, low or both")
        if self.high is not None and self.low is not None and self.low >= self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        return self


class RateOfRiseAlarmConfig(StrictModel):
    """Raise when a point rises more than `max_rise` within `per` (a flood gauge)."""

    name: Name
    kind: Literal["rate_of_rise"]
    device: str
    point: str
    max_rise: float = Field(gt=0)
    per: Duration
    on_delay: DurationOrZero = 0.0
    off_delay: DurationOrZero = 0.0
    severity: Severity = "warning"


AlarmConfig = Annotated[ThresholdAlarmConfig | RateOfRiseAlarmConfig, Field(discriminator="kind")]


class GatewayConfig(StrictModel):
    """The whole configuration file."""

    gateway: GatewaySectionConfig
    mqtt: MqttConfig = MqttConfig()
    buffer: BufferConfig = BufferConfig()
    batch: BatchConfig = BatchConfig()
    devices: list[DeviceConfig] = Field(min_length=1)
    alarms: list[AlarmConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _alarms_name_real_points(self) -> GatewayConfig:
        _require_unique([a.name for a in self.alarms], "alarms", "alarm name")
        points = {d.name: {p.name for p in d.points} for d in self.devices}
        for i, alarm in enumerate(self.alarms):
            if alarm.device not in points:
                raise ValueError(f"alarms[{i}]: there is no device {alarm.device!r}")
            if alarm.point not in points[alarm.device]:
                raise ValueError(
                    f"alarms[{i}]: device {alarm.device!r} has no point {alarm.point!r}"
                )
        return self

    @model_validator(mode="after")
    def _unique_device_names(self) -> GatewayConfig:
        _require_unique([d.name for d in self.devices], "devices", "device name")
        return self

    @model_validator(mode="after")
    def _shared_lines_agree(self) -> GatewayConfig:
        """Devices on one serial port or one host:port share a line: they must agree on it."""
        owners: dict[object, tuple[int, str, object]] = {}
        for i, dev in enumerate(self.devices):
            if isinstance(dev, SerialPortConfig):
                key: object = ("serial", dev.port)
                kind = "serial_line" if isinstance(dev, SerialLineDeviceConfig) else "modbus_rtu"
                settings: object = dev.line_settings()
            else:
                key = ("tcp", dev.host, dev.port)
                kind, settings = dev.protocol, None
            if key not in owners:
                owners[key] = (i, kind, settings)
                continue
            first, first_kind, first_settings = owners[key]
            where = dev.port if isinstance(dev, SerialPortConfig) else f"{dev.host}:{dev.port}"
            if kind != first_kind or kind == "serial_line":
                raise ValueError(
                    f"devices[{i}] and devices[{first}] both use {where}: only Modbus devices "
                    "of one protocol can share a port"
                )
            if settings != first_settings:
                raise ValueError(
                    f"devices[{i}] and devices[{first}] share the bus on {where} but their "
                    "line settings (baudrate, bytesize, parity, stopbits) differ"
                )
        return self


def _require_unique(names: list[str], where: str, what: str) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(
                f"{what} {name!r} is used twice ({where}[{seen[name]}] and {where}[{i}])"
            )
        seen[name] = i


# --- loading -----------------------------------------------------------------------------


class LoadedConfig(BaseModel):
    """A validated configuration and where it came from."""

    model_config = ConfigDict(frozen=True)

    config: GatewayConfig
    source: str
    sha256: str

    @property
    def config_hash(self) -> str:
        return self.sha256[:12]


def load_config(path: str | Path) -> LoadedConfig:
    """Read and validate a TOML config file; raise ConfigError naming every problem."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(source, [f"cannot read the file: {err.strerror}"]) from err
    return parse_config(raw, source)


def parse_config(raw: bytes, source: str = "<config>") -> LoadedConfig:
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(source, [f"the file is not UTF-8 text: {err}"]) from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(source, [f"not valid TOML: {err}"]) from err
    try:
        config = GatewayConfig.model_validate(doc)
    except ValidationError as err:
        raise ConfigError(source, format_validation_errors(err)) from err
    return LoadedConfig(config=config, source=source, sha256=hashlib.sha256(raw).hexdigest())


def format_validation_errors(err: ValidationError) -> list[str]:
    """Turn pydantic errors into 'devices[1].points[3].type: reason' lines."""
    lines = []
    for e in err.errors(include_url=False):
        path = _key_path(e["loc"])
        if e["type"] in ("union_tag_invalid", "union_tag_not_found"):  # name the tag key
            tag_key = str((e.get("ctx") or {}).get("discriminator", "")).strip("'")
            path = f"{path}.{tag_key}" if path else tag_key
        lines.append(f"{path or '(top level)'}: {_reason(e)}")
    return lines


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS:  # pydantic names the union member; the user never wrote it
            continue
        else:
            out += f".{part}" if out else part
    return out


_UNION_TAGS = {
    "modbus_tcp",
    "modbus_rtu_over_tcp",
    "modbus_rtu",
    "serial_line",
    "delimiter",
    "fixed",
    "length_field",
    "regex",
    "delimited",
    "nmea",
    "binary",
    "threshold",
    "rate_of_rise",
}


def _reason(e: Any) -> str:
    kind = e["type"]
    given = e.get("input")
    ctx = e.get("ctx") or {}
    if kind in ("enum", "literal_error"):
        return f"{given!r} is not one of {ctx.get('expected', '')}"
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see config/example.toml)"
    if kind in ("missing", "union_tag_not_found"):
        return "required key is missing"
    if kind == "union_tag_invalid":
        return f"{ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}"
    named = name_problem(e)
    if named is not None:
        return named
    message: str = e["msg"]
    message = message.removeprefix("Value error, ")
    if given is not None and not isinstance(given, dict | list) and kind != "value_error":
        message = f"{message} (got {given!r})"
    return message


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, as committed in config/."""
    schema = GatewayConfig.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "edge-gateway configuration"
    return schema
