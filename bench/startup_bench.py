"""Start-up to first data, and the gateway's memory at the rig's load.

The rig of issue 14: Modbus TCP devices (10 x 50 float32 points polled every second,
each device a server of its own) served by `edge-gateway simulate` in its own
process, a private mosquitto, the gateway as systemd runs it (`edge-gateway run -c
FILE`, with a fresh buffer and the default settings), and a subscriber (the rig's
`Collector`) as the centre. For each run:

- **start-up to first data**: from the moment the process is spawned to the first data
  batch at the subscriber; on the way, to its retained `online` status (the
  interpreter, the imports, the config, the buffer and the MQTT connection are done);
- **memory at load**: VmRSS (of it RssAnon, the Python heap and other private memory,
  and RssFile, the mapped code of the interpreter and the extension modules) and
  VmHWM (the peak) of the gateway after `--load` seconds at the rig's load, with its
  CPU and the readings delivered over that time.

Commands are on with one trusted key (`--commands key`, a deployed gateway), or on
with no key installed (`none`), or off (`off`). Python's bytecode is cached as on an
installed gateway (pip compiles it at install): the gateway's modules are compiled
into a private cache (PYTHONPYCACHEPREFIX) by a first start that is not counted;
`--no-bytecode-cache` measures a tree that compiles every module at every start.

    .venv/bin/python bench/startup_bench.py                 # 5 runs
    .venv/bin/python bench/startup_bench.py --runs 9 --json
    .venv/bin/python bench/startup_bench.py --floor         # the libraries' own share

`--floor` measures what no change of ours can take away: a fresh interpreter that
imports only the third-party packages `edge-gateway run` loads (found by importing the
daemon's modules in a first interpreter) and the standard library's asyncio and
sqlite3, none of the gateway's own modules; its VmRSS is the floor under the gateway's.

Prints a table with the median and the range of the runs; asserts nothing. Record the
figures in docs/performance.md with the command line and the machine. pi_bench.py
runs the same rig under a CPU quota.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.e2e_bench import cpu_seconds, status_kb  # noqa: E402
from drivers.core.config_types import parse_duration  # noqa: E402
from gateway.devtools.rig import (  # noqa: E402
    Collector,
    GatewayProcess,
    Mosquitto,
    SimulatorProcess,
    modbus_device,
    wait_until,
)
from gateway.wire import decode_batch  # noqa: E402

EDGE_GATEWAY = str(Path(sys.executable).parent / "edge-gateway")  # what systemd runs
COMMANDS = ("key", "none", "off")
BATCH_MAX_AGE = 5.0  # seconds: [batch] max_age at its default


# --- the rig ---------------------------------------------------------------------------


def simulator_file(devices: int, points: int) -> str:
    """`devices` Modbus TCP servers (a free port each, unit 1), `points` float32 each:
    sines with noise, each point its own phase, so the wire carries realistic values."""
    sections = []
    for d in range(1, devices + 1):
        rows = ",\n".join(
            f'  {{ name = "p{i}", address = {2 * i}, type = "float32", value = {{ kind = '
            f'"sine", mean = {10 * d + i}.0, amplitude = 5.0, period = "60s", phase = {7 * i}, '
            f"noise = 0.05 }} }}"
            for i in range(points)
        )
        sections.append(
            f'[[devices]]\nname = "dev{d}"\nprotocol = "modbus_tcp"\nport = 0\nunit = 1\n'
            f"points = [\n{rows}\n]\n"
        )
    return "[simulator]\nseed = 14\n\n" + "\n".join(sections)


def gateway_config(
    gateway_id: str,
    workdir: Path,
    broker_port: int,
    simulator: SimulatorProcess,
    devices: int,
    points: int,
    interval: str,
    commands: str,
    settings: str = "",
) -> str:
    """The gateway's config at its defaults: only where the broker, the buffer, the
    trusted keys and the devices are (and `settings`: [buffer] lines). Timeouts are
    80 % of the poll interval."""
    rows = ",\n".join(
        f'  {{ name = "p{i}", address = {2 * i}, type = "float32" }}' for i in range(points)
    )
    timeout = f"{round(parse_duration(interval) * 800)}ms"
    sections = "".join(
        modbus_device(
            f"dev{d}", simulator.port(f"dev{d}"), 1, rows, interval=interval, timeout=timeout
        )
        for d in range(1, devices + 1)
    )
    if commands == "off":
        command_section = "[commands]\nenabled = false\n"
    else:
        keys = workdir / "trusted-keys"
        keys.mkdir(parents=True, exist_ok=True)
        if commands == "key":
            _install_key(keys)
        command_section = f'[commands]\ntrusted_keys = "{keys}"\n'
    return (
        f'[gateway]\nid = "{gateway_id}"\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\n\n'
        f'[buffer]\npath = "{workdir / "buffer.db"}"\n{settings}\n'
        f"{command_section}\n{sections}"
    )


def _install_key(keys: Path) -> None:
    """One trusted public key, as `command keygen` makes it; the private key beside the
    directory, as the centre's (`--commands key` sends one command with it)."""
    from gateway.control import generate_key_pair

    pair = generate_key_pair(keys.parent / "centre", "bench")
    (keys / "bench.pub").write_bytes(pair.public.read_bytes())


