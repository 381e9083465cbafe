"""docs/commissioning.md, run as the technician types it.

Every ```console block of the walkthrough follows a marker `<!-- tested: NAME exit=N -->`.
Its `$ edge-gateway ...` line runs here as a process of its own (`python -m gateway`),
with the site's names swapped for the simulators' (/dev/ttyUSB0, /dev/ttyUSB1,
192.168.1.50, gateway.toml); it must exit N and print every line the block shows, the
simulators' names swapped back. Latencies, clock times, durations, pids and the config
hash are compared as placeholders. A line `…` stands for lines the doc leaves out and
`…` inside a line for a part of it; a block without `…` must be the whole output
(stdout and stderr, in any order). The ```toml block after
`<!-- tested-file: gateway.toml -->` is the file the `validate` and `check` blocks run on.

The site: an RS-485 bus at 9600 8E1 with an Eastron SDM630 (unit 13) and a KELLER
Series 30 (unit 5), each simulated from its shipped profile; a pump controller on
Modbus TCP that stores its float low word first; a gas detector printing a line.
`scan` and `probe` reach the bus through a simulated RFC 2217 serial server whose line
really is 8E1 (a client at other settings is garbled, as on a real line). `check` and
the service open a device path, so for them the bus is a pty, and the file's
`parity = "E"` is left out: a pty has no parity (Linux ignores PARENB or refuses it,
by version). The parity itself is proven by the scan and probe blocks.

Every wait is bounded; everything listens on loopback or a pty.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shlex
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from integration.test_probe_scan import Result, cli, dialout_only, serial_server
from rig import GatewayProcess

from drivers.modbus.decode import ByteOrder, DataType, Table
from drivers.serial_port import LineSettings, port_holders
from drivers.sim.modbus import ModbusSimServer, SimulatedDevice
from drivers.sim.modbus_profile import profile_device
from drivers.sim.serial_line import LineInstrument
from drivers.sim.serial_link import NullModem
from gateway.devtools.broker import Mosquitto

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "commissioning.md"
BUS = LineSettings(9600, parity="E")

# --- the doc -----------------------------------------------------------------------------

_TRANSCRIPT = re.compile(
    r"<!-- tested: (?P<name>[\w-]+) exit=(?P<code>\d+) -->\n```console\n(?P<body>.*?)\n```",
    re.S,
)
_FILE = re.compile(r"<!-- tested-file: (?P<name>[\w.-]+) -->\n```toml\n(?P<body>.*?)\n```", re.S)
ELIDED = "…"


@dataclass(frozen=True)
class Transcript:
    """One console block: the command as typed, the exit code its marker promises, and
    the output lines it shows."""

    name: str
    exit_code: int
    argv: tuple[str, ...]  # after `edge-gateway`
    shown: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not any(ELIDED in line for line in self.shown)


@dataclass(frozen=True)
class Doc:
    transcripts: dict[str, Transcript]
    files: dict[str, str]


@functools.cache
def doc() -> Doc:
    text = DOC.read_text()
    transcripts: dict[str, Transcript] = {}
    for match in _TRANSCRIPT.finditer(text):
        lines = match["body"].split("\n")
        command = lines.pop(0)
        assert command.startswith("$ "), f"{match['name']}: the block starts with its command"
        while command.endswith("\\"):  # a command continued on the next line
            command = command[:-1] + " " + lines.pop(0).strip()
        words = shlex.split(command[2:])
        assert words[0] == "edge-gateway", f"{match['name']}: runs {words[0]}"
        assert not any(line.startswith("$ ") for line in lines), f"{match['name']}: one command"
        assert match["name"] not in transcripts, f"{match['name']} is marked twice"
        transcripts[match["name"]] = Transcript(
            match["name"],
            int(match["code"]),
            tuple(words[1:]),
            tuple(line for line in lines if line.strip()),
        )
    files = {match["name"]: match["body"] + "\n" for match in _FILE.finditer(text)}
    return Doc(transcripts, files)


# --- names as the doc writes them, and as the simulators have them --------------------------


@dataclass
class Swap:
    argv: dict[str, str] = field(default_factory=dict)  # a word of the doc -> the real one
    output: dict[str, str] = field(default_factory=dict)  # real text -> the doc's


def serial_port(doc_name: str, real: str) -> Swap:
    return Swap({doc_name: real}, {real: doc_name})


def modbus_tcp(doc_host: str, port: int) -> Swap:
    return Swap({doc_host: f"127.0.0.1:{port}"}, {f"127.0.0.1:{port}": f"{doc_host}:502"})


def swapped_back(text: str, output: dict[str, str]) -> str:
    if not output:
        return text
    reals = sorted(output, key=len, reverse=True)  # /dev/pts/12 before /dev/pts/1
    pattern = re.compile("|".join(re.escape(real) + r"(?!\w)" for real in reals))
    return pattern.sub(lambda m: output[m[0]], text)


_VOLATILE = [
    (re.compile(r"\b\d\d:\d\d:\d\d\.\d{3}\b"), "<clock>"),
    (re.compile(r"\+\d+\.\d{3}s\b"), "+<offset>"),
    (re.compile(r"\b\d+(?:\.\d+)? ms\b"), "<latency>"),
    (re.compile(r"\bin \d+(?:\.\d+)? ?s\b"), "in <duration>"),
    (re.compile(r"\bpid \d+\b"), "pid <pid>"),
    (re.compile(r"\bconfig [0-9a-f]{12}\b"), "config <hash>"),
]


def normalised(line: str) -> str:
    for pattern, placeholder in _VOLATILE:
        line = pattern.sub(placeholder, line)
    return " ".join(line.split())


def printed(line: str, lines: list[str]) -> bool:
    want = normalised(line)
    if ELIDED not in want:
        return want in lines
    pattern = re.compile(".*".join(re.escape(part) for part in want.split(ELIDED)))
    return any(pattern.fullmatch(have) for have in lines)


async def run_transcript(name: str, *swaps: Swap, prefix: tuple[str, ...] = ()) -> Result:
    """The doc's command `name` with the swaps; asserts its exit code and output."""
    transcript = doc().transcripts[name]
    words = {k: v for swap in swaps for k, v in swap.argv.items()}
    back = {k: v for swap in swaps for k, v in swap.output.items()}
    result = await cli(*(words.get(word, word) for word in transcript.argv), prefix=prefix)
    output = swapped_back(result.out + "\n" + result.err, back)
    seen = f"{name}: edge-gateway {' '.join(transcript.argv)} printed:\n{output}"
    assert result.code == transcript.exit_code, f"exit {result.code}; {seen}"
    lines = [normalised(line) for line in output.splitlines() if line.strip()]
    missing = [line for line in transcript.shown if line != ELIDED and not printed(line, lines)]
    assert not missing, "not printed:\n" + "\n".join(missing) + f"\n\n{seen}"
    if transcript.complete:
        shown = sorted(normalised(line) for line in transcript.shown)
        assert sorted(lines) == shown, f"printed more than the doc shows; {seen}"
    return result


