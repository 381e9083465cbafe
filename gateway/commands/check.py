"""`edge-gateway check -c FILE`: poll every device once, show every point, exit 0 only
when every point read good (like `telegraf --test`, but it knows the register map).

No broker and no buffer: each device's driver is built from the config exactly as the
daemon builds it (`build_drivers`), its readings go through the config's processing
(value checks, range, spike, deadband, aggregation: what the centre would get), and a
sink records them. Each device is polled on its own, one after another on a shared
line (a serial bus, a TCP gateway), all lines at once, each for a bounded time (its
timeouts and retries, or a streaming instrument's stale_after), then stopped cleanly.

For each point it shows where it is read (table, 0-based address and datasheet
number, or the serial field), the raw registers or field, the value after scale and
processing, unit, quality and latency; for a device that did not answer, why. It
warns where a value looks like a wrong byte order or an address one register off
(drivers/modbus/plausibility.py says how it judges).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.commands.common import EXIT_CONFIG, EXIT_ENVIRONMENT, EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from drivers.base import DeviceHealth, DeviceSettings, Driver
    from drivers.core.model import Reading
    from drivers.modbus.decode import DataType, Table
    from drivers.modbus.driver import ModbusDevice
    from drivers.modbus.plan import ReadRequest
    from drivers.modbus.plausibility import Suspicion
    from drivers.serial_line.parsers import Field
    from gateway.pipeline.alarms import AlarmEvent
    from gateway.settings import GatewayConfig

NAME = "check"
HELP = (
    "poll every device of a config once (no broker, no buffer) and show each point: where "
    "it is read, raw registers, value, unit, quality, latency; exit 0 only if all read good"
)
ORDER = 12

EPILOG = """\
examples:
  edge-gateway check -c /etc/edge-gateway/gateway.toml
  edge-gateway check -c gateway.toml --device pump --device gauge --count 3
  edge-gateway check -c gateway.toml --json | jq '.cycles[0].points[] | select(.quality != "good")'

Stop the service first (systemctl stop edge-gateway): a serial port has one reader
at a time, and check opens it as the service does.

