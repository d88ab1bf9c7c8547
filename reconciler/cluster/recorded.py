"""Cluster state from a recorded file, for CI and the demo.

Reads what `kubectl get services,endpointslices,nodes -A -o yaml` prints (a `kind: List`), a
multi-document YAML of the same objects or Lists, or the JSON equivalent (`-o json`, or an API
list response such as ServiceList, whose items carry no `kind`).

Only a whole cluster is read (DESIGN.md 6.1: input that is not a whole cluster is an error, never
"a cluster without Services"): an empty, `null` or comment-only file is refused, and so is every
document that is not whole. kubectl prints a List's keys sorted, `apiVersion`, `items`, `kind`,
`metadata`, so a recording cut short while it is written lacks the `kind` after its items: each
document needs a `kind`, and a list its `items`. A recording with Services on nodes but no Node
at all (`kubectl get services,endpointslices`) is refused too. A cut at a document boundary of a
multi-document file cannot be seen in the text; reconciler.cluster.followed waits for a file to
settle before it reads it.

Files can be big (50k endpoints are about 14 MB of YAML), so the text is parsed once straight into
plain data, keeping no positions; only when something in the objects is wrong is it composed a
second time to turn the object paths of the errors into line and column. Plain kubectl-shaped
text takes the fast paths: YAML first through reconciler.cluster.blockyaml (a line reader for
exactly what kubectl prints), then reconciler.cluster.fastload (libyaml's events through PyYAML);
JSON through orjson. Anything else, and every error, goes through the full loaders here
(_EventBuilder over ruamel's events, the json module), which alone word the errors: every path
gives the same data. Measured at 5,000 Services and 50k endpoints (bench/bench_cluster_load.py):
YAML 1.1 s CPU against 2.4 s with libyaml's events and 5.4 s with the full loader, JSON 0.5 s
against 0.6 s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, StreamMark, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode
from ruamel.yaml.nodes import Node as YamlNode
from ruamel.yaml.resolver import VersionedResolver

from reconciler.gcpause import gc_paused
from reconciler.cluster import blockyaml, fastload
from reconciler.cluster.fastload import Unusual
from reconciler.cluster.convert import (
    ConversionError,
    Path,
    assemble_state,
    endpoint_slice_from_dict,
    format_path,
    object_name,
    read_node,
    service_from_dict,
)
from reconciler.cluster.model import ClusterIssue, ClusterState, Node, Service
from reconciler.diagnostics import Diagnostic, InputError
from reconciler.inputlimits import (
    RECORDING_MAX_ALIAS_NODES,
    RECORDING_MAX_BYTES_ENV,
    RECORDING_MAX_DEPTH,
    DeepInput,
    TooLarge,
    load_json,
    read_bounded,
    recording_max_bytes,
)
from reconciler.k8snames import object_name_problem

KINDS = ("Service", "EndpointSlice", "Node")
_EXPECTED = "expected the output of `kubectl get services,endpointslices,nodes -A -o yaml`"
_NOT_A_LIST = f"not a List of Services, EndpointSlices and Nodes ({_EXPECTED})"
# kubectl prints a List's keys sorted (apiVersion, items, kind, metadata): a file cut short
# while it is written has items but not the `kind: List` after them.
_CUT_SHORT = "no kind after the items: a recording cut short? (kubectl prints `kind: List` after them)"


def load_cluster_file(path: str | os.PathLike[str]) -> ClusterState:
    """Read a recorded cluster; raise InputError with file:line:column for anything malformed."""
    return load_cluster_bytes(read_cluster_file(path), os.fspath(path))


def read_cluster_file(path: str | os.PathLike[str]) -> bytes:
    """A recording's bytes, unparsed (load_cluster_bytes reads them); InputError naming the file
    when it cannot be read or is larger than the limit."""
    file = os.fspath(path)
    try:
        return read_bounded(file, recording_max_bytes())
    except TooLarge as e:
        raise InputError([Diagnostic(file, 1, 1, e.message(RECORDING_MAX_BYTES_ENV))]) from None
    except OSError as e:
        raise InputError([Diagnostic(file, 1, 1, f"cannot read the file: {e.strerror or e}")]) from e


def load_cluster_bytes(raw: bytes, file: str = "<bytes>") -> ClusterState:
    """As load_cluster_file, for the file's bytes already read (`file` names it in messages)."""
    limit = recording_max_bytes()
    if len(raw) > limit:
        raise InputError([Diagnostic(file, 1, 1, TooLarge(len(raw), limit).message(RECORDING_MAX_BYTES_ENV))])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise InputError([Diagnostic(file, line, col, "the file is not UTF-8 text")]) from e
    return load_cluster_text(text, file)


