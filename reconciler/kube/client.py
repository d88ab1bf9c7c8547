"""The Kubernetes API client the reconciler uses, and the few helpers every caller shares.

Everything goes through the official `kubernetes` client. Responses are read raw
(`_preload_content=False`) and parsed with `json.loads`: the cluster converters take the
API's camelCase dicts, and the client's model deserialization would be both slower and lossy
(it drops fields its models do not know).

Blocking: every function here blocks; asyncio callers run them with `asyncio.to_thread`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

import reconciler

FIELD_MANAGER = "p4kube"
USER_AGENT = f"p4kube/{getattr(reconciler, '__version__', '0')}"
MERGE_PATCH = "application/merge-patch+json"
# Go's RFC3339 with exactly 6 fractional digits: the API server rejects anything else for
# MicroTime fields (Lease acquireTime/renewTime, Event eventTime), fixture 09 and 11.
MICROTIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # metav1.Time: whole seconds


@dataclass(frozen=True)
class Permission:
    """One RBAC rule the reconciler needs: what deploy/base/rbac.yaml must grant."""

    group: str  # "" for the core group
    resource: str  # plural, with "/subresource" where it applies
    verbs: tuple[str, ...]
    namespaced_to_release: bool = False  # True: only in the reconciler's own namespace (Leases, LoadBalancerConfigs)


# Every API call the code in reconciler/kube and reconciler/cluster makes. A test compares
# this (and the request log of the test API server) with the shipped RBAC.
REQUIRED_PERMISSIONS: tuple[Permission, ...] = (
    Permission("", "services", ("get", "list", "watch", "patch")),
    Permission("", "services/status", ("patch",)),
    Permission("discovery.k8s.io", "endpointslices", ("list", "watch")),
    Permission("", "nodes", ("list", "watch")),
    Permission("events.k8s.io", "events", ("create", "patch")),
    Permission("networking.p4kube.io", "loadbalancerconfigs", ("list", "watch"), namespaced_to_release=True),
    Permission("networking.p4kube.io", "loadbalancerconfigs/status", ("patch",), namespaced_to_release=True),
    Permission("coordination.k8s.io", "leases", ("get", "create", "update"), namespaced_to_release=True),
)


class KubeError(Exception):
    """An API call that failed, with the server's Status (code, reason, message) when it sent one."""

    def __init__(self, what: str, code: int | None, reason: str, message: str, status: dict[str, Any] | None = None):
        self.what = what
        self.code = code
        self.reason = reason
        self.message = message
        self.status = status or {}
        where = f"HTTP {code}" if code else "no response"
        super().__init__(f"{what}: {where} {reason}: {message}".rstrip(": "))

    @property
    def retry_after_s(self) -> float | None:
        details = self.status.get("details") or {}
        value = details.get("retryAfterSeconds")
        return float(value) if isinstance(value, int | float) else None


def error_from_exception(what: str, e: BaseException) -> KubeError:
    """A KubeError from whatever the client raised: an ApiException (HTTP error with a Status
    body) or a transport error (connection refused, reset, timeout)."""
    if isinstance(e, KubeError):
        return e
    if isinstance(e, ApiException):
        status = _parse_status(e.body)
        reason = str(status.get("reason") or e.reason or "")
        message = str(status.get("message") or (e.body if isinstance(e.body, str) else "") or "").strip()
        return KubeError(what, e.status, reason, message, status)
    return KubeError(what, None, type(e).__name__, str(e) or repr(e))


def error_from_status(what: str, status: dict[str, Any]) -> KubeError:
    """A KubeError from a Status object received inside a watch stream (an ERROR event)."""
    code = status.get("code")
    return KubeError(
        what,
        code if isinstance(code, int) else None,
        str(status.get("reason") or ""),
        str(status.get("message") or ""),
        status,
    )


def _parse_status(body: object) -> dict[str, Any]:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body.startswith("{"):
        return {}
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) and parsed.get("kind") == "Status" else {}


# Errors of the transport (not of the API): the request may not have reached the server.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (urllib3.exceptions.HTTPError, OSError)
# What a call to the API server raises: an HTTP error with a Status, or a transport error.
CALL_ERRORS: tuple[type[BaseException], ...] = (ApiException, *TRANSPORT_ERRORS)


def call_json(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a generated API method and return the response body as a plain dict.

    Raises KubeError for HTTP errors (with the server's Status) and transport errors alike;
    `what` names the call in the message ("patch Service default/web status")."""
    try:
        resp = fn(*args, _preload_content=False, **kwargs)
        try:
            data = resp.data
        finally:
            resp.release_conn()
    except CALL_ERRORS as e:
        raise error_from_exception(what, e) from e
    try:
        body = json.loads(data)
    except ValueError as e:
        raise KubeError(what, None, "BadResponse", f"the server answered with something that is not JSON: {e}") from e
    if not isinstance(body, dict):
        raise KubeError(what, None, "BadResponse", f"expected a JSON object, got {type(body).__name__}")
    return body


def in_cluster() -> bool:
    """Whether this process runs in a Pod with a service account token mounted."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and Path(
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ).is_file()


def build_api_client(
    kubeconfig: str | os.PathLike[str] | None = None,
    *,
    context: str | None = None,
    configuration: k8s.Configuration | None = None,
) -> k8s.ApiClient:
    """An ApiClient for the cluster.

    Order: an explicit `configuration` (tests), an explicit kubeconfig file, the in-cluster
    service account (when running in a Pod), then $KUBECONFIG or ~/.kube/config. Raises
    KubeError naming what was tried when none of them is usable."""
    cfg = configuration
    if cfg is None:
        cfg = k8s.Configuration()
        try:
            if kubeconfig is not None:
                k8s_config.load_kube_config(config_file=os.fspath(kubeconfig), context=context, client_configuration=cfg)
            elif in_cluster():
                k8s_config.load_incluster_config(client_configuration=cfg)
            else:
                k8s_config.load_kube_config(context=context, client_configuration=cfg)
        except (k8s_config.ConfigException, OSError) as e:
            source = os.fspath(kubeconfig) if kubeconfig is not None else os.environ.get("KUBECONFIG", "~/.kube/config")
            raise KubeError(
                "load Kubernetes client configuration",
                None,
                "ConfigError",
                f"no usable configuration (not in a Pod with a service account, and {source}: {e})",
            ) from e
    api = k8s.ApiClient(cfg)
    api.user_agent = USER_AGENT
    return api
