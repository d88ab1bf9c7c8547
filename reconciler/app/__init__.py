"""The composition root: Settings -> the worker factory, the sources and the sinks. Imported
only by the faces (reconciler.cli, reconciler.demo) and tests; nothing below imports it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import Settings, SettingsError

if TYPE_CHECKING:
    from .switches import build_applier, check_switch_settings
    from .workers import worker_factory

__all__ = ["Settings", "SettingsError", "build_applier", "check_switch_settings", "worker_factory"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: every command imports app.settings (for SettingsError), and the
    # switch and worker modules bring gRPC and the applier (~0.35 s), which render/plan/check never use.
    if name in ("build_applier", "check_switch_settings"):
        from . import switches

        return getattr(switches, name)
    if name == "worker_factory":
        from .workers import worker_factory

        return worker_factory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
