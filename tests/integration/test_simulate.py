"""`edge-gateway simulate` as a rig runs it: the command as a process of its own, real
clients (pymodbus, pyserial, raw sockets) on loopback and on its pseudo-terminals'
links, faults switched through its control socket. Every wait is bounded."""

from __future__ import annotations

import json
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import serial
from pymodbus.client import ModbusSerialClient, ModbusTcpClient

from drivers.serial_line.checksums import crc16_modbus
from drivers.serial_line.parsers import NmeaParser, ParseError
from drivers.sim.modbus import free_tcp_port

pytestmark = pytest.mark.rig

REPO = Path(__file__).resolve().parents[2]

RIG = """
[simulator]
seed = 1

[[devices]]
name = "pump"
protocol = "modbus_tcp"
port = {port}
unit = 1
points = [
  {{ name = "pressure", address = 0, type = "float32", unit = "bar", value = 6.5 }},
  {{ name = "reads", address = 2, type = "uint32", value = {{ kind = "counter" }} }},
  {{ name = "flow", address = 10, type = "uint16", scale = 0.1, value = 4.2 }},
]

[[devices]]
name = "gauge"
protocol = "modbus_tcp"
port = {port}
unit = 2
points = [{{ name = "level", register = 30011, type = "float32", value = 1.25 }}]

[[devices]]
name = "meter"
protocol = "modbus_rtu"
bus = "rs485"
unit = 13
points = [{{ name = "voltage", table = "input", address = 0, type = "float32", value = 230.5 }}]

[[devices]]
name = "gps"
protocol = "serial_line"
period = "100ms"
frame = {{ kind = "nmea", template = "GPGGA,123519,{{lat:lat}},{{lon:lon}},1,08,0.9,{{alt:.1f}},M,46.9,M,," }}
points = [{{ name = "lat", value = 48.1173 }}, {{ name = "lon", value = 11.5167 }}, {{ name = "alt", value = 545.4 }}]

[[devices]]
name = "gas"
protocol = "serial_line"
period = "100ms"
frame = {{ kind = "text", template = "CH4={{ch4:.2f}};N={{n}}\\r\\n" }}
points = [
  {{ name = "ch4", value = {{ kind = "ramp", start = 0.0, stop = 50.0, period = "1m" }} }},
  {{ name = "n", type = "int", value = {{ kind = "counter" }} }},
]
"""


@dataclass
class Simulator:
    process: subprocess.Popen[str]
    ready: dict[str, Any]
    links: Path
    port: int

    def control(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.ready["control"])
            s.sendall(command.encode() + b"\n")
            return s.makefile().readline().rstrip("\n")

    def clear(self) -> None:
        assert self.control("clear") == "ok no faults"

    def device(self, name: str) -> dict[str, Any]:
        return next(d for d in self.ready["devices"] if d["name"] == name)


def start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def ready_line(process: subprocess.Popen[str], timeout: float = 20.0) -> dict[str, Any]:
    """The --json line the simulator prints when it serves everything."""
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], timeout)
    if not readable:
        process.kill()
        raise AssertionError(f"no ready line in {timeout}s")
    line = process.stdout.readline()
    if not line:
        _, err = process.communicate(timeout=10)
        raise AssertionError(f"the simulator ended ({process.returncode}): {err}")
    return json.loads(line)  # type: ignore[no-any-return]


