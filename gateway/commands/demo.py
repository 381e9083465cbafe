"""`edge-gateway demo`: simulated devices, a private broker, decoded data shown live."""

from __future__ import annotations

import argparse
import asyncio

from gateway.commands.common import positive_seconds, setup_logging

NAME = "demo"
HELP = "run against simulated devices and a local broker"
ORDER = 80


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds", type=positive_seconds, default=20.0, help="how long to run (default 20)"
    )


def run(args: argparse.Namespace) -> int:
    from gateway.devtools.demo import run_demo

    setup_logging("info")
    return asyncio.run(run_demo(args.seconds))
