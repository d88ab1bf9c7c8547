"""Apply the updates of one WriteRequest to a pipeline (CONTINUE_ON_ERROR, in request order).

Each update either succeeds or raises UpdateError; the batch result is one (code, message)
per update, which the server turns into the grpc-status-details-bin trailer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from finsy.proto import p4r

from reconciler.sim.behavior import (
    ALREADY_EXISTS,
    INCORRECT_ENTITY,
    INVALID_ARGUMENT,
    INVALID_P4_ID,
    NOT_FOUND,
    OK,
    OUT_OF_RANGE,
    PERMISSION_DENIED,
    REGISTER_WRITES_UNSUPPORTED,
    UNIMPLEMENTED,
    UNKNOWN,
    Behavior,
)
from reconciler.sim.parse import (
    DEFAULT_KEY,
    UpdateError,
    action_params,
    check_action_choice,
    match_key,
)
from reconciler.sim.tables import DefaultEntry, PipelineState, TableState

INSERT = p4r.Update.INSERT
MODIFY = p4r.Update.MODIFY
DELETE = p4r.Update.DELETE
UNSPECIFIED = p4r.Update.UNSPECIFIED

UpdateResult = tuple[int, str]  # (canonical code, message); (OK, "") on success
SUCCESS: UpdateResult = (OK, "")


def apply_updates(
    state: PipelineState,
    behavior: Behavior,
    updates: Iterable[p4r.Update],
    limit: int | None = None,
) -> list[UpdateResult]:
    """Apply `updates` in order; with `limit`, stop after that many (the rest are not tried)."""
    writer = _Writer(state, behavior)
    results: list[UpdateResult] = []
    append = results.append
    for count, update in enumerate(updates):
        if limit is not None and count >= limit:
            break
        try:
            writer.apply(update)
        except UpdateError as exc:
            append((exc.code, exc.message))
        else:
            append(SUCCESS)
    return results


class _Writer:
    __slots__ = ("state", "schema", "behavior", "tables")

    def __init__(self, state: PipelineState, behavior: Behavior) -> None:
        self.state = state
        self.schema = state.schema
        self.behavior = behavior
        self.tables = state.tables

    def apply(self, update: p4r.Update) -> None:
        entity = update.entity
        which = entity.WhichOneof("entity")
        if which == "table_entry":
            self.table_write(update.type, entity.table_entry)
        elif which == "counter_entry":
            self.counter_write(update.type, entity.counter_entry)
        elif which == "direct_counter_entry":
            self.direct_counter_write(update.type, entity.direct_counter_entry)
        elif which == "register_entry":
            # Both modes, every update (any type, index, value): the recorded BMv2 refuses them
            # all this way (fixtures/p4runtime-bmv2/10-registers.txt), and a switch that
            # accepted them would let a controller depend on what real BMv2 cannot do.
            raise UpdateError(UNIMPLEMENTED, REGISTER_WRITES_UNSUPPORTED)
        elif which is None:
            raise UpdateError(UNKNOWN, INCORRECT_ENTITY)
        else:
            raise UpdateError(UNIMPLEMENTED, f"{which} writes are not supported by this switch")

    # -- table entries ---------------------------------------------------------------------

    def table_write(self, kind: int, te: p4r.TableEntry) -> None:
        table = self.tables.get(te.table_id)
        if table is None:
            raise UpdateError(INVALID_ARGUMENT, INVALID_P4_ID)
        if te.HasField("time_since_last_hit"):
            raise UpdateError(
                INVALID_ARGUMENT, "has_time_since_last_hit must not be set in WriteRequest"
            )
        if te.is_const and self.behavior.reject_is_const_in_write:
            raise UpdateError(INVALID_ARGUMENT, "is_const must not be set in a write")
        if kind == INSERT:
            self.table_insert(table, te)
        elif kind == MODIFY:
            self.table_modify(table, te)
        elif kind == DELETE:
            self.table_delete(table, te)
        elif kind == UNSPECIFIED:
            raise UpdateError(INVALID_ARGUMENT, "Update type is not set")
        else:
            raise UpdateError(INVALID_ARGUMENT, "Invalid update type")

    def _entry_extras(self, table: TableState, te: p4r.TableEntry) -> None:
        """Direct resources and idle timeout, checked after the action as PI does."""
        if te.HasField("meter_config") or te.HasField("meter_counter_data"):
            raise UpdateError(INVALID_ARGUMENT, "Table has no direct meters")
        if te.HasField("counter_data") and not table.info.direct_counter_id:
            raise UpdateError(INVALID_ARGUMENT, "Table has no direct counters")
        timeout = te.idle_timeout_ns
        if timeout < 0:
            raise UpdateError(INVALID_ARGUMENT, "idle_timeout_ns must be a positive value")
        if timeout > 0 and not table.info.idle_timeout:
            raise UpdateError(
                INVALID_ARGUMENT,
                "idle_timeout_ns must be set to 0 for tables which do not support idle timeout",
            )

    def _action(self, te: p4r.TableEntry) -> tuple[int, tuple[int, ...]]:
        proto = te.action.action
        action = self.schema.actions_by_id[proto.action_id]
        return proto.action_id, action_params(action, proto, self.behavior)

    def table_insert(self, table: TableState, te: p4r.TableEntry) -> None:
        if te.is_default_action:
            raise UpdateError(INVALID_ARGUMENT, "Cannot use INSERT for default entry")
        if not te.HasField("action"):
            raise UpdateError(INVALID_ARGUMENT, "'action' field must be set")
        info = table.info
        key = match_key(info, te, self.behavior)
        check_action_choice(self.schema, info, te)
        action_id, params = self._action(te)
        self._entry_extras(table, te)
        if key in table.entries:
            raise UpdateError(
                ALREADY_EXISTS, "Match entry exists, use MODIFY if you wish to change action"
            )
        if info.is_const:
            # BMv2: the target refuses (surprise 21); spec: const tables are read-only
            raise UpdateError(self.behavior.const_table_write_code, self._const_message())
        if table.full():
            raise UpdateError(self.behavior.table_full_code, self.behavior.table_full_message)
        stored = table.insert(key, te.priority, action_id, params, te.controller_metadata,
                              te.metadata, te.idle_timeout_ns)
        if te.HasField("counter_data"):
            self._set_direct(table, stored.key, te.counter_data)

    def _const_message(self) -> str:
        if self.behavior.bmv2:
            return "Error when adding match entry to target"
        return "Cannot write entries of a const table"

    def table_modify(self, table: TableState, te: p4r.TableEntry) -> None:
        info = table.info
        key = match_key(info, te, self.behavior)
        check_action_choice(self.schema, info, te)
        has_action = te.HasField("action")
        is_default = key is DEFAULT_KEY
        if has_action:
            action_id, params = self._action(te)
        elif not is_default and self.behavior.modify_requires_action:
            raise UpdateError(
                INVALID_ARGUMENT, "'action' field must be set for non-default entries"
            )
        self._entry_extras(table, te)
        if is_default:
            if has_action:
                table.default = DefaultEntry(action_id, params, te.controller_metadata,
                                             te.metadata)
            else:
                table.reset_default()  # an action-less MODIFY resets it (surprise 26)
            return
        if info.is_const and not self.behavior.bmv2:
            raise UpdateError(PERMISSION_DENIED, "Cannot modify entries of a const table")
        old = table.entries.get(key)
        if old is None:
            raise UpdateError(NOT_FOUND, "Cannot find match entry")
        if not has_action:  # spec: an action-less MODIFY keeps the action
            action_id, params = old.action_id, old.params
        table.modify(old, action_id, params, te.controller_metadata, te.metadata,
                     te.idle_timeout_ns)
        if te.HasField("counter_data"):
            self._set_direct(table, key, te.counter_data)

    def table_delete(self, table: TableState, te: p4r.TableEntry) -> None:
        if te.is_default_action:
            raise UpdateError(INVALID_ARGUMENT, "Cannot use DELETE for default entry")
        key = match_key(table.info, te, self.behavior)  # the action, if any, is ignored
        if table.info.is_const and not self.behavior.bmv2:
            raise UpdateError(PERMISSION_DENIED, "Cannot delete entries of a const table")
        old = table.entries.get(key)
        if old is None:
            raise UpdateError(NOT_FOUND, "Cannot find match entry")
        table.delete(old)

    @staticmethod
    def _set_direct(table: TableState, key: tuple, data: p4r.CounterData) -> None:
        table.direct_counts[key] = [data.packet_count, data.byte_count]

    # -- counters --------------------------------------------------------------------------

    def counter_write(self, kind: int, ce: p4r.CounterEntry) -> None:
        counter = self.state.counters.get(ce.counter_id)
        if counter is None:
            if ce.counter_id in self.schema.direct_counter_ids:
                raise UpdateError(
                    INVALID_ARGUMENT, "Cannot use CounterEntry with a direct counter"
                )
            raise UpdateError(INVALID_ARGUMENT, INVALID_P4_ID)
        bmv2 = self.behavior.bmv2
        if not ce.HasField("index") and bmv2:
            raise UpdateError(
                UNIMPLEMENTED, "Wildcard write is not supported for indirect counters yet"
            )
        index = ce.index.index if ce.HasField("index") else None
        if index is not None and index < 0:
            raise UpdateError(INVALID_ARGUMENT, "A negative number is not a valid index value")
        if kind == UNSPECIFIED:
            raise UpdateError(INVALID_ARGUMENT, "Update type is not set")
        if kind == INSERT:
            raise UpdateError(INVALID_ARGUMENT, "INSERT update type not supported for counters")
        if kind == DELETE and not bmv2:
            raise UpdateError(INVALID_ARGUMENT, "DELETE update type not supported for counters")
        if kind not in (MODIFY, DELETE):
            raise UpdateError(INVALID_ARGUMENT, "Invalid update type")
        size = counter.info.size
        if index is not None and index >= size:
            if bmv2:
                raise UpdateError(UNKNOWN, "Error when writing to counter")
            raise UpdateError(OUT_OF_RANGE, f"Index {index} is out of range (size {size})")
        if kind == DELETE:  # BMv2 accepts DELETE and zeroes the cell (surprise 35)
            packets = nbytes = 0
        elif not ce.HasField("data") and not bmv2:
            return  # spec: an unset data field leaves the value alone
        else:
            packets, nbytes = ce.data.packet_count, ce.data.byte_count
        cells: Sequence[int] = range(size) if index is None else (index,)
        for cell in cells:
            counter.set(cell, packets, nbytes)

    def direct_counter_write(self, kind: int, dce: p4r.DirectCounterEntry) -> None:
        if not dce.HasField("table_entry"):
            raise UpdateError(INVALID_ARGUMENT, "Missing table_entry field in DirectCounterEntry")
        te = dce.table_entry
        table = self.tables.get(te.table_id)
        if table is None:
            raise UpdateError(INVALID_ARGUMENT, INVALID_P4_ID)
        key = match_key(table.info, te, self.behavior)
        if key is not DEFAULT_KEY and key not in table.entries:
            raise UpdateError(
                INVALID_ARGUMENT if self.behavior.bmv2 else NOT_FOUND,
                "Cannot map table entry to handle",
            )
        if not table.info.direct_counter_id:
            raise UpdateError(INVALID_ARGUMENT, "Table has no direct counters")
        if kind == UNSPECIFIED:
            raise UpdateError(INVALID_ARGUMENT, "Update type is not set")
        if kind == INSERT:
            raise UpdateError(INVALID_ARGUMENT, "INSERT update type not supported for counters")
        if kind == DELETE and not self.behavior.bmv2:
            raise UpdateError(INVALID_ARGUMENT, "DELETE update type not supported for counters")
        if key is DEFAULT_KEY:
            raise UpdateError(UNIMPLEMENTED, "Direct counters of default entries are not kept")
        if kind == DELETE:
            table.direct_counts[key] = [0, 0]
        elif dce.HasField("data") or self.behavior.bmv2:
            self._set_direct(table, key, dce.data)
