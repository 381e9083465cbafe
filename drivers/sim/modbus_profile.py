"""Simulated Modbus devices built from a register map: a device profile
(drivers/modbus/profiles/) or any device's points, each holding a plausible value.

`profile_device("eastron-sdm630", unit=1)` gives a `SimulatedDevice` answering every
point of the profile, and the value each point reads as (after decoding, scale and
offset: what the driver will report), so a test or a rig can show a whole profile
arriving end to end. Values follow the point's unit (230 V, 50 Hz, a few kWh, …),
differ from point to point (a point read from its neighbour's address shows), stay
inside the point's plausible range (`process.min`/`max`) and are exact in the
point's type. The addresses between the points read 0, as on the meters whose maps
have gaps, so that the planner's merged reads are answered.
"""

from __future__ import annotations

from collections.abc import Sequence

from drivers.modbus.config import ModbusPointConfig, load_profile
from drivers.modbus.decode import (
    ByteOrder,
    DataType,
    Value,
    decode_registers,
    register_count,
    scale_value,
)
from drivers.sim.modbus import SimulatedDevice

__all__ = [
    "plausible_value",
    "profile_device",
    "raw_value",
    "simulated_device",
    "typical_value",
]

# A typical reading per engineering unit, and the step between points of one unit;
# binary fractions, so that float32 holds them exactly.
_TYPICAL: dict[str | None, tuple[float, float]] = {
    "V": (230.5, 0.25),
    "A": (4.25, 0.5),
    "W": (978.5, 10.25),
    "VA": (1012.25, 10.25),
    "VAr": (120.75, 5.5),
    "Hz": (50.0, 0.0625),
    "kWh": (12345.5, 100.25),
    "kVArh": (678.25, 10.5),
    "deg": (12.5, 1.25),
    "bar": (0.75, 0.125),
    "degC": (11.5, 0.5),
    "m": (7.5, 0.25),
    None: (0.8125, 0.03125),  # no unit: a ratio such as a power factor
}
_OTHER = (42.5, 1.5)
_FLOAT32_MAX = 3.4028234e38
_INTEGER_LIMITS = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}


def typical_value(unit: str | None, nth: int) -> float:
    """A reading in `unit` (230.5 for V, 50.0 for Hz, ...), the nth of its unit a step on."""
    base, step = _TYPICAL.get(unit, _OTHER)
    return base + nth * step


def plausible_value(point: ModbusPointConfig, nth: int) -> float:
    """A reading of the point's unit, the nth of its unit, inside its plausible range."""
    value = typical_value(point.unit, nth)
    low = point.process.min if point.process is not None else None
    high = point.process.max if point.process is not None else None
    if (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            value = (low + high) / 2
        else:
            value = low if low is not None else high  # type: ignore[assignment]
    return value


def raw_value(point: ModbusPointConfig, value: float) -> float | int:
    """The register value that reads as `value` after scale and offset (held at the limits
    of the point's type)."""
    raw = (value - point.offset) / point.scale
    limits = _INTEGER_LIMITS.get(point.type)
    if limits is None:
        if point.type is DataType.FLOAT32:
            return min(max(raw, -_FLOAT32_MAX), _FLOAT32_MAX)
        return raw
    return min(max(round(raw), limits[0]), limits[1])


def simulated_device(
    points: Sequence[ModbusPointConfig], unit: int, byte_order: ByteOrder = ByteOrder.ABCD
) -> tuple[SimulatedDevice, dict[str, Value]]:
    """A simulated unit holding a plausible value for every point (`byte_order` for the
    points without their own), and the value each point reads as."""
    device = SimulatedDevice(unit=unit)
    seen: dict[str | None, int] = {}
    bits = []
    for point in points:
        order = point.byte_order or byte_order
        if point.type is DataType.BOOL:
            device.set_value(point.table, point.address, True)
        elif point.type is DataType.BIT:
            bits.append(point)  # after the registers they are part of
        elif point.type is DataType.STRING:
            text = f"SIM {point.name}"[: 2 * (point.length or 1)]
            device.set_value(
                point.table, point.address, text, point.type, order, length=point.length
            )
        else:
            nth = seen[point.unit] = seen.get(point.unit, -1) + 1
            raw = raw_value(point, plausible_value(point, nth))
            device.set_value(point.table, point.address, raw, point.type, order)
    for point in bits:
        cells = device.tables[point.table]
        cells[point.address] = cells.get(point.address, 0) | (1 << (point.bit or 0))
    for table, cells in device.tables.items():  # a merged read may cross unmapped addresses
        if cells:
            device.fill(table, min(cells), max(cells) - min(cells) + 1)
    return device, {point.name: _reads_as(device, point, byte_order) for point in points}


def _reads_as(device: SimulatedDevice, point: ModbusPointConfig, byte_order: ByteOrder) -> Value:
    """What the driver will report for the point, from what the device holds."""
    cells = device.tables[point.table]
    if point.table.is_bit_table:
        return bool(cells[point.address])
    span = register_count(point.type, point.length)
    words = [cells[point.address + i] for i in range(span)]
    order = point.byte_order or byte_order
    raw = decode_registers(words, point.type, order, bit=point.bit)
    return scale_value(raw, point.scale, point.offset)


def profile_device(name: str, unit: int) -> tuple[SimulatedDevice, dict[str, Value]]:
    """A simulated unit answering every point of the profile `name` (and the value each
    point reads as)."""
    profile, _ = load_profile(name)
    return simulated_device(profile.points, unit, profile.byte_order)
