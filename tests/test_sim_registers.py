"""Register RPCs against the software switch over real gRPC, replaying the recorded BMv2 exchange
(fixtures/p4runtime-bmv2/10-registers.txt): BMv2 refuses every register Write (status UNKNOWN,
one UNIMPLEMENTED error per update) and every register Read (UNIMPLEMENTED). The switch does the
same in BMv2 mode; spec mode refuses them too (documented in docs/dataplane.md), the reconciler
never sends them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest
from finsy.proto import p4r
from sim_transcripts import (
    FIXTURES,
    Client,
    Outcome,
    load_p4info,
    pipeline_request,
    read_request,
    write_request,
)

from reconciler import p4names as n
from reconciler.p4info import load_p4info as load_program_p4info
from reconciler.sim import SoftwareSwitch

TRANSCRIPT = FIXTURES / "10-registers.txt"
P4INFO = load_p4info("registers-program.p4info.txtpb")
CONN_BLOOM = next(r.preamble.id for r in P4INFO.registers if r.preamble.name == "I.conn_bloom")
ELECTION = 1


@dataclass
class Recorded:
    label: str
    code: str
    details: str
    per_update: list[tuple[int, str]] = field(default_factory=list)


def parse_register_transcript() -> tuple[int, list[Recorded]]:
    """(the arbitration answer's code, every recorded RPC in order)."""
    arbitration: int | None = None
    recorded: list[Recorded] = []
    body = TRANSCRIPT.read_text().split("# The program:")[0]
    for line in body.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if m := re.fullmatch(r"arbitration: (\d+)", line):
            arbitration = int(m.group(1))
        elif m := re.fullmatch(r"   per-update: (\d+) (.*)", line):
            recorded[-1].per_update.append((int(m.group(1)), m.group(2)))
        elif m := re.fullmatch(r"   \(the line above (\d+) more times\)", line):
            recorded[-1].per_update.extend([recorded[-1].per_update[-1]] * int(m.group(1)))
        elif m := re.fullmatch(r"(.+): ([A-Z_]+) '(.*)'", line):
            recorded.append(Recorded(m.group(1), m.group(2), m.group(3)))
        else:
            raise AssertionError(f"unparsed line in {TRANSCRIPT.name}: {line!r}")
    assert arbitration is not None
    return arbitration, recorded


def _register(index: int | None = None, value: int | None = None) -> p4r.RegisterEntry:
    entry = p4r.RegisterEntry(register_id=CONN_BLOOM)
    if index is not None:
        entry.index.index = index
    if value is not None:
        entry.data.bitstring = value.to_bytes(1, "big")
    return entry


def _update(kind: str, entry: p4r.RegisterEntry) -> p4r.Update:
    update = p4r.Update(type=p4r.Update.Type.Value(kind))
    update.entity.register_entry.CopyFrom(entry)
    return update


def _read(entry: p4r.RegisterEntry) -> p4r.ReadRequest:
    entity = p4r.Entity()
    entity.register_entry.CopyFrom(entry)
    return read_request(entity)


def _write(*updates: p4r.Update) -> p4r.WriteRequest:
    return write_request(updates, election_id=ELECTION)


# What the recording's client sent for each label (the transcript records labels, not messages).
REQUESTS: dict[str, Callable[[], tuple[str, object]]] = {
    "MODIFY index 5 = 1": lambda: ("Write", _write(_update("MODIFY", _register(5, 1)))),
    "READ index 5": lambda: ("Read", _read(_register(5))),
    "INSERT index 6 (spec: INVALID_ARGUMENT)": lambda: (
        "Write", _write(_update("INSERT", _register(6, 1)))),
    "MODIFY index 70000 (out of range)": lambda: (
        "Write", _write(_update("MODIFY", _register(70000, 1)))),
    "MODIFY without index (all cells = 0)": lambda: (
        "Write", _write(_update("MODIFY", _register(None, 0)))),
    "READ index 5 after the wildcard MODIFY": lambda: ("Read", _read(_register(5))),
    "READ all cells": lambda: ("Read", _read(_register())),
    "MODIFY 1000 cells by index in one batch": lambda: (
        "Write", _write(*(_update("MODIFY", _register(i, 1)) for i in range(1000)))),
    "MODIFY index 7 without data": lambda: ("Write", _write(_update("MODIFY", _register(7)))),
    "MODIFY index 8 = 2 (too wide for bit<1>)": lambda: (
        "Write", _write(_update("MODIFY", _register(8, 2)))),
}


def _replay(bmv2: bool) -> list[str]:
    """Replay the recording against a fresh switch; the mismatches, one line each."""
    arbitration_code, recorded = parse_register_transcript()
    mismatches: list[str] = []
    with SoftwareSwitch(bmv2=bmv2) as switch, Client(f"127.0.0.1:{switch.port}") as client:
        _, answer = client.arbitrate(ELECTION)
        if answer.arbitration.status.code != arbitration_code:
            mismatches.append(f"arbitration: {answer.arbitration.status.code}")
        assert client.unary("SetForwardingPipelineConfig",
                            pipeline_request(P4INFO, election_id=ELECTION)).ok
        for step in recorded:
            rpc, request = REQUESTS[step.label]()
            outcome: Outcome = client.call(rpc, request)
            got = (outcome.code.name, outcome.details,
                   [(e.canonical_code, e.message) for e in outcome.errors()] if rpc == "Write"
                   else [])
            want = (step.code, step.details, step.per_update)
            if got != want:
                mismatches.append(f"{step.label}: got {got[:2]} + {len(got[2])} errors "
                                  f"{got[2][:1]}, recorded {want[:2]} + {len(want[2])} errors")
    return mismatches


def test_the_recording_is_parsed_whole():
    arbitration, recorded = parse_register_transcript()
    assert arbitration == 0
    assert [r.label for r in recorded] == list(REQUESTS)  # every recorded RPC is replayed
    assert sum(len(r.per_update) for r in recorded) == 6 + 1000  # six Writes, one of 1000
    assert {r.code for r in recorded} == {"UNKNOWN", "UNIMPLEMENTED"}


def test_bmv2_mode_answers_register_rpcs_exactly_as_recorded():
    assert _replay(bmv2=True) == []


def test_the_replay_detects_a_different_answer():
    """Spec mode refuses the same way per update but words the status as its general forms do
    (a failed Write's details name the count, a failed Read is UNKNOWN with per-request errors):
    the replay must report every one of the ten RPCs."""
    mismatches = _replay(bmv2=False)
    assert len(mismatches) == len(REQUESTS), mismatches
    assert all("1 of 1 read requests failed" in m for m in mismatches if m.startswith("READ"))
    assert all("updates failed" in m for m in mismatches if not m.startswith("READ"))


@pytest.mark.parametrize("bmv2", [False, True], ids=["spec", "bmv2"])
def test_conn_gen_of_the_load_balancer_is_out_of_reach_of_p4runtime(bmv2):
    """The program's own register: no Write changes it, no Read shows it, in either mode."""
    p4info = load_program_p4info()
    (register,) = p4info.registers
    assert register.preamble.name == n.CONN_GEN
    with SoftwareSwitch(bmv2=bmv2) as switch, Client(f"127.0.0.1:{switch.port}") as client:
        client.arbitrate(ELECTION)
        assert client.unary("SetForwardingPipelineConfig",
                            pipeline_request(p4info, election_id=ELECTION)).ok
        entry = p4r.RegisterEntry(register_id=register.preamble.id)
        entry.index.index = 3
        entry.data.bitstring = (7).to_bytes(4, "big")
        written = client.unary("Write", _write(_update("MODIFY", entry)))
        assert written.code == grpc.StatusCode.UNKNOWN
        assert [(e.canonical_code, e.message) for e in written.errors()] == [
            (12, "Register writes are not supported yet")
        ]
        assert switch.device(1).registers(n.CONN_GEN) == {}
        read = client.read(_read(entry))
        assert read.code == (grpc.StatusCode.UNIMPLEMENTED if bmv2 else grpc.StatusCode.UNKNOWN)
        errors = [(e.canonical_code, e.message) for e in read.errors()] if not bmv2 else []
        if bmv2:
            assert read.details == "Register reads are not supported yet"
        else:
            assert errors == [(12, "Register reads are not supported yet")]
