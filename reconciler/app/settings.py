"""The operator's settings, as one frozen value: what the faces read from the command line (or a
test or the demo writes down) and the composition root wires from. No argparse here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..intent.files import OperatorDirs


class SettingsError(Exception):
    """A setting, or what intent asks under the settings, that cannot be used (a refused switch
    address, a missing key file, plaintext without --allow-insecure-switches); one line."""


@dataclass(frozen=True)
class Settings:
    """Every knob of the library's wiring; the defaults are the commands' defaults."""

    # what intent may make the reconciler read and connect to
    pipeline_dir: str | None = None
    tls_dir: str | None = None
    allowed_switches: tuple[str, ...] | None = None
    allow_insecure_switches: bool = False
    # P4Runtime
    timeout: float = 10.0  # connect and arbitration
    rpc_timeout: float = 60.0
    election_id: int = 1
    batch_size: int | None = None
    adopt_switches: bool = False
    # sources
    intent: str | None = None
    intent_from_cluster: bool = False
    intent_namespace: tuple[str, ...] | None = None
    cluster: str | None = None
    kubeconfig: str | None = None
    kube_context: str | None = None  # a kubeconfig context other than its current one (--context)
    # sinks
    audit_repo: str | None = None
    audit_workdir: str | None = None
    state: str = ".p4kube-state"
    # audit signing and trust (reconciler.audit.signing, .trust)
    sign_commits: str | None = None
    signing_key: str | None = None
    gpg_home: str | None = None
    gpg_passphrase_file: str | None = None
    audit_allowed_signers: str | None = None
    audit_trust_gpg_home: str | None = None
    # signed intent
    verify_intent_signers: str | None = None
    verify_intent_gpg_home: str | None = None
    # the long-running process
    metrics_address: str | None = None  # HOST:PORT for /metrics, /healthz, /readyz
    metrics_bearer_token_file: str | None = None  # /metrics answers 401 without this token
    probe_address: str | None = None  # HOST:PORT for /healthz, /readyz apart from /metrics
    leader_elect: bool = False
    leader_elect_namespace: str = "p4kube-system"
    leader_elect_lease_name: str = "p4kube-reconciler"
    leader_elect_identity: str | None = None

    @property
    def dirs(self) -> OperatorDirs:
        return OperatorDirs(Path(self.pipeline_dir) if self.pipeline_dir else None,
                            Path(self.tls_dir) if self.tls_dir else None)
