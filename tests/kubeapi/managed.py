"""managedFields: field sets, ownership on Update and Apply, and server-side apply merging.

Follows structured-merge-diff as kube-apiserver uses it (fixtures 02, 06, 07, 10):
- a field set is a set of paths; a path is a tuple of elements `f:<field>`, `k:<json key>`,
  `v:<json value>`; FieldsV1 is its trie, where "." marks a node that is itself a member;
- Update: the manager gains what the write added or changed (compared with the live object);
  other managers lose those fields and everything the write removed; an entry with no fields left
  disappears; its `time` moves only when it gained something;
- Apply: the manager owns exactly the fields of its configuration; values owned by other managers
  that the apply would change are conflicts (409) unless force; fields it alone owned before and
  no longer sends are removed from the object;
- entries are keyed by manager + operation (+ apiVersion for Update) + subresource, and sorted as
  the server sorts them (Apply before Update, then time, then manager).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError, Cause
from .schema import ANY, Deduced, ListOf, Node, Struct, child, is_leaf

Path = tuple[str, ...]
FieldSet = frozenset[Path]

# Never tracked (stripMetaManager in kube-apiserver): exact paths, not prefixes.
STRIPPED: frozenset[Path] = frozenset(
    [("f:apiVersion",), ("f:kind",), ("f:metadata",)]
    + [
        ("f:metadata", f"f:{name}")
        for name in (
            "name",
            "namespace",
            "creationTimestamp",
            "selfLink",
            "uid",
            "clusterName",
            "generation",
            "managedFields",
            "resourceVersion",
        )
    ]
)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def key_element(item: Any, keys: Sequence[str]) -> str:
    present = {k: item[k] for k in sorted(keys) if isinstance(item, dict) and k in item}
    return "k:" + _json(present)


def children(value: Any, node: Node) -> Iterator[tuple[str, Any, Node, bool]]:
    """(path element, child value, child schema, is_list_item) of a granular container."""
    if isinstance(value, dict):
        for k, v in value.items():
            sub = child(node, k)
            yield f"f:{k}", v, (sub if sub is not None else ANY), False
    elif isinstance(value, list) and isinstance(node, ListOf):
        for item in value:
            if node.kind == "map":
                yield key_element(item, node.keys), item, node.item, True
            else:
                yield "v:" + _json(item), item, node.item, True


class _Missing:
    """An absent field (a present field can hold null, which counts as present)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def _leaf(node: Node, old: Any, new: Any) -> bool:
    sample = new if new is not MISSING and new is not None else old
    if sample is MISSING or sample is None:
        return is_leaf(node, None)
    if is_leaf(node, sample):
        return True
    present = [x for x in (old, new) if x is not MISSING and x is not None]
    if len(present) == 2 and type(present[0]) is not type(present[1]):
        return True
    return isinstance(node, Deduced) and isinstance(sample, list)


@dataclass
class Comparison:
    added: set[Path] = field(default_factory=set)
    modified: set[Path] = field(default_factory=set)
    removed: set[Path] = field(default_factory=set)

    def filtered(self, drop: PathFilter) -> Comparison:
        return Comparison(
            {p for p in self.added if not drop(p)},
            {p for p in self.modified if not drop(p)},
            {p for p in self.removed if not drop(p)},
        )


def compare(old: Any, new: Any, node: Node) -> Comparison:
    out = Comparison()
    _compare(old, new, node, (), out)
    return out


def _compare(old: Any, new: Any, node: Node, path: Path, out: Comparison) -> None:
    if old is MISSING and new is MISSING:
        return
    if _leaf(node, old, new):
        if old is MISSING:
            out.added.add(path)
        elif new is MISSING:
            out.removed.add(path)
        elif old != new:
            out.modified.add(path)
        return
    old_children = {e: (v, n) for e, v, n, _ in children(old, node)} if old is not MISSING else {}
    new_children = {e: (v, n) for e, v, n, _ in children(new, node)} if new is not MISSING else {}
    for elem in old_children.keys() | new_children.keys():
        ov, on = old_children.get(elem, (MISSING, None))
        nv, nn = new_children.get(elem, (MISSING, None))
        _compare(ov, nv, nn or on or ANY, path + (elem,), out)
    if path:
        if old is MISSING:
            out.added.add(path)
        elif new is MISSING:
            out.removed.add(path)


def to_field_set(value: Any, node: Node) -> set[Path]:
    """The fields an apply configuration sets (typed.ToFieldSet)."""
    out: set[Path] = set()
    _to_field_set(value, node, (), out)
    return out


def _to_field_set(value: Any, node: Node, path: Path, out: set[Path]) -> None:
    if _leaf(node, MISSING, value):
        out.add(path)
        return
    for elem, v, sub, is_item in children(value, node):
        p = path + (elem,)
        if v is None:
            out.add(p)
            continue
        _to_field_set(v, sub, p, out)
        if is_item or isinstance(v, dict) and not v or not isinstance(node, Struct) or elem[2:] not in node.fields:
            out.add(p)


