"""Diff between two snapshots: the minimal table writes, in dependency order (DESIGN.md 5).

P4Runtime may apply the updates of one WriteRequest in any order, so updates that depend on
each other are put in different phases; a phase must be fully written before the next starts.

    phase 0  withdraw: vip_table DELETE/MODIFY of Services whose service id is taken over by
             another Service (only when diffing unrelated snapshots, e.g. a rollback), so no
             VIP ever points at another Service's buckets
    phase 1  prepare:  INSERT/MODIFY of backend_table, reverse_nat, ipv4_lpm
    phase 2  publish:  INSERT/MODIFY of vip_table (a new Service becomes reachable last)
    phase 3  retract:  DELETE of vip_table (a removed Service stops being reachable first)
    phase 4  cleanup:  DELETE of backend_table, reverse_nat, ipv4_lpm
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterable, Literal, Mapping, Sequence

from . import p4names as n
from .snapshot import Entry, ServiceSnapshot, Snapshot, Value

UpdateKind = Literal["INSERT", "MODIFY", "DELETE"]
PHASE_NAMES = ("withdraw", "prepare", "publish", "retract", "cleanup")


@dataclass(frozen=True, slots=True)
class Update:
    kind: UpdateKind
    entry: Entry  # the entry to write; for DELETE, the entry being removed
    old: Entry | None = None  # for MODIFY, what the switch held before


@dataclass(frozen=True)
class ServiceChange:
    name: str
    change: Literal["added", "removed", "changed"]
    old: ServiceSnapshot | None
    new: ServiceSnapshot | None
    # The old snapshot name of a Service port that was renamed (ns/web -> ns/web:http when a
    # second port is added): the same port of the same Service, so "changed", never removed.
    renamed_from: str | None = None

    @property
    def current(self) -> ServiceSnapshot:
        """The Service after the change, or before it for a removed one."""
        s = self.new or self.old
        assert s is not None  # a change has at least one side
        return s


def port_identity(s: ServiceSnapshot) -> tuple[str, int, str]:
    """A Service port whatever its snapshot name: (namespace/name, port, protocol)."""
    return (s.service_key, s.port, s.protocol)


Phases = tuple[tuple[Update, ...], ...]  # len(PHASE_NAMES)


@dataclass(frozen=True, eq=False)
class SnapshotDiff:
    """The writes, in phases, and the Services they come from.

    `make_phases` builds the phases on first use: a plan needs only the counts per table and kind,
    and for writes onto empty tables (`known_counts`) those are counted from the Services without
    an Entry and an Update per write (348,137 of them for 5,000 new Services)."""

    make_phases: Callable[[], Phases]
    services: tuple[ServiceChange, ...] = field(default=())
    known_counts: Mapping[str, Mapping[str, int]] | None = None  # exactly what the phases count

    @cached_property
    def phases(self) -> Phases:
        return self.make_phases()

    @property
    def empty(self) -> bool:
        return not self._counts

    def updates(self) -> Iterable[Update]:
        for phase in self.phases:
            yield from phase

    def __len__(self) -> int:
        return sum(sum(per.values()) for per in self._counts.values())

    def counts(self) -> dict[str, dict[str, int]]:
        """Writes per table and kind, e.g. {"MyIngress.backend_table": {"MODIFY": 3}}."""
        return {t: dict(per) for t, per in self._counts.items()}

    @cached_property
    def _counts(self) -> dict[str, dict[str, int]]:
        # Counted once: a plan prints them in every form (350,000 updates at 5,000 new Services).
        if self.known_counts is not None:
            return {t: dict(per) for t, per in sorted(self.known_counts.items())}
        pairs = Counter((u.entry.table, u.kind) for u in self.updates())  # first-seen order, as before
        out: dict[str, dict[str, int]] = {}
        for (table, kind), count in pairs.items():
            out.setdefault(table, {})[kind] = count
        return dict(sorted(out.items()))


# An entry's identity on the switch: its table and its match key.
_Key = tuple[str, tuple[Value, ...]]


def _keyed(entries: Iterable[Entry]) -> dict[_Key, Entry]:
    return {(e.table, e.key): e for e in entries}


def diff_entries(before: Iterable[Entry], after: Iterable[Entry]) -> SnapshotDiff:
    """Entry-level diff between any two sets of entries, e.g. what a switch was read back to
    hold -> what a snapshot says it must hold (drift repair, rollback). Entries are compared by
    table, key, action and parameters; which Service owns them plays no part."""
    b, a = _keyed(before), _keyed(after)
    old_vip = {e.args[0]: k for k, e in b.items() if e.table == n.VIP_TABLE}
    new_vip = {e.args[0]: k for k, e in a.items() if e.table == n.VIP_TABLE}
    taken_over = {sid for sid, k in new_vip.items() if sid in old_vip and old_vip[sid] != k}
    return SnapshotDiff(lambda: _phases(b, a, taken_over))


def diff_snapshots(old: Snapshot | None, new: Snapshot) -> SnapshotDiff:
    """The writes that turn a switch holding `old` (None: empty tables) into one holding `new`.

    Work is proportional to the Services that changed: unchanged Services (the same objects,
    or equal ones) are skipped without generating their entries. Writes are per entry (table,
    key, action, parameters), so a Service port whose snapshot name changed but whose entries
    did not costs no write; `services` reports it as "changed" with `renamed_from`."""
    old_services = old.by_name if old is not None else {}
    new_services = new.by_name
    changes: list[ServiceChange] = []
    olds: list[ServiceSnapshot] = []  # whose entries are the writes' `before`, in name order
    news: list[ServiceSnapshot] = []  # and `after`
    gone: list[ServiceSnapshot] = []
    for name in sorted(old_services.keys() | new_services.keys()):
        o, nw = old_services.get(name), new_services.get(name)
        if o is not None and nw is not None:
            if o is nw or o == nw:
                continue
            changes.append(ServiceChange(name, "changed", o, nw))
        elif nw is not None:
            changes.append(ServiceChange(name, "added", o, nw))
        else:
            assert o is not None  # the name came from old or new
            gone.append(o)
        if o is not None:
            olds.append(o)
        if nw is not None:
            news.append(nw)
    if gone:
        # A Service port whose snapshot name changed (its Service gained or lost a port) is the
        # same port: pair it with its new name. Its entries are compared like any others.
        renamed: dict[tuple[str, int, str], list[ServiceSnapshot]] = {}
        for o in gone:
            renamed.setdefault(port_identity(o), []).append(o)
        for i, c in enumerate(changes):
            if c.change == "added" and c.new is not None and renamed.get(port_identity(c.new)):
                o = renamed[port_identity(c.new)].pop(0)
                changes[i] = ServiceChange(c.name, "changed", o, c.new, renamed_from=o.name)
        changes += [ServiceChange(o.name, "removed", o, None) for os in renamed.values() for o in os]
        changes.sort(key=lambda c: c.name)
    old_globals: tuple[Entry, ...] = tuple(old.global_entries) if old is not None else ()
    new_globals: tuple[Entry, ...] = tuple(new.global_entries)
    if old_globals == new_globals:
        old_globals = new_globals = ()
    # A service id that changes hands (unrelated snapshots, e.g. a rollback to other history):
    # only changed Services can give or take one, so only they are looked at.
    # A renamed Service port is the same owner (port_identity), not a takeover.
    old_owner = {c.old.service_id: c.old for c in changes if c.old is not None}
    taken_over: set[Value] = {
        c.new.service_id
        for c in changes
        if c.new is not None
        and (o := old_owner.get(c.new.service_id)) is not None
        and o.name != c.new.name
        and port_identity(o) != port_identity(c.new)
    }

    def make_phases() -> Phases:
        before = [e for o in olds for es in o.entries().values() for e in es] + list(old_globals)
        after = [e for nw in news for es in nw.entries().values() for e in es] + list(new_globals)
        return _phases(_keyed(before), _keyed(after), taken_over)

    onto_empty = not old_globals and not any(_has_entries(o) for o in olds)
    return SnapshotDiff(make_phases, tuple(changes), _insert_counts(news, new_globals) if onto_empty else None)


_SERVICE_TABLES = (n.VIP_TABLE, n.BACKEND_TABLE, n.REVERSE_NAT)


def _has_entries(s: ServiceSnapshot) -> bool:
    return bool(s.backends) and s.assignment[0] is not None  # as ServiceSnapshot.entries()


def _insert_counts(news: Iterable[ServiceSnapshot], globals_: Sequence[Entry]) -> dict[str, dict[str, int]] | None:
    """What _phases counts when nothing is held (every distinct key an INSERT), from the keys
    ServiceSnapshot.entries() would give, without making the entries: the vip_table and
    reverse_nat keys as entries() writes them, the buckets as (service id, 0..len(assignment)-1);
    Services sharing a service id or a reverse_nat key write one entry per key, as in _keyed."""
    if any(e.table in _SERVICE_TABLES for e in globals_):
        return None  # config-owned entries are routes; anything else: count from the phases
    vips: set[tuple[Value, ...]] = set()
    reverse: set[tuple[Value, ...]] = set()
    buckets: dict[Value, int] = {}  # service id -> how many buckets (keys 0..n-1)
    for s in news:
        if not _has_entries(s):
            continue
        proto = n.IP_PROTOCOLS[s.protocol]
        vips.add((s.vip, s.port, proto))
        reverse.update((b.address, b.port, proto) for b in s.backends)
        buckets[s.service_id] = max(buckets.get(s.service_id, 0), len(s.assignment))
    per_table: dict[str, int] = {n.VIP_TABLE: len(vips), n.BACKEND_TABLE: sum(buckets.values()), n.REVERSE_NAT: len(reverse)}
    others = Counter(t for t, _ in {(e.table, e.key) for e in globals_})
    for t, c in others.items():
        per_table[t] = per_table.get(t, 0) + c
    return {t: {"INSERT": c} for t, c in per_table.items() if c}


def _phases(
    b: dict[_Key, Entry], a: dict[_Key, Entry], taken_over: set[Value]
) -> tuple[tuple[Update, ...], ...]:
    """Order the writes turning entries `b` into `a` (see the module docstring).

    `taken_over`: service ids whose owner changes. Every VIP pointing at one of them is
    withdrawn in phase 0, before its buckets are rewritten for the new owner, and published
    again (as an INSERT, even when its bytes are unchanged) in phase 2 once they are."""
    phases: list[list[Update]] = [[] for _ in PHASE_NAMES]
    if taken_over:
        taken_over = taken_over & _sids_with_changes(b, a)  # identical bytes: nothing to protect
    withdrawn: set[_Key] = set()
    for k, e in b.items():
        if e.table == n.VIP_TABLE and e.args[0] in taken_over:
            phases[0].append(Update("DELETE", e))
            withdrawn.add(k)
    for k, e in a.items():
        prev = None if k in withdrawn else b.get(k)
        if e.table == n.VIP_TABLE and prev is not None and e.args[0] in taken_over:
            phases[0].append(Update("DELETE", prev))
            withdrawn.add(k)
            prev = None
        if prev is None:
            kind: UpdateKind = "INSERT"
        elif (prev.action, prev.args) != (e.action, e.args):
            kind = "MODIFY"
        else:
            continue
        phases[2 if e.table == n.VIP_TABLE else 1].append(Update(kind, e, prev))
    for k, e in b.items():
        if k in a or k in withdrawn:
            continue
        phases[3 if e.table == n.VIP_TABLE else 4].append(Update("DELETE", e))
    return tuple(_in_write_order(p) for p in phases)


def _in_write_order(updates: list[Update]) -> tuple[Update, ...]:
    """sorted(updates, key=(table's place in TABLE_ORDER, else 99; entry.sort_key())), stable, one
    table at a time: a table whose keys are all integers (backend_table: service id, bucket) is
    ordered by its keys themselves, which sort_key orders alike, without a key tuple per entry."""
    order = {t: i for i, t in enumerate(n.TABLE_ORDER)}
    groups: dict[int, list[Update]] = {}
    for u in updates:
        groups.setdefault(order.get(u.entry.table, 99), []).append(u)
    out: list[Update] = []
    for _, group in sorted(groups.items()):
        if all(v.__class__ is int for u in group for v in u.entry.key):
            group.sort(key=lambda u: u.entry.key)
        else:
            group.sort(key=lambda u: u.entry.sort_key())
        out += group
    return tuple(out)


def _sids_with_changes(b: dict[_Key, Entry], a: dict[_Key, Entry]) -> set[Value]:
    """Service ids whose VIP or bucket entries differ between `b` and `a`."""
    out: set[Value] = set()
    for k in b.keys() | a.keys():
        x, y = b.get(k), a.get(k)
        if x is not None and y is not None and (x.action, x.args) == (y.action, y.args):
            continue
        for e in (x, y):
            if e is None:
                continue
            if e.table == n.VIP_TABLE:
                out.add(e.args[0])
            elif e.table == n.BACKEND_TABLE:
                out.add(e.key[0])
    return out
