"""render(config, cluster, previous) -> Snapshot: pure, deterministic, and incremental.

`Renderer` keeps what the last render produced (allocations, per-Service inputs) so that the
next render redoes only the Services whose inputs changed: the controller tells which ones
(`changed=`), or the renderer compares each Service's inputs itself. Either way the output is
byte-identical to a full render from the same previous snapshot; tests hold it to that. A new
process takes that state up from a RenderMemo (memo.py) of the last render: `memo()`, `resume()`.
One known exception, a design question left open: a VIP held for a Service in automatic
fallback (no snapshot entry says so) is released when that Service leaves p4kube's care, and
quarantined for one version as every released value is; a full render, which never knew it was
held, gives it to another Service asking for it one version sooner. Nothing is removed either
way, and both converge on the next pass.

An error is never a removal (DESIGN.md 6.1): a Service (port) that the previous snapshot has and
that now hits an error (its VIP, a nodePort, a reverse_nat key, an id space, its algorithm, a
meaningless opt-in value) keeps that snapshot's service, with all it holds, and an issue says
"kept as in v<N> (last applied) until fixed". Only a decision removes: the Service deleted,
disabled, no longer selected, fallen back, or without an address.

A Service port keeps its identity (service id, backend ids, buckets, hence its exact entries)
when its snapshot name changes because its Service gained, lost or renamed a port.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Hashable, Iterable, Mapping, cast

import orjson

from ..cluster.model import ClusterState, Endpoint, Node, Service, ServicePort
from ..diagnostics import clip
from ..intent.model import LoadBalancerConfig
from ..p4names import IP_PROTOCOLS
from ..snapshot import Backend, Drain, ServiceSnapshot, Snapshot, Value, backend_key, check_service_schema, route_entries
from . import buckets
from .drain import drain_timeout, drains_ended, next_drains
from .allocate import Exhausted, IntSpace, Pool, VipSpace
from ..sources import code_digest
from .memo import Holdings, KeyMemo, RenderMemo, config_digest, sort_key
from .select import CLUSTER_TRAFFIC_POLICY, entry_name, node_backends, selection, target_port, trusted_pod_backend, untrusted_backends_issue

log = logging.getLogger(__name__)

MAX_SERVICE_ID = 0xFFFF
MAX_BACKEND_ID = 0xFFFF

# A reverse_nat match key: (backend address, port, protocol).
_ReverseKey = tuple[Value, ...]
# What a refused Service waits for, or what a render released: (kind, value), or (kind, None)
# for any value of that kind.
_Mark = tuple[str, object]


@dataclass(frozen=True)
class RenderIssue:
    """A Service the snapshot leaves out or serves partly, and why."""

    service: str | None
    message: str
    # "error": the Service is not served, or (when the message says "kept as in v<N>") it keeps
    # what the last applied snapshot v<N> has for it; "warning": served, note this.
    severity: str = "warning"

    def __str__(self) -> str:
        return f"{self.service}: {self.message}" if self.service else self.message


@dataclass(frozen=True)
class RenderResult:
    snapshot: Snapshot
    issues: tuple[RenderIssue, ...]
    rendered: frozenset[str] = frozenset()  # Service keys whose part was recomputed
    changed: bool = True  # False when the digest equals the previous snapshot's


Connections = Mapping[str, Mapping[str, int]]  # snapshot service name -> backend key -> count


@dataclass
class _KeyState:
    fingerprint: object
    names: tuple[str, ...]  # snapshot service names produced for this Service key
    issues: tuple[RenderIssue, ...]
    # Indices of `issues` whose Service (port) keeps its entries from the last snapshot; their
    # message names that snapshot's version, which only the render's `previous` knows.
    kept: frozenset[int] = frozenset()
    # The KeyMemo this state was resumed from, with the fields made of it: memo() gives it
    # again while this state's fields are still those objects, instead of building it anew.
    resumed: tuple[KeyMemo, object, tuple[str, ...], tuple[RenderIssue, ...], frozenset[int]] | None = None

    def memo(self, key: str) -> KeyMemo:
        r = self.resumed
        if r is not None and r[1] is self.fingerprint and r[2] is self.names and r[3] is self.issues and r[4] is self.kept:
            return r[0]
        return KeyMemo(
            key=key,
            fingerprint=_digest_of(self.fingerprint),
            names=self.names,
            issues=tuple((i.service, i.message, i.severity) for i in self.issues),
            kept=tuple(sorted(self.kept)),
        )


@dataclass
class _State:
    config: LoadBalancerConfig
    p4info_digest: str
    base: Snapshot | None
    vips: Pool[str]
    service_ids: Pool[int]
    backend_ids: Pool[int]
    services: dict[str, ServiceSnapshot] = field(default_factory=dict)  # by snapshot name
    keys: dict[str, _KeyState] = field(default_factory=dict)  # by Service key
    reverse_owner: dict[_ReverseKey, str] = field(default_factory=dict)  # reverse_nat key -> name
    order: list[str] = field(default_factory=list)  # sorted snapshot names
    ordered: list[ServiceSnapshot] = field(default_factory=list)  # services in `order`
    position: dict[str, int] = field(default_factory=dict)  # name -> index in `order`
    issue_keys: set[str] = field(default_factory=set)  # Service keys that have issues
    # Services refused because a value they need is held (a VIP, a service or backend id, a
    # reverse_nat key), by kind of value. They are retried when a render released values of
    # that kind: what blocked them may be free now, though their own inputs did not change.
    retry_keys: dict[str, frozenset[_Mark]] = field(default_factory=dict)  # key -> {(kind, value|None)}
    freed: frozenset[_Mark] = frozenset()  # (kind, value) and (kind, None) released by the last render
    # reverse_nat keys released in this render -> their previous owner (quarantine, as for ids)
    reverse_released: dict[_ReverseKey, str] = field(default_factory=dict)
    blocked: dict[str, set[_Mark]] = field(default_factory=dict)  # this render: key -> {(kind, value)}
    # This render's clock (epoch seconds) and the lowest generation a drain it starts may carry.
    now: float = 0.0
    generation_floor: int = 1
    # What the snapshot resume() seeded from holds (memo() compares with it while base is that snapshot).
    seeds: _Seeds | None = None

    def reorder(self) -> None:
        self.order = sorted(self.services)
        self.position = {name: i for i, name in enumerate(self.order)}
        self.ordered = [self.services[name] for name in self.order]


class Renderer:
    """Holds the state that makes the next render incremental. One per LoadBalancerConfig."""

    def __init__(self) -> None:
        self._state: _State | None = None

    def render(
        self,
        config: LoadBalancerConfig,
        cluster: ClusterState,
        previous: Snapshot | None,
        *,
        p4info_digest: str,
        intent_commit: str | None = None,
        connections: Connections | None = None,
        changed: Iterable[str] | None = None,
        now: float | None = None,
    ) -> RenderResult:
        """`now`: wall clock, epoch seconds (None: time.time()); drains start and end by it."""
        if now is None:
            now = time.time()
        st = self._state
        reuse = (
            st is not None
            and st.config == config
            and st.p4info_digest == p4info_digest
            and (st.base is previous or (st.base is not None and previous is not None and st.base.digest == previous.digest))
        )
        if not reuse:
            st = self._state = _fresh_state(config, p4info_digest, previous)
            todo = set(_candidates(st, cluster))
        elif changed is not None:
            todo = set(changed)
        else:
            assert st is not None  # reuse says so
            todo = {k for k in _candidates(st, cluster) if not _same_inputs(_fingerprint(cluster, k, connections), _cached_fp(st, k))}
        assert st is not None
        if st.freed:
            todo |= {k for k, wants in st.retry_keys.items() if wants & st.freed}
        # A Service whose drain has ended is rendered again (step 2 of a move), changed or not.
        todo |= {s.service_key for s in st.ordered if s.drains and drains_ended(s, now)}
        st.now = now
        st.generation_floor = 1 + (previous.max_drain_generation() if previous is not None else 0)
        for pool in (st.vips, st.service_ids, st.backend_ids):
            pool.begin_render()
        st.reverse_released.clear()
        st.blocked.clear()
        count_before = len(st.services)
        touched: list[str] = []
        # Services that left go first, so what they held is quarantined before anyone asks for
        # it: the outcome and its message must not depend on how names sort.
        leavers: list[str] = []
        stayers: list[str] = []
        for key in sorted(todo):
            svc = cluster.services.get(key)
            (leavers if svc is None or selection(config, svc) is not None else stayers).append(key)
        done: set[str] = set()
        releases = _Releases(st)
        for key in leavers:
            touched.extend(_render_key(st, config, cluster, key, connections))
            done.add(key)
        # A Service refused for a value released in this render is rendered again in its place
        # among the others, as a full render would: it sees the value quarantined ("free from
        # the next version"), not held by its former holder.
        heap, pending = stayers, set(stayers)  # sorted: already a heap

        def retry_after(key: str) -> None:
            """Queue the refused Services sorting after `key` that wait for what was just released."""
            marks = releases.new_marks(st)
            if not marks or not st.retry_keys:
                return
            for k, wants in st.retry_keys.items():
                if k > key and k not in done and k not in pending and not wants.isdisjoint(marks):
                    svc = cluster.services.get(k)
                    if svc is not None and selection(config, svc) is None:
                        heapq.heappush(heap, k)
                        pending.add(k)

        # A Service holding no VIP here whose status shows one (it just recovered from a
        # fallback; a render without a previous snapshot) gets it back before any other
        # Service's request is considered, whatever the names' order.
        for key in stayers:
            _reclaim_vip(st, cluster.services[key])
        retry_after("")
        while heap:
            key = heapq.heappop(heap)
            touched.extend(_render_key(st, config, cluster, key, connections))
            done.add(key)
            retry_after(key)
        # What this render released: each reverse_nat key and VIP by value (a Service waits for
        # one particular value), and each kind as a whole (a Service waits for a full space).
        freed: set[_Mark] = {("reverse", k) for k in st.reverse_released}
        freed |= {("vip", v) for v in st.vips.released_values()}
        for kind, pool in (("vip", st.vips), ("service-id", st.service_ids), ("backend-id", st.backend_ids)):
            if pool.released_this_render:
                freed.add((kind, None))
        st.freed = frozenset(freed)
        for pool in (st.vips, st.service_ids, st.backend_ids):
            pool.end_render()
        if len(st.services) != count_before or any(name not in st.position for name in touched):
            st.reorder()
        else:  # same names: swap the new objects in place instead of re-sorting 5,000 names
            for name in touched:
                st.ordered[st.position[name]] = st.services[name]
        snap = Snapshot(
            config=config.key,
            version=1,
            intent_commit=intent_commit,
            cluster_resource_version=cluster.resource_version,
            program=config.switch_config.p4_program,
            p4info_digest=p4info_digest,
            services=tuple(st.ordered),
            global_entries=route_entries(
                (str(r.prefix), r.port, r.next_hop_mac) for r in config.switch_config.routes
            ),
        )
        is_changed = True
        if previous is not None:
            if snap.digest == previous.digest:
                snap, is_changed = previous, False
            else:
                snap = snap.with_version(previous.version + 1)
        st.base = snap
        issues = tuple(_issues(st, previous))
        return RenderResult(snap, issues, frozenset(done), is_changed)

    def memo(self) -> RenderMemo:
        """What the next render needs beyond its previous snapshot (the last result's), for
        `resume` in another process. Raises RuntimeError before the first render."""
        st = self._state
        if st is None or st.base is None:
            raise RuntimeError("Renderer.memo(): nothing rendered yet")
        seeded = _seeds_after(st.seeds, st.base) if st.seeds is not None else _seeds(st.base)
        return RenderMemo(
            code_digest=code_digest(),
            config_digest=config_digest(st.config),
            p4info_digest=st.p4info_digest,
            base_digest=st.base.digest,
            keys=tuple(ks.memo(k) for k, ks in sorted(st.keys.items())),
            retry_keys=tuple((k, tuple(sorted(marks, key=sort_key))) for k, marks in sorted(st.retry_keys.items())),
            freed=tuple(sorted(st.freed, key=sort_key)),
            vips=_holdings(st.vips.value_of, seeded.vips),
            service_ids=_holdings(st.service_ids.value_of, seeded.service_ids),
            backend_ids=_holdings(st.backend_ids.value_of, seeded.backend_ids),
            reverse_owner=_holdings(st.reverse_owner, seeded.reverse_owner),
        )

    def resume(self, memo: RenderMemo, config: LoadBalancerConfig, previous: Snapshot | None, *, p4info_digest: str) -> bool:
        """Take up the state `memo` describes, so that the next render(config, ..., previous)
        redoes only the Services whose inputs differ from the memo's. False (and a fresh
        renderer: the next render is a full one) when the memo is not of this code, config,
        P4Info and previous snapshot, or does not fit that snapshot."""
        self._state = None
        if (
            previous is None
            or memo.code_digest != code_digest()
            or memo.config_digest != config_digest(config)
            or memo.p4info_digest != p4info_digest
            or memo.base_digest != previous.digest
            or previous.config != config.key
        ):
            return False
        st = _resumed_state(memo, config, p4info_digest, previous)
        if st is None:
            log.warning("render memo does not fit the last applied snapshot v%s; rendering every Service", previous.version)
            return False
        self._state = st
        return True


def render(
    config: LoadBalancerConfig,
    cluster: ClusterState,
    previous: Snapshot | None = None,
    *,
    p4info_digest: str,
    intent_commit: str | None = None,
    connections: Connections | None = None,
    now: float | None = None,
) -> RenderResult:
    """The pure function of DESIGN.md 4: a full render from scratch (or from `previous`).
    `now` (epoch seconds, None: time.time()) decides which drains start and which have ended."""
    return Renderer().render(
        config,
        cluster,
        previous,
        p4info_digest=p4info_digest,
        intent_commit=intent_commit,
        connections=connections,
        now=now,
    )


# --- internals --------------------------------------------------------------------------------


class _Releases:
    """What this render has released so far (VIPs, ids, reverse_nat keys), read incrementally."""

    def __init__(self, st: _State) -> None:
        self.seen = self._counts(st)

    @staticmethod
    def _counts(st: _State) -> tuple[int, int, int, int]:
        return (len(st.vips.released_log), len(st.service_ids.released_log), len(st.backend_ids.released_log), len(st.reverse_released))

    def new_marks(self, st: _State) -> set[_Mark]:
        """(kind, value) and (kind, None) for what was released since the last call."""
        now = self._counts(st)
        if now == self.seen:
            return set()
        marks: set[_Mark] = set()
        if now[0] > self.seen[0]:
            marks.add(("vip", None))
            marks.update(("vip", v) for v in st.vips.released_log[self.seen[0] :])
        if now[1] > self.seen[1]:
            marks.add(("service-id", None))
        if now[2] > self.seen[2]:
            marks.add(("backend-id", None))
        if now[3] > self.seen[3]:
            marks.update(("reverse", k) for k in itertools.islice(st.reverse_released, self.seen[3], None))
        self.seen = now
        return marks


def _candidates(st: _State, cluster: ClusterState) -> set[str]:
    """What a render looks at: the keys the state knows and the opted-in Services. A Service that
    never opted in is not looked at (most of a real cluster's Services: comparing their
    fingerprints on every incremental render would cost what it saves)."""
    return st.keys.keys() | {k for k, s in cluster.services.items() if s.opt_in is not None}


def _issues(st: _State, previous: Snapshot | None) -> Iterable[RenderIssue]:
    for k in sorted(st.issue_keys):
        ks = st.keys[k]
        if not ks.kept:
            yield from ks.issues
            continue
        version = previous.version if previous is not None else 0
        for index, issue in enumerate(ks.issues):
            if index in ks.kept:
                issue = RenderIssue(issue.service, f"{issue.message}{kept_suffix(version)}", issue.severity)
            yield issue


def kept_suffix(version: int) -> str:
    """What an issue says of a Service (port) kept from the last applied snapshot."""
    return f"; kept as in v{version} (last applied) until fixed"


def _fresh_state(config: LoadBalancerConfig, p4info_digest: str, previous: Snapshot | None) -> _State:
    """The state of a full render from `previous`."""
    st = _empty_state(config, p4info_digest, previous)
    if previous is not None and previous.config == config.key:
        for svc in previous.services:
            st.services[svc.name] = svc
            st.vips.seed(svc.service_key, svc.vip)
            st.service_ids.seed(svc.name, svc.service_id)
            for b in svc.backends:
                st.backend_ids.seed((svc.name, backend_key(b, svc.backend_mode)), b.backend_id)
            for rkey in svc.reverse_nat_keys():
                st.reverse_owner[rkey] = svc.name
            ks = st.keys.setdefault(svc.service_key, _KeyState(None, (), ()))
            ks.names = ks.names + (svc.name,)
        st.reorder()
    for pool in (st.vips, st.service_ids, st.backend_ids):
        pool.finish_seed()
    return st


def _empty_state(config: LoadBalancerConfig, p4info_digest: str, base: Snapshot | None) -> _State:
    return _State(
        config=config,
        p4info_digest=p4info_digest,
        base=base,
        vips=Pool(VipSpace(config.vip_pools)),
        service_ids=Pool(IntSpace(1, MAX_SERVICE_ID, "service ids")),
        backend_ids=Pool(IntSpace(0, MAX_BACKEND_ID, "backend ids (counter indices)")),
    )


@dataclass(frozen=True)
class _Seeds:
    """What `base` seeds (as _fresh_state does): each pool's owner -> value, reverse_nat key ->
    owner, each Service key's snapshot names. What memo() compares and resume amends, without
    the rest of a state; not to be changed (memo() reuses resume's while the base is the same)."""

    base: Snapshot
    vips: dict[Hashable, str]
    service_ids: dict[Hashable, int]
    backend_ids: dict[Hashable, int]
    reverse_owner: dict[_ReverseKey, str]
    names: dict[str, tuple[str, ...]]
    # How many reverse_nat keys base's Services list: len(reverse_owner) unless one is listed
    # twice, which only the full walk orders as it must (_seeds_after takes it then).
    reverse_listed: int


def _seeds(base: Snapshot) -> _Seeds:
    """The seeds of `base`, a snapshot of the state's config (as resume checks, and render makes)."""
    seeds = _Seeds(base, {}, {}, {}, {}, {}, 0)
    listed = _seed(seeds, base.services, once=False)
    assert listed is not None  # once=False
    return replace(seeds, reverse_listed=listed)


def _seed(seeds: _Seeds, services: Iterable[ServiceSnapshot], *, once: bool) -> int | None:
    """Add what `services` seed to the maps of `seeds` (one being built) in their order; the
    number of reverse_nat keys they list, or None when `once` and one of them is held already."""
    vips, service_ids, backend_ids, reverse_owner, names = seeds.vips, seeds.service_ids, seeds.backend_ids, seeds.reverse_owner, seeds.names
    listed = 0
    for svc in services:
        name, key, mode = svc.name, svc.service_key, svc.backend_mode
        vips[key] = svc.vip
        service_ids[name] = svc.service_id
        for b in svc.backends:
            backend_ids[(name, backend_key(b, mode))] = b.backend_id
        rkeys = svc.reverse_nat_keys_unordered()
        listed += len(rkeys)
        if once and not reverse_owner.keys().isdisjoint(rkeys):
            return None
        for rkey in rkeys:
            reverse_owner[rkey] = name
        names[key] = names.get(key, ()) + (name,)
    return listed


def _seeds_after(seeds: _Seeds, base: Snapshot) -> _Seeds:
    """_seeds(base), from the seeds of an earlier snapshot whose Services `base` mostly shares
    (the same objects: a render keeps those it did not redo). Only the Service keys with a
    Service not shared in the same order are walked again, in base's order; anything unusual (a
    name listed twice before, a reverse_nat key held twice) takes the full walk, whose result
    this must equal (tests/test_render_memo_reuse.py)."""
    before = seeds.base
    if before is base:
        return seeds
    if seeds.reverse_listed != len(seeds.reverse_owner):
        return _seeds(base)
    index = {svc.name: i for i, svc in enumerate(before.services)}
    if len(index) != len(before.services):
        return _seeds(base)
    old = before.services
    redo: set[str] = set()  # Service keys walked again
    shared = 0
    last = -1
    for svc in base.services:
        i = index.get(svc.name)
        if i is not None and i > last and old[i] is svc:
            shared += 1
            last = i
        else:  # not shared, or out of `before`'s order
            redo.add(svc.service_key)
    if shared != len(old):  # Services of `before` that `base` does not have
        present = {svc.name for svc in base.services}
        redo.update(svc.service_key for svc in old if svc.name not in present)
    if not redo:
        return replace(seeds, base=base)
    after = _Seeds(base, dict(seeds.vips), dict(seeds.service_ids), dict(seeds.backend_ids), dict(seeds.reverse_owner), dict(seeds.names), 0)
    vips, service_ids, backend_ids, reverse_owner, names = after.vips, after.service_ids, after.backend_ids, after.reverse_owner, after.names
    listed = seeds.reverse_listed
    for key in redo:
        vips.pop(key, None)
        for name in names.pop(key, ()):
            svc = old[index[name]]
            del service_ids[name]
            for b in svc.backends:
                backend_ids.pop((name, backend_key(b, svc.backend_mode)), None)
            rkeys = svc.reverse_nat_keys_unordered()
            listed -= len(rkeys)
            for rkey in rkeys:
                del reverse_owner[rkey]  # each held once (reverse_listed), by this name
    added = _seed(after, (svc for svc in base.services if svc.service_key in redo), once=True)
    if added is None:  # a reverse_nat key held twice: which holder wins depends on the order
        return _seeds(base)
    return replace(after, reverse_listed=listed + added)


def _resumed_state(memo: RenderMemo, config: LoadBalancerConfig, p4info_digest: str, previous: Snapshot) -> _State | None:
    """The state `previous` seeds, amended by `memo`; None when the memo does not fit it (a
    Service's names, a value held twice): then only a full render is sure."""
    seeds = _seeds(previous)
    st = _empty_state(config, p4info_digest, previous)
    st.seeds = seeds
    st.services = {svc.name: svc for svc in previous.services}
    st.reorder()
    seeded = dict(seeds.names)
    keys, none_kept = st.keys, frozenset[int]()
    for km in memo.keys:
        names = seeded.pop(km.key, ())
        if km.names != names and sorted(km.names) != sorted(names):
            return None
        fp = _Digest(km.fingerprint) if km.fingerprint is not None else None
        issues = tuple([RenderIssue(*i) for i in km.issues]) if km.issues else ()
        kept = frozenset(km.kept) if km.kept else none_kept
        # Given again by memo() only if it is what memo() would build (kept sorted, once each).
        again = not km.kept or km.kept == tuple(sorted(kept))
        keys[km.key] = _KeyState(fp, km.names, issues, kept, (km, fp, km.names, issues, kept) if again else None)
        if issues:
            st.issue_keys.add(km.key)
    if seeded:  # Services of the snapshot the memo knows nothing of
        return None
    st.retry_keys = {k: frozenset(marks) for k, marks in memo.retry_keys}
    if not st.retry_keys.keys() <= st.keys.keys():
        return None
    st.freed = frozenset(memo.freed)
    pools: tuple[tuple[Pool[Any], dict[Hashable, Any], Holdings], ...] = (
        (st.vips, seeds.vips, memo.vips),
        (st.service_ids, seeds.service_ids, memo.service_ids),
        (st.backend_ids, seeds.backend_ids, memo.backend_ids),
    )
    for pool, seed, held in pools:
        pool.value_of = dict(seed)
        if not _amend(pool.value_of, held) or not _owners_again(pool):
            return None
        pool.finish_seed()
    st.reverse_owner = dict(seeds.reverse_owner)
    if not _amend(st.reverse_owner, memo.reverse_owner):
        return None
    return st


def _holdings(actual: Mapping[Any, Any], seeded: Mapping[Any, Any]) -> Holdings:
    """How `actual` differs from what the base snapshot seeds."""
    if actual == seeded:  # the usual case, checked in C
        return Holdings()
    missing = object()
    held = [(k, v) for k, v in actual.items() if seeded.get(k, missing) != v]
    dropped = [k for k in seeded if k not in actual]
    return Holdings(tuple(sorted(held, key=sort_key)), tuple(sorted(dropped, key=sort_key)))


def _amend(mapping: dict[Any, Any], h: Holdings) -> bool:
    """Apply Holdings to a mapping seeded from the base snapshot; False if they do not fit it."""
    missing = object()
    for k in h.dropped:
        if mapping.pop(k, missing) is missing:
            return False
    mapping.update(h.held)
    return True


def _owners_again(pool: Pool[Any]) -> bool:
    """Make the pool's value -> owner map the inverse of its (amended) owner -> value map."""
    pool.owner_of = {v: o for o, v in pool.value_of.items()}
    return len(pool.owner_of) == len(pool.value_of)  # else a value is held twice


@dataclass(frozen=True)
class _Digest:
    """A fingerprint known by its digest only (a state resumed from a RenderMemo)."""

    value: str


# orjson writes a dataclass's fields except those named _x: exact only while the inputs have none.
_ORJSON_EXACT = not any(f.name.startswith("_") for cls in (Service, ServicePort, Endpoint, Node) for f in fields(cls))


def fingerprint_digest(fingerprint: object) -> str:
    """A digest of a Service's render inputs that is the same in every process (no hash seed, no
    object identity) and differs whenever the inputs differ: the inputs are frozen dataclasses of
    str, int, bool, None and tuples, which orjson writes field by field (a type it cannot write
    falls back to repr). A spurious difference costs a render; a false equality would leave a
    changed Service as it was, so the encoding must tell apart whatever == tells apart."""
    h = hashlib.blake2b(digest_size=32)
    try:
        if not _ORJSON_EXACT:
            raise TypeError("a model field orjson leaves out")
        data = orjson.dumps(fingerprint)
        h.update(b"j")  # fed in two parts: the digest of b"j" + data, without copying data
    except TypeError:
        data = b"r" + repr(fingerprint).encode("utf-8", "surrogatepass")
    h.update(data)
    return h.hexdigest()


def _digest_of(fingerprint: object) -> str | None:
    if fingerprint is None:
        return None
    if isinstance(fingerprint, _Digest):
        return fingerprint.value
    return fingerprint_digest(fingerprint)


def _same_inputs(fresh: object, cached: object) -> bool:
    if isinstance(cached, _Digest):
        return fresh is not None and fingerprint_digest(fresh) == cached.value
    return fresh == cached


def _fingerprint(cluster: ClusterState, key: str, connections: Connections | None) -> object:
    svc = cluster.services.get(key)
    if svc is None:
        return None
    eps = cluster.endpoints.get(key, ())
    # (node, its InternalIP) once per node, sorted: by name, as no two pairs share one.
    node = cluster.nodes.get
    nodes = tuple([(n, getattr(node(n), "internal_ip", None)) for n in sorted({ep.node for ep in eps})])
    conns = None
    if connections:
        # None when no count is this Service's, as without counts at all: its inputs are the same
        # (an empty count dict is no count: render reads both as {}).
        conns = tuple(sorted((n, tuple(sorted(c.items()))) for n, c in connections.items()
                             if c and n.split(":", 1)[0] == key)) or None
    return (svc, eps, nodes, conns)


def _cached_fp(st: _State, key: str) -> object:
    ks = st.keys.get(key)
    return ks.fingerprint if ks is not None else None


def _reserve_vip(st: _State, svc: Service) -> None:
    """Hold the VIP of a fallen-back Service, so that no other Service takes it meanwhile and it
    comes back on the same address.

    Which address: the one it holds (the last applied snapshot's, which the audit trail vouches
    for), else its own request, else its status.loadBalancer.ingress IP, each only if the
    Service's namespace may hold it. Not the fallback annotations: anyone who may edit the
    Service can write those, so a VIP carried there could be forged to squat any address. The
    status is written through the services/status subresource, which the edit and admin roles
    do not grant; p4kube writes it and keeps it during the fallback, and it is the address
    kube-proxy serves meanwhile, so it is the one actually in use."""
    if st.vips.holds(svc.key) is not None:
        return
    pools = cast(VipSpace, st.vips.space)  # the vips pool is built over one (_fresh_state)
    asked = _requested_vip(svc)
    for ip in ((asked[0],) if asked else ()) + svc.ingress_ips:
        if pools.allows(ip, svc.namespace) and st.vips.take(svc.key, ip):
            return


def _reclaim_vip(st: _State, svc: Service) -> None:
    """Take back the VIP in a served Service's status.loadBalancer.ingress when it holds none:
    the status p4kube wrote (see _reserve_vip on why the status, not an annotation) is a claim
    that outranks another Service's bare request. A Service asking for another address gets
    that one instead, in its turn."""
    if st.vips.holds(svc.key) is not None or not svc.ingress_ips:
        return
    pools = cast(VipSpace, st.vips.space)  # the vips pool is built over one (_fresh_state)
    asked = _requested_vip(svc)
    for ip in svc.ingress_ips:
        if (asked is None or asked[0] == ip) and pools.allows(ip, svc.namespace) and st.vips.take(svc.key, ip):
            return


def _requested_vip(svc: Service) -> tuple[str, str] | None:
    """(address, field) a Service asks for: spec.loadBalancerIP, or for a Service that is not of
    type LoadBalancer its first spec.externalIPs entry. Both are checked against the pools like
    any request: neither field is trusted (spec.externalIPs names any address, cf. CVE-2020-8554)."""
    if svc.load_balancer_ip:
        return svc.load_balancer_ip, "spec.loadBalancerIP"
    if svc.type != "LoadBalancer" and svc.external_ips:
        return svc.external_ips[0], "spec.externalIPs[0]"
    return None


def _drop_key(st: _State, key: str, keep: set[str], keep_vip: bool = False) -> None:
    """Forget the snapshot services of `key` not in `keep`, releasing what they held."""
    ks = st.keys.get(key)
    if ks is None:
        return
    for name in ks.names:
        if name in keep:
            continue
        old = st.services.pop(name, None)
        st.service_ids.release(name)
        if old is not None:
            for b in old.backends:
                st.backend_ids.release((name, backend_key(b, old.backend_mode)))
            for rkey in old.reverse_nat_keys():
                _release_reverse(st, rkey, name)
    if not keep and not keep_vip:
        st.vips.release(key)


def _set_key(st: _State, key: str, ks: _KeyState | None) -> None:
    if ks is None:
        st.keys.pop(key, None)
    else:
        st.keys[key] = ks
    if ks is not None and ks.issues:
        st.issue_keys.add(key)
    else:
        st.issue_keys.discard(key)
    kinds = st.blocked.get(key)
    if ks is not None and kinds:
        st.retry_keys[key] = frozenset(kinds)
    else:
        st.retry_keys.pop(key, None)


def _block(st: _State, key: str, kind: str, value: object = None) -> None:
    """Record that Service `key` was refused because `value` (None: every value) of `kind` is held."""
    st.blocked.setdefault(key, set()).add((kind, value))


def _release_reverse(st: _State, rkey: _ReverseKey, name: str) -> None:
    if st.reverse_owner.get(rkey) == name:
        del st.reverse_owner[rkey]
        st.reverse_released.setdefault(rkey, name)


def _render_key(
    st: _State, config: LoadBalancerConfig, cluster: ClusterState, key: str, connections: Connections | None
) -> list[str]:
    """Re-render one Service; returns the snapshot names it now produces."""
    svc = cluster.services.get(key)
    if svc is None:
        _drop_key(st, key, keep=set())
        _set_key(st, key, None)
        return []
    issues: list[RenderIssue] = []
    kept: set[int] = set()  # indices of issues whose Service (port) is kept from the last snapshot
    fingerprint = _fingerprint(cluster, key, connections)
    skip = selection(config, svc)
    if skip is not None:
        if skip.keep and _previous_names(st, key):
            # A person's typo (an opt-in value that means nothing) is an error, not a removal.
            issues.append(RenderIssue(key, skip.reason, skip.severity))
            return _keep_key(st, key, fingerprint, issues, {0})
        # A Service in p4kube's automatic fallback keeps its VIP: kube-proxy serves it from the
        # Service's status meanwhile, and it comes back to the switches on the same address.
        _drop_key(st, key, keep=set(), keep_vip=svc.auto_fallback)
        if svc.auto_fallback:
            _reserve_vip(st, svc)
        if skip.severity:
            reason = f"{skip.reason}; not served" if skip.keep else skip.reason
            issues.append(RenderIssue(key, reason, skip.severity))
        _set_key(st, key, _KeyState(fingerprint, (), tuple(issues)))
        return []

    if config.backend_mode == "nodePort" and svc.external_traffic_policy != "Local":
        if config.traffic_policy.require_local:
            issues.append(RenderIssue(key, f"{_CLUSTER_POLICY}; refused (spec.trafficPolicy.requireLocal)", "error"))
            if _previous_names(st, key):  # an error is never a removal
                return _keep_key(st, key, fingerprint, issues, {len(issues) - 1})
            _drop_key(st, key, keep=set())
            _set_key(st, key, _KeyState(fingerprint, (), tuple(issues)))
            return []
        issues.append(RenderIssue(key, _CLUSTER_POLICY))
    timeout_s, warning = drain_timeout(config.connection_drain_timeout_s, svc)
    if warning is not None:
        issues.append(RenderIssue(key, warning))
    vip = _choose_vip(st, svc, issues)
    had = _previous_names(st, key)  # before _follow_renames renames them
    if vip is None:
        if had:  # every port keeps its last applied entries, on its VIP
            return _keep_key(st, key, fingerprint, issues, set(range(len(issues))))
        st.vips.release(key)
    produced: dict[str, ServiceSnapshot] = {}
    if vip is not None:
        names = [entry_name(svc, port) for port in svc.ports]
        _follow_renames(st, key, svc, names)
        for port, name in zip(svc.ports, names):
            snap_svc = _render_port(st, config, cluster, svc, port, name, vip, connections, issues, kept, timeout_s)
            if snap_svc is not None:
                produced[snap_svc.name] = snap_svc
    # Release what this Service no longer uses, then record what it produces now. One that
    # produces nothing and had nothing before (every port refused, or back from a fallback into
    # an error) keeps the VIP it was given, as a full render does (it never knew the key, so
    # released nothing): the address its status may still show is not handed to another
    # Service meanwhile, and a fix brings it back on it.
    _drop_key(st, key, keep=set(produced), keep_vip=not produced and not had)
    for name, s in produced.items():
        old = st.services.get(name)
        if s is old or (old is not None and s == old):
            # Unchanged: the previous object stays, with its fragment digest (and schema check)
            # already computed: a render against --previous hashes only what changed.
            continue
        check_service_schema(s)
        if old is not None:
            now = {backend_key(b, s.backend_mode) for b in s.backends}
            for b in old.backends:
                k = backend_key(b, old.backend_mode)
                if k not in now or old.backend_mode != s.backend_mode:
                    st.backend_ids.release((name, k))
        st.services[name] = s
    _set_key(st, key, _KeyState(fingerprint, tuple(sorted(produced)), tuple(issues), frozenset(kept)))
    return list(produced)


def _service_of(name: str) -> str:
    """namespace/name of the Service a snapshot name belongs to."""
    return name.split(":", 1)[0]


def _previous_names(st: _State, key: str) -> tuple[str, ...]:
    """The snapshot names Service `key` has in the last snapshot (this render's previous)."""
    ks = st.keys.get(key)
    return ks.names if ks is not None else ()


def _keep_key(st: _State, key: str, fingerprint: object, issues: list[RenderIssue], kept: set[int]) -> list[str]:
    """Keep every snapshot service of `key` exactly as the last snapshot has it, with all it holds."""
    names = _previous_names(st, key)
    _set_key(st, key, _KeyState(fingerprint, names, tuple(issues), frozenset(kept)))
    return list(names)


def _follow_renames(st: _State, key: str, svc: Service, names: list[str]) -> None:
    """Give each port the snapshot service it had before, whatever its name becomes.

    A Service's snapshot names depend on its port count (ns/name, or ns/name:port), so adding,
    removing or renaming a port renames the others. A port that existed before (same number and
    protocol; else the same name) keeps its service id, backend ids, reverse_nat keys and bucket
    assignment under its new name: its table entries stay byte-identical, and the diff, which
    compares entries, writes nothing for it. Ports that are gone are released here."""
    ks = st.keys.get(key)
    if ks is None or not ks.names:
        return
    olds = {name: st.services[name] for name in ks.names if name in st.services}
    if all(name in olds for name in names) and len(olds) == len(names):
        same = all((olds[nm].port, olds[nm].protocol) == (p.port, p.protocol) for nm, p in zip(names, svc.ports))
        if same:
            return  # the common case: nothing renamed
    by_ident = {(s.port, s.protocol): name for name, s in olds.items()}
    pred: dict[str, str] = {}  # new name -> old name
    used: set[str] = set()
    for port, name in zip(svc.ports, names):
        old = by_ident.get((port.port, port.protocol))
        if old is not None and old not in used:
            pred[name] = old
            used.add(old)
    for name in names:
        if name not in pred and name in olds and name not in used:
            pred[name] = name
            used.add(name)
    gone = [name for name in ks.names if name not in used]
    if gone:
        _drop_key(st, key, keep=used, keep_vip=True)
    renames = {old: new for new, old in pred.items() if old != new}
    if renames:
        st.service_ids.rekey(renames)
        st.backend_ids.rekey(
            {(old, backend_key(b, olds[old].backend_mode)): (new, backend_key(b, olds[old].backend_mode)) for old, new in renames.items() for b in olds[old].backends}
        )
        moves = [
            (rkey, new)
            for old, new in renames.items()
            for rkey in olds[old].reverse_nat_keys()
            if st.reverse_owner.get(rkey) == old
        ]
        for rkey, new in moves:
            st.reverse_owner[rkey] = new
        for old in renames:
            st.services.pop(old, None)
        for old, new in renames.items():
            st.services[new] = replace(olds[old], name=new)
    ks.names = tuple(sorted(pred))


def _choose_vip(st: _State, svc: Service, issues: list[RenderIssue]) -> str | None:
    """Requested IP, else the one it holds, else its status ingress IP, else the lowest free one.

    On an error (None) the Service still holds the VIP it held: the caller keeps or releases it."""
    key = svc.key
    asked = _requested_vip(svc)
    pools = cast(VipSpace, st.vips.space)  # the vips pool is built over one (_fresh_state)
    if asked:
        requested, where = asked
        # Every request, whatever field carries it, comes from the pools the namespace may use:
        # else a Service could claim any address (the API server's ClusterIP, another's VIP).
        refusal = pools.refusal(requested, svc.namespace)
        if refusal is not None:
            issues.append(RenderIssue(key, f"requested IP {clip(requested, fit=True)} ({where}) {refusal}", "error"))
            return None
        if not st.vips.take(key, requested):
            holder = st.vips.owner_of.get(requested)
            who = f"Service {holder}" if holder else "a Service removed in this same change (free from the next version)"
            issues.append(RenderIssue(key, f"requested IP {requested} is already in use by {who}", "error"))
            _block(st, key, "vip", requested)
            return None
        return requested
    held = st.vips.holds(key)
    if held is not None and pools.allows(held, svc.namespace):
        return held
    if held is not None:
        st.vips.release(key)  # no pool of its namespace covers it now: move to one that does
    for ip in svc.ingress_ips:
        if pools.allows(ip, svc.namespace) and st.vips.take(key, ip):
            return ip
    try:
        return st.vips.allocate(key, pools.ranges_for(svc.namespace))
    except Exhausted:
        issues.append(RenderIssue(key, pools.describe_full(svc.namespace), "error"))
        _block(st, key, "vip")
        if held is not None:
            st.vips.restore(key, held)
        return None


def _render_port(
    st: _State,
    config: LoadBalancerConfig,
    cluster: ClusterState,
    svc: Service,
    port: ServicePort,
    name: str,
    vip: str,
    connections: Connections | None,
    issues: list[RenderIssue],
    kept: set[int],
    drain_timeout_s: float = 0.0,
) -> ServiceSnapshot | None:
    """One Service port. On an error, a port the last snapshot has keeps that snapshot's service
    (and what it holds): an error is never a removal (DESIGN.md 6.1)."""
    mode = config.backend_mode
    if port.protocol not in IP_PROTOCOLS:
        # Not a failure to serve: the port is now one the switches cannot balance at all.
        issues.append(
            RenderIssue(name, f"protocol {port.protocol}: load_balancer.p4 balances TCP and UDP only; left to kube-proxy", "error")
        )
        return None
    old = st.services.get(name)
    first_issue = len(issues)
    allocated: list[tuple[Pool[int], Hashable]] = []  # what this attempt took, undone if it fails

    def fail() -> ServiceSnapshot | None:
        for pool, owner in allocated:
            pool.unallocate(owner)
        if old is None or old.vip != vip:
            # Not in the last snapshot: not served (with its issue). Or its Service moved to
            # another VIP in this render: the port cannot stay on an address it no longer holds.
            return None
        # Kept as the last snapshot has it: only this attempt's errors are worth reporting.
        errors = [i for i in issues[first_issue:] if i.severity == "error"]
        issues[first_issue:] = errors
        kept.update(range(first_issue, len(issues)))
        return old

    # Backends: key -> (node, address, port, replicas)
    targets: dict[str, tuple[str, str, int, int]] = {}
    if mode == "nodePort":
        if not port.node_port:
            issues.append(RenderIssue(name, "port has no nodePort (nodePort backend mode needs one)", "error"))
            return fail()
        counts, unusable = node_backends(cluster, svc)
        for node in unusable:
            issues.append(RenderIssue(name, f"node {node} has ready endpoints but no known InternalIP; left out"))
        for node, count in counts.items():
            targets[node] = (node, cluster.nodes[node].internal_ip or "", port.node_port, count)
    else:
        refused: list[str] = []
        for ep in cluster.endpoints.get(svc.key, ()):
            if not trusted_pod_backend(config, ep):
                refused.append(ep.address)
                continue
            tp = target_port(port, ep)
            if tp is None:
                issues.append(RenderIssue(name, f"endpoint {ep.address} has no port named {port.name!r}; left out"))
                continue
            targets[ep.address] = (ep.node, ep.address, tp, 1)
        if refused:
            issues.append(RenderIssue(name, untrusted_backends_issue(config, refused)))
    try:
        service_id = _allocate(st.service_ids, name, allocated)
    except Exhausted as e:
        issues.append(RenderIssue(name, str(e), "error"))
        _block(st, svc.key, "service-id")
        return fail()
    proto = IP_PROTOCOLS[port.protocol]
    # reverse_nat keys are shared by all Services: the first holder keeps a contested key.
    conflict = False
    for k, (_, address, tport, _) in list(targets.items()):
        rkey = (address, tport, proto)
        owner = st.reverse_owner.get(rkey)
        who = None
        if owner is not None and owner != name:
            who = _service_of(owner)  # the Service, not its port's name: that changes with its port count
        elif owner is None and st.reverse_released.get(rkey, name) != name:
            who = f"{_service_of(st.reverse_released[rkey])} until the next version"
        if who is not None:
            issues.append(RenderIssue(name, f"backend {address}:{tport}/{port.protocol} already serves {who}; left out", "error"))
            _block(st, svc.key, "reverse", rkey)
            del targets[k]
            conflict = True
    bucket_count = config.buckets_per_service
    previous_assignment = old.assignment if old is not None and old.bucket_count == bucket_count else None
    replicas = {k: t[3] for k, t in sorted(targets.items())}
    # least-connections always records its input (0 when the switch reported nothing), so a
    # Service's output never depends on whether other Services had connection counts.
    conns = dict((connections or {}).get(name, {})) if config.algorithm == "least-connections" else None
    try:
        # Buckets still draining move again only when nothing else can (their drain's old
        # connections would go to the intermediate backend).
        draining = {d.bucket for d in old.drains if d.until > st.now} if previous_assignment is not None and old is not None else ()
        assignment = buckets.assign(config.algorithm, bucket_count, replicas, previous_assignment, conns, draining)
    except ValueError as e:
        issues.append(RenderIssue(name, str(e), "error"))
        return fail()
    per_backend: dict[str | None, int] = {}
    for held in assignment:
        per_backend[held] = per_backend.get(held, 0) + 1
    drains: tuple[Drain, ...] = ()
    rows = dict(targets)
    if targets:
        same_mode = old if old is not None and old.backend_mode == mode else None
        drains = next_drains(
            same_mode, assignment, timeout_s=drain_timeout_s, now=st.now, generation_floor=st.generation_floor
        )
        drains = _keep_sources(st, name, proto, old, _live_sources(cluster, old, drains), rows)
    backends = []
    for k in sorted(rows, key=lambda k: (rows[k][0], rows[k][1])):
        node, address, tport, reps = rows[k]
        try:
            bid = _allocate(st.backend_ids, (name, k), allocated)
        except Exhausted as e:
            issues.append(RenderIssue(name, str(e), "error"))
            _block(st, svc.key, "backend-id")
            return fail()
        backends.append(
            Backend(
                node=node,
                address=address,
                port=tport,
                replicas=reps,
                buckets=per_backend.get(k, 0),
                backend_id=bid,
                active_connections=(conns or {}).get(k, 0) if conns is not None else None,
            )
        )
    result = ServiceSnapshot(
        name=name,
        service_id=service_id,
        vip=vip,
        port=port.port,
        protocol=port.protocol,
        algorithm=config.algorithm,
        bucket_count=bucket_count,
        backend_mode=mode,
        backends=tuple(backends),
        assignment=assignment if targets else (None,) * bucket_count,
        drains=drains,
    )
    if conflict and old is not None and result != old:
        # Served without the contested backends only if that is what it already was (a new
        # Service is served so from the start); else it keeps its last applied entries.
        return fail()
    if not targets:
        issues.append(RenderIssue(name, "no ready endpoints: VIP left to kube-proxy until replicas are ready"))
    now = {(address, tport, proto) for _, address, tport, _ in rows.values()}
    if old is not None:
        for released_key in old.reverse_nat_keys():
            if released_key not in now:
                _release_reverse(st, released_key, name)
    for rkey in now:
        st.reverse_owner[rkey] = name
    return result


_CLUSTER_POLICY = (
    f"{CLUSTER_TRAFFIC_POLICY} kube-proxy on the chosen node re-balances over every pod, "
    "so replica weights do not hold; set Local"
)


def _live_sources(cluster: ClusterState, old: ServiceSnapshot | None, drains: tuple[Drain, ...]) -> tuple[Drain, ...]:
    """The drains, but those starting now from a source that cannot serve its established
    connections: its node left the cluster, is not Ready, or (nodePort mode) no longer has the
    address the entries name. Such a drain would only keep a dead backend's id and reverse_nat
    key for the timeout and cost a second transaction, for connections that are gone anyway.
    A drain already running is kept until it ends (a node lost mid-drain does not change the
    Service's inputs, so an incremental render could not see it: full and incremental renders
    must agree)."""
    if not drains or old is None:
        return drains
    before = {backend_key(b, old.backend_mode): b for b in old.backends}
    running = set(old.drains)

    def alive(d: Drain) -> bool:
        if d in running:
            return True
        b = before.get(d.source)
        node = cluster.nodes.get(b.node) if b is not None else None
        if b is None or node is None or not node.ready:
            return False
        return old.backend_mode == "podIP" or node.internal_ip == b.address

    return tuple(d for d in drains if alive(d))


def _keep_sources(
    st: _State,
    name: str,
    proto: int,
    old: ServiceSnapshot | None,
    drains: tuple[Drain, ...],
    rows: dict[str, tuple[str, str, int, int]],
) -> tuple[Drain, ...]:
    """Add to `rows` each drain's source that is no longer a backend (0 replicas), as the
    previous snapshot has it, so its backend id and reverse_nat entry stay for the drain.
    A source whose reverse_nat key another Service holds now cannot drain: its drains go."""
    if not drains or old is None:
        return drains
    before = {backend_key(b, old.backend_mode): b for b in old.backends}
    kept = []
    for d in drains:
        if d.source not in rows:
            b = before.get(d.source)
            if b is None or st.reverse_owner.get((b.address, b.port, proto), name) != name:
                continue
            rows[d.source] = (b.node, b.address, b.port, 0)
        kept.append(d)
    return tuple(kept)


def _allocate(pool: Pool[int], owner: Hashable, allocated: list[tuple[Pool[int], Hashable]]) -> int:
    """The id `owner` holds, else a new one, recorded in `allocated` so that a port that fails
    later in the same render hands it back (raises Exhausted when none is free)."""
    if pool.holds(owner) is not None:
        return pool.allocate(owner)
    value = pool.allocate(owner)
    allocated.append((pool, owner))
    return value


def issues_by_service(issues: Iterable[RenderIssue]) -> dict[str | None, list[RenderIssue]]:
    out: dict[str | None, list[RenderIssue]] = {}
    for i in issues:
        out.setdefault(i.service, []).append(i)
    return out


__all__ = ["Renderer", "RenderResult", "RenderIssue", "render"]
