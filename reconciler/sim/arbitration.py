"""StreamChannel arbitration: who is primary for each (device_id, role), and who is told what.

Spec mode follows the specification's arbitration rules (1.1 and later): the primary is the
controller holding the highest election id ever seen for (device_id, role); when it leaves,
every other controller is told NOT_FOUND and nobody is primary until a controller arbitrates
with an id at least that high. BMv2 mode reproduces PI: roles are ignored, the highest live
election id is always primary (so the next one is promoted when the primary's stream ends),
and a missing election id counts as 0 (fixtures/p4runtime-bmv2/README.md, surprises 1-10).

Notifications are handed to each controller's `send` (a non-blocking queue put) while the lock
is held, so every stream sees arbitration changes in the order they happened.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from finsy.proto import U128, p4r

from reconciler.sim.behavior import (
    ALREADY_EXISTS,
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    NOT_FOUND,
    NOT_PRIMARY,
    OK,
    PERMISSION_DENIED,
    RESOURCE_EXHAUSTED,
    Behavior,
)

_ids = itertools.count(1)
log = logging.getLogger("reconciler.sim")


class ArbitrationError(Exception):
    """Ends a StreamChannel (or refuses a Write) with a gRPC code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(eq=False)
class Controller:
    """One StreamChannel that has sent a MasterArbitrationUpdate."""

    device_id: int
    role: str
    election_id: int | None  # None: unset (spec mode only; BMv2 counts it as 0)
    send: Callable[[p4r.StreamMessageResponse], None]
    id: int = field(default_factory=lambda: next(_ids))
    live: bool = True


@dataclass(eq=False)
class _Group:
    controllers: list[Controller] = field(default_factory=list)
    primary: Controller | None = None  # spec mode only; BMv2 derives it
    highest: int | None = None  # spec: the highest election id ever made primary


