"""The bottom layer: small types every part shares, and nothing else.

`model` (Reading, Quality, what a value may be: what every driver produces and the
wire carries), `config_types` (durations, sizes, names, hosts and the strict base of
every config model), `processing` (a point's `process` table and the spec it
compiles to), `clock` (the clocks the gateway runs on), `backoff` (jittered
exponential back-off). It lives under drivers/ because drivers are its first users
and everything above them (the gateway, the centre's decoder) may import drivers;
it imports nothing of the project itself (an import-linter contract in
pyproject.toml keeps it so).
"""
