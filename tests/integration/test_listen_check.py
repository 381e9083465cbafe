"""`edge-gateway check` and `edge-gateway listen` as a technician runs them on site: real
simulated devices on loopback and pseudo-terminals, the commands as processes of their
own, every wait bounded."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.decode import ByteOrder, DataType, Table
from drivers.serial_port import LineSettings, port_holders
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from drivers.sim.rfc2217_line import Rfc2217Line
from drivers.sim.serial_line import LineInstrument, flow_meter_csv, gas_detector_line
from drivers.sim.serial_link import NullModem, PtyPort, SerialDevicePort

pytestmark = pytest.mark.rig

REPO = Path(__file__).resolve().parents[2]
GAS_PATTERN = r"CH4=(?P<ch4>[-\d.]+);H2S=(?P<h2s>\d+);T=[-\d.]+;N=(?P<n>\d+)"


@dataclass
class Done:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


async def spawn(*args: str) -> asyncio.subprocess.Process:
    """`edge-gateway ARGS` started, its output piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )


async def edge_gateway(*args: str, timeout: float = 60.0) -> Done:
    """`edge-gateway ARGS` as a process of its own, while the simulators run on this loop."""
    proc = await spawn(*args)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


def table_rows(text: str) -> dict[tuple[str, str], list[str]]:
    """The plain table `check` prints into a pipe: (device, point) -> its cells."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("device"))
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=  ))\S", lines[header])]
    rows = {}
    for line in lines[header + 1 :]:
        if not line.strip():
            break
        ends = [*starts[1:], None]
        cells = [line[a:b].strip() for a, b in zip(starts, ends, strict=True)]
        rows[(cells[0], cells[1])] = cells
    return rows


def section(text: str, title: str) -> str:
    """The lines under `title:` in check's output, up to the next blank line."""
    _, _, rest = text.partition(f"\n{title}:\n")
    return rest.split("\n\n")[0]


