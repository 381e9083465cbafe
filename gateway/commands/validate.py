"""`edge-gateway validate FILE`: every problem of a config (exit 2), or its read plan
and warnings (exit 0).

The plan: a summary line, then per device its line and, under it, what its driver
says it will do (a Modbus device: each request with its table, 0-based addresses,
size and datasheet numbers, the points it serves, and on a serial bus the line time of
a poll), then each serial bus's line time per cycle against its poll interval."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gateway.commands.common import EXIT_CONFIG, EXIT_OK

NAME = "validate"
HELP = "check a config file: every problem (exit 2), or a summary of its read plan and warnings"
ORDER = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="the TOML config file to check")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"ok", "config_hash", "problems", "warnings", "summary"}',
    )


def run(args: argparse.Namespace) -> int:
    from gateway.build import PlanSummary, summarize
    from gateway.errors import ConfigError
    from gateway.loaded import LoadedConfig
    from gateway.settings import GatewayConfig, load_config

    loaded: LoadedConfig[GatewayConfig] | None = None
    summary: PlanSummary | None = None
    problems: list[str] = []
    try:
        loaded = load_config(args.file)
        summary = summarize(loaded.config)
    except ConfigError as err:
        problems = err.problems
    except ValueError as err:  # the planner refuses what the models let through
        problems = [str(err)]
    if args.json:
        print(
            json.dumps(
                {
                    "ok": not problems,
                    "config_hash": loaded.config_hash if loaded is not None else None,
                    "problems": problems,
                    "warnings": list(loaded.warnings) if loaded is not None else [],
                    "summary": summary.as_dict() if summary is not None else None,
                },
                indent=2,
            )
        )
        return EXIT_CONFIG if problems else EXIT_OK
    if problems or loaded is None or summary is None:
        print(ConfigError(str(args.file), problems), file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"{args.file}: OK (config {loaded.config_hash}) — {summary.devices} device(s), "
        f"{summary.points} point(s), {summary.requests_per_cycle} request(s) per cycle "
        f"on {summary.lines} line(s)"
    )
    for plan in summary.plans:
        print(f"  {plan.summary}")
        for line in plan.details:
            print(f"    {line}")
    for bus in summary.buses:
        print(f"  {bus.summary}")
    if loaded.warnings:
        print(f"{len(loaded.warnings)} warning(s):")
        for warning in loaded.warnings:
            print(f"  {warning}")
    return EXIT_OK
