"""Configs that are valid but probably not what the technician meant are warned about:
the key path, and the figure that makes the point. Issue 8."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from drivers.modbus.decode import Table
from drivers.modbus.plan import ReadRequest
from drivers.modbus.timing import rtu_response_bytes
from gateway.build import summarize
from gateway.errors import ConfigError
from gateway.settings import load_config, parse_config
from tests.gateway.configs import GATEWAY, tcp_device


def warnings(text: str) -> tuple[str, ...]:
    return parse_config(text.encode(), "test.toml").warnings


def test_a_config_without_surprises_has_no_warnings() -> None:
    assert warnings(GATEWAY + tcp_device()) == ()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('timeout = "1s"', "devices[0].timeout: 1s is not shorter than poll_interval 1s"),
        (
            'timeout = "3s"\npoll_interval = "500ms"',
            "devices[0].timeout: 3s is not shorter than poll_interval 500ms",
        ),
    ],
)
def test_a_timeout_as_long_as_the_poll_interval_is_warned_about(extra: str, expected: str) -> None:
    (found,) = warnings(GATEWAY + tcp_device(extra=extra))
    assert found.startswith(expected)
    assert "make timeout shorter than poll_interval" in found


def test_a_streaming_instrument_has_no_timeout_to_warn_about() -> None:
    text = GATEWAY + (
        '[[devices]]\nname = "gas"\nprotocol = "serial_line"\nport = "/dev/null"\n'
        'timeout = "5s"\nframing = { kind = "delimiter" }\n'
        'parser = { kind = "regex", pattern = \'(?P<ch4>\\d+)\' }\npoints = [{ name = "ch4" }]\n'
    )
    assert warnings(text) == ()


@pytest.mark.parametrize(
    ("table", "address", "expected"),
    [
        (
            "input",
            30053,
            "30053 looks like register 30053 of a datasheet; addresses here are 0-based: "
            "input 52; write register = 30053, or address = 52",
        ),
        ("input", 30001, "0-based: input 0; write register = 30001, or address = 0"),
        (
            "holding",
            40001,
            "40001 looks like register 40001 of a datasheet; addresses here are 0-based: "
            "holding 0; write register = 40001, or address = 0",
        ),
        ("holding", 49999, "0-based: holding 9998; write register = 49999, or address = 9998"),
        (
            "discrete_input",
            10001,
            "0-based: discrete_input 0; write register = 10001, or address = 0",
        ),
    ],
)
def test_an_address_in_datasheet_notation_is_warned_about_with_the_0_based_address(
    table: str, address: int, expected: str
) -> None:
    kind = ', type = "bool"' if table == "discrete_input" else ""
    point = f'{{ name = "p", table = "{table}", address = {address}{kind} }}'
    (found,) = warnings(GATEWAY + tcp_device(point))
    assert found.startswith(f"devices[0].points[0].address: {address} looks like register")
    assert found.endswith(expected)


@pytest.mark.parametrize(
    ("table", "address"), [("input", 30000), ("holding", 30053), ("holding", 50001), ("input", 52)]
)
def test_an_ordinary_address_is_not_taken_for_datasheet_notation(table: str, address: int) -> None:
    point = f'{{ name = "p", table = "{table}", address = {address} }}'
    assert warnings(GATEWAY + tcp_device(point)) == ()


def test_a_serial_port_that_does_not_exist_is_warned_about_once_per_port() -> None:
    rtu = (
        '[[devices]]\nname = "{name}"\nprotocol = "modbus_rtu"\nport = "/dev/ttyNOPE7"\n'
        'unit = {unit}\npoints = [{{ name = "p", address = 0 }}]\n'
    )
    found = warnings(GATEWAY + rtu.format(name="a", unit=1) + rtu.format(name="b", unit=2))
    assert found == (
        "devices[0].port: /dev/ttyNOPE7 does not exist now: is the adapter plugged in? "
        "(the gateway keeps trying to open it)",
    )


def _bus(baudrate: int, strings: int, poll: str = "1s", parity: str = "N") -> str:
    """One RTU slave reading `strings` requests of 125 registers each."""
    points = ", ".join(
        f'{{ name = "s{k}", address = {k * 200}, type = "string", length = 125 }}'
        for k in range(strings)
    )
    return GATEWAY + (
        '[[devices]]\nname = "meter"\nprotocol = "modbus_rtu"\nport = "/dev/null"\n'
        f'baudrate = {baudrate}\nparity = "{parity}"\npoll_interval = "{poll}"\n'
        f'timeout = "200ms"\npoints = [{points}]\n'
    )


def test_an_rs485_bus_needing_more_line_time_than_its_cycle_is_warned_about_with_the_figure() -> (
    None
):
    # 5 requests of 125 registers at 9600 baud 8N1 (10 bits a character):
    # (8 + 5 + 250) characters * 10/9600 s + 3.5 * 11/9600 s of silence, 5 times = 1.39 s.
    per_request = (8 + 5 + 2 * 125) * 10 / 9600 + 3.5 * 11 / 9600
    (found,) = warnings(_bus(9600, 5))
    assert found.startswith(
        f"devices[0].port: the bus on /dev/null at 9600 baud needs {5 * per_request:.3g}s of "
        "line time per 1s cycle"
    )
    assert f"{5 * per_request:.3g}" == "1.39"
    assert "polls will fall behind" in found


def test_a_bus_with_line_time_to_spare_is_not_warned_about() -> None:
    assert warnings(_bus(19200, 5)) == ()  # 0.69 s of 1 s


def test_the_summary_gives_the_line_time_of_each_rtu_device_and_bus() -> None:
    config = parse_config(_bus(9600, 2, poll="2s", parity="E").encode()).config
    summary = summarize(config)
    per_request = (8 + 5 + 2 * 125) * 11 / 9600 + 3.5 * 11 / 9600  # 8E1: 11 bits a character
    assert summary.line_time == {"meter": pytest.approx(2 * per_request)}
    (bus,) = summary.buses
    assert (bus.port, bus.baudrate, bus.devices, bus.cycle) == ("/dev/null", 9600, ("meter",), 2.0)
    assert bus.line_time == pytest.approx(2 * per_request)
    assert bus.load == pytest.approx(per_request)
    assert summary.as_dict()["buses"][0]["load"] == pytest.approx(per_request)


def test_slaves_polled_less_often_count_in_proportion_on_a_bus() -> None:
    text = _bus(9600, 2, poll="1s") + (
        '[[devices]]\nname = "slow"\nprotocol = "modbus_rtu"\nport = "/dev/null"\n'
        'unit = 2\npoll_interval = "4s"\ntimeout = "200ms"\n'
        'points = [{ name = "p", address = 0, type = "string", length = 125 }]\n'
    )
    summary = summarize(parse_config(text.encode()).config)
    (bus,) = summary.buses
    assert bus.cycle == 1.0
    assert bus.line_time == pytest.approx(
        summary.line_time["meter"] + summary.line_time["slow"] / 4
    )


@pytest.mark.parametrize(
    ("table", "count", "expected"), [("coil", 1, 6), ("coil", 9, 7), ("input", 3, 11)]
)
def test_an_rtu_answer_is_sized_by_registers_or_bits(table: str, count: int, expected: int) -> None:
    assert rtu_response_bytes(ReadRequest(Table(table), 0, count, ())) == expected
    assert expected == 5 + (math.ceil(count / 8) if table == "coil" else 2 * count)


def test_a_password_in_a_file_others_can_read_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(GATEWAY + '[mqtt]\nusername = "u"\npassword = "p"\n' + tcp_device())
    path.chmod(0o644)
    assert load_config(path).warnings == (
        f"mqtt.password: {path} holds a password and group and others can read it "
        f"(mode 0644); chmod 600 {path}",
    )
    path.chmod(0o640)
    assert "and group can read it (mode 0640)" in load_config(path).warnings[0]
    path.chmod(0o600)
    assert load_config(path).warnings == ()


def test_a_readable_file_without_a_password_is_not_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(GATEWAY + tcp_device())
    path.chmod(0o644)
    assert load_config(path).warnings == ()


def test_a_commit_interval_from_before_write_existed_keeps_writing_every_batch() -> None:
    text = GATEWAY + '[buffer]\ncommit_interval = "1s"\n' + tcp_device()
    loaded = parse_config(text.encode(), "test.toml")
    assert loaded.config.buffer.write == "all"  # what that config chose, kept
    (found,) = loaded.warnings
    assert found.startswith('buffer.commit_interval: implies write = "all"')
    assert "remove commit_interval" in found


def test_a_commit_interval_with_write_unacked_is_refused_in_words() -> None:
    text = GATEWAY + '[buffer]\nwrite = "unacked"\ncommit_interval = "1s"\n' + tcp_device()
    with pytest.raises(ConfigError, match='commit_interval applies only with write = "all"'):
        parse_config(text.encode(), "test.toml")
