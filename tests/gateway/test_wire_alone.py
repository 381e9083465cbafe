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


PURE = r"""
import json, sys, time
import msgpack
assert msgpack.Packer.__module__ == "msgpack.fallback", msgpack.Packer.__module__
from drivers.core.model import Reading
from gateway.wire import decode_batch, encode_batch

readings = [Reading("meter", f"p{i % 50}", 1795430000000 + i, i * 0.5, 0) for i in range(500)]
readings += [Reading("gas", "state", 1795430000999, "alarm", 0), Reading("gas", "n", 1, None, 4)]
payload = encode_batch("gw", "0123456789abcdef", 7, readings, compress="never")
started = time.perf_counter()
for _ in range(20):
    encode_batch("gw", "0123456789abcdef", 7, readings, compress="never")
per_batch_ms = (time.perf_counter() - started) / 20 * 1000
goldens = [len(decode_batch(open(p, "rb").read()).readings) for p in sys.argv[1:]]
print(json.dumps({"hex": payload.hex(), "goldens": goldens, "encode_ms": per_batch_ms}))
"""


@pytest.mark.rig  # a process of its own
def test_the_wire_format_is_the_same_with_msgpacks_pure_python_fallback() -> None:
    # 32-bit Raspberry Pi OS has no msgpack wheel on the package index: installed with
    # MSGPACK_PUREPYTHON=1 it needs no compiler (README), and must speak the same bytes.
    from drivers.core.model import Reading
    from gateway.wire import encode_batch

    goldens = sorted(str(p) for p in GOLDEN.glob("*.msgpack"))
    result = subprocess.run(
        [sys.executable, "-c", PURE, *goldens],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "MSGPACK_PUREPYTHON": "1"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    readings = [Reading("meter", f"p{i % 50}", 1795430000000 + i, i * 0.5, 0) for i in range(500)]
    readings += [
        Reading("gas", "state", 1795430000999, "alarm", 0),
        Reading("gas", "n", 1, None, 4),
    ]
    native = encode_batch("gw", "0123456789abcdef", 7, readings, compress="never")
    assert bytes.fromhex(report["hex"]) == native
    assert all(n > 0 for n in report["goldens"]) and len(report["goldens"]) == len(goldens)
