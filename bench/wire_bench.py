"""Size and cost of the wire formats on gateway-like batches; prints tables, asserts nothing.

    .venv/bin/python bench/wire_bench.py

Batches (fixed seeds, so figures repeat):

- float32: 20 devices x 25 float32 points, each device polled once a second (its 25
  points share the response's timestamp, devices answer a few ms apart), values a slow
  sine plus small noise, as read from float32 registers; 500 readings (one poll cycle,
  the default `[batch] max_readings`) and 2000 (four cycles).
- mixed: 10 devices x 10 points of every kind (str, bool, int counters and status
  words, float64 scaled values, float32), 5 poll cycles; one device offline (nil
  values, quality 5), a few comm errors (nil, 4) and spikes (2).

"JSON" is one compact JSON object per reading (device, point, ts_ms, value, quality),
for reference. Record the figures in docs/wire-format.md with this command line.
"""

from __future__ import annotations

import json
import math
import random
import struct
import sys
import timeit
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.core.model import Reading, Value
from gateway.wire import DecodeError, decode_batch, encode_batch

SPIKE, COMM_ERROR, DEVICE_OFFLINE = 2, 4, 5
T0 = 1795430000000  # 2026-11-22, Unix ms

POINT_NAMES = [
    "discharge_pressure", "suction_pressure", "flow_rate", "motor_current_l1",
    "motor_current_l2", "motor_current_l3", "motor_voltage", "motor_temperature",
    "bearing_temp_de", "bearing_temp_nde", "vibration_x", "vibration_y", "tank_level",
    "water_temperature", "turbidity", "ph_value", "chlorine_residual", "ambient_temperature",
    "cabinet_humidity", "supply_voltage", "power_factor", "active_power", "reactive_power",
    "frequency", "valve_position",
]  # fmt: skip


def as_float32(x: float) -> float:
    value: float = struct.unpack("f", struct.pack("f", x))[0]
    return value


def poll_times(rnd: random.Random, devices: list[str], cycle: int) -> list[tuple[int, str]]:
    """When each device's response arrives in one cycle: ~9 ms apart, up to 12 ms late."""
    arrivals = [(T0 + cycle * 1000 + i * 9 + rnd.randint(0, 12), d) for i, d in enumerate(devices)]
    return sorted(arrivals)


def float32_batch(size: int, seed: int = 1) -> list[Reading]:
    """20 devices x 25 float32 points, 1 s period: sine plus noise (see module docstring)."""
    rnd = random.Random(seed)
    devices = [f"pump-station-{i:02d}" for i in range(20)]
    shapes = {
        (d, p): (rnd.uniform(1, 100), rnd.uniform(0.05, 0.3), rnd.uniform(60, 600), rnd.random())
        for d in devices
        for p in POINT_NAMES
    }
    readings: list[Reading] = []
    for cycle in range(math.ceil(size / (len(devices) * len(POINT_NAMES)))):
        for ts, device in poll_times(rnd, devices, cycle):
            for point in POINT_NAMES:
                mean, swing, period_s, phase = shapes[device, point]
                wave = math.sin(2 * math.pi * (phase + (ts - T0) / 1000 / period_s))
                value = mean * (1 + swing * wave) + rnd.gauss(0, mean * 0.002)
                readings.append(Reading(device, point, ts, as_float32(value)))
    return readings[:size]


