"""Checks a JSON Schema cannot express: values that must parse (durations, IPs, CIDRs,
host:port), relations between fields, uniqueness within and across configs, and what the
machine must provide (an algorithm that is built in or an installed plugin, pipeline files
that can be read and parsed).

Runs on the schema-defaulted data of a document, and is defensive about types: where the
schema already reported a wrong type, these checks skip the value instead of piling on.
Per document, `check_document` returns its diagnostics and the facts (VIP ranges, switch
claims, the config's name) that `check_across` compares between all documents loaded.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from reconciler.algorithms import PLUGIN_GROUP, installed_plugins
from reconciler.diagnostics import Diagnostic
from reconciler.intent.files import (
    DEVICE_CONFIG,
    P4INFO,
    PIPELINE_KINDS,
    TLS_KINDS,
    FileKind,
    FileRefError,
    OperatorDirs,
    name_problem,
    resolve,
    shown,
)
from reconciler.intent.model import BUILTIN_ALGORITHMS
from reconciler.intent.yamlsafe import PathKey, YamlDocument, format_path, value_at

MAX_DURATION_S = 3600.0

# switchType -> what its deviceConfig is: a managed pipeline is never pushed without one.
_COMPILED = {
    "bmv2": "the BMv2 JSON compiled by p4c-bm2-ss (e.g. deviceConfig: build/load_balancer.json)",
    "tofino": "the compiled Tofino binary (bf-p4c's pipeline blob)",
}

_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_UNIT_S = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "\u00b5s": Decimal("1e-6"),
    "\u03bcs": Decimal("1e-6"),
    "ms": Decimal("1e-3"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
_DNS_LABEL = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


# --- parsers shared with the model builder -------------------------------------------------


def parse_duration(text: str) -> float | None:
    """Seconds in a Go/Kubernetes duration ("300ms", "1m30s", "0"), or None when `text` is
    not one. Signs are refused: no duration in a config may be negative."""
    if text == "0":
        return 0.0
    pos, total = 0, Decimal(0)
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos or m.group(1) in ("", "."):
            return None
        total += Decimal(m.group(1) if not m.group(1).endswith(".") else m.group(1) + "0") * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        return None
    return float(total)


def parse_ipv4(text: str) -> ipaddress.IPv4Address | str:
    """The address, or an error message."""
    if ":" in text:
        return f"IPv6 address {_q(text)} is not supported: only IPv4"
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        return f"invalid IPv4 address {_q(text)}"


def parse_ipv4_network(text: str) -> ipaddress.IPv4Network | str:
    """A CIDR with its host bits zero, or an error message that says how to fix it."""
    addr, _, length = text.partition("/")
    ip = parse_ipv4(addr)
    if isinstance(ip, str):
        return ip
    if not length.isdigit() or not 0 <= int(length) <= 32:
        return f"invalid prefix length /{length} in {_q(text)}: must be 0 to 32"
    net = ipaddress.IPv4Network(f"{ip}/{int(length)}", strict=False)
    if net.network_address != ip:
        return f"{text} has host bits set: use {net} for the whole network, or {ip}/32 for one address"
    return net


def parse_vip_entry(text: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | str:
    """A vipPools address entry (CIDR, a-b range or single address) as an inclusive range."""
    if "/" in text:
        net = parse_ipv4_network(text)
        return net if isinstance(net, str) else (net.network_address, net.broadcast_address)
    if "-" in text:
        first, _, last = text.partition("-")
        lo, hi = parse_ipv4(first), parse_ipv4(last)
        if isinstance(lo, str):
            return lo
        if isinstance(hi, str):
            return hi
        if lo > hi:
            return f"range {text} is backwards: its start is after its end"
        return lo, hi
    ip = parse_ipv4(text)
    return ip if isinstance(ip, str) else (ip, ip)


def parse_endpoint(text: str) -> tuple[str, int] | str:
    """host:port -> (normalized host, port), or an error message. The host is an IPv4
    address, an IPv6 address in brackets, or a DNS name (compared case-insensitively)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            return f"invalid address {_q(text)}: use [IPv6]:port, e.g. [2001:db8::1]:9559"
        try:
            norm = str(ipaddress.IPv6Address(host))
        except ValueError:
            return f"invalid IPv6 address {_q(host)} in {_q(text)}"
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            return f"missing port in {_q(text)}: use host:port, e.g. {text}:9559"
        if ":" in host:
            return f"an IPv6 address needs brackets: use [{host}]:{port}"
        if not host:
            return f"missing host in {_q(text)}"
        if re.fullmatch(r"[0-9.]+", host):
            ip = parse_ipv4(host)
            if isinstance(ip, str):
                return ip
            norm = str(ip)
        else:
            labels = host.rstrip(".").split(".")
            if len(host) > 253 or not all(len(x) <= 63 and _DNS_LABEL.match(x) for x in labels):
                return f"invalid host {_q(host)}: expected an IPv4 address, [IPv6] or a DNS name"
            norm = host.rstrip(".").lower()
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"invalid port {_q(port)} in {_q(text)}: must be 1 to 65535"
    return norm, int(port)