# --- the site ------------------------------------------------------------------------------


def bus_slaves() -> list[SimulatedDevice]:
    """The energy meter (unit 13) and the level transmitter (unit 5), from their profiles."""
    return [profile_device("eastron-sdm630", 13)[0], profile_device("keller-series30", 5)[0]]


def pump_controller() -> SimulatedDevice:
    """Unit 1: discharge pressure 4.75 bar, a float32 stored low word first, at datasheet
    40001; speed 1480 rpm at 40003."""
    pump = SimulatedDevice(unit=1)
    pump.set_value(Table.HOLDING, 0, 4.75, DataType.FLOAT32, ByteOrder.CDAB)
    pump.set_value(Table.HOLDING, 2, 1480, DataType.UINT16)
    return pump


def gas_detector_in_clean_air(n: int) -> bytes:
    return b"CH4=0.42;H2S=0;T=18.6\r\n"


def gas_detector() -> LineInstrument:
    return LineInstrument(gas_detector_in_clean_air, period=0.25)


def replaced(text: str, old: str, new: str) -> str:
    assert old in text, f"the doc's config no longer has {old!r}"
    return text.replace(old, new)


@dataclass
class Cabinet:
    """The site as the config's commands meet it: the bus and the gas detector on ptys,
    the pump controller on a loopback port."""

    bus: str
    gas: str
    pump_port: int
    workdir: Path

    def config_text(self, *, opened: bool, edit: Callable[[str], str] = str) -> str:
        """The doc's gateway.toml with the simulators' names; `opened` for the commands
        that open the bus (a pty takes no parity)."""
        text = edit(doc().files["gateway.toml"])
        text = replaced(text, '"/dev/ttyUSB0"', f'"{self.bus}"')
        text = replaced(text, '"/dev/ttyUSB1"', f'"{self.gas}"')
        text = replaced(
            text, 'host = "192.168.1.50"', f'host = "127.0.0.1"\nport = {self.pump_port}'
        )
        return replaced(text, 'parity = "E"\n', "") if opened else text

    def config(self, *, opened: bool, edit: Callable[[str], str] = str) -> Swap:
        """The file written, and the swaps of a command run on it."""
        path = self.workdir / ("opened" if opened else "as-written") / "gateway.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(self.config_text(opened=opened, edit=edit))
        swap = Swap({"gateway.toml": str(path)}, {str(path): "gateway.toml"})
        for other in (
            serial_port("/dev/ttyUSB0", self.bus),
            serial_port("/dev/ttyUSB1", self.gas),
            modbus_tcp("192.168.1.50", self.pump_port),
        ):
            swap.argv.update(other.argv)
            swap.output.update(other.output)
        return swap