def simulate_until_it_ends(cwd: Path) -> subprocess.CompletedProcess[str]:
    """`edge-gateway simulate rig.toml` in `cwd`, expected to end by itself (bad input or
    environment)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "simulate", "rig.toml"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
    )


def finish(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str]:
    process.send_signal(sig)
    try:
        _, err = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return process.returncode, err


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    work = tmp_path_factory.mktemp("simulate")
    port = free_tcp_port()
    (work / "rig.toml").write_text(RIG.format(port=port))
    process = start("rig.toml", "--json", "--link", "links", "--control", "control.sock", cwd=work)
    simulator = Simulator(process, ready_line(process), work / "links", port)
    yield simulator
    finish(process)


# --- serving --------------------------------------------------------------------------------


def test_the_ready_line_says_what_is_served_where(rig: Simulator) -> None:
    assert rig.ready["ready"] is True
    assert Path(rig.ready["control"]).name == "control.sock"
    pump = rig.device("pump")
    assert (pump["protocol"], pump["host"], pump["port"], pump["unit"]) == (
        "modbus_tcp",
        "127.0.0.1",
        rig.port,
        1,
    )
    assert pump["points"] == ["pressure", "reads", "flow"]
    meter = rig.device("meter")
    assert meter["link"].endswith("links/rs485") and meter["bus"] == "rs485"
    assert str(Path(meter["link"]).readlink()) == meter["path"]
    gas = rig.device("gas")
    assert (gas["mode"], gas["period"]) == ("streaming", 0.1)
    assert gas["link"].endswith("links/gas")


def test_one_tcp_port_serves_two_unit_ids_each_with_its_own_points(rig: Simulator) -> None:
    client = ModbusTcpClient("127.0.0.1", port=rig.port, timeout=2)
    assert client.connect()
    try:
        pump = client.read_holding_registers(0, count=11, device_id=1)
        gauge = client.read_input_registers(10, count=2, device_id=2)
        again = client.read_holding_registers(2, count=2, device_id=1)
    finally:
        client.close()
    assert client.convert_from_registers(pump.registers[0:2], client.DATATYPE.FLOAT32) == 6.5
    assert pump.registers[10] == 42  # 4.2 read with scale 0.1
    assert client.convert_from_registers(gauge.registers, client.DATATYPE.FLOAT32) == 1.25
    first = client.convert_from_registers(pump.registers[2:4], client.DATATYPE.UINT32)
    assert client.convert_from_registers(again.registers, client.DATATYPE.UINT32) == first + 1


def test_an_rtu_bus_on_a_pseudo_terminal_is_reached_through_its_link(rig: Simulator) -> None:
    client = ModbusSerialClient(str(rig.links / "rs485"), baudrate=19200, timeout=1, retries=0)
    assert client.connect()
    try:
        answer = client.read_input_registers(0, count=2, device_id=13)
    finally:
        client.close()
    assert client.convert_from_registers(answer.registers, client.DATATYPE.FLOAT32) == 230.5
    assert rtu_ask(rig.links / "rs485", 14, 4, 0, 2) == b""  # no slave 14 on the bus


def test_a_streaming_line_instrument_sends_frames_the_gateways_parser_reads(
    rig: Simulator,
) -> None:
    lines = read_lines(rig.links / "gps", 3)
    parser = NmeaParser({"alt": 9}, sentence="GGA", coordinates={"lat": (2, 3), "lon": (4, 5)})
    fields = [parser.parse(line) for line in lines]
    assert all(f["alt"] == "545.4" for f in fields)
    assert fields[0]["lat"] == pytest.approx(48.1173)
    counts = [int(line.split(b"N=")[1]) for line in read_lines(rig.links / "gas", 3)]
    assert counts == list(range(counts[0], counts[0] + 3))  # a frame every period, none lost


# --- faults, each switched on and off through the control socket -------------------------


def test_silent_gives_no_answer_until_cleared(rig: Simulator) -> None:
    assert rig.control("fault pump silent") == "ok pump silent"
    try:
        assert tcp_ask(rig.port, 1, 0, 2, wait=0.4) == b""
        assert len(tcp_ask(rig.port, 2, 10, 2, function=4)) == 13  # its neighbour answers
    finally:
        rig.clear()
    assert len(tcp_ask(rig.port, 1, 0, 2)) == 13


def test_exception_answers_any_code_for_the_device_or_for_one_point(rig: Simulator) -> None:
    assert rig.control("fault pump exception 0x30") == "ok pump exception 48"
    try:
        assert tcp_ask(rig.port, 1, 0, 2, tid=9) == mbap(9, 1, b"\x83\x30")
        assert rig.control("clear pump") == "ok pump no fault"
        assert rig.control("fault pump.flow exception 4") == "ok pump.flow exception 4"
        assert tcp_ask(rig.port, 1, 10, 1, tid=10) == mbap(10, 1, b"\x83\x04")
        assert tcp_ask(rig.port, 1, 0, 2, tid=11)[7:9] == b"\x03\x04"  # the point beside it
    finally:
        rig.clear()
    assert tcp_ask(rig.port, 1, 10, 1, tid=12) == mbap(12, 1, b"\x03\x02\x00\x2a")


def test_delay_answers_late_by_its_milliseconds(rig: Simulator) -> None:
    assert rig.control("fault pump delay 600") == "ok pump delay 600"
    try:
        started = time.monotonic()
        assert tcp_ask(rig.port, 1, 0, 2, wait=3) == good_answer(1)
        assert time.monotonic() - started >= 0.6
    finally:
        rig.clear()
    started = time.monotonic()
    assert tcp_ask(rig.port, 1, 0, 2) == good_answer(1)
    assert time.monotonic() - started < 0.5


def test_crc_breaks_the_crc_of_rtu_answers_and_is_refused_for_tcp(rig: Simulator) -> None:
    assert rig.control("fault pump crc").startswith("error Modbus TCP answers carry no CRC")
    assert rig.control("fault meter crc") == "ok meter crc"
    try:
        answer = rtu_ask(rig.links / "rs485", 13, 4, 0, 2)
        assert len(answer) == 9 and answer[:3] == b"\x0d\x04\x04"
        assert crc16_modbus(answer[:-2]).to_bytes(2, "little") != answer[-2:]
    finally:
        rig.clear()
    answer = rtu_ask(rig.links / "rs485", 13, 4, 0, 2)
    assert crc16_modbus(answer[:-2]).to_bytes(2, "little") == answer[-2:]


def test_txid_answers_with_another_transaction_id(rig: Simulator) -> None:
    assert rig.control("fault meter txid") == "error only Modbus TCP answers carry a transaction id"
    assert rig.control("fault pump txid") == "ok pump txid"
    try:
        answer = tcp_ask(rig.port, 1, 0, 2, tid=77)
        assert answer[:2] != b"\x00\x4d"  # 77
        assert answer[2:] == good_answer(77)[2:]
    finally:
        rig.clear()
    assert tcp_ask(rig.port, 1, 0, 2, tid=78)[:2] == b"\x00\x4e"


def test_garbage_replaces_answers_and_frames_with_random_bytes(rig: Simulator) -> None:
    assert rig.control("fault pump garbage") == "ok pump garbage"
    assert rig.control("fault gas garbage") == "ok gas garbage"
    try:
        answer = tcp_ask(rig.port, 1, 0, 2, tid=5, wait=0.5)
        assert answer != good_answer(5)
        assert b"CH4=" not in read_bytes(rig.links / "gas", 0.4)
    finally:
        rig.clear()
    assert tcp_ask(rig.port, 1, 0, 2, tid=6) == good_answer(6)
    assert read_lines(rig.links / "gas", 1)[0].startswith(b"CH4=")


def test_drop_closes_the_connection_instead_of_answering(rig: Simulator) -> None:
    assert rig.control("fault meter drop").startswith("error meter is on a serial bus")
    assert rig.control("fault pump.pressure drop") == "ok pump.pressure drop"
    try:
        with socket.create_connection(("127.0.0.1", rig.port), timeout=2) as s:
            s.sendall(mbap(1, 1, struct.pack(">BHH", 3, 0, 2)))
            assert s.recv(100) == b""  # closed, no answer
    finally:
        rig.clear()
    assert len(tcp_ask(rig.port, 1, 0, 2)) == 13


def test_flood_sends_bytes_without_pause_until_cleared(rig: Simulator) -> None:
    assert rig.control("fault gas.ch4 flood").startswith("error a line instrument's faults")
    assert rig.control("fault gas flood") == "ok gas flood"
    try:
        flooded = read_bytes(rig.links / "gas", 0.5)
    finally:
        rig.clear()
    calm = read_bytes(rig.links / "gas", 0.5)
    assert len(flooded) > 20 * len(calm) > 0, (len(flooded), len(calm))
    assert flooded.count(b"CH4=") > 100  # frames back to back


def test_crc_and_silent_on_a_line_instrument(rig: Simulator) -> None:
    parser = NmeaParser({"alt": 9}, sentence="GGA")
    assert rig.control("fault gps crc") == "ok gps crc"
    try:
        line = read_lines(rig.links / "gps", 2)[1]
        with pytest.raises(ParseError) as refused:
            parser.parse(line)
        assert refused.value.kind == "checksum"
        assert rig.control("fault gps silent") == "ok gps silent"  # replaces crc
        assert read_bytes(rig.links / "gps", 0.4) == b""
    finally:
        rig.clear()
    assert parser.parse(read_lines(rig.links / "gps", 1)[0])["alt"] == "545.4"


def test_set_holds_a_value_until_unset_and_status_shows_it_all(rig: Simulator) -> None:
    assert rig.control("set gauge.level 3.5") == "ok gauge.level = 3.5"
    assert rig.control("fault pump.flow delay 10") == "ok pump.flow delay 10"
    try:
        held = tcp_ask(rig.port, 2, 10, 2, function=4)
        assert struct.unpack(">f", held[9:13]) == (3.5,)
        assert len(tcp_ask(rig.port, 1, 0, 2)) == 13  # the pump read here, whatever ran before
        status = json.loads(rig.control("status"))
        gauge = next(d for d in status["devices"] if d["name"] == "gauge")
        assert gauge["points"] == [{"name": "level", "value": 3.5, "held": True, "fault": None}]
        pump = next(d for d in status["devices"] if d["name"] == "pump")
        assert pump["fault"] is None and pump["reads"] > 0
        assert [p["fault"] for p in pump["points"]] == [None, None, "delay 10"]
        assert rig.control("set gauge.level high").startswith("error 'high' is text")
    finally:
        assert rig.control("unset gauge.level") == "ok gauge.level follows its value again"
        rig.clear()
    assert struct.unpack(">f", tcp_ask(rig.port, 2, 10, 2, function=4)[9:13]) == (1.25,)


def test_a_command_that_names_nothing_served_is_refused_and_changes_nothing(
    rig: Simulator,
) -> None:
    assert rig.control("fault metre silent") == (
        "error no device 'metre' (devices: pump, gauge, meter, gps, gas)"
    )
    assert rig.control("fault pump.preasure silent").startswith(
        "error 'pump' has no point 'preasure' (its points: pressure, reads, flow)"
    )
    assert rig.control("fault pump slow").startswith("error no fault 'slow'")
    assert json.loads(rig.control("status"))["devices"][0]["fault"] is None


# --- a gateway config, bad input, the environment, stopping ----------------------------------

GATEWAY = """
[gateway]
id = "rig"
[buffer]
path = "{work}/buffer.db"
[[devices]]
name = "pump"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {port}
unit = 3
points = [
  {{ name = "pressure", register = 40001, type = "float32", unit = "bar" }},
  {{ name = "flow", address = 2, type = "uint32", byte_order = "CDAB", scale = 0.01, unit = "m3/h" }},
]
[[devices]]
name = "level"
protocol = "modbus_rtu"
port = "{work}/tty/bus"
unit = 1
timeout = "300ms"
profile = "keller-series30"
[[devices]]
name = "gas"
protocol = "serial_line"
port = "{work}/tty/gas"
stale_after = "2s"
framing = {{ kind = "delimiter", delimiter = "\\r\\n" }}
parser = {{ kind = "regex", pattern = 'CH4=(?P<ch4>[-\\d.]+);H2S=(?P<h2s>\\d+)' }}
points = [{{ name = "ch4", unit = "%LEL" }}, {{ name = "h2s", type = "int", unit = "ppm" }}]
"""


def test_from_config_serves_what_a_gateway_config_reads_and_check_reads_every_point_good(
    tmp_path: Path,
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(GATEWAY.format(work=tmp_path, port=free_tcp_port()))
    process = start("--from-config", str(config), "--json", cwd=tmp_path)
    try:
        ready = ready_line(process)
        assert [d["name"] for d in ready["devices"]] == ["pump", "level", "gas"]
        assert Path(ready["devices"][1]["link"]) == tmp_path / "tty" / "bus"
        check = subprocess.run(
            [sys.executable, "-m", "gateway", "check", "-c", str(config), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
    finally:
        code, err = finish(process)
    assert check.returncode == 0, check.stdout + check.stderr
    (cycle,) = json.loads(check.stdout)["cycles"]
    read = {(p["device"], p["point"], p["quality"]) for p in cycle["points"]}
    assert read == {
        ("pump", "pressure", "good"),
        ("pump", "flow", "good"),
        ("level", "pressure", "good"),  # the profile's points
        ("level", "sensor_temperature", "good"),
        ("gas", "ch4", "good"),
        ("gas", "h2s", "good"),
    }
    assert code == 0, err
    assert not (tmp_path / "tty" / "bus").exists()  # links removed at stop


SERVED = """
[gateway]
id = "rig"
[buffer]
path = "{work}/buffer.db"
[[devices]]
name = "meter"
protocol = "modbus_rtu"
port = "rfc2217://127.0.0.1:{bus}"
baudrate = 19200
parity = "E"
unit = 4
timeout = "300ms"
points = [{{ name = "voltage", table = "input", address = 0, type = "float32" }}]
[[devices]]
name = "gas"
protocol = "serial_line"
port = "rfc2217://127.0.0.1:{line}"
stale_after = "1s"
framing = {{ kind = "delimiter", delimiter = "\\r\\n" }}
parser = {{ kind = "regex", pattern = 'CH4=(?P<ch4>[-\\d.]+)' }}
points = [{{ name = "ch4", unit = "%LEL" }}]
"""


def test_a_bus_and_an_instrument_on_serial_device_servers_are_served_where_the_config_says(
    tmp_path: Path,
) -> None:
    bus, line = free_tcp_port(), free_tcp_port()
    config = tmp_path / "gateway.toml"
    config.write_text(SERVED.format(work=tmp_path, bus=bus, line=line))
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(config.read_text().replace('parity = "E"', 'parity = "N"'))

    def gateway(*words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *words],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )

    process = start("--from-config", str(config), "--json", cwd=tmp_path)
    try:
        ready = ready_line(process)
        served = {d["name"]: (d["path"], d["link"]) for d in ready["devices"]}
        assert served == {
            "meter": (f"rfc2217://127.0.0.1:{bus}", None),
            "gas": (f"rfc2217://127.0.0.1:{line}", None),
        }
        check = gateway("check", "-c", str(config), "--json")
        # The simulated server's bus is at 19200 8E1: a gateway set to 8N1 reads nothing.
        refused = gateway("check", "-c", str(wrong), "--json", "--device", "meter")
        listened = gateway(
            "listen", "-c", str(config), "--device", "gas", "--seconds", "1.5", "--json"
        )
    finally:
        code, err = finish(process)
    assert check.returncode == 0, check.stdout + check.stderr
    (cycle,) = json.loads(check.stdout)["cycles"]
    assert {(p["point"], p["quality"]) for p in cycle["points"]} == {
        ("voltage", "good"),
        ("ch4", "good"),
    }
    assert refused.returncode != 0, refused.stdout
    assert listened.returncode == 0, listened.stdout + listened.stderr
    end = json.loads(listened.stdout.splitlines()[-1])
    assert end["event"] == "end" and end["frames"] >= 3 and end["chunks"] <= end["frames"] * 2
    assert code == 0, err
    assert not (tmp_path / "rfc2217:").exists()  # no link made at a path named by the URL


def test_a_bad_simulator_file_exits_2_naming_each_problem_at_its_key_path(tmp_path: Path) -> None:
    (tmp_path / "rig.toml").write_text(
        '[[devices]]\nname = "pump"\nprotocol = "modbus_tcp"\nport = 0\n'
        'points = [{ name = "p", address = 0, value = { kind = "sine", period = 5 } }]\n'
        '[[devices]]\nname = "gas"\nprotocol = "serial_lines"\n'
    )
    done = simulate_until_it_ends(tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "devices[0].points[0].value.period: 5 is not a duration" in done.stderr
    assert "devices[1].protocol: 'serial_lines' is not one of" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("taken", ["port", "link"])
def test_a_port_in_use_or_a_link_path_that_is_no_link_exits_3_saying_which(
    tmp_path: Path, taken: str
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1] if taken == "port" else free_tcp_port()
        (tmp_path / "gas").write_text("not a link")
        (tmp_path / "rig.toml").write_text(
            f'[[devices]]\nname = "pump"\nprotocol = "modbus_tcp"\nport = {port}\n'
            'points = [{ name = "p", address = 0 }]\n'
            + (
                '[[devices]]\nname = "gas"\nprotocol = "serial_line"\nlink = "gas"\n'
                'frame = { kind = "text", template = "{x}" }\npoints = [{ name = "x" }]\n'
                if taken == "link"
                else ""
            )
        )
        done = simulate_until_it_ends(tmp_path)
    assert done.returncode == 3, done.stderr
    said = (
        f"127.0.0.1:{port} is in use by another program"
        if taken == "port"
        else "gas exists and is not a symlink"
    )
    assert said in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "gas").read_text() == "not a link"  # never replaced


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_sigterm_exits_0_and_ctrl_c_130_removing_links_and_the_control_socket(
    tmp_path: Path, sig: int, code: int
) -> None:
    (tmp_path / "rig.toml").write_text(
        '[[devices]]\nname = "gas"\nprotocol = "serial_line"\n'
        'frame = { kind = "text", template = "{x}\\n" }\npoints = [{ name = "x" }]\n'
    )
    process = start("rig.toml", "--link", "tty", "--control", "c.sock", cwd=tmp_path)
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], 20)
    assert readable, "nothing printed"
    assert process.stdout.readline().startswith("serving 1 device(s) from rig.toml")
    deadline = time.monotonic() + 10
    while not (tmp_path / "c.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (tmp_path / "tty" / "gas").is_symlink()
    returned, err = finish(process, sig)
    assert returned == code, err
    assert "Traceback" not in err
    assert not (tmp_path / "tty" / "gas").exists() and not (tmp_path / "c.sock").exists()


# --- wire helpers ------------------------------------------------------------------------------


def mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def good_answer(tid: int) -> bytes:
    """The pump's answer for its pressure, 6.5 as float32."""
    return mbap(tid, 1, b"\x03\x04" + struct.pack(">f", 6.5))


