"""/metrics served correctly, over real HTTP on 127.0.0.1: p4kube_build_info and prometheus_client's
process and platform collectors in the reconciler's own registry, OpenMetrics when the scraper's
Accept asks for it, gzip when Accept-Encoding allows it, a bearer token when one is configured
(the probes stay open for the kubelet), and metrics and probes on separate addresses."""

from __future__ import annotations

import asyncio
import gzip
import platform
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import run
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from reconciler import __version__
from reconciler.httpserver import METRICS_PATHS, PROBE_PATHS, Heartbeat, HttpEndpoint
from reconciler.metrics import Metrics

WAIT = 5.0
Reply = tuple[int, bytes, dict[str, str]]


def fetch(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Reply:
    """One request; the body as sent (urllib does not undo Content-Encoding)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def serving(endpoint: HttpEndpoint, requests: Callable[[int], list[Reply]]) -> list[Reply]:
    """Start the endpoint, make the requests from a thread (the server runs on this loop), stop."""

    async def go() -> list[Reply]:
        async with endpoint as ep:
            return await asyncio.to_thread(requests, ep.port)

    return run(go())


def endpoint(metrics: Metrics, **kw: Any) -> HttpEndpoint:
    return HttpEndpoint(metrics.registry, heartbeat=Heartbeat(30.0), readiness=lambda: (True, "standby follower"), **kw)


def test_build_info_and_the_standard_process_and_platform_collectors():
    m = Metrics(commit="4095f28c1a2b")
    ((status, body, headers),) = serving(endpoint(m), lambda port: [fetch(port, "/metrics")])
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {s.name: s for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    info = samples["p4kube_build_info"]
    assert info.value == 1
    assert info.labels == {"version": __version__, "commit": "4095f28c1a2b", "python": platform.python_version()}
    assert samples["process_resident_memory_bytes"].value > 10e6  # this Python process, at least 10 MB
    assert samples["process_start_time_seconds"].value > 1.5e9
    assert samples["process_open_fds"].value >= 3
    assert samples["python_info"].labels["implementation"] == platform.python_implementation()
    assert "python_gc_collections_total" in samples
    assert samples["p4kube_leader"].value == 0  # nothing writes until the loop runs


def test_openmetrics_when_the_scraper_asks_and_the_text_format_otherwise():
    m = Metrics(commit="abc")
    m.record_fallback("p4kube-system/lb", "probe-failed", 2)
    prometheus_accept = ("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
                         "text/plain;version=0.0.4;q=0.3,*/*;q=0.1")  # what Prometheus 2.x sends
    om, plain = serving(endpoint(m), lambda port: [fetch(port, "/metrics", {"Accept": prometheus_accept}),
                                                     fetch(port, "/metrics", {"Accept": "text/plain"})])
    status, body, headers = om
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    families = {f.name: f for f in openmetrics_families(body.decode())}  # the strict parser accepts it
    assert families["p4kube_fallbacks"].type == "counter"
    (sample,) = [s for s in families["p4kube_fallbacks"].samples if s.name == "p4kube_fallbacks_total"]
    assert sample.value == 2 and sample.labels == {"config": "p4kube-system/lb", "reason": "probe-failed"}
    assert headers["Vary"] == "Accept, Accept-Encoding"
    assert plain[2]["Content-Type"].startswith("text/plain; version=0.0.4") and b"# EOF" not in plain[1]


def test_gzip_when_accept_encoding_allows_it():
    m = Metrics(commit="abc")
    zipped, plain, head = serving(endpoint(m), lambda port: [
        fetch(port, "/metrics", {"Accept-Encoding": "br;q=1.0, gzip;q=0.8"}),
        fetch(port, "/metrics", {"Accept-Encoding": "identity"}),
        fetch(port, "/metrics", {"Accept-Encoding": "gzip"}, method="HEAD"),
    ])
    assert zipped[0] == 200 and zipped[2]["Content-Encoding"] == "gzip"
    text = gzip.decompress(zipped[1]).decode()
    assert "p4kube_build_info{" in text
    assert int(zipped[2]["Content-Length"]) == len(zipped[1]) < len(text) / 3
    assert "Content-Encoding" not in plain[2] and plain[1].startswith(b"# HELP")
    assert head[0] == 200 and head[1] == b"" and head[2]["Content-Encoding"] == "gzip"


def test_bearer_token_guards_metrics_only_and_follows_a_rotated_file(tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("s3cret-1\n")  # as a Secret's file often ends: the newline is not part of it

    def requests(port: int) -> list[Reply]:
        out = [
            fetch(port, "/metrics"),
            fetch(port, "/metrics", {"Authorization": "Bearer wrong"}),
            fetch(port, "/metrics", {"Authorization": "Basic czNjcmV0LTE="}),
            fetch(port, "/metrics", {"Authorization": "Bearer s3cret-1"}),
            fetch(port, "/healthz"),
            fetch(port, "/readyz"),
        ]
        token.write_text("s3cret-2")  # the Secret rotated: no restart needed
        out += [fetch(port, "/metrics", {"Authorization": "Bearer s3cret-1"}),
                fetch(port, "/metrics", {"Authorization": "bearer s3cret-2"})]
        token.unlink()  # gone: fail closed
        out.append(fetch(port, "/metrics", {"Authorization": "Bearer s3cret-2"}))
        return out

    none, wrong, basic, right, healthz, readyz, old, new, gone = serving(endpoint(Metrics(), bearer_token_file=token), requests)
    for reply in (none, wrong, basic, old):
        assert reply[0] == 401 and reply[2]["WWW-Authenticate"].startswith("Bearer")
        assert b"p4kube_" not in reply[1]
    assert right[0] == 200 and b"p4kube_build_info" in right[1]
    assert healthz[0] == 200 and readyz[0] == 200
    assert new[0] == 200
    assert gone[0] == 503 and b"p4kube_" not in gone[1]


@pytest.mark.parametrize("content", [None, ""])
def test_an_unreadable_or_empty_token_file_stops_the_start(tmp_path: Path, content: str | None):
    token = tmp_path / "token"
    if content is not None:
        token.write_text(content)
    ep = endpoint(Metrics(), bearer_token_file=token)
    with pytest.raises((OSError, ValueError), match="bearer token file"):
        run(ep.start())


def test_metrics_and_probes_on_separate_addresses():
    m = Metrics()
    metrics_ep, probes_ep = endpoint(m, paths=METRICS_PATHS), endpoint(m, paths=PROBE_PATHS)

    async def go() -> tuple[list[Reply], list[Reply]]:
        async with metrics_ep, probes_ep:
            def on(port: int) -> Callable[[], list[Reply]]:
                return lambda: [fetch(port, p) for p in ("/metrics", "/healthz", "/readyz")]
            calls: list[Awaitable[list[Reply]]] = [asyncio.to_thread(on(metrics_ep.port)), asyncio.to_thread(on(probes_ep.port))]
            a, b = await asyncio.gather(*calls)
            return a, b

    on_metrics, on_probes = run(go())
    assert [r[0] for r in on_metrics] == [200, 404, 404]
    assert on_metrics[1][1] == b"not found: try /metrics\n"
    assert [r[0] for r in on_probes] == [404, 200, 200]
    assert on_probes[0][1] == b"not found: try /healthz or /readyz\n"
    with pytest.raises(ValueError, match="subset"):
        endpoint(m, paths=frozenset({"/debug"}))


@pytest.mark.parametrize(("flags", "message"), [
    (["--metrics-bearer-token-file", "token"], "--metrics-bearer-token-file protects /metrics: it needs --metrics-address"),
    (["--metrics-address", "127.0.0.1:9100", "--probe-address", "localhost"], "listen address 'localhost' is not host:port"),
])
def test_run_refuses_http_flags_that_cannot_work_before_starting(tmp_path: Path, capsys, flags: list[str], message: str):
    from reconciler.cli import main

    # Nothing exists at these paths: the HTTP flags are checked before intent or cluster are read.
    code = main(["run", "--intent", str(tmp_path / "none"), "--cluster", str(tmp_path / "none.yaml"), *flags])
    assert code == 1
    assert message in capsys.readouterr().err
