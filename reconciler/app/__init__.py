"""The composition root: Settings -> the worker factory, the sources and the sinks. Imported
only by the faces (reconciler.cli, reconciler.demo) and tests; nothing below imports it."""

from .settings import Settings, SettingsError
from .switches import build_applier, check_switch_settings
from .workers import worker_factory

__all__ = ["Settings", "SettingsError", "build_applier", "check_switch_settings", "worker_factory"]