def config(tmp_path: Path, devices: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nid = "gw-1"\n' + devices)
    return path


def tcp_device(name: str, port: int, unit: int, points: str, extra: str = "") -> str:
    return f"""
[[devices]]
name = "{name}"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {port}
unit = {unit}
timeout = "300ms"
retries = 0
{extra}
points = [
{points}
]
"""


# --- check: Modbus TCP -----------------------------------------------------------------------


@pytest.fixture
async def pump_station() -> AsyncIterator[ModbusSimServer]:
    """Unit 1: a pump (pressure float32 CDAB on the device, flow, speed); unit 2: an energy
    meter with three float32 at input 0, 2, 4; no register at holding 20."""
    pump = SimulatedDevice(unit=1)
    pump.set_value(Table.HOLDING, 0, 2.31, DataType.FLOAT32, ByteOrder.CDAB)
    pump.set_value(Table.HOLDING, 2, 6.5, DataType.FLOAT32)
    pump.set_value(Table.HOLDING, 4, 1234, DataType.UINT16)
    pump.set_value(Table.COIL, 0, True)
    meter = SimulatedDevice(unit=2)
    for i, value in enumerate([229.8, 5.12, 1234.5]):
        meter.set_value(Table.INPUT, 2 * i, value, DataType.FLOAT32)
    meter.fill(Table.INPUT, 6, 2)
    async with ModbusSimServer([pump, meter]) as server:
        yield server


PUMP_POINTS = """
{ name = "pressure", address = 0, type = "float32", byte_order = "CDAB", unit = "bar", scale = 10 },
{ name = "flow", address = 2, type = "float32", unit = "m3/h" },
{ name = "speed", address = 4, unit = "rpm" },
{ name = "running", table = "coil", address = 0, type = "bool" },
"""


async def test_check_of_good_points_exits_0_with_the_table_and_the_same_facts_in_json(
    tmp_path: Path, pump_station: ModbusSimServer
) -> None:
    path = config(tmp_path, tcp_device("pump", pump_station.port, 1, PUMP_POINTS))
    done = await edge_gateway("check", "-c", str(path))
    assert done.code == 0, done.out + done.err
    rows = table_rows(done.out)
    assert rows[("pump", "pressure")][2:7] == [
        "holding 0 (40001)",
        "0xD70A 0x4013",
        "23.1",
        "bar",
        "good",
    ]
    assert rows[("pump", "speed")][2:7] == ["holding 4 (40005)", "0x04D2", "1234", "rpm", "good"]
    assert rows[("pump", "running")][2:4] == ["coil 0 (00001)", "0x0001"]
    assert rows[("pump", "running")][4] == "True"
    assert rows[("pump", "flow")][-1].endswith(" ms")
    assert "0 of" not in done.out and "4 of 4 point reading(s) good; exit 0" in done.out

    as_json = (await edge_gateway("check", "-c", str(path), "--json")).json()
    assert as_json["ok"] is True and as_json["exit_code"] == 0
    points = {p["point"]: p for p in as_json["cycles"][0]["points"]}
    for name, point in points.items():
        row = rows[("pump", name)]
        assert row[2] == point["where"]
        assert row[6] == point["quality"] == "good"
    assert points["pressure"]["value"] == pytest.approx(23.1)
    assert points["pressure"]["raw"] == [0xD70A, 0x4013]
    assert points["pressure"]["datasheet"] == "40001"
    assert points["pressure"]["byte_order"] == "CDAB"
    assert points["speed"]["value"] == 1234 and points["speed"]["latency_ms"] > 0
    assert as_json["cycles"][0]["devices"][0]["state"] == "online"


async def test_a_refused_register_is_comm_error_with_the_exception_and_exits_1(
    tmp_path: Path, pump_station: ModbusSimServer
) -> None:
    points = PUMP_POINTS + '{ name = "level", address = 20, unit = "m" },'
    path = config(tmp_path, tcp_device("pump", pump_station.port, 1, points))
    done = await edge_gateway("check", "-c", str(path))
    assert done.code == 1
    assert table_rows(done.out)[("pump", "level")][2:] == [
        "holding 20 (40021)",
        "-",
        "-",
        "m",
        "comm_error",
        "-",
    ]
    assert table_rows(done.out)[("pump", "speed")][6] == "good"  # its neighbours still read
    problems = section(done.out, "not good")
    assert "pump.level: comm_error: Modbus exception 2 (illegal data address)" in problems
    assert "datasheet counts from 1" in problems


async def test_a_float_in_the_wrong_byte_order_is_named_with_the_order_that_reads_it(
    tmp_path: Path, pump_station: ModbusSimServer
) -> None:
    points = '{ name = "pressure", address = 0, type = "float32", unit = "bar" }'
    path = config(tmp_path, tcp_device("pump", pump_station.port, 1, points))
    done = await edge_gateway("check", "-c", str(path))
    assert done.code == 0  # it reads, with quality good: only the warning tells
    assert section(done.out, "looks wrong").strip() == (
        "pump.pressure: float32 ABCD at holding 0 gives -1.520078e+14 (magnitude 2e+14); "
        'CDAB gives 2.31: byte_order = "CDAB"?'
    )
    strict = await edge_gateway("check", "-c", str(path), "--strict", "--json")
    assert strict.code == 1
    (warning,) = strict.json()["warnings"]
    assert warning["alternatives"][0] == {"byte_order": "CDAB", "address": 0, "value": 2.31}


async def test_addresses_one_register_off_are_named_with_the_address_that_reads_plausibly(
    tmp_path: Path, pump_station: ModbusSimServer
) -> None:
    """The energy meter's map written with the datasheet's numbers minus 30000 (1-based)."""
    points = """
{ name = "voltage", table = "input", address = 1, type = "float32", unit = "V" },
{ name = "current", table = "input", address = 3, type = "float32", unit = "A" },
{ name = "power", table = "input", address = 5, type = "float32", unit = "W" },
"""
    path = config(tmp_path, tcp_device("meter", pump_station.port, 2, points))
    done = await edge_gateway("check", "-c", str(path))
    warnings = section(done.out, "looks wrong")
    assert "meter.current: float32 ABCD at input 3 gives" in warnings
    assert "input 2 gives 5.12: address = 2?" in warnings
    assert "input 4 gives 1234.5: address = 4?" in warnings
    assert section(done.out, "the map").strip() == (
        "meter: voltage, current, power all read plausibly one register lower: if the "
        "addresses are the datasheet's register numbers (which count from 1), subtract 1 "
        "from each"
    )


async def test_a_device_that_does_not_answer_exits_1_with_the_reason(
    tmp_path: Path, pump_station: ModbusSimServer
) -> None:
    devices = tcp_device("pump", pump_station.port, 1, PUMP_POINTS) + tcp_device(
        "gauge", pump_station.port, 9, '{ name = "level", address = 0 }'
    )
    path = config(tmp_path, devices)
    done = await edge_gateway("check", "-c", str(path), "--json")
    assert done.code == 1
    report = done.json()
    gauge = next(d for d in report["cycles"][0]["devices"] if d["name"] == "gauge")
    assert gauge["state"] == "offline"
    assert gauge["reason"] == "no answer within 0.3s"
    level = next(p for p in report["cycles"][0]["points"] if p["device"] == "gauge")
    assert level["quality"] == "device_offline" and level["reason"] == "no answer within 0.3s"
    assert all(p["good"] for p in report["cycles"][0]["points"] if p["device"] == "pump")
    text = await edge_gateway("check", "-c", str(path), "--device", "gauge")
    assert text.code == 1
    assert (
        f"gauge (unit 9 at 127.0.0.1:{pump_station.port}): offline: no answer within 0.3s"
        in section(text.out, "not good")
    )


async def test_check_counts_cycles_and_chooses_devices(
    tmp_path: Path, pump_station: ModbusSimServer
) -> None:
    pump_station.devices[1].add_read_counter(Table.HOLDING, 10)
    points = '{ name = "polls", address = 10, type = "uint32" }'
    devices = tcp_device("pump", pump_station.port, 1, points, 'poll_interval = "200ms"')
    devices += tcp_device("gauge", pump_station.port, 9, '{ name = "level", address = 0 }')
    path = config(tmp_path, devices)
    done = await edge_gateway("check", "-c", str(path), "--device", "pump", "--count", "3")
    assert done.code == 0, done.out
    assert re.findall(r"pump\s+polls\s+holding 10 \(40011\)\s+\S+ \S+\s+(\d+)", done.out) == [
        "1",
        "2",
        "3",
    ]
    assert "gauge" not in done.out
    wrong = await edge_gateway("check", "-c", str(path), "--device", "pumps")
    assert wrong.code == 2 and "no device 'pumps'" in wrong.err and "pump, gauge" in wrong.err


# --- check: serial lines ---------------------------------------------------------------------


async def test_check_reads_three_slaves_at_different_unit_ids_on_one_rtu_bus(
    tmp_path: Path,
) -> None:
    slaves = []
    for unit in (3, 7, 12):
        slave = SimulatedDevice(unit=unit)
        slave.set_value(Table.HOLDING, 0, 1.5 * unit, DataType.FLOAT32)
        slave.set_value(Table.INPUT, 4, unit * 100, DataType.UINT16)
        slaves.append(slave)
    async with NullModem() as line, ModbusSimServer(slaves, serial_port=line.b.path):
        devices = "".join(
            f"""
[[devices]]
name = "slave{unit}"
protocol = "modbus_rtu"
port = "{line.a.path}"
baudrate = 19200
unit = {unit}
timeout = "300ms"
points = [{{ name = "level", address = 0, type = "float32", unit = "m" }},
          {{ name = "code", table = "input", address = 4 }}]
"""
            for unit in (3, 7, 12)
        )
        done = await edge_gateway("check", "-c", str(config(tmp_path, devices)))
    assert done.code == 0, done.out + done.err
    rows = table_rows(done.out)
    for unit in (3, 7, 12):
        assert rows[(f"slave{unit}", "level")][4:7] == [f"{1.5 * unit:g}", "m", "good"]
        assert rows[(f"slave{unit}", "code")][2:5] == [
            "input 4 (30005)",
            f"0x{unit * 100:04X}",
            str(unit * 100),
        ]


def serial_line_devices(gas: str, flow: str) -> str:
    return f"""
[[devices]]
name = "gas"
protocol = "serial_line"
port = "{gas}"
stale_after = "5s"
framing = {{ kind = "delimiter" }}
parser = {{ kind = "regex", pattern = '{GAS_PATTERN}' }}
points = [{{ name = "ch4", unit = "%LEL" }}, {{ name = "n", type = "int" }}]

[[devices]]
name = "flow"
protocol = "serial_line"
port = "{flow}"
mode = "polled"
poll_command = "R\\r\\n"
timeout = "500ms"
framing = {{ kind = "delimiter" }}
parser = {{ kind = "delimited", fields = ["", "flow", "total", "n"] }}
points = [{{ name = "flow", unit = "m3/h" }}, {{ name = "total", type = "int", unit = "m3" }}]
"""


async def test_check_hears_a_streaming_instrument_and_polls_a_polled_one(tmp_path: Path) -> None:
    async with (
        LineInstrument(gas_detector_line, period=0.05) as gas,
        LineInstrument(flow_meter_csv, command=b"R\r\n") as flow,
    ):
        path = config(tmp_path, serial_line_devices(gas.path, flow.path))
        done = await edge_gateway("check", "-c", str(path), "--json")
        polls_seen = flow.polls_seen
    assert done.code == 0, done.out + done.err
    points = {p["point"]: p for p in done.json()["cycles"][0]["points"]}
    assert points["ch4"]["where"] == "field ch4" and points["ch4"]["quality"] == "good"
    assert isinstance(points["ch4"]["raw"], str)
    assert points["ch4"]["value"] == pytest.approx(float(points["ch4"]["raw"]))
    assert points["flow"]["raw"] == "13.5" and points["flow"]["value"] == 13.5
    assert points["total"]["value"] == 1001 and points["total"]["latency_ms"] > 0
    assert polls_seen == 1  # polled once, as the brief of a check says


async def test_check_of_a_silent_instrument_says_so_within_its_stale_after(tmp_path: Path) -> None:
    port = PtyPort()
    try:
        devices = serial_line_devices(port.path, "/dev/null").split("[[devices]]")[1]
        path = config(tmp_path, "[[devices]]" + devices.replace('"5s"', '"1s"'))
        started = time.monotonic()
        done = await edge_gateway("check", "-c", str(path))
    finally:
        port.close()
    assert done.code == 1
    assert time.monotonic() - started < 15
    assert "gas" in section(done.out, "not good") and "no valid frame for 1s" in done.out


# --- listen --------------------------------------------------------------------------------------


@pytest.fixture
async def gas_detector() -> AsyncIterator[LineInstrument]:
    async with LineInstrument(gas_detector_line, period=0.05) as gas:
        yield gas


async def test_listen_shows_raw_bytes_with_their_time_of_arrival(
    gas_detector: LineInstrument,
) -> None:
    done = await edge_gateway("listen", "--port", gas_detector.path, "--seconds", "1", "--json")
    assert done.code == 0, done.err
    events = done.json_lines()
    chunks = [e for e in events if e["event"] == "bytes"]
    assert len(chunks) >= 5
    assert all(bytes.fromhex(e["hex"]).decode() == e["text"] for e in chunks)
    assert "CH4=" in "".join(e["text"] for e in chunks)
    offsets = [e["offset_s"] for e in chunks]
    assert offsets == sorted(offsets) and offsets[-1] <= 1.5
    assert events[-1]["event"] == "end" and events[-1]["bytes"] == sum(e["length"] for e in chunks)

    text = await edge_gateway("listen", "--port", gas_detector.path, "--seconds", "0.5")
    assert re.search(r"^\d\d:\d\d:\d\d\.\d{3} +\+\d+\.\d{3}s bytes +\d+ B  \"CH4=", text.out, re.M)
    assert re.search(r"^ +hex 43 48 34 3d", text.out, re.M)


async def test_listen_cuts_frames_and_parses_fields(gas_detector: LineInstrument) -> None:
    done = await edge_gateway(
        "listen",
        "--port",
        gas_detector.path,
        "--framing",
        'kind="delimiter", delimiter="\\r\\n"',
        "--parser",
        f"kind='regex', pattern='{GAS_PATTERN}'",
        "--frames",
        "3",
        "--json",
    )
    assert done.code == 0, done.err
    frames = [e for e in done.json_lines() if e["event"] == "frame"]
    assert len(frames) == 3
    for frame in frames:
        assert re.fullmatch(r"CH4=[\d.]+;H2S=\d;T=21.4;N=\d+", frame["text"])
        assert frame["fields"]["n"] == frame["text"].rsplit("=", 1)[1]
    ns = [int(f["fields"]["n"]) for f in frames]
    assert ns == list(range(ns[0], ns[0] + 3))  # none lost between frames


async def test_listen_polls_an_instrument_that_answers(tmp_path: Path) -> None:
    async with LineInstrument(flow_meter_csv, command=b"R\r\n") as flow:
        done = await edge_gateway(
            "listen",
            "--port",
            flow.path,
            "--send",
            "R\\r\\n",
            "--every",
            "0.2",
            "--framing",
            "delimiter",
            "--parser",
            "kind='delimited', fields=['', 'flow', 'total', 'n']",
            "--frames",
            "2",
        )
    assert done.code == 0, done.err
    assert done.out.count(' sent       3 B  "R\\r\\n"') == 2
    assert "fields flow='13.5' total='1001' n='1'" in done.out
    assert "fields flow='14.5' total='1002' n='2'" in done.out


async def test_listen_as_a_device_of_the_config_shows_points_as_the_gateway_reads_them(
    tmp_path: Path, gas_detector: LineInstrument
) -> None:
    devices = serial_line_devices(gas_detector.path, "/dev/null").split("[[devices]]")[1]
    devices = devices.replace(
        '{ name = "n", type = "int" }', '{ name = "n", type = "int", process = { max = 0 } }'
    )
    path = config(tmp_path, "[[devices]]" + devices)
    done = await edge_gateway(
        "listen", "-c", str(path), "--device", "gas", "--frames", "2", "--json"
    )
    assert done.code == 0, done.err
    frames = [e for e in done.json_lines() if e["event"] == "frame"]
    for frame in frames:
        points = {p["point"]: p for p in frame["points"]}
        assert points["ch4"]["quality"] == "good" and points["ch4"]["unit"] == "%LEL"
        assert points["ch4"]["value"] == float(frame["fields"]["ch4"])
        assert points["n"] == {
            "point": "n",
            "value": int(frame["fields"]["n"]),
            "unit": None,
            "quality": "out_of_range",  # the section's processing ran
        }
    modbus = tcp_device("pump", 502, 1, '{ name = "p", address = 0 }')
    other = config(tmp_path, modbus)
    refused = await edge_gateway("listen", "-c", str(other), "--device", "pump")
    assert refused.code == 2 and "modbus_tcp" in refused.err


async def test_listen_to_a_silent_port_says_what_to_check_and_exits_1() -> None:
    port = PtyPort()
    try:
        done = await edge_gateway("listen", "--port", port.path, "--seconds", "1", "--json")
    finally:
        port.close()
    assert done.code == 1, done.err
    assert re.search(rf"hint: nothing received in 1\.?\d?s on {port.path} at 9600 8N1\.", done.err)
    assert "RS-485 A and B" in done.err and "baud rate" in done.err
    assert done.json_lines()[-1]["event"] == "end", "stdout stays JSON"
    assert done.err.count("hint:") == 1


async def test_listen_with_a_framing_that_cuts_nothing_says_so(
    gas_detector: LineInstrument,
) -> None:
    done = await edge_gateway(
        "listen",
        "--port",
        gas_detector.path,
        "--framing",
        'kind="delimiter", delimiter="@@"',
        "--seconds",
        "1",
    )
    assert done.code == 0, done.err
    assert re.search(r"hint: \d+ bytes in 1\.?\d?s but not one frame cut", done.err), done.err
    assert "--raw shows the bytes" in done.err


async def test_listen_to_a_port_that_does_not_exist_exits_3() -> None:
    done = await edge_gateway("listen", "--port", "/dev/ttyUSB-nothing-here", "--seconds", "1")
    assert done.code == 3
    assert "/dev/ttyUSB-nothing-here does not exist (is the adapter plugged in?" in done.err
    assert "Traceback" not in done.err


@pytest.fixture
def held_port() -> Iterator[tuple[PtyPort, subprocess.Popen[bytes]]]:
    """A pty that another process (the 'running service') holds open exclusively."""
    port = PtyPort()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import serial, sys, time\n"
            f"s = serial.Serial({port.path!r}, exclusive=True)\n"
            "print('holding', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"holding\n"
        yield port, holder
    finally:
        holder.kill()
        holder.wait(10)
        port.close()


async def test_listen_to_a_port_held_by_another_process_names_it_and_exits_3(
    held_port: tuple[PtyPort, subprocess.Popen[bytes]],
) -> None:
    port, holder = held_port
    done = await edge_gateway("listen", "--port", port.path, "--seconds", "1")
    assert done.code == 3
    assert f"{port.path} is in use by " in done.err and f"pid {holder.pid} (" in done.err
    assert "Traceback" not in done.err


async def test_check_of_a_port_held_by_another_process_names_it_and_exits_3(
    tmp_path: Path, held_port: tuple[PtyPort, subprocess.Popen[bytes]]
) -> None:
    port, holder = held_port
    devices = serial_line_devices(port.path, "/dev/null").split("[[devices]]")[1]
    done = await edge_gateway("check", "-c", str(config(tmp_path, "[[devices]]" + devices)))
    assert done.code == 3
    assert f"pid {holder.pid} (" in section(done.out, "not good")


async def test_listen_bad_framing_is_bad_input_with_the_key(gas_detector: LineInstrument) -> None:
    done = await edge_gateway(
        "listen", "--port", gas_detector.path, "--framing", 'kind="fixed", length=0'
    )
    assert done.code == 2
    assert "--framing length:" in done.err and "Traceback" not in done.err
    unknown = await edge_gateway("listen", "--port", gas_detector.path, "--framing", "lines")
    assert unknown.code == 2 and "'delimiter', 'fixed', 'length_field'" in unknown.err


# --- Ctrl-C ----------------------------------------------------------------------------------


async def _interrupt(proc: asyncio.subprocess.Process, sig: int = signal.SIGINT) -> Done:
    proc.send_signal(sig)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_ctrl_c_stops_listen_with_130_no_traceback_and_the_port_closed(
    gas_detector: LineInstrument, sig: int, code: int
) -> None:
    """SIGTERM (a rig's `terminate()`) stops it as Ctrl-C does, with 143: the totals
    are not lost (`--json`'s 'end' event, the summary on stderr)."""
    proc = await spawn("listen", "--port", gas_detector.path, "--framing", "delimiter")
    assert proc.stderr is not None
    said = await asyncio.wait_for(proc.stderr.readline(), 30)  # said once the port is open
    assert said.startswith(b"listening on "), said
    assert proc.pid in dict(port_holders(gas_detector.path))
    done = await _interrupt(proc, sig)
    assert done.code == code
    assert "Traceback" not in done.err and "KeyboardInterrupt" not in done.err
    assert "frame(s)" in done.err  # the totals so far
    assert proc.pid not in dict(port_holders(gas_detector.path))


async def test_sigterm_stops_listen_json_with_its_end_event_even_with_sigint_ignored(
    gas_detector: LineInstrument,
) -> None:
    """A command started from a script's `&` job ignores SIGINT: SIGTERM must still end
    it with its totals (it cannot go through Ctrl-C's path)."""
    proc = await asyncio.create_subprocess_exec(
        *("sh", "-c", 'trap "" INT; exec "$0" -m gateway "$@"', sys.executable),
        *("listen", "--port", gas_detector.path, "--framing", "delimiter", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 30)  # a frame: it is listening
    assert json.loads(first)["event"] in ("frame", "bytes"), first
    done = await _interrupt(proc, signal.SIGTERM)
    assert done.code == 143, done.err
    assert "Traceback" not in done.err
    end = json.loads(done.out.splitlines()[-1])
    assert end["event"] == "end" and end["frames"] >= 1


async def test_ctrl_c_reaches_the_command_when_the_test_run_was_started_ignoring_sigint(
    tmp_path: Path,
) -> None:
    """`.ci/run &` from a script starts pytest with SIGINT ignored, and every command it
    starts would inherit that and sit through its Ctrl-C (tests/conftest.py takes SIGINT
    back): the listen test above, run by a pytest started so, passes within its bounds."""
    test = f"{__file__}::test_ctrl_c_stops_listen_with_130_no_traceback_and_the_port_closed"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the nested pytest inherits it
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            f"--basetemp={tmp_path / 'run'}",
            test,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, out.decode()[-3000:]


async def test_ctrl_c_stops_check_with_130_no_traceback_and_the_port_closed(
    tmp_path: Path,
) -> None:
    port = PtyPort()  # an instrument that says nothing: check waits its stale_after
    try:
        devices = serial_line_devices(port.path, "/dev/null").split("[[devices]]")[1]
        path = config(tmp_path, "[[devices]]" + devices.replace('"5s"', '"60s"'))
        proc = await spawn("check", "-c", str(path))
        deadline = time.monotonic() + 30
        while proc.pid not in dict(port_holders(port.path)):
            assert time.monotonic() < deadline, "check never opened the port"
            await asyncio.sleep(0.05)
        done = await _interrupt(proc)
        assert proc.pid not in dict(port_holders(port.path))
    finally:
        port.close()
    assert done.code == 130
    assert "Traceback" not in done.err and "KeyboardInterrupt" not in done.err


async def test_listen_through_a_serial_device_server_ends_in_words_when_the_server_drops_it() -> (
    None
):
    async with Rfc2217Line(LineSettings(115200)) as line:
        port = SerialDevicePort(line.bus_path, 115200)
        async with LineInstrument(gas_detector_line, period=0.05, port=port):
            listen = asyncio.create_task(
                edge_gateway(
                    "listen",
                    "--port",
                    line.url,
                    "--baud",
                    "115200",
                    "--seconds",
                    "20",
                    "--json",
                    timeout=30,
                )
            )
            deadline = time.monotonic() + 15
            while line.client is None or line.connections < 1:
                assert time.monotonic() < deadline, "listen never connected"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            dropped_at = time.monotonic()
            assert line.drop_client()
            done = await listen
    assert time.monotonic() - dropped_at < 10  # not the whole --seconds
    assert done.code == 3, (done.out, done.err)  # the environment: the port went away
    assert "the port went away: the device server closed the connection" in done.err
    events = done.json_lines()
    assert events[-1]["event"] == "end" and events[-1]["reason"] == "port lost"
    assert events[-1]["bytes"] > 0 and "CH4=" in "".join(
        e["text"] for e in events if e["event"] == "bytes"
    )
