"""The validated intent: LoadBalancerConfig as frozen dataclasses.

Built only by the loader after schema and semantic checks passed, so every value here is
already valid (durations in seconds, IPs parsed, defaults filled in).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

API_VERSION = "networking.p4kube.io/v1alpha1"
KIND = "LoadBalancerConfig"

BUILTIN_ALGORITHMS = ("replica-weighted", "least-connections", "round-robin")
Role = Literal["primary", "standby"]
BackendMode = Literal["nodePort", "podIP"]
SwitchType = Literal["bmv2", "tofino"]


class ConfigChoiceError(LookupError):
    """IntentSet.pick_config: no config of that name, or several and none named."""


@dataclass(frozen=True)
class SourceRef:
    """Where an object was read from, for messages and reports."""

    file: str
    line: int = 1
    column: int = 1


@dataclass(frozen=True)
class HealthCheck:
    enabled: bool = True
    interval_s: float = 5.0
    timeout_s: float = 2.0
    failure_threshold: int = 3
    success_threshold: int = 1
    vip_probe: bool = False  # probe vip:port too, where the reconciler's path crosses the switches
    read_back_interval_s: float = 60.0  # full read-back of each switch; 0: only on events


@dataclass(frozen=True)
class TLSConfig:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class SwitchSpec:
    name: str
    role: Role
    address: str  # host:port of the P4Runtime server
    device_id: int = 1


@dataclass(frozen=True)
class Route:
    """An ipv4_lpm entry: traffic for prefix leaves on port, rewritten to next_hop_mac."""

    prefix: ipaddress.IPv4Network
    port: int
    next_hop_mac: str = "00:00:00:00:00:00"


@dataclass(frozen=True)
class SwitchConfig:
    p4_program: str = "load_balancer.p4"
    switch_type: SwitchType = "bmv2"
    p4info: str | None = None  # path, relative to the intent file; default: the project's P4Info
    device_config: str | None = None  # BMv2 JSON or Tofino blob, relative to the intent file
    # managed: the reconciler pushes (p4info, device_config); external: another tool installs the
    # pipeline and the reconciler only checks that the switch's P4Info is ours (never pushes).
    pipeline: Literal["managed", "external"] = "managed"
    switches: tuple[SwitchSpec, ...] = ()
    routes: tuple[Route, ...] = ()
    tls: TLSConfig | None = None
    batch_size: int = 500
    standby_unreachable: Literal["apply-primary", "abort"] = "apply-primary"


@dataclass(frozen=True)
class VipPool:
    name: str
    # Ranges of usable addresses, inclusive, in allocation order.
    ranges: tuple[tuple[ipaddress.IPv4Address, ipaddress.IPv4Address], ...]
    auto_assign: bool = True
    # Namespaces whose Services may get (or request) an address of this pool; empty: all.
    namespaces: tuple[str, ...] = ()

    def contains(self, ip: ipaddress.IPv4Address) -> bool:
        return any(lo <= ip <= hi for lo, hi in self.ranges)

    def serves(self, namespace: str) -> bool:
        return not self.namespaces or namespace in self.namespaces


@dataclass(frozen=True)
class ServiceSelector:
    """Which opted-in Services this config serves; empty means all of them."""

    namespaces: tuple[str, ...] = ()
    match_labels: tuple[tuple[str, str], ...] = ()
    load_balancer_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Safety:
    """DESIGN.md 6.1: how much a single transaction may take off the switches."""

    max_removal_percent: int = 50


@dataclass(frozen=True)
class TrafficPolicy:
    """What the reconciler asks of the Services it serves (issue 15 item 6)."""

    # nodePort mode: refuse Services whose externalTrafficPolicy is not Local (else a warning).
    require_local: bool = False


@dataclass(frozen=True)
class AuditConfig:
    repository: str | None = None
    branch: str = "main"


@dataclass(frozen=True)
class LoadBalancerConfig:
    namespace: str
    name: str
    algorithm: str = "replica-weighted"
    update_interval_s: float = 1.0
    # A moved bucket drains for this long (DESIGN.md 5.1); 0: moves at once (no drains).
    connection_drain_timeout_s: float = 60.0
    buckets_per_service: int = 64
    backend_mode: BackendMode = "nodePort"
    # podIP mode: addresses inside these are backends even from slices the EndpointSlice
    # controller did not write (empty: only the controller's slices with Pod targetRefs).
    pod_cidrs: tuple[ipaddress.IPv4Network, ...] = ()
    health_check: HealthCheck = field(default_factory=HealthCheck)
    switch_config: SwitchConfig = field(default_factory=SwitchConfig)
    vip_pools: tuple[VipPool, ...] = ()
    service_selector: ServiceSelector = field(default_factory=ServiceSelector)
    safety: Safety = field(default_factory=Safety)
    traffic_policy: TrafficPolicy = field(default_factory=TrafficPolicy)
    audit: AuditConfig = field(default_factory=AuditConfig)
    generation: int = 0
    source: SourceRef | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class IntentSet:
    """Everything loaded from one intent source (a directory or the cluster's CRs)."""

    configs: tuple[LoadBalancerConfig, ...]
    commit: str | None = None  # the Git HEAD SHA when the source is a repository
    dirty: bool = False  # uncommitted changes in that repository
    root: str = ""

    def pick_config(self, name: str | None) -> LoadBalancerConfig:
        """The LoadBalancerConfig `name` (or the only one), as a ConfigChoiceError naming the
        choices when it cannot be chosen."""
        try:
            return self.config(name)
        except LookupError as e:
            raise ConfigChoiceError(str(e).strip("'\"")) from e

    def config(self, key: str | None = None) -> LoadBalancerConfig:
        """The config named `key` (namespace/name or name), or the only one when key is None."""
        if key is None:
            if len(self.configs) != 1:
                names = ", ".join(c.key for c in self.configs) or "none"
                raise LookupError(f"{len(self.configs)} LoadBalancerConfigs found ({names}); choose one with --config")
            return self.configs[0]
        for c in self.configs:
            if key in (c.key, c.name):
                return c
        names = ", ".join(c.key for c in self.configs) or "none"
        raise LookupError(f"no LoadBalancerConfig {key!r}; found: {names}")
