"""Bucket algorithm plugins: the names installed in the `p4kube.algorithms` entry-point group.

The one place that looks plugins up, kept out of both `reconciler.intent` and `reconciler.render`
so that validation (which refuses an algorithm that is neither built in nor installed) and
rendering ask the same question without the intent package importing render. Lookups read the
installed distributions' metadata on every call (no cache), so a plugin installed while the
reconciler runs is seen by the next intent load. Nothing here imports plugin code: a name is
installed when a distribution on sys.path declares it in its entry_points.txt.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

__all__ = ["PLUGIN_GROUP", "find_plugin", "installed_plugins"]

PLUGIN_GROUP = "p4kube.algorithms"


def installed_plugins() -> tuple[str, ...]:
    """The names of the installed algorithm plugins, sorted and without duplicates."""
    return tuple(sorted({ep.name for ep in entry_points(group=PLUGIN_GROUP)}))


def find_plugin(name: str) -> EntryPoint | None:
    """The entry point that installs algorithm `name` (the first on sys.path), or None."""
    return next((ep for ep in entry_points(group=PLUGIN_GROUP) if ep.name == name), None)
