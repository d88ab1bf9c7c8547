"""A line reader for the block YAML that kubectl (go-yaml) and PyYAML's emitter print: the first
fast path of reading a YAML recording (reconciler.cluster.recorded), before fastload's composer
over libyaml's events.

Building a Python object per libyaml event is most of fastload's time; here each line is read
with a few string methods instead. The reader knows a small subset of YAML exactly: block
mappings and sequences (indented or not under their key, `- key: value` items, `- - x`), plain
scalars on one line, single- and double-quoted scalars on one line, `{}`, `[]`, literal block
scalars `|` and `|-`, `---` between documents. Anything else (comments, anchors, aliases, tags,
complex keys, folded or indicated block scalars, a scalar over several lines, blank lines,
trailing spaces, tabs, CR or other line breaks, directives, `...`) raises fastload.Unusual, and
the caller reads the text with fastload and then the full loader, which alone words the errors.
So this reader only ever answers with the documents those give; when in doubt it gives up.

Plain scalars are resolved by the caller's `resolve` (the full loader's YAML 1.2 resolution),
once per distinct value, as fastload does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from reconciler.cluster.fastload import Unusual

# Characters outside YAML's printable set, and those libyaml reads as line breaks or a BOM (tab,
# CR, NEL, LS, PS, U+FEFF): text holding any of them is left to the libyaml paths.
_NOT_HANDLED = re.compile("[^\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]")
# Indicators that cannot start a plain scalar (a leading "-" is checked apart: "-1" is plain),
# and the space that would mean more indentation than this reader accepts.
_NOT_PLAIN_START = frozenset("-?:,[]{}#&*!|>'\"%@` ")
_SINGLE = re.compile(r"'((?:[^']|'')*)'")
_DOUBLE = re.compile(r'"((?:[^"\\]|\\.)*)"')
# The double-quoted escapes libyaml decodes, exactly; any other backslash is left to it.
_ESCAPES = {
    "0": "\0", "a": "\a", "b": "\b", "t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r",
    "e": "\x1b", " ": " ", '"': '"', "\\": "\\", "N": "\x85", "_": "\xa0", "L": "\u2028", "P": "\u2029",
}
_ESCAPE = re.compile(r'\\(?:([0abtnvfre "\\N_LP])|x([0-9A-Fa-f]{2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8}))')
_ESCAPED_BODY = re.compile(r'(?:[^\\]|\\(?:[0abtnvfre "\\N_LP]|x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}))*')
# libyaml refuses a key longer than this (its simple-key limit, 1024); kept well below it.
_MAX_KEY_CHARS = 250
_NONE = object()  # no pending key
# The lines most of a recording is, read by one match: `key: value`, `key: "value"`,
# `key: 'value'`, `key:`, `- value`, `- "value"`, each after any number of `- `, where the key
# and the plain value are simple enough to need no further check (no space, no indicator first,
# no `:` last); _Reader._any_line reads every other line (and these the same way).
# Possessive (`*+`): nothing to try again when a line is not one of these.
_PLAIN_VALUE = r"[\w./][^ ]*+(?<!:)"
_COMMON = re.compile(
    rf"( *+)((?:- )*+)(?:(\w[\w./-]{{0,{_MAX_KEY_CHARS - 1}}}+):"
    rf"""(?: (?:({_PLAIN_VALUE})|"([^"\\]*+)"|'([^']*+)'))?|({_PLAIN_VALUE})|"([^"\\]*+)")"""
)


def yaml_documents(text: str, resolve: Callable[[str], Any], max_depth: int) -> list[Any]:
    """The documents of `text`, as fastload.yaml_documents and the full loader read them;
    Unusual for anything outside the subset this reader knows exactly, for nesting deeper than
    `max_depth` and for a repeated key. `resolve` turns a plain scalar into its value (raising
    Unusual where it is not plain data)."""
    # A missing final line break or a space before one changes what scalars hold; neither is
    # printed by kubectl, so neither is handled.
    if not text.endswith("\n") or " \n" in text or not _printable(text):
        raise Unusual("text outside the block subset")
    try:
        return _Reader(resolve, max_depth).documents(_lines(text, 4 if text.startswith("---\n") else 0))
    except Unusual:
        raise
    except Exception as e:  # noqa: BLE001 - a scalar the constructor refuses (2001-13-45): the others word it
        raise Unusual(f"{type(e).__name__}: {e}") from None


def _lines(text: str, start: int, chunk: int = 1 << 20) -> Iterator[list[str]]:
    """The lines of `text` from `start` (each without its line break), a chunk at a time: a
    list of all at once would hold a string object per line (about 50 MB for 14 MB of YAML)."""
    while start < len(text):
        end = text.find("\n", start + chunk)
        if end < 0:
            end = len(text) - 1  # the final line break
        yield text[start:end].split("\n")
        start = end + 1


def _printable(text: str) -> bool:
    if text.isascii():  # the usual case, at C speed: delete the allowed bytes, see what is left
        return not text.encode("ascii").translate(None, _ASCII_ALLOWED)
    return _NOT_HANDLED.search(text) is None


_ASCII_ALLOWED = bytes([0x0A, *range(0x20, 0x7F)])

# What a line is, as _Reader._line reads it: (place (see _Reader.documents), op, key or _NO_KEY,
# value, number of leading "- " entries, kind of value). The kinds of value:
_SCALAR, _PENDING, _MAP, _SEQ, _CLIP, _STRIP = range(6)  # a value; on the next lines; {}; []; | ; |-
# The op names the three lines most of a recording is (`key: value`, `- value`, `key:`), for a
# short way.
_KEY_SCALAR, _ITEM_SCALAR, _OTHER, _KEY_PENDING = range(4)
_NO_KEY = object()  # a sequence entry's scalar (no key)
_ITEM = object()  # the pending value is a sequence entry's
_DOC = (-2, _OTHER, _NO_KEY, None, 0, _SCALAR)  # a `---` line


class _Reader:
    def __init__(self, resolve: Callable[[str], Any], max_depth: int) -> None:
        self._resolve = resolve
        self._max_depth = max_depth
        self._plain: dict[str, Any] = {}  # resolved plain scalars: keys and values repeat

    def documents(self, chunks: Iterable[list[str]]) -> list[Any]:
        """The documents of the lines, given a chunk at a time (a leading `---` taken off)."""
        # Most lines repeat (`protocol: TCP`, `- addresses:`): each distinct one is read once.
        parsed: dict[str, tuple[int, int, Any, Any, int, int]] = {}
        get, read = parsed.get, self._line
        resolve, max_depth = self._resolve, self._max_depth
        NONE, NO_KEY = _NONE, _NO_KEY  # noqa: N806 - locals: this loop runs per line
        docs: list[Any] = []
        root: Any = None
        # Columns are kept doubled, plus one for a sequence and for a line that is a sequence
        # entry: a line is the next entry of the innermost container when its place equals the
        # container's, and a sequence under a key at the key's own column (`key:` then `- x`)
        # ends at the next key by the same comparison as every container to the right of a line.
        top: Any = None  # the innermost open container (None before a document's first line)
        place = -9  # its doubled column, odd for a sequence
        places: list[int] = []  # per open container
        conts: list[Any] = []  # open containers, innermost last
        pending: Any = NONE  # a key (or _ITEM) whose value starts on the next line
        block: list[Any] | None = None  # in a literal block scalar: see _block_line

        def push(new: Any, n: int) -> None:  # a container opened as the value just read
            if len(conts) >= max_depth:
                raise Unusual("too deep")
            places.append(n)
            conts.append(new)

        for lines in chunks:
            for line in lines:
                if block is not None:
                    block = self._block_line(block, line)
                    if block is not None:
                        continue
                p = get(line)
                if p is None:
                    p = parsed[line] = read(line)
                n, op, key, value, dashes, kind = p
                if n == place and pending is NONE:  # the next entry of the open container
                    if op == 0:  # _KEY_SCALAR
                        if key in top:
                            raise Unusual("a duplicate key")
                        top[key] = value
                        continue
                    if op == 1:  # _ITEM_SCALAR
                        top.append(value)
                        continue
                    if op == 3:  # _KEY_PENDING
                        if key in top:
                            raise Unusual("a duplicate key")
                        pending = key
                        continue
                if pending is not NONE:
                    if n > place:  # the pending value is a container that starts on this line
                        new: Any = [] if n & 1 else {}
                        if place & 1:
                            top.append(new)
                        else:
                            top[pending] = new
                        push(new, n)
                        top, place = new, n
                    elif place & 1:
                        top.append(resolve(""))
                    else:
                        top[pending] = resolve("")
                    pending = NONE
                if n != place:
                    if n < 0:  # `---`: the next document
                        if top is None:
                            raise Unusual("an empty document")
                        docs.append(root)
                        root = top = None
                        place = -9
                        places, conts = [], []
                        continue
                    if top is None:  # a document's first line
                        if n > 1:
                            raise Unusual("a document that starts indented")
                        root = top = [] if n else {}
                        place = n
                        places, conts = [n], [root]
                    else:
                        while place > n:  # close the containers right of this line
                            places.pop()
                            conts.pop()
                            if not conts:
                                raise Unusual("a line left of the document")
                            place, top = places[-1], conts[-1]
                        if place != n:
                            raise Unusual("indentation")
                if dashes:
                    for _ in range(dashes - 1):  # `- - x`: entries that open sequences
                        new = []
                        top.append(new)
                        n += 4  # two columns to the right
                        push(new, n)
                        top, place = new, n
                    if key is NO_KEY:
                        if kind == _SCALAR:
                            top.append(value)
                        elif kind == _PENDING:
                            pending = _ITEM
                        elif kind == _MAP or kind == _SEQ:
                            top.append({} if kind == _MAP else [])
                        else:
                            top.append(None)
                            block = [top, len(top) - 1, kind == _CLIP, place // 2]
                        continue
                    new = {}  # `- key: ...`: an entry that opens a mapping, two columns right
                    top.append(new)
                    n += 3
                    push(new, n)
                    top, place = new, n
                if key in top:
                    raise Unusual("a duplicate key")
                if kind == _SCALAR:
                    top[key] = value
                elif kind == _PENDING:
                    pending = key
                elif kind == _MAP or kind == _SEQ:
                    top[key] = {} if kind == _MAP else []
                else:
                    top[key] = None
                    block = [top, key, kind == _CLIP, place // 2]
        if block is not None:
            self._block_end(block)
        if pending is not NONE:
            if place & 1:
                top.append(resolve(""))
            else:
                top[pending] = resolve("")
        if top is None:
            raise Unusual("an empty document")
        docs.append(root)
        return docs

    def _line(self, line: str) -> tuple[int, int, Any, Any, int, int]:
        """What a line outside block scalars holds (see _DOC); Unusual for what is not handled."""
        m = _COMMON.fullmatch(line)
        if m is None:
            return self._any_line(line)
        indent, dashes, key, plain_value, dq_value, sq_value, item, dq_item = m.groups()
        n, d = 2 * len(indent) + (1 if dashes else 0), len(dashes) // 2
        plain = self._plain
        if key is not None:
            k = plain[key] if key in plain else self._resolved(key)
            if plain_value is not None:
                value = plain[plain_value] if plain_value in plain else self._resolved(plain_value)
            elif dq_value is not None:
                value = dq_value
            elif sq_value is not None:
                value = sq_value
            else:
                return n, _KEY_PENDING if d == 0 else _OTHER, k, None, d, _PENDING
            return n, _KEY_SCALAR if d == 0 else _OTHER, k, value, d, _SCALAR
        if not d:
            return self._any_line(line)  # a scalar alone: refused there
        if item is not None:
            value = plain[item] if item in plain else self._resolved(item)
        else:
            value = dq_item
        return n, _ITEM_SCALAR if d == 1 else _OTHER, _NO_KEY, value, d, _SCALAR

    def _resolved(self, text: str) -> Any:
        out = self._plain[text] = self._resolve(text)
        return out

    def _any_line(self, line: str) -> tuple[int, int, Any, Any, int, int]:
        """_line for every line: the short way above only reads the simplest."""
        content = line.lstrip(" ")
        n = len(line) - len(content)
        if not content:
            raise Unusual("a blank line")
        if n == 0 and content.startswith(("---", "...")):
            if content == "---":
                return _DOC
            raise Unusual("a document marker")
        dashes = 0
        while content[0] == "-" and (content == "-" or content[1] == " "):
            if not dashes:
                n = 2 * n + 1  # see _Reader.documents
            dashes += 1
            if content == "-":
                return n, _OTHER, _NO_KEY, None, dashes, _PENDING
            content = content[2:]
        if not dashes:
            n *= 2
        k = self._key(content)
        if k is None:
            if not dashes:
                raise Unusual("not a mapping entry")
            key, rest = _NO_KEY, content
        else:
            key, rest = k
            if not rest:
                return n, _KEY_PENDING if dashes == 0 else _OTHER, key, None, dashes, _PENDING
        kind, value = self._value(rest)
        if kind != _SCALAR:
            op = _OTHER
        elif key is _NO_KEY:
            op = _ITEM_SCALAR if dashes == 1 else _OTHER
        else:
            op = _KEY_SCALAR if dashes == 0 else _OTHER
        return n, op, key, value, dashes, kind

    def _value(self, text: str) -> tuple[int, Any]:
        if text == "|":
            return _CLIP, None
        if text == "|-":
            return _STRIP, None
        if text == "{}":
            return _MAP, None
        if text == "[]":
            return _SEQ, None
        return _SCALAR, self._scalar(text)

    @staticmethod
    def _block_line(block: list[Any], line: str) -> list[Any] | None:
        """Takes a line into a literal block scalar (`block`: the container and key it is the
        value of, whether it is clipped, the column of that container, then the scalar's
        indentation and lines once known); None (and the value set) at the first line after
        it, which the caller then reads."""
        text = line.lstrip(" ")
        indent = len(line) - len(text)
        if len(block) == 4:  # the first line fixes the indentation
            if not text or indent <= block[3]:
                raise Unusual("a block scalar without a first line")
            block += [indent, [text]]
            return block
        if not line or indent >= block[4]:
            block[5].append(line[block[4] :])
            return block
        _Reader._block_end(block)
        return None

    @staticmethod
    def _block_end(block: list[Any]) -> None:
        if len(block) == 4:
            raise Unusual("a block scalar without a first line")
        out = block[5]
        while not out[-1]:  # blank lines at the end belong to the scalar, chomped
            out.pop()
        block[0][block[1]] = "\n".join(out) + ("\n" if block[2] else "")

    def _key(self, content: str) -> tuple[Any, str] | None:
        """(key, the rest after `: `) when `content` is a mapping entry, None when it is not."""
        c = content[0]
        if c == "'" or c == '"':
            m = (_SINGLE if c == "'" else _DOUBLE).match(content)
            if m is None:
                raise Unusual("a quoted scalar over several lines")
            after = content[m.end() :]
            if after == ":":
                rest = ""
            elif after[:2] == ": ":
                rest = after[2:]
            elif not after:
                return None  # a quoted scalar, not a key
            else:
                raise Unusual("text after a quoted scalar")
            if m.end() > _MAX_KEY_CHARS:
                raise Unusual("a long key")
            return self._quoted(c, m.group(1)), rest
        at = content.find(": ")
        if at < 0:
            if content[-1] != ":":
                return None
            text, rest = content[:-1], ""
        else:
            text, rest = content[:at], content[at + 2 :]
        if (
            not text
            or (text[0] in _NOT_PLAIN_START and (text[0] != "-" or len(text) == 1 or text[1] == " "))
            or text[-1] in ": "
            or " #" in text
            or len(text) > _MAX_KEY_CHARS
        ):
            raise Unusual("a key that is not a simple plain scalar")
        return self._plain[text] if text in self._plain else self._resolved(text), rest

    def _scalar(self, text: str) -> Any:
        """The value of a scalar written on one line (not a block scalar, `{}`, `[]` or `-`)."""
        c = text[0]
        if c in _NOT_PLAIN_START:
            if c == "'" or c == '"':
                m = (_SINGLE if c == "'" else _DOUBLE).fullmatch(text)
                if m is None:
                    raise Unusual("a quoted scalar over several lines, or text after it")
                return self._quoted(c, m.group(1))
            if c != "-" or len(text) == 1 or text[1] == " ":
                raise Unusual("an indicator")
        if ": " in text or text[-1] == ":" or " #" in text:
            raise Unusual("a mapping or comment in a scalar")
        return self._plain[text] if text in self._plain else self._resolved(text)

    @staticmethod
    def _quoted(quote: str, body: str) -> str:
        if quote == "'":
            return body.replace("''", "'")
        if "\\" not in body:
            return body
        if _ESCAPED_BODY.fullmatch(body) is None:
            raise Unusual("an escape this reader does not decode")
        return _ESCAPE.sub(_unescape, body)


def _unescape(m: re.Match[str]) -> str:
    short, x, u, big = m.groups()
    if short is not None:
        return _ESCAPES[short]
    code = int(x or u or big, 16)
    if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
        raise Unusual("an escape for no character")
    return chr(code)