def tcp_ask(
    port: int,
    unit: int,
    address: int,
    count: int,
    *,
    function: int = 3,
    tid: int = 1,
    wait: float = 2.0,
) -> bytes:
    """The bytes a Modbus TCP request gets back on a connection of its own (b"": none
    within `wait`, or the connection closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(mbap(tid, unit, struct.pack(">BHH", function, address, count)))
        got = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if len(got) >= 6 and len(got) >= 6 + struct.unpack(">H", got[4:6])[0]:
                break
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(300)
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
        return got


def rtu_ask(path: Path, unit: int, function: int, address: int, count: int) -> bytes:
    body = struct.pack(">BBHH", unit, function, address, count)
    with serial.Serial(str(path), 19200, timeout=0.5) as line:
        line.write(body + crc16_modbus(body).to_bytes(2, "little"))
        return bytes(line.read(5 + 2 * count))


def read_lines(path: Path, count: int) -> list[bytes]:
    """`count` whole lines of an instrument (the first, maybe cut, skipped)."""
    with serial.Serial(str(path), timeout=2) as line:
        line.reset_input_buffer()
        line.readline()
        lines = [line.readline() for _ in range(count)]
    assert all(text.endswith(b"\n") for text in lines), lines
    return lines


def read_bytes(path: Path, seconds: float) -> bytes:
    """What an instrument sends in `seconds`."""
    with serial.Serial(str(path), timeout=0.05) as line:
        line.reset_input_buffer()
        got = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            got += line.read(65536)
        return got
