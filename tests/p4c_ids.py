"""How p4c numbers P4Runtime objects and names their aliases, reproduced so that tests can prove
the committed P4Info (and the shared BMv2 fixtures' P4Infos) consistent with their names: a Jenkins
one-at-a-time hash of the fully qualified name under an 8-bit resource prefix, linear probing in
sorted-name order, and the shortest unique dot-separated suffix as alias. Test-only: the reconciler
reads ids from the P4Info, it never computes them."""

from __future__ import annotations

from collections.abc import Iterable


def jenkins_one_at_a_time(data: bytes) -> int:
    """Bob Jenkins' one-at-a-time hash on 32-bit unsigned arithmetic, as p4c computes it."""
    h = 0
    for byte in data:
        h = (h + byte) & 0xFFFFFFFF
        h = (h + (h << 10)) & 0xFFFFFFFF
        h ^= h >> 6
    h = (h + (h << 3)) & 0xFFFFFFFF
    h ^= h >> 11
    h = (h + (h << 15)) & 0xFFFFFFFF
    return h


def assign_ids(prefix: int, names: Iterable[str], taken: Iterable[int] = ()) -> dict[str, int]:
    """The ids p4c gives the resources of one type (`prefix`, e.g. p4i.P4Ids.TABLE).

    Each id is `prefix << 24 | hash(name) & 0xffffff`. On a collision with an id already
    assigned (`taken`, or an earlier name) p4c increments the hash, not the id, and tries again;
    names are processed in sorted order so the result is deterministic.
    """
    if not 0 < prefix <= 0xFF:
        raise ValueError(f"resource prefix {prefix} is not an 8-bit P4Runtime id prefix")
    used = set(taken)
    ids: dict[str, int] = {}
    for name in sorted(set(names), key=lambda n: n.encode()):
        value = start = jenkins_one_at_a_time(name.encode())
        while (candidate := (prefix << 24) | (value & 0xFFFFFF)) in used:
            value = (value + 1) & 0xFFFFFFFF
            if value == start:
                raise ValueError(f"no P4Runtime id left for {name!r} with prefix 0x{prefix:02x}")
        used.add(candidate)
        ids[name] = candidate
    return ids


def shortest_unique_suffixes(names: Iterable[str]) -> dict[str, str]:
    """p4c's default alias of each fully qualified name: its shortest unique '.'-suffix.

    `names` must be every symbol of the program (tables, actions, counters, ...), since p4c
    computes uniqueness across all of them.
    """
    unique = list(dict.fromkeys(names))
    # How many names end with each suffix (a suffix is a tuple of trailing components).
    counts: dict[tuple[str, ...], int] = {}
    for name in unique:
        parts = tuple(name.split("."))
        for i in range(len(parts)):
            counts[parts[i:]] = counts.get(parts[i:], 0) + 1
    aliases: dict[str, str] = {}
    for name in unique:
        parts = tuple(name.split("."))
        for length in range(1, len(parts) + 1):
            suffix = parts[len(parts) - length :]
            if counts[suffix] < 2 or length == len(parts):
                aliases[name] = ".".join(suffix)
                break
    return aliases
