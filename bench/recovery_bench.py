"""How soon data flows again after the link or the broker comes back.

A private mosquitto; a TCP proxy in front of it that can fail like a link; the
gateway as a child process (exactly as `edge-gateway run`) with the default
[mqtt] settings, only host and port pointing at the proxy; a simulated Modbus TCP
device polled every 100 ms; and a subscriber on the broker itself (persistent,
QoS 1), as the city centre. For each outage kind and length, the time from the
moment the link or the broker returns to the first batch the centre had not seen
before. Kinds:

- blackhole: every byte vanishes, both ways, with no reset; connection attempts
  are accepted and go nowhere (the usual cellular failure);
- reset: every connection is reset and new ones are refused (nothing listens);
- broker: the broker is stopped (SIGTERM) and started again.

    .venv/bin/python bench/recovery_bench.py                       # 2, 10, 30, 90 s x 3 kinds
    .venv/bin/python bench/recovery_bench.py --outages 5,60 --kinds blackhole

Prints a table; asserts nothing. Record the figures in docs/performance.md with
the command line and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho

from drivers.modbus.decode import Table
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from gateway.devtools.broker import Mosquitto
from gateway.devtools.rig import LinkProxy
from gateway.wire import decode_batch

REPO = Path(__file__).resolve().parents[1]

# The rig's link that fails on cue: blackhole() (bytes vanish, no reset), down() (every
# connection reset and nothing listening on its port, so connects are refused) and
# restore() (listening on the same port and carrying traffic again).
Link = LinkProxy


class Centre:
    """A persistent QoS 1 subscriber on the broker itself: (arrival time, seq) per batch."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.arrivals: list[tuple[float, int]] = []
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"bench-centre-{uuid.uuid4().hex[:6]}",
            clean_session=False,
        )
        self.client.on_connect = lambda c, *a: c.subscribe("city/+/data/#", qos=1)
        self.client.on_message = self.on_message
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        seq = decode_batch(msg.payload).seq
        with self.lock:
            self.arrivals.append((time.time(), seq))

    def seqs(self) -> set[int]:
        with self.lock:
            return {seq for _, seq in self.arrivals}

    def first_new(self, seen: set[int], after: float) -> float | None:
        with self.lock:
            times = [t for t, seq in self.arrivals if t >= after and seq not in seen]
        return min(times) if times else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def gateway_config(workdir: Path, port: int, modbus: int, batch_age: str) -> str:
    return f"""
[gateway]
id = "bench"
log_level = "info"

[mqtt]
host = "127.0.0.1"
port = {port}

[buffer]
path = "{workdir}/buffer.db"
max_bytes = "200MB"

[batch]
max_age = "{batch_age}"

[[devices]]
name = "pump"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {modbus}
unit = 1
poll_interval = "100ms"
points = [
  {{ name = "polls", address = 0, type = "uint32" }},
]
"""


def machine_fact(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()


async def wait_for(predicate, within: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return False


async def one_outage(
    kind: str, seconds: float, broker: Mosquitto, link: Link, centre: Centre, within: float
) -> tuple[float | None, int]:
    attempts_before = link.connections
    if kind == "blackhole":
        await asyncio.to_thread(link.blackhole)
    elif kind == "reset":
        await asyncio.to_thread(link.down)
    else:
        await asyncio.to_thread(broker.stop)
    await asyncio.sleep(seconds)
    seen = centre.seqs()
    if kind == "broker":
        await asyncio.to_thread(broker.start)
    else:
        await asyncio.to_thread(link.restore)
    back = time.time()
    arrived = await wait_for(lambda: centre.first_new(seen, back) is not None, within)
    first = centre.first_new(seen, back) if arrived else None
    return (None if first is None else first - back), link.connections - attempts_before


async def main(args: argparse.Namespace) -> None:
    outages = [float(x) for x in args.outages.split(",")]
    kinds = args.kinds.split(",")
    results: list[tuple[str, float, list[float | None], int]] = []
    with tempfile.TemporaryDirectory(prefix="recovery-bench-") as tmp:
        workdir = Path(tmp)
        broker = Mosquitto(workdir / "broker")
        broker.start()
        link = Link(broker.port)
        link.start()
        device = SimulatedDevice(unit=1)
        device.add_read_counter(Table.HOLDING, 0)
        log = (workdir / "gateway.log").open("wb")
        proc: subprocess.Popen[bytes] | None = None
        centre = Centre(broker.port)
        try:
            async with ModbusSimServer([device]) as sim:
                cfg = workdir / "gateway.toml"
                cfg.write_text(gateway_config(workdir, link.port, sim.port, args.batch_age))
                proc = subprocess.Popen(  # noqa: ASYNC220 - the gateway runs beside us
                    [sys.executable, "-m", "gateway", "run", "-c", str(cfg)],
                    cwd=REPO,
                    stdout=log,
                    stderr=log,
                )
                if not await wait_for(lambda: len(centre.seqs()) >= 3, 30):
                    raise SystemExit("no data reached the centre; see the gateway log")
                for kind in kinds:
                    for seconds in outages:
                        times: list[float | None] = []
                        attempts = 0
                        for _ in range(args.repeat):
                            took, tried = await one_outage(
                                kind, seconds, broker, link, centre, args.timeout
                            )
                            times.append(took)
                            attempts = max(attempts, tried)
                            shown = "none" if took is None else f"{took:.2f}s"
                            print(f"  {kind:9} {seconds:5g}s outage: first new batch after {shown}")
                            await asyncio.sleep(args.settle)
                        results.append((kind, seconds, times, attempts))
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            centre.close()
            link.stop()
            broker.stop()
            log.close()
            if args.keep_log:
                print((workdir / "gateway.log").read_text(errors="replace"))

    print()
    print(f"machine: nproc {machine_fact('nproc')}; {machine_fact('uname', '-a')}")
    print(
        f"Python {platform.python_version()}; gateway [mqtt] defaults; [batch] max_age {args.batch_age}"
    )
    print()
    print(
        "| outage kind | length | first new batch after the way back opened "
        f"({args.repeat} run(s): median, max) | connect attempts into the blackhole (max) |"
    )
    print("|---|---|---|---|")
    for kind, seconds, times, attempts in results:
        got = sorted(t for t in times if t is not None)
        missing = len(times) - len(got)
        if not got:
            shown = "**none**"
        elif len(got) == 1:
            shown = f"{got[0]:.2f} s"
        else:
            shown = f"{statistics.median(got):.2f} s, max {got[-1]:.2f} s"
        if missing:
            shown += f" (**{missing} never**)"
        print(f"| {kind} | {seconds:g} s | {shown} | {attempts if kind == 'blackhole' else '-'} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outages", default="2,10,30,90", help="outage lengths in seconds")
    parser.add_argument(
        "--kinds", default="blackhole,reset,broker", help="blackhole, reset and/or broker"
    )
    parser.add_argument(
        "--batch-age", default="1s", help="[batch] max_age (the only non-[mqtt] setting changed)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="outages of each kind and length")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up waiting after this")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between outages")
    parser.add_argument(
        "--keep-log", action="store_true", help="print the gateway's log at the end"
    )
    asyncio.run(main(parser.parse_args()))
