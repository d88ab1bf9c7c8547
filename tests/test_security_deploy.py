"""deploy/ keeps the reconciler to least privilege (H5):

- the ValidatingAdmissionPolicy in deploy/base/admission-policy.yaml, enforced by the test API server
  (tests/kubeapi/admission.py) over real HTTP: the reconciler's own writes (fallback, recovery,
  proxy-name label, VIP status) pass as its ServiceAccount under the shipped RBAC; the same
  account setting spec.externalIPs, another annotation or label, or an ingress IP outside the
  VIP pools is refused with the real server's 422 and nothing is stored; other users are not
  concerned; without the pools ConfigMap every write of the account is refused (fail closed);
- the NetworkPolicy and the Deployment's operator flags (fail-closed placeholders, no
  --allow-insecure-switches anywhere).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import write_multi_statuses
from kubeapi.server import KubeApiServer
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from ruamel.yaml import YAML

from reconciler.cluster.live import LiveClusterSource
from reconciler.kube.fallback import Fallback
from reconciler.kube.client import build_api_client
from reconciler.kube.events import EventRecorder

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BASE = DEPLOY / "base"
MULTI = REPO / "intent-examples" / "multi-service"
NS = "p4kube-system"
SA_USER = f"system:serviceaccount:{NS}:p4kube-reconciler"
POLICY = "p4kube-reconciler-service-writes"
POOLS = {"demo": "198.51.100.0/24"}  # holds the multi-service example's pool 198.51.100.10-19


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in YAML(typ="safe").load_all(path.read_text(encoding="utf-8")) if d]


def admission_objects(pools: dict[str, str] | None) -> list[dict[str, Any]]:
    """deploy/base/admission-policy.yaml with the pools ConfigMap filled by the operator (None: deleted)."""
    out = []
    for obj in load_all(BASE / "admission-policy.yaml"):
        if obj["kind"] == "ConfigMap":
            if pools is None:
                continue
            obj = {**obj, "data": dict(pools)}
        out.append(obj)
    return out


def start_server(pools: dict[str, str] | None) -> KubeApiServer:
    tokens = {"admin-token": ("admin", ["system:masters"]), "sa-token": (SA_USER, ["system:serviceaccounts"])}
    srv = KubeApiServer(tokens=tokens, rbac=load_all(BASE / "rbac.yaml"), admission=admission_objects(pools))
    srv.start()
    srv.load([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
    srv.load(YAML(typ="safe").load((MULTI / "cluster.yaml").read_text())["items"])
    return srv


@pytest.fixture
def server() -> Iterator[KubeApiServer]:
    srv = start_server(POOLS)
    try:
        yield srv
    finally:
        srv.stop()


def core(srv: KubeApiServer, token: str) -> tuple[Any, k8s.CoreV1Api]:
    api = build_api_client(configuration=srv.client_configuration(token))
    return api, k8s.CoreV1Api(api)


def raw_service(srv: KubeApiServer, ns: str, name: str) -> dict[str, Any]:
    api, v1 = core(srv, "admin-token")
    try:
        return json.loads(v1.read_namespaced_service(name, ns, _preload_content=False).data)
    finally:
        api.close()


def refused(srv: KubeApiServer, call: str, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send a merge patch as the ServiceAccount; it must be refused by the policy with nothing stored."""
    before = raw_service(srv, ns, name)
    api, v1 = core(srv, "sa-token")
    try:
        with pytest.raises(ApiException) as err:
            getattr(v1, call)(name, ns, body, _content_type="application/merge-patch+json")
    finally:
        api.close()
    assert raw_service(srv, ns, name) == before, "a refused write changed the Service"
    assert err.value.status == 422
    status = json.loads(err.value.body)
    assert status["reason"] == "Invalid" and status["details"]["kind"] == "services" and status["details"]["name"] == name
    prefix = f"ValidatingAdmissionPolicy '{POLICY}' with binding '{POLICY}' denied request: "
    (cause,) = status["details"]["causes"]
    assert cause["message"].startswith(prefix)
    assert status["message"] == f'services "{name}" is forbidden: {cause["message"]}'
    return status


