"""The gateway on a Raspberry Pi's budget: a CPU quota standing in for a Pi.

The rig of startup_bench.py (Modbus TCP devices served by `edge-gateway simulate` in
its own process, a private mosquitto, the gateway as `edge-gateway run -c FILE` with
its default settings, the rig's subscriber as the centre), with the gateway process
alone in a cgroup whose CPU time is capped at one Pi core: `1 / slowdown` of one of
this machine's cores (cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`, or v2
`cpu.max`). The simulator, the broker and the subscriber run beside it, uncapped.

The slowdown is how much slower a Pi runs single-threaded Python than this machine
(docs/performance.md, "On a Pi's budget", says how the presets were found and how
sure they are): `--pi pi4` (5.5) or `--pi pi3b+` (20), or `--slowdown F`.

It steps the offered rate (10 devices x 50 float32 points, the poll interval shortened
step by step) and, for each rate, starts a gateway with a fresh buffer, waits for its
first batch, lets it settle, and measures over `--seconds`:

- delivered: the readings taken in the window that reached the centre within
  `BATCH_MAX_AGE + GRACE` of its end; a rate is held when >= 98 % of those offered;
- CPU per reading: the gateway's utime + stime (/proc/PID/stat, all its threads) per
  reading delivered, in microseconds of this machine's CPU, and times the slowdown,
  what it would be on the Pi;
- the share of the quota used, how often the quota throttled it (cpu.stat), and the
  latency from a reading's taking to the centre (p50, p99).

It stops at the first rate not held, then tries once between it and the last held.
The headroom at 1,000 readings/s is the highest rate held divided by 1,000.

    .venv/bin/python bench/pi_bench.py                      # a Pi 4 (as root)
    .venv/bin/python bench/pi_bench.py --pi pi3b+ --json
    .venv/bin/python bench/pi_bench.py --rates 1000 --seconds 60

Without a writable cgroup (not root, no cpu controller) it says so, runs the gateway
uncapped at 1,000 readings/s and prints the CPU per reading and what the slowdown makes
of it: an estimate, not a measurement under the quota. Asserts nothing; record the
figures in docs/performance.md with the command line and the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.e2e_bench import cpu_seconds  # noqa: E402
from bench.startup_bench import (  # noqa: E402
    BATCH_MAX_AGE,
    add_rig_arguments,
    data_batches,
    latencies,
    loadavg,
    machine,
    print_machine,
    rig,
    started_gateway,
    warm_up,
)
from gateway.devtools.rig import Mosquitto, SimulatorProcess  # noqa: E402

PRESETS = {"pi4": 5.5, "pi3b+": 20.0}  # docs/performance.md, "On a Pi's budget"
LADDER = (500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 12000, 16000, 24000, 32000)
HELD = 0.98  # of the readings offered, delivered
GRACE = 3.0  # seconds after a batch's max_age for the window's last readings to arrive
SETTLE = 5.0  # seconds after the first batch before the window opens
MIN_QUOTA_US = 1000  # the kernel's smallest cfs quota


class QuotaUnavailable(RuntimeError):
    """The machine cannot cap a process's CPU here; the message says why."""


