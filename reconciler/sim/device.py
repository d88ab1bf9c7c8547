"""Per-device state of the software switch: pipeline config, tables, counters, registers,
packet lookups.

One Device is one P4Runtime device_id. It owns the pipeline the controllers see through
P4Runtime (`state`) and the pipeline packets are processed with (`dataplane`); they are the same
object except between VERIFY_AND_SAVE and COMMIT, when writes already go to the new pipeline
while packets still use the old one. A re-entrant lock serializes Writes, Reads, pipeline
changes and packet lookups, which makes every request strictly serializable as the
specification requires.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from finsy.proto import p4r

from reconciler.sim.behavior import (
    ATOMICITY_UNSUPPORTED,
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    NO_PIPELINE,
    NOT_FOUND,
    OK,
    UNIMPLEMENTED,
    UNKNOWN,
    Behavior,
)
from reconciler.sim.reads import (
    ReadOutcome,
    default_entry_entity,
    read_entities,
    table_entry_entity,
)
from reconciler.sim.schema import P4Schema, SchemaError, build_schema
from reconciler.sim.tables import Entry, PipelineState, TableState
from reconciler.sim.writes import UpdateResult, apply_updates

SetAction = p4r.SetForwardingPipelineConfigRequest
GetType = p4r.GetForwardingPipelineConfigRequest


class TableLookup(Protocol):
    """What the packet pipeline (reconciler.sim.pipeline) needs from a device."""

    def lookup_exact(self, table: str, key: tuple[int, ...]) -> tuple[str, dict[str, int]] | None:
        ...

    def lookup_lpm(self, table: str, value: int) -> tuple[str, dict[str, int]] | None:
        ...

    def default_action(self, table: str) -> tuple[str, dict[str, int]]:
        ...

    def count(self, counter: str, index: int, packets: int = 1, nbytes: int = 0) -> None:
        ...

    def register_read(self, register: str, index: int) -> int:
        ...

    def register_write(self, register: str, index: int, value: int) -> None:
        ...


class RpcError(Exception):
    """An RPC-wide failure. `trailer` says whether BMv2 attaches a google.rpc.Status
    (errors raised by PI's DeviceMgr do; the server's own primary/pipeline checks do not)."""

    def __init__(self, code: int, message: str, trailer: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailer = trailer


@dataclass(frozen=True)
class EntryView:
    """A read-only copy of one table entry, for tests (production clients use P4Runtime)."""

    key: tuple
    action: str
    params: Mapping[str, int]
    priority: int = 0
    controller_metadata: int = 0
    metadata: bytes = b""


class Device:
    """One P4Runtime device. Thread-safe."""

    def __init__(self, device_id: int, behavior: Behavior, phantom: bool = False) -> None:
        self.device_id = device_id
        self.behavior = behavior
        # BMv2 creates state for any device id it is asked about; such a device accepts
        # arbitration but can never be assigned a pipeline (fixtures surprise 6)
        self.phantom = phantom
        self.lock = threading.RLock()
        self._size_overrides: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        """Forget everything, like a restarted switch process."""
        with self.lock:
            self.state: PipelineState | None = None
            self.dataplane: PipelineState | None = None
            # the ForwardingPipelineConfig as sent, for GetForwardingPipelineConfig
            self._config: p4r.ForwardingPipelineConfig | None = None
            self._pending_commit = False  # VERIFY_AND_SAVE done, COMMIT not yet
            self._touched = False  # BMv2: any SetForwardingPipelineConfig creates the manager

    # -- SetForwardingPipelineConfig / GetForwardingPipelineConfig ---------------------------

    def set_pipeline(self, request: p4r.SetForwardingPipelineConfigRequest) -> None:
        with self.lock:
            if self.behavior.bmv2:
                self._set_bmv2(request)
            else:
                self._set_spec(request)

    def _schema(self, config: p4r.ForwardingPipelineConfig, strict: bool) -> P4Schema:
        try:
            return build_schema(config.p4info, strict)
        except SchemaError as exc:
            raise RpcError(INVALID_ARGUMENT, str(exc), trailer=True) from None

    def _fresh(self, schema: P4Schema) -> PipelineState:
        state = PipelineState(schema)
        for name, size in self._size_overrides.items():
            if name in state.tables_by_name:
                state.tables_by_name[name].size = size
        return state

    def _set_spec(self, request: p4r.SetForwardingPipelineConfigRequest) -> None:
        action = request.action
        if action == SetAction.COMMIT:
            if request.HasField("config"):
                raise RpcError(INVALID_ARGUMENT, "COMMIT must not carry a config", trailer=True)
            if not self._pending_commit:
                raise RpcError(NOT_FOUND, "No saved config to commit", trailer=True)
            self.dataplane = self.state
            self._pending_commit = False
            return
        if action not in (SetAction.VERIFY, SetAction.VERIFY_AND_SAVE,
                          SetAction.VERIFY_AND_COMMIT, SetAction.RECONCILE_AND_COMMIT):
            raise RpcError(INVALID_ARGUMENT, "Invalid SetForwardingPipeline action", trailer=True)
        config = request.config
        if not request.HasField("config") or not config.HasField("p4info"):
            raise RpcError(INVALID_ARGUMENT, "The config must carry a P4Info", trailer=True)
        schema = self._schema(config, strict=True)
        if action == SetAction.VERIFY:
            return
        if action == SetAction.RECONCILE_AND_COMMIT and self.state is not None:
            new = self._reconciled(self.state, schema)
        else:
            new = self._fresh(schema)
        self.state = new
        self._config = _copy(config)
        if action == SetAction.VERIFY_AND_SAVE:
            self._pending_commit = True  # packets keep using the old pipeline until COMMIT
            return
        self.dataplane = new
        self._pending_commit = False

    def _reconciled(self, old: PipelineState, schema: P4Schema) -> PipelineState:
        """Spec RECONCILE_AND_COMMIT: carry every entry, default action, counter and register
        cell over,
        or refuse with INVALID_ARGUMENT (nothing changes) if one does not fit the new P4Info."""
        new = self._fresh(schema)
        inserts, defaults = _replay_updates(old)
        for update in inserts + defaults:
            results = apply_updates(new, self.behavior, [update])
            code, message = results[0]
            if code != OK:
                name = old.tables[update.entity.table_entry.table_id].info.name
                raise RpcError(
                    INVALID_ARGUMENT,
                    f"Cannot preserve the forwarding state: {name}: {message}",
                    trailer=True,
                )
        for counter_id, cells in old.counters.items():
            target = new.counters.get(counter_id)
            if target is None:
                continue
            for index in range(min(cells.info.size, target.info.size)):
                target.set(index, cells.packets[index], cells.bytes[index])
        for name, register in old.registers_by_name.items():  # data-plane state too
            kept = new.registers_by_name.get(name)
            if kept is None:
                continue
            for index, value in register.nonzero().items():
                if index < kept.info.size:
                    kept.write(index, value)
        return new

    def _set_bmv2(self, request: p4r.SetForwardingPipelineConfigRequest) -> None:
        # Mirrors PI's DeviceMgr::pipeline_config_set. Not reproduced: the crashes after a Set
        # that committed nothing (surprise 12) and the wedged data plane after a bad BMv2 JSON
        # (surprise 14): the device config is opaque to this switch.
        self._touched = True
        action = request.action
        config = request.config
        if action == SetAction.UNSPECIFIED:
            raise RpcError(INVALID_ARGUMENT, "Invalid SetForwardingPipeline action", trailer=True)
        if action == SetAction.VERIFY:
            self._schema(config, strict=False)
            return
        if action == SetAction.COMMIT:
            # a config attached to COMMIT is ignored (surprise 13)
            if self.phantom or not self._pending_commit:
                raise RpcError(UNKNOWN, "Error in second phase of device update", trailer=True)
            self.dataplane = self.state
            self._pending_commit = False
            return
        if action not in (SetAction.VERIFY_AND_SAVE, SetAction.VERIFY_AND_COMMIT,
                          SetAction.RECONCILE_AND_COMMIT):
            return  # PI answers OK to an undefined action and does nothing
        schema = self._schema(config, strict=False)
        if self.phantom:
            raise RpcError(UNKNOWN, "Error when trying to assign device", trailer=True)
        if self._pending_commit:
            # a swap is still pending (after SAVE, or a failed reconcile: surprise 15)
            raise RpcError(UNKNOWN, "Error in first phase of device update", trailer=True)
        old = self.state
        self.state = self._fresh(schema)
        self._config = _copy(config)
        if action == SetAction.VERIFY_AND_SAVE:
            self._pending_commit = True
            return
        if action == SetAction.RECONCILE_AND_COMMIT and old is not None:
            # PI reads all state and replays it as INSERTs into the new pipeline: counter cells
            # cannot be INSERTed, so a program with an indirect counter always fails, leaving
            # the swap pending; default actions are not replayed, so they are reset.
            inserts, _ = _replay_updates(old)
            results = apply_updates(self.state, self.behavior, inserts)
            has_cells = any(c.info.size for c in old.counters.values())
            if has_cells or any(code != OK for code, _ in results):
                self._pending_commit = True
                raise RpcError(UNKNOWN, "Error when reconciling config", trailer=True)
        self.dataplane = self.state
        self._pending_commit = False

    def get_pipeline(self, response_type: int) -> p4r.GetForwardingPipelineConfigResponse:
        with self.lock:
            response = p4r.GetForwardingPipelineConfigResponse()
            if self.behavior.bmv2:
                if not self._touched:
                    raise RpcError(FAILED_PRECONDITION, NO_PIPELINE)
                response.config.SetInParent()  # always `config {}` (surprise 18)
            if response_type not in GetType.ResponseType.values():
                raise RpcError(
                    INVALID_ARGUMENT,
                    "Invalid response_type in GetForwardingPipelineConfigRequest",
                    trailer=True,
                )
            if self._config is None:
                return response  # spec: no config known -> `config` unset
            sent = self._config
            out = response.config
            if response_type in (GetType.ALL, GetType.P4INFO_AND_COOKIE):
                out.p4info.CopyFrom(sent.p4info)
            if response_type in (GetType.ALL, GetType.DEVICE_CONFIG_AND_COOKIE):
                out.p4_device_config = sent.p4_device_config
            if sent.HasField("cookie"):  # omitted when the Set had none (surprise 18)
                out.cookie.CopyFrom(sent.cookie)
            return response

    # -- Write / Read ------------------------------------------------------------------------

    def write(self, request: p4r.WriteRequest, limit: int | None = None) -> list[UpdateResult]:
        """Apply a WriteRequest (arbitration already checked). With `limit`, apply only that
        many updates (the fault 'die mid-batch')."""
        with self.lock:
            state = self.state
            if state is None:
                raise RpcError(FAILED_PRECONDITION, NO_PIPELINE)
            if request.atomicity != p4r.WriteRequest.CONTINUE_ON_ERROR:
                raise RpcError(UNIMPLEMENTED, ATOMICITY_UNSUPPORTED, trailer=self.behavior.bmv2)
            return apply_updates(state, self.behavior, request.updates, limit)

    def read(self, request: p4r.ReadRequest, encoded: bool = False) -> ReadOutcome:
        """`encoded`: the entities as serialized bytes (ReadOutcome.encoded), see read_entities."""
        with self.lock:
            state = self.state
            if state is None:
                raise RpcError(FAILED_PRECONDITION, NO_PIPELINE)
            return read_entities(state, self.behavior, list(request.entities), encoded)

    # -- packet path (TableLookup) -----------------------------------------------------------

    def _dataplane(self) -> PipelineState:
        state = self.dataplane
        if state is None:
            raise RuntimeError(f"device {self.device_id} has no committed pipeline")
        return state

    def _result(self, state: PipelineState, action_id: int, params: tuple[int, ...]
                ) -> tuple[str, dict[str, int]]:
        action = state.schema.actions_by_id[action_id]
        return action.name, dict(zip(action.param_names, params))

    def lookup_exact(self, table: str, key: tuple[int, ...]) -> tuple[str, dict[str, int]] | None:
        with self.lock:
            state = self._dataplane()
            tstate = state.table(table)
            if not tstate.info.exact_only:
                raise TypeError(f"table {table} is not an exact-match table")
            entry = tstate.entries.get(key)
            if entry is None:
                return None
            return self._result(state, entry.action_id, entry.params)

    def lookup_lpm(self, table: str, value: int) -> tuple[str, dict[str, int]] | None:
        with self.lock:
            state = self._dataplane()
            entry = state.table(table).lookup_lpm(value)
            if entry is None:
                return None
            return self._result(state, entry.action_id, entry.params)

    def default_action(self, table: str) -> tuple[str, dict[str, int]]:
        with self.lock:
            state = self._dataplane()
            default = state.table(table).default
            return self._result(state, default.action_id, default.params)

    def count(self, counter: str, index: int, packets: int = 1, nbytes: int = 0) -> None:
        with self.lock:
            self._dataplane().counter(counter).add(index, packets, nbytes)

    def register_read(self, register: str, index: int) -> int:
        with self.lock:
            return self._dataplane().register(register).read(index)

    def register_write(self, register: str, index: int, value: int) -> None:
        with self.lock:
            self._dataplane().register(register).write(index, value)

    # -- inspection and faults (tests only) --------------------------------------------------

    def entries(self, table: str) -> list[EntryView]:
        with self.lock:
            state = self._p4runtime_state()
            tstate = state.table(table)
            return [_view(state, e) for e in tstate.in_handle_order()]

    def default_entry(self, table: str) -> EntryView:
        with self.lock:
            state = self._p4runtime_state()
            default = state.table(table).default
            name, params = self._result(state, default.action_id, default.params)
            return EntryView((), name, MappingProxyType(params), 0,
                             default.controller_metadata, default.metadata)

    def counters(self, counter: str) -> list[tuple[int, int]]:
        """(packets, bytes) of every cell of an indirect counter."""
        with self.lock:
            return list(self._p4runtime_state().counter(counter).cells())

    def registers(self, register: str) -> dict[int, int]:
        """The non-zero cells of a register in the packet pipeline, by index (P4Runtime cannot
        read them on BMv2, so tests look here)."""
        with self.lock:
            return self._dataplane().register(register).nonzero()

    def set_table_size(self, table: str, size: int) -> None:
        """Change a table's capacity (also for pipelines committed later)."""
        if size < 0:
            raise ValueError(f"table size must be >= 0, not {size}")
        with self.lock:
            state = self._p4runtime_state()
            state.table(table).size = size
            if self.dataplane is not None and self.dataplane is not state:
                if table in self.dataplane.tables_by_name:
                    self.dataplane.tables_by_name[table].size = size
            self._size_overrides[table] = size

    def _p4runtime_state(self) -> PipelineState:
        state = self.state
        if state is None:
            raise RuntimeError(f"device {self.device_id} has no pipeline")
        return state


