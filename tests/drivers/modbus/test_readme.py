"""The driver README's example config is complete and valid."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.build import summarize
from gateway.settings import parse_config

README = Path(__file__).resolve().parents[3] / "drivers" / "modbus" / "README.md"


def test_the_readme_example_is_a_valid_config_with_the_plan_it_describes() -> None:
    block = re.search(r"```toml\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    summary = summarize(parse_config(block[1].encode(), "README.md").config)
    assert summary.details == [
        "energy-meter-3: 7 point(s) in 5 request(s) every 2s (unit 3 at 127.0.0.1:502)"
    ]
