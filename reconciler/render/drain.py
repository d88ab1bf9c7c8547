"""Connection draining (DESIGN.md 5.1): which buckets of a Service port drain, and until when.

A bucket whose backend changed starts a drain: for the drain timeout its entry carries the new
and the old backend (dnat_draining), so established connections stay where they are; a later
render, once `until` has passed, writes the plain entry. Pure functions of the previous
service, the new assignment, the timeout and the time.

Generations: every drain started in one render with one timeout carries a fresh generation,
max(until, 1 + the highest generation in the previous snapshot). They only grow (until grows
with the clock, and the floor with every drain still listed), so data-plane cells marked by an
older drain never match a newer one, and they are never 0 (the cells' initial value). Drains
that overlap in time therefore overwrite some of each other's marks (docs/dataplane.md
"Limits"). Sharing a running generation would avoid that but is unsafe: a bucket whose drain in
that generation has ended would, moved again, find its connections marked as new and send them
to the next backend, and a generation kept alive by overlapping drains would fill the filter.
"""

from __future__ import annotations

import math
from typing import Sequence

from ..cluster.model import DRAIN_TIMEOUT_ANNOTATION, Service
from ..intent.semantic import parse_duration
from ..snapshot import MAX_GENERATION, Drain, ServiceSnapshot


def drain_timeout(config_timeout_s: float, svc: Service) -> tuple[float, str | None]:
    """The Service's drain timeout in seconds and a warning, if any.

    The annotation may only shorten the config's timeout: cluster data is untrusted
    (docs/security.md), and a long drain holds a backend id and a reverse_nat key."""
    text = svc.annotation(DRAIN_TIMEOUT_ANNOTATION)
    if text is None:
        return config_timeout_s, None
    value = parse_duration(text)
    if value is None:
        return config_timeout_s, (
            f"annotation {DRAIN_TIMEOUT_ANNOTATION}: {text[:64]!r} is not a Go duration (such as 10s); "
            f"the config's connectionDrainTimeout ({config_timeout_s:g}s) applies"
        )
    return min(value, config_timeout_s), None


def generation_for(until: float, floor: int) -> int:
    """The generation of drains ending at `until` when the previous snapshot's highest is floor - 1."""
    return min(max(int(until), floor, 1), MAX_GENERATION)


def next_drains(
    old: ServiceSnapshot | None,
    assignment: Sequence[str | None],
    *,
    timeout_s: float,
    now: float,
    generation_floor: int,
) -> tuple[Drain, ...]:
    """The drains of a Service port whose buckets now point at `assignment`.

    - a bucket whose backend differs from `old`'s starts a drain from `old`'s backend, in a fresh
      generation (also when it was draining: connections older than that first drain then go to
      the intermediate one), unless the timeout is 0;
    - a drain of `old` that is still running, on a bucket whose target is unchanged, is kept,
      whatever the timeout is now (a timeout changed to 0 mid-drain starts no new drains but
      does not cut the running ones short);
    - a drain whose `until` is at or before `now` has ended.
    No previous service (or one with another bucket count or backend mode), or no backends: no
    drains."""
    if (
        old is None
        or not assignment
        or assignment[0] is None
        or old.bucket_count != len(assignment)
        or not old.backends
        or old.assignment[0] is None
    ):
        return ()
    running = {d.bucket: d for d in old.drains if d.until > now}
    until = float(math.floor(now) + math.ceil(timeout_s))
    generation = generation_for(until, generation_floor)
    out: list[Drain] = []
    for bucket, (before, after) in enumerate(zip(old.assignment, assignment)):
        if before != after and before is not None:
            if timeout_s > 0:
                out.append(Drain(bucket, before, generation, until))
        elif bucket in running:
            out.append(running[bucket])
    return tuple(out)


def drains_ended(old: ServiceSnapshot, now: float) -> bool:
    """Whether a drain of `old` has ended by `now` (its Service must be rendered again)."""
    return any(d.until <= now for d in old.drains)
