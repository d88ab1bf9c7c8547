"""Events on the LoadBalancerConfig when the loop's state turns, against the test API server:
one Warning per change of state (not per pass), one Normal when it converges again."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kubeapi.server import KubeApiServer
from kubernetes import client as k8s

from reconciler.controller import TransactionRecord
from reconciler.kube.client import build_api_client
from reconciler.app.reports import ConfigEvents

CONFIG = "p4kube-system/edge"


def events_about(api: k8s.ApiClient, name: str) -> list[dict[str, Any]]:
    raw = k8s.EventsV1Api(api).list_namespaced_event("p4kube-system", _preload_content=False).data
    return [e for e in json.loads(raw)["items"] if e["regarding"]["name"] == name]


def test_config_events_follow_state_changes_not_passes():
    with KubeApiServer() as server:
        server.load([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "p4kube-system"}}])
        api = build_api_client(configuration=server.client_configuration())
        try:
            events = ConfigEvents(api)

            async def scenario() -> None:
                await events.note(TransactionRecord(CONFIG, 3, "applied"))  # normal: nothing to say
                degraded = TransactionRecord(CONFIG, 3, "degraded", "switch leaf-1 (primary) unreachable: refused")
                for _ in range(5):  # every health round says the same: one Event
                    await events.note(degraded)
                await events.note(TransactionRecord(CONFIG, 4, "refused", "refused by the removal guard: 3 of 4"))
                await events.note(TransactionRecord(CONFIG, 4, "up-to-date"))

            asyncio.run(asyncio.wait_for(scenario(), 30))
            got = [(e["type"], e["reason"], e["regarding"]["kind"]) for e in events_about(api, "edge")]
            assert got == [
                ("Warning", "AppliedDegraded", "LoadBalancerConfig"),
                ("Warning", "RemovalRefused", "LoadBalancerConfig"),
                ("Normal", "Applied", "LoadBalancerConfig"),
            ]
            notes = [e["note"] for e in events_about(api, "edge")]
            assert "unreachable" in notes[0] and "removal guard" in notes[1]
        finally:
            api.close()
