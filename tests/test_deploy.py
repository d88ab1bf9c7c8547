"""The install manifests in deploy/: complete, least-privilege RBAC, a Deployment that matches
the reconciler's flags and the restricted Pod Security level, and GitOps settings (Argo CD,
Flux) that keep the reconciler's writes on Services. All YAML is read with ruamel."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from reconciler import crd
from reconciler.cluster.model import OPT_IN_ANNOTATION
from reconciler.kube.client import FIELD_MANAGER
from reconciler.paths import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
NAMESPACE = "p4kube-system"
IMAGE = "p4kube/reconciler"

# The complete, minimal list the brief fixes: (apiGroup, resource, verb).
# Exactly the calls the code makes (reconciler/kube/client.py REQUIRED_PERMISSIONS, checked
# against real traffic as the service account in tests/test_e2e_kube.py).
CLUSTER_RULES = {
    *(("", "services", v) for v in ("get", "list", "watch", "patch")),
    ("", "services/status", "patch"),
    *(("discovery.k8s.io", "endpointslices", v) for v in ("list", "watch")),
    *(("", "nodes", v) for v in ("list", "watch")),
    *(("events.k8s.io", "events", v) for v in ("create", "patch")),
    *((crd.GROUP, crd.PLURAL, v) for v in ("list", "watch")),
    (crd.GROUP, f"{crd.PLURAL}/status", "patch"),
}
LEASE_RULES = {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}


def load_all(path: Path) -> list[dict[str, Any]]:
    yaml = YAML(typ="safe")
    return [d for d in yaml.load_all(path.read_text(encoding="utf-8")) if d is not None]


@lru_cache(maxsize=1)
def manifests() -> dict[str, list[dict[str, Any]]]:  # read once: tests only read the result
    """The documents of every top-level manifest in deploy/, by file name."""
    return {p.name: load_all(p) for p in sorted(DEPLOY.glob("*.yaml")) if p.name != "kustomization.yaml"}


def objects() -> list[dict[str, Any]]:
    return [d for docs in manifests().values() for d in docs]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects() if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def rule_triples(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    out = set()
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected keys (resourceNames?) in {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"wildcard in {rule}"
                    out.add((group, resource, verb))
    return out


# --- the set of manifests --------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_all(DEPLOY / "kustomization.yaml")[0]
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert set(listed) == set(manifests()), "deploy/*.yaml and kustomization.yaml resources differ"
    assert [i["name"] for i in kustomization.get("images", [])] == [IMAGE]


def test_every_object_is_well_formed_and_namespaced_right() -> None:
    kinds = set()
    for obj in objects():
        assert {"apiVersion", "kind", "metadata"} <= set(obj)
        meta = obj["metadata"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", meta["name"]), meta["name"]
        cluster_scoped = obj["kind"] in {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
        assert ("namespace" in meta) != cluster_scoped, f"{obj['kind']}/{meta['name']}"
        if not cluster_scoped:
            assert meta["namespace"] == NAMESPACE
        assert meta.get("labels", {}).get("app.kubernetes.io/part-of") == "p4kube", f"{obj['kind']}/{meta['name']}"
        kinds.add(obj["kind"])
    assert one("Namespace", NAMESPACE)
    assert kinds >= {"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                     "Role", "RoleBinding", "Deployment", "Service"}  # fmt: skip


def test_the_crd_manifest_is_the_generated_one() -> None:
    (doc,) = manifests()["crd.yaml"]
    assert doc == crd.generate_crd()


# --- RBAC --------------------------------------------------------------------------------------


def test_cluster_role_is_exactly_the_minimal_list() -> None:
    role = one("ClusterRole", "p4kube-reconciler")
    assert rule_triples(role["rules"]) == CLUSTER_RULES
    assert "aggregationRule" not in role


def test_lease_role_is_namespaced_and_minimal() -> None:
    role = one("Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert rule_triples(role["rules"]) == LEASE_RULES
    # Nothing else anywhere grants more: these are the only two roles.
    assert [o["kind"] for o in objects() if o["kind"] in {"Role", "ClusterRole"}].count("ClusterRole") == 1


def test_bindings_give_the_roles_to_the_service_account() -> None:
    sa = one("ServiceAccount")
    deployment = one("Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    subject = {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    for binding_kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = one(binding_kind)
        assert binding["subjects"] == [subject]
        role = one(role_kind)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": role["metadata"]["name"],
        }
        if binding_kind == "RoleBinding":
            assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]


def test_rbac_covers_the_permissions_the_kube_code_declares() -> None:
    """reconciler/kube/client.py lists what the code calls; the shipped RBAC must allow it."""
    from reconciler.kube.client import REQUIRED_PERMISSIONS

    granted = rule_triples(one("ClusterRole")["rules"])
    namespaced = rule_triples(one("Role")["rules"])
    for p in REQUIRED_PERMISSIONS:
        for verb in p.verbs:
            where = namespaced if p.namespaced_to_release else granted
            assert (p.group, p.resource, verb) in where, f"{p.group}/{p.resource} {verb} is not granted"


def test_rbac_grants_nothing_the_code_does_not_use() -> None:
    """Least privilege: every verb the shipped roles grant is one the code declares it calls
    (tests/test_e2e_kube.py runs the product as the service account to keep that list honest)."""
    from reconciler.kube.client import REQUIRED_PERMISSIONS

    needed = {(p.group, p.resource, v) for p in REQUIRED_PERMISSIONS if not p.namespaced_to_release for v in p.verbs}
    needed_ns = {(p.group, p.resource, v) for p in REQUIRED_PERMISSIONS if p.namespaced_to_release for v in p.verbs}
    assert set(rule_triples(one("ClusterRole")["rules"])) == needed
    assert set(rule_triples(one("Role")["rules"])) == needed_ns


# --- the Deployment ------------------------------------------------------------------------


@pytest.fixture()
def pod() -> dict[str, Any]:
    return one("Deployment", "p4kube-reconciler")["spec"]["template"]["spec"]


@pytest.fixture()
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod["containers"]
    return c


def flag_values(args: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for a in args:
        if a.startswith("--"):
            name, _, value = a.partition("=")
            out[name] = value if value else None
    return out


def test_deployment_runs_two_replicas_with_leader_election(container: dict[str, Any]) -> None:
    deployment = one("Deployment", "p4kube-reconciler")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["command"] == ["p4kube"]
    args = container["args"]
    run = args.index("run")
    assert all(a.startswith("--") for a in args[:run]), "global flags go before the command"
    flags = flag_values(args[run + 1 :])
    for flag in ("--intent-from-cluster", "--leader-elect"):
        assert flag in flags and flags[flag] is None
    assert flags["--audit-repo"]
    assert flags["--metrics-address"] == "0.0.0.0:9100"
    assert flags["--leader-elect-namespace"] == "$(POD_NAMESPACE)"
    assert flags["--leader-elect-identity"] == "$(POD_NAME)"
    assert container["image"].rsplit(":", 1)[0] == IMAGE


def test_probes_are_on_the_metrics_port(container: dict[str, Any]) -> None:
    (port,) = container["ports"]
    metrics_port = int(flag_values(container["args"])["--metrics-address"].rsplit(":", 1)[1])
    assert (port["name"], port["containerPort"]) == ("metrics", metrics_port)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["port"] == "metrics"


def test_pod_meets_the_restricted_pod_security_level(pod: dict[str, Any], container: dict[str, Any]) -> None:
    assert one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    psc, csc = pod["securityContext"], container["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"]["drop"] == ["ALL"] and "add" not in csc["capabilities"]
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= {"secret", "emptyDir", "configMap", "projected"}, volume
    assert not pod.get("hostNetwork") and not pod.get("hostPID")


def test_writable_paths_are_volumes(container: dict[str, Any]) -> None:
    """The root filesystem is read-only: HOME and the audit work directory must be mounts."""
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    env = {e["name"]: e for e in container["env"]}
    workdir = flag_values(container["args"])["--audit-workdir"]
    for path in (env["HOME"]["value"], workdir):
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m, v in mounts.items() if not v.get("readOnly"))


def test_downward_api_and_tls_secret(pod: dict[str, Any], container: dict[str, Any]) -> None:
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    volumes = {v["name"]: v for v in pod["volumes"]}
    tls = [m for m in container["volumeMounts"] if "secret" in volumes[m["name"]]]
    assert len(tls) == 1 and tls[0]["readOnly"] is True
    secret = volumes[tls[0]["name"]]["secret"]
    assert secret["secretName"] and secret["defaultMode"] == 0o440


def test_resources_and_anti_affinity(pod: dict[str, Any], container: dict[str, Any]) -> None:
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()


def test_metrics_service_and_pdb_select_the_pods(container: dict[str, Any]) -> None:
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one("Service", "p4kube-metrics")
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "metrics" and port["port"] == container["ports"][0]["containerPort"]
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] == 1


# --- Argo CD ----------------------------------------------------------------------------------


def test_argocd_application_keeps_the_reconcilers_service_writes() -> None:
    apps = load_all(DEPLOY / "argocd" / "application.yaml")
    assert apps and all(a["kind"] == "Application" and a["apiVersion"] == "argoproj.io/v1alpha1" for a in apps)
    with_services = [a for a in apps if any(d["kind"] == "Service" for d in a["spec"].get("ignoreDifferences", []))]
    assert with_services
    for app in with_services:
        rules = [d for d in app["spec"]["ignoreDifferences"] if d["kind"] == "Service"]
        assert all(d["group"] == "" for d in rules)
        assert any(d.get("managedFieldsManagers") == [FIELD_MANAGER] for d in rules)
        options = app["spec"]["syncPolicy"]["syncOptions"]
        assert "RespectIgnoreDifferences=true" in options and "ServerSideApply=true" in options
    install = [a for a in apps if a["spec"]["source"]["path"] == "deploy"]
    assert install and install[0]["spec"]["destination"]["namespace"] == NAMESPACE


def test_argocd_cm_patch_carries_the_health_script_verbatim() -> None:
    (patch,) = load_all(DEPLOY / "argocd" / "argocd-cm-patch.yaml")
    assert set(patch) == {"data"}, "a merge patch of data only, never a whole argocd-cm"
    key = f"resource.customizations.health.{crd.GROUP}_{crd.KIND}"
    assert patch["data"][key] == (DEPLOY / "argocd" / "health-lbc.lua").read_text(encoding="utf-8")
    ignore = YAML(typ="safe", pure=True).load(patch["data"]["resource.customizations.ignoreDifferences.Service"])
    assert ignore == {"managedFieldsManagers": [FIELD_MANAGER]}


def _condition(type_: str, status: str, generation: int | None = 2, reason: str = "Test", message: str = "msg") -> dict[str, Any]:
    c = {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": "2026-11-22T10:00:00Z"}
    if generation is not None:
        c["observedGeneration"] = generation
    return c


HEALTH_CASES = [
    ("no status", None, "Progressing", "report status"),
    ("older generation observed", {"observedGeneration": 1, "conditions": [_condition("Ready", "True", 1)]}, "Progressing", "generation 2"),
    ("ready", {"observedGeneration": 2, "conditions": [_condition("Ready", "True", reason="Applied", message="version 7")]}, "Healthy", "Applied: version 7"),
    ("reconciling", {"observedGeneration": 2, "conditions": [_condition("Ready", "Unknown"), _condition("Reconciling", "True", reason="Applying")]}, "Progressing", "Applying"),
    ("stalled", {"observedGeneration": 2, "conditions": [_condition("Ready", "False"), _condition("Stalled", "True", reason="InvalidIntent", message="spec.vipPools[0]: bad")]}, "Degraded", "InvalidIntent: spec.vipPools[0]: bad"),
    ("stalled wins over reconciling", {"observedGeneration": 2, "conditions": [_condition("Reconciling", "True"), _condition("Stalled", "True", reason="RolledBack")]}, "Degraded", "RolledBack"),
    ("not ready", {"observedGeneration": 2, "conditions": [_condition("Ready", "False", reason="Degraded", message="standby unreachable")]}, "Degraded", "standby unreachable"),
    ("ready for an old generation", {"observedGeneration": 2, "conditions": [_condition("Ready", "True", 1)]}, "Progressing", "Ready condition"),
    ("ready without condition generation", {"observedGeneration": 2, "conditions": [_condition("Ready", "True", None)]}, "Healthy", "Test"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "status", "health", "message"), HEALTH_CASES, ids=[c[0] for c in HEALTH_CASES])
def test_argocd_health_script(case: str, status: dict[str, Any] | None, health: str, message: str) -> None:
    """Runs health-lbc.lua in Lua 5.1 (the language of Argo CD's gopher-lua) when lupa is
    installed; the script's logic is otherwise unchecked."""
    lua51 = pytest.importorskip("lupa.lua51")
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    obj: dict[str, Any] = {
        "apiVersion": f"{crd.GROUP}/{crd.VERSION}",
        "kind": crd.KIND,
        "metadata": {"name": "edge", "namespace": NAMESPACE, "generation": 2},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    script = (DEPLOY / "argocd" / "health-lbc.lua").read_text(encoding="utf-8")
    result = runtime.execute(script)
    assert (result["status"], message in result["message"]) == (health, True), dict(result)


# --- Flux ---------------------------------------------------------------------------------------


def test_flux_examples() -> None:
    docs = load_all(DEPLOY / "flux" / "p4kube-flux.yaml")
    repos = [d for d in docs if d["kind"] == "GitRepository"]
    kustomizations = [d for d in docs if d["kind"] == "Kustomization"]
    assert repos and kustomizations
    for repo in repos:
        assert repo["apiVersion"] == "source.toolkit.fluxcd.io/v1"
        assert repo["spec"]["verify"]["mode"] in {"HEAD", "Tag", "TagAndHEAD"}
        assert repo["spec"]["verify"]["secretRef"]["name"]
    names = {r["metadata"]["name"] for r in repos}
    for k in kustomizations:
        assert k["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
        assert k["spec"]["sourceRef"]["kind"] == "GitRepository"
        assert isinstance(k["spec"]["prune"], bool)
    install = next(k for k in kustomizations if k["spec"]["path"] == "./deploy" and k["spec"]["sourceRef"]["name"] in names)
    assert install["spec"]["wait"] is True
    intent = next(k for k in kustomizations if any(d["name"] == install["metadata"]["name"] for d in k["spec"].get("dependsOn", [])))
    assert intent["spec"]["targetNamespace"] == NAMESPACE
    # The workload example keeps an automatic fallback's annotation (JSON Pointer, "/" as ~1).
    pointer = "/metadata/annotations/" + OPT_IN_ANNOTATION.replace("~", "~0").replace("/", "~1")
    rules = [r for k in kustomizations for r in k["spec"].get("ignore", [])]
    assert any(pointer in r["paths"] and r["target"]["kind"] == "Service" for r in rules)
