"""Turn the parts of a P4Runtime TableEntry into canonical values, validating as PI does.

The order of the checks, and the message texts, follow BMv2/PI (fixtures/p4runtime-bmv2,
README table 25) because the first failing check decides which error a controller sees; the
codes come from the Behavior (spec or BMv2 mode).
"""

from __future__ import annotations

from finsy.proto import p4r

from reconciler.sim.behavior import (
    INVALID_ARGUMENT,
    INVALID_P4_ID,
    PERMISSION_DENIED,
    UNIMPLEMENTED,
    Behavior,
)
from reconciler.sim.bytestrings import BytestringError, decode
from reconciler.sim.schema import (
    EXACT,
    LPM,
    OPTIONAL,
    RANGE,
    SCOPE_DEFAULT_ONLY,
    SCOPE_TABLE_ONLY,
    TERNARY,
    ActionInfo,
    P4Schema,
    TableInfo,
)


class UpdateError(Exception):
    """One update (or read request) failed with a canonical code and message."""

    __slots__ = ("code", "message")

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


DEFAULT_KEY = ("<default entry>",)  # stands for the key of a table's default entry

_DONT_CARE_LPM = (
    "Invalid reprsentation of 'don't care' LPM match, "  # sic: BMv2's typo (surprise 27)
    "omit match field instead of using a prefix length of 0"
)


def _value(raw: bytes, bitwidth: int, behavior: Behavior) -> int:
    try:
        return decode(raw, bitwidth, behavior.empty_bytestring_is_zero)
    except BytestringError as exc:
        raise UpdateError(behavior.bytestring_code, exc.message) from None


def match_key(table: TableInfo, entry: p4r.TableEntry, behavior: Behavior) -> tuple:
    """The canonical key of `entry` in `table` (DEFAULT_KEY for a default entry)."""
    if entry.is_default_action:
        if len(entry.match):
            raise UpdateError(INVALID_ARGUMENT, "Non-empty key for default entry")
        if entry.priority != 0:
            raise UpdateError(INVALID_ARGUMENT, "Non-zero priority for default entry")
        return DEFAULT_KEY
    matches = entry.match
    fields = table.fields
    if table.exact_only and len(matches) == len(fields):
        fast = _exact_in_order(fields, matches, behavior.empty_bytestring_is_zero)
        if fast is not None:
            if entry.priority > 0:
                raise UpdateError(INVALID_ARGUMENT, "Non-zero priority for non-ternary match")
            return fast
    if len(matches) > len(fields):
        raise UpdateError(INVALID_ARGUMENT, "Too many fields in match key")
    given: dict[int, p4r.FieldMatch] = {}
    for m in matches:
        given.setdefault(m.field_id, m)  # PI looks fields up by id and uses the first one
    values: list = []
    found = 0
    for f in fields:
        m = given.get(f.id)
        kind = f.match_type
        if m is None:
            if kind == EXACT:
                raise UpdateError(INVALID_ARGUMENT, "Missing non-ternary field in match key")
            values.append(None)
            continue
        found += 1
        which = m.WhichOneof("field_match_type")
        if kind == EXACT:
            if which != "exact":
                raise UpdateError(INVALID_ARGUMENT, "Invalid match type")
            values.append(_value(m.exact.value, f.bitwidth, behavior))
        elif kind == LPM:
            if which != "lpm":
                raise UpdateError(INVALID_ARGUMENT, "Invalid match type")
            values.append(_lpm(m.lpm, f.bitwidth, behavior))
        elif kind == TERNARY:
            if which != "ternary":
                raise UpdateError(INVALID_ARGUMENT, "Invalid match type")
            values.append(_ternary(m.ternary, f.bitwidth, behavior))
        elif kind == RANGE:
            if which != "range":
                raise UpdateError(INVALID_ARGUMENT, "Invalid match type")
            values.append(_range(m.range, f.bitwidth, behavior))
        elif kind == OPTIONAL:
            if which != "optional":
                raise UpdateError(INVALID_ARGUMENT, "Invalid match type")
            values.append(_value(m.optional.value, f.bitwidth, behavior))
        else:
            raise UpdateError(UNIMPLEMENTED, f"Match type of field {f.name} is not supported")
    if found != len(matches):
        raise UpdateError(INVALID_ARGUMENT, "Unknown field in match key")
    priority = entry.priority
    if not table.needs_priority:
        if priority > 0:
            raise UpdateError(INVALID_ARGUMENT, "Non-zero priority for non-ternary match")
        return tuple(values)
    if priority == 0:
        raise UpdateError(INVALID_ARGUMENT, "Zero priority for ternary match")
    values.append(priority)
    return tuple(values)


def _exact_in_order(fields, matches, allow_empty: bool) -> tuple | None:
    """The hot path: exact fields given in P4Info order with valid values. None means "not
    that simple", and the general path then finds the right error (or the same key)."""
    values = []
    for f, m in zip(fields, matches):
        if m.field_id != f.id or not m.HasField("exact"):
            return None
        raw = m.exact.value
        value = int.from_bytes(raw, "big")
        if value >> f.bitwidth or not (raw or allow_empty):
            return None
        values.append(value)
    return tuple(values)


