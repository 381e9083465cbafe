"""`edge-gateway probe` and `scan` as a technician meets them: a bus of three slaves on a
pty, units behind a Modbus TCP gateway, a serial device server at settings nobody wrote
down (RFC 2217), and what goes wrong on site: nothing answers, the wrong baud rate or
parity, a device that answers exceptions, a missing port, a port the service holds, a
user not in dialout, Ctrl-C.

The commands run as processes (`python -m gateway`), the devices in this test's event
loop; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.modbus.decode import DataType, Table, encode_value
from drivers.serial_port import LineSettings
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from drivers.sim.modbus_faults import FaultyModbusTcpServer
from drivers.sim.rfc2217_line import Rfc2217Line
from drivers.sim.serial_link import NullModem

REPO = Path(__file__).resolve().parents[2]
BUS_UNITS = (3, 7, 12)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.out)  # type: ignore[no-any-return]


async def cli(*args: str, prefix: tuple[str, ...] = (), timeout: float = 60) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert b"Traceback" not in err, err.decode()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def slave(unit: int) -> SimulatedDevice:
    """A slave whose holding 0-1 hold the float32 20 + unit, and input 0 the uint16 unit."""
    device = SimulatedDevice(unit=unit)
    device.set_value(Table.HOLDING, 0, 20.0 + unit, DataType.FLOAT32)
    device.set_value(Table.INPUT, 0, unit)
    return device


def refusing_slave(unit: int) -> SimulatedDevice:
    """A slave with input registers only: it answers a holding register read with exception 2."""
    device = SimulatedDevice(unit=unit)
    device.fill(Table.INPUT, 0, 4, 1)
    return device


@contextlib.asynccontextmanager
async def rtu_bus(*devices: SimulatedDevice) -> AsyncIterator[str]:
    """A pty bus with these slaves on it; yields the port the commands open."""
    async with NullModem() as line, ModbusSimServer(devices, serial_port=line.b.path):
        yield line.a.path


@contextlib.asynccontextmanager
async def serial_server(settings: LineSettings, *devices: SimulatedDevice) -> AsyncIterator[str]:
    """A bus at `settings` behind a simulated RFC 2217 serial device server; yields its URL."""
    async with Rfc2217Line(settings) as line, ModbusSimServer(devices, serial_port=line.bus_path):
        yield line.url


# -- probe ----------------------------------------------------------------------------------


async def test_probe_reads_each_of_three_slaves_on_an_rtu_bus_in_every_interpretation() -> None:
    async with rtu_bus(*(slave(u) for u in BUS_UNITS)) as port:
        for unit in BUS_UNITS:
            result = await cli(
                "probe",
                "--serial",
                port,
                "--baud",
                "19200",
                "--unit",
                str(unit),
                "40001",
                "--count",
                "2",
            )
            assert result.code == 0, result.err
            lines = result.out.splitlines()
            assert lines[0].startswith(
                f"unit {unit} on {port} at 19200 8N1: datasheet 40001 = "
                "holding register 0 (0-based), 2 register(s), answered in"
            )
            expected = f"{20 + unit:g}"
            float_row = next(line for line in lines if line.startswith("0-1") and "float32" in line)
            assert float_row.split()[2] == expected  # ABCD
            rows = [line.split()[:3] for line in lines]
            high = encode_value(20.0 + unit, DataType.FLOAT32)[0]
            assert ["0", "40001", f"0x{high:04X}"] in rows and ["1", "40002", "0x0000"] in rows


async def test_probe_json_holds_the_same_facts_as_its_table() -> None:
    async with rtu_bus(slave(7)) as port:
        table = await cli("probe", "--serial", port, "--unit", "7", "40001", "--count", "2")
        document = (
            await cli("probe", "--serial", port, "--unit", "7", "40001", "--count", "2", "--json")
        ).json()
    assert document["ok"] is True and document["answer"] == "data"
    assert (document["table"], document["address"], document["datasheet"]) == (
        "holding",
        0,
        "40001",
    )
    assert document["read"] == "datasheet 40001 = holding register 0 (0-based)"
    assert document["read"] in table.out
    rows = [line.split() for line in table.out.splitlines()]
    for register in document["registers"]:
        words = [str(register[k]) for k in ("address", "datasheet", "hex", "value", "int16")]
        assert [*words, register["text"]] in rows
    floats = [v for v in document["values"] if v["type"] == "float32"]
    assert floats == [
        {
            "address": 0,
            "type": "float32",
            "ABCD": 27.0,
            "CDAB": floats[0]["CDAB"],
            "BADC": floats[0]["BADC"],
            "DCBA": floats[0]["DCBA"],
        }
    ]
    assert document["latency_ms"] > 0


@pytest.mark.parametrize(
    ("start", "table", "address", "value"),
    [("30001", "input", 0, 7), ("300001", "input", 0, 7), ("40001", "holding", 0, 0x41D8)],
)
async def test_datasheet_notation_reads_the_right_0_based_register_and_says_so(
    start: str, table: str, address: int, value: int
) -> None:
    async with ModbusSimServer([slave(7)]) as server:
        result = await cli("probe", "--tcp", f"127.0.0.1:{server.port}", "--unit", "7", start)
        document = (
            await cli("probe", "--tcp", f"127.0.0.1:{server.port}", "--unit", "7", start, "--json")
        ).json()
    assert result.code == 0, result.err
    said = f"datasheet {start} = {table} register {address} (0-based)"
    assert said in result.out.splitlines()[0]
    assert (document["table"], document["address"]) == (table, address)
    assert document["registers"][0]["value"] == value  # 0x41D8: high word of 27.0


async def test_a_start_without_a_table_is_refused_with_the_notation_explained() -> None:
    result = await cli("probe", "--tcp", "127.0.0.1:1", "100")
    assert result.code == 2
    assert "100 does not say which table to read" in result.err
    assert "30001 input registers" in result.err


async def test_probe_names_exception_2_and_what_it_usually_means() -> None:
    async with rtu_bus(refusing_slave(5)) as port:
        result = await cli("probe", "--serial", port, "--unit", "5", "40001")
        document = (await cli("probe", "--serial", port, "--unit", "5", "40001", "--json")).json()
    assert result.code == 1
    assert "exception 2 (illegal data address): this register is not in the device's map" in (
        result.err
    )
    assert "whether the datasheet counts from 1" in result.err
    assert "if it is input register 0: datasheet 30001" in result.err
    assert document["exception"]["code"] == 2
    assert document["exception"]["name"] == "illegal data address"
    assert document["answer"] == "exception" and document["ok"] is False


async def test_probe_of_a_unit_that_does_not_answer_says_what_to_check_and_exits_1() -> None:
    async with rtu_bus(slave(3)) as port:
        result = await cli("probe", "--serial", port, "--unit", "4", "--timeout", "0.3", "40001")
    assert result.code == 1 and result.out == ""
    assert "no answer within 0.3s" in result.err
    assert "--serial-settings auto" in result.err and "A and B swapped" in result.err


async def test_probe_at_the_wrong_parity_gets_no_answer() -> None:
    async with serial_server(LineSettings(19200, parity="E"), slave(3)) as url:
        right = await cli(
            "probe", "--serial", url, "--baud", "19200", "--parity", "E", "--unit", "3", "40001"
        )
        wrong = await cli(
            "probe", "--serial", url, "--baud", "19200", "--unit", "3", "--timeout", "0.3", "40001"
        )
    assert right.code == 0, right.err
    assert wrong.code == 1 and "no answer within 0.3s" in wrong.err


# -- scan -----------------------------------------------------------------------------------


async def test_scan_finds_exactly_the_three_slaves_on_an_rtu_bus_and_prints_a_table() -> None:
    async with rtu_bus(*(slave(u) for u in BUS_UNITS)) as port:
        result = await cli("scan", "--serial", port, "--baud", "19200", "--units", "1-20")
        document = (
            await cli("scan", "--serial", port, "--baud", "19200", "--units", "1-20", "--json")
        ).json()
    assert result.code == 0, result.err
    header, *rows, summary = result.out.splitlines()
    assert header.split() == ["unit", "settings", "answer", "latency", "detail"]
    assert [row.split()[0] for row in rows] == ["3", "7", "12"]
    assert all("19200 8N1  data" in row and "ms" in row for row in rows)
    assert summary.startswith(f"3 device(s) answered on {port} at 19200 8N1: unit(s) 3, 7, 12")
    assert document["present_units"] == [3, 7, 12] and document["found_at"] == ["19200 8N1"]
    assert [f["answer"] for f in document["found"]] == ["data"] * 3
    assert document["complete"] is True and document["ok"] is True


async def test_scan_behind_a_modbus_tcp_gateway_finds_its_units() -> None:
    async with ModbusSimServer([slave(1), slave(5), refusing_slave(9)]) as server:
        result = await cli(
            "scan",
            "--tcp",
            f"127.0.0.1:{server.port}",
            "--units",
            "1-10",
            "--timeout",
            "0.2",
            "--json",
        )
    assert result.code == 0, result.err
    document = result.json()
    assert document["present_units"] == [1, 5, 9]
    answers = {f["unit"]: (f["answer"], f["code"]) for f in document["found"]}
    assert answers == {1: ("data", None), 5: ("data", None), 9: ("exception", 2)}


async def test_a_gateways_exception_11_for_every_unit_is_nobody_there() -> None:
    async with FaultyModbusTcpServer(fault="exception", exception_code=11) as gateway:
        result = await cli("scan", "--tcp", f"127.0.0.1:{gateway.port}", "--units", "1-4")
    assert result.code == 1
    assert "answered exception 10 or 11 for 4 unit id(s): no device answered behind it" in (
        result.out
    )
    assert "no unit answered on Modbus TCP" in result.err


async def test_scan_counts_a_device_that_answers_an_exception_as_present() -> None:
    async with rtu_bus(refusing_slave(4), slave(6)) as port:
        result = await cli("scan", "--serial", port, "--units", "1-8")
    assert result.code == 0, result.err
    rows = {line.split()[0]: line for line in result.out.splitlines()[1:-1]}
    assert "exception 2 (illegal data address)" in rows["4"] and "a device is there" in rows["4"]
    assert "data" in rows["6"]
    assert "2 device(s) answered" in result.out


async def test_auto_finds_the_baud_rate_and_parity_of_a_bus_behind_an_rfc2217_server() -> None:
    async with serial_server(LineSettings(19200, parity="E"), slave(2), slave(5)) as url:
        result = await cli(
            "scan",
            "--serial",
            url,
            "--serial-settings",
            "auto",
            "--units",
            "1-6",
            "--timeout",
            "0.1",
            "--json",
        )
    assert result.code == 0, result.err
    document = result.json()
    assert document["found_at"] == ["19200 8E1"]
    assert document["present_units"] == [2, 5]
    assert document["settings_tried"] == [
        "9600 8N1",
        "9600 8E1",
        "9600 8O1",
        "9600 8N2",
        "19200 8N1",
        "19200 8E1",
    ]
    found = document["found"][0]
    assert (found["baudrate"], found["parity"], found["stopbits"]) == (19200, "E", 1)


@pytest.mark.parametrize(
    ("baud", "parity"), [("9600", "E"), ("19200", "N"), ("19200", "O")], ids=["baud", "N", "O"]
)
async def test_a_scan_at_the_wrong_baud_rate_or_parity_finds_nothing_and_suggests_auto(
    baud: str, parity: str
) -> None:
    async with serial_server(LineSettings(19200, parity="E"), slave(2)) as url:
        result = await cli(
            "scan", "--serial", url, "--baud", baud, "--parity", parity, "--units", "1-4"
        )
    assert result.code == 1
    assert result.out == ""
    assert f"no unit answered on {url} at {baud} 8{parity}1" in result.err
    assert "wrong baud rate or parity? --serial-settings auto tries the common ones" in result.err


async def test_nothing_answering_on_a_bus_is_exit_1_and_one_sentence() -> None:
    async with rtu_bus() as port:
        scan = await cli("scan", "--serial", port, "--units", "1-5")
        probe = await cli("probe", "--serial", port, "--unit", "1", "--timeout", "0.2", "30001")
    assert scan.code == 1 and probe.code == 1
    assert (
        scan.err.strip()
        .splitlines()[-1]
        .startswith(f"edge-gateway scan: no unit answered on {port} at 9600 8N1 (unit ids 1-5 in")
    )
    assert "no answer within 0.2s" in probe.err


async def test_a_scan_stopped_by_max_time_says_what_was_not_tried() -> None:
    async with rtu_bus(slave(1)) as port:
        result = await cli("scan", "--serial", port, "--max-time", "1", "--json")
    document = result.json()
    assert result.code == 0 and document["present_units"] == [1]
    assert document["complete"] is False and document["stopped_by"] == "max_time"
    assert document["not_tried"].startswith("unit ids ")
    assert document["not_tried"].endswith("-247 at 9600 8N1")


# -- the machine in the way -----------------------------------------------------------------


@pytest.mark.parametrize("command", ["probe", "scan"])
async def test_a_port_that_does_not_exist_is_exit_3_and_says_so(command: str) -> None:
    extra = ["40001"] if command == "probe" else []
    result = await cli(command, "--serial", "/dev/ttyUSB-missing", *extra)
    assert result.code == 3
    assert "/dev/ttyUSB-missing does not exist (is the adapter plugged in?" in result.err


HOLD_PORT = """
import sys, time, serial
port = serial.Serial(sys.argv[1], exclusive=True)
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("command", ["probe", "scan"])
async def test_a_port_held_by_the_running_service_is_exit_3_and_names_the_holder(
    command: str,
) -> None:
    async with rtu_bus(slave(1)) as port:
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLD_PORT, port, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert holder.stdout is not None
            assert (await asyncio.wait_for(holder.stdout.readline(), 20)).strip() == b"held"
            extra = ["40001"] if command == "probe" else []
            result = await cli(command, "--serial", port, *extra)
        finally:
            holder.kill()
            await holder.wait()
    assert result.code == 3
    assert f"{port} is in use by " in result.err and f"pid {holder.pid} (" in result.err
    assert "a serial port has one reader at a time" in result.err


