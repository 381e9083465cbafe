"""The simulator file: the committed example and the doc's, problems at their key paths,
devices grouped where they are served, and a gateway config turned into a scenario."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from drivers.sim.scenario import (
    ScenarioError,
    SimModbusRtuDeviceConfig,
    SimSerialLineDeviceConfig,
    from_gateway_devices,
    load_scenario,
    parse_scenario,
)
from gateway.settings import parse_config

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "config" / "simulator-example.toml"
DOC = REPO / "docs" / "simulator.md"


def problems_of(text: str, base_dir: Path = Path()) -> list[str]:
    with pytest.raises(ScenarioError) as refused:
        parse_scenario(text.encode(), "rig.toml", base_dir)
    return refused.value.problems


def test_the_example_simulator_file_loads_with_every_protocol_and_value_kind() -> None:
    scenario = load_scenario(EXAMPLE)
    protocols = {device.protocol for device in scenario.devices}
    assert protocols == {"modbus_tcp", "modbus_rtu_over_tcp", "modbus_rtu", "serial_line"}
    text = EXAMPLE.read_text()
    for kind in ("ramp", "counter", "sine", "random_walk", "csv"):
        assert f'kind = "{kind}"' in text
    frames = {d.frame.kind for d in scenario.devices if isinstance(d, SimSerialLineDeviceConfig)}
    assert frames == {"text", "nmea", "binary"}
    assert [e.key for e in scenario.endpoints()][:2] == ["tcp 127.0.0.1:15020", "bus rs485"]


def test_the_simulator_file_in_docs_simulator_md_is_valid() -> None:
    doc = DOC.read_text()
    blocks = re.findall(r"<!-- simulator file: tested -->\n```toml\n(.*?)```", doc, re.DOTALL)
    assert len(blocks) == 1
    scenario = parse_scenario(blocks[0].encode(), "docs/simulator.md")
    assert len(scenario.devices) == 6


def test_every_key_of_the_example_is_named_in_the_doc() -> None:
    doc = DOC.read_text()
    lines = [
        line
        for line in EXAMPLE.read_text().splitlines()
        if not line.lstrip().startswith(("#", "values = "))  # values are named by point
    ]
    keys = {key for line in lines for key in re.findall(r"(?:^\s*|[{,] )([a-z_]+) = ", line)}
    missing = sorted(key for key in keys if f"`{key}`" not in doc)
    assert not missing, f"keys of the example not described in docs/simulator.md: {missing}"


def test_problems_are_named_at_their_key_paths_in_the_order_of_the_file() -> None:
    problems = problems_of(
        """
[[devices]]
name = "pump"
protocol = "modbus_tcp"
port = "15020"
points = [
  { name = "pressure", address = 0, type = "flaot32", value = { kind = "sine", period = 5 } },
  { name = "flow", address = 2, value = { kind = "sinus" } },
  { name = "level", address = 3, colour = "red" },
]

