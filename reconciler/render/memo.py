"""RenderMemo: what a Renderer needs beside the last snapshot to resume in a new process.

`p4kube reconcile --once` is a fresh process each run; without this it renders every Service
again. The memo carries only what the last applied snapshot (`previous`) cannot tell: each
Service key's input digest, snapshot names, issues and which of them keep the last snapshot's
entries, the Services waiting for a value another holds, what the last render released, and the
allocations that differ from what `previous` seeds (a fallen-back Service's reserved VIP).

Bytes are JSON (orjson), sorted, so the same state gives the same bytes in any process; reading
checks every field's type and raises ValueError on anything else (never pickle: a memo file is
input, and input is checked).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any, Callable, Hashable

import orjson

from ..diagnostics import clip
from ..intent.model import LoadBalancerConfig

# Bumped whenever the meaning of a field changes: an older memo is then refused (a full render).
MEMO_FORMAT = 1

# (kind, value) a refused Service waits for, or that a render released; value None: any of the kind.
Mark = tuple[str, Hashable]
Issue = tuple[str | None, str, str]  # (service, message, severity) as RenderIssue holds them

@dataclass(frozen=True)
class KeyMemo:
    """One Service key's part of the renderer state."""

    key: str
    fingerprint: str | None  # digest of its render inputs (engine.fingerprint_digest)
    names: tuple[str, ...]
    issues: tuple[Issue, ...]
    kept: tuple[int, ...]  # indices of `issues` kept as in the last snapshot


@dataclass(frozen=True)
class Holdings:
    """How a mapping (a pool's owner -> value, reverse_nat key -> owner) differs from what the
    base snapshot seeds: entries held otherwise, and seeded keys that are not held."""

    held: tuple[tuple[Hashable, Hashable], ...] = ()
    dropped: tuple[Hashable, ...] = ()


@dataclass(frozen=True)
class RenderMemo:
    code_digest: str  # code_digest() of the process that wrote it: another version renders otherwise
    config_digest: str
    p4info_digest: str
    base_digest: str  # digest of the snapshot the state rendered (the next render's previous)
    keys: tuple[KeyMemo, ...]
    retry_keys: tuple[tuple[str, tuple[Mark, ...]], ...]
    freed: tuple[Mark, ...]
    vips: Holdings = Holdings()
    service_ids: Holdings = Holdings()
    backend_ids: Holdings = Holdings()
    reverse_owner: Holdings = Holdings()

    def to_bytes(self) -> bytes:
        doc = {
            "format": MEMO_FORMAT,
            "codeDigest": self.code_digest,
            "configDigest": self.config_digest,
            "p4infoDigest": self.p4info_digest,
            "baseDigest": self.base_digest,
            "keys": [[k.key, k.fingerprint, list(k.names), [list(i) for i in k.issues], list(k.kept)] for k in self.keys],
            "retryKeys": [[key, [list(m) for m in marks]] for key, marks in self.retry_keys],
            "freed": [list(m) for m in self.freed],
            "vips": _holdings_doc(self.vips),
            "serviceIds": _holdings_doc(self.service_ids),
            "backendIds": _holdings_doc(self.backend_ids),
            "reverseOwner": _holdings_doc(self.reverse_owner),
        }
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_bytes(cls, data: bytes) -> RenderMemo:
        """The memo `to_bytes` wrote; ValueError for anything else (truncated, another format)."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"render memo: not JSON ({e})") from None
        if not isinstance(doc, dict):
            raise ValueError("render memo: not a JSON object")
        if doc.get("format") != MEMO_FORMAT:
            raise ValueError(f"render memo: format {clip(repr(doc.get('format')), 40, fit=True)}, this version reads format {MEMO_FORMAT} only")
        expected = {"format", "codeDigest", "configDigest", "p4infoDigest", "baseDigest", "keys", "retryKeys", "freed", "vips", "serviceIds", "backendIds", "reverseOwner"}
        if set(doc) != expected:
            raise ValueError(f"render memo: fields {sorted(set(doc) ^ expected)} missing or unknown")
        return cls(
            code_digest=_str(doc["codeDigest"], "codeDigest"),
            config_digest=_str(doc["configDigest"], "configDigest"),
            p4info_digest=_str(doc["p4infoDigest"], "p4infoDigest"),
            base_digest=_str(doc["baseDigest"], "baseDigest"),
            keys=tuple(_key_memo(k) for k in _list(doc["keys"], "keys")),
            retry_keys=tuple(
                (_str(k, "retryKeys key"), tuple(_mark(m) for m in _list(marks, "retryKeys marks")))
                for k, marks in (_pair(e, "retryKeys") for e in _list(doc["retryKeys"], "retryKeys"))
            ),
            freed=tuple(_mark(m) for m in _list(doc["freed"], "freed")),
            vips=_holdings(doc["vips"], "vips", _str, _str),
            service_ids=_holdings(doc["serviceIds"], "serviceIds", _str, _int),
            backend_ids=_holdings(doc["backendIds"], "backendIds", _name_and_key, _int),
            reverse_owner=_holdings(doc["reverseOwner"], "reverseOwner", _reverse_key, _str),
        )


def config_digest(config: LoadBalancerConfig) -> str:
    """sha256 of the config's repr, without `source` (where it was read from), which equality
    ignores too: the renderer's state depends on what the config says, not on its file."""
    return hashlib.sha256(repr(replace(config, source=None)).encode()).hexdigest()


