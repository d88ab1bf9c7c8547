"""The packaged monitoring (deploy/monitoring/) against what `p4kube run` really serves.

- `promtool test rules` runs the PrometheusRule's alerts on the cases in
  tests/monitoring_alerts_test.yaml (promtool: Debian's `prometheus` package, which
  .ci/run installs);
- every metric name in the alerts and in the Grafana dashboard is one a running `p4kube run`
  exposes on /metrics (a renamed metric breaks this test, not a dashboard in production);
- a running `p4kube run` without --leader-elect reports p4kube_leader 1 once its loop runs (so
  `sum(p4kube_leader) != 1` stays quiet for a single replica), serves /metrics behind a bearer
  token and the probes on their own address.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import MULTI, commit_all, multi_lbconfig, p4kube_process
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
CASES = ROOT / "tests" / "monitoring_alerts_test.yaml"  # ours: tests/fixtures holds copies of ../shared/fixtures
CONFIG = "p4kube-system/p4kube-config"

# PromQL words that are not metric names: functions (followed by "("), operators, modifiers.
FUNCTIONS = {"sum", "max", "min", "avg", "count", "rate", "increase", "histogram_quantile", "topk", "vector", "absent"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}


def rule_group() -> dict[str, Any]:
    (rule,) = YAML(typ="safe").load_all(MONITORING.joinpath("prometheusrule.yaml").read_text(encoding="utf-8"))
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    return {"groups": rule["spec"]["groups"]}


def alert_exprs() -> dict[str, str]:
    return {r["alert"]: r["expr"] for g in rule_group()["groups"] for r in g["rules"]}


def dashboard() -> dict[str, Any]:
    return json.loads(MONITORING.joinpath("grafana-dashboard.json").read_text(encoding="utf-8"))


def dashboard_exprs() -> dict[str, str]:
    out = {}
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            out[f"{panel['title']} {target['refId']}"] = target["expr"]
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (enough PromQL for our rules and panels)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values, may hold anything
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges ([10m], [$__rate_interval])
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"(?<![\w.])\d+(\.\d+)?([eE][+-]?\d+)?", "", text)  # numbers (540e6)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][\w:]*(\s*\()?", text):
        word = m.group(0).rstrip("( ")
        if m.group(1):
            assert word in FUNCTIONS, f"{word}() in {expr!r} is not a function this test knows"
        elif word not in KEYWORDS:
            names.add(word)
    return names


def test_metric_names_are_read_from_promql():
    assert metric_names('max by (pod) (process_resident_memory_bytes{job="p4kube-metrics"}) > 540e6') == {
        "process_resident_memory_bytes"}
    assert metric_names("(sum(p4kube_leader) or vector(0)) != 1") == {"p4kube_leader"}
    assert metric_names('histogram_quantile(0.99, sum by (config, le) (rate(x_bucket{config=~"$config"}[$__rate_interval])))') == {
        "x_bucket"}


def test_promtool_runs_the_alert_cases(tmp_path: Path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required: apt-get install prometheus (Debian's package ships it; .ci/run installs it)"
    YAML().dump(rule_group(), tmp_path / "rules.yaml")
    shutil.copy(CASES, tmp_path / CASES.name)
    check = subprocess.run([promtool, "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run([promtool, "test", "rules", CASES.name], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Each alert has at least one case where it fires.
    cases = YAML(typ="safe").load(CASES.read_text(encoding="utf-8"))
    firing = {t["alertname"] for c in cases["tests"] for t in c["alert_rule_test"] if t["exp_alerts"]}
    assert firing == set(alert_exprs())


def test_the_documented_alerts_are_in_the_rule():
    doc = ROOT.joinpath("docs", "observability.md").read_text(encoding="utf-8")
    for name in alert_exprs():
        assert f"`{name}`" in doc, f"docs/observability.md does not list the alert {name}"


def test_dashboard_has_the_panels_the_operator_needs():
    board = dashboard()
    text = json.dumps([p["targets"] for p in board["panels"]])
    for metric in ("p4kube_reconcile_duration_seconds_bucket", "p4kube_transactions_total", "p4kube_table_writes_total",
                   "p4kube_drift_entries_total", "p4kube_fallbacks_total", "p4kube_switch_connected",
                   "p4kube_backend_packets_total"):
        assert metric in text, f"no panel shows {metric}"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"] == "p4kube-reconciler"


def exposed_names(body: str) -> set[str]:
    """The series names a scrape can hold: labelled families with no child yet still announce
    themselves (HELP/TYPE), so the names come from the families and their types."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                "gauge": ("",), "info": ("_info",), "summary": ("", "_count", "_sum", "_created"), "unknown": ("",)}
    names = set()
    for family in text_string_to_metric_families(body):
        names.update(family.name + s for s in suffixes[family.type])
        names.update(s.name for s in family.samples)
    return names


def run_args(tmp_path: Path, switch_pair) -> list[str]:
    """`p4kube run` over the multi-service example on `switch_pair` (committed Git intent, a
    recording, a state directory, /metrics on a free port): the argv the tests add to."""
    standby, primary = switch_pair
    intent = tmp_path / "intent"
    intent.mkdir()
    (intent / "lbconfig.yaml").write_text(multi_lbconfig(standby.port, primary.port, loop=True))
    shutil.copy(MULTI / "sim-device-config.json", intent)
    commit_all(intent)
    cluster = tmp_path / "recorded.yaml"
    shutil.copy(MULTI / "cluster.yaml", cluster)
    return ["--log-level", "info", "run", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent),
            "--cluster", str(cluster), "--state", str(tmp_path / "state"), "--metrics-address", "127.0.0.1:0"]


