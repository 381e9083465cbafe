"""The gateway's CPU for an RS-485 bus on a serial device server (RFC 2217) against the
same bus on a local serial port.

Two Modbus RTU slaves (pymodbus servers) on one simulated bus, polled by a gateway
process (`edge-gateway run`, a private mosquitto) every `--interval` (or, with
`--device line`, a gas detector streaming a line every `--interval`): first on a
pseudo-terminal pair (a local port), then behind `drivers.sim.rfc2217_line.Rfc2217Line`
(a serial device server on loopback). pyserial's RFC 2217 port has no file
descriptor, so the gateway looks for bytes on a timer (drivers/modbus/rfc2217.py):
this measures what that costs. Each run waits 5 s for the gateway to settle, then
reads its CPU time over `--seconds`; the two kinds alternate `--runs` times.

    .venv/bin/python bench/rfc2217_bench.py
    .venv/bin/python bench/rfc2217_bench.py --interval 100ms --seconds 20
    .venv/bin/python bench/rfc2217_bench.py --device line

Prints one line per run; asserts nothing. Record the figures in docs/performance.md
with the command line and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.e2e_bench import cpu_seconds  # noqa: E402
from drivers.core.config_types import parse_duration  # noqa: E402
from drivers.modbus.decode import Table  # noqa: E402
from drivers.serial_port import LineSettings  # noqa: E402
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice  # noqa: E402
from drivers.sim.rfc2217_line import Rfc2217Line  # noqa: E402
from drivers.sim.serial_line import LineInstrument, gas_detector_line  # noqa: E402
from drivers.sim.serial_link import NullModem, SerialDevicePort  # noqa: E402
from gateway.devtools.broker import Mosquitto  # noqa: E402
from gateway.devtools.rig.configs import gateway_config, rtu_device  # noqa: E402
from gateway.devtools.rig.process import GatewayProcess  # noqa: E402

POINTS = '{ name = "n", address = 0, type = "uint32" }'
SETTLE = 5.0  # seconds from the gateway's start to the measured window


def slaves() -> list[SimulatedDevice]:
    found = []
    for unit in (1, 2):
        device = SimulatedDevice(unit=unit)
        device.add_read_counter(Table.HOLDING, 0)
        found.append(device)
    return found


GAS = """
[[devices]]
name = "gas"
protocol = "serial_line"
port = "{port}"
stale_after = "10s"
framing = {{ kind = "delimiter", delimiter = "\\r\\n" }}
parser = {{ kind = "regex", pattern = 'CH4=(?P<ch4>[-\\d.]+);H2S=(?P<h2s>\\d+);T=[-\\d.]+;N=(?P<n>\\d+)' }}
points = [{{ name = "ch4" }}, {{ name = "h2s", type = "int" }}, {{ name = "n", type = "int" }}]
"""


@asynccontextmanager
async def on_the_line(device: str, kind: str, interval: str) -> AsyncIterator[str]:
    """The devices on a pty pair ('pty') or behind a simulated server ('rfc2217'), as
    [[devices]] sections for the gateway."""
    line: AbstractAsyncContextManager[NullModem | Rfc2217Line] = (
        Rfc2217Line(LineSettings(19200)) if kind == "rfc2217" else NullModem()
    )
    async with line as bus:
        if isinstance(bus, Rfc2217Line):
            device_side, gateway_side = bus.bus_path, bus.url
        else:
            device_side, gateway_side = bus.b.path, bus.a.path
        if device == "modbus":
            async with ModbusSimServer(slaves(), serial_port=device_side):
                yield "".join(
                    rtu_device(f"s{u}", gateway_side, u, POINTS, interval=interval, timeout="500ms")
                    for u in (1, 2)
                )
        else:
            period = parse_duration(interval)
            port = SerialDevicePort(device_side, 19200)
            async with LineInstrument(gas_detector_line, period=period, port=port):
                yield GAS.format(port=gateway_side).replace(
                    'stale_after = "10s"', 'stale_after = "10s"\nbaudrate = 19200'
                )


async def one_run(
    device: str, kind: str, workdir: Path, broker: Mosquitto, seconds: float, interval: str
) -> float:
    """The gateway's CPU, in % of one core, reading `device` on `kind` ('pty', 'rfc2217')."""
    async with on_the_line(device, kind, interval) as devices:
        config = gateway_config(
            broker_port=broker.port, buffer_path=workdir / "buffer.db", devices=devices
        )
        gateway = GatewayProcess(workdir, config)
        gateway.start()
        try:
            await asyncio.sleep(SETTLE)
            assert gateway.proc is not None
            pid = gateway.proc.pid
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            await asyncio.sleep(seconds)
            cpu1, t1 = cpu_seconds(pid), time.monotonic()
        finally:
            await asyncio.to_thread(gateway.stop)
    return 100 * (cpu1 - cpu0) / (t1 - t0)


async def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="rfc2217-bench-") as tmp:
        broker = Mosquitto(Path(tmp) / "broker")
        broker.start()
        try:
            n = 0
            for _ in range(args.runs):
                for kind in ("pty", "rfc2217"):
                    n += 1
                    workdir = Path(tmp) / f"run-{n}"
                    workdir.mkdir()
                    cpu = await one_run(
                        args.device, kind, workdir, broker, args.seconds, args.interval
                    )
                    what = "2 slaves polled" if args.device == "modbus" else "a detector's line"
                    print(
                        f"{kind:8s} {what} every {args.interval}: gateway CPU {cpu:.2f} % of "
                        f"a core over {args.seconds:g} s",
                        flush=True,
                    )
        finally:
            broker.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="pairs of runs (pty, then rfc2217)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window per run")
    parser.add_argument(
        "--interval", default="1s", help="poll interval of each slave; a detector's frame period"
    )
    parser.add_argument(
        "--device",
        choices=["modbus", "line"],
        default="modbus",
        help="two Modbus RTU slaves polled, or a gas detector streaming a line per interval",
    )
    asyncio.run(bench(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
