"""What the config's Modbus devices must satisfy together, and what looks wrong in them.

Problems (the config is refused): slaves on one serial bus must agree on its line
settings; each slave on a line (a bus, or a TCP gateway in front of several units)
needs its own unit id. That a port carries one protocol only is the gateway's own
check, across protocols (gateway/settings.py).

Warnings (valid, but probably not meant): a `timeout` not shorter than
`poll_interval`, a serial port that is not there, an address that reads like a
datasheet's register number (`address = 30053`: input register 52, or
`register = 30053`), an RS-485 bus whose polls need more line time than the poll
cycle (the estimate of each driver's plan).
"""

from __future__ import annotations

from collections.abc import Sequence

from drivers.base import Indexed, Problem, discard, late_poll_warnings, seconds_text
from drivers.modbus.config import ModbusConfig, ModbusRtuDeviceConfig
from drivers.modbus.notation import datasheet_address
from drivers.modbus.timing import default_inter_frame_delay
from drivers.serial_port import absent_port_warnings

# The master keeps one silence between frames on a bus: it is a setting of the bus too.
# `port` differs on one line only where a serial device server's port is written two
# ways (rfc2217://h:4001 and rfc2217://h:4001?timeout=2): one connection, one URL.
_LINE_SETTINGS = ("port", "baudrate", "bytesize", "parity", "stopbits", "inter_frame_delay")


def check(devices: Indexed[ModbusConfig]) -> list[Problem]:
    """Slaves on one bus agree on its line settings; each slave on a line has its own unit."""
    first: dict[str, tuple[int, ModbusConfig]] = {}
    units: dict[tuple[str, int], int] = {}
    found: list[Problem] = []
    for i, dev in devices:
        owner, owner_dev = first.setdefault(dev.line, (i, dev))
        if owner != i and isinstance(dev, ModbusRtuDeviceConfig):
            for setting in _LINE_SETTINGS:
                mine, theirs = getattr(dev, setting), getattr(owner_dev, setting)
                if setting == "inter_frame_delay":  # compare what each would keep
                    if dev.baudrate != owner_dev.baudrate:  # type: ignore[union-attr]
                        continue  # the default follows the baudrate, said above
                    mine = seconds_text(_effective_delay(dev))
                    theirs = seconds_text(_effective_delay(owner_dev))  # type: ignore[arg-type]
                if mine != theirs:
                    found.append(
                        (
                            ("devices", i, setting),
                            f"devices[{i}] and devices[{owner}] share the bus on {dev.line} but "
                            f"their {setting} differs ({mine} and {theirs}); one bus has one "
                            "set of line settings",
                        )
                    )
        other = units.setdefault((dev.line, dev.unit), i)
        if other != i:
            found.append(
                (
                    ("devices", i, "unit"),
                    f"devices[{i}] and devices[{other}] are both unit {dev.unit} on "
                    f"{dev.line}: each slave on a line answers to its own unit id",
                )
            )
    return found


def warn(devices: Indexed[ModbusConfig]) -> list[Problem]:
    """Late polls, absent ports, datasheet addresses, overloaded buses."""
    buses = [(i, dev) for i, dev in devices if isinstance(dev, ModbusRtuDeviceConfig)]
    return (
        late_poll_warnings(devices)
        + absent_port_warnings(buses)
        + _datasheet_addresses(devices)
        + _overloaded_buses(buses)
    )


def _datasheet_addresses(devices: Indexed[ModbusConfig]) -> list[Problem]:
    """An `address` that reads like the datasheet's number of a register of its table."""
    found: list[Problem] = []
    for i, dev in devices:
        for j, point in enumerate(dev.points):
            if point.datasheet_register is not None:
                continue  # the address came from the register: the user wrote no address
            notation = datasheet_address(point.address)
            if notation is not None and notation[0] is point.table:
                found.append(
                    (
                        ("devices", i, "points", j, "address"),
                        f"{point.address} looks like register {point.address} of a "
                        f"datasheet; addresses here are 0-based: {point.table} {notation[1]}; "
                        f"write register = {point.address}, or address = {notation[1]}",
                    )
                )
    return found


def _overloaded_buses(buses: Sequence[tuple[int, ModbusRtuDeviceConfig]]) -> list[Problem]:
    """A warning for each RS-485 bus whose polls need more line time than there is."""
    if not buses:
        return []
    # The drivers bring pymodbus: only a config with a bus pays for it where it is
    # validated (in the daemon's validating child too: gateway/loaded.py).
    from drivers.modbus.build import build

    first: dict[str, int] = {}
    intervals: dict[str, set[float]] = {}
    for i, dev in buses:
        first.setdefault(dev.port, i)
        intervals.setdefault(dev.port, set()).add(dev.poll_interval)
    found: list[Problem] = []
    for endpoint in build([dev for _, dev in buses], discard):
        bus = endpoint.plan().bus
        if bus is None or bus.load <= 1:
            continue
        shortest = "" if intervals[bus.port] == {bus.cycle} else " (its shortest poll_interval)"
        found.append(
            (
                ("devices", first[bus.port], "port"),
                f"the bus on {bus.port} at {bus.baudrate} baud needs "
                f"{seconds_text(bus.line_time)} of line time per "
                f"{seconds_text(bus.cycle)} cycle{shortest}, with every "
                f"request answered and no retries ({', '.join(bus.devices)}): polls will "
                "fall behind; raise the baudrate, poll less often or read fewer registers",
            )
        )
    return found


def _effective_delay(dev: ModbusRtuDeviceConfig) -> float:
    if dev.inter_frame_delay is not None:
        return dev.inter_frame_delay
    return default_inter_frame_delay(dev.baudrate)
