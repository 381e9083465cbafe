"""A validated configuration as the running gateway holds it, and how the daemon gets
one without carrying the config's validation for the rest of its life.

pydantic validates the config (gateway/settings.py: every problem named by key path).
Its models and pydantic itself cost the daemon about 13 MiB of its ~50 (docs/
performance.md, "Where the memory goes"), on a Pi where the target is 40. So
`edge-gateway run` validates in a child process (`load_apart`: the same
`load_config`/`parse_config`, the same errors), which sends back the validated config
as `ConfigRecord`s: plain objects with the models' field values and nothing else,
pickled. The daemon's modules read configs by attribute only (typed as the models, for
mypy), so they run on records and on models alike: tests and the commissioning tools
hand them models. What the daemon needs of a model beyond its fields is computed in
the child: each device's config as JSON (`devices_meta`, the metadata message) and
which plugin builds each protocol (`plugins`).

The unpickler accepts only this module's classes, ConfigError, paths and our enums
(`Table`, `DataType`): the child is our own code, and even so the daemon does not run
what a pickle asks.
"""

from __future__ import annotations

import asyncio
import enum
import io
import pickle
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PosixPath
from typing import Any, Final, Generic, TypeVar

from gateway.errors import ConfigError, GatewayError

__all__ = ["ConfigRecord", "LoadedConfig", "ValidatorFailed", "load_apart", "load_apart_async"]

_ROOT: Final = Path(__file__).resolve().parents[1]  # the tree this daemon runs from
CHILD_TIMEOUT: Final = 120.0  # seconds; the child takes ~0.3 s of CPU here, ~6 s on a Pi 3B+


C = TypeVar("C")


@dataclass(frozen=True)
class LoadedConfig(Generic[C]):
    """A validated configuration, where it came from, and what looks wrong in it
    (`LoadedConfig[GatewayConfig]`: gateway/settings.py makes them)."""

    config: C
    """The validated model; in the daemon, its records (the same attributes)."""
    source: str
    sha256: str
    warnings: tuple[str, ...] = ()
    """'key.path: message' for what is valid but probably not meant (`run` logs them)."""
    plugins: Mapping[str, str] = field(default_factory=dict)
    """Each protocol's plugin (its folder under drivers/), in the registry's order."""
    devices_meta: tuple[dict[str, Any], ...] = ()
    """Each device's config as JSON, for the metadata message (gateway/wire/events.py)."""

    @property
    def config_hash(self) -> str:
        return self.sha256[:12]


class ValidatorFailed(GatewayError):
    """The child that validates the config did not answer (it crashed, was killed, or
    ran out of time): not a verdict on the config, so the running one stays."""


class ConfigRecord:
    """One validated config section without its model: the model's name and its field
    values, read as attributes; equal when both are; never changed."""

    __slots__ = ("_fields", "_model")

    def __init__(self, model: str, fields: dict[str, Any]) -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_fields", fields)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(f"{self._model} has no field {name!r}") from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{self._model} is a loaded config: it never changes")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfigRecord):
            return NotImplemented
        return bool(self._model == other._model and self._fields == other._fields)

    def __hash__(self) -> int:
        return hash(self._model)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._fields.items())
        return f"{self._model}({inner})"

    def __reduce__(self) -> tuple[Any, ...]:
        return ConfigRecord, (self._model, self._fields)


def load_apart(
    path: str | Path, raw: bytes | None = None, source: str | None = None
) -> LoadedConfig[Any]:
    """`load_config(path)` (or with `raw`, `parse_config(raw, source)`) in a child
    process; its records. Raises ConfigError as they do, and ValidatorFailed when the
    child gives no verdict (what it said on stderr, or how it ended, is the message).
    For `run`, before its loop starts."""
    return asyncio.run(load_apart_async(path, raw, source))


async def load_apart_async(
    path: str | Path, raw: bytes | None = None, source: str | None = None
) -> LoadedConfig[Any]:
    """`load_apart` on a running loop (a reload): the loop runs on meanwhile, and the
    child is killed when the reload is cancelled (the service stops)."""
    try:
        child = await asyncio.create_subprocess_exec(
            *_command(path, raw, source),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as failed:
        raise ValidatorFailed(f"cannot start {sys.executable} to validate: {failed}") from failed
    try:
        async with asyncio.timeout(CHILD_TIMEOUT):
            out, err = await child.communicate(raw)
    except TimeoutError:
        raise ValidatorFailed(f"validating the config took over {CHILD_TIMEOUT:.0f} s") from None
    finally:
        if child.returncode is None:  # timed out, or cancelled: it must not outlive us
            child.kill()
            await asyncio.shield(child.wait())
    assert child.returncode is not None
    return _verdict(child.returncode, out, err)


def _command(path: str | Path, raw: bytes | None, source: str | None) -> list[str]:
    # -P: the daemon's working directory is not searched (a tomllib.py there would win)
    command = [sys.executable, "-P", "-c", _CHILD, str(_ROOT), str(path), source or ""]
    return [*command, "--raw"] if raw is not None else command


def _verdict(returncode: int, out: bytes, err: bytes) -> LoadedConfig[Any]:
    said = err.decode(errors="replace").strip()
    if returncode != 0:
        how = f"signal {-returncode}" if returncode < 0 else f"exit {returncode}"
        raise ValidatorFailed(f"validating the config ended with {how}: {said or 'nothing said'}")
    try:
        answer = _Unpickler(out).load()
    except Exception as failed:  # anything a garbled or foreign answer raises
        raise ValidatorFailed(f"validating the config gave no answer ({failed}): {said}") from None
    if isinstance(answer, ConfigError):
        raise answer
    if not isinstance(answer, LoadedConfig):
        raise ValidatorFailed(f"validating the config gave a {type(answer).__name__}")
    return answer


_CHILD: Final = """
import sys
sys.path.insert(0, sys.argv[1])
from gateway.settings import load_for_daemon
load_for_daemon(sys.argv[2], sys.argv[3], "--raw" in sys.argv[4:])
"""


_ALLOWED: Final = {
    ("gateway.loaded", "LoadedConfig"): LoadedConfig,
    ("gateway.loaded", "ConfigRecord"): ConfigRecord,
    ("gateway.errors", "ConfigError"): ConfigError,
    ("pathlib", "PosixPath"): PosixPath,
    ("pathlib._local", "PosixPath"): PosixPath,  # where Python 3.13 keeps it
}


class _Unpickler(pickle.Unpickler):
    """Only what a loaded config holds: records, ConfigError, paths and enums of ours
    (`Table`, `DataType`); the values `_record` in gateway/settings.py lets through."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))

    def find_class(self, module: str, name: str) -> Any:
        known = _ALLOWED.get((module, name))
        if known is not None:
            return known
        if module.split(".")[0] in ("drivers", "gateway"):
            found = super().find_class(module, name)
            if isinstance(found, type) and issubclass(found, enum.Enum):
                return found
        raise pickle.UnpicklingError(f"a loaded config holds no {module}.{name}")
