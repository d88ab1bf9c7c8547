"""The pass cache (reconciler/pass_cache.py) as one `p4kube reconcile --once` uses it: read once,
a Renderer resumed from its render memo, an applier told its encoded entries, and what the run
leaves (the snapshot the switches were left holding) written back for the next run.

Never a reason for a run to fail or to differ: an unusable file is said and passed over, a file
that cannot be written is said and the run's outcome stands.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..pass_cache import CacheKey, CacheUnusable, PassCache, cache_file, load, store

if TYPE_CHECKING:
    from ..apply import TwoSwitchApplier
    from ..intent.model import LoadBalancerConfig
    from ..render import Renderer
    from ..render.memo import RenderMemo
    from ..snapshot import Snapshot
    from ..switch.encoded_memo import KnownEncodings
    from ..switch.wire import EncodedEntries

log = logging.getLogger(__name__)


@dataclass
class Left:
    """What a pass leaves: the snapshot the switches hold, its render memo (None: not rendered
    this pass) and its entries as encoded for the read-backs (None: not encoded)."""

    snapshot: Snapshot
    render: RenderMemo | None = None
    encoded: EncodedEntries | None = None


class PassMemo:
    """One config's pass cache for one run. `read=False` (--no-cache): nothing is read, the file
    is still written afresh at the end."""

    def __init__(self, directory: str | Path, key: CacheKey, *, read: bool = True) -> None:
        self.path = cache_file(directory, key.config)
        self.key = key
        self.cache: PassCache | None = None
        self._known: KnownEncodings | None = None
        self.resumed_from: str | None = None  # the snapshot digest a render was resumed from
        if not read:
            return
        try:
            self.cache = load(self.path, key)
        except CacheUnusable as e:
            if "damaged" in str(e):
                print(f"{key.config}: warning: pass cache {e}; everything is rendered and encoded", file=sys.stderr)
            else:
                log.info("pass cache not used: %s", e)

    def resume(self, renderer: Renderer, config: LoadBalancerConfig, previous: Snapshot | None, *, p4info_digest: str) -> bool:
        """Resume `renderer` from the render memo when it was made for `previous` (the snapshot
        the switches hold); else it stays fresh and renders every Service."""
        from ..render.memo import RenderMemo

        if self.cache is None or self.cache.render is None or previous is None:
            return False
        try:
            memo = RenderMemo.from_bytes(self.cache.render)
        except ValueError as e:
            print(f"{self.key.config}: warning: pass cache {self.path}: render memo: {e}; every Service is rendered",
                  file=sys.stderr)
            return False
        if not renderer.resume(memo, config, previous, p4info_digest=p4info_digest):
            log.info("pass cache: its render memo is not of v%s (the last applied snapshot): every Service is rendered",
                     previous.version)
            return False
        self.resumed_from = previous.digest
        return True

    def known(self) -> KnownEncodings | None:
        """The encoded entries the cache holds, by Service fragment digest (parsed once)."""
        from ..switch.encoded_memo import load_encodings

        if self._known is None and self.cache is not None and self.cache.encoded is not None:
            try:
                self._known = load_encodings(self.cache.encoded)
            except ValueError as e:
                print(f"{self.key.config}: warning: pass cache {self.path}: encoded entries: {e}; every entry is encoded",
                      file=sys.stderr)
                self.cache = PassCache(self.key, self.cache.snapshot, self.cache.render, None)
        return self._known

    def tell(self, applier: TwoSwitchApplier) -> None:
        """Give `applier` the cache's encoded entries, for the snapshots it is about to encode."""
        known = self.known()
        if known is not None:
            applier.know(known)

    def leave(self, left: Left) -> None:
        """Write what this pass leaves, unless the file already holds exactly that."""
        from ..switch.encoded_memo import dump_encodings

        digest = left.snapshot.digest
        render: bytes | None
        if left.render is not None:
            render = left.render.to_bytes()
        elif self.cache is not None and self.cache.snapshot == digest:
            render = self.cache.render  # not rendered this pass: the memo of the same snapshot stands
        else:
            render = None
        same = self.cache is not None and self.cache.snapshot == digest
        if same and self.cache is not None and self.cache.encoded is not None:
            encoded: bytes | None = self.cache.encoded  # the same snapshot's entries, encoded alike
        elif left.encoded is not None:
            encoded = dump_encodings(left.encoded)
        else:
            encoded = None
        new = PassCache(self.key, digest, render, encoded)
        if new == self.cache or (render is None and encoded is None):
            return
        try:
            store(self.path, new)
        except OSError as e:
            print(f"{self.key.config}: warning: pass cache {self.path} not written ({e.strerror or e}); "
                  f"the next run renders and encodes everything", file=sys.stderr)
            return
        self.cache = new


__all__ = ["Left", "PassMemo"]
