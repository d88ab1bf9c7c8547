"""A Kubernetes API server for tests, faithful to the recorded kube-apiserver transcripts in
../shared/fixtures/kube-api (see README.md in this folder)."""

from .rbac import RequestRecord, User
from .server import KubeApiServer
from .watch import WatchOptions

__all__ = ["KubeApiServer", "RequestRecord", "User", "WatchOptions"]
