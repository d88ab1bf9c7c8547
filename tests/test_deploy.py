"""The install manifests in deploy/: complete, least-privilege RBAC, a Deployment that matches
the reconciler's flags and the restricted Pod Security level (the base, deploy/base/), the
overlays in deploy/overlays/, the image (Dockerfile, .dockerignore), and GitOps settings (Argo CD,
Flux) that keep the reconciler's writes on Services. All YAML is read with ruamel.

There is no kustomize binary (nor Docker engine) here: the overlays are rendered by the small
kustomize subset below (resources, patches: strategic merge with list merge keys and
`$patch: delete`, JSON 6902; images; no namespace, generators or components, which deploy/
does not use and which `build()` refuses), with kustomize's loader rules (a base may not contain
the overlay that loads it; files stay under their kustomization's directory), and the Dockerfile
is checked statically."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import shlex
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from helpers import require_module
from ruamel.yaml import YAML

from reconciler import crd
from reconciler.cluster.model import OPT_IN_ANNOTATION
from reconciler.kube.client import FIELD_MANAGER

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = REPO_ROOT / "deploy"
BASE = DEPLOY / "base"
OVERLAYS = DEPLOY / "overlays"
NAMESPACE = "p4kube-system"
IMAGE = "ghcr.io/p4kube/reconciler"

# The complete, minimal list the brief fixes: (apiGroup, resource, verb).
# Exactly the calls the code makes (reconciler/kube/client.py REQUIRED_PERMISSIONS, checked
# against real traffic as the service account in tests/test_e2e_kube.py).
CLUSTER_RULES = {
    *(("", "services", v) for v in ("get", "list", "watch", "patch")),
    ("", "services/status", "patch"),
    *(("discovery.k8s.io", "endpointslices", v) for v in ("list", "watch")),
    *(("", "nodes", v) for v in ("list", "watch")),
    *(("events.k8s.io", "events", v) for v in ("create", "patch")),
}
LEASE_RULES = {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}
# LoadBalancerConfigs: read in the reconciler's own namespace only (a namespaced Role).
INTENT_RULES = {*((crd.GROUP, crd.PLURAL, v) for v in ("list", "watch")), (crd.GROUP, f"{crd.PLURAL}/status", "patch")}
ROLES = {"p4kube-leader-election": LEASE_RULES, "p4kube-intent": INTENT_RULES}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}  # fmt: skip


def load_all(path: Path) -> list[dict[str, Any]]:
    yaml = YAML(typ="safe")
    return [d for d in yaml.load_all(path.read_text(encoding="utf-8")) if d is not None]


@lru_cache(maxsize=1)
def manifests() -> dict[str, list[dict[str, Any]]]:  # read once: tests only read the result
    """The documents of every manifest of the base, deploy/base/, by file name."""
    return {p.name: load_all(p) for p in sorted(BASE.glob("*.yaml")) if p.name != "kustomization.yaml"}


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
    kustomization = load_all(BASE / "kustomization.yaml")[0]
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert set(listed) == set(manifests()), "deploy/base/*.yaml and its kustomization.yaml resources differ"
    assert [i["name"] for i in kustomization.get("images", [])] == [IMAGE]


def test_every_object_is_well_formed_and_namespaced_right() -> None:
    kinds = set()
    for obj in objects():
        assert {"apiVersion", "kind", "metadata"} <= set(obj)
        meta = obj["metadata"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", meta["name"]), meta["name"]
        cluster_scoped = obj["kind"] in CLUSTER_SCOPED
        assert ("namespace" in meta) != cluster_scoped, f"{obj['kind']}/{meta['name']}"
        if not cluster_scoped:
            assert meta["namespace"] == NAMESPACE
        assert meta.get("labels", {}).get("app.kubernetes.io/part-of") == "p4kube", f"{obj['kind']}/{meta['name']}"
        kinds.add(obj["kind"])
    assert one("Namespace", NAMESPACE)
    assert kinds >= {"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                     "Role", "RoleBinding", "Deployment", "Service", "ValidatingAdmissionPolicy",
                     "ValidatingAdmissionPolicyBinding", "NetworkPolicy"}  # fmt: skip


def test_the_crd_manifest_is_the_generated_one() -> None:
    (doc,) = manifests()["crd.yaml"]
    assert doc == crd.generate_crd()


# --- RBAC --------------------------------------------------------------------------------------


def test_cluster_role_is_exactly_the_minimal_list() -> None:
    role = one("ClusterRole", "p4kube-reconciler")
    assert rule_triples(role["rules"]) == CLUSTER_RULES
    assert "aggregationRule" not in role


def test_namespaced_roles_are_minimal() -> None:
    """Leases and LoadBalancerConfigs only in p4kube-system; nothing else anywhere grants more."""
    for name, rules in ROLES.items():
        role = one("Role", name)
        assert role["metadata"]["namespace"] == NAMESPACE
        assert rule_triples(role["rules"]) == rules
    assert sorted(o["metadata"]["name"] for o in objects() if o["kind"] == "Role") == sorted(ROLES)
    assert [o["kind"] for o in objects() if o["kind"] in {"Role", "ClusterRole"}].count("ClusterRole") == 1


def test_bindings_give_the_roles_to_the_service_account() -> None:
    sa = one("ServiceAccount")
    deployment = one("Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    subject = {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    pairs = [("ClusterRoleBinding", "ClusterRole", None), *(("RoleBinding", "Role", name) for name in ROLES)]
    for binding_kind, role_kind, name in pairs:
        binding = one(binding_kind, name)
        assert binding["subjects"] == [subject]
        role = one(role_kind, name)
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
    namespaced = {t for name in ROLES for t in rule_triples(one("Role", name)["rules"])}
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
    assert {t for name in ROLES for t in rule_triples(one("Role", name)["rules"])} == needed_ns


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


def test_deployment_runs_with_leader_election(container: dict[str, Any]) -> None:
    """One replica in the base, with leader election all the same: during a rolling update
    (maxSurge 1) the old and the new pod overlap, and only the Lease holder may write."""
    deployment = one("Deployment", "p4kube-reconciler")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["command"] == ["p4kube"]
    args = container["args"]
    run = args.index("run")
    assert all(a.startswith("--") for a in args[:run]), "global flags go before the command"
    flags = flag_values(args[run + 1 :])
    for flag in ("--intent-from-cluster", "--leader-elect"):
        assert flag in flags and flags[flag] is None
    assert flags["--audit-repo"] == "$(AUDIT_REPO)"
    assert flags["--metrics-address"] == "0.0.0.0:9100"
    assert flags["--leader-elect-namespace"] == "$(POD_NAMESPACE)"
    assert flags["--leader-elect-identity"] == "$(POD_NAME)"
    assert container["image"].rsplit(":", 1)[0] == IMAGE
    assert "PodDisruptionBudget" not in {o["kind"] for o in objects()}, "one replica: a PDB would block node drains"


def test_audit_repo_comes_from_the_configmap(container: dict[str, Any]) -> None:
    env = {e["name"]: e for e in container["env"]}
    ref = env["AUDIT_REPO"]["valueFrom"]["configMapKeyRef"]
    config = one("ConfigMap", ref["name"])
    assert ref["key"] in config["data"] and not ref.get("optional")
    assert config["data"][ref["key"]].startswith("https://"), "the base's credentials are an HTTPS token"


def test_probes_are_on_the_metrics_port(container: dict[str, Any]) -> None:
    (port,) = container["ports"]
    metrics_port = int(flag_values(container["args"])["--metrics-address"].rsplit(":", 1)[1])
    assert (port["name"], port["containerPort"]) == ("metrics", metrics_port)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_probe_paths_are_the_ones_run_serves() -> None:
    """Each probe's path answers 200 on the endpoint `p4kube run --metrics-address` serves
    (reconciler/httpserver.py), with a fresh heartbeat and a standby's readiness."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from reconciler.httpserver import Heartbeat, HttpEndpoint

    container = one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    paths = {container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert paths == {"/healthz", "/readyz"}

    async def get(port: int, path: str) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        return int(status_line.split()[1])

    async def probe_all() -> dict[str, int]:
        heartbeat = Heartbeat(max_age=60)
        heartbeat.beat()
        endpoint = HttpEndpoint(CollectorRegistry(), heartbeat=heartbeat, readiness=lambda: (True, "standby"))
        port = await endpoint.start()
        try:
            return {path: await get(port, path) for path in sorted(paths | {"/nothing-here"})}
        finally:
            await endpoint.stop()

    assert asyncio.run(probe_all()) == {"/healthz": 200, "/readyz": 200, "/nothing-here": 404}


def check_restricted(pod: dict[str, Any]) -> None:
    """The restricted Pod Security level, and volumes that are only Secrets, ConfigMaps,
    emptyDirs or projections, every one of them mounted."""
    (container,) = pod["containers"]
    psc, csc = pod["securityContext"], container["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0 and psc["runAsGroup"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"]["drop"] == ["ALL"] and "add" not in csc["capabilities"]
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= {"secret", "emptyDir", "configMap", "projected"}, volume
    assert not pod.get("hostNetwork") and not pod.get("hostPID")
    volumes = {v["name"] for v in pod["volumes"]}
    mounted = [m["name"] for m in container["volumeMounts"]]
    assert set(mounted) == volumes, f"mounts {mounted} and volumes {sorted(volumes)} differ"
    paths = [m["mountPath"] for m in container["volumeMounts"]]
    assert len(paths) == len(set(paths))


def test_pod_meets_the_restricted_pod_security_level(pod: dict[str, Any]) -> None:
    assert one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    check_restricted(pod)


def writable(container: dict[str, Any], path: str) -> bool:
    return any(path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
               for m in container["volumeMounts"] if not m.get("readOnly"))  # fmt: skip


def test_writable_paths_are_volumes(pod: dict[str, Any], container: dict[str, Any]) -> None:
    """The root filesystem is read-only: HOME and the audit work directory must be emptyDir mounts."""
    env = {e["name"]: e for e in container["env"]}
    assert env["PYTHONDONTWRITEBYTECODE"]["value"] == "1"
    workdir = flag_values(container["args"])["--audit-workdir"]
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    for path in (env["HOME"]["value"], workdir):
        assert writable(container, path), path
        (mount,) = [m for m in container["volumeMounts"] if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")]
        assert mount["name"] in empty_dirs


def test_downward_api_and_audit_credentials(pod: dict[str, Any], container: dict[str, Any]) -> None:
    """The audit push's HTTPS token is a file from a required Secret (read when the remote asks,
    so a rotated token needs no restart), never a plain env value; the user name is optional."""
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert "P4KUBE_AUDIT_PASSWORD" not in env, "a token in the environment shows in `kubectl describe`"
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret_mounts = [m for m in container["volumeMounts"] if "secret" in volumes[m["name"]]]
    assert len(secret_mounts) == 1 and secret_mounts[0]["readOnly"] is True
    secret = volumes[secret_mounts[0]["name"]]["secret"]
    assert secret["defaultMode"] == 0o440 and not secret.get("optional")
    assert env["P4KUBE_AUDIT_PASSWORD_FILE"]["value"] in {f"{secret_mounts[0]['mountPath']}/{item['path']}" for item in secret["items"]}
    user = env["P4KUBE_AUDIT_USERNAME"]["valueFrom"]["secretKeyRef"]
    assert user["name"] == secret["secretName"] and user["optional"] is True


def test_resources_and_anti_affinity(pod: dict[str, Any], container: dict[str, Any]) -> None:
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()


def test_metrics_service_selects_the_pods(container: dict[str, Any]) -> None:
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one("Service", "p4kube-metrics")
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "metrics" and port["port"] == container["ports"][0]["containerPort"]


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
    install = [a for a in apps if a["spec"]["source"]["path"] == "deploy/base"]
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
    """Runs health-lbc.lua in Lua 5.1 (the language of Argo CD's gopher-lua) through lupa, a dev
    dependency: without it the script's logic would go unchecked, so its absence fails."""
    lua51 = require_module("lupa.lua51", "install the test extras (pip install -e .[test], as dev.py test does)")
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
    install = next(k for k in kustomizations if k["spec"]["path"] == "./deploy/base" and k["spec"]["sourceRef"]["name"] in names)
    assert install["spec"]["wait"] is True
    intent = next(k for k in kustomizations if any(d["name"] == install["metadata"]["name"] for d in k["spec"].get("dependsOn", [])))
    assert intent["spec"]["targetNamespace"] == NAMESPACE
    # The workload example keeps an automatic fallback's annotation (JSON Pointer, "/" as ~1).
    pointer = "/metadata/annotations/" + OPT_IN_ANNOTATION.replace("~", "~0").replace("/", "~1")
    rules = [r for k in kustomizations for r in k["spec"].get("ignore", [])]
    assert any(pointer in r["paths"] and r["target"]["kind"] == "Service" for r in rules)


# --- a kustomize subset, to render the overlays --------------------------------------------------

# Strategic merge: lists of these fields merge item by item on the key; other lists are replaced.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
              "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name"}  # fmt: skip
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key)
            else:
                out[key] = strip_directives(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        out_list = [copy.deepcopy(item) for item in base]
        for item in patch:
            where = [i for i, b in enumerate(out_list) if b.get(key) == item[key]]
            if item.get("$patch") == "delete":
                assert where, f"$patch: delete of {field} {item[key]!r}, which the base does not have"
                del out_list[where[0]]
            elif where:
                out_list[where[0]] = strategic_merge(out_list[where[0]], item, field)
            else:
                out_list.append(strip_directives(item))
        return out_list
    return strip_directives(patch)


def strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        assert "$patch" not in value, f"a $patch directive with nothing to apply to: {value}"
        return {k: strip_directives(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_directives(v) for v in value]
    return value


def json6902(obj: Any, ops: list[dict[str, Any]]) -> Any:
    obj = copy.deepcopy(obj)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target = obj
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            index = len(target) if last == "-" else int(last)
            if op["op"] == "add":
                target.insert(index, op["value"])
            elif op["op"] == "remove":
                del target[index]
            else:
                assert op["op"] == "replace", op
                target[index] = op["value"]
        else:
            assert op["op"] in {"add", "remove", "replace"}, op
            assert op["op"] == "add" or last in target, f"{op['op']} of missing {op['path']}"
            if op["op"] == "remove":
                del target[last]
            else:
                target[last] = op["value"]
    return obj


def matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    want = {"group": group, "version": version, "kind": obj["kind"], "name": obj["metadata"]["name"],
            "namespace": obj["metadata"].get("namespace")}  # fmt: skip
    return all(want[k] == v for k, v in target.items())


class KustomizeError(Exception):
    """What `kustomize build` itself refuses, with its message (not a limit of this subset)."""


def within_root(root: Path, name: str) -> Path:
    """A file a kustomization reads (resource, patch): kustomize's default load restrictor,
    RestrictionRootOnly (api/internal/loader/loadrestrictions.go), refuses one outside the
    kustomization's directory."""
    path = Path(os.path.normpath(root / name))
    if root not in path.resolve().parents:
        raise KustomizeError(f"security; file '{path}' is not in or below '{root}'")
    return path


def check_no_cycle(candidate: Path, visited: tuple[Path, ...]) -> None:
    """kustomize's FileLoader.New refuses a base directory that equals or contains the root of
    the kustomization loading it or of any kustomization that led there (its referrers), e.g. an
    overlay in deploy/overlays/x with `resources: [../..]`: errIfArgEqualOrHigher in
    api/internal/loader/fileloader.go, with ConfirmedDir.HasPrefix of kyaml/filesys/confirmeddir.go.
    Roots are absolute, symlinks resolved; the nearest root is checked first, as kustomize does."""
    for root in visited:
        if root == candidate or candidate in root.parents:
            raise KustomizeError(f"cycle detected: candidate root '{candidate}' contains visited root '{root}'")


def build(directory: Path, referrers: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """`kustomize build DIR` for what deploy/ and its overlays use. referrers: the roots of the
    kustomizations that loaded this one as a base, nearest first (empty for DIR itself)."""
    root = directory.resolve()
    visited = (root, *referrers)
    (k,) = load_all(root / "kustomization.yaml")
    assert set(k) <= KUSTOMIZATION_KEYS, f"{directory}: {set(k) - KUSTOMIZATION_KEYS} not in this subset"
    objs: list[dict[str, Any]] = []
    for resource in k.get("resources", []):
        candidate = (root / resource).resolve()
        if candidate.is_dir():
            check_no_cycle(candidate, visited)
            objs.extend(build(candidate, visited))
        else:
            objs.extend(load_all(within_root(root, resource)))
    for entry in k.get("patches", []):
        assert set(entry) <= {"path", "patch", "target"}, entry
        text = within_root(root, entry["path"]).read_text(encoding="utf-8") if "path" in entry else entry["patch"]
        patch = YAML(typ="safe", pure=True).load(text)
        if isinstance(patch, list):  # JSON 6902
            hits = [i for i, o in enumerate(objs) if matches(o, entry["target"])]
            assert hits, f"{directory}: patch target {entry['target']} matches nothing"
            for i in hits:
                objs[i] = json6902(objs[i], patch)
        else:
            target = {"kind": patch["kind"], "name": patch["metadata"]["name"]}
            hits = [i for i, o in enumerate(objs) if matches(o, target)]
            assert len(hits) == 1, f"{directory}: patch for {target} matches {len(hits)} objects"
            objs[hits[0]] = strategic_merge(objs[hits[0]], {k_: v for k_, v in patch.items() if k_ != "metadata"})
    for rule in k.get("images", []):
        for obj in objs:
            for c in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                name, sep, ref = c["image"].partition("@") if "@" in c["image"] else c["image"].rpartition(":")
                if not sep or "/" in ref:
                    name, ref, sep = c["image"], "", ""
                if name == rule["name"]:
                    if "digest" in rule:
                        sep, ref = "@", rule["digest"]
                    elif "newTag" in rule:
                        sep, ref = ":", str(rule["newTag"])
                    c["image"] = rule.get("newName", name) + sep + ref
    return objs


def object_key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def test_the_kustomize_subset_merges_deletes_and_patches() -> None:
    """The renderer the overlay tests rely on: strategic merge by key, `$patch: delete`, null
    removes a field, other lists are replaced; JSON 6902 add/replace/remove."""
    base = {"spec": {"replicas": 1, "containers": [{"name": "a", "args": ["x"], "env": [{"name": "K", "value": "1"}, {"name": "D", "value": "2"}]}],
                     "volumes": [{"name": "v", "emptyDir": {}}], "gone": True}}  # fmt: skip
    patch = {"spec": {"containers": [{"name": "a", "args": ["y"], "env": [{"name": "D", "$patch": "delete"}, {"name": "N", "value": "3"}]}],
                      "volumes": [{"name": "w", "secret": {"secretName": "s"}}], "gone": None}}  # fmt: skip
    merged = strategic_merge(base, patch)
    assert merged == {"spec": {"replicas": 1, "containers": [{"name": "a", "args": ["y"], "env": [{"name": "K", "value": "1"}, {"name": "N", "value": "3"}]}],
                               "volumes": [{"name": "v", "emptyDir": {}}, {"name": "w", "secret": {"secretName": "s"}}]}}  # fmt: skip
    assert base["spec"]["containers"][0]["env"][1]["name"] == "D", "the base is not modified"
    with pytest.raises(AssertionError, match="does not have"):
        strategic_merge(base, {"spec": {"volumes": [{"name": "nope", "$patch": "delete"}]}})
    ops = [{"op": "replace", "path": "/spec/replicas", "value": 2}, {"op": "add", "path": "/spec/volumes/-", "value": {"name": "z"}},
           {"op": "remove", "path": "/spec/gone"}]  # fmt: skip
    patched = json6902(base, ops)
    assert patched["spec"]["replicas"] == 2 and patched["spec"]["volumes"][-1] == {"name": "z"} and "gone" not in patched["spec"]


def test_the_subset_renders_the_base_as_install_manifest_does() -> None:
    """Two independent renderings of deploy/base/ (this subset and `p4kube install-manifest`) agree."""
    from reconciler.cli.install import install_manifest

    rendered = build(BASE)
    generated = [d for d in YAML(typ="safe").load_all(install_manifest(BASE)) if d is not None]
    assert sorted(rendered, key=object_key) == sorted(generated, key=object_key)
    assert find(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE}:0.1.0"


# --- the overlays -----------------------------------------------------------------------------

OVERLAY_NAMES = {"image", "audit-https", "audit-ssh", "tls", "replicas", "monitoring"}


def overlays() -> list[str]:
    return sorted(p.parent.name for p in OVERLAYS.glob("*/kustomization.yaml"))


def test_the_overlays_are_the_documented_set() -> None:
    assert set(overlays()) == OVERLAY_NAMES
    text = (REPO_ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    for name in OVERLAY_NAMES:
        assert f"deploy/overlays/{name}" in text, f"docs/deploy.md does not mention overlays/{name}"


def test_every_overlay_renders_on_the_base_beside_it() -> None:
    """Each shipped overlay loads ../../base, a sibling of deploy/overlays/, and renders the
    base's objects (plus its own); deploy/kustomization.yaml, kept for `kubectl apply -k deploy/`
    and GitOps paths set to deploy, lists only base and renders exactly the base."""
    base = build(BASE)
    for name in sorted(OVERLAY_NAMES):
        (k,) = load_all(OVERLAYS / name / "kustomization.yaml")
        assert "../../base" in k["resources"], f"overlays/{name} does not build on ../../base"
        assert {object_key(o) for o in base} <= {object_key(o) for o in build(OVERLAYS / name)}
    (top,) = load_all(DEPLOY / "kustomization.yaml")
    assert set(top) == {"apiVersion", "kind", "resources"} and top["resources"] == ["base"]
    assert build(DEPLOY) == base


def test_the_old_layout_is_refused_as_kustomize_refuses_it(tmp_path: Path) -> None:
    """The previous layout, the base at deploy/ and the overlays in deploy/overlays/ with
    `resources: [../..]`, made real kustomize fail every overlay with "cycle detected: candidate
    root '.../deploy' contains visited root '.../deploy/overlays/replicas'": the subset refuses
    it the same way, naming both roots, while the base alone still renders."""
    old = tmp_path / "deploy"
    shutil.copytree(BASE, old)
    shutil.copytree(OVERLAYS, old / "overlays")
    shutil.copytree(DEPLOY / "monitoring", old / "monitoring")
    for kfile in (old / "overlays").glob("*/kustomization.yaml"):
        kfile.write_text(kfile.read_text(encoding="utf-8").replace("../../base", "../.."), encoding="utf-8")
    assert sorted(map(object_key, build(old))) == sorted(map(object_key, build(BASE)))
    for name in sorted(OVERLAY_NAMES):
        overlay = (old / "overlays" / name).resolve()
        message = f"cycle detected: candidate root '{old.resolve()}' contains visited root '{overlay}'"
        with pytest.raises(KustomizeError, match=re.escape(message)):
            build(overlay)


def test_the_loader_rules_follow_kustomize(tmp_path: Path) -> None:
    """A base equal to a root on the way (`resources: [.]`) or above any of them (a grandchild
    naming its grandparent) is a cycle; a sibling base is fine; a file outside the
    kustomization's directory is refused."""

    def kustomization(directory: Path, *resources: str) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "kustomization.yaml").write_text(f"resources: {list(resources)}\n", encoding="utf-8")
        return directory.resolve()

    cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: n}\n"
    (tmp_path / "cm.yaml").write_text(cm, encoding="utf-8")
    top = kustomization(tmp_path / "top", "mid")
    mid = kustomization(tmp_path / "top" / "mid", "../sibling")
    sibling = kustomization(tmp_path / "top" / "sibling", "inner")
    kustomization(tmp_path / "top" / "sibling" / "inner", "../../../top")
    with pytest.raises(KustomizeError, match=re.escape(f"candidate root '{top}' contains visited root '{sibling / 'inner'}'")):
        build(top)
    kustomization(tmp_path / "top" / "sibling" / "inner")
    assert build(top) == [] and build(mid) == []
    here = kustomization(tmp_path / "self", ".")
    with pytest.raises(KustomizeError, match=re.escape(f"candidate root '{here}' contains visited root '{here}'")):
        build(here)
    outside = kustomization(tmp_path / "outside", "../cm.yaml")
    with pytest.raises(KustomizeError, match=re.escape(f"security; file '{tmp_path.resolve() / 'cm.yaml'}' is not in or below '{outside}'")):
        build(outside)


def kubelet_env(objs: list[dict[str, Any]], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's environment as the kubelet builds it from the rendered objects and the
    given Secrets (a missing required Secret or ConfigMap key fails, as it would block the pod)."""
    (container,) = find(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    fields = {"metadata.name": "p4kube-reconciler-7d9f-abcde", "metadata.namespace": NAMESPACE}
    env: dict[str, str] = {}
    for e in container["env"]:
        source = e.get("valueFrom", {})
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in source:
            env[e["name"]] = fields[source["fieldRef"]["fieldPath"]]
        else:
            kind, ref = ("ConfigMap", source["configMapKeyRef"]) if "configMapKeyRef" in source else ("Secret", source["secretKeyRef"])
            data = find(objs, "ConfigMap", ref["name"])["data"] if kind == "ConfigMap" else secrets.get(ref["name"], {})
            if ref["key"] in data:
                env[e["name"]] = data[ref["key"]]
            else:
                assert ref.get("optional"), f"{kind} {ref['name']} key {ref['key']} is required and missing"
    return env


def expand(arg: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def parse_run_args(objs: list[dict[str, Any]], secrets: dict[str, dict[str, str]], capsys: pytest.CaptureFixture[str]) -> Any:
    """The Deployment's command line, expanded as the kubelet does, through `p4kube`'s own parser."""
    from reconciler.cli import build_parser

    (container,) = find(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["p4kube"]
    env = kubelet_env(objs, secrets)
    argv = [expand(a, env) for a in container["args"]]
    assert not [a for a in argv if "$(" in a], f"unexpanded variables in {argv}"
    try:
        return build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"`p4kube {shlex.join(argv)}` is refused (exit {e.code}): {capsys.readouterr().err}")


HTTPS_SECRET = {"p4kube-audit-https": {"username": "x-access-token", "password": "ghp_token"}}
SSH_SECRET = {"p4kube-audit-ssh": {"ssh-privatekey": "PRIVATE\n", "ssh-publickey": "ssh-ed25519 AAAA p4kube\n",
                                   "known_hosts": "github.com ssh-ed25519 AAAAC3Nza\n"}}  # fmt: skip
TLS_SECRET = {"p4kube-switch-tls": {"ca.crt": "CA", "tls.crt": "CERT", "tls.key": "KEY"}}
ALL_SECRETS = {**HTTPS_SECRET, **SSH_SECRET, **TLS_SECRET}


@pytest.mark.parametrize("overlay", ["", *sorted(OVERLAY_NAMES)], ids=lambda o: o or "base")
def test_every_rendering_is_complete_and_runs(overlay: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The base and each overlay: the Deployment's args are accepted by `p4kube run`'s parser
    (unknown flags fail), the pod stays restricted, RBAC is exactly the base's (an overlay
    never widens it), and every object stays in p4kube-system."""
    objs = build(OVERLAYS / overlay if overlay else BASE)
    args = parse_run_args(objs, ALL_SECRETS, capsys)
    assert args.command == "run" and args.intent_from_cluster and args.leader_elect
    assert args.audit_repo == find(objs, "ConfigMap", "p4kube-config")["data"]["audit-repo"]
    assert args.metrics_address == "0.0.0.0:9100" and args.log_format == "json"
    assert args.leader_elect_identity == "p4kube-reconciler-7d9f-abcde" and args.leader_elect_namespace == NAMESPACE
    pod = find(objs, "Deployment")["spec"]["template"]["spec"]
    check_restricted(pod)
    assert writable(pod["containers"][0], args.audit_workdir)
    assert rule_triples(find(objs, "ClusterRole")["rules"]) == CLUSTER_RULES
    for name, rules in ROLES.items():
        assert rule_triples(find(objs, "Role", name)["rules"]) == rules
    assert [o["kind"] for o in objs].count("ClusterRole") + [o["kind"] for o in objs].count("Role") == 3
    assert "allow_insecure_switches" not in vars(args) or not args.allow_insecure_switches, "plaintext P4Runtime stays refused"
    for obj in objs:
        cluster_scoped = obj["kind"] in CLUSTER_SCOPED
        assert cluster_scoped or obj["metadata"]["namespace"] == NAMESPACE
    assert not [o for o in objs if o["kind"] == "Secret"], "Secrets are created by users, never kept in Git"


def differences(a: Any, b: Any, path: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return {d for k in set(a) | set(b) for d in differences(a.get(k), b.get(k), f"{path}/{k}")}
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return {d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}/{i}")}
    return set() if a == b else {path}


def changed(overlay: str) -> set[str]:
    """What an overlay changes in the base: 'Kind/name/json/path' for each differing field."""
    base = {(o["kind"], o["metadata"]["name"]): o for o in build(BASE)}
    mine = {(o["kind"], o["metadata"]["name"]): o for o in build(OVERLAYS / overlay)}
    out = {f"{k[0]}/{k[1]}" for k in set(base) ^ set(mine)}
    for key in set(base) & set(mine):
        out |= {f"{key[0]}/{key[1]}{d}" for d in differences(base[key], mine[key])}
    return out


def test_image_overlay_changes_the_image_only() -> None:
    assert changed("image") == {"Deployment/p4kube-reconciler/spec/template/spec/containers/0/image"}
    (container,) = find(build(OVERLAYS / "image"), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/platform/p4kube:0.1.0"


def pod_files(objs: list[dict[str, Any]], secrets: dict[str, dict[str, str]], root: Path) -> dict[str, Path]:
    """Lay the pod's Secret and emptyDir volumes out under root as the kubelet would mount them;
    returns mountPath -> directory. A required Secret that is missing fails."""
    pod = find(objs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts: dict[str, Path] = {}
    for m in pod["containers"][0]["volumeMounts"]:
        directory = root / m["name"]
        directory.mkdir(parents=True, exist_ok=True)
        source = volumes[m["name"]]
        if "secret" in source:
            name = source["secret"]["secretName"]
            assert name in secrets or source["secret"].get("optional"), f"Secret {name} is required"
            data = secrets.get(name, {})
            for item in source["secret"].get("items") or [{"key": k, "path": k} for k in data]:
                assert item["key"] in data, f"Secret {name} has no key {item['key']}"
                (directory / item["path"]).write_text(data[item["key"]])
        mounts[m["mountPath"]] = directory
    return mounts


def on_host(path: str, mounts: dict[str, Path]) -> Path:
    """Where a container path is in the pod_files() layout (the longest mount that holds it)."""
    best = max((m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")), key=len, default=None)
    assert best is not None, f"{path} is on no volume (the root filesystem is read-only)"
    return mounts[best] / path[len(best) :].lstrip("/")


def push_credentials(objs: list[dict[str, Any]], secrets: dict[str, dict[str, str]], root: Path) -> tuple[Any, dict[str, Path]]:
    """reconciler/audit/push.py's credentials, read from the environment the pod would have."""
    from reconciler.audit.push import Credentials

    mounts = pod_files(objs, secrets, root)
    env = kubelet_env(objs, secrets)
    host_env = {k: str(on_host(v, mounts)) if k.startswith("P4KUBE_AUDIT_") and v.startswith("/") else v for k, v in env.items()}
    return Credentials.from_env(host_env), mounts


@pytest.mark.parametrize("overlay", ["", "audit-https"], ids=["base", "audit-https"])
def test_https_token_reaches_the_audit_push(overlay: str, tmp_path: Path) -> None:
    """The base (and overlays/audit-https) answer an HTTPS remote's credential request with the
    Secret's user name and token, read from the mounted file."""
    import pygit2

    from reconciler.audit.push import CredentialType, _Callbacks

    objs = build(OVERLAYS / overlay if overlay else BASE)
    url = find(objs, "ConfigMap", "p4kube-config")["data"]["audit-repo"]
    assert url.startswith("https://")
    creds, _ = push_credentials(objs, HTTPS_SECRET, tmp_path)
    answer = _Callbacks(creds, url).credentials(url, None, CredentialType.USERPASS_PLAINTEXT)
    assert isinstance(answer, pygit2.UserPass)
    assert answer.credential_tuple == ("x-access-token", "ghp_token")
    # Without the optional user name, push.py's default is used.
    creds, _ = push_credentials(objs, {"p4kube-audit-https": {"password": "ghp_token"}}, tmp_path / "nouser")
    assert _Callbacks(creds, url).credentials(url, None, CredentialType.USERPASS_PLAINTEXT).credential_tuple == ("git", "ghp_token")
    if overlay:
        assert changed(overlay) == {"ConfigMap/p4kube-config/data/audit-repo"}


def test_ssh_overlay_answers_with_the_key_and_knows_the_host(tmp_path: Path) -> None:
    """overlays/audit-ssh: the key pair from the Secret answers the SSH server, even one that
    also allows passwords (the base's token file is gone with the HTTPS variables, or push.py
    would offer it first and fail); known_hosts is where libgit2 reads it, $HOME/.ssh."""
    import pygit2

    from reconciler.audit.errors import AuditError
    from reconciler.audit.push import CredentialType, _Callbacks

    objs = build(OVERLAYS / "audit-ssh")
    url = find(objs, "ConfigMap", "p4kube-config")["data"]["audit-repo"]
    assert re.match(r"ssh://git@[^/]+/", url), "the URL names the user: push.py answers key requests only"
    secrets = SSH_SECRET  # the HTTPS Secret is not needed any more
    creds, mounts = push_credentials(objs, secrets, tmp_path / "ssh")
    allowed = CredentialType.SSH_KEY | CredentialType.USERPASS_PLAINTEXT
    answer = _Callbacks(creds, url).credentials(url, "git", allowed)
    assert isinstance(answer, pygit2.Keypair)
    user, pub, key, passphrase = answer.credential_tuple
    assert (user, passphrase) == ("git", "")
    assert Path(key).read_text() == secrets["p4kube-audit-ssh"]["ssh-privatekey"]
    assert Path(pub).read_text() == secrets["p4kube-audit-ssh"]["ssh-publickey"]
    env = kubelet_env(objs, secrets)
    known_hosts = on_host(f"{env['HOME']}/.ssh/known_hosts", mounts)
    assert known_hosts.read_text() == secrets["p4kube-audit-ssh"]["known_hosts"]
    # Why the overlay deletes the base's token file: with it, the same request fails.
    base_env = kubelet_env(build(BASE), HTTPS_SECRET)
    broken = dataclasses.replace(creds, password_file=Path(base_env["P4KUBE_AUDIT_PASSWORD_FILE"]))
    with pytest.raises(AuditError, match="password file"):
        _Callbacks(broken, url).credentials(url, "git", allowed)


def test_tls_overlay_mounts_the_files_the_intent_names(tmp_path: Path) -> None:
    """overlays/tls: the Secret's files are where the production example's switchConfig.tls
    points, read-only, and nothing else changes."""
    candidates = [REPO_ROOT / "intent-examples" / "production" / "edge.yaml",
                  *sorted(REPO_ROOT.glob("reconciler/data/intent-examples/production/edge.yaml"))]  # fmt: skip
    (example,) = [p for p in candidates if p.is_file()][:1]
    tls = load_all(example)[0]["spec"]["switchConfig"]["tls"]
    objs = build(OVERLAYS / "tls")
    mounts = pod_files(objs, {**HTTPS_SECRET, **TLS_SECRET}, tmp_path)
    pod = find(objs, "Deployment")["spec"]["template"]["spec"]
    # The intent names the files; the reconciler finds them by name in its --tls-dir.
    (tls_dir,) = [a.split("=", 1)[1] for a in pod["containers"][0]["args"] if a.startswith("--tls-dir=")]
    for field, key in (("caFile", "ca.crt"), ("certFile", "tls.crt"), ("keyFile", "tls.key")):
        assert on_host(f"{tls_dir}/{tls[field]}", mounts).read_text() == TLS_SECRET["p4kube-switch-tls"][key], field
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "switch-tls"]
    assert mount["readOnly"] is True
    assert all(p.startswith("Deployment/p4kube-reconciler/spec/template/spec/") for p in changed("tls"))


def test_replicas_overlay_runs_two_with_a_disruption_budget() -> None:
    objs = build(OVERLAYS / "replicas")
    deployment = find(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert "--leader-elect" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = find(objs, "PodDisruptionBudget")
    assert pdb["metadata"]["namespace"] == NAMESPACE
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] == 1
    assert changed("replicas") == {"Deployment/p4kube-reconciler/spec/replicas", "PodDisruptionBudget/p4kube-reconciler"}


# --- the image ----------------------------------------------------------------------------------


def dockerfile_stages() -> list[dict[str, Any]]:
    """The Dockerfile's stages: {"from": image, "name": alias, "ins": [(INSTRUCTION, args)]},
    with line continuations joined and comments dropped."""
    text = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[dict[str, Any]] = []
    for line in logical:
        instruction, _, args = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append({"from": words[0], "name": name, "ins": []})
        else:
            assert stages, f"{instruction} before FROM"
            stages[-1]["ins"].append((instruction, args.strip()))
    return stages


def dockerfile_env(stage: dict[str, Any]) -> dict[str, str]:
    env = {}
    for instruction, args in stage["ins"]:
        if instruction == "ENV":
            for word in shlex.split(args):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def test_dockerfile_builds_the_wheel_and_installs_only_it() -> None:
    import json

    builder, final = dockerfile_stages()
    assert builder["name"] and builder["from"].startswith("python:3.11")
    wheel_runs = [a for i, a in builder["ins"] if i == "RUN" and "pip wheel" in a]
    assert wheel_runs and "--no-deps" in wheel_runs[0] and " . " in f"{wheel_runs[0]} ", (
        "the project's own wheel, as tests/test_install.py builds it"
    )
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-[a-z]+)?", final["from"]), final["from"]
    copies = [a for i, a in final["ins"] if i in ("COPY", "ADD")]
    assert copies and all(a.startswith(f"--from={builder['name']} ") for a in copies), "only the builder's wheel enters the final stage"
    runs = " && ".join(a for i, a in final["ins"] if i == "RUN")
    assert re.search(r"pip install [^&]*\.whl", runs) and "--only-binary=:all:" in runs
    # Dependencies only from the lock, hash-checked; the project's wheel brings nothing unpinned.
    assert re.search(r"pip install --require-hashes [^&]*-r /tmp/wheels/requirements\.lock", runs)
    assert re.search(r"pip install --no-deps [^&]*\.whl", runs)
    builds = " && ".join(a for i, a in builder["ins"] if i == "RUN")
    assert re.search(r"pip install --require-hashes [^&]*-r requirements-build\.lock", builds) and "--no-build-isolation" in builds
    for tool in ("apt-get", "apk ", "gcc", "build-essential", "make ", "pip wheel", "setup.py", "git clone"):
        assert tool not in runs, f"{tool!r} in the final stage"
    assert json.loads(dict(final["ins"])["ENTRYPOINT"]) == ["p4kube"]
    cmd = json.loads(dict(final["ins"])["CMD"])
    assert cmd[0] == "run"
    container = one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == json.loads(dict(final["ins"])["ENTRYPOINT"])


def test_dockerfile_runs_non_root_on_a_read_only_root() -> None:
    *_, final = dockerfile_stages()
    (user,) = [a for i, a in final["ins"] if i == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or (gid.isdigit() and int(gid) != 0)), (
        "numeric, non-root (runAsNonRoot needs a number)"
    )
    psc = one("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (psc["runAsUser"], psc["runAsGroup"]) == (int(uid), int(gid or uid))
    env = dockerfile_env(final)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    container = one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    (workdir,) = [a for i, a in final["ins"] if i == "WORKDIR"]
    for path in (env["HOME"], workdir):
        assert writable(container, path), f"{path} is not an emptyDir mount in the Deployment"
    assert {e["name"]: e.get("value") for e in container["env"]}["HOME"] == env["HOME"]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = "".join("(.*/)?" if tok == "**/" else ".*" if tok == "**" else "[^/]*" if tok == "*" else "[^/]" if tok == "?" else re.escape(tok)
                        for tok in re.findall(r"\*\*/|\*\*|\*|\?|[^*?]+", pattern))  # fmt: skip
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_build_inputs_and_nothing_else() -> None:
    lines = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for path in (".venv/bin/python", ".git/HEAD", "tests/test_deploy.py", "bench/RESULTS.md", "deploy/base/crd.yaml",
                 "reconciler/__pycache__/cli.cpython-311.pyc", "p4kube_reconciler.egg-info/PKG-INFO", ".env", "install.yaml"):  # fmt: skip
        assert dockerignored(path, patterns), f"{path} would be sent to the build"
    # Everything the wheel is built from: pyproject.toml, its readme, the package, and what the
    # package's symlinks point to (reconciler/data/intent-examples/ -> intent-examples/).
    needed = ["pyproject.toml", "setup.py", "README.md", "requirements.lock", "requirements-build.lock"]
    for item in sorted((REPO_ROOT / "reconciler").rglob("*")):
        rel = item.relative_to(REPO_ROOT).as_posix()
        if "__pycache__" in rel or item.suffix == ".pyc":
            continue
        if item.is_symlink():
            target = item.resolve()
            needed += [p.relative_to(REPO_ROOT).as_posix() for p in ([target] if target.is_file() else target.rglob("*")) if p.is_file()]
        elif item.is_file():
            needed.append(rel)
    assert "reconciler/cli/__init__.py" in needed
    missing = [p for p in needed if dockerignored(p, patterns)]
    assert not missing, f".dockerignore leaves out build inputs: {missing[:5]}"


def test_the_image_build_records_the_commit_it_is_given() -> None:
    # The build context has no .git: the commit comes in as a build argument, setup.py writes it
    # into the wheel (reconciler/_build.py), and `p4kube --version` names it.
    builder, *_ = dockerfile_stages()
    assert ("ARG", 'P4KUBE_BUILD_COMMIT=""') in builder["ins"]
    assert dockerfile_env(builder)["P4KUBE_BUILD_COMMIT"] == "${P4KUBE_BUILD_COMMIT}"
    assert "P4KUBE_BUILD_COMMIT" in (REPO_ROOT / "setup.py").read_text()
