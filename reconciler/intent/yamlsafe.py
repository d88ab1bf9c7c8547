"""Safe YAML reading that remembers where every key and value came from.

We compose ruamel.yaml's node graph ourselves instead of constructing Python objects with
its loaders, because the walk over the nodes is where the guarantees live:
- only plain data comes out (maps with string keys, lists, str/int/float/bool/None);
  any other tag is reported, never constructed;
- every duplicate key is reported (not only the first), at the second occurrence;
- alias expansion is bounded (a "billion laughs" document composes into a small graph
  but expands into billions of nodes), and recursive aliases are refused;
- every path gets the 1-based line and column of its key and of its value.

The file is checked before parsing: size (so a huge file is never read) and UTF-8.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, ReusedAnchorWarning, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from reconciler.diagnostics import Diagnostic

DEFAULT_MAX_FILE_BYTES = 1 << 20
DEFAULT_MAX_NODES = 100_000
# Deeper than any real config; keeps our walk (and ruamel's recursive composer) bounded.
MAX_DEPTH = 64

PathKey = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_MERGE_TAG = _TAG + "merge"


@dataclass(frozen=True, order=True)
class Pos:
    """A 1-based line and column."""

    line: int
    column: int


@dataclass(frozen=True)
class Located:
    """Where the key of an entry (or a list item) and its value start."""

    key: Pos
    value: Pos


@dataclass(frozen=True)
class YamlDocument:
    """One YAML document as plain data, with the position of every path in it."""

    file: str
    index: int  # 0-based position of the document in its file
    data: Any
    positions: Mapping[PathKey, Located]
    start: Pos
    # Problems found while reading this document that did not stop it (duplicate keys, tags).
    diagnostics: tuple[Diagnostic, ...] = ()

    def locate(self, path: PathKey, *, key: bool = False) -> Pos:
        """Position of `path`'s key (key=True) or value; for a path that is not in the
        document (a missing or defaulted field) the position of its nearest ancestor's key."""
        loc = self.positions.get(tuple(path))
        if loc is not None:
            return loc.key if key else loc.value
        p = tuple(path)
        while p:
            p = p[:-1]
            loc = self.positions.get(p)
            if loc is not None:
                return loc.key
        return self.start

    def has(self, path: PathKey) -> bool:
        """Whether `path` was written in the file (as opposed to missing or defaulted)."""
        return tuple(path) in self.positions


@dataclass(frozen=True)
class YamlFile:
    """Everything read from one file: its usable documents, and the problems that made the
    file or some of its documents unusable (those documents are left out)."""

    file: str
    documents: tuple[YamlDocument, ...] = ()
    diagnostics: tuple[Diagnostic, ...] = ()


_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def format_path(path: PathKey) -> str:
    """spec.switchConfig.switches[1].address; keys that are not identifiers are quoted:
    metadata.labels["app.kubernetes.io/name"]."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _SIMPLE_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += '["' + part.replace("\\", "\\\\").replace('"', '\\"') + '"]'
    return out


def value_at(data: Any, *path: str | int) -> Any:
    """The value at `path` in plain data (dict keys, list indices), or None where it stops."""
    for part in path:
        if isinstance(part, int):
            if not isinstance(data, list) or part >= len(data):
                return None
        elif not isinstance(data, dict):
            return None
        data = data[part] if isinstance(part, int) else data.get(part)
    return data


def read_yaml_file(
    path: str | Path,
    display: str | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> YamlFile:
    """Read every document of a YAML file. Never raises for bad input: problems are returned
    as diagnostics (named by `display`, the path as the user should see it)."""
    name = display if display is not None else str(path)
    try:
        with open(path, "rb") as f:
            # Read one byte past the limit instead of trusting stat(): the size is checked
            # before anything is parsed, and a file growing meanwhile cannot slip through.
            raw = f.read(max_bytes + 1)
    except OSError as e:
        return YamlFile(name, diagnostics=(Diagnostic(name, 1, 1, f"cannot read file: {e.strerror or e}"),))
    if len(raw) > max_bytes:
        size = _file_size(path)
        got = f"{size} bytes" if size is not None else "more than that"
        return YamlFile(
            name,
            diagnostics=(Diagnostic(name, 1, 1, f"file too large: {got}, the limit is {max_bytes} bytes"),),
        )
    return parse_yaml_bytes(raw, name, max_nodes=max_nodes)


def parse_yaml_bytes(raw: bytes, file: str, *, max_nodes: int = DEFAULT_MAX_NODES) -> YamlFile:
    """Decode (strict UTF-8) and parse; see parse_yaml_text."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        column = len(raw[line_start : e.start].decode("utf-8", errors="replace")) + 1
        bad = raw[e.start]
        msg = f"invalid UTF-8 byte 0x{bad:02x}: intent files must be UTF-8 encoded"
        return YamlFile(file, diagnostics=(Diagnostic(file, line, column, msg),))
    return parse_yaml_text(text, file, max_nodes=max_nodes)


