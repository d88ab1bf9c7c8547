"""p4kube reconciler: Git intent + cluster state -> audited, transactional P4Runtime switch tables."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `reconciler.__commit__`: the Git commit of this build (reconciler.buildinfo), looked up only
    # when asked, so that importing the package never runs git.
    if name == "__commit__":
        from .buildinfo import build_commit

        return build_commit()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
