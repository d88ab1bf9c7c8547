"""`p4kube switch dump|diff` against software switches after a real `reconcile --once`, and the
simulator's move to `p4kube sim` (`p4kube switch --listen` still serves, with a warning)."""

from __future__ import annotations

import json
import subprocess

from helpers import console_script
from test_status import MULTI, STATE_FILE, applied_world, drift

from reconciler import p4names as n
from reconciler.cli import main
from reconciler.snapshot import Entry, load_snapshot


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_dump_parses_as_the_applied_snapshots_entries(tmp_path, switch_pair, capsys):
    standby, primary = switch_pair
    _, state, _ = applied_world(tmp_path, switch_pair, capsys)
    code, out, err = run(capsys, "switch", "dump", f"127.0.0.1:{primary.port}", "--allow-insecure-switches")
    assert code == 0, err
    doc = json.loads(out)
    dumped = {Entry.from_json(t, e, f"dump.{t}") for t, es in doc["tables"].items() for e in es}
    snap = load_snapshot(state / STATE_FILE)
    applied = {Entry(e.table, e.key, e.action, e.args) for es in snap.tables().values() for e in es}
    assert dumped == applied and len(dumped) == snap.entry_count()
    assert list(doc["tables"]) == list(n.TABLE_ORDER) and doc["pipelineCookie"] is not None

    code, out, _ = run(capsys, "switch", "dump", f"127.0.0.1:{primary.port}", "--allow-insecure-switches", "-o", "text")
    assert code == 0 and len(out.splitlines()) == 1 + snap.entry_count()


def test_diff_same_then_drift_against_a_file_and_a_recorded_version(tmp_path, switch_pair, capsys):
    standby, primary = switch_pair
    intent, state, common = applied_world(tmp_path, switch_pair, capsys)
    snap_file = state / STATE_FILE
    addr = f"127.0.0.1:{primary.port}"
    code, out, err = run(capsys, "switch", "diff", addr, "--against", str(snap_file), "--allow-insecure-switches")
    assert code == 0, err
    assert "holds exactly p4kube-system/p4kube-config v1" in out

    drift(primary, snap_file)
    code, out, _ = run(capsys, "switch", "diff", addr, "--against", str(snap_file), "--allow-insecure-switches")
    assert code == 1
    assert "backend_table" in out and "missing MyIngress.vip_table" in out and "changed MyIngress.backend_table" in out
    code, out, _ = run(capsys, "switch", "diff", addr, "--against", str(snap_file), "--allow-insecure-switches", "-o", "json")
    doc = json.loads(out)
    assert code == 1 and not doc["same"]
    assert {d["table"]: (d["missing"], d["extra"], d["different"]) for d in doc["drift"]} == {
        n.BACKEND_TABLE: (0, 0, 1), n.VIP_TABLE: (1, 0, 0)}

    # VERSION: from an audit repository a reconcile recorded (the standby was not touched)
    audit = tmp_path / "audit.git"
    state2 = tmp_path / "state2"
    assert main(["reconcile", "--once", "--intent", str(intent), "--cluster", str(MULTI / "cluster.yaml"),
                 "--state", str(state2), "--audit-repo", str(audit), "--adopt-switches", *common]) == 0, capsys.readouterr()
    capsys.readouterr()
    code, out, err = run(capsys, "switch", "diff", f"127.0.0.1:{standby.port}", "--against", "1", "--audit-repo", str(audit),
                         "--allow-insecure-switches")
    assert code == 0, out + err


def test_dump_refuses_what_the_operator_did_not_allow(switch_pair, capsys):
    standby, _ = switch_pair
    code, _, err = run(capsys, "switch", "dump", f"127.0.0.1:{standby.port}")
    assert code == 1 and "plaintext" in err.lower(), err
    code, _, err = run(capsys, "switch", "dump", f"127.0.0.1:{standby.port}", "--allow-insecure-switches",
                       "--allowed-switches", "10.0.0.0/8")
    assert code == 1 and "is not allowed by --allowed-switches" in err, err


def test_diff_version_needs_the_audit_repository(switch_pair, capsys):
    standby, _ = switch_pair
    code, _, err = run(capsys, "switch", "diff", f"127.0.0.1:{standby.port}", "--against", "3", "--allow-insecure-switches")
    assert code == 1 and "needs --audit-repo" in err


def test_switch_listen_still_serves_with_a_deprecation_warning():
    exe = console_script()
    proc = subprocess.Popen([str(exe), "switch", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "listening on" in line:
                break
        text = "".join(seen)
        assert "deprecated" in text and "p4kube sim" in text, text
        assert "listening on" in text, text
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
        proc.stdout.close()


def test_bare_switch_prints_its_actions(capsys):
    code, out, _ = run(capsys, "switch")
    assert code == 64 and "dump" in out and "diff" in out


def test_dump_over_mutual_tls_with_files_from_the_tls_directory(tmp_path, capsys):
    from pki import make_pki

    from reconciler.sim.server import SoftwareSwitch, TlsConfig

    pki = make_pki()
    for name, data in (("ca.crt", pki.ca), ("client.crt", pki.client_cert), ("client.key", pki.client_key)):
        (tmp_path / name).write_bytes(data)
    sw = SoftwareSwitch(tls=TlsConfig(pki.server_cert, pki.server_key, client_ca=pki.ca))
    sw.start()
    try:
        tls = ["--tls-dir", str(tmp_path), "--ca-file", "ca.crt", "--server-name", "p4rt.switch.test"]
        # reached over TLS with the client certificate: the switch answers that it has no pipeline yet
        code, _, err = run(capsys, "switch", "dump", f"127.0.0.1:{sw.port}", *tls, "--cert-file", "client.crt",
                           "--key-file", "client.key")
        assert code == 1 and "has no pipeline" in err, err
        code, _, err = run(capsys, "switch", "dump", f"127.0.0.1:{sw.port}", *tls)  # no client certificate
        assert code == 1 and "has no pipeline" not in err, err
        code, _, err = run(capsys, "switch", "dump", f"127.0.0.1:{sw.port}", "--tls-dir", str(tmp_path), "--ca-file", "../x")
        assert code == 1 and "x" in err and "has no pipeline" not in err, err
    finally:
        sw.stop(0)


def test_a_slow_read_back_is_never_silent(tmp_path, switch_pair, capsys, monkeypatch):
    # The progress line shows once a read has run for the interval (2 s; shortened here) on
    # `switch dump` and on `status`; the injected latency makes the read outlast it many times over.
    standby, primary = switch_pair
    intent, state, common = applied_world(tmp_path, switch_pair, capsys)
    monkeypatch.setenv("P4KUBE_PROGRESS_SECONDS", "0.05")
    primary.set_delay(0.6)
    standby.set_delay(0.6)
    code, out, err = run(capsys, "switch", "dump", f"127.0.0.1:{primary.port}", "--allow-insecure-switches")
    assert code == 0 and json.loads(out)["tables"]
    assert f"127.0.0.1:{primary.port}: reading back" in err, err
    code, out, err = run(capsys, "status", "--intent", str(intent), "--state", str(state), *common, "-o", "json")
    assert code == 0, err
    assert "sim-primary, sim-standby: reading back" in err, err