def load_cluster_text(text: str, file: str = "<string>", *, fast: bool = True) -> ClusterState:
    """As load_cluster_file, for text already in memory; `file` names it in messages.

    fast=False reads with the full loaders only (ruamel's events and the json module, with the
    garbage collector running), as before reconciler.cluster.fastload: the reference that the
    fast paths are tested and measured against. Both give the same state and the same errors."""
    if not fast:
        return _load(text, file, fast=False)
    with gc_paused():  # see reconciler.gcpause
        return _load(text, file, fast=True)


def _load(text: str, file: str, *, fast: bool) -> ClusterState:
    docs = _parse(text, file, fast=fast) if text.strip() else []
    if all(doc is None for doc in docs):
        raise InputError([Diagnostic(file, 1, 1, f"{_nothing_in(text, docs)}: no cluster state to read ({_EXPECTED})")])
    reader = _Reader()
    for i, doc in enumerate(docs):
        reader.read_document(i, doc)
    if reader.errors:
        raise InputError(_locate(text, file, reader.errors))
    missing_nodes = _nodes_missing(reader)
    if missing_nodes:
        raise InputError([Diagnostic(file, 1, 1, missing_nodes)])
    rvs = {rv for rv in reader.list_versions if rv}
    return assemble_state(
        reader.services,
        reader.slices,
        reader.nodes,
        resource_version=rvs.pop() if len(rvs) == 1 else None,
        issues=reader.issues,
    )


def _nothing_in(text: str, docs: list[Any]) -> str:
    if not text:
        return "the file is empty"
    if not text.strip():
        return "the file holds only whitespace"
    if not docs:
        return "the file holds only comments"
    return "the file holds only null" if len(docs) == 1 else "every document of the file is null"


def _nodes_missing(reader: _Reader) -> str | None:
    """A recording with Services whose endpoints run on nodes, but no Node at all, is not a
    whole cluster (e.g. `kubectl get services,endpointslices`): render would lose every node."""
    if reader.nodes or not reader.services:
        return None
    named = sorted({ep.node for sl in reader.slices for ep in sl.endpoints})
    if not named:
        return None
    shown = ", ".join(named[:5]) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
    return (
        f"not a whole cluster: {len(reader.services)} Service(s) with endpoints on {len(named)} node(s) "
        f"({shown}) but no Node objects ({_EXPECTED})"
    )


# --- parsing ------------------------------------------------------------------------------------


def _is_json(text: str) -> bool:
    stripped = text.lstrip()
    return stripped.startswith(("{", "["))


