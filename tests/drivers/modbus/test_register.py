"""`register = 30001`: a point written with the number its datasheet prints."""

from __future__ import annotations

import pytest

from drivers.modbus.decode import Table
from drivers.modbus.notation import datasheet_number, register_address
from gateway.settings import parse_config
from tests.gateway.configs import GATEWAY, problems, tcp_device


def points(point: str) -> list[tuple[str, int]]:
    config = parse_config((GATEWAY + tcp_device(point)).encode()).config
    return [(str(p.table), p.address) for p in config.devices[0].points]


@pytest.mark.parametrize(
    ("register", "table", "address"),
    [
        ("30001", "input", 0),
        ("30053", "input", 52),
        ("39999", "input", 9998),
        ("40001", "holding", 0),
        ("49999", "holding", 9998),
        ("10001", "discrete_input", 0),
        ("300001", "input", 0),
        ("310000", "input", 9999),
        ("365536", "input", 65535),
        ("400001", "holding", 0),
        ("465536", "holding", 65535),
        ("100010", "discrete_input", 9),
        ('"00001"', "coil", 0),
        ('"09999"', "coil", 9998),
        ('"000001"', "coil", 0),
        ('"065536"', "coil", 65535),
    ],
)
def test_a_datasheet_register_number_names_the_table_and_the_0_based_address(
    register: str, table: str, address: int
) -> None:
    kind = ', type = "bool"' if table in ("coil", "discrete_input") else ""
    assert points(f'{{ name = "p", register = {register}{kind} }}') == [(table, address)]


def test_a_register_may_repeat_the_table_it_names() -> None:
    point = '{ name = "p", register = 30053, table = "input" }'
    assert points(point) == [("input", 52)]


def test_register_and_address_together_are_refused_naming_both() -> None:
    (found,) = problems(GATEWAY + tcp_device('{ name = "p", register = 30001, address = 0 }'))
    assert found == (
        "devices[0].points[0].register: register = 30001 and address = 0 both say where the "
        "point is; write register (the datasheet's number) or table and address (0-based), "
        "not both"
    )


def test_a_table_that_disagrees_with_the_register_is_refused() -> None:
    point = '{ name = "p", register = 30001, table = "holding" }'
    (found,) = problems(GATEWAY + tcp_device(point))
    assert found == (
        'devices[0].points[0].table: table = "holding" disagrees with register = 30001, which '
        "is input 0 (0-based); leave table out: the register says it"
    )


@pytest.mark.parametrize(
    ("register", "reason"),
    [
        ("5", "5 does not say which table it is in; "),
        ("10000", "10000 does not say which table it is in; "),
        ("20001", "20001 is no datasheet register number; "),
        ("40000", "40000 is no datasheet register number; "),
        ("50001", "50001 is no datasheet register number; "),
        ("465537", "465537 is no datasheet register number; "),
        ('"30001"', "'30001' is text; write numbers without quotes: register = 30001 "),
        ('"0"', "'0' is text; write numbers without quotes: register = 0 "),
        ("true", "True is not a register number; "),
        ("1.5", "1.5 is not a register number; "),
    ],
)
def test_a_number_that_is_no_datasheet_register_is_refused_with_the_notation(
    register: str, reason: str
) -> None:
    (found,) = problems(GATEWAY + tcp_device(f'{{ name = "p", register = {register} }}'))
    assert found.startswith(f"devices[0].points[0].register: {reason}")


def test_a_point_written_with_register_is_not_warned_about_as_a_datasheet_address() -> None:
    loaded = parse_config((GATEWAY + tcp_device('{ name = "p", register = 330001 }')).encode())
    assert loaded.config.devices[0].points[0].address == 30000
    assert loaded.warnings == ()


@pytest.mark.parametrize(
    ("table", "address", "six", "number"),
    [
        (Table.INPUT, 52, False, "30053"),
        (Table.HOLDING, 0, False, "40001"),
        (Table.HOLDING, 0, True, "400001"),
        (Table.HOLDING, 9998, False, "49999"),
        (Table.HOLDING, 9999, False, "410000"),
        (Table.COIL, 0, False, "00001"),
        (Table.COIL, 0, True, "000001"),
        (Table.DISCRETE_INPUT, 65535, False, "165536"),
    ],
)
def test_an_address_is_numbered_as_a_datasheet_numbers_it_and_back(
    table: Table, address: int, six: bool, number: str
) -> None:
    assert datasheet_number(table, address, six_digits=six) == number
    written: int | str = number if table is Table.COIL else int(number)
    assert register_address(written) == (table, address)
