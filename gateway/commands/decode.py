"""`edge-gateway decode [FILE...]`: data payloads, back to back, into JSON lines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.commands.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK

NAME = "decode"
HELP = "decode data payloads (files or stdin) into JSON lines"
ORDER = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        help="files of payloads back to back (mosquitto_sub -N); none or '-' reads stdin",
    )


def run(args: argparse.Namespace) -> int:
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
