"""The switch's forwarding pipeline: read it (Get), make sure it is ours and push it only when it
is not (Set VERIFY_AND_COMMIT of the pipeline already there would clear every table), or, for a
pipeline another tool installs, check that its P4Info is ours.

A pipeline is named by a cookie derived from the (P4Info, device config) pair.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from finsy.proto import p4i, p4r

from reconciler.p4info import PipelineInfo, pipeline_info_from_message
from reconciler.switch.arbitration import Arbitration
from reconciler.switch.channel import Connection
from reconciler.switch.errors import NotPrimaryError, PipelineError, status_text

__all__ = [
    "PipelineStatus",
    "check_external_pipeline",
    "cookie_problem",
    "ensure_pipeline",
    "get_pipeline",
    "p4info_difference",
    "pipeline_cookie",
]

log = logging.getLogger("reconciler.switch")


@dataclass(frozen=True)
class PipelineStatus:
    """The switch's forwarding pipeline as GetForwardingPipelineConfig reports it."""

    cookie: int | None  # None: the switch holds a config without a cookie
    p4info: p4i.P4Info | None = field(default=None, repr=False, compare=False)
    device_config: bytes | None = field(default=None, repr=False)


def cookie_problem(status: PipelineStatus | None, expected: int) -> str:
    """Why a switch reporting `status` does not run the pipeline of cookie `expected` ("" when
    it does)."""
    if status is None:
        return "the switch has no pipeline (restarted?): its tables are empty"
    if status.cookie != expected:
        got = "no cookie" if status.cookie is None else f"cookie {status.cookie:#x}"
        return f"the switch runs another pipeline ({got}, expected {expected:#x})"
    return ""


class _Preambled(Protocol):
    """A P4Info object with a preamble (table, action, counter...)."""

    @property
    def preamble(self) -> p4i.Preamble: ...


def _preambled(m: p4i.P4Info) -> Iterator[tuple[str, _Preambled]]:
    """(field name, object) for every P4Info object with a preamble (tables, actions...)."""
    for field_desc, value in m.ListFields():
        if field_desc.message_type is not None and hasattr(value, "add"):  # repeated messages
            for item in value:
                if "preamble" in item.DESCRIPTOR.fields_by_name:
                    yield field_desc.name, item


def _comparable(p4info: p4i.P4Info) -> bytes:
    """The P4Info without what does not change the pipeline: pkg_info (compiler, arch, version
    strings) and documentation."""
    m = p4i.P4Info()
    m.CopyFrom(p4info)
    m.ClearField("pkg_info")
    for _, item in _preambled(m):
        item.preamble.ClearField("doc")
    data: bytes = m.SerializeToString(deterministic=True)
    return data


def p4info_difference(ours: p4i.P4Info, theirs: p4i.P4Info) -> str:
    """"" when the two P4Infos describe the same pipeline (ids, names, match fields, actions,
    params, sizes...), else what differs, in a few words."""
    if _comparable(ours) == _comparable(theirs):
        return ""

    def objects(m: p4i.P4Info) -> dict[str, str]:
        return {
            f"{kind[:-1] if kind.endswith('s') else kind} {item.preamble.name}": f"{item.preamble.id:#x}"
            for kind, item in _preambled(m)
        }

    a, b = objects(ours), objects(theirs)
    missing = sorted(a.keys() - b.keys())
    extra = sorted(b.keys() - a.keys())
    changed = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
    parts: list[str] = []
    if missing:
        parts.append("missing " + ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
    if extra:
        parts.append("not ours: " + ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else ""))
    if changed:
        parts.append("other ids for " + ", ".join(changed[:3]))
    return "; ".join(parts) or "same tables and actions, but other match fields, parameters, sizes or annotations"


def pipeline_cookie(p4info: p4i.P4Info, device_config: bytes) -> int:
    """The 64-bit cookie naming a (P4Info, device config) pair: equal cookies, equal pipelines."""
    h = hashlib.sha256(b"p4kube-pipeline-cookie-v1\0")
    h.update(hashlib.sha256(p4info.SerializeToString(deterministic=True)).digest())
    h.update(hashlib.sha256(device_config).digest())
    return int.from_bytes(h.digest()[:8], "big")


async def get_pipeline(connection: Connection, *, full: bool = False) -> PipelineStatus | None:
    """The switch's pipeline (cookie only, or with P4Info and device config when `full`);
    None when it has none."""
    Req = p4r.GetForwardingPipelineConfigRequest
    config = await _pipeline_config(connection, Req.ALL if full else Req.COOKIE_ONLY)
    if config is None:
        return None
    empty = not config.HasField("cookie") and not config.HasField("p4info") and not config.p4_device_config
    if empty and not full:
        return PipelineStatus(cookie=None)  # BMv2 after a Set that committed nothing: `config {}`
    return PipelineStatus(
        cookie=config.cookie.cookie if config.HasField("cookie") else None,
        p4info=config.p4info if full and config.HasField("p4info") else None,
        device_config=config.p4_device_config if full else None,
    )


