"""What a P4Runtime session reports: its errors (each names the switch and says why) and what a
write did (WriteOutcome, with the updates the switch refused)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

__all__ = [
    "ArbitrationError",
    "NotPrimaryError",
    "NotPrimaryWrite",
    "PipelineError",
    "ReadError",
    "SwitchError",
    "SwitchTlsError",
    "SwitchUnreachable",
    "UpdateError",
    "WriteError",
    "WriteOutcome",
    "status_text",
]


@dataclass(frozen=True)
class UpdateError:
    """One refused update: its place in the write() call, what it was, and the switch's reason."""

    request: int  # index of the WriteRequest in the write() call
    index: int  # index of the update in that request
    update: str  # e.g. "INSERT MyIngress.vip_table ('203.0.113.10', 80, 6)"
    code: str  # canonical code name, e.g. "ALREADY_EXISTS"
    message: str

    def __str__(self) -> str:
        return f"{self.update}: {self.code} {self.message}".rstrip()


@dataclass(frozen=True)
class WriteOutcome:
    """What a write() call did. Any per-update error, whatever its code, makes the write failed
    (DESIGN.md 8: BMv2 reports a full table as UNKNOWN, the specification RESOURCE_EXHAUSTED)."""

    requests_sent: int
    updates_sent: int
    errors: tuple[UpdateError, ...] = ()
    requests_total: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors and self.requests_sent == self.requests_total

    @property
    def applied(self) -> int:
        """Updates the switch reported as applied (sent minus refused)."""
        return self.updates_sent - len(self.errors)

    def summary(self, limit: int = 5) -> str:
        head = "; ".join(str(e) for e in self.errors[:limit])
        more = f"; and {len(self.errors) - limit} more" if len(self.errors) > limit else ""
        return (
            f"{len(self.errors)} of {self.updates_sent} update(s) refused in "
            f"{self.requests_sent} of {self.requests_total} request(s): {head}{more}"
        )


class SwitchError(Exception):
    """A P4Runtime operation on one switch failed; the message names the switch and says why."""

    def __init__(
        self,
        message: str,
        *,
        switch: str = "",
        code: grpc.StatusCode | None = None,
        outcome: WriteOutcome | None = None,
        primary_election_id: int | None = None,
    ) -> None:
        super().__init__(message)
        self.switch = switch
        self.code = code  # the gRPC status behind the failure, when there is one
        self.outcome = outcome  # writes: what was sent and what failed before this error
        self.primary_election_id = primary_election_id  # arbitration: the current primary's id


class SwitchUnreachable(SwitchError):
    """No gRPC connection could be made (refused, timed out, name not resolved)."""


class SwitchTlsError(SwitchUnreachable):
    """The TLS handshake failed: untrusted certificate, name mismatch, client certificate refused."""


class ArbitrationError(SwitchError):
    """The StreamChannel arbitration did not complete (no answer, stream refused)."""


class NotPrimaryError(SwitchError):
    """This session is not (or no longer) the primary controller: another controller holds a
    higher election id, or the stream ended. Writes from it are refused (fencing).
    `no_primary`: arbitration said nobody is primary and `primary_election_id` is the highest
    id the switch has seen (specification mode), rather than naming a live primary."""

    no_primary: bool = False


class PipelineError(SwitchError):
    """Get/SetForwardingPipelineConfig failed or did not leave the expected pipeline."""


class WriteError(SwitchError):
    """A Write failed. `outcome` tells which updates were refused and how many were sent."""


class ReadError(SwitchError):
    """A Read failed or returned something that does not fit the P4Info."""


class NotPrimaryWrite(WriteError, NotPrimaryError):
    """A Write refused with PERMISSION_DENIED: both a failed write and a lost primacy."""


def status_text(exc: grpc.aio.AioRpcError) -> str:
    """"CODE details" of a failed RPC, for messages."""
    details = exc.details() or ""
    return f"{exc.code().name} {details}".rstrip() if details else exc.code().name
