"""Configuration: one TOML file, validated by pydantic models before anything starts.

Unknown keys are errors; durations carry units ("500ms", "5s", "2m"); sizes carry
units ("64MB"); numbers, booleans and text are never converted into each other
(drivers/core/config_types.py). `load_config` returns a validated `GatewayConfig` with
its warnings, or raises `ConfigError` listing every problem as
`key.path[index]: reason`, in this order:

1. names used twice (device names, point names of a device, alarm names), found on
   the TOML document itself, so that they are named even when the rest is broken;
2. the problems of single keys and sections (types, ranges, coherence);
3. the cross-checks between sections (alarms naming real points, a port carrying one
   protocol, and each protocol's own checks across its devices: slaves sharing a bus
   agreeing on it), run on every device and alarm that is valid on its own.

The device sections belong to the protocols: each `drivers/<protocol>/config.py` has
its models, and [[devices]] is the union of those of every plugin in
drivers/registry.py. This module owns the other sections ([gateway], [buffer],
[batch], [[alarms]]; [mqtt] is gateway/uplink/config.py), loading, the checks between
sections and the wording of every problem.

Warnings are for configs that are valid but probably not what was meant (each
protocol's: a timeout as long as the poll interval, a datasheet register number, a
serial port that is not there, an RS-485 bus with more traffic than line time; and
a password anyone can read); each is `key.path: message`, in `LoadedConfig.warnings`,
in the order of the devices.

The JSON Schema in `config/edge-gateway.schema.json` is generated from these models
(`edge-gateway schema`); a test fails when it is stale.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import operator
import pickle
import re
import stat
import sys
import tomllib
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path, PosixPath, PurePath
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from drivers.base import DeviceSettings, Problem
from drivers.core.config_types import (
    CROSS_CHECK,
    Duration,
    DurationOrZero,
    Float,
    Int,
    Loc,
    Name,
    Problems,
    Size,
    StrictModel,
    error_reason,
    path_text_problem,
    shown,
)
from drivers.registry import PLUGINS, by_plugin, plugin_of, protocol_plugins
from gateway.errors import ConfigError
from gateway.loaded import ConfigRecord, LoadedConfig
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
    write: Literal["unacked", "all"] = Field(
        "unacked",
        description="unacked: a closed batch is published from memory at once and written "
        "to disk only if the broker has not acknowledged it when its first reading is "
        "[batch] max_age old (few SD-card writes while the link is up; a power cut loses at "
        "most max_age of readings); all: every batch is written to disk as it closes, then "
        "published",
    )
    commit_interval: DurationOrZero = Field(
        0.0,
        description='with write = "all": closed batches wait this long to share one '
        "commit (fewer SD-card writes; a power cut can lose that much more)",
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

    @model_validator(mode="after")
    def _commit_interval_goes_with_write_all(self) -> BufferConfig:
        if not self.commit_interval or self.write == "all":
            return self
        if "write" in self.model_fields_set:
            raise ValueError(
                'commit_interval applies only with write = "all" (with "unacked", the '
                "batches the broker has not acknowledged are written together when the "
                'first of them is [batch] max_age old); set write = "all", or remove '
                "commit_interval"
            )
        # A config from before `write` existed: it keeps what it chose (config_warnings
        # says so; the field stays "not set by the file" for that).
        object.__setattr__(self, "write", "all")
        return self

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


class CommandsConfig(StrictModel):
    """Signed remote commands (docs/operations.md)."""

    enabled: bool = Field(
        True,
        description="subscribe to {prefix}/{id}/cmd/+ and carry out commands signed by a "
        "trusted key; false: subscribe to nothing",
    )
    trusted_keys: Path = Field(
        Path("/etc/edge-gateway/trusted-keys"),
        description="directory of trusted public keys, one <key id>.pub per key (read "
        "again at every reload); missing: every command is refused",
    )
    window: Duration = Field(
        300.0,
        le=3600.0,
        description="a command is accepted this long either side of its issued_at",
    )
    log_level_max: Duration = Field(
        3600.0,
        description="the log-level command changes the level for at most this long",
    )


class BatchConfig(StrictModel):
    max_readings: Int = Field(500, ge=1, le=100_000)
    max_age: Duration = Field(
        5.0, description="a batch is closed at most this long after its first reading"
    )
    idle: DurationOrZero = Field(
        0.02,
        le=60.0,
        description="a batch is closed once no reading has come for this long (a poll "
        "cycle is over: its readings leave at once); 0: only max_readings and max_age close "
        "batches",
    )


# --- devices: the union of every protocol's models ---------------------------------------------

_DEVICE_MODELS: tuple[type[BaseModel], ...] = tuple(
    model for plugin in PLUGINS for model in plugin.configs
)
# pydantic validates [[devices]] as the union of every plugin's models, told apart by
# `protocol`; the type checker knows a device as what the gateway reads of any of them.
if TYPE_CHECKING:
    DeviceConfig = DeviceSettings
else:
    DeviceConfig = Annotated[
        functools.reduce(operator.or_, _DEVICE_MODELS), Field(discriminator="protocol")
    ]


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


class GatewayConfig(StrictModel):
    """The whole configuration file."""

    gateway: GatewaySectionConfig
    mqtt: MqttConfig = MqttConfig()
    buffer: BufferConfig = BufferConfig()
    batch: BatchConfig = BatchConfig()
    commands: CommandsConfig = CommandsConfig()
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
    clashes, clashing = _one_protocol_per_line(device_list)
    protocols = by_plugin((i, dev) for i, dev in device_list if i not in clashing)
    found += _in_device_order(clashes + [p for plugin, own in protocols for p in plugin.check(own)])
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


_SHARERS = " or ".join(plugin.title for plugin in PLUGINS if plugin.shares_lines)


def _one_protocol_per_line(
    devices: Sequence[tuple[int, DeviceConfig]],
) -> tuple[list[Problem], set[int]]:
    """Devices on one serial port or one host:port share a line: only devices of one
    protocol whose plugin lets them share may. The problems, and the devices that clash
    (their protocol's own checks leave them out: the clash is what to fix first)."""
    owners: dict[str, tuple[int, DeviceConfig]] = {}
    found: list[Problem] = []
    clashing: set[int] = set()
    for i, dev in devices:
        first, first_dev = owners.setdefault(dev.line, (i, dev))
        if first == i:
            continue
        if dev.protocol != first_dev.protocol or not plugin_of(dev.protocol).shares_lines:
            found.append(
                (
                    ("devices", i, "port"),
                    f"devices[{i}] and devices[{first}] both use {dev.line}: only {_SHARERS} "
                    "devices of one protocol can share a port",
                )
            )
            clashing.add(i)
    return found, clashing


def _in_device_order(found: list[Problem]) -> list[Problem]:
    """Problems about devices ordered by device, each device's in the order found."""

    def device(problem: Problem) -> int:
        loc = problem[0]
        return loc[1] if loc[:1] == ("devices",) and isinstance(loc[1], int) else -1

    return sorted(found, key=device)


# --- warnings -------------------------------------------------------------------------------


def config_warnings(config: GatewayConfig) -> list[str]:
    """What is valid but probably not what was meant, as 'key.path: message' lines, in
    the order of the devices (each protocol says what it finds questionable)."""
    found = [
        warning
        for plugin, own in by_plugin(enumerate(config.devices))
        for warning in plugin.warn(own)
    ]
    lines = [_line(loc, message) for loc, message in _in_device_order(found)]
    buffer = config.buffer
    if buffer.commit_interval and "write" not in buffer.model_fields_set:
        lines.insert(
            0,
            _line(
                ("buffer", "commit_interval"),
                'implies write = "all": every batch is written to disk before it is '
                "published, as before write existed; remove commit_interval to have "
                "batches published first and written only if the broker has not "
                "acknowledged them within [batch] max_age (far fewer SD-card writes)",
            ),
        )
    return lines


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


def load_config(path: str | Path) -> LoadedConfig[GatewayConfig]:
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
    return dataclasses.replace(loaded, warnings=(*loaded.warnings, *extra))


MAX_DEPTH = 16
"""Tables and arrays nested deeper than this are refused (a real config needs 6)."""


def parse_config(raw: bytes, source: str = "<config>") -> LoadedConfig[GatewayConfig]:
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
        plugins=protocol_plugins(),
        devices_meta=tuple(_as_json(d) for d in config.devices),
    )


