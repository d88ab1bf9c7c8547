"""The write order within a phase (diff._in_write_order) is the reference order: table by
TABLE_ORDER (unknown tables last), then Entry.sort_key, stable."""

from __future__ import annotations

import random

from reconciler import p4names as n
from reconciler.diff import Update, _in_write_order
from reconciler.snapshot import Entry


def reference(updates: list[Update]) -> list[Update]:
    order = {t: i for i, t in enumerate(n.TABLE_ORDER)}
    return sorted(updates, key=lambda u: (order.get(u.entry.table, 99), u.entry.sort_key()))


def test_write_order_is_the_reference_order() -> None:
    rng = random.Random(13)
    for _ in range(50):
        updates = []
        for _ in range(rng.randrange(1, 80)):
            kind = rng.choice(["backend", "vip", "reverse", "lpm", "unknown", "odd"])
            if kind == "backend":
                e = Entry(n.BACKEND_TABLE, (rng.randrange(4), rng.randrange(4)), n.DNAT, ("10.0.0.1", 80, 1), f"s{rng.randrange(3)}")
            elif kind == "vip":
                e = Entry(n.VIP_TABLE, (f"10.0.{rng.randrange(3)}.{rng.randrange(12)}", rng.randrange(2), 6), n.SET_SERVICE, (1, 3))
            elif kind == "reverse":
                e = Entry(n.REVERSE_NAT, (f"{rng.randrange(1, 12)}.0.0.1", 80, rng.choice([6, 17])), n.SNAT, ("10.0.0.1", 80), f"s{rng.randrange(3)}")
            elif kind == "lpm":
                e = Entry(n.IPV4_LPM, (rng.choice(["10.0.0.0/8", "10.1.0.0/16", "10.0.0.0/16", "9.0.0.0/8"]),), n.FWD, (1, "00:00:00:00:00:01"))
            elif kind == "unknown":  # tables outside TABLE_ORDER share one place, ordered by key alone
                e = Entry(rng.choice(["x.t1", "x.t2"]), tuple(rng.randrange(3) for _ in range(rng.randrange(1, 3))), n.DROP, ())
            else:  # a backend_table key that is not all integers takes sort_key
                e = Entry(n.BACKEND_TABLE, (rng.randrange(3), "10.0.0.%d" % rng.randrange(3)), n.DNAT, ("10.0.0.1", 80, 1))
            updates.append(Update(rng.choice(["INSERT", "MODIFY", "DELETE"]), e))
        assert list(_in_write_order(list(updates))) == reference(updates)
