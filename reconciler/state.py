"""The last applied snapshot per config, kept in a state directory until the audit
repository takes that role (`reconcile --state DIR`). Writes are atomic (temp file + rename)."""

from __future__ import annotations

from pathlib import Path

from .snapshot import Snapshot, load_snapshot


class StateDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _file(self, config: str) -> Path:
        return self.path / (config.replace("/", "__") + ".applied.json")

    def last_applied(self, config: str) -> Snapshot | None:
        f = self._file(config)
        return load_snapshot(f) if f.exists() else None

    def record_applied(self, snap: Snapshot) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        f = self._file(snap.config)
        tmp = f.with_name(f".{f.name}.tmp")
        tmp.write_text(snap.to_json_text())
        tmp.replace(f)
        return f