def mixed_batch(size: int, seed: int = 2) -> list[Reading]:
    """10 devices x 10 points of every value type; one device offline, a few errors."""
    rnd = random.Random(seed)
    devices = [f"lift-station-{i}" for i in range(10)]
    readings: list[Reading] = []
    for cycle in range(math.ceil(size / 100)):
        for ts, device in poll_times(rnd, devices, cycle):
            n = devices.index(device)
            if device == devices[7]:
                readings += [Reading(device, f"p{k}", ts, None, DEVICE_OFFLINE) for k in range(10)]
                continue
            running = (n + cycle // 3) % 4 != 0
            points: list[tuple[str, Value | None]] = [
                ("state", "RUN" if running else "STOP"),
                ("running", running),
                ("run_hours", 10_000 + n * 731 + cycle // 3600),
                ("starts", 4_000_000_000 + n * 17),
                ("status_word", 0x8001 | (running << 3)),
                ("flow_l_s", round(rnd.gauss(42.0 + n, 0.8), 1)),  # register x 0.1: float64
                ("level_m", round(2.5 + 0.3 * math.sin(cycle / 50 + n) + rnd.gauss(0, 0.01), 3)),
                ("temperature", as_float32(18.0 + n + rnd.gauss(0, 0.05))),
                ("setpoint", 250 + n),
                ("alarm_text", "" if running else "low suction pressure"),
            ]
            for point, value in points:
                quality = 0
                if rnd.random() < 0.01:
                    value, quality = None, COMM_ERROR
                elif rnd.random() < 0.01:
                    quality = SPIKE
                readings.append(Reading(device, point, ts, value, quality))
    return readings[:size]


def json_bytes(readings: list[Reading]) -> int:
    return sum(len(json.dumps(r._asdict(), separators=(",", ":"))) + 1 for r in readings)


def packed_fields(document: bytes) -> dict[str, bytes]:
    """The msgpack bytes of each value of a packed map, as packed (float32 stays float32)."""
    unpacker = msgpack.Unpacker()
    unpacker.feed(document)
    fields = {}
    for _ in range(unpacker.read_map_header()):
        key = unpacker.unpack()
        start = unpacker.tell()
        unpacker.skip()
        fields[key] = document[start : unpacker.tell()]
    return fields


def best_us(fn: Callable[[], object]) -> float:
    runs = max(1, int(0.05 / max(1e-7, min(timeit.repeat(fn, number=1, repeat=3)))))
    return min(timeit.repeat(fn, number=runs, repeat=5)) / runs * 1e6


def encoders(readings: list[Reading]) -> dict[str, Callable[[], bytes]]:
    ident = ("cabinet-0412", "9d24c916ecb403a0", 1207)
    return {
        "v1": lambda: encode_batch(*ident, readings, version=1),
        "v2 uncompressed": lambda: encode_batch(*ident, readings, compress="never"),
        "v2 auto": lambda: encode_batch(*ident, readings, compress="auto"),
    }


def main() -> None:
    batches = {
        "float32 x500": float32_batch(500),
        "float32 x2000": float32_batch(2000),
        "mixed x500": mixed_batch(500),
    }
    for readings in batches.values():
        for label, encode in encoders(readings).items():
            if label != "v1":  # v1 cannot carry the mixed batch's nil values
                assert decode_batch(encode()).readings == readings

    print("bytes per reading")
    print(f"{'batch':15} {'JSON':>6} {'v1':>6} {'v2 raw':>7} {'v2 auto':>8}")
    for name, readings in batches.items():
        n = len(readings)
        sizes = [len(encode()) / n for encode in encoders(readings).values()]
        print(f"{name:15} {json_bytes(readings) / n:6.1f} " + " ".join(f"{s:7.2f}" for s in sizes))

    print("\nmicroseconds per batch (best of 5)")
    print(f"{'batch':15} {'format':16} {'encode':>7} {'decode':>7}")
    for name, readings in batches.items():
        for label, encode in encoders(readings).items():
            payload = encode()
            try:
                decode_batch(payload)
            except DecodeError:  # v1 with nil values
                dec = "-"
            else:
                dec = f"{best_us(partial(decode_batch, payload)):.0f}"
            print(f"{name:15} {label:16} {best_us(encode):7.0f} {dec:>7}")

    print("\nzlib level: compressed v2 body, bytes per reading / microseconds to compress")
    print(f"{'batch':15} " + " ".join(f"{f'level {lv}':>14}" for lv in (1, 6, 9)))
    for name, readings in batches.items():
        body = packed_fields(encoders(readings)["v2 uncompressed"]())["b"]
        cells = []
        for level in (1, 6, 9):
            size = len(zlib.compress(body, level)) / len(readings)
            took = best_us(partial(zlib.compress, body, level))
            cells.append(f"{size:6.2f} /{took:5.0f}")
        print(f"{name:15} " + " ".join(f"{c:>14}" for c in cells))

    print("\nv2 body by field, uncompressed bytes per reading")
    for name, readings in batches.items():
        body = packed_fields(encoders(readings)["v2 uncompressed"]())["b"]
        share = {key: len(value) / len(readings) for key, value in packed_fields(body).items()}
        print(f"{name:15} " + "  ".join(f"{k} {v:.2f}" for k, v in share.items()))


if __name__ == "__main__":
    main()
