"""`p4kube demo`: the reconciler end to end on one machine, narrated.

What runs is the product's own loop (reconciler.controller: render -> audit -> apply -> probe ->
rollback and fallback -> recovery) against stand-ins that behave like the real thing:

- two software P4Runtime switches (reconciler.sim) on 127.0.0.1, ephemeral ports;
- a Git intent repository made from intent-examples/multi-service/lbconfig.yaml, followed by
  watchdog (reconciler.intent.watch.DirectoryIntent), and changed by a commit (intent_repo);
- the cluster recorded beside it (a real kube-apiserver's Services, EndpointSlices and Nodes),
  its nodes moved onto loopback addresses 127.0.0.11.., with a TCP listener on every node IP and
  nodePort standing in for the node (nodes; the health probes connect to them), churned in memory
  (reconciler.cluster.scripted, which also takes the kube-proxy fallback annotations);
- an audit repository, kept afterwards for `p4kube audit log`.

Each step (scenario) says what happens and why (narrator), then checks that it happened
(checks: the switches are read and compared with the snapshot, packets are sent through the
primary's pipeline). The loop is wired in one place (wiring). The demo exits 0 only when every
step did what it said; every wait has a timeout; everything it started is stopped, whatever
happens.
"""

from __future__ import annotations

from .checks import SwitchCheck
from .errors import DemoFailed
from .run import run_demo
from .scenario import DemoReport

__all__ = ["DemoFailed", "DemoReport", "SwitchCheck", "run_demo"]
