"""The simulator file: the devices `edge-gateway simulate` serves (docs/simulator.md).

A TOML file shaped like the gateway's config: a `[[devices]]` table per simulated
device, with the gateway's protocol names and keys where they mean the same thing,
so that a gateway config's device sections, given values, describe their simulators:

- `modbus_tcp`, `modbus_rtu_over_tcp`: a unit on a TCP port (`host`, `port`, `unit`);
  devices on the same host and port are units of one server (`port = 0`: a free port
  of the device's own, printed at start);
- `modbus_rtu`: a slave on a serial bus: a pseudo-terminal (`link` names it with a
  symlink), a real serial port (`port`), or a bus behind a simulated serial device
  server speaking RFC 2217 (`port = "rfc2217://HOST:PORT"`, served there); slaves
  naming the same `bus` (or the same `link` or `port`) share one line and its settings;
- `serial_line`: an instrument with its own line protocol, streaming or polled, its
  frames described by `frame` (drivers/sim/line_frames.py); on a pseudo-terminal, a
  real port, or behind a simulated serial device server (`port = "rfc2217://..."`).

A Modbus device's points are the gateway's point tables (table and address, or
`register`; type, byte order, scale, offset) plus `value` (drivers/sim/values.py),
the value the gateway should report; `profile = "<name>"` serves every point of a
shipped profile, `values` gives some of them values of their own. A point without a
value holds a plausible constant of its unit (drivers/sim/modbus_profile.py).

Loading validates the whole file and raises `ScenarioError` naming every problem at
its key path (`devices[2].points[0].value.period: ...`). `from_gateway_devices`
builds the scenario that serves exactly what a gateway config's devices read.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationError, model_validator

from drivers.core.config_types import (
    Duration,
    DurationOrZero,
    Float,
    Host,
    Int,
    Loc,
    Name,
    Problems,
    StrictModel,
    error_reason,
    path_text_problem,
    shown,
)
from drivers.modbus.config import (
    ModbusPointConfig,
    ModbusRtuDeviceConfig,
    ModbusRtuOverTcpDeviceConfig,
    ModbusTcpDeviceConfig,
    ProfileName,
    SerialUnit,
    load_profile,
)
from drivers.modbus.decode import ByteOrder, DataType
from drivers.serial_line.config import SerialLineDeviceConfig, mode_problems
from drivers.serial_port import is_rfc2217, rfc2217_line
from drivers.serial_port_config import SerialPortConfig
from drivers.sim.line_frames import (
    FrameConfig,
    NotInvertible,
    frame_fields,
    frame_for,
    frame_reads_back,
)
from drivers.sim.values import ConstantValueConfig, ValueConfig

__all__ = [
    "Endpoint",
    "ScenarioConfig",
    "ScenarioError",
    "from_gateway_devices",
    "load_scenario",
    "parse_scenario",
]


class ScenarioError(Exception):
    """A simulator file (or a gateway config) the simulator cannot serve; `problems`
    names each at its key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{listing}")


# --- points --------------------------------------------------------------------------------


class SimModbusPointConfig(ModbusPointConfig):
    """A gateway point table, and the value the device holds there."""

    value: ValueConfig | None = Field(
        None, description="the value read (after scale and offset); default: a plausible one"
    )


class SimLinePointConfig(StrictModel):
    name: Name
    field: str | None = Field(None, description="the frame field; defaults to the point name")
    type: Literal["float", "int", "bool", "string"] = "float"
    scale: Float = 1.0
    offset: Float = 0.0
    unit: str | None = None
    value: ValueConfig | None = Field(
        None, description="the value read (after scale and offset); default: a plausible one"
    )

    @property
    def field_name(self) -> str:
        return self.field or self.name


def _value_problem(value: ValueConfig | None, text: bool) -> str | None:
    """Why `value` cannot be a point's (`text`: a string point), or None."""
    if value is None:
        return None
    given = value.value if isinstance(value, ConstantValueConfig) else None
    if text and not isinstance(given, str):
        return 'a string point holds text: write value = "..."'
    if not text and isinstance(given, str):
        return f"{shown(given)} is text; this point holds a number"
    return None


# --- Modbus devices ------------------------------------------------------------------------


