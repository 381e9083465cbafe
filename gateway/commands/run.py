"""`edge-gateway run -c FILE`: the daemon, until SIGTERM or SIGINT; SIGHUP reloads."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from gateway.commands.common import (
    EXIT_CONFIG,
    EXIT_ENVIRONMENT,
    EXIT_FAILURE,
    EXIT_OK,
    setup_logging,
)

NAME = "run"
HELP = "run the gateway until SIGTERM or SIGINT (SIGHUP reloads the config)"
ORDER = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, required=True, help="the TOML config file")
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="overrides [gateway] log_level of the config",
    )


def run(args: argparse.Namespace) -> int:
    from gateway.errors import ConfigError, StartupError
    from gateway.loaded import ValidatorFailed, load_apart

    try:  # in a child process: the daemon never holds pydantic (gateway/loaded.py)
        loaded = load_apart(args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
    except ValidatorFailed as err:  # not the config's fault: systemd tries again
        print(f"edge-gateway run: {err}", file=sys.stderr)
        return EXIT_FAILURE
    os.umask(0o077)  # the buffer holds the city's data: files we create are ours alone
    setup_logging(args.log_level or loaded.config.gateway.log_level)
    from gateway.app import Gateway

    async def _main() -> None:
        gateway = Gateway(loaded)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, gateway.request_stop)
        loop.add_signal_handler(signal.SIGHUP, gateway.request_reload)  # systemctl reload
        await gateway.run()

    log = logging.getLogger("gateway")
    try:
        asyncio.run(_main())
    except StartupError as err:  # the environment, not a bug: one sentence
        log.critical("cannot start: %s", err)
        return EXIT_ENVIRONMENT
    except Exception as err:  # a bug: the traceback is for the report
        log.critical("gateway stopped by an unexpected error: %s", err, exc_info=err)
        return EXIT_FAILURE
    return EXIT_OK