class CpuQuota:
    """A cgroup of this bench's own with a CFS bandwidth limit: `quota_us` of CPU time
    per `period_us`, summed over every thread of what is in it. `wrap` makes a command
    line that enters the cgroup and then execs the command, so the gateway runs capped
    from its first instruction and nothing else is in the cgroup."""

    def __init__(self, quota_us: int, period_us: int) -> None:
        self.quota_us = quota_us
        self.period_us = period_us
        name = f"edge-gateway-pi-bench-{os.getpid()}"
        v1 = Path("/sys/fs/cgroup/cpu")
        v2 = Path("/sys/fs/cgroup")
        try:
            if (v1 / "cpu.cfs_quota_us").exists():
                self.version = 1
                self.path = v1 / name
                self.path.mkdir()
                (self.path / "cpu.cfs_period_us").write_text(str(period_us))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota_us))
            elif "cpu" in _read(v2 / "cgroup.controllers").split():
                self.version = 2
                self.path = v2 / name
                self.path.mkdir()
                (self.path / "cpu.max").write_text(f"{quota_us} {period_us}")
            else:
                raise QuotaUnavailable(
                    "no cgroup cpu controller: neither /sys/fs/cgroup/cpu (v1) nor 'cpu' in "
                    "/sys/fs/cgroup/cgroup.controllers (v2)"
                )
        except OSError as err:
            self.remove()
            raise QuotaUnavailable(
                f"cannot make a cgroup with a CPU quota ({err.strerror or err}: "
                f"{err.filename or ''}); run as root on a machine with a writable cgroup "
                "cpu controller"
            ) from None

    def wrap(self, command: Sequence[str]) -> list[str]:
        procs = self.path / "cgroup.procs"
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs), *command]

    def throttling(self) -> tuple[int, int, float]:
        """Periods so far, periods in which the quota ran out, seconds held back."""
        stat = dict(line.split() for line in _read(self.path / "cpu.stat").splitlines())
        throttled = (
            int(stat["throttled_time"]) / 1e9
            if self.version == 1
            else int(stat["throttled_usec"]) / 1e6
        )
        return int(stat["nr_periods"]), int(stat["nr_throttled"]), throttled

    def describe(self) -> str:
        where = "cpu.cfs_quota_us / cpu.cfs_period_us" if self.version == 1 else "cpu.max"
        return (
            f"cgroup v{self.version} {self.path} ({where}): {self.quota_us} us per "
            f"{self.period_us} us = {self.quota_us / self.period_us:.3f} of a core"
        )

    def remove(self) -> None:
        path = getattr(self, "path", None)
        if path is not None and path.exists():
            try:
                path.rmdir()  # empty once the gateway has exited
            except OSError as err:
                print(f"could not remove {path}: {err}", file=sys.stderr)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@dataclass
class Step:
    offered_per_s: float
    interval_ms: int
    delivered_per_s: float
    delivered_share: float  # of the readings offered in the window
    held: bool
    cpu_core_share: float  # of one of this machine's cores
    quota_share: float | None  # of the quota (one Pi core); None without a quota
    cpu_us_per_reading: float  # this machine's CPU
    pi_us_per_reading: float  # times the slowdown
    throttled_share: float | None  # of the periods in the window in which the quota ran out
    latency_p50_s: float | None
    latency_p99_s: float | None
    readings_per_batch: float
    first_data_s: float  # spawn -> first batch at the centre, under the quota
    start_cpu_s: float  # the gateway's CPU time by then


def interval_for(rate: float, readings_per_poll: int) -> int:
    """The poll interval (whole ms) that offers about `rate` readings/s."""
    return max(1, round(1000 * readings_per_poll / rate))


def measure(
    rate: float,
    n: int,
    workdir: Path,
    broker: Mosquitto,
    simulator: SimulatorProcess,
    args: argparse.Namespace,
    quota: CpuQuota | None,
) -> Step:
    """One rate: a gateway with a fresh buffer (capped when there is a quota), started,
    settled, measured over `args.seconds`, stopped."""
    readings_per_poll = args.devices * args.points
    interval_ms = interval_for(rate, readings_per_poll)
    offered = 1000 * readings_per_poll / interval_ms
    command = [args.command] if quota is None else quota.wrap([args.command])
    with started_gateway(
        f"pi-{n}", workdir, broker, simulator, args, interval=f"{interval_ms}ms", command=command
    ) as run:
        time.sleep(SETTLE)
        start, cpu0 = time.time(), cpu_seconds(run.pid)
        periods0 = quota.throttling() if quota is not None else None
        time.sleep(args.seconds)
        end, cpu1 = time.time(), cpu_seconds(run.pid)
        periods1 = quota.throttling() if quota is not None else None
        time.sleep(BATCH_MAX_AGE + GRACE)
        delays = sorted(latencies(run.collector, start, end, time.time()))
        batches = data_batches(run.collector, start, end)
    window = end - start
    cpu = cpu1 - cpu0
    delivered = len(delays)
    throttled = None
    if periods0 is not None and periods1 is not None:
        throttled = (periods1[1] - periods0[1]) / max(1, periods1[0] - periods0[0])
    per_reading = 1e6 * cpu / max(1, delivered)
    return Step(
        offered_per_s=offered,
        interval_ms=interval_ms,
        delivered_per_s=delivered / window,
        delivered_share=delivered / (offered * window),
        held=delivered >= HELD * offered * window,
        cpu_core_share=cpu / window,
        quota_share=None if quota is None else cpu / window / (quota.quota_us / quota.period_us),
        cpu_us_per_reading=per_reading,
        pi_us_per_reading=per_reading * args.slowdown,
        throttled_share=throttled,
        latency_p50_s=quantile(delays, 0.50),
        latency_p99_s=quantile(delays, 0.99),
        readings_per_batch=sum(n for _, n in batches) / max(1, len(batches)),
        first_data_s=run.first_data_s,
        start_cpu_s=run.start_cpu_s,
    )


def quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, math.floor(q * len(values)))]


def rates_to_try(args: argparse.Namespace) -> list[float] | None:
    """The rates given, or None: the ladder, stepped until one is not held."""
    if args.rates is None:
        return None
    return [float(r) for r in args.rates.split(",")]


def run_steps(
    args: argparse.Namespace,
    workdir: Path,
    broker: Mosquitto,
    simulator: SimulatorProcess,
    quota: CpuQuota | None,
) -> list[Step]:
    """The rates given; else the ladder up to the first rate not held, and once half-way
    back; without a quota, 1,000 readings/s only."""
    steps: list[Step] = []

    def step(rate: float) -> Step:
        done = measure(rate, len(steps) + 1, workdir, broker, simulator, args, quota)
        steps.append(done)
        if not args.json:
            print(_row(done), file=sys.stderr, flush=True)
        return done

    given = rates_to_try(args)
    if given is not None or quota is None:
        for rate in given or [1000.0]:
            step(rate)
        return steps
    last_held = None
    for rate in LADDER:
        if not step(rate).held:
            if last_held is not None:
                between = math.sqrt(last_held * rate)  # once, half-way on a log scale
                if interval_for(between, args.devices * args.points) not in {
                    s.interval_ms for s in steps
                }:
                    step(between)
            break
        last_held = rate
    return steps


def _row(s: Step) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f} %"

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{1000 * x:.0f}"

    return (
        f"{s.offered_per_s:8,.0f} {s.interval_ms:6d} {s.delivered_per_s:10,.0f} "
        f"{100 * s.delivered_share:6.1f} % {'held' if s.held else 'NOT':>5} "
        f"{100 * s.cpu_core_share:6.1f} % {pct(s.quota_share):>7} {s.cpu_us_per_reading:7.1f} "
        f"{s.pi_us_per_reading:7.0f} {pct(s.throttled_share):>7} "
        f"{ms(s.latency_p50_s):>6} {ms(s.latency_p99_s):>6} {s.readings_per_batch:7.0f} "
        f"{s.first_data_s:6.2f}"
    )


HEADER = (
    f"{'offered':>8} {'poll':>6} {'delivered':>10} {'share':>8} {'':>5} "
    f"{'CPU':>8} {'quota':>7} {'us/rdg':>7} {'Pi us':>7} {'thrott':>7} "
    f"{'p50ms':>6} {'p99ms':>6} {'rdg/b':>7} {'start':>6}\n"
    f"{'/s':>8} {'ms':>6} {'/s':>10} {'':>8} {'':>5} "
    f"{'1 core':>8} {'used':>7} {'here':>7} {'x slow':>7} {'':>7} "
    f"{'':>6} {'':>6} {'batch':>7} {'s':>6}"
)


