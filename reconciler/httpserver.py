"""The reconciler's HTTP endpoint: /metrics, /healthz and /readyz (issue 7, part 5).

A tiny HTTP/1.1 server on asyncio.start_server (no web framework in the dependencies): GET
and HEAD only, one request per connection (`Connection: close`), bounded request size and
read time, so a slow or broken client cannot hold the loop or pile up connections.

- /metrics: the reconciler's own registry, generated in a worker thread (a large registry takes
  milliseconds the loop should not spend), in the format the scraper asks for (OpenMetrics on its
  `Accept` header, else the Prometheus text format) and gzipped when `Accept-Encoding` allows:
  prometheus_client's own `choose_encoder` and `gzip_accepted` decide, as in its own server.
  With a bearer token file, /metrics answers 401 to a request without that token; the probes
  stay open (the kubelet sends no token).
- /healthz: 200 while the controller's heartbeat is fresh, 503 once it is stale. The server
  answering proves only that the event loop runs; the heartbeat proves the controller's loop
  still goes round (a wedged transaction would stop it).
- /readyz: 200 when the readiness callback says ready (started, and either leader with its
  switches connected or a standby follower: see `decide_ready`), else 503 with the reason.

One endpoint may serve only some of the paths (`paths=METRICS_PATHS` or `PROBE_PATHS`), so that
metrics and probes can listen on different addresses.
"""

from __future__ import annotations

import asyncio
import gzip
import hmac
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

log = logging.getLogger("reconciler.http")

__all__ = [
    "ALL_PATHS", "METRICS_PATHS", "PROBE_PATHS", "Heartbeat", "HttpEndpoint", "Readiness", "decide_ready",
    "parse_listen_address",
]

# () -> (ready, reason); may be async.
Readiness = Callable[[], "tuple[bool, str] | Awaitable[tuple[bool, str]]"]

MAX_REQUEST_LINE = 8192
MAX_HEADERS = 100
METRICS_PATHS = frozenset({"/metrics"})
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
ALL_PATHS = METRICS_PATHS | PROBE_PATHS
# The request headers /metrics reads; the others are skipped unread.
_WANTED_HEADERS = ("accept", "accept-encoding", "authorization")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 500: "Internal Server Error", 503: "Service Unavailable"}
_TEXT = "text/plain; charset=utf-8"