def send_ping(gateway_id: str, workdir: Path, broker: Mosquitto, command: str) -> None:
    """One signed `ping` to the gateway, as the centre sends it; its reply waited for."""
    key = workdir / gateway_id / "centre" / "bench.key"
    to = ["--broker", f"127.0.0.1:{broker.port}", "--gateway", gateway_id, "--key", str(key)]
    done = subprocess.run(
        [command, "command", "send", *to, "ping"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the signed ping failed: {done.stdout}{done.stderr}")


@contextmanager
def rig(workdir: Path, devices: int, points: int) -> Iterator[tuple[Mosquitto, SimulatorProcess]]:
    """A private mosquitto and the simulated devices (their own process), stopped at
    the end."""
    broker = Mosquitto(workdir / "broker")
    broker.start()
    simulator = SimulatorProcess(workdir / "simulator", simulator_file(devices, points))
    try:
        simulator.start()
        yield broker, simulator
    finally:
        simulator.cleanup()
        broker.stop()


def arrivals(collector: Collector) -> list[tuple[float, str, bytes]]:
    """Every message so far: (arrival time.time(), topic, payload)."""
    n = len(collector.arrived)  # paho's thread appends the message first, then its time
    return [
        (t, topic, payload)
        for t, (topic, payload) in zip(collector.arrived[:n], collector.messages[:n], strict=True)
    ]


def data_batches(collector: Collector, start: float, end: float) -> list[tuple[int, int]]:
    """(payload bytes, readings) of each data batch that arrived in [start, end)."""
    return [
        (len(payload), len(decode_batch(payload).readings))
        for arrived, topic, payload in arrivals(collector)
        if start <= arrived < end and topic.endswith(("/data", "/data/history"))
    ]


def latencies(collector: Collector, start: float, end: float, by: float) -> list[float]:
    """For each reading taken in [start, end) (its own timestamp; time.time() seconds)
    that had arrived at the centre by `by`: seconds from its taking to its arrival.
    Each (gateway, boot, seq) counts once."""
    seen: set[tuple[str, str, int]] = set()
    found: list[float] = []
    lo, hi = start * 1000, end * 1000
    for arrived, topic, payload in arrivals(collector):
        if arrived > by or not topic.endswith(("/data", "/data/history")):
            continue
        batch = decode_batch(payload)
        ident = (batch.gateway_id, batch.boot_id, batch.seq)
        if ident in seen:
            continue
        seen.add(ident)
        found.extend(arrived - r.ts_ms / 1000 for r in batch.readings if lo <= r.ts_ms < hi)
    return found


def bytecode_env(workdir: Path, *, cached: bool) -> dict[str, str]:
    """The child's environment for Python's bytecode: written to and read from a private
    cache (an empty PYTHONDONTWRITEBYTECODE is unset), or never written."""
    if not cached:
        return {"PYTHONDONTWRITEBYTECODE": "1"}
    return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(workdir / "pycache")}


# --- one run ---------------------------------------------------------------------------


@dataclass
class Started:
    """A gateway that is running and has delivered its first batch."""

    gateway: GatewayProcess
    collector: Collector  # subscribed to its topics only
    pid: int
    online_s: float  # spawn -> retained "online" status at the subscriber
    first_data_s: float  # spawn -> first data batch at the subscriber
    start_cpu_s: float  # the gateway's CPU time (all threads) by then


@contextmanager
def started_gateway(
    gateway_id: str,
    workdir: Path,
    broker: Mosquitto,
    simulator: SimulatorProcess,
    args: argparse.Namespace,
    *,
    interval: str,
    command: Sequence[str],
) -> Iterator[Started]:
    """A gateway with a fresh buffer, started by `command` (`edge-gateway`, or a wrapper
    that runs it) and waited for until its first batch arrives; stopped (SIGTERM) at
    the end. `args` has devices, points, commands, bytecode_cache."""
    here = workdir / gateway_id
    config = gateway_config(
        gateway_id,
        here,
        broker.port,
        simulator,
        args.devices,
        args.points,
        interval,
        args.commands,
        getattr(args, "buffer_settings", ""),
    )
    with Collector(broker, f"city/{gateway_id}/#") as collector:
        gateway = GatewayProcess(here, config, command=command)
        gateway.env.update(bytecode_env(workdir, cached=args.bytecode_cache))
        spawned = time.time()
        gateway.start()
        try:
            wait_until(
                lambda: any(t.endswith("/data") for _, t, _ in arrivals(collector)),
                60,
                "the first batch",
            )
            got = arrivals(collector)
            first = next(a for a, t, _ in got if t.endswith("/data"))
            online = next(a for a, t, p in got if t.endswith("/status") and b"online" in p)
            assert gateway.proc is not None
            pid = gateway.proc.pid
            yield Started(
                gateway, collector, pid, online - spawned, first - spawned, cpu_seconds(pid)
            )
        finally:
            gateway.stop()


@dataclass
class Run:
    online_s: float  # spawn -> retained "online" status at the subscriber
    first_data_s: float  # spawn -> first data batch at the subscriber
    start_cpu_s: float  # CPU time the gateway took to get there
    rss_mib: float
    rss_anon_mib: float
    rss_file_mib: float
    hwm_mib: float
    cpu_percent: float  # of one core, over the load window
    delivered_per_s: float  # readings taken in the load window, delivered
    rss_after_command_mib: float | None = None  # --commands key: 10 s after a signed ping


def one_run(
    n: int, workdir: Path, broker: Mosquitto, simulator: SimulatorProcess, args: argparse.Namespace
) -> Run:
    """One start of a gateway with a fresh buffer, then `args.load` seconds at load."""
    with started_gateway(
        f"startup-{n}",
        workdir,
        broker,
        simulator,
        args,
        interval=args.interval,
        command=[args.command],
    ) as run:
        pid = run.pid
        load_start, cpu0 = time.time(), cpu_seconds(pid)
        time.sleep(args.load)
        load_end, cpu1 = time.time(), cpu_seconds(pid)
        memory = {
            key: status_kb(pid, key) / 1024 for key in ("VmRSS", "RssAnon", "RssFile", "VmHWM")
        }
        time.sleep(2 * BATCH_MAX_AGE)  # the window's last readings on their way
        delivered = len(latencies(run.collector, load_start, load_end, time.time()))
        after_command = None
        if args.commands == "key":  # the first signature checked loads cryptography
            send_ping(f"startup-{n}", workdir, broker, args.command)
            time.sleep(10)
            after_command = status_kb(pid, "VmRSS") / 1024
    return Run(
        online_s=run.online_s,
        first_data_s=run.first_data_s,
        start_cpu_s=run.start_cpu_s,
        rss_mib=memory["VmRSS"],
        rss_anon_mib=memory["RssAnon"],
        rss_file_mib=memory["RssFile"],
        hwm_mib=memory["VmHWM"],
        cpu_percent=100 * (cpu1 - cpu0) / (load_end - load_start),
        delivered_per_s=delivered / (load_end - load_start),
        rss_after_command_mib=after_command,
    )


def warm_up(
    workdir: Path, broker: Mosquitto, simulator: SimulatorProcess, args: argparse.Namespace
) -> None:
    """A first start that fills the bytecode cache (as pip does at install); not counted."""
    if args.bytecode_cache:
        with started_gateway(
            "warm-up", workdir, broker, simulator, args, interval="1s", command=[args.command]
        ):
            pass


# --- the report ------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on, and how busy it was."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": loadavg(),
    }


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def print_machine(machine: dict[str, Any], load_after: str) -> None:
    print(
        f"machine: {machine['cpu']}, nproc {machine['nproc']}, Linux {machine['kernel']}, "
        f"Python {machine['python']}; load average {machine['loadavg']} before, {load_after} after"
    )


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def add_rig_arguments(parser: argparse.ArgumentParser) -> None:
    """The rig's arguments, the same in pi_bench.py."""
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--points", type=int, default=50, help="float32 points per device")
    parser.add_argument(
        "--commands",
        choices=COMMANDS,
        default="key",
        help="[commands] on with one trusted key (default), on with none, or off",
    )
    parser.add_argument("--command", default=EDGE_GATEWAY, help="the edge-gateway to run")
    parser.add_argument(
        "--no-bytecode-cache",
        dest="bytecode_cache",
        action="store_false",
        help="compile every module at every start (a source tree with PYTHONDONTWRITEBYTECODE)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object")


