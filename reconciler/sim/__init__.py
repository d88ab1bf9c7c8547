"""The software switch: a generic P4Runtime target (gRPC server) with a packet path.

Spec mode (default) follows the P4Runtime specification; `bmv2=True` reproduces the BMv2
simple_switch_grpc departures recorded in fixtures/p4runtime-bmv2 that a controller can trip on.
"""

from reconciler.sim.device import Device, EntryView, TableLookup
from reconciler.sim.server import SoftwareSwitch, TlsConfig, run_forever

__all__ = ["Device", "EntryView", "SoftwareSwitch", "TableLookup", "TlsConfig", "run_forever"]
