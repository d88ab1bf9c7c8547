"""`p4kube crd`: print (or write, or check) the LoadBalancerConfig CRD generated from schemas/.

reconciler/cli/__init__.py calls `register(subparsers)`; the command has no other home, so that
deploy/base/crd.yaml is always produced the same way: `p4kube crd --out deploy/base/crd.yaml`.
"""

from __future__ import annotations

import argparse
import sys

from .errors import EXIT_ERROR


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `crd` command to the `p4kube` subcommands."""
    p = subparsers.add_parser(
        "crd",
        help="print the LoadBalancerConfig CustomResourceDefinition generated from schemas/",
        description="Generate the LoadBalancerConfig CRD (apiextensions.k8s.io/v1) from "
        "schemas/loadbalancerconfig.schema.json: the structural openAPIV3Schema, the status "
        "subresource and printer columns. Prints YAML to stdout unless --out or --check is given. "
        "deploy/base/crd.yaml is this output.",
    )
    p.add_argument("--out", metavar="FILE", help="write the YAML here instead of stdout")
    p.add_argument(
        "--check",
        metavar="FILE",
        help="exit 1 if FILE differs from the generated CRD (for CI: is deploy/base/crd.yaml current?)",
    )
    p.set_defaults(func=cmd_crd)


def cmd_crd(args: argparse.Namespace) -> int:
    from ..crd import CRDGenerationError, crd_yaml

    try:
        text = crd_yaml()
    except (CRDGenerationError, OSError, ValueError) as e:
        print(f"p4kube crd: error: cannot generate the CRD: {e}", file=sys.stderr)
        return EXIT_ERROR
    from ..generated import write_or_check

    return write_or_check("p4kube crd", text, out=args.out, check=args.check, what="the CRD generated from the schema")