def _parse(text: str, file: str, *, fast: bool = True) -> list[Any]:
    if _is_json(text):
        # orjson is several times faster than the json module, which an order of magnitude
        # faster than a YAML parser on big lists. Where orjson refuses the text, the json module
        # reads it (NaN, big integers) or words the error, as before.
        if fast:
            try:
                return [fastload.json_document(text, RECORDING_MAX_DEPTH)]
            except Unusual:
                pass
        try:
            return [load_json(text, file, RECORDING_MAX_DEPTH, strict=False)]
        except DeepInput as e:
            raise InputError([e.diagnostic]) from None
        except json.JSONDecodeError as e:
            raise InputError([Diagnostic(file, e.lineno, e.colno, f"JSON syntax error: {e.msg}")]) from e
    builder = _EventBuilder()
    try:
        # The line reader first (kubectl's block YAML, without an object per event), then
        # libyaml's events; text neither takes goes to the full loader, which words the errors.
        for fast_path in (blockyaml.yaml_documents, fastload.yaml_documents) if fast else ():
            try:
                return fast_path(text, builder.plain_data, RECORDING_MAX_DEPTH)
            except Unusual:
                pass
        return builder.documents(text)
    except _DataError as e:
        raise InputError([Diagnostic(file, e.line, e.column, f"invalid YAML: {e.message}")]) from e
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        what = " ".join(p for p in (e.context, e.problem) if p) or "syntax error"
        raise InputError([Diagnostic(file, line, col, f"invalid YAML: {what}")]) from e
    except YAMLError as e:  # unmarked errors (e.g. a bad character in the reader)
        raise InputError([Diagnostic(file, 1, 1, f"invalid YAML: {e}")]) from e


class _DataError(Exception):
    def __init__(self, mark: Any, message: str) -> None:
        self.line, self.column = mark.line + 1, mark.column + 1
        self.message = message
        super().__init__(message)


class _FixedVersionResolver(VersionedResolver):
    # The stock property looks the version up through a chain of attribute errors on every
    # scalar. Files are read as YAML 1.2, ruamel's default and what kubectl prints.
    @property
    def processing_version(self) -> Any:
        return (1, 2)


