"""Bucket assignment: which backend each of a Service's buckets points at (DESIGN.md section 5).

A Service has ``bucket_count`` buckets (a power of two, 1..16384); the switch hashes a flow's
5-tuple to one bucket, and the bucket's ``backend_table`` entry picks the node. This module
decides those entries. Everything here is a pure, deterministic function of its arguments: names
are hashed with hashlib (never ``hash()``, which is salted per process), ties are broken by a
stable hash and then by the key itself, so two machines render byte-identical snapshots.

Two steps:
1. *Quotas*: how many buckets each backend gets (``apportion``, largest-remainder, so every
   backend is within one bucket of its exact proportional share).
2. *Placement*: which buckets. ``maglev_assign`` for a first assignment (depends only on the keys
   and quotas, so it is stable across restarts), ``rebalance`` for every later one (keeps every
   bucket it can and moves exactly the minimum), ``round_robin`` for the round-robin algorithm.

Integers throughout; ``Fraction`` only where least-connections weights need it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from fractions import Fraction
from functools import lru_cache
from math import lcm
from typing import cast

__all__ = [
    "ALGORITHMS",
    "MAX_BUCKETS",
    "apportion",
    "assign",
    "least_connections_weights",
    "maglev_assign",
    "rebalance",
    "round_robin",
]

REPLICA_WEIGHTED = "replica-weighted"
LEAST_CONNECTIONS = "least-connections"
ROUND_ROBIN = "round-robin"
ALGORITHMS: tuple[str, ...] = (LEAST_CONNECTIONS, REPLICA_WEIGHTED, ROUND_ROBIN)
MAX_BUCKETS = 16384

# Shared int objects so that cached permutations cost one pointer per entry.
_INTS: tuple[int, ...] = tuple(range(MAX_BUCKETS))


def _check_bucket_count(bucket_count: int) -> None:
    if (
        not isinstance(bucket_count, int)
        or isinstance(bucket_count, bool)
        or not 1 <= bucket_count <= MAX_BUCKETS
        or bucket_count & (bucket_count - 1)
    ):
        raise ValueError(
            f"bucket_count must be a power of two between 1 and {MAX_BUCKETS}, got {bucket_count!r}"
        )


def _check_quotas(bucket_count: int, quotas: Mapping[str, int]) -> None:
    total = 0
    for key, quota in quotas.items():
        if not isinstance(quota, int) or isinstance(quota, bool) or quota < 0:
            raise ValueError(f"quota of backend {key!r} must be a non-negative int, got {quota!r}")
        total += quota
    if total != bucket_count:
        raise ValueError(
            f"quotas must sum to bucket_count {bucket_count}, they sum to {total}: {dict(quotas)}"
        )


@lru_cache(maxsize=65536)
def _key_hash(key: str) -> int:
    """Stable 64-bit hash of a backend key, the same on every machine and Python run."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


@lru_cache(maxsize=65536)
def _maglev_params(key: str, bucket_count: int) -> tuple[int, int, int]:
    """(offset, skip, skip^-1 mod bucket_count) of a key's Maglev permutation.

    Position j of the permutation is (offset + j * skip) mod bucket_count. An odd skip is
    coprime with a power of two, so the sequence visits every bucket exactly once.
    """
    digest = hashlib.sha256(b"p4kube-maglev\0" + key.encode()).digest()
    mask = bucket_count - 1
    offset = int.from_bytes(digest[:8], "big") & mask
    skip = (int.from_bytes(digest[8:16], "big") & mask) | 1
    inverse = pow(skip, -1, bucket_count) if bucket_count > 1 else 0
    return offset, skip, inverse


