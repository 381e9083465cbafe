"""Each protocol's README example (its first ```toml block) is a complete, valid config
with the plan the README describes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from drivers.base import DriverPlugin
from drivers.registry import PLUGINS
from gateway.build import summarize
from gateway.settings import parse_config

DRIVERS = Path(__file__).resolve().parents[2] / "drivers"

DESCRIBED = {
    "modbus": ["energy-meter-3: 7 point(s) in 5 request(s) every 2s (unit 3 at 127.0.0.1:502)"],
    "serial_line": [  # four instruments
        "gas-detector-3: 2 point(s), streaming (/dev/ttyUSB1 (9600 baud))",
        "gps: 4 point(s), streaming (/dev/ttyAMA0 (4800 baud))",
        "level-radar-2: 2 point(s), streaming (/dev/ttyUSB2 (19200 baud))",
        "flow-meter-5: 2 point(s), polled every 5s (/dev/ttyUSB3 (9600 baud))",
    ],
}
"""What each README says its example does (a new protocol's example need only be valid)."""


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda plugin: plugin.name)
def test_the_readme_example_is_a_valid_config_with_the_plan_it_describes(
    plugin: DriverPlugin[Any],
) -> None:
    block = re.search(r"```toml\n(.*?)```", (DRIVERS / plugin.name / "README.md").read_text(), re.S)
    assert block is not None
    config = parse_config(block[1].encode(), "README.md").config
    assert {device.protocol for device in config.devices} <= set(plugin.protocols)
    details = summarize(config).details
    assert details == DESCRIBED.get(plugin.name, details)