def scrape(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_running_reconciler_serves_every_metric_the_alerts_and_dashboard_use(tmp_path: Path, switch_pair):
    run_argv = run_args(tmp_path, switch_pair)
    token = tmp_path / "metrics-token"
    token.write_text("t0ken\n")

    with p4kube_process(
        [*run_argv, "--probe-address", "127.0.0.1:0", "--metrics-bearer-token-file", str(token)],
    ) as (proc, lines):
        probes = lines.wait(r"serving /healthz, /readyz on ([\d.]+):(\d+)").groups()
        metrics = lines.wait(r"serving /metrics on ([\d.]+):(\d+) \(/metrics needs a bearer token\)").groups()
        lines.wait(rf"{CONFIG} v1 applied")
        url = "http://{}:{}/metrics".format(*metrics)
        assert scrape(url)[0] == 401
        status, body = scrape(url, "t0ken")
        assert status == 200
        assert scrape("http://{}:{}/readyz".format(*probes))[0] == 200  # no token for the kubelet
        assert scrape("http://{}:{}/metrics".format(*probes))[0] == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(body) for s in f.samples}
    assert samples[("p4kube_leader", ())] == 1, "the only replica writes: it is the leader"
    (build,) = [k for k in samples if k[0] == "p4kube_build_info"]
    assert dict(build[1]).keys() == {"version", "commit", "python"}
    assert samples[("p4kube_transactions_total", (("config", CONFIG), ("outcome", "applied")))] == 1
    assert samples[("process_resident_memory_bytes", ())] > 10e6

    exposed = exposed_names(body)
    used = {f"alert {k}": metric_names(v) for k, v in alert_exprs().items()}
    used |= {f"panel {k}": metric_names(v) for k, v in dashboard_exprs().items()}
    missing = {where: names - exposed for where, names in used.items() if names - exposed}
    assert not missing, f"names no running reconciler serves: {missing}"
    assert set().union(*used.values()) >= {"p4kube_leader", "p4kube_switch_connected", "process_resident_memory_bytes"}


def kubeconfig_for(server: Any, path: Path) -> Path:
    """A kubeconfig file naming the test API server (plain HTTP on 127.0.0.1, a bearer token)."""
    token = next(iter(server.authenticator.tokens))
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server.url}}],
        "users": [{"name": "test", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))
    return path


def leader_gauge(url: str) -> float:
    status, body = scrape(url)
    assert status == 200, body
    (value,) = [s.value for f in text_string_to_metric_families(body) for s in f.samples if s.name == "p4kube_leader"]
    return value


def test_with_leader_election_only_the_lease_holder_reports_1(tmp_path: Path, switch_pair):
    """Two replicas with --leader-elect: the Lease holder 1, the standby 0 (sum is 1); when the
    holder stops and releases the Lease, the standby takes it and reports 1."""
    from kubeapi.server import KubeApiServer

    run_argv = run_args(tmp_path, switch_pair)
    with KubeApiServer() as server:
        server.load([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "p4kube-system"}}])
        kubeconfig = kubeconfig_for(server, tmp_path / "kubeconfig")

        def replica(name: str) -> list[str]:
            return [*run_argv, "--kubeconfig", str(kubeconfig), "--leader-elect", "--leader-elect-identity", name]

        with p4kube_process(replica("replica-a")) as (a, a_lines):
            a_url = "http://{}:{}/metrics".format(*a_lines.wait(r"serving /metrics, /healthz, /readyz on ([\d.]+):(\d+)").groups())
            a_lines.wait(r"replica-a leads")
            a_lines.wait(rf"{CONFIG} v1 applied")
            with p4kube_process(replica("replica-b")) as (b, b_lines):
                b_url = "http://{}:{}/metrics".format(*b_lines.wait(r"serving /metrics, /healthz, /readyz on ([\d.]+):(\d+)").groups())
                assert (leader_gauge(a_url), leader_gauge(b_url)) == (1, 0)
                assert scrape(b_url.replace("/metrics", "/readyz")) == (200, "ready: standby follower\n")
                a.send_signal(signal.SIGTERM)  # releases the Lease on its way out
                assert a.wait(timeout=30) == 0
                b_lines.wait(r"replica-b leads")
                b_lines.wait(rf"{CONFIG} v\d+ (applied|unchanged|resynced) \(")
                assert leader_gauge(b_url) == 1
                b.send_signal(signal.SIGTERM)
                assert b.wait(timeout=30) == 0


def test_the_servicemonitor_selects_the_metrics_service_and_port():
    (monitor,) = YAML(typ="safe").load_all(MONITORING.joinpath("servicemonitor.yaml").read_text(encoding="utf-8"))
    (service,) = YAML(typ="safe").load_all(ROOT.joinpath("deploy", "base", "service-metrics.yaml").read_text(encoding="utf-8"))
    assert monitor["kind"] == "ServiceMonitor" and monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"
    # The alert's job label is the one the Prometheus Operator gives: the Service's name.
    assert 'job="p4kube-metrics"' in alert_exprs()["P4KubeMemoryHigh"] and service["metadata"]["name"] == "p4kube-metrics"
