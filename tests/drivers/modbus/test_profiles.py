"""Device profiles: every shipped profile is a valid register map that names its source,
a device chooses and overrides its points, and each profile reads end to end from a
simulator built from the profile itself."""

from __future__ import annotations

import asyncio
import re
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from drivers.core.model import Quality, Reading
from drivers.modbus.config import load_profile
from drivers.modbus.decode import Value
from drivers.modbus.profile import profile_names
from drivers.sim.modbus import ModbusSimServer
from drivers.sim.modbus_profile import profile_device
from gateway.build import build_drivers
from gateway.settings import parse_config
from gateway.tasks import cancel_and_wait
from tests.gateway.configs import GATEWAY, problems

REPO = Path(__file__).resolve().parents[3]
SHIPPED = ("eastron-sdm120", "eastron-sdm630", "keller-series30")


def device(extra: str, *, profile: str = "eastron-sdm630") -> str:
    return (
        f'{GATEWAY}\n[[devices]]\nname = "meter"\nprotocol = "modbus_tcp"\nhost = "127.0.0.1"\n'
        f'profile = "{profile}"\n{extra}\n'
    )


def points(text: str) -> dict[str, Any]:
    (dev,) = parse_config(text.encode()).config.devices
    return {p.name: p for p in dev.points}


def test_the_shipped_profiles_are_the_files_in_config_profiles() -> None:
    files = sorted(p.stem for p in (REPO / "config" / "profiles").glob("*.toml"))
    assert profile_names() == SHIPPED == tuple(files)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_profile_is_a_valid_map_that_names_its_source_document_and_version(
    name: str,
) -> None:
    profile, _ = load_profile(name)
    assert re.search(r"\b(V\d+(\.\d+)*[A-Z]?|Version \d+(\.\d+)*)\b", profile.source), (
        f"{name}: the source names no version: {profile.source!r}"
    )
    header = (REPO / "config" / "profiles" / f"{name}.toml").read_text().split("\n\n")[0]
    assert header.startswith("# ") and "# Source: " in header
    assert all(point.datasheet_register is not None for point in profile.points), (
        "a profile writes each point with the datasheet's register number"
    )


def test_a_device_with_a_profile_reads_every_point_of_it_with_its_byte_order_and_limit() -> None:
    found = points(device(""))
    profile, _ = load_profile("eastron-sdm630")
    assert list(found) == [p.name for p in profile.points]
    assert (found["frequency"].table, found["frequency"].address) == ("input", 70)
    assert (found["import_energy"].table, found["import_energy"].address) == ("input", 72)
    (dev,) = parse_config(device("").encode()).config.devices
    assert (dev.byte_order, dev.max_registers) == ("ABCD", 80)


def test_a_device_chooses_profile_points_by_name_and_adds_its_own() -> None:
    chosen = 'points = ["voltage_l1", "total_energy", { name = "relay", register = "00001", type = "bool" }]'
    assert list(points(device(chosen))) == ["voltage_l1", "total_energy", "relay"]


def test_points_of_its_own_come_with_every_profile_point_when_none_is_named() -> None:
    own = 'points = [{ name = "relay", table = "coil", address = 0, type = "bool" }]'
    found = points(device(own, profile="keller-series30"))
    assert list(found) == ["relay", "pressure", "sensor_temperature"]


def test_an_override_replaces_the_keys_it_names_and_keeps_the_others() -> None:
    text = device(
        '[devices.overrides.pressure]\nscale = 10.1972\nunit = "m"\n', profile="keller-series30"
    )
    pressure = points(text)["pressure"]
    assert (pressure.scale, pressure.unit, pressure.type) == (10.1972, "m", "float32")
    assert (pressure.table, pressure.address) == ("holding", 2)


def test_an_override_of_where_a_point_is_replaces_the_profile_s_location() -> None:
    text = device(
        '[devices.overrides.pressure]\ntable = "input"\naddress = 100\n', profile="keller-series30"
    )
    pressure = points(text)["pressure"]
    assert (pressure.table, pressure.address, pressure.datasheet_register) == ("input", 100, None)


def test_an_overridden_process_table_replaces_the_profile_s() -> None:
    text = device("[devices.overrides.total_energy]\nprocess = { deadband = 0.5 }\n")
    process = points(text)["total_energy"].process
    assert (process.min, process.deadband) == (None, 0.5)


def test_device_keys_win_over_the_profile_s_defaults() -> None:
    (dev,) = parse_config(device('byte_order = "CDAB"\nmax_registers = 40').encode()).config.devices
    assert (dev.byte_order, dev.max_registers) == ("CDAB", 40)


def test_an_unknown_profile_is_refused_listing_the_shipped_ones() -> None:
    assert problems(device("", profile="eastron-sdm6300")) == [
        "devices[0].profile: there is no profile 'eastron-sdm6300' (shipped: eastron-sdm120, "
        "eastron-sdm630, keller-series30)"
    ]


def test_a_misspelt_profile_point_is_refused_with_the_likely_one() -> None:
    assert problems(device('points = ["voltage_l1", "fequency"]')) == [
        "devices[0].points[1]: profile 'eastron-sdm630' has no point 'fequency' "
        "(did you mean 'frequency'?)"
    ]


def test_an_override_of_a_point_not_read_or_not_in_the_profile_is_refused() -> None:
    text = device(
        'points = ["voltage_l1"]\n[devices.overrides.frequency]\nunit = "Hz"\n'
        '[devices.overrides.tarif]\nunit = "x"\n'
    )
    assert problems(text) == [
        "devices[0].overrides.frequency: 'frequency' is not read: points chooses voltage_l1",
        "devices[0].overrides.tarif: profile 'eastron-sdm630' has no point 'tarif' (its 41 "
        "points are in config/profiles/eastron-sdm630.toml)",
    ]