def parse_yaml_text(text: str, file: str, *, max_nodes: int = DEFAULT_MAX_NODES) -> YamlFile:
    """Parse every document of `text`. Documents before a syntax error are kept."""
    if text.startswith("\ufeff"):
        text = text[1:]
    too_deep = _flow_too_deep(text, file)
    if too_deep is not None:
        return YamlFile(file, diagnostics=(too_deep,))
    yaml = YAML(typ="safe", pure=True)
    documents: list[YamlDocument] = []
    diags: list[Diagnostic] = []
    try:
        with warnings.catch_warnings():
            # A reused anchor is legal YAML (the later definition wins); not worth a warning.
            warnings.simplefilter("ignore", ReusedAnchorWarning)
            for index, node in enumerate(yaml.compose_all(io.StringIO(text))):
                if _is_empty(node):  # e.g. after a trailing '---', or only comments
                    continue
                doc = _Builder(file, max_nodes, yaml).document(node, index)
                if isinstance(doc, Diagnostic):
                    diags.append(doc)
                else:
                    documents.append(doc)
    except MarkedYAMLError as e:
        diags.append(_syntax_diagnostic(file, e, text))
    except ReaderError as e:
        line, column = _line_col(text, e.position)
        diags.append(Diagnostic(file, line, column, f"unacceptable character #x{e.character:04x}: only printable characters are allowed"))
    except YAMLError as e:
        diags.append(Diagnostic(file, 1, 1, f"YAML error: {e}"))
    except RecursionError:
        diags.append(Diagnostic(file, 1, 1, "document nests too deeply to parse"))
    return YamlFile(file, tuple(documents), tuple(diags))


def _flow_too_deep(text: str, file: str) -> Diagnostic | None:
    """Refuse deeply nested flow collections ([[[[...) before ruamel sees them: its scanner
    takes time quadratic in the flow depth (about 1 s at depth 1000). Counting brackets
    outside comments over-counts only for brackets inside strings, which a real config
    never nests 64 deep."""
    depth = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not any(c in line for c in "[]{}"):
            continue
        for column, char in enumerate(line, 1):
            if char == "#" and (column == 1 or line[column - 2] in " \t"):
                break
            if char in "[{":
                depth += 1
                if depth > MAX_DEPTH:
                    return Diagnostic(file, number, column, f"document nests deeper than {MAX_DEPTH} levels")
            elif char in "]}" and depth:
                depth -= 1
    return None


def _is_empty(node: Node | None) -> bool:
    return node is None or (isinstance(node, ScalarNode) and node.tag == _TAG + "null" and node.value == "")


def _file_size(path: str | Path) -> int | None:
    try:
        return Path(path).stat().st_size
    except OSError:
        return None


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