def test_the_reconcilers_own_writes_pass_the_policy(server: KubeApiServer) -> None:
    """Fallback, recovery, the proxy-name label, the VIP status (set and cleared) and Events,
    as the ServiceAccount under deploy/base/rbac.yaml with the policy on: nothing is refused."""
    api = build_api_client(configuration=server.client_configuration("sa-token"))

    async def go() -> None:
        async with LiveClusterSource(api) as source:
            await source.wait_synced(timeout=10)
            events = EventRecorder(api, instance="a")
            await write_multi_statuses(api, events, source)
            fallback = Fallback(api, events)
            assert (await fallback.fall_back("web/api", "probe failed")).changed
            assert (await fallback.recover("web/api")).changed
            assert (await fallback.take_from_kube_proxy("web/frontend")).changed
            assert (await fallback.return_to_kube_proxy("web/frontend")).changed

    try:
        asyncio.run(asyncio.wait_for(go(), 30))
    finally:
        api.close()
    mine = [r for r in server.requests if r.user == SA_USER]
    assert [(r.verb, r.resource, r.subresource, r.code) for r in mine if r.code >= 400] == []
    ingress = raw_service(server, "web", "api")["status"]["loadBalancer"]["ingress"]
    assert [i["ip"].startswith("198.51.100.") for i in ingress] == [True]
    assert raw_service(server, "web", "api")["metadata"]["annotations"]["loadbalancer.k8s.io/p4kube"] == "enabled"


def test_external_ips_are_refused(server: KubeApiServer) -> None:
    status = refused(server, "patch_namespaced_service", "web", "api", {"spec": {"externalIPs": ["203.0.113.7"]}})
    assert "may not change a Service's spec" in status["message"]


@pytest.mark.parametrize(
    "metadata",
    [
        {"annotations": {"example.com/owner": "mallory"}},
        {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": None}},
        {"labels": {"app": "other"}},
        {"labels": {"service.kubernetes.io/service-proxy-name": "other-proxy"}},
    ],
    ids=["add-annotation", "remove-annotation", "add-label", "foreign-proxy-name"],
)
def test_other_annotations_and_labels_are_refused(server: KubeApiServer, metadata: dict[str, Any]) -> None:
    status = refused(server, "patch_namespaced_service", "web", "api", {"metadata": metadata})
    assert "may change only its" in status["message"]


def test_opting_in_a_service_is_refused(server: KubeApiServer) -> None:
    """The account only switches enabled/disabled on Services people opted in; it never opts one in."""
    ns, name = "web", "admin"  # a LoadBalancer Service without the opt-in annotation
    assert "loadbalancer.k8s.io/p4kube" not in (raw_service(server, ns, name)["metadata"].get("annotations") or {})
    refused(server, "patch_namespaced_service", ns, name, {"metadata": {"annotations": {"loadbalancer.k8s.io/p4kube": "enabled"}}})


def test_an_ingress_ip_outside_the_pools_is_refused(server: KubeApiServer) -> None:
    body = {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9", "ipMode": "VIP"}]}}}
    status = refused(server, "patch_namespaced_service_status", "web", "api", body)
    assert "only to IPs inside the VIP pools" in status["message"]
    hostname = {"status": {"loadBalancer": {"ingress": [{"hostname": "evil.example.com"}]}}}
    refused(server, "patch_namespaced_service_status", "web", "api", hostname)


def test_other_users_are_not_concerned(server: KubeApiServer) -> None:
    api, v1 = core(server, "admin-token")
    try:
        v1.patch_namespaced_service("api", "web", {"spec": {"externalIPs": ["203.0.113.7"]}})
    finally:
        api.close()
    assert raw_service(server, "web", "api")["spec"]["externalIPs"] == ["203.0.113.7"]


def test_without_the_pools_configmap_every_write_is_refused() -> None:
    """parameterNotFoundAction: Deny: a deleted ConfigMap fails closed, even for annotations."""
    srv = start_server(None)
    try:
        status = refused(srv, "patch_namespaced_service", "web", "api", {"metadata": {"annotations": {"loadbalancer.k8s.io/p4kube": "disabled"}}})
        assert "no params found" in status["message"]
    finally:
        srv.stop()


def test_the_shipped_empty_pools_refuse_any_ingress_but_allow_fallback() -> None:
    """As shipped (data: {}), no ingress IP can be written until the operator fills the pools."""
    srv = start_server({})
    try:
        body = {"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.10", "ipMode": "VIP"}]}}}
        refused(srv, "patch_namespaced_service_status", "web", "api", body)
        api, v1 = core(srv, "sa-token")
        try:
            v1.patch_namespaced_service("api", "web", {"metadata": {"annotations": {"loadbalancer.k8s.io/p4kube": "disabled"}}})
        finally:
            api.close()
    finally:
        srv.stop()