class Arbitrator:
    """Arbitration state of the whole server. Thread-safe."""

    def __init__(
        self,
        behavior: Behavior,
        is_known_device: Callable[[int], bool],
        max_streams: int = 16,
    ) -> None:
        self.behavior = behavior
        self._is_known_device = is_known_device
        self.max_streams = max_streams
        self._lock = threading.Lock()
        self._groups: dict[tuple[int, str], _Group] = {}

    # -- queries -----------------------------------------------------------------------------

    def _role(self, role: str) -> str:
        return role if self.behavior.roles_honoured else ""

    def _election_id(self, present: bool, value: int) -> int | None:
        if self.behavior.bmv2:
            return value  # unset counts as 0 (surprise 9)
        return value if present else None  # a set Uint128, even 0, is an id (message presence)

    def _primary(self, group: _Group) -> Controller | None:
        if not self.behavior.bmv2:
            return group.primary
        live = [c for c in group.controllers if c.election_id is not None]
        return max(live, key=_eid, default=None)

    def primary_election_id(self, device_id: int, role: str = "") -> int | None:
        """The current primary's election id, or None (for tests and logs)."""
        with self._lock:
            group = self._groups.get((device_id, self._role(role)))
            primary = self._primary(group) if group else None
            return primary.election_id if primary else None

    def stream_count(self, device_id: int) -> int:
        with self._lock:
            return sum(
                len(g.controllers) for (dev, _), g in self._groups.items() if dev == device_id
            )

    # -- Write / SetForwardingPipelineConfig authorization ------------------------------------

    def authorize(self, device_id: int, role: str, has_election_id: bool, election_id: int) -> None:
        """Raise ArbitrationError unless the request comes from the primary."""
        role = self._role(role)
        with self._lock:
            group = self._groups.get((device_id, role))
            if self.behavior.bmv2:
                # no StreamChannel at all: id-less requests are accepted, others are not
                # (surprise 7); otherwise the id must equal the primary's, 0 if missing
                if group is None or not group.controllers:
                    if has_election_id:
                        raise ArbitrationError(PERMISSION_DENIED, NOT_PRIMARY)
                    return
                primary = self._primary(group)
                if primary is None or primary.election_id != election_id:
                    raise ArbitrationError(PERMISSION_DENIED, NOT_PRIMARY)
                return
            if role and group is None:
                raise ArbitrationError(NOT_FOUND, f"Unknown role {role!r} for device {device_id}")
            primary = group.primary if group else None
            if primary is None or not has_election_id or primary.election_id != election_id:
                raise ArbitrationError(PERMISSION_DENIED, NOT_PRIMARY)

    # -- StreamChannel --------------------------------------------------------------------------

    def arbitrate(
        self,
        current: Controller | None,
        update: p4r.MasterArbitrationUpdate,
        send: Callable[[p4r.StreamMessageResponse], None],
    ) -> Controller:
        """Handle a MasterArbitrationUpdate received on a stream (`current` is the stream's
        controller after its first successful arbitration). Returns the stream's controller;
        raises ArbitrationError when the stream must end."""
        role = self._role(update.role.name)
        election_id = self._election_id(update.HasField("election_id"),
                                         U128.decode(update.election_id))
        with self._lock:
            if current is None:
                return self._join(update.device_id, role, election_id, update, send)
            self._update(current, update.device_id, role, election_id, update)
            return current

    def _join(self, device_id: int, role: str, election_id: int | None,
              update: p4r.MasterArbitrationUpdate, send: Callable) -> Controller:
        if not self._is_known_device(device_id):
            raise ArbitrationError(NOT_FOUND, f"Unknown device id {device_id}")
        group = self._groups.setdefault((device_id, role), _Group())
        if len(group.controllers) >= self.max_streams:
            raise ArbitrationError(RESOURCE_EXHAUSTED, "Too many connections")
        if election_id is not None and any(c.election_id == election_id
                                           for c in group.controllers):
            raise ArbitrationError(INVALID_ARGUMENT, "Election id already exists")
        if self.behavior.roles_honoured and update.role.HasField("config"):
            raise ArbitrationError(INVALID_ARGUMENT, "Role config is not supported")
        controller = Controller(device_id, role, election_id, send)
        before = self._primary(group)
        group.controllers.append(controller)
        if self.behavior.bmv2:
            if self._primary(group) is controller:
                self._notify_all(group)
            else:
                self._notify(group, controller)  # the primary hears nothing (surprise 4)
        else:
            self._spec_elect(group, controller, before)
        return controller

    def _update(self, controller: Controller, device_id: int, role: str,
                election_id: int | None, update: p4r.MasterArbitrationUpdate) -> None:
        if device_id != controller.device_id:
            raise ArbitrationError(FAILED_PRECONDITION, "Invalid device id")
        if role != controller.role:
            raise ArbitrationError(FAILED_PRECONDITION, "Invalid role")
        if self.behavior.roles_honoured and update.role.HasField("config"):
            raise ArbitrationError(INVALID_ARGUMENT, "Role config is not supported")
        group = self._groups[(device_id, role)]
        if election_id is not None and any(
            c.election_id == election_id for c in group.controllers if c is not controller
        ):
            # BMv2 also silently drops the real primary here and later aborts (surprise 10):
            # not reproduced; the other controllers are unaffected.
            raise ArbitrationError(INVALID_ARGUMENT, "New election id already exists")
        before = self._primary(group)
        if self.behavior.bmv2:
            if election_id == controller.election_id:
                return  # re-sending the same id: no response at all (surprise 4)
            controller.election_id = election_id
            after = self._primary(group)
            if (before is controller) != (after is controller):
                self._notify_all(group)
            else:
                self._notify(group, controller)
            return
        controller.election_id = election_id
        self._spec_elect(group, controller, before)

    def _spec_elect(self, group: _Group, controller: Controller,
                    before: Controller | None) -> None:
        eid = controller.election_id
        if eid is not None and (group.highest is None or eid >= group.highest):
            group.primary = controller
            group.highest = eid
            self._notify_all(group)  # new or confirmed primary: everyone is told
        elif before is controller:
            group.primary = None  # the primary downgraded itself
            self._notify_all(group)
        else:
            self._notify(group, controller)

    def leave(self, controller: Controller) -> None:
        """The controller's stream ended (cancelled, half-closed, aborted, server stopping)."""
        with self._lock:
            if not controller.live:
                return
            controller.live = False
            group = self._groups.get((controller.device_id, controller.role))
            if group is None or controller not in group.controllers:
                return
            was_primary = self._primary(group) is controller
            group.controllers.remove(controller)
            if not was_primary:
                return
            if not self.behavior.promote_on_primary_loss:
                group.primary = None  # spec: no primary until someone re-arbitrates
            self._notify_all(group)  # BMv2: the highest remaining id is promoted (surprise 3)

    def clear(self) -> None:
        with self._lock:
            self._groups.clear()

    # -- notifications --------------------------------------------------------------------------

    def _notify_all(self, group: _Group) -> None:
        primary = self._primary(group)
        if group.controllers:
            first = group.controllers[0]
            log.info("device %d role %r: %s", first.device_id, first.role,
                     f"primary is election id {primary.election_id}" if primary
                     else "no primary")
        for controller in group.controllers:
            self._notify(group, controller)

    def _notify(self, group: _Group, controller: Controller) -> None:
        primary = self._primary(group)
        response = p4r.StreamMessageResponse()
        arb = response.arbitration
        arb.device_id = controller.device_id
        if controller.role:
            arb.role.name = controller.role
        # BMv2: always the current primary's id; spec: the highest id ever made primary
        shown = primary.election_id if self.behavior.bmv2 and primary else group.highest
        if shown is not None:
            arb.election_id.SetInParent()
            arb.election_id.CopyFrom(U128.encode(shown))
        if primary is controller:
            arb.status.code = OK
            arb.status.message = "Is primary"
        elif primary is not None:
            arb.status.code = ALREADY_EXISTS
            arb.status.message = "Is backup"
        else:
            arb.status.code = NOT_FOUND
            arb.status.message = "No primary"
        controller.send(response)


def _eid(controller: Controller) -> int:
    return controller.election_id or 0
