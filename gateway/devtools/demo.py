"""`edge-gateway demo`: the gateway's main job on a built-in field.

Starts simulated devices — a pump station and a flood gauge (Modbus TCP, two
units on one loopback port), a flow meter (Modbus RTU on a pseudo-terminal bus)
and a gas detector printing lines on another pseudo-terminal — a private
mosquitto, and the gateway with a generated config; subscribes to the gateway's
topics and prints the decoded data as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import aiomqtt

from drivers.sim.modbus import ModbusSimServer, demo_devices, demo_rtu_slave
from drivers.sim.serial_line import LineInstrument, gas_detector_line
from drivers.sim.serial_link import NullModem
from gateway.app import Gateway
from gateway.devtools.broker import BrokerError, Mosquitto
from gateway.settings import parse_config
from gateway.wire import decode_batch

DEMO_CONFIG = """\
[gateway]
id = "demo-cabinet-01"

[mqtt]
host = "127.0.0.1"
port = {broker_port}
health_interval = "5s"
reconnect_max = "2s"

[buffer]
path = "{workdir}/buffer.db"
max_bytes = "64MB"

[batch]
max_readings = 200
max_age = "2s"

[[devices]]
name = "pump-station-7"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {modbus_port}
unit = 1
poll_interval = "500ms"
timeout = "500ms"
points = [
  {{ name = "discharge_pressure", address = 0, type = "float32", unit = "bar" }},
  {{ name = "motor_temperature", address = 2, type = "float32", byte_order = "CDAB", unit = "degC" }},
  {{ name = "polls", address = 4, type = "uint32" }},
  {{ name = "supply_voltage", table = "input", address = 0, type = "int16", unit = "V" }},
  {{ name = "pump_running", table = "coil", address = 0, type = "bool" }},
  {{ name = "door_open", table = "discrete_input", address = 0, type = "bool" }},
]

[[devices]]
name = "flood-gauge-204"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {modbus_port}
unit = 2
poll_interval = "1s"
points = [
  {{ name = "water_level", table = "input", address = 10, type = "float32", unit = "m" }},
  {{ name = "tag", address = 100, type = "string", length = 4 }},
]

[[devices]]
name = "flow-meter-11"
protocol = "modbus_rtu"
port = "{rtu_port}"
baudrate = 19200
unit = 11
poll_interval = "1s"
timeout = "300ms"
points = [
  {{ name = "flow", table = "input", address = 0, type = "float32", unit = "m3/h" }},
  {{ name = "totaliser", table = "input", address = 2, type = "uint32", unit = "m3" }},
]

[[devices]]
name = "gas-detector-3"
protocol = "serial_line"
port = "{gas_port}"
baudrate = 9600
stale_after = "5s"
framing = {{ kind = "delimiter", delimiter = "\\r\\n", max_length = 128 }}
parser = {{ kind = "regex", pattern = 'CH4=(?P<ch4>[-\\d.]+);H2S=(?P<h2s>\\d+)' }}
points = [
  {{ name = "ch4", unit = "%LEL" }},
  {{ name = "h2s", type = "int", unit = "ppm" }},
]
"""


async def run_demo(seconds: float) -> int:
    with tempfile.TemporaryDirectory(prefix="edge-gateway-demo-") as tmp:
        workdir = Path(tmp)
        try:
            broker = Mosquitto(workdir / "broker")
            broker.start()
        except BrokerError as err:
            print(f"demo: {err}", file=sys.stderr)
            return 1
        try:
            async with (
                ModbusSimServer(demo_devices()) as sim,
                NullModem() as bus,
                ModbusSimServer([demo_rtu_slave()], serial_port=bus.b.path),
                LineInstrument(gas_detector_line, period=1.0) as gas,
            ):
                text = DEMO_CONFIG.format(
                    broker_port=broker.port,
                    modbus_port=sim.port,
                    rtu_port=bus.a.path,
                    gas_port=gas.path,
                    workdir=workdir,
                )
                (workdir / "demo.toml").write_text(text)
                loaded = parse_config(text.encode(), str(workdir / "demo.toml"))
                print(
                    f"demo: broker on 127.0.0.1:{broker.port}; simulated Modbus TCP devices on "
                    f"127.0.0.1:{sim.port}, an RTU slave on {bus.a.path}, a gas detector on "
                    f"{gas.path}; running for {seconds:g}s (Ctrl-C stops)\n",
                    file=sys.stderr,
                )
                return await _run(loaded, broker.port, seconds)
        finally:
            broker.stop()


async def _run(loaded, broker_port: int, seconds: float) -> int:  # type: ignore[no-untyped-def]
    gateway = Gateway(loaded)
    totals = {"batches": 0, "readings": 0, "bytes": 0}
    prefix = f"city/{loaded.config.gateway.id}"

    async def watch() -> None:
        async with aiomqtt.Client("127.0.0.1", broker_port, identifier="demo-centre") as client:
            await client.subscribe(f"{prefix}/#", qos=1)
            async for message in client.messages:
                topic = str(message.topic)
                payload = message.payload
                assert isinstance(payload, bytes | bytearray)
                if topic.endswith("/data"):
                    batch = decode_batch(bytes(payload))
                    totals["batches"] += 1
                    totals["readings"] += len(batch.readings)
                    totals["bytes"] += len(payload)
                    latest = {f"{r.device}/{r.point}": r.value for r in batch.readings}
                    shown = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(latest.items()))
                    print(
                        f"[data]   seq {batch.seq}: {len(batch.readings)} readings, "
                        f"{len(payload)} bytes — {shown}"
                    )
                elif topic.endswith("/status"):
                    print(f"[status] {payload.decode()}")
                elif topic.endswith("/health"):
                    h = json.loads(payload)
                    devices = ", ".join(f"{d['name']}={d['state']}" for d in h["devices"])
                    print(
                        f"[health] buffer {h['buffer']['batches']} batch(es) waiting, "
                        f"uplink {h['uplink']['state']}, devices: {devices}"
                    )

    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(watch(), name="demo-watch")
        await asyncio.sleep(0.3)
        runner = tg.create_task(gateway.run(), name="gateway")
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):
            import signal

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, gateway.stop_requested.set)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await gateway.stop_requested.wait()
        gateway.stop_requested.set()
        await runner
        await asyncio.sleep(0.5)  # let the last messages arrive
        watcher.cancel()
    if totals["readings"]:
        print(
            f"\ndemo: {totals['batches']} batches, {totals['readings']} readings received, "
            f"{totals['bytes'] / totals['readings']:.1f} bytes per reading on the wire"
        )
    return 0 if totals["readings"] else 1


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else repr(value)
