"""The three patch formats of PATCH requests (apply lives in managed.py).

- JSON merge patch (RFC 7386): null deletes a key (a no-op when it is missing), lists are replaced.
- JSON patch (RFC 6902): add/remove/replace/move/copy/test with JSON pointers (`~1` is `/`);
  any failing operation makes the whole patch fail (the server answers a generic 422, fixture 06/6-7).
- Strategic merge patch: like merge patch, but lists with a patch merge key merge item by item
  (Service ports by `port`, Node addresses and conditions by `type`), with the `$patch`,
  `$setElementOrder/`, `$deleteFromPrimitiveList/` and `$retainKeys` directives.
"""

from __future__ import annotations

import copy
from typing import Any

from .schema import ANY, ListOf, Node, child


class PatchError(ValueError):
    """The patch document cannot be applied (JSON patch failures)."""


class PatchFormatError(ValueError):
    """The patch document itself is malformed (HTTP 400)."""


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# ---- JSON patch -----------------------------------------------------------------------------


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchError(f"invalid JSON pointer {path!r}")
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _container(doc: Any, parts: list[str]) -> tuple[Any, str]:
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise PatchError("path does not exist")
    if not parts:
        raise PatchError("cannot operate on the document root")
    return cur, parts[-1]


def _get(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for p in parts:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise PatchError("path does not exist")
    return cur


def _add(doc: Any, parts: list[str], value: Any) -> None:
    parent, last = _container(doc, parts)
    if isinstance(parent, dict):
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        if last == "-":
            parent.append(copy.deepcopy(value))
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), copy.deepcopy(value))
        else:
            raise PatchError("index out of range")
    else:
        raise PatchError("parent is not a container")


def _remove(doc: Any, parts: list[str]) -> Any:
    parent, last = _container(doc, parts)
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise PatchError("path does not exist")


def json_patch(doc: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        kind = "object" if isinstance(ops, dict) else "value"
        raise PatchFormatError(f"json: cannot unmarshal {kind} into Go value of type jsonpatch.Patch")
    out = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict):
            raise PatchFormatError("json: cannot unmarshal value into Go value of type jsonpatch.Operation")
        kind = op.get("op")
        parts = _pointer(op.get("path"))
        if kind == "add":
            _add(out, parts, op.get("value"))
        elif kind == "remove":
            _remove(out, parts)
        elif kind == "replace":
            parent, last = _container(out, parts)
            if isinstance(parent, dict) and last in parent:
                parent[last] = copy.deepcopy(op.get("value"))
            elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
                parent[int(last)] = copy.deepcopy(op.get("value"))
            else:
                raise PatchError("replace operation does not apply: doc is missing key")
        elif kind == "move":
            value = _remove(out, _pointer(op.get("from")))
            _add(out, parts, value)
        elif kind == "copy":
            _add(out, parts, _get(out, _pointer(op.get("from"))))
        elif kind == "test":
            if _get(out, parts) != op.get("value"):
                raise PatchError("testing value failed")
        else:
            raise PatchError(f"unexpected operation {kind!r}")
    return out


# ---- strategic merge patch -------------------------------------------------------------------


def strategic_merge(original: Any, patch: Any, node: Node) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    out = copy.deepcopy(original) if isinstance(original, dict) else {}
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value if isinstance(value, list) else []
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(out.get(field), list) and isinstance(value, list):
                out[field] = [v for v in out[field] if v not in value]
            continue
        if value is None:
            out.pop(key, None)
            continue
        sub = child(node, key) or ANY
        if isinstance(value, list):
            merged_list = _merge_list(out.get(key), value, sub)
            out[key] = merged_list
        elif isinstance(value, dict):
            merged = strategic_merge(out.get(key), value, sub)
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        else:
            out[key] = copy.deepcopy(value)
    for field, order in orders.items():
        sub = child(node, field)
        if isinstance(out.get(field), list) and isinstance(sub, ListOf):
            out[field] = _reorder(out[field], order, sub)
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        out = {k: v for k, v in out.items() if k in retain}
    return out


def _merge_list(original: Any, patch: list[Any], node: Node) -> list[Any]:
    if not isinstance(node, ListOf) or (node.smp_key is None and not node.smp_merge_primitives):
        return [_strip_directives(x) for x in patch if not (isinstance(x, dict) and x.get("$patch"))]
    if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
        return [_strip_directives(x) for x in patch if not (isinstance(x, dict) and "$patch" in x)]
    out = copy.deepcopy(original) if isinstance(original, list) else []
    if node.smp_key is None:  # merge a list of scalars: union, original order first
        for v in patch:
            if v not in out:
                out.append(copy.deepcopy(v))
        return out
    key = node.smp_key
    for item in patch:
        if not isinstance(item, dict):
            continue
        match = next((i for i, x in enumerate(out) if isinstance(x, dict) and x.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            out = [x for x in out if not (isinstance(x, dict) and x.get(key) == item.get(key))]
        elif match is None:
            out.append(_strip_directives(item))
        else:
            merged = strategic_merge(out[match], item, node.item)
            if merged is None:
                del out[match]
            else:
                out[match] = merged
    return out


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _reorder(items: list[Any], order: list[Any], node: ListOf) -> list[Any]:
    key = node.smp_key

    def ident(x: Any) -> Any:
        return x.get(key) if key and isinstance(x, dict) else x

    wanted = [ident(o) for o in order]
    ranked = [x for w in wanted for x in items if ident(x) == w]
    return ranked + [x for x in items if ident(x) not in wanted]