class Heartbeat:
    """Beaten by the controller each time round its loop; stale after `max_age` seconds.

    Created fresh: a process that has just started gets `max_age` to reach its first beat."""

    def __init__(self, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_age <= 0:
            raise ValueError(f"max_age must be > 0, not {max_age}")
        self.max_age = max_age
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        self._last = self._clock()

    def age(self) -> float:
        return self._clock() - self._last

    @property
    def fresh(self) -> bool:
        return self.age() <= self.max_age


def decide_ready(*, started: bool, leader: bool, switches_connected: bool, detail: str = "") -> tuple[bool, str]:
    """Ready means started, and either leader with the switches connected, or a standby
    follower (it holds no switch sessions, and must be ready to take over)."""
    if not started:
        return False, "starting" + (f": {detail}" if detail else "")
    if not leader:
        return True, "standby follower"
    if not switches_connected:
        return False, "leader, but the switches are not connected" + (f": {detail}" if detail else "")
    return True, "leader, switches connected"


def parse_listen_address(text: str) -> tuple[str, int]:
    """"host:port", "[v6]:port" or ":port" (all interfaces) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"listen address {text!r} is not host:port (for example 127.0.0.1:9090)")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"listen address {text!r}: port {port} is out of range 0..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", port


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    content_type: str = _TEXT
    headers: tuple[tuple[str, str], ...] = ()


class _BadRequest(Exception):
    pass


class HttpEndpoint:
    """Serves /metrics, /healthz and /readyz (or the subset `paths`).

        endpoint = HttpEndpoint(metrics.registry, heartbeat=hb, readiness=ready, port=9090)
        await endpoint.start()
        ...
        await endpoint.stop()
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        heartbeat: Heartbeat,
        readiness: Readiness | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        request_timeout: float = 10.0,
        paths: frozenset[str] = ALL_PATHS,
        bearer_token_file: str | Path | None = None,
    ) -> None:
        if not paths or not paths <= ALL_PATHS:
            raise ValueError(f"paths must be a non-empty subset of {sorted(ALL_PATHS)}, not {sorted(paths)}")
        self.registry = registry
        self.paths = paths
        self.bearer_token_file = Path(bearer_token_file) if bearer_token_file is not None else None
        self.heartbeat = heartbeat
        self.readiness = readiness
        self.host = host
        self.port = port
        self.request_timeout = request_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (the port is known after start())."""
        return self.host, self.port

    async def start(self) -> int:
        if self._server is not None:
            raise RuntimeError("the HTTP endpoint is already serving")
        if self.bearer_token_file is not None:
            self._token()  # unreadable or empty: one clear error at start, not 503s later
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_REQUEST_LINE)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {self.host}:{self.port} for {self._names()}: {exc.strerror or exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving %s on %s:%d%s", self._names(), self.host, self.port,
                 " (/metrics needs a bearer token)" if self.bearer_token_file and "/metrics" in self.paths else "")
        return self.port

    async def stop(self) -> None:
        """Stop listening and end the connections in progress."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._connections)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    def _names(self) -> str:
        return ", ".join(p for p in ("/metrics", "/healthz", "/readyz") if p in self.paths)

    def _token(self) -> bytes:
        """The token, read from its file at each request: a rotated Secret is used without a restart."""
        assert self.bearer_token_file is not None
        try:
            token = self.bearer_token_file.read_bytes().strip()
        except OSError as exc:
            raise OSError(exc.errno, f"cannot read the metrics bearer token file {self.bearer_token_file}: {exc.strerror}") from exc
        if not token:
            raise ValueError(f"the metrics bearer token file {self.bearer_token_file} is empty")
        return token

    async def __aenter__(self) -> "HttpEndpoint":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- one connection ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            try:
                async with asyncio.timeout(self.request_timeout):
                    method, path, headers = await self._read_request(reader)
            except TimeoutError:
                await self._send(writer, _Response(408, b"request not received in time\n"), head=False)
                return
            except _BadRequest as exc:
                await self._send(writer, _Response(400, f"{exc}\n".encode()), head=False)
                return
            except (ConnectionError, asyncio.IncompleteReadError):
                return  # the client went away before sending a request
            try:
                response = await self._route(method, path, headers)
            except Exception as exc:
                log.exception("HTTP %s %s failed", method, path)
                response = _Response(500, f"internal error: {type(exc).__name__}: {exc}\n".encode())
            await self._send(writer, response, head=method == "HEAD")
        except (ConnectionError, asyncio.CancelledError):
            pass  # client gone, or the endpoint is stopping: nothing to answer to
        finally:
            self._connections.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError):
                pass  # already reset by the client or stopping

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise _BadRequest(f"request line longer than {MAX_REQUEST_LINE} bytes") from None
        parts = line.decode("latin-1").strip().split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest("malformed request line")
        method, target = parts[0], parts[1]
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            try:
                header = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                raise _BadRequest(f"header line longer than {MAX_REQUEST_LINE} bytes") from None
            if header in (b"\r\n", b"\n"):
                return method, target.split("?", 1)[0], headers
            name, sep, value = header.decode("latin-1").partition(":")
            if sep and name.strip().lower() in _WANTED_HEADERS:
                key = name.strip().lower()
                # Repeated headers combine into one comma-separated list (RFC 9110 5.3).
                headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        raise _BadRequest(f"more than {MAX_HEADERS} header lines")

    async def _route(self, method: str, path: str, headers: dict[str, str]) -> _Response:
        if path not in self.paths:
            names = self._names().replace(", ", " or ")
            return _Response(404, f"not found: try {names}\n".encode())
        if method not in ("GET", "HEAD"):
            return _Response(405, f"method {method} not allowed\n".encode(), headers=(("Allow", "GET, HEAD"),))
        if path == "/metrics":
            return await self._metrics(headers)
        if path == "/healthz":
            age = self.heartbeat.age()
            if self.heartbeat.fresh:
                return _Response(200, f"ok: controller heartbeat {age:.1f}s ago\n".encode())
            return _Response(
                503, f"stale: last controller heartbeat {age:.1f}s ago (limit {self.heartbeat.max_age:g}s)\n".encode()
            )
        return await self._ready()

    async def _metrics(self, headers: dict[str, str]) -> _Response:
        if self.bearer_token_file is not None:
            denied = self._check_token(headers.get("authorization", ""))
            if denied is not None:
                return denied
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        body = await asyncio.to_thread(encoder, self.registry)
        extra: tuple[tuple[str, str], ...] = (("Vary", "Accept, Accept-Encoding"),)
        if gzip_accepted(headers.get("accept-encoding", "")):
            body = await asyncio.to_thread(gzip.compress, body)
            extra += (("Content-Encoding", "gzip"),)
        return _Response(200, body, content_type, extra)

    def _check_token(self, authorization: str) -> _Response | None:
        """None when the request carries the token; else the 401 (or 503 when the file is gone)."""
        try:
            token = self._token()
        except (OSError, ValueError) as exc:
            log.error("%s", exc)
            return _Response(503, b"metrics unavailable: the bearer token file cannot be read\n")
        scheme, _, given = authorization.partition(" ")
        # compare_digest: the time taken says nothing about how much of the token was right.
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("latin-1"), token):
            return None
        return _Response(401, b"unauthorized: /metrics needs Authorization: Bearer <token>\n",
                         headers=(("WWW-Authenticate", 'Bearer realm="p4kube-metrics"'),))

    async def _ready(self) -> _Response:
        if self.readiness is None:
            return _Response(200, b"ready\n")
        try:
            out = self.readiness()
            ready, reason = await out if inspect.isawaitable(out) else out
        except Exception as exc:
            log.exception("the readiness check failed")
            return _Response(503, f"not ready: the readiness check failed: {type(exc).__name__}: {exc}\n".encode())
        if ready:
            return _Response(200, f"ready: {reason}\n".encode() if reason else b"ready\n")
        return _Response(503, f"not ready: {reason}\n".encode() if reason else b"not ready\n")

    async def _send(self, writer: asyncio.StreamWriter, response: _Response, *, head: bool) -> None:
        lines = [
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Connection: close",
            "Cache-Control: no-store",
            *(f"{k}: {v}" for k, v in response.headers),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head:
            writer.write(response.body)
        await writer.drain()
