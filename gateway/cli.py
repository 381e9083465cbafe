"""`edge-gateway` — the one command technicians type on site.

Each sub-command is a module of `gateway/commands/` (`edge-gateway --help` lists
them): `validate`, `run`, `decode`, `schema`, `demo`, and the commissioning tools.
This module only dispatches, and turns what every command can meet into its exit
code:

0 ok; 1 a check failed (e.g. a payload that does not decode); 2 bad input (a config
with problems, a missing file, a bad argument); 3 the environment is not usable (the
buffer directory is read-only, a port cannot be opened); 130 interrupted (Ctrl-C);
141 the reader of our output went away (like any Unix tool on SIGPIPE), quietly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys
from collections.abc import Sequence
from types import ModuleType

import gateway.commands
from gateway import __version__
from gateway.commands.common import EXIT_CLOSED_PIPE, EXIT_INTERRUPTED, EXIT_TERMINATED


def commands(only: str | None = None) -> list[ModuleType]:
    """Every command module, in their `ORDER` (a command's module is named after it); with
    `only`, just that one: `edge-gateway run` imports the daemon and nothing else."""
    names = [info.name for info in pkgutil.iter_modules(gateway.commands.__path__)]
    if only is not None and only in names:
        names = [only]
    modules = [importlib.import_module(f"gateway.commands.{name}") for name in names]
    found = [module for module in modules if hasattr(module, "NAME")]  # not the helpers
    return sorted(found, key=lambda module: (module.ORDER, module.NAME))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line: every sub-command and its arguments, each with help text
    (with `only`, that sub-command alone)."""
    parser = argparse.ArgumentParser(
        prog="edge-gateway",
        description="Field gateway: Modbus and serial sensors to MQTT, with store-and-forward.",
    )
    parser.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands(only):
        p = sub.add_parser(command.NAME, help=command.HELP, description=command.HELP)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    named = next((word for word in words if not word.startswith("-")), None)
    terminated = _sigterm_as_ctrl_c(named)
    try:  # importing the command's modules (build_parser, and inside run) takes a while
        args = build_parser(named).parse_args(words)
        result: int = args.func(args)
    except KeyboardInterrupt:
        result = EXIT_INTERRUPTED
    except BrokenPipeError:
        return _closed_pipe()
    except Exception as err:
        if not _interrupted(err):
            raise
        result = EXIT_INTERRUPTED
    if result == EXIT_INTERRUPTED and terminated:
        result = EXIT_TERMINATED
    try:
        sys.stdout.flush()  # a reader that left after our last line is a closed pipe too
    except BrokenPipeError:
        return _closed_pipe()
    return result


def _sigterm_as_ctrl_c(command: str | None) -> list[int]:
    """SIGTERM (`kill`, a rig's `terminate()`, a service manager) stops a command the way
    Ctrl-C does: `listen` and `scan` print what they have, ports close; it exits 143, not
    130. Commands that run until stopped (`tail`, `watch`, `simulate`, `exporter`) take
    SIGTERM as their normal end while they run (exit 0) with handlers of their own. The
    daemon keeps SIGTERM's default until its loop handles it (a stop during start-up is
    a death by SIGTERM, which systemd counts as clean). Returns a list that holds the
    signal once SIGTERM came."""
    came: list[int] = []
    if command == "run":
        return came

    def on_sigterm(signum: int, frame: object) -> None:
        came.append(signum)
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
            raise KeyboardInterrupt  # started with SIGINT ignored (a script's `&` job)
        signal.raise_signal(signal.SIGINT)  # asyncio.run cancels its task on SIGINT alone

    signal.signal(signal.SIGTERM, on_sigterm)
    return came


def _interrupted(err: BaseException) -> bool:
    """A Ctrl-C that a library turned into an error of its own (pydantic, building a
    model while the KeyboardInterrupt went through it, raises SchemaError from it)."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _closed_pipe() -> int:
    """The reader of our output went away (`... | head`): stop quietly, like a Unix tool.

    Python would print a second error when it flushes stdout at exit; point stdout at
    /dev/null first (the recipe in the `signal` module's documentation)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_CLOSED_PIPE


if __name__ == "__main__":
    sys.exit(main())
