"""The committed JSON Schema accepts what validate accepts: the example config and every
driver test case that validates (points written with `register`, devices with a
`profile`, profile point names in `points`), so an editor does not flag them."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest

from tests.gateway.configs import CONFIG_DIR

DRIVERS = CONFIG_DIR.parent / "drivers"
CASES = sorted(p.parent / "config.toml" for p in DRIVERS.glob("*/testcases/*/expected_plan.txt"))
VALID = [CONFIG_DIR / "example.toml", *CASES]


@pytest.mark.parametrize("path", VALID, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_valid_config_satisfies_the_committed_json_schema(path: Path) -> None:
    schema = json.loads((CONFIG_DIR / "edge-gateway.schema.json").read_text())
    document = tomllib.loads(path.read_text())
    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)


def test_the_schema_refuses_a_point_with_neither_address_nor_register() -> None:
    schema = json.loads((CONFIG_DIR / "edge-gateway.schema.json").read_text())
    document = tomllib.loads(
        '[gateway]\nid = "g"\n[[devices]]\nname = "m"\nprotocol = "modbus_tcp"\n'
        'host = "h"\npoints = [{ name = "p" }]\n'
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