_OURS = ("gateway", "drivers", "buffer", "config", "bench", "tests")

_THIRD_PARTY = f"""
import sys
import gateway.cli, gateway.app, gateway.loaded
import drivers.modbus.build, drivers.serial_line.build  # what build_drivers loads by name
ours = set({_OURS!r}) | set(sys.stdlib_module_names)
print(" ".join(sorted(name for name, module in sys.modules.items()
                      if name.split(".")[0] not in ours and not name.startswith("_")
                      and getattr(module, "__spec__", None) is not None)))
"""


_IMPORT_AND_MEASURE = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(" ".join(str(int(status[k].split()[0]) / 1024) for k in ("VmRSS", "RssAnon", "RssFile")))
"""


def floor(runs: int) -> int:
    """Print the VmRSS of an interpreter with only the libraries `run` loads."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    found = subprocess.run(
        [sys.executable, "-c", _THIRD_PARTY], env=env, check=True, capture_output=True, text=True
    )
    libraries = ["asyncio", "sqlite3", *found.stdout.split()]
    print(f"imported: asyncio, sqlite3 and {len(libraries) - 2} modules of", end=" ")
    print(", ".join(sorted({name.split(".")[0] for name in libraries[2:]})))
    for n in range(1, runs + 1):
        got = subprocess.run(
            [sys.executable, "-c", _IMPORT_AND_MEASURE, *libraries],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        rss, anon, file = (float(v) for v in got.stdout.split())
        print(f"run {n}: VmRSS {rss:.1f} MiB (RssAnon {anon:.1f}, RssFile {file:.1f})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_rig_arguments(parser)
    parser.add_argument(
        "--floor",
        action="store_true",
        help="only measure the libraries' own share: an interpreter that imports what "
        "`run` imports from outside this project, none of its modules",
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--interval", default="1s", help="poll interval")
    parser.add_argument("--load", type=float, default=30.0, help="seconds at load before memory")
    args = parser.parse_args(argv)
    if args.floor:
        return floor(args.runs)
    before = machine()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        workdir = Path(tmp)
        with rig(workdir, args.devices, args.points) as (broker, simulator):
            warm_up(workdir, broker, simulator, args)
            for n in range(1, args.runs + 1):
                run = one_run(n, workdir, broker, simulator, args)
                runs.append(run)
                if not args.json:
                    print(f"run {n}: {run}", file=sys.stderr, flush=True)
    fields = list(asdict(runs[0]))
    result: dict[str, Any] = {
        "machine": before,
        "loadavg_after": loadavg(),
        "load": {
            "devices": args.devices,
            "points": args.points,
            "interval": args.interval,
            "offered_per_s": args.devices * args.points / parse_duration(args.interval),
            "commands": args.commands,
            "bytecode_cache": args.bytecode_cache,
        },
        "runs": [asdict(run) for run in runs],
        "summary": {
            name: spread([getattr(run, name) for run in runs])
            for name in fields
            if getattr(runs[0], name) is not None
        },
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print_machine(before, result["loadavg_after"])
    print(
        f"rig: {args.devices} devices x {args.points} float32 every {args.interval} = "
        f"{result['load']['offered_per_s']:,.0f} readings/s offered; commands: {args.commands}; "
        f"{args.runs} runs, memory after {args.load:g} s at load"
    )
    units = {"cpu_percent": "%", "delivered_per_s": "/s"} | dict.fromkeys(
        ("online_s", "first_data_s", "start_cpu_s"), "s"
    )
    print(f"{'':26} {'median':>9} {'min':>9} {'max':>9}")
    for name, got in result["summary"].items():  # the fields every run measured
        label = f"{name} ({units.get(name, 'MiB')})"
        print(f"{label:26} {got['median']:9.2f} {got['min']:9.2f} {got['max']:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