# ---- FieldsV1 -------------------------------------------------------------------------------


def encode_fields(paths: Iterable[Path]) -> dict[str, Any]:
    members = set(paths)
    trie: dict[str, Any] = {}
    for p in members:
        node = trie
        for elem in p:
            node = node.setdefault(elem, {})

    def mark(node: dict[str, Any], prefix: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if node and prefix in members:
            out["."] = {}
        for k in sorted(node):
            out[k] = mark(node[k], prefix + (k,))
        return out

    return mark(trie, ())


def decode_fields(fields: dict[str, Any], prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for k, v in fields.items():
        if k == ".":
            out.add(prefix)
            continue
        p = prefix + (k,)
        if not v:
            out.add(p)
        else:
            out |= decode_fields(v, p)
    return out


def path_string(path: Path) -> str:
    """SMD's printed form: .metadata.annotations.x, .spec.ports[port=80,protocol="TCP"]."""
    out = []
    for elem in path:
        kind, rest = elem[:2], elem[2:]
        if kind == "f:":
            out.append("." + rest)
        elif kind == "k:":
            keys = json.loads(rest)
            out.append("[" + ",".join(f"{k}={_json(v)}" for k, v in keys.items()) + "]")
        elif kind == "v:":
            out.append("[=" + rest + "]")
        else:
            out.append("[" + rest + "]")
    return "".join(out)


# ---- managers -----------------------------------------------------------------------------


@dataclass
class Entry:
    manager: str
    operation: str  # Update | Apply
    api_version: str
    subresource: str
    time: str | None
    fields: set[Path]

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.manager, self.operation, self.api_version if self.operation == "Update" else "", self.subresource)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"manager": self.manager, "operation": self.operation, "apiVersion": self.api_version}
        if self.time is not None:
            out["time"] = self.time
        out["fieldsType"] = "FieldsV1"
        out["fieldsV1"] = encode_fields(self.fields)
        if self.subresource:
            out["subresource"] = self.subresource
        return out

    def describe(self) -> str:
        """How conflict messages name a manager (printManager in kube-apiserver)."""
        text = json.dumps(self.manager)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == "Update":
            text += f" using {self.api_version}"
        return text


def decode_managed(entries: Any) -> list[Entry]:
    out = []
    for e in entries or []:
        if not isinstance(e, dict):
            continue
        out.append(
            Entry(
                manager=str(e.get("manager", "")),
                operation=str(e.get("operation", "Update")),
                api_version=str(e.get("apiVersion", "")),
                subresource=str(e.get("subresource", "")),
                time=e.get("time"),
                fields=decode_fields(e.get("fieldsV1") or {}),
            )
        )
    return out