# --- facts compared across documents -----------------------------------------------------


@dataclass(frozen=True)
class Where:
    """A located field, for messages that point back at an earlier definition."""

    file: str
    line: int
    column: int
    field: str

    def diagnostic(self, message: str) -> Diagnostic:
        return Diagnostic(self.file, self.line, self.column, message, self.field)

    @property
    def short(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class VipRange:
    lo: ipaddress.IPv4Address
    hi: ipaddress.IPv4Address
    text: str
    pool: str
    config: str
    where: Where


@dataclass(frozen=True)
class SwitchClaim:
    name: str
    endpoint: tuple[str, int, int]  # normalized host, port, device id
    address: str
    device_id: int
    config: str
    name_at: Where
    address_at: Where


@dataclass(frozen=True)
class DocumentFacts:
    config: str | None  # namespace/name, when both are valid
    name_at: Where
    vip_ranges: tuple[VipRange, ...] = ()
    switches: tuple[SwitchClaim, ...] = ()


# --- per document --------------------------------------------------------------------------


def _items(data: Any, *path: str | int) -> list[tuple[int, dict[str, Any]]]:
    value = value_at(data, *path)
    if not isinstance(value, list):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)]


@dataclass
class _Checker:
    doc: YamlDocument
    data: Any
    base_dir: Path
    diags: list[Diagnostic]
    dirs: OperatorDirs | None = None

    def where(self, path: PathKey, *, key: bool = False) -> Where:
        at = self.doc.locate(path, key=key)
        return Where(self.doc.file, at.line, at.column, format_path(path))

    def error(self, path: PathKey, message: str, *, key: bool = False) -> None:
        self.diags.append(self.where(path, key=key).diagnostic(message))

    def config_key(self) -> str | None:
        name, ns = value_at(self.data, "metadata", "name"), value_at(self.data, "metadata", "namespace")
        if isinstance(name, str) and isinstance(ns, str) and _DNS_LABEL.match(name) and _DNS_LABEL.match(ns):
            return f"{ns}/{name}"
        return None

    def durations(self) -> None:
        fields: list[PathKey] = [
            ("spec", "updateInterval"), ("spec", "healthCheck", "interval"), ("spec", "healthCheck", "timeout"),
            ("spec", "healthCheck", "readBackInterval"), ("spec", "connectionDrainTimeout"),
        ]
        seconds: dict[PathKey, float] = {}
        for path in fields:
            text = value_at(self.data, *path)
            value = parse_duration(text) if isinstance(text, str) else None
            if value is None:
                continue  # a wrong type or syntax is the schema's to report
            if value > MAX_DURATION_S:
                self.error(path, f"duration {text} is longer than the maximum of 1h")
                continue
            seconds[path] = value
        interval = seconds.get(("spec", "healthCheck", "interval"))
        timeout = seconds.get(("spec", "healthCheck", "timeout"))
        if interval is not None and interval <= 0:
            self.error(("spec", "healthCheck", "interval"), "must be longer than 0s")
        elif timeout is not None and timeout <= 0:
            self.error(("spec", "healthCheck", "timeout"), "must be longer than 0s")
        elif interval is not None and timeout is not None and timeout >= interval:
            t_path: PathKey = ("spec", "healthCheck", "timeout")
            i_path: PathKey = ("spec", "healthCheck", "interval")
            t_text = value_at(self.data, *t_path) + ("" if self.doc.has(t_path) else " (the default)")
            i_text = value_at(self.data, *i_path) + ("" if self.doc.has(i_path) else " (the default)")
            # Point at whichever of the two the user wrote; the timeout when both are written.
            at = t_path if self.doc.has(t_path) or not self.doc.has(i_path) else i_path
            self.error(at, f"timeout {t_text} must be shorter than interval {i_text}")

    def vip_pools(self, config: str) -> list[VipRange]:
        ranges: list[VipRange] = []
        seen: dict[str, Where] = {}
        for i, pool in _items(self.data, "spec", "vipPools"):
            name = pool.get("name")
            if isinstance(name, str):
                if name in seen:
                    self.error(("spec", "vipPools", i, "name"), f'duplicate pool name "{name}" (first defined at {seen[name].short})')
                else:
                    seen[name] = self.where(("spec", "vipPools", i, "name"))
            addresses = pool.get("addresses")
            if not isinstance(addresses, list):
                continue
            for j, text in enumerate(addresses):
                if not isinstance(text, str) or not text:
                    continue
                path: PathKey = ("spec", "vipPools", i, "addresses", j)
                parsed = parse_vip_entry(text)
                if isinstance(parsed, str):
                    self.error(path, parsed)
                    continue
                ranges.append(VipRange(parsed[0], parsed[1], text, name if isinstance(name, str) else f"#{i}", config, self.where(path)))
        return ranges

    def pod_cidrs(self) -> None:
        value = value_at(self.data, "spec", "podCIDRs")
        for i, text in enumerate(value if isinstance(value, list) else ()):
            if isinstance(text, str) and text:
                net = parse_ipv4_network(text)
                if isinstance(net, str):
                    self.error(("spec", "podCIDRs", i), net)

    def switches(self, config: str) -> list[SwitchClaim]:
        base: PathKey = ("spec", "switchConfig", "switches")
        items = _items(self.data, *base)
        roles = [(i, s.get("role")) for i, s in items]
        primaries = [i for i, role in roles if role == "primary"]
        if items and all(role in ("primary", "standby") for _, role in roles):
            if not primaries:
                self.error(base, "no switch has role primary: exactly one must")
            for i in primaries[1:]:
                first = value_at(self.data, *base, primaries[0], "name")
                self.error((*base, i, "role"), f'a second primary: switch "{first}" is already primary; make this one standby')
        claims: list[SwitchClaim] = []
        for i, sw in items:
            name, address, device = sw.get("name"), sw.get("address"), sw.get("deviceId")
            if not isinstance(address, str) or not address:
                continue
            endpoint = parse_endpoint(address)
            if isinstance(endpoint, str):
                self.error((*base, i, "address"), endpoint)
                continue
            if isinstance(name, str) and isinstance(device, int) and not isinstance(device, bool):
                claims.append(
                    SwitchClaim(name, (*endpoint, device), address, device, config, self.where((*base, i, "name")), self.where((*base, i, "address")))
                )
        return claims

    def switch_config(self) -> None:
        sc: PathKey = ("spec", "switchConfig")
        switch_type = value_at(self.data, *sc, "switchType")
        if (
            isinstance(value_at(self.data, *sc), dict)
            and isinstance(switch_type, str)
            and switch_type in _COMPILED
            and value_at(self.data, *sc, "pipeline") in ("managed", None)
            and value_at(self.data, *sc, "deviceConfig") is None
        ):
            self.error(
                sc,
                f"no deviceConfig: switchType {switch_type} would get the pipeline pushed with an empty device config "
                f"(BMv2 accepts that, then fails reads with 'Table state out-of-sync with target'); set deviceConfig to "
                f"{_COMPILED[switch_type]}, or set "
                f"pipeline: external when another tool installs the pipeline on the switches",
                key=True,
            )
        for kind in PIPELINE_KINDS:
            value = value_at(self.data, *sc, kind.field)
            if isinstance(value, str) and value:
                self.named_file((*sc, kind.field), kind, value)
        tls = value_at(self.data, *sc, "tls")
        if isinstance(tls, dict):
            for kind in TLS_KINDS:
                value = tls.get(kind.field)
                if isinstance(value, str) and value:
                    self.named_file((*sc, "tls", kind.field), kind, value)
            for have, need in (("certFile", "keyFile"), ("keyFile", "certFile")):
                if tls.get(have) is not None and tls.get(need) is None:
                    self.error((*sc, "tls", need), f"required when {have} is set (a client certificate needs its key)", key=True)
        seen: dict[ipaddress.IPv4Network, Where] = {}
        for i, route in _items(self.data, *sc, "routes"):
            text = route.get("prefix")
            if not isinstance(text, str) or not text:
                continue
            path: PathKey = (*sc, "routes", i, "prefix")
            net = parse_ipv4_network(text)
            if isinstance(net, str):
                self.error(path, net)
            elif net in seen:
                self.error(path, f"duplicate route for {net} (first at {seen[net].short})")
            else:
                seen[net] = self.where(path)

    def algorithm(self) -> None:
        value = value_at(self.data, "spec", "algorithm")
        if not isinstance(value, str) or value in BUILTIN_ALGORITHMS:
            return  # a wrong type is the schema's to report (and so is a bad pattern: the callers keep one diagnostic per field)
        plugins = installed_plugins()
        if value in plugins:
            return
        message = (
            f"unknown algorithm {_q(value)}: not built in ({', '.join(BUILTIN_ALGORITHMS)}) and not an installed "
            f"plugin ({PLUGIN_GROUP} entry points: {', '.join(plugins) if plugins else 'none installed'})"
        )
        close = difflib.get_close_matches(value, [*BUILTIN_ALGORITHMS, *plugins], n=1, cutoff=0.6)
        if close:
            message += f"; did you mean {_q(close[0])}?"
        self.error(("spec", "algorithm"), message)

    def named_file(self, path: PathKey, kind: FileKind, value: str) -> None:
        """A file named by intent (reconciler.intent.files): its name form always; the file
        itself only when the operator's directory is given (`dirs`), else a warning that it was
        not checked. A deviceConfig must not be empty and a p4Info must parse."""
        problem = name_problem(value, kind)
        if problem:
            self.error(path, problem)
            return
        if self.dirs is None:
            return  # loading for a command: the command reads (and checks) the file itself
        directory = self.dirs.for_kind(kind)
        if directory is None:
            at = self.where(path)
            self.diags.append(Diagnostic(at.file, at.line, at.column,
                                         f"{shown(value)} not checked: give {kind.flag} DIR to check it (commands that read it need it)",
                                         at.field, severity="warning"))
            return
        try:
            resolved = resolve(directory, value, kind)
        except FileRefError as e:
            self.error(path, str(e).removeprefix(f"{kind.field}: "))
            return
        if kind is DEVICE_CONFIG:
            try:  # readable by the reconciler (O_NONBLOCK: never hang if a FIFO was swapped in)
                os.close(os.open(resolved, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)))
            except OSError as e:
                self.error(path, f"cannot read {shown(value)}: {(e.strerror or str(e)).lower()}")
                return
        if kind is DEVICE_CONFIG and resolved.stat().st_size == 0:
            self.error(path, f"{shown(value)} is empty: the deviceConfig is the compiled pipeline (BMv2 JSON or Tofino binary)")
        elif kind is P4INFO:
            problem = _p4info_problem(resolved, value)
            if problem:
                self.error(path, problem)

    def service_selector(self) -> None:
        labels = value_at(self.data, "spec", "serviceSelector", "matchLabels")
        if not isinstance(labels, dict):
            return
        for key, value in labels.items():
            path: PathKey = ("spec", "serviceSelector", "matchLabels", key)
            problem = _label_key_problem(key)
            if problem:
                self.error(path, problem, key=True)
            elif isinstance(value, str) and value and not (len(value) <= 63 and _LABEL_NAME.match(value)):
                self.error(path, f"invalid label value {_q(value)}: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit")


