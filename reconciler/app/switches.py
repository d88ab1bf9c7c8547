"""The applier of a config's switches: every path that connects to a switch goes through
build_applier, so the operator's limits on intent (allowed switch addresses, the pipeline and
TLS directories, TLS unless insecure switches are allowed) are checked here, before any file is
read or connection made."""

from __future__ import annotations

from ..apply import TwoSwitchApplier, default_session_factory
from ..intent.files import (
    CA_FILE,
    CERT_FILE,
    DEVICE_CONFIG,
    KEY_FILE,
    TLS_KINDS,
    FileKind,
    FileRefError,
    read_named,
    resolve,
)
from ..intent.model import LoadBalancerConfig
from ..intent.semantic import parse_endpoint
from ..p4info import pipeline_info_from_message
from ..pipeline_io import load_config_p4info
from ..switch.allowlist import Allowlist, AllowlistError, parse_allowlist, refusals
from ..switch.tls import TlsError, TlsSettings
from .settings import Settings, SettingsError


def switch_allowlist(settings: Settings) -> Allowlist:
    """The allowed switch addresses (--allowed-switches); SettingsError when the list does not parse."""
    try:
        return parse_allowlist(settings.allowed_switches)
    except AllowlistError as e:
        raise SettingsError(str(e)) from None


def check_switch_addresses(config: LoadBalancerConfig, settings: Settings) -> None:
    """SettingsError unless every switch of `config` is in the allowed switch addresses."""
    switches = [(s.name, s.address, parse_endpoint(s.address)) for s in config.switch_config.switches]
    refused = refusals(switch_allowlist(settings), switches)
    if refused:
        raise SettingsError(f"{config.key}: " + "; ".join(refused))


def tls_from_names(
    settings: Settings, ca_file: str | None, cert_file: str | None, key_file: str | None, server_name: str | None
) -> TlsSettings:
    """TLS settings from files named inside the operator's TLS directory (FileRefError, TlsError)."""
    tls_dir = settings.dirs.tls_dir

    def named(value: str | None, kind: FileKind) -> str | None:
        return None if value is None else str(resolve(tls_dir, value, kind))

    return TlsSettings.from_files(
        ca_file=named(ca_file, CA_FILE), cert_file=named(cert_file, CERT_FILE),
        key_file=named(key_file, KEY_FILE), server_name=server_name,
    )


def _tls_settings(config: LoadBalancerConfig, settings: Settings) -> TlsSettings | None:
    t = config.switch_config.tls
    return None if t is None else tls_from_names(settings, t.ca_file, t.cert_file, t.key_file, t.server_name)


def build_applier(config: LoadBalancerConfig, settings: Settings, election_id: int | None = None) -> TwoSwitchApplier:
    """The two-switch applier of `config` under `settings` (election_id: settings.election_id
    unless given). SettingsError (or InputFileError for the P4Info) when it may not be built."""
    check_switch_addresses(config, settings)
    pipeline_dir = settings.dirs.pipeline_dir
    p4info = load_config_p4info(config, pipeline_dir)
    info = pipeline_info_from_message(p4info)
    device_config = b""
    if config.switch_config.pipeline == "managed" and not config.switch_config.device_config:
        # validate refuses this; a config built otherwise must not get an empty device config either
        raise SettingsError(
            f"{config.key}: spec.switchConfig has no deviceConfig: the pipeline would be pushed with an empty device "
            f"config; set deviceConfig, or pipeline: external when another tool installs the pipeline"
        )
    try:
        if config.switch_config.device_config:
            device_config = read_named(pipeline_dir, config.switch_config.device_config, DEVICE_CONFIG)
        tls = _tls_settings(config, settings)
    except FileRefError as e:
        raise SettingsError(f"{config.key}: spec.switchConfig.{'tls.' if e.kind in TLS_KINDS else ''}{e}") from None
    except TlsError as e:  # a file in the TLS directory that holds no PEM
        raise SettingsError(f"{config.key}: spec.switchConfig.tls: {e}") from None
    if not config.switch_config.switches:
        raise SettingsError(f"{config.key}: spec.switchConfig.switches is empty: nothing to apply to")
    try:
        factory = default_session_factory(
            config, info, tls, connect_timeout=settings.timeout, arbitration_timeout=settings.timeout,
            rpc_timeout=settings.rpc_timeout, require_tls=not settings.allow_insecure_switches,
        )
    except TlsError as e:  # PlaintextRefused: no TLS and insecure switches not allowed
        raise SettingsError(str(e)) from e
    return TwoSwitchApplier(
        config,
        p4info=p4info,
        info=info,
        device_config=device_config,
        election_id=election_id if election_id is not None else settings.election_id,
        session_factory=factory,
        batch_size=settings.batch_size,
    )


def check_switch_settings(config: LoadBalancerConfig, settings: Settings) -> None:
    """build_applier's checks, run before the audit repository is opened: a refused config
    leaves nothing behind, not even a new repository. Nothing connects: sessions are only
    opened by the transaction."""
    build_applier(config, settings)
