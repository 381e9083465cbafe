"""The serial line README's example config is complete and valid."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.build import summarize
from gateway.settings import parse_config

README = Path(__file__).resolve().parents[3] / "drivers" / "serial_line" / "README.md"


def test_the_readme_example_is_a_valid_config_with_four_instruments() -> None:
    block = re.search(r"```toml\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    summary = summarize(parse_config(block[1].encode(), "README.md").config)
    assert summary.details == [
        "gas-detector-3: 2 point(s), streaming (/dev/ttyUSB1 (9600 baud))",
        "gps: 4 point(s), streaming (/dev/ttyAMA0 (4800 baud))",
        "level-radar-2: 2 point(s), streaming (/dev/ttyUSB2 (19200 baud))",
        "flow-meter-5: 2 point(s), polled every 5s (/dev/ttyUSB3 (9600 baud))",
    ]