def _syntax_diagnostic(file: str, e: MarkedYAMLError, text: str) -> Diagnostic:
    mark = e.problem_mark or e.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    problem = e.problem or e.context or "invalid YAML"
    if mark is not None and 0 <= mark.index < len(text) and text[mark.index] == "\t":
        return Diagnostic(file, line, column, "tab character: YAML indents and separates with spaces, not tabs")
    msg = f"YAML syntax error: {problem}"
    if e.context and e.problem and e.context_mark is not None:
        where = f"line {e.context_mark.line + 1}, column {e.context_mark.column + 1}"
        msg += f" ({e.context} started at {where})"
    return Diagnostic(file, line, column, msg)


class _Abort(Exception):
    """Stops a document that cannot be used at all (alias bomb, recursive alias, depth)."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(str(diagnostic))
        self.diagnostic = diagnostic


def _pos(node: Node) -> Pos:
    return Pos(node.start_mark.line + 1, node.start_mark.column + 1)


def _children(node: Node, path: PathKey, site: Pos) -> list[tuple[Node, PathKey, Pos]]:
    """A node's children (mapping keys included), each with its path and the position that
    best shows where it is used: a mapping value's key, else the enclosing site."""
    out: list[tuple[Node, PathKey, Pos]] = []
    if isinstance(node, MappingNode):
        for k, v in node.value:
            name = str(k.value) if isinstance(k, ScalarNode) else "?"
            out += [(k, path, site), (v, (*path, name), _pos(k))]
    elif isinstance(node, SequenceNode):
        out = [(item, (*path, i), site) for i, item in enumerate(node.value)]
    return out


@dataclass
class _Expansion:
    """Measures how many nodes a document expands to, without expanding it.

    The composed graph shares aliased nodes, so it is small even for a billion laughs;
    memoized sizes over it give the expanded size in time linear in the graph."""

    file: str
    sizes: dict[int, int] = field(default_factory=dict)
    active: set[int] = field(default_factory=set)

    def size(self, node: Node, path: PathKey, site: Pos, depth: int) -> int:
        ident = id(node)
        if ident in self.sizes:
            return self.sizes[ident]
        if ident in self.active:
            raise _Abort(Diagnostic(self.file, site.line, site.column, "recursive alias: a node contains itself", format_path(path)))
        if depth > MAX_DEPTH:
            raise _Abort(Diagnostic(self.file, site.line, site.column, f"document nests deeper than {MAX_DEPTH} levels", format_path(path)))
        self.active.add(ident)
        total = 1
        for child, child_path, child_site in _children(node, path, site):
            total += self.size(child, child_path, child_site, depth + 1)
        self.active.discard(ident)
        self.sizes[ident] = total
        return total

    def check(self, root: Node, max_nodes: int) -> None:
        total = self.size(root, (), _pos(root), 0)
        if total <= max_nodes:
            return
        # Point at the innermost entry written in place (not reached through an alias)
        # that alone expands past the limit: that is where the laughs multiply.
        node: Node = root
        path: PathKey = ()
        site = _pos(root)
        while True:
            for child, child_path, child_site in _children(node, path, site):
                inside = node.start_mark.index <= child.start_mark.index < node.end_mark.index
                if inside and self.sizes[id(child)] > max_nodes:
                    if isinstance(node, SequenceNode):
                        child_site = _pos(child)
                    node, path, site = child, child_path, child_site
                    break
            else:
                break
        raise _Abort(
            Diagnostic(
                self.file,
                site.line,
                site.column,
                f"expands through aliases to {total} nodes, over the limit of {max_nodes}; "
                "refusing to load the document (an alias bomb?)",
                format_path(path),
            )
        )