def _lpm(lpm: p4r.FieldMatch.LPM, bitwidth: int, behavior: Behavior) -> tuple[int, int]:
    value = _value(lpm.value, bitwidth, behavior)
    plen = lpm.prefix_len
    if plen < 0:
        raise UpdateError(INVALID_ARGUMENT, "Prefix length cannot be < 0")
    if plen > bitwidth:
        raise UpdateError(INVALID_ARGUMENT, "Prefix length cannot be > bitwidth")
    if plen == 0:
        raise UpdateError(INVALID_ARGUMENT, _DONT_CARE_LPM)
    if value & ((1 << (bitwidth - plen)) - 1):
        raise UpdateError(
            INVALID_ARGUMENT, "Invalid LPM value, incorrect number of trailing zeros"
        )
    return (value, plen)


def _ternary(t: p4r.FieldMatch.Ternary, bitwidth: int, behavior: Behavior) -> tuple[int, int]:
    value = _value(t.value, bitwidth, behavior)
    mask = _value(t.mask, bitwidth, behavior)
    if mask == 0:
        raise UpdateError(
            INVALID_ARGUMENT,
            "Invalid representation of 'don't care' ternary match, "
            "omit match field instead of using 0 mask",
        )
    if value & mask != value:
        raise UpdateError(
            INVALID_ARGUMENT, "Invalid ternary value, make sure value & mask == value"
        )
    return (value, mask)


def _range(r: p4r.FieldMatch.Range, bitwidth: int, behavior: Behavior) -> tuple[int, int]:
    low = _value(r.low, bitwidth, behavior)
    high = _value(r.high, bitwidth, behavior)
    if low == 0 and high == (1 << bitwidth) - 1:
        raise UpdateError(
            INVALID_ARGUMENT,
            "Invalid representation of 'don't care' range match, "
            "omit match field instead of using low=0 and high=2**bitwidth-1",
        )
    if low > high:
        raise UpdateError(INVALID_ARGUMENT, "Invalid range value, make sure low <= high")
    return (low, high)


def check_action_choice(schema: P4Schema, table: TableInfo, entry: p4r.TableEntry) -> None:
    """PI's validate_action: default-entry permissions, direct/indirect, refs and scopes."""
    is_default = entry.is_default_action
    if table.implementation_id and is_default:
        raise UpdateError(
            INVALID_ARGUMENT, f"Cannot set / reset default action for indirect table {table.id}"
        )
    if is_default and table.const_default:
        raise UpdateError(
            PERMISSION_DENIED,
            f"Cannot set / reset default action for table {table.id} "
            "which has a const default action",
        )
    if not entry.HasField("action"):
        return
    which = entry.action.WhichOneof("type")
    if table.implementation_id:
        if which == "action":
            raise UpdateError(
                INVALID_ARGUMENT, f"Cannot provide direct action for indirect table {table.id}"
            )
        raise UpdateError(UNIMPLEMENTED, "Action profiles are not supported by this switch")
    if which != "action":
        raise UpdateError(
            INVALID_ARGUMENT, f"Cannot provide indirect action for direct table {table.id}"
        )
    action_id = entry.action.action.action_id
    if action_id not in schema.actions_by_id:
        raise UpdateError(INVALID_ARGUMENT, INVALID_P4_ID)
    scope = table.action_scopes.get(action_id)
    if scope is None:
        raise UpdateError(INVALID_ARGUMENT, "Invalid action for table")
    if scope == SCOPE_TABLE_ONLY and is_default:
        raise UpdateError(PERMISSION_DENIED, "Cannot use TABLE_ONLY action as default action")
    if scope == SCOPE_DEFAULT_ONLY and not is_default:
        raise UpdateError(PERMISSION_DENIED, "Cannot use DEFAULT_ONLY action in table entry")


def action_params(action: ActionInfo, proto: p4r.Action, behavior: Behavior) -> tuple[int, ...]:
    """Parameter values in P4Info order. BMv2 checks only the count (surprise 24): a repeated
    id overwrites and leaves another parameter at 0; spec mode rejects the repetition."""
    params = proto.params
    expected = action.params
    if len(params) != len(expected):
        raise UpdateError(INVALID_ARGUMENT, "Unexpected number of action parameters")
    fast = []
    for info, p in zip(expected, params):  # the hot path: parameters in P4Info order
        raw = p.value
        value = int.from_bytes(raw, "big")
        if p.param_id != info.id or value >> info.bitwidth or not raw:
            break
        fast.append(value)
    else:
        return tuple(fast)
    values = [0] * len(expected)
    by_id = action.params_by_id
    seen = 0
    for p in params:
        known = by_id.get(p.param_id)
        if known is None:
            raise UpdateError(INVALID_ARGUMENT, "Unknown action parameter")
        values[known.position] = _value(p.value, known.bitwidth, behavior)
        bit = 1 << known.position
        if seen & bit and not behavior.duplicate_param_bug:
            raise UpdateError(INVALID_ARGUMENT, f"Duplicate action parameter {known.name}")
        seen |= bit
    return tuple(values)
