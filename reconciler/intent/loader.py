"""Loading LoadBalancerConfig intent from files and directories: the public entry point.

    load_intent(paths) -> IntentSet       raises InputError carrying every problem found
    validate_paths(paths) -> [Diagnostic] the same checks, for `p4kube validate`; never raises
                                           for problems in the input

Stages, each reported with file:line:column and the field at fault:
read (size, UTF-8, YAML, duplicate keys, alias bombs) -> which documents are ours ->
JSON Schema -> defaults from the schema -> semantic checks -> checks across all configs ->
the frozen model. Later stages do not repeat a complaint about a field an earlier one made.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.diagnostics import Diagnostic, InputError
from reconciler.inputlimits import recording_max_bytes
from reconciler.intent.files import OperatorDirs, explain_file_names
from reconciler.intent.gitinfo import git_state
from reconciler.intent.model import (
    API_VERSION,
    KIND,
    AuditConfig,
    HealthCheck,
    IntentSet,
    LoadBalancerConfig,
    Route,
    Safety,
    ServiceSelector,
    SourceRef,
    SwitchConfig,
    SwitchSpec,
    TLSConfig,
    TrafficPolicy,
    VipPool,
)
from reconciler.intent.schema import apply_defaults, validate_document
from reconciler.intent.semantic import DocumentFacts, check_across, check_document, parse_duration, parse_vip_entry
from reconciler.intent.yamlsafe import DEFAULT_MAX_FILE_BYTES, YamlDocument, YamlFile, parse_yaml_bytes, read_yaml_file

YAML_SUFFIXES = (".yaml", ".yml")
GROUP, _, VERSION = API_VERSION.rpartition("/")


@dataclass(frozen=True)
class _Candidate:
    """A document that is a LoadBalancerConfig, ready to be checked."""

    doc: YamlDocument
    base_dir: Path


@dataclass
class _Result:
    configs: list[LoadBalancerConfig] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # every file read


def load_intent(
    paths: Sequence[str | Path], *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, dirs: OperatorDirs | None = None
) -> IntentSet:
    """Load and validate every LoadBalancerConfig under `paths` (files, or directories walked
    recursively for *.yaml and *.yml, hidden entries skipped). Raises InputError with all
    diagnostics when anything is invalid. When the first path is inside a Git repository,
    the result carries HEAD's SHA and whether the intent files differ from it. Files the intent
    names are checked in the operator's `dirs` when given (else only their names' form)."""
    result = _load(paths, max_file_bytes, dirs)
    errors = [d for d in result.diagnostics if d.severity == "error"]
    if errors:
        raise InputError(errors)
    state = git_state(list(paths), result.files, is_intent_file)
    return IntentSet(tuple(result.configs), commit=state.commit, dirty=state.dirty, root=_root(paths))


def validate_paths(
    paths: Sequence[str | Path], *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, dirs: OperatorDirs | None = None
) -> list[Diagnostic]:
    """Every problem in the intent under `paths`, sorted by file, line and column; [] when valid.
    Named files are checked in `dirs` (a warning for each whose directory is not given there);
    None: their names only."""
    return sorted(_load(paths, max_file_bytes, dirs).diagnostics)


def is_intent_file(given: str, file: str) -> bool:
    """Whether the loader reads `file` when given `given` (both normalized paths)."""
    if given == file:
        return True
    if not file.startswith(given.rstrip(os.sep) + os.sep):
        return False
    rel = Path(os.path.relpath(file, given))
    return file.endswith(YAML_SUFFIXES) and not any(part.startswith(".") for part in rel.parts)


def _root(paths: Sequence[str | Path]) -> str:
    texts = [os.fspath(p) for p in paths]
    if len(texts) == 1:
        return texts[0]
    try:
        return os.path.commonpath(texts)
    except ValueError:  # absolute and relative paths mixed
        return ""


def _discover(paths: Sequence[str | Path]) -> tuple[list[tuple[Path, str]], list[Diagnostic]]:
    """(real path, path to show) of every file to read, in a stable order, without repeats."""
    files: list[tuple[Path, str]] = []
    diags: list[Diagnostic] = []
    seen: set[str] = set()
    if not paths:
        diags.append(Diagnostic("<none>", 1, 1, "no intent paths given"))
    for given in paths:
        text = os.fspath(given)
        path = Path(text)
        if path.is_dir():
            found, refused = _walk(path)
            diags.extend(refused)
            if not found and not refused:
                diags.append(Diagnostic(text, 1, 1, "no YAML files (*.yaml, *.yml) in this directory"))
            listed = [(f, os.path.normpath(os.path.join(text, rel))) for f, rel in found]
        elif path.exists():
            listed = [(path, text)]
        else:
            diags.append(Diagnostic(text, 1, 1, "no such file or directory"))
            continue
        for real, shown in listed:
            key = os.path.realpath(real)
            if key not in seen:
                seen.add(key)
                files.append((real, shown))
    return files, diags


def _walk(top: Path) -> tuple[list[tuple[Path, str]], list[Diagnostic]]:
    """The intent files under `top`, and a diagnostic for each symbolic link that would lead to
    one: intent is untrusted, and a link could make the loader read (and echo in errors) any
    file of the machine. Links are refused without being read; a link to a directory inside
    `top` is skipped (its files are found where they are)."""
    found: list[tuple[tuple[str, ...], Path, str]] = []
    refused: list[Diagnostic] = []
    root = os.path.realpath(top)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .git, .github, ...
        for name in sorted(dirnames):
            full = Path(dirpath) / name
            if full.is_symlink() and not _inside(os.path.realpath(full), root):
                refused.append(Diagnostic(os.path.normpath(os.path.join(os.fspath(top), full.relative_to(top).as_posix())), 1, 1,
                                          "a symbolic link to a directory outside the intent: refused, not followed"))
        for name in filenames:
            if name.startswith(".") or not name.endswith(YAML_SUFFIXES):
                continue
            full = Path(dirpath) / name
            rel = full.relative_to(top)
            if full.is_symlink():
                refused.append(Diagnostic(os.path.normpath(os.path.join(os.fspath(top), rel.as_posix())), 1, 1,
                                          "a symbolic link: intent files must be regular files; refused, not read"))
                continue
            found.append((rel.parts, full, rel.as_posix()))
    found.sort()
    return [(full, rel) for _, full, rel in found], refused


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _classify(doc: YamlDocument) -> Diagnostic | bool:
    """True for a LoadBalancerConfig, False for another group's object (skipped), or the
    diagnostic for a document that is not an object or is of our group but not one we know."""
    data = doc.data
    if not isinstance(data, dict):
        shape = "a list" if isinstance(data, list) else f"the scalar {json.dumps(data)}"
        return Diagnostic(doc.file, doc.start.line, doc.start.column, f"expected a mapping (a Kubernetes object), got {shape}")
    api = data.get("apiVersion")
    if not isinstance(api, str) or not api:
        at = doc.locate(("apiVersion",))
        what = "missing apiVersion" if api is None else f"apiVersion must be a string, got {json.dumps(api)}"
        return Diagnostic(doc.file, at.line, at.column, f"{what}: every document must be a Kubernetes object (LoadBalancerConfig uses {API_VERSION})", "apiVersion")
    group, _, version = api.rpartition("/")
    if group != GROUP:
        if data.get("kind") == KIND:  # a typo in the group must not make a config vanish
            at = doc.locate(("apiVersion",))
            problem = f'wrong API group "{group}"' if group else f'no API group in "{api}"'
            return Diagnostic(doc.file, at.line, at.column, f"{problem} for a {KIND}: use {API_VERSION}", "apiVersion")
        return False
    if version != VERSION:
        at = doc.locate(("apiVersion",))
        return Diagnostic(doc.file, at.line, at.column, f'unsupported version "{version}" of {GROUP}: use {API_VERSION}', "apiVersion")
    kind = data.get("kind")
    if kind != KIND:
        at = doc.locate(("kind",))
        got = "missing kind" if kind is None else f"unknown kind {json.dumps(kind)}"
        return Diagnostic(doc.file, at.line, at.column, f"{got} in {GROUP}: expected {KIND}", "kind")
    return True


def _new_only(diags: list[Diagnostic], seen_fields: set[tuple[str, str]]) -> list[Diagnostic]:
    """Diagnostics for fields not already reported on (per file), recording the new ones."""
    out = []
    for d in diags:
        key = (d.file, d.field)
        if d.field and key in seen_fields:
            continue
        seen_fields.add(key)
        out.append(d)
    return out


# A cluster recording kept in the intent repository (ci/README.md's layout: cluster/recorded.yaml)
# is YAML the walk finds, and far larger than any intent file (1.4 MB for 500 Services). A file
# over the intent limit that names neither the API group nor the kind cannot hold a
# LoadBalancerConfig, nor a misspelt one: found by walking a directory (or a commit's tree), it
# is skipped unparsed, as another group's objects are skipped when parsed. A file named on the
# command line, and anything else over the limit, is still refused as too large.
_INTENT_MARKS = (GROUP.encode(), KIND.encode())
_SCAN_CHUNK = 1 << 20


def _large_and_foreign(path: Path, max_file_bytes: int) -> bool:
    try:
        size = path.stat().st_size
        if size <= max_file_bytes or size > recording_max_bytes():
            return False
        overlap = max(len(m) for m in _INTENT_MARKS) - 1
        tail = b""
        with open(path, "rb") as f:
            while chunk := f.read(_SCAN_CHUNK):
                window = tail + chunk
                if any(m in window for m in _INTENT_MARKS):
                    return False
                tail = window[-overlap:]
    except OSError:
        return False  # read_yaml_file says what is wrong with it
    return True


def _blob_large_and_foreign(raw: bytes, max_file_bytes: int) -> bool:
    return max_file_bytes < len(raw) <= recording_max_bytes() and not any(m in raw for m in _INTENT_MARKS)


def _load(paths: Sequence[str | Path], max_file_bytes: int, dirs: OperatorDirs | None = None) -> _Result:
    result = _Result()
    files, diags = _discover(paths)
    named = {os.path.realpath(p) for p in paths if Path(p).is_file()}  # named by the user: always read
    files = [(r, shown) for r, shown in files if os.path.realpath(r) in named or not _large_and_foreign(r, max_file_bytes)]
    result.diagnostics.extend(diags)
    result.files = [real for real, _ in files]
    _check_files(result, ((read_yaml_file(real, shown, max_bytes=max_file_bytes), real.parent) for real, shown in files), paths, dirs)
    return result


def load_intent_blobs(
    blobs: Sequence[tuple[str, bytes]], where: str, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    dirs: OperatorDirs | None = None,
) -> list[LoadBalancerConfig]:
    """The configs in (path to show, content) pairs, e.g. the blobs of a verified Git commit
    (reconciler.intent.committed): the same checks as load_intent, positions named by the
    shown paths (relative files such as a deviceConfig are looked up beside them). Raises
    InputError with every diagnostic."""
    result = _Result()
    reads = []
    for shown, raw in blobs:
        if _blob_large_and_foreign(raw, max_file_bytes):
            continue  # a cluster recording beside the intent (see _large_and_foreign)
        if len(raw) > max_file_bytes:
            too_large = Diagnostic(shown, 1, 1, f"file too large: {len(raw)} bytes, the limit is {max_file_bytes} bytes")
            reads.append((YamlFile(shown, diagnostics=(too_large,)), Path(shown).parent))
        else:
            reads.append((parse_yaml_bytes(raw, shown), Path(shown).parent))
    _check_files(result, reads, [where], dirs)
    errors = [d for d in result.diagnostics if d.severity == "error"]
    if errors:
        raise InputError(sorted(errors))
    return result.configs


def _check_files(
    result: _Result, reads: Iterable[tuple[YamlFile, Path]], paths: Sequence[str | Path], dirs: OperatorDirs | None = None
) -> None:
    """Every stage after reading: which documents are ours, schema, defaults, semantics."""
    candidates: list[_Candidate] = []
    for read, base_dir in reads:
        result.diagnostics.extend(read.diagnostics)
        for doc in read.documents:
            result.diagnostics.extend(doc.diagnostics)  # YAML-level problems, whatever the kind
            if doc.data is None:
                continue  # an explicit null document (`--- ~`) holds nothing
            verdict = _classify(doc)
            if isinstance(verdict, Diagnostic):
                result.diagnostics.append(verdict)
            elif verdict:
                candidates.append(_Candidate(doc, base_dir))

    facts: list[DocumentFacts] = []
    defaulted: list[Any] = []
    for cand in candidates:
        doc = cand.doc
        seen = {(d.file, d.field) for d in doc.diagnostics if d.field}
        result.diagnostics.extend(_new_only(explain_file_names(validate_document(doc), doc.data), seen))
        data = apply_defaults(doc.data)
        problems, doc_facts = check_document(doc, data, cand.base_dir, dirs)
        result.diagnostics.extend(_new_only(problems, seen))
        facts.append(doc_facts)
        defaulted.append(data)
    result.diagnostics.extend(check_across(facts))

    if not candidates and not result.diagnostics:
        shown = ", ".join(os.fspath(p) for p in paths)
        where = os.fspath(paths[0]) if paths else "<none>"
        result.diagnostics.append(Diagnostic(where, 1, 1, f"no {KIND} ({API_VERSION}) found in {shown}"))
    if not any(d.severity == "error" for d in result.diagnostics):
        result.configs = [build_config(c.doc, d) for c, d in zip(candidates, defaulted)]


def build_config(doc: YamlDocument, d: dict[str, Any]) -> LoadBalancerConfig:
    """The model of a document that passed every check (`d` has the schema's defaults)."""
    meta, spec = d["metadata"], d["spec"]
    hc, sc, audit = spec["healthCheck"], spec["switchConfig"], spec["audit"]
    selector = spec.get("serviceSelector", {})
    tls = sc.get("tls")
    optional: dict[str, Any] = {}
    if "generation" in meta:
        optional["generation"] = meta["generation"]
    return LoadBalancerConfig(
        namespace=meta["namespace"],
        name=meta["name"],
        algorithm=spec["algorithm"],
        update_interval_s=_seconds(spec["updateInterval"]),
        connection_drain_timeout_s=_seconds(spec["connectionDrainTimeout"]),
        buckets_per_service=spec["bucketsPerService"],
        backend_mode=spec["backendMode"],
        health_check=HealthCheck(
            enabled=hc["enabled"],
            interval_s=_seconds(hc["interval"]),
            timeout_s=_seconds(hc["timeout"]),
            failure_threshold=hc["failureThreshold"],
            success_threshold=hc["successThreshold"],
            vip_probe=hc["vipProbe"],
            read_back_interval_s=_seconds(hc["readBackInterval"]),
        ),
        switch_config=SwitchConfig(
            p4_program=sc["p4Program"],
            switch_type=sc["switchType"],
            p4info=sc.get("p4Info"),
            device_config=sc.get("deviceConfig"),
            pipeline=sc.get("pipeline", "managed"),
            switches=tuple(SwitchSpec(s["name"], s["role"], s["address"], s["deviceId"]) for s in sc["switches"]),
            routes=tuple(
                Route(ipaddress.IPv4Network(r["prefix"]), r["port"], r["nextHopMac"].lower()) for r in sc.get("routes", ())
            ),
            tls=None
            if tls is None
            else TLSConfig(tls.get("caFile"), tls.get("certFile"), tls.get("keyFile"), tls.get("serverName")),
            batch_size=sc["batchSize"],
            standby_unreachable=sc["standbyUnreachable"],
        ),
        vip_pools=tuple(
            VipPool(p["name"], tuple(_vip_range(a) for a in p["addresses"]), p["autoAssign"], tuple(p.get("namespaces", ())))
            for p in spec.get("vipPools", ())
        ),
        pod_cidrs=tuple(ipaddress.IPv4Network(c) for c in spec.get("podCIDRs", ())),
        service_selector=ServiceSelector(
            namespaces=tuple(selector.get("namespaces", ())),
            match_labels=tuple(sorted(selector.get("matchLabels", {}).items())),
            load_balancer_classes=tuple(selector.get("loadBalancerClasses", ())),
        ),
        safety=Safety(max_removal_percent=spec["safety"]["maxRemovalPercent"]),
        traffic_policy=TrafficPolicy(require_local=spec["trafficPolicy"]["requireLocal"]),
        audit=AuditConfig(repository=audit.get("repository"), branch=audit["branch"]),
        source=SourceRef(doc.file, doc.start.line, doc.start.column),
        **optional,
    )


def _seconds(text: str) -> float:
    value = parse_duration(text)
    if value is None:  # unreachable after validation; a bug if it happens
        raise ValueError(f"unvalidated duration {text!r}")
    return value


def _vip_range(text: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    parsed = parse_vip_entry(text)
    if isinstance(parsed, str):  # unreachable after validation; a bug if it happens
        raise ValueError(parsed)
    return parsed
