"""The HTTP front of the test API server: routing, authentication, authorization, responses.

`KubeApiServer` listens on 127.0.0.1 (port 0 by default), plain HTTP or TLS, in a threaded HTTP/1.1
server. It can be stopped and started again on the same port keeping all state (tests of "the API
server restarted"); stopping ends open watch streams and idle keep-alive connections at once and
joins every thread.
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

import yaml

from . import discovery
from . import errors as E
from .admission import AdmissionPolicies, Request, current_user
from .api import Api, Result
from .rbac import Attributes, Authenticator, Authorizer, RequestRecord, User, forbidden
from .resources import ResourceType
from .store import Store
from .watch import WatchOptions, WatchStream, parse_watch

DEFAULT_TOKENS: Mapping[str, Any] = {"test-token": ("admin", ["system:masters"])}
_HEALTH = ("healthz", "readyz", "livez")


def go_json(obj: Any, *, sort_keys: bool = False) -> bytes:
    """Compact JSON as Go's encoder writes it (HTML-safe escapes, UTF-8)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text.encode("utf-8")


def warning_header(text: str) -> str:
    return "299 - " + json.dumps(text, ensure_ascii=False)


def _json_body(raw: bytes, content_type: str) -> bytes:
    """Create/update bodies may be JSON or YAML (kubectl sends either); anything else is 415."""
    ct = content_type.split(";")[0].strip().lower()
    if not ct or ct in ("application/json", "*/*"):
        return raw
    if ct in ("application/yaml", "text/yaml", "application/x-yaml"):
        try:
            return json.dumps(yaml.safe_load(raw.decode("utf-8"))).encode()
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise E.bad_request(f"error converting YAML to JSON: {e}") from None
    raise E.unsupported_media_type()


def _rbac_objects(items: Iterable[Any]) -> list[Mapping[str, Any]]:
    """RBAC objects given as dicts, or as paths of YAML files (e.g. the shipped deploy/base/rbac.yaml)."""
    out: list[Mapping[str, Any]] = []
    for item in items:
        if isinstance(item, (str, Path)):
            with open(item, encoding="utf-8") as fh:
                out += [doc for doc in yaml.safe_load_all(fh) if isinstance(doc, Mapping)]
        else:
            out.append(item)
    return out


