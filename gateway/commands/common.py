"""What every command shares: exit codes, argument types, logging set-up."""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_OK = 0
EXIT_FAILURE = 1  # a check failed (a payload that does not decode, a point that read bad)
EXIT_CONFIG = 2  # bad input: a config with problems, a missing file, a bad argument
EXIT_ENVIRONMENT = 3  # the machine is not usable as asked (a port held, a read-only dir)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM cut a command short (128 + SIGTERM); it stopped as on Ctrl-C
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE, what a Unix tool killed by a closed pipe reports


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 10**7:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # Libraries log every failed attempt; the gateway logs state changes itself.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