exit codes:
  0    every point of every chosen device read good, in every cycle
  1    some point did not (a device that does not answer, a refused register, a value
       out of its configured range, ...): the table and the lines below it say which;
       with --strict, also a value that looks like a wrong byte order or address
  2    bad input: a config with problems, a --device the config does not have
  3    a serial port is missing, held by another program (named), or not permitted
  130  interrupted (Ctrl-C): drivers stopped, ports closed
  143  stopped by SIGTERM, as by Ctrl-C
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("-c", "--config", type=Path, required=True, help="the TOML config file")
    parser.add_argument(
        "--device",
        action="append",
        metavar="NAME",
        help="check only this device (repeat for several; default: every device)",
    )
    parser.add_argument(
        "--count",
        type=_cycles,
        default=1,
        help="poll cycles (default 1); cycles start at least the shortest poll_interval apart",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"ok", "exit_code", "config", "cycles": [{"points", '
        '"devices"}], "problems", "warnings", "map_hints", "alarms", "config_warnings", '
        '"ports"}',
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 also when a value looks like a wrong byte order or address (see "
        "'looks wrong'), though it read good",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also show the drivers' log on stderr"
    )


def _cycles(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1..10000")
    return value


# --- what a check finds ------------------------------------------------------------------


@dataclass
class PointResult:
    device: str
    point: str
    where: str  # 'holding 0 (40001)', 'field ch4'
    raw: list[int] | Field | None = None  # registers (or bits), or the raw field
    value: Any = None  # after scale and processing
    unit: str | None = None
    quality: str | None = None  # None: no reading at all
    latency_ms: float | None = None
    reason: str | None = None  # why it is not good
    note: str | None = None  # what processing did
    table: str | None = None
    address: int | None = None
    datasheet: str | None = None
    type: str | None = None
    byte_order: str | None = None
    field: str | None = None

    @property
    def good(self) -> bool:
        return self.quality == "good"

    @property
    def held(self) -> bool:
        return self.note == HELD


HELD = "held back by processing (a deadband, or a spike dropped): the driver's value shown"


@dataclass
class DeviceResult:
    name: str
    protocol: str
    address: str
    state: str
    reason: str | None = None  # why it did not answer (or not fully)
    health: dict[str, Any] = field(default_factory=dict)


@dataclass
class CycleResult:
    cycle: int
    points: list[PointResult]
    devices: list[DeviceResult]


@dataclass(frozen=True)
class Suspect:
    """A point whose value looks like a wrong byte order or address, and what reads better."""

    device: str
    point: str
    table: Table
    address: int
    suspicion: Suspicion
    lower_read: bool  # whether the register below the point was read (an alternative)
    higher_read: bool

    @property
    def text(self) -> str:
        from drivers.modbus.plausibility import advice

        return advice(f"{self.device}.{self.point}", self.table, self.address, self.suspicion)

    def as_dict(self) -> dict[str, Any]:
        s = self.suspicion
        return {
            "device": self.device,
            "point": self.point,
            "text": self.text,
            "type": str(s.dtype),
            "byte_order": str(s.order),
            "table": str(self.table),
            "address": self.address,
            "value": _exact(s.value, s.dtype),
            "problem": s.problem,
            "alternatives": [
                {
                    "byte_order": str(a.order),
                    "address": self.address + a.shift,
                    "value": _exact(a.value, s.dtype),
                }
                for a in s.better
            ],
        }


def _exact(value: int | float, dtype: DataType) -> int | float:
    """A decoded value as its type says it (a float32 without the digits it does not have)."""
    from drivers.modbus.plausibility import shown

    return (
        value if isinstance(value, int) or not math.isfinite(value) else float(shown(value, dtype))
    )


@dataclass
class Findings:
    cycles: list[CycleResult] = field(default_factory=list)
    suspects: dict[tuple[str, str], Suspect] = field(default_factory=dict)
    alarms: list[str] = field(default_factory=list)
    ports: dict[str, str] = field(default_factory=dict)  # port -> why it cannot be opened

    def exit_code(self, strict: bool = False) -> int:
        if self.ports:
            return EXIT_ENVIRONMENT
        good = all(p.good for cycle in self.cycles for p in cycle.points)
        return EXIT_OK if good and not (strict and self.suspects) else EXIT_FAILURE


# --- running ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from gateway.commands.common import setup_logging
    from gateway.errors import ConfigError
    from gateway.settings import load_config

    setup_logging("info" if args.verbose else "critical")
    try:
        loaded = load_config(args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
    config = loaded.config
    names = [d.name for d in config.devices]
    unknown = [n for n in args.device or [] if n not in names]
    if unknown:
        print(
            f"edge-gateway check: {args.config} has no device {', '.join(map(repr, unknown))}; "
            f"its devices: {', '.join(names)}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    wanted = set(args.device or names)
    chosen = [d for d in config.devices if d.name in wanted]
    findings = Findings(ports=_unusable_ports(chosen))
    import asyncio

    from gateway.commands.output import Progress

    with Progress("checking", total=len(chosen) * args.count) as progress:
        asyncio.run(_check(config, chosen, args.count, findings, progress))
    code = findings.exit_code(args.strict)
    if args.json:
        _print_json(args.config, findings, loaded.warnings, code)
    else:
        _print_text(args.config, findings, loaded.warnings, code)
    return code


def _unusable_ports(devices: Sequence[Any]) -> dict[str, str]:
    """Each serial port of `devices` that cannot be opened as the drivers open it, and why
    (missing, held by the running service, not permitted): checked before any polling."""
    import termios

    import serial

    from drivers.serial_port import is_rfc2217, open_error
    from drivers.serial_port_config import SerialPortConfig
    from gateway.commands.listen import open_exclusive

    found: dict[str, str] = {}
    for dev in devices:
        if not isinstance(dev, SerialPortConfig) or dev.port in found or is_rfc2217(dev.port):
            continue  # a serial device server's port: the first read says why it cannot open
        settings = {
            "port": dev.port,
            "baudrate": dev.baudrate,
            "bytesize": dev.bytesize,
            "parity": dev.parity,
            "stopbits": dev.stopbits,
        }
        try:
            open_exclusive(settings).close()
        except (serial.SerialException, OSError, ValueError, termios.error) as err:
            found[dev.port] = open_error(dev.port, err)
    return found


async def _check(
    config: GatewayConfig,
    chosen: Sequence[DeviceSettings],
    count: int,
    findings: Findings,
    progress: Any,
) -> None:
    import asyncio
    import time

    from gateway.pipeline.processing import compile_processing

    recorder = Recorder(findings)
    processing = compile_processing(
        config, recorder.processed, recorder.alarm, on_invalid=recorder.invalid
    )
    lines: dict[str, list[DeviceSettings]] = {}
    for dev in chosen:
        lines.setdefault(dev.line, []).append(dev)
    spacing = min((getattr(d, "poll_interval", 1.0) for d in chosen), default=1.0)
    for cycle in range(1, count + 1):
        started = time.monotonic()
        recorder.begin()
        async with asyncio.TaskGroup() as group:
            for line, devices in lines.items():
                group.create_task(
                    _check_line(config, devices, recorder, processing.add, findings, progress),
                    name=f"check {line}",
                )
        processing.flush(time.monotonic_ns() // 1_000_000)  # close aggregation windows
        findings.cycles.append(recorder.result(cycle, config, chosen))
        if cycle < count:
            await asyncio.sleep(max(0.0, started + spacing - time.monotonic()))


async def _check_line(
    config: GatewayConfig,
    devices: Sequence[DeviceSettings],
    recorder: Recorder,
    process: Any,
    findings: Findings,
    progress: Any,
) -> None:
    """The devices of one line, one after another (a bus has one master at a time)."""
    from drivers.serial_port_config import SerialPortConfig

    for dev in devices:
        if isinstance(dev, SerialPortConfig) and dev.port in findings.ports:
            recorder.skipped[dev.name] = findings.ports[dev.port]
        else:
            await _check_device(config, dev, recorder, process)
        progress.advance(1, dev.name)


async def _check_device(
    config: GatewayConfig, dev: DeviceSettings, recorder: Recorder, process: Any
) -> None:
    """Run the device's own driver until it polled (or heard) the device once, within a
    bound; then stop it (its ports and connections close)."""
    import asyncio

    from drivers.modbus.driver import ModbusEndpoint
    from drivers.serial_line.driver import SerialLineDriver
    from gateway.build import build_drivers
    from gateway.commands.listen import RecordingParser
    from gateway.tasks import cancel_and_wait

    def sink(readings: Sequence[Reading]) -> None:
        recorder.driver_readings(readings)
        process(readings)

    (driver,) = build_drivers(config.model_copy(update={"devices": [dev]}), sink)
    if isinstance(driver, ModbusEndpoint):
        driver.on_answer = recorder.answer
    if isinstance(driver, SerialLineDriver):
        driver.parser = RecordingParser(
            driver.parser, lambda fields: recorder.fields.__setitem__(dev.name, fields)
        )
    recorder.drivers[dev.name] = driver
    health = driver.health()[0]
    points = {p.name for p in dev.points}
    task = asyncio.create_task(driver.run(), name=f"check {dev.name}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _bound(driver)
    try:
        while loop.time() < deadline and not task.done():
            if _heard(driver, health, points, recorder.seen(dev.name)):
                break
            await asyncio.sleep(0.02)
        else:
            if not task.done() and health.state == "unknown":
                recorder.timed_out[dev.name] = _bound(driver)
    finally:
        await cancel_and_wait([task])  # pymodbus can swallow one cancellation on 3.11
    if not task.cancelled() and task.exception() is not None:
        recorder.skipped[dev.name] = f"the driver failed: {task.exception()}"


def _heard(driver: Driver, health: DeviceHealth, points: set[str], seen: set[str]) -> bool:
    """Whether the device's first poll is over: a Modbus poll ends with a state; a serial
    instrument has said something for every point, or has gone offline."""
    from drivers.modbus.driver import ModbusEndpoint

    if health.state == "unknown":
        return False
    return isinstance(driver, ModbusEndpoint) or health.state == "offline" or points <= seen


def _bound(driver: Driver) -> float:
    """Seconds one poll of the device may take: its timeouts and retries (a streaming
    instrument: its stale_after), plus a second for opening and stopping."""
    from drivers.modbus.driver import ModbusEndpoint
    from drivers.serial_line.driver import SerialLineDriver

    if isinstance(driver, ModbusEndpoint):
        silence = driver.transport.inter_frame_delay
        return 1.0 + sum(
            (len(d.requests) * (d.retries + 1) + 2) * d.timeout + len(d.requests) * silence
            for d in driver.devices
        )
    if isinstance(driver, SerialLineDriver):
        return 1.0 + (driver.stale_after if driver.command is None else driver.timeout)
    return 10.0


class Recorder:
    """What the drivers and the processing say during one cycle."""

    def __init__(self, findings: Findings) -> None:
        self.findings = findings
        self.begin()

    def begin(self) -> None:
        self.raw: dict[tuple[str, str], Reading] = {}
        self.out: dict[tuple[str, str], list[Reading]] = {}
        self.answers: dict[tuple[str, str], tuple[ReadRequest, list[int], int, float]] = {}
        self.fields: dict[str, dict[str, Field]] = {}
        self.drivers: dict[str, Driver] = {}
        self.skipped: dict[str, str] = {}
        self.timed_out: dict[str, float] = {}
        self.invalid_values: dict[tuple[str, str], str] = {}

    # --- sinks and hooks -------------------------------------------------------------

    def driver_readings(self, readings: Sequence[Reading]) -> None:
        for reading in readings:
            self.raw[(reading.device, reading.point)] = reading

    def processed(self, readings: Sequence[Reading]) -> None:
        for reading in readings:
            base = reading.point
            if (reading.device, base) not in self.raw and "." in base:
                base = base.rsplit(".", 1)[0]  # an aggregate: 'flow.mean'
            self.out.setdefault((reading.device, base), []).append(reading)

    def answer(
        self, device: ModbusDevice, request: ReadRequest, values: list[int], latency_ms: float
    ) -> None:
        for point, index in request.points:
            self.answers[(device.name, point.name)] = (request, values, index, latency_ms)

    def alarm(self, event: AlarmEvent) -> None:
        self.findings.alarms.append(f"{event.alarm} ({event.severity}): {event.message}")

    def invalid(self, reading: Reading, problem: str) -> None:
        self.invalid_values[(reading.device, reading.point)] = problem

    def seen(self, device: str) -> set[str]:
        return {point for dev, point in self.raw if dev == device}

    # --- the cycle's table -------------------------------------------------------------

    def result(
        self, cycle: int, config: GatewayConfig, chosen: Sequence[DeviceSettings]
    ) -> CycleResult:
        points: list[PointResult] = []
        devices: list[DeviceResult] = []
        for dev in chosen:
            devices.append(self._device(dev))
            for point in dev.points:
                points.append(self._point(dev, point))
        return CycleResult(cycle, points, devices)

    def _device(self, dev: DeviceSettings) -> DeviceResult:
        driver = self.drivers.get(dev.name)
        if driver is None:
            why = self.skipped.get(dev.name, "not polled")
            return DeviceResult(dev.name, dev.protocol, dev.line, "not polled", why)
        health = driver.health()[0]
        reason = self.skipped.get(dev.name)
        if reason is None and dev.name in self.timed_out:
            reason = f"no answer within {self.timed_out[dev.name]:g}s"
        if reason is None and health.state in ("offline", "degraded"):
            reason = health.last_error
        state = health.state if health.state != "unknown" else "no answer"
        return DeviceResult(dev.name, dev.protocol, health.address, state, reason, health.as_dict())

    def _point(self, dev: DeviceSettings, point: Any) -> PointResult:
        from drivers.modbus.config import ModbusPointConfig
        from gateway.commands.listen import quality_name

        key = (dev.name, point.name)
        result = PointResult(dev.name, point.name, "", unit=point.unit)
        if isinstance(point, ModbusPointConfig):
            self._modbus_where(result, dev, point)
            answer = self.answers.get(key)
            if answer is not None:
                _, values, index, latency = answer
                result.raw = [int(v) for v in values[index : index + _span(point)]]
                result.latency_ms = latency
                self._judge(dev, point, values, index)
        else:
            result.field = point.field or point.name
            result.where = f"field {result.field}"
            fields = self.fields.get(dev.name, {})
            result.raw = fields.get(result.field)
            driver = self.drivers.get(dev.name)
            if driver is not None:
                result.latency_ms = driver.health()[0].last_latency_ms
        reading = self.raw.get(key)
        out = self.out.get(key, [])
        if reading is None:
            result.reason = self._missing(dev)
            return result
        exact = [r for r in out if r.point == point.name]
        if exact:
            final = exact[-1]
            result.value, result.quality = final.value, quality_name(final.quality)
        elif out:  # aggregated: 'flow.mean', 'flow.max', ...
            result.value = {r.point.rsplit(".", 1)[1]: r.value for r in out}
            worst = max(r.quality for r in out)
            result.quality = quality_name(worst)
            result.note = "aggregated (the cycle's readings make one window)"
        else:
            result.value, result.quality = reading.value, quality_name(reading.quality)
            result.note = HELD
        if not result.good:
            result.reason = self._why(dev, point, reading, result.quality)
        return result

    def _modbus_where(self, result: PointResult, dev: DeviceSettings, point: Any) -> None:
        from drivers.modbus.interpret import datasheet_number

        result.table, result.address = str(point.table), point.address
        if not point.table.is_bit_table:
            result.type = str(point.type)
            result.byte_order = str(point.byte_order or getattr(dev, "byte_order", "ABCD"))
        result.datasheet = datasheet_number(point.table, point.address)
        bit = f" bit {point.bit}" if point.bit is not None else ""
        result.where = f"{point.table} {point.address}{bit} ({result.datasheet})"

    def _judge(self, dev: DeviceSettings, point: Any, values: list[int], index: int) -> None:
        """Warn (once a point) where the value looks like a wrong byte order or address."""
        from drivers.modbus.decode import ByteOrder
        from drivers.modbus.plausibility import suspect

        if point.table.is_bit_table:
            return
        order = ByteOrder(point.byte_order or getattr(dev, "byte_order", ByteOrder.ABCD))
        found = suspect(values, index, point.type, order)
        if found is not None:
            higher = index + 1 + _span(point) <= len(values)
            flagged = Suspect(
                dev.name, point.name, point.table, point.address, found, index > 0, higher
            )
            self.findings.suspects.setdefault((dev.name, point.name), flagged)

    def _missing(self, dev: DeviceSettings) -> str:
        device = self._device(dev)
        if device.reason:
            return device.reason
        return "no reading for this point (the device answered, its other points read)"

    def _why(self, dev: DeviceSettings, point: Any, reading: Reading, quality: str | None) -> str:
        from drivers.core.model import Quality
        from drivers.modbus.driver import ModbusEndpoint

        problem = self.invalid_values.get((dev.name, point.name))
        if problem is not None:
            return f"the device sent {problem}"
        if reading.quality == Quality.GOOD:  # processing flagged it
            return _flagged(point, reading.value, quality)
        driver = self.drivers.get(dev.name)
        health = driver.health()[0] if driver is not None else None
        if isinstance(driver, ModbusEndpoint):
            reason = _request_failure(driver.devices[0], point)
            if reason is not None:
                return _with_meaning(reason)
        if health is not None and health.last_error:
            return _with_meaning(health.last_error)
        return "not good"


def _flagged(point: Any, value: object, quality: str | None) -> str:
    """Why processing flagged a good reading, with the configured figure."""
    process = getattr(point, "process", None)
    if quality == "out_of_range" and process is not None and isinstance(value, int | float):
        if process.max is not None and value > process.max:
            return f"{value:g} is above the configured max {process.max:g}"
        if process.min is not None and value < process.min:
            return f"{value:g} is below the configured min {process.min:g}"
    if quality == "spike" and process is not None and process.spike_max_rate is not None:
        return f"changed faster than spike_max_rate {process.spike_max_rate:g} per second"
    return f"flagged {quality} by the point's processing"


def _span(point: Any) -> int:
    from drivers.modbus.decode import register_count

    return 1 if point.table.is_bit_table else register_count(point.type, point.length)


def _request_failure(device: ModbusDevice, point: Any) -> str | None:
    """Why the request that reads `point` failed, as the driver keeps it."""
    for request in device.requests:
        if any(spec.name == point.name for spec, _ in request.points):
            return device.failing.get((request.table, request.address))
    return None


def _with_meaning(reason: str) -> str:
    """A Modbus exception with what it usually means on site."""
    import re

    from drivers.modbus.exceptions import EXCEPTION_MEANINGS

    found = re.search(r"exception (\d+)", reason)
    if found is None:
        return reason
    meaning = EXCEPTION_MEANINGS.get(int(found.group(1)))
    return f"{reason}: {meaning}" if meaning else reason


# --- showing ---------------------------------------------------------------------------------


COLUMNS = ("device", "point", "read at", "raw", "value", "unit", "quality", "latency")


def _row(p: PointResult) -> list[str]:
    return [
        p.device,
        p.point,
        p.where,
        _raw_text(p.raw),
        (_value_text(p.value) + (" (held back)" if p.held else "")) if p.quality else "-",
        p.unit or "",
        p.quality or "not read",
        f"{p.latency_ms:.1f} ms" if p.latency_ms is not None else "-",
    ]


def _raw_text(raw: object) -> str:
    if raw is None:
        return "-"
    if isinstance(raw, list):
        words = [f"0x{v:04X}" for v in raw[:6]]
        return " ".join(words) + (" …" if len(raw) > 6 else "")
    return repr(raw)


def _value_text(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_value_text(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.7g}"
    return "-" if value is None else str(value)


def _problems(findings: Findings) -> list[str]:
    """What was not good, once each (with the cycles it happened in when there are several)."""
    seen: dict[str, list[int]] = {}
    for port, why in findings.ports.items():
        seen.setdefault(f"{port}: {why}", [])
    for cycle in findings.cycles:
        silent = {d.name for d in cycle.devices if d.state in _SILENT}
        for device in cycle.devices:
            if device.state in _SILENT and device.reason not in findings.ports.values():
                text = f"{device.name} ({device.address}): {device.state}: {device.reason}"
                seen.setdefault(text, []).append(cycle.cycle)
        for p in cycle.points:
            if not p.good and p.device not in silent:
                text = f"{p.device}.{p.point}: {p.quality or 'not read'}: {p.reason}"
                seen.setdefault(text, []).append(cycle.cycle)
    several = len(findings.cycles) > 1
    return [
        f"{text} (cycle {', '.join(map(str, cycles))})" if several and cycles else text
        for text, cycles in seen.items()
    ]


_SILENT = ("offline", "no answer", "not polled")


def map_hints(suspects: Sequence[Suspect]) -> list[str]:
    """A sentence per device whose suspected points all tell the same story: every one
    reads plausibly one register lower (or higher, or in one other byte order)."""
    by_device: dict[str, list[Suspect]] = {}
    for suspect in suspects:
        by_device.setdefault(suspect.device, []).append(suspect)
    hints = []
    for device, found in by_device.items():
        if len(found) < 2:
            continue
        stories = [story for story in _STORIES if _fits_all(story, found)]
        if not stories:
            continue
        names = ", ".join(f.point for f in found)
        told = "; or ".join(_story_text(story) for story in stories)
        hints.append(f"{device}: {names} all read plausibly {told}")
    return hints


_STORIES: tuple[int | str, ...] = (-1, 1, "CDAB", "BADC", "DCBA", "ABCD")


def _story_text(story: int | str) -> str:
    if story == -1:
        return (
            "one register lower: if the addresses are the datasheet's register numbers "
            "(which count from 1), subtract 1 from each"
        )
    if story == 1:
        return "one register higher: add 1 to each address?"
    return f'as {story}: byte_order = "{story}" for the device?'


def _fits_all(story: int | str, found: Sequence[Suspect]) -> bool:
    """Every suspect has an alternative that tells `story` (an address that was not read
    does not contradict one), and at least two show it."""
    shown = 0
    for f in found:
        best = f.suspicion.best.tier
        told = [
            a
            for a in f.suspicion.better
            if a.tier == best
            and (
                a.shift == story if isinstance(story, int) else (a.shift == 0 and a.order == story)
            )
        ]
        if told:
            shown += 1
        elif not (isinstance(story, int) and not (f.lower_read if story < 0 else f.higher_read)):
            return False
    return shown >= 2


def _print_text(path: Path, findings: Findings, config_warnings: Sequence[str], code: int) -> None:
    from gateway.commands.output import print_table

    for cycle in findings.cycles:
        title = f"cycle {cycle.cycle}" if len(findings.cycles) > 1 else None
        print_table(COLUMNS, [_row(p) for p in cycle.points], title=title)
    sections = [
        ("not good", _problems(findings)),
        ("looks wrong", [s.text for s in findings.suspects.values()]),
        ("the map", map_hints(list(findings.suspects.values()))),
        ("alarms", findings.alarms),
        ("config warnings (edge-gateway validate)", list(config_warnings)),
    ]
    for title, lines in sections:
        if lines:
            print(f"\n{title}:")
            for line in lines:
                print(f"  {line}")
    points = [p for c in findings.cycles for p in c.points]
    good = sum(p.good for p in points)
    print(f"\n{path}: {good} of {len(points)} point reading(s) good; exit {code}")


def _print_json(path: Path, findings: Findings, config_warnings: Sequence[str], code: int) -> None:
    from gateway.commands.output import print_json

    suspects = list(findings.suspects.values())
    print_json(
        {
            "ok": code == EXIT_OK,
            "exit_code": code,
            "config": str(path),
            "cycles": [
                {
                    "cycle": c.cycle,
                    "points": [asdict(p) | {"good": p.good} for p in c.points],
                    "devices": [asdict(d) for d in c.devices],
                }
                for c in findings.cycles
            ],
            "problems": _problems(findings),
            "warnings": [s.as_dict() for s in suspects],
            "map_hints": map_hints(suspects),
            "alarms": findings.alarms,
            "config_warnings": list(config_warnings),
            "ports": findings.ports,
        }
    )
