"""Field device drivers, one folder per protocol (Modbus, serial line instruments), the
plugin registry the gateway reads them through, and device simulators. Nothing here
imports the gateway's application: only its bottom layer, `drivers.core`."""
