"""`edge-gateway simulate FILE`: serve the devices a simulator file describes, for test
rigs and hardware-in-the-loop benches, until SIGTERM or Ctrl-C.

Modbus TCP units (several per port), RTU slaves on a pseudo-terminal bus or a real
serial port, RTU over TCP, line instruments (text, NMEA, binary frames with CRCs),
streaming or polled; each point's value constant, a ramp or counter, a sine with
noise, a random walk or replayed from a CSV file. `--from-config` serves exactly what a
gateway config reads instead (its profiles too): each device on its host and port,
each serial port a pseudo-terminal linked at the path the config names.

Faults are switched while it runs through a local control socket speaking one-line
commands (`fault meter exception 2`, `clear meter`, `set meter.voltage 231.5`,
`status`). The file format, the value kinds, the control commands and what each fault
does on the wire: docs/simulator.md. The parts are in drivers/sim/ (scenario.py,
values.py, serve.py, control.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.commands.common import (
    EXIT_CONFIG,
    EXIT_ENVIRONMENT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    setup_logging,
)

if TYPE_CHECKING:
    from drivers.sim.scenario import ScenarioConfig
    from drivers.sim.serve import Simulation

NAME = "simulate"
HELP = (
    "serve simulated devices a file describes (Modbus TCP/RTU, line instruments), with "
    "faults switched at run time through a control socket, for test rigs"
)
ORDER = 47

EPILOG = """\
examples:
  edge-gateway simulate config/simulator-example.toml
  edge-gateway simulate rig.toml --link /tmp/rig --control /tmp/rig/control.sock --json
  edge-gateway simulate --from-config /etc/edge-gateway/gateway.toml

  printf 'fault meter exception 2\\n' | socat - UNIX-CONNECT:/tmp/rig/control.sock
  printf 'status\\n' | socat - UNIX-CONNECT:/tmp/rig/control.sock

The control socket takes one command a line and answers one line:
  fault TARGET silent|exception N|delay MS|crc|txid|garbage|drop|flood
  clear [TARGET]    set DEVICE.POINT VALUE    unset DEVICE.POINT    status    help
TARGET is a device or DEVICE.POINT. The file format, the value kinds and what each
fault does on the wire: docs/simulator.md.

With --json, one JSON object on one line says when everything is served (ready,
control, devices: name, protocol, host/port or path/link, unit, points).

exit codes:
  0    stopped by SIGTERM
  2    bad input: a simulator file (or gateway config) with problems, each named at its
       key path; a missing file; a bad argument
  3    the environment: a TCP port in use, a link path that is not a symlink, a serial
       port missing or held, a control socket in use
  130  interrupted (Ctrl-C): everything stopped, links and socket removed
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="the simulator file (TOML; docs/simulator.md, config/simulator-example.toml)",
    )
    parser.add_argument(
        "--from-config",
        type=Path,
        metavar="GATEWAY_TOML",
        help="instead of FILE: simulate every device this gateway config reads (profiles "
        "included), serial ports as pseudo-terminals linked at the config's port paths",
    )
    parser.add_argument(
        "--link",
        type=Path,
        metavar="DIR",
        help="make a symlink DIR/<bus or instrument name> to each pseudo-terminal without "
        "a link of its own, so a gateway config can name it",
    )
    parser.add_argument(
        "--control",
        type=Path,
        metavar="PATH",
        help="the control socket (default: edge-gateway-simulate-<pid>.sock in the "
        "temporary directory; printed at start)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="seed of the random values (noise, walks, garbage); overrides [simulator] seed",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on one line when ready (for rigs): ready, source, "
        "control, devices",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="warning",
        help="what the simulator logs on stderr (default warning)",
    )


def run(args: argparse.Namespace) -> int:
    from drivers.sim.scenario import ScenarioError

    setup_logging(args.log_level)
    try:
        scenario, source = _scenario(args)
    except ScenarioError as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
    except _BadInput as err:
        print(f"edge-gateway simulate: {err}", file=sys.stderr)
        return EXIT_CONFIG
    default = Path(tempfile.gettempdir()) / f"edge-gateway-simulate-{os.getpid()}.sock"
    control = (args.control or default).absolute()
    return asyncio.run(_serve(scenario, source, control, args))


class _BadInput(Exception):
    """What was asked cannot be done as written (exit 2)."""


def _scenario(args: argparse.Namespace) -> tuple[ScenarioConfig, str]:
    from drivers.sim.scenario import from_gateway_devices, load_scenario

    if (args.file is None) == (args.from_config is None):
        raise _BadInput("give a simulator FILE, or --from-config GATEWAY_TOML (not both)")
    if args.file is not None:
        return load_scenario(args.file), str(args.file)
    from gateway.errors import ConfigError
    from gateway.settings import load_config

    try:
        loaded = load_config(args.from_config)
    except ConfigError as err:
        raise _BadInput(str(err)) from err
    return from_gateway_devices(loaded.config.devices, str(args.from_config)), str(args.from_config)


async def _serve(
    scenario: ScenarioConfig, source: str, control_path: Path, args: argparse.Namespace
) -> int:
    from drivers.sim.control import ControlServer, ControlSocketError
    from drivers.sim.serve import Simulation, SimulationError

    stop = asyncio.Event()
    stopped_by: list[int] = []

    def request_stop(sig: int) -> None:
        stopped_by.append(sig)
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig)
    simulation = Simulation(scenario, link_dir=args.link, seed=args.seed)
    control = ControlServer(control_path, simulation)
    try:
        await simulation.start()
        await control.start()
    except (SimulationError, ControlSocketError) as err:
        await simulation.stop()
        print(f"edge-gateway simulate: {err}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    try:
        _print_ready(simulation, source, control_path, as_json=args.json)
        await stop.wait()
    finally:
        await control.stop()
        await simulation.stop()
    return EXIT_INTERRUPTED if stopped_by and stopped_by[0] == signal.SIGINT else EXIT_OK


def _print_ready(simulation: Simulation, source: str, control: Path, *, as_json: bool) -> None:
    served = simulation.describe()
    if as_json:
        document = {"ready": True, "source": source, "control": str(control), "devices": served}
        print(json.dumps(document, separators=(",", ":")), flush=True)
        return
    from gateway.commands.output import print_table

    print(f"serving {len(served)} device(s) from {source}")
    print_table(
        ["device", "protocol", "where", "unit", "points"],
        [
            (d["name"], d["protocol"], _where(d), d.get("unit", "-"), len(d["points"]))
            for d in served
        ],
    )
    print(f"control: {control}  (one command a line, e.g. 'status'; 'help' lists them)")
    print("SIGTERM or Ctrl-C stops it.", flush=True)


def _where(device: dict[str, Any]) -> str:
    if "host" in device:
        return f"{device['host']}:{device['port']}"
    where = str(device["path"])
    if device.get("link"):
        where = f"{device['link']} -> {where}"
    if device.get("bus") not in (None, device["path"], device.get("link")):
        where += f" (bus {device['bus']})"
    if device.get("mode") == "streaming":
        where += f", a frame every {device['period']:g}s"
    elif device.get("mode") == "polled":
        where += ", polled"
    return where
