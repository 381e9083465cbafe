"""Config: every problem named by key path and reason, before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drivers.core.config_types import parse_duration, parse_size
from gateway.errors import ConfigError
from gateway.settings import json_schema, load_config, parse_config
from tests.gateway.configs import CONFIG_DIR, MINIMAL, problems, run_cli


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", 0.5),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
    ],
)
def test_durations_with_units_are_understood(text: str, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", [5, "5", "5 sec", "-1s", True, "ms"])
def test_durations_without_a_valid_unit_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_sizes_with_units_are_understood() -> None:
    assert parse_size("64MB") == 64_000_000
    assert parse_size("1GiB") == 1024**3
    with pytest.raises(ValueError, match="size"):
        parse_size(1000)


def test_a_minimal_config_gets_production_defaults() -> None:
    cfg = parse_config(MINIMAL.encode()).config
    assert cfg.mqtt.port == 1883 and cfg.mqtt.topic_prefix == "city"
    assert cfg.batch.max_age == 5.0
    assert cfg.devices[0].poll_interval == 1.0


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (
            MINIMAL.replace(
                'points = [{ name = "p", address = 0 }]',
                'points = [{ name = "p", address = 0 }, { name = "q", address = 1 },'
                ' { name = "r", address = 2 }, { name = "s", address = 3, type = "flaot32" }]',
            ),
            "devices[0].points[3].type: 'flaot32' is not one of 'bool', 'bit', 'int16'",
        ),
        (MINIMAL + "[mqtt]\nkeepalive = 30\n", "mqtt.keepalive: 30 is not a duration"),
        (MINIMAL + "[mqtt]\nhots = 'x'\n", "mqtt.hots: unknown key"),
        (MINIMAL.replace('id = "gw-1"', 'id = "gw 1"'), "gateway.id: 'gw 1' is not a valid name"),
        (
            MINIMAL.replace("modbus_tcp", "modbus_tpc"),
            "devices[0].protocol: 'modbus_tpc' is not one of",
        ),
        (MINIMAL.replace('host = "127.0.0.1"\n', ""), "devices[0].host: required key is missing"),
        (MINIMAL.replace("address = 0", "address = 70000"), "devices[0].points[0].address:"),
        (
            MINIMAL.replace("address = 0", 'address = 0, table = "coil", type = "float32"'),
            "devices[0].points[0]: type 'float32' cannot be read from table 'coil'",
        ),
        (
            MINIMAL.replace("address = 0", 'address = 0, type = "bool"'),
            "devices[0].points[0]: type 'bool' reads coils and discrete inputs",
        ),
        (
            MINIMAL.replace("address = 0", 'address = 0, type = "bit"'),
            "type 'bit' needs bit = 0..15",
        ),
        (
            MINIMAL.replace("address = 0", 'address = 0, type = "string"'),
            "type 'string' needs length",
        ),
        (
            MINIMAL.replace("address = 0", 'address = 65535, type = "uint32"'),
            "runs past address 65535",
        ),
        (
            MINIMAL.replace(
                '{ name = "p", address = 0 }',
                '{ name = "p", address = 0 }, { name = "p", address = 1 }',
            ),
            "devices[0].points[1].name: point name 'p' is used twice "
            "(devices[0].points[0].name and devices[0].points[1].name)",
        ),
        (MINIMAL + MINIMAL[MINIMAL.index("[[devices]]") :], "device name 'pump' is used twice"),
        (
            MINIMAL + f"[mqtt.tls]\nca_file = '{__file__}'\ncert_file = '{__file__}'\n",
            "mqtt.tls.key_file: cert_file and key_file go together",
        ),
        (
            MINIMAL + "[mqtt]\nreconnect_min = '2m'\nreconnect_max = '1m'\n",
            "reconnect_min must not exceed",
        ),
        ('[gateway]\nid = "x"\n', "devices: required key is missing"),
        (
            MINIMAL + "[mqtt.tls]\nca_file = '/nonexistent/ca.crt'\n",
            "mqtt.tls.ca_file: Path does not point to a file",
        ),
        (
            MINIMAL + "[mqtt]\npublish_timeout = '0s'\n",
            "mqtt.publish_timeout: '0s' must be longer than zero",
        ),
        (
            MINIMAL + "[buffer]\nmax_bytes = '100B'\n",
            "buffer.max_bytes: Input should be greater than or equal to 1000000",
        ),
        (
            MINIMAL.replace('host = "127.0.0.1"', 'host = "127.0.0.1"\npoll_interval = "0ms"'),
            "devices[0].poll_interval: '0ms' must be longer than zero",
        ),
        ("[gateway\n", "not valid TOML"),
    ],
)
def test_bad_configs_are_rejected_with_the_key_path_and_the_reason(
    patch: str, expected: str
) -> None:
    found = problems(patch)
    assert any(expected in p for p in found), found


def test_every_problem_is_reported_at_once() -> None:
    text = MINIMAL.replace('id = "gw-1"', 'id = "gw 1"') + "[mqtt]\nport = 0\nkeepalive = 30\n"
    assert len(problems(text)) == 3


def test_a_missing_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "nope.toml")


GATEWAY_CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.toml") if not p.name.startswith("simulator"))


@pytest.mark.parametrize("path", GATEWAY_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_example_config_is_valid(path: Path) -> None:
    assert load_config(path).config.devices


def test_the_committed_json_schema_matches_the_models() -> None:
    committed = json.loads((CONFIG_DIR / "edge-gateway.schema.json").read_text())
    assert committed == json_schema(), (
        "config/edge-gateway.schema.json is stale: "
        "run `edge-gateway schema > config/edge-gateway.schema.json`"
    )


def test_validate_prints_a_summary_of_the_read_plan_and_exits_zero() -> None:
    result = run_cli("validate", str(CONFIG_DIR / "example.toml"))
    assert result.returncode == 0, result.stderr
    assert "6 device(s), 15 point(s), 9 request(s) per cycle on 4 line(s)" in result.stdout
    assert "pump-station-7: 6 point(s) in 4 request(s) every 1s" in result.stdout


def test_validate_prints_every_problem_and_exits_non_zero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL.replace("address = 0 }", 'address = 0, type = "flaot32" }'))
    result = run_cli("validate", str(bad))
    assert result.returncode == 2
    assert "devices[0].points[0].type: 'flaot32' is not one of" in result.stderr
    assert result.stdout == ""


RTU = """
[[devices]]
name = "{name}"
protocol = "modbus_rtu"
port = "/dev/ttyUSB0"
baudrate = {baud}
unit = {unit}
points = [{{ name = "p", address = 0 }}]
"""


def test_slaves_on_one_serial_port_must_agree_on_the_line_settings() -> None:
    text = (
        '[gateway]\nid = "g"\n'
        + RTU.format(name="a", baud=9600, unit=1)
        + RTU.format(name="b", baud=19200, unit=2)
    )
    found = problems(text)
    assert any("devices[1] and devices[0] share the bus on /dev/ttyUSB0" in p for p in found)


def test_a_port_cannot_carry_two_protocols() -> None:
    text = MINIMAL + MINIMAL[MINIMAL.index("[[devices]]") :].replace('"pump"', '"other"').replace(
        "modbus_tcp", "modbus_rtu_over_tcp"
    ).replace('host = "127.0.0.1"', 'host = "127.0.0.1"\nport = 502')
    assert any("both use 127.0.0.1:502" in p for p in problems(text))


SERIAL = """
[gateway]
id = "g"
[[devices]]
name = "gas"
protocol = "serial_line"
port = "/dev/ttyUSB1"
{extra}
points = [{{ name = "ch4" }}]
"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            'framing = { kind = "delimiter" }\nparser = { kind = "regex", pattern = "(?P<ch4" }',
            "devices[0]",
        ),
        (
            'framing = { kind = "delimiter" }\nparser = { kind = "regex", pattern = "x" }\n'
            'mode = "polled"',
            "mode 'polled' needs poll_command",
        ),
        (
            'framing = { kind = "fixed", length = 8, sync_hex = "ZZ" }\n'
            'parser = { kind = "regex", pattern = "(?P<ch4>.)" }',
            "sync_hex 'ZZ' is not hex bytes",
        ),
        (
            'framing = { kind = "delimiter" }\n'
            'parser = { kind = "binary", layout = "HH", fields = ["ch4", "x"] }',
            "devices[0]",
        ),
        (
            'framing = { kind = "morse" }\nparser = { kind = "regex", pattern = "(?P<ch4>.)" }',
            "devices[0].framing.kind: 'morse' is not one of",
        ),
    ],
)
def test_serial_line_instruments_are_checked_before_start(extra: str, expected: str) -> None:
    found = problems(SERIAL.format(extra=extra))
    assert any(expected in p for p in found), found