class _PermutationCache:
    """Lazily built Maglev permutations, bounded by the total number of entries held.

    A permutation is built the first time a (key, bucket_count) is placed and reused by every
    Service on the same nodes. The bound keeps memory predictable (8 bytes per entry) when
    bucket counts are large; crossing it simply starts over, which only costs time.
    """

    def __init__(self, budget: int = 1 << 22) -> None:
        self._budget = budget
        self._held = 0
        self._perms: dict[tuple[str, int], tuple[int, ...]] = {}

    def get(self, key: str, bucket_count: int) -> tuple[int, ...]:
        perm = self._perms.get((key, bucket_count))
        if perm is None:
            offset, skip, _ = _maglev_params(key, bucket_count)
            mask = bucket_count - 1
            ints = _INTS
            perm = tuple(
                [ints[x & mask] for x in range(offset, offset + bucket_count * skip, skip)]
            )
            if self._held + bucket_count > self._budget:
                self._perms.clear()
                self._held = 0
            self._perms[(key, bucket_count)] = perm
            self._held += bucket_count
        return perm


_PERMUTATIONS = _PermutationCache()


def _preference_rank(key: str, bucket_count: int) -> Callable[[int], int]:
    """bucket -> its position in ``key``'s permutation (0 = most preferred), in O(1)."""
    offset, _, inverse = _maglev_params(key, bucket_count)
    mask = bucket_count - 1
    return lambda bucket: ((bucket - offset) * inverse) & mask


# --------------------------------------------------------------------------------------------
# Quotas


def apportion(
    bucket_count: int,
    weights: Mapping[str, int | Fraction],
    previous: Mapping[str | None, int] | None = None,
) -> dict[str, int]:
    """Split ``bucket_count`` buckets among backends in proportion to ``weights``.

    Largest-remainder (Hamilton) method: every backend first gets the floor of its exact share
    ``bucket_count * w / sum(w)``; the buckets left over go one each to the largest fractional
    remainders. So every count is the floor or the ceiling of the exact share and the counts sum
    to ``bucket_count``. Equal remainders are resolved in favour of backends that held more
    than their floor in ``previous``, then of those that held more buckets, then by a stable
    hash of the key, then by the key. The first rule is what keeps rounding from flapping:
    apportioning again with ``previous`` set to the result returns the same counts. (Raw
    previous counts alone do not: shares 0.5 and 3.5 of 4 buckets rounded to 1 and 3 would
    turn into 0 and 4 on the next render, because 3 > 1.)

    Zero-weight backends get 0 (and are kept in the result); if every weight is zero the
    result is empty. Negative weights are an error.
    """
    _check_bucket_count(bucket_count)
    if not weights:
        return {}
    ints = _integer_weights(weights)
    total = sum(ints.values())
    if total == 0:
        return {}
    counts: dict[str, int] = {}
    remainders: dict[str, int] = {}
    assigned = 0
    for key, weight in ints.items():
        share, rest = divmod(bucket_count * weight, total)
        counts[key] = share
        assigned += share
        if rest:
            remainders[key] = rest
    leftover = bucket_count - assigned
    if leftover:
        prev = previous or {}
        # Among equal remainders, first those that already held more than their floor (giving
        # them the extra bucket saves a move, and makes a re-render from our own output
        # reproduce it exactly), then those that held more buckets, then a stable hash.
        order = sorted(
            remainders,
            key=lambda k: (
                -remainders[k],
                prev.get(k, 0) <= counts[k],
                -prev.get(k, 0),
                _key_hash(k),
                k,
            ),
        )
        for key in order[:leftover]:
            counts[key] += 1
    return counts


def _integer_weights(weights: Mapping[str, int | Fraction]) -> dict[str, int]:
    """The weights scaled to integers with the same ratios (exact; Fractions allowed)."""
    denominators = []
    for key, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, Fraction)):
            raise TypeError(
                f"weight of backend {key!r} must be an int or Fraction, got {type(weight).__name__}"
            )
        if weight < 0:
            raise ValueError(f"weight of backend {key!r} must not be negative, got {weight}")
        if isinstance(weight, Fraction) and weight.denominator != 1:
            denominators.append(weight.denominator)
    if not denominators:
        return {key: int(weight) for key, weight in weights.items()}
    scale = lcm(*denominators)
    return {key: int(weight * scale) for key, weight in weights.items()}