# --- NetworkPolicy and the Deployment's operator settings -----------------------------------------


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for p in sorted(BASE.glob("*.yaml")) if p.name != "kustomization.yaml" for o in load_all(p)
             if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]  # fmt: skip
    assert len(found) == 1, f"{kind} {name}: {len(found)}"
    return found[0]


def test_network_policy_limits_the_pods_traffic() -> None:
    policy = one("NetworkPolicy")
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 9100}]
    assert [f["namespaceSelector"]["matchLabels"] for f in ingress["from"]] == [{"kubernetes.io/metadata.name": "monitoring"}]
    ports = {(p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert ports == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 6443), ("TCP", 9559), ("TCP", 22)}
    for rule in policy["spec"]["egress"]:
        for peer in rule.get("to", []):
            if "ipBlock" in peer:  # operator-set destinations ship as TEST-NET-1: they match nothing real
                assert peer["ipBlock"]["cidr"] == "192.0.2.0/24"


def all_renderings() -> list[list[dict[str, Any]]]:
    import test_deploy

    return [test_deploy.build(BASE), *(test_deploy.build(DEPLOY / "overlays" / o) for o in sorted(test_deploy.OVERLAY_NAMES))]


def test_deployment_passes_the_operator_limits_and_never_plaintext() -> None:
    (container,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert "--allowed-switches=$(ALLOWED_SWITCHES)" in args
    assert "--intent-namespace=$(POD_NAMESPACE)" in args
    assert "--pipeline-dir=/etc/p4kube/pipeline" in args
    env = {e["name"]: e for e in container["env"]}
    ref = env["ALLOWED_SWITCHES"]["valueFrom"]["configMapKeyRef"]
    assert one("ConfigMap", ref["name"])["data"][ref["key"]] == "127.0.0.1", "placeholder: loopback only (fail closed)"
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/p4kube/pipeline"]
    assert mount["readOnly"] is True
    for objs in all_renderings():
        (c,) = [o for o in objs if o["kind"] == "Deployment"][0]["spec"]["template"]["spec"]["containers"]
        assert not [a for a in c["args"] if a.startswith("--allow-insecure-switches")]
    import test_deploy

    tls = test_deploy.build(DEPLOY / "overlays" / "tls")
    (c,) = test_deploy.find(tls, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--tls-dir=/etc/p4kube/tls" in c["args"]
    assert any(m["mountPath"] == "/etc/p4kube/tls" and m["readOnly"] for m in c["volumeMounts"])


def test_policy_is_installed_before_the_deployment() -> None:
    from reconciler.cli.install import render_documents

    kinds = [str(d["kind"]) for d in render_documents(BASE)]
    assert kinds.index("ValidatingAdmissionPolicyBinding") < kinds.index("Deployment")
    assert kinds.index("NetworkPolicy") < kinds.index("Deployment")


# --- dependencies ------------------------------------------------------------------------------

# Fixed versions of the published advisories (docs/deploy.md "Dependencies").
CVE_FLOORS = {"grpcio": (1, 81, 1), "protobuf": (6, 33, 6), "pygit2": (1, 21, 0), "setuptools": (78, 1, 1), "wheel": (0, 46, 2)}


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def locked(path: Path) -> dict[str, str]:
    """name -> version of a pip-compile --generate-hashes file; every pin must carry hashes."""
    pins: dict[str, str] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#")):
            name, _, ver = line.split(" ")[0].partition("==")
            assert ver, f"{path.name}:{i + 1}: {line[:80]} is not pinned"
            assert lines[i + 1].strip().startswith("--hash=sha256:"), f"{path.name}:{i + 1}: {name} has no hash"
            pins[name.lower().replace("_", "-")] = ver
    return pins


def test_floors_and_locks_are_past_the_known_cves() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    floors = {}
    for req in [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["test"], *project["build-system"]["requires"]]:
        name, _, floor = req.partition(">=")
        floors[name.strip().lower()] = version(floor)
    for name, fixed in CVE_FLOORS.items():
        assert floors[name] >= fixed, f"pyproject.toml admits {name} below {fixed}"
    runtime, build = locked(REPO / "requirements.lock"), locked(REPO / "requirements-build.lock")
    for name, fixed in CVE_FLOORS.items():
        pins = build if name in ("setuptools", "wheel") else runtime
        assert version(pins[name]) >= fixed, f"{name} {pins[name]} is locked below {fixed}"
    test = locked(REPO / "requirements-test.lock")
    assert {n: v for n, v in test.items() if n in runtime} == runtime, "the tests run what the image ships"
    for pins in (runtime, test):
        assert "googleapis-common-protos" not in pins, "collides with finsy's google/rpc/status.proto (DESIGN.md 8)"


# --- the test server's admission: faithful to what it models, refusing what it does not ---------


def test_ipv6_pools_and_the_cidr_functions() -> None:
    """An IPv6 VIP in an IPv6 pool passes; an IPv4-mapped IPv6 address is not an IP for
    Kubernetes' isIP() (so refused); an IPv4 address is never inside an IPv6 pool."""
    srv = start_server({"v6": "2001:db8:1::/64", "v4": "198.51.100.0/24"})
    try:
        api, v1 = core(srv, "sa-token")
        try:
            ok = {"status": {"loadBalancer": {"ingress": [{"ip": "2001:db8:1::10", "ipMode": "VIP"}]}}}
            v1.patch_namespaced_service_status("api", "web", ok, _content_type="application/merge-patch+json")
        finally:
            api.close()
        for ip in ("::ffff:198.51.100.10", "2001:db8:2::10"):
            body = {"status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}}
            refused(srv, "patch_namespaced_service_status", "web", "api", body)
    finally:
        srv.stop()


@pytest.mark.parametrize(
    "change",
    [
        lambda p, b: p["spec"]["matchConstraints"].update(objectSelector={"matchLabels": {"a": "b"}}),
        lambda p, b: p["spec"]["validations"][0].update(messageExpression="'x'"),
        lambda p, b: b["spec"].update(validationActions=["Warn"]),
        lambda p, b: b["spec"]["paramRef"].update(selector={"matchLabels": {"a": "b"}}),
    ],
    ids=["objectSelector", "messageExpression", "Warn", "paramRef-selector"],
)
def test_the_test_server_refuses_policy_features_it_does_not_model(change: Any) -> None:
    from kubeapi.admission import AdmissionPolicies

    docs = admission_objects(POOLS)
    policy = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy")
    binding = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding")
    change(policy, binding)
    with pytest.raises(ValueError, match="not modeled"):
        AdmissionPolicies(docs)
