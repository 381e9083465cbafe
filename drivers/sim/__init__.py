"""Device simulators for demos, tests and hardware-in-loop rigs."""
