"""The centre's decoder needs nothing but msgpack and the standard library: proven in a
Python where pymodbus, pyserial, aiomqtt, paho-mqtt and pydantic cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"

CENTRE = r"""
import importlib.abc, json, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    BLOCKED = {"pymodbus", "serial", "aiomqtt", "paho", "pydantic", "pydantic_core"}

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed at the centre)")
        return None

sys.meta_path.insert(0, NotInstalled())
before = set(sys.modules)
from gateway.wire import decode_batch, iter_batches
from gateway.wire.messages import Status, Identity, encode

batches = [decode_batch(open(path, "rb").read()) for path in sys.argv[1:]]
encode(Status("online", Identity("gw", "0123456789abcdef", "0", "0123456789ab"), 1.0))
loaded = sorted(
    name for name in set(sys.modules) - before
    if name.split(".")[0] not in sys.stdlib_module_names
)
print(json.dumps({"readings": [len(b.readings) for b in batches], "loaded": loaded}))
"""


@pytest.mark.rig  # a process of its own
def test_the_centres_decoder_works_where_no_driver_or_mqtt_library_is_installed() -> None:
    goldens = sorted(str(p) for p in GOLDEN.glob("*.msgpack"))
    result = subprocess.run(
        [sys.executable, "-I", "-c", CENTRE, *goldens],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert all(n > 0 for n in report["readings"]) and len(report["readings"]) == len(goldens)
    foreign = {name.split(".")[0] for name in report["loaded"]}
    cython = {name for name in foreign if "cython" in name}  # msgpack's C extension runtime
    assert foreign - cython <= {"gateway", "drivers", "msgpack"}, report["loaded"]
    assert not any(name.startswith("drivers.") and not name.startswith("drivers.core")
                   for name in report["loaded"]), report["loaded"]  # fmt: skip