[[devices]]
name = "gauge"
protocol = "modbus_tpc"
"""
    )
    assert problems == [
        "devices[0].port: '15020' is text; write numbers without quotes: port = 15020",
        "devices[0].points[0].type: 'flaot32' is not one of 'bool', 'bit', 'int16', 'uint16', "
        "'int32', 'uint32', 'int64', 'uint64', 'float32', 'float64' or 'string'",
        "devices[0].points[0].value.period: 5 is not a duration; write it with a unit, e.g. "
        "'500ms' or '5s'",
        "devices[0].points[1].value.kind: 'sinus' is not one of 'constant', 'ramp', 'counter', "
        "'sine', 'random_walk', 'csv'",
        "devices[0].points[2].colour: unknown key (check the spelling; docs/simulator.md lists "
        "every key)",
        "devices[1].protocol: 'modbus_tpc' is not one of 'modbus_tcp', 'modbus_rtu_over_tcp', "
        "'modbus_rtu', 'serial_line'",
    ]


@pytest.mark.parametrize(
    ("section", "says"),
    [
        (
            'name = "p"\nprotocol = "modbus_tcp"\npoints = [{ name = "a", address = 0 }]',
            "devices[0].port: required key is missing",
        ),
        (
            'name = "p"\nprotocol = "modbus_tcp"\nport = 0',
            "devices[0].points: a device needs points, or a profile",
        ),
        (
            'name = "p"\nprotocol = "modbus_tcp"\nport = 0\nprofile = "eastron-sdm630"\nvalues = { voltage_l9 = 1.0 }',
            "devices[0].values.voltage_l9: profile 'eastron-sdm630' has no point 'voltage_l9'",
        ),
        (
            'name = "p"\nprotocol = "modbus_tcp"\nport = 0\npoints = [{ name = "a", address = 0, value = "high" }]',
            "devices[0].points[0].value: 'high' is text; this point holds a number",
        ),
        (
            'name = "p"\nprotocol = "modbus_tcp"\nport = 0\npoints = [{ name = "a", address = 0, type = "string", length = 2, value = 5 }]',
            "devices[0].points[0].value: a string point holds text",
        ),
        (
            'name = "p"\nprotocol = "modbus_rtu"\nunit = 0\npoints = [{ name = "a", address = 0 }]',
            "devices[0].unit: unit 0 is the broadcast address",
        ),
        (
            'name = "p"\nprotocol = "modbus_rtu"\nport = "/dev/ttyUSB1"\nlink = "/tmp/x"\npoints = [{ name = "a", address = 0 }]',
            "devices[0].link: link names a pseudo-terminal",
        ),
        (
            'name = "g"\nprotocol = "serial_line"\nframe = { kind = "text", template = "CH4={ch5}" }\npoints = [{ name = "ch4" }]',
            "devices[0].points[0].name: the frame carries no field 'ch4'; it carries 'ch5'",
        ),
        (
            'name = "g"\nprotocol = "serial_line"\nframe = { kind = "text", template = "CH4={ch4.x}" }\npoints = [{ name = "ch4" }]',
            "devices[0].frame.template: {ch4.x} is not a field",
        ),
        (
            'name = "g"\nprotocol = "serial_line"\nmode = "polled"\nframe = { kind = "text", template = "{a}" }\npoints = [{ name = "a" }]',
            "devices[0].mode: mode 'polled' needs poll_command or poll_command_hex",
        ),
        (
            'name = "g"\nprotocol = "serial_line"\nframe = { kind = "text", template = "{a}" }\npoints = [{ name = "a", value = { kind = "csv", file = "none.csv", column = "a" } }]',
            "devices[0].points[0].value.file: cannot read none.csv: No such file or directory",
        ),
    ],
)
def test_a_section_with_a_problem_is_refused_at_its_key(section: str, says: str) -> None:
    problems = problems_of(f"[[devices]]\n{section}\n")
    assert any(problem.startswith(says) for problem in problems), problems


def test_units_on_one_port_are_one_server_and_may_not_share_an_id() -> None:
    text = """
[[devices]]
name = "a"
protocol = "modbus_tcp"
port = 15020
points = [{ name = "x", address = 0 }]
[[devices]]
name = "b"
protocol = "modbus_tcp"
port = 15020
unit = 2
points = [{ name = "x", address = 0 }]
[[devices]]
name = "c"
protocol = "modbus_tcp"
port = 0
points = [{ name = "x", address = 0 }]
"""
    scenario = parse_scenario(text.encode())
    assert [[d.name for _, d in e.devices] for e in scenario.endpoints()] == [["a", "b"], ["c"]]
    clash = text.replace("unit = 2\n", "")
    assert problems_of(clash) == ["devices[1].unit: unit 1 is 'a' too, on the same line"]


def test_slaves_on_one_bus_share_its_line_settings_and_no_two_lines_share_a_link() -> None:
    problems = problems_of(
        """
