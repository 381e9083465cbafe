"""Fixtures of the test rig (the parts themselves live in rig.py), and the `rig` marker.

A test is `rig` when it stands on real parts: a mosquitto, a pymodbus server, a pty,
a process of its own. Everything under tests/integration/ is, and so is any test
using the rig's fixtures; other modules mark their rig tests explicitly. The rest
are pure (functions, models, the buffer on tmp files) and run in well under a minute:
`.ci/test -m "not rig"` while working, `.ci/test` for all.

Soak runs (`soak` marker) are left out unless the `-m` expression names them
(`.ci/test -m soak`), whatever else it selects.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rig import broker, gateway_process, subscriber

__all__ = ["broker", "gateway_process", "subscriber"]

_RIG_FIXTURES = frozenset({"broker", "subscriber", "gateway_process"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        in_integration = "integration" in Path(str(item.path)).parts
        uses_rig = bool(_RIG_FIXTURES & set(getattr(item, "fixturenames", ())))
        if in_integration or uses_rig:
            item.add_marker(pytest.mark.rig)
    if "soak" in (config.getoption("markexpr") or ""):
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]