def dialout_only(port: str) -> None:
    """The port as udev leaves a USB adapter: root's, group dialout, mode 660."""
    os.chown(port, 0, grp.getgrnam("dialout").gr_gid)
    Path(port).chmod(0o660)


async def test_a_user_not_in_dialout_is_told_to_join_it() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the command as another user")
    async with rtu_bus(slave(1)) as port:
        dialout_only(port)
        as_nobody = (
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        )
        result = await cli("probe", "--serial", port, "40001", prefix=as_nobody)
    assert result.code == 3
    assert f"{port}: permission denied: add the user to the 'dialout' group" in result.err
    assert "usermod -aG dialout" in result.err


# -- Ctrl-C ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_ctrl_c_mid_scan_exits_130_without_a_traceback_and_shows_what_it_found(
    sig: int, code: int
) -> None:
    """SIGTERM stops a scan as Ctrl-C does (what it found, what it did not try), with 143."""
    async with NullModem() as line, ModbusSimServer([slave(2)], serial_port=line.b.path):
        port = line.a.path
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "scan",
            "--serial",
            port,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
        )
        assert proc.stderr is not None
        started = await asyncio.wait_for(proc.stderr.readline(), 30)  # the plan: it has begun
        assert started.startswith(b"scanning ")
        # Unit 3 asked (a read of one register is 8 bytes on the wire): unit 2 was heard.
        deadline = asyncio.get_running_loop().time() + 30
        while line.bytes_a_to_b < 3 * 8:
            assert asyncio.get_running_loop().time() < deadline, "the scan never reached unit 3"
            await asyncio.sleep(0.02)
        proc.send_signal(sig)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == code
        # The port was closed: it opens again at once, exclusively.
        again = await cli("probe", "--serial", port, "--unit", "2", "40001")
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err
    assert b"not tried (interrupted): unit ids " in out
    assert out.splitlines()[1].split()[:3] == [b"2", b"9600", b"8N1"]
    assert again.code == 0
