"""Field device drivers: Modbus and serial line protocols, and their simulators."""
