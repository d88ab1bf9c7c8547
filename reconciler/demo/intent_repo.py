"""The demo's intent repository: the shipped example pointed at this machine, committed to a
new Git checkout, and later changed by a commit as merging a pull request would."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from io import StringIO
from pathlib import Path
from typing import Any

import pygit2
from ruamel.yaml import YAML

INTENT_FILE = "lbconfig.yaml"
# Short timings so the demo takes seconds; the comments in the committed intent say so.
# A 2s drain: long enough to send packets through it, short enough to watch it end (a drain ends
# at a whole second, so it lasts 1 to 2 s).
DEMO_TIMINGS = {"updateInterval": "100ms", "interval": "1s", "timeout": "500ms", "failureThreshold": 2, "successThreshold": 1,
                "connectionDrainTimeout": "2s"}

_SIGNATURE = ("p4kube demo", "demo@p4kube.invalid")


def intent_yaml() -> YAML:
    """A round-trip loader: the example's comments and style stay."""
    y = YAML()
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)  # the examples' style
    y.width = 4096
    return y


def demo_intent(text: str, addresses: Mapping[str, str], node_net: str) -> tuple[str, str]:
    """The example pointed at this machine: the switches' real addresses, the route to the
    nodes' loopback block, a route for the VIP pool towards the nodes (the path of a VIP that
    is not on the switches: kube-proxy on the nodes answers it), and timings short enough for
    a demo. Returns the text and the VIP route's prefix."""
    y = intent_yaml()
    doc = y.load(text)
    spec = doc["spec"]
    spec["updateInterval"] = DEMO_TIMINGS["updateInterval"]
    spec["connectionDrainTimeout"] = DEMO_TIMINGS["connectionDrainTimeout"]
    hc = spec.setdefault("healthCheck", {})
    for k in ("interval", "timeout", "failureThreshold", "successThreshold"):
        hc[k] = DEMO_TIMINGS[k]
    for sw in spec["switchConfig"]["switches"]:
        sw["address"] = addresses[sw["name"]]
    # deviceConfig stays a name: the demo is its own operator, and its --pipeline-dir is the
    # example's directory, which holds the (placeholder) device config (intent names files only).
    routes = spec["switchConfig"]["routes"]
    routes[0]["prefix"] = node_net
    first_vip = str(spec["vipPools"][0]["addresses"][0]).split("-")[0].split("/")[0]
    vip_net = str(ipaddress.IPv4Network(f"{first_vip}/24", strict=False))
    routes.append({"prefix": vip_net, "port": routes[0]["port"], "nextHopMac": routes[0]["nextHopMac"]})
    routes.yaml_set_comment_before_after_key(
        len(routes) - 1, before="VIPs without a vip_table entry (fallen back) go to the nodes: kube-proxy.", indent=6)
    doc.yaml_set_start_comment(
        "Made by `p4kube demo` from intent-examples/multi-service/lbconfig.yaml: the switches'\n"
        "addresses, the routes (the nodes are on loopback) and the timings are the demo's.",
    )
    return _dump(y, doc), vip_net


def with_buckets(text: str, buckets: int) -> str:
    """The intent with spec.bucketsPerService set, everything else as it was."""
    y = intent_yaml()
    doc = y.load(text)
    doc["spec"]["bucketsPerService"] = buckets
    return _dump(y, doc)


def _dump(y: YAML, doc: Any) -> str:
    buf = StringIO()
    y.dump(doc, buf)
    return buf.getvalue()


def init_intent_repo(path: Path, text: str, message: str) -> str:
    """A new checkout at `path` whose first commit holds the intent; returns the commit id."""
    repo = pygit2.init_repository(str(path), bare=False, initial_head="main")
    (path / INTENT_FILE).write_text(text)
    repo.index.add(INTENT_FILE)
    repo.index.write()
    sig = pygit2.Signature(*_SIGNATURE)
    return str(repo.create_commit("HEAD", sig, sig, message, repo.index.write_tree(), []))


def land_commit(path: Path, text: str, message: str) -> str:
    """What merging a pull request does to the checkout the reconciler follows. The commit lands
    first, then the file is replaced in one rename: the reconciler may briefly see the new
    commit with the old file (nothing to do, the same tables) but never the new file under the
    old commit, so the transaction's audit record names the commit that asked for it."""
    repo = pygit2.Repository(str(path))
    blob = repo.create_blob(text.encode())
    repo.index.read()
    repo.index.add(pygit2.IndexEntry(INTENT_FILE, blob, pygit2.enums.FileMode.BLOB))
    sig = pygit2.Signature(*_SIGNATURE)
    oid = repo.create_commit("HEAD", sig, sig, message, repo.index.write_tree(), [repo.head.target])
    repo.index.write()
    staged = path.parent / f".{INTENT_FILE}.new"  # outside the watched checkout
    staged.write_text(text)
    os.replace(staged, path / INTENT_FILE)
    return str(oid)


__all__ = ["DEMO_TIMINGS", "INTENT_FILE", "demo_intent", "init_intent_repo", "intent_yaml", "land_commit", "with_buckets"]