def sort_key(value: object) -> bytes:
    """An order for JSON-able values of mixed types (marks, owners): by their JSON bytes."""
    return orjson.dumps(value)


# --- reading, with every type checked ----------------------------------------------------------


def _holdings_doc(h: Holdings) -> dict[str, Any]:
    return {"held": [[k, v] for k, v in h.held], "dropped": list(h.dropped)}


def _fail(what: str, value: object) -> ValueError:
    return ValueError(f"render memo: {what}: unexpected {clip(repr(value), 40, fit=True)}")


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _fail(what, value)
    return value


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(what, value)
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(what, value)
    return value


def _pair(value: object, what: str) -> tuple[Any, Any]:
    items = _list(value, what)
    if len(items) != 2:
        raise _fail(what, value)
    return items[0], items[1]


def _opt_str(value: object, what: str) -> str | None:
    return None if value is None else _str(value, what)


def _reverse_key(value: object, what: str) -> tuple[str, int, int]:
    items = _list(value, what)
    if len(items) != 3:
        raise _fail(what, value)
    return _str(items[0], what), _int(items[1], what), _int(items[2], what)


def _name_and_key(value: object, what: str) -> tuple[str, str]:
    a, b = _pair(value, what)
    return _str(a, what), _str(b, what)


def _mark(value: object) -> Mark:
    kind, v = _pair(value, "mark")
    kind = _str(kind, "mark kind")
    if v is None:
        return kind, None
    if kind == "vip":
        return kind, _str(v, "vip mark")
    if kind == "reverse":
        return kind, _reverse_key(v, "reverse mark")
    raise _fail(f"{kind} mark", v)  # id kinds are waited for as a whole (value None)


def _key_memo(value: object) -> KeyMemo:
    """One entry of "keys"; that of a Service without issues (most) checked inline, as
    _key_memo_checked would find it (which checks, and says what is wrong, for any other)."""
    if type(value) is list and len(value) == 5:
        key, fp, names, issues, kept = value
        if type(key) is str and (fp is None or type(fp) is str) and type(names) is list and issues == [] == kept:
            as_tuple = tuple(names)
            for name in as_tuple:
                if type(name) is not str:
                    break
            else:
                return KeyMemo(key=key, fingerprint=fp, names=as_tuple, issues=(), kept=())
    return _key_memo_checked(value)


def _key_memo_checked(value: object) -> KeyMemo:
    items = _list(value, "key")
    if len(items) != 5:
        raise _fail("key", value)
    key, fp, names, issues, kept = items
    parsed: list[Issue] = []
    for issue in _list(issues, "issues"):
        parts = _list(issue, "issue")
        if len(parts) != 3:
            raise _fail("issue", issue)
        parsed.append((_opt_str(parts[0], "issue service"), _str(parts[1], "issue message"), _str(parts[2], "issue severity")))
    indices = tuple(_int(i, "kept") for i in _list(kept, "kept"))
    if any(not 0 <= i < len(parsed) for i in indices):
        raise _fail("kept", kept)
    return KeyMemo(
        key=_str(key, "key"),
        fingerprint=_opt_str(fp, "fingerprint"),
        names=tuple(_str(n, "name") for n in _list(names, "names")),
        issues=tuple(parsed),
        kept=indices,
    )


def _holdings(value: object, what: str, key: Callable[[object, str], Hashable], item: Callable[[object, str], Hashable]) -> Holdings:
    if not isinstance(value, dict) or set(value) != {"held", "dropped"}:
        raise _fail(what, value)
    held = tuple((key(k, what), item(v, what)) for k, v in (_pair(e, what) for e in _list(value["held"], what)))
    return Holdings(held=held, dropped=tuple(key(k, what) for k in _list(value["dropped"], what)))


__all__ = ["RenderMemo", "KeyMemo", "Holdings", "MEMO_FORMAT", "config_digest"]
