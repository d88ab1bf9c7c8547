"""Table, counter and register state of one pipeline: entries keyed by canonical integer tuples.

A key is one value per P4Info match field, in P4Info order: an int for EXACT and OPTIONAL,
(value, prefix_len) for LPM, (value, mask) for TERNARY, (low, high) for RANGE, and None for an
omitted (don't care) field; tables that need a priority append it as a last element. Exact-only
tables therefore have plain int tuples as keys, which makes packet lookups one dict access.

Entries carry a BMv2-style handle: the lowest free one is reused, and reads list entries in
handle order (fixtures surprise 34), so read-backs compare equal to BMv2's.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass

from reconciler.sim.schema import (
    UNIT_BYTES,
    UNIT_PACKETS,
    CounterInfo,
    P4Schema,
    RegisterInfo,
    TableInfo,
)


@dataclass(frozen=True, slots=True, eq=False)
class Entry:
    key: tuple
    priority: int
    action_id: int
    params: tuple[int, ...]  # in the action's P4Info parameter order
    controller_metadata: int = 0
    metadata: bytes = b""
    idle_timeout_ns: int = 0
    handle: int = -1


@dataclass(frozen=True, slots=True, eq=False)
class DefaultEntry:
    action_id: int
    params: tuple[int, ...]
    controller_metadata: int = 0
    metadata: bytes = b""


class TableState:
    """The entries of one table. Not thread-safe: the owning device serializes access."""

    __slots__ = ("info", "size", "entries", "default", "direct_counts", "_free", "_next", "_lpm",
                 "_lpm_lengths", "_lpm_masks", "wire")

    def __init__(self, info: TableInfo) -> None:
        self.info = info
        self.size = info.size
        self.entries: dict[tuple, Entry] = {}
        action_id, params = info.initial_default
        self.default = DefaultEntry(action_id, params)
        # direct counter cells, [packets, bytes] per key (only for tables with a direct counter)
        self.direct_counts: dict[tuple, list[int]] = {}
        # key -> (entry, its bytes as a Read returns them: a ReadResponse field), made on the first read of
        # that very entry object (a modified entry is a new object), so large reads re-send
        # bytes instead of building a message per entry (sim/reads.py)
        self.wire: dict[tuple, tuple[Entry, bytes]] = {}
        self._free: list[int] = []
        self._next = 0
        self._lpm: dict[int, dict[int, Entry]] | None = {} if info.single_lpm else None
        self._lpm_lengths: list[int] = []
        width = info.fields[0].bitwidth if info.single_lpm else 0
        self._lpm_masks = [((1 << plen) - 1) << (width - plen) for plen in range(width + 1)]

    def __len__(self) -> int:
        return len(self.entries)

    def full(self) -> bool:
        return len(self.entries) >= self.size

    def insert(self, key: tuple, priority: int, action_id: int, params: tuple[int, ...],
               controller_metadata: int = 0, metadata: bytes = b"", idle_timeout_ns: int = 0
               ) -> Entry:
        handle = heapq.heappop(self._free) if self._free else self._take_next()
        stored = Entry(key, priority, action_id, params, controller_metadata, metadata,
                       idle_timeout_ns, handle)
        self.entries[key] = stored
        if self.info.direct_counter_id:
            self.direct_counts[key] = [0, 0]
        if self._lpm is not None:
            self._lpm_add(stored)
        return stored

    def _take_next(self) -> int:
        handle = self._next
        self._next += 1
        return handle

    def modify(self, old: Entry, action_id: int, params: tuple[int, ...],
               controller_metadata: int = 0, metadata: bytes = b"", idle_timeout_ns: int = 0
               ) -> None:
        stored = Entry(old.key, old.priority, action_id, params, controller_metadata, metadata,
                       idle_timeout_ns, old.handle)
        self.entries[old.key] = stored
        if self._lpm is not None:
            self._lpm_add(stored)

    def delete(self, entry: Entry) -> None:
        del self.entries[entry.key]
        self.direct_counts.pop(entry.key, None)
        heapq.heappush(self._free, entry.handle)
        if self._lpm is not None:
            value, plen = entry.key[0] if entry.key[0] is not None else (0, 0)
            bucket = self._lpm[plen]
            del bucket[value]
            if not bucket:
                del self._lpm[plen]
                self._lpm_lengths.remove(plen)

    def _lpm_add(self, entry: Entry) -> None:
        assert self._lpm is not None
        value, plen = entry.key[0] if entry.key[0] is not None else (0, 0)
        bucket = self._lpm.get(plen)
        if bucket is None:
            bucket = self._lpm[plen] = {}
            self._lpm_lengths.append(plen)
            self._lpm_lengths.sort(reverse=True)
        bucket[value] = entry

    def lookup_lpm(self, value: int) -> Entry | None:
        if self._lpm is None:
            raise TypeError(f"table {self.info.name} is not a single-field LPM table")
        for plen in self._lpm_lengths:
            hit = self._lpm[plen].get(value & self._lpm_masks[plen])
            if hit is not None:
                return hit
        return None

    def in_handle_order(self) -> list[Entry]:
        return sorted(self.entries.values(), key=_handle_of)

    def reset_default(self) -> None:
        action_id, params = self.info.initial_default
        self.default = DefaultEntry(action_id, params)


def _handle_of(entry: Entry) -> int:
    return entry.handle


class CounterState:
    """An indirect counter array: every cell exists and starts at zero."""

    __slots__ = ("info", "packets", "bytes")

    def __init__(self, info: CounterInfo) -> None:
        self.info = info
        self.packets = [0] * info.size
        self.bytes = [0] * info.size

    def set(self, index: int, packets: int, nbytes: int) -> None:
        # a PACKETS counter keeps no byte count and vice versa (BMv2 drops the other value)
        unit = self.info.unit
        self.packets[index] = 0 if unit == UNIT_BYTES else packets
        self.bytes[index] = 0 if unit == UNIT_PACKETS else nbytes

    def add(self, index: int, packets: int, nbytes: int) -> None:
        if not 0 <= index < self.info.size:
            raise IndexError(f"counter {self.info.name} has {self.info.size} cells; "
                             f"index {index} is out of range")
        unit = self.info.unit
        if unit != UNIT_BYTES:
            self.packets[index] += packets
        if unit != UNIT_PACKETS:
            self.bytes[index] += nbytes

    def cells(self) -> Iterator[tuple[int, int]]:
        return zip(self.packets, self.bytes)


class RegisterState:
    """A register array: every cell exists and starts at zero (as BMv2 allocates it when the
    pipeline is pushed). Kept sparse: the program touches few of conn_gen's 262,144 cells."""

    __slots__ = ("info", "_mask", "_cells")

    def __init__(self, info: RegisterInfo) -> None:
        self.info = info
        self._mask = (1 << info.bitwidth) - 1
        self._cells: dict[int, int] = {}

    def _check(self, index: int) -> None:
        if not 0 <= index < self.info.size:
            raise IndexError(f"register {self.info.name} has {self.info.size} cells; "
                             f"index {index} is out of range")

    def read(self, index: int) -> int:
        self._check(index)
        return self._cells.get(index, 0)

    def write(self, index: int, value: int) -> None:
        self._check(index)
        value &= self._mask  # bit<N> assignment truncates
        if value:
            self._cells[index] = value
        else:
            self._cells.pop(index, None)

    def nonzero(self) -> dict[int, int]:
        """The cells that are not 0, by index."""
        return dict(self._cells)


class PipelineState:
    """Everything one committed (or saved) pipeline holds: its schema, tables, counters and
    registers."""

    __slots__ = ("schema", "tables", "tables_by_name", "counters", "counters_by_name",
                 "registers_by_name")

    def __init__(self, schema: P4Schema) -> None:
        self.schema = schema
        self.tables: dict[int, TableState] = {t.id: TableState(t) for t in schema.tables}
        self.tables_by_name = {s.info.name: s for s in self.tables.values()}
        self.counters: dict[int, CounterState] = {c.id: CounterState(c) for c in schema.counters}
        self.counters_by_name = {s.info.name: s for s in self.counters.values()}
        self.registers_by_name = {r.name: RegisterState(r) for r in schema.registers}

    def table(self, name: str) -> TableState:
        try:
            return self.tables_by_name[name]
        except KeyError:
            raise KeyError(f"no table named {name!r} in the pipeline") from None

    def counter(self, name: str) -> CounterState:
        try:
            return self.counters_by_name[name]
        except KeyError:
            raise KeyError(f"no counter named {name!r} in the pipeline") from None

    def register(self, name: str) -> RegisterState:
        try:
            return self.registers_by_name[name]
        except KeyError:
            raise KeyError(f"no register named {name!r} in the pipeline") from None
