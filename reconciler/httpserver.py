"""The reconciler's HTTP endpoint: /metrics, /healthz and /readyz (issue 7, part 5).

A tiny HTTP/1.1 server on asyncio.start_server (no web framework in the dependencies): GET
and HEAD only, one request per connection (`Connection: close`), bounded request size and
read time, so a slow or broken client cannot hold the loop or pile up connections.

- /metrics: the Prometheus text format of the reconciler's own registry, generated in a
  worker thread (a large registry takes milliseconds the loop should not spend).
- /healthz: 200 while the controller's heartbeat is fresh, 503 once it is stale. The server
  answering proves only that the event loop runs; the heartbeat proves the controller's loop
  still goes round (a wedged transaction would stop it).
- /readyz: 200 when the readiness callback says ready (started, and either leader with its
  switches connected or a standby follower: see `decide_ready`), else 503 with the reason.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("reconciler.http")

__all__ = ["Heartbeat", "HttpEndpoint", "Readiness", "decide_ready", "parse_listen_address"]

# () -> (ready, reason); may be async.
Readiness = Callable[[], "tuple[bool, str] | Awaitable[tuple[bool, str]]"]

MAX_REQUEST_LINE = 8192
MAX_HEADERS = 100
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
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
    """Serves /metrics, /healthz and /readyz.

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
    ) -> None:
        self.registry = registry
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
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_REQUEST_LINE)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {self.host}:{self.port} for /metrics: {exc.strerror or exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving /metrics, /healthz, /readyz on %s:%d", self.host, self.port)
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
                    method, path = await self._read_request(reader)
            except TimeoutError:
                await self._send(writer, _Response(408, b"request not received in time\n"), head=False)
                return
            except _BadRequest as exc:
                await self._send(writer, _Response(400, f"{exc}\n".encode()), head=False)
                return
            except (ConnectionError, asyncio.IncompleteReadError):
                return  # the client went away before sending a request
            try:
                response = await self._route(method, path)
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

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str]:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise _BadRequest(f"request line longer than {MAX_REQUEST_LINE} bytes") from None
        parts = line.decode("latin-1").strip().split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest("malformed request line")
        method, target = parts[0], parts[1]
        for _ in range(MAX_HEADERS + 1):
            try:
                header = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                raise _BadRequest(f"header line longer than {MAX_REQUEST_LINE} bytes") from None
            if header in (b"\r\n", b"\n"):
                return method, target.split("?", 1)[0]
        raise _BadRequest(f"more than {MAX_HEADERS} header lines")

    async def _route(self, method: str, path: str) -> _Response:
        if path not in ("/metrics", "/healthz", "/readyz"):
            return _Response(404, b"not found: try /metrics, /healthz or /readyz\n")
        if method not in ("GET", "HEAD"):
            return _Response(405, f"method {method} not allowed\n".encode(), headers=(("Allow", "GET, HEAD"),))
        if path == "/metrics":
            body = await asyncio.to_thread(generate_latest, self.registry)
            return _Response(200, body, CONTENT_TYPE_LATEST)
        if path == "/healthz":
            age = self.heartbeat.age()
            if self.heartbeat.fresh:
                return _Response(200, f"ok: controller heartbeat {age:.1f}s ago\n".encode())
            return _Response(
                503, f"stale: last controller heartbeat {age:.1f}s ago (limit {self.heartbeat.max_age:g}s)\n".encode()
            )
        return await self._ready()

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