def _as_json(device: DeviceSettings) -> dict[str, Any]:
    assert isinstance(device, BaseModel)  # every device config is one (the plugins' models)
    return device.model_dump(mode="json", exclude_none=True)


def as_records(loaded: LoadedConfig[GatewayConfig]) -> LoadedConfig[GatewayConfig]:
    """`loaded` with its config as `ConfigRecord`s, for the daemon (gateway/loaded.py)."""
    return dataclasses.replace(loaded, config=_record(loaded.config))


def load_for_daemon(path: str, source: str, raw: bool) -> None:
    """The child's side of `load_apart` (gateway/loaded.py): validate, and write the
    pickled records (or the ConfigError) to stdout, which carries nothing else."""
    out, sys.stdout = sys.stdout.buffer, sys.stderr  # a library's print cannot garble it
    try:
        read = parse_config(sys.stdin.buffer.read(), source or path) if raw else load_config(path)
        answer: object = as_records(read)
    except ConfigError as err:
        answer = err
    out.write(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
    out.flush()


_PLAIN = (str, int, float, bool, bytes, type(None))


def _record(value: Any) -> Any:
    """The value as the daemon's unpickler takes it (gateway/loaded.py: `_Unpickler`)."""
    if isinstance(value, BaseModel):
        fields = {name: _record(getattr(value, name)) for name in type(value).model_fields}
        return ConfigRecord(type(value).__name__, fields)
    if isinstance(value, list | tuple):
        return type(value)(_record(v) for v in value)
    if isinstance(value, dict):
        return {_record(k): _record(v) for k, v in value.items()}
    if isinstance(value, enum.Enum) and type(value).__module__.startswith(("drivers.", "gateway.")):
        return value
    if type(value) in _PLAIN:
        return value
    if isinstance(value, PurePath):
        return PosixPath(value)
    raise TypeError(f"a config holds a {type(value).__name__}, which a record cannot carry")


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
        lines.append(f"{path or '(top level)'}: {error_reason(e, keys='see config/example.toml')}")
    return lines


def _line(loc: Loc, reason: str) -> str:
    return f"{_key_path(loc) or '(top level)'}: {reason}"


def _tags_of(members: Iterable[type[BaseModel]], key: str) -> frozenset[str]:
    """The values of the tag `key` of a discriminated union's members."""
    return frozenset(
        tag for member in members for tag in typing.get_args(member.model_fields[key].annotation)
    )


def _inner_tags() -> dict[str, frozenset[str]]:
    """The tags of each discriminated union inside a device ('framing': {'delimiter', ...})."""
    tags: dict[str, frozenset[str]] = {}
    for model in _DEVICE_MODELS:
        for name, info in model.model_fields.items():
            if isinstance(info.discriminator, str):
                members = typing.get_args(info.annotation)
                tags[name] = tags.get(name, frozenset()) | _tags_of(members, info.discriminator)
    return tags


# pydantic names the member of a discriminated union in an error's location
# (devices[0].serial_line.parser.nmea.fields); the user never wrote those names.
_DEVICE_TAGS = _tags_of(_DEVICE_MODELS, "protocol")
_INNER_TAGS = _inner_tags()
_ALARM_TAGS = _tags_of(typing.get_args(typing.get_args(AlarmConfig)[0]), "kind")


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
            if (
                parts[0] == "devices"
                and len(parts) > 4
                and parts[4] in _INNER_TAGS.get(str(parts[3]), frozenset())
            ):
                drop.add(4)
    return tuple(part for k, part in enumerate(parts) if k not in drop)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, as committed in config/."""
    schema = GatewayConfig.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "edge-gateway configuration"
    return schema