def least_connections_weights(
    replicas: Mapping[str, int], connections: Mapping[str, int]
) -> dict[str, Fraction]:
    """Least-connections weight per backend: ``r * r / (r + c)``.

    That is ``replicas / (1 + connections_per_replica)`` with ``r`` the ready replicas on the
    node and ``c = max(0, active connections)`` the switch's SYN-minus-FIN estimate (it can
    dip below zero when counters are read mid-flow, hence the clamp). Why this shape:
    - with no connections it is exactly ``r``, so an idle cluster is balanced replica-weighted;
    - a node whose replicas are busier (more connections per replica) gets a smaller share,
      pushing new flows towards idle capacity;
    - at equal load per replica (``c`` proportional to ``r``) shares stay proportional to ``r``,
      so the algorithm does not oscillate against the replica counts;
    - ``r = 0`` gives 0: a node without ready replicas never receives flows.
    Exact Fractions keep the result identical on every machine.
    """
    weights: dict[str, Fraction] = {}
    for key, r in replicas.items():
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ValueError(f"replicas of backend {key!r} must be a non-negative int, got {r!r}")
        if r == 0:
            weights[key] = Fraction(0)
            continue
        c = max(0, int(connections.get(key, 0)))
        weights[key] = Fraction(r * r, r + c)
    return weights


# --------------------------------------------------------------------------------------------
# Placement


def _fill(slots: list[str | None], needs: Mapping[str, int]) -> tuple[str, ...]:
    """Maglev turn-taking over the free (None) ``slots``.

    Backends take turns in sorted key order; on its turn a backend claims the first bucket of
    its permutation that is still free, until it holds ``needs[key]`` more buckets. The caller
    guarantees that the needs add up to the number of free slots.
    """
    bucket_count = len(slots)
    perms: dict[str, tuple[int, ...]] = {}
    remaining: dict[str, int] = {}
    cursor: dict[str, int] = {}
    for key in sorted(needs):
        if needs[key] > 0:
            perms[key] = _PERMUTATIONS.get(key, bucket_count)
            remaining[key] = needs[key]
            cursor[key] = 0
    active = list(perms)
    while active:
        still = []
        for key in active:
            perm = perms[key]
            i = cursor[key]
            while slots[perm[i]] is not None:
                i += 1
            slots[perm[i]] = key
            cursor[key] = i + 1
            left = remaining[key] - 1
            remaining[key] = left
            if left:
                still.append(key)
        active = still
    return cast(tuple[str, ...], tuple(slots))  # every slot is filled now


def maglev_assign(bucket_count: int, quotas: Mapping[str, int]) -> tuple[str, ...]:
    """First assignment, Maglev-style, giving each backend exactly its quota.

    Each backend has a permutation of the buckets derived from hashes of its key; backends take
    turns in sorted key order claiming their next preferred free bucket until each reaches its
    quota. Depends only on the keys and quotas, so it is stable across restarts.
    """
    _check_bucket_count(bucket_count)
    _check_quotas(bucket_count, quotas)
    return _fill([None] * bucket_count, quotas)


def rebalance(
    previous: Sequence[str | None], quotas: Mapping[str, int], draining: Collection[int] = ()
) -> tuple[str, ...]:
    """Later assignments: keep every bucket that can stay, move exactly the minimum.

    The bucket count is ``sum(quotas)``; if it differs from ``len(previous)`` the old table
    says nothing useful and this is ``maglev_assign``. Otherwise buckets of backends that are
    gone (or have quota 0) and None buckets are freed, backends above quota free their excess
    (the buckets they prefer least in their permutation), and backends below quota take turns
    claiming their most preferred free bucket. Buckets moved ==
    sum(max(0, previous_count - quota)) over backends + buckets of removed backends + None
    buckets, which is the least any assignment with these quotas can move.

    A backend above quota frees buckets that are not ``draining`` first: a draining bucket that
    moved again would send the connections its drain keeps on the old backend to the
    intermediate one (DESIGN.md 5.1), while another bucket's connections all drain. Which
    buckets move changes, not how many.
    """
    bucket_count = sum(quotas.values())
    if len(previous) != bucket_count:
        return maglev_assign(bucket_count, quotas)
    _check_bucket_count(bucket_count)
    _check_quotas(bucket_count, quotas)
    held = Counter(previous)
    if None not in held and all(held[k] == q for k, q in quotas.items()):
        return cast(tuple[str, ...], tuple(previous))  # no None in it: nothing to move, the common case

    slots: list[str | None] = list(previous)
    holdings: dict[str, list[int]] = {}
    for bucket, key in enumerate(slots):
        if key is None:
            continue
        if quotas.get(key, 0) == 0:
            slots[bucket] = None
        else:
            holdings.setdefault(key, []).append(bucket)
    needs: dict[str, int] = {}
    for key, quota in quotas.items():
        have = len(holdings.get(key, ()))
        if have > quota:
            rank = _preference_rank(key, bucket_count)
            # Kept first: draining buckets, then the most preferred (sorted: False < True).
            for bucket in sorted(holdings[key], key=lambda b: (b not in draining, rank(b)))[quota:]:
                slots[bucket] = None
        elif have < quota:
            needs[key] = quota - have
    return _fill(slots, needs)


