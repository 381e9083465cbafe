"""`edge-gateway schema`: the config file's JSON Schema, for editors."""

from __future__ import annotations

import argparse
import json

from gateway.commands.common import EXIT_OK

NAME = "schema"
HELP = "print the JSON Schema of the config file"
ORDER = 70


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no arguments


def run(args: argparse.Namespace) -> int:
    from gateway.settings import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return EXIT_OK
