"""`edge-gateway` — the one command technicians type on site.

edge-gateway validate FILE      check a config; print problems or a summary
edge-gateway run -c FILE        run the gateway until SIGTERM / SIGINT
edge-gateway decode [FILE...]   turn data payloads into JSON lines
edge-gateway schema             print the config JSON Schema
edge-gateway demo               simulated devices + local broker, data shown live
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-gateway",
        description="Field gateway: Modbus and serial sensors to MQTT, with store-and-forward.",
    )
    parser.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a config file and summarise its read plan")
    p.add_argument("file", type=Path)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("run", help="run the gateway until SIGTERM or SIGINT")
    p.add_argument("-c", "--config", type=Path, required=True)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("decode", help="decode data payloads (files or stdin) into JSON lines")
    p.add_argument(
        "files",
        nargs="*",
        type=Path,
        help="files of payloads back to back (mosquitto_sub -N); none or '-' reads stdin",
    )
    p.set_defaults(func=_cmd_decode)

    p = sub.add_parser("schema", help="print the JSON Schema of the config file")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("demo", help="run against simulated devices and a local broker")
    p.add_argument("--seconds", type=float, default=20.0, help="how long to run (default 20)")
    p.set_defaults(func=_cmd_demo)

    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def _cmd_validate(args: argparse.Namespace) -> int:
    from gateway.build import summarize
    from gateway.errors import ConfigError
    from gateway.settings import load_config

    try:
        loaded = load_config(args.file)
        summary = summarize(loaded.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as err:  # the planner refuses what the models let through
        print(f"{args.file}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"{args.file}: OK (config {loaded.config_hash}) — {summary.devices} device(s), "
        f"{summary.points} point(s), {summary.requests_per_cycle} request(s) per cycle "
        f"on {summary.lines} line(s)"
    )
    for line in summary.details:
        print(f"  {line}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.errors import ConfigError
    from gateway.settings import load_config

    try:
        loaded = load_config(args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(args.log_level or loaded.config.gateway.log_level)
    from gateway.app import Gateway

    async def _main() -> None:
        gateway = Gateway(loaded)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, gateway.stop_requested.set)
        await gateway.run()

    try:
        asyncio.run(_main())
    except Exception as err:  # a start-up failure: say what, not a traceback
        logging.getLogger("gateway").critical("gateway stopped: %s", err, exc_info=err)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_decode(args: argparse.Namespace) -> int:
    from gateway.wire import DecodeError, batch_to_json_lines, iter_batches

    sources = args.files or [Path("-")]
    status = EXIT_OK
    for source in sources:
        data = sys.stdin.buffer.read() if str(source) == "-" else source.read_bytes()
        try:
            for batch in iter_batches(data):
                for line in batch_to_json_lines(batch):
                    print(line)
        except DecodeError as err:
            print(f"{source}: {err}", file=sys.stderr)
            status = EXIT_FAILURE
    return status


def _cmd_schema(args: argparse.Namespace) -> int:
    from gateway.settings import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.devtools.demo import run_demo

    setup_logging("info")
    return asyncio.run(run_demo(args.seconds))


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # Libraries log every failed attempt; the gateway logs state changes itself.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("mqtt").setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
