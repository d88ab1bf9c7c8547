"""LoadBalancerConfig custom resources as an intent source (the Argo CD / Flux path).

Each CR is checked exactly as a file is (reconciler.intent: the JSON Schema from schemas/, its
defaults, the semantic checks, the checks across configs), so a CR the API server accepted
(its CRD schema is generated from the same file, but cannot express everything) can still be
refused here. What differs from files:

- Kubernetes' own metadata is not intent: everything in metadata but name, namespace, labels,
  annotations and generation (uid, resourceVersion, creationTimestamp, managedFields,
  finalizers, ownerReferences, ...) is dropped before validation; `status` is ignored.
  `generation` is kept in the model (the status writer reports it as observedGeneration).
- Diagnostics name the CR instead of a file ("LoadBalancerConfig ns/name") and carry line 0,
  column 0: an object read from the API has no lines; the field path says where.
- One invalid CR does not hide the others: valid CRs form the IntentSet, invalid ones are
  reported (and their status gets Stalled). In conflicts between CRs (overlapping VIP pools,
  a switch claimed twice) the older CR (creationTimestamp, then namespace/name: the timestamp
  has 1-second resolution) keeps its claim; only CRs valid on their own hold claims.
- p4Info/deviceConfig (and the TLS files) are names, kept as names in the model; the commands
  find them in the operator's --pipeline-dir / --tls-dir (reconciler.intent.files). With `dirs`
  given, the files are checked here too, so a CR naming a missing file is Stalled.
- Only the namespaces the operator allows are listed and watched (namespaced list/watch URLs;
  `*`: all), so a team that can create a CR elsewhere cannot steer the reconciler.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s

from reconciler.cluster.live import (
    Bookmark,
    Collection,
    Item,
    Problem,
    Reflector,
    Relisted,
    WatchEvent,
)
from reconciler.diagnostics import Diagnostic
from reconciler.intent.files import OperatorDirs, explain_file_names
from reconciler.intent.loader import build_config  # the model builder shared with files
from reconciler.intent.model import API_VERSION, KIND, IntentSet, LoadBalancerConfig
from reconciler.intent.schema import apply_defaults, validate_document
from reconciler.intent.semantic import (
    DocumentFacts,
    check_across,
    check_document,
    parse_endpoint,
)
from reconciler.intent.yamlsafe import Located, PathKey, Pos, YamlDocument
from reconciler.paths import P4_DIR
from reconciler.switch.allowlist import Allowlist

log = logging.getLogger(__name__)

GROUP, _, VERSION = API_VERSION.rpartition("/")
PLURAL = "loadbalancerconfigs"
KEPT_METADATA = ("name", "namespace", "labels", "annotations", "generation")
_ORIGIN = Pos(0, 0)


@dataclass(frozen=True)
class ConfigResource:
    """One LoadBalancerConfig CR as read, and what validation made of it."""

    namespace: str
    name: str
    generation: int
    config: LoadBalancerConfig | None  # None when invalid
    diagnostics: tuple[Diagnostic, ...]
    status: Mapping[str, Any]  # the CR's status as the API holds it (for no-op-free writes)
    resource_version: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def valid(self) -> bool:
        return self.config is not None


@dataclass(frozen=True)
class CRIntent:
    """What the cluster's CRs amount to: the valid configs as an IntentSet, and every CR."""

    intent: IntentSet
    resources: dict[str, ConfigResource] = field(default_factory=dict)
    resource_version: str | None = None

    @property
    def diagnostics(self) -> list[Diagnostic]:
        return sorted(d for r in self.resources.values() for d in r.diagnostics)

    @property
    def invalid(self) -> list[ConfigResource]:
        return [r for k, r in sorted(self.resources.items()) if not r.valid]


def resource_label(namespace: str, name: str) -> str:
    """How diagnostics name a CR (in place of a file name)."""
    return f"{KIND} {namespace}/{name}"


