"""Config fuzzing: nothing a config file holds makes `validate` print a traceback, and a
config that validates does not make `run` die with one. Issue 8.

Mutants of config/example.toml: values replaced by other types and extreme values
(huge integers, 400-digit numbers, inf/nan, empty strings, NUL characters, very long
strings, nested tables and arrays, dates), keys deleted, unknown keys added, list items
and sections duplicated. `validate` must exit 0 or 2 and never print a traceback.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import io
import json
import random
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rig import GatewayProcess

from gateway.cli import main
from gateway.errors import ConfigError
from gateway.settings import parse_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = tomllib.loads((REPO / "config" / "example.toml").read_text())

T = TypeVar("T")
Pick = Callable[[Sequence[T]], T]
"""Chooses one of a sequence: hypothesis' draw (it shrinks) or a seeded random choice."""


@dataclass(frozen=True)
class Raw:
    """TOML text written as is: numbers too long for Python's own formatting."""

    text: str


def _nested(depth: int, leaf: object, *, table: bool) -> object:
    for _ in range(depth):
        leaf = {"x": leaf} if table else [leaf]
    return leaf


WEIRD: list[object] = [
    0,
    -1,
    1,
    255,
    65535,
    65536,
    100_000,
    4_000_000,
    2**31,
    2**63,
    -(2**63) - 1,
    10**400,
    -(10**400),
    Raw("9" * 400),
    Raw("1" + "0" * 400 + ".5"),
    Raw("9" * 5000),
    0.0,
    -0.0,
    0.5,
    1e308,
    -1e308,
    5e-324,
    float("inf"),
    float("-inf"),
    float("nan"),
    True,
    False,
    "",
    " ",
    "\x00",
    "a\x00b",
    "x" * 100_000,
    "ü€😀" * 300,
    "15020",
    "0.1",
    "true",
    "1s",
    "0s",
    "1ms",
    "8760h",
    "1TB",
    "9" * 400 + "s",
    "9" * 400 + "MB",
    "-1s",
    "8761h",
    "mqtt://host:1883",
    "10.0.0.1:502",
    "/",
    "/tmp",
    ".",
    "$",
    "(?P<",
    "(?P<x>.)",
    "GGA",
    "coil",
    "float32",
    [],
    [1, "a", 2.5],
    ["" for _ in range(3)],
    {},
    {"k": 1},
    {"name": "x"},
    _nested(12, 1, table=False),
    _nested(12, "v", table=True),
    _nested(40, 1, table=False),
    _nested(40, 1, table=True),
    datetime.datetime(2024, 1, 1, 12, 0, tzinfo=datetime.UTC),
    datetime.date(2024, 1, 1),
    datetime.time(12, 0),
]
UNKNOWN_KEYS = ["bogus", "", "a b", "x" * 300, "\x00", "name", "points", "kind"]


def _paths(value: object, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield at
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*at, index))


def _parent(doc: dict[str, Any], path: tuple[Any, ...]) -> Any:
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    return node


def mutate(doc: dict[str, Any], pick: Pick[Any]) -> dict[str, Any]:
    """One mutation of `doc` (which it changes and returns)."""
    paths = [p for p in _paths(doc) if p]
    path = pick(paths)
    parent, last = _parent(doc, path), path[-1]
    operation = pick(["replace", "replace", "replace", "delete", "unknown", "duplicate", "wrap"])
    if operation == "replace":
        parent[last] = copy.deepcopy(pick(WEIRD))
    elif operation == "delete":
        del parent[last]
    elif operation == "unknown":
        target = parent[last] if isinstance(parent[last], dict) else parent
        if isinstance(target, dict):
            target[pick(UNKNOWN_KEYS)] = copy.deepcopy(pick(WEIRD))
    elif operation == "duplicate":
        target = parent[last] if isinstance(parent[last], list) else parent
        if isinstance(target, list) and target:
            target.append(copy.deepcopy(pick(target)))
    else:
        parent[last] = pick([[parent[last]], {"value": parent[last]}])
    return doc


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _value(value: object) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    assert isinstance(value, dict), value
    return "{" + ", ".join(f"{_string(k)} = {_value(v)}" for k, v in value.items()) + "}"


DUPLICATED_SECTIONS = ["", "", "", '[gateway]\nid = "again"\n', "[buffer]\n", "[[devices]]\n"]


def to_toml(doc: dict[str, Any], appended: str = "") -> str:
    """The document as TOML: one `key = inline value` line per top-level key."""
    return "".join(f"{_string(k)} = {_value(v)}\n" for k, v in doc.items()) + appended