class _EventBuilder:
    """Builds documents from ruamel.yaml's parser events, as its safe loader would.

    ruamel's parser (libyaml's when ruamel.yaml.clib is installed), resolver and safe
    constructor do the YAML work; only composing is ours. That skips the node graph the safe
    loader builds first, which is most of its time: at 50k endpoints 2 s instead of 16 s with
    libyaml. Plain scalars are resolved once per distinct value (keys and states repeat).
    It also keeps the output plain data: tags other than the standard scalar, map and seq tags
    are refused, duplicate keys are errors, and an alias shares its anchor's object (as the
    safe loader does) rather than copying it, so alias bombs stay small.
    """

    def __init__(self) -> None:
        self._yaml = YAML(typ="safe", pure=False)
        self._yaml.Resolver = _FixedVersionResolver
        self._cache: dict[str, Any] = {}
        self._implicit = fastload.implicit_matchers(self._yaml.resolver)

    def _plain(self, value: str, mark: Any) -> Any:
        try:
            return self._cache[value]
        except KeyError:
            pass
        tag = str(self._yaml.resolver.resolve(ScalarNode, value, (True, False)))
        out = self._construct(tag, value, mark)
        self._cache[value] = out
        return out

    def plain_data(self, value: str) -> Any:
        """A plain scalar's value for fastload: Unusual where it is not plain data (a merge key,
        a tag other than the standard scalar ones), for the full loader to refuse in its words."""
        if self._implicit is not None and fastload.plainly_str(self._implicit, value):
            return value  # most are (names, uids, addresses): without the resolver's overhead
        try:
            out = self._plain(value, _NO_MARK)
        except _DataError:
            raise Unusual(value) from None
        if out is _MERGE:
            raise Unusual("a merge key")
        return out

    def _construct(self, tag: str, value: str, mark: Any) -> Any:
        if tag == _STR_TAG:
            return value
        if tag == _MERGE_TAG:
            return _MERGE
        if tag not in _SCALAR_TAGS:
            raise _DataError(mark, f"tag {tag} is not accepted (only plain data)")
        return self._yaml.constructor.construct_object(ScalarNode(tag, value, start_mark=mark), deep=True)

    def documents(self, text: str) -> list[Any]:
        get = self._yaml.parse(text).__next__
        docs: list[Any] = []
        get()  # StreamStartEvent
        while type(get()) is not StreamEndEvent:  # a DocumentStartEvent
            docs.append(self._document(get))
        return docs

    def _document(self, get: Any) -> Any:
        stack: list[Any] = []  # open containers
        keys: list[Any] = []  # per open container: its pending key (_NO_KEY when none)
        merges: list[list[Any]] = []  # per open container: merge-key values to apply at its end
        starts: list[Any] = []  # per open container: where it starts, for messages
        anchors: dict[str, Any] = {}
        # Bounds (inputlimits): nesting depth, also through aliases, and how many nodes aliases
        # add. Per open container: the height of its tallest child and the node count at its start.
        heights: list[int] = []
        opened: list[tuple[int, str | None]] = []  # node count and anchor at the container's start
        anchored: dict[str, tuple[int, int]] = {}  # anchor -> (height, expanded node count)
        expanded = 0  # nodes of the document as if every alias were a copy
        written = 0  # nodes written in the text
        root: Any = None
        while True:
            ev = get()
            cls = type(ev)
            height = 0
            if cls is ScalarEvent:
                mark = ev.start_mark
                expanded += 1
                written += 1
                if ev.tag is not None and str(ev.tag) != "!":
                    value = self._construct(str(ev.tag), ev.value, mark)
                elif ev.implicit[0] or ev.tag is not None:  # plain, or "!" (ruamel resolves it too)
                    value = self._plain(ev.value, mark)
                else:
                    value = ev.value
                if ev.anchor is not None:
                    anchors[ev.anchor] = value
                    anchored[ev.anchor] = (0, 1)
            elif cls is MappingStartEvent or cls is SequenceStartEvent:
                if len(stack) >= RECORDING_MAX_DEPTH:
                    raise _DataError(ev.start_mark, f"nests deeper than {RECORDING_MAX_DEPTH} levels; refused")
                expanded += 1
                written += 1
                heights.append(0)
                opened.append((expanded, ev.anchor))
                container: Any = {} if cls is MappingStartEvent else []
                if ev.tag is not None and str(ev.tag) not in (
                    "!",
                    _MAP_TAG if cls is MappingStartEvent else _SEQ_TAG,
                ):
                    raise _DataError(ev.start_mark, f"tag {ev.tag} is not accepted (only plain data)")
                if ev.anchor is not None:
                    anchors[ev.anchor] = container
                stack.append(container)
                keys.append(_NO_KEY)
                merges.append([])
                starts.append(ev.start_mark)
                continue
            elif cls is MappingEndEvent or cls is SequenceEndEvent:
                value = stack.pop()
                mark = starts.pop()
                keys.pop()
                height = heights.pop() + 1
                at_start, anchor = opened.pop()
                if anchor is not None:
                    anchored[anchor] = (height, expanded - at_start + 1)
                for source in merges.pop():  # explicit keys win, then earlier merge sources
                    for k, v in source.items():
                        value.setdefault(k, v)
            elif cls is AliasEvent:
                mark = ev.start_mark
                if ev.anchor not in anchors:
                    raise _DataError(ev.start_mark, f"alias *{ev.anchor} names no anchor before it")
                value = anchors[ev.anchor]
                if any(value is open_ for open_ in stack):
                    raise _DataError(mark, f"recursive alias: *{ev.anchor} is inside its own anchor; refused")
                height, size = anchored[ev.anchor]
                expanded += size
                if expanded - written > RECORDING_MAX_ALIAS_NODES:
                    raise _DataError(
                        mark,
                        f"aliases expand the document by more than {RECORDING_MAX_ALIAS_NODES} nodes; refused (an alias bomb?)",
                    )
                if len(stack) + height > RECORDING_MAX_DEPTH:
                    raise _DataError(mark, f"nests deeper than {RECORDING_MAX_DEPTH} levels through alias *{ev.anchor}; refused")
            elif cls is DocumentEndEvent:
                return root
            else:
                raise _DataError(ev.start_mark, f"unexpected {cls.__name__}")
            if not stack:
                root = value
                continue
            heights[-1] = max(heights[-1], height)
            top = stack[-1]
            if type(top) is list:
                top.append(value)
            elif keys[-1] is _NO_KEY:
                if isinstance(value, dict | list):
                    raise _DataError(mark, "a mapping key must be a scalar")
                keys[-1] = (value, mark)
            else:
                key, key_mark = keys[-1]
                keys[-1] = _NO_KEY
                if key is _MERGE:
                    merges[-1].extend(_merge_sources(value, mark))
                elif key in top:
                    raise _DataError(key_mark, f"duplicate key {key!r}")
                else:
                    top[key] = value