def _view(state: PipelineState, entry: Entry) -> EntryView:
    action = state.schema.actions_by_id[entry.action_id]
    return EntryView(
        entry.key,
        action.name,
        MappingProxyType(dict(zip(action.param_names, entry.params))),
        entry.priority,
        entry.controller_metadata,
        entry.metadata,
    )


def _copy(config: p4r.ForwardingPipelineConfig) -> p4r.ForwardingPipelineConfig:
    copy = p4r.ForwardingPipelineConfig()
    copy.CopyFrom(config)
    return copy


def _replay_updates(old: PipelineState) -> tuple[list[p4r.Update], list[p4r.Update]]:
    """The old pipeline's entries as INSERTs, and its changed default actions as MODIFYs."""
    inserts: list[p4r.Update] = []
    defaults: list[p4r.Update] = []
    for table in old.tables.values():
        for entry in table.in_handle_order():
            update = p4r.Update(type=p4r.Update.INSERT)
            update.entity.CopyFrom(table_entry_entity(old.schema, table, entry))
            inserts.append(update)
        if table.default.action_id and _changed_default(table):
            update = p4r.Update(type=p4r.Update.MODIFY)
            update.entity.CopyFrom(default_entry_entity(old.schema, table))
            defaults.append(update)
    return inserts, defaults


def _changed_default(table: TableState) -> bool:
    default = table.default
    return (default.action_id, default.params) != table.info.initial_default or bool(
        default.controller_metadata or default.metadata
    )


