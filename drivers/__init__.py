"""Field device drivers, one folder per protocol (Modbus, serial line instruments), the
plugin registry the gateway reads them through, device simulators, and `drivers.core`:
the small types every part shares (readings, config types, clocks, back-off). Nothing
here imports the gateway's application.
"""