def test_a_bad_override_is_reported_at_its_own_key() -> None:
    text = device(
        '[devices.overrides.frequency]\nscale = "0.1"\ncolour = "red"\n'
        '[devices.overrides.total_energy]\ntype = "bool"\n'
    )
    assert problems(text) == [
        "devices[0].overrides.frequency.scale: '0.1' is text; write numbers without quotes: "
        "scale = 0.1",
        "devices[0].overrides.frequency.colour: unknown key (check the spelling; see "
        "config/example.toml)",
        "devices[0].overrides.total_energy: type 'bool' reads coils and discrete inputs; for "
        "one bit of a input register use type 'bit' with bit = 0..15",
    ]


def test_a_point_of_its_own_named_like_a_profile_point_is_refused() -> None:
    text = device('points = [{ name = "frequency", register = 30071, type = "float32" }]')
    assert problems(text) == [
        "devices[0].points[0].name: 'frequency' is a point of profile 'eastron-sdm630' too; "
        "change it with [devices.overrides.frequency], or give yours another name"
    ]


def test_names_and_overrides_without_a_profile_are_refused_and_the_rest_still_checked() -> None:
    text = (
        f'{GATEWAY}\n[[devices]]\nname = "m"\nprotocol = "modbus_tcp"\nhost = "127.0.0.1"\n'
        'points = ["frequency", { name = "v", address = 0, type = "flaot32" }]\n'
        '[devices.overrides.frequency]\nunit = "Hz"\n'
    )
    found = problems(text)
    assert found[0] == (
        "devices[0].points[0]: 'frequency' names a profile point, but the device has no "
        "profile; write a point as a table: { name = ..., register = ..., type = ... }"
    )
    assert found[1].startswith("devices[0].points[1].type: 'flaot32' is not one of ")
    assert found[2] == (
        "devices[0].overrides: overrides change the points of a profile: set profile = ..."
    )


def test_an_alarm_may_name_a_profile_point() -> None:
    text = device("") + (
        '\n[[alarms]]\nname = "f"\nkind = "threshold"\ndevice = "meter"\npoint = "frequency"\n'
        "low = 49.5\n"
    )
    assert len(parse_config(text.encode()).config.alarms) == 1


# --- end to end, from a simulator built from the profile -------------------------------------


class Sink(list[Reading]):
    def __call__(self, readings: list[Reading]) -> None:
        self.extend(readings)

    def latest(self) -> dict[str, tuple[Value | None, int]]:
        return {r.point: (r.value, r.quality) for r in self}


@pytest.mark.rig
@pytest.mark.parametrize("name", SHIPPED)
async def test_every_point_of_a_profile_arrives_with_the_value_its_simulator_holds(
    name: str,
) -> None:
    simulated, expected = profile_device(name, unit=7)
    sink = Sink()
    async with ModbusSimServer([simulated]) as sim:
        text = (
            f'{GATEWAY}\n[[devices]]\nname = "dev"\nprotocol = "modbus_tcp"\n'
            f'host = "127.0.0.1"\nport = {sim.port}\nunit = 7\nprofile = "{name}"\n'
            'poll_interval = "100ms"\ntimeout = "500ms"\n'
        )
        drivers = build_drivers(parse_config(text.encode()).config, sink)
        (planned,) = drivers[0].plan().devices
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(d.run()) for d in drivers]
            deadline = time.monotonic() + 10
            while set(sink.latest()) != set(expected) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await cancel_and_wait(tasks)
    assert sink.latest() == {point: (value, Quality.GOOD) for point, value in expected.items()}
    # Every request of the plan was answered as planned (none split up after a refusal).
    assert simulated.reads >= planned.requests and drivers[0].health()[0].modbus_exceptions == {}


def test_the_profiles_are_package_data_so_an_installed_gateway_finds_them() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_data = pyproject["tool"]["setuptools"]["package-data"]["drivers.modbus"]
    assert "profiles/*.toml" in package_data
    assert (REPO / "config" / "profiles").resolve() == REPO / "drivers" / "modbus" / "profiles"


def test_the_profile_device_commented_in_the_example_config_is_valid_when_uncommented() -> None:
    text = (REPO / "config" / "example.toml").read_text()
    start = text.index('# [[devices]]\n# name = "energy-meter-13"')
    block = text[start : text.index("\n\n", start)]
    uncommented = "\n".join(line.removeprefix("#").removeprefix(" ") for line in block.split("\n"))
    devices = parse_config((text + "\n" + uncommented + "\n").encode()).config.devices
    meter = next(dev for dev in devices if dev.name == "energy-meter-13")
    assert [p.name for p in meter.points][:3] == ["voltage_l1", "voltage_l2", "voltage_l3"]
    assert meter.points[-1].process is not None and meter.points[-1].process.deadband == 0.1


def test_the_profile_example_of_the_modbus_readme_is_valid() -> None:
    readme = (REPO / "drivers" / "modbus" / "README.md").read_text()
    (example,) = [
        block for block in re.findall(r"```toml\n(.*?)```", readme, re.S) if "profile" in block
    ]
    (meter,) = parse_config((GATEWAY + example).encode()).config.devices
    assert [p.name for p in meter.points] == ["voltage_l1", "total_power", "import_energy", "door"]