def mutant(pick: Pick[Any]) -> str:
    doc = copy.deepcopy(EXAMPLE)
    for _ in range(pick([1, 1, 2, 3])):
        doc = mutate(doc, pick)
    return to_toml(doc, pick(DUPLICATED_SECTIONS))


def _validate_in_process(path: Path, *options: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["validate", *options, str(path)])
        except SystemExit as exit:  # argparse; never expected here, but not a traceback
            code = exit.code if isinstance(exit.code, int) else 2
    return code, out.getvalue() + err.getvalue()


def test_the_unmutated_example_survives_the_round_trip_through_the_fuzzers_toml_writer() -> None:
    assert tomllib.loads(to_toml(EXAMPLE)) == EXAMPLE


@settings(
    max_examples=800,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), as_json=st.booleans())
def test_validate_of_any_mutant_config_exits_0_or_2_without_a_traceback(
    tmp_path: Path, data: st.DataObject, as_json: bool
) -> None:
    path = tmp_path / "mutant.toml"
    path.write_text(mutant(lambda options: data.draw(st.sampled_from(options))), encoding="utf-8")
    code, output = _validate_in_process(path, *(["--json"] if as_json else []))
    assert code in (0, 2), output[-2000:]
    assert "Traceback" not in output
    if as_json:
        answer = json.loads(output)
        assert answer["ok"] is (code == 0)


@pytest.mark.rig  # processes of their own
@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_validate_of_a_mutant_config_in_a_real_process_exits_0_or_2_without_a_traceback(
    tmp_path: Path, data: st.DataObject
) -> None:
    path = tmp_path / "mutant.toml"
    path.write_text(mutant(lambda options: data.draw(st.sampled_from(options))), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode in (0, 2), proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr


# --- run ------------------------------------------------------------------------------------


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _runnable_mutants(workdir: Path, count: int, seed: int = 8) -> list[tuple[Path, str]]:
    """`count` mutants that validate (the example itself first), each with its own buffer
    in `workdir` and the broker on an unused loopback port."""
    rng = random.Random(seed)
    found: list[tuple[Path, str]] = []
    for attempt in range(2000):
        doc = copy.deepcopy(EXAMPLE)
        if attempt:
            for _ in range(rng.choice([1, 1, 2])):
                doc = mutate(doc, rng.choice)
        where = workdir / f"mutant-{len(found)}"
        if not isinstance(doc.get("buffer", {}), dict) or not isinstance(doc.get("mqtt", {}), dict):
            continue
        doc.setdefault("buffer", {})["path"] = str(where / "buffer.db")
        mqtt = doc.setdefault("mqtt", {})
        mqtt.update(host="127.0.0.1", port=_unused_port())
        mqtt.pop("tls", None)
        text = to_toml(doc)
        try:
            parse_config(text.encode())
        except ConfigError:
            continue
        where.mkdir()
        found.append((where, text))
        if len(found) == count:
            break
    return found


def _stop(gateway: GatewayProcess) -> int:
    """SIGTERM, or the exit code of a gateway that already ended."""
    assert gateway.proc is not None
    code = gateway.proc.poll()
    return gateway.stop() if code is None else code


@pytest.mark.rig  # processes of their own
def test_run_of_configs_that_validate_never_ends_in_a_traceback(tmp_path: Path) -> None:
    mutants = _runnable_mutants(tmp_path, 6)
    assert len(mutants) == 6
    gateways = [GatewayProcess(where, text) for where, text in mutants]
    try:
        for gateway in gateways:
            gateway.start()
        deadline = time.monotonic() + 20
        for gateway in gateways:  # started: signal handlers set, buffer open
            assert gateway.proc is not None
            while time.monotonic() < deadline and gateway.proc.poll() is None:
                if (gateway.workdir / "buffer.db").exists():
                    break
                time.sleep(0.05)
        time.sleep(1.0)
        codes = [_stop(gateway) for gateway in gateways]
    finally:
        for gateway in gateways:
            gateway.cleanup()
    for gateway, code in zip(gateways, codes, strict=True):
        assert "Traceback" not in gateway.log, gateway.config.read_text()[:3000] + gateway.log
        assert code in (0, 2, 3), gateway.log


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_mutator_is_deterministic_for_a_seed(seed: int) -> None:
    def one() -> str:
        rng = random.Random(seed)
        return mutant(rng.choice)

    assert one() == one()
