"""`reconcile --once --audit-repo` and `rollback --to` through the CLI, with two software
switches on loopback and real Git repositories: the audit history says what the switches hold."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pygit2
from finsy.proto import p4r, p4r_grpc
from helpers import commit_all, multi_lbconfig, require_ssh_keygen

from reconciler import p4names as n
from reconciler.audit.repo import AuditRepo
from reconciler.cli import main
from reconciler.cluster.recorded import load_cluster_file
from reconciler.cluster.synthetic import cluster_to_list_yaml, with_scaled_service
from reconciler.p4info import pipeline_info
from reconciler.sim.server import SoftwareSwitch
from reconciler.switch.translate import proto_to_entry

ROOT = Path(__file__).resolve().parents[1]
MULTI = ROOT / "intent-examples" / "multi-service"
INFO = pipeline_info()
CONFIG = "p4kube-system/p4kube-config"


def intent_repo(path: Path, ports: tuple[int, int]) -> Path:
    """The multi-service intent in a real Git repository, pointed at the switches, committed."""
    path.mkdir(parents=True)
    (path / "lbconfig.yaml").write_text(multi_lbconfig(*ports))
    shutil.copy(MULTI / "sim-device-config.json", path)  # its deviceConfig (a placeholder for the software switch)
    commit_all(path)
    return path


def switch_entries(sw: SoftwareSwitch) -> set[tuple]:
    with grpc.insecure_channel(f"127.0.0.1:{sw.port}") as ch:
        req = p4r.ReadRequest(device_id=1)
        for t in n.TABLE_ORDER:
            req.entities.add().table_entry.table_id = INFO.table(t).id
        out = set()
        for reply in p4r_grpc.P4RuntimeStub(ch).Read(req, timeout=10):
            for ent in reply.entities:
                e = proto_to_entry(INFO, ent.table_entry)
                out.add((e.table, e.key, e.action, e.args))
        return out


def entries_of(snap) -> set[tuple]:
    return {(e.table, e.key, e.action, e.args) for es in snap.tables().values() for e in es}


def test_reconcile_records_restarts_and_rolls_back(tmp_path, switch_pair, capsys):
    standby, primary = switch_pair
    intent = intent_repo(tmp_path / "intent", (standby.port, primary.port))
    audit_dir = tmp_path / "audit.git"
    cluster1 = MULTI / "cluster.yaml"
    cluster2 = tmp_path / "cluster2.yaml"
    cluster2.write_text(cluster_to_list_yaml(with_scaled_service(load_cluster_file(cluster1), "web/frontend", "node-c", +2)))
    base = ["--intent", str(intent), "--pipeline-dir", str(intent), "--audit-repo", str(audit_dir)]

    assert main(["reconcile", "--once", "--allow-insecure-switches", *base, "--cluster", str(cluster1)]) == 0
    # A restarted reconciler reads the last applied snapshot from the audit repository.
    assert main(["reconcile", "--once", "--allow-insecure-switches", *base, "--cluster", str(cluster1)]) == 0
    assert "up to date at v1" in capsys.readouterr().out
    assert main(["reconcile", "--once", "--allow-insecure-switches", *base, "--cluster", str(cluster2)]) == 0
    capsys.readouterr()

    audit = AuditRepo.open_or_init(audit_dir, read_only=True)
    outcomes = [(e.version, e.trailers.get("Outcome")) for e in audit.history(config=CONFIG)]
    assert outcomes == [(2, "applied"), (2, "pending"), (1, "applied"), (1, "pending")]
    v1, v2 = audit.snapshot_at(1, CONFIG), audit.snapshot_at(2, CONFIG)
    assert v1.intent_commit == str(pygit2.Repository(str(intent)).head.target)
    assert switch_entries(standby) == switch_entries(primary) == entries_of(v2)

    assert main(["rollback", "--to", "1", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent), "--audit-repo", str(audit_dir)]) == 0
    assert "rolling back to the content of v1" in capsys.readouterr().out
    assert switch_entries(standby) == switch_entries(primary) == entries_of(v1)
    audit = AuditRepo.open_or_init(audit_dir, read_only=True)
    newest = audit.history(config=CONFIG)[0]
    assert (newest.version, newest.trailers.get("Outcome"), newest.trailers.get("Rollback-To")) == (3, "applied", "1")
    assert audit.last_applied(CONFIG).digest == v1.digest
    # And the history verifies.
    assert main(["audit", "verify", "--repo", str(audit_dir)]) == 0


def test_unsigned_intent_is_refused_and_recorded(tmp_path, switch_pair, capsys):
    require_ssh_keygen()
    standby, primary = switch_pair
    intent = intent_repo(tmp_path / "intent", (standby.port, primary.port))
    audit_dir = tmp_path / "audit.git"
    base = ["--intent", str(intent), "--pipeline-dir", str(intent), "--audit-repo", str(audit_dir), "--cluster", str(MULTI / "cluster.yaml")]
    assert main(["reconcile", "--once", "--allow-insecure-switches", *base]) == 0
    key = tmp_path / "trusted"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"dev@example.com {key.with_suffix('.pub').read_text().strip()}\n")
    before = switch_entries(primary)
    code = main(["reconcile", "--once", "--allow-insecure-switches", *base, "--verify-intent-signers", str(signers)])
    err = capsys.readouterr().err
    assert code == 1
    assert "refused" in err and "not signed" in err.lower()
    newest = AuditRepo.open_or_init(audit_dir, read_only=True).history(config=CONFIG)[0]
    assert newest.trailers.get("Outcome") == "rolled-back"
    assert newest.trailers.get("Refused-Intent-Commit") == str(pygit2.Repository(str(intent)).head.target)
    assert switch_entries(primary) == before


def test_unusable_audit_repository_is_one_line_for_reconcile_and_rollback(tmp_path, capsys):
    """An audit repository that cannot be opened or written (here: a file where its directory
    should be) stops `reconcile` and `rollback` before any switch is touched: one line, exit 1."""
    intent = intent_repo(tmp_path / "intent", (1, 2))  # no switch listens: they are never reached
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    audit_dir = blocker / "audit.git"
    argvs = [
        ["reconcile", "--once", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent), "--cluster", str(MULTI / "cluster.yaml"), "--audit-repo", str(audit_dir)],
        ["rollback", "--to", "1", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent), "--audit-repo", str(audit_dir)],
    ]
    for argv in argvs:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err == (
            f"p4kube {argv[0]}: error: audit repository {audit_dir}: cannot open or create it: "
            f"{blocker} is a file, where a directory is expected\n"
        ), argv