def _p4info_problem(path: Path, value: str) -> str | None:
    """Why the file at `path` is not a P4Info in text format (what p4c --p4runtime-files writes)."""
    from google.protobuf import text_format

    from reconciler.p4info import P4InfoError, load_p4info

    try:
        load_p4info(path)
    except P4InfoError as e:
        cause = e.__cause__
        # No parser detail: it quotes the file's tokens (the file may hold anything).
        if isinstance(cause, text_format.ParseError):
            return f"{shown(value)} is not P4Info text format: line {cause.GetLine()}, column {cause.GetColumn()}"
        if isinstance(cause, UnicodeDecodeError):
            return f"{shown(value)} is not P4Info text format: not UTF-8 text"
        if isinstance(cause, OSError):
            return f"cannot read {shown(value)}: {(cause.strerror or str(cause)).lower()}"
        return f"{shown(value)} is not a usable P4Info"
    return None


def _label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not all(_DNS_LABEL.match(x) for x in prefix.split("."))):
        return f"invalid label key {_q(key)}: its prefix must be a DNS subdomain"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return f"invalid label key {_q(key)}: the name part must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    return None


def check_document(
    doc: YamlDocument, data: Any, base_dir: Path, dirs: OperatorDirs | None = None
) -> tuple[list[Diagnostic], DocumentFacts]:
    """Semantic problems in one LoadBalancerConfig (`data` has the schema's defaults applied),
    and the facts that must be unique across all configs. Files the intent names are checked
    in the operator's `dirs` (None: their names only)."""
    checker = _Checker(doc, data, base_dir, [], dirs)
    config = checker.config_key()
    label = config or "this config"
    checker.algorithm()
    checker.durations()
    ranges = checker.vip_pools(label)
    checker.pod_cidrs()
    claims = checker.switches(label)
    checker.switch_config()
    checker.service_selector()
    facts = DocumentFacts(config, checker.where(("metadata", "name")), tuple(ranges), tuple(claims))
    return checker.diags, facts


