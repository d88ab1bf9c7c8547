"""TLS settings of a P4Runtime connection: the CA that signs the switch's certificate, our client
certificate and key for mutual TLS, and the name to check the switch's certificate against.

Files are read once, when the settings are made, so that a missing or unreadable file is
reported with its name before any connection is attempted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

__all__ = ["PlaintextRefused", "TlsError", "TlsSettings", "handshake_failure", "require_tls"]

INSECURE_FLAG = "--allow-insecure-switches"


class TlsError(ValueError):
    """TLS settings that cannot work (missing file, certificate without key, not PEM)."""


class PlaintextRefused(TlsError):
    """A config would reach its switches over plaintext P4Runtime and that was not allowed."""


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_tls(
    tls: TlsSettings | None,
    *,
    allow_insecure: bool,
    config: str,
    switches: Sequence[tuple[str, str]],
    where: str = "",
) -> None:
    """The one decision on plaintext P4Runtime: without TLS settings, refuse unless plaintext was
    allowed explicitly. Plaintext lets anyone on the path read the tables and, by sending a higher
    election id, become primary and write them. `switches`: (name, address) pairs, for the
    message; `where`: the config's file:line, when it came from a file."""
    if tls is not None or allow_insecure or not switches:
        return
    names = ", ".join(f"{_short(name, 40)} ({_short(address, 60)})" for name, address in switches[:4])
    more = f" and {len(switches) - 4} more" if len(switches) > 4 else ""
    head = f"{where}: " if where else ""
    raise PlaintextRefused(
        f"{head}{_short(config)}: spec.switchConfig.tls is not set, so P4Runtime to switch {names}{more} would be "
        f"plaintext (anyone on the path can read the tables or become primary and write them); set "
        f"spec.switchConfig.tls (caFile, and certFile/keyFile for mutual TLS), or pass {INSECURE_FLAG} "
        f"for a lab or test switch. Nothing was connected or written"
    )


def _read_pem(path: str | Path, what: str, marker: bytes) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from exc
    if marker not in data:
        raise TlsError(f"the {what} file {path} holds no PEM block ({marker.decode()}...)")
    return data


@dataclass(frozen=True)
class TlsSettings:
    """PEM bytes; `ca` None means the system's trusted roots. `certificate` and `private_key`
    go together (mutual TLS). `server_name` overrides the name checked in the switch's
    certificate (the address is often an IP or a name the certificate does not carry)."""

    ca: bytes | None = field(default=None, repr=False)
    certificate: bytes | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None
    source: str = ""  # where the settings came from, for error messages (e.g. the CA file)

    def __post_init__(self) -> None:
        if (self.certificate is None) != (self.private_key is None):
            raise TlsError("a client certificate needs its private key, and a key its certificate")

    @classmethod
    def from_files(
        cls,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
    ) -> "TlsSettings":
        if (cert_file is None) != (key_file is None):
            raise TlsError(
                f"certFile and keyFile go together (got certFile={cert_file}, keyFile={key_file})"
            )
        return cls(
            ca=_read_pem(ca_file, "CA certificate", b"-----BEGIN") if ca_file is not None else None,
            certificate=_read_pem(cert_file, "client certificate", b"-----BEGIN") if cert_file else None,
            private_key=_read_pem(key_file, "client private key", b"-----BEGIN") if key_file else None,
            server_name=server_name or None,
            source=f"CA {ca_file}" if ca_file is not None else "system CA roots",
        )

    @property
    def mutual(self) -> bool:
        return self.certificate is not None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.private_key, certificate_chain=self.certificate
        )

    def channel_options(self) -> list[tuple[str, str]]:
        if self.server_name:
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []


def handshake_failure(lower: str, tls: TlsSettings, address: str) -> str | None:
    """What a failed TLS connection means, from gRPC's (lower-cased) error text; None when the
    failure does not look like TLS."""
    if "hostname verification" in lower or "no match found for server name" in lower:
        return (
            f"the switch's certificate does not name {tls.server_name or address.rsplit(':', 1)[0]!r}; "
            "set serverName to a name its certificate carries"
        )
    if "certificate_verify_failed" in lower or "unable to get local issuer" in lower or "self signed" in lower:
        ca = tls.source or ("the configured CA" if tls.ca is not None else "the system CA roots")
        return (
            f"the switch's certificate is not signed by the CA we trust ({ca}): wrong CA file, "
            "or the switch serves a certificate from another CA"
        )
    if "wrong_version_number" in lower or "packet_length_too_long" in lower or "http_request" in lower:
        # Our ClientHello was answered with bytes that are not TLS: a plaintext server. Never
        # retried in plaintext: that would hand the tables to whoever answers on this port.
        return (
            "the switch does not speak TLS on this port (it answered in plaintext); enable TLS on the switch "
            "(simple_switch_grpc --grpc-server-ssl, Stratum -ca_cert_file/-server_cert_file/-server_key_file); "
            "plaintext is never tried instead"
        )
    if any(w in lower for w in ("peer_did_not_return_a_certificate", "certificate_required", "alert",
                                 "socket closed", "connection reset", "end of file")):
        # Our side checks the server's certificate (CERTIFICATE_VERIFY_FAILED above); a TLS alert
        # or a closed connection comes from the server rejecting ours. With TLS 1.3 the client
        # finishes its handshake first, so the rejection often shows as "Socket closed".
        if tls.mutual:
            return (
                "the switch closed the connection during the handshake: it most likely does not "
                "accept our client certificate (not signed by the CA it trusts for clients)"
            )
        return (
            "the switch closed the connection during the handshake: it most likely requires a client "
            "certificate (mutual TLS): set certFile and keyFile"
        )
    if any(w in lower for w in ("ssl", "tls", "handshake", "certificate", "x509")):
        return "the TLS handshake failed"
    return None
