"""Sticky allocation of VIPs, service ids and backend ids.

Rule shared by all three: a value keeps its owner from the previous snapshot, and a value
released during a render is not handed to another owner in that same render (quarantine):
otherwise the diff could repoint live traffic of the old owner at the new one before the old
owner's VIP is withdrawn. New owners take the lowest free value, in the order the caller asks
(sorted names), so the output is deterministic and does not depend on render history.

Lowest-free is kept with a heap of freed indices below a high-water mark, so allocating costs
O(log n) per value instead of a scan over every value in use.
"""

from __future__ import annotations

import bisect
import heapq
import ipaddress
import socket
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Generic, Hashable, TypeVar

from ..intent.model import VipPool

V = TypeVar("V", bound=Hashable)
Owner = TypeVar("Owner", bound=Hashable)


class Exhausted(Exception):
    """No free value is left."""


class Space(Generic[V]):
    """An ordered space of candidate values."""

    @property
    def size(self) -> int:
        raise NotImplementedError

    def value_at(self, i: int) -> V:
        raise NotImplementedError

    def index_of(self, v: V) -> int | None:
        raise NotImplementedError

    def describe_full(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class IntSpace(Space[int]):
    lo: int
    hi: int
    what: str

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1

    def value_at(self, i: int) -> int:
        return self.lo + i

    def index_of(self, v: int) -> int | None:
        return v - self.lo if self.lo <= v <= self.hi else None

    def describe_full(self) -> str:
        return f"all {self.size} {self.what} are in use"


def ipv4_int(v: str) -> int:
    """int(ipaddress.IPv4Address(v)), at a quarter of its cost for an address in canonical dotted
    form (every address a snapshot holds: resume seeds 5,000 of them); anything else is read by
    ipaddress, which answers or raises as it always did."""
    try:
        packed = socket.inet_pton(socket.AF_INET, v)
    except (OSError, TypeError, ValueError):
        return int(ipaddress.IPv4Address(v))
    if socket.inet_ntop(socket.AF_INET, packed) != v:  # a C library reading "01" (glibc refuses it)
        return int(ipaddress.IPv4Address(v))
    return int.from_bytes(packed, "big")


class VipSpace(Space[str]):
    """The auto-assign pools' addresses, in pool order, then range order."""

    def __init__(self, pools: tuple[VipPool, ...]) -> None:
        self.pools = pools
        self._ranges: list[tuple[int, int]] = []
        self._starts: list[int] = []
        self._range_pool: list[VipPool] = []
        total = 0
        for pool in pools:
            if not pool.auto_assign:
                continue
            for lo, hi in pool.ranges:
                self._starts.append(total)
                self._ranges.append((int(lo), int(hi)))
                self._range_pool.append(pool)
                total += int(hi) - int(lo) + 1
        self._size = total

    @property
    def size(self) -> int:
        return self._size

    def value_at(self, i: int) -> str:
        r = bisect.bisect_right(self._starts, i) - 1
        return str(ipaddress.IPv4Address(self._ranges[r][0] + i - self._starts[r]))

    def index_of(self, v: str) -> int | None:
        a = ipv4_int(v)
        for start, (lo, hi) in zip(self._starts, self._ranges):
            if lo <= a <= hi:
                return start + a - lo
        return None

    def pool_of(self, v: str) -> VipPool | None:
        """The pool holding address `v` (pools never overlap: the intent check refuses it)."""
        try:
            a = ipaddress.IPv4Address(v)
        except ValueError:
            return None
        return next((p for p in self.pools if p.contains(a)), None)

    def allows(self, v: str, namespace: str) -> bool:
        """Whether a Service of `namespace` may hold `v`: inside a pool that serves it."""
        pool = self.pool_of(v)
        return pool is not None and pool.serves(namespace)

    def refusal(self, v: str, namespace: str) -> str | None:
        """Why a Service of `namespace` may not hold `v` (None: it may)."""
        pool = self.pool_of(v)
        if pool is None:
            return "is outside every vipPool"
        if not pool.serves(namespace):
            return f"is in vipPool {pool.name}, which serves namespaces {', '.join(pool.namespaces)} only"
        return None

    def ranges_for(self, namespace: str) -> list[tuple[int, int]] | None:
        """Index ranges [start, end) a Service of `namespace` may be given; None when every
        auto-assign pool serves it (the unrestricted, O(log n) allocation)."""
        if all(p.serves(namespace) for p in self._range_pool):
            return None
        return [
            (start, start + hi - lo + 1)
            for start, (lo, hi), pool in zip(self._starts, self._ranges, self._range_pool)
            if pool.serves(namespace)
        ]

    def describe_full(self, namespace: str | None = None) -> str:
        pools = [p for p in self.pools if p.auto_assign and (namespace is None or p.serves(namespace))]
        names = ", ".join(p.name for p in pools) or "none"
        which = f" serving namespace {namespace}" if namespace is not None and self.ranges_for(namespace) is not None else ""
        return f"no free address left in the auto-assign VIP pools{which} ({names})"


class Pool(Generic[V]):
    """Owner <-> value, with lowest-free allocation and per-render quarantine."""

    def __init__(self, space: Space[V]) -> None:
        self.space = space
        self.owner_of: dict[V, Hashable] = {}
        self.value_of: dict[Hashable, V] = {}
        self._quarantine: set[V] = set()
        self.released_log: list[V] = []  # values released in this render, in order
        self._heap: list[int] = []
        self._hwm = 0

    def seed(self, owner: Hashable, value: V) -> None:
        """Record a value held in the previous snapshot; call finish_seed() after the last one."""
        self.owner_of[value] = owner
        self.value_of[owner] = value

    def finish_seed(self) -> None:
        indices = [i for v in self.owner_of if (i := self.space.index_of(v)) is not None]
        self._hwm = max(indices) + 1 if indices else 0
        owned = set(indices)
        self._heap = [i for i in range(self._hwm) if i not in owned]
        heapq.heapify(self._heap)

    def begin_render(self) -> None:
        self._quarantine.clear()
        self.released_log.clear()

    @property
    def released_this_render(self) -> bool:
        return bool(self._quarantine)

    def released_values(self) -> frozenset[V]:
        return frozenset(self._quarantine)

    def end_render(self) -> None:
        """Values released in this render become free for the next one."""
        for v in self._quarantine:
            if v not in self.owner_of:
                i = self.space.index_of(v)
                if i is not None and i < self._hwm:
                    heapq.heappush(self._heap, i)
        self._quarantine.clear()

    def holds(self, owner: Hashable) -> V | None:
        return self.value_of.get(owner)

    def release(self, owner: Hashable) -> None:
        v = self.value_of.pop(owner, None)
        if v is not None:
            del self.owner_of[v]
            self._quarantine.add(v)
            self.released_log.append(v)

    def unallocate(self, owner: Hashable) -> None:
        """Undo an allocation made in this render that is not kept (a failed attempt): the value
        is free again at once, without quarantine, as if it had never been handed out (a full
        render that never made the attempt must produce the same allocations)."""
        v = self.value_of.pop(owner, None)
        if v is None:
            return
        del self.owner_of[v]
        i = self.space.index_of(v)
        if i is not None and i < self._hwm:
            heapq.heappush(self._heap, i)

    def restore(self, owner: Hashable, value: V) -> None:
        """Give back to `owner` the value it released earlier in this same render."""
        if value in self._quarantine and value not in self.owner_of and owner not in self.value_of:
            self._quarantine.discard(value)
            self.owner_of[value] = owner
            self.value_of[owner] = value

    def rekey(self, mapping: Mapping[Owner, Hashable]) -> None:
        """Move values from old owners to new ones (a renamed owner keeps what it holds). All old
        owners are detached first, so owners may swap names."""
        moved = [(new, self.value_of.pop(old)) for old, new in mapping.items() if old in self.value_of]
        for new, v in moved:
            self.owner_of[v] = new
            self.value_of[new] = v

    def is_free_for(self, owner: Hashable, value: V) -> bool:
        holder = self.owner_of.get(value)
        if holder is not None:
            return holder == owner
        return value not in self._quarantine

    def take(self, owner: Hashable, value: V) -> bool:
        """Give `value` to `owner` if it is free for it (releasing what it held); else False."""
        if not self.is_free_for(owner, value):
            return False
        if self.value_of.get(owner) not in (None, value):
            self.release(owner)
        self.owner_of[value] = owner
        self.value_of[owner] = value
        return True

    def allocate(self, owner: Hashable, within: list[tuple[int, int]] | None = None) -> V:
        """The owner's value if it holds one, else the lowest free value of the space (of the
        index ranges [start, end) `within`, when given)."""
        held = self.value_of.get(owner)
        if held is not None:
            return held
        if within is not None:
            return self._allocate_within(owner, within)
        while self._heap and self._heap[0] < self._hwm:
            v = self.space.value_at(self._heap[0])
            if v in self.owner_of or v in self._quarantine:
                heapq.heappop(self._heap)  # owned: pushed again on release; quarantined: at end_render
                continue
            heapq.heappop(self._heap)
            return self._give(owner, v)
        while self._hwm < self.space.size:
            v = self.space.value_at(self._hwm)
            self._hwm += 1
            if v not in self.owner_of and v not in self._quarantine:
                return self._give(owner, v)
        raise Exhausted(self.space.describe_full())

    def _allocate_within(self, owner: Hashable, within: list[tuple[int, int]]) -> V:
        """Lowest free value in `within` by a scan: restricted pools (a namespace's own) are
        small, and the result is the same pure function of what is held as allocate()'s."""
        for start, end in within:
            for i in range(start, end):
                v = self.space.value_at(i)
                if v in self.owner_of or v in self._quarantine:
                    continue
                if i >= self._hwm:  # keep the heap's invariant: every free index below hwm is in it
                    for j in range(self._hwm, i):
                        heapq.heappush(self._heap, j)
                    self._hwm = i + 1
                return self._give(owner, v)
        raise Exhausted(self.space.describe_full())

    def _give(self, owner: Hashable, v: V) -> V:
        self.owner_of[v] = owner
        self.value_of[owner] = v
        return v
