"""One module per `edge-gateway` sub-command.

Each module defines `NAME`, `HELP`, `ORDER` (its place in `--help`), `add_arguments
(parser)` (every argument with help text) and `run(args) -> int` (an exit code from
`gateway.commands.common`). `gateway.cli` finds them all: adding a command is adding
a module here. Modules without `NAME` are helpers the commands share (`common`: exit
codes and argument types; `output`: tables, progress, JSON).

Import what a command needs inside `run`, so that `edge-gateway --help` and the
daemon (`run`) never pay for another command's libraries.
"""