def encode_managed(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    def order(e: Entry) -> tuple[str, str, str, str, str]:
        return (e.operation, e.time or "", e.manager, e.api_version, e.subresource)

    return [e.to_dict() for e in sorted((e for e in entries if e.fields), key=order)]


PathFilter = Any  # Callable[[Path], bool]


def make_filter(reset_prefixes: Sequence[Path]) -> PathFilter:
    """A predicate for paths the operation must not track: stripped metadata and reset fields
    (status on the main resource, spec on /status, ...)."""

    def drop(path: Path) -> bool:
        if path in STRIPPED:
            return True
        return any(path[: len(p)] == p for p in reset_prefixes)

    return drop


def update(
    entries: list[Entry],
    old: Any,
    new: Any,
    node: Node,
    *,
    manager: str,
    api_version: str,
    subresource: str,
    reset: Sequence[Path],
    now: str,
) -> list[Entry]:
    """Ownership after an Update-operation write (create, PUT, non-apply PATCH)."""
    entries = [copy.copy(e) for e in entries]
    for e in entries:
        e.fields = set(e.fields)
    diff = compare(old, new, node).filtered(make_filter(reset))
    changed = diff.added | diff.modified
    for e in entries:
        e.fields -= changed | diff.removed
    if changed:
        key = Entry(manager, "Update", api_version, subresource, None, set()).key
        mine = next((e for e in entries if e.key == key), None)
        if mine is None:
            mine = Entry(manager, "Update", api_version, subresource, now, set())
            entries.append(mine)
        mine.fields |= changed
        mine.time = now
    return [e for e in entries if e.fields]


def conflict_error(conflicts: list[tuple[Entry, Path]]) -> ApiError:
    conflicts = sorted(conflicts, key=lambda c: (c[0].describe(), path_string(c[1])))
    causes = [Cause("FieldManagerConflict", f"conflict with {e.describe()}", path_string(p)) for e, p in conflicts]
    if len(conflicts) == 1:
        e, p = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {e.describe()}: {path_string(p)}"
    else:
        lines: list[str] = []
        by_manager: dict[str, list[str]] = {}
        for e, p in conflicts:
            by_manager.setdefault(e.describe(), []).append(path_string(p))
        for who in sorted(by_manager):
            lines.append(f"conflicts with {who}:")
            lines.extend(f"- {p}" for p in by_manager[who])
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return ApiError(409, "Conflict", message, {"causes": [c.to_dict() for c in causes]})


def apply(
    entries: list[Entry],
    live: Any,
    config: Any,
    node: Node,
    *,
    manager: str,
    api_version: str,
    subresource: str,
    reset: Sequence[Path],
    force: bool,
    now: str,
) -> tuple[Any, list[Entry], bool]:
    """Server-side apply of `config` onto `live`. Returns (new object, entries, changed)."""
    drop = make_filter(reset)
    entries = [copy.copy(e) for e in entries]
    for e in entries:
        e.fields = set(e.fields)
    key = Entry(manager, "Apply", api_version, subresource, None, set()).key
    mine = next((e for e in entries if e.key == key), None)
    last_set = set(mine.fields) if mine else set()
    new_set = {p for p in to_field_set(config, node) if not drop(p)}
    merged = merge(live, config, node)
    others = [e for e in entries if e.key != key]
    owned_by_others = set().union(*(e.fields for e in others)) if others else set()
    merged = prune(merged, last_set - new_set, owned_by_others, node)
    diff = compare(live, merged, node).filtered(drop)
    changed = diff.added | diff.modified
    conflicts = [(e, p) for e in others for p in sorted(e.fields & changed)]
    if conflicts and not force:
        raise conflict_error(conflicts)
    for e in others:
        e.fields -= changed | diff.removed
    is_change = live != merged
    if mine is None:
        mine = Entry(manager, "Apply", api_version, subresource, now, set())
        entries.append(mine)
    mine.fields = new_set
    mine.api_version = api_version
    if is_change:
        mine.time = now
    return merged, [e for e in entries if e.fields], is_change


# ---- SSA merge and prune ------------------------------------------------------------------


def merge(live: Any, config: Any, node: Node) -> Any:
    """Merge an apply configuration into the live object: scalars and atomic values from the
    configuration win, maps and structs merge per key, associative lists merge per item key
    (live order kept, new items appended), sets are unioned."""
    if config is None:
        return copy.deepcopy(live)
    if live is None or _leaf(node, live, config):
        return copy.deepcopy(config)
    if isinstance(config, dict) and isinstance(live, dict):
        out = copy.deepcopy(live)
        for k, v in config.items():
            sub = child(node, k) or ANY
            out[k] = merge(live.get(k), v, sub)
        return out
    if isinstance(config, list) and isinstance(live, list) and isinstance(node, ListOf):
        out_list = [copy.deepcopy(x) for x in live]
        index = {_item_elem(x, node): i for i, x in enumerate(out_list)}
        for item in config:
            elem = _item_elem(item, node)
            if elem in index:
                out_list[index[elem]] = merge(out_list[index[elem]], item, node.item)
            else:
                index[elem] = len(out_list)
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(config)


def _item_elem(item: Any, node: ListOf) -> str:
    return key_element(item, node.keys) if node.kind == "map" else "v:" + _json(item)


def prune(obj: Any, candidates: set[Path], keep: set[Path], node: Node) -> Any:
    """Remove the paths in `candidates` that no other manager owns (nor owns anything under)."""
    obj = copy.deepcopy(obj)
    removable = sorted((p for p in candidates if p not in keep and not any(k[: len(p)] == p for k in keep)), key=len)
    removed: list[Path] = []
    for p in removable:
        if any(p[: len(r)] == r for r in removed):
            continue
        if _remove_path(obj, p, node):
            removed.append(p)
    return obj


def _remove_path(obj: Any, path: Path, node: Node) -> bool:
    cur, cur_node = obj, node
    for elem in path[:-1]:
        found = _descend(cur, cur_node, elem)
        if found is None:
            return False
        cur, cur_node = found
    last = path[-1]
    if last.startswith("f:") and isinstance(cur, dict):
        if last[2:] in cur:
            del cur[last[2:]]
            return True
        return False
    if isinstance(cur, list) and isinstance(cur_node, ListOf):
        for i, item in enumerate(cur):
            if _item_elem(item, cur_node) == last:
                del cur[i]
                return True
    return False


def _descend(value: Any, node: Node, elem: str) -> tuple[Any, Node] | None:
    if elem.startswith("f:") and isinstance(value, dict):
        if elem[2:] not in value:
            return None
        return value[elem[2:]], child(node, elem[2:]) or ANY
    if isinstance(value, list) and isinstance(node, ListOf):
        for item in value:
            if _item_elem(item, node) == elem:
                return item, node.item
    return None
