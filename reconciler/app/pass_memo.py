"""The pass cache (reconciler/pass_cache.py) as one `p4kube reconcile --once` uses it: read once,
a Renderer resumed from its render memo, an applier told its encoded entries, and what the run
leaves (for the snapshot the switches were left holding) written back for the next run.

Never a reason for a run to fail or to differ: an unusable file is said and passed over, a file
that cannot be written is said and the run's outcome stands.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..pass_cache import PARTS, CacheKey, CacheUnusable, Stored, cache_file, load, store

if TYPE_CHECKING:
    from ..apply import TwoSwitchApplier
    from ..intent.model import LoadBalancerConfig
    from ..render import Renderer
    from ..render.memo import RenderMemo
    from ..snapshot import Snapshot
    from ..switch.encoded_memo import KnownEncodings
    from ..switch.wire import EncodedEntries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Left:
    """What a pass leaves: the snapshot the switches hold, its render memo (None: not rendered
    this pass) and its entries as encoded for the read-backs (None: not encoded)."""

    snapshot: Snapshot
    render: RenderMemo | None = None
    encoded: EncodedEntries | None = None


# The encoded entries are written again when fewer of the snapshot's Services than this are in
# them: until then a pass encodes its few new Services itself and leaves the file (tens of MB,
# ~0.15 s to write) as it is.
REWRITE_BELOW = 0.9


class PassMemo:
    """One config's pass cache for one run. `read=False` (--no-cache): nothing is read, the files
    are still written afresh at the end."""

    def __init__(self, directory: str | Path, key: CacheKey, *, read: bool = True) -> None:
        self.key = key
        self.paths = {part: cache_file(directory, key.config, part) for part in PARTS}
        self.stored: dict[str, Stored] = {}
        self._known: KnownEncodings | None = None
        if not read:
            return
        for part, path in self.paths.items():
            try:
                self.stored[part] = load(path, key)
            except CacheUnusable as e:
                if e.warn:
                    self._warn(f"pass cache {e}; it is not used")
                else:
                    log.info("pass cache not used: %s", e)

    def resume(self, renderer: Renderer, config: LoadBalancerConfig, previous: Snapshot | None, *, p4info_digest: str) -> bool:
        """Resume `renderer` from the render memo when it was made for `previous` (the snapshot
        the switches hold); else it stays fresh and renders every Service."""
        from ..render.memo import RenderMemo

        stored = self.stored.get("render")
        if stored is None or previous is None:
            return False
        try:
            memo = RenderMemo.from_bytes(stored.data)
        except ValueError as e:
            self._warn(f"pass cache {self.paths['render']}: {e}; every Service is rendered")
            return False
        try:
            resumed = renderer.resume(memo, config, previous, p4info_digest=p4info_digest)
        except Exception as e:  # noqa: BLE001 - a cache must not stop a pass: render everything instead
            log.debug("render memo not taken up", exc_info=True)
            self._warn(f"pass cache {self.paths['render']}: not taken up ({type(e).__name__}: {e}); "
                       f"every Service is rendered")
            return False  # resume() leaves the renderer fresh until it has a whole state
        if not resumed:
            log.info("pass cache: the render memo is not of v%s (the last applied snapshot): every Service is rendered",
                     previous.version)
            return False
        return True

    def known(self) -> KnownEncodings | None:
        """The encoded entries stored, by Service fragment digest (parsed once)."""
        from ..switch.encoded_memo import load_encodings

        stored = self.stored.get("encoded")
        if self._known is None and stored is not None:
            try:
                self._known = load_encodings(stored.data, checked=True)  # pass_cache.load checked the file
            except ValueError as e:
                self._warn(f"pass cache {self.paths['encoded']}: {e}; every entry is encoded")
                del self.stored["encoded"]
            except Exception as e:  # noqa: BLE001 - a cache must not stop a pass: encode everything instead
                log.debug("encoded entries not read", exc_info=True)
                self._warn(f"pass cache {self.paths['encoded']}: not read ({type(e).__name__}: {e}); every entry is encoded")
                del self.stored["encoded"]
        return self._known

    def tell(self, applier: TwoSwitchApplier) -> None:
        """Give `applier` the stored encoded entries, for the snapshots it is about to encode
        (CPU-bound: the caller runs it while the switches answer their reads)."""
        known = self.known()
        if known is not None:
            applier.know(known)

    def _warn(self, what: str) -> None:
        print(f"{self.key.config}: warning: {what}", file=sys.stderr)

    def remember(self, renderer: Renderer) -> RenderMemo | None:
        """renderer.memo() for the next run; None (said) if it cannot be made: the pass goes on."""
        try:
            return renderer.memo()
        except Exception as e:  # noqa: BLE001 - a cache must not stop a pass
            log.debug("render memo not made", exc_info=True)
            self._warn(f"pass cache: render memo not made ({type(e).__name__}: {e})")
            return None

    def leave(self, left: Left) -> None:
        """Write what this pass leaves that the files do not hold yet. Never raises: the pass's
        outcome stands whatever happens here (a warning says what did)."""
        try:
            self._leave(left)
        except Exception as e:  # noqa: BLE001 - a cache must not turn a done pass into a failure
            log.debug("pass cache not written", exc_info=True)
            self._warn(f"pass cache not written ({type(e).__name__}: {e}); the next run does without it")

    def _leave(self, left: Left) -> None:
        digest = left.snapshot.digest
        if left.render is not None:
            self._write("render", Stored(digest, left.render.to_bytes()))
        # Written again when it covers too little of this snapshot, or when its bytes were
        # refused (not this reconciler's encoding: taking none of them, the pass encoded all).
        if left.encoded is not None and (self._coverage(left.snapshot) < REWRITE_BELOW
                                         or (self.known() is not None and not left.encoded.stored_taken)):
            from ..switch.encoded_memo import dump_encodings

            self._write("encoded", Stored(digest, dump_encodings(left.encoded)))

    def _coverage(self, snapshot: Snapshot) -> float:
        """The share of `snapshot`'s Services whose entries the stored file holds (0: none stored)."""
        known = self.known()
        if known is None or not snapshot.services:
            return 0.0
        return sum(svc.fragment_digest in known.services for svc in snapshot.services) / len(snapshot.services)

    def _write(self, part: str, new: Stored) -> None:
        if self.stored.get(part) == new:
            return
        try:
            store(self.paths[part], self.key, new)
        except OSError as e:
            self._warn(f"pass cache {self.paths[part]} not written ({e.strerror or e}); the next run does without it")
            return
        self.stored[part] = new


__all__ = ["Left", "PassMemo"]