def summary(steps: list[Step], args: argparse.Namespace, quota: CpuQuota | None) -> dict[str, Any]:
    at_1000 = next((s for s in steps if abs(s.offered_per_s - 1000) < 1), None)
    held = [s.offered_per_s for s in steps if s.held]
    result: dict[str, Any] = {
        "slowdown": args.slowdown,
        "pi": args.pi,
        "quota": None if quota is None else quota.describe(),
        "cpu_us_per_reading_at_1000": None if at_1000 is None else at_1000.cpu_us_per_reading,
        "pi_us_per_reading_at_1000": None if at_1000 is None else at_1000.pi_us_per_reading,
        "quota_share_at_1000": None if at_1000 is None else at_1000.quota_share,
    }
    if quota is not None:
        highest = max(held, default=None)
        result["highest_held_per_s"] = highest
        stepped = args.rates is None  # the ladder ran up to a rate not held
        result["headroom_at_1000"] = highest / 1000 if stepped and highest is not None else None
        result["first_data_s_median"] = statistics.median(s.first_data_s for s in steps)
        result["start_cpu_s_median"] = statistics.median(s.start_cpu_s for s in steps)
    elif at_1000 is not None:  # an estimate: one Pi core over the CPU one reading costs there
        result["estimated_pi_readings_per_s"] = 1e6 * args.pi_cores / at_1000.pi_us_per_reading
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_rig_arguments(parser)
    parser.add_argument("--pi", choices=sorted(PRESETS), default="pi4", help="slowdown preset")
    parser.add_argument("--slowdown", type=float, help="instead of --pi: this machine / the Pi")
    parser.add_argument(
        "--pi-cores",
        type=float,
        default=1.0,
        help="Pi cores the gateway may use (default 1: its Python runs on one at a time)",
    )
    parser.add_argument("--period-ms", type=float, default=10.0, help="the quota's period")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured per rate")
    parser.add_argument("--rates", help="readings/s to measure, e.g. 1000,2000 (no stepping)")
    parser.add_argument("--no-quota", action="store_true", help="never cap: the estimate only")
    args = parser.parse_args(argv)
    if args.slowdown is None:
        args.slowdown = PRESETS[args.pi]
    else:
        args.pi = None
    cores = args.pi_cores / args.slowdown
    period_us = max(round(1000 * args.period_ms), math.ceil(MIN_QUOTA_US / cores))
    quota: CpuQuota | None = None
    note = None
    if args.no_quota:
        note = "--no-quota: the gateway runs uncapped"
    else:
        try:
            quota = CpuQuota(max(MIN_QUOTA_US, round(cores * period_us)), period_us)
        except QuotaUnavailable as err:
            note = str(err)
    if note is not None:
        print(
            f"NO CPU QUOTA: {note}. Measuring the gateway uncapped at 1,000 readings/s; the "
            f"Pi figures are this machine's CPU per reading x {args.slowdown:g}, an estimate.",
            file=sys.stderr,
        )
    before = machine()
    try:
        with tempfile.TemporaryDirectory(prefix="pi-bench-") as tmp:
            workdir = Path(tmp)
            with rig(workdir, args.devices, args.points) as (broker, simulator):
                warm_up(workdir, broker, simulator, args)  # uncapped: fills the bytecode cache
                if not args.json:
                    print(HEADER, file=sys.stderr)
                steps = run_steps(args, workdir, broker, simulator, quota)
    finally:
        if quota is not None:
            quota.remove()
    result = {
        "machine": before,
        "loadavg_after": loadavg(),
        "note": note,
        "load": {"devices": args.devices, "points": args.points, "commands": args.commands},
        "steps": [asdict(s) for s in steps],
        "summary": summary(steps, args, quota),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print_report(result, steps)
    return 0


def print_report(result: dict[str, Any], steps: list[Step]) -> None:
    s = result["summary"]
    print_machine(result["machine"], result["loadavg_after"])
    pi = f"--pi {s['pi']}" if s["pi"] else "--slowdown"
    print(
        f"slowdown {s['slowdown']:g} ({pi}); quota: {s['quota'] or 'none (' + result['note'] + ')'}"
    )
    print(HEADER)
    for step in steps:
        print(_row(step))
    if s["cpu_us_per_reading_at_1000"] is not None:
        print(
            f"at 1,000 readings/s: {s['cpu_us_per_reading_at_1000']:.1f} us of CPU per reading "
            f"here, {s['pi_us_per_reading_at_1000']:.0f} us on the Pi"
            + (
                f", {100 * s['quota_share_at_1000']:.0f} % of the quota"
                if s["quota_share_at_1000"] is not None
                else ""
            )
        )
    if "highest_held_per_s" in s:
        highest = s["highest_held_per_s"]
        print(
            "highest rate held (>= 98 % delivered) of those tried: "
            + ("none" if highest is None else f"{highest:,.0f} readings/s")
            + (
                ""
                if s["headroom_at_1000"] is None
                else f"; headroom at 1,000 readings/s: {s['headroom_at_1000']:.1f}x"
            )
            + f"; start-up to first data under the quota: {s['first_data_s_median']:.2f} s "
            f"(median; {s['start_cpu_s_median']:.2f} s of CPU here)"
        )
    if "estimated_pi_readings_per_s" in s:
        print(
            f"estimated (no quota): one Pi core would carry about "
            f"{s['estimated_pi_readings_per_s']:,.0f} readings/s at that cost per reading"
        )


if __name__ == "__main__":
    sys.exit(main())