def _merge_sources(value: Any, mark: Any) -> list[dict[Any, Any]]:
    sources = value if isinstance(value, list) else [value]
    if not all(isinstance(s, dict) for s in sources):
        raise _DataError(mark, "a merge key (<<) needs a mapping or a list of mappings")
    return sources


_NO_KEY = object()
_NO_MARK = StreamMark("", 0, 0, 0)  # where fastload resolves a scalar (it keeps no positions)
_MERGE = object()
_TAG = "tag:yaml.org,2002:"
_STR_TAG, _MAP_TAG, _SEQ_TAG, _MERGE_TAG = _TAG + "str", _TAG + "map", _TAG + "seq", _TAG + "merge"
_SCALAR_TAGS = frozenset(_TAG + t for t in ("null", "bool", "int", "float", "timestamp"))


# --- walking documents -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Error:
    doc: int
    path: Path
    message: str
    field: str = ""


class _Reader:
    """Sorts the objects of every document by kind and converts them, collecting all errors."""

    def __init__(self) -> None:
        self.services: list[Service] = []
        self.slices: list[Any] = []
        self.nodes: list[Node] = []
        self.issues: list[ClusterIssue] = []
        self.errors: list[_Error] = []
        self.list_versions: list[str] = []
        self._seen: dict[tuple[str, str, str], tuple[int, Path]] = {}

    def read_document(self, doc_index: int, doc: Any) -> None:
        if doc is None:  # an empty document, e.g. after a trailing `---`
            return
        if not isinstance(doc, Mapping):
            self.errors.append(_Error(doc_index, (), f"{_NOT_A_LIST}; found a {type(doc).__name__}"))
            return
        kind = doc.get("kind")
        if kind in KINDS:
            self._read_object(doc_index, (), doc, kind)
            return
        if not isinstance(kind, str) or not kind.endswith("List"):
            if kind is None and "items" in doc:
                found = _CUT_SHORT
            else:
                found = f"kind {kind!r}" if kind is not None else "no kind"
            self.errors.append(_Error(doc_index, (), f"{_NOT_A_LIST}; found {found}"))
            return
        if "items" not in doc:
            self.errors.append(_Error(doc_index, (), f"a {kind} without items: a list must have an `items` key"))
            return
        # kubectl prints `kind: List` with kinds on the items; the API's typed lists
        # (ServiceList, ...) leave the items' kind out.
        implied = kind[: -len("List")] or None
        meta = doc.get("metadata")
        if isinstance(meta, Mapping) and isinstance(meta.get("resourceVersion"), str):
            self.list_versions.append(meta["resourceVersion"])
        items = doc.get("items")
        if items is None:
            return
        if not isinstance(items, list):
            self.errors.append(_Error(doc_index, ("items",), "expected a list of objects", "items"))
            return
        for i, item in enumerate(items):
            at: Path = ("items", i)
            if not isinstance(item, Mapping):
                self.errors.append(_Error(doc_index, at, "expected an object (a mapping)", format_path(at)))
                continue
            item_kind = item.get("kind") or implied
            if item_kind is None:
                self.errors.append(
                    _Error(doc_index, at + ("kind",), "is required", format_path(at + ("kind",)))
                )
            elif item_kind in KINDS:
                self._read_object(doc_index, at, item, item_kind)
            else:
                self.issues.append(_ignored_kind(item_kind, item))

    def _read_object(self, doc_index: int, at: Path, obj: Mapping[str, Any], kind: str) -> None:
        try:
            namespace, name = object_name(obj, namespaced=kind != "Node")
            bad = object_name_problem(kind, namespace, name)
            if bad is not None:  # a real API server never returns it: a forged or broken recording
                field = "namespace" if bad.startswith("metadata.namespace") else "name"
                shown = _shown(namespace if field == "namespace" else name)
                full = at + ("metadata", field)
                self.errors.append(_Error(doc_index, full, f"{bad.split(' ', 1)[1]}: {shown}", format_path(full)))
                return
            key = (kind, namespace, name)
            if key in self._seen:
                first_doc, first_at = self._seen[key]
                where = format_path(first_at) or "the document"
                if first_doc != doc_index:
                    where += f" of document {first_doc + 1}"
                label = f"{namespace}/{name}" if namespace else name
                self.errors.append(
                    _Error(doc_index, at, f"duplicate {kind} {label} (first at {where})", format_path(at))
                )
                return
            self._seen[key] = (doc_index, at)
            if kind == "Service":
                self.services.append(service_from_dict(obj))
            elif kind == "EndpointSlice":
                self.slices.append(endpoint_slice_from_dict(obj))
            else:
                node, issues = read_node(obj)
                self.nodes.append(node)
                self.issues.extend(issues)
        except ConversionError as e:
            full = at + e.path
            label = _describe(kind, obj)
            self.errors.append(_Error(doc_index, full, f"{e.message} ({label})", format_path(full)))


