"""Device profiles: the register maps shipped with the gateway, as files (no pydantic here).

A profile is a TOML file in ``drivers/modbus/profiles/`` (``config/profiles/`` in the
repository links there): the register map of one device model, as its manufacturer's
document prints it, with the document and its version in ``source``. A device section
names it with ``profile = "<name>"`` (the file's name without ``.toml``); config.py
validates the file with the same point model as a hand-written map and composes the
device's points from it (drivers/modbus/README.md, "Device profiles").

The files are package data of ``drivers.modbus``: ``importlib.resources`` finds them in
a source checkout, an editable install and a wheel alike.
"""

from __future__ import annotations

import tomllib
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

__all__ = ["ProfileFileError", "profile_names", "read_profile"]

_SUFFIX = ".toml"


class ProfileFileError(Exception):
    """A profile that is not shipped, or whose file cannot be read as TOML."""


def _directory() -> Traversable:
    return files("drivers.modbus") / "profiles"


def profile_names() -> tuple[str, ...]:
    """The shipped profiles, sorted: what `profile = "..."` may name."""
    return tuple(
        sorted(
            entry.name.removesuffix(_SUFFIX)
            for entry in _directory().iterdir()
            if entry.name.endswith(_SUFFIX) and entry.is_file()
        )
    )


def read_profile(name: str) -> dict[str, Any]:
    """The TOML document of the profile `name`; ProfileFileError when there is none."""
    if name not in profile_names():
        shipped = ", ".join(profile_names())
        raise ProfileFileError(f"there is no profile {name!r} (shipped: {shipped})")
    entry = _directory() / f"{name}{_SUFFIX}"
    try:
        return tomllib.loads(entry.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ProfileFileError(f"profile {name!r} cannot be read: {err}") from err
