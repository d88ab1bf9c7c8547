"""Builders shared by the audit tests (no tests here): snapshot series from a small synthetic
cluster, object counting, SSH keys and the git CLI."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from helpers_render import P4INFO_DIGEST, make_config, without_service

from reconciler.cluster.model import ClusterState
from reconciler.cluster.synthetic import synthetic_cluster, with_scaled_service
from reconciler.intent.model import LoadBalancerConfig
from reconciler.render import Renderer
from reconciler.snapshot import Snapshot

@dataclass
class Series:
    """A config whose cluster changes step by step, each step a new snapshot version."""

    config: LoadBalancerConfig
    cluster: ClusterState
    renderer: Renderer
    snap: Snapshot

    def scale(self, key: str | None = None, delta: int = 1) -> Snapshot:
        key = key or sorted(k for k in self.cluster.services if self.cluster.endpoints.get(k))[0]
        node = self.cluster.endpoints[key][0].node
        self.cluster = with_scaled_service(self.cluster, key, node, delta)
        return self._render([key])

    def remove(self, key: str) -> Snapshot:
        self.cluster = without_service(self.cluster, key)
        return self._render([key])

    def _render(self, changed: list[str]) -> Snapshot:
        self.snap = self.renderer.render(
            self.config, self.cluster, self.snap, p4info_digest=P4INFO_DIGEST, changed=changed
        ).snapshot
        return self.snap

    @property
    def keys(self) -> list[str]:
        return sorted(self.cluster.services)


def series(services: int = 12, seed: int = 3, name: str = "test-config", buckets: int = 16) -> Series:
    config = replace(make_config(buckets=buckets), name=name)
    cluster = synthetic_cluster(services=services, nodes=6, endpoints=services * 5, seed=seed)
    renderer = Renderer()
    snap = renderer.render(config, cluster, None, p4info_digest=P4INFO_DIGEST).snapshot
    return Series(config, cluster, renderer, snap)


def loose_objects(git_dir: Path) -> set[str]:
    """Ids of the loose objects in a repository's object store."""
    out = set()
    objects = Path(git_dir) / "objects"
    for fan in objects.iterdir():
        if len(fan.name) == 2 and fan.is_dir():
            out.update(fan.name + f.name for f in fan.iterdir())
    return out


class Clock:
    """An injectable clock: commit times advance by `step` seconds per call."""

    def __init__(self, start: int = 1_700_000_000, step: int = 60) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return float(self.now)


def ssh_key(tmp: Path, name: str) -> tuple[Path, str]:
    """An ed25519 key pair without passphrase: (private key path, public key line)."""
    key = tmp / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key, (tmp / f"{name}.pub").read_text().strip()


def allowed_signers(path: Path, *entries: tuple[str, str]) -> Path:
    """An allowed-signers file from (principal, public key line) pairs."""
    path.write_text("".join(f"{who} {pub}\n" for who, pub in entries))
    return path


def git(*args: str, cwd: Path, input: str | None = None) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    p = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == 0, f"git {' '.join(args)}: {p.stderr}"
    return p.stdout