def describe(diagnostic: Diagnostic) -> str:
    """A CR diagnostic for a status message or an Event: "spec.x: message" (no 0:0 position)."""
    return f"{diagnostic.field}: {diagnostic.message}" if diagnostic.field else diagnostic.message


def intent_document(obj: Mapping[str, Any]) -> YamlDocument:
    """A CR as the intent checks take a document: stripped of API-server metadata and status,
    with every path present "located" at line 0 so that the checks can tell written fields
    from defaulted ones."""
    given = obj.get("metadata")
    meta: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    data: dict[str, Any] = {k: v for k, v in obj.items() if k != "status"}
    data["metadata"] = {k: meta[k] for k in KEPT_METADATA if k in meta}
    positions: dict[PathKey, Located] = {}
    _locate_all(data, (), positions)
    file = resource_label(str(meta.get("namespace", "")), str(meta.get("name", "")))
    return YamlDocument(file=file, index=0, data=data, positions=positions, start=_ORIGIN)


def _locate_all(value: Any, path: PathKey, out: dict[PathKey, Located]) -> None:
    out[path] = Located(_ORIGIN, _ORIGIN)
    if isinstance(value, Mapping):
        for k, v in value.items():
            _locate_all(v, (*path, str(k)), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _locate_all(v, (*path, i), out)


def _age_key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def intent_from_objects(
    objects: Iterable[Mapping[str, Any]],
    *,
    dirs: OperatorDirs | None = None,
    allowed: Allowlist | None = None,
    resource_version: str | None = None,
) -> CRIntent:
    """Validate every LoadBalancerConfig CR (pure apart from checking referenced files in `dirs`).
    With `dirs`, a named file whose directory is not configured is an error (the reconciler
    needs its bytes); with `allowed`, so is a switch outside the operator's allowlist. Either
    way the CR is Stalled instead of stopping the reconciler."""
    objs = sorted((o for o in objects if isinstance(o, Mapping)), key=_age_key)
    docs = [intent_document(o) for o in objs]
    per_doc: list[list[Diagnostic]] = []
    facts: list[DocumentFacts] = []
    defaulted: list[Any] = []
    for doc in docs:
        diags = explain_file_names(list(validate_document(doc)), doc.data)
        reported = {d.field for d in diags if d.field}
        data = apply_defaults(doc.data)
        problems, doc_facts = check_document(doc, data, P4_DIR, dirs)
        problems = [dataclasses.replace(d, severity="error") for d in problems]
        problems += _disallowed_switches(doc, data, allowed)
        diags.extend(d for d in problems if not (d.field and d.field in reported))
        per_doc.append(diags)
        facts.append(doc_facts)
        defaulted.append(data)
    # Claims across CRs (VIP ranges, switches) count only for CRs valid on their own: a broken
    # CR must not keep a valid one out by holding the same pool.
    by_file = {doc.file: i for i, doc in enumerate(docs)}
    for d in check_across([f for f, diags in zip(facts, per_doc) if not diags]):
        if d.file in by_file:
            per_doc[by_file[d.file]].append(d)
    resources: dict[str, ConfigResource] = {}
    configs: list[LoadBalancerConfig] = []
    for obj, doc, diags, data in zip(objs, docs, per_doc, defaulted):
        meta = obj.get("metadata") or {}
        ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        config = None
        if not diags:
            config = build_config(doc, data)
            configs.append(config)
        generation = meta.get("generation")
        status = obj.get("status")
        res = ConfigResource(
            ns,
            name,
            generation if isinstance(generation, int) and not isinstance(generation, bool) else 0,
            config,
            tuple(sorted(diags)),
            status if isinstance(status, Mapping) else {},
            str(meta.get("resourceVersion") or ""),
        )
        resources[res.key] = res
    configs.sort(key=lambda c: c.key)
    intent = IntentSet(tuple(configs), commit=None, dirty=False, root="cluster")
    return CRIntent(intent, dict(sorted(resources.items())), resource_version)


def _disallowed_switches(doc: YamlDocument, data: Any, allowed: Allowlist | None) -> list[Diagnostic]:
    if allowed is None:
        return []
    sws = ((data.get("spec") or {}).get("switchConfig") or {}).get("switches") if isinstance(data, dict) else None
    out = []
    for i, sw in enumerate(sws if isinstance(sws, list) else []):
        address = sw.get("address") if isinstance(sw, dict) else None
        if not isinstance(address, str) or not address:
            continue
        endpoint = parse_endpoint(address)
        if isinstance(endpoint, tuple) and not allowed.allows(*endpoint):
            out.append(Diagnostic(doc.file, 0, 0, f"{address[:80]!r} is not allowed by --allowed-switches "
                                  f"({allowed.describe()}): the reconciler does not connect to it",
                                  f"spec.switchConfig.switches[{i}].address"))
    return out


# --- the live source ------------------------------------------------------------------------------


def config_collection(api: k8s.ApiClient, namespace: str | None = None) -> Collection:
    """List/watch of LoadBalancerConfig CRs in one namespace or all."""
    custom = k8s.CustomObjectsApi(api)

    def call(**kw: Any) -> Any:
        if namespace is None:
            return custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kw)
        return custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kw)

    return Collection(KIND, call)