def _shown(value: str, limit: int = 80) -> str:
    """A value from the file in a message: quoted, escaped (repr) and cut."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(kind: str, obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    ns = meta.get("namespace") if isinstance(meta, Mapping) else None
    if isinstance(name, str) and name:
        return f"{kind} {ns}/{name}" if isinstance(ns, str) and ns else f"{kind} {name}"
    return f"a {kind} without a name"


def _ignored_kind(kind: object, obj: Mapping[str, Any]) -> ClusterIssue:
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    ns = meta.get("namespace") if isinstance(meta, Mapping) else None
    label = "/".join(str(p) for p in (ns, name) if p) or "(unnamed)"
    return ClusterIssue(f"{kind} {label}", f"kind {kind} is not read (only {', '.join(KINDS)}); ignored")


# --- positions for errors ----------------------------------------------------------------------


def _locate(text: str, file: str, errors: list[_Error]) -> list[Diagnostic]:
    """Turn object paths into line:column by composing the text again (error path only)."""
    try:
        roots: list[YamlNode | None] = list(YAML(typ="safe", pure=False).compose_all(text))
    except YAMLError:  # JSON that YAML cannot read (rare): fall back to the file's start
        roots = []
    out = []
    for err in errors:
        line, col = 1, 1
        root = roots[err.doc] if err.doc < len(roots) else None
        if root is not None:
            node = _walk(root, err.path)
            line, col = node.start_mark.line + 1, node.start_mark.column + 1
        out.append(Diagnostic(file, line, col, err.message, err.field))
    return out


def _walk(node: YamlNode, path: Path) -> YamlNode:
    """The value at path; for a missing field, the key of its deepest existing parent field."""
    key: YamlNode | None = None  # the key node that introduced `node`, when it is a mapping value
    for part in path:
        entry = None
        if isinstance(node, MappingNode) and isinstance(part, str):
            entry = next(((k, v) for k, v in node.value if k.value == part), None)
        elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            entry = (None, node.value[part])
        if entry is None:
            return key if key is not None else node
        key, node = entry
    return node