async def _pipeline_config(
    connection: Connection, response_type: p4r.GetForwardingPipelineConfigRequest.ResponseType.ValueType
) -> p4r.ForwardingPipelineConfig | None:
    """The switch's ForwardingPipelineConfig (GetForwardingPipelineConfig with
    `response_type`); None when it has no pipeline."""
    stub = connection.stub_for("get the pipeline")
    peer = connection.peer
    request = p4r.GetForwardingPipelineConfigRequest(device_id=peer.device_id, response_type=response_type)
    try:
        reply = await stub.GetForwardingPipelineConfig(request, timeout=connection.rpc_timeout)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "pipeline" in (exc.details() or "").lower():
            return None  # BMv2 before any SetForwardingPipelineConfig
        raise PipelineError(
            f"{peer.where()}: GetForwardingPipelineConfig failed: {status_text(exc)}",
            switch=peer.name, code=exc.code(),
        ) from None
    if not reply.HasField("config"):
        return None  # the specification's answer when no pipeline is set
    config: p4r.ForwardingPipelineConfig = reply.config
    return config


async def ensure_pipeline(
    arbitration: Arbitration,
    info: PipelineInfo,
    p4info: p4i.P4Info,
    device_config: bytes,
    cookie: int | None = None,
) -> bool:
    """Make the switch run (p4info, device_config); True when it had to be pushed.

    Compared by cookie (default: pipeline_cookie of the two). A matching pipeline is never
    pushed again: VERIFY_AND_COMMIT of the same pipeline clears every table."""
    connection = arbitration.connection
    peer = connection.peer
    _check_p4info(info, p4info)
    if cookie is None:
        cookie = pipeline_cookie(p4info, device_config)
    current = await get_pipeline(connection)
    if current is not None and current.cookie == cookie:
        log.info("%s: pipeline cookie %#x already installed", peer.where(), cookie)
        return False
    arbitration.require_primary("push the pipeline")
    stub = connection.stub_for("push the pipeline")
    Req = p4r.SetForwardingPipelineConfigRequest
    request = Req(device_id=peer.device_id, election_id=peer.wire_election_id, action=Req.VERIFY_AND_COMMIT)
    request.config.p4info.CopyFrom(p4info)
    request.config.p4_device_config = device_config
    request.config.cookie.cookie = cookie
    try:
        await stub.SetForwardingPipelineConfig(request, timeout=connection.rpc_timeout)
    except grpc.aio.AioRpcError as exc:
        error = NotPrimaryError if exc.code() == grpc.StatusCode.PERMISSION_DENIED else PipelineError
        raise error(
            f"{peer.where()}: SetForwardingPipelineConfig (VERIFY_AND_COMMIT) failed: {status_text(exc)}",
            switch=peer.name, code=exc.code(), primary_election_id=arbitration.primary_election_id,
        ) from None
    after = await get_pipeline(connection)
    if after is None or after.cookie != cookie:
        got = "no pipeline" if after is None else f"cookie {after.cookie}"
        raise PipelineError(
            f"{peer.where()}: pushed pipeline cookie {cookie:#x} but the switch reports {got}",
            switch=peer.name,
        )
    previous = "none" if current is None else f"cookie {current.cookie}"
    log.info("%s: pipeline pushed (cookie %#x, was %s)", peer.where(), cookie, previous)
    return True


async def check_external_pipeline(connection: Connection, p4info: p4i.P4Info) -> PipelineStatus:
    """For a pipeline installed by another tool (switchConfig.pipeline: external): the
    switch's pipeline, when its P4Info equals `p4info`; else PipelineError saying what
    differs. Never pushes anything. Its cookie is whatever that tool set (not ours), so the
    P4Info itself is compared (GetForwardingPipelineConfig P4INFO_AND_COOKIE)."""
    peer = connection.peer
    Req = p4r.GetForwardingPipelineConfigRequest
    config = await _pipeline_config(connection, Req.P4INFO_AND_COOKIE)
    if config is None or not config.HasField("p4info"):
        raise PipelineError(
            f"{peer.where()}: runs no pipeline, and switchConfig.pipeline is external: the reconciler does "
            f"not push one; install the pipeline with the tool that manages it (nothing was written)",
            switch=peer.name,
        )
    cookie = config.cookie.cookie if config.HasField("cookie") else None
    problem = p4info_difference(p4info, config.p4info)
    if problem:
        raise PipelineError(
            f"{peer.where()}: the pipeline installed by another tool (switchConfig.pipeline: external) is not "
            f"ours: its P4Info differs ({problem}); nothing was written",
            switch=peer.name,
        )
    return PipelineStatus(cookie=cookie, p4info=config.p4info)


def _check_p4info(info: PipelineInfo, p4info: p4i.P4Info) -> None:
    """The pushed P4Info must be the one entries are encoded with."""
    other = pipeline_info_from_message(p4info)
    ours = {(t.name, t.id) for t in info.tables.values()} | {(a.name, a.id) for a in info.actions.values()}
    theirs = {(t.name, t.id) for t in other.tables.values()} | {(a.name, a.id) for a in other.actions.values()}
    if ours != theirs:
        diff = sorted(ours ^ theirs)[:5]
        raise ValueError(f"the P4Info to push differs from the session's in tables/actions: {diff}")
