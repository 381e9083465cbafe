"""The README's first command: the demo shows data from every simulated device."""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_shows_decoded_data_from_every_simulated_device_arriving() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--seconds", "4"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert '[status] {"state":"online"' in out
    for shown in (
        "pump-station-7/discharge_pressure=",
        "flood-gauge-204/water_level=",
        "flow-meter-11/flow=",
        "gas-detector-3/ch4=",
    ):
        assert shown in out, f"{shown} missing from the demo output:\n{out}"
    assert '"state":"offline"' in out and '"reason":"stopped"' in out
    assert "bytes per reading on the wire" in out
    assert "Traceback" not in result.stderr
