"""The built-in kinds the reconciler touches, with the registry rules the fixtures show.

Service (02, 06, 07, 08), EndpointSlice (03, 04), Node (03), Lease (09), core/v1 and
events.k8s.io/v1 Event (11), Namespace (minimal).
"""

from __future__ import annotations

import copy
import ipaddress
import random
from collections.abc import Mapping
from typing import Any, ClassVar

from . import schema as sc
from . import validation as v
from .errors import Cause
from .resources import Behavior, ResourceType, WriteContext
from .selectors import META_FIELDS, FieldGetter, dig

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")
NODE_PORT_RANGE = (30000, 32767)
PROTOCOLS = ("SCTP", "TCP", "UDP")
_rng = random.Random()


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.setdefault("metadata", {})


# ---- Service --------------------------------------------------------------------------------


def _needs_node_ports(spec: dict[str, Any]) -> bool:
    t = spec.get("type")
    return t == "NodePort" or (t == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts", True) is not False)


def _needs_health_port(spec: dict[str, Any]) -> bool:
    return spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


class ServiceBehavior(Behavior):
    zero: ClassVar[Mapping[str, Any]] = {"metadata": {}, "spec": {}, "status": {"loadBalancer": {}}}
    delete_returns_object = True
    allow_create_on_update = True
    name_rule = staticmethod(v.dns_label_errors)  # 1.36 relaxed Service names to RFC 1123 labels (08/15)
    field_selectors: ClassVar[Mapping[str, FieldGetter]] = {
        **META_FIELDS,
        "spec.clusterIP": dig("spec", "clusterIP"),
        "spec.type": dig("spec", "type"),
    }

    def shape(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("spec", {})
        obj.setdefault("status", {}).setdefault("loadBalancer", {})
        return obj

    def default(self, obj: dict[str, Any]) -> None:
        spec = obj.setdefault("spec", {})
        t = spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec.get("sessionAffinity") == "ClientIP":
            spec.setdefault("sessionAffinityConfig", {}).setdefault("clientIP", {}).setdefault("timeoutSeconds", 10800)
        for port in spec.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                if "targetPort" not in port and "port" in port:
                    port["targetPort"] = port["port"]
        if t in ("NodePort", "LoadBalancer"):
            spec.setdefault("externalTrafficPolicy", "Cluster")
        if t == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)
        if t != "ExternalName":
            spec.setdefault("internalTrafficPolicy", "Cluster")

    # -- allocation --
    def _used(self, ctx: WriteContext, skip: tuple[str, str] | None) -> tuple[set[str], set[int]]:
        ips: set[str] = set()
        ports: set[int] = set()
        for svc in ctx.store.items("/services"):
            m = svc.get("metadata", {})
            if skip == (m.get("namespace"), m.get("name")):
                continue
            spec = svc.get("spec", {})
            ips.update(ip for ip in spec.get("clusterIPs") or [spec.get("clusterIP")] if ip and ip != "None")
            ports.update(p["nodePort"] for p in spec.get("ports") or [] if isinstance(p.get("nodePort"), int))
            if isinstance(spec.get("healthCheckNodePort"), int):
                ports.add(spec["healthCheckNodePort"])
        return ips, ports

    def _allocate(self, obj: dict[str, Any], old: dict[str, Any] | None, ctx: WriteContext) -> list[Cause]:
        spec = obj.setdefault("spec", {})
        meta = obj.get("metadata", {})
        used_ips, used_ports = self._used(ctx, (meta.get("namespace"), meta.get("name")))
        causes: list[Cause] = []
        if spec.get("type") != "ExternalName":
            ip = spec.get("clusterIP") or (spec.get("clusterIPs") or [None])[0]
            if not ip:
                if ctx.dry_run:
                    ip = str(SERVICE_CIDR.network_address)
                else:
                    while True:
                        ip = str(SERVICE_CIDR.network_address + _rng.randrange(2, SERVICE_CIDR.num_addresses - 1))
                        if ip not in used_ips:
                            break
            elif ip != "None" and (old is None or ip not in (old.get("spec", {}).get("clusterIPs") or [])):
                if not v.is_ip(ip) or ipaddress.ip_address(ip) not in SERVICE_CIDR:
                    causes.append(
                        v.invalid(
                            "spec.clusterIPs",
                            [ip],
                            f"failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. "
                            f"The range of valid IPs is {SERVICE_CIDR}",
                        )
                    )
                elif ip in used_ips:
                    causes.append(
                        v.invalid(
                            "spec.clusterIPs", [ip], f"failed to allocate IP {ip}: provided IP is already allocated"
                        )
                    )
            spec["clusterIP"] = ip
            spec.setdefault("clusterIPs", [ip])
            if ip != "None" or spec.get("selector"):
                spec.setdefault("ipFamilies", ["IPv4"])
                spec.setdefault("ipFamilyPolicy", "SingleStack")
        old_ports = set()
        if old is not None:
            old_ports = {p.get("nodePort") for p in old.get("spec", {}).get("ports") or []}
        if _needs_node_ports(spec):
            for i, port in enumerate(spec.get("ports") or []):
                np = port.get("nodePort")
                if np is None:
                    port["nodePort"] = self._free_port(used_ports)
                elif np not in old_ports:
                    causes += self._check_port(np, f"spec.ports[{i}].nodePort", used_ports)
                used_ports.add(port["nodePort"])
        if _needs_health_port(spec):
            hc = spec.get("healthCheckNodePort")
            if hc is None:
                spec["healthCheckNodePort"] = self._free_port(used_ports)
            elif old is None or hc != old.get("spec", {}).get("healthCheckNodePort"):
                causes += self._check_port(hc, "spec.healthCheckNodePort", used_ports)
        return causes

    @staticmethod
    def _free_port(used: set[int]) -> int:
        while True:
            port = _rng.randint(*NODE_PORT_RANGE)
            if port not in used:
                return port

    @staticmethod
    def _check_port(port: Any, field: str, used: set[int]) -> list[Cause]:
        lo, hi = NODE_PORT_RANGE
        if not isinstance(port, int) or not lo <= port <= hi:
            return [
                v.invalid(
                    field, port, f"provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                )
            ]
        if port in used:
            return [v.invalid(field, port, "provided port is already allocated")]
        return []

    def prepare_create(self, obj: dict[str, Any], ctx: WriteContext) -> list[Cause]:
        obj["status"] = {"loadBalancer": {}}
        return self._allocate(obj, None, ctx)

    def prepare_update(self, new: dict[str, Any], old: dict[str, Any], ctx: WriteContext) -> list[Cause]:
        spec, old_spec = new.setdefault("spec", {}), old.get("spec", {})
        same_family = (spec.get("type") == "ExternalName") == (old_spec.get("type") == "ExternalName")
        if same_family:  # PUTs may omit what the server allocated (patchAllocatedValues)
            for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                if key not in spec and key in old_spec:
                    spec[key] = copy.deepcopy(old_spec[key])
        if spec.get("type") != old_spec.get("type"):
            self._drop_type_dependent(spec, old_spec)
        if _needs_node_ports(spec):
            old_np = {(p.get("port"), p.get("protocol")): p.get("nodePort") for p in old_spec.get("ports") or []}
            for port in spec.get("ports") or []:
                if "nodePort" not in port and old_np.get((port.get("port"), port.get("protocol"))):
                    port["nodePort"] = old_np[(port.get("port"), port.get("protocol"))]
        if _needs_health_port(spec) and "healthCheckNodePort" not in spec and old_spec.get("healthCheckNodePort"):
            spec["healthCheckNodePort"] = old_spec["healthCheckNodePort"]
        return self._allocate(new, old, ctx)

    @staticmethod
    def _drop_type_dependent(spec: dict[str, Any], old_spec: dict[str, Any]) -> None:
        """dropTypeDependentFields: clear what the new type no longer uses if the user left it as it was."""
        if not _needs_node_ports(spec):
            old_np = {(p.get("port"), p.get("protocol")): p.get("nodePort") for p in old_spec.get("ports") or []}
            for port in spec.get("ports") or []:
                if port.get("nodePort") is not None and port.get("nodePort") == old_np.get(
                    (port.get("port"), port.get("protocol"))
                ):
                    del port["nodePort"]
        if not _needs_health_port(spec) and spec.get("healthCheckNodePort") == old_spec.get("healthCheckNodePort"):
            spec.pop("healthCheckNodePort", None)
        if spec.get("type") != "LoadBalancer":
            for key in ("allocateLoadBalancerNodePorts", "loadBalancerClass"):
                if spec.get(key) == old_spec.get(key):
                    spec.pop(key, None)
        if spec.get("type") not in ("NodePort", "LoadBalancer") and spec.get("externalTrafficPolicy") == old_spec.get(
            "externalTrafficPolicy"
        ):
            spec.pop("externalTrafficPolicy", None)
        if spec.get("type") == "ExternalName":
            for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                if spec.get(key) == old_spec.get(key):
                    spec.pop(key, None)

    def validate(self, obj: dict[str, Any], old: dict[str, Any] | None, ctx: WriteContext) -> list[Cause]:
        causes = super().validate(obj, old, ctx)
        spec = obj.get("spec") or {}
        t = spec.get("type")
        if t not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
            causes.append(v.not_supported("spec.type", t, ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]))
        ports = spec.get("ports") or []
        if not ports and t != "ExternalName" and spec.get("clusterIP") != "None":
            causes.append(v.required("spec.ports"))
        names: set[str] = set()
        keys: set[tuple[Any, Any]] = set()
        for i, port in enumerate(ports):
            path = f"spec.ports[{i}]"
            name = port.get("name")
            if len(ports) > 1 and not name:
                causes.append(v.required(f"{path}.name"))
            elif name:
                causes += [v.invalid(f"{path}.name", name, m) for m in v.dns_label_errors(name)]
                if name in names:
                    causes.append(v.duplicate(f"{path}.name", name))
                names.add(name)
            p = port.get("port")
            if not isinstance(p, int) or not 1 <= p <= 65535:
                causes.append(v.invalid(f"{path}.port", p, "must be between 1 and 65535, inclusive"))
            proto = port.get("protocol")
            if proto not in PROTOCOLS:
                causes.append(v.not_supported(f"{path}.protocol", proto, PROTOCOLS))
            if (p, proto) in keys:
                causes.append(v.duplicate(path, {"port": p, "protocol": proto}))
            keys.add((p, proto))
            tp = port.get("targetPort")
            if isinstance(tp, int) and not 1 <= tp <= 65535:
                causes.append(v.invalid(f"{path}.targetPort", tp, "must be between 1 and 65535, inclusive"))
            if port.get("nodePort") is not None and t in ("ClusterIP", "ExternalName"):
                causes.append(v.forbidden(f"{path}.nodePort", f"may not be used when `type` is '{t}'"))
        if spec.get("sessionAffinity") not in ("None", "ClientIP"):
            causes.append(v.not_supported("spec.sessionAffinity", spec.get("sessionAffinity"), ["ClientIP", "None"]))
        etp = spec.get("externalTrafficPolicy")
        if etp is not None:
            if t not in ("NodePort", "LoadBalancer"):
                causes.append(
                    v.invalid(
                        "spec.externalTrafficPolicy", etp, "may only be set when `type` is 'NodePort' or 'LoadBalancer'"
                    )
                )
            elif etp not in ("Cluster", "Local"):
                causes.append(v.not_supported("spec.externalTrafficPolicy", etp, ["Cluster", "Local"]))
        itp = spec.get("internalTrafficPolicy")
        if itp is not None and itp not in ("Cluster", "Local"):
            causes.append(v.not_supported("spec.internalTrafficPolicy", itp, ["Cluster", "Local"]))
        if isinstance(spec.get("selector"), dict):
            causes += v.validate_labels(spec["selector"], "spec.selector")
        if old is not None:
            old_ip = (old.get("spec") or {}).get("clusterIP")
            if old_ip and spec.get("clusterIP") and spec.get("clusterIP") != old_ip and t != "ExternalName":
                causes.append(v.immutable("spec.clusterIP", spec.get("clusterIP")))
        causes += self._validate_status(obj.get("status") or {})
        return causes

    @staticmethod
    def _validate_status(status: dict[str, Any]) -> list[Cause]:
        causes: list[Cause] = []
        ingress = (status.get("loadBalancer") or {}).get("ingress") or []
        for i, ing in enumerate(ingress):
            path = f"status.loadBalancer.ingress[{i}]"
            ip = ing.get("ip")
            if ip and not v.is_ip(ip):
                causes.append(v.invalid(f"{path}.ip", ip, v.IP_MSG))
            host = ing.get("hostname")
            if host:
                causes += [v.invalid(f"{path}.hostname", host, m) for m in v.dns_subdomain_errors(host)]
                if v.is_ip(host):
                    causes.append(v.invalid(f"{path}.hostname", host, "must be a DNS name, not an IP address"))
            mode = ing.get("ipMode")
            if mode is not None:
                if not ip:
                    causes.append(v.forbidden(f"{path}.ipMode", "may not be specified when `ip` is not set"))
                elif mode not in ("VIP", "Proxy"):
                    causes.append(v.not_supported(f"{path}.ipMode", mode, ["Proxy", "VIP"]))
        return causes


# ---- EndpointSlice --------------------------------------------------------------------------


class EndpointSliceBehavior(Behavior):
    zero: ClassVar[Mapping[str, Any]] = {"metadata": {}, "addressType": "", "endpoints": None, "ports": None}
    generation = "always"
    allow_create_on_update = True
    field_selectors: ClassVar[Mapping[str, FieldGetter]] = {**META_FIELDS, "addressType": dig("addressType")}

    def shape(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("addressType", "")
        obj.setdefault("endpoints", None)
        obj.setdefault("ports", None)
        return obj

    def default(self, obj: dict[str, Any]) -> None:
        for port in obj.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("name", "")
                port.setdefault("protocol", "TCP")
        for ep in obj.get("endpoints") or []:
            if isinstance(ep, dict):
                ep.setdefault("conditions", {})

    def validate(self, obj: dict[str, Any], old: dict[str, Any] | None, ctx: WriteContext) -> list[Cause]:
        causes = super().validate(obj, old, ctx)
        at = obj.get("addressType")
        if not at:
            causes.append(v.required("addressType"))
        elif at not in ("IPv4", "IPv6", "FQDN"):
            causes.append(v.not_supported("addressType", at, ["FQDN", "IPv4", "IPv6"]))
        elif old is not None and old.get("addressType") != at:
            causes.append(v.immutable("addressType", at))
        endpoints = obj.get("endpoints") or []
        if len(endpoints) > 1000:
            causes.append(
                Cause("FieldValueTooMany", f"Too many: {len(endpoints)}: must have at most 1000 items", "endpoints")
            )
        for i, ep in enumerate(endpoints):
            addrs = ep.get("addresses") or []
            if not addrs:
                causes.append(v.required(f"endpoints[{i}].addresses", "must contain at least 1 address"))
            for j, addr in enumerate(addrs):
                field = f"endpoints[{i}].addresses[{j}]"
                if at == "IPv4" and not (v.is_ip(addr) and ipaddress.ip_address(addr).version == 4):
                    causes.append(v.invalid(field, addr, "must be a valid IPv4 address"))
                elif at == "IPv6" and not (v.is_ip(addr) and ipaddress.ip_address(addr).version == 6):
                    causes.append(v.invalid(field, addr, "must be a valid IPv6 address"))
            if ep.get("nodeName"):
                causes += [
                    v.invalid(f"endpoints[{i}].nodeName", ep["nodeName"], m)
                    for m in v.dns_subdomain_errors(ep["nodeName"])
                ]
        for i, port in enumerate(obj.get("ports") or []):
            p = port.get("port")
            if p is not None and (not isinstance(p, int) or not 1 <= p <= 65535):
                causes.append(v.invalid(f"ports[{i}].port", p, "must be between 1 and 65535, inclusive"))
            if port.get("protocol") not in PROTOCOLS:
                causes.append(v.not_supported(f"ports[{i}].protocol", port.get("protocol"), PROTOCOLS))
            if port.get("name"):
                causes += [v.invalid(f"ports[{i}].name", port["name"], m) for m in v.dns_label_errors(port["name"])]
        return causes


# ---- Node -----------------------------------------------------------------------------------

_NODE_INFO = {
    k: ""
    for k in (
        "machineID",
        "systemUUID",
        "bootID",
        "kernelVersion",
        "osImage",
        "containerRuntimeVersion",
        "kubeletVersion",
        "kubeProxyVersion",
        "operatingSystem",
        "architecture",
    )
}


class NodeBehavior(Behavior):
    zero: ClassVar[Mapping[str, Any]] = {
        "metadata": {},
        "spec": {},
        "status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": 0}}, "nodeInfo": dict(_NODE_INFO)},
    }
    keeps_status_on_create = True
    field_selectors: ClassVar[Mapping[str, FieldGetter]] = {
        **META_FIELDS,
        "spec.unschedulable": lambda o: bool((o.get("spec") or {}).get("unschedulable")),
    }

    def shape(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("spec", {})
        status = obj.setdefault("status", {})
        status.setdefault("daemonEndpoints", {}).setdefault("kubeletEndpoint", {}).setdefault("Port", 0)
        info = status.setdefault("nodeInfo", {})
        for k, val in _NODE_INFO.items():
            info.setdefault(k, val)
        return obj

    def prepare_create(self, obj: dict[str, Any], ctx: WriteContext) -> list[Cause]:
        # Admission (TaintNodesByCondition) marks every new Node not-ready (fixture 03/4).
        taints = obj.setdefault("spec", {}).setdefault("taints", [])
        if not any(t.get("key") == "node.kubernetes.io/not-ready" for t in taints):
            taints.append({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"})
        return []

    def validate(self, obj: dict[str, Any], old: dict[str, Any] | None, ctx: WriteContext) -> list[Cause]:
        causes = super().validate(obj, old, ctx)
        for i, taint in enumerate((obj.get("spec") or {}).get("taints") or []):
            if taint.get("effect") not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
                causes.append(
                    v.not_supported(
                        f"spec.taints[{i}].effect", taint.get("effect"), ["NoExecute", "NoSchedule", "PreferNoSchedule"]
                    )
                )
            if not taint.get("key"):
                causes.append(v.required(f"spec.taints[{i}].key"))
        return causes


# ---- Lease ----------------------------------------------------------------------------------


class LeaseBehavior(Behavior):
    zero: ClassVar[Mapping[str, Any]] = {"metadata": {}, "spec": {}}
    allow_create_on_update = True

    def shape(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("spec", {})
        return obj

    def validate(self, obj: dict[str, Any], old: dict[str, Any] | None, ctx: WriteContext) -> list[Cause]:
        causes = super().validate(obj, old, ctx)
        spec = obj.get("spec") or {}
        if (
            "leaseDurationSeconds" in spec
            and spec["leaseDurationSeconds"] is not None
            and spec["leaseDurationSeconds"] <= 0
        ):
            causes.append(
                v.invalid("spec.leaseDurationSeconds", spec["leaseDurationSeconds"], "must be greater than 0")
            )
        if "leaseTransitions" in spec and spec["leaseTransitions"] is not None and spec["leaseTransitions"] < 0:
            causes.append(
                v.invalid("spec.leaseTransitions", spec["leaseTransitions"], "must be greater than or equal to 0")
            )
        if spec.get("strategy") not in (None, "", "OldestEmulationVersion"):
            causes.append(v.not_supported("spec.strategy", spec["strategy"], ["OldestEmulationVersion"]))
        return causes


# ---- Events ---------------------------------------------------------------------------------

_V1_TO_CORE = {
    "regarding": "involvedObject",
    "note": "message",
    "reportingController": "reportingComponent",
    "deprecatedSource": "source",
    "deprecatedFirstTimestamp": "firstTimestamp",
    "deprecatedLastTimestamp": "lastTimestamp",
    "deprecatedCount": "count",
}
_CORE_TO_V1 = {b: a for a, b in _V1_TO_CORE.items()}
_CORE_ORDER = (
    "involvedObject",
    "reason",
    "message",
    "source",
    "firstTimestamp",
    "lastTimestamp",
    "count",
    "type",
    "eventTime",
    "series",
    "action",
    "related",
    "reportingComponent",
    "reportingInstance",
)
_V1_ORDER = (
    "eventTime",
    "series",
    "reportingController",
    "reportingInstance",
    "action",
    "reason",
    "regarding",
    "related",
    "note",
    "type",
    "deprecatedSource",
    "deprecatedFirstTimestamp",
    "deprecatedLastTimestamp",
    "deprecatedCount",
)
_CORE_ALWAYS = {
    "involvedObject": {},
    "source": {},
    "firstTimestamp": None,
    "lastTimestamp": None,
    "eventTime": None,
    "reportingComponent": "",
    "reportingInstance": "",
}
_V1_ALWAYS = {
    "eventTime": None,
    "regarding": {},
    "deprecatedSource": {},
    "deprecatedFirstTimestamp": None,
    "deprecatedLastTimestamp": None,
}


def _ordered(obj: dict[str, Any], order: tuple[str, ...], always: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: obj[k] for k in ("kind", "apiVersion", "metadata") if k in obj}
    for k in order:
        if k in obj and obj[k] is not None and not (k in ("count", "deprecatedCount") and obj[k] == 0):
            if obj[k] == "" and k not in always:
                continue
            out[k] = obj[k]
        elif k in always:
            out[k] = copy.deepcopy(always[k])
    return out


def event_core_shape(obj: dict[str, Any]) -> dict[str, Any]:
    return _ordered(obj, _CORE_ORDER, _CORE_ALWAYS)


def event_v1_shape(obj: dict[str, Any]) -> dict[str, Any]:
    return _ordered(obj, _V1_ORDER, _V1_ALWAYS)


def event_v1_to_core(obj: dict[str, Any]) -> dict[str, Any]:
    out = {_V1_TO_CORE.get(k, k): copy.deepcopy(val) for k, val in obj.items()}
    out["apiVersion"], out["kind"] = "v1", "Event"
    return event_core_shape(out)


def event_core_to_v1(obj: dict[str, Any]) -> dict[str, Any]:
    out = {_CORE_TO_V1.get(k, k): copy.deepcopy(val) for k, val in obj.items()}
    out["apiVersion"], out["kind"] = "events.k8s.io/v1", "Event"
    return event_v1_shape(out)


class EventBehavior(Behavior):
    """core/v1 Event (storage form). Validation follows ValidateEventCreate/Update."""

    zero: ClassVar[Mapping[str, Any]] = {"metadata": {}, **_CORE_ALWAYS}
    allow_create_on_update = True
    api = "core"
    field_selectors: ClassVar[Mapping[str, FieldGetter]] = {
        **META_FIELDS,
        **{
            f"involvedObject.{k}": dig("involvedObject", k)
            for k in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
        },
        "reason": dig("reason"),
        "reportingComponent": dig("reportingComponent"),
        "source": dig("source", "component"),
        "type": dig("type"),
    }

    def shape(self, obj: dict[str, Any]) -> dict[str, Any]:
        return event_core_shape(obj)

    def validate(self, obj: dict[str, Any], old: dict[str, Any] | None, ctx: WriteContext) -> list[Cause]:
        core = obj if self.api == "core" else event_v1_to_core(obj)
        causes = self._legacy(core)
        if self.api == "core":
            return causes
        if old is None:
            causes += v.validate_meta(core.get("metadata") or {}, v.dns_subdomain_errors)
            causes += self._series(core)
            if not core.get("eventTime"):
                causes.append(v.required("eventTime"))
            if core.get("type") not in ("Normal", "Warning"):
                causes.append(v.invalid("type", "", f"has invalid value: {core.get('type') or ''}"))
            for fld, label in (("firstTimestamp", "firstTimestamp"), ("lastTimestamp", "lastTimestamp")):
                if core.get(fld):
                    causes.append(v.invalid(label, "", "needs to be unset"))
            if core.get("count"):
                causes.append(v.invalid("count", "", "needs to be unset"))
            if (core.get("source") or {}).get("component") or (core.get("source") or {}).get("host"):
                causes.append(v.invalid("source", "", "needs to be unset"))
            return causes
        old_core = old if self.api == "core" else event_v1_to_core(old)
        if core.get("series") != old_core.get("series"):
            causes += self._series(core)
        for fld in (
            "involvedObject",
            "reason",
            "message",
            "source",
            "firstTimestamp",
            "lastTimestamp",
            "count",
            "type",
            "eventTime",
            "action",
            "related",
            "reportingComponent",
            "reportingInstance",
        ):
            if core.get(fld) != old_core.get(fld):
                label = "reportingController" if fld == "reportingComponent" else fld
                causes.append(v.immutable(label, core.get(fld)))
        return causes

    def _legacy(self, ev: dict[str, Any]) -> list[Cause]:
        causes: list[Cause] = []
        ns = (ev.get("metadata") or {}).get("namespace") or ""
        io_ns = (ev.get("involvedObject") or {}).get("namespace") or ""
        controller_field = "reportingComponent" if self.api == "core" else "reportingController"
        if not ev.get("eventTime"):
            if not io_ns:
                if ns not in ("", "default"):
                    causes.append(v.invalid("involvedObject.namespace", io_ns, "does not match event.namespace"))
            elif ns != io_ns:
                causes.append(v.invalid("involvedObject.namespace", io_ns, "does not match event.namespace"))
        else:
            if not io_ns and ns not in ("default", "kube-system"):
                causes.append(v.invalid("involvedObject.namespace", io_ns, "does not match event.namespace"))
            rc = ev.get("reportingComponent") or ""
            if not rc:
                causes.append(v.required(controller_field))
            causes += [v.invalid(controller_field, rc, m) for m in v.qualified_name_errors(rc)]
            ri = ev.get("reportingInstance") or ""
            if not ri:
                causes.append(v.required("reportingInstance"))
            elif len(ri) > 128:
                causes.append(v.invalid("reportingInstance", "", "can have at most 128 characters"))
            action = ev.get("action") or ""
            if not action:
                causes.append(v.required("action"))
            elif len(action) > 128:
                causes.append(v.invalid("action", "", "can have at most 128 characters"))
            reason = ev.get("reason") or ""
            if not reason:
                causes.append(v.required("reason"))
            elif len(reason) > 128:
                causes.append(v.invalid("reason", "", "can have at most 128 characters"))
            if len(ev.get("message") or "") > 1024:
                causes.append(v.invalid("message", "", "can have at most 1024 characters"))
        causes += [v.invalid("namespace", ns, m) for m in v.dns_subdomain_errors(ns)] if ns else []
        return causes

    @staticmethod
    def _series(ev: dict[str, Any]) -> list[Cause]:
        series = ev.get("series")
        if series is None:
            return []
        causes = []
        if (series.get("count") or 0) < 2:
            causes.append(v.invalid("series.count", "", "should be at least 2"))
        if not series.get("lastObservedTime"):
            causes.append(v.required("series.lastObservedTime"))
        return causes


class EventV1Behavior(EventBehavior):
    """events.k8s.io/v1 Event: same storage, converted on the way in and out."""

    zero: ClassVar[Mapping[str, Any]] = {"metadata": {}, **_V1_ALWAYS}
    api = "events.k8s.io"
    field_selectors: ClassVar[Mapping[str, FieldGetter]] = {
        **META_FIELDS,
        **{
            f"regarding.{k}": dig("regarding", k)
            for k in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
        },
        "reason": dig("reason"),
        "reportingController": dig("reportingController"),
        "type": dig("type"),
    }

    def to_storage(self, obj: dict[str, Any]) -> dict[str, Any]:
        return event_v1_to_core(obj)

    def from_storage(self, obj: dict[str, Any]) -> dict[str, Any]:
        return event_core_to_v1(obj)

    def shape(self, obj: dict[str, Any]) -> dict[str, Any]:
        return event_v1_shape(obj)


# ---- Namespace ------------------------------------------------------------------------------


class NamespaceBehavior(Behavior):
    zero: ClassVar[Mapping[str, Any]] = {"metadata": {}, "spec": {}, "status": {}}
    delete_returns_object = True
    name_rule = staticmethod(v.dns_label_errors)
    field_selectors: ClassVar[Mapping[str, FieldGetter]] = {**META_FIELDS, "status.phase": dig("status", "phase")}

    def default(self, obj: dict[str, Any]) -> None:
        # SetDefaults_Namespace: the label is defaulted, so the creator's manager owns it.
        self.prepare_update(obj, obj, None)  # type: ignore[arg-type]

    def prepare_create(self, obj: dict[str, Any], ctx: WriteContext) -> list[Cause]:
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Active"}
        return self.prepare_update(obj, obj, ctx)

    def prepare_update(self, new: dict[str, Any], old: dict[str, Any], ctx: WriteContext) -> list[Cause]:
        name = _meta(new).get("name")
        if name:
            _meta(new).setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        return []


def builtin_types() -> list[ResourceType]:
    core_event = EventBehavior()
    return [
        ResourceType(
            "",
            "v1",
            "services",
            "Service",
            True,
            sc.SERVICE,
            ServiceBehavior(),
            "service",
            ("svc",),
            ("all",),
            ("status",),
            extra={"storageGVK": "/v1/Service"},
        ),
        ResourceType(
            "",
            "v1",
            "nodes",
            "Node",
            False,
            sc.NODE,
            NodeBehavior(),
            "node",
            ("no",),
            (),
            ("status",),
            extra={"storageGVK": "/v1/Node"},
        ),
        ResourceType(
            "",
            "v1",
            "events",
            "Event",
            True,
            sc.EVENT_CORE,
            core_event,
            "event",
            ("ev",),
            storage="core/events",
            extra={"storageGVK": "/v1/Event"},
        ),
        ResourceType(
            "",
            "v1",
            "namespaces",
            "Namespace",
            False,
            sc.NAMESPACE,
            NamespaceBehavior(),
            "namespace",
            ("ns",),
            (),
            ("status",),
            verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
            extra={"storageGVK": "/v1/Namespace"},
        ),
        ResourceType(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "EndpointSlice",
            True,
            sc.ENDPOINT_SLICE,
            EndpointSliceBehavior(),
            "endpointslice",
        ),
        ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True, sc.LEASE, LeaseBehavior(), "lease"),
        ResourceType(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            True,
            sc.EVENT_V1,
            EventV1Behavior(),
            "event",
            ("ev",),
            storage="core/events",
            extra={"storageGVK": "/v1/Event", "errorGroup": ""},
        ),
    ]