@contextlib.asynccontextmanager
async def cabinet(workdir: Path) -> AsyncIterator[Cabinet]:
    async with (
        NullModem() as bus,
        ModbusSimServer(bus_slaves(), serial_port=bus.b.path),
        ModbusSimServer([pump_controller()]) as pump,
        gas_detector() as gas,
    ):
        yield Cabinet(bus.a.path, gas.path, pump.port, workdir)


# --- the doc, checked as a whole -----------------------------------------------------------


def test_every_console_block_and_every_toml_block_of_the_doc_is_marked_as_tested() -> None:
    text = DOC.read_text()
    assert text.count("```console") == len(doc().transcripts)
    assert text.count("```toml") == len(doc().files) == 1


def test_every_command_the_doc_shows_is_run_by_a_test_here() -> None:
    run_here = set(re.findall(r'run_transcript\(\s*"([\w-]+)"', Path(__file__).read_text()))
    assert run_here == set(doc().transcripts)


def test_the_readme_links_the_walkthrough() -> None:
    assert "(docs/commissioning.md)" in (REPO / "README.md").read_text()


# --- the walkthrough -----------------------------------------------------------------------


async def test_scan_with_auto_finds_the_meter_and_the_transmitter_at_9600_8e1() -> None:
    async with serial_server(BUS, *bus_slaves()) as url:
        await run_transcript("scan-auto", serial_port("/dev/ttyUSB0", url))


async def test_probe_reads_the_meter_and_the_transmitter_by_their_datasheet_numbers() -> None:
    async with serial_server(BUS, *bus_slaves()) as url:
        await run_transcript("probe-meter", serial_port("/dev/ttyUSB0", url))
        await run_transcript("probe-level", serial_port("/dev/ttyUSB0", url))


async def test_probe_of_the_pump_over_tcp_shows_its_pressure_in_cdab() -> None:
    async with ModbusSimServer([pump_controller()]) as pump:
        await run_transcript("probe-pump", modbus_tcp("192.168.1.50", pump.port))