class CRIntentSource:
    """LoadBalancerConfig CRs, list+watch with the same reflector as the cluster source; each
    change re-validates the whole set (configs are few and the checks across them need all).

        source = CRIntentSource(api)
        await source.start()
        async for crs in source.changes():   # CRIntent
            ...
    """

    def __init__(
        self,
        api: k8s.ApiClient | None = None,
        *,
        namespace: str | None = None,
        namespaces: Sequence[str] | None = None,
        dirs: OperatorDirs | None = None,
        allowed: Allowlist | None = None,
        collection: Collection | None = None,
        reflector_options: dict[str, Any] | None = None,
    ) -> None:
        # namespaces: the ones to list and watch ("*": all); default `namespace`, else all.
        wanted = list(namespaces) if namespaces else ([namespace] if namespace else ["*"])
        self.namespaces: tuple[str, ...] | None = None if "*" in wanted else tuple(dict.fromkeys(wanted))
        if collection is not None:
            self._collections: list[tuple[str | None, Collection]] = [(None, collection)]
        elif api is None:
            raise ValueError("give an ApiClient or the collection to watch")
        elif self.namespaces is None:
            self._collections = [(None, config_collection(api, None))]
        else:
            self._collections = [(ns, config_collection(api, ns)) for ns in self.namespaces]
        self._dirs = dirs
        self._allowed = allowed
        self._listed: set[str | None] = set()
        self._ignored: set[str] = set()  # keys of CRs outside the allowed namespaces, logged once
        self._options = reflector_options or {}
        self._objects: dict[str, dict[str, Any]] = {}
        self._rv: str | None = None
        self._current: CRIntent | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reflectors: list[Reflector] = []
        self._changed = asyncio.Event()
        self._synced = asyncio.Event()
        self._closed = False
        self.problems: list[str] = []

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.namespaces is not None:
            log.info("reading %s resources only in namespace(s) %s (--intent-namespace); any elsewhere are ignored",
                     KIND, ", ".join(self.namespaces))
        for ns, collection in self._collections:
            reflector = Reflector(collection, functools.partial(self._from_thread, ns), **self._options)
            self._reflectors.append(reflector)
            reflector.start()

    async def aclose(self, timeout_s: float = 10.0) -> None:
        self._closed = True
        for reflector in self._reflectors:
            reflector.stop()
        for reflector in self._reflectors:
            await asyncio.to_thread(reflector.join, timeout_s)
        self._changed.set()

    async def __aenter__(self) -> CRIntentSource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def wait_synced(self, timeout: float | None = None) -> CRIntent:
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"{KIND} resources not listed within {timeout}s ({'; '.join(self.problems[-3:]) or 'no error reported'})") from None
        return self.current()

    def current(self) -> CRIntent:
        """The latest evaluation (validating again only after a change)."""
        if self._current is None:
            self._current = intent_from_objects(self._objects.values(), dirs=self._dirs, allowed=self._allowed,
                                                resource_version=self._rv)
        return self._current

    async def changes(self) -> AsyncIterator[CRIntent]:
        """The evaluated CRs after the first list and after every change (coalesced)."""
        await self._synced.wait()
        self._changed.set()
        while not self._closed:
            await self._changed.wait()
            self._changed.clear()
            if self._closed:
                return
            yield self.current()

    def _from_thread(self, namespace: str | None, item: Item) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the CR intent source's loop is gone")
        loop.call_soon_threadsafe(self._apply, item, namespace)

    def _in_namespace(self, obj: Mapping[str, Any]) -> bool:
        """Whether `obj` is in an allowed namespace (the namespaced watch already ensures it;
        checked again so that no other path can slip one in), logging each refused CR once."""
        ns = (obj.get("metadata") or {}).get("namespace")
        if self.namespaces is None or ns in self.namespaces:
            return True
        key = f"{ns}/{(obj.get('metadata') or {}).get('name')}"
        if key not in self._ignored:
            self._ignored.add(key)
            log.warning("%s %s ignored: namespace %s is not allowed (--intent-namespace %s)",
                        KIND, key[:120], str(ns)[:63], ",".join(self.namespaces))
        return False

    def _apply(self, item: Item, namespace: str | None = None) -> None:
        if isinstance(item, Relisted):
            # Each namespace's reflector lists its own namespace: replace only those objects.
            fresh = {k: o for k, o in self._objects.items() if namespace is not None and not k.startswith(f"{namespace}/")}
            for obj in item.objects:
                if not self._in_namespace(obj):
                    continue
                meta = obj.get("metadata") or {}
                fresh[f"{meta.get('namespace')}/{meta.get('name')}"] = obj
            changed = fresh != self._objects
            self._objects = fresh
            self._rv = item.resource_version
            self._listed.add(namespace)
            first = not self._synced.is_set()
            if len(self._listed) >= len(self._collections):
                self._synced.set()
            if self._synced.is_set() and (changed or first):
                self._invalidate()
        elif isinstance(item, WatchEvent):
            if not self._in_namespace(item.object):
                return
            meta = item.object.get("metadata") or {}
            key = f"{meta.get('namespace')}/{meta.get('name')}"
            self._rv = meta.get("resourceVersion") or self._rv
            if item.type == "DELETED":
                self._objects.pop(key, None)
            else:
                self._objects[key] = item.object
            self._invalidate()
        elif isinstance(item, Bookmark):
            self._rv = item.resource_version
        elif isinstance(item, Problem):
            self.problems.append(f"{item.error} ({item.action})")
            del self.problems[:-20]

    def _invalidate(self) -> None:
        self._current = None
        if self._synced.is_set():
            self._changed.set()


DEFAULT_NAMESPACE = "p4kube-system"


def default_intent_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The reconciler's own namespace, where it reads LoadBalancerConfigs unless the operator
    allows more: $POD_NAMESPACE (the Downward API), else the kubeconfig context's namespace,
    else p4kube-system."""
    import os

    ns = os.environ.get("POD_NAMESPACE", "").strip()
    if ns:
        return ns
    try:
        from kubernetes import config as k8s_config

        contexts, active = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
        if context:  # --context: that context's namespace, as kubectl takes it
            active = next((c for c in contexts or () if c.get("name") == context), None)
        ns = str(((active or {}).get("context") or {}).get("namespace") or "")
    except Exception:  # noqa: BLE001 - no kubeconfig (in a Pod): fall back to the default
        ns = ""
    return ns or DEFAULT_NAMESPACE


def intent_namespaces(given: Sequence[str] | None, kubeconfig: str | None = None, context: str | None = None) -> list[str]:
    """--intent-namespace values (repeatable, comma-separated; "*": all) or the default."""
    names = [n.strip() for value in (given or ()) for n in value.split(",") if n.strip()]
    return names or [default_intent_namespace(kubeconfig, context)]
