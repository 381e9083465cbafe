"""Every driver's test cases: `drivers/<protocol>/testcases/<case>/config.toml` and what
`edge-gateway validate config.toml` prints for it in that folder — the plan
(`expected_plan.txt`, exit 0) or the problems (`expected_error.txt`, exit 2).
drivers/README.md says how to add one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drivers.base import DriverPlugin
from drivers.registry import PLUGINS
from gateway.cli import main

DRIVERS = Path(__file__).resolve().parents[2] / "drivers"
CASES = sorted(path.parent for path in DRIVERS.glob("*/testcases/*/config.toml"))


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.parents[1].name}/{case.name}")
def test_validate_prints_what_the_case_expects(
    case: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plan, error = case / "expected_plan.txt", case / "expected_error.txt"
    assert plan.exists() != error.exists(), f"{case} needs expected_plan.txt or expected_error.txt"
    monkeypatch.chdir(case)
    code = main(["validate", "config.toml"])
    out, err = capsys.readouterr()
    if plan.exists():
        assert (code, err) == (0, "")
        assert out == plan.read_text()
    else:
        assert (code, out) == (2, "")
        assert err == error.read_text()


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda plugin: plugin.name)
def test_every_protocol_has_test_cases(plugin: DriverPlugin[Any]) -> None:
    assert any(case.parents[1] == DRIVERS / plugin.name for case in CASES)
