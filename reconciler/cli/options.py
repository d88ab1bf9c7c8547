"""Command-line options shared by several commands, and the Settings they make."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the composition root loads the library: imported when a command runs, not for --help
    from ..app.settings import Settings


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The Settings a command's parsed arguments give; an option the command lacks keeps its default."""
    from ..app.settings import Settings

    given: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            given[f.name] = tuple(value) if isinstance(value, list) else value  # repeatable options
    return Settings(**given)


def adopt_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--adopt-switches",
        action="store_true",
        help="when the audit repository (or --state) holds no applied snapshot of the config but the switches "
        "already serve Services (a lost audit history, a migration), replace their entries with a fresh render; "
        "without it the reconciler refuses to overwrite what no record accounts for",
    )


def signing_options(p: argparse.ArgumentParser) -> None:
    """--sign-commits and its key options (audit commits; reconciler.audit.signing), for every
    command that records to the audit repository."""
    p.add_argument(
        "--sign-commits", choices=("ssh", "gpg"), metavar="ssh|gpg",
        help="sign every audit commit, as git does (verifiable with git verify-commit or `p4kube audit verify "
        "--allowed-signers/--gpg-home`): ssh uses ssh-keygen -Y sign, gpg uses gpg --detach-sign; needs --audit-repo",
    )
    p.add_argument(
        "--signing-key", metavar="FILE|ID",
        help="with --sign-commits ssh: the private key file (or its public key, the private half in ssh-agent); "
        "with --sign-commits gpg: the key id, fingerprint or user id",
    )
    p.add_argument("--gpg-home", metavar="DIR", help="with --sign-commits gpg: the GnuPG home holding the secret key (default: gpg's own)")
    p.add_argument(
        "--gpg-passphrase-file", metavar="FILE",
        help="with --sign-commits gpg: a file holding the key's passphrase (pinentry loopback); a key without one needs none",
    )
    p.add_argument(
        "--audit-allowed-signers", metavar="FILE",
        help="SSH allowed-signers file: audit records signed by these keys are trusted too (another replica's key); "
        "with --sign-commits or this option, a record whose signature does not verify is never taken as what the "
        "switches hold nor applied",
    )
    p.add_argument(
        "--audit-trust-gpg-home", metavar="DIR",
        help="GnuPG home whose public keys are trusted for audit records (default with --sign-commits gpg: --gpg-home)",
    )


def intent_signers_options(p: argparse.ArgumentParser, *, follows: bool = False) -> None:
    """--verify-intent-signers / --verify-intent-gpg-home (reconcile, run)."""
    then = (
        "; a refused commit is logged and recorded once, and the last valid intent keeps being applied"
        if follows else "; anything else is refused and recorded"
    )
    p.add_argument(
        "--verify-intent-signers",
        metavar="FILE",
        help="apply only intent whose HEAD commit is signed by a key in this SSH allowed-signers file "
        "(like Flux's spec.verify), and only when the checkout holds exactly that commit (no uncommitted edits)" + then,
    )
    p.add_argument("--verify-intent-gpg-home", metavar="DIR", help="like --verify-intent-signers, trusting this GPG home's keys")


def insecure_switches_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-insecure-switches", action="store_true",
        help="for labs and tests only: allow plaintext P4Runtime to the switches of a config without "
        "spec.switchConfig.tls (without it such a config is refused before any connection); anyone who reaches "
        "a switch's port can then read its tables and, with a higher election id, become primary and write them",
    )


def rpc_timeout_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rpc-timeout", type=float, default=60.0, metavar="SECONDS",
        help="deadline of each Write and Read RPC; a Write that misses it is fenced (a new stream with a higher "
        "election id) before the transaction decides anything, so it cannot land later (default: %(default)s)",
    )


def file_options(p: argparse.ArgumentParser, *, tls: bool = True) -> None:
    """--pipeline-dir (and --tls-dir): where the files intent names are found, by name only."""
    p.add_argument(
        "--pipeline-dir", metavar="DIR",
        help="directory holding the pipeline files intent names (spec.switchConfig.deviceConfig, p4Info): intent "
        "gives a plain name inside it (no absolute paths, no '..', symlinks may not lead out); default: none, so a "
        "config naming one is refused by commands that read it",
    )
    if tls:
        tls_dir_option(p)


def tls_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tls-dir", metavar="DIR",
        help="directory holding the TLS files intent names (spec.switchConfig.tls caFile, certFile, keyFile), "
        "found by name inside it like --pipeline-dir",
    )


def switch_options(p: argparse.ArgumentParser) -> None:
    """--pipeline-dir, --tls-dir and --allowed-switches: what intent may make the reconciler read and connect to."""
    file_options(p)
    p.add_argument(
        "--allowed-switches", action="append", metavar="LIST",
        help="switch addresses intent may name (comma-separated, repeatable): CIDR, CIDR:PORT, [IPv6-CIDR]:PORT, "
        "HOST or HOST:PORT (a DNS name, matched exactly); a config naming another switch is refused before any "
        "connection (default: loopback only, 127.0.0.0/8 and ::1, any port)",
    )


def kube_options(p: argparse.ArgumentParser) -> None:
    """--kubeconfig and --context, as kubectl spells them, for every command that reads the API
    (Settings.kubeconfig, Settings.kube_context; reconciler.kube.client.build_api_client)."""
    p.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig (default: in-cluster, then $KUBECONFIG or ~/.kube/config)")
    p.add_argument(
        "--context", dest="kube_context", metavar="NAME",
        help="the kubeconfig context to use (default: its current-context); ignored in a Pod without --kubeconfig",
    )


OUTPUT_FORMATS = ("text", "json", "yaml")


def output_option(
    p: argparse.ArgumentParser, *, default: str = "text", choices: tuple[str, ...] = OUTPUT_FORMATS,
    legacy_format: bool = False,
) -> None:
    """One `-o/--output` flag (dest `output`) for every command that prints data; print with
    cli.output.emit. `legacy_format` keeps the old `--format` as a hidden, deprecated alias of
    the same dest, so scripts that use it go on working for a release."""
    p.add_argument(
        "-o", "--output", dest="output", choices=choices, default=default, metavar="|".join(choices),
        help="output format (default: %(default)s)",
    )
    if legacy_format:
        p.add_argument("--format", dest="output", choices=choices, help=argparse.SUPPRESS)