@dataclass
class _Builder:
    """Turns one composed document into plain data plus positions."""

    file: str
    max_nodes: int
    yaml: YAML
    positions: dict[PathKey, Located] = field(default_factory=dict)
    diags: list[Diagnostic] = field(default_factory=list)

    def document(self, node: Node, index: int) -> YamlDocument | Diagnostic:
        start = _pos(node)
        try:
            # Bounded and acyclic before anything is expanded.
            _Expansion(self.file).check(node, self.max_nodes)
        except _Abort as stop:
            return stop.diagnostic
        data = self.build(node, (), Located(start, start))
        return YamlDocument(self.file, index, data, self.positions, start, tuple(self.diags))

    def build(self, node: Node, path: PathKey, loc: Located) -> Any:
        # setdefault: keys written in a mapping keep their positions over merged (<<) ones.
        self.positions.setdefault(path, loc)
        if isinstance(node, MappingNode):
            return self.mapping(node, path)
        if isinstance(node, SequenceNode):
            return self.sequence(node, path)
        return self.scalar(node, path)

    def mapping(self, node: MappingNode, path: PathKey) -> dict[str, Any]:
        self.check_tag(node, "map", path)
        out: dict[str, Any] = {}
        first_seen: dict[str, Pos] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            key = self.key(key_node, path)
            if key is None:
                continue
            key_pos = _pos(key_node)
            if key in first_seen:
                first = first_seen[key]
                self.diags.append(
                    Diagnostic(
                        self.file,
                        key_pos.line,
                        key_pos.column,
                        f'duplicate key "{key}" (first defined at line {first.line}, column {first.column})',
                        format_path((*path, key)),
                    )
                )
                continue
            first_seen[key] = key_pos
            child = (*path, key)
            out[key] = self.build(value_node, child, Located(key_pos, _pos(value_node)))
        # Merge keys (<<: *base): keys written in this mapping win, then earlier merged maps.
        for merge in merges:
            sources = merge.value if isinstance(merge, SequenceNode) else [merge]
            for src in sources:
                if not isinstance(src, MappingNode):
                    p = _pos(src)
                    self.diags.append(Diagnostic(self.file, p.line, p.column, "a merge key (<<) takes a mapping or a list of mappings", format_path(path)))
                    continue
                merged = self.build(src, path, Located(_pos(src), _pos(src)))
                for k, v in merged.items():
                    out.setdefault(k, v)
        return out

    def sequence(self, node: SequenceNode, path: PathKey) -> list[Any]:
        self.check_tag(node, "seq", path)
        items = []
        for i, item in enumerate(node.value):
            p = _pos(item)
            items.append(self.build(item, (*path, i), Located(p, p)))
        return items

    def key(self, node: Node, path: PathKey) -> str | None:
        if not isinstance(node, ScalarNode):
            p = _pos(node)
            self.diags.append(Diagnostic(self.file, p.line, p.column, "mapping keys must be plain scalars, not lists or mappings", format_path(path)))
            return None
        # Keys are strings in Kubernetes objects; take the text as written (so `1:` is "1").
        return str(node.value)

    def scalar(self, node: Node, path: PathKey) -> Any:
        tag = node.tag or ""
        ctor = self.yaml.constructor
        if tag == _TAG + "str":
            return node.value
        if tag == _TAG + "int":
            return ctor.construct_yaml_int(node)
        if tag == _TAG + "float":
            return ctor.construct_yaml_float(node)
        if tag == _TAG + "bool":
            return ctor.construct_yaml_bool(node)
        if tag == _TAG + "null":
            return None
        if tag == _TAG + "timestamp":
            return node.value  # as Kubernetes does: a date is just a string in JSON
        p = _pos(node)
        self.diags.append(Diagnostic(self.file, p.line, p.column, f"unsupported YAML tag {_short_tag(tag)}: only plain strings, numbers, booleans, lists and mappings are allowed", format_path(path)))
        return node.value

    def check_tag(self, node: Node, kind: str, path: PathKey) -> None:
        if node.tag != _TAG + kind:
            p = _pos(node)
            self.diags.append(Diagnostic(self.file, p.line, p.column, f"unsupported YAML tag {_short_tag(node.tag)}: only plain strings, numbers, booleans, lists and mappings are allowed", format_path(path)))


def _short_tag(tag: str | None) -> str:
    if not tag:
        return "(none)"
    return "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag
