"""Serial figures: RTU bus poll cycle with and without a dead slave; line frames/s parsed.

    .venv/bin/python bench/serial_bench.py

1. Four Modbus RTU slaves (one of them dead in the second and third runs) on a
   pseudo-terminal bus (NullModem + pymodbus RTU server), polled as fast as the
   bus allows (poll_interval 1 ms, timeout 200 ms). Prints the cycle time of the
   healthy slaves: with no dead slave, with a dead slave backed off (backoff_max
   5 s, the circuit breaker) and with a dead slave retried every cycle
   (backoff_max = poll_interval: what the breaker saves).
2. A line instrument writing gas-detector lines onto a pty as fast as it can;
   the serial_line driver reads, frames and parses them. Prints frames/s.

Ptys carry bytes at memory speed, not at a baud rate: the figures are the
gateway's own costs. On a real 19200-baud bus each request/response pair adds
about 8 ms of line time.
"""

from __future__ import annotations

import asyncio
import time

from drivers.core.model import Reading
from drivers.modbus.decode import Table
from drivers.serial_line.build import build_driver
from drivers.serial_line.config import SerialLineDeviceConfig
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from drivers.sim.serial_line import gas_detector_line
from drivers.sim.serial_link import NullModem, PtyPort
from gateway.build import build_drivers
from gateway.settings import parse_config
from gateway.tasks import cancel_and_wait

SECONDS = 8.0


def bus_config(path: str, backoff_max: str) -> str:
    devices = "".join(
        f"""
[[devices]]
name = "s{u}"
protocol = "modbus_rtu"
port = "{path}"
baudrate = 19200
unit = {u}
poll_interval = "1ms"
timeout = "200ms"
retries = 0
backoff_max = "{backoff_max}"
points = [{{ name = "n", address = 0, type = "uint32" }}, {{ name = "v", address = 2 }}]
"""
        for u in (1, 2, 3, 4)
    )
    return f'[gateway]\nid = "bench"\n{devices}'


async def bus_run(dead: bool, backoff_max: str) -> tuple[float, int]:
    slaves = []
    for unit in (1, 2, 3, 4):
        d = SimulatedDevice(unit=unit)
        d.add_read_counter(Table.HOLDING, 0)
        d.set_value(Table.HOLDING, 2, 7)
        slaves.append(d)
    slaves[3].silent = dead
    readings: list[Reading] = []
    async with NullModem() as line, ModbusSimServer(slaves, serial_port=line.b.path):
        drivers = build_drivers(
            parse_config(bus_config(line.a.path, backoff_max).encode()).config, readings.extend
        )
        task = asyncio.create_task(drivers[0].run())
        await asyncio.sleep(SECONDS)
        await cancel_and_wait([task])
    polls = sum(1 for r in readings if r.device == "s1" and r.point == "n")
    timeouts = sum(h.timeouts for h in drivers[0].health())
    return SECONDS / max(1, polls), timeouts


async def line_run() -> float:
    port = PtyPort()
    cfg = parse_config(
        f"""
[gateway]
id = "bench"
[[devices]]
name = "gas"
protocol = "serial_line"
port = "{port.path}"
max_input_rate = 100_000_000  # a pty carries bytes at memory speed: measure the driver, not the cap
framing = {{ kind = "delimiter" }}
parser = {{ kind = "regex", pattern = 'CH4=(?P<ch4>[-\\d.]+);H2S=(?P<h2s>\\d+);T=[-\\d.]+;N=(?P<n>\\d+)' }}
points = [{{ name = "ch4" }}, {{ name = "h2s", type = "int" }}, {{ name = "n", type = "int" }}]
""".encode()
    ).config
    device = cfg.devices[0]
    assert isinstance(device, SerialLineDeviceConfig)
    readings: list[Reading] = []
    driver = build_driver(device, readings.extend)
    task = asyncio.create_task(driver.run())
    await asyncio.sleep(0.2)
    chunk = b"".join(gas_detector_line(n) for n in range(1, 201))
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    sent = 0
    while time.perf_counter() - started < SECONDS:
        await loop.run_in_executor(None, port.write, chunk)
        sent += 200
        await asyncio.sleep(0)
    await asyncio.sleep(0.5)
    elapsed = time.perf_counter() - started
    await cancel_and_wait([task])
    port.close()
    frames = driver.device_health.responses
    print(
        f"  lines written {sent:,}, frames parsed {frames:,}, "
        f"framing errors {driver.device_health.framing_errors}"
    )
    return frames / elapsed


async def main() -> None:
    print(f"RTU bus, 4 slaves, polled back to back for {SECONDS:g}s each run:")
    for label, dead, backoff in (
        ("no dead slave", False, "5s"),
        ("one dead slave, backed off (backoff_max 5s)", True, "5s"),
        ("one dead slave, retried every cycle (no back-off)", True, "1ms"),
    ):
        cycle, timeouts = await bus_run(dead, backoff)
        print(f"  {label:52s} cycle {cycle * 1000:7.2f} ms, {timeouts} timeouts")
    print(f"serial_line driver, gas-detector lines on a pty for {SECONDS:g}s:")
    rate = await line_run()
    print(f"  {rate:,.0f} frames/s parsed (framer + regex parser + readings)")


if __name__ == "__main__":
    asyncio.run(main())
