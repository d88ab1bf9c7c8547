"""The switch layer: snapshot values <-> bytes (codec), snapshot entries <-> P4Runtime messages
(translate), TLS settings (tls), and one P4Runtime session per switch (session), which composes
the channel, arbitration, pipeline, writes and reads modules. The two-switch transaction is built
on top of these, in reconciler/apply.py."""

from reconciler.switch.errors import (
    ArbitrationError,
    NotPrimaryError,
    PipelineError,
    ReadError,
    SwitchError,
    SwitchTlsError,
    SwitchUnreachable,
    UpdateError,
    WriteError,
    WriteOutcome,
)
from reconciler.switch.pipeline import PipelineStatus, cookie_problem, pipeline_cookie
from reconciler.switch.reads import CounterCell
from reconciler.switch.session import SwitchSession
from reconciler.switch.tls import TlsError, TlsSettings
from reconciler.switch.translate import (
    TranslationError,
    check_election_base,
    describe_update,
    election_id_proto,
    entry_to_proto,
    proto_to_entry,
    split_election_id,
    updates_to_requests,
    wire_election_id,
    write_counts,
)

__all__ = [
    "ArbitrationError",
    "CounterCell",
    "NotPrimaryError",
    "PipelineError",
    "PipelineStatus",
    "ReadError",
    "SwitchError",
    "SwitchSession",
    "SwitchTlsError",
    "SwitchUnreachable",
    "TlsError",
    "TlsSettings",
    "TranslationError",
    "UpdateError",
    "WriteError",
    "WriteOutcome",
    "check_election_base",
    "cookie_problem",
    "describe_update",
    "election_id_proto",
    "entry_to_proto",
    "pipeline_cookie",
    "proto_to_entry",
    "split_election_id",
    "updates_to_requests",
    "wire_election_id",
    "write_counts",
]
