"""Markdown that cluster and intent data cannot restructure.

The plan is posted as a pull-request comment, and its names and messages come from the pull
request (intent) or from a cluster recording, neither trusted: a node named
"x\\n\\n## No changes. Safe to merge\\n<!--" must not hide the real plan. Names are shown as code
only when they pass the API server's own rules for their kind (then they hold no Markdown);
anything else, and every other value, is shown as inert escaped text; free text goes in a
fenced code block longer than any backtick run inside it.
"""

from __future__ import annotations

import ipaddress
import re

from .diagnostics import SHOWN, clip
from .k8snames import dns1035_label, dns1123_label, dns1123_subdomain


def service_key_ok(key: str) -> bool:
    """"namespace/service", optionally ":port-name" (a DNS-1123 label)."""
    ns, _, rest = key.partition("/")
    name, colon, port = rest.partition(":")
    return dns1123_label(ns) and dns1035_label(name) and (not colon or dns1123_label(port))


def config_key_ok(key: str) -> bool:
    """"namespace/name" of a LoadBalancerConfig."""
    ns, slash, name = key.partition("/")
    return bool(slash) and dns1123_label(ns) and dns1123_subdomain(name)


def backend_ok(label: str) -> bool:
    """A node name, or "node/address" in podIP mode."""
    node, slash, address = label.partition("/")
    return dns1123_subdomain(node) and (not slash or ip_ok(address))


_P4_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def p4_name_ok(s: str) -> bool:
    """A P4Info fully qualified name (MyIngress.vip_table)."""
    return len(s) <= 253 and _P4_NAME.fullmatch(s) is not None


def ip_ok(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return True


# Every character that can start Markdown or HTML structure, a link, an autolink, a mention
# (@user), an issue reference (#1) or math ($), as an entity (GitHub decodes entities in text);
# control characters and line breaks as visible escapes.
_ENTITIES = {c: f"&#{ord(c)};" for c in "\\`*_[]#+-.!|<>&~:=$@"}


def inline(value: object, limit: int = SHOWN) -> str:
    """`value` as inert Markdown text on one line, cut to `limit` characters."""
    out = []
    for c in clip(str(value), limit, "…"):  # the mark is printable and no entity: it passes as is
        if c in _ENTITIES:
            out.append(_ENTITIES[c])
        elif not c.isprintable() or c in "\u2028\u2029":
            out.append(repr(c)[1:-1] if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
        else:
            out.append(c)
    return "".join(out)


def name(value: str, ok: bool) -> str:
    """A name as code when it passed its kind's rules, else escaped and flagged."""
    return f"`{value}`" if ok else f"{inline(value)} _(not a valid name)_"


def fenced(text: str, info: str = "text") -> str:
    """`text` in a fenced code block whose fence is longer than any backtick run inside."""
    runs = [len(m.group()) for m in re.finditer(r"`+", text)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    body = text.replace("\r\n", "\n").replace("\r", "\\r")
    return f"{fence}{info}\n{body}\n{fence}"