[[devices]]
name = "a"
protocol = "modbus_rtu"
bus = "rs485"
link = "/tmp/rig/bus"
baudrate = 19200
unit = 1
points = [{ name = "x", address = 0 }]
[[devices]]
name = "b"
protocol = "modbus_rtu"
bus = "rs485"
unit = 2
points = [{ name = "x", address = 0 }]
[[devices]]
name = "g"
protocol = "serial_line"
link = "/tmp/rig/bus"
frame = { kind = "text", template = "{x}" }
points = [{ name = "x" }]
"""
    )
    assert problems == [
        "devices[1].baudrate: baudrate = 9600 here, 19200 on 'a' (devices[0]): slaves on bus "
        "'rs485' share one line",
        "devices[2].link: /tmp/rig/bus is the link of 'a' already; each line has its own",
    ]


def test_a_device_name_used_twice_is_refused() -> None:
    section = '[[devices]]\nname = "a"\nprotocol = "modbus_tcp"\nport = 0\npoints = [{ name = "x", address = 0 }]\n'
    assert problems_of(section * 2) == [
        "devices[1].name: device name 'a' is used twice (devices[0])"
    ]


GATEWAY = """
[gateway]
id = "rig"
[[devices]]
name = "pump"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = 15020
unit = 3
points = [{ name = "pressure", register = 40001, type = "float32", unit = "bar" }]
[[devices]]
name = "meter"
protocol = "modbus_rtu"
port = "/tmp/rig/ttyBUS"
unit = 13
profile = "eastron-sdm630"
points = ["voltage_l1", "frequency"]
[[devices]]
name = "gas"
protocol = "serial_line"
port = "/tmp/rig/ttyGAS"
framing = { kind = "delimiter" }
parser = { kind = "regex", pattern = 'CH4=(?P<ch4>[-\\d.]+)' }
points = [{ name = "ch4" }]
"""


def test_a_gateway_config_becomes_the_scenario_that_serves_what_it_reads() -> None:
    config = parse_config(GATEWAY.encode()).config
    scenario = from_gateway_devices(config.devices, "gateway.toml")
    pump, meter, gas = scenario.devices
    assert (pump.protocol, pump.port, pump.unit) == ("modbus_tcp", 15020, 3)  # type: ignore[union-attr]
    assert [(p.name, p.table, p.address) for p, _ in pump.served_points()] == [
        ("pressure", "holding", 0)
    ]  # type: ignore[union-attr]
    assert meter.link == "/tmp/rig/ttyBUS"  # type: ignore[union-attr]
    assert [p.name for p, _ in meter.served_points()] == ["voltage_l1", "frequency"]  # type: ignore[union-attr]
    assert isinstance(gas, SimSerialLineDeviceConfig) and gas.link == "/tmp/rig/ttyGAS"
    assert gas.frame.encode({"ch4": 12.5}) == b"CH4=12.50\r\n"


def test_a_gateway_instrument_whose_frames_cannot_be_written_is_named() -> None:
    text = GATEWAY.replace("'CH4=(?P<ch4>[-\\d.]+)'", "'(?<=CH4=)(?P<ch4>[-\\d.]+)'")
    config = parse_config(text.encode()).config
    with pytest.raises(ScenarioError) as refused:
        from_gateway_devices(config.devices, "gateway.toml")
    (problem,) = refused.value.problems
    assert problem.startswith("devices[2].parser: the simulator cannot write the frames of 'gas'")
    assert problem.endswith("describe it in a simulator file")


def test_a_bus_on_a_serial_device_server_is_served_as_one_at_the_configs_settings() -> None:
    text = (
        '[gateway]\nid = "rig"\n[[devices]]\nname = "meter"\nprotocol = "modbus_rtu"\n'
        'port = "rfc2217://127.0.0.1:4001"\nbaudrate = 19200\nparity = "E"\nunit = 4\n'
        'points = [{ name = "voltage", address = 0 }]\n'
    )
    (meter,) = from_gateway_devices(parse_config(text.encode()).config.devices).devices
    assert isinstance(meter, SimModbusRtuDeviceConfig)
    assert (meter.port, meter.link) == ("rfc2217://127.0.0.1:4001", None)
    assert meter.line_settings == (19200, 8, "E", 1)


def test_a_line_instrument_may_be_served_behind_a_serial_device_server() -> None:
    line = (
        '[[devices]]\nname = "gas"\nprotocol = "serial_line"\nport = "rfc2217://127.0.0.1:4001"\n'
        'frame = { kind = "text", template = "CH4={ch4}\\r\\n" }\npoints = [{ name = "ch4" }]\n'
    )
    (gas,) = parse_scenario(line.encode()).devices
    assert isinstance(gas, SimSerialLineDeviceConfig)
    assert (gas.port, gas.link) == ("rfc2217://127.0.0.1:4001", None)


def test_one_server_port_written_two_ways_is_still_one_line_of_the_simulator() -> None:
    device = (
        '[[devices]]\nname = "{name}"\nprotocol = "serial_line"\nport = "{port}"\n'
        'frame = {{ kind = "text", template = "CH4={{ch4}}\\r\\n" }}\npoints = [{{ name = "ch4" }}]\n'
    )
    text = device.format(name="a", port="rfc2217://127.0.0.1:4001") + device.format(
        name="b", port="rfc2217://127.0.0.1:4001?timeout=5"
    )
    with pytest.raises(ScenarioError) as refused:
        parse_scenario(text.encode())
    assert refused.value.problems == [
        "devices[1].port: rfc2217://127.0.0.1:4001 is the port of 'a' already; each line has "
        "its own"
    ]