class _SimModbusDeviceConfig(StrictModel):
    name: Name
    byte_order: ByteOrder = Field(ByteOrder.ABCD, description="for the points without their own")
    profile: ProfileName | None = Field(
        None, description="serve every point of this shipped profile (config/profiles/)"
    )
    values: dict[str, ValueConfig] = Field(
        default_factory=dict, description="values of profile points, by point name"
    )
    points: list[SimModbusPointConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _points_and_values(self) -> _SimModbusDeviceConfig:
        problems = Problems()
        profile_points: list[str] = []
        if self.profile is not None:
            try:
                profile, _ = load_profile(self.profile)
            except ValueError as err:
                problems.add(("profile",), str(err))
            else:
                profile_points = [point.name for point in profile.points]
        elif not self.points:
            problems.add(("points",), "a device needs points, or a profile")
        for name, value in self.values.items():
            if self.profile is None:
                problems.add(("values",), "values are for a profile's points: set profile")
                break
            if name not in profile_points:
                reason = f"profile {self.profile!r} has no point {shown(name)}"
                problems.add(("values", name), reason)
            else:
                point = next(p for p in profile.points if p.name == name)
                wrong = _value_problem(value, point.type is DataType.STRING)
                if wrong:
                    problems.add(("values", name), wrong)
        seen = set(profile_points)
        for i, point in enumerate(self.points):
            if point.name in seen:
                problems.add(("points", i, "name"), f"point name {point.name!r} is used twice")
            seen.add(point.name)
            wrong = _value_problem(point.value, point.type is DataType.STRING)
            if wrong:
                problems.add(("points", i, "value"), wrong)
        problems.raise_any(self)
        return self

    def served_points(self) -> list[tuple[ModbusPointConfig, ValueConfig | None]]:
        """Every point served (the profile's first), and its value when given."""
        served: list[tuple[ModbusPointConfig, ValueConfig | None]] = []
        if self.profile is not None:
            profile, _ = load_profile(self.profile)
            served += [(point, self.values.get(point.name)) for point in profile.points]
        served += [(point, point.value) for point in self.points]
        return served

    @property
    def profile_byte_order(self) -> ByteOrder:
        """The byte order of the points without their own."""
        if self.profile is not None and "byte_order" not in self.model_fields_set:
            return load_profile(self.profile)[0].byte_order
        return self.byte_order


class SimTcpDeviceConfig(_SimModbusDeviceConfig):
    """A unit on a TCP port (Modbus TCP, or RTU frames over TCP)."""

    host: Host = Field("127.0.0.1", description="the address to listen on")
    port: Int = Field(ge=0, le=65535, description="the TCP port; 0: a free one, printed")


class SimModbusTcpDeviceConfig(SimTcpDeviceConfig):
    protocol: Literal["modbus_tcp"]
    unit: Int = Field(1, ge=0, le=255, description="Modbus unit id")


class SimModbusRtuOverTcpDeviceConfig(SimTcpDeviceConfig):
    protocol: Literal["modbus_rtu_over_tcp"]
    unit: SerialUnit = 1


class _SimSerialConfig(SerialPortConfig):
    """A line on a pseudo-terminal (default) or a real serial port."""

    port: str | None = Field(  # type: ignore[assignment]
        None, description="a real serial port to serve on; none: a pseudo-terminal"
    )
    link: str | None = Field(None, description="a symlink to the pseudo-terminal, made at start")

    @model_validator(mode="after")
    def _pty_or_port(self) -> _SimSerialConfig:
        problems = Problems()
        if self.port is not None and self.link is not None:
            problems.add(("link",), "link names a pseudo-terminal; a real port has its name")
        if self.link is not None:
            wrong = path_text_problem(self.link)
            if wrong:
                problems.add(("link",), wrong)
        problems.raise_any(self)
        return self

    @property
    def line_settings(self) -> tuple[int, int, str, int]:
        return (self.baudrate, self.bytesize, self.parity, self.stopbits)


class SimModbusRtuDeviceConfig(_SimModbusDeviceConfig, _SimSerialConfig):
    network_ports: ClassVar[bool] = True  # rfc2217://HOST:PORT: a device server served there

    protocol: Literal["modbus_rtu"]
    unit: SerialUnit = 1
    bus: Name | None = Field(
        None, description="slaves naming one bus share a line (default: its port, link or name)"
    )

    @property
    def bus_name(self) -> str:
        return self.bus or self.port or self.link or self.name


# --- line instruments ----------------------------------------------------------------------


class SimSerialLineDeviceConfig(_SimSerialConfig):
    """An instrument with its own line protocol."""

    network_ports: ClassVar[bool] = True  # rfc2217://HOST:PORT: a device server served there

    name: Name
    protocol: Literal["serial_line"]
    mode: Literal["streaming", "polled"] = "streaming"
    period: Duration = Field(1.0, description="streaming: a frame this often")
    poll_command: str | None = Field(None, description="polled: answer this (TOML escapes)")
    poll_command_hex: str | None = Field(None, description="polled: answer these bytes")
    reply_delay: DurationOrZero = Field(0.0, description="polled: answer this late")
    frame: FrameConfig
    points: list[SimLinePointConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _coherent(self) -> SimSerialLineDeviceConfig:
        problems = Problems()
        problems.extend(mode_problems(self.mode, self.poll_command, self.poll_command_hex))
        try:
            self.command_bytes()
        except ValueError as err:
            key = "poll_command_hex" if self.poll_command_hex is not None else "poll_command"
            problems.add((key,), str(err))
        try:
            carried = frame_fields(self.frame)
        except ValueError as err:
            problems.add(("frame", "template"), str(err))
            carried = None
        fields = [point.field_name for point in self.points]
        for i, point in enumerate(self.points):
            wrong = _value_problem(point.value, False) if point.type != "string" else None
            if wrong:
                problems.add(("points", i, "value"), wrong)
            if carried is not None and point.field_name not in carried:
                problems.add(
                    ("points", i, "field" if point.field else "name"),
                    f"the frame carries no field {point.field_name!r}; it carries "
                    f"{', '.join(map(repr, carried)) or 'none'}",
                )
        for name in carried or ():
            if name not in fields:
                where = "template" if self.frame.kind != "binary" else "fields"
                problems.add(("frame", where), f"no point reads the field {name!r}")
        problems.raise_any(self)
        return self

    def command_bytes(self) -> bytes | None:
        if self.poll_command_hex is not None:
            try:
                return bytes.fromhex(self.poll_command_hex)
            except ValueError:
                raise ValueError(f"{shown(self.poll_command_hex)} is not hex bytes") from None
        if self.poll_command is not None:
            try:
                return self.poll_command.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError("poll_command must be bytes 0-255 (\\xNN escapes)") from None
        return None


SimDeviceConfig = Annotated[
    SimModbusTcpDeviceConfig
    | SimModbusRtuOverTcpDeviceConfig
    | SimModbusRtuDeviceConfig
    | SimSerialLineDeviceConfig,
    Field(discriminator="protocol"),
]
SimModbusDevice = (
    SimModbusTcpDeviceConfig | SimModbusRtuOverTcpDeviceConfig | SimModbusRtuDeviceConfig
)
SimDevice = SimModbusDevice | SimSerialLineDeviceConfig


# --- the file --------------------------------------------------------------------------------


class SimulatorSectionConfig(StrictModel):
    seed: Int | None = Field(
        None, description="random values (noise, walks, garbage) repeat from run to run"
    )


@dataclass
class Endpoint:
    """Where devices are served: one TCP port, one bus, or one instrument's line."""

    kind: Literal["modbus_tcp", "modbus_rtu_over_tcp", "modbus_rtu", "serial_line"]
    key: str
    devices: list[tuple[int, SimDevice]] = field(default_factory=list)


class ScenarioConfig(StrictModel):
    simulator: SimulatorSectionConfig = SimulatorSectionConfig()
    devices: list[SimDeviceConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _cross_checks(self) -> ScenarioConfig:
        problems = Problems()
        names: dict[str, int] = {}
        for i, device in enumerate(self.devices):
            if device.name in names:
                reason = (
                    f"device name {device.name!r} is used twice (devices[{names[device.name]}])"
                )
                problems.add(("devices", i, "name"), reason)
            names.setdefault(device.name, i)
        for endpoint in self.endpoints():
            problems.extend(_endpoint_problems(endpoint))
        problems.extend(_shared_line_problems(self.devices))
        problems.raise_any(self)
        return self

    def endpoints(self) -> list[Endpoint]:
        """The devices grouped by where they are served, in the order of the file."""
        found: dict[str, Endpoint] = {}
        for i, device in enumerate(self.devices):
            if isinstance(device, SimTcpDeviceConfig):
                key = f"tcp {device.host}:{device.port}" if device.port else f"tcp #{i}"
            elif isinstance(device, SimModbusRtuDeviceConfig):
                key = f"bus {device.bus_name}"
            else:
                key = f"line {device.name}"
            endpoint = found.setdefault(key, Endpoint(device.protocol, key))
            endpoint.devices.append((i, device))
        return list(found.values())


def _endpoint_problems(endpoint: Endpoint) -> list[tuple[Loc, str]]:
    found: list[tuple[Loc, str]] = []
    first_index, first = endpoint.devices[0]
    units: dict[int, str] = {}
    for i, device in endpoint.devices:
        if device.protocol != first.protocol:
            found.append(
                (
                    ("devices", i, "protocol"),
                    f"{device.protocol} on {endpoint.key.split(' ', 1)[1]}, where "
                    f"{first.name!r} is {first.protocol}: one port speaks one framing",
                )
            )
            continue
        if isinstance(device, SimSerialLineDeviceConfig):
            continue
        if device.unit in units:
            reason = f"unit {device.unit} is {units[device.unit]!r} too, on the same line"
            found.append((("devices", i, "unit"), reason))
        units.setdefault(device.unit, device.name)
        if isinstance(device, SimModbusRtuDeviceConfig) and isinstance(
            first, SimModbusRtuDeviceConfig
        ):
            for key in ("port", "link", "baudrate", "bytesize", "parity", "stopbits"):
                mine, theirs = getattr(device, key), getattr(first, key)
                if mine != theirs and (key != "link" or None not in (mine, theirs)):
                    found.append(
                        (
                            ("devices", i, key),
                            f"{key} = {mine!r} here, {theirs!r} on {first.name!r} "
                            f"(devices[{first_index}]): slaves on bus {device.bus_name!r} share "
                            "one line",
                        )
                    )
    return found


def _shared_line_problems(devices: Sequence[SimDevice]) -> list[tuple[Loc, str]]:
    """A link or a real port used by two lines."""
    found: list[tuple[Loc, str]] = []
    owner: dict[tuple[str, str], tuple[str, str]] = {}
    for i, device in enumerate(devices):
        if not isinstance(device, _SimSerialConfig):
            continue
        line = device.bus_name if isinstance(device, SimModbusRtuDeviceConfig) else device.name
        for key in ("port", "link"):
            path = getattr(device, key)
            if path is None:
                continue
            if is_rfc2217(path):  # one server port, however the URL is written
                path = rfc2217_line(path)
            holder = owner.setdefault((key, path), (line, device.name))
            if holder[0] != line:
                reason = f"{path} is the {key} of {holder[1]!r} already; each line has its own"
                found.append((("devices", i, key), reason))
    return found


# --- loading ----------------------------------------------------------------------------------


def load_scenario(path: str | Path) -> ScenarioConfig:
    """Read and validate a simulator file; ScenarioError naming every problem."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ScenarioError(source, [f"cannot read the file: {err.strerror or err}"]) from err
    return parse_scenario(raw, source, Path(path).parent)


def parse_scenario(
    raw: bytes, source: str = "<simulator>", base_dir: Path = Path()
) -> ScenarioConfig:
    """Validate a simulator file's text (CSV files named in it are relative to base_dir)."""
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ScenarioError(source, [f"the file is not UTF-8 text: {err}"]) from err
    except (tomllib.TOMLDecodeError, RecursionError, ValueError) as err:
        raise ScenarioError(source, [f"not valid TOML: {err}"]) from err
    return validate_scenario(doc, source, base_dir)


def validate_scenario(
    doc: Mapping[str, Any], source: str = "<simulator>", base_dir: Path = Path()
) -> ScenarioConfig:
    try:
        return ScenarioConfig.model_validate(doc, context={"base_dir": base_dir})
    except ValidationError as err:
        errors = [(written_loc(doc, e), e) for e in err.errors(include_url=False)]
        errors.sort(key=lambda item: _position(doc, item[0]))  # in the order of the file
        lines = [
            f"{_key_path(loc) or '(top level)'}: {error_reason(e, keys=KEYS)}" for loc, e in errors
        ]
        raise ScenarioError(source, list(dict.fromkeys(lines))) from err


def written_loc(doc: object, error: Any) -> Loc:
    """The keys the file writes for a pydantic error's location: without the names pydantic
    gives the members of a union (`modbus_tcp`, `sine`, `float`), which the file never
    wrote, and with the tag's key for a tag that names no member (`protocol`, `kind`)."""
    parts = list(error["loc"])
    out: list[str | int] = []
    node: object = doc
    for k, part in enumerate(parts):
        if isinstance(node, dict):
            if part not in node and k < len(parts) - 1:
                continue  # a union member's name
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            break  # a value checked against each member of a union
        out.append(part)
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        out.append(str((error.get("ctx") or {}).get("discriminator", "")).strip("'"))
    return tuple(out)


def _position(doc: object, loc: Loc) -> tuple[int, ...]:
    """Where `loc` is in the file: the index of each key and item on the way."""
    position = []
    node = doc
    for part in loc:
        if isinstance(node, dict) and part in node:
            position.append(list(node).index(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            position.append(part)
            node = node[part]
        else:
            position.append(1 << 30)
            break
    return tuple(position)


def _key_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


KEYS = "docs/simulator.md lists every key"  # where an unknown key's reader looks


# --- what a gateway config reads ---------------------------------------------------------------


def from_gateway_devices(devices: Sequence[object], source: str = "<config>") -> ScenarioConfig:
    """The scenario that serves what these gateway device sections read: each device on its
    host and port, each serial port a pseudo-terminal linked at the config's port path,
    every point with a plausible value. ScenarioError names the devices it cannot serve."""
    sections: list[dict[str, Any]] = []
    problems: list[str] = []
    for i, device in enumerate(devices):
        try:
            sections.append(_section(device))
        except NotInvertible as err:
            problems.append(
                f"devices[{i}].parser: the simulator cannot write the frames of "
                f"{getattr(device, 'name', '?')!r}: {err}; describe it in a simulator file"
            )
        except TypeError as err:
            problems.append(f"devices[{i}].protocol: {err}")
    if problems:
        raise ScenarioError(source, problems)
    scenario = validate_scenario({"devices": sections}, source)
    for i, (device, simulated) in enumerate(zip(devices, scenario.devices, strict=True)):
        if isinstance(device, SerialLineDeviceConfig):
            assert isinstance(simulated, SimSerialLineDeviceConfig)
            sample = {p.field_name: _sample(p.type) for p in simulated.points}
            wrong = frame_reads_back(simulated.frame, device.framing, device.parser, sample)
            if wrong:
                problems.append(
                    f"devices[{i}].parser: the simulator cannot write frames of {device.name!r} "
                    f"that the gateway reads ({wrong}); describe it in a simulator file"
                )
    if problems:
        raise ScenarioError(source, problems)
    return scenario


def _sample(kind: str) -> Any:
    return {"float": 12.5, "int": 7, "bool": True, "string": "x"}.get(kind, 1)


_POINT_KEYS = (
    "name",
    "table",
    "address",
    "type",
    "byte_order",
    "bit",
    "length",
    "scale",
    "offset",
    "unit",
)


def _section(device: object) -> dict[str, Any]:
    if isinstance(
        device, ModbusTcpDeviceConfig | ModbusRtuOverTcpDeviceConfig | ModbusRtuDeviceConfig
    ):
        section: dict[str, Any] = {
            "name": device.name,
            "protocol": device.protocol,
            "unit": device.unit,
            "byte_order": device.byte_order.value,
            "points": [
                point.model_dump(mode="json", include=set(_POINT_KEYS), exclude_none=True)
                for point in device.points
            ],
        }
        if isinstance(device, ModbusRtuDeviceConfig):
            return section | _serial_keys(device)
        return section | {"host": device.host, "port": device.port}
    if isinstance(device, SerialLineDeviceConfig):
        types = {point.field or point.name: point.type for point in device.points}
        section = {
            "name": device.name,
            "protocol": "serial_line",
            "mode": device.mode,
            "frame": frame_for(device.framing, device.parser, types),
            "points": [
                point.model_dump(
                    mode="json",
                    include={"name", "field", "type", "scale", "offset", "unit"},
                    exclude_none=True,
                )
                for point in device.points
            ],
        } | _serial_keys(device)
        if device.mode == "streaming":
            section["period"] = f"{max(device.stale_after / 10, 0.001):.3f}s"
        elif device.poll_command_hex is not None:
            section["poll_command_hex"] = device.poll_command_hex
        else:
            section["poll_command"] = device.poll_command
        return section
    raise TypeError(f"the simulator does not serve {type(device).__name__}")


def _serial_keys(device: SerialPortConfig) -> dict[str, Any]:
    """A pseudo-terminal linked where the config names its port (a pty carries 8N1), or
    a serial device server where it names one (its bus at the config's settings)."""
    if is_rfc2217(device.port):
        settings = ("baudrate", "bytesize", "parity", "stopbits")
        return {"port": device.port} | {key: getattr(device, key) for key in settings}
    return {"link": device.port, "baudrate": device.baudrate}
