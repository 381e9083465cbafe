"""What a fault does to a Modbus answer frame, and the control interface's commands and
replies (pure)."""

from __future__ import annotations

import json
import random
import struct
from typing import Any

import pytest

from drivers.serial_line.checksums import crc16_modbus
from drivers.sim.control import HELP, CommandError, answer, parse_command, parse_value
from drivers.sim.faults import WireFault, broken_answer
from drivers.sim.values import Scalar

RNG = random.Random(3)


def mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def rtu(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + crc16_modbus(body).to_bytes(2, "little")


TCP_ANSWER = mbap(0x1234, 5, bytes.fromhex("0304000A0014"))
RTU_ANSWER = rtu(13, bytes.fromhex("0304000A0014"))


def test_an_exception_fault_answers_the_code_for_the_requests_function_unit_and_transaction() -> (
    None
):
    assert broken_answer(TCP_ANSWER, WireFault("exception", code=0x30), rtu=False, rng=RNG) == mbap(
        0x1234, 5, b"\x83\x30"
    )
    assert broken_answer(RTU_ANSWER, WireFault("exception", code=2), rtu=True, rng=RNG) == rtu(
        13, b"\x83\x02"
    )


def test_a_crc_fault_breaks_the_rtu_crc_and_nothing_else() -> None:
    broken = broken_answer(RTU_ANSWER, WireFault("crc"), rtu=True, rng=RNG)
    assert broken[:-2] == RTU_ANSWER[:-2] and broken[-2:] != RTU_ANSWER[-2:]
    assert crc16_modbus(broken[:-2]).to_bytes(2, "little") != broken[-2:]


def test_a_txid_fault_answers_with_another_transaction_id() -> None:
    broken = broken_answer(TCP_ANSWER, WireFault("txid"), rtu=False, rng=RNG)
    assert broken[:2] != TCP_ANSWER[:2] and broken[2:] == TCP_ANSWER[2:]


def test_garbage_is_as_long_as_the_answer_and_drop_sends_nothing() -> None:
    garbage = broken_answer(TCP_ANSWER, WireFault("garbage"), rtu=False, rng=RNG)
    assert len(garbage) == len(TCP_ANSWER) and garbage != TCP_ANSWER
    assert broken_answer(TCP_ANSWER, WireFault("drop"), rtu=False, rng=RNG) == b""


@pytest.mark.parametrize(
    ("line", "verb", "target", "fault"),
    [
        ("fault meter silent", "fault", "meter", WireFault("silent")),
        ("fault meter exception 2", "fault", "meter", WireFault("exception", code=2)),
        (
            "fault meter.voltage exception 0x0B",
            "fault",
            "meter.voltage",
            WireFault("exception", code=11),
        ),
        ("FAULT meter DELAY 300", "fault", "meter", WireFault("delay", millis=300)),
        ("fault pump txid", "fault", "pump", WireFault("txid")),
        ("  fault gas flood  ", "fault", "gas", WireFault("flood")),
        ("clear meter", "clear", "meter", None),
        ("clear", "clear", None, None),
        ("unset meter.voltage", "unset", "meter.voltage", None),
        ("status", "status", None, None),
    ],
)
def test_commands_are_read_as_written(
    line: str, verb: str, target: str | None, fault: WireFault | None
) -> None:
    command = parse_command(line)
    assert (command.verb, command.target, command.fault) == (verb, target, fault)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("231.5", 231.5),
        ("7", 7),
        ("-3", -3),
        ("true", True),
        ("FALSE", False),
        ('"42"', "42"),
        ("PS7 0412", "PS7 0412"),
    ],
)
def test_set_values_are_numbers_true_false_or_text(text: str, value: Scalar) -> None:
    assert parse_value(text) == value
    assert parse_command(f"set meter.voltage {text}").value == value


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("", "empty command"),
        ("faults meter silent", "unknown command 'faults'"),
        ("fault meter slow", "no fault 'slow'; faults: silent, exception, delay"),
        ("fault meter exception", "exception needs its code"),
        ("fault meter exception 300", "exception code 300 is not 1-255"),
        ("fault meter exception two", "'two' is not a whole number"),
        ("fault meter delay -5", "delay -5 is not 0-600000"),
        ("fault meter crc 3", "crc takes no number"),
        ("fault meter", "usage: fault TARGET KIND"),
        ("set meter.voltage", "set needs DEVICE.POINT and a value"),
        ("set meter.voltage nan", "is not a finite number"),
        ("status now", "usage: status"),
    ],
)
def test_a_command_that_cannot_be_read_is_refused_with_the_reason(line: str, says: str) -> None:
    with pytest.raises(CommandError, match=says):
        parse_command(line)


class FakeSimulation:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, ...]] = []

    def set_fault(self, target: str, fault: WireFault) -> str:
        if target == "nobody":
            raise CommandError("no device 'nobody'")
        self.calls.append(("fault", target, fault))
        return f"{target} {fault}"

    def clear(self, target: str | None) -> str:
        self.calls.append(("clear", target))
        return "no faults" if target is None else f"{target} no fault"

    def hold(self, target: str, value: Scalar) -> str:
        self.calls.append(("hold", target, value))
        return f"{target} = {value!r}"

    def release(self, target: str) -> str:
        self.calls.append(("release", target))
        return f"{target} follows its value again"

    def status(self) -> dict[str, Any]:
        return {"uptime": 1.5, "devices": []}


def test_every_reply_is_one_line_ok_error_or_json() -> None:
    simulation = FakeSimulation()
    assert answer(simulation, "fault meter exception 2") == "ok meter exception 2"
    assert answer(simulation, "fault meter.voltage delay 300") == "ok meter.voltage delay 300"
    assert answer(simulation, "clear meter") == "ok meter no fault"
    assert answer(simulation, "clear") == "ok no faults"
    assert answer(simulation, "set meter.voltage 231.5") == "ok meter.voltage = 231.5"
    assert answer(simulation, "unset meter.voltage") == "ok meter.voltage follows its value again"
    assert answer(simulation, "fault nobody silent") == "error no device 'nobody'"
    assert answer(simulation, "fault meter slow").startswith("error no fault 'slow'")
    assert answer(simulation, "help") == f"ok {HELP}"
    assert json.loads(answer(simulation, "status")) == {"uptime": 1.5, "devices": []}
    assert all("\n" not in answer(simulation, line) for line in ("status", "help", "x"))
    assert simulation.calls[0] == ("fault", "meter", WireFault("exception", code=2))
