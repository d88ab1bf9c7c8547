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

from dataclasses import dataclass, field
from typing import Iterable, Literal

from . import p4names as n
from .snapshot import Entry, ServiceSnapshot, Snapshot

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


@dataclass(frozen=True)
class SnapshotDiff:
    phases: tuple[tuple[Update, ...], ...]  # len(PHASE_NAMES)
    services: tuple[ServiceChange, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not any(self.phases)

    def updates(self) -> Iterable[Update]:
        for phase in self.phases:
            yield from phase

    def __len__(self) -> int:
        return sum(len(p) for p in self.phases)

    def counts(self) -> dict[str, dict[str, int]]:
        """Writes per table and kind, e.g. {"MyIngress.backend_table": {"MODIFY": 3}}."""
        out: dict[str, dict[str, int]] = {}
        for u in self.updates():
            per = out.setdefault(u.entry.table, {})
            per[u.kind] = per.get(u.kind, 0) + 1
        return dict(sorted(out.items()))


def _keyed(entries: Iterable[Entry]) -> dict[tuple[str, tuple], Entry]:
    return {(e.table, e.key): e for e in entries}


def diff_entries(before: Iterable[Entry], after: Iterable[Entry]) -> SnapshotDiff:
    """Entry-level diff between any two sets of entries, e.g. what a switch was read back to
    hold -> what a snapshot says it must hold (drift repair, rollback). Entries are compared by
    table, key, action and parameters; which Service owns them plays no part."""
    return SnapshotDiff(_phases(_keyed(before), _keyed(after)))


def diff_snapshots(old: Snapshot | None, new: Snapshot) -> SnapshotDiff:
    """The writes that turn a switch holding `old` (None: empty tables) into one holding `new`.

    Work is proportional to the Services that changed: unchanged Services (the same objects,
    or equal ones) are skipped without generating their entries."""
    old_services = old.by_name if old is not None else {}
    new_services = new.by_name
    changes: list[ServiceChange] = []
    before: list[Entry] = []
    after: list[Entry] = []
    for name in sorted(old_services.keys() | new_services.keys()):
        o, nw = old_services.get(name), new_services.get(name)
        if o is not None and nw is not None:
            if o is nw or o == nw:
                continue
            changes.append(ServiceChange(name, "changed", o, nw))
        else:
            changes.append(ServiceChange(name, "added" if o is None else "removed", o, nw))
        if o is not None:
            for es in o.entries().values():
                before.extend(es)
        if nw is not None:
            for es in nw.entries().values():
                after.extend(es)
    old_globals = old.global_entries if old is not None else ()
    if tuple(old_globals) != tuple(new.global_entries):
        before.extend(old_globals)
        after.extend(new.global_entries)
    return SnapshotDiff(_phases(_keyed(before), _keyed(after)), tuple(changes))


def _phases(b: dict[tuple[str, tuple], Entry], a: dict[tuple[str, tuple], Entry]) -> tuple[tuple[Update, ...], ...]:
    phases: list[list[Update]] = [[] for _ in PHASE_NAMES]
    # A service id whose VIP entry changes hands (another VIP now points at it): the old VIP
    # must stop pointing at that id before its buckets are rewritten for the new owner.
    old_vip = {e.args[0]: k for k, e in b.items() if e.table == n.VIP_TABLE}
    new_vip = {e.args[0]: k for k, e in a.items() if e.table == n.VIP_TABLE}
    taken_over = {sid for sid, k in new_vip.items() if sid in old_vip and old_vip[sid] != k}
    for k, e in a.items():
        prev = b.get(k)
        if prev is None:
            kind: UpdateKind = "INSERT"
        elif (prev.action, prev.args) != (e.action, e.args):
            kind = "MODIFY"
        else:
            continue
        if e.table == n.VIP_TABLE:
            early = prev is not None and prev.args[0] in taken_over
            phases[0 if early else 2].append(Update(kind, e, prev))
        else:
            phases[1].append(Update(kind, e, prev))
    for k, e in b.items():
        if k in a:
            continue
        if e.table == n.VIP_TABLE:
            phases[0 if e.args[0] in taken_over else 3].append(Update("DELETE", e))
        else:
            phases[4].append(Update("DELETE", e))
    order = {t: i for i, t in enumerate(n.TABLE_ORDER)}
    for p in phases:
        p.sort(key=lambda u: (order.get(u.entry.table, 99), u.entry.sort_key()))
    return tuple(tuple(p) for p in phases)