def round_robin(bucket_count: int, quotas: Mapping[str, int]) -> tuple[str, ...]:
    """Buckets striped over backends in smooth weighted round-robin order (as nginx does).

    Weights are the quotas; at each of the ``bucket_count`` steps every backend's current value
    grows by its weight and the largest (ties: first in sorted key order) takes the bucket and
    drops by the total. Over a whole cycle of ``sum(weights)`` steps each backend is picked
    exactly ``weight`` times, evenly spread. No minimal-disruption promise.
    """
    _check_bucket_count(bucket_count)
    _check_quotas(bucket_count, quotas)
    keys = sorted(k for k, q in quotas.items() if q > 0)
    weights = [quotas[k] for k in keys]
    if len(keys) == 1:
        return (keys[0],) * bucket_count
    current = [0] * len(keys)
    indices = range(len(keys))
    out = []
    for _ in range(bucket_count):
        best = 0
        best_value = current[0] + weights[0]
        current[0] = best_value
        for i in indices[1:]:
            value = current[i] + weights[i]
            current[i] = value
            if value > best_value:
                best, best_value = i, value
        current[best] -= bucket_count
        out.append(keys[best])
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Entry point


def assign(
    algorithm: str,
    bucket_count: int,
    replicas: Mapping[str, int],
    previous: Sequence[str | None] | None,
    connections: Mapping[str, int] | None = None,
    draining: Collection[int] = (),
) -> tuple[str | None, ...]:
    """The Service's bucket table for ``algorithm``.

    - replica-weighted: quotas by ``apportion`` over ready replicas (previous counts break
      ties), placed by ``maglev_assign`` without a previous table and ``rebalance`` with one.
    - least-connections: the same with ``least_connections_weights`` as the weights.
    - round-robin: the same quotas, placed by ``round_robin``.
    No backend with replicas -> every bucket None. ``previous`` of another length than
    ``bucket_count`` is treated as absent. ``draining``: buckets of ``previous`` still draining,
    which ``rebalance`` moves only when nothing else can.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"unknown bucket algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}"
        )
    _check_bucket_count(bucket_count)
    if previous is not None and len(previous) != bucket_count:
        previous = None
    prev_counts = Counter(previous) if previous is not None else None

    if algorithm == LEAST_CONNECTIONS:
        quotas = apportion(
            bucket_count, least_connections_weights(replicas, connections or {}), prev_counts
        )
    else:
        for key, r in replicas.items():
            if isinstance(r, bool) or not isinstance(r, int) or r < 0:
                raise ValueError(
                    f"replicas of backend {key!r} must be a non-negative int, got {r!r}"
                )
        quotas = apportion(bucket_count, replicas, prev_counts)
    if not quotas:
        return (None,) * bucket_count

    if algorithm == ROUND_ROBIN:
        return round_robin(bucket_count, quotas)
    if previous is None:
        return maglev_assign(bucket_count, quotas)
    return rebalance(previous, quotas, draining)
