"""Tools for demos, tests and hardware-in-loop rigs: a local broker, the demo."""
