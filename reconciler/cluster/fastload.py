"""The fast paths of reading a cluster recording (reconciler.cluster.recorded): plain data only.

A kubectl recording is plain data: block mappings and sequences of scalars, no anchors, aliases,
tags, merge keys, directives or flow collections other than `{}` and `[]`. For that shape a
lean composer over the events of PyYAML's libyaml parser (about a third faster than ruamel's
C parser at producing events, and the composer does no per-event bookkeeping for aliases) builds
the documents; at the first thing outside it, or any parse error, it gives up (Unusual) and the
caller reads the text with its full loader, which alone resolves anchors, merges and tags,
enforces the alias limits and words the errors. So both paths give the same data and the same
errors: the fast one only ever answers for text the full one reads to the same documents.

Plain scalars are resolved by the caller's `resolve` (the full loader's YAML 1.2 resolution,
cached per distinct value), so `yes`, `010` or `1:30` mean here exactly what they mean there.

JSON (`kubectl get -o json`) is parsed with orjson; see json_document.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import yaml
from yaml.events import (
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)

# libyaml's parser behind PyYAML's CSafeLoader; only its events are used (never its
# constructor, which resolves YAML 1.1 and expands merge keys without limits).
try:
    from yaml.cyaml import CParser as _CParser
except ImportError:  # PyYAML built without libyaml
    _CParser = None


class Unusual(Exception):
    """The text is not plain kubectl-shaped data (or does not parse): read it the full way."""


def yaml_documents(text: str, resolve: Callable[[str], Any], max_depth: int) -> list[Any]:
    """The documents of `text`; Unusual when it holds anything but plain data, nests deeper than
    `max_depth`, repeats a key or does not parse. `resolve` turns a plain scalar into its value,
    raising Unusual for values that are not plain data (and for the merge key)."""
    if _CParser is None:
        raise Unusual("PyYAML without libyaml")
    try:
        parser = _CParser(text)
    except ValueError as e:  # text libyaml cannot take (a lone surrogate)
        raise Unusual(str(e)) from None
    try:
        return _Composer(parser.get_event, resolve, max_depth).documents()
    except (yaml.YAMLError, ValueError) as e:  # a parse error; a scalar the constructor refuses
        raise Unusual(str(e)) from None
    finally:
        parser.dispose()


class _Composer:
    def __init__(self, get: Callable[[], Any], resolve: Callable[[str], Any], max_depth: int) -> None:
        self._get = get
        self._resolve = resolve
        self._max_depth = max_depth
        self._plain: dict[str, Any] = {}  # resolved plain scalars: keys and values repeat

    def documents(self) -> list[Any]:
        get = self._get
        if type(get()) is not StreamStartEvent:
            raise Unusual("no stream start")
        docs: list[Any] = []
        while True:
            ev = get()
            if type(ev) is StreamEndEvent:
                return docs
            if type(ev) is not DocumentStartEvent or ev.version is not None or ev.tags:
                raise Unusual("a directive")  # %YAML / %TAG: the full loader decides
            docs.append(self._node(get(), 1))
            if type(get()) is not DocumentEndEvent:
                raise Unusual("no document end")

    def _scalar(self, ev: Any) -> Any:
        if ev.anchor is not None or ev.tag is not None:
            raise Unusual("an anchor or tag")
        if not ev.implicit[0]:  # quoted or block scalar: a string
            return ev.value
        value = ev.value
        try:
            return self._plain[value]
        except KeyError:
            out = self._plain[value] = self._resolve(value)
            return out

    def _node(self, ev: Any, depth: int) -> Any:
        cls = type(ev)
        if cls is ScalarEvent:
            return self._scalar(ev)
        if ev.anchor is not None or ev.tag is not None:  # an alias has an anchor too
            raise Unusual("an anchor, alias or tag")
        if depth > self._max_depth:
            raise Unusual("too deep")
        if cls is MappingStartEvent:
            return self._mapping(ev, depth)
        if cls is SequenceStartEvent:
            return self._sequence(ev, depth)
        raise Unusual(f"unexpected {cls.__name__}")

    def _mapping(self, start: Any, depth: int) -> dict[Any, Any]:
        get, plain = self._get, self._plain
        out: dict[Any, Any] = {}
        if start.flow_style:
            if type(get()) is not MappingEndEvent:
                raise Unusual("a flow mapping")
            return out
        while True:
            ev = get()
            cls = type(ev)
            if cls is MappingEndEvent:
                return out
            if cls is not ScalarEvent or ev.anchor is not None or ev.tag is not None:
                raise Unusual("a key that is not a plain scalar")
            if ev.implicit[0]:
                key = plain[ev.value] if ev.value in plain else self._scalar(ev)
            else:
                key = ev.value
            if key in out:
                raise Unusual("a duplicate key")
            ev = get()
            if type(ev) is ScalarEvent and ev.anchor is None and ev.tag is None:
                if ev.implicit[0]:
                    value = ev.value
                    out[key] = plain[value] if value in plain else self._scalar(ev)
                else:
                    out[key] = ev.value
            else:
                out[key] = self._node(ev, depth + 1)

    def _sequence(self, start: Any, depth: int) -> list[Any]:
        get, plain = self._get, self._plain
        out: list[Any] = []
        if start.flow_style:
            if type(get()) is not SequenceEndEvent:
                raise Unusual("a flow sequence")
            return out
        append = out.append
        while True:
            ev = get()
            cls = type(ev)
            if cls is SequenceEndEvent:
                return out
            if cls is ScalarEvent and ev.anchor is None and ev.tag is None:
                if ev.implicit[0]:
                    value = ev.value
                    append(plain[value] if value in plain else self._scalar(ev))
                else:
                    append(ev.value)
            else:
                append(self._node(ev, depth + 1))


Matchers = dict[str, tuple[Callable[[str], Any], ...]]


def implicit_matchers(resolver: Any) -> Matchers | None:
    """Per first character, the match functions of the implicit patterns that `resolver`
    (ruamel's VersionedResolver, its version fixed) tries on a plain scalar starting with it, for
    plainly_str; None when plainly_str could not answer for it (path resolvers, or patterns
    tried on every scalar)."""
    table = resolver.versioned_resolver
    if None in table or resolver.yaml_path_resolvers:
        return None
    return {first: tuple(regexp.match for _tag, regexp in patterns) for first, patterns in table.items()}


def plainly_str(matchers: Matchers, value: str) -> bool:
    """Whether the resolver of `matchers` resolves the plain scalar `value` to str, as ruamel
    does it: no pattern listed under its first character matches, so it falls back to str. Most
    scalars of a recording (names, uids, addresses) are answered here at the cost of a regular
    expression or none, against several times that through ruamel's resolve."""
    tried = matchers.get(value[:1])  # "" for the empty scalar, as ruamel looks it up
    if tried is None:
        return True
    for match in tried:
        if match(value):
            return False
    return True


# orjson refuses nesting deeper than this (its documented recursion limit; a test pins it).
ORJSON_MAX_DEPTH = 1024


def json_document(text: str, max_depth: int) -> Any:
    """`text` parsed by orjson, when it nests at most `max_depth` levels deep; Unusual where
    orjson refuses it (a syntax error, NaN or Infinity, integers past 64 bits, lone surrogates)
    or it nests deeper, or it may hold an integer past 64 bits (orjson would make it a float):
    the caller reads it with the json module then, which gives the values
    and messages it always gave. The depth costs no walk: the text is parsed inside enough
    extra brackets that orjson's own limit stops it after `max_depth` levels."""
    if _long_digit_run(text):
        raise Unusual("an integer that may not fit 64 bits")
    pad = ORJSON_MAX_DEPTH - max_depth
    try:
        value = orjson.loads("[" * pad + text + "]" * pad)
    except orjson.JSONDecodeError as e:
        raise Unusual(str(e)) from None
    for _ in range(pad):
        # One element each: text that is several JSON values would have been a syntax error
        # to the json module, so it is not read here either.
        if len(value) != 1:
            raise Unusual("more than one JSON value")
        value = value[0]
    return value


# Every digit becomes "0", every other byte a space: a run of digits is a run of "0"s.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 19  # 19 digits may already be past 2**63


def _long_digit_run(text: str) -> bool:
    """Whether the text holds 19 or more digits in a row (anywhere, in strings too: rare in a
    recording, and then it is merely read the slower way). C speed: tens of ms for 35 MB."""
    step, overlap = 1 << 20, len(_LONG_RUN) - 1  # in chunks: no second copy of a big text
    for start in range(0, len(text), step):
        chunk = text[start : start + step + overlap].encode("utf-8", "surrogatepass")
        if _LONG_RUN in chunk.translate(_DIGITS_AS_ZEROS):
            return True
    return False
