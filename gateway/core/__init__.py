"""The bottom layer: small types every part shares, and nothing else.

`model` (Reading, Quality, what a value may be), `config_types` (durations, sizes,
names, hosts and the strict base of every config model), `processing` (a point's
`process` table and the spec it compiles to), `clock` (the clocks the gateway runs
on), `backoff` (jittered exponential back-off). Drivers, the buffer and
the application import these; these import nothing of the project (an import-linter
contract in pyproject.toml keeps it so).
"""