async def test_listen_shows_the_gas_detectors_bytes_then_its_fields() -> None:
    async with gas_detector() as gas:
        await run_transcript("listen-raw", serial_port("/dev/ttyUSB1", gas.path))
        await run_transcript("listen-fields", serial_port("/dev/ttyUSB1", gas.path))


async def test_the_docs_config_validates_with_the_read_plan_shown(tmp_path: Path) -> None:
    async with cabinet(tmp_path) as site:
        await run_transcript("validate", site.config(opened=False))


async def test_check_reads_every_point_of_the_docs_config_good_from_the_profiles_simulators(
    tmp_path: Path,
) -> None:
    async with cabinet(tmp_path) as site:
        await run_transcript("check", site.config(opened=True))
        await run_transcript("check-json", site.config(opened=True))


# --- when something goes wrong -------------------------------------------------------------


async def test_a_missing_adapter_stops_scan_with_exit_3(tmp_path: Path) -> None:
    await run_transcript("port-missing", serial_port("/dev/ttyUSB0", str(tmp_path / "ttyUSB0")))


async def test_the_running_service_holding_the_bus_stops_scan_with_exit_3_and_is_named(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """The service runs the doc's own config (its broker a local mosquitto, its buffer
    in tmp_path) and polls the bus; the scan cannot open the port."""

    def for_this_machine(text: str) -> str:
        text = replaced(
            text, 'host = "mqtt.city.example"', f'host = "127.0.0.1"\nport = {broker.port}'
        )
        return replaced(text, '"/var/lib/edge-gateway/buffer.db"', f'"{tmp_path / "buffer.db"}"')

    async with cabinet(tmp_path) as site:
        service = GatewayProcess(tmp_path, site.config_text(opened=True, edit=for_this_machine))
        service.start()
        try:
            assert service.proc is not None
            pid = service.proc.pid
            for _ in range(200):
                if "device 'energy-meter' (unit 13 at" in service.log and pid in dict(
                    port_holders(site.bus)
                ):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the service never polled the bus:\n{service.log}")
            result = await run_transcript("port-held", serial_port("/dev/ttyUSB0", site.bus))
            assert re.search(rf"pid {pid} \([^)]*gateway run -c", result.err), result.err
            assert "is answering" in service.log
            assert await asyncio.to_thread(service.stop) == 0, service.log
        finally:
            service.cleanup()


async def test_a_user_not_in_dialout_is_told_how_to_join_it() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the command as another user")
    as_nobody = (
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    )
    async with NullModem() as bus, ModbusSimServer(bus_slaves(), serial_port=bus.b.path):
        dialout_only(bus.a.path)
        await run_transcript(
            "not-in-dialout", serial_port("/dev/ttyUSB0", bus.a.path), prefix=as_nobody
        )


async def test_nobody_answers_at_the_wrong_baud_rate_or_at_a_unit_id_nobody_has() -> None:
    async with serial_server(BUS, *bus_slaves()) as url:
        await run_transcript("scan-wrong-settings", serial_port("/dev/ttyUSB0", url))
    async with serial_server(BUS, *bus_slaves()) as url:
        await run_transcript("probe-no-answer", serial_port("/dev/ttyUSB0", url))


async def test_holding_40001_on_a_meter_of_input_registers_is_exception_2_with_the_fix() -> None:
    async with serial_server(BUS, *bus_slaves()) as url:
        await run_transcript("probe-exception-2", serial_port("/dev/ttyUSB0", url))


async def test_check_strict_fails_the_pump_without_its_byte_order_and_names_cdab(
    tmp_path: Path,
) -> None:
    def without_byte_order(text: str) -> str:
        return replaced(text, 'byte_order = "CDAB"\n', "")

    async with cabinet(tmp_path) as site:
        await run_transcript("check-byte-order", site.config(opened=True, edit=without_byte_order))
