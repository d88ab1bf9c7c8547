"""The switch layer: snapshot entries <-> P4Runtime messages (translate), TLS settings (tls), and
one P4Runtime session per switch (session). The two-switch transaction is built on top of these,
in reconciler/apply.py."""

from reconciler.switch.session import (
    ArbitrationError,
    CounterCell,
    NotPrimaryError,
    PipelineError,
    PipelineStatus,
    ReadError,
    SwitchError,
    SwitchSession,
    SwitchTlsError,
    SwitchUnreachable,
    UpdateError,
    WriteError,
    WriteOutcome,
    pipeline_cookie,
)
from reconciler.switch.tls import TlsError, TlsSettings
from reconciler.switch.translate import (
    TranslationError,
    describe_update,
    election_id_proto,
    entry_to_proto,
    proto_to_entry,
    updates_to_requests,
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
    "describe_update",
    "election_id_proto",
    "entry_to_proto",
    "pipeline_cookie",
    "proto_to_entry",
    "updates_to_requests",
    "write_counts",
]