# --- across documents ----------------------------------------------------------------------


def check_across(documents: Sequence[DocumentFacts]) -> list[Diagnostic]:
    """Conflicts between configs (and within one): duplicate names, overlapping VIP ranges,
    switches claimed twice. Each is reported at the later definition, naming the earlier."""
    diags: list[Diagnostic] = []
    configs: dict[str, Where] = {}
    for facts in documents:
        if facts.config is None:
            continue
        if facts.config in configs:
            first = configs[facts.config]
            diags.append(facts.name_at.diagnostic(f"LoadBalancerConfig {facts.config} is already defined at {first.short}"))
        else:
            configs[facts.config] = facts.name_at

    earlier: list[VipRange] = []
    for facts in documents:
        for r in facts.vip_ranges:
            clash = next((e for e in earlier if e.lo <= r.hi and r.lo <= e.hi), None)
            if clash is not None:
                diags.append(r.where.diagnostic(f'{r.text} overlaps {clash.text} of pool "{clash.pool}" in {clash.config} ({clash.where.short})'))
            earlier.append(r)

    by_name: dict[str, SwitchClaim] = {}
    by_endpoint: dict[tuple[str, int, int], SwitchClaim] = {}
    for facts in documents:
        for sw in facts.switches:
            if sw.name in by_name:
                claimed = by_name[sw.name]
                diags.append(sw.name_at.diagnostic(f'switch "{sw.name}" is already claimed by {claimed.config} ({claimed.name_at.short})'))
            elif sw.endpoint in by_endpoint:
                claimed = by_endpoint[sw.endpoint]
                diags.append(
                    sw.address_at.diagnostic(
                        f'switch {sw.address} device {sw.device_id} is already claimed as "{claimed.name}" by {claimed.config} ({claimed.address_at.short})'
                    )
                )
            by_name.setdefault(sw.name, sw)
            by_endpoint.setdefault(sw.endpoint, sw)
    return diags
