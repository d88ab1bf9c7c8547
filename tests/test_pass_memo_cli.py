"""`reconcile --once` with the pass cache (reconciler/pass_cache.py, app/pass_memo.py): a run
renders only the Services whose inputs changed and encodes only what it has not encoded before,
and the result is exactly that of a run without it. Through the real command, two pairs of
software switches on loopback, real Git intent and audit repositories."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from helpers import commit_all
from test_reconcile_audit import MULTI, entries_of, switch_entries

from reconciler.audit.repo import AuditRepo
from reconciler.cli import main
from reconciler.cluster.model import ClusterState
from reconciler.cluster.synthetic import cluster_to_list_yaml, synthetic_cluster, with_scaled_service
from reconciler.pass_cache import cache_file
from reconciler.sim.server import SoftwareSwitch

CONFIG = "p4kube-system/synthetic"
INTENT = """\
apiVersion: networking.p4kube.io/v1alpha1
kind: LoadBalancerConfig
metadata: {{name: synthetic, namespace: p4kube-system}}
spec:
  connectionDrainTimeout: 0s
  vipPools:
    - name: all
      addresses: ["198.18.0.1-198.18.0.{last}"]
  switchConfig:
    deviceConfig: sim-device-config.json
    switches:
      - {{name: standby, role: standby, address: "127.0.0.1:{standby}"}}
      - {{name: primary, role: primary, address: "127.0.0.1:{primary}"}}