class _Route:
    """Where a request goes, parsed from the path only (like kube-apiserver's RequestInfo)."""

    def __init__(self, method: str, path: str, query: Mapping[str, str]) -> None:
        self.method = method
        self.path = path
        self.kind = "other"  # health | version | discovery | resource | other
        self.group = self.version = self.resource = self.subresource = self.namespace = self.name = ""
        self.rest: list[str] = []
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 1 and parts[0] in _HEALTH:
            self.kind = "health"
        elif parts == ["version"]:
            self.kind = "version"
        elif parts and parts[0] == "api":
            self._resource_parts(parts[1:2], parts[2:], core=True)
        elif parts and parts[0] == "apis":
            self._resource_parts(parts[1:3], parts[3:], core=False)
        watch = (query.get("watch") or "").lower() in ("true", "1")
        self.verb = self._verb(watch)

    def _resource_parts(self, gv: list[str], rest: list[str], core: bool) -> None:
        if core:
            self.version = gv[0] if gv else ""
        else:
            self.group = gv[0] if gv else ""
            self.version = gv[1] if len(gv) > 1 else ""
        if not self.version or not rest:
            self.kind = "discovery"
            return
        self.kind = "resource"
        if rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
            self.namespace = rest[1]
            rest = rest[2:]
        self.resource = rest[0]
        if len(rest) > 1:
            self.name = rest[1]
        if len(rest) > 2:
            self.subresource = rest[2]
        self.rest = rest
        if self.resource == "namespaces" and self.name and not self.namespace:
            self.namespace = self.name  # kube-apiserver treats a namespace as living in itself

    def _verb(self, watch: bool) -> str:
        if self.kind != "resource":
            return self.method.lower()
        if self.method == "GET":
            return "get" if self.name else ("watch" if watch else "list")
        return {
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if self.name else "deletecollection",
        }.get(self.method, self.method.lower())

    def attributes(self, user: User) -> Attributes:
        if self.kind != "resource":
            return Attributes(user, self.verb, False, path=self.path)
        return Attributes(
            user,
            self.verb,
            True,
            self.group,
            self.version,
            self.resource,
            self.subresource,
            self.namespace,
            self.name,
            self.path,
        )


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: KubeApiServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        if self.owner._tls_context is not None:
            conn = self.owner._tls_context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        with self.conn_lock:
            self.connections.add(conn)
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            try:
                self.request.do_handshake()
            except (ssl.SSLError, OSError):
                self.close_connection = True
        super().setup()

    def send_response(self, code: int, message: str | None = None) -> None:
        # Log before the client can see the answer, so a test reading the log after a call sees it.
        route = getattr(self, "_route", None)
        if route is not None:
            self.server.owner._record(route, self._user, code, self._allowed)
            self._route = None
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, ssl.SSLError, TimeoutError):
            self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # -- helpers --
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self, code: int, payload: bytes, content_type: str = "application/json", headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.send_response(code)
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Type", content_type)
        for k, val in headers:
            self.send_header(k, val)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send_error(self, err: E.ApiError) -> None:
        if err.text_body is not None:
            self._send(err.code, err.text_body.encode(), "text/plain; charset=utf-8", err.headers)
        else:
            self._send(err.code, go_json(err.status()), headers=err.headers)

    def _send_result(self, res: Result) -> None:
        headers = [("Warning", warning_header(w)) for w in res.warnings]
        self._send(res.code, go_json(res.body, sort_keys=res.custom), headers=headers)

    # -- dispatch --
    def _dispatch(self) -> None:
        owner = self.server.owner
        split = urlsplit(self.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        route = _Route(self.command, split.path, query)
        raw = self._body() if self.command in ("POST", "PUT", "PATCH", "DELETE") else b""
        self._route, self._user, self._allowed = route, None, False
        try:
            self._user = owner.authenticator.authenticate(self.headers.get("Authorization"))
            current_user.set(self._user)
            attrs = route.attributes(self._user)
            if not owner.authorizer.allowed(attrs):
                raise forbidden(attrs)
            self._allowed = True
            self._serve(route, query, raw)
        except E.ApiError as err:
            if err.warnings:
                err.headers = tuple(err.headers) + tuple(("Warning", warning_header(w)) for w in err.warnings)
            self._send_error(err)
        except (ConnectionError, ssl.SSLError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a bug in this server: answer 500 and keep the traceback for the test
            owner.internal_errors.append(traceback.format_exc())
            if self._route is not None:
                self._send_error(E.internal_error(f"{type(e).__name__}: {e}"))
            else:
                self.close_connection = True

    def _serve(self, route: _Route, query: dict[str, str], raw: bytes) -> int:
        owner = self.server.owner
        api = owner.api
        if route.kind == "health":
            self._send(200, b"ok", "text/plain; charset=utf-8", (("X-Content-Type-Options", "nosniff"),))
            return 200
        if route.kind == "version":
            self._send(200, go_json(discovery.VERSION_INFO))
            return 200
        if route.kind == "discovery":
            return self._discovery(route)
        if route.kind != "resource":
            raise E.page_not_found()
        groups = api.group_versions()
        if route.version not in groups.get(route.group, []):
            raise E.page_not_found()
        rt = api.lookup(route.group, route.version, route.resource)
        if rt is None:
            raise E.resource_not_found()
        if rt.resource == "namespaces" and not rt.group:
            ns = ""  # the Namespace object itself is cluster-scoped
        elif rt.namespaced:
            ns = route.namespace
            if route.name and not ns:
                raise E.resource_not_found()
        else:
            if route.namespace:
                raise E.resource_not_found()
            ns = ""
        if route.subresource and route.subresource not in rt.subresources:
            raise E.resource_not_found()
        verb = route.verb
        if rt.namespaced and not ns and route.resource != "namespaces" and verb in ("create", "deletecollection"):
            raise E.method_not_allowed()  # the all-namespaces path only lists and watches
        if verb in ("create", "update"):
            raw = _json_body(raw, self.headers.get("Content-Type", ""))
        if verb == "watch":
            return self._watch(rt, ns, query)
        if verb == "get":
            res = api.get(rt, ns, route.name)
        elif verb == "list":
            res = api.list(rt, ns, query)
        elif verb == "create":
            if route.name:
                raise E.method_not_allowed()
            res = api.create(rt, ns, raw, query, self.headers.get("User-Agent", ""))
        elif verb == "update":
            if not route.name:
                raise E.method_not_allowed()
            res = api.update(rt, ns, route.name, route.subresource, raw, query, self.headers.get("User-Agent", ""))
        elif verb == "patch":
            if not route.name:
                raise E.method_not_allowed()
            res = api.patch(
                rt,
                ns,
                route.name,
                route.subresource,
                raw,
                self.headers.get("Content-Type", ""),
                query,
                self.headers.get("User-Agent", ""),
            )
        elif verb == "delete":
            res = api.delete(rt, ns, route.name, raw, query)
        elif verb == "deletecollection":
            if rt.resource == "namespaces":
                raise E.method_not_allowed()
            res = api.delete_collection(rt, ns, query)
        else:
            raise E.method_not_allowed()
        self._send_result(res)
        return res.code

    def _discovery(self, route: _Route) -> int:
        api = self.server.owner.api
        groups = api.group_versions()
        accept = self.headers.get("Accept", "")
        parts = [p for p in route.path.split("/") if p]
        if discovery.wants_aggregated(accept) and len(parts) == 1:
            body = discovery.aggregated(api.types.values(), groups, core=parts[0] == "api")
            headers = (("Cache-Control", "public"), ("ETag", discovery.etag(body)), ("Vary", "Accept"))
            self.send_response(200)
            self.send_header("Audit-Id", str(uuid.uuid4()))
            payload = go_json(body)
            self.send_header("Content-Type", discovery.AGGREGATED)
            for k, val in headers:
                self.send_header(k, val)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return 200
        if parts == ["api"]:
            body = discovery.api_versions(f"{self.server.owner.host}:{self.server.owner.port}")
        elif parts == ["apis"]:
            body = discovery.group_list(groups)
        elif len(parts) == 2 and parts[0] == "api":
            if parts[1] not in groups.get("", []):
                raise E.page_not_found()
            body = discovery.resource_list(
                [t for t in api.types.values() if t.group == "" and t.version == parts[1]], "", parts[1]
            )
        elif len(parts) == 2 and parts[0] == "apis":
            if parts[1] not in groups:
                raise E.page_not_found()
            body = discovery.group(parts[1], groups[parts[1]])
        elif len(parts) == 3 and parts[0] == "apis":
            if parts[2] not in groups.get(parts[1], []):
                raise E.page_not_found()
            body = discovery.resource_list(
                [t for t in api.types.values() if t.group == parts[1] and t.version == parts[2]], parts[1], parts[2]
            )
        else:
            raise E.page_not_found()
        self._send(200, go_json(body))
        return 200

    def _client_gone(self) -> bool:
        """Whether the client closed its end (kube-apiserver ends a watch when its request context does)."""
        sock = self.connection
        if isinstance(sock, ssl.SSLSocket):
            return False  # cannot peek under TLS; the stream ends at its timeout or at the next write
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _watch(self, rt: ResourceType, ns: str, query: dict[str, str]) -> int:
        owner = self.server.owner
        req = parse_watch(rt, ns, query, owner.watch_options)
        stream = WatchStream(
            owner.api, req, owner.watch_options, lambda: owner._stopping.is_set() or self._client_gone()
        )
        stream.open()
        self.send_response(200)
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        with owner._watch_lock:
            owner._active_watches += 1
            owner._watch_lock.notify_all()
        try:
            for event in stream.events():
                data = go_json(event, sort_keys=rt.custom) + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            if not owner._stopping.is_set():
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            else:
                self.close_connection = True
        except (ConnectionError, ssl.SSLError, OSError):
            self.close_connection = True
        finally:
            with owner._watch_lock:
                owner._active_watches -= 1
                owner._watch_lock.notify_all()
        return 200


class KubeApiServer:
    """A Kubernetes API server for tests. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        *,
        tokens: Mapping[str, Any] | None = None,
        rbac: Iterable[Mapping[str, Any]] | None = None,
        allow_all: bool | None = None,
        anonymous: bool = False,
        tls: bool | tuple[str, str] = False,
        host: str = "127.0.0.1",
        port: int = 0,
        watch_cache_size: int = 10_000,
        initial_resource_version: int = 1,
        watch_options: WatchOptions | None = None,
        bootstrap: bool = True,
        tls_dir: str | Path | None = None,
        admission: Iterable[Mapping[str, Any]] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.store = Store(initial_resource_version=initial_resource_version, watch_cache_size=watch_cache_size)
        self.api = Api(self.store, bootstrap=bootstrap)
        self.authenticator = Authenticator(DEFAULT_TOKENS if tokens is None else tokens, anonymous=anonymous)
        rbac_objects = _rbac_objects(rbac or [])
        self.authorizer = Authorizer(rbac_objects, allow_all=(not rbac_objects) if allow_all is None else allow_all)
        # ValidatingAdmissionPolicies, their bindings and their param objects (admission.py).
        self.admission = AdmissionPolicies(admission or [])
        self.api.admission = self._admit
        self.watch_options = watch_options or WatchOptions()
        self.ca_cert: str | None = None
        self._tls_context: ssl.SSLContext | None = None
        if tls:
            if tls is True:
                from .tlsutil import self_signed

                cert, key = self_signed(Path(tls_dir) if tls_dir else None)
            else:
                cert, key = tls
            self.ca_cert = cert
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self._tls_context = ctx
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._watch_lock = threading.Condition()
        self._active_watches = 0
        self._log_lock = threading.Lock()
        self._log: list[RequestRecord] = []
        self.internal_errors: list[str] = []  # tracebacks of requests this server failed with 500

    # ---- lifecycle ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def url(self) -> str:
        scheme = "https" if self._tls_context else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HTTPServer((self.host, self.port), self)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"kubeapi-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        self.store.wake_all()
        httpd.shutdown()
        httpd.drop_connections()
        httpd.server_close()  # joins the connection threads
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def restart(self) -> None:
        """Stop (ending every connection and watch) and listen again on the same port, same state."""
        self.stop()
        deadline = time.monotonic() + 5
        while True:
            try:
                self.start()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                threading.Event().wait(0.05)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def active_watches(self) -> int:
        with self._watch_lock:
            return self._active_watches

    def wait_for_watches(self, count: int, timeout: float = 5.0) -> bool:
        """Block until exactly `count` watch streams are open (False on timeout): lets a test make
        a change only once its watch is established, without sleeping."""
        with self._watch_lock:
            return self._watch_lock.wait_for(lambda: self._active_watches == count, timeout)

    # ---- clients -------------------------------------------------------------------------------

    def client_configuration(self, token: str | None = None) -> Any:
        """A kubernetes.client.Configuration for this server (token: default the first one)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        tok = token if token is not None else next(iter(self.authenticator.tokens), None)
        if tok:
            cfg.api_key = {"authorization": tok}
            cfg.api_key_prefix = {"authorization": "Bearer"}
        if self.ca_cert:
            cfg.ssl_ca_cert = self.ca_cert
        else:
            cfg.verify_ssl = False
        return cfg

    def can(
        self,
        user: str | User,
        verb: str,
        resource: str,
        *,
        group: str = "",
        namespace: str = "",
        name: str = "",
        groups: Sequence[str] = (),
    ) -> bool:
        """Whether the RBAC rules allow it, without a request (`resource` may be "services/status";
        a plain user name is taken as a service account's groups when it is one)."""
        if isinstance(user, str):
            extra = (
                ("system:serviceaccounts", f"system:serviceaccounts:{user.split(':')[2]}")
                if user.startswith("system:serviceaccount:")
                else ()
            )
            user = User(user, tuple(groups) + extra + ("system:authenticated",))
        res, _, sub = resource.partition("/")
        return self.authorizer.allowed(Attributes(user, verb, True, group, "", res, sub, namespace, name))

    # ---- request log ---------------------------------------------------------------------------

    def _admit(
        self, operation: str, rt: ResourceType, ns: str, name: str, subresource: str, obj: Any, old: Any
    ) -> None:
        user = current_user.get()
        if user is None or not self.admission.policies:  # load() and other internal writes
            return
        self.admission.admit(Request(operation, rt.group, rt.version, rt.resource, subresource, ns, name, obj, old, user))

    def _record(self, route: _Route, user: User | None, code: int, allowed: bool) -> None:
        rec = RequestRecord(
            route.method,
            route.path,
            user.name if user else "",
            route.verb,
            route.group,
            route.version,
            route.resource,
            route.subresource,
            route.namespace,
            route.name,
            code,
            allowed,
        )
        with self._log_lock:
            self._log.append(rec)

    @property
    def requests(self) -> list[RequestRecord]:
        with self._log_lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._log_lock:
            self._log.clear()

    # ---- test hooks ----------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self.store.rv

    def compact(self, rv: int | None = None) -> int:
        """etcd-style compaction: Exact lists and continue tokens older than `rv` get HTTP 410."""
        return self.store.compact(rv)

    def expire_watch_cache(self, resources: Iterable[str] | None = None, rv: int | None = None) -> int:
        """Drop watch history (all types, or e.g. ["leases", "discovery.k8s.io/endpointslices"]):
        watches from an older resourceVersion get 200 + ERROR 410 Expired."""
        keys = None
        if resources is not None:
            keys = []
            for r in resources:
                if "/" in r:
                    keys.append(r)
                else:
                    keys += sorted({t.storage_key for t in self.api.types.values() if t.resource == r})
        return self.store.expire_watch_cache(keys, rv)

    def load(self, objects: Iterable[Mapping[str, Any]], manager: str = "kubectl") -> list[dict[str, Any]]:
        """Store objects as given (Lists flattened): recorded state with its allocations and status."""
        out = []
        for obj in objects:
            if obj.get("kind") == "List":
                out += self.load(obj.get("items") or [], manager)
            else:
                out.append(self.api.load(dict(obj), manager))
        return out
