"""`edge-gateway` — the one command technicians type on site.

edge-gateway validate FILE      check a config; print problems or a summary
edge-gateway run -c FILE        run the gateway until SIGTERM / SIGINT
edge-gateway decode [FILE...]   turn data payloads into JSON lines
edge-gateway schema             print the config JSON Schema
edge-gateway demo               simulated devices + local broker, data shown live

Exit codes: 0 ok; 1 a check failed (e.g. a payload that does not decode); 2 bad input
(a config with problems, a missing file, a bad argument); 3 the environment is
not usable (the buffer directory is read-only, a port cannot be opened);
130 interrupted (Ctrl-C); 141 the reader of our output went away (like any Unix
tool on SIGPIPE), quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2  # bad input: a config with problems, a missing file, a bad argument
EXIT_ENVIRONMENT = 3
EXIT_INTERRUPTED = 130
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE, what a Unix tool killed by a closed pipe reports


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 10**7:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every sub-command and its arguments, each with help text."""
    parser = argparse.ArgumentParser(
        prog="edge-gateway",
        description="Field gateway: Modbus and serial sensors to MQTT, with store-and-forward.",
    )
    parser.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "validate",
        help="check a config file: every problem (exit 2), or a summary of its read plan "
        "and warnings (exit 0)",
    )
    p.add_argument("file", type=Path, help="the TOML config file to check")
    p.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"ok", "config_hash", "problems", "warnings", "summary"}',
    )
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("run", help="run the gateway until SIGTERM or SIGINT")
    p.add_argument("-c", "--config", type=Path, required=True, help="the TOML config file")
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="overrides [gateway] log_level of the config",
    )
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
    p.add_argument(
        "--seconds", type=_positive_seconds, default=20.0, help="how long to run (default 20)"
    )
    p.set_defaults(func=_cmd_demo)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _closed_pipe()
    try:
        sys.stdout.flush()  # a reader that left after our last line is a closed pipe too
    except BrokenPipeError:
        return _closed_pipe()
    return result


def _closed_pipe() -> int:
    """The reader of our output went away (`... | head`): stop quietly, like a Unix tool.

    Python would print a second error when it flushes stdout at exit; point stdout at
    /dev/null first (the recipe in the `signal` module's documentation)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_CLOSED_PIPE


def _cmd_validate(args: argparse.Namespace) -> int:
    from gateway.build import PlanSummary, summarize
    from gateway.errors import ConfigError
    from gateway.settings import LoadedConfig, load_config

    loaded: LoadedConfig | None = None
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
    for line in summary.details:
        print(f"  {line}")
    if loaded.warnings:
        print(f"{len(loaded.warnings)} warning(s):")
        for warning in loaded.warnings:
            print(f"  {warning}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.errors import ConfigError, StartupError
    from gateway.settings import load_config

    try:
        loaded = load_config(args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
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


def _cmd_decode(args: argparse.Namespace) -> int:
    from gateway.wire import DecodeError, batch_to_json_lines, iter_batches

    sources = args.files or [Path("-")]
    status = EXIT_OK
    for source in sources:
        try:
            data = sys.stdin.buffer.read() if str(source) == "-" else source.read_bytes()
        except OSError as err:
            print(f"edge-gateway decode: {source}: {err.strerror or err}", file=sys.stderr)
            status = max(status, EXIT_CONFIG)
            continue
        try:
            for batch in iter_batches(data):
                for line in batch_to_json_lines(batch):
                    print(line)
        except DecodeError as err:
            print(f"{source}: {err}", file=sys.stderr)
            status = max(status, EXIT_FAILURE)
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


if __name__ == "__main__":
    sys.exit(main())