"""
RESUMED = "Services rendered again, the others' inputs unchanged"


@dataclasses.dataclass
class World:
    standby: SoftwareSwitch
    primary: SoftwareSwitch
    intent: Path
    audit: Path
    cluster: Path
    flags: tuple[str, ...] = ()

    def once(self, state: ClusterState) -> int:
        self.cluster.write_text(cluster_to_list_yaml(state))
        return main(["reconcile", "--once", "--allow-insecure-switches", "--intent", str(self.intent), "--pipeline-dir",
                     str(self.intent), "--audit-repo", str(self.audit), "--cluster", str(self.cluster), *self.flags])

    def held(self):
        return AuditRepo.open_or_init(self.audit, read_only=True).last_applied(CONFIG)

    def cache(self, part: str = "render") -> Path:
        return cache_file(AuditRepo.open_or_init(self.audit, read_only=True).repo.path, CONFIG, part)


@pytest.fixture
def worlds(tmp_path):
    """Two identical worlds, each its own switches and repositories: one with the pass cache, one
    with --no-cache."""
    switches = [SoftwareSwitch() for _ in range(4)]
    try:
        for sw in switches:
            sw.start()
        out = []
        for name, pair, flags in (("cached", switches[:2], ()), ("plain", switches[2:], ("--no-cache",))):
            root = tmp_path / name
            intent = root / "intent"
            intent.mkdir(parents=True)
            (intent / "lbconfig.yaml").write_text(INTENT.format(last=40, standby=pair[0].port, primary=pair[1].port))
            shutil.copy(MULTI / "sim-device-config.json", intent)
            commit_all(intent)
            out.append(World(pair[0], pair[1], intent, root / "audit.git", root / "cluster.yaml", flags))
        yield out
    finally:
        for sw in switches:
            sw.stop(0)


def _same_snapshot(a, b) -> None:
    """The same Services and entries (the intent commits differ: two repositories)."""
    assert [s.to_json() for s in a.services] == [s.to_json() for s in b.services]
    assert entries_of(a) == entries_of(b)
    assert a.version == b.version


def _steps(base: ClusterState) -> list[ClusterState]:
    keys = sorted(base.services)
    node = next(ep.node for ep in base.endpoints[keys[0]])
    one = with_scaled_service(base, keys[0], node, +2)
    fewer = dataclasses.replace(one, services={k: v for k, v in one.services.items() if k != keys[-1]},
                                endpoints={k: v for k, v in one.endpoints.items() if k != keys[-1]})
    no_node = dataclasses.replace(fewer, nodes={k: v for k, v in fewer.nodes.items() if k != node})
    return [base, base, one, one, fewer, no_node, fewer, base, with_scaled_service(base, keys[3], "node-2", +1)]


def test_the_cache_renders_what_changed_and_gives_what_a_full_render_gives(worlds, capsys):
    cached, plain = worlds
    base = synthetic_cluster(services=30, nodes=8, endpoints=150, seed=5)
    for n, state in enumerate(_steps(base)):
        assert cached.once(state) == 0, n
        err_cached = capsys.readouterr().err
        assert plain.once(state) == 0, n
        err_plain = capsys.readouterr().err
        assert RESUMED not in err_plain
        if n == 2:  # one Service scaled: only it is rendered
            assert f": 1 {RESUMED}" in err_cached
        _same_snapshot(cached.held(), plain.held())
        want = entries_of(cached.held())
        assert switch_entries(cached.standby) == switch_entries(cached.primary) == want
    assert cached.cache().is_file() and plain.cache().is_file()


def test_a_switch_emptied_behind_the_cache_is_still_repaired(worlds, capsys):
    """The cache says which Services changed, never what the switches hold: they are read back."""
    cached, _ = worlds
    base = synthetic_cluster(services=20, nodes=6, endpoints=80, seed=2)
    assert cached.once(base) == 0
    cached.standby.reset()
    keys = sorted(base.services)
    assert cached.once(with_scaled_service(base, keys[1], next(ep.node for ep in base.endpoints[keys[1]]), +1)) == 0
    assert RESUMED in capsys.readouterr().err
    assert switch_entries(cached.standby) == switch_entries(cached.primary) == entries_of(cached.held())


@pytest.mark.parametrize("part", ["render", "encoded"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_damaged_cache_is_said_and_passed_over(worlds, capsys, damage, part):
    cached, plain = worlds
    base = synthetic_cluster(services=20, nodes=6, endpoints=80, seed=2)
    assert cached.once(base) == 0 and plain.once(base) == 0
    path = cached.cache(part)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 1
    elif damage == "truncate":
        del data[len(data) // 3:]
    else:
        data = bytearray(b"not a cache at all\n")
    path.write_bytes(bytes(data))
    changed = with_scaled_service(base, sorted(base.services)[0], "node-1", +1)
    capsys.readouterr()
    assert cached.once(changed) == 0
    err = capsys.readouterr().err
    # Damage is said; a file that is not one of ours at all (another format) is passed over quietly.
    assert ("warning: pass cache" in err and str(path) in err) == (damage != "garbage")
    assert (RESUMED in err) == (part == "encoded")  # the other part is still used
    assert plain.once(changed) == 0
    _same_snapshot(cached.held(), plain.held())
    assert switch_entries(cached.standby) == switch_entries(cached.primary) == entries_of(cached.held())
    # written afresh: the next run uses it again
    capsys.readouterr()
    assert cached.once(base) == 0
    err = capsys.readouterr().err
    assert RESUMED in err and "warning" not in err


def test_a_cache_of_another_snapshot_is_not_resumed(worlds, capsys):
    """The render memo is used only over the snapshot it was made for (here the cache of v1 is put
    back after v2 was applied: a run must not resume from it)."""
    cached, plain = worlds
    base = synthetic_cluster(services=20, nodes=6, endpoints=80, seed=2)
    assert cached.once(base) == 0 and plain.once(base) == 0
    old = cached.cache().read_bytes()
    keys = sorted(base.services)
    two = with_scaled_service(base, keys[0], "node-1", +1)
    assert cached.once(two) == 0 and plain.once(two) == 0
    cached.cache().write_bytes(old)
    three = with_scaled_service(two, keys[2], "node-3", +2)
    capsys.readouterr()
    assert cached.once(three) == 0
    assert RESUMED not in capsys.readouterr().err
    assert plain.once(three) == 0
    _same_snapshot(cached.held(), plain.held())


def test_no_cache_reads_none_and_writes_it_afresh(worlds, capsys):
    _, plain = worlds
    base = synthetic_cluster(services=10, nodes=4, endpoints=40, seed=2)
    assert plain.once(base) == 0
    first = plain.cache().read_bytes()
    assert plain.once(with_scaled_service(base, sorted(base.services)[0], "node-1", +1)) == 0
    assert RESUMED not in capsys.readouterr().err
    assert plain.cache().read_bytes() != first


def test_the_encoded_entries_are_written_again_only_when_they_cover_too_little(worlds, capsys):
    """~0.15 s and tens of MB at 5,000 Services: a pass that changed a few Services encodes those
    itself and leaves the file; once under 90% of the snapshot's Services are in it, it is
    written again (for the snapshot the switches hold)."""
    cached, _ = worlds
    base = synthetic_cluster(services=20, nodes=6, endpoints=80, seed=2)
    keys = sorted(base.services)
    assert cached.once(base) == 0
    first = cached.cache("encoded").read_bytes()
    one = with_scaled_service(base, keys[0], next(ep.node for ep in base.endpoints[keys[0]]), +1)
    assert cached.once(one) == 0  # 19 of 20 Services known: left as it is
    assert cached.cache("encoded").read_bytes() == first
    three = one
    for k in keys[1:3]:
        three = with_scaled_service(three, k, next(ep.node for ep in base.endpoints[k]), +1)
    assert cached.once(three) == 0  # 17 of 20: written again
    assert cached.cache("encoded").read_bytes() != first
    assert switch_entries(cached.standby) == switch_entries(cached.primary) == entries_of(cached.held())


def test_not_used_with_signed_audit_records(worlds, tmp_path, capsys):
    """What is applied must follow from what signatures vouch for: the files carry none."""
    from test_signing_flags import ssh_key

    cached, _ = worlds
    key, _signers = ssh_key(tmp_path, "audit")
    cached.flags = ("--sign-commits", "ssh", "--signing-key", str(key))
    base = synthetic_cluster(services=10, nodes=4, endpoints=40, seed=2)
    assert cached.once(base) == 0
    assert cached.once(with_scaled_service(base, sorted(base.services)[0], "node-1", +1)) == 0
    assert RESUMED not in capsys.readouterr().err
    assert not cached.cache("render").exists() and not cached.cache("encoded").exists()
    assert switch_entries(cached.standby) == switch_entries(cached.primary) == entries_of(cached.held())


def test_a_cache_that_cannot_be_written_leaves_the_pass_as_it_was(worlds, capsys, monkeypatch):
    from reconciler.switch import encoded_memo

    cached, _ = worlds
    base = synthetic_cluster(services=10, nodes=4, endpoints=40, seed=2)

    def broken(_encoded):
        raise ValueError("no room")

    monkeypatch.setattr(encoded_memo, "dump_encodings", broken)
    assert cached.once(base) == 0
    out, err = capsys.readouterr()
    assert "warning: pass cache not written (ValueError: no room)" in err and "snapshot v1 applied" in out
    assert cached.held().version == 1
    assert switch_entries(cached.standby) == switch_entries(cached.primary) == entries_of(cached.held())


def test_stored_bytes_refused_as_not_ours_are_written_again(worlds, capsys, monkeypatch):
    """Bytes that do not agree with this reconciler's encoding are not used (every entry is
    encoded), and the file is written afresh even though its digests cover the snapshot."""
    from reconciler.switch import wire

    cached, _ = worlds
    base = synthetic_cluster(services=10, nodes=4, endpoints=40, seed=2)
    assert cached.once(base) == 0
    first = cached.cache("encoded").read_bytes()
    monkeypatch.setattr(wire, "_agree", lambda *a: False)  # as if another encoding had made them
    assert cached.once(with_scaled_service(base, sorted(base.services)[0], "node-1", +1)) == 0
    assert cached.cache("encoded").read_bytes() != first
    assert switch_entries(cached.standby) == switch_entries(cached.primary) == entries_of(cached.held())


@pytest.mark.parametrize("broken", ["resume", "memo", "load_encodings"])
def test_a_cache_that_breaks_never_stops_the_pass(worlds, capsys, monkeypatch, broken):
    """A bug in the cache's code (not only damage in its files) is said, and the pass renders,
    encodes and applies everything as without it."""
    from reconciler.render import engine
    from reconciler.switch import encoded_memo

    cached, plain = worlds
    base = synthetic_cluster(services=10, nodes=4, endpoints=40, seed=2)
    assert cached.once(base) == 0 and plain.once(base) == 0

    def boom(*_a, **_k):
        raise RuntimeError("a bug")

    target = {"resume": (engine.Renderer, "resume"), "memo": (engine.Renderer, "memo"),
              "load_encodings": (encoded_memo, "load_encodings")}[broken]
    monkeypatch.setattr(*target, boom)
    changed = with_scaled_service(base, sorted(base.services)[0], "node-1", +1)
    capsys.readouterr()
    assert cached.once(changed) == 0
    err = capsys.readouterr().err
    assert "warning: pass cache" in err and "RuntimeError: a bug" in err
    assert plain.once(changed) == 0
    _same_snapshot(cached.held(), plain.held())
    assert switch_entries(cached.standby) == switch_entries(cached.primary) == entries_of(cached.held())
